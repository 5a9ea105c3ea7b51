/*
 * test_queue_redis.c - the queue backend on the broker (queue_redis.c)
 * with a small stand-in for the task engine, against a redis-server of
 * each test's own: a "server" backend (consume 0) adds jobs that
 * "worker" backends (consume N) adopt, run and acknowledge, and the
 * server hears of each final state once; retries go through the delayed
 * set and come back with the attempt counted; unknown names are
 * dead-lettered; max_concurrency holds across workers; ad hoc jobs stay
 * local; a Redis that is down is load (BGS_EFULL), not a hang.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "bgserve.h"
#include "broker.h"
#include "helpers.h"
#include "queue_redis.h"
#include "redis.h"
#include "sched.h"
#include "util.h"

/* The timers of every queue here (the engine's, in the server). */
static sched *timers;

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The stand-in engine: items, and what the hooks saw. */
typedef struct item {
    queue_node node;
    uint64_t id;
    char name[32];
    char payload[32];
    uint32_t attempt;
    int adopted;
} item;

typedef struct engine {
    pthread_mutex_t mu;
    unsigned conc;               /* max_concurrency of "capped" */
    int finished[256];           /* by id: times the finished hook saw it */
    char state[256][16];
    char error[256][160];
    char result[256][32];
    int released;
    int adopted;
    int rejoined;
} engine;

static item *item_of(queue_node *n) { return UTIL_CONTAINER_OF(n, item, node); }

static void describe(const queue_node *n, queue_job *out, void *arg)
{
    (void)arg;
    const item *it = UTIL_CONTAINER_OF(n, item, node);
    out->id = it->id;
    out->name = strcmp(it->name, "adhoc") == 0 ? NULL : it->name;
    out->payload = it->payload;
    out->len = strlen(it->payload);
    out->max_attempts = 3;
    out->request_id = "rq";
}

static int limits(void *arg, const char *name, unsigned *max_conc, char *why, size_t cap)
{
    engine *e = arg;
    if (strcmp(name, "unknown") == 0) {
        snprintf(why, cap, "no task named '%s' in this app", name);
        return -1;
    }
    *max_conc = strcmp(name, "capped") == 0 ? e->conc : 0;
    return 0;
}

static queue_node *adopt(void *arg, const broker_msg *m, char *why, size_t cap)
{
    engine *e = arg;
    (void)why;
    (void)cap;
    item *it = calloc(1, sizeof *it);
    it->id = m->id;
    snprintf(it->name, sizeof it->name, "%s", m->name);
    snprintf(it->payload, sizeof it->payload, "%.*s", (int)m->len, (const char *)m->payload);
    it->attempt = m->attempt;
    it->adopted = 1;
    pthread_mutex_lock(&e->mu);
    e->adopted++;
    pthread_mutex_unlock(&e->mu);
    return &it->node;
}

static void finished(void *arg, queue_node *n, const broker_record *rec)
{
    engine *e = arg;
    item *it = item_of(n);
    pthread_mutex_lock(&e->mu);
    if (it->id < 256) {
        e->finished[it->id]++;
        snprintf(e->state[it->id], sizeof e->state[0], "%s", rec ? rec->state : "?");
        snprintf(e->error[it->id], sizeof e->error[0], "%s", rec && rec->error ? rec->error : "");
        snprintf(e->result[it->id], sizeof e->result[0], "%s",
                 rec && rec->result ? rec->result : "");
    }
    pthread_mutex_unlock(&e->mu);
    free(it);
}

static void released(void *arg, queue_node *n)
{
    engine *e = arg;
    pthread_mutex_lock(&e->mu);
    e->released++;
    pthread_mutex_unlock(&e->mu);
    free(item_of(n));
}

static void rejoin(void *arg, queue_node *n, const broker_msg *m)
{
    engine *e = arg;
    item_of(n)->attempt = m->attempt;
    pthread_mutex_lock(&e->mu);
    e->rejoined++;
    pthread_mutex_unlock(&e->mu);
}

static void result(void *arg, queue_node *n, broker_outcome *o)
{
    (void)arg;
    item *it = item_of(n);
    static _Thread_local char buf[64];
    snprintf(buf, sizeof buf, "done:%s", it->payload);
    o->has_result = 1;
    o->result_status = 200;
    o->result_type = "text/plain";
    o->result = buf;
    o->result_len = strlen(buf);
}

typedef struct rig {
    h_redis redis;
    engine e;
    broker *bs, *bw1, *bw2;
    queue *server, *w1, *w2;
} rig;

static broker *open_b(rig *g, const char *consumer)
{
    broker_config cfg = {.url = g->redis.url, .app = "app", .consumer = consumer,
                         .visibility_ms = 2000};
    broker *b;
    char err[512];
    int rc = broker_open(&cfg, &b, err, sizeof err);
    if (rc)
        fail_msg("broker_open: %s", err);
    return b;
}

static queue *backend(rig *g, broker *b, unsigned consume)
{
    queue_redis_hooks h = {.describe = describe, .limits = limits, .adopt = adopt,
                           .finished = finished, .released = released, .rejoin = rejoin,
                           .result = result, .arg = &g->e};
    queue_redis_config cfg = {.consume = consume, .sched = timers};
    queue *q = queue_redis_new(b, &cfg, &h);
    assert_non_null(q);
    return q;
}

/* The server's queue and up to two workers (w1, w2: their concurrency,
 * 0 for none) on a redis-server started with extra (may be NULL). */
static void rig_up_on(rig *g, unsigned w1, unsigned w2, const char *const *extra)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->e.mu, NULL);
    assert_int_equal(sched_run(timers), 0);
    h_redis_start(&g->redis, NULL, extra);
    g->bs = open_b(g, "server");
    g->server = backend(g, g->bs, 0);
    if (w1) {
        g->bw1 = open_b(g, "w1");
        g->w1 = backend(g, g->bw1, w1);
    }
    if (w2) {
        g->bw2 = open_b(g, "w2");
        g->w2 = backend(g, g->bw2, w2);
    }
}

static void rig_up(rig *g, unsigned w1, unsigned w2)
{
    rig_up_on(g, w1, w2, NULL);
}

static void rig_down(rig *g)
{
    queue *qs[3] = {g->server, g->w1, g->w2};
    broker *bs[3] = {g->bs, g->bw1, g->bw2};
    for (int i = 0; i < 3; i++) {
        if (!qs[i])
            continue;
        queue_shutdown(qs[i]);
        queue_node *n;
        while ((n = queue_try_take(qs[i])) != NULL)
            free(item_of(n));
        /* Nodes added to the stream and still waiting for their notice
         * come back apart (their tasks live on in Redis). */
        while ((n = queue_redis_take_sent(qs[i])) != NULL)
            free(item_of(n));
        queue_destroy(qs[i]);
        broker_close(bs[i]);
    }
    sched_halt(timers);
    h_redis_stop(&g->redis);
    pthread_mutex_destroy(&g->e.mu);
}

static item *new_item(uint64_t id, const char *name)
{
    item *it = calloc(1, sizeof *it);
    it->id = id;
    snprintf(it->name, sizeof it->name, "%s", name);
    snprintf(it->payload, sizeof it->payload, "p%" PRIu64, id);
    return it;
}

static int done_calls;
static int done_status = 1;
static void on_done(void *arg, int status, const char *msg)
{
    (void)arg;
    (void)msg;
    done_calls++;
    done_status = status;
}

/* Take from whichever worker has a job, until the deadline. */
static queue_node *take_any(queue *a, queue *b, queue **from, unsigned deadline_ms)
{
    uint64_t end = h_now_ms() + deadline_ms;
    while (h_now_ms() < end) {
        queue_node *n = a ? queue_try_take(a) : NULL;
        if (n) {
            *from = a;
            return n;
        }
        n = b ? queue_try_take(b) : NULL;
        if (n) {
            *from = b;
            return n;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL); /* polling interval */
    }
    return NULL;
}

static int count_finished(engine *e, uint64_t lo, uint64_t hi)
{
    pthread_mutex_lock(&e->mu);
    int n = 0;
    for (uint64_t i = lo; i <= hi; i++)
        n += e->finished[i];
    pthread_mutex_unlock(&e->mu);
    return n;
}

static int wait_finished(engine *e, uint64_t lo, uint64_t hi, int want, unsigned deadline_ms)
{
    uint64_t end = h_now_ms() + deadline_ms;
    int n;
    while ((n = count_finished(e, lo, hi)) < want && h_now_ms() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL); /* polling interval */
    }
    return n;
}

static void queue_redis_workers_share_and_server_hears_once(void **state)
{
    (void)state;
    rig g;
    rig_up(&g, 4, 4);
    enum { N = 40 };
    queue_node *nodes[N];
    for (int i = 0; i < N; i++)
        nodes[i] = &new_item((uint64_t)i + 1, "job")->node;
    done_calls = 0;
    assert_int_equal(queue_enqueue_at(g.server, nodes, N, 0, on_done, NULL), 0);
    assert_int_equal(done_calls, 1);
    assert_int_equal(done_status, 0);
    size_t held, sent;
    queue_redis_counts(g.server, &held, &sent);
    assert_int_equal(sent, N);

    int by[2] = {0, 0};
    int seen[N + 1] = {0};
    /* Each worker holds at most 4 jobs it has not acknowledged: the first
     * 8 taken without acknowledging come 4 from each. */
    queue_node *first[8];
    queue *first_from[8];
    for (int i = 0; i < N; i++) {
        queue *from = NULL;
        queue_node *n = take_any(g.w1, g.w2, &from, 10000);
        assert_non_null(n);
        item *it = item_of(n);
        assert_true(it->adopted);
        assert_int_equal(it->attempt, 1);
        assert_true(it->id >= 1 && it->id <= N);
        seen[it->id]++;
        by[from == g.w2]++;
        if (i < 8) {
            first[i] = n;
            first_from[i] = from;
            if (i == 7) {
                assert_int_equal(by[0], 4);
                assert_int_equal(by[1], 4);
                for (int k = 0; k < 8; k++) {
                    queue_ack(first_from[k], first[k],
                              &(queue_outcome){.end = QUEUE_SUCCEEDED});
                    free(item_of(first[k]));
                }
            }
            continue;
        }
        queue_ack(from, n, &(queue_outcome){.end = QUEUE_SUCCEEDED});
        free(it);
    }
    for (int i = 1; i <= N; i++)
        assert_int_equal(seen[i], 1);
    assert_int_equal(wait_finished(&g.e, 1, N, N, 10000), N);
    /* Once each, with the record and the result the worker wrote. */
    for (int i = 1; i <= N; i++) {
        assert_int_equal(g.e.finished[i], 1);
        assert_string_equal(g.e.state[i], "succeeded");
    }
    char want[32];
    snprintf(want, sizeof want, "done:p%d", 7);
    assert_string_equal(g.e.result[7], want);
    queue_redis_counts(g.server, &held, &sent);
    assert_int_equal(sent, 0);
    rig_down(&g);
}

/* The server of g enqueues job id and worker w1 reads it: adopted, at
 * attempt 1. */
static queue_node *take_adopted(rig *g, uint64_t id)
{
    queue_node *n = &new_item(id, "flaky")->node;
    assert_int_equal(queue_enqueue_at(g->server, &n, 1, 0, NULL, NULL), 0);
    queue *from;
    queue_node *got = take_any(g->w1, NULL, &from, 10000);
    assert_non_null(got);
    assert_int_equal(item_of(got)->id, id);
    assert_int_equal(item_of(got)->attempt, 1);
    return got;
}

static void queue_redis_retry_goes_through_the_delayed_set(void **state)
{
    (void)state;
    rig g;
    rig_up(&g, 1, 0);
    queue *from;
    queue_node *got = take_adopted(&g, 5);
    assert_int_equal(queue_nack(g.w1, got, util_now_us() + 1000, "try again"), 0);
    got = take_any(g.w1, NULL, &from, 10000);
    assert_non_null(got);
    assert_int_equal(item_of(got)->id, 5);
    assert_int_equal(item_of(got)->attempt, 2);
    pthread_mutex_lock(&g.e.mu);
    int rel = g.e.released;
    pthread_mutex_unlock(&g.e.mu);
    assert_int_equal(rel, 1);
    queue_ack(g.w1, got, &(queue_outcome){.end = QUEUE_FAILED, .error = "still broken"});
    free(item_of(got));
    assert_int_equal(wait_finished(&g.e, 5, 5, 1, 10000), 1);
    assert_string_equal(g.e.state[5], "failed");
    assert_string_equal(g.e.error[5], "still broken");
    rig_down(&g);
}

/* Worker w1 of g enqueues job id itself and reads it back: the node it
 * enqueued, at attempt 1. */
static queue_node *take_own(rig *g, uint64_t id)
{
    queue_node *n = &new_item(id, "flaky")->node;
    assert_int_equal(queue_enqueue_at(g->w1, &n, 1, 0, NULL, NULL), 0);
    queue *from;
    queue_node *got = take_any(g->w1, NULL, &from, 10000);
    assert_ptr_equal(got, n);
    assert_int_equal(item_of(got)->attempt, 1);
    return got;
}

/* A worker's own task (one it enqueued, a periodic tick say) that fails
 * goes through the delayed set too, but its node stays: it waits for
 * its notice, and when this worker reads the job back it runs the same
 * node with the attempt Redis counted. */
static void queue_redis_own_task_retry_keeps_its_node(void **state)
{
    (void)state;
    rig g;
    rig_up(&g, 1, 0);
    queue_node *n = take_own(&g, 8), *got = n;
    queue *from;
    assert_int_equal(queue_nack(g.w1, got, util_now_us() + 1000, "try again"), 0);
    size_t held, sent;
    queue_redis_counts(g.w1, &held, &sent);
    assert_int_equal(held, 0);
    assert_int_equal(sent, 1);
    got = take_any(g.w1, NULL, &from, 10000);
    assert_ptr_equal(got, n);
    assert_int_equal(item_of(got)->attempt, 2);
    pthread_mutex_lock(&g.e.mu);
    int rel = g.e.released, rej = g.e.rejoined, adopted = g.e.adopted;
    pthread_mutex_unlock(&g.e.mu);
    assert_int_equal(rel, 0);
    assert_int_equal(rej, 2);
    assert_int_equal(adopted, 0);
    queue_ack(g.w1, got, &(queue_outcome){.end = QUEUE_SUCCEEDED});
    free(item_of(got));
    queue_redis_counts(g.w1, &held, &sent);
    assert_int_equal(sent, 0);
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{app}:tasks"), 0);
    rig_down(&g);
}

/* The same failing once the queue is shut down: the job goes to the
 * delayed set for another worker, but the node is not put back among
 * those waiting for a notice (their owner took them back already): nack
 * says QUEUE_ELSEWHERE (not lost, unlike BGS_ESHUTDOWN), logs it, and
 * the node stays the caller's. */
static void queue_redis_own_task_retry_at_shutdown(void **state)
{
    (void)state;
    rig g;
    rig_up(&g, 1, 0);
    queue_node *got = take_own(&g, 9);
    queue_shutdown(g.w1);
    assert_null(queue_redis_take_sent(g.w1));
    h_capture_begin();
    int rc = queue_nack(g.w1, got, util_now_us() + 1000, "try again");
    char *log = h_capture_end();
    assert_int_equal(rc, QUEUE_ELSEWHERE);
    h_assert_contains(log, "task 9 (flaky) handed back to redis: attempt 1 failed as this "
                           "worker stopped; another worker will retry it");
    free(log);
    assert_null(queue_redis_take_sent(g.w1));
    free(item_of(got));
    assert_int_equal(h_redis_int(&g.redis, "ZCARD bgserve:{app}:delayed"), 1);
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{app}:tasks"), 0);
    rig_down(&g);
}

/* The attempts of task id in its record in Redis. */
static long long record_attempts(rig *g, uint64_t id)
{
    redisReply *r = h_redis_cmd(&g->redis, "HGET bgserve:{app}:task:%" PRIu64 " attempts", id);
    long long n = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : -1;
    freeReplyObject(r);
    return n;
}

/* Redis away when a run fails: the worker retries it itself, and that
 * run, which no start in Redis counted, is in the record's attempts
 * once the job ends (Redis keeps its data here: AOF). */
static void queue_redis_local_retry_counts_its_attempt(void **state)
{
    (void)state;
    static const char *const aof[] = {"--appendonly", "yes", "--appendfsync", "always", NULL};
    rig g;
    rig_up_on(&g, 1, 0, aof);
    queue *from;
    queue_node *got = take_adopted(&g, 12);
    assert_int_equal(record_attempts(&g, 12), 1);
    h_redis_halt(&g.redis);
    h_capture_begin();
    assert_int_equal(queue_nack(g.w1, got, util_now_us() + 1000, "try again"), 0);
    queue_node *again = take_any(g.w1, NULL, &from, 10000);
    h_redis_restart(&g.redis);
    /* The worker's command connection is back once it touches its entry. */
    uint64_t end = h_now_ms() + 15000;
    while (!broker_available(g.bw1) && h_now_ms() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL); /* polling interval */
    }
    char *log = h_capture_end();
    assert_ptr_equal(again, got);
    assert_true(broker_available(g.bw1));
    h_assert_contains(log, "lost the command connection");
    free(log);
    queue_ack(g.w1, again, &(queue_outcome){.end = QUEUE_SUCCEEDED});
    free(item_of(again));
    assert_int_equal(wait_finished(&g.e, 12, 12, 1, 10000), 1);
    assert_string_equal(g.e.state[12], "succeeded");
    assert_int_equal(record_attempts(&g, 12), 2);
    rig_down(&g);
}

/* The field of task id's record in Redis ("" when it has none). */
static void record_field(rig *g, uint64_t id, const char *field, char *out, size_t cap)
{
    redisReply *r = h_redis_cmd(&g->redis, "HGET bgserve:{app}:task:%" PRIu64 " %s", id, field);
    snprintf(out, cap, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
}

/* Redis away when a run fails, then the worker stops while it waits to
 * retry the job itself: the job goes back to the delayed set due when
 * its backoff ends, not at once, as a retry Redis had taken (state
 * retrying, the run's error, the failed run counted). */
static void queue_redis_local_retry_handed_back_keeps_its_time(void **state)
{
    (void)state;
    static const char *const aof[] = {"--appendonly", "yes", "--appendfsync", "always", NULL};
    rig g;
    rig_up_on(&g, 1, 0, aof);
    queue_node *got = take_adopted(&g, 14);
    h_redis_halt(&g.redis);
    h_capture_begin();
    uint64_t ten_min_us = 600ull * 1000000u;
    assert_int_equal(queue_nack(g.w1, got, util_now_us() + ten_min_us, "try again"), 0);
    h_redis_restart(&g.redis);
    uint64_t end = h_now_ms() + 15000;
    while (!broker_available(g.bw1) && h_now_ms() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL); /* polling interval */
    }
    queue_shutdown(g.w1);
    queue_node *n = queue_try_take(g.w1); /* the waiting one, after shutdown */
    if (n)
        queue_ack(g.w1, n, &(queue_outcome){.end = QUEUE_CANCELLED,
                                            .error = "its worker stopped before it ran"});
    char *log = h_capture_end();
    assert_ptr_equal(n, got);
    free(item_of(n));
    /* Due some ten minutes from now by Redis's clock: more than five. */
    redisReply *t = h_redis_cmd(&g.redis, "TIME");
    assert_int_equal(t->type, REDIS_REPLY_ARRAY);
    double now_ms = strtod(t->element[0]->str, NULL) * 1000 + strtod(t->element[1]->str, NULL) / 1000;
    freeReplyObject(t);
    redisReply *z = h_redis_cmd(&g.redis, "ZRANGE bgserve:{app}:delayed 0 -1 WITHSCORES");
    assert_int_equal(z->type, REDIS_REPLY_ARRAY);
    assert_int_equal(z->elements, 2);
    double due_ms = strtod(z->element[1]->str, NULL);
    freeReplyObject(z);
    if (due_ms < now_ms + 300000)
        fail_msg("due at %.0f, %.0f ms from now: the backoff was not kept", due_ms, due_ms - now_ms);
    char v[64];
    record_field(&g, 14, "state", v, sizeof v);
    assert_string_equal(v, "retrying");
    record_field(&g, 14, "error", v, sizeof v);
    assert_string_equal(v, "try again");
    assert_int_equal(record_attempts(&g, 14), 1);
    h_assert_contains(log, "task 14 (flaky) handed back to redis for another worker: this "
                           "worker stopped while the task waited for its retry (attempt 2), "
                           "which stays due in ");
    free(log);
    rig_down(&g);
}

/* Redis away when a run fails, and the queue shut down already: the
 * worker cannot retry the job itself, and nobody acks it here any more,
 * but it is not lost: its entry stays pending in Redis for another
 * worker to claim.  nack says QUEUE_ELSEWHERE, not BGS_ESHUTDOWN (whose
 * caller records that the retry never runs), logs where the job is, and
 * forgets the node, which is the caller's again. */
static void queue_redis_local_retry_at_shutdown_stays_pending(void **state)
{
    (void)state;
    static const char *const aof[] = {"--appendonly", "yes", "--appendfsync", "always", NULL};
    rig g;
    rig_up_on(&g, 1, 0, aof);
    queue_node *got = take_adopted(&g, 15);
    h_redis_halt(&g.redis);
    h_capture_begin();
    queue_shutdown(g.w1);
    int rc = queue_nack(g.w1, got, util_now_us() + 1000, "try again");
    char *log = h_capture_end();
    assert_int_equal(rc, QUEUE_ELSEWHERE);
    h_assert_contains(log, "task 15 (flaky) could not be handed back (");
    h_assert_contains(log, "attempt 1 failed as this worker stopped; it stays pending in redis "
                           "and another worker claims it after the visibility timeout");
    free(log);
    assert_null(queue_try_take(g.w1));
    free(item_of(got));
    h_redis_restart(&g.redis);
    redisReply *p = h_redis_cmd(&g.redis, "XPENDING bgserve:{app}:tasks workers");
    assert_int_equal(p->type, REDIS_REPLY_ARRAY);
    assert_true(p->elements > 0);
    assert_int_equal(p->element[0]->integer, 1);
    freeReplyObject(p);
    rig_down(&g);
}

static void queue_redis_unknown_name_is_dead_lettered(void **state)
{
    (void)state;
    rig g;
    rig_up(&g, 1, 0);
    queue_node *n = &new_item(9, "unknown")->node;
    h_capture_begin();
    assert_int_equal(queue_enqueue_at(g.server, &n, 1, 0, NULL, NULL), 0);
    int got = wait_finished(&g.e, 9, 9, 1, 10000);
    char *log = h_capture_end();
    assert_int_equal(got, 1);
    assert_string_equal(g.e.state[9], "failed");
    assert_string_equal(g.e.error[9], "no task named 'unknown' in this app");
    h_assert_contains(log, "task 9: no task named 'unknown' in this app; moved to the dead letters");
    free(log);
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{app}:dead"), 1);
    assert_int_equal(g.e.adopted, 0);
    rig_down(&g);
}

static void queue_redis_max_concurrency_across_workers(void **state)
{
    (void)state;
    rig g;
    rig_up(&g, 3, 3);
    g.e.conc = 1;
    enum { N = 4 };
    queue_node *nodes[N];
    for (int i = 0; i < N; i++)
        nodes[i] = &new_item((uint64_t)i + 1, "capped")->node;
    assert_int_equal(queue_enqueue_at(g.server, nodes, N, 0, NULL, NULL), 0);
    for (int i = 0; i < N; i++) {
        queue *from;
        queue_node *got = take_any(g.w1, g.w2, &from, 10000);
        assert_non_null(got);
        /* While it runs, no worker holds a second one: the other jobs
         * wait in the stream or the delayed set. */
        for (int k = 0; k < 20; k++) {
            size_t h1, h2, s;
            queue_redis_counts(g.w1, &h1, &s);
            queue_redis_counts(g.w2, &h2, &s);
            assert_int_equal(h1 + h2, 1);
            assert_true(h_redis_int(&g.redis, "ZCARD bgserve:{app}:conc:capped") <= 1);
        }
        queue_ack(from, got, &(queue_outcome){.end = QUEUE_SUCCEEDED});
        free(item_of(got));
    }
    assert_int_equal(wait_finished(&g.e, 1, N, N, 10000), N);
    rig_down(&g);
}

static void queue_redis_adhoc_stays_local(void **state)
{
    (void)state;
    rig g;
    rig_up(&g, 0, 0);
    queue_node *n = &new_item(3, "adhoc")->node;
    assert_int_equal(queue_enqueue_at(g.server, &n, 1, 0, NULL, NULL), 0);
    assert_int_equal(queue_depth(g.server), 1);
    queue_node *got = queue_take(g.server);
    assert_ptr_equal(got, n);
    queue_ack(g.server, got, &(queue_outcome){.end = QUEUE_SUCCEEDED});
    free(item_of(got));
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{app}:tasks"), 0);
    rig_down(&g);
}

static void queue_redis_down_is_load_not_a_hang(void **state)
{
    (void)state;
    rig g;
    rig_up(&g, 0, 0);
    h_redis_halt(&g.redis);
    h_capture_begin();
    item *it = new_item(1, "job");
    queue_node *n = &it->node;
    done_calls = 0;
    int rc1 = queue_enqueue_at(g.server, &n, 1, 0, on_done, NULL);
    int rc2 = queue_enqueue_at(g.server, &n, 1, 0, on_done, NULL);
    size_t held, sent;
    queue_redis_counts(g.server, &held, &sent);
    char *log = h_capture_end();
    assert_int_equal(rc1, BGS_EFULL);
    assert_int_equal(rc2, BGS_EFULL);
    assert_int_equal(done_calls, 0);
    assert_int_equal(sent, 0);
    h_assert_contains(log, "lost the command connection");
    free(log);
    h_redis_restart(&g.redis);
    uint64_t end = h_now_ms() + 15000;
    int rc = BGS_EFULL;
    while (rc != 0 && h_now_ms() < end)
        rc = queue_enqueue_at(g.server, &n, 1, 0, NULL, NULL);
    assert_int_equal(rc, 0);
    rig_down(&g); /* hands the node back through queue_redis_take_sent */
}

/* What a watch saw: how many calls, and the record's state and result
 * ("-" for none). */
typedef struct seen_watch {
    pthread_mutex_t mu;
    int calls;
    char state[16];
    char result[32];
} seen_watch;

static void on_watch(void *arg, uint64_t id, const broker_record *rec)
{
    seen_watch *w = arg;
    (void)id;
    pthread_mutex_lock(&w->mu);
    w->calls++;
    snprintf(w->state, sizeof w->state, "%s", rec ? rec->state : "-");
    snprintf(w->result, sizeof w->result, "%s", rec && rec->result ? rec->result : "-");
    pthread_mutex_unlock(&w->mu);
}

static int watch_calls(seen_watch *w, int want, unsigned deadline_ms)
{
    uint64_t end = h_now_ms() + deadline_ms;
    int n;
    do {
        pthread_mutex_lock(&w->mu);
        n = w->calls;
        pthread_mutex_unlock(&w->mu);
        if (n >= want)
            break;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL); /* polling interval */
    } while (h_now_ms() < end);
    return n;
}

/* A second server watches a task the first added: once, with its
 * record, when a worker finished it; final already is 1; unknown is
 * BGS_ENOTFOUND; a watch left at shutdown ends without a record; Redis
 * away is BGS_EFULL. */
static void queue_redis_watch_another_servers_task(void **state)
{
    (void)state;
    rig g;
    rig_up(&g, 1, 0);
    broker *b2 = open_b(&g, "server2");
    queue *other = backend(&g, b2, 0);
    seen_watch w = {.calls = 0};
    pthread_mutex_init(&w.mu, NULL);
    assert_int_equal(queue_redis_watch(other, 77, on_watch, &w), BGS_ENOTFOUND);
    queue_node *n = &new_item(5, "job")->node;
    assert_int_equal(queue_enqueue_at(g.server, &n, 1, 0, NULL, NULL), 0);
    assert_int_equal(queue_redis_watch(other, 5, on_watch, &w), 0);
    assert_int_equal(queue_redis_watches(other), 1);
    queue *from;
    queue_node *got = take_any(g.w1, NULL, &from, 10000);
    assert_non_null(got);
    queue_ack(g.w1, got, &(queue_outcome){.end = QUEUE_SUCCEEDED});
    free(item_of(got));
    assert_int_equal(watch_calls(&w, 1, 10000), 1);
    assert_string_equal(w.state, "succeeded");
    assert_string_equal(w.result, "done:p5");
    assert_int_equal(queue_redis_watches(other), 0);
    assert_int_equal(queue_redis_watch(other, 5, on_watch, &w), 1);
    /* Left at shutdown: called without a record. */
    n = &new_item(6, "job")->node;
    assert_int_equal(queue_enqueue_at(g.server, &n, 1, 0, NULL, NULL), 0);
    assert_int_equal(queue_redis_watch(other, 6, on_watch, &w), 0);
    queue_shutdown(other);
    assert_int_equal(w.calls, 2);
    assert_string_equal(w.state, "-");
    queue_destroy(other);
    /* Redis away. */
    other = backend(&g, b2, 0);
    h_redis_halt(&g.redis);
    h_capture_begin();
    int rc = queue_redis_watch(other, 6, on_watch, &w);
    free(h_capture_end());
    assert_int_equal(rc, BGS_EFULL);
    h_redis_restart(&g.redis);
    queue_shutdown(other);
    queue_destroy(other);
    broker_close(b2);
    assert_int_equal(w.calls, 2);
    pthread_mutex_destroy(&w.mu);
    rig_down(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(queue_redis_workers_share_and_server_hears_once),
        cmocka_unit_test(queue_redis_retry_goes_through_the_delayed_set),
        cmocka_unit_test(queue_redis_own_task_retry_keeps_its_node),
        cmocka_unit_test(queue_redis_own_task_retry_at_shutdown),
        cmocka_unit_test(queue_redis_local_retry_counts_its_attempt),
        cmocka_unit_test(queue_redis_local_retry_handed_back_keeps_its_time),
        cmocka_unit_test(queue_redis_local_retry_at_shutdown_stays_pending),
        cmocka_unit_test(queue_redis_unknown_name_is_dead_lettered),
        cmocka_unit_test(queue_redis_max_concurrency_across_workers),
        cmocka_unit_test(queue_redis_adhoc_stays_local),
        cmocka_unit_test(queue_redis_down_is_load_not_a_hang),
        cmocka_unit_test(queue_redis_watch_another_servers_task),
    };
    timers = sched_new();
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    sched_free(timers);
    return failed;
}
