/*
 * test_testing.c - the testing library (bgserve/testing.h) itself, with
 * the fixture testing_app: requests and answers, task records, retries
 * with a minute of backoff that take milliseconds (skip_delays), a
 * periodic task run by moving the clock, services and app data, the stop
 * hook at close, two clients that share nothing; and every error path:
 * a missing file, a file that is not a plugin, a refused ABI, a failing
 * start hook, bad arguments, unknown task ids, timeouts, a failed client.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <bgserve/testing.h>

#include "harness.h"
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WAIT_MS 20000u

static bgst_client *open_app(const bgst_options *o)
{
    bgst_client *c = NULL;
    int rc = bgst_open(&c, h_fixture("testing_app"), o);
    if (rc != BGST_OK)
        fprintf(stderr, "bgst_open: %s: %s\n", bgst_code_name(rc), bgst_errmsg(c));
    assert_int_equal(rc, BGST_OK);
    return c;
}

/* GET target, asserting it is answered; the response is the caller's. */
static bgst_response *get(bgst_client *c, const char *target)
{
    bgst_response *r = NULL;
    int rc = bgst_send(c, "GET", target, NULL, &r);
    if (rc != BGST_OK)
        fprintf(stderr, "GET %s: %s\n", target, bgst_errmsg(c));
    assert_int_equal(rc, BGST_OK);
    assert_non_null(r);
    return r;
}

/* The body of GET target (malloc'd). */
static char *get_body(bgst_client *c, const char *target)
{
    bgst_response *r = get(c, target);
    char *b = strdup(bgst_body(r, NULL));
    bgst_response_free(r);
    return b;
}

/* GET target, which attaches one task: its id. */
static uint64_t start_task(bgst_client *c, const char *target)
{
    bgst_response *r = get(c, target);
    assert_int_equal(bgst_status(r), 202);
    assert_int_equal(bgst_response_task_count(r), 1);
    uint64_t id = bgst_response_task(r, 0);
    assert_true(id > 0);
    bgst_response_free(r);
    return id;
}

/* ---- requests ------------------------------------------------------------ */

static void testing_request_reads_status_headers_body(void **state)
{
    (void)state;
    bgst_client *c = open_app(NULL);
    bgst_header h[] = {{"X-Probe", "probe-1"}};
    bgst_request rq = {.method = "POST", .target = "/echo", .headers = h, .nheaders = 1,
                       .body = "a\0b", .body_len = 3};
    bgst_response *r = NULL;
    assert_int_equal(bgst_do(c, &rq, &r), BGST_OK);
    assert_int_equal(bgst_status(r), 200);
    size_t len = 0;
    const char *body = bgst_body(r, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(body, "a\0b", 3);
    assert_string_equal(bgst_header_get(r, "x-seen"), "probe-1");
    assert_string_equal(bgst_header_get(r, "Content-Length"), "3");
    assert_non_null(bgst_header_get(r, "X-Request-Id"));
    assert_null(bgst_header_get(r, "Bgserve-Tasks"));
    assert_int_equal(bgst_response_task_count(r), 0);
    const char *name, *value;
    assert_int_equal(bgst_header_at(r, 0, &name, &value), BGST_OK);
    assert_string_equal(name, "X-Seen");
    assert_int_equal(bgst_header_at(r, bgst_header_count(r), &name, &value), BGST_EINVAL);
    bgst_response_free(r);

    /* The router's own answers. */
    r = get(c, "/nowhere");
    assert_int_equal(bgst_status(r), 404);
    bgst_response_free(r);
    assert_int_equal(bgst_send(c, "PUT", "/count", NULL, &r), BGST_OK);
    assert_int_equal(bgst_status(r), 405);
    assert_string_equal(bgst_header_get(r, "Allow"), "GET, HEAD");
    bgst_response_free(r);
    /* bgserve's own endpoints are there too. */
    r = get(c, "/_bgserve/stats");
    assert_int_equal(bgst_status(r), 200);
    h_assert_contains(bgst_body(r, NULL), "\"tasks\"");
    bgst_response_free(r);
    /* ... but the event stream, which needs a socket, is a 501 saying so. */
    r = get(c, "/_bgserve/events");
    assert_int_equal(bgst_status(r), 501);
    h_assert_contains(bgst_body(r, NULL),
                      "the testing library does not stream /_bgserve/events; use a running server");
    bgst_response_free(r);
    bgst_close(c);
}

static void testing_task_records_success_and_failure(void **state)
{
    (void)state;
    bgst_client *c = open_app(NULL);
    uint64_t id = start_task(c, "/doomed");
    bgst_task t;
    assert_int_equal(bgst_task_wait(c, id, WAIT_MS, &t), BGST_OK);
    assert_int_equal(t.id, id);
    assert_string_equal(t.name, "doomed");
    assert_int_equal(t.state, BGST_FAILED);
    assert_string_equal(t.state_name, "failed");
    assert_true(t.final);
    assert_int_equal(t.attempts, 1);
    assert_string_equal(t.error, "doomed never works");
    assert_true(strncmp(t.request_id, "bgst", 4) == 0);
    bgst_task_clear(&t);
    assert_null(t.error);
    /* The client's own engine behind /_bgserve/tasks/ID. */
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu", (unsigned long long)id);
    char *b = get_body(c, path);
    h_assert_contains(b, "\"name\":\"doomed\"");
    free(b);
    bgst_close(c);
}

/* ---- time ----------------------------------------------------------------- */

static void testing_skip_delays_runs_retries_at_once(void **state)
{
    (void)state;
    /* Three failures with a minute of backoff, then success: the clock
     * jumps over each backoff, so the whole takes milliseconds. */
    bgst_client *c = open_app(&(bgst_options){.skip_delays = 1});
    bgst_response *r = get(c, "/flaky");
    assert_int_equal(bgst_response_wait(c, r, WAIT_MS), BGST_OK);
    bgst_task t;
    assert_int_equal(bgst_task_get(c, bgst_response_task(r, 0), &t), BGST_OK);
    assert_int_equal(t.state, BGST_SUCCEEDED);
    assert_int_equal(t.attempts, 4);
    assert_int_equal(t.max_attempts, 4);
    assert_true(t.has_result);
    assert_int_equal(t.result_status, 200);
    assert_string_equal(t.result_type, "text/plain");
    assert_int_equal(t.result_len, 12);
    assert_string_equal(t.result, "done after 4");
    bgst_task_clear(&t);
    bgst_response_free(r);
    bgst_close(c);
}

static void testing_advance_moves_retries_and_periodic_tasks(void **state)
{
    (void)state;
    bgst_client *c = open_app(NULL); /* no skipping: time moves only when told */
    uint64_t id = start_task(c, "/flaky");
    bgst_task t;
    /* The first attempt fails, then waits a minute. */
    for (int i = 0; i < 20000; i++) {
        assert_int_equal(bgst_task_get(c, id, &t), BGST_OK);
        if (t.state == BGST_RETRYING)
            break;
        bgst_task_clear(&t);
        usleep(1000);
    }
    assert_int_equal(t.state, BGST_RETRYING);
    assert_int_equal(t.attempts, 1);
    assert_string_equal(t.error, "attempt 1 fails on purpose");
    bgst_task_clear(&t);
    assert_int_equal(bgst_task_wait(c, id, 20, &t), BGST_ETIMEOUT);
    h_assert_contains(bgst_errmsg(c), "is not final after 20 ms");
    assert_false(t.final); /* the record as it is */
    bgst_task_clear(&t);
    /* Each time it waits for its backoff, running the next timer (its
     * retry's: a minute or four away, the hourly beat is later) releases
     * the next attempt. */
    int fired = 0, released = 0;
    for (int i = 0; i < 20000; i++) {
        assert_int_equal(bgst_task_get(c, id, &t), BGST_OK);
        int done = t.final, waiting = t.state == BGST_RETRYING;
        bgst_task_clear(&t);
        if (done)
            break;
        if (waiting) {
            assert_int_equal(bgst_run_next_timer(c, &fired), BGST_OK);
            assert_int_equal(fired, 1);
            released++;
        }
        usleep(1000);
    }
    assert_int_equal(released, 3);
    assert_int_equal(bgst_task_wait(c, id, WAIT_MS, &t), BGST_OK);
    assert_int_equal(t.state, BGST_SUCCEEDED);
    assert_int_equal(t.attempts, 4);
    bgst_task_clear(&t);

    /* beat runs every hour: not yet, then once per hour moved. */
    char *b = get_body(c, "/beats");
    assert_string_equal(b, "beats 0");
    free(b);
    assert_int_equal(bgst_advance(c, 3600u * 1000u), BGST_OK);
    assert_int_equal(bgst_idle_wait(c, WAIT_MS), BGST_OK);
    b = get_body(c, "/beats");
    assert_string_equal(b, "beats 1");
    free(b);
    assert_int_equal(bgst_advance(c, 3600u * 1000u), BGST_OK);
    assert_int_equal(bgst_idle_wait(c, WAIT_MS), BGST_OK);
    b = get_body(c, "/beats");
    assert_string_equal(b, "beats 2");
    free(b);
    bgst_close(c);
}

/* ---- the app ------------------------------------------------------------ */

static void testing_service_app_data_and_stop_hook(void **state)
{
    (void)state;
    char dir[] = "/tmp/bgst-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/stopped", dir);
    setenv("BGST_STOP_FILE", path, 1);
    bgst_client *c = open_app(NULL);
    void *data = bgst_app_data(c);
    assert_non_null(data);
    void *svc = NULL;
    assert_int_equal(bgst_service(c, "counter", &svc), BGST_OK);
    assert_ptr_equal(svc, data); /* the service is the app's state */
    assert_int_equal(bgst_service(c, "nope", &svc), BGST_ENOTFOUND);
    assert_null(svc);
    h_assert_contains(bgst_errmsg(c), "nope");
    char *b = get_body(c, "/count");
    assert_string_equal(b, "count 1");
    free(b);
    assert_null(h_slurp(path, NULL)); /* not stopped yet */
    bgst_close(c);
    char *text = h_slurp(path, NULL);
    unsetenv("BGST_STOP_FILE");
    assert_non_null(text);
    assert_string_equal(text, "stopped 1\n");
    free(text);
    h_rm_rf(dir);
}

static void testing_clients_are_independent(void **state)
{
    (void)state;
    bgst_client *a = open_app(NULL), *b = open_app(NULL);
    char *s = get_body(a, "/count");
    assert_string_equal(s, "count 1");
    free(s);
    s = get_body(a, "/count");
    assert_string_equal(s, "count 2");
    free(s);
    s = get_body(b, "/count"); /* its own copy of the plugin and its own app */
    assert_string_equal(s, "count 1");
    free(s);
    assert_true(bgst_app_data(a) != bgst_app_data(b));
    /* Moving one clock runs only that client's periodic task. */
    assert_int_equal(bgst_advance(a, 3600u * 1000u), BGST_OK);
    assert_int_equal(bgst_idle_wait(a, WAIT_MS), BGST_OK);
    s = get_body(a, "/beats");
    assert_string_equal(s, "beats 1");
    free(s);
    s = get_body(b, "/beats");
    assert_string_equal(s, "beats 0");
    free(s);
    /* Task ids are each client's own. */
    uint64_t ida = start_task(a, "/doomed");
    bgst_task t;
    assert_int_equal(bgst_task_wait(a, ida, WAIT_MS, &t), BGST_OK);
    bgst_task_clear(&t);
    assert_int_equal(bgst_task_get(b, ida, &t), BGST_ENOTFOUND);
    bgst_close(a);
    s = get_body(b, "/count"); /* b goes on after a closed */
    assert_string_equal(s, "count 2");
    free(s);
    bgst_close(b);
}

/* ---- error paths ------------------------------------------------------------ */

/* bgst_open(path) fails with code and a message holding want. */
static void assert_open_fails(const char *path, int code, const char *want)
{
    bgst_client *c = NULL;
    assert_int_equal(bgst_open(&c, path, NULL), code);
    assert_non_null(c);
    h_assert_contains(bgst_errmsg(c), want);
    /* A failed client refuses everything, and says why. */
    bgst_response *r = (bgst_response *)1;
    assert_int_equal(bgst_send(c, "GET", "/", NULL, &r), BGST_ESTATE);
    assert_null(r);
    h_assert_contains(bgst_errmsg(c), "failed to open");
    bgst_task t;
    assert_int_equal(bgst_task_get(c, 1, &t), BGST_ESTATE);
    assert_int_equal(bgst_advance(c, 1), BGST_ESTATE);
    assert_int_equal(bgst_idle_wait(c, 1), BGST_ESTATE);
    assert_null(bgst_app_data(c));
    bgst_close(c);
}

static void testing_open_missing_file(void **state)
{
    (void)state;
    assert_open_fails("/nonexistent/app.so", BGST_ELOAD, "/nonexistent/app.so");
}

static void testing_open_not_a_plugin(void **state)
{
    (void)state;
    char dir[] = "/tmp/bgst-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/text.so", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("not an ELF file\n", f);
    fclose(f);
    assert_open_fails(path, BGST_ELOAD, "text.so");
    h_rm_rf(dir);
    /* A shared object without bgserve_plugin_v1. */
    assert_open_fails(h_fixture("no_symbol"), BGST_ELOAD, "bgserve_plugin_v1");
}

static void testing_open_refused_abi(void **state)
{
    (void)state;
    assert_open_fails(h_fixture("major2"), BGST_ELOAD, "ABI");
}

static void testing_open_start_hook_fails(void **state)
{
    (void)state;
    assert_open_fails(h_fixture("start_fails"), BGST_ELOAD, "failed to start");
}

static void testing_bad_arguments(void **state)
{
    (void)state;
    assert_int_equal(bgst_open(NULL, h_fixture("testing_app"), NULL), BGST_EINVAL);
    bgst_client *c = NULL;
    assert_int_equal(bgst_open(&c, NULL, NULL), BGST_EINVAL);
    h_assert_contains(bgst_errmsg(c), "path is NULL");
    bgst_close(c);
    h_assert_contains(bgst_errmsg(NULL), "no client");
    bgst_response *r = NULL;
    assert_int_equal(bgst_send(NULL, "GET", "/", NULL, &r), BGST_EINVAL);

    c = open_app(NULL);
    assert_int_equal(bgst_send(c, "GET", NULL, NULL, &r), BGST_EINVAL);
    h_assert_contains(bgst_errmsg(c), "no target");
    assert_int_equal(bgst_send(c, "GET", "count", NULL, &r), BGST_EINVAL);
    h_assert_contains(bgst_errmsg(c), "must start with '/'");
    assert_int_equal(bgst_send(c, "get", "/count", NULL, &r), BGST_EINVAL);
    h_assert_contains(bgst_errmsg(c), "upper case");
    assert_int_equal(bgst_send(c, "GET", "/count", NULL, NULL), BGST_EINVAL);
    bgst_header bad[] = {{"X-Bad", "a\r\nb"}};
    bgst_request rq = {.target = "/count", .headers = bad, .nheaders = 1};
    assert_int_equal(bgst_do(c, &rq, &r), BGST_EINVAL);
    h_assert_contains(bgst_errmsg(c), "CR, LF");
    rq = (bgst_request){.target = "/count", .body_len = 3};
    assert_int_equal(bgst_do(c, &rq, &r), BGST_EINVAL);
    assert_int_equal(bgst_task_wait(c, 1, 1, NULL), BGST_EINVAL);
    assert_int_equal(bgst_service(c, NULL, NULL), BGST_EINVAL);
    assert_int_equal(bgst_response_wait(c, NULL, 1), BGST_EINVAL);
    assert_string_equal(bgst_code_name(BGST_ETIMEOUT), "BGST_ETIMEOUT");
    assert_string_equal(bgst_code_name(42), "BGST_E?");
    assert_string_equal(bgst_version(), BGST_VERSION);
    /* Nothing above reached the plugin. */
    char *b = get_body(c, "/count");
    assert_string_equal(b, "count 1");
    free(b);
    bgst_close(c);
}

static void testing_unknown_task_id(void **state)
{
    (void)state;
    bgst_client *c = open_app(NULL);
    bgst_task t;
    assert_int_equal(bgst_task_get(c, 999999, &t), BGST_ENOTFOUND);
    h_assert_contains(bgst_errmsg(c), "no task 999999");
    assert_int_equal(bgst_task_wait(c, 999999, WAIT_MS, &t), BGST_ENOTFOUND);
    assert_int_equal(t.id, 0);
    bgst_close(c);
}

static void testing_timeouts(void **state)
{
    (void)state;
    bgst_client *c = open_app(NULL);
    /* A task that does not end: waiting times out, close cancels it. */
    uint64_t id = start_task(c, "/forever");
    bgst_task t;
    assert_int_equal(bgst_task_wait(c, id, 30, &t), BGST_ETIMEOUT);
    assert_int_equal(t.id, id);
    assert_false(t.final);
    bgst_task_clear(&t);
    assert_int_equal(bgst_idle_wait(c, 30), BGST_ETIMEOUT);
    h_assert_contains(bgst_errmsg(c), "1 task still not final");
    /* An answer that never comes. */
    bgst_request rq = {.target = "/hang", .timeout_ms = 30};
    bgst_response *r = (bgst_response *)1;
    assert_int_equal(bgst_do(c, &rq, &r), BGST_ETIMEOUT);
    assert_null(r);
    h_assert_contains(bgst_errmsg(c), "no answer within 30 ms");
    /* The client still serves. */
    char *b = get_body(c, "/count");
    assert_string_equal(b, "count 1");
    free(b);
    bgst_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(testing_request_reads_status_headers_body),
        cmocka_unit_test(testing_task_records_success_and_failure),
        cmocka_unit_test(testing_skip_delays_runs_retries_at_once),
        cmocka_unit_test(testing_advance_moves_retries_and_periodic_tasks),
        cmocka_unit_test(testing_service_app_data_and_stop_hook),
        cmocka_unit_test(testing_clients_are_independent),
        cmocka_unit_test(testing_open_missing_file),
        cmocka_unit_test(testing_open_not_a_plugin),
        cmocka_unit_test(testing_open_refused_abi),
        cmocka_unit_test(testing_open_start_hook_fails),
        cmocka_unit_test(testing_bad_arguments),
        cmocka_unit_test(testing_unknown_task_id),
        cmocka_unit_test(testing_timeouts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
