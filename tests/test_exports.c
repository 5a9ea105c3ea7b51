/*
 * test_exports.c - every built plugin exports exactly one dynamic symbol,
 * bgserve_plugin_v1 (checked with `nm -D --defined-only`); the server
 * exports none of its own functions, so a plugin built without hidden
 * visibility that defines functions of the same names calls its own.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

/* nm's full path (h_run uses execv, which does not search PATH). */
static const char *nm_path(void)
{
    static char found[1024];
    if (found[0] != '\0')
        return found;
    const char *env = getenv("PATH");
    char *copy = strdup(env != NULL && *env ? env : "/usr/bin:/bin");
    assert_non_null(copy);
    char *save = NULL;
    for (char *dir = strtok_r(copy, ":", &save); dir != NULL;
         dir = strtok_r(NULL, ":", &save)) {
        snprintf(found, sizeof(found), "%s/nm", dir);
        if (access(found, X_OK) == 0) {
            free(copy);
            return found;
        }
    }
    free(copy);
    found[0] = '\0';
    fail_msg("nm not found in PATH (install binutils)");
    return NULL;
}

/* Assert that path's only defined dynamic symbol is bgserve_plugin_v1. */
static void assert_one_export(const char *path)
{
    const char *argv[] = {nm_path(), "-D", "--defined-only", path, NULL};
    char *out = NULL;
    int rc = h_run(argv, &out);
    if (rc != 0)
        h_fail_text(out, "nm -D --defined-only %s: exit %d", path, rc);
    int found = 0;
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        /* "0000000000001139 T bgserve_plugin_v1": the name is last. */
        const char *name = strrchr(line, ' ');
        name = name != NULL ? name + 1 : line;
        if (strcmp(name, "bgserve_plugin_v1") == 0)
            found++;
        else
            fail_msg("%s exports '%s' besides bgserve_plugin_v1 (build "
                     "plugins with -fvisibility=hidden and BGS_PLUGIN)",
                     path, line);
    }
    if (found != 1)
        fail_msg("%s: bgserve_plugin_v1 defined %d times", path, found);
    free(out);
}

static int ends_with_so(const char *name)
{
    size_t n = strlen(name);
    return n > 3 && strcmp(name + n - 3, ".so") == 0;
}

static void exports_plugins_export_one_symbol(void **state)
{
    (void)state;
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s", h_build_path("plugins"));
    /* The lead's hello plugin is always there. */
    char hello[1100];
    snprintf(hello, sizeof(hello), "%s/hello.so", dir);
    if (access(hello, R_OK) != 0)
        fail_msg("%s is missing: run make first", hello);

    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!ends_with_so(e->d_name))
            continue;
        char path[1400];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        assert_one_export(path);
        n++;
    }
    closedir(d);
    assert_true(n >= 1);
}

static void exports_sample_app_exports_one_symbol(void **state)
{
    (void)state;
    const char *path = h_build_path("sample_app.so");
    if (access(path, R_OK) != 0)
        fail_msg("%s is missing: run make first", path);
    assert_one_export(path);
}

static void exports_good_fixture_exports_one_symbol(void **state)
{
    (void)state;
    const char *path = h_build_path("tests/fixtures/good.so");
    if (access(path, R_OK) != 0)
        fail_msg("%s is missing: run make %s first", path, path);
    assert_one_export(path);
}

static void exports_checker_catches_extra_symbol(void **state)
{
    (void)state;
    /* no_symbol.so exports another function: the nm parsing must see it
     * (so the tests above could fail). */
    const char *path = h_build_path("tests/fixtures/no_symbol.so");
    const char *argv[] = {nm_path(), "-D", "--defined-only", path, NULL};
    char *out = NULL;
    assert_int_equal(h_run(argv, &out), 0);
    h_assert_contains(out, "some_other_entry");
    h_assert_lacks(out, "bgserve_plugin_v1");
    free(out);
}

/* Lines of `nm ARGS... path` (malloc'd). */
static char *nm_out(const char *opt1, const char *opt2, const char *path)
{
    const char *argv[] = {nm_path(), opt1, opt2, path, NULL};
    char *out = NULL;
    int rc = h_run(argv, &out);
    if (rc != 0)
        h_fail_text(out, "nm %s %s %s: exit %d", opt1, opt2, path, rc);
    return out;
}

/* How many functions or variables of the server's own objects binary
 * exports dynamically (each is printed when show). */
static int internal_exports(const char *binary, int show)
{
    char *dyn = nm_out("-D", "--defined-only", binary);
    char *own = nm_out("-g", "--defined-only", h_build_path("libbgserve.a"));
    char *main_o = nm_out("-g", "--defined-only", h_build_path("obj/cmd/bgserve/main.o"));
    int n = 0;
    char *save = NULL;
    for (char *line = strtok_r(dyn, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        const char *name = strrchr(line, ' ');
        name = name != NULL ? name + 1 : line;
        char want[300];
        /* "0000000000001139 T name" in the objects' listing */
        snprintf(want, sizeof want, " %s\n", name);
        if (strlen(name) > 2 && (strstr(own, want) || strstr(main_o, want))) {
            if (show)
                fprintf(stderr, "%s exports the internal symbol %s\n", binary, name);
            n++;
        }
    }
    free(dyn);
    free(own);
    free(main_o);
    return n;
}

static void exports_server_exports_no_internal_symbol(void **state)
{
    (void)state;
    assert_int_equal(internal_exports(h_build_path("bgserve"), 1), 0);
    /* the check sees exports where there are some: test programs link
     * with -rdynamic */
    assert_true(internal_exports(h_build_path("tests/test_tasks"), 0) > 10);
}

static void exports_plugin_defining_server_names_calls_its_own(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    /* built without -fvisibility=hidden: it exports those names too */
    char *dyn = nm_out("-D", "--defined-only", h_fixture("symbol_clash"));
    h_assert_contains(dyn, " util_strcaseeq\n");
    free(dyn);
    assert_int_equal(h_start_app(&s, h_fixture("symbol_clash"), NULL, NULL), 0);
    assert_int_equal(h_get(&s, "/", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "own own own own own\n");
    h_resp_free(&r);
    h_stop_clean(&s);
    h_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(exports_plugins_export_one_symbol),
        cmocka_unit_test(exports_sample_app_exports_one_symbol),
        cmocka_unit_test(exports_good_fixture_exports_one_symbol),
        cmocka_unit_test(exports_checker_catches_extra_symbol),
        cmocka_unit_test(exports_server_exports_no_internal_symbol),
        cmocka_unit_test(exports_plugin_defining_server_names_calls_its_own),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
