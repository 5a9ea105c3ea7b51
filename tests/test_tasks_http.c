/*
 * test_tasks_http.c - background tasks seen through HTTP, against the
 * real build/bgserve serving tests/fixtures/tasks_app.so: tasks start
 * only after the last byte left, several tasks per response (sequential
 * and concurrent), volume, retries, backpressure (503), discards, the
 * /_bgserve/ endpoints, and the shutdown drain.
 *
 * One shared server serves most tests; tests that need other options
 * start their own.  Every wait is a poll with a generous deadline; the
 * only fixed pauses are the slow client's pacing between reads.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"
#include "pace.h"
#include "queue.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 30000u
#define BIG_LEN (8u << 20) /* tasks_app's GET /big */

static h_server app; /* tasks_app.so, default options */

/* ---- helpers ------------------------------------------------------------------- */

static int start_app(h_server *s, const char *const *args, const char *const *env)
{
    return h_start_app(s, h_build_path("tests/fixtures/tasks_app.so"), args, env);
}

static uint64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Parse "12,13,14" into ids; returns the count. */
static size_t parse_ids(const char *list, unsigned long long *ids, size_t cap)
{
    size_t n = 0;
    while (list && *list && n < cap) {
        char *end;
        ids[n++] = strtoull(list, &end, 10);
        if (*end != ',')
            break;
        list = end + 1;
    }
    return n;
}

/* GET path; returns the status and keeps the announced task ids. */
static long get_tasks(h_server *s, const char *path, unsigned long long *ids,
                      size_t cap, size_t *n)
{
    h_resp r;
    h_drain_log(s); /* keep s->log current for the log checks */
    assert_int_equal(h_get(s, path, &r), 0);
    long status = r.status;
    *n = parse_ids(h_header(&r, "Bgserve-Tasks"), ids, cap);
    h_resp_free(&r);
    return status;
}

/* The record of task id (body malloc'd into *body, NUL-terminated);
 * returns the HTTP status. */
static long record(h_server *s, unsigned long long id, char **body)
{
    char path[64];
    h_resp r;
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu", id);
    h_drain_log(s);
    assert_int_equal(h_get(s, path, &r), 0);
    long status = r.status;
    *body = r.body;
    r.body = NULL;
    h_resp_free(&r);
    return status;
}

/* Poll task id until it is in state want; returns its record (free it). */
static char *wait_state(h_server *s, unsigned long long id, const char *want)
{
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu", id);
    char *rec = h_wait_state(s, path, want, DEADLINE_MS);
    assert_non_null(rec);
    return rec;
}

static void wait_stat(h_server *s, const char *task, const char *key, long long want)
{
    assert_true(h_wait_stat(s, task, key, want, DEADLINE_MS));
}

/* Wait for a task event line "task ID NAME EVENT" and return ID: the way
 * to learn ids of tasks the response could not announce. */
static unsigned long long id_from_log(h_server *s, const char *name, const char *event)
{
    char needle[128];
    snprintf(needle, sizeof needle, " %s %s", name, event);
    assert_true(h_wait_log(s, needle, DEADLINE_MS));
    const char *p = strstr(s->log, needle);
    const char *d = p;
    while (d > s->log && isdigit((unsigned char)d[-1]))
        d--;
    assert_true(d < p);
    assert_true(d - s->log >= 5 && strncmp(d - 5, "task ", 5) == 0);
    return strtoull(d, NULL, 10);
}

static int setup(void **state)
{
    (void)state;
    return start_app(&app, NULL, NULL);
}

static int teardown(void **state)
{
    (void)state;
    int rc = h_stop(&app, SIGTERM);
    h_free(&app);
    return rc == 0 ? 0 : -1;
}

/* ---- the task starts after the last byte ----------------------------------------- */

/* The third number of /proc/sys/net/ipv4/tcp_wmem, or the one number of
 * /proc/sys/net/core/wmem_max; 0 when unreadable. */
static unsigned long long proc_number(const char *path, int field)
{
    unsigned long long v[3] = {0, 0, 0};
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    int n = fscanf(f, "%llu %llu %llu", &v[0], &v[1], &v[2]);
    fclose(f);
    return n > field ? v[field] : 0;
}

static void tasks_http_slow_reader_task_starts_after_last_byte(void **state)
{
    (void)state;
    /*
     * We cannot read the server socket's SO_SNDBUF from here.  Linux
     * autotunes a TCP send buffer up to tcp_wmem's max (third field); an
     * explicit SO_SNDBUF is capped by wmem_max.  The larger of the two
     * bounds what the kernel can hold for the server once libmicrohttpd
     * has handed it the last byte.  Our own receive buffer (what
     * getsockopt reports, which includes the kernel's overhead doubling)
     * can hold more in flight, so it is subtracted too.  When the client
     * has read all but that much, the server cannot have written the last
     * byte yet, so the task cannot have started.
     */
    unsigned long long snd = proc_number("/proc/sys/net/ipv4/tcp_wmem", 2);
    unsigned long long wmax = proc_number("/proc/sys/net/core/wmem_max", 0);
    if (wmax > snd)
        snd = wmax;
    assert_true(snd > 0);

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    int rcv = 64 * 1024;
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv), 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)app.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    int rcv_actual = 0;
    socklen_t sl = sizeof rcv_actual;
    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv_actual, &sl), 0);

    long long mark = (long long)BIG_LEN - (long long)snd - rcv_actual;
    if (mark <= 0) {
        close(fd);
        fprintf(stderr, "send buffers up to %llu bytes: 8 MiB cannot outrun them; skipped\n", snd);
        skip();
    }

    static const char req[] = "GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    assert_int_equal(send(fd, req, sizeof req - 1, MSG_NOSIGNAL), (ssize_t)(sizeof req - 1));

    char head[8192], buf[4096];
    size_t head_len = 0;
    int in_body = 0;
    unsigned long long body = 0, mark_us = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        assert_int_equal(poll(&p, 1, (int)DEADLINE_MS), 1);
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        assert_true(n >= 0);
        if (n == 0)
            break;
        size_t off = 0;
        if (!in_body) {
            size_t take = (size_t)n;
            if (take > sizeof head - 1 - head_len)
                take = sizeof head - 1 - head_len;
            memcpy(head + head_len, buf, take);
            head_len += take;
            head[head_len] = '\0';
            char *end = strstr(head, "\r\n\r\n");
            if (end == NULL) {
                assert_true(head_len < sizeof head - 1);
                continue;
            }
            in_body = 1;
            size_t hdr_total = (size_t)(end + 4 - head);
            off = (size_t)n - (head_len - hdr_total);
            end[2] = '\0';
        }
        body += (size_t)n - off;
        if (mark_us == 0 && body >= (unsigned long long)mark)
            mark_us = wall_us();
        poll(NULL, 0, 1); /* pacing: this client is slow on purpose */
    }
    close(fd);

    h_assert_contains(head, "HTTP/1.1 200");
    assert_int_equal(body, BIG_LEN);
    assert_true(mark_us > 0);
    const char *t = strcasestr(head, "\r\nBgserve-Tasks: ");
    assert_non_null(t);
    unsigned long long id = strtoull(t + strlen("\r\nBgserve-Tasks: "), NULL, 10);
    assert_true(id > 0);

    char *rec = wait_state(&app, id, "succeeded");
    long long started = h_json_num(rec, "started_at_us");
    assert_true(started > 0);
    if (!((unsigned long long)started > mark_us))
        fprintf(stderr, "task started at %lld, client had all but %llu bytes at %llu\n",
                started, snd + (unsigned long long)rcv_actual, mark_us);
    assert_true((unsigned long long)started > mark_us);
    free(rec);
}

/* ---- the response does not wait for the task -------------------------------------- */

/* The task waits on a gate the test opens only after the response (and
 * a look at the record) is in hand: no timing involved. */
static void tasks_http_response_arrives_while_task_runs(void **state)
{
    (void)state;
    unsigned long long ids[4];
    size_t n;
    char st[32], *rec, dir[] = "/tmp/bgserve-gate-XXXXXX", gate[64], route[96];

    assert_non_null(mkdtemp(dir));
    snprintf(gate, sizeof gate, "%s/open", dir);
    snprintf(route, sizeof route, "/slow?gate=%s", gate);
    assert_int_equal(get_tasks(&app, route, ids, 4, &n), 200);
    uint64_t got_response = wall_us();
    assert_int_equal(n, 1);

    assert_int_equal(record(&app, ids[0], &rec), 200);
    assert_int_equal(h_json_str(rec, "state", st, sizeof st), 0);
    assert_true(strcmp(st, "queued") == 0 || strcmp(st, "running") == 0);
    free(rec);

    FILE *f = fopen(gate, "w");
    assert_non_null(f);
    fclose(f);
    rec = wait_state(&app, ids[0], "succeeded");
    long long finished = h_json_num(rec, "finished_at_us");
    assert_true(finished > 0 && (uint64_t)finished > got_response);
    free(rec);
    h_rm_rf(dir);
}

/* ---- several tasks per response ----------------------------------------------------- */

static void tasks_http_sequential_runs_in_attach_order(void **state)
{
    (void)state;
    unsigned long long ids[8];
    size_t n;
    long long prev_finished = 0;

    assert_int_equal(get_tasks(&app, "/steps?n=4", ids, 8, &n), 200);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++) {
        char *rec = wait_state(&app, ids[i], "succeeded");
        h_assert_contains(rec, "\"mode\":\"sequential\"");
        long long started = h_json_num(rec, "started_at_us");
        long long finished = h_json_num(rec, "finished_at_us");
        /* each starts only after the one before it finished */
        assert_true(started > 0 && started >= prev_finished);
        assert_true(finished >= started);
        prev_finished = finished;
        free(rec);
    }
}

static void tasks_http_sequential_failure_skips_the_rest(void **state)
{
    (void)state;
    unsigned long long ids[8];
    size_t n;
    char *rec, err[128], expect[64];

    assert_int_equal(get_tasks(&app, "/steps?n=4&fail=2", ids, 8, &n), 200);
    assert_int_equal(n, 4);
    rec = wait_state(&app, ids[3], "skipped");
    free(rec);
    rec = wait_state(&app, ids[0], "succeeded");
    free(rec);
    rec = wait_state(&app, ids[1], "failed");
    assert_int_equal(h_json_num(rec, "attempts"), 1);
    assert_int_equal(h_json_str(rec, "error", err, sizeof err), 0);
    assert_string_equal(err, "step 2 fails on purpose");
    free(rec);
    snprintf(expect, sizeof expect, "previous task %llu", ids[1]);
    for (size_t i = 2; i < 4; i++) {
        rec = wait_state(&app, ids[i], "skipped");
        assert_int_equal(h_json_num(rec, "attempts"), 0);
        assert_int_equal(h_json_num(rec, "started_at_us"), -1); /* null: never ran */
        assert_int_equal(h_json_str(rec, "error", err, sizeof err), 0);
        h_assert_contains(err, expect);
        free(rec);
    }
}

static void tasks_http_concurrent_failure_is_independent(void **state)
{
    (void)state;
    unsigned long long ids[8];
    size_t n;

    assert_int_equal(get_tasks(&app, "/steps?n=4&fail=2&mode=concurrent", ids, 8, &n), 200);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++) {
        char *rec = wait_state(&app, ids[i], i == 1 ? "failed" : "succeeded");
        h_assert_contains(rec, "\"mode\":\"concurrent\"");
        free(rec);
    }
}

/* One group per response (docs/tasks.md): the route's own task first,
 * then the handler's, one sequence; Bgserve-Tasks lists them so. */
static void tasks_http_route_tasks_run_before_handler_tasks(void **state)
{
    (void)state;
    unsigned long long ids[8];
    size_t n;
    long long prev_finished = 0;

    assert_int_equal(get_tasks(&app, "/mixed?n=2", ids, 8, &n), 200);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        char *rec = wait_state(&app, ids[i], "succeeded");
        h_assert_contains(rec, "\"mode\":\"sequential\"");
        /* the route's payload is "r1", the handler's "1" and "2" */
        assert_int_equal(h_json_num(rec, "payload_bytes"), i == 0 ? 2 : 1);
        long long started = h_json_num(rec, "started_at_us");
        assert_true(started > 0 && started >= prev_finished);
        prev_finished = h_json_num(rec, "finished_at_us");
        free(rec);
    }
}

/* In sequential mode a failing task skips the rest, whichever kind: the
 * route's failing task skips the handler's, and a failing handler task
 * skips the handler's after it once the route's has run. */
static void tasks_http_failure_skips_across_route_and_handler(void **state)
{
    (void)state;
    unsigned long long ids[8];
    size_t n;
    char *rec, err[128], expect[64];

    assert_int_equal(get_tasks(&app, "/mixed-fail?n=2", ids, 8, &n), 200);
    assert_int_equal(n, 3);
    rec = wait_state(&app, ids[0], "failed");
    assert_int_equal(h_json_str(rec, "error", err, sizeof err), 0);
    assert_string_equal(err, "step r fails on purpose");
    free(rec);
    snprintf(expect, sizeof expect, "previous task %llu", ids[0]);
    for (size_t i = 1; i < n; i++) {
        rec = wait_state(&app, ids[i], "skipped");
        assert_int_equal(h_json_num(rec, "attempts"), 0);
        assert_int_equal(h_json_str(rec, "error", err, sizeof err), 0);
        h_assert_contains(err, expect);
        free(rec);
    }

    assert_int_equal(get_tasks(&app, "/mixed?n=3&fail=1", ids, 8, &n), 200);
    assert_int_equal(n, 4);
    free(wait_state(&app, ids[0], "succeeded"));
    free(wait_state(&app, ids[1], "failed"));
    free(wait_state(&app, ids[2], "skipped"));
    free(wait_state(&app, ids[3], "skipped"));
}

/* The route's task_mode is the group's: concurrent, so the route's
 * failing task leaves the handler's alone. */
static void tasks_http_concurrent_route_mode_covers_handler_tasks(void **state)
{
    (void)state;
    unsigned long long ids[8];
    size_t n;

    assert_int_equal(get_tasks(&app, "/mixed-concurrent?n=2", ids, 8, &n), 200);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++) {
        char *rec = wait_state(&app, ids[i], i == 0 ? "failed" : "succeeded");
        h_assert_contains(rec, "\"mode\":\"concurrent\"");
        free(rec);
    }
}

static void tasks_http_thousand_requests_two_tasks_each(void **state)
{
    (void)state;
    unsigned long long ids[4];
    size_t n;

    for (int i = 0; i < 1000; i++) {
        assert_int_equal(get_tasks(&app, "/pair", ids, 4, &n), 200);
        assert_int_equal(n, 2);
    }
    wait_stat(&app, "pair", "succeeded", 2000);
    assert_int_equal(h_stat(&app, "pair", "failed"), 0);
    assert_int_equal(h_stat(&app, "pair", "discarded"), 0);
    assert_int_equal(h_stat(&app, "pair", "skipped"), 0);
    assert_int_equal(h_stat(&app, "pair", "cancelled"), 0);
    assert_int_equal(h_stat(&app, "pair", "queued"), 0);
    assert_int_equal(h_stat(&app, "pair", "running"), 0);
}

/* The same stream under no linger (a wake-up per response), under the
 * longest (tasks wait for company up to 100 ms) and under the adaptive
 * one (the default, said explicitly): every task runs, and the stats say
 * which linger the server uses and the bound it keeps. */
static void tasks_http_linger_extremes_lose_nothing(void **state)
{
    (void)state;
    static const char *const lingers[] = {"0", "100000", "adaptive"};
    for (size_t l = 0; l < sizeof lingers / sizeof lingers[0]; l++) {
        const char *const args[] = {"--quiet", "--linger", lingers[l], NULL};
        h_server s;
        h_resp r;
        unsigned long long ids[4];
        size_t n;

        assert_int_equal(start_app(&s, args, NULL), 0);
        for (int i = 0; i < 300; i++) {
            assert_int_equal(get_tasks(&s, "/pair", ids, 4, &n), 200);
            assert_int_equal(n, 2);
        }
        wait_stat(&s, "pair", "succeeded", 600);
        assert_int_equal(h_stat(&s, "pair", "failed"), 0);
        assert_int_equal(h_stat(&s, "pair", "queued"), 0);
        assert_int_equal(h_get(&s, "/_bgserve/stats", &r), 0);
        const char *qstats = strstr(r.body, "\"queue\":{");
        if (strcmp(lingers[l], "adaptive") == 0) {
            h_assert_contains(qstats, "\"linger_mode\":\"adaptive\"");
            assert_true(h_json_num(qstats, "linger_us") <= PACE_MAX_US);
            assert_int_equal(h_json_num(qstats, "linger_bound_us"),
                             queue_linger_bound_us(PACE_MAX_US));
        } else {
            h_assert_contains(qstats, "\"linger_mode\":\"fixed\"");
            assert_int_equal(h_json_num(qstats, "linger_us"), atoll(lingers[l]));
            assert_int_equal(h_json_num(qstats, "linger_bound_us"),
                             queue_linger_bound_us((unsigned)atoll(lingers[l])));
        }
        h_resp_free(&r);
        assert_int_equal(h_stop(&s, SIGTERM), 0);
        h_free(&s);
    }
}

/* ---- inline runs ------------------------------------------------------------------- */

/* GET /nap?name=NAME&us=US n times: one task each. */
static void naps(h_server *s, const char *name, const char *us, int n)
{
    char path[96];
    unsigned long long ids[4];
    size_t k;
    snprintf(path, sizeof path, "/nap?name=%s&us=%s", name, us);
    for (int i = 0; i < n; i++) {
        assert_int_equal(get_tasks(s, path, ids, 4, &k), 200);
        assert_int_equal(k, 1);
    }
}

/* Brief naps until some ran inline; returns how many were sent. */
static int naps_until_inline(h_server *s, const char *name)
{
    int sent = 0;
    long long before = h_stat(s, name, "inline_runs");
    while (h_stat(s, name, "inline_runs") == before && sent < 3000) {
        naps(s, name, "0", 10);
        sent += 10;
    }
    assert_true(h_stat(s, name, "inline_runs") > before);
    return sent;
}

/* A task whose runs are brief runs on the HTTP thread once 32 of them
 * ended (docs/tasks.md, "Inline runs"): never before, and each still
 * gets its record and its counts. */
static void tasks_http_brief_tasks_run_inline(void **state)
{
    (void)state;
    unsigned long long ids[4];
    size_t n;
    h_resp r;

    int sent = naps_until_inline(&app, "nap");
    wait_stat(&app, "nap", "succeeded", sent);
    long long inl = h_stat(&app, "nap", "inline_runs");
    assert_true(inl <= sent - 32);
    assert_int_equal(h_stat(&app, "nap", "failed"), 0);

    assert_int_equal(get_tasks(&app, "/nap?name=nap&us=0", ids, 4, &n), 200);
    assert_int_equal(n, 1);
    char *rec = wait_state(&app, ids[0], "succeeded");
    assert_int_equal(h_json_num(rec, "attempts"), 1);
    free(rec);

    assert_int_equal(h_get(&app, "/_bgserve/stats", &r), 0);
    const char *qstats = strstr(r.body, "\"queue\":{");
    assert_non_null(qstats);
    assert_int_equal(h_json_num(qstats, "inline_us"), 50);
    assert_true(h_json_num(qstats, "inline_runs") >= inl);
    h_resp_free(&r);
}

/* Runs over the bound (200 us against 50) keep a task on the workers;
 * so does BGS_TASK_NO_INLINE, however brief its runs. */
static void tasks_http_slow_tasks_stay_on_workers(void **state)
{
    (void)state;
    naps(&app, "nap_slow", "200", 60);
    wait_stat(&app, "nap_slow", "succeeded", 60);
    assert_int_equal(h_stat(&app, "nap_slow", "inline_runs"), 0);
    naps(&app, "nap_never", "0", 100);
    wait_stat(&app, "nap_never", "succeeded", 100);
    assert_int_equal(h_stat(&app, "nap_never", "inline_runs"), 0);
}

/* An inline run that holds its HTTP thread (20 ms) is logged with what
 * to do, and sends the next runs back to the workers. */
static void tasks_http_inline_stall_is_logged(void **state)
{
    (void)state;
    int sent = 0, stalled = 0;
    for (int tries = 0; tries < 20 && !stalled; tries++) {
        sent += naps_until_inline(&app, "nap_stall");
        wait_stat(&app, "nap_stall", "succeeded", sent);
        long long before = h_stat(&app, "nap_stall", "inline_runs");
        naps(&app, "nap_stall", "20000", 1);
        sent++;
        wait_stat(&app, "nap_stall", "succeeded", sent);
        stalled = h_stat(&app, "nap_stall", "inline_runs") > before;
    }
    assert_true(stalled);
    assert_true(h_wait_log(&app, "(nap_stall) ran ", DEADLINE_MS));
    char line[1024];
    assert_int_equal(h_line_with(app.log, "(nap_stall) ran ", line, sizeof line), 0);
    h_assert_contains(line, "on an HTTP thread");
    h_assert_contains(line, "--inline-tasks 0");
    h_assert_contains(line, "Its next runs go to the workers");

    long long after = h_stat(&app, "nap_stall", "inline_runs");
    naps(&app, "nap_stall", "0", 20);
    wait_stat(&app, "nap_stall", "succeeded", sent + 20);
    assert_int_equal(h_stat(&app, "nap_stall", "inline_runs"), after);
}

/* --inline-tasks 0: every task runs on the workers. */
static void tasks_http_inline_tasks_off(void **state)
{
    (void)state;
    const char *const args[] = {"--quiet", "--inline-tasks", "0", NULL};
    h_server s;
    h_resp r;

    assert_int_equal(start_app(&s, args, NULL), 0);
    naps(&s, "nap_off", "0", 100);
    wait_stat(&s, "nap_off", "succeeded", 100);
    assert_int_equal(h_stat(&s, "nap_off", "inline_runs"), 0);
    assert_int_equal(h_get(&s, "/_bgserve/stats", &r), 0);
    const char *qstats = strstr(r.body, "\"queue\":{");
    assert_non_null(qstats);
    assert_int_equal(h_json_num(qstats, "inline_us"), 0);
    assert_int_equal(h_json_num(qstats, "inline_runs"), 0);
    h_resp_free(&r);
    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
}

/* ---- retries ------------------------------------------------------------------------ */

static void tasks_http_retries_until_success(void **state)
{
    (void)state;
    unsigned long long ids[4];
    size_t n;

    assert_int_equal(get_tasks(&app, "/flaky", ids, 4, &n), 200);
    assert_int_equal(n, 1);
    char *rec = wait_state(&app, ids[0], "succeeded");
    assert_int_equal(h_json_num(rec, "attempts"), 3);
    assert_int_equal(h_json_num(rec, "max_attempts"), 3);
    free(rec);
    assert_int_equal(h_stat(&app, "flaky", "retried"), 2);
    assert_int_equal(h_stat(&app, "flaky", "succeeded"), 1);
    assert_int_equal(h_stat(&app, "flaky", "failed"), 0);
    assert_true(h_wait_log(&app, "attempt 2 fails on purpose", DEADLINE_MS));
}

/* ---- backpressure ------------------------------------------------------------------- */

static void tasks_http_full_queue_answers_503(void **state)
{
    (void)state;
    static char dir[64], release[96], env_release[128];
    const char *const args[] = {"--queue", "2", "--workers", "1", NULL};
    h_server s;
    h_resp r;
    unsigned long long ids[4], accepted[3];
    size_t n;

    snprintf(dir, sizeof dir, "/tmp/bgserve-full-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(release, sizeof release, "%s/release", dir);
    snprintf(env_release, sizeof env_release, "BGSERVE_RELEASE_FILE=%s", release);
    const char *const env[] = {env_release, NULL};
    assert_int_equal(start_app(&s, args, env), 0);

    /* one running (blocked), one waiting: the queue holds 2.  Which of
     * the two runs is not fixed: a client can have its response (and send
     * the next request) before libmicrohttpd reports the first request
     * completed, and tasks are submitted only at that report. */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(get_tasks(&s, "/block", ids, 4, &n), 200);
        assert_int_equal(n, 1);
        accepted[i] = ids[0];
    }
    wait_stat(&s, "blocker", "running", 1);
    wait_stat(&s, "blocker", "queued", 1);
    char *rec;

    /* the handler sees BGS_EFULL and answers the 503 it chose */
    assert_int_equal(h_get(&s, "/block", &r), 0);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "tasks_app: the queue is full, come back later");
    assert_null(h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);

    /* a route-level task that does not fit answers 503 before the
     * handler runs: its side effect (a call counter) never happens */
    assert_int_equal(h_get(&s, "/route-block", &r), 0);
    assert_int_equal(r.status, 503);
    assert_non_null(h_header(&r, "Retry-After"));
    assert_true(atoi(h_header(&r, "Retry-After")) >= 1);
    assert_null(h_header(&r, "Bgserve-Tasks"));
    assert_string_equal(r.body, "Service Unavailable: the task queue is full, retry later\n");
    h_resp_free(&r);
    assert_true(h_wait_log(&s, "GET /route-block: route tasks not accepted: the task queue is "
                               "full; raise --queue", DEADLINE_MS));
    assert_int_equal(h_get(&s, "/route-block-calls", &r), 0);
    assert_string_equal(r.body, "0");
    h_resp_free(&r);

    assert_int_equal(h_get(&s, "/_bgserve/stats", &r), 0);
    assert_int_equal(h_json_num(strstr(r.body, "\"queue\":{"), "capacity"), 2);
    h_resp_free(&r);

    int fd = open(release, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    close(fd);
    for (int i = 0; i < 2; i++) {
        rec = wait_state(&s, accepted[i], "succeeded");
        free(rec);
    }
    /* capacity is back: both kinds of attach work again */
    assert_int_equal(get_tasks(&s, "/block", ids, 4, &n), 200);
    accepted[2] = ids[0];
    rec = wait_state(&s, accepted[2], "succeeded");
    free(rec);
    assert_int_equal(get_tasks(&s, "/route-block", ids, 4, &n), 200);
    assert_int_equal(n, 1);
    rec = wait_state(&s, ids[0], "succeeded");
    free(rec);

    /* nothing accepted was lost */
    wait_stat(&s, "blocker", "succeeded", 4);
    assert_int_equal(h_stat(&s, "blocker", "failed"), 0);
    assert_int_equal(h_stat(&s, "blocker", "cancelled"), 0);

    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
    unlink(release);
    rmdir(dir);
}

/* ---- discards ----------------------------------------------------------------------- */

static void tasks_http_handler_failure_discards(void **state)
{
    (void)state;
    h_resp r;
    char err[64], *rec;

    assert_int_equal(h_get(&app, "/fail", &r), 0);
    assert_int_equal(r.status, 500);
    assert_null(h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);
    unsigned long long id = id_from_log(&app, "doomed", "discarded");
    assert_int_equal(record(&app, id, &rec), 200);
    h_assert_contains(rec, "\"state\":\"discarded\"");
    h_assert_contains(rec, "\"name\":\"doomed\"");
    assert_int_equal(h_json_num(rec, "attempts"), 0);
    assert_int_equal(h_json_str(rec, "error", err, sizeof err), 0);
    h_assert_contains(err, "handler failed");
    free(rec);
    assert_int_equal(h_stat(&app, "doomed", "succeeded"), 0);
}

/* Route-level tasks run after any response the handler produced (a 404
 * it chose too), not after a failing handler's 500. */
static void tasks_http_route_tasks_follow_any_produced_response(void **state)
{
    (void)state;
    h_server *s = &app;
    h_resp r;
    unsigned long long ids[4];
    size_t n = 0;
    assert_int_equal(get_tasks(s, "/route-404", ids, 4, &n), 404);
    assert_int_equal(n, 1);
    char *rec = wait_state(s, ids[0], "succeeded");
    h_assert_contains(rec, "route_after_4xx");
    free(rec);

    assert_int_equal(h_get(s, "/route-fail", &r), 0);
    assert_int_equal(r.status, 500);
    assert_null(h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);
    wait_stat(s, "route_after_fail", "discarded", 1);
    assert_int_equal(h_stat(s, "route_after_fail", "succeeded"), 0);
}

static void tasks_http_head_runs_no_tasks(void **state)
{
    (void)state;
    h_resp r;
    char err[96], *rec;

    assert_int_equal(h_http(&app, "HEAD", "/head-probe", NULL, 0, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    h_resp_free(&r);
    unsigned long long id = id_from_log(&app, "on_get", "discarded");
    assert_int_equal(record(&app, id, &rec), 200);
    h_assert_contains(rec, "\"state\":\"discarded\"");
    assert_int_equal(h_json_str(rec, "error", err, sizeof err), 0);
    h_assert_contains(err, "HEAD");
    free(rec);
    assert_int_equal(h_stat(&app, "on_get", "succeeded"), 0);

    /* the same route by GET does run it */
    unsigned long long ids[4];
    size_t n;
    assert_int_equal(get_tasks(&app, "/head-probe", ids, 4, &n), 200);
    assert_int_equal(n, 1);
    rec = wait_state(&app, ids[0], "succeeded");
    free(rec);
}

/* ---- introspection ------------------------------------------------------------------ */

static void tasks_http_stats_shape(void **state)
{
    (void)state;
    unsigned long long ids[4];
    size_t n;
    h_resp r;

    assert_int_equal(get_tasks(&app, "/steps?n=1", ids, 4, &n), 200);
    free(wait_state(&app, ids[0], "succeeded"));

    assert_int_equal(h_get(&app, "/_bgserve/stats", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(h_header(&r, "Content-Type"), "application/json");
    assert_int_equal(r.body[0], '{');
    h_assert_contains(r.body, "\"tasks\":{");
    const char *qstats = strstr(r.body, "\"queue\":{");
    const char *workers = strstr(r.body, "\"workers\":{");
    assert_non_null(qstats);
    assert_non_null(workers);
    assert_true(h_json_num(qstats, "depth") >= 0);
    assert_true(h_json_num(qstats, "capacity") > 0);
    assert_true(h_json_num(qstats, "wakeups") >= 0);
    /* The default: the linger follows the load, within its bound. */
    h_assert_contains(qstats, "\"linger_mode\":\"adaptive\"");
    assert_true(h_json_num(qstats, "linger_us") <= PACE_MAX_US);
    assert_true(h_json_num(qstats, "linger_bound_us") > 0);
    /* and what it follows: the push rate and its experiments */
    assert_true(h_json_num(qstats, "pushes_per_s") >= 0);
    assert_true(h_json_num(qstats, "linger_probes_kept") >= 0);
    assert_true(h_json_num(qstats, "linger_probes_kept") <= h_json_num(qstats, "linger_probes"));
    assert_true(h_json_num(workers, "busy") >= 0);
    assert_true(h_json_num(workers, "total") > 0);
    assert_true(h_json_num(r.body, "requests") > 0);
    assert_true(h_json_num(r.body, "uptime_s") >= 0);
    static const char *const keys[] = {"queued", "running", "succeeded", "failed",
                                       "retried", "skipped", "discarded"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        assert_true(h_json_obj_num(r.body, "step", keys[i]) >= 0);
    assert_true(h_json_obj_num(r.body, "step", "succeeded") >= 1);

    /* Reading the stats is not a request to the plugin: it counts apart. */
    long long req1 = h_json_num(r.body, "requests");
    long long intro1 = h_json_num(r.body, "introspection_requests");
    assert_true(intro1 >= 1);
    h_resp_free(&r);
    assert_int_equal(h_get(&app, "/_bgserve/stats", &r), 0);
    assert_int_equal(h_json_num(r.body, "requests"), req1);
    assert_int_equal(h_json_num(r.body, "introspection_requests"), intro1 + 1);
    h_resp_free(&r);
}

static void tasks_http_record_shape_and_unknown_id(void **state)
{
    (void)state;
    h_resp r;
    char rid[64], buf[64], *rec;

    assert_int_equal(h_get(&app, "/steps?n=1", &r), 0);
    assert_int_equal(r.status, 200);
    snprintf(rid, sizeof rid, "%s", h_header(&r, "X-Request-Id"));
    unsigned long long id = strtoull(h_header(&r, "Bgserve-Tasks"), NULL, 10);
    h_resp_free(&r);

    rec = wait_state(&app, id, "succeeded");
    assert_int_equal(h_json_num(rec, "id"), (long long)id);
    assert_int_equal(h_json_str(rec, "name", buf, sizeof buf), 0);
    assert_string_equal(buf, "step");
    assert_int_equal(h_json_num(rec, "attempts"), 1);
    static const char *const times[] = {"created_at", "started_at", "finished_at"};
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(h_json_str(rec, times[i], buf, sizeof buf), 0);
    h_assert_contains(rec, "\"error\":");
    assert_int_equal(h_json_str(rec, "request_id", buf, sizeof buf), 0);
    assert_string_equal(buf, rid);
    free(rec);

    assert_int_equal(record(&app, 999999999ull, &rec), 404);
    free(rec);
    assert_int_equal(h_get(&app, "/_bgserve/tasks/abc", &r), 0);
    assert_int_equal(r.status, 404);
    h_resp_free(&r);
}

static void tasks_http_no_introspection(void **state)
{
    (void)state;
    const char *const args[] = {"--no-introspection", NULL};
    h_server s;
    h_resp r;

    assert_int_equal(start_app(&s, args, NULL), 0);
    assert_int_equal(h_get(&s, "/_bgserve/stats", &r), 0);
    assert_int_equal(r.status, 404);
    h_resp_free(&r);
    assert_int_equal(h_get(&s, "/pair", &r), 0);
    assert_int_equal(r.status, 200);
    assert_null(h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);
    /* the tasks still run */
    assert_true(h_wait_log(&s, " pair done", DEADLINE_MS));
    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
}

/* ---- shutdown drain ----------------------------------------------------------------- */

static void tasks_http_drain_cancels_a_long_task(void **state)
{
    (void)state;
    const char *const args[] = {"--drain-timeout", "0.5", NULL};
    h_server s;
    unsigned long long ids[4];
    size_t n;
    char needle[96];

    assert_int_equal(start_app(&s, args, NULL), 0);
    assert_int_equal(get_tasks(&s, "/long", ids, 4, &n), 200);
    assert_int_equal(n, 1);
    snprintf(needle, sizeof needle, "task %llu long start", ids[0]);
    assert_true(h_wait_log(&s, needle, DEADLINE_MS));

    assert_int_equal(h_stop(&s, SIGTERM), 3); /* a task was cancelled */
    h_assert_contains(s.log, "drain: 0 tasks finished, 1 did not");
    snprintf(needle, sizeof needle, "  task %llu long running", ids[0]);
    const char *line = strstr(s.log, needle);
    assert_non_null(line);
    const char *eol = strchr(line, '\n');
    assert_non_null(eol);
    char copy[512];
    snprintf(copy, sizeof copy, "%.*s", (int)(eol - line), line);
    h_assert_contains(copy, "cancelled");
    snprintf(needle, sizeof needle, "task %llu long cancelled", ids[0]);
    h_assert_contains(s.log, needle);
    h_free(&s);
}

static void tasks_http_drain_lets_short_tasks_finish(void **state)
{
    (void)state;
    static char dir[64], release[96], env_release[128];
    const char *const args[] = {"--drain-timeout", "30", NULL};
    h_server s;
    unsigned long long ids[3], one[4];
    size_t n;
    char needle[96];

    snprintf(dir, sizeof dir, "/tmp/bgserve-drain-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(release, sizeof release, "%s/release", dir);
    snprintf(env_release, sizeof env_release, "BGSERVE_RELEASE_FILE=%s", release);
    const char *const env[] = {env_release, NULL};
    assert_int_equal(start_app(&s, args, env), 0);

    for (int i = 0; i < 3; i++) {
        assert_int_equal(get_tasks(&s, "/block", one, 4, &n), 200);
        assert_int_equal(n, 1);
        ids[i] = one[0];
    }
    /* The tasks are blocked until the release file exists, so they are
     * all unfinished when the stop begins. */
    assert_int_equal(kill(s.pid, SIGTERM), 0);
    assert_true(h_wait_log(&s, "SIGTERM: stopping", DEADLINE_MS));
    int fd = open(release, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    close(fd);

    assert_int_equal(h_stop(&s, 0), 0); /* signal 0: just wait for the exit */
    h_assert_contains(s.log, "tasks finished, 0 did not");
    for (int i = 0; i < 3; i++) {
        snprintf(needle, sizeof needle, "task %llu blocker done", ids[i]);
        h_assert_contains(s.log, needle);
    }
    h_free(&s);
    unlink(release);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tasks_http_slow_reader_task_starts_after_last_byte),
        cmocka_unit_test(tasks_http_response_arrives_while_task_runs),
        cmocka_unit_test(tasks_http_sequential_runs_in_attach_order),
        cmocka_unit_test(tasks_http_sequential_failure_skips_the_rest),
        cmocka_unit_test(tasks_http_concurrent_failure_is_independent),
        cmocka_unit_test(tasks_http_route_tasks_run_before_handler_tasks),
        cmocka_unit_test(tasks_http_failure_skips_across_route_and_handler),
        cmocka_unit_test(tasks_http_concurrent_route_mode_covers_handler_tasks),
        cmocka_unit_test(tasks_http_thousand_requests_two_tasks_each),
        cmocka_unit_test(tasks_http_linger_extremes_lose_nothing),
        cmocka_unit_test(tasks_http_brief_tasks_run_inline),
        cmocka_unit_test(tasks_http_slow_tasks_stay_on_workers),
        cmocka_unit_test(tasks_http_inline_stall_is_logged),
        cmocka_unit_test(tasks_http_inline_tasks_off),
        cmocka_unit_test(tasks_http_retries_until_success),
        cmocka_unit_test(tasks_http_full_queue_answers_503),
        cmocka_unit_test(tasks_http_handler_failure_discards),
        cmocka_unit_test(tasks_http_route_tasks_follow_any_produced_response),
        cmocka_unit_test(tasks_http_head_runs_no_tasks),
        cmocka_unit_test(tasks_http_stats_shape),
        cmocka_unit_test(tasks_http_record_shape_and_unknown_id),
        cmocka_unit_test(tasks_http_no_introspection),
        cmocka_unit_test(tasks_http_drain_cancels_a_long_task),
        cmocka_unit_test(tasks_http_drain_lets_short_tasks_finish),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
