/*
 * queue_journal.c - the durable queue backend (queue_journal.h): an
 * in-memory queue (queue_mem_new) that orders, times and hands out the
 * nodes, and the journal that records each job's life beside it.
 *
 * Order of writes.  A job's records must reach the journal in the order
 * of its life, or a later record would find no row (journal_start before
 * journal_add) or be undone by an earlier one.  So a record is appended
 * before the node becomes visible to a consumer: enqueue appends the add
 * and then links the nodes, nack appends the retry and then puts the
 * node back; take appends the start after the node was handed out (only
 * its holder writes until it acks or nacks), and take returns only once
 * that start is committed, so the attempt a replay gives is honest.  The
 * journal's single writer applies records in append order.
 *
 * Claims.  Waiting for one commit per run would hold each worker to the
 * pace of the commits (a few thousand runs per second whatever the
 * task).  So a take that finds more ready jobs behind the one it got
 * claims up to CLAIM_MAX of them at once, never more than half of those
 * left ready (the rest are for the other consumers, whom the inner queue
 * wakes for them): it appends their starts as one record
 * (journal_start_many) and waits once, for its commit.  The
 * first is returned; the others go to `started`, a list that every take
 * and try_take serves first.  A job is thus recorded as running from its
 * claim, a little before its run begins; a crash in between replays it
 * as interrupted (attempt + 1), which at-least-once allows, and a
 * shutdown hands it back through try_take, which writes it back as
 * queued with its attempts as they were (journal_unstart).
 *
 * Lazy starts (queue_journal_lazy_starts, under the supervisor).  The
 * wait above is what puts a crashed run on disk as running; where the
 * supervisor's crash record names the task that crashed, the replay
 * counts that attempt without it (tasks_replay).  Then a take claims one
 * job, appends its start and returns at once: no worker waits for the
 * writer, and a job that ends before the writer takes its next batch is
 * written queued -> final in one row (journal.c's fold).  A job whose
 * describe says await_start (a replayed one whose crashed attempt is
 * counted in memory only) still waits, as above.
 *
 * State: the inner queue (its own lock), the journal (borrowed, its own
 * locks), `lazy` (set before the first take), `linked` (nodes between enqueue/nack/adopt and being handed
 * out by take, claimed ones included: the capacity; atomic), the
 * counters (atomic), and `shut`, written under `mu`.  `mu` is held
 * across "append, then link" in enqueue, nack and adopt, so that a
 * shutdown can never fall between the two: a job the journal holds as
 * queued is either linked or refused with its record still saying what
 * the next start should do.  `smu` guards the `started` list (linked
 * through queue_node.next, which is ours again once the inner queue has
 * handed a node out) and `claiming` (takers between their claim and
 * putting its jobs on `started`); the shutdown waits (on `claimed`)
 * until `claiming` is 0, so that every claimed job is on `started` when
 * it returns.
 * Lock order: mu, then the journal's lock, then the inner queue's (and
 * the timer thread's); smu is never held with another of ours.
 * Completions run on the journal's writer thread with no lock of ours.
 */
#include "queue_journal.h"

#include "bgserve.h"
#include "log.h"
#include "util.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* The most jobs one take claims (one start commit, one wait). */
#define CLAIM_MAX 32

typedef struct jqueue {
    queue base;
    queue *mem;                 /* immutable; the inner in-memory queue */
    journal *j;                 /* immutable, borrowed */
    queue_describe_fn describe; /* immutable */
    void *describe_arg;         /* immutable */
    size_t cap;                 /* immutable; 0: unbounded */
    int lazy;                   /* set before the first take: lazy starts */
    pthread_mutex_t mu;
    atomic_int shut;            /* written under mu */
    atomic_size_t linked;
    atomic_uint_fast64_t journaled, memory_only, unrecorded;
    pthread_mutex_t smu;
    pthread_cond_t claimed;     /* signalled when claiming drops to 0 */
    queue_node *s_head, **s_tail; /* smu: claimed, start committed */
    atomic_size_t nstarted;     /* written under smu: nodes on started */
    unsigned claiming;          /* smu */
} jqueue;

/* The caller's completion, carried through the journal's. */
typedef struct done_ctx {
    queue_done_fn done;
    void *arg;
} done_ctx;

static jqueue *jq(queue *q)
{
    return UTIL_CONTAINER_OF(q, jqueue, base);
}

/* Monotonic time t as wall clock, and back; 0 (and any time already
 * past) is 0: "at once". */
static uint64_t mono_to_wall(uint64_t t)
{
    uint64_t now = util_now_us();
    return t > now ? util_wall_us() + (t - now) : 0;
}

static uint64_t wall_to_mono(uint64_t t)
{
    uint64_t now = util_wall_us();
    return t > now ? util_now_us() + (t - now) : 0;
}

static void describe(jqueue *q, const queue_node *n, queue_job *out)
{
    *out = (queue_job){0};
    q->describe(n, out, q->describe_arg);
}

/* A record the journal would not take (it is closing): logged, since
 * nobody is told (queue.h: ack and nack are fire-and-forget). */
static void unrecorded(jqueue *q, const char *what, uint64_t id, int rc)
{
    atomic_fetch_add(&q->unrecorded, 1);
    log_msg(BGS_LOG_WARN, "journal: the %s of task %" PRIu64 " was not recorded (%s); after "
            "a restart the task may run once more", what, id, journal_strerror(rc));
}

/* The journal's completion of an enqueue, told in the queue's terms.
 * Runs on the writer thread, possibly after the queue was destroyed:
 * it touches only its own context. */
static void on_durable(void *arg, int status, const char *msg)
{
    done_ctx *c = arg;
    if (c->done)
        c->done(c->arg, status == 0 ? 0 : status == JOURNAL_ECLOSED ? BGS_ESHUTDOWN : BGS_EFULL,
                msg);
    free(c);
}

static int jq_enqueue(queue *qq, queue_node *const *nodes, size_t n, uint64_t not_before_us,
                      queue_done_fn done, void *done_arg)
{
    jqueue *q = jq(qq);
    journal_task one, *tasks = n <= 1 ? &one : xcalloc(n, sizeof(*tasks));
    size_t named = 0;
    int rc = 0;

    if (n == 0)
        goto out;
    uint64_t nb_wall = mono_to_wall(not_before_us);
    for (size_t i = 0; i < n; i++) {
        queue_job d;
        describe(q, nodes[i], &d);
        if (d.name == NULL)
            continue;
        tasks[named++] = (journal_task){.id = d.id, .name = d.name, .payload = d.payload,
                                        .payload_len = d.len, .max_attempts = d.max_attempts,
                                        .not_before_us = nb_wall, .request_id = d.request_id};
    }

    pthread_mutex_lock(&q->mu);
    size_t before = atomic_fetch_add(&q->linked, n);
    if (atomic_load(&q->shut))
        rc = BGS_ESHUTDOWN;
    else if (q->cap != 0 && (before >= q->cap || n > q->cap - before))
        rc = BGS_EFULL;
    else if (named > 0) {
        done_ctx *c = xcalloc(1, sizeof(*c));
        *c = (done_ctx){.done = done, .arg = done_arg};
        int jrc = journal_add(q->j, tasks, named, on_durable, c);
        if (jrc != 0) {
            free(c);
            rc = jrc == JOURNAL_ECLOSED ? BGS_ESHUTDOWN : BGS_EINVAL;
        }
    }
    if (rc == 0) /* unbounded and not shut down (mu): cannot fail */
        rc = queue_enqueue_at(q->mem, nodes, n, not_before_us, NULL, NULL);
    if (rc != 0)
        atomic_fetch_sub(&q->linked, n);
    pthread_mutex_unlock(&q->mu);

    if (rc == 0) {
        atomic_fetch_add(&q->journaled, named);
        atomic_fetch_add(&q->memory_only, n - named);
        if (named == 0 && done)
            done(done_arg, 0, NULL); /* nothing to make durable */
    }
out:
    if (tasks != &one)
        free(tasks);
    return rc;
}

/* The taker's wait for the commit of its start (on its own stack). */
typedef struct start_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;   /* mu */
} start_wait;

/* Writer thread: the start is committed, or failed (a full disk: the
 * writer logs the episode; the run goes ahead, it was accepted). */
static void start_done(void *arg, int status, const char *msg)
{
    start_wait *w = arg;
    (void)status;
    (void)msg;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* The next claimed node (its start committed), or NULL. */
static queue_node *pop_started(jqueue *q)
{
    pthread_mutex_lock(&q->smu);
    queue_node *n = q->s_head;
    if (n != NULL) {
        q->s_head = n->next;
        if (q->s_head == NULL)
            q->s_tail = &q->s_head;
        n->next = NULL;
        atomic_fetch_sub(&q->nstarted, 1);
    }
    pthread_mutex_unlock(&q->smu);
    if (n != NULL)
        atomic_fetch_sub(&q->linked, 1);
    return n;
}

/* The end of a claim: got[1 .. n-1] go on `started` (n may be 0). */
static void finish_claim(jqueue *q, queue_node **got, size_t n)
{
    pthread_mutex_lock(&q->smu);
    for (size_t i = 1; i < n; i++) {
        got[i]->next = NULL;
        *q->s_tail = got[i];
        q->s_tail = &got[i]->next;
        atomic_fetch_add(&q->nstarted, 1);
    }
    if (--q->claiming == 0)
        pthread_cond_broadcast(&q->claimed);
    pthread_mutex_unlock(&q->smu);
}

/* Lazy starts: append the start of n for the next transaction, without
 * waiting for it.  0 when n must wait for its start (await_start). */
static int start_lazily(jqueue *q, queue_node *n)
{
    queue_job d;
    describe(q, n, &d);
    if (d.await_start)
        return 0;
    if (d.name != NULL) {
        int rc = journal_start_lazy(q->j, d.id, d.attempts + 1);
        if (rc != 0)
            unrecorded(q, "start", d.id, rc);
    }
    return 1;
}

/*
 * The inner queue handed out `first`: it is no longer linked, and its
 * holder is about to run it, unless the queue is shut down and it is
 * being handed back to be finished without a run.  Claim up to max - 1
 * more ready jobs with it (Claims, above), record their starts and wait
 * for their commit, so that a crash during any of their runs is always
 * replayed as an interrupted attempt (attempt + 1), never as the same
 * attempt again, and a job that kills the process uses up an attempt
 * each time (so it reaches the dead letters).  The wait also means a
 * job's start and its end never share a transaction: the end comes from
 * the ack, after the run.  With lazy starts (above) it claims first
 * alone and does not wait, unless first must (await_start).  Returns
 * first; the others wait on `started`.
 */
static queue_node *claim(jqueue *q, queue_node *first, size_t max)
{
    queue_node *got[CLAIM_MAX];
    size_t n = 0;

    if (first == NULL)
        return NULL;
    atomic_fetch_sub(&q->linked, 1);
    pthread_mutex_lock(&q->smu);
    int shut = atomic_load(&q->shut);
    if (!shut)
        q->claiming++;
    pthread_mutex_unlock(&q->smu);
    if (shut)
        return first; /* its record stays: the next start offers it again */

    got[n++] = first;
    if (q->lazy && start_lazily(q, first)) {
        finish_claim(q, got, 0);
        return first;
    }
    size_t more = queue_depth(q->mem) / 2;
    if (max > CLAIM_MAX)
        max = CLAIM_MAX;
    while (n < max && more-- > 0) {
        queue_node *x = queue_try_take(q->mem);
        if (x == NULL)
            break;
        got[n++] = x;
    }
    /* One record for all their starts: one commit, one wait. */
    journal_started starts[CLAIM_MAX];
    size_t named = 0;
    for (size_t i = 0; i < n; i++) {
        queue_job d;
        describe(q, got[i], &d);
        if (d.name != NULL)
            starts[named++] = (journal_started){.id = d.id, .attempt = d.attempts + 1};
    }
    if (named > 0) {
        start_wait w = {.done = 0};
        pthread_mutex_init(&w.mu, NULL);
        pthread_cond_init(&w.cv, NULL);
        int rc = journal_start_many(q->j, starts, named, start_done, &w);
        if (rc != 0) {
            for (size_t i = 0; i < named; i++)
                unrecorded(q, "start", starts[i].id, rc);
        } else {
            pthread_mutex_lock(&w.mu);
            while (!w.done)
                pthread_cond_wait(&w.cv, &w.mu);
            pthread_mutex_unlock(&w.mu);
        }
        pthread_cond_destroy(&w.cv);
        pthread_mutex_destroy(&w.mu);
    }

    finish_claim(q, got, n);
    return first;
}

static queue_node *jq_take(queue *qq)
{
    jqueue *q = jq(qq);
    queue_node *n = atomic_load(&q->shut) ? NULL : pop_started(q);
    return n != NULL ? n : claim(q, queue_take(q->mem), CLAIM_MAX);
}

/* A claimed node handed back after shutdown: it never ran, so the
 * journal gets it back as queued, attempts as they were. */
static void unclaim(jqueue *q, queue_node *n)
{
    queue_job d;
    describe(q, n, &d);
    if (d.name == NULL)
        return;
    int rc = journal_unstart(q->j, d.id, d.attempts, NULL, NULL);
    if (rc != 0)
        unrecorded(q, "hand-back", d.id, rc);
}

static queue_node *jq_try_take(queue *qq)
{
    jqueue *q = jq(qq);
    queue_node *n = pop_started(q);
    if (n != NULL) {
        if (atomic_load(&q->shut))
            unclaim(q, n);
        return n;
    }
    return claim(q, queue_try_take(q->mem), 1);
}

static void jq_ack(queue *qq, queue_node *n, const queue_outcome *o)
{
    jqueue *q = jq(qq);
    queue_job d;
    int rc;

    describe(q, n, &d);
    if (d.name == NULL)
        return;
    if (o->end == QUEUE_SUCCEEDED)
        rc = journal_succeed(q->j, d.id, NULL, NULL, NULL);
    else if (o->end == QUEUE_FAILED)
        rc = journal_dead(q->j, d.id, o->error, NULL, NULL);
    else
        rc = journal_finish(q->j, d.id, queue_end_name(o->end), o->error, NULL, NULL);
    if (rc != 0)
        unrecorded(q, "end", d.id, rc);
}

static int jq_nack(queue *qq, queue_node *n, uint64_t retry_at_us, const char *why)
{
    jqueue *q = jq(qq);
    queue_job d;
    int rc = 0;

    describe(q, n, &d);
    pthread_mutex_lock(&q->mu);
    /* Recorded even when refused below: the retry then happens at the
     * next start, at its time. */
    if (d.name != NULL) {
        int jrc = journal_retry(q->j, d.id, mono_to_wall(retry_at_us), why, NULL, NULL);
        if (jrc != 0)
            unrecorded(q, "retry", d.id, jrc);
    }
    if (atomic_load(&q->shut))
        rc = BGS_ESHUTDOWN;
    else {
        atomic_fetch_add(&q->linked, 1);
        rc = queue_nack(q->mem, n, retry_at_us, why);
        if (rc != 0)
            atomic_fetch_sub(&q->linked, 1);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int queue_journal_adopt(queue *qq, queue_node *n, uint64_t not_before_wall_us)
{
    jqueue *q = jq(qq);
    queue_node *one[] = {n};
    int rc;

    pthread_mutex_lock(&q->mu);
    if (atomic_load(&q->shut))
        rc = BGS_ESHUTDOWN;
    else {
        atomic_fetch_add(&q->linked, 1);
        rc = queue_enqueue_at(q->mem, one, 1, wall_to_mono(not_before_wall_us), NULL, NULL);
        if (rc != 0)
            atomic_fetch_sub(&q->linked, 1);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int queue_journal_start_here(queue *qq, queue_node *n)
{
    jqueue *q = jq(qq);
    if (!q->lazy || atomic_load(&q->shut))
        return 0;
    return start_lazily(q, n);
}

static size_t jq_depth(queue *qq)
{
    jqueue *q = jq(qq);
    return queue_depth(q->mem) + atomic_load(&q->nstarted);
}

static uint64_t jq_wakeups(queue *qq)
{
    return queue_wakeups(jq(qq)->mem);
}

static void jq_shutdown(queue *qq)
{
    jqueue *q = jq(qq);
    pthread_mutex_lock(&q->mu);
    atomic_store(&q->shut, 1);
    pthread_mutex_unlock(&q->mu);
    queue_shutdown(q->mem);
    /* Claims in progress end within a commit: after them every claimed
     * node is on `started`, for try_take to hand back. */
    pthread_mutex_lock(&q->smu);
    while (q->claiming > 0)
        pthread_cond_wait(&q->claimed, &q->smu);
    pthread_mutex_unlock(&q->smu);
}

static void jq_destroy(queue *qq)
{
    jqueue *q = jq(qq);
    queue_destroy(q->mem);
    pthread_cond_destroy(&q->claimed);
    pthread_mutex_destroy(&q->smu);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

void queue_journal_lazy_starts(queue *qq, int on)
{
    jq(qq)->lazy = on != 0;
}

void queue_journal_get_counts(queue *qq, queue_journal_counts *out)
{
    jqueue *q = jq(qq);
    out->journaled = atomic_load(&q->journaled);
    out->memory_only = atomic_load(&q->memory_only);
    out->unrecorded = atomic_load(&q->unrecorded);
}

static const queue_ops journal_ops = {
    .name = "journal",
    .enqueue = jq_enqueue,
    .take = jq_take,
    .try_take = jq_try_take,
    .ack = jq_ack,
    .nack = jq_nack,
    .depth = jq_depth,
    .wakeups = jq_wakeups,
    .shutdown = jq_shutdown,
    .destroy = jq_destroy,
};

queue *queue_journal_new(journal *j, sched *s, size_t cap, unsigned linger_us,
                         queue_describe_fn describe_fn, void *describe_arg)
{
    jqueue *q = xcalloc(1, sizeof(*q));
    q->base.ops = &journal_ops;
    q->mem = queue_mem_new(s, 0, linger_us); /* bounded here, by `linked` */
    q->j = j;
    q->describe = describe_fn;
    q->describe_arg = describe_arg;
    q->cap = cap;
    pthread_mutex_init(&q->mu, NULL);
    pthread_mutex_init(&q->smu, NULL);
    pthread_cond_init(&q->claimed, NULL);
    q->s_tail = &q->s_head;
    return &q->base;
}
