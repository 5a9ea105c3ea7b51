/*
 * queue_redis.h - the queue backend on the Redis Streams broker
 * (broker.h), behind queue.h's vtable: named tasks go to the app's
 * stream, jobs that stay in this process (ad hoc tasks) to an in-memory
 * queue inside it.
 *
 * Two roles, one backend:
 * - A server (consume = 0) adds its named tasks to the stream and does not
 *   read it.  A node it added stays linked here until the notice of its
 *   final state arrives (PREFIX:done, written by whichever worker ran
 *   it); then the `finished` hook hands the node back with the task's
 *   record, so watchers, ?wait= and deferred responses complete here.
 * - A worker (consume = N) also reads the stream through the consumer
 *   group, up to N jobs at a time: each becomes a node through the
 *   `adopt` hook and is handed out by take.  ack finishes it in Redis
 *   (XACK, the record with its result, the notice; a "failed" job goes
 *   to the dead letters); nack sends it to the delayed set, to run again
 *   on whichever worker reads it when due, and hands the node back
 *   through `released` (a node enqueued here waits for its notice
 *   instead, like any it added; after shutdown it stays the caller's,
 *   and nack says QUEUE_ELSEWHERE).  With Redis away, nack keeps the job
 *   here to retry it itself; after shutdown it cannot, and says
 *   QUEUE_ELSEWHERE too: the entry stays pending in Redis, for another
 *   worker to claim after the visibility timeout.  Jobs of a name at its
 *   max_concurrency across all workers are put back for a moment (a
 *   lease per running job, renewed with the entry).
 *
 * Threads: the queue operations are thread-safe (queue.h).  One
 * background thread of the backend reads the stream (worker), reads the
 * notices (when nodes added here wait for them), touches running entries
 * and their leases more often than the visibility timeout, and calls the
 * hooks, one at a time, with no lock of the backend held.
 */
#ifndef BGSERVE_QUEUE_REDIS_H
#define BGSERVE_QUEUE_REDIS_H

#include "broker.h"
#include "queue.h"

typedef struct queue_redis_hooks {
    /* The job of a node enqueued here; a NULL name keeps it in this
     * process (an ad hoc task).  Required. */
    queue_describe_fn describe;
    /* The task name's limits in this app: 0 with *max_concurrency (0: no
     * cap), -1 when the app has no such task (why says so: the job is
     * dead-lettered), or -2 when no app is loaded yet (the job is put
     * back for a moment, no attempt counted).  Required when consuming. */
    int (*limits)(void *arg, const char *name, unsigned *max_concurrency, char *why,
                  size_t cap);
    /* Make a node for job m read from the stream; m->attempt is the
     * number of this run.  NULL: it cannot run here (why says so; it is
     * dead-lettered).  Required when consuming. */
    queue_node *(*adopt)(void *arg, const broker_msg *m, char *why, size_t cap);
    /* A node enqueued here reached its final state elsewhere: rec is its
     * record (NULL when it expired or could not be read).  The node is
     * no longer linked.  Required. */
    void (*finished)(void *arg, queue_node *n, const broker_record *rec);
    /* An adopted node goes on elsewhere (nack, or this worker's stop,
     * sent its job to the delayed set, for any worker): forget it.  A
     * node enqueued here is not released: it waits for the notice of
     * its final state.  Required when consuming. */
    void (*released)(void *arg, queue_node *n);
    /* A node enqueued here was read back from the stream to run here:
     * m->attempt is the number of this run (an earlier one may have run
     * on another worker).  May be NULL. */
    void (*rejoin)(void *arg, queue_node *n, const broker_msg *m);
    /* Called by ack, before the job is finished in Redis: the result to
     * record (leave o as it is for none).  May be NULL. */
    void (*result)(void *arg, queue_node *n, broker_outcome *o);
    void *arg;
} queue_redis_hooks;

typedef struct queue_redis_config {
    unsigned consume;     /* 0: a server (never reads the stream);
                           * N: a worker running up to N jobs at once */
    unsigned linger_us;   /* of the in-memory queue inside */
    sched *sched;         /* its timer (borrowed; outlives the queue) */
} queue_redis_config;

/* A backend on b (not owned: close it after queue_destroy).  Starts the
 * background thread.  NULL when the thread cannot start. */
queue *queue_redis_new(broker *b, const queue_redis_config *cfg, const queue_redis_hooks *h);

/*
 * A server's write-ahead (a response held until Redis has its tasks):
 * add the n named jobs of nodes[] to the stream now, all or none, while
 * the nodes stay their owner's.  0; BGS_EFULL (Redis away or over its
 * capacity: why says which, and a line is logged); BGS_ESHUTDOWN.
 * seq nonzero: nodes[] are the steps of a sequence; only the first goes
 * to the stream now, the workers move on the others (broker_enqueue_seq).
 * The owner then hands each over with queue_redis_link (instead of
 * enqueue: it is in the stream already), or, if it never will, calls
 * queue_redis_forget (the job runs on the workers, untracked here).
 */
int queue_redis_write(queue *q, queue_node *const *nodes, size_t n, int seq, char *why,
                      size_t cap);
/* Enqueue (queue.h) the one node n, ready at once; when Redis refuses its
 * job (BGS_EFULL), why (cap bytes) says what it answered, in the words of
 * queue_redis_write (else it is left ""), and *hint what to do about it,
 * "; " first (over --broker-capacity, or an error Redis answered; else
 * it is left "").  0, BGS_EFULL, BGS_ESHUTDOWN. */
int queue_redis_enqueue(queue *q, queue_node *n, queue_done_fn done, void *done_arg, char *why,
                        size_t cap, const char **hint);
/* Link n, written ahead: from now on it is the queue's until its final
 * state (a notice that came meanwhile is acted on now).  0, or
 * BGS_EINVAL when n was not written ahead. */
int queue_redis_link(queue *q, queue_node *n);
/* untracked nonzero: log that the job runs on the workers untracked
 * here; 0 when its end is known already (a step skipped in Redis too, or
 * one the stop report names). */
void queue_redis_forget(queue *q, uint64_t id, int untracked);

/*
 * Watch task id, which another process added (a server that did not
 * accept it, asked for it by id): fn is called once, on the backend's
 * thread, with the task's record when the notice of its final state
 * comes; with NULL when its record expired or could not be read, or at
 * shutdown.  0: watching; 1: final already (or shutting down; fn is not
 * called); BGS_ENOTFOUND: Redis has no record of it; BGS_EFULL: Redis is
 * away.  It may be called before this returns.
 */
typedef void (*queue_redis_watch_fn)(void *arg, uint64_t id, const broker_record *rec);
int queue_redis_watch(queue *q, uint64_t id, queue_redis_watch_fn fn, void *arg);

/* After shutdown: a node added here that is still waiting for the notice
 * of its final state (its task is in Redis, queued or running on a
 * worker), back to its owner; NULL when none is left.  try_take hands
 * back only the jobs of this process. */
queue_node *queue_redis_take_sent(queue *q);

/* A worker that stops: read nothing more from the stream (a job a read
 * in progress returns goes back at once), keep touching the running
 * ones; one log line says so.  A job acked cancelled after shutdown (its
 * run interrupted by the stop, or never started) is handed back to the
 * delayed set for another worker, its attempt not counted.  Nothing for
 * a server. */
void queue_redis_drain(queue *q);

/* A worker that stops: hand the job of n (read from the stream and taken,
 * not final: never started, or waiting here for a retry Redis could not
 * take) back to the delayed set for another worker, its attempt not
 * counted, as ack with QUEUE_CANCELLED does after shutdown (before the
 * queue is shut down too), and log where it went.  n is the caller's
 * again.  0: handed back; QUEUE_ELSEWHERE: Redis did not take it (why,
 * cap bytes, says what it answered): its entry stays pending in Redis,
 * with the attempt it was read for counted, and another worker claims it
 * after the visibility timeout; BGS_ENOTFOUND: n is not a job read from
 * the stream (the caller keeps it as it was). */
int queue_redis_hand_back(queue *q, queue_node *n, char *why, size_t cap);

/* 1 when q runs jobs it reads from the stream (a worker), else 0. */
int queue_redis_consumes(queue *q);

/* Jobs read from the stream and not yet acked or nacked, and nodes added
 * here waiting for their final state (stats). */
void queue_redis_counts(queue *q, size_t *held, size_t *sent);
/* Watches of other processes' tasks still waiting (stats). */
size_t queue_redis_watches(queue *q);

#endif
