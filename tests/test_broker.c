/*
 * test_broker.c - the Redis Streams broker (broker.c) against a real
 * redis-server that each test starts on a free loopback port in its own
 * directory (tests/support/redis.h): URL parsing and redaction, refusals
 * (unreachable host, wrong or missing password, rediss://, keys of
 * another app), enqueue/read/finish with records, retries through the
 * delayed set, dead letters, entries of another app in the stream,
 * claiming a silent worker's entries, capacity, leases, unique ids,
 * stats, and reconnecting after Redis restarts.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "broker.h"
#include "helpers.h"
#include "redis.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ERRCAP 1024

static broker *open_app(h_redis *r, const char *url, const char *app, const char *consumer,
                        unsigned visibility_ms)
{
    broker_config cfg = {.url = url ? url : r->url, .app = app, .consumer = consumer,
                         .visibility_ms = visibility_ms};
    broker *b = NULL;
    char err[ERRCAP] = "";
    int rc = broker_open(&cfg, &b, err, sizeof err);
    if (rc != 0)
        fail_msg("broker_open: %s (%s)", err, broker_strerror(rc));
    return b;
}

/* Read until n messages came or the deadline passed. */
static size_t read_n(broker *b, size_t want, broker_msg **out, unsigned deadline_ms)
{
    broker_msg *all = NULL;
    size_t n = 0;
    uint64_t end = h_now_ms() + deadline_ms;
    while (n < want && h_now_ms() < end) {
        broker_msg *m;
        size_t k;
        int rc = broker_read(b, (unsigned)(want - n), 20, &m, &k);
        /* EDOWN while a test's Redis restarts: poll on. */
        if (rc != 0 && rc != BROKER_EDOWN)
            fail_msg("broker_read: %s", broker_strerror(rc));
        if (k) {
            all = realloc(all, (n + k) * sizeof *all);
            memcpy(all + n, m, k * sizeof *m);
            free(m);
            n += k;
        }
    }
    *out = all;
    return n;
}

static void enqueue_one(broker *b, uint64_t id, const char *name, const char *payload)
{
    broker_job j = {.id = id, .name = name, .request_id = "req-1", .max_attempts = 3,
                    .payload = payload, .len = strlen(payload)};
    assert_int_equal(broker_enqueue(b, &j, 1), 0);
}

/* enqueue_one, then read it back (the test fails unless it comes within
 * 5 s); free it with broker_msgs_free(m, 1). */
static broker_msg *enqueue_and_read(broker *b, uint64_t id, const char *name,
                                    const char *payload)
{
    enqueue_one(b, id, name, payload);
    broker_msg *m;
    assert_int_equal(read_n(b, 1, &m, 5000), 1);
    assert_int_equal(m[0].id, id);
    return m;
}

/* A redis-server of the test's own (cmocka state), for the tests that
 * need no password and no extra arguments. */
static int redis_up(void **state)
{
    h_redis *r = calloc(1, sizeof *r);
    if (r == NULL)
        return -1;
    h_redis_start(r, NULL, NULL);
    *state = r;
    return 0;
}

static int redis_down(void **state)
{
    h_redis_stop(*state);
    free(*state);
    return 0;
}

/* Two brokers of app "app" (consumers w1 and w2) on a redis-server of
 * the test's own: the cmocka state of the tests that compare two
 * processes. */
typedef struct two {
    h_redis r;
    broker *a, *b;
} two;

static int two_up(void **state)
{
    two *t = calloc(1, sizeof *t);
    if (t == NULL)
        return -1;
    h_redis_start(&t->r, NULL, NULL);
    t->a = open_app(&t->r, NULL, "app", "w1", 0);
    t->b = open_app(&t->r, NULL, "app", "w2", 0);
    *state = t;
    return 0;
}

static int two_down(void **state)
{
    two *t = *state;
    broker_close(t->a);
    broker_close(t->b);
    h_redis_stop(&t->r);
    free(t);
    return 0;
}

/* ---- URLs ----------------------------------------------------------- */

static void broker_url_forms(void **state)
{
    (void)state;
    broker_url u;
    char err[ERRCAP], shown[320];
    assert_int_equal(broker_url_parse("redis://localhost", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "localhost");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    assert_null(u.password);
    broker_url_clear(&u);

    assert_int_equal(broker_url_parse("redis://:s3cr%40t@10.0.0.2:6380/4", &u, err,
                                      sizeof err), 0);
    assert_string_equal(u.host, "10.0.0.2");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 4);
    assert_string_equal(u.password, "s3cr@t");
    assert_null(u.user);
    broker_url_redacted(&u, shown, sizeof shown);
    assert_string_equal(shown, "redis://:***@10.0.0.2:6380/4");
    broker_url_clear(&u);

    assert_int_equal(broker_url_parse("redis://app:pw@[::1]:7000/", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "::1");
    assert_string_equal(u.user, "app");
    assert_string_equal(u.password, "pw");
    broker_url_redacted(&u, shown, sizeof shown);
    assert_string_equal(shown, "redis://app:***@[::1]:7000/0");
    broker_url_clear(&u);
}

static void broker_url_refusals_hide_the_password(void **state)
{
    (void)state;
    static const struct {
        const char *url;
        int rc;
        const char *says;
    } bad[] = {
        {"http://:hunter2@h:1", BROKER_EINVAL, "scheme 'http'"},
        {"redis://:hunter2@h:0", BROKER_EINVAL, "bad port"},
        {"redis://:hunter2@h:99999", BROKER_EINVAL, "bad port"},
        {"redis://:hunter2@h:12/x", BROKER_EINVAL, "bad database number"},
        {"redis://:hunter2@:12", BROKER_EINVAL, "without a host"},
        {"redis://hunter2@h", BROKER_EINVAL, "credentials without ':'"},
        {"redis://:hunter2%zz@h", BROKER_EINVAL, "bad %XX escape"},
        {"redis://:hunter2@[::1", BROKER_EINVAL, "without ']'"},
        {"redis://:hunter2@h:1?x=1", BROKER_EINVAL, "not supported"},
        {"rediss://:hunter2@h:6380", BROKER_ETLS, "TLS"},
        {"", BROKER_EINVAL, "empty broker URL"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        broker_url u;
        char err[ERRCAP] = "";
        int rc = broker_url_parse(bad[i].url, &u, err, sizeof err);
        if (rc != bad[i].rc)
            fail_msg("%s: rc %d (%s), want %d", bad[i].url, rc, err, bad[i].rc);
        h_assert_contains(err, bad[i].says);
        h_assert_lacks(err, "hunter2");
        assert_null(u.password);
    }
}

/* ---- refusals at open -------------------------------------------------- */

static void broker_open_unreachable_host(void **state)
{
    (void)state;
    char url[64], err[ERRCAP] = "";
    int port = h_free_port();
    snprintf(url, sizeof url, "redis://:pw@127.0.0.1:%d", port);
    broker_config cfg = {.url = url, .app = "app", .connect_ms = 500};
    broker *b = (broker *)1;
    assert_int_equal(broker_open(&cfg, &b, err, sizeof err), BROKER_EDOWN);
    assert_null(b);
    h_assert_contains(err, "cannot reach redis at 127.0.0.1:");
    h_assert_contains(err, "is redis-server running");
    h_assert_lacks(err, ":pw");
}

static void broker_open_wrong_or_missing_password(void **state)
{
    (void)state;
    h_redis r;
    h_redis_start(&r, "right-one", NULL);
    char url[128], err[ERRCAP] = "";
    broker *b = NULL;

    snprintf(url, sizeof url, "redis://:wrong-one@127.0.0.1:%d", r.port);
    broker_config cfg = {.url = url, .app = "app"};
    assert_int_equal(broker_open(&cfg, &b, err, sizeof err), BROKER_EAUTH);
    h_assert_contains(err, "refused the credentials");
    h_assert_lacks(err, "wrong-one");

    cfg.url = r.url;
    assert_int_equal(broker_open(&cfg, &b, err, sizeof err), BROKER_EAUTH);
    h_assert_contains(err, "needs a password");

    snprintf(url, sizeof url, "redis://:right-one@127.0.0.1:%d/2", r.port);
    cfg.url = url;
    assert_int_equal(broker_open(&cfg, &b, err, sizeof err), 0);
    h_assert_lacks(broker_url_shown(b), "right-one");
    h_assert_contains(broker_url_shown(b), ":***@");
    broker_close(b);

    snprintf(url, sizeof url, "redis://:right-one@127.0.0.1:%d/999", r.port);
    assert_int_equal(broker_open(&cfg, &b, err, sizeof err), BROKER_EINVAL);
    h_assert_contains(err, "has no database 999");
    h_redis_stop(&r);
}

static void broker_open_refuses_keys_of_another_app(void **state)
{
    h_redis *r = *state;
    broker *a = open_app(r, NULL, "shop", "w1", 0);
    broker_close(a);
    /* Another plugin told to use the name "shop". */
    broker_config cfg = {.url = r->url, .app = "blog", .name = "shop"};
    broker *b = NULL;
    char err[ERRCAP] = "";
    assert_int_equal(broker_open(&cfg, &b, err, sizeof err), BROKER_EFOREIGN);
    h_assert_contains(err, "belong to app 'shop', not 'blog'");
    h_assert_contains(err, "--broker-name");
    /* Its own name is fine, beside the other app's keys. */
    cfg.name = NULL;
    assert_int_equal(broker_open(&cfg, &b, err, sizeof err), 0);
    assert_string_equal(broker_prefix(b), "bgserve:{blog}");
    broker_close(b);
}

/* ---- the life of a task ------------------------------------------------ */

static void broker_enqueue_read_finish(void **state)
{
    h_redis *r = *state;
    broker *b = open_app(r, NULL, "app", "w1", 0);
    uint64_t first = 0;
    assert_int_equal(broker_next_ids(b, 3, &first), 0);
    static const char bin[] = {'a', '\0', 'b'};
    broker_job jobs[3] = {
        {.id = first, .name = "email", .request_id = "r1", .max_attempts = 3,
         .payload = "to=x", .len = 4},
        {.id = first + 1, .name = "resize", .max_attempts = 1, .payload = bin,
         .len = sizeof bin},
        {.id = first + 2, .name = "email", .request_id = "r1", .max_attempts = 3},
    };
    assert_int_equal(broker_enqueue(b, jobs, 3), 0);
    assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:tasks"), 3);

    broker_record rec;
    assert_int_equal(broker_record_get(b, first, &rec), 0);
    assert_string_equal(rec.state, "queued");
    assert_string_equal(rec.name, "email");
    assert_string_equal(rec.request_id, "r1");
    assert_int_equal(rec.attempts, 0);
    broker_record_clear(&rec);

    broker_msg *m;
    assert_int_equal(read_n(b, 3, &m, 5000), 3);
    assert_int_equal(m[0].id, first);
    assert_string_equal(m[0].name, "email");
    assert_string_equal(m[0].request_id, "r1");
    assert_int_equal(m[0].len, 4);
    assert_memory_equal(m[0].payload, "to=x", 4);
    assert_int_equal(m[0].max_attempts, 3);
    assert_int_equal(m[0].attempt, 0);
    assert_false(m[0].reclaimed);
    assert_int_equal(m[1].len, sizeof bin);
    assert_memory_equal(m[1].payload, bin, sizeof bin);
    assert_null(m[1].request_id);
    assert_int_equal(m[2].len, 0);

    assert_int_equal(broker_start(b, &m[0]), 0);
    assert_int_equal(m[0].attempt, 1);
    assert_int_equal(broker_record_get(b, first, &rec), 0);
    assert_string_equal(rec.state, "running");
    assert_string_equal(rec.worker, "w1");
    assert_true(rec.started_ms > 0);
    broker_record_clear(&rec);

    broker_outcome ok = {.state = "succeeded", .has_result = 1, .result_status = 201,
                         .result_type = "application/json", .result = "{\"n\":1}",
                         .result_len = 7};
    assert_int_equal(broker_finish(b, &m[0], &ok), 0);
    assert_int_equal(broker_record_get(b, first, &rec), 0);
    assert_string_equal(rec.state, "succeeded");
    assert_int_equal(rec.attempts, 1);
    assert_true(rec.has_result);
    assert_int_equal(rec.result_status, 201);
    assert_string_equal(rec.result_type, "application/json");
    assert_string_equal(rec.result, "{\"n\":1}");
    assert_true(rec.finished_ms >= rec.started_ms);
    broker_record_clear(&rec);
    /* Acknowledged and deleted; the record expires. */
    assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:tasks"), 2);
    long long ttl = h_redis_int(r, "TTL bgserve:{app}:task:%" PRIu64, first);
    assert_true(ttl > 0 && ttl <= BROKER_DEFAULT_RECORD_TTL_S);

    broker_stats s;
    assert_int_equal(broker_stats_get(b, &s), 0);
    assert_true(s.up);
    assert_int_equal(s.stream_len, 2);
    assert_int_equal(s.pending, 2);
    assert_int_equal(s.consumers, 1);
    assert_int_equal(s.delayed, 0);
    assert_int_equal(s.dead, 0);

    /* The enqueuing process learns it is final from PREFIX:done. */
    char cursor[BROKER_ENTRY_MAX] = "0-0";
    uint64_t *ids;
    size_t nids;
    assert_int_equal(broker_done_read(b, cursor, sizeof cursor, 0, &ids, &nids), 0);
    assert_int_equal(nids, 1);
    assert_int_equal(ids[0], first);
    free(ids);
    assert_int_equal(broker_done_read(b, cursor, sizeof cursor, 1, &ids, &nids), 0);
    assert_int_equal(nids, 0);
    assert_null(ids);
    char last[BROKER_ENTRY_MAX];
    assert_int_equal(broker_done_cursor(b, last, sizeof last), 0);
    assert_string_equal(last, cursor);

    assert_int_equal(broker_record_get(b, 999999, &rec), BROKER_ENOTFOUND);
    broker_msgs_free(m, 3);
    broker_close(b);
}

/* The steps of a sequence are all in Redis at once (records queued, the
 * first in the stream, the rest kept with it); finishing a step moves
 * the next to the stream in the same script, whichever worker finished
 * it, and nothing else reaches the stream before. */
static void broker_sequence_moves_on_at_each_finish(void **state)
{
    h_redis *r = *state;
    broker *w1 = open_app(r, NULL, "app", "w1", 0);
    broker *w2 = open_app(r, NULL, "app", "w2", 0);
    broker_job jobs[3] = {
        {.id = 501, .name = "a", .request_id = "r", .max_attempts = 1, .payload = "1", .len = 1},
        {.id = 502, .name = "b", .request_id = "r", .max_attempts = 2, .payload = "2", .len = 1},
        {.id = 503, .name = "c", .request_id = "r", .max_attempts = 1, .payload = "3", .len = 1},
    };
    assert_int_equal(broker_enqueue_seq(w1, jobs, 3, 1, NULL, 0), 0);
    assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:tasks"), 1);
    assert_int_equal(h_redis_int(r, "LLEN bgserve:{app}:seq:501"), 2);
    for (uint64_t id = 501; id <= 503; id++) {
        broker_record rec;
        assert_int_equal(broker_record_get(w1, id, &rec), 0);
        assert_string_equal(rec.state, "queued");
        broker_record_clear(&rec);
    }
    broker *ws[2] = {w1, w2};
    broker_outcome ok = {.state = "succeeded"};
    for (uint64_t id = 501; id <= 503; id++) {
        broker *w = ws[id % 2];
        broker_msg *m;
        assert_int_equal(read_n(w, 1, &m, 5000), 1);
        assert_int_equal(m[0].id, id);
        /* Only this step is in the stream; the rest wait with it. */
        assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:tasks"), 1);
        assert_int_equal(h_redis_int(r, "LLEN bgserve:{app}:seq:%" PRIu64, id),
                         (long long)(503 - id));
        assert_memory_equal(m[0].payload, jobs[id - 501].payload, 1);
        assert_int_equal(m[0].max_attempts, jobs[id - 501].max_attempts);
        assert_int_equal(broker_start(w, &m[0]), 0);
        assert_int_equal(broker_finish(w, &m[0], &ok), 0);
        broker_msgs_free(m, 1);
    }
    assert_int_equal(h_redis_int(r, "EXISTS bgserve:{app}:seq:501"), 0);
    assert_int_equal(h_redis_int(r, "EXISTS bgserve:{app}:seq:502"), 0);
    assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:tasks"), 0);
    assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:done"), 3);
    broker_close(w2);
    broker_close(w1);
}

/* A step that ends other than succeeded (finished failed, or
 * dead-lettered) skips the rest in Redis: their records say why, their
 * notices are written, and none reaches the stream. */
static void broker_sequence_skips_the_rest_in_redis(void **state)
{
    h_redis *r = *state;
    broker *b = open_app(r, NULL, "app", "w1", 0);
    broker_job jobs[3] = {
        {.id = 601, .name = "a", .max_attempts = 1},
        {.id = 602, .name = "b", .max_attempts = 1},
        {.id = 603, .name = "c", .max_attempts = 1},
    };
    /* Dead-lettered at the second step. */
    assert_int_equal(broker_enqueue_seq(b, jobs, 3, 1, NULL, 0), 0);
    broker_msg *m;
    assert_int_equal(read_n(b, 1, &m, 5000), 1);
    assert_int_equal(broker_start(b, &m[0]), 0);
    assert_int_equal(broker_finish(b, &m[0], &(broker_outcome){.state = "succeeded"}), 0);
    broker_msgs_free(m, 1);
    assert_int_equal(read_n(b, 1, &m, 5000), 1);
    assert_int_equal(m[0].id, 602);
    assert_int_equal(broker_start(b, &m[0]), 0);
    assert_int_equal(broker_dead(b, &m[0], "boom"), 0);
    broker_msgs_free(m, 1);
    broker_record rec;
    assert_int_equal(broker_record_get(b, 603, &rec), 0);
    assert_string_equal(rec.state, "skipped");
    assert_string_equal(rec.error, "previous task 602 (b) failed");
    assert_true(rec.finished_ms > 0);
    broker_record_clear(&rec);
    assert_true(h_redis_int(r, "TTL bgserve:{app}:task:603") > 0);
    assert_int_equal(h_redis_int(r, "EXISTS bgserve:{app}:seq:602"), 0);

    /* Finished cancelled (a timeout) at the first step: both others. */
    jobs[0].id = 701, jobs[1].id = 702, jobs[2].id = 703;
    assert_int_equal(broker_enqueue_seq(b, jobs, 3, 1, NULL, 0), 0);
    assert_int_equal(read_n(b, 1, &m, 5000), 1);
    assert_int_equal(broker_start(b, &m[0]), 0);
    assert_int_equal(broker_finish(b, &m[0], &(broker_outcome){.state = "cancelled",
                                                               .error = "timed out"}), 0);
    broker_msgs_free(m, 1);
    for (uint64_t id = 702; id <= 703; id++) {
        assert_int_equal(broker_record_get(b, id, &rec), 0);
        assert_string_equal(rec.state, "skipped");
        assert_string_equal(rec.error, "previous task 701 (a) cancelled");
        broker_record_clear(&rec);
    }
    assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:tasks"), 0);
    assert_int_equal(h_redis_int(r, "EXISTS bgserve:{app}:seq:701"), 0);

    /* The notices, in order: 601 succeeded, 602 failed, 603 skipped,
     * 701 cancelled, 702 and 703 skipped. */
    char cursor[BROKER_ENTRY_MAX] = "0-0";
    uint64_t *ids;
    size_t nids;
    assert_int_equal(broker_done_read(b, cursor, sizeof cursor, 0, &ids, &nids), 0);
    assert_int_equal(nids, 6);
    static const uint64_t want[] = {601, 602, 603, 701, 702, 703};
    for (size_t i = 0; i < nids; i++)
        assert_int_equal(ids[i], want[i]);
    free(ids);
    broker_close(b);
}

static void broker_read_without_block_returns_at_once(void **state)
{
    h_redis *r = *state;
    broker *b = open_app(r, NULL, "app", "w1", 0);
    broker_msg *m = (broker_msg *)1;
    size_t n = 7;
    /* block_ms 0 is "do not block", not Redis's "block forever". */
    assert_int_equal(broker_read(b, 4, 0, &m, &n), 0);
    assert_int_equal(n, 0);
    assert_null(m);
    assert_int_equal(broker_read(b, 0, 0, &m, &n), BROKER_EINVAL);
    broker_close(b);
}

static void broker_retry_waits_in_the_delayed_set(void **state)
{
    h_redis *r = *state;
    broker *b = open_app(r, NULL, "app", "w1", 0);
    broker_msg *m = enqueue_and_read(b, 42, "flaky", "p");
    assert_int_equal(broker_start(b, &m[0]), 0);
    assert_int_equal(broker_retry(b, &m[0], 60000, "boom"), 0);
    broker_msgs_free(m, 1);
    assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:tasks"), 0);
    assert_int_equal(h_redis_int(r, "ZCARD bgserve:{app}:delayed"), 1);
    broker_record rec;
    assert_int_equal(broker_record_get(b, 42, &rec), 0);
    assert_string_equal(rec.state, "retrying");
    assert_string_equal(rec.error, "boom");
    broker_record_clear(&rec);

    /* Not due yet: nothing to read.  Make it due, and it comes back with
     * its attempt counted. */
    size_t n;
    assert_int_equal(broker_read(b, 1, 0, &m, &n), 0);
    assert_int_equal(n, 0);
    redisReply *mem = h_redis_cmd(r, "ZRANGE bgserve:{app}:delayed 0 -1");
    assert_int_equal(mem->type, REDIS_REPLY_ARRAY);
    assert_int_equal(mem->elements, 1);
    h_redis_int(r, "ZADD bgserve:{app}:delayed 0 %b", mem->element[0]->str,
                mem->element[0]->len);
    freeReplyObject(mem);
    assert_int_equal(read_n(b, 1, &m, 5000), 1);
    assert_int_equal(m[0].id, 42);
    assert_int_equal(m[0].attempt, 1);
    assert_memory_equal(m[0].payload, "p", 1);
    assert_int_equal(h_redis_int(r, "ZCARD bgserve:{app}:delayed"), 0);
    assert_int_equal(broker_start(b, &m[0]), 0);
    assert_int_equal(m[0].attempt, 2);

    /* Deferred (its name at its cap): back without counting a run. */
    assert_int_equal(broker_defer(b, &m[0], 0), 0);
    broker_msgs_free(m, 1);
    assert_int_equal(read_n(b, 1, &m, 5000), 1);
    assert_int_equal(m[0].attempt, 2);
    assert_int_equal(broker_record_get(b, 42, &rec), 0);
    assert_string_equal(rec.state, "queued");
    broker_record_clear(&rec);
    broker_msgs_free(m, 1);
    broker_close(b);
}

static void broker_dead_letter_keeps_the_last_error(void **state)
{
    h_redis *r = *state;
    broker *b = open_app(r, NULL, "app", "w1", 0);
    broker_msg *m = enqueue_and_read(b, 7, "doomed", "payload-7");
    assert_int_equal(broker_start(b, &m[0]), 0);
    assert_int_equal(broker_dead(b, &m[0], "out of attempts: disk full"), 0);
    broker_msgs_free(m, 1);

    assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:tasks"), 0);
    redisReply *d = h_redis_cmd(r, "XRANGE bgserve:{app}:dead - +");
    assert_int_equal(d->type, REDIS_REPLY_ARRAY);
    assert_int_equal(d->elements, 1);
    const redisReply *f = d->element[0]->element[1];
    int saw_error = 0, saw_payload = 0;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        if (strcmp(f->element[i]->str, "error") == 0) {
            assert_string_equal(f->element[i + 1]->str, "out of attempts: disk full");
            saw_error = 1;
        }
        if (strcmp(f->element[i]->str, "payload") == 0) {
            assert_string_equal(f->element[i + 1]->str, "payload-7");
            saw_payload = 1;
        }
    }
    freeReplyObject(d);
    assert_true(saw_error && saw_payload);
    broker_record rec;
    assert_int_equal(broker_record_get(b, 7, &rec), 0);
    assert_string_equal(rec.state, "failed");
    assert_string_equal(rec.error, "out of attempts: disk full");
    broker_record_clear(&rec);
    broker_stats s;
    assert_int_equal(broker_stats_get(b, &s), 0);
    assert_int_equal(s.dead, 1);
    broker_close(b);
}

static void broker_entries_of_another_app_are_dead_lettered(void **state)
{
    h_redis *r = *state;
    broker *b = open_app(r, NULL, "app", "w1", 0);
    redisReply *x = h_redis_cmd(r, "XADD bgserve:{app}:tasks * app other id 5 name evil "
                                    "attempt 0 max 1 payload x");
    freeReplyObject(x);
    x = h_redis_cmd(r, "XADD bgserve:{app}:tasks * hello world");
    freeReplyObject(x);
    enqueue_one(b, 6, "good", "y");

    h_capture_begin();
    broker_msg *m;
    size_t n = read_n(b, 1, &m, 5000);
    char *log = h_capture_end();
    assert_int_equal(n, 1);
    assert_int_equal(m[0].id, 6);
    broker_msgs_free(m, 1);
    h_assert_contains(log, "belongs to app 'other', not 'app'");
    h_assert_contains(log, "not a bgserve task");
    free(log);
    assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:dead"), 2);
    assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:tasks"), 1);
    /* The foreign id 5 wrote no record of ours. */
    assert_int_equal(h_redis_int(r, "EXISTS bgserve:{app}:task:5"), 0);
    broker_close(b);
}

static void broker_claims_entries_of_a_silent_worker(void **state)
{
    h_redis *r = *state;
    broker *a = open_app(r, NULL, "app", "dies", 50);
    broker *b = open_app(r, NULL, "app", "lives", 50);
    broker_msg *m = enqueue_and_read(a, 1, "long", "z");
    assert_int_equal(broker_start(a, &m[0]), 0);
    assert_int_equal(m[0].attempt, 1);
    broker_msgs_free(m, 1);
    /* "dies" never touches or finishes it: "lives" claims it once it has
     * been idle past the visibility timeout. */
    h_capture_begin();
    size_t n = read_n(b, 1, &m, 10000);
    char *log = h_capture_end();
    assert_int_equal(n, 1);
    assert_true(m[0].reclaimed);
    assert_int_equal(m[0].id, 1);
    h_assert_contains(log, "claimed task 1 (long");
    free(log);
    assert_int_equal(broker_start(b, &m[0]), 0);
    assert_int_equal(m[0].attempt, 2);
    broker_outcome ok = {.state = "succeeded"};
    assert_int_equal(broker_finish(b, &m[0], &ok), 0);
    broker_msgs_free(m, 1);
    broker_stats s;
    assert_int_equal(broker_stats_get(b, &s), 0);
    assert_int_equal(s.pending, 0);
    assert_int_equal(s.stream_len, 0);
    assert_int_equal(s.consumers, 2);
    broker_close(a);
    broker_close(b);
}

static void broker_touch_keeps_an_entry(void **state)
{
    h_redis *r = *state;
    broker *a = open_app(r, NULL, "app", "w1", 0);
    broker_msg *m = enqueue_and_read(a, 1, "long", "z");
    /* Make it look idle for an hour, then touch it: idle starts again. */
    redisReply *x = h_redis_cmd(r, "XCLAIM bgserve:{app}:tasks workers w1 0 %s IDLE 3600000 "
                                    "JUSTID", m[0].entry);
    freeReplyObject(x);
    const char *one = m[0].entry;
    assert_int_equal(broker_touch(a, &one, 1), 0);
    redisReply *p = h_redis_cmd(r, "XPENDING bgserve:{app}:tasks workers - + 10");
    assert_int_equal(p->type, REDIS_REPLY_ARRAY);
    assert_int_equal(p->elements, 1);
    assert_true(p->element[0]->element[2]->integer < 3600000);
    freeReplyObject(p);
    broker_msgs_free(m, 1);
    broker_close(a);
}

/* ---- capacity, leases, ids --------------------------------------------- */

static void broker_capacity_counts_queued_and_delayed(void **state)
{
    h_redis *r = *state;
    broker_config cfg = {.url = r->url, .app = "app", .capacity = 2};
    broker *b;
    char err[ERRCAP];
    assert_int_equal(broker_open(&cfg, &b, err, sizeof err), 0);
    broker_msg *m = enqueue_and_read(b, 1, "t", "a");
    assert_int_equal(broker_retry(b, &m[0], 60000, "later"), 0);
    broker_msgs_free(m, 1);
    enqueue_one(b, 2, "t", "b");
    broker_job j = {.id = 3, .name = "t", .max_attempts = 1};
    assert_int_equal(broker_enqueue(b, &j, 1), BROKER_EFULL);
    assert_int_equal(h_redis_int(r, "XLEN bgserve:{app}:tasks"), 1);
    assert_int_equal(h_redis_int(r, "EXISTS bgserve:{app}:task:3"), 0);
    broker_close(b);
}

static void broker_concurrency_slots_across_processes(void **state)
{
    two *t = *state;
    broker *a = t->a, *b = t->b;
    assert_int_equal(broker_conc_take(a, "pdf", 2, "w1:1", 60000), 1);
    assert_int_equal(broker_conc_take(b, "pdf", 2, "w2:2", 60000), 1);
    assert_int_equal(broker_conc_take(b, "pdf", 2, "w2:3", 60000), 0);
    /* Renewing one held is not a new slot. */
    assert_int_equal(broker_conc_take(a, "pdf", 2, "w1:1", 60000), 1);
    assert_int_equal(broker_conc_take(a, "other", 1, "w1:4", 60000), 1);
    assert_int_equal(broker_conc_release(a, "pdf", "w1:1"), 0);
    assert_int_equal(broker_conc_take(b, "pdf", 2, "w2:3", 60000), 1);
    /* A slot whose holder stopped renewing lapses. */
    assert_int_equal(broker_conc_take(a, "short", 1, "w1:5", 1), 1);
    uint64_t end = h_now_ms() + 5000;
    int got = 0;
    while (!got && h_now_ms() < end)
        got = broker_conc_take(b, "short", 1, "w2:6", 60000);
    assert_int_equal(got, 1);
    assert_int_equal(broker_conc_take(a, "pdf", 0, "x", 1), BROKER_EINVAL);
}

static void broker_periodic_lease_once_per_interval(void **state)
{
    two *t = *state;
    broker *a = t->a, *b = t->b;
    assert_int_equal(broker_lease(a, "cleanup", 60000), 1);
    assert_int_equal(broker_lease(b, "cleanup", 60000), 0);
    assert_int_equal(broker_lease(a, "cleanup", 60000), 0);
    assert_int_equal(broker_lease(b, "report", 60000), 1);
    long long pttl = h_redis_int(&t->r, "PTTL bgserve:{app}:periodic:cleanup");
    assert_true(pttl > 0 && pttl <= 60000);
}

static void broker_ids_unique_across_brokers(void **state)
{
    two *t = *state;
    broker *a = t->a, *b = t->b;
    uint64_t fa, fb, fc;
    assert_int_equal(broker_next_ids(a, 100, &fa), 0);
    assert_int_equal(broker_next_ids(b, 50, &fb), 0);
    assert_int_equal(broker_next_ids(a, 1, &fc), 0);
    assert_int_equal(fa, 1);
    assert_int_equal(fb, 101);
    assert_int_equal(fc, 151);
    assert_int_equal(broker_next_ids(a, 0, &fc), BROKER_EINVAL);
}

/* ---- outages ------------------------------------------------------------ */

static void broker_down_fails_fast_and_reconnects(void **state)
{
    h_redis *r = *state;
    broker *b = open_app(r, NULL, "app", "w1", 0);
    enqueue_one(b, 1, "t", "a");
    h_redis_halt(r);

    h_capture_begin();
    broker_job j = {.id = 2, .name = "t", .max_attempts = 1};
    int first = broker_enqueue(b, &j, 1);
    /* In backoff now: the next calls fail at once, without connecting. */
    int later = 0;
    for (int i = 0; i < 20; i++)
        later |= broker_enqueue(b, &j, 1) != BROKER_EDOWN;
    broker_msg *m;
    size_t n;
    int rd = broker_read(b, 1, 10, &m, &n);
    broker_stats s;
    int st = broker_stats_get(b, &s);

    /* Redis without persistence comes back empty: the broker reconnects,
     * makes the group again and goes on. */
    h_redis_restart(r);
    uint64_t end = h_now_ms() + 15000;
    int rc = BROKER_EDOWN;
    while (rc != 0 && h_now_ms() < end)
        rc = broker_enqueue(b, &j, 1);
    n = 0;
    end = h_now_ms() + 15000;
    int rrc = 0;
    while (rc == 0 && n == 0 && h_now_ms() < end)
        rrc = broker_read(b, 1, 10, &m, &n);
    char *log = h_capture_end();
    fprintf(stderr, "%s", log);
    assert_int_equal(first, BROKER_EDOWN);
    assert_false(later);
    assert_int_equal(rd, BROKER_EDOWN);
    assert_int_equal(st, BROKER_EDOWN);
    assert_false(s.up);
    assert_int_equal(rc, 0);
    assert_true(rrc == 0 || rrc == BROKER_EDOWN);
    assert_int_equal(n, 1);
    assert_int_equal(m[0].id, 2);
    broker_msgs_free(m, 1);
    h_assert_contains(log, "broker: lost the command connection to redis at redis://127.0.0.1:");
    h_assert_contains(log, "next try in");
    h_assert_contains(log, "broker: reconnected the command connection");
    h_assert_contains(log, "consumer group workers of bgserve:{app}:tasks is gone");
    free(log);
    assert_int_equal(broker_stats_get(b, &s), 0);
    assert_true(s.reconnects >= 2);
    broker_close(b);
}

static void broker_survives_a_restart_with_aof(void **state)
{
    (void)state;
    static const char *const aof[] = {"--appendonly", "yes", "--appendfsync", "always", NULL};
    h_redis r;
    h_redis_start(&r, NULL, aof);
    broker *b = open_app(&r, NULL, "app", "w1", 0);
    enqueue_one(b, 1, "t", "kept");
    h_redis_halt(&r);
    h_redis_restart(&r);
    h_capture_begin();
    broker_msg *m;
    size_t n = read_n(b, 1, &m, 15000);
    char *log = h_capture_end();
    fprintf(stderr, "%s", log);
    assert_int_equal(n, 1);
    assert_memory_equal(m[0].payload, "kept", 4);
    h_assert_contains(log, "reconnected the reader connection");
    free(log);
    broker_msgs_free(m, 1);
    broker_close(b);
    h_redis_stop(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(broker_url_forms),
        cmocka_unit_test(broker_url_refusals_hide_the_password),
        cmocka_unit_test(broker_open_unreachable_host),
        cmocka_unit_test(broker_open_wrong_or_missing_password),
        cmocka_unit_test_setup_teardown(broker_open_refuses_keys_of_another_app, redis_up, redis_down),
        cmocka_unit_test_setup_teardown(broker_enqueue_read_finish, redis_up, redis_down),
        cmocka_unit_test_setup_teardown(broker_sequence_moves_on_at_each_finish, redis_up, redis_down),
        cmocka_unit_test_setup_teardown(broker_sequence_skips_the_rest_in_redis, redis_up, redis_down),
        cmocka_unit_test_setup_teardown(broker_read_without_block_returns_at_once, redis_up, redis_down),
        cmocka_unit_test_setup_teardown(broker_retry_waits_in_the_delayed_set, redis_up, redis_down),
        cmocka_unit_test_setup_teardown(broker_dead_letter_keeps_the_last_error, redis_up, redis_down),
        cmocka_unit_test_setup_teardown(broker_entries_of_another_app_are_dead_lettered, redis_up, redis_down),
        cmocka_unit_test_setup_teardown(broker_claims_entries_of_a_silent_worker, redis_up, redis_down),
        cmocka_unit_test_setup_teardown(broker_touch_keeps_an_entry, redis_up, redis_down),
        cmocka_unit_test_setup_teardown(broker_capacity_counts_queued_and_delayed, redis_up, redis_down),
        cmocka_unit_test_setup_teardown(broker_concurrency_slots_across_processes, two_up, two_down),
        cmocka_unit_test_setup_teardown(broker_periodic_lease_once_per_interval, two_up, two_down),
        cmocka_unit_test_setup_teardown(broker_ids_unique_across_brokers, two_up, two_down),
        cmocka_unit_test_setup_teardown(broker_down_fails_fast_and_reconnects, redis_up, redis_down),
        cmocka_unit_test(broker_survives_a_restart_with_aof),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
