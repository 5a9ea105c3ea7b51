/*
 * test_install.c - the plugin author's path end to end: `make install`
 * into a temporary DESTDIR (never the machine's /usr/local), `bgserve
 * new` with the installed binary, build the project through the
 * installed bgserve.pc, `make check`, serve it and request its routes,
 * then `make uninstall`.  Also: the man page documents every option of
 * --help and every field of /_bgserve/stats, and renders cleanly, and
 * `make compdb` lists every source.
 *
 * The tests run in order and share one installation (group setup).
 * pkg-config reads the staged .pc with PKG_CONFIG_PATH=$DESTDIR/usr/lib/
 * pkgconfig and PKG_CONFIG_SYSROOT_DIR=$DESTDIR, which turns its
 * -I/usr/include into -I$DESTDIR/usr/include.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <bgserve/testing.h> /* BGST_VERSION */

#include "helpers.h"

#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEADLINE_MS 10000u

static char root[64];      /* /tmp/bgserve-install-XXXXXX */
static char dest[128];     /* root/dest: the DESTDIR */
static char bin[192];      /* the installed bgserve */
static char pkgenv[512];   /* PKG_CONFIG_PATH=... PKG_CONFIG_SYSROOT_DIR=... */

/* Run a shell command (formatted); its stdout+stderr in *out. */
static int sh(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sh(char **out, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    return h_run(argv, out);
}

/* make in the repository, without the outer make's jobserver flags. */
#define MAKE_REPO "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -s"
/* The environment for make in the scaffolded project: neither the outer
 * make's flags nor its SANITIZE (make exports command-line variables, so
 * under `make test SANITIZE=...` every demo build would be instrumented). */
#define DEMO_ENV "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u SANITIZE"

static char *slurp(const char *path)
{
    return h_slurp(path, NULL);
}

static int setup(void **state)
{
    (void)state;
    char *out;
    strcpy(root, "/tmp/bgserve-install-XXXXXX");
    if (mkdtemp(root) == NULL)
        return -1;
    snprintf(dest, sizeof dest, "%s/dest", root);
    snprintf(bin, sizeof bin, "%s/usr/bin/bgserve", dest);
    snprintf(pkgenv, sizeof pkgenv,
             "PKG_CONFIG_PATH='%s/usr/lib/pkgconfig' PKG_CONFIG_SYSROOT_DIR='%s'", dest, dest);
    int rc = sh(&out, MAKE_REPO " install DESTDIR='%s' PREFIX=/usr INSTALL_BIN='%s' "
                "INSTALL_LIB='%s'", dest, h_build_path("bgserve"), h_build_path("lib"));
    if (rc != 0)
        fprintf(stderr, "make install failed (%d):\n%s\n", rc, out);
    free(out);
    return rc == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    h_rm_rf(root);
    return 0;
}

/* ------------------------------------------------------------------ */

static void install_puts_every_file(void **state)
{
    (void)state;
    char path[256];
    struct stat st;

    assert_int_equal(stat(bin, &st), 0);
    assert_true(st.st_mode & S_IXUSR);

    snprintf(path, sizeof path, "%s/usr/include/bgserve.h", dest);
    char *installed = slurp(path), *source = slurp("include/bgserve.h");
    assert_non_null(installed);
    assert_non_null(source);
    assert_string_equal(installed, source);
    free(installed);
    free(source);

    snprintf(path, sizeof path, "%s/usr/share/man/man1/bgserve.1", dest);
    assert_int_equal(stat(path, &st), 0);

    snprintf(path, sizeof path, "%s/usr/lib/pkgconfig/bgserve.pc", dest);
    char *pc = slurp(path);
    assert_non_null(pc);
    h_assert_contains(pc, "\nprefix=/usr\n");
    h_assert_contains(pc, "\nVersion: 0.1.0\n");
    h_assert_lacks(pc, "@"); /* every placeholder replaced */
    free(pc);

    /* the testing library: its header, both builds, its own .pc */
    snprintf(path, sizeof path, "%s/usr/include/bgserve/testing.h", dest);
    installed = slurp(path);
    source = slurp("testing/bgserve/testing.h");
    assert_non_null(installed);
    assert_non_null(source);
    assert_string_equal(installed, source);
    free(installed);
    free(source);
    snprintf(path, sizeof path, "%s/usr/lib/libbgserve-testing.a", dest);
    assert_int_equal(stat(path, &st), 0);
    snprintf(path, sizeof path, "%s/usr/lib/libbgserve-testing.so.0", dest);
    assert_int_equal(stat(path, &st), 0); /* the soname's link, to the file */
    snprintf(path, sizeof path, "%s/usr/lib/pkgconfig/bgserve-testing.pc", dest);
    pc = slurp(path);
    assert_non_null(pc);
    h_assert_contains(pc, "\nlibdir=/usr/lib\n");
    h_assert_contains(pc, "\nVersion: " BGST_VERSION "\n"); /* its own, not the server's */
    h_assert_lacks(pc, "@");
    free(pc);

    /* the .pc's version is the binary's */
    char *out;
    const char *argv[] = {bin, "--version", NULL};
    assert_int_equal(h_run(argv, &out), 0);
    h_assert_contains(out, "bgserve 0.1.0\n");
    free(out);
}

static void install_testing_pc_gives_library_flags(void **state)
{
    (void)state;
    char *out, want[256];
    assert_int_equal(sh(&out, "%s pkg-config --cflags bgserve-testing", pkgenv), 0);
    snprintf(want, sizeof want, "-I%s/usr/include", dest);
    h_assert_contains(out, want);
    free(out);
    assert_int_equal(sh(&out, "%s pkg-config --libs bgserve-testing", pkgenv), 0);
    snprintf(want, sizeof want, "-L%s/usr/lib -lbgserve-testing", dest);
    h_assert_contains(out, want);
    free(out);
    assert_int_equal(sh(&out, "%s pkg-config --static --libs bgserve-testing", pkgenv), 0);
    h_assert_contains(out, "-lmicrohttpd"); /* what the archive needs */
    free(out);
}

static void install_pc_gives_plugin_flags(void **state)
{
    (void)state;
    char *out, want[256];
    assert_int_equal(sh(&out, "%s pkg-config --cflags bgserve", pkgenv), 0);
    snprintf(want, sizeof want, "-I%s/usr/include -fPIC -fvisibility=hidden", dest);
    h_assert_contains(out, want);
    free(out);
    assert_int_equal(sh(&out, "%s pkg-config --variable=plugin_ldflags bgserve", pkgenv), 0);
    assert_string_equal(out, "-shared -Wl,-z,defs\n");
    free(out);
    assert_int_equal(sh(&out, "%s pkg-config --libs bgserve", pkgenv), 0);
    assert_string_equal(out, "\n"); /* plugins link no library */
    free(out);
}

static void install_scaffold_builds_checks_and_serves(void **state)
{
    (void)state;
    char *out, plugin[256];

    /* bgserve new, run from the installed binary */
    int rc = sh(&out, "cd '%s' && '%s' new demo", root, bin);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    h_assert_contains(out, "created demo/");
    free(out);

    /* make: built through the installed bgserve.pc, no edits */
    rc = sh(&out, "cd '%s/demo' && %s " DEMO_ENV " "
            "make BGSERVE='%s'", root, pkgenv, bin);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    char want[256];
    snprintf(want, sizeof want, "-I%s/usr/include", dest);
    h_assert_contains(out, want);
    free(out);
    snprintf(plugin, sizeof plugin, "%s/demo/demo.so", root);
    struct stat st;
    assert_int_equal(stat(plugin, &st), 0);

    /* only the entry point is exported */
    assert_int_equal(sh(&out, "nm -D --defined-only '%s' | awk '{print $3}'", plugin), 0);
    assert_string_equal(out, "bgserve_plugin_v1\n");
    free(out);

    /* other flags rebuild it (an ASan plugin needs an ASan server, so a
     * plugin left from a plain build would be the wrong one), and a
     * second make with the same flags does nothing */
    rc = sh(&out, "cd '%s/demo' && %s " DEMO_ENV " "
            "make SANITIZE=address BGSERVE='%s'", root, pkgenv, bin);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    h_assert_contains(out, "-fsanitize=address");
    free(out);
    assert_int_equal(sh(&out, "nm -D --undefined-only '%s' | grep -c __asan_", plugin), 0);
    free(out);
    rc = sh(&out, "cd '%s/demo' && %s " DEMO_ENV " make BGSERVE='%s' "
            "&& %s " DEMO_ENV " make BGSERVE='%s'",
            root, pkgenv, bin, pkgenv, bin);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    const char *cc = strstr(out, "-o demo.so");
    assert_non_null(cc);
    assert_null(strstr(cc + 1, "-o demo.so")); /* built by the first make only */
    h_assert_lacks(out, "-fsanitize");
    free(out);
    assert_int_not_equal(sh(&out, "nm -D --undefined-only '%s' | grep -c __asan_", plugin), 0);
    free(out);

    /* make check: bgserve --check through the installed binary */
    rc = sh(&out, "cd '%s/demo' && %s " DEMO_ENV " "
            "make check BGSERVE='%s'", root, pkgenv, bin);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    h_assert_contains(out, "ok: ./demo.so can be served");
    h_assert_contains(out, "create_job");
    free(out);

    /* make run serves ./demo.so with the chosen binary (dry run) */
    assert_int_equal(sh(&out, "cd '%s/demo' && %s " DEMO_ENV " "
                     "make -n run BGSERVE='%s'", root, pkgenv, bin), 0);
    h_assert_contains(out, "--port 8000 ./demo.so");
    h_assert_contains(out, "--reload --watch .");
    free(out);

    /* serve it with the installed binary and request its routes */
    h_server s;
    h_resp r;
    if (h_start_bin(&s, bin, plugin, NULL, NULL) != 0)
        fprintf(stderr, "demo did not start:\n%s\n", s.log ? s.log : "");
    assert_true(s.port > 0);
    assert_int_equal(h_get(&s, "/", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "Hello from demo!\n");
    h_resp_free(&r);
    assert_int_equal(h_get(&s, "/hello/ada", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello, ada\n");
    h_resp_free(&r);

    assert_int_equal(h_http(&s, "POST", "/jobs", "some work", 9, NULL, &r), 0);
    assert_int_equal(r.status, 202);
    const char *loc = h_header(&r, "Location");
    assert_non_null(loc);
    assert_int_equal(strncmp(loc, "/_bgserve/tasks/", 16), 0);
    char monitor[128];
    snprintf(monitor, sizeof monitor, "%s", loc);
    h_resp_free(&r);
    char *rec = h_wait_state(&s, monitor, "succeeded", DEADLINE_MS);
    assert_non_null(rec);
    free(rec);
    assert_true(h_wait_log(&s, "processed 9 bytes (attempt 1)", DEADLINE_MS));

    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);

    /* a second bgserve new demo refuses to overwrite */
    assert_int_equal(sh(&out, "cd '%s' && '%s' new demo", root, bin), 1);
    h_assert_contains(out, "already exists");
    free(out);
}

/* Every --long-option that --help lists is in the man page. */
/* After the scaffold test (same demo/): its make test passes against the
 * installed library and bgserve-testing.pc, with the build's sanitizer
 * (the installed library is that build's). */
static void install_scaffold_make_test_passes(void **state)
{
    (void)state;
    char *out;
    int rc = sh(&out, "cd '%s/demo' && %s " DEMO_ENV " make test SANITIZE='%s' BGSERVE='%s'",
                root, pkgenv, h_build_sanitize(), bin);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    char want[256];
    snprintf(want, sizeof want, "-L%s/usr/lib -lbgserve-testing", dest);
    h_assert_contains(out, want);
    h_assert_contains(out, "[  PASSED  ] 4 test(s).");
    free(out);
}

static void install_man_lists_every_option(void **state)
{
    (void)state;
    char *help;
    const char *argv[] = {h_build_path("bgserve"), "--help", NULL};
    assert_int_equal(h_run(argv, &help), 0);
    char *man = slurp("docs/bgserve.1");
    assert_non_null(man);
    int found = 0;
    for (const char *p = help; (p = strstr(p, "--")) != NULL;) {
        p += 2;
        size_t n = 0;
        while (islower((unsigned char)p[n]) || p[n] == '-')
            n++;
        if (n == 0)
            continue;
        char troff[80];
        snprintf(troff, sizeof troff, "\\-\\-");
        for (size_t i = 0; i < n && strlen(troff) + 3 < sizeof troff; i++) {
            size_t l = strlen(troff);
            if (p[i] == '-') {
                troff[l] = '\\';
                troff[l + 1] = '-';
                troff[l + 2] = '\0';
            } else {
                troff[l] = p[i];
                troff[l + 1] = '\0';
            }
        }
        if (strstr(man, troff) == NULL)
            fprintf(stderr, "the man page lacks --%.*s\n", (int)n, p);
        h_assert_contains(man, troff);
        found++;
    }
    assert_true(found >= 17); /* every option of cli.c at least */
    /* the subcommands, the environment and the endpoints too */
    static const char *const more[] = {
        ".BI \"new \" NAME", ".BR \"routes \"", "\n.B PORT\n", "\n.B BGSERVE_DEBUG\n",
        "\n.B NO_COLOR\n", "/_bgserve/stats", "/_bgserve/tasks/", "?wait=", ".SH EXIT STATUS",
        ".SH SIGNALS", ".SH FILES", ".SH SEE ALSO",
    };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        if (strstr(man, more[i]) == NULL)
            fprintf(stderr, "the man page lacks %s\n", more[i]);
        h_assert_contains(man, more[i]);
    }
    free(man);
    free(help);
}

/* Call fn with the path of every key of the JSON object text: "uptime_s",
 * "queue.depth", "journal.commit_us.p50"; keys under "tasks" (task names
 * and their counters) are left out. */
static void json_paths(const char *text, void (*fn)(const char *path, void *arg), void *arg)
{
    char stack[8][64] = {{0}}; /* the keys of the objects open, [0] the outer one's "" */
    char key[64] = "";
    int depth = 0;
    for (const char *p = text; *p; p++) {
        if (*p == '{') {
            if (depth < 8)
                snprintf(stack[depth], sizeof stack[depth], "%s", key);
            depth++;
            key[0] = '\0';
        } else if (*p == '}') {
            depth--;
        } else if (*p == '"') {
            size_t n = 0;
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                if (n + 1 < sizeof key)
                    key[n++] = *p;
            }
            key[n] = '\0';
            const char *q = p + 1;
            while (*q == ' ')
                q++;
            if (*q != ':') {
                key[0] = '\0'; /* a value */
                continue;
            }
            if (depth >= 2 && strcmp(stack[1], "tasks") == 0)
                continue;
            char path[256] = "";
            for (int i = 1; i < depth && i < 8; i++) {
                strncat(path, stack[i], sizeof path - strlen(path) - 1);
                strncat(path, ".", sizeof path - strlen(path) - 1);
            }
            strncat(path, key, sizeof path - strlen(path) - 1);
            fn(path, arg);
        }
    }
}

typedef struct man_check {
    const char *man;
    int fields, missing;
} man_check;

/* A field of a nested object (a.b.c) counts as named when its parent
 * (a.b) and its own name are. */
static void man_names(const char *path, void *arg)
{
    man_check *c = arg;
    char parent[256];
    snprintf(parent, sizeof parent, "%s", path);
    char *leaf = strrchr(parent, '.');
    int named = strstr(c->man, path) != NULL;
    if (!named && leaf && strchr(parent, '.') != leaf) {
        *leaf++ = '\0';
        named = strstr(c->man, parent) && strstr(c->man, leaf);
    }
    c->fields++;
    if (!named) {
        fprintf(stderr, "the man page lacks the stats field %s\n", path);
        c->missing++;
    }
}

/* Every field of /_bgserve/stats, with --journal (its fields too) and
 * the adaptive linger (its too), is named in the man page. */
static void install_man_lists_every_stats_field(void **state)
{
    (void)state;
    char jpath[160];
    snprintf(jpath, sizeof jpath, "%s/stats.journal", root);
    const char *args[] = {"--journal", jpath, NULL};
    h_server s;
    if (h_start_app(&s, h_build_path("sample_app.so"), args, NULL) != 0)
        fail_msg("sample_app did not start");
    h_resp r;
    assert_int_equal(h_get(&s, "/_bgserve/stats", &r), 0);
    assert_int_equal(r.status, 200);
    char *man = h_slurp("docs/bgserve.1", NULL);
    assert_non_null(man);
    man_check c = {.man = man};
    json_paths(r.body, man_names, &c);
    h_resp_free(&r);
    h_stop_clean(&s);
    h_free(&s);
    free(man);
    assert_true(c.fields >= 60); /* every stats object, the journal's too */
    assert_int_equal(c.missing, 0);
}

static void install_man_renders_without_warnings(void **state)
{
    (void)state;
    char *out;
    if (sh(&out, "command -v man") != 0) {
        free(out);
        skip(); /* no man(1) on this machine */
    }
    free(out);
    int rc = sh(&out, "LC_ALL=C MANWIDTH=80 man --warnings -l docs/bgserve.1 2>&1 >/dev/null");
    assert_int_equal(rc, 0);
    assert_string_equal(out, "");
    free(out);
    assert_int_equal(sh(&out, "LC_ALL=C MANWIDTH=80 man -l docs/bgserve.1 2>/dev/null"), 0);
    h_assert_contains(out, "EXIT STATUS");
    h_assert_contains(out, "--drain-timeout");
    free(out);
}

static void install_compdb_lists_every_source(void **state)
{
    (void)state;
    char *out, path[256];
    snprintf(path, sizeof path, "%s/compile_commands.json", root);
    int rc = sh(&out, MAKE_REPO " compdb COMPDB='%s'", path);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    free(out);
    char *db = slurp(path);
    assert_non_null(db);
    assert_int_equal(db[0], '[');
    assert_string_equal(db + strlen(db) - 2, "]\n");

    /* one entry per C file the Makefile compiles */
    int entries = 0;
    for (const char *p = db; (p = strstr(p, "\"file\": ")) != NULL; p++)
        entries++;
    assert_int_equal(sh(&out, "ls cmd/bgserve/*.c testing/*.c plugins/*.c sample_app/*.c "
                     "tests/fixtures/*.c tests/test_*.c tests/support/*.c | wc -l"), 0);
    assert_int_equal(entries, atoi(out));
    free(out);

    char cwd[1024], want[1200];
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(want, sizeof want, "\"file\": \"%s/cmd/bgserve/main.c\"", cwd);
    h_assert_contains(db, want);
    /* a plugin gets the plugin flags, a test the cmocka include path */
    const char *hello = strstr(db, "plugins/hello.c\"");
    assert_non_null(hello);
    const char *end = strchr(hello, '}');
    const char *vis = strstr(hello, "-fvisibility=hidden");
    assert_true(vis != NULL && vis < end);
    h_assert_contains(db, "-iquote tests/support");
    h_assert_lacks(db, "-MMD");
    free(db);
}

/* Last: uninstall removes every installed file. */
static void install_uninstall_removes_every_file(void **state)
{
    (void)state;
    char *out;
    int rc = sh(&out, MAKE_REPO " uninstall DESTDIR='%s' PREFIX=/usr", dest);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    free(out);
    assert_int_equal(sh(&out, "find '%s' -type f -o -type l", dest), 0);
    assert_string_equal(out, "");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(install_puts_every_file),
        cmocka_unit_test(install_pc_gives_plugin_flags),
        cmocka_unit_test(install_testing_pc_gives_library_flags),
        cmocka_unit_test(install_scaffold_builds_checks_and_serves),
        cmocka_unit_test(install_scaffold_make_test_passes),
        cmocka_unit_test(install_man_lists_every_option),
        cmocka_unit_test(install_man_lists_every_stats_field),
        cmocka_unit_test(install_man_renders_without_warnings),
        cmocka_unit_test(install_compdb_lists_every_source),
        cmocka_unit_test(install_uninstall_removes_every_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
