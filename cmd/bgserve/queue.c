/*
 * queue.c - the in-memory queue backend (see queue.h for the interface).
 *
 * State: one singly linked FIFO of queue_nodes embedded in the callers'
 * items, its depth, the number of idle consumers and a shutdown flag, all
 * guarded by mem_queue.mu.  Producers (HTTP threads, the scheduler) push;
 * workers pop.  A producer signals cv only when an idle consumer is not
 * already being woken for the nodes queued so far (`wakeups` counts
 * signals not yet taken by a waiter), and signals after unlocking, so a
 * burst of pushes (four tasks of one response) wakes one worker instead
 * of four, and a woken worker does not block at once on the mutex its
 * producer still holds.  See bench/README.md for the numbers.
 */
#include "queue.h"

#include "bgserve.h"
#include "util.h"

#include <pthread.h>
#include <stdlib.h>

typedef struct mem_queue {
    queue base;
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* consumers wait here for a node or shutdown */
    queue_node *head, *tail; /* guarded by mu */
    size_t depth;            /* guarded by mu */
    size_t cap;              /* immutable; 0: unbounded */
    unsigned idle;           /* consumers blocked in dequeue; guarded by mu */
    unsigned wakeups;        /* signals not yet taken by a waiter; guarded by mu */
    int shut;                /* guarded by mu */
} mem_queue;

static mem_queue *mq(queue *q)
{
    return UTIL_CONTAINER_OF(q, mem_queue, base);
}

/* Link n at the tail; mu held.  Returns 1 when the caller must signal cv
 * once it has unlocked mu.  A node is always either covered by a pending
 * wake-up or left for a consumer that is awake (it re-checks the list
 * before it waits), so none is stranded. */
static int push_locked(mem_queue *m, queue_node *n)
{
    n->next = NULL;
    if (m->tail)
        m->tail->next = n;
    else
        m->head = n;
    m->tail = n;
    m->depth++;
    if (m->idle > m->wakeups && m->depth > m->wakeups) {
        m->wakeups++;
        return 1;
    }
    return 0;
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

static int mem_enqueue(queue *q, queue_node *n)
{
    mem_queue *m = mq(q);
    int rc = 0, wake = 0;

    pthread_mutex_lock(&m->mu);
    if (m->shut)
        rc = BGS_ESHUTDOWN;
    else if (m->cap != 0 && m->depth >= m->cap)
        rc = BGS_EFULL;
    else
        wake = push_locked(m, n);
    pthread_mutex_unlock(&m->mu);
    if (wake)
        pthread_cond_signal(&m->cv);
    return rc;
}

static int mem_requeue(queue *q, queue_node *n)
{
    mem_queue *m = mq(q);
    int rc = 0, wake = 0;

    pthread_mutex_lock(&m->mu);
    if (m->shut)
        rc = BGS_ESHUTDOWN;
    else
        wake = push_locked(m, n);
    pthread_mutex_unlock(&m->mu);
    if (wake)
        pthread_cond_signal(&m->cv);
    return rc;
}

static queue_node *mem_dequeue(queue *q)
{
    mem_queue *m = mq(q);
    queue_node *n = NULL;

    pthread_mutex_lock(&m->mu);
    while (m->head == NULL && !m->shut) {
        m->idle++;
        pthread_cond_wait(&m->cv, &m->mu);
        m->idle--;
        if (m->wakeups > 0) /* ours, or a spurious wake-up standing in for it */
            m->wakeups--;
    }
    if (!m->shut)
        n = pop_locked(m);
    pthread_mutex_unlock(&m->mu);
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
