/*
 * events.c - the dashboard's ears in the rooms below it (events.h): a
 * count of watching dashboards, the ids of task records changed since
 * the dashboard last looked, and the reload history.
 *
 * State: `watchers` (atomic); under ev_mu (a leaf lock: nothing is
 * called while it is held, so the task engine may call in while holding
 * its record lock) the dirty id list and its overflow flag, and the
 * reload history ring with its sequence number, and the ring of task log
 * lines (kept, like the dirty ids, only while a dashboard watches).  Dirty ids are kept only
 * while watchers > 0, so a server with no dashboard open does nothing
 * here but one relaxed load per task state change.
 */
#include "events.h"

#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct reload_rec {
    char kind[8];
    uint64_t generation;
    int ok;
    uint64_t at_wall_us;
    uint64_t load_us;
    char *error; /* NULL when ok */
} reload_rec;

typedef struct log_rec {
    uint64_t seq;
    uint64_t id;
    uint32_t level;
    uint64_t at_wall_us;
    char text[EVENTS_LOG_LINE];
} log_rec;

static atomic_uint watchers;

static pthread_mutex_t ev_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t dirty[EVENTS_DIRTY_MAX]; /* ev_mu */
static size_t ndirty;                    /* ev_mu */
static int dirty_missed;                 /* ev_mu */
static reload_rec reloads[EVENTS_RELOADS_MAX]; /* ev_mu; a ring */
static size_t reload_start, reload_len;  /* ev_mu */
static atomic_uint_fast64_t reload_seq;  /* written under ev_mu */
static log_rec logs[EVENTS_LOGS_MAX];    /* ev_mu; a ring */
static uint64_t log_seq;                 /* the last line's number; ev_mu */

void events_watch_begin(void)
{
    atomic_fetch_add(&watchers, 1);
}

void events_watch_end(void)
{
    if (atomic_fetch_sub(&watchers, 1) == 1) {
        /* Nobody watches: forget what nobody will ask for. */
        pthread_mutex_lock(&ev_mu);
        ndirty = 0;
        dirty_missed = 0;
        pthread_mutex_unlock(&ev_mu);
    }
}

unsigned events_watchers(void)
{
    return atomic_load_explicit(&watchers, memory_order_relaxed);
}

void events_task_changed(uint64_t id)
{
    if (atomic_load_explicit(&watchers, memory_order_relaxed) == 0)
        return;
    pthread_mutex_lock(&ev_mu);
    /* A task changes state in bursts (queued, running, succeeded): the
     * same id at the end is not remembered twice. */
    if (ndirty > 0 && dirty[ndirty - 1] == id) {
        /* already there */
    } else if (ndirty < EVENTS_DIRTY_MAX) {
        dirty[ndirty++] = id;
    } else {
        dirty_missed = 1;
    }
    pthread_mutex_unlock(&ev_mu);
}

size_t events_take_tasks(uint64_t *ids, size_t cap, int *missed)
{
    pthread_mutex_lock(&ev_mu);
    size_t n = ndirty < cap ? ndirty : cap;
    memcpy(ids, dirty, n * sizeof *ids);
    *missed = dirty_missed || ndirty > cap;
    ndirty = 0;
    dirty_missed = 0;
    pthread_mutex_unlock(&ev_mu);
    return n;
}

void events_reload(const char *kind, uint64_t generation, int ok, uint64_t load_us,
                   const char *error)
{
    char *copy = error ? xstrdup(error) : NULL;
    char *old = NULL;
    pthread_mutex_lock(&ev_mu);
    reload_rec *r;
    if (reload_len == EVENTS_RELOADS_MAX) {
        r = &reloads[reload_start];
        old = r->error;
        reload_start = (reload_start + 1) % EVENTS_RELOADS_MAX;
    } else {
        r = &reloads[(reload_start + reload_len) % EVENTS_RELOADS_MAX];
        reload_len++;
    }
    memset(r, 0, sizeof *r);
    strncpy(r->kind, kind, sizeof r->kind - 1);
    r->generation = generation;
    r->ok = ok;
    r->at_wall_us = util_wall_us();
    r->load_us = load_us;
    r->error = copy;
    atomic_fetch_add(&reload_seq, 1);
    pthread_mutex_unlock(&ev_mu);
    free(old);
}

void events_task_log(uint64_t id, uint32_t level, const char *line)
{
    if (atomic_load_explicit(&watchers, memory_order_relaxed) == 0)
        return;
    pthread_mutex_lock(&ev_mu);
    log_rec *r = &logs[log_seq % EVENTS_LOGS_MAX];
    r->seq = ++log_seq;
    r->id = id;
    r->level = level;
    r->at_wall_us = util_wall_us();
    snprintf(r->text, sizeof r->text, "%s", line);
    pthread_mutex_unlock(&ev_mu);
}

uint64_t events_log_seq(void)
{
    pthread_mutex_lock(&ev_mu);
    uint64_t s = log_seq;
    pthread_mutex_unlock(&ev_mu);
    return s;
}

size_t events_logs_json(json *j, uint64_t *since)
{
    size_t n = 0;
    json_arr_begin(j);
    pthread_mutex_lock(&ev_mu);
    uint64_t first = log_seq > EVENTS_LOGS_MAX ? log_seq - EVENTS_LOGS_MAX + 1 : 1;
    if (*since + 1 > first)
        first = *since + 1;
    for (uint64_t s = first; s <= log_seq; s++, n++) {
        const log_rec *r = &logs[(s - 1) % EVENTS_LOGS_MAX];
        json_arr_begin(j);
        json_u64(j, r->id);
        json_u64(j, r->level);
        json_u64(j, r->at_wall_us / 1000u);
        json_str(j, r->text);
        json_arr_end(j);
    }
    *since = log_seq;
    pthread_mutex_unlock(&ev_mu);
    json_arr_end(j);
    return n;
}

uint64_t events_reload_seq(void)
{
    return atomic_load(&reload_seq);
}

void events_reloads_json(json *j)
{
    json_arr_begin(j);
    pthread_mutex_lock(&ev_mu);
    for (size_t i = 0; i < reload_len; i++) {
        const reload_rec *r = &reloads[(reload_start + i) % EVENTS_RELOADS_MAX];
        char at[48];
        util_iso_time(at, sizeof at, r->at_wall_us, 3);
        json_obj_begin(j);
        json_key(j, "kind");
        json_str(j, r->kind);
        json_key(j, "generation");
        json_u64(j, r->generation);
        json_key(j, "ok");
        json_bool(j, r->ok);
        json_key(j, "at");
        json_str(j, at);
        json_key(j, "load_ms");
        json_double(j, (double)r->load_us / 1000.0);
        json_key(j, "error");
        json_str(j, r->error);
        json_obj_end(j);
    }
    pthread_mutex_unlock(&ev_mu);
    json_arr_end(j);
}
