/*
 * queue.c - the in-memory queue backend (see queue.h for the interface).
 *
 * State: one singly linked FIFO of queue_nodes embedded in the callers'
 * items, its depth, the number of idle consumers and a shutdown flag, all
 * guarded by mem_queue.mu.  Producers (HTTP threads, the scheduler) push;
 * workers pop.
 *
 * Wake-ups are the expensive part (a futex wake and two context switches
 * per wake, against well under a microsecond of bookkeeping per task), so
 * there is at most one in flight: `wakeups` counts signals sent to idle
 * consumers and not yet taken.  A push (or a batch: the tasks of one
 * response) signals only when a consumer is idle and wakeups is 0.  A
 * consumer that pops a node and leaves others behind passes the wake on:
 * if a consumer is idle and wakeups is 0 it signals one more.  So a
 * burst of four no-op tasks costs the HTTP thread one wake instead of
 * four, and the woken worker usually runs all four before the one it
 * woke arrives; four slow tasks still spread over four workers, one hop
 * later each.  Signals go out after unlocking, so a woken consumer does
 * not block at once on the mutex its waker still holds.  See
 * bench/README.md for the numbers.
 *
 * No node is stranded.  Invariant (under mu): if the list is not empty
 * then (a) no consumer is idle, or (b) wakeups > 0, or (c) a consumer
 * holds mu in dequeue and is about to pop.  In case (a) every consumer
 * is awake and re-checks the list before it waits again (the while loop
 * in mem_dequeue).  In case (b) an idle consumer will return from
 * pthread_cond_wait, take a wake-up and pop: that is case (c).  A push
 * establishes it (it signals when a consumer is idle and none is owed).
 * A pop in case (c) re-establishes it before unlocking (it signals when
 * nodes remain, a consumer is idle and none is owed).  A consumer going
 * idle only does so when the list is empty.  A counted signal is never
 * lost while still counted: it is sent while `idle` exceeded the wakeups
 * owed, and a waiter that returns from the wait for any reason (that
 * signal, another, or spuriously) takes one count, so a signal that
 * finds no waiter was already paid for by the waiter that left early.
 * Shutdown broadcasts, so every blocked consumer returns.
 */
#include "queue.h"

#include "bgserve.h"
#include "util.h"

#include <pthread.h>
#include <stdlib.h>

/* A wake-up not taken after this long is late: another idle consumer is
 * woken too (bounds the dispatch latency when a woken worker waits for
 * a CPU). */
#define QUEUE_WAKE_LATE_US 50u

typedef struct mem_queue {
    queue base;
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* consumers wait here for a node or shutdown */
    queue_node *head, *tail; /* guarded by mu */
    size_t depth;            /* guarded by mu */
    size_t cap;              /* immutable; 0: unbounded */
    unsigned idle;           /* consumers blocked in dequeue; guarded by mu */
    unsigned wakeups;        /* signals not yet taken by a waiter; guarded by mu */
    uint64_t wake_us;        /* when the last of them was sent; guarded by mu */
    int shut;                /* guarded by mu */
} mem_queue;

static mem_queue *mq(queue *q)
{
    return UTIL_CONTAINER_OF(q, mem_queue, base);
}

/* Link n at the tail; mu held. */
static void link_locked(mem_queue *m, queue_node *n)
{
    n->next = NULL;
    if (m->tail)
        m->tail->next = n;
    else
        m->head = n;
    m->tail = n;
    m->depth++;
}

/* Nodes are queued (just pushed, or left behind by a pop); mu held.
 * Returns 1 when the caller must signal cv once it has unlocked mu: a
 * consumer is idle and no wake-up is on its way (see the top of file). */
static int need_wake_locked(mem_queue *m)
{
    if (m->head == NULL || m->idle <= m->wakeups)
        return 0;
    if (m->wakeups > 0) {
        /* A wake-up is on its way; add another only when it is late (its
         * consumer is waiting for a CPU), so a busy machine cannot hold
         * every queued task behind one descheduled worker. */
        uint64_t now = util_now_us();
        if (now - m->wake_us < QUEUE_WAKE_LATE_US)
            return 0;
        m->wake_us = now;
    } else {
        m->wake_us = util_now_us();
    }
    m->wakeups++;
    return 1;
}

static queue_node *pop_locked(mem_queue *m)
{
    queue_node *n = m->head;
    if (n == NULL)
        return NULL;
    m->head = n->next;
    if (m->head == NULL)
        m->tail = NULL;
    m->depth--;
    n->next = NULL;
    return n;
}

/* Link nodes[0..n) at the tail, all or none.  bounded: refuse with
 * BGS_EFULL past the capacity (a requeue is not bounded: its node was
 * counted when it was first queued). */
static int push_nodes(queue *q, queue_node *const *nodes, size_t n, int bounded)
{
    mem_queue *m = mq(q);
    int rc = 0, wake = 0;

    if (n == 0)
        return 0;
    pthread_mutex_lock(&m->mu);
    if (m->shut)
        rc = BGS_ESHUTDOWN;
    else if (bounded && m->cap != 0 && (m->depth >= m->cap || n > m->cap - m->depth))
        rc = BGS_EFULL;
    else {
        for (size_t i = 0; i < n; i++)
            link_locked(m, nodes[i]);
        wake = need_wake_locked(m);
    }
    pthread_mutex_unlock(&m->mu);
    if (wake)
        pthread_cond_signal(&m->cv);
    return rc;
}

static int mem_enqueue(queue *q, queue_node *n)
{
    return push_nodes(q, &n, 1, 1);
}

static int mem_enqueue_batch(queue *q, queue_node *const *nodes, size_t n)
{
    return push_nodes(q, nodes, n, 1);
}

static int mem_requeue(queue *q, queue_node *n)
{
    return push_nodes(q, &n, 1, 0);
}

static queue_node *mem_dequeue(queue *q)
{
    mem_queue *m = mq(q);
    queue_node *n = NULL;
    int wake = 0;

    pthread_mutex_lock(&m->mu);
    while (m->head == NULL && !m->shut) {
        m->idle++;
        pthread_cond_wait(&m->cv, &m->mu);
        m->idle--;
        if (m->wakeups > 0) /* ours, or a spurious wake-up standing in for it */
            m->wakeups--;
    }
    if (!m->shut) {
        n = pop_locked(m);
        wake = need_wake_locked(m); /* pass the wake on for the rest */
    }
    pthread_mutex_unlock(&m->mu);
    if (wake)
        pthread_cond_signal(&m->cv);
    return n;
}

static queue_node *mem_try_dequeue(queue *q)
{
    mem_queue *m = mq(q);
    queue_node *n;

    pthread_mutex_lock(&m->mu);
    n = pop_locked(m);
    pthread_mutex_unlock(&m->mu);
    return n;
}

static void mem_ack(queue *q, queue_node *n)
{
    /* Nothing is journalled in memory: the item itself is the record. */
    (void)q;
    (void)n;
}

static size_t mem_depth(queue *q)
{
    mem_queue *m = mq(q);
    size_t d;

    pthread_mutex_lock(&m->mu);
    d = m->depth;
    pthread_mutex_unlock(&m->mu);
    return d;
}

static void mem_shutdown(queue *q)
{
    mem_queue *m = mq(q);

    pthread_mutex_lock(&m->mu);
    m->shut = 1;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

static void mem_destroy(queue *q)
{
    mem_queue *m = mq(q);

    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static const queue_ops mem_ops = {
    .name = "memory",
    .enqueue = mem_enqueue,
    .enqueue_batch = mem_enqueue_batch,
    .dequeue = mem_dequeue,
    .try_dequeue = mem_try_dequeue,
    .ack = mem_ack,
    .requeue = mem_requeue,
    .depth = mem_depth,
    .shutdown = mem_shutdown,
    .destroy = mem_destroy,
};

queue *queue_mem_new(size_t cap)
{
    mem_queue *m = xcalloc(1, sizeof(*m));

    m->base.ops = &mem_ops;
    m->cap = cap;
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    return &m->base;
}
