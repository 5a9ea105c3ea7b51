/*
 * test_routes_cmd.c - `bgserve routes APP.so [--json]` and the tables
 * `bgserve --check` prints, run through the real build/bgserve.
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

static int run_bgserve(const char *a1, const char *a2, const char *a3, char **out)
{
    const char *argv[] = {h_build_path("bgserve"), a1, a2, a3, NULL};
    return h_run(argv, out);
}

/* Column of word in line, or -1. */
static long col(const char *line, const char *word)
{
    const char *p = strstr(line, word);
    return p ? (long)(p - line) : -1;
}

static void routes_cmd_text_table_is_aligned(void **state)
{
    (void)state;
    char *out;
    char head[256], row1[256], row2[256];
    assert_int_equal(run_bgserve("routes", h_build_path("tests/fixtures/good.so"), NULL, &out), 0);
    h_assert_contains(out, "plugin good 1.2.3 (ABI 1.1)");
    h_line_with(out, "METHOD", head, sizeof head);
    h_line_with(out, "/users/{id}", row1, sizeof row1);
    h_line_with(out, "POST", row2, sizeof row2);
    /* handlers are named from the plugin's symbol table */
    h_assert_contains(row1, "get_user");
    h_assert_contains(row2, "create_user");
    h_assert_contains(row2, "send_welcome");
    /* every column starts where its heading starts */
    assert_int_equal(col(row1, "/users/{id}"), col(head, "PATH"));
    assert_int_equal(col(row2, "/users"), col(head, "PATH"));
    assert_int_equal(col(row1, "get_user"), col(head, "HANDLER"));
    assert_int_equal(col(row2, "create_user"), col(head, "HANDLER"));
    assert_int_equal(col(row2, "send_welcome"), col(head, "TASKS"));

    h_line_with(out, "ATTEMPTS", head, sizeof head);
    h_line_with(out, "5000ms", row1, sizeof row1);
    assert_int_equal(col(row1, "send_welcome"), col(head, "TASK"));
    assert_int_equal(col(row1, "3 "), col(head, "ATTEMPTS"));
    assert_int_equal(col(row1, "100..30000ms"), col(head, "BACKOFF"));
    assert_int_equal(col(row1, "5000ms"), col(head, "TIMEOUT"));
    free(out);
}

static void routes_cmd_json_lists_routes_and_tasks(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run_bgserve("routes", "--json", h_build_path("sample_app.so"), &out), 0);
    assert_true(out[0] == '{');
    h_assert_contains(out, "\"plugin\":{\"name\":\"notes\",\"version\":\"1.0.0\",\"abi\":\"1.1\"");
    h_assert_contains(out, "{\"method\":\"DELETE\",\"path\":\"/notes/{id}\","
                                "\"handler\":\"delete_note\",\"tasks\":[\"audit_log\"]");
    h_assert_contains(out, "{\"method\":\"GET\",\"path\":\"/\",\"handler\":\"index_page\","
                                "\"tasks\":[]");
    h_assert_contains(out, "{\"name\":\"export_note\",\"max_attempts\":1,");
    h_assert_contains(out, "\"max_concurrency\":2");
    h_assert_contains(out, "\"delivered_only\":false");
    assert_string_equal(out + strlen(out) - 2, "}\n");
    free(out);
}

static void routes_cmd_check_prints_the_same_tables(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run_bgserve("--check", h_build_path("tests/fixtures/good.so"), NULL, &out), 0);
    h_assert_contains(out, "METHOD  PATH");
    h_assert_contains(out, "create_user");
    h_assert_contains(out, "TASK          ATTEMPTS");
    h_assert_contains(out, "ok: ");
    free(out);
}

static void routes_cmd_usage_errors_exit_2(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run_bgserve("routes", NULL, NULL, &out), 2);
    h_assert_contains(out, "missing APP.so");
    free(out);
    assert_int_equal(run_bgserve("routes", "--yaml", h_build_path("sample_app.so"), &out), 2);
    h_assert_contains(out, "unknown option '--yaml'");
    free(out);
    assert_int_equal(run_bgserve("routes", "a.so", "b.so", &out), 2);
    h_assert_contains(out, "more than one APP.so");
    free(out);
}

static void routes_cmd_refused_plugin_exits_1(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run_bgserve("routes", h_build_path("tests/fixtures/bad_magic.so"), NULL, &out), 1);
    h_assert_contains(out, "cannot load plugin");
    h_assert_lacks(out, "METHOD");
    free(out);
    assert_int_equal(run_bgserve("routes", "--json", "/nonexistent/app.so", &out), 1);
    h_assert_contains(out, "cannot load plugin");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(routes_cmd_text_table_is_aligned),
        cmocka_unit_test(routes_cmd_json_lists_routes_and_tasks),
        cmocka_unit_test(routes_cmd_check_prints_the_same_tables),
        cmocka_unit_test(routes_cmd_usage_errors_exit_2),
        cmocka_unit_test(routes_cmd_refused_plugin_exits_1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
