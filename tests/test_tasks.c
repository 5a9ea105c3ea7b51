/*
 * test_tasks.c - the background-task engine with real workers, a task
 * table in memory and a test owner (no plugin, no generation): each test
 * makes its own engine.  Records and their states, payload copies,
 * sequential and concurrent groups, retries, per-name caps, backpressure,
 * discards, DELIVERED_ONLY, ad hoc tasks, periodic schedules, timeouts,
 * service scopes, the shutdown drain, the record ring and the JSON, and
 * two engines side by side.  On a broker (a redis-server of the test's
 * own, tests/support/redis.h): what the records say of tasks that Redis
 * refused or that a stopping worker handed back to it.
 *
 * Every wait polls with a deadline; sleeps inside task functions only
 * stand for work or pace a poll loop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "introspect.h"
#include "json.h"
#include "plugin.h"
#include "services.h"
#include "queue.h"
#include "tasks.h"
#include "util.h"
#include "helpers.h"
#include "redis.h"

#define DEADLINE_US (30u * 1000000u)

static tasks_engine *E; /* the engine of the test running (start, teardown) */

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

static void pause_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The record of id as JSON text (free it), or NULL when not found. */
static char *record(uint64_t id)
{
    json j;
    json_init(&j);
    if (introspect_task_json(E, id, &j) != 0) {
        json_free(&j);
        return NULL;
    }
    return json_take(&j, NULL);
}

static int state_is(uint64_t id, const char *st)
{
    char want[64];
    char *r = record(id);
    snprintf(want, sizeof(want), "\"state\":\"%s\"", st);
    int ok = r && strstr(r, want) != NULL;
    free(r);
    return ok;
}

static int wait_state(uint64_t id, const char *st)
{
    uint64_t deadline = util_now_us() + DEADLINE_US;
    while (!state_is(id, st)) {
        if (util_now_us() > deadline)
            return 0;
        pause_ms(1);
    }
    return 1;
}

/* A number field of a JSON text after "key":; *is_null set for null. */
static uint64_t field_u64(const char *text, const char *key, int *is_null)
{
    char want[64];
    snprintf(want, sizeof(want), "\"%s\":", key);
    const char *p = strstr(text, want);
    assert_non_null(p);
    p += strlen(want);
    if (is_null)
        *is_null = strncmp(p, "null", 4) == 0;
    return strtoull(p, NULL, 10);
}

static uint64_t record_u64(uint64_t id, const char *key)
{
    char *r = record(id);
    assert_non_null(r);
    uint64_t v = field_u64(r, key, NULL);
    free(r);
    return v;
}

static char *stats(void)
{
    json j;
    json_init(&j);
    json_obj_begin(&j);
    tasks_stats_json(E, &j);
    json_obj_end(&j);
    return json_take(&j, NULL);
}

/* stats.tasks.NAME.FIELD, 0 when the name has no entry yet. */
static uint64_t stat_of(const char *name, const char *field)
{
    char want[128];
    char *s = stats();
    snprintf(want, sizeof(want), "\"%s\":{", name);
    const char *p = strstr(s, want);
    uint64_t v = 0;
    if (p) {
        char *end = strchr(p, '}');
        assert_non_null(end);
        *end = '\0';
        v = field_u64(p, field, NULL);
    }
    free(s);
    return v;
}

static int wait_stat_at_least(const char *name, const char *field, uint64_t n)
{
    uint64_t deadline = util_now_us() + DEADLINE_US;
    while (stat_of(name, field) < n) {
        if (util_now_us() > deadline)
            return 0;
        pause_ms(1);
    }
    return 1;
}

static int wait_atomic_at_least(atomic_int *a, int n)
{
    uint64_t deadline = util_now_us() + DEADLINE_US;
    while (atomic_load(a) < n) {
        if (util_now_us() > deadline)
            return 0;
        pause_ms(1);
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* Task functions                                                      */
/* ------------------------------------------------------------------ */

static pthread_mutex_t order_mu = PTHREAD_MUTEX_INITIALIZER;
static char order_log[4096];
static size_t order_len;

static atomic_int gate_open;   /* gated tasks block until it is 1 */
static atomic_int runs_ok, runs_gate, runs_pslow, runs_pstart, runs_plater;

/* Appends its payload to order_log. */
static int t_order(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)ctx;
    pthread_mutex_lock(&order_mu);
    if (order_len + len < sizeof(order_log)) {
        memcpy(order_log + order_len, payload, len);
        order_len += len;
        order_log[order_len] = '\0';
    }
    pthread_mutex_unlock(&order_mu);
    atomic_fetch_add(&runs_ok, 1);
    return 0;
}

static int t_fail(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    tasks_ctx_error(ctx, "say \"hi\"\nbye");
    return 1;
}

static void wait_gate(bgs_task_ctx *ctx)
{
    uint64_t deadline = util_now_us() + DEADLINE_US;
    while (!atomic_load(&gate_open) && !tasks_ctx_cancelled(ctx) && util_now_us() < deadline)
        pause_ms(1);
}

static int t_gate(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    atomic_fetch_add(&runs_gate, 1);
    wait_gate(ctx);
    return 0;
}

/* Its first attempt waits for the gate and fails; the next succeeds. */
static int t_gatefail(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    if (tasks_ctx_attempt(ctx) > 1)
        return 0;
    atomic_fetch_add(&runs_gate, 1);
    wait_gate(ctx);
    tasks_ctx_error(ctx, "first attempt");
    return 1;
}

/* Its first attempt waits for the gate and fails; the retry is due ten
 * minutes later. */
static int t_gateslow(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    atomic_fetch_add(&runs_gate, 1);
    wait_gate(ctx);
    tasks_ctx_error(ctx, "first attempt");
    return 1;
}

/* Fails until its third attempt; logs attempts and their start times. */
static uint32_t flaky_attempts[8];
static uint64_t flaky_starts[8];
static atomic_int flaky_runs;

static int t_flaky(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    int i = atomic_load(&flaky_runs);
    if (i < 8) {
        flaky_attempts[i] = tasks_ctx_attempt(ctx);
        flaky_starts[i] = util_now_us();
    }
    atomic_fetch_add(&flaky_runs, 1);
    if (tasks_ctx_attempt(ctx) < 3) {
        tasks_ctx_error(ctx, "not yet (attempt %u)", (unsigned)tasks_ctx_attempt(ctx));
        return 1;
    }
    return 0;
}

static atomic_int slowfail_runs;

static int t_slowretry(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    (void)ctx;
    atomic_fetch_add(&slowfail_runs, 1);
    return 1;
}

/* Tracks how many runs are in progress at once. */
static atomic_int conc_now, conc_max, conc_runs;

static int t_capped(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)ctx;
    (void)payload;
    (void)len;
    int now = atomic_fetch_add(&conc_now, 1) + 1;
    int m = atomic_load(&conc_max);
    while (now > m && !atomic_compare_exchange_weak(&conc_max, &m, now))
        ;
    pause_ms(2); /* work */
    atomic_fetch_sub(&conc_now, 1);
    atomic_fetch_add(&conc_runs, 1);
    return 0;
}

static int t_capgate(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    atomic_fetch_add(&runs_gate, 1);
    wait_gate(ctx);
    return 0;
}

static atomic_int count_runs;

static int t_count(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)ctx;
    (void)payload;
    (void)len;
    atomic_fetch_add(&count_runs, 1);
    return 0;
}

/* "where": the thread its last run ran on. */
static _Atomic(pthread_t) where_ran;

static int t_where(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)ctx;
    (void)payload;
    (void)len;
    atomic_store(&where_ran, pthread_self());
    return 0;
}

static atomic_int pslow_now, pslow_max;

static int t_pslow(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    int now = atomic_fetch_add(&pslow_now, 1) + 1;
    int m = atomic_load(&pslow_max);
    while (now > m && !atomic_compare_exchange_weak(&pslow_max, &m, now))
        ;
    assert_null(tasks_ctx_request_id(ctx));
    wait_gate(ctx);
    atomic_fetch_sub(&pslow_now, 1);
    atomic_fetch_add(&runs_pslow, 1);
    return 0;
}

static int t_pstart(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)ctx;
    (void)payload;
    (void)len;
    atomic_fetch_add(&runs_pstart, 1);
    return 0;
}

static int t_plater(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)ctx;
    (void)payload;
    (void)len;
    atomic_fetch_add(&runs_plater, 1);
    return 0;
}

/* Runs until it is cancelled, then fails. */
static atomic_int waitcancel_started;

static int t_waitcancel(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    atomic_fetch_add(&waitcancel_started, 1);
    uint64_t deadline = util_now_us() + DEADLINE_US;
    while (!tasks_ctx_cancelled(ctx) && util_now_us() < deadline)
        pause_ms(1);
    tasks_ctx_error(ctx, "stopped early");
    return 1;
}

/* Payload check: records what it was given. */
static char seen_payload[64];

static int t_payload(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)ctx;
    if (len < sizeof(seen_payload)) {
        memcpy(seen_payload, payload, len);
        seen_payload[len] = '\0';
    }
    return 0;
}

/* Service scope: looks up a scoped service twice (same instance). */
static atomic_int svc_created, svc_destroyed, svc_same;

static void *svc_create(void *arg)
{
    (void)arg;
    atomic_fetch_add(&svc_created, 1);
    return malloc(1);
}

static void svc_destroy(void *inst, void *arg)
{
    (void)arg;
    atomic_fetch_add(&svc_destroyed, 1);
    free(inst);
}

static int t_service(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    void *a = tasks_ctx_service(ctx, "conn");
    void *b = tasks_ctx_service(ctx, "conn");
    if (a && a == b)
        atomic_fetch_add(&svc_same, 1);
    /* Still alive during the run. */
    return atomic_load(&svc_created) == atomic_load(&svc_destroyed) + 1 ? 0 : 1;
}

static int t_result(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    assert_int_equal(tasks_ctx_result(ctx, 42, "text/plain", "x", 1), BGS_EINVAL);
    return tasks_ctx_result(ctx, 201, "text/plain", "made it", 7);
}

/* ------------------------------------------------------------------ */
/* The task table and the test owner                                   */
/* ------------------------------------------------------------------ */

static plugin_task fake_tasks[] = {
    {.name = "order", .fn = t_order, .max_attempts = 1},
    {.name = "fail", .fn = t_fail, .max_attempts = 1},
    {.name = "gate", .fn = t_gate, .max_attempts = 1},
    {.name = "flaky", .fn = t_flaky, .max_attempts = 5, .backoff_base_ms = 1, .backoff_cap_ms = 4},
    {.name = "gatefail", .fn = t_gatefail, .max_attempts = 2, .backoff_base_ms = 1,
     .backoff_cap_ms = 1},
    {.name = "gateslow", .fn = t_gateslow, .max_attempts = 2, .backoff_base_ms = 600000,
     .backoff_cap_ms = 600000},
    {.name = "slowretry", .fn = t_slowretry, .max_attempts = 2, .backoff_base_ms = 600000,
     .backoff_cap_ms = 600000},
    {.name = "capped", .fn = t_capped, .max_attempts = 1, .max_concurrency = 2},
    {.name = "capgate", .fn = t_capgate, .max_attempts = 1, .max_concurrency = 1},
    {.name = "capone", .fn = t_count, .max_attempts = 1, .max_concurrency = 1},
    {.name = "count", .fn = t_count, .max_attempts = 1},
    {.name = "where", .fn = t_where, .max_attempts = 1},
    {.name = "delivered", .fn = t_order, .max_attempts = 1, .flags = BGS_TASK_DELIVERED_ONLY},
    {.name = "pslow", .fn = t_pslow, .max_attempts = 1},
    {.name = "pstart", .fn = t_pstart, .max_attempts = 1},
    {.name = "plater", .fn = t_plater, .max_attempts = 1},
    {.name = "waitcancel", .fn = t_waitcancel, .max_attempts = 3},
    {.name = "timeout", .fn = t_waitcancel, .max_attempts = 3, .timeout_ms = 5},
    {.name = "payload", .fn = t_payload, .max_attempts = 1},
    {.name = "service", .fn = t_service, .max_attempts = 1},
    {.name = "result", .fn = t_result, .max_attempts = 1},
};

/* The test owner: counts the references its tasks hold. */
static atomic_long owner_refs;
static services *owner_svcs;

static void owner_retain(const tasks_owner *o)
{
    (void)o;
    atomic_fetch_add(&owner_refs, 1);
}

static void owner_release(const tasks_owner *o)
{
    (void)o;
    atomic_fetch_sub(&owner_refs, 1);
}

static services *owner_services(const tasks_owner *o)
{
    (void)o;
    return owner_svcs;
}

static const tasks_owner owner = {
    .retain = owner_retain, .release = owner_release, .services = owner_services,
    .number = 7, .label = "fake", /* no app: bgs_task_app gives NULL */
};

/* The definition named name in fake_tasks, or NULL (as the loader would
 * resolve it). */
static const plugin_task *def_of(const char *name)
{
    for (size_t i = 0; i < BGS_COUNT(fake_tasks); i++)
        if (strcmp(fake_tasks[i].name, name) == 0)
            return &fake_tasks[i];
    return NULL;
}

static tasks_group *group_new(const char *rid, uint32_t mode)
{
    return tasks_group_new(E, &owner, rid, mode);
}

static int group_add(tasks_group *g, const char *name, const void *payload, size_t len,
                     uint64_t *id_out)
{
    return tasks_group_add(g, def_of(name), payload, len, id_out);
}

static int periodic_add(const char *name, uint32_t interval_ms, const void *payload, size_t len,
                        uint32_t flags)
{
    return tasks_periodic_add(E, &owner, def_of(name), interval_ms, payload, len, flags);
}

static int group_setup(void **state)
{
    (void)state;
    owner_svcs = services_new();
    if (services_register(owner_svcs, "conn", BGS_SCOPED, svc_create, svc_destroy, NULL, NULL, 0) != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    services_free(owner_svcs);
    return 0;
}

static void start(unsigned workers, unsigned queue_cap, unsigned keep)
{
    tasks_config cfg = {.workers = workers, .queue_cap = queue_cap, .keep = keep,
                        .linger_us = QUEUE_LINGER_DEFAULT};
    atomic_store(&gate_open, 0);
    E = tasks_new(&cfg);
    assert_non_null(E);
}

static int teardown(void **state)
{
    (void)state;
    atomic_store(&gate_open, 1);
    tasks_shutdown(E, 30000);
    tasks_free(E);
    E = NULL;
    /* Everything the test attached is final: no reference is left. */
    return atomic_load(&owner_refs) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */
/* ------------------------------------------------------------------ */

/* Records evicted from a small ring give their items to the next tasks
 * (tasks_records.c, "spares"): a task that failed with an error, a
 * payload and another request id, reused for one that succeeds, leaves
 * it nothing: every record reads as its own. */
static void tasks_reused_items_carry_nothing_over(void **state)
{
    (void)state;
    start(2, 100, 1);
    char payload[65]; /* up to one past the small items' inline size */
    for (int round = 0; round < 20; round++) {
        char rid[32];
        snprintf(rid, sizeof rid, "req-%d", round);
        tasks_group *g = group_new(rid, BGS_SEQUENTIAL);
        uint64_t id = 0;
        size_t len = (size_t)(round * 7) % sizeof payload;
        memset(payload, 'a' + round, len);
        if (round % 2 == 0) /* fails, with an error and a payload */
            assert_int_equal(group_add(g, "fail", payload, len, &id), 0);
        else
            assert_int_equal(group_add(g, "payload", payload, len, &id), 0);
        tasks_group_submit(g, 1);
        assert_true(wait_state(id, round % 2 == 0 ? "failed" : "succeeded"));
        char *r = record(id);
        assert_non_null(r);
        char want[64];
        snprintf(want, sizeof want, "\"request_id\":\"%s\"", rid);
        h_assert_contains(r, want);
        h_assert_contains(r, "\"attempts\":1");
        if (round % 2) {
            h_assert_contains(r, "\"error\":null");
            assert_int_equal(strlen(seen_payload), len < sizeof seen_payload ? len : 0);
            for (size_t i = 0; i < strlen(seen_payload); i++)
                assert_int_equal(seen_payload[i], 'a' + round);
        } else {
            h_assert_contains(r, "\"error\":\"say");
        }
        snprintf(want, sizeof want, "\"payload_bytes\":%zu", len);
        h_assert_contains(r, want);
        free(r);
    }
}

/* One "where" task of owner o submitted from this thread, run to its
 * end; whether it ran on this thread (inline). */
static int where_once(const tasks_owner *o)
{
    tasks_group *g = tasks_group_new(E, o, "req-w", BGS_SEQUENTIAL);
    uint64_t id = 0;
    assert_int_equal(tasks_group_add(g, def_of("where"), NULL, 0, &id), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(id, "succeeded"));
    return pthread_equal(atomic_load(&where_ran), pthread_self());
}

/* Inline runs (tasks_runs.c): a brief name runs on the thread that
 * submits it once 32 runs of its generation ended, never before; a new
 * generation (another owner number: a reload) starts the count again. */
static void tasks_brief_task_runs_on_the_submitting_thread(void **state)
{
    (void)state;
    tasks_config cfg = {.workers = 2, .queue_cap = 100, .keep = 10, .inline_us = 50};
    E = tasks_new(&cfg);
    assert_non_null(E);
    int runs = 0, here = 0;
    while (!here && runs < 2000) {
        here = where_once(&owner);
        runs++;
        assert_true(!here || runs > 32);
    }
    assert_true(here);
    assert_true(stat_of("where", "inline_runs") >= 1);

    tasks_owner next = owner;
    next.number = owner.number + 1;
    uint64_t inl = stat_of("where", "inline_runs");
    for (int i = 0; i < 32; i++)
        assert_false(where_once(&next));
    assert_int_equal(stat_of("where", "inline_runs"), inl);
}

/* Without inline_us (0: the engine's default) every run is a worker's. */
static void tasks_no_inline_runs_by_default(void **state)
{
    (void)state;
    start(2, 100, 10);
    for (int i = 0; i < 100; i++)
        assert_false(where_once(&owner));
    assert_int_equal(stat_of("where", "inline_runs"), 0);
}

static void tasks_single_task_lifecycle(void **state)
{
    (void)state;
    start(2, 100, 100);
    tasks_group *g = group_new("req-1", BGS_SEQUENTIAL);
    uint64_t id = 0;
    assert_int_equal(group_add(g, "gate", NULL, 0, &id), 0);
    assert_true(id > 0);
    assert_int_equal(tasks_group_count(g), 1);

    /* Before submit: queued, not started, delivery not known. */
    char *r = record(id);
    assert_non_null(r);
    h_assert_contains(r, "\"state\":\"queued\"");
    h_assert_contains(r, "\"started_at\":null");
    h_assert_contains(r, "\"delivered\":null");
    free(r);

    tasks_group_submit(g, 1);
    assert_true(wait_state(id, "running"));
    uint64_t created = record_u64(id, "created_at_us");
    uint64_t started = record_u64(id, "started_at_us");
    assert_true(created > 0);
    assert_true(started >= created);
    assert_int_equal(record_u64(id, "attempts"), 1);

    atomic_store(&gate_open, 1);
    assert_true(wait_state(id, "succeeded"));
    uint64_t finished = record_u64(id, "finished_at_us");
    assert_true(finished >= started);
    r = record(id);
    h_assert_contains(r, "\"request_id\":\"req-1\"");
    h_assert_contains(r, "\"delivered\":true");
    h_assert_contains(r, "\"error\":null");
    h_assert_contains(r, "\"generation\":7");
    free(r);
}

/* The tasks of id (succeeded) say request_id rid. */
static void assert_request_id(uint64_t id, const char *rid)
{
    char want[128];
    char *r = record(id);
    assert_non_null(r);
    snprintf(want, sizeof want, "\"request_id\":\"%s\"", rid);
    h_assert_contains(r, want);
    free(r);
}

/* A response's group lives in the response (tasks_group_init): it holds
 * no reference to the owner of its own (its tasks each hold one), each
 * task keeps its own copy of the request id, whole even when it is longer
 * than a bgserve id (another producer's, through --broker) or empty, and
 * the room serves the next group once this one is submitted. */
static void tasks_group_in_room_keeps_request_ids(void **state)
{
    (void)state;
    start(2, 100, 100);
    static const char *const rids[] = {
        "5f3a9c1200000007",
        "a-request-id-from-another-producer-longer-than-an-inline-one",
        "",
        "12345678901234567890123", /* the longest kept inline */
    };
    tasks_group_room room;
    for (size_t i = 0; i < BGS_COUNT(rids); i++) {
        memset(&room, 0xa5, sizeof room); /* whatever was there */
        long refs = atomic_load(&owner_refs);
        tasks_group *g = tasks_group_init(&room, E, &owner, rids[i], BGS_CONCURRENT);
        assert_ptr_equal(g, (void *)&room);
        assert_int_equal(atomic_load(&owner_refs), refs);
        uint64_t a, b;
        assert_int_equal(group_add(g, "count", NULL, 0, &a), 0);
        assert_int_equal(group_add(g, "count", NULL, 0, &b), 0);
        assert_int_equal(tasks_group_count(g), 2);
        tasks_group_submit(g, 1);
        assert_true(wait_state(a, "succeeded"));
        assert_true(wait_state(b, "succeeded"));
        assert_request_id(a, rids[i]);
        assert_request_id(b, rids[i]);
    }
    /* Dropped, then discarded: its tasks end discarded, the room is not
     * freed (ASan would say so). */
    tasks_group *g = tasks_group_init(&room, E, &owner, "req-drop", BGS_SEQUENTIAL);
    uint64_t d;
    assert_int_equal(group_add(g, "count", NULL, 0, &d), 0);
    tasks_group_discard(g, "handler failed");
    assert_true(wait_state(d, "discarded"));
    assert_request_id(d, "req-drop");
}

static void *submit_on_thread(void *g)
{
    tasks_group_submit(g, 1);
    return NULL;
}

/* A group made on one thread and submitted on another (what
 * tasks_group_new allows; a response's group is submitted by its HTTP
 * thread): its tasks run in order with its request id, and the group and
 * its copy of the id are freed on the submitting thread. */
static void tasks_group_submitted_on_another_thread(void **state)
{
    (void)state;
    start(2, 100, 100);
    pthread_mutex_lock(&order_mu);
    order_len = 0;
    order_log[0] = '\0';
    pthread_mutex_unlock(&order_mu);
    tasks_group *g = group_new("req-elsewhere-and-longer-than-inline", BGS_SEQUENTIAL);
    uint64_t a, b;
    assert_int_equal(group_add(g, "order", "1", 1, &a), 0);
    assert_int_equal(group_add(g, "order", "2", 1, &b), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, submit_on_thread, g), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_true(wait_state(b, "succeeded"));
    pthread_mutex_lock(&order_mu);
    assert_string_equal(order_log, "12");
    pthread_mutex_unlock(&order_mu);
    assert_request_id(a, "req-elsewhere-and-longer-than-inline");
    assert_request_id(b, "req-elsewhere-and-longer-than-inline");
}

static void tasks_ids_increase_and_list(void **state)
{
    (void)state;
    start(2, 100, 100);
    tasks_group *g = group_new(NULL, BGS_CONCURRENT);
    uint64_t a, b, c;
    assert_int_equal(group_add(g, "count", NULL, 0, &a), 0);
    assert_int_equal(group_add(g, "count", NULL, 0, &b), 0);
    assert_int_equal(group_add(g, "count", NULL, 0, &c), 0);
    assert_true(a < b && b < c);
    char want[96], buf[96];
    snprintf(want, sizeof(want), "%" PRIu64 ",%" PRIu64 ",%" PRIu64, a, b, c);
    assert_int_equal(tasks_group_ids(g, buf, sizeof(buf)), strlen(want));
    assert_string_equal(buf, want);
    /* Too small: whole ids only, always NUL-terminated. */
    char first[32], small[64];
    snprintf(first, sizeof(first), "%" PRIu64, a);
    memset(small, 'X', sizeof(small));
    assert_int_equal(tasks_group_ids(g, small, strlen(first) + 2), strlen(want));
    assert_string_equal(small, first);
    /* Room for the longest id, then not: the first written in place, the
     * next ones copied while whole. */
    memset(small, 'X', sizeof(small));
    assert_int_equal(tasks_group_ids(g, small, UTIL_U64_DEC_MAX), strlen(want));
    assert_string_equal(small, want);
    memset(small, 'X', sizeof(small));
    snprintf(first, sizeof(first), "%" PRIu64 ",%" PRIu64, a, b);
    assert_int_equal(tasks_group_ids(g, small, strlen(want)), strlen(want));
    assert_string_equal(small, first);
    assert_int_equal(group_add(g, "nope", NULL, 0, NULL), BGS_ENOTASK);
    assert_int_equal(tasks_group_count(g), 3);
    assert_int_equal(tasks_group_set_mode(g, 9), BGS_EINVAL);
    tasks_group_submit(g, 1);
    assert_true(wait_state(c, "succeeded"));
    assert_true(wait_state(a, "succeeded"));
}

static void tasks_payload_is_copied(void **state)
{
    (void)state;
    start(2, 100, 100);
    char buf[8] = "abc";
    uint64_t id;
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "payload", buf, 3, &id), 0);
    memcpy(buf, "xyz", 3);
    tasks_group_submit(g, 1);
    assert_true(wait_state(id, "succeeded"));
    assert_string_equal(seen_payload, "abc");
}

static void tasks_sequential_order(void **state)
{
    (void)state;
    start(4, 100, 100);
    order_len = 0;
    order_log[0] = '\0';
    uint64_t ids[5];
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    for (int i = 0; i < 5; i++) {
        char c = (char)('A' + i);
        assert_int_equal(group_add(g, "order", &c, 1, &ids[i]), 0);
    }
    tasks_group_submit(g, 1);
    assert_true(wait_state(ids[4], "succeeded"));
    pthread_mutex_lock(&order_mu);
    assert_string_equal(order_log, "ABCDE");
    pthread_mutex_unlock(&order_mu);
    /* Each started after the previous finished. */
    for (int i = 1; i < 5; i++)
        assert_true(record_u64(ids[i], "started_at_us") >= record_u64(ids[i - 1], "finished_at_us"));
    char *r = record(ids[0]);
    h_assert_contains(r, "\"mode\":\"sequential\"");
    free(r);
}

static void tasks_sequential_failure_skips_rest(void **state)
{
    (void)state;
    start(4, 100, 100);
    order_len = 0;
    order_log[0] = '\0';
    uint64_t a, b, c, d;
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "order", "A", 1, &a), 0);
    assert_int_equal(group_add(g, "fail", NULL, 0, &b), 0);
    assert_int_equal(group_add(g, "order", "C", 1, &c), 0);
    assert_int_equal(group_add(g, "order", "D", 1, &d), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(d, "skipped"));
    assert_true(state_is(a, "succeeded"));
    assert_true(state_is(b, "failed"));
    assert_true(state_is(c, "skipped"));
    assert_int_equal(record_u64(c, "attempts"), 0);
    char *r = record(c);
    h_assert_contains(r, "failed\"");
    h_assert_contains(r, "\"started_at\":null");
    free(r);
    pthread_mutex_lock(&order_mu);
    assert_string_equal(order_log, "A");
    pthread_mutex_unlock(&order_mu);
}

static void tasks_concurrent_failures_independent(void **state)
{
    (void)state;
    start(4, 100, 100);
    uint64_t a, b, c;
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(tasks_group_set_mode(g, BGS_CONCURRENT), 0);
    assert_int_equal(group_add(g, "fail", NULL, 0, &a), 0);
    assert_int_equal(group_add(g, "order", "x", 1, &b), 0);
    assert_int_equal(group_add(g, "order", "y", 1, &c), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(a, "failed"));
    assert_true(wait_state(b, "succeeded"));
    assert_true(wait_state(c, "succeeded"));
    char *r = record(b);
    h_assert_contains(r, "\"mode\":\"concurrent\"");
    free(r);
}

static void tasks_retries_with_backoff(void **state)
{
    (void)state;
    start(2, 100, 100);
    atomic_store(&flaky_runs, 0);
    uint64_t retried0 = stat_of("flaky", "retried");
    uint64_t id;
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "flaky", NULL, 0, &id), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(id, "succeeded"));
    assert_int_equal(atomic_load(&flaky_runs), 3);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(flaky_attempts[i], i + 1);
    assert_true(flaky_starts[1] > flaky_starts[0]);
    assert_true(flaky_starts[2] > flaky_starts[1]);
    assert_int_equal(record_u64(id, "attempts"), 3);
    assert_int_equal(stat_of("flaky", "retried") - retried0, 2);
    char *r = record(id);
    h_assert_contains(r, "\"error\":null");
    free(r);
}

/* A retry far in the future: the record says retrying in between, and a
 * shutdown whose deadline comes first cancels it. */
static void tasks_retrying_state_then_cancelled_at_shutdown(void **state)
{
    (void)state;
    start(2, 100, 100);
    atomic_store(&slowfail_runs, 0);
    uint64_t id;
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "slowretry", NULL, 0, &id), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(id, "retrying"));
    assert_int_equal(record_u64(id, "attempts"), 1);
    char *r = record(id);
    h_assert_contains(r, "\"error\":\"task returned 1\"");
    free(r);

    h_capture_begin();
    size_t unfinished = tasks_shutdown(E, 0);
    char *log = h_capture_end();
    assert_int_equal(unfinished, 1);
    assert_true(state_is(id, "cancelled"));
    assert_int_equal(atomic_load(&slowfail_runs), 1);
    char line[96];
    snprintf(line, sizeof(line), "task %" PRIu64 " slowretry retrying", id);
    h_assert_contains(log, line);
    h_assert_contains(log, "drain: 0 tasks finished, 1 did not");
    free(log);
}

static void *shutdown_main(void *arg)
{
    return (void *)(uintptr_t)tasks_shutdown(E, *(unsigned *)arg);
}

/* A task whose first attempt fails once the drain has begun: the drain
 * waits for its retry and counts it finished.  The gate opens only once
 * the engine refuses new tasks (the drain has begun), so the retry is
 * due during the drain whatever the timing. */
static void tasks_shutdown_drains_retries(void **state)
{
    (void)state;
    start(2, 100, 100);
    atomic_store(&gate_open, 0);
    atomic_store(&runs_gate, 0);
    uint64_t id;
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "gatefail", NULL, 0, &id), 0);
    tasks_group_submit(g, 1);
    uint64_t deadline = util_now_us() + DEADLINE_US;
    while (atomic_load(&runs_gate) == 0 && util_now_us() < deadline)
        pause_ms(1);
    assert_int_equal(atomic_load(&runs_gate), 1);

    h_capture_begin();
    unsigned drain_ms = 30000;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, shutdown_main, &drain_ms), 0);
    int rc = 0;
    while (util_now_us() < deadline) { /* until the drain refuses new tasks */
        g = group_new(NULL, BGS_SEQUENTIAL);
        rc = group_add(g, "count", NULL, 0, NULL);
        if (rc == BGS_ESHUTDOWN) {
            tasks_group_discard(g, "unused");
            break;
        }
        tasks_group_submit(g, 1);
        pause_ms(1);
    }
    assert_int_equal(rc, BGS_ESHUTDOWN);
    atomic_store(&gate_open, 1);
    void *ret;
    assert_int_equal(pthread_join(th, &ret), 0);
    char *log = h_capture_end();
    assert_int_equal((size_t)(uintptr_t)ret, 0);
    assert_true(state_is(id, "succeeded"));
    assert_int_equal(record_u64(id, "attempts"), 2);
    h_assert_contains(log, " gatefail retry 1 in ");
    h_assert_contains(log, "0 did not");
    free(log);
    /* Refused after shutdown. */
    g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "count", NULL, 0, NULL), BGS_ESHUTDOWN);
    tasks_group_discard(g, "unused");
}

static void tasks_max_concurrency_never_exceeded(void **state)
{
    (void)state;
    start(8, 1000, 1000);
    atomic_store(&conc_now, 0);
    atomic_store(&conc_max, 0);
    atomic_store(&conc_runs, 0);
    enum { N = 40 };
    for (int i = 0; i < N; i++) {
        tasks_group *g = group_new(NULL, BGS_CONCURRENT);
        assert_int_equal(group_add(g, "capped", NULL, 0, NULL), 0);
        assert_int_equal(group_add(g, "capped", NULL, 0, NULL), 0);
        tasks_group_submit(g, 1);
    }
    assert_true(wait_atomic_at_least(&conc_runs, 2 * N));
    assert_true(atomic_load(&conc_max) <= 2);
    assert_true(atomic_load(&conc_max) >= 1);
}

/* A task at its cap waits without holding a worker: with 2 workers and
 * one capped task blocked, a second capped task waits while an uncapped
 * one still runs. */
static void tasks_capped_waits_without_worker(void **state)
{
    (void)state;
    start(2, 100, 100);
    atomic_store(&runs_gate, 0);
    uint64_t a, b, c;
    tasks_group *g = group_new(NULL, BGS_CONCURRENT);
    assert_int_equal(group_add(g, "capgate", NULL, 0, &a), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(a, "running"));
    g = group_new(NULL, BGS_CONCURRENT);
    assert_int_equal(group_add(g, "capgate", NULL, 0, &b), 0);
    assert_int_equal(group_add(g, "count", NULL, 0, &c), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(c, "succeeded"));
    assert_true(state_is(b, "queued"));
    assert_int_equal(atomic_load(&runs_gate), 1);
    atomic_store(&gate_open, 1);
    assert_true(wait_state(b, "succeeded"));
    assert_true(wait_state(a, "succeeded"));
}

static int noop_adhoc(bgs_task_ctx *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    return 0;
}

static void tasks_full_queue_efull_nothing_lost(void **state)
{
    (void)state;
    start(1, 4, 100);
    uint64_t ids[4];
    tasks_group *g = group_new(NULL, BGS_CONCURRENT);
    assert_int_equal(group_add(g, "gate", NULL, 0, &ids[0]), 0);
    for (int i = 1; i < 4; i++)
        assert_int_equal(group_add(g, "count", NULL, 0, &ids[i]), 0);
    assert_int_equal(group_add(g, "count", NULL, 0, NULL), BGS_EFULL);
    uint64_t fn_id = 99;
    assert_int_equal(tasks_group_add_fn(g, noop_adhoc, NULL, NULL, &fn_id), BGS_EFULL);
    assert_int_equal(fn_id, 99);
    assert_int_equal(tasks_group_count(g), 4);
    tasks_group_submit(g, 1);

    /* Still full while they are accepted but not finished. */
    tasks_group *g2 = group_new(NULL, BGS_CONCURRENT);
    assert_int_equal(group_add(g2, "count", NULL, 0, NULL), BGS_EFULL);
    char *s = stats();
    h_assert_contains(s, "\"capacity\":4");
    free(s);
    atomic_store(&gate_open, 1);
    for (int i = 0; i < 4; i++)
        assert_true(wait_state(ids[i], "succeeded"));
    /* Capacity is back once they are final. */
    uint64_t id;
    assert_int_equal(group_add(g2, "count", NULL, 0, &id), 0);
    tasks_group_submit(g2, 1);
    assert_true(wait_state(id, "succeeded"));
}

static void tasks_thousand_groups_all_succeed(void **state)
{
    (void)state;
    start(8, 65536, 100);
    uint64_t before = stat_of("count", "succeeded");
    for (int i = 0; i < 1000; i++) {
        tasks_group *g = group_new("r", i % 2 ? BGS_CONCURRENT : BGS_SEQUENTIAL);
        assert_int_equal(group_add(g, "count", NULL, 0, NULL), 0);
        assert_int_equal(group_add(g, "count", NULL, 0, NULL), 0);
        tasks_group_submit(g, 1);
    }
    assert_true(wait_stat_at_least("count", "succeeded", before + 2000));
    assert_int_equal(stat_of("count", "succeeded") - before, 2000);
    char *s = stats();
    h_assert_contains(s, "\"workers\":{\"busy\":");
    h_assert_contains(s, "\"total\":8");
    h_assert_contains(s, "\"dispatch_us\":{\"p50\":");
    h_assert_contains(s, "\"p99\":");
    h_assert_contains(s, "\"queue\":{\"depth\":");
    free(s);
}

static atomic_int adhoc_runs, adhoc_frees, adhoc_free_after_run;

static int adhoc_fn(bgs_task_ctx *ctx, void *arg)
{
    (void)ctx;
    assert_string_equal(arg, "arg");
    atomic_fetch_add(&adhoc_runs, 1);
    return 0;
}

static void adhoc_free(void *arg)
{
    assert_string_equal(arg, "arg");
    if (atomic_load(&adhoc_runs) > 0)
        atomic_fetch_add(&adhoc_free_after_run, 1);
    atomic_fetch_add(&adhoc_frees, 1);
}

static void tasks_discard_records_reason(void **state)
{
    (void)state;
    start(2, 100, 100);
    atomic_store(&adhoc_runs, 0);
    atomic_store(&adhoc_frees, 0);
    atomic_store(&runs_ok, 0);
    uint64_t discarded0 = stat_of("order", "discarded");
    uint64_t a, b;
    static char arg[] = "arg";
    tasks_group *g = group_new("req-9", BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "order", "A", 1, &a), 0);
    assert_int_equal(tasks_group_add_fn(g, adhoc_fn, arg, adhoc_free, &b), 0);
    h_capture_begin();
    tasks_group_discard(g, "handler failed");
    char *log = h_capture_end();
    assert_true(state_is(a, "discarded"));
    assert_true(state_is(b, "discarded"));
    char *r = record(a);
    h_assert_contains(r, "\"error\":\"handler failed\"");
    free(r);
    assert_int_equal(atomic_load(&adhoc_frees), 1);
    assert_int_equal(atomic_load(&adhoc_runs), 0);
    assert_int_equal(atomic_load(&runs_ok), 0);
    assert_int_equal(stat_of("order", "discarded") - discarded0, 1);
    h_assert_contains(log, "discarded");
    free(log);
}

static void tasks_adhoc_free_once_after_run(void **state)
{
    (void)state;
    start(2, 100, 100);
    atomic_store(&adhoc_runs, 0);
    atomic_store(&adhoc_frees, 0);
    atomic_store(&adhoc_free_after_run, 0);
    static char arg[] = "arg";
    uint64_t id;
    uint64_t before = stat_of("adhoc", "succeeded");
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(tasks_group_add_fn(g, adhoc_fn, arg, adhoc_free, &id), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(id, "succeeded"));
    assert_int_equal(atomic_load(&adhoc_runs), 1);
    assert_int_equal(atomic_load(&adhoc_frees), 1);
    assert_int_equal(atomic_load(&adhoc_free_after_run), 1);
    assert_int_equal(stat_of("adhoc", "succeeded") - before, 1);
    char *r = record(id);
    h_assert_contains(r, "\"name\":\"adhoc\"");
    free(r);
}

static void tasks_delivered_only_skipped_when_undelivered(void **state)
{
    (void)state;
    start(2, 100, 100);
    order_len = 0;
    order_log[0] = '\0';
    uint64_t a, b, c;
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "delivered", "D", 1, &a), 0);
    assert_int_equal(group_add(g, "order", "O", 1, &b), 0);
    tasks_group_submit(g, 0);
    assert_true(wait_state(b, "succeeded"));
    assert_true(state_is(a, "skipped"));
    char *r = record(a);
    h_assert_contains(r, "\"delivered\":false");
    free(r);
    pthread_mutex_lock(&order_mu);
    assert_string_equal(order_log, "O");
    pthread_mutex_unlock(&order_mu);

    g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "delivered", "D", 1, &c), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(c, "succeeded"));
}

static void tasks_periodic_never_overlaps(void **state)
{
    (void)state;
    start(4, 100, 100);
    atomic_store(&pslow_now, 0);
    atomic_store(&pslow_max, 0);
    atomic_store(&runs_pslow, 0);
    assert_int_equal(periodic_add("pslow", 0, NULL, 0, 0), BGS_EINVAL);
    assert_int_equal(periodic_add("nope", 1, NULL, 0, 0), BGS_ENOTASK);
    assert_int_equal(periodic_add("pslow", 1, NULL, 0, BGS_TASK_RUN_AT_START), 0);
    /* The first run blocks on the gate; the ticks while it runs are
     * skipped.  Counted from its start: ticks are skipped while it is
     * still queued too, and on a loaded machine three can pass before a
     * worker takes it (then pslow_max was still 0). */
    assert_true(wait_atomic_at_least(&pslow_now, 1));
    uint64_t skipped0 = stat_of("pslow", "ticks_skipped");
    assert_true(wait_stat_at_least("pslow", "ticks_skipped", skipped0 + 3));
    assert_int_equal(atomic_load(&pslow_max), 1);
    atomic_store(&gate_open, 1);
    assert_true(wait_atomic_at_least(&runs_pslow, 3));
    tasks_periodic_stop_owner(E, &owner);
    assert_int_equal(atomic_load(&pslow_max), 1);
}

/* A tick the full queue cannot take is skipped, and the log line says
 * why and what to do, in the words of a route's refused tasks. */
static void tasks_periodic_tick_skipped_when_the_queue_is_full(void **state)
{
    (void)state;
    start(1, 1, 100);
    uint64_t id;
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "gate", NULL, 0, &id), 0); /* holds the one place */
    tasks_group_submit(g, 1);
    assert_true(wait_state(id, "running"));
    uint64_t skipped0 = stat_of("pstart", "ticks_skipped");
    atomic_store(&runs_pstart, 0);
    h_capture_begin();
    assert_int_equal(periodic_add("pstart", 1, NULL, 0, BGS_TASK_RUN_AT_START), 0);
    int skipped = wait_stat_at_least("pstart", "ticks_skipped", skipped0 + 1);
    tasks_periodic_stop_owner(E, &owner);
    char *log = h_capture_end();
    assert_true(skipped);
    assert_int_equal(atomic_load(&runs_pstart), 0);
    h_assert_contains(log, "periodic task pstart: tick skipped: the task queue is full; raise "
                           "--queue, or --workers if tasks wait to run");
    free(log);
    atomic_store(&gate_open, 1);
    assert_true(wait_state(id, "succeeded"));
}

static void tasks_periodic_run_at_start(void **state)
{
    (void)state;
    start(2, 100, 100);
    atomic_store(&runs_pstart, 0);
    atomic_store(&runs_plater, 0);
    long refs = atomic_load(&owner_refs);
    assert_int_equal(periodic_add("plater", 3600000, NULL, 0, 0), 0);
    assert_int_equal(periodic_add("pstart", 3600000, NULL, 0, BGS_TASK_RUN_AT_START), 0);
    assert_true(atomic_load(&owner_refs) >= refs + 2); /* schedules hold references */
    assert_true(wait_atomic_at_least(&runs_pstart, 1));
    assert_int_equal(atomic_load(&runs_plater), 0);
    tasks_periodic_stop_owner(E, &owner);
}

static void tasks_timeout_sets_cancel_flag(void **state)
{
    (void)state;
    start(2, 100, 100);
    uint64_t id;
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "timeout", NULL, 0, &id), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(id, "cancelled"));
    /* Cancelled: not retried although max_attempts is 3. */
    assert_int_equal(record_u64(id, "attempts"), 1);
    char *r = record(id);
    h_assert_contains(r, "timed out after 5 ms");
    free(r);
}

static void tasks_service_scope_ended_after_run(void **state)
{
    (void)state;
    start(2, 100, 100);
    int created0 = atomic_load(&svc_created);
    int destroyed0 = atomic_load(&svc_destroyed);
    atomic_store(&svc_same, 0);
    uint64_t a, b;
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "service", NULL, 0, &a), 0);
    assert_int_equal(group_add(g, "service", NULL, 0, &b), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(b, "succeeded"));
    assert_true(state_is(a, "succeeded"));
    assert_int_equal(atomic_load(&svc_same), 2);
    assert_int_equal(atomic_load(&svc_created) - created0, 2);
    assert_int_equal(atomic_load(&svc_destroyed) - destroyed0, 2);
}

static void tasks_result_kept_in_record(void **state)
{
    (void)state;
    start(2, 100, 100);
    uint64_t id;
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "result", NULL, 0, &id), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(id, "succeeded"));
    char *r = record(id);
    h_assert_contains(r, "\"status\":201");
    h_assert_contains(r, "\"body\":\"made it\"");
    h_assert_contains(r, "\"content_type\":\"text/plain\"");
    free(r);
}

static void tasks_shutdown_reports_and_cancels_unfinished(void **state)
{
    (void)state;
    start(1, 100, 100);
    atomic_store(&waitcancel_started, 0);
    atomic_store(&count_runs, 0);
    uint64_t a, b;
    tasks_group *g = group_new(NULL, BGS_CONCURRENT);
    assert_int_equal(group_add(g, "waitcancel", NULL, 0, &a), 0);
    assert_int_equal(group_add(g, "count", NULL, 0, &b), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(a, "running"));

    h_capture_begin();
    tasks_report_unfinished(E);
    size_t unfinished = tasks_shutdown(E, 20);
    char *log = h_capture_end();

    assert_int_equal(unfinished, 2);
    assert_true(state_is(a, "cancelled"));
    assert_true(state_is(b, "cancelled"));
    assert_int_equal(record_u64(a, "attempts"), 1); /* no retry after cancel */
    assert_int_equal(record_u64(b, "attempts"), 0);
    assert_int_equal(atomic_load(&count_runs), 0);
    char line[96];
    h_assert_contains(log, "unfinished: 2 tasks");
    h_assert_contains(log, "drain: 0 tasks finished, 2 did not");
    snprintf(line, sizeof(line), "task %" PRIu64 " waitcancel running", a);
    h_assert_contains(log, line);
    snprintf(line, sizeof(line), "task %" PRIu64 " count queued", b);
    h_assert_contains(log, line);
    char *r = record(a);
    h_assert_contains(r, "stopped early");
    free(r);
    free(log);
}

static void tasks_ring_evicts_oldest(void **state)
{
    (void)state;
    start(1, 100, 3);
    uint64_t ids[5];
    tasks_group *g = group_new(NULL, BGS_SEQUENTIAL);
    for (int i = 0; i < 5; i++)
        assert_int_equal(group_add(g, "count", NULL, 0, &ids[i]), 0);
    /* Live records are always findable, whatever keep says. */
    for (int i = 0; i < 5; i++)
        assert_true(state_is(ids[i], "queued"));
    tasks_group_submit(g, 1);
    assert_true(wait_state(ids[4], "succeeded"));
    json j;
    json_init(&j);
    assert_int_equal(introspect_task_json(E, ids[0], &j), BGS_ENOTFOUND);
    assert_int_equal(introspect_task_json(E, ids[1], &j), BGS_ENOTFOUND);
    assert_int_equal(introspect_task_json(E, 0, &j), BGS_ENOTFOUND);
    assert_int_equal(introspect_task_json(E, UINT64_MAX, &j), BGS_ENOTFOUND);
    json_free(&j);
    for (int i = 2; i < 5; i++)
        assert_true(state_is(ids[i], "succeeded"));
}

static void tasks_record_json_escapes_and_keys(void **state)
{
    (void)state;
    start(2, 100, 100);
    uint64_t id;
    tasks_group *g = group_new("req-\"q\"", BGS_SEQUENTIAL);
    assert_int_equal(group_add(g, "fail", NULL, 0, &id), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(id, "failed"));
    char *r = record(id);
    assert_non_null(r);
    assert_null(strchr(r, '\n'));
    h_assert_contains(r, "\"error\":\"say \\\"hi\\\"\\nbye\"");
    h_assert_contains(r, "\"request_id\":\"req-\\\"q\\\"\"");
    static const char *const keys[] = {
        "\"id\":", "\"name\":\"fail\"", "\"state\":", "\"attempts\":1", "\"created_at\":\"",
        "\"started_at\":\"", "\"finished_at\":\"", "\"created_at_us\":", "\"started_at_us\":",
        "\"finished_at_us\":", "\"delivered\":true", "\"mode\":\"sequential\"",
        "\"generation\":7", "\"result\":null",
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        h_assert_contains(r, keys[i]);
    /* "2026-11-23T19:00:00.123456Z" */
    const char *t = strstr(r, "\"finished_at\":\"") + strlen("\"finished_at\":\"");
    assert_int_equal(t[4], '-');
    assert_int_equal(t[10], 'T');
    assert_int_equal(t[19], '.');
    assert_int_equal(t[26], 'Z');
    assert_int_equal(t[27], '"');
    /* Balanced braces: a complete object. */
    int depth = 0, in_str = 0;
    for (const char *p = r; *p; p++) {
        if (in_str) {
            if (*p == '\\')
                p++;
            else if (*p == '"')
                in_str = 0;
        } else if (*p == '"') {
            in_str = 1;
        } else if (*p == '{') {
            depth++;
        } else if (*p == '}') {
            depth--;
        }
    }
    assert_int_equal(depth, 0);
    assert_int_equal(r[0], '{');
    free(r);
}

/* A watcher takes the result over (it is handed, not copied, on to a
 * deferred response); the record keeps its own for introspection.  The
 * watcher sees the state as the enum. */
typedef struct taken {
    atomic_int calls;
    tasks_state state;
    uint32_t status;
    char *type;
    void *body;
    size_t len;
} taken;

static void take_result(void *arg, tasks_final *f)
{
    taken *t = arg;
    t->state = f->state;
    t->status = f->result_status;
    t->type = f->result_type;
    t->body = f->result;
    t->len = f->result_len;
    f->result_type = NULL;
    f->result = NULL;
    atomic_fetch_add(&t->calls, 1);
}

static void tasks_watcher_takes_the_result(void **state)
{
    (void)state;
    start(2, 100, 100);
    taken t = {0};
    uint64_t id;
    assert_int_equal(tasks_enqueue(E, &owner, "req-t", NULL, NULL, 0, take_result, &t, &id),
                     BGS_ENOTASK);
    assert_int_equal(tasks_enqueue(E, &owner, "req-t", def_of("result"), NULL, 0, take_result,
                                   &t, &id), 0);
    assert_true(wait_atomic_at_least(&t.calls, 1));
    assert_int_equal(t.state, TASKS_SUCCEEDED);
    assert_string_equal(tasks_state_name(t.state), "succeeded");
    assert_int_equal(t.status, 201);
    assert_string_equal(t.type, "text/plain");
    assert_int_equal(t.len, 7);
    assert_memory_equal(t.body, "made it", 7);
    free(t.type);
    free(t.body);
    char *r = record(id);
    h_assert_contains(r, "\"body\":\"made it\"");
    h_assert_contains(r, "\"request_id\":\"req-t\"");
    free(r);
    /* Watching a final task says so; an unknown one is not found. */
    assert_int_equal(tasks_watch(E, id, take_result, &t), 1);
    assert_int_equal(tasks_watch(E, 999999, take_result, &t), BGS_ENOTFOUND);
    assert_int_equal(atomic_load(&t.calls), 1);
}

/* Two engines at once: each has its own ids, records, counters and
 * shutdown; neither sees the other's tasks. */
static void tasks_two_engines_side_by_side(void **state)
{
    (void)state;
    start(2, 100, 100);
    atomic_store(&gate_open, 1);
    tasks_config cfg = {.workers = 1, .queue_cap = 10, .keep = 10};
    tasks_engine *e2 = tasks_new(&cfg);
    assert_non_null(e2);

    uint64_t a, b;
    tasks_group *g = group_new(NULL, BGS_CONCURRENT);
    assert_int_equal(group_add(g, "count", NULL, 0, &a), 0);
    tasks_group_submit(g, 1);
    tasks_group *g2 = tasks_group_new(e2, &owner, NULL, BGS_CONCURRENT);
    assert_int_equal(tasks_group_add(g2, def_of("count"), NULL, 0, &b), 0);
    assert_int_equal(tasks_group_add(g2, def_of("count"), NULL, 0, NULL), 0);
    tasks_group_submit(g2, 1);
    assert_int_equal(a, 1); /* ids are the engine's own */
    assert_int_equal(b, 1);
    assert_true(wait_state(a, "succeeded"));
    assert_true(wait_stat_at_least("count", "succeeded", 1));

    json j;
    uint64_t deadline = util_now_us() + DEADLINE_US;
    for (;;) { /* e2's two runs, counted in e2 only */
        json_init(&j);
        json_obj_begin(&j);
        tasks_stats_json(e2, &j);
        json_obj_end(&j);
        char *st = json_take(&j, NULL);
        int done = strstr(st, "\"count\":{\"queued\":0,\"running\":0,\"succeeded\":2") != NULL;
        free(st);
        if (done)
            break;
        assert_true(util_now_us() < deadline);
        pause_ms(1);
    }
    assert_int_equal(stat_of("count", "succeeded"), 1);
    json_init(&j);
    assert_int_equal(introspect_task_json(e2, 2, &j), 0);
    json_free(&j);
    json_init(&j);
    assert_int_equal(introspect_task_json(E, 2, &j), BGS_ENOTFOUND);
    json_free(&j);

    /* Stopping one leaves the other accepting. */
    assert_int_equal(tasks_shutdown(e2, 1000), 0);
    tasks_group *g3 = tasks_group_new(e2, &owner, NULL, BGS_CONCURRENT);
    assert_int_equal(tasks_group_add(g3, def_of("count"), NULL, 0, NULL), BGS_ESHUTDOWN);
    tasks_group_discard(g3, "unused");
    tasks_free(e2);
    g = group_new(NULL, BGS_CONCURRENT);
    assert_int_equal(group_add(g, "count", NULL, 0, &a), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_state(a, "succeeded"));
}

/* Definitions resolved at load time (tasks_resolve) count under their
 * name together with the same name found without resolving. */
static void tasks_resolved_definitions_share_the_name(void **state)
{
    (void)state;
    start(2, 100, 100);
    plugin_task defs[1] = {*def_of("count")};
    defs[0].kind = NULL;
    tasks_resolve(E, defs, 1);
    assert_non_null(defs[0].kind);
    tasks_group *g = group_new(NULL, BGS_CONCURRENT);
    assert_int_equal(tasks_group_add(g, &defs[0], NULL, 0, NULL), 0);
    assert_int_equal(group_add(g, "count", NULL, 0, NULL), 0);
    tasks_group_submit(g, 1);
    assert_true(wait_stat_at_least("count", "succeeded", 2));
}

/* ------------------------------------------------------------------ */
/* On a broker                                                         */
/* ------------------------------------------------------------------ */

static h_redis R;      /* the redis-server of the test running */
static broker *B;      /* E's broker */

/* The names of fake_tasks, as a worker resolves what it reads. */
static int resolve_fake(void *arg, const char *name, const plugin_task **def,
                        const tasks_owner **o)
{
    (void)arg;
    *def = def_of(name);
    if (*def == NULL)
        return -1;
    owner_retain(&owner);
    *o = &owner;
    return 0;
}

/* E on a broker of its own redis-server (started with extra, may be
 * NULL): a worker (consume > 0, it runs what it reads) or a server;
 * capacity: --broker-capacity (0: none). */
static void start_on_broker(unsigned consume, unsigned capacity, const char *const *extra)
{
    h_redis_start(&R, NULL, extra);
    broker_config bc = {.url = R.url, .app = "fake", .consumer = "here", .capacity = capacity};
    char err[512];
    if (broker_open(&bc, &B, err, sizeof err) != 0)
        fail_msg("broker_open: %s", err);
    tasks_config cfg = {.workers = 2, .queue_cap = 100, .keep = 100,
                        .linger_us = QUEUE_LINGER_DEFAULT, .broker = B, .consume = consume,
                        .resolve = resolve_fake};
    atomic_store(&gate_open, 0);
    E = tasks_new(&cfg);
    assert_non_null(E);
}

static int teardown_broker(void **state)
{
    int rc = teardown(state);
    broker_close(B);
    B = NULL;
    h_redis_stop(&R);
    return rc;
}

/* A timer callback that holds the engine's timer thread until hold_open:
 * tasks_shutdown halts that thread right after it shut the queue down
 * and before it cancels the running tasks, so it waits there, with the
 * queue shut and the tasks not cancelled yet. */
static atomic_int hold_firing, hold_open;

static void hold_timer(sched_timer *tm)
{
    (void)tm;
    atomic_store(&hold_firing, 1);
    uint64_t deadline = util_now_us() + DEADLINE_US;
    while (!atomic_load(&hold_open) && util_now_us() < deadline)
        pause_ms(1);
}

/* Fail the test unless task id, which a stopping worker ran, is back in
 * Redis for another worker to retry (the delayed set, state retrying),
 * and its record here says so. */
static void assert_back_in_redis(uint64_t id)
{
    char *rec = record(id);
    h_assert_contains(rec, "handed back to redis as this worker stopped: another worker will "
                           "retry it");
    free(rec);
    assert_int_equal(h_redis_int(&R, "ZCARD bgserve:{fake}:delayed"), 1);
    redisReply *r = h_redis_cmd(&R, "HGET bgserve:{fake}:task:%" PRIu64 " state", id);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "retrying");
    freeReplyObject(r);
}

/* Task id, a gatefail running on a worker (E on the broker), fails just
 * as the worker stops: after the queue shut down and the drain report's
 * snapshot, and before the cancel (the shutdown waits for the engine's
 * timer thread, held meanwhile), until done(id) holds.  The log of the
 * shutdown (free it). */
static char *gatefail_fails_as_worker_stops(uint64_t id, int (*done)(uint64_t))
{
    assert_true(wait_atomic_at_least(&runs_gate, 1)); /* running here */
    sched_timer tm = {0};
    atomic_store(&hold_open, 0);
    atomic_store(&hold_firing, 0);
    sched_add(tasks_sched(E), &tm, util_now_us(), hold_timer);
    assert_true(wait_atomic_at_least(&hold_firing, 1));

    h_capture_begin();
    unsigned drain_ms = 0;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, shutdown_main, &drain_ms), 0);
    /* Returns once the shutdown halts the timer thread (sched.c). */
    sched_advance(tasks_sched(E), 0);
    atomic_store(&gate_open, 1); /* the run fails now */
    uint64_t deadline = util_now_us() + DEADLINE_US;
    int ended;
    while (!(ended = done(id)) && util_now_us() < deadline)
        pause_ms(1);
    atomic_store(&hold_open, 1);
    void *ret;
    assert_int_equal(pthread_join(th, &ret), 0);
    char *log = h_capture_end();
    if (!ended)
        h_fail_text(log, "the failed run did not end as it should; the log:");
    assert_int_equal((size_t)(uintptr_t)ret, 0);
    return log;
}

static int is_cancelled(uint64_t id) { return state_is(id, "cancelled"); }

static int in_delayed_set(uint64_t id)
{
    (void)id;
    return h_redis_int(&R, "ZCARD bgserve:{fake}:delayed") > 0;
}

/* A worker's own task (one it queued itself, here a gatefail) whose run
 * fails just as the worker stops: the retry goes to Redis's delayed set
 * for another worker, and the record and the log say so, not that it
 * never ran. */
static void tasks_broker_own_retry_at_shutdown_goes_to_redis(void **state)
{
    (void)state;
    start_on_broker(2, 0, NULL);
    atomic_store(&runs_gate, 0);
    uint64_t id;
    assert_int_equal(tasks_enqueue(E, &owner, NULL, def_of("gatefail"), NULL, 0, NULL, NULL,
                                   &id), 0);
    char *log = gatefail_fails_as_worker_stops(id, is_cancelled);
    char line[160];
    snprintf(line, sizeof line, "task %" PRIu64 " (gatefail) handed back to redis: attempt 1 "
             "failed as this worker stopped; another worker will retry it", id);
    h_assert_contains(log, line);
    h_assert_lacks(log, "never ran");
    h_assert_contains(log, "0 did not, 1 went back to redis for other workers");
    free(log);
    assert_back_in_redis(id);
}

/* The same for a task another process queued (added to Redis through
 * the broker here, not the engine): its retry goes to Redis's delayed
 * set and its record here is dropped; the drain report counts it among
 * those that went back to redis and says so of it, not that it
 * "finished after the deadline". */
static void tasks_broker_adopted_retry_at_shutdown_counts_as_back(void **state)
{
    (void)state;
    start_on_broker(2, 0, NULL);
    atomic_store(&runs_gate, 0);
    uint64_t id;
    assert_int_equal(broker_next_ids(B, 1, &id), 0);
    broker_job job = {.id = id, .name = "gatefail", .max_attempts = 2};
    assert_int_equal(broker_enqueue(B, &job, 1), 0);
    char *log = gatefail_fails_as_worker_stops(id, in_delayed_set);
    char line[200];
    snprintf(line, sizeof line, "task %" PRIu64 " gatefail running (attempt 1, running for ", id);
    h_assert_contains(log, line);
    h_assert_contains(log, "s; back in redis: another worker runs it)");
    h_assert_lacks(log, "finished after the deadline");
    h_assert_contains(log, "0 tasks finished, 0 did not, 1 went back to redis for other workers");
    free(log);
    redisReply *r = h_redis_cmd(&R, "HGET bgserve:{fake}:task:%" PRIu64 " state", id);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "retrying");
    freeReplyObject(r);
}

/* A watcher that holds the worker that finalises its task, and so the
 * task's slot under its name's cap, until hold_open. */
static void hold_watcher(void *arg, tasks_final *f)
{
    (void)arg;
    (void)f;
    atomic_store(&hold_firing, 1);
    uint64_t deadline = util_now_us() + DEADLINE_US;
    while (!atomic_load(&hold_open) && util_now_us() < deadline)
        pause_ms(1);
}

/* The JSON text of the record of task id in Redis (HGETALL), for
 * h_assert_contains (free it). */
static char *redis_record(uint64_t id)
{
    redisReply *r = h_redis_cmd(&R, "HGETALL bgserve:{fake}:task:%" PRIu64, id);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    json j;
    json_init(&j);
    json_obj_begin(&j);
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        json_key(&j, r->element[i]->str);
        json_str(&j, r->element[i + 1]->str);
    }
    json_obj_end(&j);
    freeReplyObject(r);
    return json_take(&j, NULL);
}

/* A task a stopping worker read from Redis (its attempt counted there)
 * and took, but did not start: it waits for a slot under its name's
 * max_concurrency, held by a run that Redis counts done already (its
 * lease is back) and whose worker is still finishing it.  The worker
 * hands it back to Redis, due at once and its attempt not counted, and
 * its record says so, not that it never ran (it does, elsewhere). */
static void tasks_broker_slot_waiter_at_shutdown_goes_back(void **state)
{
    (void)state;
    start_on_broker(2, 0, NULL);
    atomic_store(&hold_open, 0);
    atomic_store(&hold_firing, 0);
    uint64_t first, id;
    assert_int_equal(tasks_enqueue(E, &owner, NULL, def_of("capone"), NULL, 0, hold_watcher,
                                   NULL, &first), 0);
    assert_true(wait_atomic_at_least(&hold_firing, 1)); /* its worker holds the slot */
    assert_int_equal(tasks_enqueue(E, &owner, NULL, def_of("capone"), NULL, 0, NULL, NULL,
                                   &id), 0);
    /* Read (running, in Redis's record) and taken by the other worker. */
    uint64_t deadline = util_now_us() + DEADLINE_US;
    for (;;) {
        char *rr = redis_record(id), *st = stats();
        int in_hand = strstr(rr, "\"state\":\"running\"") && strstr(st, "\"depth\":0,");
        free(rr);
        free(st);
        if (in_hand)
            break;
        if (util_now_us() > deadline)
            fail_msg("task %" PRIu64 " was not read and taken", id);
        pause_ms(1);
    }

    h_capture_begin();
    unsigned drain_ms = 0;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, shutdown_main, &drain_ms), 0);
    int ended = wait_state(id, "cancelled");
    atomic_store(&hold_open, 1);
    void *ret;
    assert_int_equal(pthread_join(th, &ret), 0);
    char *log = h_capture_end();
    assert_true(ended);
    assert_int_equal((size_t)(uintptr_t)ret, 0);
    char line[200];
    snprintf(line, sizeof line, "task %" PRIu64 " (capone) handed back to redis for another "
             "worker: this worker stopped before it finished (attempt 1 does not count)", id);
    h_assert_contains(log, line);
    h_assert_contains(log, "0 did not, 1 went back to redis for other workers");
    free(log);
    char *rec = record(id);
    h_assert_contains(rec, "handed back to redis as this worker stopped: another worker will "
                           "run it");
    h_assert_lacks(rec, "never ran");
    free(rec);
    assert_int_equal(h_redis_int(&R, "ZCARD bgserve:{fake}:delayed"), 1);
    char *rr = redis_record(id);
    h_assert_contains(rr, "\"state\":\"queued\"");
    h_assert_contains(rr, "\"attempts\":\"0\"");
    free(rr);
}

/* Fail the test unless task id ended cancelled with an error that has
 * cause in it (the record is printed then). */
static void assert_cancelled_for(uint64_t id, const char *cause)
{
    assert_true(wait_state(id, "cancelled"));
    char *rec = record(id);
    h_assert_contains(rec, cause);
    h_assert_contains(rec, "; the task never ran");
    free(rec);
}

/* A task accepted while Redis seemed up, which Redis then refused as it
 * was added, ends cancelled with the cause in its record, in the words of
 * the 503s, and what to do: over --broker-capacity (let the workers catch
 * up, or raise it), or Redis unreachable (and that the server reconnects
 * by itself). */
static void tasks_broker_refusal_names_its_cause(void **state)
{
    (void)state;
    start_on_broker(0, 1, NULL); /* a server: the first task stays in the stream */
    uint64_t first, id;
    assert_int_equal(tasks_enqueue(E, &owner, NULL, def_of("count"), NULL, 0, NULL, NULL,
                                   &first), 0);
    h_capture_begin();
    assert_int_equal(tasks_enqueue(E, &owner, NULL, def_of("count"), NULL, 0, NULL, NULL, &id),
                     0);
    free(h_capture_end());
    char cause[512];
    snprintf(cause, sizeof cause, "the broker %s/0 is over its capacity (--broker-capacity); "
             "queue it again once the workers (bgserve worker) have run some of the broker's "
             "tasks, or raise --broker-capacity", R.url);
    assert_cancelled_for(id, cause);
    assert_true(state_is(first, "queued"));

    /* Redis gone, and nothing has told the server yet: the task is
     * accepted, then refused as it is added. */
    h_redis_halt(&R);
    h_capture_begin();
    assert_int_equal(tasks_enqueue(E, &owner, NULL, def_of("count"), NULL, 0, NULL, NULL, &id),
                     0);
    free(h_capture_end());
    assert_cancelled_for(id, "redis (--broker), which keeps the tasks, is unreachable; bring "
                             "redis back: the server reconnects by itself");
    /* The first one is the workers' (there are none): no drain for it. */
    h_capture_begin();
    tasks_shutdown(E, 0);
    free(h_capture_end());
}

/* On a worker whose Redis keeps its data (AOF), a gateslow whose run
 * fails with Redis away, so the worker keeps the retry and waits out its
 * backoff itself; the log captured from then on (h_capture_end it).  Its
 * id, once its retry waits here (a timer of the engine's for it). */
static uint64_t retry_kept_with_redis_away(void)
{
    static const char *const aof[] = {"--appendonly", "yes", "--appendfsync", "always", NULL};
    start_on_broker(2, 0, aof);
    atomic_store(&runs_gate, 0);
    uint64_t id;
    assert_int_equal(tasks_enqueue(E, &owner, NULL, def_of("gateslow"), NULL, 0, NULL, NULL,
                                   &id), 0);
    assert_true(wait_atomic_at_least(&runs_gate, 1));
    h_redis_halt(&R);
    h_capture_begin();
    atomic_store(&gate_open, 1); /* the run fails now, with Redis away */
    uint64_t deadline = util_now_us() + DEADLINE_US;
    while (sched_pending(tasks_sched(E)) == 0 && util_now_us() < deadline)
        pause_ms(1);
    if (sched_pending(tasks_sched(E)) == 0)
        h_fail_text(h_capture_end(), "the retry does not wait here; the log:");
    return id;
}

/* A task accepted while Redis is up, which Redis then refuses with an
 * answer of its own (out of memory: maxmemory 1, noeviction), ends
 * cancelled with that answer in its record and what to do about it, not
 * the advice for --broker-capacity, which has nothing to do with it. */
static void tasks_broker_refusal_names_redis_answer(void **state)
{
    (void)state;
    start_on_broker(0, 0, NULL); /* a server */
    freeReplyObject(h_redis_cmd(&R, "CONFIG SET maxmemory-policy noeviction"));
    redisReply *r = h_redis_cmd(&R, "CONFIG SET maxmemory 1");
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    uint64_t id;
    h_capture_begin();
    assert_int_equal(tasks_enqueue(E, &owner, NULL, def_of("count"), NULL, 0, NULL, NULL, &id),
                     0);
    char *log = h_capture_end();
    char cause[512];
    snprintf(cause, sizeof cause, "redis at %s/0 answered an error: OOM command not allowed "
             "when used memory > 'maxmemory'", R.url);
    h_assert_contains(log, cause);
    free(log);
    assert_cancelled_for(id, cause);
    char *rec = record(id);
    h_assert_contains(rec, "'maxmemory'; redis takes no tasks until what it answered is put "
                           "right (its log may say more); then queue it again; the task never "
                           "ran");
    h_assert_lacks(rec, "--broker-capacity");
    free(rec);
    freeReplyObject(h_redis_cmd(&R, "CONFIG SET maxmemory 0"));
    h_capture_begin();
    tasks_shutdown(E, 0);
    free(h_capture_end());
}

/* Redis away when a worker's run fails: the worker keeps the retry and
 * waits out its backoff itself; stopped meanwhile, it hands the job back
 * to Redis due when that backoff ends, and the record and the log say
 * so, not that the retry never ran. */
static void tasks_broker_local_retry_at_shutdown_goes_back_to_redis(void **state)
{
    (void)state;
    uint64_t id = retry_kept_with_redis_away();
    h_redis_restart(&R);
    uint64_t deadline = util_now_us() + DEADLINE_US;
    while (!broker_available(B) && util_now_us() < deadline)
        pause_ms(1);
    size_t unfinished = tasks_shutdown(E, 0);
    char *log = h_capture_end();
    assert_int_equal(unfinished, 0);
    char line[200];
    snprintf(line, sizeof line, "task %" PRIu64 " (gateslow) handed back to redis for another "
             "worker: this worker stopped while the task waited for its retry (attempt 2)", id);
    h_assert_contains(log, line);
    h_assert_lacks(log, "before its retry ran");
    h_assert_contains(log, "0 did not, 1 went back to redis for other workers");
    free(log);
    assert_back_in_redis(id);
}

/* As above, with Redis still away as the worker stops: the hand-back
 * fails, and the record says so and where the task is (pending in
 * Redis, for another worker to claim after the visibility timeout), not
 * that it was handed back.  Once Redis is back its entry is still
 * pending there. */
static void tasks_broker_failed_hand_back_says_pending(void **state)
{
    (void)state;
    uint64_t id = retry_kept_with_redis_away();
    size_t unfinished = tasks_shutdown(E, 0);
    char *log = h_capture_end();
    assert_int_equal(unfinished, 0);
    char line[200];
    snprintf(line, sizeof line, "task %" PRIu64 " (gateslow) could not be handed back (", id);
    h_assert_contains(log, line);
    free(log);
    char *rec = record(id);
    char want[200];
    snprintf(want, sizeof want, "could not be handed back to redis as this worker stopped (%s): "
             "it stays pending there, and another worker claims it after the visibility "
             "timeout (%u ms)", broker_strerror(BROKER_EDOWN), broker_visibility_ms(B));
    h_assert_contains(rec, want);
    h_assert_lacks(rec, "handed back to redis as this worker stopped: another worker");
    free(rec);
    h_redis_restart(&R);
    redisReply *p = h_redis_cmd(&R, "XPENDING bgserve:{fake}:tasks workers");
    assert_int_equal(p->type, REDIS_REPLY_ARRAY);
    assert_true(p->elements > 0);
    assert_int_equal(p->element[0]->integer, 1);
    freeReplyObject(p);
}

#define T(name) cmocka_unit_test_teardown(name, teardown)
#define TB(name) cmocka_unit_test_teardown(name, teardown_broker)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(tasks_brief_task_runs_on_the_submitting_thread),
        T(tasks_no_inline_runs_by_default),
        T(tasks_single_task_lifecycle),
        T(tasks_reused_items_carry_nothing_over),
        T(tasks_ids_increase_and_list),
        T(tasks_group_in_room_keeps_request_ids),
        T(tasks_group_submitted_on_another_thread),
        T(tasks_payload_is_copied),
        T(tasks_sequential_order),
        T(tasks_sequential_failure_skips_rest),
        T(tasks_concurrent_failures_independent),
        T(tasks_retries_with_backoff),
        T(tasks_retrying_state_then_cancelled_at_shutdown),
        T(tasks_shutdown_drains_retries),
        T(tasks_max_concurrency_never_exceeded),
        T(tasks_capped_waits_without_worker),
        T(tasks_full_queue_efull_nothing_lost),
        T(tasks_thousand_groups_all_succeed),
        T(tasks_discard_records_reason),
        T(tasks_adhoc_free_once_after_run),
        T(tasks_delivered_only_skipped_when_undelivered),
        T(tasks_periodic_never_overlaps),
        T(tasks_periodic_tick_skipped_when_the_queue_is_full),
        T(tasks_periodic_run_at_start),
        T(tasks_timeout_sets_cancel_flag),
        T(tasks_service_scope_ended_after_run),
        T(tasks_result_kept_in_record),
        T(tasks_shutdown_reports_and_cancels_unfinished),
        T(tasks_ring_evicts_oldest),
        T(tasks_record_json_escapes_and_keys),
        T(tasks_watcher_takes_the_result),
        T(tasks_two_engines_side_by_side),
        T(tasks_resolved_definitions_share_the_name),
        TB(tasks_broker_own_retry_at_shutdown_goes_to_redis),
        TB(tasks_broker_adopted_retry_at_shutdown_counts_as_back),
        TB(tasks_broker_slot_waiter_at_shutdown_goes_back),
        TB(tasks_broker_refusal_names_its_cause),
        TB(tasks_broker_refusal_names_redis_answer),
        TB(tasks_broker_local_retry_at_shutdown_goes_back_to_redis),
        TB(tasks_broker_failed_hand_back_says_pending),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
