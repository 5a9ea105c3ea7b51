/*
 * queue.h - the task queue backend interface and the in-memory backend.
 *
 * A backend moves jobs from the side that accepts them (HTTP threads at
 * submit, the scheduler for periodic ticks, workers for retries) to the
 * worker threads.  The in-memory backend (queue_mem_new, below) is the
 * first implementation; the SQLite journal (queue_journal.h, over
 * journal.h) is the second, and a Redis Streams consumer group is meant
 * to be the next, behind the same vtable, with no change to tasks.h or
 * the plugin ABI.
 *
 * The contract every backend keeps:
 *
 * Ownership.  The caller owns the items; a job is a queue_node embedded
 * in the caller's item (UTIL_CONTAINER_OF gets the item back), so the
 * in-memory backend allocates nothing per job.  After enqueue or nack
 * returns 0 the queue links the node until take/try_take hands it back;
 * on an error return the caller still owns it and it is not linked.
 * A backend never frees a node and never touches one it handed back,
 * except through ack/nack, which the holder of the node calls.  A backend
 * that keeps a copy of the job elsewhere (a row, a stream entry) learns
 * what to write from a queue_describe_fn its constructor takes.
 *
 * Times.  not_before_us and retry_at_us are monotonic microseconds
 * (util_now_us); 0 or a time already past means "at once".  A node is
 * handed out no earlier than its time; queue_node.queued_us is set by the
 * queue to when the node became ready (the later of its push and its
 * time), which is where dispatch latency is measured from.  Waiting nodes
 * are timed by the timer thread (sched.h): they become ready only while
 * it runs.
 *
 * Lifecycle of a job: enqueue (ready, or waiting for its time) -> take
 * -> ack (final) or nack (back, ready at retry_at_us) -> take ... .  ack
 * and nack are fire-and-forget: a durable backend records them when it
 * can, and one it could not record is logged by the backend, not
 * reported, so after a crash such a job may run once more (at least
 * once).  A node handed back by try_take after shutdown and never acked
 * stays recorded: a durable backend offers it again at its next start.
 *
 * Durability.  enqueue takes an optional completion, done(arg, status,
 * msg), called exactly once for each enqueue that returned 0, and never
 * for one that did not: status 0 when the whole batch is recorded where
 * it survives this process (a durable backend: committed to disk, or
 * acknowledged by the broker), or a negative BGS_E* code with msg saying
 * what went wrong (valid during the call only).  It may run before
 * enqueue returns, on the enqueuing thread (the in-memory backend always
 * does so, with status 0: memory is as durable as it gets), or later on a
 * thread of the backend's, in enqueue order.  A failed completion does
 * not unlink anything: the jobs stay queued and run in this process; they
 * are only not recoverable after a crash, and the caller decides what to
 * tell whom.  done runs with no queue lock held and may call any
 * operation but destroy.
 *
 * Threads.  Every operation is thread-safe except destroy, which runs
 * once, after shutdown, when no other call is in progress and every
 * consumer has returned from take.  Errors are the negative BGS_E* codes
 * of bgserve.h: BGS_EFULL (the backend's own capacity; a nack is never
 * refused for it, the job was accepted already) and BGS_ESHUTDOWN
 * (after shutdown).
 */
#ifndef BGSERVE_QUEUE_H
#define BGSERVE_QUEUE_H

#include "sched.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

typedef struct queue_node {
    struct queue_node *next; /* owned by the queue while linked */
    uint64_t queued_us;      /* when it became ready (util_now_us), set by
                              * the queue; free for the owner once handed back */
} queue_node;

typedef struct queue queue;

/* Told once whether an enqueued batch is durable (see Durability). */
typedef void (*queue_done_fn)(void *arg, int status, const char *msg);

/* What a durable backend writes for a job, filled in by the owner of the
 * nodes (queue_describe_fn); pointers valid until the node is acked.  A
 * job without a name (an ad hoc function task) cannot be written out: a
 * durable backend keeps it in memory only and counts it apart. */
typedef struct queue_job {
    uint64_t id;
    const char *name;       /* NULL: memory only */
    const void *payload;
    size_t len;
    uint32_t attempts;      /* runs started so far (the next is attempts + 1) */
    uint32_t max_attempts;
    const char *request_id; /* NULL when none */
    int await_start;        /* 1: a durable backend has its start on disk before
                             * it hands the job out (queue_journal_lazy_starts) */
} queue_job;
typedef void (*queue_describe_fn)(const queue_node *n, queue_job *out, void *arg);

/* How a job ended, for ack (a durable backend records it).  A value until
 * a backend writes it out: queue_end_name gives its text at that edge. */
typedef enum queue_end {
    QUEUE_SUCCEEDED,
    QUEUE_FAILED,    /* the attempts are exhausted: a durable backend
                      * dead-letters it */
    QUEUE_CANCELLED, /* stopped (a timeout, a cancel, shutdown) */
} queue_end;
typedef struct queue_outcome {
    queue_end end;
    const char *error;       /* NULL when none */
} queue_outcome;

/* "succeeded", "failed", "cancelled" (the task states of the same names). */
const char *queue_end_name(queue_end e);

typedef struct queue_ops {
    const char *name; /* "memory" */
    /* Append the n nodes of nodes[], in order, as one operation (one lock,
     * at most one wake-up): all or none, ready at not_before_us.  0,
     * BGS_EFULL, BGS_ESHUTDOWN.  done (may be NULL): see Durability. */
    int (*enqueue)(queue *q, queue_node *const *nodes, size_t n, uint64_t not_before_us,
                   queue_done_fn done, void *done_arg);
    /* The oldest ready node; blocks while there is none.  NULL once the
     * queue is shut down (even when nodes remain: take those with
     * try_take). */
    queue_node *(*take)(queue *q);
    /* The oldest ready node, or NULL; never blocks.  After shutdown it
     * also hands back the nodes still waiting for their time, so that
     * their owner can finish every one. */
    queue_node *(*try_take)(queue *q);
    /* The job n (taken earlier) reached a final state. */
    void (*ack)(queue *q, queue_node *n, const queue_outcome *o);
    /* A run of n (taken earlier) failed with error why (may be NULL);
     * it goes back, to be taken again no earlier than retry_at_us.  0,
     * BGS_ESHUTDOWN (the caller keeps n; the job will not run again), or
     * QUEUE_ELSEWHERE (after shutdown, a backend shared with other
     * processes handed the job to them: the caller keeps n, and the
     * next attempt runs elsewhere). */
    int (*nack)(queue *q, queue_node *n, uint64_t retry_at_us, const char *why);
    /* Ready nodes waiting to be taken (not those waiting for their time). */
    size_t (*depth)(queue *q);
    /* Consumers woken since the queue was made (stats: wake-ups per
     * task is what a task costs the threads that serve HTTP). */
    uint64_t (*wakeups)(queue *q);
    /* Wake every blocked take; later enqueues and nacks fail. */
    void (*shutdown)(queue *q);
    /* Free the queue (not the nodes still linked). */
    void (*destroy)(queue *q);
} queue_ops;

struct queue {
    const queue_ops *ops;
};

/* nack's result for a job that went back to a store other processes
 * read (queue_redis: the broker's delayed set) when this queue was shut
 * down already: the node stays the caller's, as for BGS_ESHUTDOWN, but
 * the job is not lost and must not be reported so.  Not an error code:
 * positive, apart from the BGS_E* ones. */
#define QUEUE_ELSEWHERE 1

/*
 * The in-memory backend: one FIFO list under one mutex; a consumer is
 * woken (on its own condition variable, preferring one that sleeps on
 * the waker's CPU) only when it is idle (blocked in take) and no
 * wake-up is on its way already; a woken consumer that leaves
 * nodes behind wakes the next idle one; under a dense stream of pushes
 * the tasks of several requests share one wake-up, with a consumer in a
 * short timed wait (the sentry) as the backstop (queue.c explains the
 * rules and why no node is stranded).
 * cap bounds the nodes linked, ready or waiting (BGS_EFULL beyond it);
 * 0 means no bound.  Durable at once; ack records nothing.
 * linger_us is how long, under a dense stream, a queued node may wait for
 * company before a consumer is woken for it (bgserve --linger): more
 * means fewer wake-ups and a later start; 0 wakes a consumer for every
 * push that finds one idle; QUEUE_LINGER_ADAPTIVE (the default) follows
 * the load, from 0 when it is light or the CPUs have time to spare up to
 * PACE_MAX_US, by experiment under load (pace.h).  Clamped to
 * QUEUE_LINGER_MAX_US.
 */
#define QUEUE_LINGER_ADAPTIVE UINT_MAX
#define QUEUE_LINGER_DEFAULT QUEUE_LINGER_ADAPTIVE
#define QUEUE_LINGER_MAX_US 100000u
/* Jobs waiting for a later time are timed on s (borrowed: it outlives
 * the queue; the engine's, tasks_sched). */
queue *queue_mem_new(sched *s, size_t cap, unsigned linger_us);
/* The longest a node waits for company under a fixed linger_us: the
 * sentry's watch (0 for a linger of 0).  With QUEUE_LINGER_ADAPTIVE it is
 * queue_linger_bound_us(PACE_MAX_US). */
unsigned queue_linger_bound_us(unsigned linger_us);

static inline int queue_enqueue_at(queue *q, queue_node *const *nodes, size_t n,
                                   uint64_t not_before_us, queue_done_fn done, void *arg)
{
    return q->ops->enqueue(q, nodes, n, not_before_us, done, arg);
}
/* Ready at once, nobody told about durability. */
static inline int queue_enqueue(queue *q, queue_node *n) { return q->ops->enqueue(q, &n, 1, 0, NULL, NULL); }
static inline int queue_enqueue_batch(queue *q, queue_node *const *nodes, size_t n)
{
    return q->ops->enqueue(q, nodes, n, 0, NULL, NULL);
}
static inline queue_node *queue_take(queue *q) { return q->ops->take(q); }
static inline queue_node *queue_try_take(queue *q) { return q->ops->try_take(q); }
static inline void queue_ack(queue *q, queue_node *n, const queue_outcome *o) { q->ops->ack(q, n, o); }
static inline int queue_nack(queue *q, queue_node *n, uint64_t retry_at_us, const char *why)
{
    return q->ops->nack(q, n, retry_at_us, why);
}
static inline size_t queue_depth(queue *q) { return q->ops->depth(q); }
static inline uint64_t queue_wakeups(queue *q) { return q->ops->wakeups(q); }
static inline void queue_shutdown(queue *q) { q->ops->shutdown(q); }
static inline void queue_destroy(queue *q) { if (q) q->ops->destroy(q); }

#endif
