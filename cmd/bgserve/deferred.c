/*
 * deferred.c - deferred-response handles and their deadlines.
 *
 * State: every handle, the deadline heap and the counters are guarded by
 * one mutex, `lock`.  A handle moves from PENDING to exactly one final
 * state; whoever moves it (the plugin completing it, the deadline thread,
 * shutdown, or the connection going away) removes it from the heap and,
 * if the connection is already suspended ("armed"), resumes it.  The
 * resume function only flags the connection for libmicrohttpd (it never
 * calls back into this file), so calling it under `lock` is safe.
 *
 * The deadline thread sleeps on `cond` (CLOCK_MONOTONIC) until the
 * earliest deadline or until a new earlier deadline is pushed.
 */
#include "deferred.h"

#include "json.h"
#include "util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { DEFERRED_GONE = 100 }; /* the connection ended while pending */

struct bgs_deferred {
    int refs;             /* guarded by lock */
    int state;            /* guarded by lock */
    int armed;            /* guarded by lock: the connection is suspended */
    size_t heap_idx;      /* guarded by lock; SIZE_MAX when not in heap */
    uint64_t deadline_us;
    uint32_t status;      /* the answer, written once under lock */
    char *type;
    char *body;
    size_t len;
    deferred_resume_fn resume;
    void *conn;
    int counted;          /* plugin deferrals count in the stats */
    struct bgs_deferred *prev, *next; /* every live handle; lock */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond;
static pthread_t thread;
static int running;         /* guarded by lock */
static int shutting_down;   /* guarded by lock */
static bgs_deferred **heap; /* guarded by lock: min-heap on deadline_us */
static size_t heap_len, heap_cap;
static uint64_t n_pending, n_completed, n_timed_out, n_abandoned; /* lock */
/* Every handle not yet freed, so that deferred_stop can free the ones a
 * plugin never completed (a task cancelled before it ran). */
static bgs_deferred all = {.prev = &all, .next = &all};

/* ---- heap (lock held) ------------------------------------------------------ */

static void heap_set(size_t i, bgs_deferred *d)
{
    heap[i] = d;
    d->heap_idx = i;
}

static void heap_up(size_t i)
{
    bgs_deferred *d = heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (heap[p]->deadline_us <= d->deadline_us)
            break;
        heap_set(i, heap[p]);
        i = p;
    }
    heap_set(i, d);
}

static void heap_down(size_t i)
{
    bgs_deferred *d = heap[i];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        uint64_t best = d->deadline_us;
        if (l < heap_len && heap[l]->deadline_us < best) {
            m = l;
            best = heap[l]->deadline_us;
        }
        if (r < heap_len && heap[r]->deadline_us < best)
            m = r;
        if (m == i)
            break;
        heap_set(i, heap[m]);
        i = m;
    }
    heap_set(i, d);
}

static void heap_push(bgs_deferred *d)
{
    if (heap_len == heap_cap) {
        heap_cap = heap_cap ? heap_cap * 2 : 64;
        heap = xrealloc(heap, heap_cap * sizeof *heap);
    }
    heap_set(heap_len++, d);
    heap_up(heap_len - 1);
}

static void heap_remove(bgs_deferred *d)
{
    size_t i = d->heap_idx;
    if (i == SIZE_MAX)
        return;
    d->heap_idx = SIZE_MAX;
    heap_len--;
    if (i == heap_len)
        return;
    heap_set(i, heap[heap_len]);
    heap_up(i);
    heap_down(heap[i]->heap_idx);
}

/* ---- state changes (lock held) -------------------------------------------- */

static void finish(bgs_deferred *d, int state)
{
    d->state = state;
    heap_remove(d);
    if (d->counted) {
        n_pending--;
        if (state == DEFERRED_COMPLETED)
            n_completed++;
        else if (state == DEFERRED_TIMED_OUT)
            n_timed_out++;
    }
    if (d->armed && state != DEFERRED_GONE)
        d->resume(d->conn);
}

static void destroy(bgs_deferred *d)
{
    d->prev->next = d->next;
    d->next->prev = d->prev;
    free(d->type);
    free(d->body);
    free(d);
}

static void unref(bgs_deferred *d)
{
    if (--d->refs > 0)
        return;
    destroy(d);
}

/* ---- the deadline thread -------------------------------------------------- */

static void *deadline_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&lock);
    while (running) {
        if (heap_len == 0) {
            pthread_cond_wait(&cond, &lock);
            continue;
        }
        uint64_t now = util_now_us(), due = heap[0]->deadline_us;
        if (due <= now) {
            finish(heap[0], DEFERRED_TIMED_OUT);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t wait = due - now;
        ts.tv_sec += (time_t)(wait / 1000000u);
        ts.tv_nsec += (long)(wait % 1000000u) * 1000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&cond, &lock, &ts);
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

int deferred_start(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_lock(&lock);
    running = 1;
    shutting_down = 0;
    pthread_mutex_unlock(&lock);
    if (pthread_create(&thread, NULL, deadline_main, NULL) != 0) {
        running = 0;
        return -1;
    }
    return 0;
}

void deferred_stop(void)
{
    pthread_mutex_lock(&lock);
    if (!running) {
        pthread_mutex_unlock(&lock);
        return;
    }
    running = 0;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
    pthread_join(thread, NULL);
    pthread_mutex_lock(&lock);
    free(heap);
    heap = NULL;
    heap_len = heap_cap = 0;
    /* The connections are gone and the tasks have stopped: whatever a
     * plugin never completed or released can no longer be used. */
    while (all.next != &all)
        destroy(all.next);
    pthread_mutex_unlock(&lock);
}

/* ---- the API ------------------------------------------------------------------ */

static bgs_deferred *create(uint32_t timeout_ms, deferred_resume_fn resume, void *conn,
                            int counted)
{
    bgs_deferred *d = xcalloc(1, sizeof *d);
    d->counted = counted;
    d->refs = 2;
    d->heap_idx = SIZE_MAX;
    d->resume = resume;
    d->conn = conn;
    d->deadline_us = util_now_us() +
                     (uint64_t)(timeout_ms ? timeout_ms : DEFERRED_DEFAULT_TIMEOUT_MS) * 1000u;
    pthread_mutex_lock(&lock);
    d->next = &all;
    d->prev = all.prev;
    all.prev->next = d;
    all.prev = d;
    if (counted)
        n_pending++;
    if (shutting_down) {
        finish(d, DEFERRED_SHUTDOWN);
    } else {
        heap_push(d);
        if (d->heap_idx == 0)
            pthread_cond_signal(&cond);
    }
    pthread_mutex_unlock(&lock);
    return d;
}

bgs_deferred *deferred_new(uint32_t timeout_ms, deferred_resume_fn resume, void *conn)
{
    return create(timeout_ms, resume, conn, 1);
}

bgs_deferred *deferred_new_internal(uint32_t timeout_ms, deferred_resume_fn resume, void *conn)
{
    return create(timeout_ms, resume, conn, 0);
}

void deferred_arm(bgs_deferred *d)
{
    pthread_mutex_lock(&lock);
    d->armed = 1;
    if (d->state != DEFERRED_PENDING)
        d->resume(d->conn);
    pthread_mutex_unlock(&lock);
}

int deferred_complete(bgs_deferred *d, uint32_t status, const char *type,
                      const void *body, size_t len)
{
    if (d == NULL || (body == NULL && len > 0) || status < 100 || status > 599)
        return BGS_EINVAL;
    pthread_mutex_lock(&lock);
    int rc = BGS_ESTATE;
    if (d->state == DEFERRED_PENDING) {
        d->status = status;
        d->type = xstrdup(type ? type : "text/plain; charset=utf-8");
        d->body = len ? xmemdup(body, len) : NULL;
        d->len = len;
        finish(d, DEFERRED_COMPLETED);
        rc = 0;
    }
    unref(d);
    pthread_mutex_unlock(&lock);
    return rc;
}

void deferred_release(bgs_deferred *d)
{
    if (d == NULL)
        return;
    pthread_mutex_lock(&lock);
    if (d->state == DEFERRED_PENDING)
        finish(d, DEFERRED_RELEASED);
    unref(d);
    pthread_mutex_unlock(&lock);
}

int deferred_state(bgs_deferred *d, uint32_t *status, const char **type,
                   const char **body, size_t *len)
{
    pthread_mutex_lock(&lock);
    int state = d->state;
    *status = d->status;
    *type = d->type;
    *body = d->body;
    *len = d->len;
    pthread_mutex_unlock(&lock);
    return state;
}

void deferred_put(bgs_deferred *d, int delivered)
{
    if (d == NULL)
        return;
    pthread_mutex_lock(&lock);
    if (d->state == DEFERRED_PENDING)
        finish(d, DEFERRED_GONE);
    if (!delivered && d->counted)
        n_abandoned++;
    unref(d);
    pthread_mutex_unlock(&lock);
}

void deferred_shutdown_all(void)
{
    pthread_mutex_lock(&lock);
    shutting_down = 1;
    while (heap_len > 0)
        finish(heap[0], DEFERRED_SHUTDOWN);
    pthread_mutex_unlock(&lock);
}

void deferred_stats_json(json *j)
{
    pthread_mutex_lock(&lock);
    uint64_t p = n_pending, c = n_completed, t = n_timed_out, a = n_abandoned;
    pthread_mutex_unlock(&lock);
    json_obj_begin(j);
    json_key(j, "pending");
    json_u64(j, p);
    json_key(j, "completed");
    json_u64(j, c);
    json_key(j, "timed_out");
    json_u64(j, t);
    json_key(j, "abandoned");
    json_u64(j, a);
    json_obj_end(j);
}
