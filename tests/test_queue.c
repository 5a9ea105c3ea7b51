/*
 * test_queue.c - the in-memory queue backend: FIFO order, its capacity,
 * blocking take woken by a push and by shutdown, batches (whole, in
 * order, spread over idle consumers), many producers and consumers
 * losing nothing (under fixed lingers, the adaptive one, and the adaptive
 * one swinging between its ends under the stream), and the operations of the backend contract: enqueue
 * with a not-before time, nack with a retry time, the durability
 * completion, and waiting nodes handed back after shutdown.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "bgserve.h"
#include "pace.h"
#include "queue.h"
#include "sched.h"
#include "util.h"

/* The timers of every queue here (the engine's, in the server). */
static sched *timers;

typedef struct item {
    queue_node node;
    int value;
    atomic_int seen;
} item;

static item *item_of(queue_node *n)
{
    return UTIL_CONTAINER_OF(n, item, node);
}

static void queue_fifo_order(void **state)
{
    (void)state;
    queue *q = queue_mem_new(timers, 0, QUEUE_LINGER_DEFAULT);
    item items[5];
    for (int i = 0; i < 5; i++) {
        items[i].value = i;
        assert_int_equal(queue_enqueue(q, &items[i].node), 0);
    }
    assert_int_equal(queue_depth(q), 5);
    for (int i = 0; i < 5; i++) {
        queue_node *n = queue_take(q);
        assert_non_null(n);
        assert_int_equal(item_of(n)->value, i);
    }
    assert_int_equal(queue_depth(q), 0);
    assert_null(queue_try_take(q));
    /* A requeued node goes to the back. */
    assert_int_equal(queue_enqueue(q, &items[0].node), 0);
    assert_int_equal(queue_enqueue(q, &items[1].node), 0);
    queue_node *first = queue_take(q);
    assert_int_equal(queue_nack(q, first, 0, NULL), 0);
    assert_int_equal(item_of(queue_take(q))->value, 1);
    assert_int_equal(item_of(queue_take(q))->value, 0);
    assert_string_equal(q->ops->name, "memory");
    queue_destroy(q);
}

static void queue_capacity_full(void **state)
{
    (void)state;
    queue *q = queue_mem_new(timers, 2, QUEUE_LINGER_DEFAULT);
    item a, b, c;
    assert_int_equal(queue_enqueue(q, &a.node), 0);
    assert_int_equal(queue_enqueue(q, &b.node), 0);
    assert_int_equal(queue_enqueue(q, &c.node), BGS_EFULL);
    assert_int_equal(queue_depth(q), 2);
    /* A retry of an accepted job is never refused for capacity. */
    assert_ptr_equal(queue_take(q), &a.node);
    assert_int_equal(queue_enqueue(q, &c.node), 0);
    assert_int_equal(queue_nack(q, &a.node, 0, NULL), 0);
    assert_int_equal(queue_depth(q), 3);
    assert_ptr_equal(queue_take(q), &b.node);
    assert_ptr_equal(queue_take(q), &c.node);
    assert_ptr_equal(queue_take(q), &a.node);
    queue_destroy(q);
}

typedef struct consumer {
    queue *q;
    atomic_int waiting;   /* 1 just before blocking */
    queue_node *got;
    atomic_int done;
} consumer;

static void *consume_one(void *p)
{
    consumer *c = p;
    atomic_store(&c->waiting, 1);
    c->got = queue_take(c->q);
    atomic_store(&c->done, 1);
    return NULL;
}

static void queue_dequeue_woken_by_push(void **state)
{
    (void)state;
    consumer c = {.q = queue_mem_new(timers, 0, QUEUE_LINGER_DEFAULT)};
    pthread_t t;
    item it = {.value = 42};
    assert_int_equal(pthread_create(&t, NULL, consume_one, &c), 0);
    /* Whether or not it blocked yet, the push must reach it. */
    while (!atomic_load(&c.waiting))
        sched_yield();
    assert_int_equal(queue_enqueue(c.q, &it.node), 0);
    pthread_join(t, NULL);
    assert_ptr_equal(c.got, &it.node);
    queue_destroy(c.q);
}

static void queue_dequeue_woken_by_shutdown(void **state)
{
    (void)state;
    consumer c = {.q = queue_mem_new(timers, 0, QUEUE_LINGER_DEFAULT)};
    pthread_t t;
    item it;
    assert_int_equal(pthread_create(&t, NULL, consume_one, &c), 0);
    while (!atomic_load(&c.waiting))
        sched_yield();
    queue_shutdown(c.q);
    pthread_join(t, NULL);
    assert_null(c.got);
    /* After shutdown: pushes fail, blocking dequeue returns at once,
     * try_dequeue still hands back what is left. */
    assert_int_equal(queue_enqueue(c.q, &it.node), BGS_ESHUTDOWN);
    assert_null(queue_take(c.q));
    queue_destroy(c.q);

    queue *q = queue_mem_new(timers, 0, QUEUE_LINGER_DEFAULT);
    assert_int_equal(queue_enqueue(q, &it.node), 0);
    queue_shutdown(q);
    assert_null(queue_take(q));
    assert_ptr_equal(queue_try_take(q), &it.node);
    queue_destroy(q);
}

/* Nobody to wake, nobody woken: pushes with no consumer blocked send no
 * wake-up, and the count only grows once one waits. */
static void queue_wakeups_only_for_idle_consumers(void **state)
{
    (void)state;
    consumer c = {.q = queue_mem_new(timers, 0, QUEUE_LINGER_DEFAULT)};
    item its[3];
    pthread_t t;
    for (int i = 0; i < 3; i++)
        assert_int_equal(queue_enqueue(c.q, &its[i].node), 0);
    assert_int_equal(queue_wakeups(c.q), 0);
    for (int i = 0; i < 3; i++)
        assert_ptr_equal(queue_take(c.q), &its[i].node);
    assert_int_equal(queue_wakeups(c.q), 0);

    /* A consumer blocks on the empty queue; the push must reach it, and
     * it can only have been reached by a wake-up once it blocked. */
    assert_int_equal(pthread_create(&t, NULL, consume_one, &c), 0);
    while (!atomic_load(&c.waiting))
        sched_yield();
    assert_int_equal(queue_enqueue(c.q, &its[0].node), 0);
    pthread_join(t, NULL);
    assert_ptr_equal(c.got, &its[0].node);
    assert_true(queue_wakeups(c.q) <= 1);
    queue_destroy(c.q);
}

/* A batch goes in whole, in order, or not at all. */
static void queue_batch_in_order_all_or_nothing(void **state)
{
    (void)state;
    queue *q = queue_mem_new(timers, 3, QUEUE_LINGER_DEFAULT);
    item a, b, c, d;
    queue_node *three[] = {&b.node, &c.node, &d.node};
    assert_int_equal(queue_enqueue(q, &a.node), 0);
    assert_int_equal(queue_enqueue_batch(q, three, 3), BGS_EFULL);
    assert_int_equal(queue_depth(q), 1);
    assert_int_equal(queue_enqueue_batch(q, three, 2), 0);
    assert_int_equal(queue_depth(q), 3);
    assert_ptr_equal(queue_take(q), &a.node);
    assert_ptr_equal(queue_take(q), &b.node);
    assert_ptr_equal(queue_take(q), &c.node);
    assert_null(queue_try_take(q));
    queue_shutdown(q);
    assert_int_equal(queue_enqueue_batch(q, three, 1), BGS_ESHUTDOWN);
    queue_destroy(q);
}

#define BATCH_CONSUMERS 4

typedef struct slow_pool {
    queue *q;
    atomic_int blocked;   /* consumers about to block */
    atomic_int took;      /* consumers holding a node */
    atomic_int all_met;   /* 1 once every consumer held one at the same time */
} slow_pool;

/* Take one node and hold it (a slow task) until every consumer holds one,
 * or a deadline passes. */
static void *consume_slowly(void *p)
{
    slow_pool *sp = p;
    atomic_fetch_add(&sp->blocked, 1);
    queue_node *n = queue_take(sp->q);
    if (n == NULL)
        return NULL;
    atomic_fetch_add(&sp->took, 1);
    uint64_t deadline = util_now_us() + 20u * 1000000u;
    while (atomic_load(&sp->took) < BATCH_CONSUMERS && util_now_us() < deadline)
        sched_yield();
    if (atomic_load(&sp->took) == BATCH_CONSUMERS)
        atomic_store(&sp->all_met, 1);
    return NULL;
}

/* One batch wakes one consumer, and the wake is passed on: slow nodes of
 * one batch still run side by side on every idle consumer. */
static void queue_batch_spreads_over_idle_consumers(void **state)
{
    (void)state;
    slow_pool sp = {.q = queue_mem_new(timers, 0, QUEUE_LINGER_DEFAULT)};
    pthread_t t[BATCH_CONSUMERS];
    item its[BATCH_CONSUMERS];
    queue_node *nodes[BATCH_CONSUMERS];
    for (int i = 0; i < BATCH_CONSUMERS; i++) {
        nodes[i] = &its[i].node;
        assert_int_equal(pthread_create(&t[i], NULL, consume_slowly, &sp), 0);
    }
    while (atomic_load(&sp.blocked) < BATCH_CONSUMERS)
        sched_yield();
    assert_int_equal(queue_enqueue_batch(sp.q, nodes, BATCH_CONSUMERS), 0);
    for (int i = 0; i < BATCH_CONSUMERS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&sp.took), BATCH_CONSUMERS);
    assert_int_equal(atomic_load(&sp.all_met), 1);
    queue_destroy(sp.q);
}

#define PRODUCERS 4
#define CONSUMERS 4
#define PER_PRODUCER 5000

typedef struct mpmc {
    queue *q;
    item *items;
    int base;
    atomic_int consumed;
} mpmc;

typedef struct pargs {
    mpmc *m;
    int base;
} pargs;

static void *produce(void *p)
{
    pargs *a = p;
    for (int i = 0; i < PER_PRODUCER; i++)
        assert_int_equal(queue_enqueue(a->m->q, &a->m->items[a->base + i].node), 0);
    return NULL;
}

static void *consume(void *p)
{
    mpmc *m = p;
    queue_node *n;
    while ((n = queue_take(m->q)) != NULL) {
        atomic_fetch_add(&item_of(n)->seen, 1);
        atomic_fetch_add(&m->consumed, 1);
    }
    return NULL;
}

/* The lingers the stream tests run under: none (a wake-up for every push
 * that finds a consumer idle), the default (adaptive: whatever this
 * machine's load gives), the adaptive one's bound (PACE_MAX_US, where it
 * sits when the CPUs are saturated), a long one (--linger 2000), where
 * most nodes wait for the sentry or a running consumer, and the adaptive
 * one fed a test source and windows of 100 µs that move it (halving, and
 * the experiments' probes) every few hundred microseconds, so that it
 * changes under the stream. */
typedef struct linger_case {
    unsigned linger;
    int swinging;
} linger_case;
static const linger_case linger_none = {0, 0}, linger_default = {QUEUE_LINGER_DEFAULT, 0},
                         linger_bound = {PACE_MAX_US, 0}, linger_long = {2000, 0},
                         linger_swinging = {QUEUE_LINGER_ADAPTIVE, 1};

static unsigned linger_of(void **state)
{
    return ((const linger_case *)*state)->linger;
}

/* Five windows saturated, five with time to spare, and again: with
 * time to spare the linger halves toward 0, saturated the pace
 * experiments (every other window a probe, longer or shorter, kept or
 * not as the stream's pushes say), so the linger moves under the stream
 * (pace.h).  Called by one thread at a time (the pace's measure lock). */
static int swing(void *arg, pace_reading *r)
{
    static uint64_t n, idle_sum;
    (void)arg;
    n++;
    if ((n / 5) % 2)
        idle_sum += 1000;
    r->idle = idle_sum;
    r->total = n * 1000;
    return 0;
}

static int setup_linger(void **state)
{
    if (((const linger_case *)*state)->swinging)
        pace_test_source(swing, NULL, 100);
    return 0;
}

static int teardown_linger(void **state)
{
    (void)state;
    pace_test_source(NULL, NULL, 0);
    return 0;
}

static void queue_many_producers_consumers_lose_nothing(void **state)
{
    const int total = PRODUCERS * PER_PRODUCER;
    mpmc m = {.q = queue_mem_new(timers, 0, linger_of(state))};
    m.items = calloc((size_t)total, sizeof(item));
    assert_non_null(m.items);
    pthread_t pt[PRODUCERS], ct[CONSUMERS];
    pargs pa[PRODUCERS];
    for (int i = 0; i < CONSUMERS; i++)
        assert_int_equal(pthread_create(&ct[i], NULL, consume, &m), 0);
    for (int i = 0; i < PRODUCERS; i++) {
        pa[i].m = &m;
        pa[i].base = i * PER_PRODUCER;
        assert_int_equal(pthread_create(&pt[i], NULL, produce, &pa[i]), 0);
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(pt[i], NULL);
    /* Poll (no fixed sleep) until the consumers took everything. */
    uint64_t deadline = util_now_us() + 20u * 1000000u;
    while (atomic_load(&m.consumed) < total && util_now_us() < deadline)
        sched_yield();
    queue_shutdown(m.q);
    for (int i = 0; i < CONSUMERS; i++)
        pthread_join(ct[i], NULL);
    assert_int_equal(atomic_load(&m.consumed), total);
    for (int i = 0; i < total; i++)
        assert_int_equal(atomic_load(&m.items[i].seen), 1);
    assert_int_equal(queue_depth(m.q), 0);
    free(m.items);
    queue_destroy(m.q);
}

/* Pairs of pushes back to back (a dense stream) to one consumer that
 * has just gone idle (so it waits as the sentry), then nothing: the
 * pushes leave their wake-up to each other, and the pair must still be
 * taken, by the sentry's timeout, without a further push or a shutdown
 * to shake it loose.  Then a long stream with two consumers: every node
 * taken exactly once. */
static void queue_dense_stream_tail_is_taken(void **state)
{
    enum { PAIRS = 300, TOTAL = 20000 };
    mpmc st = {.q = queue_mem_new(timers, 0, linger_of(state))};
    pthread_t t[2];
    st.items = calloc(TOTAL, sizeof(item));
    assert_non_null(st.items);
    assert_int_equal(pthread_create(&t[0], NULL, consume, &st), 0);
    uint64_t deadline = util_now_us() + 30u * 1000000u;
    for (int i = 0; i < PAIRS; i++) {
        queue_node *pair[2] = {&st.items[2 * i].node, &st.items[2 * i + 1].node};
        assert_int_equal(queue_enqueue(st.q, pair[0]), 0);
        assert_int_equal(queue_enqueue(st.q, pair[1]), 0);
        while (atomic_load(&st.consumed) < 2 * (i + 1) && util_now_us() < deadline)
            sched_yield();
        assert_int_equal(atomic_load(&st.consumed), 2 * (i + 1));
    }

    assert_int_equal(pthread_create(&t[1], NULL, consume, &st), 0);
    for (int i = 2 * PAIRS; i < TOTAL; i++)
        assert_int_equal(queue_enqueue(st.q, &st.items[i].node), 0);
    while (atomic_load(&st.consumed) < TOTAL && util_now_us() < deadline)
        sched_yield();
    assert_int_equal(atomic_load(&st.consumed), TOTAL);
    queue_shutdown(st.q);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < TOTAL; i++)
        assert_int_equal(atomic_load(&st.items[i].seen), 1);
    /* Coalescing never sends more wake-ups than there were pushes and
     * pops to send them. */
    assert_true(queue_wakeups(st.q) <= 2u * TOTAL);
    free(st.items);
    queue_destroy(st.q);
}

/* ---- not-before, nack/retry-at, durability (queue.h's contract) ---- */

typedef struct done_rec {
    atomic_int calls;
    int status;
} done_rec;

static void note_done(void *arg, int status, const char *msg)
{
    done_rec *d = arg;
    (void)msg;
    d->status = status;
    atomic_fetch_add(&d->calls, 1);
}

/* Poll try_take until it hands back a node or the deadline passes. */
static queue_node *take_within(queue *q, uint64_t us)
{
    uint64_t deadline = util_now_us() + us;
    queue_node *n;
    while ((n = queue_try_take(q)) == NULL && util_now_us() < deadline)
        sched_yield();
    return n;
}

/* The in-memory backend says "durable" once per accepted batch, before
 * enqueue returns, and never for a refused one. */
static void queue_durable_completion_once_per_batch(void **state)
{
    (void)state;
    queue *q = queue_mem_new(timers, 2, QUEUE_LINGER_DEFAULT);
    item a, b, c;
    queue_node *two[] = {&a.node, &b.node};
    done_rec d = {.status = 99};
    assert_int_equal(queue_enqueue_at(q, two, 2, 0, note_done, &d), 0);
    assert_int_equal(atomic_load(&d.calls), 1);
    assert_int_equal(d.status, 0);
    queue_node *one[] = {&c.node};
    assert_int_equal(queue_enqueue_at(q, one, 1, 0, note_done, &d), BGS_EFULL);
    assert_int_equal(atomic_load(&d.calls), 1);
    queue_shutdown(q);
    assert_int_equal(queue_enqueue_at(q, one, 1, 0, note_done, &d), BGS_ESHUTDOWN);
    assert_int_equal(atomic_load(&d.calls), 1);
    queue_destroy(q);
}

/* A node with a not-before time in the future is not handed out before
 * it (try_take finds nothing, depth counts only ready nodes) and is,
 * once the timer thread says it is due; a time in the past is now. */
static void queue_not_before_waits_for_its_time(void **state)
{
    (void)state;
    assert_int_equal(sched_run(timers), 0);
    queue *q = queue_mem_new(timers, 0, QUEUE_LINGER_DEFAULT);
    item later = {.value = 1}, now = {.value = 2}, past = {.value = 3};
    queue_node *l[] = {&later.node}, *n[] = {&now.node}, *p[] = {&past.node};
    uint64_t due = util_now_us() + 50000;
    assert_int_equal(queue_enqueue_at(q, l, 1, due, NULL, NULL), 0);
    assert_int_equal(queue_enqueue_at(q, n, 1, 0, NULL, NULL), 0);
    assert_int_equal(queue_enqueue_at(q, p, 1, 1, NULL, NULL), 0);
    assert_int_equal(queue_depth(q), 2);
    assert_ptr_equal(queue_try_take(q), &now.node);
    assert_ptr_equal(queue_try_take(q), &past.node);
    queue_node *got = take_within(q, 30u * 1000000u);
    assert_ptr_equal(got, &later.node);
    assert_true(util_now_us() >= due);
    assert_true(got->queued_us >= due); /* ready since its time, not its push */
    assert_int_equal(queue_depth(q), 0);
    queue_shutdown(q);
    queue_destroy(q);
    sched_halt(timers);
}

/* A blocked consumer is woken when a waiting node becomes due. */
static void queue_due_node_wakes_a_consumer(void **state)
{
    (void)state;
    assert_int_equal(sched_run(timers), 0);
    consumer c = {.q = queue_mem_new(timers, 0, QUEUE_LINGER_DEFAULT)};
    pthread_t t;
    item it = {.value = 7};
    queue_node *one[] = {&it.node};
    assert_int_equal(pthread_create(&t, NULL, consume_one, &c), 0);
    while (!atomic_load(&c.waiting))
        sched_yield();
    assert_int_equal(queue_enqueue_at(c.q, one, 1, util_now_us() + 20000, NULL, NULL), 0);
    pthread_join(t, NULL);
    assert_ptr_equal(c.got, &it.node);
    queue_shutdown(c.q);
    queue_destroy(c.q);
    sched_halt(timers);
}

/* nack puts a taken node back, at once or at its retry time, never
 * refused for capacity; after shutdown it is refused and the caller
 * keeps the node. */
static void queue_nack_retry_at(void **state)
{
    (void)state;
    assert_int_equal(sched_run(timers), 0);
    queue *q = queue_mem_new(timers, 1, QUEUE_LINGER_DEFAULT);
    item a, b;
    assert_int_equal(queue_enqueue(q, &a.node), 0);
    assert_ptr_equal(queue_take(q), &a.node);
    assert_int_equal(queue_enqueue(q, &b.node), 0);
    uint64_t due = util_now_us() + 30000;
    assert_int_equal(queue_nack(q, &a.node, due, "boom"), 0); /* past the cap of 1 */
    assert_ptr_equal(queue_try_take(q), &b.node);
    assert_null(queue_try_take(q)); /* a waits for its retry time */
    assert_ptr_equal(take_within(q, 30u * 1000000u), &a.node);
    assert_true(util_now_us() >= due);
    queue_shutdown(q);
    assert_int_equal(queue_nack(q, &a.node, 0, NULL), BGS_ESHUTDOWN);
    assert_null(queue_try_take(q));
    queue_destroy(q);
    sched_halt(timers);
}

/* After shutdown try_take hands back the ready nodes, then those still
 * waiting for their time, so their owner can finish every one; nothing
 * becomes ready after shutdown.  destroy frees the records of waiting
 * nodes it still holds. */
static void queue_shutdown_hands_back_waiting_nodes(void **state)
{
    (void)state;
    assert_int_equal(sched_run(timers), 0);
    queue *q = queue_mem_new(timers, 0, QUEUE_LINGER_DEFAULT);
    item ready, w1, w2;
    queue_node *r[] = {&ready.node}, *w[] = {&w1.node, &w2.node};
    uint64_t far = util_now_us() + 3600u * 1000000u;
    assert_int_equal(queue_enqueue_at(q, w, 2, far, NULL, NULL), 0);
    assert_int_equal(queue_enqueue_at(q, r, 1, 0, NULL, NULL), 0);
    queue_shutdown(q);
    assert_null(queue_take(q));
    assert_ptr_equal(queue_try_take(q), &ready.node);
    queue_node *x = queue_try_take(q), *y = queue_try_take(q);
    assert_true((x == &w1.node && y == &w2.node) || (x == &w2.node && y == &w1.node));
    assert_null(queue_try_take(q));
    queue_destroy(q);

    /* Destroyed with a node still waiting: its timer is disarmed. */
    size_t before = sched_pending(timers);
    q = queue_mem_new(timers, 0, QUEUE_LINGER_DEFAULT);
    assert_int_equal(queue_enqueue_at(q, r, 1, far, NULL, NULL), 0);
    assert_int_equal(sched_pending(timers), before + 1);
    queue_shutdown(q);
    queue_destroy(q);
    assert_int_equal(sched_pending(timers), before);
    sched_halt(timers);
}

/* Waiting nodes count against the capacity. */
static void queue_capacity_counts_waiting_nodes(void **state)
{
    (void)state;
    queue *q = queue_mem_new(timers, 1, QUEUE_LINGER_DEFAULT);
    item a, b;
    queue_node *one[] = {&a.node};
    assert_int_equal(queue_enqueue_at(q, one, 1, util_now_us() + 3600u * 1000000u, NULL, NULL), 0);
    assert_int_equal(queue_enqueue(q, &b.node), BGS_EFULL);
    queue_shutdown(q);
    assert_ptr_equal(queue_try_take(q), &a.node);
    queue_destroy(q);
}

/* One run of test f under the linger called name (shown in its title). */
#define LINGER_TEST(f, name) \
    { #f " (linger " #name ")", f, setup_linger, teardown_linger, (void *)&linger_##name }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(queue_fifo_order),
        cmocka_unit_test(queue_capacity_full),
        cmocka_unit_test(queue_dequeue_woken_by_push),
        cmocka_unit_test(queue_dequeue_woken_by_shutdown),
        cmocka_unit_test(queue_wakeups_only_for_idle_consumers),
        LINGER_TEST(queue_dense_stream_tail_is_taken, none),
        LINGER_TEST(queue_dense_stream_tail_is_taken, default),
        LINGER_TEST(queue_dense_stream_tail_is_taken, bound),
        LINGER_TEST(queue_dense_stream_tail_is_taken, long),
        LINGER_TEST(queue_dense_stream_tail_is_taken, swinging),
        cmocka_unit_test(queue_batch_in_order_all_or_nothing),
        cmocka_unit_test(queue_batch_spreads_over_idle_consumers),
        cmocka_unit_test(queue_durable_completion_once_per_batch),
        cmocka_unit_test(queue_not_before_waits_for_its_time),
        cmocka_unit_test(queue_due_node_wakes_a_consumer),
        cmocka_unit_test(queue_nack_retry_at),
        cmocka_unit_test(queue_shutdown_hands_back_waiting_nodes),
        cmocka_unit_test(queue_capacity_counts_waiting_nodes),
        LINGER_TEST(queue_many_producers_consumers_lose_nothing, none),
        LINGER_TEST(queue_many_producers_consumers_lose_nothing, default),
        LINGER_TEST(queue_many_producers_consumers_lose_nothing, bound),
        LINGER_TEST(queue_many_producers_consumers_lose_nothing, long),
        LINGER_TEST(queue_many_producers_consumers_lose_nothing, swinging),
    };
    timers = sched_new();
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    sched_free(timers);
    return failed;
}
