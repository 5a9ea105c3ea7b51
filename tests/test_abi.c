/*
 * test_abi.c - an ABI 1.0 plugin keeps working: build/tests/abi/old_plugin.so
 * is built from tests/abi/old_plugin.c against the frozen 1.0 header
 * (tests/abi/bgserve_1_0.h) and must pass --check and serve every route,
 * run its tasks and answer through bgs_res_await on the current server.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <bgserve.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static h_server srv;

static int setup(void **state)
{
    (void)state;
    return h_start_app(&srv, h_build_path("tests/abi/old_plugin.so"), NULL, NULL) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    h_free(&srv); /* kills the server only when a test failed before the last one */
    return 0;
}

static void abi_old_plugin_passes_check(void **state)
{
    (void)state;
    const char *argv[] = {h_build_path("bgserve"), "--check",
                          h_build_path("tests/abi/old_plugin.so"), NULL};
    char *out;
    assert_int_equal(h_run(argv, &out), 0);
    h_assert_contains(out, "plugin old_plugin 1.0.0 (ABI 1.0)");
    h_assert_contains(out, "routes (6):");
    h_assert_contains(out, "tasks (2):");
    free(out);
}

static void abi_old_plugin_serves_routes(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_get(&srv, "/old", &r), 0);
    assert_int_equal(r.status, 200);
    /* the start hook ran, app data and a singleton service work */
    assert_string_equal(r.body, "old plugin: started=1 counter=41");
    assert_string_equal(h_header(&r, "X-Old-Plugin"), "1.0");
    h_resp_free(&r);

    assert_int_equal(h_get(&srv, "/old/greet/ada%20l?greeting=hi", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hi, ada l");
    h_resp_free(&r);

    assert_int_equal(h_http(&srv, "POST", "/old/echo", "ab\0cd", 5, NULL, &r), 0);
    assert_int_equal(r.status, 201);
    assert_int_equal(r.body_len, 5);
    assert_memory_equal(r.body, "ab\0cd", 5);
    assert_string_equal(h_header(&r, "Content-Type"), "application/octet-stream");
    h_resp_free(&r);
}

/* The task record of id reaches state "succeeded". */
static int task_succeeded(const char *id)
{
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%s", id);
    char *rec = h_wait_state(&srv, path, "succeeded", 10000);
    free(rec);
    return rec != NULL;
}

static void abi_old_plugin_tasks_run(void **state)
{
    (void)state;
    h_resp r;
    char id[32];
    assert_int_equal(h_get(&srv, "/old/task", &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(h_header(&r, "Bgserve-Tasks"));
    snprintf(id, sizeof id, "%s", h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);
    assert_true(task_succeeded(id));

    /* a route-level task from the 1.0 route table */
    assert_int_equal(h_get(&srv, "/old/ping", &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(h_header(&r, "Bgserve-Tasks"));
    snprintf(id, sizeof id, "%s", h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);
    assert_true(task_succeeded(id));
}

static void abi_old_plugin_await_answers_with_result(void **state)
{
    (void)state;
    h_resp r;
    assert_int_equal(h_get(&srv, "/old/await", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "144");
    h_resp_free(&r);
}

/* Every result code is distinct, named, above BGS__ERR_LAST, and
 * BGS__ERR_LAST itself is no code (in 1.0 it equalled BGS_ESHUTDOWN). */
static void abi_error_codes_above_err_last(void **state)
{
    (void)state;
    static const int codes[] = {
#define CODE(name, c, text) BGS_##name,
        BGS_ERRNO_MAP(CODE)
#undef CODE
    };
    size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        assert_true(codes[i] < 0);
        assert_true(codes[i] > BGS__ERR_LAST);
        assert_string_not_equal(bgs_errname(codes[i]), "BGS_UNKNOWN");
        for (size_t k = i + 1; k < n; k++)
            assert_int_not_equal(codes[i], codes[k]);
    }
    assert_int_equal(BGS__ERR_LAST, BGS_ETOOMANY - 1);
    assert_string_equal(bgs_errname(BGS__ERR_LAST), "BGS_UNKNOWN");
    assert_string_equal(bgs_strerror(BGS__ERR_LAST), "unknown error");
}

/* Last: the server stops cleanly after serving the old plugin (the stop
 * hook runs; a sanitizer report would make the exit non-zero). */
static void abi_old_plugin_server_stops_cleanly(void **state)
{
    (void)state;
    h_stop_clean(&srv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(abi_old_plugin_passes_check),
        cmocka_unit_test(abi_old_plugin_serves_routes),
        cmocka_unit_test(abi_old_plugin_tasks_run),
        cmocka_unit_test(abi_old_plugin_await_answers_with_result),
        cmocka_unit_test(abi_error_codes_above_err_last),
        cmocka_unit_test(abi_old_plugin_server_stops_cleanly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
