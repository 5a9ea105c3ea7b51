/*
 * scaffold.c - `bgserve new NAME`: writes a plugin project that builds
 * against an installed bgserve (pkg-config bgserve) with no edits, and
 * its tests (tests/test_NAME.c, with the testing library: pkg-config
 * bgserve-testing) that `make test` runs.
 *
 * The templates live here as strings with @NAME@ placeholders, so an
 * installed bgserve needs no data files.  Files are created with O_EXCL
 * inside a directory this command just made; on any failure everything
 * created so far is removed again.  Runs in the main thread of a
 * short-lived command: no shared state, no locks.
 */
#include "scaffold.h"

#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAME_MAX_LEN 64

/* ------------------------------------------------------------------ */
/* Templates                                                           */
/* ------------------------------------------------------------------ */

static const char plugin_template[] =
"/*\n"
" * @NAME@ - a bgserve plugin.\n"
" *\n"
" *   GET  /             a plain route\n"
" *   GET  /hello/{who}  a route with a path parameter\n"
" *   POST /jobs         answers 202 Accepted at once; the \"process\" task\n"
" *                      runs on a bgserve worker after the response was\n"
" *                      sent.  The Location header (/_bgserve/tasks/ID) is\n"
" *                      its status monitor: poll it until \"succeeded\".\n"
" *\n"
" *   make          build @NAME@.so (flags from pkg-config bgserve)\n"
" *   make check    validate it and print its route and task tables\n"
" *   make test     run tests/test_@NAME@.c (bgserve's testing library)\n"
" *   make run      serve it on http://127.0.0.1:8000\n"
" *\n"
" *   curl -i -X POST http://127.0.0.1:8000/jobs --data 'some work'\n"
" *\n"
" * The API is include/bgserve.h (`pkg-config --cflags bgserve` finds it).\n"
" */\n"
"#include <bgserve.h>\n"
"\n"
"#include <string.h>\n"
"\n"
"/* A task: runs after the response, retried up to max_attempts times\n"
" * when it returns non-zero.  payload is a private copy of what the\n"
" * handler attached (here: the request body). */\n"
"static int process(bgs_task_ctx *ctx, const void *payload, size_t len)\n"
"{\n"
"    (void)payload;\n"
"    if (bgs_task_cancelled(ctx)) { /* the server is stopping */\n"
"        bgs_task_error(ctx, \"cancelled before it started\");\n"
"        return -1;\n"
"    }\n"
"    /* Real work goes here: send a mail, call an API, write a file. */\n"
"    bgs_task_log(ctx, \"processed %zu bytes (attempt %u)\", len,\n"
"                 (unsigned)bgs_task_attempt(ctx));\n"
"    return 0;\n"
"}\n"
"\n"
"static int index_page(bgs_req *req, bgs_res *res)\n"
"{\n"
"    (void)req;\n"
"    return bgs_res_text(res, 200, \"Hello from @NAME@!\\n\");\n"
"}\n"
"\n"
"static int hello(bgs_req *req, bgs_res *res)\n"
"{\n"
"    int rc = bgs_res_content_type(res, \"text/plain; charset=utf-8\");\n"
"    if (rc == 0)\n"
"        rc = bgs_res_printf(res, \"hello, %s\\n\", bgs_req_param(req, \"who\"));\n"
"    return rc;\n"
"}\n"
"\n"
"/* 503 for a job bgserve cannot take now: load, not a bug, so the client\n"
" * is told to come back.  BGS_EFULL: its task queue is full (or, with\n"
" * --broker, redis is away); BGS_ESHUTDOWN: it is stopping.  bgserve's\n"
" * log says which, and what to change. */\n"
"static int busy(bgs_res *res, int why)\n"
"{\n"
"    int rc = bgs_res_header(res, \"Retry-After\", \"1\");\n"
"    if (rc != 0)\n"
"        return rc;\n"
"    return bgs_res_text(res, 503, why == BGS_ESHUTDOWN\n"
"        ? \"the server is stopping: the job was not accepted, retry later\\n\"\n"
"        : \"the server is busy: the job was not accepted, retry later\\n\");\n"
"}\n"
"\n"
"/* 202 Accepted: attach the task, answer at once, point at its monitor. */\n"
"static int create_job(bgs_req *req, bgs_res *res)\n"
"{\n"
"    size_t len = 0;\n"
"    const void *body = bgs_req_body(req, &len);\n"
"    uint64_t id = 0;\n"
"    int rc = bgs_res_task(res, \"process\", body, len, &id);\n"
"    if (rc == BGS_EFULL || rc == BGS_ESHUTDOWN)\n"
"        return busy(res, rc);\n"
"    if (rc != 0) /* a bug (BGS_ENOTASK: a typo): bgserve printed a warning */\n"
"        return rc; /* non-zero answers 500 */\n"
"    rc = bgs_res_text(res, 202, \"accepted\\n\");\n"
"    if (rc == 0)\n"
"        rc = bgs_res_accepted(res, id); /* Location: /_bgserve/tasks/ID */\n"
"    return rc;\n"
"}\n"
"\n"
"static const bgs_route routes[] = {\n"
"    BGS_GET(\"/\", index_page),\n"
"    BGS_GET(\"/hello/{who}\", hello),\n"
"    BGS_POST(\"/jobs\", create_job),\n"
"};\n"
"\n"
"static const bgs_task_def tasks[] = {\n"
"    {.name = \"process\", .fn = process, .max_attempts = 3},\n"
"};\n"
"\n"
"BGS_PLUGIN(.name = \"@NAME@\", .version = \"0.1.0\",\n"
"           .routes = routes, .route_count = BGS_COUNT(routes),\n"
"           .tasks = tasks, .task_count = BGS_COUNT(tasks))\n";

static const char makefile_template[] =
"# @NAME@ - a bgserve plugin.\n"
"#\n"
"#   make         build @NAME@.so from every .c here (-O0 -g: a fast edit\n"
"#                loop; warnings show but do not fail it; CI adds -Werror:\n"
"#                make CFLAGS='-std=c11 -O2 -g -Wall -Wextra -Werror')\n"
"#   make SANITIZE=address   the same with AddressSanitizer; serve it with an\n"
"#                ASan bgserve: make run SANITIZE=address BGSERVE=.../build/san-address/bgserve\n"
"#   make check   validate it with bgserve --check (prints its tables)\n"
"#   make test    build and run tests/test_*.c: cmocka tests written with\n"
"#                bgserve's testing library (#include <bgserve/testing.h>):\n"
"#                the plugin in process, no server, no port\n"
"#   make run     serve it on http://127.0.0.1:$(PORT) and rebuild and\n"
"#                reload it whenever a source in this directory changes\n"
"#   make clean\n"
"#\n"
"# Compiler flags come from the bgserve.pc and bgserve-testing.pc that\n"
"# bgserve's `make install` put on the pkg-config path; for another prefix\n"
"# set PKG_CONFIG_PATH (and PKG_CONFIG_SYSROOT_DIR for a DESTDIR staging\n"
"# tree); for a bgserve built but not installed, its build/pkgconfig.\n"
"# cmocka comes from Debian's libcmocka-dev.  BGSERVE picks the server\n"
"# binary (default: bgserve from PATH).\n"
"\n"
"BGSERVE    ?= bgserve\n"
"PKG_CONFIG ?= pkg-config\n"
"PORT       ?= 8000\n"
"CFLAGS     ?= -std=c11 -O0 -g -Wall -Wextra\n"
"SANITIZE   ?=\n"
"SRCS       := $(wildcard *.c)\n"
"HDRS       := $(wildcard *.h)\n"
"ifneq ($(SANITIZE),)\n"
"CFLAGS     += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer\n"
"endif\n"
"\n"
"BGS_CFLAGS  := $(shell $(PKG_CONFIG) --cflags bgserve 2>/dev/null)\n"
"BGS_LDFLAGS := $(shell $(PKG_CONFIG) --variable=plugin_ldflags bgserve 2>/dev/null)\n"
"BUILD_FLAGS := $(CC) $(CFLAGS) $(BGS_CFLAGS) $(BGS_LDFLAGS) $(LDFLAGS)\n"
"\n"
"# The tests: one program per tests/test_*.c, linked with the testing\n"
"# library (found again at run time through an rpath to its directory).\n"
"comma       := ,\n"
"TEST_CFLAGS := $(shell $(PKG_CONFIG) --cflags bgserve-testing cmocka 2>/dev/null)\n"
"TEST_LIBS   := $(shell $(PKG_CONFIG) --libs bgserve-testing cmocka 2>/dev/null)\n"
"TEST_RPATH  := $(patsubst -L%,-Wl$(comma)-rpath$(comma)%,$(filter -L%,$(TEST_LIBS)))\n"
"TESTS       := $(patsubst %.c,%,$(wildcard tests/test_*.c))\n"
"\n"
".PHONY: all check test run clean FORCE\n"
"\n"
"all: @NAME@.so\n"
"\n"
"# The flags of the last build: other flags (make SANITIZE=address after a\n"
"# plain make, or back) rebuild @NAME@.so instead of keeping the old one.\n"
".@NAME@.flags: FORCE\n"
"\t@echo '$(BUILD_FLAGS)' | cmp -s - $@ || echo '$(BUILD_FLAGS)' > $@\n"
"\n"
"@NAME@.so: $(SRCS) $(HDRS) .@NAME@.flags\n"
"\t@$(PKG_CONFIG) --exists bgserve || { echo \"@NAME@: pkg-config cannot find bgserve.pc;\" \\\n"
"\t  \"install bgserve (make install) or point PKG_CONFIG_PATH at its directory\" >&2; exit 1; }\n"
"\t$(CC) $(CFLAGS) $(BGS_CFLAGS) $(BGS_LDFLAGS) -o $@ $(SRCS) $(LDFLAGS)\n"
"\n"
"tests/test_%: tests/test_%.c .@NAME@.flags\n"
"\t@$(PKG_CONFIG) --exists bgserve-testing cmocka || { echo \"@NAME@: pkg-config cannot find\" \\\n"
"\t  \"bgserve-testing.pc or cmocka.pc; install bgserve (make install) and libcmocka-dev,\" \\\n"
"\t  \"or point PKG_CONFIG_PATH at their directories\" >&2; exit 1; }\n"
"\t$(CC) $(CFLAGS) $(TEST_CFLAGS) -o $@ $< $(TEST_LIBS) $(TEST_RPATH) $(LDFLAGS)\n"
"\n"
"test: @NAME@.so $(TESTS)\n"
"\t@for t in $(TESTS); do ./$$t ./@NAME@.so || exit 1; done\n"
"\n"
"check: @NAME@.so\n"
"\t$(BGSERVE) --check ./@NAME@.so\n"
"\n"
"run: @NAME@.so\n"
"\t$(BGSERVE) --reload --watch . --build 'make --no-print-directory SANITIZE=$(SANITIZE) @NAME@.so' \\\n"
"\t  --port $(PORT) ./@NAME@.so\n"
"\n"
"clean:\n"
"\trm -f @NAME@.so .@NAME@.flags $(TESTS)\n";

static const char test_template[] =
"/*\n"
" * test_@NAME@.c - tests of @NAME@.so, in process: no server, no port.\n"
" * `make test` builds and runs them (cmocka and bgserve's testing\n"
" * library; its API and contract are in <bgserve/testing.h>).\n"
" *\n"
" * Each test gets its own client: the plugin loaded as `bgserve\n"
" * @NAME@.so` would load it (start hook included), with its own task\n"
" * workers.  skip_delays makes retries and backoff take no time.\n"
" */\n"
"#include <setjmp.h>\n"
"#include <stdarg.h>\n"
"#include <stddef.h>\n"
"#include <stdint.h>\n"
"#include <cmocka.h>\n"
"\n"
"#include <bgserve/testing.h>\n"
"\n"
"#include <stdio.h>\n"
"#include <string.h>\n"
"\n"
"#define WAIT_MS 10000u\n"
"\n"
"static const char *plugin = \"./@NAME@.so\"; /* or the first argument */\n"
"\n"
"static int open_client(void **state)\n"
"{\n"
"    bgst_client *c = NULL;\n"
"    if (bgst_open(&c, plugin, &(bgst_options){.skip_delays = 1}) != BGST_OK) {\n"
"        fprintf(stderr, \"%s\\n\", bgst_errmsg(c));\n"
"        bgst_close(c);\n"
"        return -1;\n"
"    }\n"
"    *state = c;\n"
"    return 0;\n"
"}\n"
"\n"
"static int close_client(void **state)\n"
"{\n"
"    bgst_close(*state); /* the stop hook runs here */\n"
"    return 0;\n"
"}\n"
"\n"
"static void index_says_hello(void **state)\n"
"{\n"
"    bgst_client *c = *state;\n"
"    bgst_response *r = NULL;\n"
"    assert_int_equal(bgst_send(c, \"GET\", \"/\", NULL, &r), BGST_OK);\n"
"    assert_int_equal(bgst_status(r), 200);\n"
"    assert_string_equal(bgst_body(r, NULL), \"Hello from @NAME@!\\n\");\n"
"    bgst_response_free(r);\n"
"}\n"
"\n"
"static void hello_greets_by_name(void **state)\n"
"{\n"
"    bgst_client *c = *state;\n"
"    bgst_response *r = NULL;\n"
"    assert_int_equal(bgst_send(c, \"GET\", \"/hello/ada\", NULL, &r), BGST_OK);\n"
"    assert_int_equal(bgst_status(r), 200);\n"
"    assert_string_equal(bgst_body(r, NULL), \"hello, ada\\n\");\n"
"    bgst_response_free(r);\n"
"}\n"
"\n"
"static void jobs_runs_process_after_the_answer(void **state)\n"
"{\n"
"    bgst_client *c = *state;\n"
"    bgst_response *r = NULL;\n"
"    assert_int_equal(bgst_send(c, \"POST\", \"/jobs\", \"some work\", &r), BGST_OK);\n"
"    assert_int_equal(bgst_status(r), 202);\n"
"    assert_int_equal(bgst_response_task_count(r), 1);\n"
"    uint64_t id = bgst_response_task(r, 0);\n"
"    char monitor[64];\n"
"    snprintf(monitor, sizeof monitor, \"/_bgserve/tasks/%llu\", (unsigned long long)id);\n"
"    assert_string_equal(bgst_header_get(r, \"Location\"), monitor);\n"
"    bgst_response_free(r);\n"
"\n"
"    bgst_task t;\n"
"    assert_int_equal(bgst_task_wait(c, id, WAIT_MS, &t), BGST_OK);\n"
"    assert_string_equal(t.name, \"process\");\n"
"    assert_int_equal(t.state, BGST_SUCCEEDED);\n"
"    assert_int_equal(t.attempts, 1);\n"
"    bgst_task_clear(&t);\n"
"}\n"
"\n"
"static void unknown_path_is_404(void **state)\n"
"{\n"
"    bgst_client *c = *state;\n"
"    bgst_response *r = NULL;\n"
"    assert_int_equal(bgst_send(c, \"GET\", \"/nowhere\", NULL, &r), BGST_OK);\n"
"    assert_int_equal(bgst_status(r), 404);\n"
"    bgst_response_free(r);\n"
"}\n"
"\n"
"int main(int argc, char **argv)\n"
"{\n"
"    if (argc > 1)\n"
"        plugin = argv[1];\n"
"    const struct CMUnitTest tests[] = {\n"
"        cmocka_unit_test_setup_teardown(index_says_hello, open_client, close_client),\n"
"        cmocka_unit_test_setup_teardown(hello_greets_by_name, open_client, close_client),\n"
"        cmocka_unit_test_setup_teardown(jobs_runs_process_after_the_answer, open_client,\n"
"                                        close_client),\n"
"        cmocka_unit_test_setup_teardown(unknown_path_is_404, open_client, close_client),\n"
"    };\n"
"    return cmocka_run_group_tests(tests, NULL, NULL);\n"
"}\n";

static const char gitignore_template[] = "*.so\n.*.flags\ntests/test_*\n!tests/test_*.c\n";

/* ------------------------------------------------------------------ */
/* Writing the project                                                 */
/* ------------------------------------------------------------------ */

int scaffold_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > NAME_MAX_LEN)
        return 0;
    if (!((name[0] >= 'A' && name[0] <= 'Z') || (name[0] >= 'a' && name[0] <= 'z')))
        return 0;
    for (size_t i = 1; i < n; i++) {
        char c = name[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* The template with every @NAME@ replaced; malloc'd. */
static char *expand(const char *tmpl, const char *name)
{
    static const char mark[] = "@NAME@";
    size_t nlen = strlen(name), cap = strlen(tmpl) + 1, len = 0;
    for (const char *p = tmpl; (p = strstr(p, mark)) != NULL; p += sizeof mark - 1)
        cap += nlen;
    char *out = xmalloc(cap);
    for (const char *p = tmpl; *p;) {
        if (strncmp(p, mark, sizeof mark - 1) == 0) {
            memcpy(out + len, name, nlen);
            len += nlen;
            p += sizeof mark - 1;
        } else {
            out[len++] = *p++;
        }
    }
    out[len] = '\0';
    return out;
}

/* Create dir/file (never overwriting) with the expanded template. */
static int write_new(const char *dir, const char *file, const char *tmpl,
                     const char *name, FILE *err)
{
    char path[512];
    int rc = -1;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    char *text = expand(tmpl, name);
    size_t len = strlen(text), done = 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0)
        goto out;
    while (done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        done += (size_t)n;
    }
    if (close(fd) != 0) {
        fd = -1;
        goto out;
    }
    fd = -1;
    rc = 0;
out:
    if (rc != 0)
        fprintf(err, "bgserve new: cannot write '%s': %s\n", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    free(text);
    return rc;
}

static int usage(FILE *err, const char *fmt, const char *arg)
{
    fputs("bgserve new: ", err);
    fprintf(err, fmt, arg);
    fputs("\nUsage: bgserve new NAME   (creates ./NAME/ with a plugin, its tests, a "
          "Makefile and a .gitignore)\n", err);
    return 2;
}

int scaffold_main(int argc, char **argv, FILE *out, FILE *err)
{
    const char *name = NULL;
    struct stat st;
    char src[NAME_MAX_LEN + 3], test[NAME_MAX_LEN + 16], tests_dir[NAME_MAX_LEN + 8];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs("Usage: bgserve new NAME\n"
                  "Create ./NAME/ with NAME.c (a route, a task, a 202 Accepted with\n"
                  "its status monitor), tests/test_NAME.c (cmocka tests with bgserve's\n"
                  "testing library, <bgserve/testing.h>), a Makefile that builds NAME.so\n"
                  "through `pkg-config bgserve` (make, make check, make test, make run)\n"
                  "and a .gitignore.\n"
                  "NAME: a letter, then letters, digits, '_' or '-'.  An existing\n"
                  "NAME is never overwritten.\n", out);
            return 0;
        }
        if (a[0] == '-')
            return usage(err, "unknown option '%s'", a);
        if (name != NULL)
            return usage(err, "one NAME at a time (extra argument '%s')", a);
        name = a;
    }
    if (name == NULL)
        return usage(err, "missing NAME%s", "");
    if (!scaffold_name_ok(name))
        return usage(err, "'%s' is not a valid project name: use a letter, then "
                     "letters, digits, '_' or '-' (at most 64 characters)", name);

    if (lstat(name, &st) == 0) {
        fprintf(err, "bgserve new: '%s' already exists; nothing was written "
                "(choose another name or remove it)\n", name);
        return 1;
    }
    if (mkdir(name, 0777) != 0) {
        fprintf(err, "bgserve new: cannot create directory '%s': %s\n", name,
                errno == EEXIST ? "it appeared meanwhile" : strerror(errno));
        return 1;
    }

    snprintf(src, sizeof src, "%s.c", name);
    snprintf(test, sizeof test, "tests/test_%s.c", name);
    snprintf(tests_dir, sizeof tests_dir, "%s/tests", name);
    if (write_new(name, src, plugin_template, name, err) != 0 ||
        write_new(name, "Makefile", makefile_template, name, err) != 0 ||
        write_new(name, ".gitignore", gitignore_template, name, err) != 0)
        goto fail;
    if (mkdir(tests_dir, 0777) != 0) {
        fprintf(err, "bgserve new: cannot create directory '%s': %s\n", tests_dir,
                strerror(errno));
        goto fail;
    }
    if (write_new(name, test, test_template, name, err) != 0)
        goto fail;

    fprintf(out, "created %s/ with %s, %s, Makefile and .gitignore\n"
            "next:\n"
            "  cd %s\n"
            "  make check   # build %s.so and validate it\n"
            "  make test    # run its tests, in process\n"
            "  make run     # serve it on http://127.0.0.1:8000\n",
            name, src, test, name, name);
    return 0;

fail: {
        /* Remove exactly what this command created. */
        const char *files[] = {src, "Makefile", ".gitignore", test};
        char path[512];
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
            snprintf(path, sizeof path, "%s/%s", name, files[i]);
            unlink(path);
        }
        rmdir(tests_dir);
        rmdir(name);
        return 1;
    }
}
