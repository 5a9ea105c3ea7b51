/*
 * test_testing_examples.c - the sample app and example plugins, tested
 * the way a plugin author tests theirs: with the testing library
 * (bgserve/testing.h), in process, no server.
 *
 *   sample_app   create, read, export (a task's result) and delete notes;
 *                the tasks each response attached, and their records
 *   jobs         deferred answers completed by a task, bgs_res_await,
 *                a deadline passing first (504)
 *   periodic     a periodic task run by moving the clock, the scoped
 *                service it resolves, the app's data
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

#define WAIT_MS 20000u

static bgst_client *open_plugin(const char *rel, const bgst_options *o)
{
    bgst_client *c = NULL;
    int rc = bgst_open(&c, h_build_path(rel), o);
    if (rc != BGST_OK)
        fprintf(stderr, "bgst_open(%s): %s\n", rel, bgst_errmsg(c));
    assert_int_equal(rc, BGST_OK);
    return c;
}

static bgst_response *send_ok(bgst_client *c, const bgst_request *rq)
{
    bgst_response *r = NULL;
    int rc = bgst_do(c, rq, &r);
    if (rc != BGST_OK)
        fprintf(stderr, "%s %s: %s\n", rq->method ? rq->method : "GET", rq->target,
                bgst_errmsg(c));
    assert_int_equal(rc, BGST_OK);
    return r;
}

/* method target, without a body, is answered status; its body is body
 * (NULL: any) and contains part (NULL: not checked). */
static void expect_answer(bgst_client *c, const char *method, const char *target,
                          unsigned status, const char *body, const char *part)
{
    bgst_response *r = send_ok(c, &(bgst_request){.method = method, .target = target});
    assert_int_equal(bgst_status(r), status);
    if (body)
        assert_string_equal(bgst_body(r, NULL), body);
    if (part)
        h_assert_contains(bgst_body(r, NULL), part);
    bgst_response_free(r);
}

/* Task i of r, waited for; the caller clears it. */
static void wait_task(bgst_client *c, const bgst_response *r, size_t i, bgst_task *t)
{
    int rc = bgst_task_wait(c, bgst_response_task(r, i), WAIT_MS, t);
    if (rc != BGST_OK)
        fprintf(stderr, "%s\n", bgst_errmsg(c));
    assert_int_equal(rc, BGST_OK);
}

/* ---- sample_app ------------------------------------------------------------ */

static void examples_sample_app_notes(void **state)
{
    (void)state;
    bgst_client *c = open_plugin("sample_app.so", NULL);
    bgst_header author[] = {{"X-Author", "ada"}};
    bgst_request create = {.method = "POST", .target = "/notes?title=hello", .headers = author,
                           .nheaders = 1, .body = "first note", .body_len = 10};
    bgst_response *r = send_ok(c, &create);
    assert_int_equal(bgst_status(r), 201);
    assert_string_equal(bgst_header_get(r, "Location"), "/notes/1");
    assert_string_equal(bgst_header_get(r, "Content-Type"), "application/json");
    assert_string_equal(bgst_body(r, NULL), "{\"id\":1}\n");
    /* index_note and notify_watchers, side by side, after the answer. */
    assert_int_equal(bgst_response_task_count(r), 2);
    assert_int_equal(bgst_response_wait(c, r, WAIT_MS), BGST_OK);
    bgst_task t;
    wait_task(c, r, 0, &t);
    assert_string_equal(t.name, "index_note");
    assert_int_equal(t.state, BGST_SUCCEEDED);
    assert_int_equal(t.max_attempts, 3);
    assert_string_equal(t.request_id, bgst_header_get(r, "X-Request-Id"));
    bgst_task_clear(&t);
    wait_task(c, r, 1, &t);
    assert_string_equal(t.name, "notify_watchers");
    assert_int_equal(t.state, BGST_SUCCEEDED);
    bgst_task_clear(&t);
    bgst_response_free(r);

    /* The task's work shows in the next answer. */
    assert_int_equal(bgst_send(c, "GET", "/notes/1", NULL, &r), BGST_OK);
    assert_int_equal(bgst_status(r), 200);
    h_assert_contains(bgst_body(r, NULL), "\"author\":\"ada\"");
    h_assert_contains(bgst_body(r, NULL), "\"indexed\":true");
    bgst_response_free(r);

    /* Export: 202 and a task whose result is the document. */
    assert_int_equal(bgst_send(c, "POST", "/notes/1/export", NULL, &r), BGST_OK);
    assert_int_equal(bgst_status(r), 202);
    assert_int_equal(bgst_response_task_count(r), 1);
    wait_task(c, r, 0, &t);
    assert_int_equal(t.state, BGST_SUCCEEDED);
    assert_true(t.has_result);
    assert_string_equal(t.result_type, "text/markdown");
    assert_string_equal(t.result, "# hello\nby ada\n");
    bgst_task_clear(&t);
    bgst_response_free(r);

    /* Delete: the route's own task audit_log. */
    assert_int_equal(bgst_send(c, "DELETE", "/notes/1", NULL, &r), BGST_OK);
    assert_int_equal(bgst_status(r), 204);
    wait_task(c, r, 0, &t);
    assert_string_equal(t.name, "audit_log");
    assert_int_equal(t.state, BGST_SUCCEEDED);
    bgst_task_clear(&t);
    bgst_response_free(r);
    expect_answer(c, "GET", "/notes/1", 404, NULL, NULL);
    expect_answer(c, "PUT", "/notes", 405, NULL, NULL);
    bgst_close(c);
}

/* ---- jobs ------------------------------------------------------------------- */

static void examples_jobs_deferred_and_awaited(void **state)
{
    (void)state;
    bgst_client *c = open_plugin("plugins/jobs.so", NULL);
    /* Answered later by the task job. */
    expect_answer(c, "GET", "/jobs/7?ms=1", 200, "job 7 done", NULL);
    /* Answered with the result of the awaited task. */
    bgst_response *r;
    assert_int_equal(bgst_send(c, "GET", "/jobs/8/await?ms=1", NULL, &r), BGST_OK);
    assert_int_equal(bgst_status(r), 200);
    assert_string_equal(bgst_body(r, NULL), "job 8 done");
    bgst_task t;
    wait_task(c, r, 0, &t);
    assert_string_equal(t.name, "job_result");
    assert_string_equal(t.result, "job 8 done");
    bgst_task_clear(&t);
    bgst_response_free(r);
    /* The awaited task fails: 500 with its error. */
    expect_answer(c, "GET", "/jobs/9/await?ms=1&fail=1", 500, NULL, "job 9 failed on purpose");
    /* The deadline (50 ms) passes long before the job (a minute): 504;
     * closing cancels the job. */
    expect_answer(c, "GET", "/jobs/10?ms=60000&timeout=50", 504, NULL, NULL);
    bgst_close(c);
}

/* ---- periodic ------------------------------------------------------------------ */

static void examples_periodic_tick_service_and_data(void **state)
{
    (void)state;
    bgst_client *c = open_plugin("plugins/periodic.so", NULL);
    assert_non_null(bgst_app_data(c)); /* the foo counter */
    /* tick every second: a moved clock runs it now. */
    assert_int_equal(bgst_advance(c, 1000), BGST_OK);
    bgst_task t;
    assert_int_equal(bgst_task_wait(c, 1, WAIT_MS, &t), BGST_OK);
    assert_string_equal(t.name, "tick");
    assert_int_equal(t.state, BGST_SUCCEEDED);
    bgst_task_clear(&t);
    /* The scoped service foo: the client's scope gets one instance. */
    void *foo1 = NULL, *foo2 = NULL;
    assert_int_equal(bgst_service(c, "foo", &foo1), BGST_OK);
    assert_int_equal(bgst_service(c, "foo", &foo2), BGST_OK);
    assert_non_null(foo1);
    assert_ptr_equal(foo1, foo2);
    expect_answer(c, "GET", "/", 200, NULL, "Hello, World! ");
    bgst_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(examples_sample_app_notes),
        cmocka_unit_test(examples_jobs_deferred_and_awaited),
        cmocka_unit_test(examples_periodic_tick_service_and_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
