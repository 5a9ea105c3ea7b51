/*
 * workers.c - the task thread pool (see workers.h).
 *
 * Each thread loops: block in queue_take, run the node, repeat, until
 * the queue is shut down.  `busy` is an atomic gauge read by stats.
 * `exited` and `gone` (per thread) are guarded by mu; workers_stop waits
 * on cv for threads to leave, with a deadline, because a thread stuck in
 * plugin code cannot be killed.
 */
#include "workers.h"

#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

struct workers {
    queue *q;
    workers_run_fn run;
    void *arg;
    unsigned total;          /* immutable after start */
    atomic_uint busy;
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* CLOCK_MONOTONIC; signalled as threads exit */
    unsigned exited;         /* guarded by mu */
    unsigned char *gone;     /* per thread, 1 once it left; guarded by mu */
    pthread_t *threads;
};

typedef struct worker_arg {
    workers *w;
    unsigned index;
} worker_arg;

static void *worker_main(void *p)
{
    worker_arg *wa = p;
    workers *w = wa->w;
    unsigned index = wa->index;
    queue_node *n;

    free(wa);
    while ((n = queue_take(w->q)) != NULL) {
        atomic_fetch_add(&w->busy, 1);
        w->run(n, w->arg);
        atomic_fetch_sub(&w->busy, 1);
    }
    pthread_mutex_lock(&w->mu);
    w->gone[index] = 1;
    w->exited++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

workers *workers_start(unsigned n, queue *q, workers_run_fn run, void *arg)
{
    workers *w = xcalloc(1, sizeof(*w));

    w->q = q;
    w->run = run;
    w->arg = arg;
    atomic_init(&w->busy, 0);
    pthread_mutex_init(&w->mu, NULL);
    util_cond_init_mono(&w->cv);
    w->gone = xcalloc(n ? n : 1, 1);
    w->threads = xcalloc(n ? n : 1, sizeof(pthread_t));
    for (unsigned i = 0; i < n; i++) {
        worker_arg *wa = xmalloc(sizeof(*wa));
        wa->w = w;
        wa->index = i;
        if (pthread_create(&w->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            break;
        }
        w->total++;
    }
    if (w->total == 0) {
        workers_stop(w, 0);
        return NULL;
    }
    return w;
}

unsigned workers_busy(const workers *w)
{
    return w ? atomic_load(&((workers *)w)->busy) : 0;
}

unsigned workers_total(const workers *w)
{
    return w ? w->total : 0;
}

unsigned workers_stop(workers *w, uint64_t deadline_us)
{
    unsigned stuck;

    pthread_mutex_lock(&w->mu);
    while (w->exited < w->total) {
        struct timespec ts = util_mono_timespec(deadline_us);
        if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT)
            break;
    }
    stuck = w->total - w->exited;
    for (unsigned i = 0; i < w->total; i++) {
        if (w->gone[i])
            pthread_join(w->threads[i], NULL);
        else
            pthread_detach(w->threads[i]);
    }
    pthread_mutex_unlock(&w->mu);
    if (stuck == 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w->gone);
        free(w->threads);
        free(w);
    }
    return stuck;
}
