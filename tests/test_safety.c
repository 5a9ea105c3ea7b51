/*
 * test_safety.c - safe defaults and misbehaving (but not crashing)
 * plugins, against the real server with tests/fixtures/misbehave_app.so:
 * loopback by default, a warning when introspection is reachable from
 * other hosts, --no-introspection removing every /_bgserve/ endpoint and
 * the Bgserve-Tasks header, failing handlers, tasks failing through their
 * retries (recorded with their error, escaped in the JSON), and response
 * headers with CR or LF refused.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEADLINE_MS 15000

static const char *app(void)
{
    return h_build_path("tests/fixtures/misbehave_app.so");
}

static void start(h_server *s, const char *const *args)
{
    if (h_start_app(s, app(), args, NULL) != 0)
        fail();
}

static void stop(h_server *s)
{
    h_stop_clean(s);
    h_free(s);
}

/* ---- safe defaults ------------------------------------------------------------------ */

static void safety_binds_loopback_by_default(void **state)
{
    (void)state;
    h_server s;
    start(&s, NULL);
    h_assert_contains(s.log, "bgserve: listening on http://127.0.0.1:");
    h_assert_lacks(s.log, "anyone who can reach");
    stop(&s);
}

static void safety_public_bind_with_introspection_warns(void **state)
{
    (void)state;
    h_server s;
    static const char *const args[] = {"--host", "0.0.0.0", NULL};
    start(&s, args);
    h_assert_contains(s.log, "bgserve: listening on http://0.0.0.0:");
    h_assert_contains(s.log, "listening on 0.0.0.0 with introspection on");
    h_assert_contains(s.log, "--no-introspection");
    h_resp r;
    assert_int_equal(h_get(&s, "/", &r), 0); /* and it serves */
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    stop(&s);
}

static void safety_public_bind_without_introspection_is_quiet(void **state)
{
    (void)state;
    h_server s;
    static const char *const args[] = {"--host", "0.0.0.0", "--no-introspection", NULL};
    start(&s, args);
    h_assert_contains(s.log, "bgserve: listening on http://0.0.0.0:");
    h_assert_lacks(s.log, "with introspection on");
    stop(&s);
}

static void safety_no_introspection_removes_every_endpoint(void **state)
{
    (void)state;
    static const char *const paths[] = {
        "/_bgserve/stats", "/_bgserve/tasks/1", "/_bgserve/tasks/1?wait=100",
        "/_bgserve", "/_bgserve/", "/_bgserve/anything",
    };
    h_server on, off;
    static const char *const args[] = {"--no-introspection", NULL};
    start(&on, NULL);
    start(&off, args);
    h_resp r;

    /* a task to look up: id 1 exists on both servers */
    assert_int_equal(h_get(&on, "/doomed", &r), 0);
    assert_non_null(h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);
    assert_int_equal(h_get(&off, "/doomed", &r), 0);
    assert_int_equal(r.status, 200);
    assert_null(h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);

    /* with introspection the endpoints answer JSON; without, the plugin's
     * router answers (no such route: 404) and nothing leaks */
    assert_int_equal(h_get(&on, "/_bgserve/stats", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_int_equal(h_get(&on, "/_bgserve/tasks/1", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        assert_int_equal(h_get(&off, paths[i], &r), 0);
        if (r.status != 404 || strstr(r.body, "{") != NULL)
            fail_msg("%s: status %ld body %s", paths[i], r.status, r.body);
        assert_null(h_header(&r, "Bgserve-Tasks"));
        h_resp_free(&r);
        assert_int_equal(h_http(&off, "HEAD", paths[i], NULL, 0, NULL, &r), 0);
        assert_int_equal(r.status, 404);
        h_resp_free(&r);
    }
    stop(&on);
    stop(&off);
}

/* ---- misbehaving plugins ---------------------------------------------------------------- */

static void safety_failing_handler_is_500_and_server_goes_on(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    start(&s, NULL);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(h_get(&s, "/fail", &r), 0);
        assert_int_equal(r.status, 500);
        assert_null(h_header(&r, "Bgserve-Tasks"));
        h_resp_free(&r);
    }
    assert_true(h_wait_log(&s, "handler for GET /fail failed (returned 7)", DEADLINE_MS));
    assert_int_equal(h_get(&s, "/", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    stop(&s);
}

static char *record_when_failed(h_server *s, const char *id)
{
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%s", id);
    return h_wait_state(s, path, "failed", DEADLINE_MS);
}

static void safety_failing_task_retried_then_failed_with_error(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    start(&s, NULL);
    assert_int_equal(h_get(&s, "/doomed", &r), 0);
    assert_int_equal(r.status, 200);
    char id[32];
    assert_non_null(h_header(&r, "Bgserve-Tasks"));
    snprintf(id, sizeof id, "%s", h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);

    char *rec = record_when_failed(&s, id);
    assert_non_null(rec);
    h_assert_contains(rec, "\"attempts\":3");
    h_assert_contains(rec, "\"max_attempts\":3");
    /* the last attempt's error, escaped: quotes, newline, control
     * character, backslash, and U+FFFD for the invalid bytes */
    h_assert_contains(rec, "\"error\":\"attempt 3: \\\"disk\\\" on fire\\n\\u0001\\\\ bad:");
    h_assert_contains(rec, "\\ufffd");
    for (const unsigned char *p = (const unsigned char *)rec; *p; p++)
        if (*p < 0x20 || *p >= 0x80)
            fail_msg("raw byte 0x%02x in the JSON record: %s", *p, rec);
    free(rec);

    assert_int_equal(h_get(&s, "/_bgserve/stats", &r), 0);
    h_assert_contains(r.body, "\"doomed\":{");
    h_assert_contains(r.body, "\"retried\":2");
    h_assert_contains(r.body, "\"failed\":1");
    h_resp_free(&r);
    stop(&s);
}

static void safety_header_with_cr_or_lf_refused(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    start(&s, NULL);
    assert_int_equal(h_get(&s, "/headers", &r), 0);
    assert_int_equal(r.status, 200);
    char expect[64];
    snprintf(expect, sizeof expect, "%d %d %d %d", (-6) /* BGS_EHEADER */, (-6) /* BGS_EHEADER */,
             (-6) /* BGS_EHEADER */, (-6) /* BGS_EHEADER */);
    assert_string_equal(r.body, expect);
    assert_null(h_header(&r, "X-Injected"));
    assert_null(h_header(&r, "X-Split"));
    assert_null(h_header(&r, "X-Lf"));
    h_assert_lacks(r.headers, "X-Injected");
    assert_string_equal(h_header(&r, "Content-Type"), "text/plain; charset=utf-8");
    h_resp_free(&r);
    stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(safety_binds_loopback_by_default),
        cmocka_unit_test(safety_public_bind_with_introspection_warns),
        cmocka_unit_test(safety_public_bind_without_introspection_is_quiet),
        cmocka_unit_test(safety_no_introspection_removes_every_endpoint),
        cmocka_unit_test(safety_failing_handler_is_500_and_server_goes_on),
        cmocka_unit_test(safety_failing_task_retried_then_failed_with_error),
        cmocka_unit_test(safety_header_with_cr_or_lf_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
