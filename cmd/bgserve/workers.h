/*
 * workers.h - the task thread pool: N threads, separate from the HTTP
 * threads, that take nodes from one shared queue (any idle worker takes
 * the next one, as in libuv's threadpool) and hand each to a run
 * function.
 */
#ifndef BGSERVE_WORKERS_H
#define BGSERVE_WORKERS_H

#include "queue.h"

#include <stdint.h>

typedef struct workers workers;

/* Called on a worker thread for every dequeued node; the run function
 * owns the node's item from then on. */
typedef void (*workers_run_fn)(queue_node *n, void *arg);

/* Start n threads taking from q.  NULL when no thread could be created
 * (threads already created are stopped again). */
workers *workers_start(unsigned n, queue *q, workers_run_fn run, void *arg);

/* Threads inside the run function right now / threads started. */
unsigned workers_busy(const workers *w);
unsigned workers_total(const workers *w);

/*
 * After queue_shutdown(q): wait until deadline_us (monotonic) for every
 * thread to return from its run function, join those that did, and
 * return how many did not (those are detached and abandoned: they are
 * stuck in plugin code).  w is freed when that number is 0; otherwise it
 * stays allocated because the stuck threads still use it.
 */
unsigned workers_stop(workers *w, uint64_t deadline_us);

#endif
