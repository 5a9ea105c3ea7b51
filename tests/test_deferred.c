/*
 * test_deferred.c - deferred responses through the real server and
 * plugins/jobs: many at once, deadlines, disconnects, no HTTP thread held,
 * shutdown with suspended connections, await-a-task and long-poll.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ----------------------------------------------------------------- */

typedef struct many {
    CURLM *multi;
    CURL **easy;
    char **body;
    size_t *len;
    long *status;
    int n;
} many;

static size_t many_write(char *d, size_t sz, size_t nm, void *arg)
{
    char **slot = arg;
    size_t old = *slot ? strlen(*slot) : 0, add = sz * nm;
    char *p = realloc(*slot, old + add + 1);
    if (p == NULL)
        return 0;
    memcpy(p + old, d, add);
    p[old + add] = '\0';
    *slot = p;
    return add;
}

/* Start n requests at once; url_fmt gets the index. */
static void many_start(many *m, h_server *s, int n, const char *url_fmt, long timeout_ms)
{
    memset(m, 0, sizeof *m);
    m->n = n;
    m->multi = curl_multi_init();
    curl_multi_setopt(m->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);
    m->easy = calloc((size_t)n, sizeof *m->easy);
    m->body = calloc((size_t)n, sizeof *m->body);
    m->status = calloc((size_t)n, sizeof *m->status);
    for (int i = 0; i < n; i++) {
        char path[256], url[512];
        snprintf(path, sizeof path, url_fmt, i);
        snprintf(url, sizeof url, "%s%s", s->base, path);
        CURL *e = curl_easy_init();
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, many_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &m->body[i]);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
        curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)(intptr_t)i);
        m->easy[i] = e;
        curl_multi_add_handle(m->multi, e);
    }
}

/* Drive transfers for up to ms; returns how many are still running. */
static int many_step(many *m, int ms)
{
    int running = 0;
    uint64_t end = h_now_ms() + (uint64_t)ms;
    do {
        curl_multi_perform(m->multi, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            void *priv;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
            int i = (int)(intptr_t)priv;
            if (msg->data.result == CURLE_OK)
                curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &m->status[i]);
            else
                m->status[i] = -(long)msg->data.result;
        }
        if (running == 0)
            break;
        curl_multi_poll(m->multi, NULL, 0, 20, NULL);
    } while (h_now_ms() < end);
    return running;
}

static void many_free(many *m)
{
    for (int i = 0; i < m->n; i++) {
        curl_multi_remove_handle(m->multi, m->easy[i]);
        curl_easy_cleanup(m->easy[i]);
        free(m->body[i]);
    }
    curl_multi_cleanup(m->multi);
    free(m->easy);
    free(m->body);
    free(m->status);
}

static int start_jobs(h_server *s, const char *const *args)
{
    return h_start_app(s, h_build_path("plugins/jobs.so"), args, NULL);
}

/* ---- tests ------------------------------------------------------------------- */

static void deferred_thousand_concurrent(void **state)
{
    (void)state;
    h_server s;
    static const char *const args[] = {"--quiet", "--max-connections", "2000", "--workers", "32", NULL};
    assert_int_equal(start_jobs(&s, args), 0);
    many m;
    many_start(&m, &s, 1000, "/jobs/%d?ms=5", 60000);
    assert_int_equal(many_step(&m, 90000), 0);
    for (int i = 0; i < 1000; i++) {
        char want[32];
        snprintf(want, sizeof want, "job %d done", i);
        assert_int_equal(m.status[i], 200);
        assert_non_null(m.body[i]);
        assert_string_equal(m.body[i], want);
    }
    many_free(&m);
    assert_int_equal(h_stat(&s, "deferred", "completed"), 1000);
    assert_int_equal(h_stat(&s, "deferred", "pending"), 0);
    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
}

static int log_has_late(void *arg)
{
    return h_count_log(arg, "finished after the deadline") > 0;
}

static void deferred_deadline_gives_504_and_late_completion_is_safe(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    assert_int_equal(start_jobs(&s, NULL), 0);
    assert_int_equal(h_get(&s, "/jobs/1?ms=600&timeout=50", &r), 0);
    assert_int_equal(r.status, 504);
    assert_non_null(h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);
    /* the task completes the handle after the deadline: an error, no crash */
    assert_true(h_poll_server(&s, log_has_late, &s, 20000));
    assert_int_equal(h_stat(&s, "deferred", "timed_out"), 1);
    assert_int_equal(h_get(&s, "/", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
}

/* Poll path until its body contains needle. */
static int body_has(h_server *s, const char *path, const char *needle, unsigned deadline_ms)
{
    char *body = h_wait_body(s, path, needle, deadline_ms);
    free(body);
    return body != NULL;
}

static void deferred_client_disconnect_is_noticed(void **state)
{
    (void)state;
    h_server s;
    assert_int_equal(start_jobs(&s, NULL), 0);
    many m;
    /* the client gives up after 100 ms; the job takes 400 ms */
    many_start(&m, &s, 1, "/jobs/%d?ms=400", 100);
    assert_int_equal(many_step(&m, 10000), 0);
    assert_true(m.status[0] < 0); /* a transport error: the client aborted */
    many_free(&m);
    /* the task still finishes, and its record says the response was not
     * delivered (task ids start at 1 in a fresh server) */
    assert_true(body_has(&s, "/_bgserve/tasks/1", "\"state\":\"succeeded\"", 20000));
    assert_true(body_has(&s, "/_bgserve/tasks/1", "\"delivered\":false", 20000));
    assert_true(body_has(&s, "/_bgserve/stats", "\"abandoned\":1", 20000));
    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
}

static void deferred_hold_no_http_thread(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    static const char *const args[] = {"--quiet", "--threads", "1", "--workers", "4",
                                       "--max-connections", "2000", "--drain-timeout", "0.5",
                                       NULL};
    assert_int_equal(start_jobs(&s, args), 0);
    many m;
    /* 500 jobs wait behind 4 workers that each sleep 30 s: they stay pending */
    many_start(&m, &s, 500, "/jobs/%d?ms=30000", 120000);
    uint64_t end = h_now_ms() + 60000;
    long long pending = 0;
    while (h_now_ms() < end && (pending = h_stat(&s, "deferred", "pending")) < 500)
        many_step(&m, 50);
    assert_int_equal(pending, 500);
    /* another route on the single HTTP thread is answered meanwhile */
    assert_int_equal(h_get(&s, "/", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "jobs");
    h_resp_free(&r);
    assert_int_equal(h_stat(&s, "deferred", "pending"), 500);
    /* stopping answers every suspended connection 503 and exits 3 (the
     * jobs did not finish) */
    kill(s.pid, SIGTERM);
    int left = many_step(&m, 60000);
    if (left) {
        h_drain_log(&s);
        fprintf(stderr, "%d still running; server log:\n%s\n", left, s.log);
        for (int i = 0; i < 500; i++)
            if (m.status[i] != 503)
                fprintf(stderr, "request %d: status %ld\n", i, m.status[i]);
    }
    assert_int_equal(left, 0);
    for (int i = 0; i < 500; i++)
        assert_int_equal(m.status[i], 503);
    many_free(&m);
    /* already signalled: just wait; the sleeping jobs were cancelled */
    assert_int_equal(h_stop(&s, 0), 3);
    h_free(&s);
}

static void deferred_shutdown_answers_suspended_503(void **state)
{
    (void)state;
    h_server s;
    static const char *const args[] = {"--drain-timeout", "0.5", NULL};
    assert_int_equal(start_jobs(&s, args), 0);
    many m;
    many_start(&m, &s, 100, "/jobs/%d?ms=60000", 120000);
    uint64_t end = h_now_ms() + 60000;
    long long pending = 0;
    while (h_now_ms() < end && (pending = h_stat(&s, "deferred", "pending")) < 100)
        many_step(&m, 50);
    assert_int_equal(pending, 100);
    kill(s.pid, SIGTERM);
    assert_int_equal(many_step(&m, 60000), 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(m.status[i], 503);
    many_free(&m);
    /* already signalled: just wait; the sleeping jobs were cancelled */
    assert_int_equal(h_stop(&s, 0), 3);
    h_free(&s);
}

static void deferred_await_task_result(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    assert_int_equal(start_jobs(&s, NULL), 0);
    assert_int_equal(h_get(&s, "/jobs/7/await?ms=20", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "job 7 done");
    assert_string_equal(h_header(&r, "Content-Type"), "text/plain; charset=utf-8");
    const char *ids = h_header(&r, "Bgserve-Tasks");
    assert_non_null(ids);
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%s", ids);
    h_resp_free(&r);
    assert_true(body_has(&s, path, "\"state\":\"succeeded\"", 0)); /* one look */

    assert_int_equal(h_get(&s, "/jobs/8/await?ms=1&fail=1", &r), 0);
    assert_int_equal(r.status, 500);
    h_assert_contains(r.body, "job 8 failed on purpose");
    h_resp_free(&r);

    assert_int_equal(h_get(&s, "/jobs/9/await?ms=2000&timeout=50", &r), 0);
    assert_int_equal(r.status, 504);
    h_resp_free(&r);
    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
}

static void deferred_longpoll_returns_when_task_finishes(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    assert_int_equal(start_jobs(&s, NULL), 0);
    assert_int_equal(h_get(&s, "/sleep?ms=500", &r), 0);
    assert_int_equal(r.status, 202);
    char path[128];
    snprintf(path, sizeof path, "%s?wait=120000", h_header(&r, "Location"));
    h_resp_free(&r);
    /* h_http gives up after 30 s: an answer means the wait ended with the
     * task, long before its 120 s limit */
    assert_int_equal(h_get(&s, path, &r), 0);
    assert_int_equal(r.status, 200);
    h_assert_contains(r.body, "\"state\":\"succeeded\"");
    h_resp_free(&r);

    /* a wait shorter than the task answers with the record as it is */
    assert_int_equal(h_get(&s, "/sleep?ms=20000", &r), 0);
    snprintf(path, sizeof path, "%s?wait=100", h_header(&r, "Location"));
    h_resp_free(&r);
    assert_int_equal(h_get(&s, path, &r), 0);
    assert_int_equal(r.status, 200);
    h_assert_lacks(r.body, "\"state\":\"succeeded\"");
    h_assert_contains(r.body, "\"id\":");
    h_resp_free(&r);
    /* unknown ids are still 404 with a wait */
    assert_int_equal(h_get(&s, "/_bgserve/tasks/999999?wait=100", &r), 0);
    assert_int_equal(r.status, 404);
    h_resp_free(&r);
    assert_int_equal(h_stop(&s, SIGINT), 3); /* the 20 s sleep was cancelled */
    h_free(&s);
}

int main(void)
{
    h_raise_fd_limit(8192);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(deferred_thousand_concurrent),
        cmocka_unit_test(deferred_deadline_gives_504_and_late_completion_is_safe),
        cmocka_unit_test(deferred_client_disconnect_is_noticed),
        cmocka_unit_test(deferred_hold_no_http_thread),
        cmocka_unit_test(deferred_shutdown_answers_suspended_503),
        cmocka_unit_test(deferred_await_task_result),
        cmocka_unit_test(deferred_longpoll_returns_when_task_finishes),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
