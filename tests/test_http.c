/*
 * test_http.c - the real build/bgserve serving plugins over HTTP:
 * statuses, headers, bodies, 404/405/413/400, HEAD, path and query
 * parameters, request ids, failing handlers, graceful stop.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"
#include "request.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static h_server app;    /* tests/fixtures/http_app.so */
static h_server notes;  /* sample_app.so */

static int setup(void **state)
{
    (void)state;
    static const char *const args[] = {"--max-body", "64", NULL};
    if (h_start(&app, h_build_path("tests/fixtures/http_app.so"), args, NULL) != 0) {
        fprintf(stderr, "http_app did not start:\n%s\n", app.log ? app.log : "");
        return -1;
    }
    if (h_start(&notes, h_build_path("sample_app.so"), NULL, NULL) != 0) {
        fprintf(stderr, "sample_app did not start:\n%s\n", notes.log ? notes.log : "");
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    h_stop(&app, SIGTERM);
    h_stop(&notes, SIGTERM);
    h_free(&app);
    h_free(&notes);
    return 0;
}

static void http_hello_answers(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    assert_int_equal(h_start(&s, h_build_path("plugins/hello.so"), NULL, NULL), 0);
    assert_int_equal(h_get(&s, "/", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "Hello, World!");
    assert_string_equal(h_header(&r, "Content-Type"), "text/plain; charset=utf-8");
    assert_string_equal(h_header(&r, "Content-Length"), "13");
    h_resp_free(&r);
    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
}

static void http_not_found(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_get(&notes, "/nothing/here", &r), 0);
    assert_int_equal(r.status, 404);
    h_resp_free(&r);
    /* trailing slash is significant */
    assert_int_equal(h_get(&notes, "/notes/", &r), 0);
    assert_int_equal(r.status, 404);
    h_resp_free(&r);
}

static void http_method_not_allowed_lists_allow(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_http(&notes, "PUT", "/notes", "x", 1, NULL, &r), 0);
    assert_int_equal(r.status, 405);
    assert_string_equal(h_header(&r, "Allow"), "GET, HEAD, POST");
    h_resp_free(&r);
}

static void http_head_uses_get_without_body(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_http(&notes, "HEAD", "/", NULL, 0, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    assert_non_null(h_header(&r, "Content-Length"));
    assert_true(atoi(h_header(&r, "Content-Length")) > 0);
    h_resp_free(&r);
}

static void http_path_and_query_params(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_get(&app, "/echo/one%2Ftwo/caf%C3%A9?x=a+b%26c&y=1", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "a=one/two b=caf\xc3\xa9 x=a b&c missing=(null) "
                                "path=/echo/one/two/caf\xc3\xa9 method=GET remote=127.0.0.1");
    h_resp_free(&r);
}

/* bgs_req_query looks at the first 64 non-empty pairs (empty ones, as in
 * "&&", do not count); a name first seen after them is absent. */
static void http_query_pair_limit(void **state)
{
    (void)state;
    char url[1024];
    size_t off = (size_t)snprintf(url, sizeof url, "/echo/p/q?&&");
    for (int i = 0; i < 63; i++)
        off += (size_t)snprintf(url + off, sizeof url - off, "k%d=%d&", i, i);
    snprintf(url + off, sizeof url - off, "x=64th&&missing=65th");
    h_resp r;
    assert_int_equal(h_get(&app, url, &r), 0);
    assert_int_equal(r.status, 200);
    h_assert_contains(r.body, " x=64th missing=(null) ");
    h_resp_free(&r);
}

static void http_literal_beats_param(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_get(&app, "/echo/literal/b", &r), 0);
    assert_string_equal(r.body, "literal");
    h_resp_free(&r);
    assert_int_equal(h_get(&app, "/echo/literal/c", &r), 0);
    h_assert_contains(r.body, "a=literal b=c");
    h_resp_free(&r);
}

static void http_bad_percent_encoding_is_400(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_get(&app, "/echo/%zz/b", &r), 0);
    assert_int_equal(r.status, 400);
    h_resp_free(&r);
    assert_int_equal(h_get(&app, "/echo/a/b?x=%4", &r), 0);
    assert_int_equal(r.status, 400);
    h_resp_free(&r);
}

static void http_body_is_collected(void **state)
{
    (void)state;
    h_resp r;
    const char *hdrs[] = {"Content-Type: text/x-test", NULL};
    assert_int_equal(h_http(&app, "POST", "/echo", "hello body", 10, hdrs, &r), 0);
    assert_int_equal(r.status, 200);
    /* res_body replaces what res_printf wrote: the body is the echo */
    assert_string_equal(r.body, "hello body");
    assert_string_equal(h_header(&r, "Content-Type"), "application/octet-stream");
    h_resp_free(&r);
}

static void http_body_over_max_is_413(void **state)
{
    (void)state;
    h_resp r;
    char big[200];
    memset(big, 'b', sizeof big);
    assert_int_equal(h_http(&app, "POST", "/echo", big, sizeof big, NULL, &r), 0);
    assert_int_equal(r.status, 413);
    h_resp_free(&r);
    /* chunked bodies are counted too */
    const char *chunked[] = {"Transfer-Encoding: chunked", NULL};
    assert_int_equal(h_http(&app, "PUT", "/echo", big, sizeof big, chunked, &r), 0);
    assert_int_equal(r.status, 413);
    h_resp_free(&r);
    /* and the server goes on */
    assert_int_equal(h_http(&app, "POST", "/echo", "ok", 2, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
}

static void http_failing_handler_is_500(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_get(&app, "/fail", &r), 0);
    assert_int_equal(r.status, 500);
    h_assert_lacks(r.body, "never be seen");
    assert_null(h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);
    assert_true(h_wait_log(&app, "handler for GET /fail failed", 5000));
    assert_true(h_wait_log(&app, "discarded", 5000));
}

static void http_header_injection_refused(void **state)
{
    (void)state;
    h_resp r;
    char expect[32];
    assert_int_equal(h_get(&app, "/badheader", &r), 0);
    assert_int_equal(r.status, 200);
    snprintf(expect, sizeof expect, "%d %d 0", -6, -6); /* BGS_EHEADER */
    assert_string_equal(r.body, expect);
    assert_null(h_header(&r, "X-Evil"));
    assert_null(h_header(&r, "Set-Cookie"));
    assert_string_equal(h_header(&r, "X-Good"), "fine");
    h_resp_free(&r);
}

static void http_body_printf_appends(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_get(&app, "/append", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ab(null)7");
    assert_string_equal(h_header(&r, "Content-Type"), "text/plain; charset=utf-8");
    h_resp_free(&r);
}

/* Every byte as a one-character header name: accepted exactly when it is
 * an RFC 9110 tchar (spelled out here, apart from the server's bitmap). */
static void http_header_name_chars(void **state)
{
    (void)state;
    static const char tchar[] = "!#$%&'*+-.^_`|~0123456789"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for (int c = 1; c < 256; c++) {
        char name[2] = {(char)c, '\0'};
        int want = strchr(tchar, c) ? 0 : BGS_EHEADER;
        if (response_check_header(name, "v") != want)
            fail_msg("header name byte 0x%02x: got %d, want %d", c,
                     response_check_header(name, "v"), want);
    }
    assert_int_equal(response_check_header("", "v"), BGS_EHEADER);
    assert_int_equal(response_check_header("Content-Type", "a\rb"), BGS_EHEADER);
    assert_int_equal(response_check_header("X-A.b_c~1", "ok"), 0);
}

static void http_request_ids_are_unique(void **state)
{
    (void)state;
    h_resp a, b;
    assert_int_equal(h_get(&notes, "/", &a), 0);
    assert_int_equal(h_get(&notes, "/", &b), 0);
    const char *ia = h_header(&a, "X-Request-Id");
    const char *ib = h_header(&b, "X-Request-Id");
    assert_non_null(ia);
    assert_non_null(ib);
    assert_int_equal(strlen(ia), 16);
    assert_string_not_equal(ia, ib);
    /* and the access log carries them */
    assert_true(h_wait_log(&notes, ib, 5000));
    h_resp_free(&a);
    h_resp_free(&b);
}

static void http_notes_roundtrip(void **state)
{
    (void)state;
    h_resp r;
    const char *hdrs[] = {"X-Author: ada", NULL};
    assert_int_equal(h_http(&notes, "POST", "/notes?title=First%20note", "remember the milk", 17, hdrs, &r), 0);
    assert_int_equal(r.status, 201);
    const char *loc = h_header(&r, "Location");
    assert_non_null(loc);
    char path[64];
    snprintf(path, sizeof path, "%s", loc);
    /* two tasks attached: their ids are announced */
    const char *ids = h_header(&r, "Bgserve-Tasks");
    assert_non_null(ids);
    assert_non_null(strchr(ids, ','));
    h_resp_free(&r);

    assert_int_equal(h_get(&notes, path, &r), 0);
    assert_int_equal(r.status, 200);
    h_assert_contains(r.body, "\"title\":\"First note\"");
    h_assert_contains(r.body, "\"author\":\"ada\"");
    h_assert_contains(r.body, "\"text\":\"remember the milk\"");
    h_resp_free(&r);

    assert_int_equal(h_get(&notes, "/notes?q=milk&limit=5", &r), 0);
    assert_int_equal(r.status, 200);
    h_assert_contains(r.body, "First note");
    h_resp_free(&r);

    assert_int_equal(h_get(&notes, "/notes/abc", &r), 0);
    assert_int_equal(r.status, 400);
    h_resp_free(&r);
    assert_int_equal(h_get(&notes, "/notes/99999", &r), 0);
    assert_int_equal(r.status, 404);
    h_resp_free(&r);
}

/* The sample app hands its notes to the next generation: a reload (here
 * SIGHUP, in make dev a rebuild) keeps them. */
static void http_notes_survive_reload(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    assert_int_equal(h_start(&s, h_build_path("sample_app.so"), NULL, NULL), 0);
    assert_int_equal(h_http(&s, "POST", "/notes?title=kept", "across reloads", 14, NULL, &r), 0);
    assert_int_equal(r.status, 201);
    h_resp_free(&r);
    kill(s.pid, SIGHUP);
    assert_true(h_wait_log(&s, "reload: generation 2 serving", 15000));
    assert_true(h_wait_log(&s, "generation 1 retired", 15000)); /* its stop hook ran */
    assert_int_equal(h_get(&s, "/notes/1", &r), 0);
    assert_int_equal(r.status, 200);
    h_assert_contains(r.body, "across reloads");
    h_resp_free(&r);
    h_stop_clean(&s);
    h_free(&s);
}

static void http_sigterm_stops_cleanly(void **state)
{
    (void)state;
    h_server s;
    assert_int_equal(h_start(&s, h_build_path("plugins/hello.so"), NULL, NULL), 0);
    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_assert_contains(s.log, "stopped");
    h_free(&s);
    assert_int_equal(h_start(&s, h_build_path("plugins/hello.so"), NULL, NULL), 0);
    assert_int_equal(h_stop(&s, SIGINT), 0);
    h_free(&s);
}

static void http_port_in_use_is_clear(void **state)
{
    (void)state;
    char port[16];
    snprintf(port, sizeof port, "%d", notes.port);
    const char *argv[] = {h_build_path("bgserve"), "--port", port, h_build_path("plugins/hello.so"), NULL};
    char *out;
    assert_int_equal(h_run(argv, &out), 1);
    h_assert_contains(out, "Address already in use");
    h_assert_contains(out, "fix:");
    free(out);
}

static void http_ipv6_loopback(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    static const char *const args[] = {"--host", "::1", NULL};
    if (h_start(&s, h_build_path("plugins/hello.so"), args, NULL) != 0) {
        int no_v6 = s.log && strstr(s.log, "cannot listen");
        h_free(&s);
        if (no_v6)
            skip(); /* this machine has no IPv6 loopback */
        fail_msg("bgserve --host ::1 did not start");
    }
    h_assert_contains(s.log, "bgserve: listening on http://[::1]:");
    char url[64];
    snprintf(url, sizeof url, "http://[::1]:%d/", s.port);
    assert_int_equal(h_http(&s, "GET", url, NULL, 0, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "Hello, World!");
    h_resp_free(&r);
    assert_true(h_wait_log(&s, "GET / 200", 5000));
    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(http_hello_answers),
        cmocka_unit_test(http_header_name_chars),
        cmocka_unit_test(http_body_printf_appends),
        cmocka_unit_test(http_not_found),
        cmocka_unit_test(http_method_not_allowed_lists_allow),
        cmocka_unit_test(http_head_uses_get_without_body),
        cmocka_unit_test(http_path_and_query_params),
        cmocka_unit_test(http_query_pair_limit),
        cmocka_unit_test(http_literal_beats_param),
        cmocka_unit_test(http_bad_percent_encoding_is_400),
        cmocka_unit_test(http_body_is_collected),
        cmocka_unit_test(http_body_over_max_is_413),
        cmocka_unit_test(http_failing_handler_is_500),
        cmocka_unit_test(http_header_injection_refused),
        cmocka_unit_test(http_request_ids_are_unique),
        cmocka_unit_test(http_notes_roundtrip),
        cmocka_unit_test(http_notes_survive_reload),
        cmocka_unit_test(http_sigterm_stops_cleanly),
        cmocka_unit_test(http_port_in_use_is_clear),
        cmocka_unit_test(http_ipv6_loopback),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
