/*
 * queue.h - the task queue backend interface and the in-memory backend.
 *
 * A backend moves task items from the side that accepts them (HTTP
 * threads at submit, the scheduler for retries and periodic ticks) to the
 * worker threads.  The caller owns the items; a queue only links them
 * through the queue_node embedded in each item (UTIL_CONTAINER_OF gets
 * the item back), so pushing allocates nothing.
 *
 * The interface is a small vtable so that a durable backend (a SQLite
 * journal, a Redis Streams consumer group) can be added later without
 * touching tasks.h or the plugin ABI: enqueue records a job, dequeue hands
 * it to a worker, ack says it reached a final state (delete it from the
 * journal), requeue puts a failed run back for another attempt.
 *
 * Every operation is thread-safe.  Ownership: after enqueue/requeue
 * returns 0 the queue links the node until dequeue/try_dequeue hands it
 * back; on an error return the caller still owns it and it is not linked.
 */
#ifndef BGSERVE_QUEUE_H
#define BGSERVE_QUEUE_H

#include <stddef.h>
#include <stdint.h>

typedef struct queue_node {
    struct queue_node *next; /* owned by the queue while linked */
    uint64_t queued_us;      /* util_now_us() at its last push, set by the
                              * queue; free for the owner once handed back */
} queue_node;

typedef struct queue queue;

typedef struct queue_ops {
    const char *name; /* "memory" */
    /* Append n.  0, BGS_EFULL (the backend's own capacity is reached),
     * BGS_ESHUTDOWN (after shutdown). */
    int (*enqueue)(queue *q, queue_node *n);
    /* Append the n nodes of nodes[], in order, as one operation (one lock,
     * at most one wake-up): all or none.  0, BGS_EFULL, BGS_ESHUTDOWN. */
    int (*enqueue_batch)(queue *q, queue_node *const *nodes, size_t n);
    /* The oldest node; blocks while the queue is empty.  NULL once the
     * queue is shut down (even when nodes remain: take those with
     * try_dequeue). */
    queue_node *(*dequeue)(queue *q);
    /* The oldest node, or NULL when empty; never blocks, ignores
     * shutdown. */
    queue_node *(*try_dequeue)(queue *q);
    /* The job n (dequeued earlier) reached a final state. */
    void (*ack)(queue *q, queue_node *n);
    /* A run of n failed and it goes back for another attempt.  Never
     * BGS_EFULL: the job was accepted already.  0 or BGS_ESHUTDOWN. */
    int (*requeue)(queue *q, queue_node *n);
    /* Nodes waiting to be dequeued. */
    size_t (*depth)(queue *q);
    /* Consumers woken since the queue was made (stats: wake-ups per
     * task is what a task costs the threads that serve HTTP). */
    uint64_t (*wakeups)(queue *q);
    /* Wake every blocked dequeue; later enqueues fail. */
    void (*shutdown)(queue *q);
    /* Free the queue (not the nodes still linked). */
    void (*destroy)(queue *q);
} queue_ops;

struct queue {
    const queue_ops *ops;
};

/*
 * The in-memory backend: one FIFO list under one mutex; a consumer is
 * woken (on its own condition variable, preferring one that sleeps on
 * the waker's CPU) only when it is idle (blocked in dequeue) and no
 * wake-up is on its way already; a woken consumer that leaves
 * nodes behind wakes the next idle one; under a dense stream of pushes
 * the tasks of several requests share one wake-up, with a consumer in a
 * short timed wait (the sentry) as the backstop (queue.c explains the
 * rules and why no node is stranded).
 * cap bounds depth (BGS_EFULL beyond it); 0 means no bound.
 * linger_us is how long, under a dense stream, a queued node may wait for
 * company before a consumer is woken for it (bgserve --linger): more
 * means fewer wake-ups and a later start; 0 wakes a consumer for every
 * push that finds one idle.  Clamped to QUEUE_LINGER_MAX_US.
 */
#define QUEUE_LINGER_DEFAULT_US 30u
#define QUEUE_LINGER_MAX_US 100000u
queue *queue_mem_new(size_t cap, unsigned linger_us);

static inline int queue_enqueue(queue *q, queue_node *n) { return q->ops->enqueue(q, n); }
static inline int queue_enqueue_batch(queue *q, queue_node *const *nodes, size_t n)
{
    return q->ops->enqueue_batch(q, nodes, n);
}
static inline queue_node *queue_dequeue(queue *q) { return q->ops->dequeue(q); }
static inline queue_node *queue_try_dequeue(queue *q) { return q->ops->try_dequeue(q); }
static inline void queue_ack(queue *q, queue_node *n) { q->ops->ack(q, n); }
static inline int queue_requeue(queue *q, queue_node *n) { return q->ops->requeue(q, n); }
static inline size_t queue_depth(queue *q) { return q->ops->depth(q); }
static inline uint64_t queue_wakeups(queue *q) { return q->ops->wakeups(q); }
static inline void queue_shutdown(queue *q) { q->ops->shutdown(q); }
static inline void queue_destroy(queue *q) { if (q) q->ops->destroy(q); }

#endif
