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
#include "scaffold.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
    h_assert_contains(src, "return bgs_res_text(res, 503, bgs_strerror(rc));\n    if (rc != 0)");
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

/* The generated project's `make test` passes as generated, built against
 * this checkout through build/pkgconfig (the -uninstalled .pc files), as
 * a user trying a bgserve they have not installed would (test_install
 * does the same against an installed one). */
static void scaffold_make_test_passes_in_tree(void **state)
{
    sandbox *sb = *state;
    char *out, *err, cmd[PATH_MAX + 2048];
    assert_int_equal(run_new("demo", NULL, &out, &err), 0);
    free(out);
    free(err);
    snprintf(cmd, sizeof cmd,
             "cd demo && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u SANITIZE "
             "PKG_CONFIG_PATH='%s/%s' make --no-print-directory test SANITIZE='%s' 2>&1",
             sb->old_cwd, h_build_path("pkgconfig"), h_build_sanitize());
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    int rc = h_run(argv, &out);
    if (rc != 0)
        fprintf(stderr, "%s\n%s", cmd, out);
    assert_int_equal(rc, 0);
    h_assert_contains(out, "-lbgserve-testing");
    h_assert_contains(out, "[  PASSED  ] 4 test(s).");
    h_assert_contains(out, "processed 9 bytes (attempt 1)"); /* its task ran */
    free(out);
    /* A plugin that breaks the tests fails make test. */
    snprintf(cmd, sizeof cmd,
             "cd demo && sed -i 's/Hello from demo/Bye from demo/' demo.c && "
             "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u SANITIZE "
             "PKG_CONFIG_PATH='%s/%s' make --no-print-directory test SANITIZE='%s' 2>&1",
             sb->old_cwd, h_build_path("pkgconfig"), h_build_sanitize());
    rc = h_run(argv, &out);
    assert_int_not_equal(rc, 0);
    h_assert_contains(out, "[  FAILED  ] index_says_hello");
    free(out);
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
        cmocka_unit_test_setup_teardown(scaffold_refuses_existing_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(scaffold_refuses_bad_names, setup, teardown),
        cmocka_unit_test_setup_teardown(scaffold_usage_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
