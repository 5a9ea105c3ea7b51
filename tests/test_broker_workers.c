/*
 * test_broker_workers.c - one server and `bgserve worker` processes on a
 * redis-server of the test's own (tests/support/redis.h), all on
 * loopback, with the fixture broker_app: tasks run exactly once and the
 * workers share them; a worker killed mid-task has its task claimed and
 * finished by another with the attempt counted; retries end in the dead
 * letters with the last error, each retry through Redis, on any worker
 * (and the dashboard's retry of one while Redis is down is a 503 naming
 * Redis); the server answers 503 (not a hang) for named tasks while Redis is
 * down (once the loss is known, bgs_res_task fails with BGS_EFULL and
 * the handler answers; a route's own tasks get the server's 503, which
 * names Redis) and runs ad hoc tasks itself; refusals of the command line.  The fixture's tasks write "WHAT PID ID ATTEMPT"
 * lines to a file the test reads.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <bgserve.h>

#include "helpers.h"
#include "redis.h"

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 20000
#define ADD_ONE "/add?task=count&n=1" /* one task count */

/* The server of broker_app on g's redis, with more arguments (may be NULL). */
static void start_server(h_rig *g, const char *const *more)
{
    h_rig_server(g, h_fixture("broker_app"), more);
}

/* A worker of broker_app in *w; visibility: NULL or --broker-visibility. */
static void start_worker(h_rig *g, h_server *w, const char *visibility)
{
    const char *more[] = {"--broker-visibility", visibility, NULL};
    h_start_worker(w, g->redis.url, h_fixture("broker_app"), visibility ? more : NULL, g->env);
}

/* Lines of the log that start with "what " and, when pid > 0, name pid. */
static int count_lines(h_rig *g, const char *what, pid_t pid)
{
    char *text = h_slurp(g->logpath, NULL);
    int n = 0;
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        char w[16];
        long p;
        if (sscanf(line, "%15s %ld", w, &p) == 2 && strcmp(w, what) == 0 &&
            (pid <= 0 || p == (long)pid))
            n++;
        line = nl ? nl + 1 : line + strlen(line);
    }
    free(text);
    return n;
}

static int wait_lines(h_rig *g, const char *what, pid_t pid, int want)
{
    uint64_t end = h_now_ms() + DEADLINE_MS;
    int n;
    while ((n = count_lines(g, what, pid)) < want && h_now_ms() < end) {
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL); /* polling interval */
    }
    return n;
}

/* Fail the test unless the log has a line "what pid id attempt" (any
 * pid when pid is 0); the log is printed then. */
static void assert_ran(h_rig *g, const char *what, pid_t pid, uint64_t id, unsigned attempt)
{
    char *text = h_slurp(g->logpath, NULL);
    int found = 0;
    for (char *line = text; !found && line && *line;) {
        char *nl = strchr(line, '\n');
        char w[16];
        long p;
        unsigned long long i;
        unsigned a;
        found = sscanf(line, "%15s %ld %llu %u", w, &p, &i, &a) == 4 && strcmp(w, what) == 0 &&
                (pid <= 0 || p == (long)pid) && i == id && a == attempt;
        line = nl ? nl + 1 : line + strlen(line);
    }
    if (!found)
        fprintf(stderr, "the fixture's log:\n%s\n", text ? text : "(none)");
    free(text);
    if (!found)
        fail_msg("no line '%s %ld %" PRIu64 " %u' in the fixture's log", what, (long)pid, id,
                 attempt);
}

static uint64_t add(h_rig *g, const char *task, int n)
{
    char path[96];
    snprintf(path, sizeof path, "/add?task=%s&n=%d", task, n);
    h_resp r;
    assert_int_equal(h_get(&g->server, path, &r), 0);
    if (r.status != 200)
        fail_msg("GET %s: %ld %s", path, r.status, r.body);
    uint64_t id = strtoull(r.body, NULL, 10);
    h_resp_free(&r);
    return id;
}

/* A redis-server and the fixture's log, nothing started on it yet. */
static void rig_redis(h_rig *g)
{
    h_rig_redis(g, NULL, "BROKER_APP_LOG");
}

/* A redis-server, the server and nworkers workers (at most H_RIG_WORKERS) in g->w. */
static void rig_up(h_rig *g, int nworkers)
{
    rig_redis(g);
    start_server(g, NULL);
    while (g->nw < nworkers)
        h_rig_worker(g, h_fixture("broker_app"), NULL);
}

static int stream_empty(void *redis)
{
    return h_redis_int(redis, "XLEN bgserve:{broker_app}:tasks") == 0;
}

static void broker_workers_share_and_run_once(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, 2);
    const h_server *w1 = &g.w[0], *w2 = &g.w[1];
    enum { REQS = 10, PER = 50, N = REQS * PER };
    uint64_t first = 0;
    for (int i = 0; i < REQS; i++) {
        uint64_t id = add(&g, "count", PER);
        if (i == 0)
            first = id;
    }
    assert_int_equal(wait_lines(&g, "ran", 0, N), N);
    /* Each task once; both workers ran some, the server none. */
    char *text = h_slurp(g.logpath, NULL);
    int lines = 0;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        unsigned long long id;
        unsigned attempt;
        char w[16];
        long pid;
        assert_int_equal(sscanf(line, "%15s %ld %llu %u", w, &pid, &id, &attempt), 4);
        assert_int_equal(attempt, 1);
        char needle[48];
        snprintf(needle, sizeof needle, " %llu 1\n", id);
        const char *at = strstr(text, needle);
        assert_non_null(at);
        assert_null(strstr(at + 1, needle));
        lines++;
        line = nl ? nl + 1 : line + strlen(line);
    }
    free(text);
    assert_int_equal(lines, N);
    assert_true(count_lines(&g, "ran", w1->pid) > 0);
    assert_true(count_lines(&g, "ran", w2->pid) > 0);
    assert_int_equal(count_lines(&g, "ran", w1->pid) + count_lines(&g, "ran", w2->pid), N);
    /* The server hears of the final states. */
    char *rec = h_wait_task(&g.server, first, "succeeded", DEADLINE_MS);
    free(rec);
    /* A worker deletes a task's entry after the task returned, so after
     * its line: wait for the last one. */
    assert_true(h_poll(stream_empty, &g.redis, DEADLINE_MS));
    /* The stats show the broker, without a password. */
    assert_int_equal(h_stat(&g.server, "broker", "consumers"), 2);
    assert_int_equal(h_stat(&g.server, "broker", "dead"), 0);
    h_resp r;
    assert_int_equal(h_get(&g.server, "/_bgserve/stats", &r), 0);
    char want[160];
    snprintf(want, sizeof want, "\"url\":\"redis://127.0.0.1:%d/0\"", g.redis.port);
    h_assert_contains(r.body, want);
    h_resp_free(&r);
    h_rig_down(&g);
}

static void broker_result_reaches_the_server(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, 1);
    h_server *w = &g.w[0];
    uint64_t id = add(&g, "answer", 1);
    char *rec = h_wait_task(&g.server, id, "succeeded", DEADLINE_MS);
    h_assert_contains(rec, "\"body\":\"forty-two\"");
    free(rec);
    /* Ad hoc tasks run in the server. */
    h_resp r;
    assert_int_equal(h_get(&g.server, "/adhoc", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_int_equal(wait_lines(&g, "adhoc", 0, 1), 1);
    assert_int_equal(count_lines(&g, "adhoc", w->pid), 0);
    h_rig_down(&g);
}

static void broker_killed_worker_task_is_reclaimed(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, 0);
    h_server a;
    start_worker(&g, &a, "1000");
    uint64_t id = add(&g, "slow", 1);
    assert_int_equal(wait_lines(&g, "start", a.pid, 1), 1);
    kill(a.pid, SIGKILL);
    assert_int_equal(h_stop(&a, 0), 128 + SIGKILL);
    h_free(&a);
    h_server b;
    start_worker(&g, &b, "1000");
    assert_int_equal(wait_lines(&g, "ran", b.pid, 1), 1);
    assert_ran(&g, "ran", b.pid, id, 2);
    char *rec = h_wait_task(&g.server, id, "succeeded", DEADLINE_MS);
    assert_int_equal(h_json_num(rec, "attempts"), 2);
    free(rec);
    assert_true(h_wait_log(&b, "claimed task", DEADLINE_MS));
    h_stop_worker(&b);
    h_rig_down(&g);
}

/* Stop Redis and ask ADD_ONE until the server answers 503 (that request
 * is how it notices the loss). */
static void halt_redis_until_503(h_rig *g)
{
    h_redis_halt(&g->redis);
    uint64_t end = h_now_ms() + DEADLINE_MS;
    long st = 0;
    while (st != 503 && h_now_ms() < end)
        st = h_get_status(&g->server, ADD_ONE);
    assert_int_equal(st, 503);
}

static void broker_retries_end_in_the_dead_letters(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, 1);
    h_server *w = &g.w[0];
    uint64_t id = add(&g, "fail", 1);
    char *rec = h_wait_task(&g.server, id, "failed", DEADLINE_MS);
    h_assert_contains(rec, "\"error\":\"always fails\"");
    assert_int_equal(h_json_num(rec, "attempts"), 2);
    free(rec);
    assert_int_equal(count_lines(&g, "fail", w->pid), 2);
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{broker_app}:dead"), 1);
    /* The dashboard's retry of it while Redis is known to be down: the
     * 503 names Redis (as a route's refused tasks do), not a full queue. */
    halt_redis_until_503(&g);
    assert_true(h_wait_log(&g.server, "lost the command connection to redis", DEADLINE_MS));
    char *body = NULL;
    assert_int_equal(h_post_retry(&g.server, id, 1, &body), 503);
    char expect[256];
    snprintf(expect, sizeof expect, "task %" PRIu64 " was not queued again: redis (--broker), "
             "which keeps the tasks, is unreachable, retry later; bring redis back: the "
             "server reconnects by itself", id);
    h_assert_contains(body, expect);
    free(body);
    h_rig_down(&g);
}

/* GET path is refused: 503 with Retry-After, body saying why, and the
 * server's log line. */
static void expect_refused(h_rig *g, const char *path, const char *body, const char *line)
{
    h_resp r;
    assert_int_equal(h_get(&g->server, path, &r), 0);
    assert_int_equal(r.status, 503);
    assert_non_null(h_header(&r, "Retry-After"));
    h_assert_contains(r.body, body);
    h_resp_free(&r);
    assert_true(h_wait_log(&g->server, line, DEADLINE_MS));
}

static void broker_503_while_redis_is_down(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, 1);
    h_server *w = &g.w[0];
    halt_redis_until_503(&g);
    uint64_t end;
    long st = 503;
    /* The rest is served meanwhile, ad hoc tasks included. */
    h_resp r;
    assert_int_equal(h_get(&g.server, "/adhoc", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_true(h_wait_log(&g.server, "lost the command connection to redis", DEADLINE_MS));
    /* Known down, Redis is a full queue (docs/broker.md): bgs_res_task
     * fails with BGS_EFULL at once and the handler's own 503 answers. */
    h_resp efull = {0};
    end = h_now_ms() + DEADLINE_MS;
    do {
        h_resp_free(&efull);
        assert_int_equal(h_get(&g.server, ADD_ONE, &efull), 0);
    } while (strcmp(efull.body, bgs_strerror(BGS_EFULL)) != 0 && h_now_ms() < end);
    assert_int_equal(efull.status, 503);
    assert_string_equal(efull.body, bgs_strerror(BGS_EFULL));
    assert_null(h_header(&efull, "Retry-After"));
    h_resp_free(&efull);
    /* A route's own task: the server's 503 names Redis, not a full queue. */
    expect_refused(&g, "/route-task", "Service Unavailable: redis (--broker), which keeps the "
                   "tasks, is unreachable, retry later",
                   "GET /route-task: route tasks not accepted: redis (--broker), which keeps "
                   "the tasks, is unreachable; bring redis back");
    h_redis_restart(&g.redis);
    end = h_now_ms() + DEADLINE_MS;
    while (st != 200 && h_now_ms() < end)
        st = h_get_status(&g.server, ADD_ONE);
    assert_int_equal(st, 200);
    assert_true(h_wait_log(&g.server, "reconnected the command connection", DEADLINE_MS));
    /* What was accepted runs (Redis had no persistence: the worker makes
     * the group again). */
    int ran = wait_lines(&g, "ran", w->pid, 1);
    if (ran != 1) {
        h_drain_log(w);
        fprintf(stderr, "worker log:\n%s\n", w->log);
    }
    assert_int_equal(ran, 1);
    h_rig_down(&g);
}

/* The first request after Redis went away, before anything noticed: its
 * answer waits for the XADD, so it is a 503 with Retry-After, never a
 * 2xx for a task Redis does not have. */
static void broker_no_2xx_without_the_xadd(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, 1);
    h_server *w = &g.w[0];
    /* The server reads the first task's record: after that it sends
     * nothing to Redis until the next request, which finds it gone. */
    char *rec = h_wait_task(&g.server, add(&g, "count", 1), "succeeded", DEADLINE_MS);
    free(rec);
    h_redis_halt(&g.redis);
    expect_refused(&g, "/add?task=count&n=3", "could not be made durable (redis at redis://",
                   "task(s) (count, ...) not added: redis at");
    h_resp r;
    h_redis_restart(&g.redis);
    uint64_t end = h_now_ms() + DEADLINE_MS;
    do {
        assert_int_equal(h_get(&g.server, ADD_ONE, &r), 0);
        if (r.status != 200)
            h_resp_free(&r);
    } while (r.status != 200 && h_now_ms() < end);
    assert_int_equal(r.status, 200);
    uint64_t id = strtoull(r.body, NULL, 10);
    h_resp_free(&r);
    /* Only the accepted task ran: none of the refused three. */
    rec = h_wait_task(&g.server, id, "succeeded", DEADLINE_MS);
    free(rec);
    assert_int_equal(count_lines(&g, "ran", w->pid), 2);
    h_rig_down(&g);
}

/* --broker-capacity: with no worker, the third task would pass a bound of
 * two: 503 with Retry-After, the log says why, the stream keeps two.  A
 * worker started then runs the two (also those it reads before its app
 * is loaded) and makes room. */
static void broker_capacity_answers_503(void **state)
{
    (void)state;
    h_rig g;
    rig_redis(&g);
    const char *args[] = {"--broker-capacity", "2", NULL};
    start_server(&g, args);
    assert_int_equal(h_get_status(&g.server, ADD_ONE), 200);
    assert_int_equal(h_get_status(&g.server, ADD_ONE), 200);
    expect_refused(&g, ADD_ONE, "is over its capacity (--broker-capacity)",
                   "not added: the broker redis://127.0.0.1:");
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{broker_app}:tasks"), 2);
    assert_int_equal(h_stat(&g.server, "broker", "capacity"), 2);
    /* A worker makes room: the next request is accepted. */
    h_server w;
    start_worker(&g, &w, NULL);
    assert_int_equal(wait_lines(&g, "ran", w.pid, 2), 2);
    uint64_t end = h_now_ms() + DEADLINE_MS;
    long st;
    while ((st = h_get_status(&g.server, ADD_ONE)) != 200 && h_now_ms() < end)
        continue; /* until the worker has acknowledged the two */
    assert_int_equal(st, 200);
    assert_int_equal(wait_lines(&g, "ran", w.pid, 3), 3);
    h_stop_worker(&w);
    h_rig_down(&g);
}

/* A server that stops while a worker runs a task it added does not call
 * that task cancelled: the report says it is in Redis, and its record
 * there still says running. */
static void broker_stopping_server_hands_tasks_on(void **state)
{
    (void)state;
    h_rig g;
    rig_redis(&g);
    const char *args[] = {"--drain-timeout", "0", NULL};
    start_server(&g, args);
    h_server w;
    start_worker(&g, &w, NULL);
    uint64_t id = add(&g, "slow", 1);
    assert_int_equal(wait_lines(&g, "start", w.pid, 1), 1);
    h_stop_clean(&g.server);
    g.have_server = 0;
    char line[96];
    snprintf(line, sizeof line, "task %" PRIu64 " slow", id);
    char found[512];
    assert_int_equal(h_line_with(g.server.log, "in redis: it runs on the workers", found,
                                 sizeof found), 0);
    h_assert_contains(found, line);
    snprintf(line, sizeof line, "task %" PRIu64 " slow cancelled", id);
    h_assert_lacks(g.server.log, line);
    h_assert_contains(g.server.log, "drain: 0 tasks finished, 0 did not, 1 stay in redis");
    h_free(&g.server);
    redisReply *rep = h_redis_cmd(&g.redis, "HGET bgserve:{broker_app}:task:%" PRIu64 " state",
                                  id);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, "running");
    freeReplyObject(rep);
    /* The worker's own stop interrupts the task and hands it back (the
     * delayed set, due now): nothing is lost, exit 0. */
    assert_int_equal(h_stop(&w, SIGTERM), 0);
    h_assert_lacks(w.log, "Sanitizer");
    h_free(&w);
    assert_int_equal(h_redis_int(&g.redis, "ZCARD bgserve:{broker_app}:delayed"), 1);
    h_rig_down(&g);
}

/* What a 2xx promises is in Redis when the answer arrives (no worker
 * runs them): every task of a concurrent group in the stream; the first
 * step of a sequence in the stream, the second kept with it. */
static void broker_2xx_tasks_are_in_the_stream(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, 0);
    h_resp r;
    assert_int_equal(h_get(&g.server, "/add?task=count&n=3&mode=concurrent", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{broker_app}:tasks"), 3);
    uint64_t first = add(&g, "count", 2);
    assert_true(first > 0);
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{broker_app}:tasks"), 4);
    assert_int_equal(h_redis_int(&g.redis, "LLEN bgserve:{broker_app}:seq:%" PRIu64, first), 1);
    /* Five records, all queued. */
    const char *queued = "local n = 0\n"
                         "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do\n"
                         "  if redis.call('HGET', k, 'state') == 'queued' then n = n + 1 end\n"
                         "end\n"
                         "return n\n";
    assert_int_equal(h_redis_int(&g.redis, "EVAL %s 0 %s", queued, "bgserve:{broker_app}:task:*"),
                     5);
    /* Stopping: the five stay in Redis for the workers, the sequence's
     * second too: nothing is lost (exit 0). */
    assert_int_equal(h_stop(&g.server, SIGTERM), 0);
    h_assert_contains(g.server.log, "drain: 0 tasks finished, 0 did not, 5 stay in redis");
    h_free(&g.server);
    g.have_server = 0;
    h_rig_down(&g);
}

static void broker_command_line_refusals(void **state)
{
    (void)state;
    char *out;
    const char *no_broker[] = {h_build_path("bgserve"), "worker", h_fixture("broker_app"),
                               NULL};
    assert_int_equal(h_run(no_broker, &out), 2);
    h_assert_contains(out, "bgserve worker: no broker: give --broker");
    free(out);
    char url[96];
    snprintf(url, sizeof url, "redis://:sekrit@127.0.0.1:%d", h_free_port());
    const char *down[] = {h_build_path("bgserve"), "--single-process", "--port", "0",
                          "--broker", url, h_fixture("broker_app"), NULL};
    assert_int_equal(h_run(down, &out), 1);
    h_assert_contains(out, "--broker: cannot reach redis at 127.0.0.1:");
    h_assert_lacks(out, "sekrit");
    free(out);
    const char *tls[] = {h_build_path("bgserve"), "worker", "--broker", "rediss://h:1",
                         h_fixture("broker_app"), NULL};
    assert_int_equal(h_run(tls, &out), 1);
    h_assert_contains(out, "rediss:// (TLS) needs hiredis with TLS support");
    free(out);
}

/* ---- retries through Redis ------------------------------------------------ */

#define DELAYED "bgserve:{broker_app}:delayed"

/* Field f of the record of task id in Redis ("" when none), into buf. */
static const char *record_field(h_rig *g, uint64_t id, const char *f, char *buf, size_t cap)
{
    redisReply *r = h_redis_cmd(&g->redis, "HGET bgserve:{broker_app}:task:%" PRIu64 " %s",
                                id, f);
    snprintf(buf, cap, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
    return buf;
}

/* Until the record of id says "retrying" after attempt n failed, and its
 * job waits in the delayed set (the only one there).  1, or 0 past the
 * deadline. */
static int wait_retrying(h_rig *g, uint64_t id, unsigned n)
{
    char want[32], st[32], err[64], att[16];
    snprintf(want, sizeof want, "attempt %u fails", n);
    uint64_t end = h_now_ms() + DEADLINE_MS;
    do {
        record_field(g, id, "state", st, sizeof st);
        record_field(g, id, "error", err, sizeof err);
        record_field(g, id, "attempts", att, sizeof att);
        if (strcmp(st, "retrying") == 0 && strcmp(err, want) == 0 &&
            strtoul(att, NULL, 10) == n && h_redis_int(&g->redis, "ZCARD " DELAYED) == 1)
            return 1;
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL); /* polling interval */
    } while (h_now_ms() < end);
    fprintf(stderr, "task %" PRIu64 ": state '%s', error '%s', attempts '%s'\n", id, st, err,
            att);
    return 0;
}

/* In how many ms (Redis's clock) the only job of the delayed set is due;
 * with make_due, instead of waiting for it, make it due now. */
static long long delayed_due_in_ms(h_rig *g)
{
    redisReply *z = h_redis_cmd(&g->redis, "ZRANGE " DELAYED " 0 -1 WITHSCORES");
    assert_int_equal(z->type, REDIS_REPLY_ARRAY);
    assert_int_equal(z->elements, 2);
    long long due = strtoll(z->element[1]->str, NULL, 10);
    freeReplyObject(z);
    redisReply *t = h_redis_cmd(&g->redis, "TIME");
    assert_int_equal(t->elements, 2);
    long long now = strtoll(t->element[0]->str, NULL, 10) * 1000 +
                    strtoll(t->element[1]->str, NULL, 10) / 1000;
    freeReplyObject(t);
    return due - now;
}

static void make_due(h_rig *g)
{
    redisReply *z = h_redis_cmd(&g->redis, "ZRANGE " DELAYED " 0 -1");
    assert_int_equal(z->type, REDIS_REPLY_ARRAY);
    assert_int_equal(z->elements, 1);
    assert_int_equal(h_redis_int(&g->redis, "ZADD " DELAYED " XX CH 0 %b", z->element[0]->str,
                                 (size_t)z->element[0]->len), 1);
    freeReplyObject(z);
}

/* A failed attempt goes back to Redis (the delayed set, due after the
 * task's backoff), not into the worker that ran it: that worker can stop
 * at once with nothing of its own, and the next attempt runs on another
 * worker with the right number. */
static void broker_retry_runs_on_another_worker(void **state)
{
    (void)state;
    h_rig g;
    rig_redis(&g);
    start_server(&g, NULL);
    h_server a;
    start_worker(&g, &a, NULL);
    uint64_t id = add(&g, "later", 1);
    assert_int_equal(wait_lines(&g, "fail", a.pid, 1), 1);
    assert_int_equal(wait_retrying(&g, id, 1), 1);
    /* Due after the backoff (an hour, half of it fixed), not before. */
    long long due_in = delayed_due_in_ms(&g);
    assert_true(due_in > 1700000);
    assert_true(due_in <= 3600000);
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{broker_app}:tasks"), 0);
    /* The worker holds nothing: it stops at once, with nothing cancelled. */
    assert_int_equal(h_stop(&a, SIGTERM), 0);
    h_assert_lacks(a.log, "cancelled");
    h_assert_lacks(a.log, "Sanitizer");
    h_free(&a);
    assert_int_equal(h_redis_int(&g.redis, "ZCARD " DELAYED), 1);
    /* Another worker takes attempts 2 and 3 when due. */
    h_server b;
    start_worker(&g, &b, NULL);
    make_due(&g);
    assert_int_equal(wait_lines(&g, "fail", b.pid, 1), 1);
    assert_int_equal(wait_retrying(&g, id, 2), 1);
    make_due(&g);
    assert_int_equal(wait_lines(&g, "ran", b.pid, 1), 1);
    assert_ran(&g, "fail", b.pid, id, 2);
    assert_ran(&g, "ran", b.pid, id, 3);
    char *rec = h_wait_task(&g.server, id, "succeeded", DEADLINE_MS);
    assert_int_equal(h_json_num(rec, "attempts"), 3);
    free(rec);
    assert_int_equal(h_redis_int(&g.redis, "ZCARD " DELAYED), 0);
    h_stop_worker(&b);
    h_rig_down(&g);
}

/* Out of attempts, across workers: the dead-letter stream keeps the job
 * with the last error, the record says failed after max_attempts. */
static void broker_dead_letter_after_retries_through_redis(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, 2);
    uint64_t id = add(&g, "fail", 1);
    char *rec = h_wait_task(&g.server, id, "failed", DEADLINE_MS);
    assert_int_equal(h_json_num(rec, "attempts"), 2);
    h_assert_contains(rec, "\"error\":\"always fails\"");
    free(rec);
    for (unsigned n = 1; n <= 2; n++)
        assert_ran(&g, "fail", 0, id, n);
    assert_int_equal(count_lines(&g, "fail", 0), 2);
    redisReply *d = h_redis_cmd(&g.redis, "XRANGE bgserve:{broker_app}:dead - +");
    assert_int_equal(d->type, REDIS_REPLY_ARRAY);
    assert_int_equal(d->elements, 1);
    const redisReply *f = d->element[0]->element[1];
    int seen = 0;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        if (strcmp(f->element[i]->str, "error") == 0) {
            assert_string_equal(f->element[i + 1]->str, "always fails");
            seen |= 1;
        } else if (strcmp(f->element[i]->str, "id") == 0) {
            assert_int_equal(strtoull(f->element[i + 1]->str, NULL, 10), id);
            seen |= 2;
        }
    }
    freeReplyObject(d);
    assert_int_equal(seen, 3);
    assert_int_equal(h_redis_int(&g.redis, "ZCARD " DELAYED), 0);
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{broker_app}:tasks"), 0);
    h_rig_down(&g);
}

/* ---- status, ?wait= and awaits across processes ---------------------------- */

typedef struct longpoll {
    h_server *s;
    char path[96];
    int rc;
    h_resp r;
} longpoll;

static void *longpoll_main(void *arg)
{
    longpoll *lp = arg;
    lp->rc = h_get(lp->s, lp->path, &lp->r);
    return NULL;
}

/* A redis-server, the server and a second one on the same Redis in
 * *other (stop it before rig_down), no worker. */
static void rig_two_servers(h_rig *g, h_server *other)
{
    rig_redis(g);
    start_server(g, NULL);
    const char *args[] = {"--broker", g->redis.url, NULL};
    assert_int_equal(h_start_app(other, h_fixture("broker_app"), args, g->env), 0);
}

/* A second server on the same Redis answers for a task the first one
 * accepted: its record from Redis, and ?wait= until a worker ran it. */
static void broker_any_server_answers_for_any_task(void **state)
{
    (void)state;
    h_rig g;
    h_server other;
    rig_two_servers(&g, &other);
    uint64_t id = add(&g, "answer", 1);
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%" PRIu64, id);
    h_resp r;
    assert_int_equal(h_get(&other, path, &r), 0);
    assert_int_equal(r.status, 200);
    h_assert_contains(r.body, "\"state\":\"queued\"");
    h_assert_contains(r.body, "\"name\":\"answer\"");
    h_assert_contains(r.body, "\"source\":\"redis\"");
    h_resp_free(&r);
    /* Waits there while no worker runs it: answered once one has. */
    longpoll lp = {.s = &other};
    snprintf(lp.path, sizeof lp.path, "%s?wait=20000", path);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, longpoll_main, &lp), 0);
    assert_int_equal(h_wait_stat(&other, "broker", "watched_here", 1, DEADLINE_MS), 1);
    h_server w;
    start_worker(&g, &w, NULL);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(lp.rc, 0);
    assert_int_equal(lp.r.status, 200);
    h_assert_contains(lp.r.body, "\"state\":\"succeeded\"");
    h_assert_contains(lp.r.body, "\"body\":\"forty-two\"");
    h_assert_contains(lp.r.body, "\"attempts\":1");
    h_resp_free(&lp.r);
    assert_int_equal(h_stat(&other, "broker", "watched_here"), 0);
    /* A ?wait= for a task final already answers at once; an unknown id
     * is a 404 on any server. */
    snprintf(lp.path, sizeof lp.path, "%s?wait=20000", path);
    assert_int_equal(h_get(&other, lp.path, &r), 0);
    h_assert_contains(r.body, "\"state\":\"succeeded\"");
    h_resp_free(&r);
    snprintf(lp.path, sizeof lp.path, "/_bgserve/tasks/%" PRIu64 "?wait=20000", id + 1000);
    assert_int_equal(h_get(&other, lp.path, &r), 0);
    assert_int_equal(r.status, 404);
    h_resp_free(&r);
    h_stop_worker(&w);
    h_stop_clean(&other);
    h_free(&other);
    h_rig_down(&g);
}

/* bgs_res_await on the server, the task on a worker: the response is
 * its result, or 500 with its last error. */
static void broker_await_completes_from_a_worker(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, 1);
    h_server *w = &g.w[0];
    h_resp r;
    assert_int_equal(h_get(&g.server, "/await?task=answer", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "forty-two");
    h_resp_free(&r);
    assert_int_equal(count_lines(&g, "ran", w->pid), 1);
    assert_int_equal(h_get(&g.server, "/await?task=fail", &r), 0);
    assert_int_equal(r.status, 500);
    h_assert_contains(r.body, "(fail) failed: always fails");
    h_resp_free(&r);
    assert_int_equal(count_lines(&g, "fail", w->pid), 2);
    h_rig_down(&g);
}

/* Redis away: a server asked about a task it does not know cannot say
 * whether it exists: 503 with Retry-After, not 404, also for ?wait=; the
 * server that accepted the task still answers from memory. */
static void broker_unknown_task_while_redis_is_down(void **state)
{
    (void)state;
    h_rig g;
    h_server other;
    rig_two_servers(&g, &other);
    uint64_t id = add(&g, "count", 1);
    h_redis_halt(&g.redis);
    char path[64], waitpath[96];
    snprintf(path, sizeof path, "/_bgserve/tasks/%" PRIu64, id);
    snprintf(waitpath, sizeof waitpath, "%s?wait=20000", path);
    const char *paths[] = {path, waitpath};
    h_resp r;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(h_get(&other, paths[i], &r), 0);
        assert_int_equal(r.status, 503);
        assert_non_null(h_header(&r, "Retry-After"));
        h_assert_contains(r.body, "redis (--broker), which keeps every server's tasks, is "
                                  "unreachable: retry later");
        h_resp_free(&r);
    }
    assert_int_equal(h_get(&g.server, path, &r), 0);
    assert_int_equal(r.status, 200);
    h_assert_contains(r.body, "\"state\":\"queued\"");
    h_resp_free(&r);
    /* Back, empty (no persistence): now it knows there is no such task. */
    h_redis_restart(&g.redis);
    uint64_t end = h_now_ms() + DEADLINE_MS;
    long st = 503;
    while (st == 503 && h_now_ms() < end) {
        assert_int_equal(h_get(&other, path, &r), 0);
        st = r.status;
        h_resp_free(&r);
    }
    assert_int_equal(st, 404);
    h_stop_clean(&other);
    h_free(&other);
    h_rig_down(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(broker_workers_share_and_run_once),
        cmocka_unit_test(broker_result_reaches_the_server),
        cmocka_unit_test(broker_killed_worker_task_is_reclaimed),
        cmocka_unit_test(broker_retries_end_in_the_dead_letters),
        cmocka_unit_test(broker_503_while_redis_is_down),
        cmocka_unit_test(broker_no_2xx_without_the_xadd),
        cmocka_unit_test(broker_capacity_answers_503),
        cmocka_unit_test(broker_stopping_server_hands_tasks_on),
        cmocka_unit_test(broker_2xx_tasks_are_in_the_stream),
        cmocka_unit_test(broker_command_line_refusals),
        cmocka_unit_test(broker_retry_runs_on_another_worker),
        cmocka_unit_test(broker_dead_letter_after_retries_through_redis),
        cmocka_unit_test(broker_any_server_answers_for_any_task),
        cmocka_unit_test(broker_await_completes_from_a_worker),
        cmocka_unit_test(broker_unknown_task_while_redis_is_down),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
