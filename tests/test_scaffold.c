/*
 * test_scaffold.c - `bgserve new NAME` (scaffold_main, in process): the
 * files it writes, names it refuses, and never overwriting.  Each test
 * works in its own temporary directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"
#include "redis.h"
#include "scaffold.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct sandbox {
    char old_cwd[PATH_MAX];
    char dir[64];
} sandbox;

static int setup(void **state)
{
    sandbox *sb = calloc(1, sizeof *sb);
    if (sb == NULL || getcwd(sb->old_cwd, sizeof sb->old_cwd) == NULL)
        return -1;
    strcpy(sb->dir, "/tmp/bgserve-scaffold-XXXXXX");
    if (mkdtemp(sb->dir) == NULL || chdir(sb->dir) != 0)
        return -1;
    *state = sb;
    return 0;
}

static int teardown(void **state)
{
    sandbox *sb = *state;
    if (chdir(sb->old_cwd) != 0)
        return -1;
    h_rm_rf(sb->dir);
    free(sb);
    return 0;
}

/* Run scaffold_main with up to two arguments; stdout and stderr text
 * are returned through out/err (malloc'd). */
static int run_new(const char *a1, const char *a2, char **out, char **err)
{
    char *argv[] = {(char *)"new", (char *)a1, (char *)a2, NULL};
    int argc = a1 == NULL ? 1 : a2 == NULL ? 2 : 3;
    size_t olen, elen;
    FILE *o = open_memstream(out, &olen), *e = open_memstream(err, &elen);
    int rc = scaffold_main(argc, argv, o, e);
    fclose(o);
    fclose(e);
    return rc;
}

static char *slurp(const char *path)
{
    return h_slurp(path, NULL);
}

static void scaffold_creates_source_makefile_and_gitignore(void **state)
{
    (void)state;
    char *out, *err;
    assert_int_equal(run_new("my-app", NULL, &out, &err), 0);
    assert_string_equal(err, "");
    h_assert_contains(out, "created my-app/");
    h_assert_contains(out, "make run");

    char *src = slurp("my-app/my-app.c");
    assert_non_null(src);
    h_assert_contains(src, "#include <bgserve.h>");
    h_assert_contains(src, "BGS_PLUGIN(.name = \"my-app\"");
    h_assert_contains(src, "bgs_res_accepted(res, id)");     /* 202 + monitor */
    /* load (503) apart from a bug (500 with bgserve's warning) */
    h_assert_contains(src, "if (rc == BGS_EFULL || rc == BGS_ESHUTDOWN)");
    h_assert_contains(src, "return busy(res, rc);\n    if (rc != 0)");
    h_assert_contains(src, "bgs_res_header(res, \"Retry-After\", \"1\")");
    h_assert_contains(src, "{.name = \"process\", .fn = process"); /* a task */
    h_assert_contains(src, "BGS_GET(\"/\", index_page)");   /* a route */
    h_assert_lacks(src, "@NAME@");

    char *mk = slurp("my-app/Makefile");
    assert_non_null(mk);
    h_assert_contains(mk, "BGSERVE    ?= bgserve");
    h_assert_contains(mk, "--cflags bgserve");
    h_assert_contains(mk, "--variable=plugin_ldflags bgserve");
    h_assert_contains(mk, "my-app.so: $(SRCS) $(HDRS) .my-app.flags\n\t"); /* recipes use tabs */
    h_assert_contains(mk, "SRCS       := $(wildcard *.c)"); /* every .c, not only my-app.c */
    h_assert_contains(mk, "-o $@ $(SRCS)");
    h_assert_contains(mk, "CFLAGS     ?= -std=c11 -O0 -g -Wall -Wextra\n"); /* fast dev build */
    h_assert_lacks(mk, "-Werror\n");   /* warnings never fail the edit loop */
    h_assert_contains(mk, "-fsanitize=$(SANITIZE)");
    h_assert_contains(mk, "check: my-app.so\n\t$(BGSERVE) --check ./my-app.so");
    h_assert_contains(mk, "--reload --watch . --build 'make --no-print-directory SANITIZE=$(SANITIZE) my-app.so'");
    h_assert_lacks(mk, "@NAME@");

    /* make test: the tests built with the testing library and cmocka */
    h_assert_contains(mk, "--cflags bgserve-testing cmocka");
    h_assert_contains(mk, "tests/test_%: tests/test_%.c .my-app.flags\n\t");
    h_assert_contains(mk, "test: my-app.so $(TESTS)\n\t@for t in $(TESTS); do ./$$t ./my-app.so");
    char *test = slurp("my-app/tests/test_my-app.c");
    assert_non_null(test);
    h_assert_contains(test, "#include <bgserve/testing.h>");
    h_assert_contains(test, "static const char *plugin = \"./my-app.so\";");
    h_assert_contains(test, "\"Hello from my-app!\\n\"");
    h_assert_lacks(test, "@NAME@");
    free(test);
    h_assert_contains(out, "make test");

    char *gi = slurp("my-app/.gitignore");
    assert_non_null(gi);
    assert_string_equal(gi, "*.so\n.*.flags\ntests/test_*\n!tests/test_*.c\n");
    free(src);
    free(mk);
    free(gi);
    free(out);
    free(err);
}

/* In the generated project demo: `PRE make TARGET` (pre: a shell command
 * run first, then "&&"; "" for none), built against this checkout
 * through build/pkgconfig (the -uninstalled .pc files).  Its exit
 * status; its output in *out, also printed when it fails unless the
 * failure is expected (quiet): a failing cmocka run's "[  FAILED  ]"
 * lines in this program's output would count in tests/run.sh's tally. */
static int make_demo_as(const sandbox *sb, const char *pre, const char *target, char **out,
                        int quiet)
{
    char cmd[PATH_MAX + 2048];
    snprintf(cmd, sizeof cmd,
             "cd demo && %s%s env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u SANITIZE "
             "PKG_CONFIG_PATH='%s/%s' make --no-print-directory %s SANITIZE='%s' 2>&1",
             pre, pre[0] ? " &&" : "", sb->old_cwd, h_build_path("pkgconfig"), target,
             h_build_sanitize());
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    int rc = h_run(argv, out);
    if (rc != 0 && !quiet)
        fprintf(stderr, "%s\n%s", cmd, *out);
    return rc;
}

static int make_demo(const sandbox *sb, const char *pre, const char *target, char **out)
{
    return make_demo_as(sb, pre, target, out, 0);
}

/* `bgserve new demo` in the sandbox: the project the tests below build. */
static void new_demo(void)
{
    char *out, *err;
    assert_int_equal(run_new("demo", NULL, &out, &err), 0);
    free(out);
    free(err);
}

/* The generated project's `make test` passes as generated, as a user
 * trying a bgserve they have not installed would (test_install does the
 * same against an installed one). */
static void scaffold_make_test_passes_in_tree(void **state)
{
    sandbox *sb = *state;
    char *out;
    new_demo();
    assert_int_equal(make_demo(sb, "", "test", &out), 0);
    h_assert_contains(out, "-lbgserve-testing");
    h_assert_contains(out, "[  PASSED  ] 4 test(s).");
    h_assert_contains(out, "processed 9 bytes (attempt 1)"); /* its task ran */
    free(out);
    /* A plugin that breaks the tests fails make test. */
    assert_int_not_equal(make_demo_as(sb, "sed -i 's/Hello from demo/Bye from demo/' demo.c",
                                      "test", &out, 1), 0);
    h_assert_contains(out, "[  FAILED  ] index_says_hello");
    free(out);
}

/* The generated app's POST /jobs, when bgserve cannot take its task,
 * answers 503 with Retry-After and words a client can act on (load, not
 * a bug: retry), not the bare bgs_strerror text, which says "queue is
 * full" whatever the cause.  Here the cause is --broker with its redis
 * gone, which counts as a full queue once the server knows. */
static void scaffold_job_refused_answers_503_with_retry_after(void **state)
{
    sandbox *sb = *state;
    char *out;
    new_demo();
    assert_int_equal(make_demo(sb, "", "demo.so", &out), 0);
    free(out);
    char plugin[PATH_MAX];
    snprintf(plugin, sizeof plugin, "%s/demo/demo.so", sb->dir);
    assert_int_equal(chdir(sb->old_cwd), 0); /* the server is build/bgserve */

    h_redis r;
    h_redis_start(&r, NULL, NULL);
    const char *args[] = {"--broker", r.url, NULL};
    h_server s;
    if (h_start_app(&s, plugin, args, NULL) != 0)
        fail_msg("demo.so did not start");
    h_redis_halt(&r);
    /* Until the server knows redis is gone, it answers for the plugin
     * (the tasks of a 2xx could not be made durable); then the plugin's
     * bgs_res_task gets BGS_EFULL. */
    h_resp resp = {0};
    uint64_t end = h_now_ms() + 20000;
    int got = 0;
    while (!got && h_now_ms() < end) {
        h_resp_free(&resp);
        assert_int_equal(h_http(&s, "POST", "/jobs", "x", 1, NULL, &resp), 0);
        got = resp.status == 503 && strncmp(resp.body, "Service Unavailable", 19) != 0;
        if (!got) {
            h_drain_log(&s);
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL); /* polling interval */
        }
    }
    if (!got)
        fail_msg("POST /jobs never got the app's 503; last: %ld %s", resp.status, resp.body);
    assert_string_equal(resp.body, "the server is busy: the job was not accepted, retry "
                                   "later\n");
    const char *ra = h_header(&resp, "Retry-After");
    assert_non_null(ra);
    assert_string_equal(ra, "1");
    h_resp_free(&resp);
    h_stop_clean(&s);
    h_free(&s);
    h_redis_stop(&r);
    assert_int_equal(chdir(sb->dir), 0); /* for teardown's sake */
}

static void scaffold_refuses_existing_directory(void **state)
{
    (void)state;
    char *out, *err;
    assert_int_equal(mkdir("taken", 0777), 0);
    FILE *f = fopen("taken/Makefile", "w");
    assert_non_null(f);
    fputs("mine\n", f);
    fclose(f);

    assert_int_equal(run_new("taken", NULL, &out, &err), 1);
    h_assert_contains(err, "'taken' already exists");
    assert_string_equal(out, "");
    char *mk = slurp("taken/Makefile");
    assert_string_equal(mk, "mine\n"); /* untouched */
    struct stat st;
    assert_int_not_equal(stat("taken/taken.c", &st), 0);
    free(mk);
    free(out);
    free(err);

    /* a plain file of that name is refused too */
    f = fopen("afile", "w");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(run_new("afile", NULL, &out, &err), 1);
    h_assert_contains(err, "already exists");
    free(out);
    free(err);
}

static void scaffold_refuses_bad_names(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "9lives", "-x", "_x", "a/b", "..", "a.b", "a b", "", NULL /* 65 x */,
    };
    char longest[66];
    memset(longest, 'x', 65);
    longest[65] = '\0';
    struct stat st;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *out, *err;
        const char *name = bad[i] ? bad[i] : longest;
        int rc = run_new(name, NULL, &out, &err);
        if (rc != 2)
            fprintf(stderr, "name '%s' gave %d\n", name, rc);
        assert_int_equal(rc, 2);
        h_assert_contains(err, "Usage: bgserve new NAME");
        if (name[0] && name[0] != '-' && strcmp(name, "..") != 0)
            assert_int_not_equal(stat(name, &st), 0);
        free(out);
        free(err);
    }
    assert_true(scaffold_name_ok("a"));
    assert_true(scaffold_name_ok("Demo_2-x"));
    longest[64] = '\0';
    assert_true(scaffold_name_ok(longest)); /* 64 is the longest accepted */
    assert_false(scaffold_name_ok("9"));
}

static void scaffold_usage_errors(void **state)
{
    (void)state;
    char *out, *err;
    assert_int_equal(run_new(NULL, NULL, &out, &err), 2);
    h_assert_contains(err, "missing NAME");
    free(out);
    free(err);
    assert_int_equal(run_new("one", "two", &out, &err), 2);
    h_assert_contains(err, "one NAME at a time");
    free(out);
    free(err);
    struct stat st;
    assert_int_not_equal(stat("one", &st), 0);
    assert_int_equal(run_new("--help", NULL, &out, &err), 0);
    h_assert_contains(out, "Usage: bgserve new NAME");
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(scaffold_creates_source_makefile_and_gitignore, setup, teardown),
        cmocka_unit_test_setup_teardown(scaffold_make_test_passes_in_tree, setup, teardown),
        cmocka_unit_test_setup_teardown(scaffold_job_refused_answers_503_with_retry_after, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(scaffold_refuses_existing_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(scaffold_refuses_bad_names, setup, teardown),
        cmocka_unit_test_setup_teardown(scaffold_usage_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
