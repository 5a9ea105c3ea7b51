/*
 * deferred.c - deferred-response handles and their deadlines.
 *
 * State: every handle's fields, the list of live handles, the shutdown
 * flag and the counters are guarded by one mutex, `lock`.  A handle moves
 * from PENDING to exactly one final state; whoever moves it (the plugin
 * completing or releasing it, the deadline, shutdown, or the connection
 * going away) resumes the connection if it is already suspended
 * ("armed").  The resume function only flags the connection for
 * libmicrohttpd (it never calls back into this file), so calling it under
 * `lock` is safe.
 *
 * Deadlines are timers on the scheduler (sched.h) of the task engine the
 * request belongs to, the one that also runs its retries and periodic
 * ticks; each handle remembers which (d->sched), so one engine's handles
 * can be settled and freed apart from another's (deferred_stop_for).  An armed timer holds a
 * reference of its own, so a handle outlives its pending deadline.  The
 * timer callback takes `lock`, and sched_cancel waits for a running
 * callback, so sched_cancel is only ever called with `lock` released
 * (disarm below); sched_add may be called under it.
 */
#include "deferred.h"

#include "handle.h"
#include "json.h"
#include "misuse.h"
#include "sched.h"
#include "util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { DEFERRED_GONE = 100 }; /* the connection ended while pending */

struct bgs_deferred {
    sched_timer timer;    /* the deadline; holds a reference while armed */
    sched *sched;         /* the timer's scheduler; immutable */
    int refs;             /* guarded by lock */
    int plugin_ref;       /* lock: the plugin has not completed/released yet */
    void *handle;         /* what the plugin holds (handle.h); closed under lock */
    int state;            /* guarded by lock */
    int armed;            /* guarded by lock: the connection is suspended */
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
static int shutting_down;   /* guarded by lock */
static uint64_t n_pending, n_completed, n_timed_out, n_abandoned; /* lock */
/* Every handle not yet freed, so that shutdown can answer the pending
 * ones and deferred_stop can free those a plugin never completed (a task
 * cancelled before it ran). */
static bgs_deferred all = {.prev = &all, .next = &all};

/* ---- state changes (lock held) -------------------------------------------- */

static void finish(bgs_deferred *d, int state)
{
    d->state = state;
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
    handle_close(d->handle); /* a plugin that never settled it: refused from now */
    d->prev->next = d->next;
    d->next->prev = d->prev;
    free(d->type);
    free(d->body);
    free(d);
}

static void unref(bgs_deferred *d)
{
    if (--d->refs == 0)
        destroy(d);
}

/* ---- deadlines --------------------------------------------------------------- */

static void on_deadline(sched_timer *t)
{
    bgs_deferred *d = UTIL_CONTAINER_OF(t, bgs_deferred, timer);
    pthread_mutex_lock(&lock);
    if (d->state == DEFERRED_PENDING)
        finish(d, DEFERRED_TIMED_OUT);
    unref(d); /* the timer's reference */
    pthread_mutex_unlock(&lock);
}

/* The handle left PENDING some other way: take its deadline back, and the
 * reference the timer held.  lock must not be held (see the top). */
static void disarm(bgs_deferred *d)
{
    if (sched_cancel(d->sched, &d->timer)) {
        pthread_mutex_lock(&lock);
        unref(d);
        pthread_mutex_unlock(&lock);
    }
}

int deferred_start(void)
{
    pthread_mutex_lock(&lock);
    shutting_down = 0;
    pthread_mutex_unlock(&lock);
    return 0;
}

void deferred_stop(void)
{
    pthread_mutex_lock(&lock);
    /* The connections are gone and the tasks have stopped: whatever a
     * plugin never completed or released can no longer be used.  None has
     * a deadline left: shutdown took them all back. */
    while (all.next != &all)
        destroy(all.next);
    pthread_mutex_unlock(&lock);
}

/* Move every pending handle on s (NULL: every handle) to
 * DEFERRED_SHUTDOWN, resume it and take its deadline back. */
static void shutdown_matching(sched *s)
{
    size_t n = 0, cap = 0;
    bgs_deferred **moved = NULL;
    pthread_mutex_lock(&lock);
    if (s == NULL)
        shutting_down = 1;
    for (bgs_deferred *d = all.next; d != &all; d = d->next) {
        if (d->state != DEFERRED_PENDING || (s && d->sched != s))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            moved = xrealloc(moved, cap * sizeof *moved);
        }
        d->refs++; /* ours, while we take its deadline back */
        finish(d, DEFERRED_SHUTDOWN);
        moved[n++] = d;
    }
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < n; i++) {
        disarm(moved[i]);
        pthread_mutex_lock(&lock);
        unref(moved[i]);
        pthread_mutex_unlock(&lock);
    }
    free(moved);
}

void deferred_stop_for(sched *s)
{
    shutdown_matching(s);
    pthread_mutex_lock(&lock);
    for (bgs_deferred *d = all.next, *next; d != &all; d = next) {
        next = d->next;
        if (d->sched != s)
            continue;
        /* A deadline still armed (a request that ended before its
         * answer): s's thread is halted (tasks_shutdown), so no callback
         * can be running and cancelling under lock cannot wait. */
        sched_cancel(s, &d->timer);
        destroy(d);
    }
    pthread_mutex_unlock(&lock);
}

/* ---- the API ------------------------------------------------------------------ */

static bgs_deferred *create(sched *s, uint32_t timeout_ms, deferred_resume_fn resume,
                            void *conn, int counted)
{
    bgs_deferred *d = xcalloc(1, sizeof *d);
    d->sched = s;
    d->counted = counted;
    d->refs = 2; /* the plugin's and the connection's */
    d->plugin_ref = 1;
    d->resume = resume;
    d->conn = conn;
    if (counted)
        d->handle = handle_open(HANDLE_DEFERRED, d, 0);
    uint64_t due = util_now_us() +
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
        d->refs++; /* the timer's */
        sched_add(s, &d->timer, due, on_deadline);
    }
    pthread_mutex_unlock(&lock);
    return d;
}

bgs_deferred *deferred_new(sched *s, uint32_t timeout_ms, deferred_resume_fn resume,
                           void *conn)
{
    return create(s, timeout_ms, resume, conn, 1);
}

bgs_deferred *deferred_new_internal(sched *s, uint32_t timeout_ms, deferred_resume_fn resume,
                                    void *conn)
{
    return create(s, timeout_ms, resume, conn, 0);
}

void deferred_arm(bgs_deferred *d)
{
    pthread_mutex_lock(&lock);
    d->armed = 1;
    if (d->state != DEFERRED_PENDING)
        d->resume(d->conn);
    pthread_mutex_unlock(&lock);
}

/* The answer a completion carries; NULL for the other final states. */
typedef struct answer {
    uint32_t status;
    char *type;
    char *body;
    size_t len;
} answer;

/* Move d to state (if still pending; with a, the answer is put in place
 * before the state says so) and drop one reference, the caller's: the
 * plugin's (plugin set) or the connection's.  The plugin's is dropped only
 * once: a second completion or release finds it gone and changes nothing
 * (dropping again would free the answer the connection is sending).
 * Returns 1 when this call moved it, 0 when it did not, -1 when the
 * plugin had no reference left. */
static int settle(bgs_deferred *d, int state, int abandoned, answer *a, int plugin)
{
    pthread_mutex_lock(&lock);
    if (plugin && !d->plugin_ref) {
        pthread_mutex_unlock(&lock);
        return -1;
    }
    if (plugin) {
        d->plugin_ref = 0;
        handle_close(d->handle);
    }
    int moved = d->state == DEFERRED_PENDING;
    if (moved && a) {
        d->status = a->status;
        d->type = a->type;
        d->body = a->body;
        d->len = a->len;
        a->type = a->body = NULL;
    }
    if (moved)
        finish(d, state);
    if (abandoned && d->counted)
        n_abandoned++;
    pthread_mutex_unlock(&lock);
    if (moved)
        disarm(d); /* our reference keeps d alive meanwhile */
    pthread_mutex_lock(&lock);
    unref(d);
    pthread_mutex_unlock(&lock);
    return moved;
}

int deferred_complete_take(bgs_deferred *d, uint32_t status, char *type, void *body,
                           size_t len)
{
    if (d == NULL || (body == NULL && len > 0) || status < 100 || status > 599) {
        free(type);
        free(body);
        return BGS_EINVAL; /* nothing happened: the handle is still the plugin's */
    }
    answer a = {
        .status = status,
        .type = type ? type : xstrdup("text/plain; charset=utf-8"),
        .body = len ? body : NULL,
        .len = len,
    };
    if (len == 0)
        free(body);
    int moved = settle(d, DEFERRED_COMPLETED, 0, &a, 1);
    free(a.type); /* still ours when the handle was no longer pending */
    free(a.body);
    return moved == 1 ? 0 : BGS_ESTATE;
}

int deferred_complete(bgs_deferred *d, uint32_t status, const char *type,
                      const void *body, size_t len)
{
    if (d == NULL || (body == NULL && len > 0) || status < 100 || status > 599)
        return BGS_EINVAL; /* nothing happened: the handle is still the plugin's */
    return deferred_complete_take(d, status, type ? xstrdup(type) : NULL,
                                  len ? xmemdup(body, len) : NULL, len);
}

void deferred_release(bgs_deferred *d)
{
    if (d != NULL)
        settle(d, DEFERRED_RELEASED, 0, NULL, 1);
}

void *deferred_handle(bgs_deferred *d)
{
    return d->handle;
}

/* The handle's object with the plugin's reference taken over by the
 * caller (the handle is closed), or NULL after reporting the misuse. */
static bgs_deferred *claim(void *h, const void *site, const char *fn, const char *ret,
                           int *code)
{
    pthread_mutex_lock(&lock);
    bgs_deferred *d = handle_get(HANDLE_DEFERRED, h, NULL);
    if (d != NULL) {
        d->plugin_ref = 0;
        handle_close(d->handle);
    }
    pthread_mutex_unlock(&lock);
    if (d == NULL)
        misuse_handle(HANDLE_DEFERRED, h, site, fn, ret, code);
    return d;
}

int deferred_host_complete(void *h, uint32_t status, const char *type, const void *body,
                           size_t len, const void *site)
{
    int code = BGS_EINVAL;
    if (body == NULL && len > 0)
        return misuse(site, BGS_EINVAL, NULL, "bgs_deferred_complete(%u, NULL, %zu): "
                      "NULL body with a length; the handle is still valid", status, len);
    if (status < 100 || status > 599)
        return misuse(site, BGS_EINVAL, NULL, "bgs_deferred_complete(%u): status outside "
                      "100-599; the handle is still valid", status);
    if (type != NULL && strpbrk(type, "\r\n") != NULL)
        return misuse(site, BGS_EINVAL, NULL, "bgs_deferred_complete(%u): content type "
                      "contains CR or LF; the handle is still valid", status);
    answer a = {
        .status = status,
        .type = xstrdup(type ? type : "text/plain; charset=utf-8"),
        .body = len ? xmemdup(body, len) : NULL,
        .len = len,
    };
    bgs_deferred *d = claim(h, site, "bgs_deferred_complete", NULL, &code);
    int moved = d ? settle(d, DEFERRED_COMPLETED, 0, &a, 0) : 0;
    free(a.type); /* still ours when the handle was no longer pending */
    free(a.body);
    if (d == NULL)
        return code;
    return moved ? 0 : BGS_ESTATE; /* the deadline or shutdown came first */
}

void deferred_host_release(void *h, const void *site)
{
    bgs_deferred *d = claim(h, site, "bgs_deferred_release", "nothing", NULL);
    if (d != NULL)
        settle(d, DEFERRED_RELEASED, 0, NULL, 0);
}

void *deferred_take_body(bgs_deferred *d)
{
    pthread_mutex_lock(&lock);
    void *body = d->body;
    d->body = NULL;
    pthread_mutex_unlock(&lock);
    return body;
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
    if (d != NULL)
        settle(d, DEFERRED_GONE, !delivered, NULL, 0);
}

void deferred_shutdown_all(void)
{
    shutdown_matching(NULL);
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
