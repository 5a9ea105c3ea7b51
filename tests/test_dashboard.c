/*
 * test_dashboard.c - the live dashboard without a browser, against the
 * real build/bgserve serving tests/fixtures/dash_app.so: the event
 * stream's format (GET /_bgserve/events), task changes and task log
 * lines arriving live, resumption with Last-Event-ID, coalescing, a
 * client that disconnects, no task bookkeeping while nobody watches, a
 * failed build's output, reconnecting after a crash; the page and its
 * assets, the retry action, its same-origin header and its 503 when the
 * queue is full, per-route
 * counters, and that none of it exists with --no-introspection.  The browser tests are in
 * tests/browser/.
 *
 * The event stream is read with libcurl's multi interface, so a test can
 * make other requests while a stream stays open.  Every wait is a poll
 * with a deadline.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <curl/curl.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEADLINE_MS 20000u

static h_server app;      /* dash_app.so, default options */
static char tmpdir[256];  /* release and heal files */
static char release_file[300], heal_file[300];

/* ---- an event stream client ------------------------------------------------ */

typedef struct sse {
    CURLM *m;
    CURL *e;
    struct curl_slist *hdrs;
    char *buf;            /* everything received, NUL-terminated */
    size_t len, cap;
    size_t pos;           /* events before this were returned */
    char ctype[128];
} sse;

/* One event, parsed. */
typedef struct sse_event {
    char id[64];
    char name[32];
    char *data;           /* malloc'd */
    int retry_ms;         /* -1: none */
} sse_event;

static size_t sse_sink(char *p, size_t size, size_t n, void *arg)
{
    sse *s = arg;
    size_t k = size * n;
    if (s->len + k + 1 > s->cap) {
        s->cap = (s->len + k + 1) * 2;
        s->buf = realloc(s->buf, s->cap);
        assert_non_null(s->buf);
    }
    memcpy(s->buf + s->len, p, k);
    s->len += k;
    s->buf[s->len] = '\0';
    return k;
}

/* The streams live here, not on a test's stack: one still open when a
 * test fails (cmocka leaves the test function at the failed assertion)
 * is closed by close_streams, so the next test starts with none. */
#define MAX_OPEN 8
static sse pool[MAX_OPEN];

static sse *sse_open(h_server *srv, const char *last_id)
{
    char url[128], hdr[128];
    sse *s = NULL;
    for (int i = 0; i < MAX_OPEN && s == NULL; i++)
        if (pool[i].m == NULL)
            s = &pool[i];
    assert_non_null(s);
    memset(s, 0, sizeof *s);
    snprintf(url, sizeof url, "%s/_bgserve/events", srv->base);
    s->m = curl_multi_init();
    s->e = curl_easy_init();
    curl_easy_setopt(s->e, CURLOPT_URL, url);
    curl_easy_setopt(s->e, CURLOPT_WRITEFUNCTION, sse_sink);
    curl_easy_setopt(s->e, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->e, CURLOPT_NOSIGNAL, 1L);
    s->hdrs = curl_slist_append(NULL, "Accept: text/event-stream");
    if (last_id) {
        snprintf(hdr, sizeof hdr, "Last-Event-ID: %s", last_id);
        s->hdrs = curl_slist_append(s->hdrs, hdr);
    }
    curl_easy_setopt(s->e, CURLOPT_HTTPHEADER, s->hdrs);
    curl_multi_add_handle(s->m, s->e);
    return s;
}

static void sse_close(sse *s)
{
    if (s->m == NULL)
        return;
    curl_multi_remove_handle(s->m, s->e);
    curl_easy_cleanup(s->e);
    curl_multi_cleanup(s->m);
    curl_slist_free_all(s->hdrs);
    free(s->buf);
    memset(s, 0, sizeof *s);
}

/* Drive the transfer for up to ms; 0 when it ended. */
static int sse_pump(sse *s, unsigned ms)
{
    int running = 0;
    curl_multi_perform(s->m, &running);
    if (running)
        curl_multi_poll(s->m, NULL, 0, (int)ms, NULL);
    curl_multi_perform(s->m, &running);
    char *ct = NULL;
    if (s->ctype[0] == '\0' && curl_easy_getinfo(s->e, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
        snprintf(s->ctype, sizeof s->ctype, "%s", ct);
    return running;
}

/* The next whole event, waiting up to deadline_ms; 1, or 0 at the
 * deadline or when the stream ended. */
static int sse_next(sse *s, sse_event *ev, unsigned deadline_ms)
{
    uint64_t end = h_now_ms() + deadline_ms;
    memset(ev, 0, sizeof *ev);
    ev->retry_ms = -1;
    for (;;) {
        char *stop = s->buf ? strstr(s->buf + s->pos, "\n\n") : NULL;
        if (stop) {
            char *line = s->buf + s->pos;
            s->pos = (size_t)(stop - s->buf) + 2;
            *stop = '\0';
            while (line && *line) {
                char *nl = strchr(line, '\n');
                if (nl)
                    *nl = '\0';
                if (strncmp(line, "id: ", 4) == 0)
                    snprintf(ev->id, sizeof ev->id, "%s", line + 4);
                else if (strncmp(line, "event: ", 7) == 0)
                    snprintf(ev->name, sizeof ev->name, "%s", line + 7);
                else if (strncmp(line, "retry: ", 7) == 0)
                    ev->retry_ms = atoi(line + 7);
                else if (strncmp(line, "data: ", 6) == 0) {
                    assert_null(ev->data); /* one data line per event */
                    ev->data = strdup(line + 6);
                }
                line = nl ? nl + 1 : NULL;
            }
            *stop = '\n';
            return 1;
        }
        if (h_now_ms() >= end)
            return 0;
        if (!sse_pump(s, 50) && !strstr(s->buf ? s->buf + s->pos : "", "\n\n"))
            return 0;
    }
}

static void event_free(sse_event *ev)
{
    free(ev->data);
    ev->data = NULL;
}

/* The sequence number of an id "BOOT-SEQ". */
static unsigned long long id_seq(const char *id)
{
    const char *dash = strrchr(id, '-');
    assert_non_null(dash);
    return strtoull(dash + 1, NULL, 10);
}

/* Read events until one's data contains needle; returns 1 (ev holds it)
 * or 0 at the deadline.  *seen counts the events read (may be NULL). */
static int sse_until(sse *s, const char *needle, sse_event *ev, unsigned deadline_ms, int *seen)
{
    uint64_t end = h_now_ms() + deadline_ms;
    while (h_now_ms() < end) {
        if (!sse_next(s, ev, (unsigned)(end - h_now_ms())))
            return 0;
        if (seen)
            (*seen)++;
        if (ev->data && strstr(ev->data, needle))
            return 1;
        event_free(ev);
    }
    return 0;
}

/* ---- helpers ------------------------------------------------------------------ */

static unsigned long long get_id(h_server *s, const char *path)
{
    h_resp r;
    assert_int_equal(h_get(s, path, &r), 0);
    assert_int_equal(r.status, 200);
    unsigned long long id = strtoull(r.body, NULL, 10);
    h_resp_free(&r);
    assert_true(id > 0);
    return id;
}

static void touch(const char *path)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

static int close_streams(void **state)
{
    (void)state;
    for (int i = 0; i < MAX_OPEN; i++)
        sse_close(&pool[i]);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/bgserve-dash-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    snprintf(release_file, sizeof release_file, "%s/release", tmpdir);
    snprintf(heal_file, sizeof heal_file, "%s/heal", tmpdir);
    char e1[400], e2[400];
    snprintf(e1, sizeof e1, "BGSERVE_RELEASE_FILE=%s", release_file);
    snprintf(e2, sizeof e2, "BGSERVE_HEAL_FILE=%s", heal_file);
    const char *env[] = {e1, e2, NULL};
    return h_start_app(&app, h_fixture("dash_app"), NULL, env) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    h_stop_clean(&app);
    h_free(&app);
    h_rm_rf(tmpdir);
    return 0;
}

/* ---- the event stream ------------------------------------------------------------ */

/* The first event is a snapshot with a reconnection delay and an id; its
 * data is one line of JSON with everything the page shows; updates
 * follow with consecutive ids. */
static void dashboard_stream_format(void **state)
{
    (void)state;
    sse *s;
    sse_event ev;
    s = sse_open(&app, NULL);
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    assert_string_equal(s->ctype, "text/event-stream");
    assert_string_equal(ev.name, "snapshot");
    assert_int_equal(ev.retry_ms, 1000);
    assert_non_null(strchr(ev.id, '-'));
    assert_non_null(ev.data);
    assert_int_equal(ev.data[0], '{');
    h_assert_contains(ev.data, "\"plugin\":{\"name\":\"dash_app\",\"version\":\"0.1.0\"");
    h_assert_contains(ev.data, "\"routes\":[");
    h_assert_contains(ev.data, "\"reloads\":[{\"kind\":\"load\",\"generation\":1,\"ok\":true");
    h_assert_contains(ev.data, "\"tasks\":[");
    h_assert_contains(ev.data, "\"samples\":[");
    h_assert_contains(ev.data, "\"stats\":{");
    h_assert_lacks(ev.data, "\"dead\":"); /* no journal, no dead letters */
    unsigned long long first = id_seq(ev.id);
    event_free(&ev);
    /* Stats come every second: two updates, numbered one after the other. */
    for (int i = 1; i <= 2; i++) {
        assert_true(sse_until(s, "\"stats\":", &ev, DEADLINE_MS, NULL));
        assert_string_equal(ev.name, "update");
        assert_int_equal(ev.retry_ms, -1);
        assert_true(id_seq(ev.id) > first);
        h_assert_contains(ev.data, "\"sample\":[");
        h_assert_contains(ev.data, "\"watchers\":");
        first = id_seq(ev.id);
        event_free(&ev);
    }
    sse_close(s);
}

/* A task attached by a request shows up while it waits, then as
 * succeeded, without asking again. */
static void dashboard_task_goes_live(void **state)
{
    (void)state;
    sse *s;
    sse_event ev;
    char want[128];
    unlink(release_file);
    s = sse_open(&app, NULL);
    assert_true(sse_next(s, &ev, DEADLINE_MS)); /* the snapshot */
    event_free(&ev);
    /* One runs and waits; the other is queued behind it (one at a time).
     * Tasks are handed over when their response is sent, so either may be
     * first. */
    unsigned long long ids[2] = {get_id(&app, "/gated"), get_id(&app, "/gated")};
    unsigned long long queued = 0;
    uint64_t end = h_now_ms() + DEADLINE_MS;
    while (!queued && h_now_ms() < end && sse_next(s, &ev, DEADLINE_MS)) {
        for (int i = 0; i < 2 && !queued; i++) {
            snprintf(want, sizeof want, "{\"id\":%llu,\"name\":\"gated\",\"state\":\"queued\"", ids[i]);
            if (ev.data && strstr(ev.data, want))
                queued = ids[i];
        }
        event_free(&ev);
    }
    assert_true(queued != 0);
    touch(release_file);
    snprintf(want, sizeof want, "{\"id\":%llu,\"name\":\"gated\",\"state\":\"succeeded\"", queued);
    assert_true(sse_until(s, want, &ev, DEADLINE_MS, NULL));
    event_free(&ev);
    unlink(release_file);
    sse_close(s);
}

/* A line a task logs while a dashboard watches reaches the stream, tagged
 * with the task's id. */
static void dashboard_task_log_lines_arrive(void **state)
{
    (void)state;
    sse *s;
    sse_event ev;
    char want[128];
    s = sse_open(&app, NULL);
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    event_free(&ev);
    unsigned long long id = get_id(&app, "/fail?msg=log-me");
    snprintf(want, sizeof want, "[%llu,1,", id);
    assert_true(sse_until(s, want, &ev, DEADLINE_MS, NULL));
    h_assert_contains(ev.data, "\"logs\":[");
    h_assert_contains(strstr(ev.data, want), ",\"trying log-me\"]");
    event_free(&ev);
    sse_close(s);
}

/* A client that reconnects with the last id it saw gets the updates it
 * missed, numbered on from there, and no snapshot; an id of another
 * server process (or garbage) gets a snapshot. */
static void dashboard_resumes_with_last_event_id(void **state)
{
    (void)state;
    sse *s;
    sse_event ev;
    char last[64], want[128];
    s = sse_open(&app, NULL);
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    event_free(&ev);
    assert_true(sse_until(s, "\"stats\":", &ev, DEADLINE_MS, NULL));
    snprintf(last, sizeof last, "%s", ev.id);
    event_free(&ev);
    /* While the stream is still open (the server does not know yet that
     * it will go), a task fails: its update goes to the ring. */
    unsigned long long id = get_id(&app, "/fail?msg=missed-while-away");
    snprintf(want, sizeof want, "{\"id\":%llu,\"name\":\"failing\",\"state\":\"failed\"", id);
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu", id);
    free(h_wait_state(&app, path, "failed", DEADLINE_MS));
    sse_close(s);

    s = sse_open(&app, last);
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    assert_string_equal(ev.name, "update");
    assert_int_equal(id_seq(ev.id), id_seq(last) + 1);
    /* The failed record is in one of the replayed updates. */
    int found = strstr(ev.data, want) != NULL;
    event_free(&ev);
    uint64_t end = h_now_ms() + DEADLINE_MS;
    while (!found && h_now_ms() < end && sse_next(s, &ev, DEADLINE_MS)) {
        assert_string_equal(ev.name, "update");
        found = strstr(ev.data, want) != NULL;
        event_free(&ev);
    }
    assert_true(found);
    sse_close(s);

    s = sse_open(&app, "0123456789ab-3");
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    assert_string_equal(ev.name, "snapshot");
    event_free(&ev);
    sse_close(s);
    s = sse_open(&app, "garbage");
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    assert_string_equal(ev.name, "snapshot");
    event_free(&ev);
    sse_close(s);
}

/* Hundreds of task changes arrive in a few updates, each task once per
 * update, not one event per change. */
static void dashboard_coalesces_updates(void **state)
{
    (void)state;
    sse *s;
    sse_event ev;
    enum { N = 300 };
    s = sse_open(&app, NULL);
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    event_free(&ev);
    long long before = h_stat(&app, "quick", "succeeded");
    if (before < 0)
        before = 0;
    h_resp r;
    assert_int_equal(h_get(&app, "/many?n=300", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_true(h_wait_stat(&app, "quick", "succeeded", before + N, DEADLINE_MS));
    /* Read until an update says so (stats follow every second). */
    char want[64];
    snprintf(want, sizeof want, "\"quick\":{\"queued\":0,\"running\":0,\"succeeded\":%lld", before + N);
    int events = 0, records = 0, with_tasks = 0;
    unsigned long long prev = 0;
    uint64_t end = h_now_ms() + DEADLINE_MS;
    int done = 0;
    while (!done && h_now_ms() < end && sse_next(s, &ev, DEADLINE_MS)) {
        events++;
        unsigned long long q = id_seq(ev.id);
        if (prev)
            assert_int_equal(q, prev + 1);
        prev = q;
        for (const char *p = ev.data; (p = strstr(p, "\"name\":\"quick\",\"state\":")) != NULL; p++)
            records++;
        with_tasks += strstr(ev.data, "\"name\":\"quick\"") != NULL;
        done = strstr(ev.data, want) != NULL;
        event_free(&ev);
    }
    assert_true(done);
    /* Each of the N tasks changed state three times (queued, running,
     * succeeded): far more changes than updates. */
    assert_true(records >= N);
    assert_true(with_tasks < N);
    assert_true(events < 3 * N);
    sse_close(s);
}

/* A client that goes away is forgotten: the watchers count drops back. */
static void dashboard_forgets_disconnected_clients(void **state)
{
    (void)state;
    sse *s[3];
    sse_event ev;
    for (int i = 0; i < 3; i++) {
        s[i] = sse_open(&app, NULL);
        assert_true(sse_next(s[i], &ev, DEADLINE_MS));
        event_free(&ev);
    }
    assert_true(h_wait_stat(&app, "dashboard", "watchers", 3, DEADLINE_MS));
    for (int i = 0; i < 3; i++)
        sse_close(s[i]);
    assert_true(h_wait_stat(&app, "dashboard", "watchers", 0, DEADLINE_MS));
}

/* While nobody watches, task changes are not remembered for the
 * dashboard: a client that comes back later with its last id gets the
 * updates of the ring, none naming that task. */
static void dashboard_no_bookkeeping_without_watchers(void **state)
{
    (void)state;
    sse *s;
    sse_event ev;
    char last[64];
    s = sse_open(&app, NULL);
    assert_true(sse_until(s, "\"stats\":", &ev, DEADLINE_MS, NULL));
    snprintf(last, sizeof last, "%s", ev.id);
    event_free(&ev);
    sse_close(s);
    assert_true(h_wait_stat(&app, "dashboard", "watchers", 0, DEADLINE_MS));
    unsigned long long id = get_id(&app, "/fail?msg=nobody-watched");
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu", id);
    free(h_wait_state(&app, path, "failed", DEADLINE_MS));

    s = sse_open(&app, last);
    int fresh_stats = 0;
    uint64_t end = h_now_ms() + DEADLINE_MS;
    while (fresh_stats < 2 && h_now_ms() < end && sse_next(s, &ev, DEADLINE_MS)) {
        assert_string_equal(ev.name, "update");
        h_assert_lacks(ev.data, "nobody-watched");
        if (strstr(ev.data, "\"stats\":"))
            fresh_stats++;
        event_free(&ev);
    }
    assert_int_equal(fresh_stats, 2);
    sse_close(s);
    /* A snapshot has it. */
    s = sse_open(&app, NULL);
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    assert_string_equal(ev.name, "snapshot");
    h_assert_contains(ev.data, "nobody-watched");
    event_free(&ev);
    sse_close(s);
}

/* ---- the page, the action, the counters ---------------------------------------- */

static void dashboard_page_and_assets(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_get(&app, "/_bgserve/", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(h_header(&r, "Content-Type"), "text/html; charset=utf-8");
    h_assert_contains(h_header(&r, "Content-Security-Policy"), "script-src 'self'");
    assert_string_equal(h_header(&r, "X-Content-Type-Options"), "nosniff");
    h_assert_contains(r.body, "<script src=\"/_bgserve/dashboard.js\"");
    h_resp_free(&r);
    assert_int_equal(h_get(&app, "/_bgserve/dashboard.js", &r), 0);
    assert_int_equal(r.status, 200);
    h_assert_contains(h_header(&r, "Content-Type"), "text/javascript");
    h_assert_contains(r.body, "EventSource");
    h_assert_lacks(r.body, "innerHTML");
    h_resp_free(&r);
    assert_int_equal(h_get(&app, "/_bgserve/dashboard.css", &r), 0);
    assert_int_equal(r.status, 200);
    h_assert_contains(h_header(&r, "Content-Type"), "text/css");
    h_resp_free(&r);
    assert_int_equal(h_http(&app, "POST", "/_bgserve/", "", 0, NULL, &r), 0);
    assert_int_equal(r.status, 405);
    h_resp_free(&r);
    /* Without the slash: sent to the page. */
    assert_int_equal(h_get(&app, "/_bgserve", &r), 0);
    assert_int_equal(r.status, 308);
    assert_string_equal(h_header(&r, "Location"), "/_bgserve/");
    h_resp_free(&r);
}

/* Retry re-runs a failed task, only with the action header, only a
 * failed one. */
static void dashboard_retry_action(void **state)
{
    (void)state;
    char path[64], *body = NULL;
    unlink(heal_file);
    unsigned long long id = get_id(&app, "/fail?msg=retry-me");
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu", id);
    free(h_wait_state(&app, path, "failed", DEADLINE_MS));
    long long failed = h_stat(&app, "failing", "failed");

    /* Without the header: refused, and nothing runs. */
    assert_int_equal(h_post_retry(&app, id, 0, &body), 403);
    h_assert_contains(body, "X-Bgserve-Action");
    free(body);
    h_resp r;
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu/retry", id);
    assert_int_equal(h_get(&app, path, &r), 0);
    assert_int_equal(r.status, 405);
    assert_string_equal(h_header(&r, "Allow"), "POST");
    h_resp_free(&r);
    /* With it, but under another site's name (DNS rebinding): refused. */
    const char *rebound[] = {"X-Bgserve-Action: retry", "Host: evil.example:8000", NULL};
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu/retry", id);
    assert_int_equal(h_http(&app, "POST", path, "", 0, rebound, &r), 0);
    assert_int_equal(r.status, 403);
    h_assert_contains(r.body, "Host 'evil.example:8000'");
    h_resp_free(&r);
    const char *local[] = {"X-Bgserve-Action: retry", "Host: localhost:8000", NULL};
    snprintf(path, sizeof path, "/_bgserve/tasks/999999998/retry");
    assert_int_equal(h_http(&app, "POST", path, "", 0, local, &r), 0);
    assert_int_equal(r.status, 404); /* past the checks: no such task */
    h_resp_free(&r);
    assert_int_equal(h_stat(&app, "failing", "failed"), failed);
    assert_int_equal(h_stat(&app, "failing", "succeeded") <= 0, 1);

    /* With it, healed: a new task with the same payload succeeds. */
    touch(heal_file);
    assert_int_equal(h_post_retry(&app, id, 1, &body), 202);
    char expect[96];
    snprintf(expect, sizeof expect, "\"retry_of\":%llu,\"name\":\"failing\"", id);
    h_assert_contains(body, expect);
    unsigned long long nid = (unsigned long long)h_json_num(body, "id");
    free(body);
    assert_true(nid > id);
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu", nid);
    char *rec = h_wait_state(&app, path, "succeeded", DEADLINE_MS);
    assert_non_null(rec);
    h_assert_contains(rec, "\"payload_bytes\":8");
    free(rec);
    /* A succeeded task cannot be retried; an unknown one is 404. */
    assert_int_equal(h_post_retry(&app, nid, 1, &body), 409);
    h_assert_contains(body, "only a failed named task");
    free(body);
    assert_int_equal(h_post_retry(&app, 999999999, 1, NULL), 404);
    unlink(heal_file);
}

/* A retry the queue cannot take: 503 with Retry-After, naming the cause
 * and what to do as a route's refused tasks do (dispatch.c); once the
 * queue has room, the same retry is accepted. */
static void dashboard_retry_refused_while_the_queue_is_full(void **state)
{
    (void)state;
    char e1[400], e2[400];
    snprintf(e1, sizeof e1, "BGSERVE_RELEASE_FILE=%s", release_file);
    snprintf(e2, sizeof e2, "BGSERVE_HEAL_FILE=%s", heal_file);
    const char *env[] = {e1, e2, NULL};
    const char *args[] = {"--queue", "1", NULL};
    h_server srv;
    unlink(release_file);
    unlink(heal_file);
    assert_int_equal(h_start_app(&srv, h_fixture("dash_app"), args, env), 0);
    unsigned long long id = get_id(&srv, "/fail?msg=no-room");
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu", id);
    free(h_wait_state(&srv, path, "failed", DEADLINE_MS));
    unsigned long long gid = get_id(&srv, "/gated"); /* holds the one place */
    assert_true(h_wait_stat(&srv, "gated", "running", 1, DEADLINE_MS));

    h_resp r;
    const char *hdrs[] = {"X-Bgserve-Action: retry", NULL};
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu/retry", id);
    assert_int_equal(h_http(&srv, "POST", path, "", 0, hdrs, &r), 0);
    assert_int_equal(r.status, 503);
    assert_string_equal(h_header(&r, "Retry-After"), "1");
    char expect[256];
    snprintf(expect, sizeof expect, "task %llu was not queued again: the task queue is full, "
             "retry later; raise --queue, or --workers if tasks wait to run", id);
    h_assert_contains(r.body, expect);
    h_resp_free(&r);

    touch(release_file);
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu", gid);
    free(h_wait_state(&srv, path, "succeeded", DEADLINE_MS));
    char *body = NULL;
    assert_int_equal(h_post_retry(&srv, id, 1, &body), 202);
    free(body);
    unlink(release_file);
    h_stop_clean(&srv);
    h_free(&srv);
}

/* Routes count their requests, errors and latency; /_bgserve/stats
 * counts 5xx answers. Both count at completion, the stats last. */
static void dashboard_route_counters(void **state)
{
    (void)state;
    h_resp r;
    long long errors = h_stat(&app, NULL, "errors");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(h_get(&app, "/boom", &r), 0);
        assert_int_equal(r.status, 500);
        h_resp_free(&r);
    }
    /* Counted when libmicrohttpd reports the request complete, which can
     * come just after the client has read the answer: wait for it. */
    assert_true(h_wait_stat(&app, NULL, "errors", errors + 3, DEADLINE_MS));
    sse *s;
    sse_event ev;
    s = sse_open(&app, NULL);
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    h_assert_contains(ev.data, "{\"method\":\"GET\",\"path\":\"/boom\",\"tasks\":0,\"requests\":3,\"errors\":3,\"p50_us\":");
    event_free(&ev);
    sse_close(s);
}

/* With --no-introspection the dashboard does not exist: its URLs are the
 * plugin's (404 here). */
static void dashboard_absent_without_introspection(void **state)
{
    (void)state;
    h_server srv;
    const char *args[] = {"--no-introspection", NULL};
    assert_int_equal(h_start_app(&srv, h_fixture("dash_app"), args, NULL), 0);
    const char *paths[] = {"/_bgserve/", "/_bgserve/events", "/_bgserve/dashboard.js"};
    for (size_t i = 0; i < 3; i++) {
        h_resp r;
        assert_int_equal(h_get(&srv, paths[i], &r), 0);
        assert_int_equal(r.status, 404);
        h_resp_free(&r);
    }
    h_resp r;
    const char *hdrs[] = {"X-Bgserve-Action: retry", NULL};
    assert_int_equal(h_http(&srv, "POST", "/_bgserve/tasks/1/retry", "", 0, hdrs, &r), 0);
    assert_int_equal(r.status, 404);
    h_resp_free(&r);
    h_stop_clean(&srv);
    h_free(&srv);
}

/* With --journal, a snapshot holds the dead letters the journal keeps,
 * of earlier runs too (state "dead"), for the page to retry. */
static void dashboard_snapshot_holds_dead_letters(void **state)
{
    (void)state;
    char db[340];
    snprintf(db, sizeof db, "%s/dead.db", tmpdir);
    const char *args[] = {"--journal", db, NULL};
    h_server srv;
    assert_int_equal(h_start_app(&srv, h_fixture("dash_app"), args, NULL), 0);
    unsigned long long id = get_id(&srv, "/fail?msg=dead-one"); /* its only attempt */
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu", id);
    free(h_wait_state(&srv, path, "failed", DEADLINE_MS));
    h_stop_clean(&srv); /* the dead letter is committed at the latest here */
    h_free(&srv);

    assert_int_equal(h_start_app(&srv, h_fixture("dash_app"), args, NULL), 0);
    sse *s = sse_open(&srv, NULL);
    sse_event ev;
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    assert_string_equal(ev.name, "snapshot");
    char want[96];
    snprintf(want, sizeof want, "\"dead\":[{\"id\":%llu,\"name\":\"failing\",\"state\":\"dead\"",
             id);
    h_assert_contains(ev.data, want);
    h_assert_contains(ev.data, "\"error\":\"dead-one\"");
    event_free(&ev);
    sse_close(s);
    h_stop_clean(&srv);
    h_free(&srv);
}

/* A failed build reaches the stream with the compiler's output, not only
 * its first error line. */
static void dashboard_failed_build_carries_its_output(void **state)
{
    (void)state;
    char dir[300], src[340];
    snprintf(dir, sizeof dir, "%s/src", tmpdir);
    snprintf(src, sizeof src, "%s/app.c", dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    const char *args[] = {"--watch", dir, "--watch-debounce", "0", "--build",
                          "echo 'app.c:1:9: error: expected expression' >&2; "
                          "echo '    1 | int x = ;' >&2; exit 1", NULL};
    h_server srv;
    assert_int_equal(h_start_app(&srv, h_fixture("dash_app"), args, NULL), 0);
    sse *s;
    sse_event ev;
    s = sse_open(&srv, NULL);
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    event_free(&ev);
    FILE *f = fopen(src, "w");
    assert_non_null(f);
    fputs("int x = ;\n", f);
    fclose(f);
    assert_true(sse_until(s, "\"kind\":\"build\",\"generation\":0,\"ok\":false", &ev, DEADLINE_MS, NULL));
    h_assert_contains(ev.data, "\"error\":\"build failed (exit 1): app.c:1:9: error: expected expression\\n\\n");
    h_assert_contains(ev.data, "\\n    1 | int x = ;\\n");
    event_free(&ev);
    sse_close(s);
    h_stop_clean(&srv);
    h_free(&srv);
    h_rm_rf(dir);
}

/* After a crash the stream ends; the page reconnects to the next serving
 * process with the old id and gets a snapshot (another BOOT) that holds
 * the crash. */
static void dashboard_reconnect_after_a_crash_shows_it(void **state)
{
    (void)state;
    h_server srv;
    assert_int_equal(h_start_app(&srv, h_fixture("crash_app"), NULL, NULL), 0);
    sse *s;
    sse_event ev;
    char last[64];
    s = sse_open(&srv, NULL);
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    assert_string_equal(ev.name, "snapshot");
    h_assert_contains(ev.data, "\"last_crash\":null");
    snprintf(last, sizeof last, "%s", ev.id);
    event_free(&ev);
    h_resp r;
    h_get(&srv, "/segv", &r); /* the connection drops: no answer */
    h_resp_free(&r);
    uint64_t end = h_now_ms() + DEADLINE_MS;
    while (sse_pump(s, 50) && h_now_ms() < end) {
    }
    assert_true(h_now_ms() < end); /* the stream ended with its process */
    sse_close(s);

    /* Reconnect as a browser does, until the next process answers (the
     * crashed one may still accept a connection while its crash report
     * is written, then drop it). */
    size_t bl = (size_t)(strchr(last, '-') - last);
    int fresh = 0;
    end = h_now_ms() + DEADLINE_MS;
    while (!fresh && h_now_ms() < end) {
        s = sse_open(&srv, last);
        if (sse_next(s, &ev, (unsigned)(end - h_now_ms())) && strncmp(ev.id, last, bl + 1) != 0)
            fresh = 1;
        else {
            event_free(&ev);
            sse_close(s);
        }
    }
    if (!fresh) {
        h_drain_log(&srv);
        fprintf(stderr, "no snapshot from a new serving process; the log:\n%s\n", srv.log);
    }
    assert_true(fresh);
    assert_string_equal(ev.name, "snapshot");
    h_assert_contains(ev.data, "\"crashes\":1,\"last_crash\":{\"what\":");
    h_assert_contains(ev.data, "\"signal\":\"SIGSEGV\"");
    event_free(&ev);
    sse_close(s);
    h_stop_clean(&srv);
    h_free(&srv);
}

/* A stream open at shutdown ends, and the server stops cleanly. */
static void dashboard_stream_ends_at_shutdown(void **state)
{
    (void)state;
    h_server srv;
    assert_int_equal(h_start_app(&srv, h_fixture("dash_app"), NULL, NULL), 0);
    sse *s;
    sse_event ev;
    s = sse_open(&srv, NULL);
    assert_true(sse_next(s, &ev, DEADLINE_MS));
    event_free(&ev);
    kill(srv.pid, SIGTERM);
    uint64_t end = h_now_ms() + DEADLINE_MS;
    while (sse_pump(s, 50) && h_now_ms() < end) {
    }
    assert_true(h_now_ms() < end); /* the stream ended */
    sse_close(s);
    assert_int_equal(h_stop(&srv, 0), 0);
    h_assert_lacks(srv.log, "ERROR: AddressSanitizer");
    h_assert_lacks(srv.log, "WARNING: ThreadSanitizer");
    h_free(&srv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(dashboard_stream_format, close_streams),
        cmocka_unit_test_teardown(dashboard_task_goes_live, close_streams),
        cmocka_unit_test_teardown(dashboard_task_log_lines_arrive, close_streams),
        cmocka_unit_test_teardown(dashboard_resumes_with_last_event_id, close_streams),
        cmocka_unit_test_teardown(dashboard_coalesces_updates, close_streams),
        cmocka_unit_test_teardown(dashboard_forgets_disconnected_clients, close_streams),
        cmocka_unit_test_teardown(dashboard_no_bookkeeping_without_watchers, close_streams),
        cmocka_unit_test_teardown(dashboard_page_and_assets, close_streams),
        cmocka_unit_test_teardown(dashboard_retry_action, close_streams),
        cmocka_unit_test_teardown(dashboard_retry_refused_while_the_queue_is_full, close_streams),
        cmocka_unit_test_teardown(dashboard_route_counters, close_streams),
        cmocka_unit_test_teardown(dashboard_absent_without_introspection, close_streams),
        cmocka_unit_test_teardown(dashboard_snapshot_holds_dead_letters, close_streams),
        cmocka_unit_test_teardown(dashboard_failed_build_carries_its_output, close_streams),
        cmocka_unit_test_teardown(dashboard_reconnect_after_a_crash_shows_it, close_streams),
        cmocka_unit_test_teardown(dashboard_stream_ends_at_shutdown, close_streams),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
