/*
 * test_refusals.c - the real binary refuses broken plugins: run
 * `bgserve --check FIXTURE.so` and check the exit status and the words of
 * the one message it prints; a good plugin passes and lists its tables.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

static const char *binary(void)
{
    const char *b = h_build_path("bgserve");
    if (access(b, X_OK) != 0)
        fail_msg("%s is missing: run make first", b);
    return b;
}

/* Run --check on path; returns the exit status, *out the output. */
static int check(const char *path, char **out)
{
    const char *argv[] = {binary(), "--check", path, NULL};
    return h_run(argv, out);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

static void expect_refused(const char *path, const char *const *words)
{
    char *out = NULL;
    int rc = check(path, &out);
    if (rc != 1)
        h_fail_text(out, "%s: exit status %d, want 1; output:", path, rc);
    char head[1200];
    snprintf(head, sizeof(head), "bgserve: cannot load plugin '%s': ", path);
    h_assert_contains(out, head);
    /* One message: one refusal line and one fix line. */
    assert_int_equal(count(out, "cannot load plugin"), 1);
    assert_int_equal(count(out, "fix: "), 1);
    for (size_t i = 0; words[i] != NULL; i++)
        h_assert_contains(out, words[i]);
    free(out);
}

static void refusals_each_fixture(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *words[5]; /* NULL-terminated */
    } cases[] = {
        {"no_symbol", {"no bgserve_plugin_v1 symbol", "BGS_PLUGIN(...)"}},
        {"null_desc", {"returned NULL"}},
        {"bad_magic", {"0x12345678", "0x56534742", "not a bgserve plugin"}},
        {"major2", {"built for plugin ABI 2.0 but this bgserve supports 1.x (1.1)", "rebuild"}},
        {"minor_newer", {"built for ABI 1.4", "supports up to 1.1", "upgrade bgserve"}},
        {"small_struct", {"struct_size 16", "smaller than the ABI 1.0"}},
        {"null_handler", {"route 1 (GET /users)", "no handler"}},
        {"bad_method", {"route 1 (FETCH /things)", "unknown method 'FETCH'"}},
        {"bad_path", {"route 1 (GET users)", "must start with '/'"}},
        {"dup_route", {"route 2 (GET /users/{name})", "duplicate route"}},
        {"bad_param", {"route 1 (GET /users/{id)", "malformed parameter"}},
        {"reserved_route", {"route 1 (GET /_bgserve/x)", "reserved"}},
        {"dup_task", {"duplicate task name 'email'", "tasks 0 and 2"}},
        {"unknown_route_task", {"unknown task 'send_invoice'", "route 1 (POST /orders)"}},
        {"static_tls", {"flagged STATIC_TLS", "default TLS model"}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_refused(h_fixture(cases[i].name), cases[i].words);
}

static void refusals_text_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/bgs_refusals_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/x.so", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("#!/bin/sh\necho I am a script, not a plugin\n", f);
    fclose(f);
    const char *words[] = {"not a loadable shared object", NULL};
    expect_refused(path, words);
    unlink(path);
    rmdir(dir);
}

static void refusals_missing_file(void **state)
{
    (void)state;
    const char *words[] = {"No such file or directory", "check the path", NULL};
    expect_refused("/nonexistent/bgserve/app.so", words);
}

static void refusals_start_hook_failure(void **state)
{
    (void)state;
    const char *path = h_fixture("start_fails");
    char *out = NULL;
    int rc = check(path, &out);
    if (rc != 1)
        h_fail_text(out, "exit status %d, want 1; output:", rc);
    char want[1200];
    snprintf(want, sizeof(want), "bgserve: plugin '%s' failed to start: "
             "database unreachable at db.example:5432", path);
    h_assert_contains(out, want);
    free(out);
}

static void refusals_good_plugin_passes(void **state)
{
    (void)state;
    char *out = NULL;
    int rc = check(h_fixture("good"), &out);
    if (rc != 0)
        h_fail_text(out, "exit status %d, want 0; output:", rc);
    h_assert_lacks(out, "cannot load");
    h_assert_contains(out, "/users/{id}");
    h_assert_contains(out, "POST");
    h_assert_contains(out, "/users");
    h_assert_contains(out, "send_welcome");
    /* Three routes, each on its own line with its method. */
    assert_int_equal(count(out, "GET "), 2);
    assert_int_equal(count(out, "POST "), 1);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(refusals_each_fixture),
        cmocka_unit_test(refusals_text_file),
        cmocka_unit_test(refusals_missing_file),
        cmocka_unit_test(refusals_start_hook_failure),
        cmocka_unit_test(refusals_good_plugin_passes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
