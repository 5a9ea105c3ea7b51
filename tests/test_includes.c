/*
 * test_includes.c - scripts/check-includes.sh: the server's rooms have no
 * dependency cycle, keep their walls and export names with their room's
 * prefix, and the script fails, naming the chain and each link's reason
 * (or the misnamed symbol), when a scratch tree breaks one.
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
#include <unistd.h>

/* A scratch directory, removed by the test that made it. */
static char *scratch(void)
{
    char *dir = strdup("/tmp/bgserve-includes-XXXXXX");
    assert_non_null(dir);
    assert_non_null(mkdtemp(dir));
    return dir;
}

static void put(const char *dir, const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* cc -c the files (a space-separated list) in dir. */
static void compile(const char *dir, const char *files)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cd %s && cc -c %s", dir, files);
    assert_int_equal(system(cmd), 0);
}

/* Run the script on src (and objects in obj, may be NULL); its exit status. */
static int check(const char *src, const char *obj, char **out)
{
    const char *argv[] = {"/bin/sh", "scripts/check-includes.sh", src, obj, NULL};
    return h_run(argv, out);
}

static void includes_server_has_no_cycle(void **state)
{
    (void)state;
    char *out;
    int rc = check("cmd/bgserve", h_build_path("obj/cmd/bgserve"), &out);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "");
    free(out);
}

static void includes_cycle_printed_as_a_chain(void **state)
{
    (void)state;
    char *dir = scratch();
    put(dir, "alpha.h", "#include \"beta.h\"\n");
    put(dir, "alpha.c", "#include \"alpha.h\"\n");
    put(dir, "beta.h", "int beta(void);\n");
    put(dir, "beta.c", "#include \"beta.h\"\n#include \"gamma.h\"\n");
    put(dir, "gamma.h", "int gamma(void);\n");
    put(dir, "gamma.c", "#include \"gamma.h\"\n  #  include \"alpha.h\" /* spaced */\n");
    put(dir, "main.c", "#include \"alpha.h\"\n");
    char *out;
    assert_int_equal(check(dir, NULL, &out), 1);
    char want[256];
    snprintf(want, sizeof want, "dependency cycle in %s: alpha -> beta -> gamma -> alpha\n", dir);
    h_assert_contains(out, want);
    h_assert_contains(out, "  alpha -> beta: alpha.h includes beta.h\n");
    h_assert_contains(out, "  beta -> gamma: beta.c includes gamma.h\n");
    h_assert_contains(out, "  gamma -> alpha: gamma.c includes alpha.h\n");
    h_assert_contains(out, "move the shared\n  declaration down");
    free(out);
    h_rm_rf(dir);
    free(dir);
}

/* A function of one room declared in another's header shows up only in
 * the objects: one.o calls two(), two.o calls one(). */
static void includes_symbol_cycle_found_in_objects(void **state)
{
    (void)state;
    char *dir = scratch();
    put(dir, "one.h", "int one(void);\nint two(void); /* misplaced: two.c defines it */\n");
    put(dir, "one.c", "#include \"one.h\"\nint one(void) { return two(); }\n");
    put(dir, "two.h", "\n");
    put(dir, "two.c", "#include \"two.h\"\nint one(void);\nint two(void) { return one(); }\n");
    compile(dir, "one.c two.c");
    char *out;
    assert_int_equal(check(dir, NULL, &out), 0); /* the includes alone are fine */
    free(out);
    assert_int_equal(check(dir, dir, &out), 1);
    h_assert_contains(out, ": one -> two -> one\n");
    h_assert_contains(out, "  one -> two: one.o uses two (two.o)\n");
    h_assert_contains(out, "  two -> one: two.o uses one (one.o)\n");
    free(out);
    h_rm_rf(dir);
    free(dir);
}

static void includes_exported_name_without_prefix_fails(void **state)
{
    (void)state;
    char *dir = scratch();
    put(dir, "room.h", "int room_ok(void);\nint helper(void);\n");
    put(dir, "room.c", "#include \"room.h\"\nint room_ok(void) { return 1; }\n"
                       "int helper(void) { return 2; }\n");
    /* A part of the room "eng" (eng.h, no eng.c) may use eng_. */
    put(dir, "eng.h", "int eng_run(void);\n");
    put(dir, "eng_part.c", "#include \"eng.h\"\nint eng_run(void) { return 3; }\n");
    compile(dir, "room.c eng_part.c");
    char *out;
    assert_int_equal(check(dir, dir, &out), 1);
    h_assert_contains(out, "check-includes: room.o exports helper: name it room_... "
                           "(the room's prefix) or make it static\n");
    h_assert_lacks(out, "room_ok");
    h_assert_lacks(out, "eng_run");
    free(out);
    h_rm_rf(dir);
    free(dir);
}

static void includes_walls_kept(void **state)
{
    (void)state;
    char *dir = scratch();
    put(dir, "http.h", "\n");
    put(dir, "http.c", "#include <microhttpd.h>\n#include \"http.h\"\n");
    put(dir, "util.h", "\n");
    put(dir, "log.h", "\n");
    put(dir, "workers.h", "#include \"http.h\"\n");
    put(dir, "tasks.c", "#include \"workers.h\"\n");
    put(dir, "router.c", "#include \"util.h\"\n#include \"log.h\"\n");
    put(dir, "sched.c", "#include <microhttpd.h>\n");
    char *out;
    assert_int_equal(check(dir, NULL, &out), 1);
    h_assert_contains(out, "tasks reaches http (tasks -> workers -> http)");
    h_assert_contains(out, "workers reaches http (workers -> http)");
    h_assert_contains(out, "router depends on log (router.c includes log.h): the router stays pure");
    h_assert_contains(out, "sched.c includes <microhttpd.h>: only http.c may");
    h_assert_lacks(out, "http.c includes");
    h_assert_lacks(out, "dependency cycle");
    free(out);
    h_rm_rf(dir);
    free(dir);
}

static void includes_missing_directory_is_a_usage_error(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(check("/nonexistent/bgserve", NULL, &out), 2);
    h_assert_contains(out, "check-includes: no directory '/nonexistent/bgserve'");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(includes_server_has_no_cycle),
        cmocka_unit_test(includes_cycle_printed_as_a_chain),
        cmocka_unit_test(includes_symbol_cycle_found_in_objects),
        cmocka_unit_test(includes_exported_name_without_prefix_fails),
        cmocka_unit_test(includes_walls_kept),
        cmocka_unit_test(includes_missing_directory_is_a_usage_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
