/*
 * test_conns.c - connections against the real server
 * (tests/fixtures/hostile_app.so, whose GET /task attaches a no-op task):
 * the shutdown cut-over under keep-alive load, and clients past
 * --max-connections (answered 503, closed at once, or served after the
 * oldest idle keep-alive connection was closed for them; never left
 * hanging), and the file limit fitted to --max-connections.
 * docs/http.md describes all of it.
 *
 * The shutdown case is checked from both ends.  The clients record every
 * response (its X-Request-Id, Bgserve-Tasks ids, Connection header and
 * when its request was sent); the server's log has an access line for
 * every request that reached bgserve and a start/done line for every task
 * run.  Then: every request the log shows was answered reached its client,
 * every task id a client got ran to done, every task that ran was handed
 * to a client, and every request sent after the test read the server's
 * "stopping" line was answered with Connection: close.  Only those: one
 * sent before may have been answered before the cut-over, and "after" is
 * told in nanoseconds (in milliseconds a request sent just before the
 * line was read could share its millisecond and count as after).  One
 * request is held inside its handler (GET /block) from before the signal
 * until after the cut-over: it must be answered, with Connection: close,
 * and its task run.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- keep-alive clients ------------------------------------------------------ */

#define CLIENTS 16
#define CLIENT_DEADLINE_MS 60000 /* a client still answered then: failure */

typedef struct resp_rec {
    char rid[40];
    uint64_t task;        /* 0: none */
    int close;            /* Connection: close */
    uint64_t sent_ns;     /* h_now_ns() just before the request was sent */
} resp_rec;

typedef struct client {
    pthread_t thread;
    const char *url;
    resp_rec *recs;
    size_t n, cap;
    int error;            /* the transfer error that ended it (0: none) */
    resp_rec cur;         /* filled by the header callback */
} client;

static atomic_int answered; /* responses received by all clients */

/* One header line of the current response. */
static size_t on_header(char *line, size_t size, size_t n, void *arg)
{
    client *c = arg;
    size_t len = size * n;
    char buf[256];
    size_t k = len < sizeof buf - 1 ? len : sizeof buf - 1;
    memcpy(buf, line, k);
    buf[k] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    if (strncasecmp(buf, "X-Request-Id: ", 14) == 0)
        snprintf(c->cur.rid, sizeof c->cur.rid, "%.39s", buf + 14);
    else if (strncasecmp(buf, "Bgserve-Tasks: ", 15) == 0)
        c->cur.task = strtoull(buf + 15, NULL, 10);
    else if (strcasecmp(buf, "Connection: close") == 0)
        c->cur.close = 1;
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

/* GET /task on one kept-alive connection until a request fails (the
 * server stopped), or CLIENT_DEADLINE_MS pass (c->error stays 0). */
static void *client_main(void *arg)
{
    client *c = arg;
    CURL *h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, c->url);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    uint64_t end = h_now_ms() + CLIENT_DEADLINE_MS;
    while (h_now_ms() < end) {
        memset(&c->cur, 0, sizeof c->cur);
        c->cur.sent_ns = h_now_ns();
        CURLcode rc = curl_easy_perform(h);
        if (rc != CURLE_OK) {
            c->error = (int)rc;
            break;
        }
        if (c->n == c->cap) {
            c->cap = c->cap ? 2 * c->cap : 256;
            c->recs = realloc(c->recs, c->cap * sizeof *c->recs);
            if (c->recs == NULL)
                abort();
        }
        c->recs[c->n++] = c->cur;
        atomic_fetch_add(&answered, 1);
    }
    curl_easy_cleanup(h);
    return NULL;
}

/* ---- the server's log ---------------------------------------------------------- */

/* Does any client hold a response with request id rid? */
static int client_got_rid(const client *cs, const char *rid)
{
    for (int i = 0; i < CLIENTS; i++)
        for (size_t j = 0; j < cs[i].n; j++)
            if (strcmp(cs[i].recs[j].rid, rid) == 0)
                return 1;
    return 0;
}

static int client_got_task(const client *cs, uint64_t id)
{
    for (int i = 0; i < CLIENTS; i++)
        for (size_t j = 0; j < cs[i].n; j++)
            if (cs[i].recs[j].task == id)
                return 1;
    return 0;
}

/* Fail unless every access line for /task names a request a client got,
 * and every task that started was handed to a client (the burst's, or
 * btask, the blocked request's).  Returns the number of access lines
 * seen. */
static int check_log_against_clients(const char *log, const client *cs, const char *btask)
{
    int lines = 0;
    for (const char *p = log; (p = strstr(p, "GET /task ")) != NULL; p++) {
        const char *eol = strchr(p, '\n');
        const char *r = strstr(p, "rid=");
        if (r == NULL || (eol && r > eol))
            continue;
        char rid[40];
        size_t k = strcspn(r + 4, " \n");
        snprintf(rid, sizeof rid, "%.*s", (int)k, r + 4);
        if (!client_got_rid(cs, rid))
            fail_msg("request %s reached bgserve but its client never got the answer: %.*s",
                     rid, (int)(eol ? eol - p : 80), p);
        lines++;
    }
    for (const char *p = log; (p = strstr(p, "bgserve: task ")) != NULL; p++) {
        char *end;
        uint64_t id = strtoull(p + 14, &end, 10);
        if (strncmp(end, " noop start", 11) == 0 && !client_got_task(cs, id) &&
            id != strtoull(btask, NULL, 10))
            fail_msg("task %llu ran but no client was handed its id", (unsigned long long)id);
    }
    return lines;
}

/* ---- shutdown ------------------------------------------------------------------ */

static int burst_going(void *arg)
{
    h_drain_log(arg); /* keep the server's stderr pipe from filling */
    return atomic_load(&answered) >= CLIENTS * 8;
}

/* A request held inside its handler (GET /block) across the signal. */
typedef struct blocker {
    pthread_t thread;
    h_server *s;
    char path[256];
    h_resp r;
    int rc;
} blocker;

static void *blocker_main(void *arg)
{
    blocker *b = arg;
    b->rc = h_get(b->s, b->path, &b->r);
    return NULL;
}

/* One round: CLIENTS keep-alive clients, SIGTERM once they are going.
 * The round's state is static so that client threads outliving a failed
 * assertion never point into a dead stack frame. */
static void shutdown_round(int round)
{
    static h_server s;
    static char url[128];
    static client cs[CLIENTS];
    static blocker b;
    /* Two HTTP threads: the blocked request holds one, the other serves
     * the burst (a thread inside a handler accepts no connections). */
    static const char *const args[] = {"--drain-timeout", "5", "--threads", "2", NULL};
    assert_int_equal(h_start_app(&s, h_build_path("tests/fixtures/hostile_app.so"), args, NULL), 0);
    snprintf(url, sizeof url, "%s/task", s.base);

    /* One request held inside its handler across the signal. */
    char release[128];
    snprintf(release, sizeof release, "/tmp/bgserve-test-conns-%d-%d", (int)getpid(), round);
    unlink(release);
    memset(&b, 0, sizeof b);
    b.s = &s;
    snprintf(b.path, sizeof b.path, "/block?file=%s", release);
    assert_int_equal(pthread_create(&b.thread, NULL, blocker_main, &b), 0);
    assert_true(h_wait_log(&s, "blocked until", 20000));

    memset(cs, 0, sizeof cs);
    atomic_store(&answered, 0);
    for (int i = 0; i < CLIENTS; i++) {
        cs[i].url = url;
        assert_int_equal(pthread_create(&cs[i].thread, NULL, client_main, &cs[i]), 0);
    }
    /* mid-burst: every client has had a few answers on average */
    assert_true(h_poll_server(&s, burst_going, &s, 20000));
    kill(s.pid, SIGTERM);
    /* The server says "stopping" after the cut-over: every request sent
     * after we read that, and the one held in its handler until now, must
     * be answered with Connection: close.  cut_ns is read after the line
     * was: a request whose sent_ns is later was sent after the cut-over
     * (one monotonic clock for all threads). */
    assert_true(h_wait_log(&s, "SIGTERM: stopping", 10000));
    uint64_t cut_ns = h_now_ns();
    FILE *f = fopen(release, "w");
    assert_non_null(f);
    fclose(f);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(cs[i].thread, NULL);
    pthread_join(b.thread, NULL);
    unlink(release);
    assert_int_equal(b.rc, 0);
    assert_int_equal(b.r.status, 200);
    assert_non_null(h_header(&b.r, "Connection"));
    assert_string_equal(h_header(&b.r, "Connection"), "close");
    const char *btask = h_header(&b.r, "Bgserve-Tasks");
    assert_non_null(btask);
    char bneedle[64];
    snprintf(bneedle, sizeof bneedle, "bgserve: task %s noop done", btask);
    h_resp_free(&b.r);
    assert_int_equal(h_stop(&s, 0), 0);
    h_assert_contains(s.log, "stopped");

    int after = 0, closes = 0;
    for (int i = 0; i < CLIENTS; i++) {
        if (cs[i].error == 0)
            fail_msg("client %d was still answered %d s after it started: the server never stopped it", i,
                     CLIENT_DEADLINE_MS / 1000);
        for (size_t j = 0; j < cs[i].n; j++) {
            const resp_rec *r = &cs[i].recs[j];
            closes += r->close;
            if (r->sent_ns <= cut_ns)
                continue;
            after++;
            if (!r->close)
                fail_msg("round %d: response %s to a request sent %llu ns after the test read "
                         "the cut-over's \"stopping\" line has no Connection: close",
                         round, r->rid, (unsigned long long)(r->sent_ns - cut_ns));
        }
        for (size_t j = 0; j < cs[i].n; j++) {
            char needle[64];
            snprintf(needle, sizeof needle, "bgserve: task %llu noop done",
                     (unsigned long long)cs[i].recs[j].task);
            if (cs[i].recs[j].task == 0)
                fail_msg("response %s carries no task id", cs[i].recs[j].rid);
            if (strstr(s.log, needle) == NULL)
                fail_msg("task %llu was handed to a client but never ran",
                         (unsigned long long)cs[i].recs[j].task);
        }
    }
    h_assert_contains(s.log, bneedle);
    int lines = check_log_against_clients(s.log, cs, btask);
    assert_true(lines >= CLIENTS * 8);
    if (strstr(s.log, "(server shutdown)") || strstr(s.log, "(no response)"))
        h_fail_text(s.log, "round %d: a request was dropped at shutdown:", round);
    print_message("round %d: %d answers, %d with Connection: close, %d sent after the cut-over\n",
                  round, atomic_load(&answered), closes, after);
    for (int i = 0; i < CLIENTS; i++)
        free(cs[i].recs);
    h_free(&s);
}

static void conns_shutdown_answers_every_handled_request(void **state)
{
    (void)state;
    for (int round = 1; round <= 4; round++)
        shutdown_round(round);
}

/* ---- connection limits --------------------------------------------------------- */

#define LIMIT 16
#define OVERFLOW (16 + LIMIT / 16) /* http.c: OVERFLOW_MIN + limit / 16 */

static int raw_open(const h_server *s)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

/* What became of a request on fd within deadline_ms: the response's
 * status, 0 when the server closed the connection without one (EOF or
 * reset), or -1 when nothing happened (a silent hang: the failure). */
static int raw_outcome(int fd, const char *req, unsigned deadline_ms)
{
    if (req)
        send(fd, req, strlen(req), MSG_NOSIGNAL);
    char buf[4096];
    size_t len = 0;
    uint64_t end = h_now_ms() + deadline_ms;
    for (;;) {
        buf[len] = '\0';
        const char *h = strstr(buf, "HTTP/1.1 ");
        if (h && strstr(h, "\r\n\r\n"))
            return atoi(h + 9);
        uint64_t now = h_now_ms();
        if (now >= end)
            return -1;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)(end - now)) <= 0)
            continue;
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return h != NULL ? atoi(h + 9) : 0;
        len += (size_t)n;
    }
}

/* The index of the first of fds[0..n) the server closes (EOF) within
 * deadline_ms, or -1. */
static int closed_one(const int *fds, int n, unsigned deadline_ms)
{
    struct pollfd pfd[LIMIT];
    assert_true(n <= LIMIT);
    for (int i = 0; i < n; i++)
        pfd[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    uint64_t end = h_now_ms() + deadline_ms;
    for (uint64_t now; (now = h_now_ms()) < end;) {
        if (poll(pfd, (nfds_t)n, (int)(end - now)) <= 0)
            continue;
        for (int i = 0; i < n; i++) {
            char c;
            if (pfd[i].revents && recv(fds[i], &c, 1, MSG_DONTWAIT) <= 0)
                return i;
        }
    }
    return -1;
}

static void start_limited(h_server *s)
{
    static const char *const args[] = {"--max-connections", "16", "--timeout", "60", NULL};
    assert_int_equal(h_start_app(s, h_build_path("tests/fixtures/hostile_app.so"), args, NULL), 0);
}

/* A connection statistic, read once the hogs are gone. */
static long long conn_stat(h_server *s, const char *key)
{
    return h_stat(s, "connections", key);
}

/* Connections that never send a request fill the limit and are not
 * closed to make room (they are not idle keep-alive connections): every
 * client past them gets 503 with Retry-After, or once the overflow is
 * full too, is closed at once.  Never a silent hang. */
static void conns_past_limit_get_503_or_closed(void **state)
{
    (void)state;
    h_server s;
    start_limited(&s);
    uint64_t t0 = h_now_ms();
    enum { HOGS = LIMIT + OVERFLOW + 8 };
    int hogs[HOGS];
    for (int i = 0; i < HOGS; i++)
        hogs[i] = raw_open(&s);
    /* Clients past all of that: each gets its answer or is closed, and
     * once the server has taken in every hog, they are closed at once. */
    int extra = 0, closed = 0;
    while (!closed && extra < 40) {
        int fd = raw_open(&s);
        int st = raw_outcome(fd, "GET /task HTTP/1.1\r\nHost: x\r\n\r\n", 10000);
        close(fd);
        if (st < 0)
            fail_msg("client %d past the limit got no answer and was not closed: a silent hang", extra);
        if (st != 0 && st != 503)
            fail_msg("client %d past the limit: status %d, want 503 or a closed connection", extra, st);
        closed = st == 0;
        extra++;
    }
    assert_true(closed);
    /* The hogs: LIMIT of them are served; the ones past the limit are
     * answered 503 (those in the overflow) or were closed at once.  (Two
     * HTTP threads accepting at the same instant may both still see room:
     * the limit can be passed by as many connections as there are
     * threads, for that instant.) */
    int served = 0, got503 = 0;
    for (int i = 0; i < HOGS; i++) {
        int st = raw_outcome(hogs[i], "GET /task HTTP/1.1\r\nHost: x\r\n\r\n", 10000);
        if (st < 0)
            fail_msg("hog %d: no answer and not closed", i);
        if (st != 200 && st != 503 && st != 0)
            fail_msg("hog %d: status %d, want 200, 503 or closed", i, st);
        served += st == 200;
        got503 += st == 503;
    }
    for (int i = 0; i < HOGS; i++)
        close(hogs[i]);
    if (served < LIMIT || served > LIMIT + 4 || got503 < 1)
        fail_msg("%d hogs served, %d answered 503: want %d served (a few more at most) and some 503",
                 served, got503, LIMIT);

    /* One warning line (at most one per 10 s), and the counter. */
    assert_true(h_wait_log(&s, "connection limit reached", 5000));
    int lines = h_count_log(&s, "connection limit reached");
    assert_true(lines >= 1 && (uint64_t)lines <= 1 + (h_now_ms() - t0) / 10000);
    h_assert_contains(s.log, "(--max-connections 16)");
    assert_true(conn_stat(&s, "rejected") >= extra + got503);
    assert_int_equal(conn_stat(&s, "limit"), LIMIT);
    h_stop_clean(&s);
    h_free(&s);
}

/* At the limit with idle keep-alive connections, the oldest idle one is
 * closed to make room and the new client is served. */
static void conns_at_limit_idle_keepalive_closed_first(void **state)
{
    (void)state;
    h_server s;
    start_limited(&s);
    int ka[LIMIT];
    for (int i = 0; i < LIMIT; i++) {
        ka[i] = raw_open(&s);
        assert_int_equal(raw_outcome(ka[i], "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 10000), 200);
    }
    /* all LIMIT idle and kept alive: a new client is served */
    int fd = raw_open(&s);
    assert_int_equal(raw_outcome(fd, "GET /task HTTP/1.1\r\nHost: x\r\n\r\n", 10000), 200);
    /* an idle one (the oldest; which one that is depends on when the
     * server finished each) was closed for it; the others still work */
    int gone = closed_one(ka, LIMIT, 10000);
    if (gone < 0)
        fail_msg("no idle keep-alive connection was closed to make room");
    int other = gone == 0 ? LIMIT - 1 : 0;
    assert_int_equal(raw_outcome(ka[other], "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 10000), 200);
    close(fd);
    for (int i = 0; i < LIMIT; i++)
        close(ka[i]);
    assert_true(conn_stat(&s, "idle_closed") >= 1);
    assert_int_equal(conn_stat(&s, "rejected"), 0);
    h_assert_lacks(s.log, "connection limit reached");
    h_stop_clean(&s);
    h_free(&s);
}

static int two_in_flight(void *arg)
{
    return h_stat(arg, "connections", "requests_in_flight") == 2;
}

/* A request still in progress at --drain-timeout is cut, and said so;
 * the server still stops cleanly. */
static void conns_shutdown_deadline_cuts_what_is_left(void **state)
{
    (void)state;
    h_server s;
    static const char *const args[] = {"--drain-timeout", "0.5", NULL};
    assert_int_equal(h_start_app(&s, h_build_path("tests/fixtures/hostile_app.so"), args, NULL), 0);
    int fd = raw_open(&s);
    /* a request line and a header, never the end of the head */
    const char *part = "GET /task HTTP/1.1\r\nHost: x\r\n";
    assert_int_equal(send(fd, part, strlen(part), MSG_NOSIGNAL), (ssize_t)strlen(part));
    /* the server has read its request line: two requests in flight,
     * counting the stats request itself */
    assert_true(h_poll_server(&s, two_in_flight, &s, 10000));
    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_assert_contains(s.log, "1 requests still in flight at the deadline: closing them");
    h_assert_contains(s.log, "stopped");
    assert_int_equal(raw_outcome(fd, NULL, 10000), 0); /* closed, no answer */
    close(fd);
    h_free(&s);
}

/* ---- the file limit -------------------------------------------------------------- */

/* Start bgserve through `sh -c 'ulimit ...; exec bgserve'` with the given
 * ulimit commands. */
static void start_with_ulimit(h_server *s, const char *ulimits, const char *max_conns)
{
    static char script[64];
    snprintf(script, sizeof script, "/tmp/bgserve-test-ulimit-XXXXXX");
    int fd = mkstemp(script);
    assert_true(fd >= 0);
    char text[256];
    int n = snprintf(text, sizeof text, "#!/bin/sh\n%s || exit 99\nexec \"$BGSERVE_REAL\" \"$@\"\n",
                     ulimits);
    assert_int_equal(write(fd, text, (size_t)n), n);
    assert_int_equal(fchmod(fd, 0755), 0);
    close(fd);
    char real[512];
    snprintf(real, sizeof real, "BGSERVE_REAL=%s", h_build_path("bgserve"));
    const char *const env[] = {real, NULL};
    const char *const args[] = {"--max-connections", max_conns, NULL};
    int rc = h_start_bin(s, script, h_build_path("tests/fixtures/hostile_app.so"), args, env);
    unlink(script);
    if (rc != 0)
        h_fail_text(s->log, "bgserve under '%s' did not start:", ulimits);
}

/* The "Max open files" soft limit of pid. */
static long long soft_nofile(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/limits", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    long long soft = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "Max open files", 14) == 0)
            soft = atoll(line + 14);
    fclose(f);
    return soft;
}

/* A soft file limit below what --max-connections needs is raised. */
static void conns_soft_fd_limit_raised(void **state)
{
    (void)state;
    h_server s;
    start_with_ulimit(&s, "ulimit -S -n 100", "500");
    assert_true(soft_nofile((pid_t)h_stat(&s, NULL, "pid")) >= 500); /* the serving process */
    assert_int_equal(conn_stat(&s, "limit"), 500);
    h_assert_lacks(s.log, "needs about");
    h_stop_clean(&s);
    h_free(&s);
}

/* A hard file limit below it: fewer connections, and a warning that says
 * how many and what to do. */
static void conns_hard_fd_limit_lowers_max_connections(void **state)
{
    (void)state;
    h_server s;
    start_with_ulimit(&s, "ulimit -S -n 100 && ulimit -H -n 300", "1000");
    assert_int_equal(soft_nofile((pid_t)h_stat(&s, NULL, "pid")), 300); /* the serving process */
    h_assert_contains(s.log, "--max-connections 1000 needs about");
    h_assert_contains(s.log, "ulimit -Hn");
    const char *at = strstr(s.log, "serving at most ");
    assert_non_null(at);
    long long fit = atoll(at + 16);
    assert_true(fit > 100 && fit < 300);
    assert_int_equal(conn_stat(&s, "limit"), fit);
    h_stop_clean(&s);
    h_free(&s);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(conns_shutdown_answers_every_handled_request),
        cmocka_unit_test(conns_shutdown_deadline_cuts_what_is_left),
        cmocka_unit_test(conns_past_limit_get_503_or_closed),
        cmocka_unit_test(conns_at_limit_idle_keepalive_closed_first),
        cmocka_unit_test(conns_soft_fd_limit_raised),
        cmocka_unit_test(conns_hard_fd_limit_lowers_max_connections),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
