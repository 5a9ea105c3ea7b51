/*
 * queue.c - the in-memory queue backend (see queue.h for the interface).
 *
 * State: one singly linked FIFO of queue_nodes embedded in the callers'
 * items, its depth, a stack of idle consumers and a shutdown flag, all
 * guarded by mem_queue.mu.  Producers (HTTP threads, the scheduler) push;
 * workers pop.  Each consumer thread sleeps on a condition variable of
 * its own (a `waiter`), so a wake-up goes to the consumer chosen for it:
 * one that went to sleep on the waker's own CPU if there is one (the
 * kernel then usually runs it there, with no inter-processor interrupt),
 * else the one that went idle last (its cache is the warmest).
 *
 * Wake-ups are the expensive part: a futex wake, and a woken worker that
 * preempts an HTTP thread (two context switches on a busy core), against
 * well under a microsecond of bookkeeping per task.  So wake-ups are
 * rationed, and bench/README.md has the numbers behind each rule:
 *
 * - At most one in flight.  `wakeups` counts consumers woken and not
 *   back yet.  A push (or a batch: the tasks of one
 *   response) signals only when a consumer is idle and wakeups is 0; a
 *   wake-up not taken within late_us is late (its consumer
 *   waits for a CPU) and the next push or pop may send one more.
 * - Passed on.  A consumer that pops a node and leaves others behind
 *   applies the same rule for them, so four slow tasks still spread over
 *   four workers, one hop later each.
 * - Coalesced under a dense stream.  While pushes arrive less than
 *   coalesce_us (the linger) apart and a sentry waits (below), a young head is
 *   left for a consumer that is running a task (it comes back for the
 *   next node) or, while younger than coalesce_us, for the next
 *   push: the tasks of several requests share one wake-up.  A linger of
 *   0 turns this off.  The linger is fixed (--linger USEC) or follows the
 *   load (QUEUE_LINGER_ADAPTIVE: pace.h, asked at every push, outside
 *   mu); the rules use the linger of the last push (cur_linger), and a
 *   sentry keeps the timeout it started with, so however the linger
 *   moves no deferred node waits longer than queue_linger_bound_us of
 *   the largest linger in use.
 * - The sentry.  A consumer that goes idle while pushes are recent
 *   (hot_us) and no other sentry waits, waits on sentry_cv with a
 *   timeout of sentry_us instead of on its waiter forever.  It
 *   bounds how long a deferred node can wait when the stream stops right
 *   after it.  Wake-ups go to idle consumers first, so the sentry keeps
 *   watching; it is signalled ("kicked") only when no other consumer is
 *   idle.  When pushes stop for hot_us it waits on its waiter
 *   without a timeout again: an idle server has no timers running.
 *   With a linger of 0 no consumer becomes the sentry.
 *
 * Signals go out after unlocking, so a woken consumer does not block at
 * once on the mutex its waker still holds.
 *
 * Nodes with a time (enqueue's not_before_us, nack's retry_at_us) wait on
 * the `later` list, each with a small record holding a timer of the
 * timer thread (sched.h): retries and delayed jobs are rare, so one
 * allocation and one timer each is cheaper than a second structure the
 * consumers would have to watch.  The timer's callback (on_due) moves the
 * node to the FIFO like a push.  A record is freed by whoever unlinks it
 * from `later` under mu: the callback, or try_take/destroy after
 * shutdown, which mark it claimed and sched_cancel its timer before
 * freeing it (the callback of a claimed record touches nothing).  A timer
 * is armed under mu (lock order: mu, then the timer thread's lock; the
 * callback takes mu with no timer lock held), so a record on `later` is
 * always armed or already firing.
 *
 * No node is stranded.  Invariant (under mu): if the list is not empty
 * then (a) no consumer is idle and no sentry waits, or (b) a wake-up is
 * owed (wakeups > 0, or the sentry was kicked), or (c) a consumer holds
 * mu in take and is about to pop, or (d) a sentry waits.  In case (a)
 * every consumer is awake or running a node and re-checks the list
 * before it waits again (the while loop in mem_take).  In case (b) a
 * woken consumer returns from its wait and pops: case (c).  In case (d)
 * the sentry returns by its timeout: case (c) again.  need_wake_locked
 * keeps the invariant after every push and every pop: it returns
 * WAKE_NONE only when a wake-up is owed (b), when it defers, which needs
 * a sentry (d), or when nobody is idle and no sentry waits (a);
 * otherwise the caller signals (b).  A consumer goes idle only when the
 * list is empty.  A wake-up cannot be lost: the waker takes the consumer
 * off the idle stack and sets its `woken` flag under mu, and the consumer
 * waits only while that flag is clear, so a spurious return waits again
 * and a signal that arrives before the wait is not needed.  The sentry is
 * alone on sentry_cv and clears its kick when it returns.  Shutdown
 * signals every waiter, so every blocked consumer returns.
 */
#include "queue.h"

#include "bgserve.h"
#include "pace.h"
#include "sched.h"
#include "util.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

/* Tuning (bench/README.md has the measurements behind these numbers).
 * The linger (a fixed --linger, or the adaptive one of pace.h, read at
 * every push) sets the coalescing window; the others follow from it
 * (tuning_of):
 * - coalesce_us: pushes less than this apart are a dense stream, where a
 *   head younger than this is left for the next push (the dispatch p50
 *   under load sits near it);
 * - late_us: a wake-up not taken after this long is late, and another
 *   idle consumer is woken too (bounds the dispatch latency when a woken
 *   worker waits for a CPU); a head this old is never left for the next
 *   push;
 * - sentry_us: the sentry's timed wait, the longest a deferred node can
 *   wait when the stream stops right after it (queue_linger_bound_us);
 * - hot_us: a consumer going idle becomes the sentry only while pushes
 *   are this recent; after that it waits without a timeout. */
#define QUEUE_LATE_MIN_US 50u
#define QUEUE_SENTRY_MIN_US 200u
#define QUEUE_HOT_MIN_US 1000u
/* How many idle consumers a wake-up looks through for one on its CPU. */
#define QUEUE_PICK_SCAN 8

/* One per consumer thread, made on its first blocking take and kept
 * until the queue is destroyed (so a waker may signal it after
 * unlocking). */
typedef struct waiter {
    struct waiter *next_idle; /* the idle stack; mu */
    struct waiter *next_all;  /* every waiter, for destroy; mu */
    pthread_cond_t cv;
    const void *owner;        /* the thread's tl_waiter slot: unique while it lives */
    int cpu;                  /* where it went to sleep; mu */
    int woken;                /* taken off the idle stack by a waker; mu */
} waiter;

struct mem_queue;

/* A node waiting for its time (top of file). */
typedef struct later_rec {
    sched_timer timer;
    struct mem_queue *m;
    queue_node *node;
    struct later_rec *prev, *next; /* the later list; mu */
    int claimed;                   /* taken off by try_take/destroy; mu */
} later_rec;

typedef struct mem_queue {
    queue base;
    sched *sched;             /* times the later list; borrowed, immutable */
    pthread_mutex_t mu;
    pthread_cond_t sentry_cv; /* CLOCK_MONOTONIC; the sentry waits here */
    queue_node *head, *tail; /* guarded by mu */
    size_t depth;            /* guarded by mu */
    later_rec *later;        /* nodes waiting for their time; mu */
    size_t nlater;           /* guarded by mu */
    size_t cap;              /* immutable; 0: unbounded */
    waiter *idle_top;        /* consumers blocked on their cv, last first; mu */
    waiter *all;             /* every waiter; mu */
    unsigned wakeups;        /* waiters woken and not yet back; guarded by mu */
    unsigned active;         /* consumers between a pop and their next take; guarded by mu */
    int sentry;              /* 1 while a consumer waits on sentry_cv; guarded by mu */
    int sentry_kicked;       /* 1 once sentry_cv was signalled for it; guarded by mu */
    uint64_t wake_us;        /* when the last of them was sent; guarded by mu */
    uint64_t signals;        /* wake-ups sent since start (stats); guarded by mu */
    uint64_t push_us;        /* when the last push happened; guarded by mu */
    uint64_t prev_push_us;   /* when the one before it happened; guarded by mu */
    int shut;                /* guarded by mu */
    uint64_t serial;         /* immutable; tells queues apart in tl_active */
    unsigned linger_us;      /* immutable: a fixed linger, or QUEUE_LINGER_ADAPTIVE */
    unsigned cur_linger;     /* the linger of the last push; guarded by mu */
} mem_queue;

typedef struct tuning {
    unsigned coalesce_us, late_us, sentry_us, hot_us; /* see Tuning */
} tuning;

static unsigned max_u(unsigned a, unsigned b)
{
    return a > b ? a : b;
}

static tuning tuning_of(unsigned linger_us)
{
    return (tuning){.coalesce_us = linger_us,
                    .late_us = max_u(QUEUE_LATE_MIN_US, linger_us + linger_us / 2),
                    .sentry_us = max_u(QUEUE_SENTRY_MIN_US, 3 * linger_us),
                    .hot_us = max_u(QUEUE_HOT_MIN_US, 2 * linger_us)};
}

unsigned queue_linger_bound_us(unsigned linger_us)
{
    return linger_us == 0 ? 0 : tuning_of(linger_us).sentry_us;
}

/* The linger for a push at now: the fixed one, or the pace's (which may
 * measure the CPUs first: called with mu not held). */
static unsigned linger_now(const mem_queue *m, uint64_t now)
{
    return m->linger_us == QUEUE_LINGER_ADAPTIVE ? pace_linger(now) : m->linger_us;
}

/* The queue a consumer thread popped from last and has not come back to
 * yet (counted in that queue's `active`), by serial number so that a
 * queue made later at the same address is not mistaken for it; owned by
 * the thread itself.  Serials start at 1. */
static _Thread_local uint64_t tl_active;
/* This thread's waiter, and the serial of the queue it belongs to. */
static _Thread_local waiter *tl_waiter;
static _Thread_local uint64_t tl_waiter_serial;
static atomic_uint_fast64_t next_serial = 1;

static mem_queue *mq(queue *q)
{
    return UTIL_CONTAINER_OF(q, mem_queue, base);
}

/* Link n at the tail, stamped now; mu held. */
static void link_locked(mem_queue *m, queue_node *n, uint64_t now)
{
    n->next = NULL;
    n->queued_us = now;
    if (m->tail)
        m->tail->next = n;
    else
        m->head = n;
    m->tail = n;
    m->depth++;
}

enum { WAKE_NONE, WAKE_IDLE, WAKE_SENTRY };

/* Take the consumer to wake off the idle stack (not empty); mu held.  One
 * that went to sleep on this CPU if any, else the last to go idle. */
static waiter *pick_idle_locked(mem_queue *m)
{
    int cpu = sched_getcpu();
    waiter **pp = &m->idle_top;
    int looked = 0;
    for (waiter **q = &m->idle_top; *q && looked < QUEUE_PICK_SCAN; q = &(*q)->next_idle, looked++)
        if ((*q)->cpu == cpu) {
            pp = q;
            break;
        }
    waiter *w = *pp;
    *pp = w->next_idle;
    w->next_idle = NULL;
    w->woken = 1;
    return w;
}

/* Nodes are queued (just pushed, or left behind by a pop); mu held.
 * Returns what the caller must signal once it has unlocked mu: nothing,
 * an idle consumer (*target) or sentry_cv (see the top of file for the
 * rules and why no node is stranded by WAKE_NONE). */
static int need_wake_locked(mem_queue *m, uint64_t now, waiter **target)
{
    if (m->head == NULL)
        return WAKE_NONE;
    tuning tu = tuning_of(m->cur_linger);
    /* A wake-up is on its way; add another only when it is late (its
     * consumer is waiting for a CPU), so a busy machine cannot hold every
     * queued task behind one descheduled worker. */
    if ((m->wakeups > 0 || m->sentry_kicked) && now - m->wake_us < tu.late_us)
        return WAKE_NONE;
    /* A dense stream, a young head, and a sentry that looks within
     * sentry_us whatever happens: leave the head for a consumer
     * running a task (it comes back for the next node) or, while the head
     * is younger than coalesce_us, for the next push. */
    uint64_t age = now - m->head->queued_us;
    if (m->sentry && !m->sentry_kicked && m->push_us - m->prev_push_us < tu.coalesce_us &&
        age < tu.late_us && (m->active > 0 || age < tu.coalesce_us))
        return WAKE_NONE;
    /* Wake an idle consumer rather than the sentry, which keeps watching. */
    int what;
    if (m->idle_top != NULL) {
        *target = pick_idle_locked(m);
        m->wakeups++;
        what = WAKE_IDLE;
    } else if (m->sentry && !m->sentry_kicked) {
        m->sentry_kicked = 1;
        what = WAKE_SENTRY;
    } else {
        return WAKE_NONE; /* every waiter is owed a wake-up already, or none waits */
    }
    m->wake_us = now;
    m->signals++;
    return what;
}

/* Send what need_wake_locked asked for; mu not held. */
static void wake(mem_queue *m, int what, waiter *w)
{
    if (what == WAKE_IDLE)
        pthread_cond_signal(&w->cv);
    else if (what == WAKE_SENTRY)
        pthread_cond_signal(&m->sentry_cv);
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

static void on_due(sched_timer *t);

/* Unlink r from the later list; mu held. */
static void later_unlink_locked(mem_queue *m, later_rec *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        m->later = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    m->nlater--;
}

/* Link nodes[0..n) at the tail, or on the later list until due_us, all
 * or none.  bounded: refuse with BGS_EFULL past the capacity (a nack is
 * not bounded: its node was counted when it was first queued).  recs:
 * n records for a later push, allocated by the caller (freed here when
 * unused). */
static int push_nodes(queue *q, queue_node *const *nodes, size_t n, int bounded,
                      uint64_t due_us, later_rec **recs)
{
    mem_queue *m = mq(q);
    int rc = 0, what = WAKE_NONE;
    waiter *w = NULL;

    if (n == 0)
        return 0;
    /* One clock read for the linger and the nodes' stamp. */
    uint64_t now = recs ? 0 : util_now_us();
    unsigned linger = recs ? 0 : linger_now(m, now);
    pthread_mutex_lock(&m->mu);
    size_t linked = m->depth + m->nlater;
    if (m->shut)
        rc = BGS_ESHUTDOWN;
    else if (bounded && m->cap != 0 && (linked >= m->cap || n > m->cap - linked))
        rc = BGS_EFULL;
    else if (recs) {
        for (size_t i = 0; i < n; i++) {
            later_rec *r = recs[i];
            r->m = m;
            r->node = nodes[i];
            r->node->next = NULL;
            r->node->queued_us = due_us;
            r->next = m->later;
            if (m->later)
                m->later->prev = r;
            m->later = r;
            m->nlater++;
            sched_add(m->sched, &r->timer, due_us, on_due); /* under mu: see top of file */
        }
    } else {
        for (size_t i = 0; i < n; i++)
            link_locked(m, nodes[i], now);
        m->prev_push_us = m->push_us;
        m->push_us = now;
        m->cur_linger = linger;
        what = need_wake_locked(m, now, &w);
    }
    pthread_mutex_unlock(&m->mu);
    wake(m, what, w);
    if (rc != 0 && recs)
        for (size_t i = 0; i < n; i++)
            free(recs[i]);
    return rc;
}

/* push_nodes, with the records a push at a later time needs. */
static int push_at(queue *q, queue_node *const *nodes, size_t n, int bounded, uint64_t at_us)
{
    if (at_us <= util_now_us())
        return push_nodes(q, nodes, n, bounded, 0, NULL);
    later_rec *one, **recs = n == 1 ? &one : xcalloc(n, sizeof(*recs));
    for (size_t i = 0; i < n; i++)
        recs[i] = xcalloc(1, sizeof(**recs));
    int rc = push_nodes(q, nodes, n, bounded, at_us, recs);
    if (recs != &one)
        free(recs);
    return rc;
}

/* A waiting node's time came (timer thread): move it to the FIFO as a
 * push would.  After shutdown it stays for try_take. */
static void on_due(sched_timer *t)
{
    later_rec *r = UTIL_CONTAINER_OF(t, later_rec, timer);
    mem_queue *m = r->m;
    int what = WAKE_NONE;
    waiter *w = NULL;

    pthread_mutex_lock(&m->mu);
    if (r->claimed || m->shut) {
        pthread_mutex_unlock(&m->mu);
        return; /* a claimed record is its claimer's to free */
    }
    later_unlink_locked(m, r);
    uint64_t now = util_now_us();
    link_locked(m, r->node, now);
    m->prev_push_us = m->push_us;
    m->push_us = now;
    what = need_wake_locked(m, now, &w);
    /* Signalled before unlocking (a rare path): once mu is released this
     * callback touches nothing of m, so destroy need not wait for it. */
    wake(m, what, w);
    pthread_mutex_unlock(&m->mu);
    free(r);
}

static int mem_enqueue(queue *q, queue_node *const *nodes, size_t n, uint64_t not_before_us,
                       queue_done_fn done, void *done_arg)
{
    int rc = push_at(q, nodes, n, 1, not_before_us);
    if (rc == 0 && done)
        done(done_arg, 0, NULL); /* memory is as durable as it gets */
    return rc;
}

static int mem_nack(queue *q, queue_node *n, uint64_t retry_at_us, const char *why)
{
    (void)why; /* nothing to record it in */
    return push_at(q, &n, 1, 0, retry_at_us);
}

/* Block until woken: on this thread's waiter (made on its first wait),
 * or, as the sentry, on sentry_cv until sentry_us from now (never with a
 * linger of 0: nothing is left for it then); mu held. */
static void wait_locked(mem_queue *m)
{
    uint64_t now = util_now_us();
    tuning tu = tuning_of(m->cur_linger);
    if (tu.coalesce_us > 0 && !m->sentry && now - m->push_us < tu.hot_us) {
        struct timespec ts = util_mono_timespec(now + tu.sentry_us);
        m->sentry = 1;
        pthread_cond_timedwait(&m->sentry_cv, &m->mu, &ts);
        m->sentry = 0;
        m->sentry_kicked = 0; /* whether it was that signal or the timeout */
        return;
    }
    waiter *w = tl_waiter;
    if (w == NULL || tl_waiter_serial != m->serial) {
        /* This thread's first wait here (or it waited on another queue
         * since): find its waiter, or make one. */
        for (w = m->all; w && w->owner != &tl_waiter; w = w->next_all)
            ;
        if (w == NULL) {
            w = xcalloc(1, sizeof(*w));
            pthread_cond_init(&w->cv, NULL);
            w->owner = &tl_waiter;
            w->next_all = m->all;
            m->all = w;
        }
        tl_waiter = w;
        tl_waiter_serial = m->serial;
    }
    w->cpu = sched_getcpu();
    w->woken = 0;
    w->next_idle = m->idle_top;
    m->idle_top = w;
    while (!w->woken && !m->shut)
        pthread_cond_wait(&w->cv, &m->mu);
    if (w->woken)
        m->wakeups--;
    else { /* shutdown: off the stack */
        for (waiter **q = &m->idle_top; *q; q = &(*q)->next_idle)
            if (*q == w) {
                *q = w->next_idle;
                break;
            }
    }
}

static queue_node *mem_take(queue *q)
{
    mem_queue *m = mq(q);
    queue_node *n = NULL;
    int what = WAKE_NONE;
    waiter *w = NULL;

    pthread_mutex_lock(&m->mu);
    if (tl_active == m->serial) { /* back from running the node it popped */
        m->active--;
        tl_active = 0;
    }
    while (m->head == NULL && !m->shut)
        wait_locked(m);
    if (!m->shut) {
        n = pop_locked(m);
        m->active++;
        tl_active = m->serial;
        what = need_wake_locked(m, util_now_us(), &w); /* pass the wake on for the rest */
    }
    pthread_mutex_unlock(&m->mu);
    wake(m, what, w);
    return n;
}

static queue_node *mem_try_take(queue *q)
{
    mem_queue *m = mq(q);
    queue_node *n;
    later_rec *r = NULL;

    pthread_mutex_lock(&m->mu);
    n = pop_locked(m);
    if (n == NULL && m->shut && m->later) { /* hand back the waiting ones too */
        r = m->later;
        later_unlink_locked(m, r);
        r->claimed = 1;
    }
    pthread_mutex_unlock(&m->mu);
    if (r) {
        sched_cancel(m->sched, &r->timer); /* waits out a callback in progress */
        n = r->node;
        free(r);
    }
    return n;
}

const char *queue_end_name(queue_end e)
{
    switch (e) {
    case QUEUE_SUCCEEDED: return "succeeded";
    case QUEUE_FAILED: return "failed";
    case QUEUE_CANCELLED: return "cancelled";
    }
    return "failed";
}

static void mem_ack(queue *q, queue_node *n, const queue_outcome *o)
{
    /* Nothing is journalled in memory: the item itself is the record. */
    (void)q;
    (void)n;
    (void)o;
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

static uint64_t mem_wakeups(queue *q)
{
    mem_queue *m = mq(q);
    uint64_t n;

    pthread_mutex_lock(&m->mu);
    n = m->signals;
    pthread_mutex_unlock(&m->mu);
    return n;
}

static void mem_shutdown(queue *q)
{
    mem_queue *m = mq(q);

    pthread_mutex_lock(&m->mu);
    m->shut = 1;
    for (waiter *w = m->idle_top; w; w = w->next_idle)
        pthread_cond_signal(&w->cv);
    pthread_cond_broadcast(&m->sentry_cv);
    pthread_mutex_unlock(&m->mu);
}

static void mem_destroy(queue *q)
{
    mem_queue *m = mq(q);

    pthread_mutex_lock(&m->mu);
    later_rec *rest = m->later;
    m->later = NULL;
    m->nlater = 0;
    for (later_rec *r = rest; r; r = r->next)
        r->claimed = 1;
    pthread_mutex_unlock(&m->mu);
    while (rest) {
        later_rec *r = rest;
        rest = r->next;
        sched_cancel(m->sched, &r->timer);
        free(r);
    }

    while (m->all) {
        waiter *w = m->all;
        m->all = w->next_all;
        pthread_cond_destroy(&w->cv);
        free(w);
    }
    pthread_cond_destroy(&m->sentry_cv);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static const queue_ops mem_ops = {
    .name = "memory",
    .enqueue = mem_enqueue,
    .take = mem_take,
    .try_take = mem_try_take,
    .ack = mem_ack,
    .nack = mem_nack,
    .depth = mem_depth,
    .wakeups = mem_wakeups,
    .shutdown = mem_shutdown,
    .destroy = mem_destroy,
};

queue *queue_mem_new(sched *s, size_t cap, unsigned linger_us)
{
    mem_queue *m = xcalloc(1, sizeof(*m));
    m->sched = s;

    if (linger_us > QUEUE_LINGER_MAX_US && linger_us != QUEUE_LINGER_ADAPTIVE)
        linger_us = QUEUE_LINGER_MAX_US;
    m->base.ops = &mem_ops;
    m->cap = cap;
    m->linger_us = linger_us;
    m->cur_linger = linger_us == QUEUE_LINGER_ADAPTIVE ? pace_current() : linger_us;
    m->serial = atomic_fetch_add(&next_serial, 1);
    pthread_mutex_init(&m->mu, NULL);
    util_cond_init_mono(&m->sentry_cv);
    return &m->base;
}
