/*
 * sched.c - a timer thread: a binary min-heap of sched_timers ordered by
 * due time, and one thread that sleeps until the earliest is due.  Each
 * scheduler is a value (sched.h: each task engine owns one).
 *
 * State (all guarded by s->mu): the heap, `firing` (the timer whose
 * callback runs right now, or NULL), the thread's running/stopping flags.
 * cv wakes the thread when an earlier timer arrives, the clock moves
 * (sched_advance) or on halt; done_cv wakes sched_cancel and
 * sched_advance callers waiting for callbacks.  The callback runs with mu
 * released, so it may call sched_add.  Lock order: callers' locks may be
 * held around sched_add (it only takes mu); sched_cancel and
 * sched_advance may wait for a callback, so never hold a lock a callback
 * takes while calling them.
 */
#include "sched.h"

#include "util.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

struct sched {
    pthread_mutex_t mu;
    pthread_cond_t cv;        /* CLOCK_MONOTONIC */
    pthread_cond_t done_cv;   /* a callback returned */
    sched_timer **heap;       /* mu */
    size_t heap_len, heap_cap; /* mu */
    sched_timer *firing;      /* mu */
    int running, stopping;    /* mu */
    pthread_t thread;         /* written by sched_run, joined by sched_halt */
};

/* ---- heap (mu held) ------------------------------------------------- */

static void heap_set(sched *s, size_t i, sched_timer *t)
{
    s->heap[i] = t;
    t->slot = i + 1;
}

static void sift_up(sched *s, size_t i)
{
    sched_timer *t = s->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (s->heap[p]->due_us <= t->due_us)
            break;
        heap_set(s, i, s->heap[p]);
        i = p;
    }
    heap_set(s, i, t);
}

static void sift_down(sched *s, size_t i)
{
    sched_timer *t = s->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        uint64_t best = t->due_us;
        if (l < s->heap_len && s->heap[l]->due_us < best) {
            m = l;
            best = s->heap[l]->due_us;
        }
        if (r < s->heap_len && s->heap[r]->due_us < best)
            m = r;
        if (m == i)
            break;
        heap_set(s, i, s->heap[m]);
        i = m;
    }
    heap_set(s, i, t);
}

static void heap_remove(sched *s, sched_timer *t)
{
    size_t i = t->slot - 1;
    sched_timer *last = s->heap[--s->heap_len];

    t->slot = 0;
    if (i == s->heap_len)
        return;
    heap_set(s, i, last);
    if (i > 0 && s->heap[(i - 1) / 2]->due_us > last->due_us)
        sift_up(s, i);
    else
        sift_down(s, i);
}

/* ---- public --------------------------------------------------------- */

sched *sched_new(void)
{
    sched *s = xcalloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    util_cond_init_mono(&s->cv);
    pthread_cond_init(&s->done_cv, NULL);
    return s;
}

void sched_add(sched *s, sched_timer *t, uint64_t due_us, sched_fn fn)
{
    pthread_mutex_lock(&s->mu);
    if (s->heap_len == s->heap_cap) {
        s->heap_cap = s->heap_cap ? s->heap_cap * 2 : 64;
        s->heap = xrealloc(s->heap, s->heap_cap * sizeof(*s->heap));
    }
    t->due_us = due_us;
    t->fn = fn;
    heap_set(s, s->heap_len, t);
    s->heap_len++;
    sift_up(s, s->heap_len - 1);
    if (s->running && s->heap[0] == t)
        pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

int sched_cancel(sched *s, sched_timer *t)
{
    int removed = 0;

    pthread_mutex_lock(&s->mu);
    while (s->firing == t)
        pthread_cond_wait(&s->done_cv, &s->mu);
    if (t->slot != 0) {
        heap_remove(s, t);
        removed = 1;
    }
    pthread_mutex_unlock(&s->mu);
    return removed;
}

size_t sched_pending(const sched *s)
{
    sched *m = (sched *)s; /* the lock is not part of the value */
    size_t n;

    pthread_mutex_lock(&m->mu);
    n = m->heap_len;
    pthread_mutex_unlock(&m->mu);
    return n;
}

uint64_t sched_next_due(const sched *s)
{
    sched *m = (sched *)s;
    uint64_t due;

    pthread_mutex_lock(&m->mu);
    due = m->heap_len ? m->heap[0]->due_us : 0;
    pthread_mutex_unlock(&m->mu);
    return due;
}

size_t sched_advance(sched *s, uint64_t us)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->heap_len;
    uint64_t now = util_now_us();
    /* The same shift for all, clamped at now: a monotone map, so the heap
     * keeps its order. */
    for (size_t i = 0; i < s->heap_len; i++) {
        sched_timer *t = s->heap[i];
        t->due_us = t->due_us > now + us ? t->due_us - us : now;
    }
    if (s->running) {
        pthread_cond_signal(&s->cv);
        /* Until everything due by now has fired (callbacks re-arming
         * themselves at once included). */
        while (s->running && !s->stopping &&
               (s->firing || (s->heap_len && s->heap[0]->due_us <= now)))
            pthread_cond_wait(&s->done_cv, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void *sched_main(void *arg)
{
    sched *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        uint64_t now = util_now_us();
        if (s->heap_len == 0) {
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        if (s->heap[0]->due_us > now) {
            struct timespec ts = util_mono_timespec(s->heap[0]->due_us);
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            continue;
        }
        sched_timer *t = s->heap[0];
        heap_remove(s, t);
        sched_fn fn = t->fn;
        s->firing = t;
        pthread_mutex_unlock(&s->mu);
        fn(t);
        pthread_mutex_lock(&s->mu);
        s->firing = NULL;
        pthread_cond_broadcast(&s->done_cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int sched_run(sched *s)
{
    int rc = 0;

    pthread_mutex_lock(&s->mu);
    if (s->running)
        goto out;
    s->stopping = 0;
    if (pthread_create(&s->thread, NULL, sched_main, s) != 0) {
        rc = -1;
        goto out;
    }
    s->running = 1;
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void sched_halt(sched *s)
{
    pthread_mutex_lock(&s->mu);
    if (!s->running || s->stopping) {
        pthread_mutex_unlock(&s->mu);
        return;
    }
    s->stopping = 1;
    pthread_cond_signal(&s->cv);
    pthread_cond_broadcast(&s->done_cv); /* sched_advance callers give up */
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_lock(&s->mu);
    s->running = 0;
    pthread_mutex_unlock(&s->mu);
}

void sched_free(sched *s)
{
    if (s == NULL)
        return;
    sched_halt(s);
    free(s->heap);
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->done_cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
