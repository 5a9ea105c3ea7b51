/*
 * test_hostile.c - hostile clients on loopback against the real server
 * (tests/fixtures/hostile_app.so, started with small limits): slow
 * headers holding many connections, oversized request lines and headers,
 * a body over --max-body, 1000 idle keep-alive connections, malformed
 * request lines, pipelining, invalid percent-encoding, the request heads
 * libmicrohttpd 0.9.75 lets through (no Host, a NUL in the target, an
 * invalid Content-Length) and clients that vanish mid-response.  After each, a normal request (which attaches a
 * task) is answered, and /_bgserve/stats shows no task failed, discarded
 * or cancelled once the queue is empty: nothing was lost.
 * Counts are bounded and every wait polls with a deadline.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TIMEOUT_S "2"      /* the server's idle timeout */
#define MAX_BODY 1024
#define IDLE_CONNS 1000

static h_server srv;

/* ---- raw sockets ------------------------------------------------------------ */

static int conn_open(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)srv.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

static void send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* the server may close on us: that is the point */
        p += n;
        len -= (size_t)n;
    }
}

static void send_str(int fd, const char *s)
{
    send_all(fd, s, strlen(s));
}

/* Read into buf (NUL-terminated) until EOF, `want` occurrences of
 * "HTTP/1.1 " have arrived with their bodies, or the deadline.  Returns
 * 1 when the peer closed (EOF or reset), 0 otherwise. */
static int read_some(int fd, char *buf, size_t cap, size_t *len, int want, unsigned deadline_ms)
{
    uint64_t end = h_now_ms() + deadline_ms;
    *len = 0;
    buf[0] = '\0';
    for (;;) {
        if (want > 0) {
            /* count complete responses: header end + Content-Length */
            int complete = 0;
            const char *p = buf;
            for (;;) {
                const char *h = strstr(p, "HTTP/1.1 ");
                const char *e = h ? strstr(h, "\r\n\r\n") : NULL;
                if (e == NULL)
                    break;
                const char *cl = strstr(h, "Content-Length: ");
                size_t blen = cl && cl < e ? strtoul(cl + 16, NULL, 10) : 0;
                if ((size_t)(e + 4 - buf) + blen > *len)
                    break;
                complete++;
                p = e + 4 + blen;
            }
            if (complete >= want)
                return 0;
        }
        uint64_t now = h_now_ms();
        if (now >= end)
            return 0;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)(end - now)) <= 0)
            continue;
        if (*len + 1 >= cap) {
            char scratch[4096]; /* buffer full: keep draining, drop it */
            ssize_t n = recv(fd, scratch, sizeof scratch, 0);
            if (n <= 0)
                return 1;
            continue;
        }
        ssize_t n = recv(fd, buf + *len, cap - *len - 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 1;
        *len += (size_t)n;
        buf[*len] = '\0';
    }
}

/* Status of the first response in buf, 0 if none. */
static int status_of(const char *buf)
{
    const char *h = strstr(buf, "HTTP/1.");
    return h ? atoi(h + 9) : 0;
}

/* ---- the server's health -------------------------------------------------------- */

/* Value of "key":N inside the "noop" object of the stats, or -1. */
static long long stat_of(const char *body, const char *key)
{
    return h_json_obj_num(body, "noop", key);
}

static int queue_empty(void *arg)
{
    (void)arg;
    h_resp r;
    int ok = h_get(&srv, "/_bgserve/stats", &r) == 0 && r.status == 200 &&
             stat_of(r.body, "queued") == 0 && stat_of(r.body, "running") == 0;
    h_resp_free(&r);
    return ok;
}

/* A normal request (with a task) is answered, and no task was lost. */
static void assert_healthy(void)
{
    h_resp r;
    assert_int_equal(h_get(&srv, "/task", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok");
    assert_non_null(h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);
    assert_true(h_poll(queue_empty, NULL, 15000));
    assert_int_equal(h_get(&srv, "/_bgserve/stats", &r), 0);
    assert_int_equal(r.status, 200);
    assert_true(stat_of(r.body, "succeeded") >= 1);
    assert_int_equal(stat_of(r.body, "failed"), 0);
    assert_int_equal(stat_of(r.body, "discarded"), 0);
    assert_int_equal(stat_of(r.body, "cancelled"), 0);
    h_resp_free(&r);
}

/* assert_healthy, and exactly `more` tasks besides its own one ran since
 * the noop task had `before` successes. */
static void assert_healthy_with(long long before, long long more)
{
    assert_true(before >= 0);
    assert_healthy();
    assert_int_equal(h_stat(&srv, "noop", "succeeded"), before + more + 1);
}

static int setup(void **state)
{
    (void)state;
    /* 1000 client sockets plus the server's own: raise the soft limit
     * (the child inherits it). */
    h_raise_fd_limit(4096);
    static const char *const args[] = {"--timeout", TIMEOUT_S, "--max-connections", "1100",
                                       "--max-body", "1024", "--quiet", NULL};
    return h_start_app(&srv, h_build_path("tests/fixtures/hostile_app.so"), args, NULL) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    h_free(&srv); /* kills the server only when a test failed before the last one */
    return 0;
}

/* ---- the clients ------------------------------------------------------------------ */

static void hostile_slow_headers_time_out(void **state)
{
    (void)state;
    enum { N = 100 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = conn_open();
        send_str(fds[i], "GET /task HTTP/1.1\r\nHost: x\r\nX-Slow: "); /* never finished */
    }
    /* Others are still served while the slow ones hold their connections. */
    for (int i = 0; i < 5; i++) {
        h_resp r;
        assert_int_equal(h_get(&srv, "/task", &r), 0);
        assert_int_equal(r.status, 200);
        h_resp_free(&r);
    }
    /* Each slow connection is closed by the server's idle timeout. */
    char buf[1024];
    size_t len;
    for (int i = 0; i < N; i++) {
        assert_int_equal(read_some(fds[i], buf, sizeof buf, &len, 0, 20000), 1);
        close(fds[i]);
    }
    assert_healthy();
}

static void hostile_oversized_request_line_refused(void **state)
{
    (void)state;
    size_t n = 256 * 1024;
    char *line = malloc(n + 64);
    assert_non_null(line);
    strcpy(line, "GET /");
    memset(line + 5, 'a', n);
    strcpy(line + 5 + n, " HTTP/1.1\r\nHost: x\r\n\r\n");
    int fd = conn_open();
    send_all(fd, line, strlen(line));
    char buf[4096];
    size_t len;
    /* refused with 414, then closed */
    assert_int_equal(read_some(fd, buf, sizeof buf, &len, 0, 15000), 1);
    assert_int_equal(status_of(buf), 414);
    close(fd);
    free(line);
    assert_healthy();
}

static void hostile_oversized_headers_refused(void **state)
{
    (void)state;
    size_t cap = 300 * 1024, off = 0;
    char *req = malloc(cap);
    assert_non_null(req);
    off += (size_t)snprintf(req, cap, "GET /task HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; off + 200 < cap - 8; i++)
        off += (size_t)snprintf(req + off, cap - off, "X-Header-%d: %0150d\r\n", i, i);
    memcpy(req + off, "\r\n", 3);
    int fd = conn_open();
    send_all(fd, req, strlen(req));
    char buf[4096];
    size_t len;
    assert_int_equal(read_some(fd, buf, sizeof buf, &len, 0, 15000), 1);
    assert_int_equal(status_of(buf), 431);
    close(fd);
    free(req);
    assert_healthy();
}

static void hostile_body_over_max_is_413_and_closed(void **state)
{
    (void)state;
    char body[4 * MAX_BODY];
    memset(body, 'b', sizeof body);
    char head[256];
    snprintf(head, sizeof head,
             "POST /task HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", sizeof body);
    int fd = conn_open();
    send_str(fd, head);
    send_all(fd, body, sizeof body);
    char buf[8192];
    size_t len;
    assert_int_equal(read_some(fd, buf, sizeof buf, &len, 0, 15000), 1); /* closed */
    assert_int_equal(status_of(buf), 413);
    h_assert_contains(buf, "Connection: close");
    close(fd);

    /* chunked, with no length announced: counted as it arrives */
    fd = conn_open();
    send_str(fd, "POST /task HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 4; i++) {
        char chunk[MAX_BODY + 16];
        int h = snprintf(chunk, sizeof chunk, "%x\r\n", MAX_BODY);
        memset(chunk + h, 'c', MAX_BODY);
        memcpy(chunk + h + MAX_BODY, "\r\n", 2);
        send_all(fd, chunk, (size_t)h + MAX_BODY + 2);
    }
    send_str(fd, "0\r\n\r\n");
    assert_int_equal(read_some(fd, buf, sizeof buf, &len, 0, 15000), 1);
    assert_int_equal(status_of(buf), 413);
    close(fd);
    assert_healthy();
}

static void hostile_thousand_idle_keepalive_connections(void **state)
{
    (void)state;
    int *fds = calloc(IDLE_CONNS, sizeof *fds);
    assert_non_null(fds);
    char buf[2048];
    size_t len;
    for (int i = 0; i < IDLE_CONNS; i++) {
        fds[i] = conn_open();
        send_str(fds[i], "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        read_some(fds[i], buf, sizeof buf, &len, 1, 15000);
        assert_int_equal(status_of(buf), 200); /* answered, and kept alive */
    }
    /* A kept-alive connection still works: the last one opened, since
     * the first may have been idle past the --timeout of 2 s already
     * (opening 1000 takes that long under ThreadSanitizer on a busy
     * machine). */
    int last = fds[IDLE_CONNS - 1];
    send_str(last, "GET /task HTTP/1.1\r\nHost: x\r\n\r\n");
    read_some(last, buf, sizeof buf, &len, 1, 15000);
    assert_int_equal(status_of(buf), 200);
    /* With 1000 connections open: a new client is still served. */
    h_resp r;
    assert_int_equal(h_get(&srv, "/", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    /* Then the timeout closes them all. */
    for (int i = 0; i < IDLE_CONNS; i++) {
        assert_int_equal(read_some(fds[i], buf, sizeof buf, &len, 0, 30000), 1);
        close(fds[i]);
    }
    free(fds);
    assert_healthy();
}

static void hostile_malformed_request_lines(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "GARBAGE\r\n\r\n",
        "GET\r\n\r\n",
        "GET /\r\n\r\n",
        "GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nThis header has no colon\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "\x01\x02\x03\xff\xfe\r\n\r\n",
        "GET /\x7f\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        " / HTTP/1.1\r\n\r\n",
        "GET  HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int fd = conn_open();
        send_str(fd, bad[i]);
        shutdown(fd, SHUT_WR);
        char buf[4096];
        size_t len;
        /* answered with an error or closed: never hangs, never 2xx */
        int closed = read_some(fd, buf, sizeof buf, &len, 0, 15000);
        int st = status_of(buf);
        if (!(closed && (st == 0 || st >= 400)))
            fail_msg("request %zu (%s): closed=%d status=%d", i, bad[i], closed, st);
        close(fd);
    }
    assert_healthy();
}

static void hostile_pipelined_requests_all_answered(void **state)
{
    (void)state;
    enum { N = 20 };
    char req[N * 64];
    size_t off = 0;
    for (int i = 0; i < N; i++)
        off += (size_t)snprintf(req + off, sizeof req - off, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n",
                                i % 2 ? "/task" : "/");
    int fd = conn_open();
    send_all(fd, req, off);
    char buf[64 * 1024];
    size_t len;
    read_some(fd, buf, sizeof buf, &len, N, 15000);
    int count = 0;
    for (const char *p = buf; (p = strstr(p, "HTTP/1.1 200 ")) != NULL; p++)
        count++;
    assert_int_equal(count, N);
    close(fd);
    assert_healthy();
}

static void hostile_invalid_percent_encoding_is_400(void **state)
{
    (void)state;
    static const char *const paths[] = {"/%zz", "/%", "/%4", "/task%00", "/?a=%G1", "/task?x=%"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        int fd = conn_open();
        char req[256];
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", paths[i]);
        send_str(fd, req);
        char buf[4096];
        size_t len;
        read_some(fd, buf, sizeof buf, &len, 1, 15000);
        if (status_of(buf) != 400)
            fail_msg("%s: status %d, want 400", paths[i], status_of(buf));
        close(fd);
    }
    assert_healthy();
}

/* One request on a new connection (len bytes: it may hold NULs); fails
 * unless the first response has status `want` and, when needle is not
 * NULL, contains it. */
static void expect_raw(const char *req, size_t len, int want, const char *needle)
{
    int fd = conn_open();
    send_all(fd, req, len);
    char buf[8192];
    size_t got;
    read_some(fd, buf, sizeof buf, &got, 1, 15000);
    close(fd);
    if (status_of(buf) != want)
        fail_msg("%.*s: got status %d, want %d", (int)strcspn(req, "\r"), req, status_of(buf), want);
    if (needle)
        h_assert_contains(buf, needle);
}

/* A string literal and its length, NULs inside included. */
#define RAW(lit) lit, sizeof lit - 1

/* Requests to /task that libmicrohttpd 0.9.75 would have routed and that
 * HTTP/1.1 forbids: each is a 400 before routing, so no task runs. */
static void hostile_request_without_host_is_400(void **state)
{
    (void)state;
    long long before = h_stat(&srv, "noop", "succeeded");
    expect_raw(RAW("GET /task HTTP/1.1\r\nX-Other: 1\r\n\r\n"), 400, "needs a Host header");
    expect_raw(RAW("GET /task HTTP/1.1\r\n\r\n"), 400, "Connection: close");
    /* HTTP/1.0 needs none; an empty Host is valid in HTTP/1.1 */
    expect_raw(RAW("GET /task HTTP/1.0\r\n\r\n"), 200, NULL);
    expect_raw(RAW("GET /task HTTP/1.1\r\nHost:\r\n\r\n"), 200, NULL);
    /* the two that were answered ran their task, the refused ones did not */
    assert_healthy_with(before, 2);
}

static void hostile_nul_in_request_target_is_400(void **state)
{
    (void)state;
    long long before = h_stat(&srv, "noop", "succeeded");
    expect_raw(RAW("GET /task\0abc HTTP/1.1\r\nHost: x\r\n\r\n"), 400, "NUL byte in the request target");
    expect_raw(RAW("GET /task?a=b\0c HTTP/1.1\r\nHost: x\r\n\r\n"), 400, "Connection: close");
    expect_raw(RAW("GET /task\0 HTTP/1.1\r\nHost: x\r\n\r\n"), 400, NULL);
    /* none reached the route: no task ran */
    assert_healthy_with(before, 0);
}

/* What only libmicrohttpd sees (docs/http.md): an invalid Content-Length
 * never reaches bgserve.  Whatever libmicrohttpd answers, it is an error
 * and the connection is closed: no handler runs, no task is queued. */
static void hostile_invalid_content_length_never_routed(void **state)
{
    (void)state;
    long long before = h_stat(&srv, "noop", "succeeded");
    static const char *const values[] = {"abc", "-1", "", "99999999999999999999999", "1x"};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char req[256], buf[8192];
        snprintf(req, sizeof req, "GET /task HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n",
                 values[i]);
        int fd = conn_open();
        send_str(fd, req);
        size_t got;
        int closed = read_some(fd, buf, sizeof buf, &got, 0, 15000);
        close(fd);
        assert_int_equal(closed, 1);
        int st = status_of(buf);
        if (st != 400 && st != 413)
            fail_msg("Content-Length '%s': status %d, want 400 or 413", values[i], st);
    }
    assert_healthy_with(before, 0);
}

static void hostile_client_disconnects_mid_response(void **state)
{
    (void)state;
    for (int i = 0; i < 20; i++) {
        int fd = conn_open();
        /* 8 MB: far more than the socket buffers hold */
        send_str(fd, "GET /big?n=8000000 HTTP/1.1\r\nHost: x\r\n\r\n");
        char buf[4096];
        size_t len;
        read_some(fd, buf, sizeof buf, &len, 0, 200); /* a little, maybe */
        if (i % 2) { /* half of them reset the connection */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(fd);
    }
    /* and some that vanish right after sending a request with a task */
    for (int i = 0; i < 20; i++) {
        int fd = conn_open();
        send_str(fd, "GET /task HTTP/1.1\r\nHost: x\r\n\r\n");
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(fd);
    }
    assert_healthy();
}

/* Last: after all that, the server still stops cleanly (exit 0; a
 * sanitizer report would make it non-zero). */
static void hostile_server_stops_cleanly(void **state)
{
    (void)state;
    h_stop_clean(&srv);
    h_assert_contains(srv.log, "stopped");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hostile_slow_headers_time_out),
        cmocka_unit_test(hostile_oversized_request_line_refused),
        cmocka_unit_test(hostile_oversized_headers_refused),
        cmocka_unit_test(hostile_body_over_max_is_413_and_closed),
        cmocka_unit_test(hostile_thousand_idle_keepalive_connections),
        cmocka_unit_test(hostile_malformed_request_lines),
        cmocka_unit_test(hostile_pipelined_requests_all_answered),
        cmocka_unit_test(hostile_invalid_percent_encoding_is_400),
        cmocka_unit_test(hostile_request_without_host_is_400),
        cmocka_unit_test(hostile_nul_in_request_target_is_400),
        cmocka_unit_test(hostile_invalid_content_length_never_routed),
        cmocka_unit_test(hostile_client_disconnects_mid_response),
        cmocka_unit_test(hostile_server_stops_cleanly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
