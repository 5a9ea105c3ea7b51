/*
 * test_dispatch.c - route -> handler -> answer in process, with no socket
 * (dispatch.h): the fixture http_app.so is loaded as the current
 * generation, and requests are fed as method, target, headers and body;
 * the answer is read back as status, headers and body.  The dashboard
 * is started for its retry action.  The last test shuts the task engine
 * down.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "dashboard.h"
#include "deferred.h"
#include "dispatch.h"
#include "generation.h"
#include "helpers.h"
#include "hostapi.h"
#include "request.h"
#include "tasks.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static dispatch_env env = {.introspection = 1}; /* .tasks: setup */
static tasks_engine *engine;

/* The request headers: "Name: value" strings, NULL-terminated. */
static const char *find_header(void *ctx, const char *name)
{
    size_t n = strlen(name);
    for (const char *const *h = ctx; *h; h++)
        if (strncasecmp(*h, name, n) == 0 && (*h)[n] == ':')
            return *h + n + 2;
    return NULL;
}

typedef struct answer {
    struct bgs_req req;
    struct bgs_res res;
} answer;

/* Serve one request in process; the answer stays in a (answer_free). */
static void serve(answer *a, const char *method, const char *target,
                  const char *const *headers, const char *body)
{
    static const char *const none[] = {NULL};
    request_init(&a->req, &a->res, target);
    request_set_origin(&a->req, &(request_origin){.method = method, .header_fn = find_header,
                                          .header_ctx = (void *)(headers ? headers : none),
                                          .remote = "in-process"});
    request_set_id(&a->req, "test-1");
    if (body)
        request_body_append(&a->req, body, strlen(body));
    assert_int_equal(dispatch_request(&env, &a->req, &a->res), DISPATCH_ANSWERED);
}

static const char *res_header_value(const struct bgs_res *res, const char *name)
{
    for (size_t i = 0; i < res->nheaders; i++)
        if (util_strcaseeq(res->headers[i].name, name))
            return res->headers[i].value;
    return NULL;
}

static void answer_free(answer *a)
{
    dispatch_finish(&a->req, &a->res, 1, 1, 0);
    request_free(&a->req);
    response_free(&a->res);
}

/* The dashboard's counters: none here, only its retry action is used. */
static void no_counters(introspect_counters *c)
{
    memset(c, 0, sizeof *c);
    c->tasks = engine;
}

static int setup(void **state)
{
    (void)state;
    char err[2048];
    generation *g = NULL;
    /* keep: the records of finished tasks, for the retry of a failed one */
    engine = tasks_new(&(tasks_config){.workers = 2, .keep = TASKS_DEFAULT_KEEP});
    if (engine == NULL || deferred_start() != 0 ||
        dashboard_start(&(dashboard_config){.counters = no_counters, .tasks = engine}) != 0)
        return -1;
    env.tasks = engine;
    generation_setup(&(generation_deps){.host_api = hostapi_table(), .tasks = engine});
    if (generation_create(h_fixture("http_app"), 1, 0, &g, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    generation_set_current(g);
    generation_activate(g);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    generation_set_current(NULL);
    tasks_shutdown(engine, 5000);
    dashboard_stop();
    deferred_stop();
    tasks_free(engine);
    engine = NULL;
    return 0;
}

static void dispatch_body_and_headers_in_and_out(void **state)
{
    (void)state;
    static const char *const hdrs[] = {"Content-Type: text/x-test", NULL};
    answer a;
    serve(&a, "POST", "/echo", hdrs, "hello");
    assert_int_equal(a.res.status, 200);
    assert_string_equal(response_content_type(&a.res), "application/octet-stream");
    assert_string_equal(res_header_value(&a.res, "X-Body-Length"), "see body");
    assert_string_equal(a.res.body, "hello"); /* bgs_res_body replaces */
    answer_free(&a);
}

/* Past the headers a response holds in itself (RESPONSE_INLINE_HEADERS)
 * they move to an array of their own, in order; a reset starts over. */
static void dispatch_response_holds_many_headers(void **state)
{
    (void)state;
    struct bgs_req req;
    struct bgs_res res;
    char name[32], value[32];
    request_init(&req, &res, "/");
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 3 * RESPONSE_INLINE_HEADERS + 1; i++) {
            snprintf(name, sizeof name, "X-H%d", i);
            snprintf(value, sizeof value, "v%d-%d", round, i);
            response_add_header(&res, name, value);
        }
        assert_int_equal(res.nheaders, 3 * RESPONSE_INLINE_HEADERS + 1);
        for (int i = 0; i < 3 * RESPONSE_INLINE_HEADERS + 1; i++) {
            snprintf(name, sizeof name, "X-H%d", i);
            snprintf(value, sizeof value, "v%d-%d", round, i);
            assert_string_equal(res.headers[i].name, name);
            assert_string_equal(res.headers[i].value, value);
        }
        response_reset(&res);
        assert_int_equal(res.nheaders, 0);
        response_add_header(&res, "Retry-After", "1");
        assert_string_equal(res.headers[0].value, "1");
        if (round == 0)
            response_reset(&res);
    }
    response_free(&res);
    request_free(&req);
}

static void dispatch_params_query_and_remote(void **state)
{
    (void)state;
    answer a;
    serve(&a, "GET", "/echo/one/t%20wo?x=a%2Bb", NULL, NULL);
    assert_int_equal(a.res.status, 200);
    assert_string_equal(a.res.body, "a=one b=t wo x=a+b missing=(null) path=/echo/one/t wo "
                                    "method=GET remote=in-process");
    assert_string_equal(response_content_type(&a.res), "text/plain; charset=utf-8");
    answer_free(&a);
}

static void dispatch_bgserve_answers_without_handler(void **state)
{
    (void)state;
    answer a;
    serve(&a, "GET", "/nope", NULL, NULL);
    assert_int_equal(a.res.status, 404);
    assert_string_equal(a.res.body, "Not Found\n");
    answer_free(&a);

    serve(&a, "DELETE", "/echo", NULL, NULL);
    assert_int_equal(a.res.status, 405);
    h_assert_contains(res_header_value(&a.res, "Allow"), "POST");
    answer_free(&a);

    serve(&a, "GET", "/echo/a/b?x=%zz", NULL, NULL);
    assert_int_equal(a.res.status, 400);
    answer_free(&a);
}

/* A failing handler: 500, and neither its body nor its task survives. */
static void dispatch_failing_handler_answers_500(void **state)
{
    (void)state;
    answer a;
    serve(&a, "GET", "/fail", NULL, NULL);
    assert_int_equal(a.res.status, 500);
    assert_string_equal(a.res.body, "Internal Server Error\n");
    assert_null(res_header_value(&a.res, "Bgserve-Tasks"));
    assert_int_equal(tasks_group_count(a.res.group), 0); /* dropped */
    answer_free(&a);
}

static void dispatch_introspection_in_process(void **state)
{
    (void)state;
    answer a;
    serve(&a, "GET", "/_bgserve/stats", NULL, NULL);
    assert_int_equal(a.res.status, 200);
    assert_string_equal(response_content_type(&a.res), "application/json");
    h_assert_contains(a.res.body, "\"generation\"");
    answer_free(&a);
}

static void copy_state(void *arg, const tasks_record *r)
{
    *(tasks_state *)arg = r->state;
}

/* A route's own task while the engine shuts down: 503 before the handler,
 * with Retry-After, saying that the server is stopping (not that the
 * queue is full); so does the dashboard's retry of a failed task.  The
 * engine stays shut: this test runs last. */
static void dispatch_route_task_refused_while_shutting_down(void **state)
{
    (void)state;
    answer a;
    serve(&a, "GET", "/with-task", NULL, NULL);
    assert_int_equal(a.res.status, 200);
    assert_string_equal(a.res.body, "with a task\n");
    answer_free(&a);
    serve(&a, "GET", "/with-broken-task", NULL, NULL);
    assert_int_equal(a.res.status, 200);
    uint64_t broken = strtoull(res_header_value(&a.res, "Bgserve-Tasks"), NULL, 10);
    assert_true(broken > 0);
    answer_free(&a);
    tasks_state st = TASKS_QUEUED;
    uint64_t end = util_now_us() + 20000000u;
    while ((tasks_record_visit(engine, broken, copy_state, &st) != 0 || st != TASKS_FAILED) &&
           util_now_us() < end) {
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL); /* polling interval */
    }
    assert_int_equal(st, TASKS_FAILED);

    tasks_shutdown(engine, 5000);
    h_capture_begin();
    serve(&a, "GET", "/with-task", NULL, NULL);
    char *log = h_capture_end();
    assert_int_equal(a.res.status, 503);
    assert_string_equal(a.res.body, "Service Unavailable: the server is shutting down, retry "
                                    "later\n");
    assert_string_equal(res_header_value(&a.res, "Retry-After"), "1");
    assert_int_equal(tasks_group_count(a.res.group), 0);
    answer_free(&a);
    h_assert_contains(log, "GET /with-task: route tasks not accepted: the server is shutting "
                           "down; answering 503 without running the handler");
    free(log);

    char path[64], expect[128];
    static const char *const retry_hdrs[] = {"X-Bgserve-Action: retry", "Host: localhost", NULL};
    snprintf(path, sizeof path, "/_bgserve/tasks/%" PRIu64 "/retry", broken);
    serve(&a, "POST", path, retry_hdrs, NULL);
    assert_int_equal(a.res.status, 503);
    assert_string_equal(res_header_value(&a.res, "Retry-After"), "1");
    snprintf(expect, sizeof expect, "{\"error\":\"task %" PRIu64 " was not queued again: the "
             "server is shutting down, retry later\"}", broken);
    assert_string_equal(a.res.body, expect);
    answer_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dispatch_body_and_headers_in_and_out),
        cmocka_unit_test(dispatch_response_holds_many_headers),
        cmocka_unit_test(dispatch_params_query_and_remote),
        cmocka_unit_test(dispatch_bgserve_answers_without_handler),
        cmocka_unit_test(dispatch_failing_handler_answers_500),
        cmocka_unit_test(dispatch_introspection_in_process),
        cmocka_unit_test(dispatch_route_task_refused_while_shutting_down), /* last */
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
