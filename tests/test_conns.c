/*
 * test_conns.c - connections against the real server
 * (tests/fixtures/hostile_app.so, whose GET /task attaches a no-op task):
 * the shutdown cut-over under keep-alive load, and clients past
 * --max-connections.  docs/http.md describes both.
 *
 * The shutdown case is checked from both ends.  The clients record every
 * response (its X-Request-Id, Bgserve-Tasks ids, Connection header and
 * when its request was sent); the server's log has an access line for
 * every request that reached bgserve and a start/done line for every task
 * run.  Then: every request the log shows was answered reached its client,
 * every task id a client got ran to done, every task that ran was handed
 * to a client, and every request sent after the server said "stopping"
 * was answered with Connection: close.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ---- keep-alive clients ------------------------------------------------------ */

#define CLIENTS 16
#define CLIENT_DEADLINE_MS 60000 /* a client still answered then: failure */

typedef struct resp_rec {
    char rid[40];
    uint64_t task;        /* 0: none */
    int close;            /* Connection: close */
    uint64_t sent_ms;     /* when the request was sent */
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
        c->cur.sent_ms = h_now_ms();
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
 * btask, the blocked request's).  Returns the
 * number of access lines seen. */
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
    h_server *s = arg;
    h_drain_log(s); /* keep the server's stderr pipe from filling */
    return atomic_load(&answered) >= CLIENTS * 8 && strstr(s->log, "blocked until") != NULL;
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

/* One round: CLIENTS keep-alive clients, SIGTERM once they are going. */
static void shutdown_round(int round)
{
    h_server s;
    static const char *const args[] = {"--drain-timeout", "5", NULL};
    assert_int_equal(h_start_app(&s, h_build_path("tests/fixtures/hostile_app.so"), args, NULL), 0);
    char url[128];
    snprintf(url, sizeof url, "%s/task", s.base);

    client cs[CLIENTS];
    memset(cs, 0, sizeof cs);
    atomic_store(&answered, 0);
    for (int i = 0; i < CLIENTS; i++) {
        cs[i].url = url;
        assert_int_equal(pthread_create(&cs[i].thread, NULL, client_main, &cs[i]), 0);
    }
    char release[128];
    snprintf(release, sizeof release, "/tmp/bgserve-test-conns-%d-%d", (int)getpid(), round);
    unlink(release);
    blocker b = {.s = &s};
    snprintf(b.path, sizeof b.path, "/block?file=%s", release);
    assert_int_equal(pthread_create(&b.thread, NULL, blocker_main, &b), 0);
    /* mid-burst: every client has had a few answers on average, and one
     * request is inside its handler */
    assert_true(h_poll(burst_going, &s, 20000));
    kill(s.pid, SIGTERM);
    /* The server says "stopping" after the cut-over: every request sent
     * after we read that, and the one held in its handler until now, must
     * be answered with Connection: close. */
    assert_true(h_wait_log(&s, "SIGTERM: stopping", 10000));
    uint64_t cut_ms = h_now_ms();
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
            if (r->sent_ms < cut_ms)
                continue;
            after++;
            if (!r->close)
                fail_msg("round %d: response %s to a request sent after the cut-over "
                         "has no Connection: close", round, r->rid);
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
        fail_msg("round %d: a request was dropped at shutdown:\n%s", round, s.log);
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

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(conns_shutdown_answers_every_handled_request),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
