/*
 * sched.c - the timer thread: a binary min-heap of sched_timers ordered
 * by due time, and one thread that sleeps until the earliest is due.
 *
 * State (all guarded by mu): the heap, `firing` (the timer whose callback
 * runs right now, or NULL), the thread's running/stop flags.  cv wakes the
 * thread when an earlier timer arrives or on stop; done_cv wakes
 * sched_cancel callers waiting for a callback to return.  The callback
 * runs with mu released, so it may call sched_add.  Lock order: callers'
 * locks may be held around sched_add (it only takes mu); sched_cancel may
 * wait for a callback, so never hold a lock a callback takes while
 * calling it.
 */
#include "sched.h"

#include "util.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t cv;         /* CLOCK_MONOTONIC; set up by sched_start */
static int cv_ready;              /* cv initialised; guarded by mu */
static sched_timer **heap;        /* guarded by mu */
static size_t heap_len, heap_cap; /* guarded by mu */
static sched_timer *firing;       /* guarded by mu */
static int running, stopping;     /* guarded by mu */
static unsigned users;            /* sched_start calls not yet stopped; mu */
static pthread_t thread;          /* written by start, joined by stop */

/* ---- heap (mu held) ------------------------------------------------- */

static void heap_set(size_t i, sched_timer *t)
{
    heap[i] = t;
    t->slot = i + 1;
}

static void sift_up(size_t i)
{
    sched_timer *t = heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (heap[p]->due_us <= t->due_us)
            break;
        heap_set(i, heap[p]);
        i = p;
    }
    heap_set(i, t);
}

static void sift_down(size_t i)
{
    sched_timer *t = heap[i];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        uint64_t best = t->due_us;
        if (l < heap_len && heap[l]->due_us < best) {
            m = l;
            best = heap[l]->due_us;
        }
        if (r < heap_len && heap[r]->due_us < best)
            m = r;
        if (m == i)
            break;
        heap_set(i, heap[m]);
        i = m;
    }
    heap_set(i, t);
}

static void heap_remove(sched_timer *t)
{
    size_t i = t->slot - 1;
    sched_timer *last = heap[--heap_len];

    t->slot = 0;
    if (i == heap_len)
        return;
    heap_set(i, last);
    if (i > 0 && heap[(i - 1) / 2]->due_us > last->due_us)
        sift_up(i);
    else
        sift_down(i);
}

/* ---- public --------------------------------------------------------- */

void sched_add(sched_timer *t, uint64_t due_us, sched_fn fn)
{
    pthread_mutex_lock(&mu);
    if (heap_len == heap_cap) {
        heap_cap = heap_cap ? heap_cap * 2 : 64;
        heap = xrealloc(heap, heap_cap * sizeof(*heap));
    }
    t->due_us = due_us;
    t->fn = fn;
    heap_set(heap_len, t);
    heap_len++;
    sift_up(heap_len - 1);
    if (running && heap[0] == t)
        pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

int sched_cancel(sched_timer *t)
{
    int removed = 0;

    pthread_mutex_lock(&mu);
    while (firing == t)
        pthread_cond_wait(&done_cv, &mu);
    if (t->slot != 0) {
        heap_remove(t);
        removed = 1;
    }
    pthread_mutex_unlock(&mu);
    return removed;
}

size_t sched_pending(void)
{
    size_t n;

    pthread_mutex_lock(&mu);
    n = heap_len;
    pthread_mutex_unlock(&mu);
    return n;
}

static void *sched_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    while (!stopping) {
        uint64_t now = util_now_us();
        if (heap_len == 0) {
            pthread_cond_wait(&cv, &mu);
            continue;
        }
        if (heap[0]->due_us > now) {
            struct timespec ts = util_mono_timespec(heap[0]->due_us);
            pthread_cond_timedwait(&cv, &mu, &ts);
            continue;
        }
        sched_timer *t = heap[0];
        heap_remove(t);
        sched_fn fn = t->fn;
        firing = t;
        pthread_mutex_unlock(&mu);
        fn(t);
        pthread_mutex_lock(&mu);
        firing = NULL;
        pthread_cond_broadcast(&done_cv);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

int sched_start(void)
{
    int rc = 0;

    pthread_mutex_lock(&mu);
    if (running) {
        users++;
        goto out;
    }
    if (!cv_ready) {
        util_cond_init_mono(&cv);
        cv_ready = 1;
    }
    stopping = 0;
    if (pthread_create(&thread, NULL, sched_main, NULL) != 0) {
        rc = -1;
        goto out;
    }
    running = 1;
    users = 1;
out:
    pthread_mutex_unlock(&mu);
    return rc;
}

void sched_stop(void)
{
    pthread_mutex_lock(&mu);
    if (!running || --users > 0) { /* another user still needs it */
        pthread_mutex_unlock(&mu);
        return;
    }
    stopping = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(thread, NULL);
    pthread_mutex_lock(&mu);
    running = 0;
    pthread_mutex_unlock(&mu);
}
