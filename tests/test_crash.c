/*
 * test_crash.c - a fatal signal inside plugin code ends only the serving
 * process: the supervisor prints the report (route or task with its id,
 * generation, frames named by function and file:line), starts a new
 * serving process on the same socket, counts the crash in
 * /_bgserve/stats, stops a crash loop (the crash page under --reload,
 * else exit 128+signal), and --single-process keeps the old behaviour.
 * Fixtures: crash_app.so, crash_start.so, crash_every.so.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 15000u

/* Wait for the server to exit on its own; 128+signal, the exit code, or
 * -1 at the deadline. */
static int wait_exit(h_server *s, unsigned deadline_ms)
{
    uint64_t end = h_now_ms() + deadline_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(s->pid, &status, WNOHANG);
        if (r == s->pid) {
            s->pid = 0;
            h_drain_log(s);
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        if (h_now_ms() >= end)
            return -1;
        h_drain_log(s);
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL); /* polling interval */
    }
}

static void start(h_server *s, const char *fixture, const char *const *args)
{
    if (h_start_app(s, h_fixture(fixture), args, NULL) != 0)
        fail();
}

static int count_in(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* GET /ok answers 200 "fine". */
static void expect_ok(h_server *s)
{
    h_resp r;
    int rc = h_get(s, "/ok", &r);
    if (rc != 0)
        fprintf(stderr, "GET /ok failed: %s\nlog:\n%s\n", curl_easy_strerror((CURLcode)rc),
                s->log ? s->log : "");
    assert_int_equal(rc, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "fine");
    h_resp_free(&r);
}

/* The crashing request's connection fails without an answer (never
 * refused: the socket stays open). */
static void expect_dropped(h_server *s, const char *path)
{
    h_resp r;
    int rc = h_get(s, path, &r);
    assert_int_not_equal(rc, 0);
    assert_int_not_equal(rc, CURLE_COULDNT_CONNECT);
    h_resp_free(&r);
}

/* A client loop around one crashing request: every other request is
 * answered, none is refused, and the ones after the crash are answered
 * by a new serving process. */
static void client_loop_with_crash(h_server *s, const char *crash_path)
{
    for (int i = 0; i < 20; i++) {
        if (i == 5)
            expect_dropped(s, crash_path);
        else
            expect_ok(s);
    }
}

static void crash_segv_in_handler_is_reported_and_served_again(void **state)
{
    (void)state;
    h_server s;
    start(&s, "crash_app", NULL);
    long long first_pid = h_stat(&s, NULL, "pid");
    client_loop_with_crash(&s, "/segv");
    assert_true(h_wait_log(&s, "starting a new serving process", DEADLINE_MS));
    h_assert_contains(s.log, "bgserve crashed in plugin code: SIGSEGV");
    h_assert_contains(s.log, "while running route GET /segv (request ");
    h_assert_contains(s.log, "generation 1 of plugin 'crash_app'");
    /* The plugin frame: function and file:line, under the user's file name. */
    h_assert_contains(s.log, "#0  segv at tests/fixtures/crash_app.c:");
    h_assert_contains(s.log, "(crash_app.so+0x");
    h_assert_contains(s.log, " on_request at cmd/bgserve/http.c:"); /* server frames too */
    h_assert_lacks(s.log, "/bgserve-"); /* never the private copy's path */
    h_assert_contains(s.log, "tasks lost with the serving process: 0 queued, 0 running");
    h_assert_contains(s.log, "core: ");
    /* The listening line is printed once. */
    assert_int_equal(h_count_log(&s, "bgserve: listening on"), 1);

    assert_int_equal(h_stat(&s, NULL, "crashes"), 1);
    assert_int_equal(h_stat(&s, NULL, "serving_processes"), 2);
    assert_true(h_stat(&s, NULL, "pid") != first_pid);
    h_resp r;
    assert_int_equal(h_get(&s, "/_bgserve/stats", &r), 0);
    char buf[256];
    assert_int_equal(h_json_str(r.body, "signal", buf, sizeof buf), 0);
    assert_string_equal(buf, "SIGSEGV");
    assert_int_equal(h_json_str(r.body, "what", buf, sizeof buf), 0);
    assert_non_null(strstr(buf, "route GET /segv"));
    assert_int_equal(h_json_str(r.body, "when", buf, sizeof buf), 0);
    h_resp_free(&r);

    assert_int_equal(h_stop(&s, SIGTERM), 0); /* reaches the serving process */
    h_assert_contains(s.log, "SIGTERM: stopping");
    h_free(&s);
}

/* The report counts the tasks the crash took with it: with one worker,
 * one holding it and two waiting behind it. */
static void crash_report_counts_lost_tasks(void **state)
{
    (void)state;
    h_server s;
    const char *args[] = {"--workers", "1", NULL};
    start(&s, "crash_app", args);
    for (int i = 0; i < 3; i++) {
        h_resp r;
        assert_int_equal(h_get(&s, "/hold", &r), 0);
        assert_int_equal(r.status, 200);
        h_resp_free(&r);
    }
    /* One runs (any of the three: a task is submitted when its response
     * has been sent, which the server may notice after the client has
     * sent its next request), two wait behind the one worker. */
    char *rec = h_wait_body(&s, "/_bgserve/stats", "\"hold_fn\":{\"queued\":2,\"running\":1,",
                            DEADLINE_MS);
    assert_non_null(rec);
    free(rec);
    expect_dropped(&s, "/segv");
    assert_true(h_wait_log(&s, "starting a new serving process", DEADLINE_MS));
    h_assert_contains(s.log, "tasks lost with the serving process: 2 queued, 1 running");
    expect_ok(&s);
    assert_int_equal(h_stop(&s, SIGINT), 0);
    h_free(&s);
}

/* Does dir hold a file whose name starts with prefix? */
static int has_entry(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    int found = 0;
    if (d == NULL)
        return 0;
    struct dirent *e;
    while (!found && (e = readdir(d)) != NULL)
        found = strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return found;
}

/* The directory of private plugin copies is shared by every bgserve of
 * the user.  After a crash the supervisor deletes its dead child's
 * copies, and only those: another bgserve's supervisor may be reading
 * its own dead child's copy for a report at that moment (two crash
 * reports at once lost their plugin frames' file:line this way). */
static void crash_cleanup_spares_other_bgserves_copies(void **state)
{
    (void)state;
    char root[] = "/tmp/bgserve-crash-XXXXXX";
    assert_non_null(mkdtemp(root));
    char dir[PATH_MAX], env[PATH_MAX + 32], other[PATH_MAX + 64], older[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s/bgserve", root);
    snprintf(env, sizeof env, "XDG_RUNTIME_DIR=%s", root);
    const char *const extra_env[] = {env, NULL};
    h_server s;
    if (h_start_app(&s, h_fixture("crash_app"), NULL, extra_env) != 0)
        fail();
    long long first_pid = h_stat(&s, NULL, "pid");
    char mine[32];
    snprintf(mine, sizeof mine, "%lld-%d.", first_pid, (int)s.pid);
    assert_true(has_entry(dir, mine)); /* its copy, owned by its supervisor */

    /* Another bgserve's serving process died; its supervisor (this test
     * stands in for it) lives: its copy stays.  And one named as an
     * older bgserve named them. */
    pid_t dead = fork();
    assert_true(dead >= 0);
    if (dead == 0)
        _exit(0);
    assert_int_equal(waitpid(dead, NULL, 0), dead);
    snprintf(other, sizeof other, "%s/%d-%d.0.other.so", dir, (int)dead, (int)getpid());
    snprintf(older, sizeof older, "%s/%d.0.other.so", dir, (int)dead);
    for (int i = 0; i < 2; i++) {
        int fd = open(i ? older : other, O_WRONLY | O_CREAT | O_EXCL, 0600);
        assert_true(fd >= 0);
        close(fd);
    }

    client_loop_with_crash(&s, "/segv");
    assert_true(h_wait_log(&s, "starting a new serving process", DEADLINE_MS));
    h_assert_contains(s.log, "#0  segv at tests/fixtures/crash_app.c:");
    expect_ok(&s);
    assert_false(has_entry(dir, mine)); /* the crashed child's: deleted */
    assert_int_equal(access(other, F_OK), 0);
    /* An older bgserve's name says nothing of its owner: the new serving
     * process's startup takes it for a killed run's and deletes it. */
    assert_int_equal(access(older, F_OK), -1);
    assert_int_equal(h_stop(&s, SIGINT), 0);
    h_free(&s);
    unlink(other);
    unlink(older);
    rmdir(dir);
    rmdir(root);
}

static void crash_fpe_in_handler_names_route(void **state)
{
    (void)state;
    h_server s;
    start(&s, "crash_app", NULL);
    client_loop_with_crash(&s, "/fpe");
    assert_true(h_wait_log(&s, "starting a new serving process", DEADLINE_MS));
    h_assert_contains(s.log, "bgserve crashed in plugin code: SIGFPE");
    h_assert_contains(s.log, "while running route GET /fpe");
    h_assert_contains(s.log, " fpe at tests/fixtures/crash_app.c:");
    h_assert_lacks(s.log, "not in plugin code");
    assert_int_equal(h_stop(&s, SIGINT), 0);
    h_free(&s);
}

static void crash_segv_in_task_names_task_and_id(void **state)
{
    (void)state;
    h_server s;
    start(&s, "crash_app", NULL);
    h_resp r;
    assert_int_equal(h_get(&s, "/segv-task", &r), 0);
    assert_int_equal(r.status, 200);
    const char *ids = h_header(&r, "Bgserve-Tasks");
    assert_non_null(ids);
    char expect[128];
    snprintf(expect, sizeof expect, "while running task 'segv_fn' id %s (request ", ids);
    h_resp_free(&r);
    /* The task crashes after the answer: wait for the new process rather
     * than race a request into the dying one (its connections are lost). */
    assert_true(h_wait_log(&s, "starting a new serving process", DEADLINE_MS));
    h_assert_contains(s.log, expect);
    h_assert_contains(s.log, " segv_fn at tests/fixtures/crash_app.c:");
    h_assert_contains(s.log, "tasks lost with the serving process: ");
    for (int i = 0; i < 5; i++)
        expect_ok(&s);
    assert_int_equal(h_stop(&s, SIGINT), 0);
    h_free(&s);
}

static void crash_abort_in_task_names_task(void **state)
{
    (void)state;
    h_server s;
    start(&s, "crash_app", NULL);
    h_resp r;
    assert_int_equal(h_get(&s, "/abort-task", &r), 0);
    h_resp_free(&r);
    assert_true(h_wait_log(&s, "starting a new serving process", DEADLINE_MS));
    h_assert_contains(s.log, "bgserve crashed in plugin code: SIGABRT");
    h_assert_contains(s.log, "while running task 'boom' id ");
    h_assert_contains(s.log, " boom at tests/fixtures/crash_app.c:");
    expect_ok(&s);
    assert_int_equal(h_stop(&s, SIGINT), 0);
    h_free(&s);
}

static void crash_in_service_create_names_the_service(void **state)
{
    (void)state;
    h_server s;
    start(&s, "crash_app", NULL);
    client_loop_with_crash(&s, "/service");
    assert_true(h_wait_log(&s, "starting a new serving process", DEADLINE_MS));
    h_assert_contains(s.log, "while running service 'broken' hook");
    h_assert_contains(s.log, "generation 1 of plugin 'crash_app'");
    assert_int_equal(h_stop(&s, SIGINT), 0);
    h_free(&s);
}

static void crash_outside_plugin_code_says_so(void **state)
{
    (void)state;
    h_server s;
    start(&s, "crash_app", NULL);
    long long pid = h_stat(&s, NULL, "pid");
    assert_true(pid > 0 && pid != s.pid);
    kill((pid_t)pid, SIGBUS); /* no plugin code is running anywhere */
    assert_true(h_wait_log(&s, "starting a new serving process", DEADLINE_MS));
    h_assert_contains(s.log, "bgserve crashed (not in plugin code): SIGBUS");
    h_assert_contains(s.log, "backtrace (serving process ");
    expect_ok(&s);
    kill((pid_t)h_stat(&s, NULL, "pid"), SIGKILL); /* from outside: no report */
    assert_true(h_wait_log(&s, "was killed by SIGKILL", DEADLINE_MS));
    expect_ok(&s);
    assert_int_equal(h_stat(&s, NULL, "crashes"), 2);
    assert_int_equal(h_stop(&s, SIGINT), 0);
    h_free(&s);
}

static void crash_in_start_hook_gives_up_with_128_plus_signal(void **state)
{
    (void)state;
    const char *argv[] = {h_build_path("bgserve"), "--port", "0", h_fixture("crash_start"), NULL};
    char *out = NULL;
    assert_int_equal(h_run(argv, &out), 128 + SIGSEGV);
    h_assert_contains(out, "while running start hook, generation 1 of plugin 'crash_start'");
    h_assert_contains(out, " start at tests/fixtures/crash_start.c:");
    h_assert_contains(out, "bgserve: giving up: it crashed in its start hook");
    h_assert_lacks(out, "listening on"); /* it never served */
    assert_int_equal(count_in(out, "bgserve crashed in plugin code"), 1);
    free(out);
}

static void crash_loop_without_reload_exits_after_the_limit(void **state)
{
    (void)state;
    h_server s;
    start(&s, "crash_app", NULL);
    for (int i = 1; i < 3; i++) { /* SUPERVISOR_CRASH_LIMIT is 3 */
        expect_dropped(&s, "/segv");
        expect_ok(&s);
    }
    expect_dropped(&s, "/segv");
    assert_int_equal(wait_exit(&s, DEADLINE_MS), 128 + SIGSEGV);
    assert_int_equal(h_count_log(&s, "bgserve crashed in plugin code: SIGSEGV"), 3);
    h_assert_contains(s.log, "bgserve: giving up: it crashed again (3 crashes of this build");
    h_free(&s);
}

static void crash_single_process_exits_with_the_signal(void **state)
{
    (void)state;
    h_server s;
    const char *args[] = {"--single-process", NULL};
    start(&s, "crash_app", args);
    expect_dropped(&s, "/segv");
    assert_int_equal(wait_exit(&s, DEADLINE_MS), 128 + SIGSEGV);
    h_assert_contains(s.log, "bgserve crashed in plugin code: SIGSEGV");
    h_assert_contains(s.log, "while running route GET /segv (request ");
    h_assert_contains(s.log, "backtrace:\n");
    h_assert_lacks(s.log, "starting a new serving process");
    h_free(&s);
}

/* /proc/PID is gone, or PID is a zombie waiting for init. */
static int gone(void *arg)
{
    char path[64], st[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", *(long *)arg);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 1;
    size_t n = fread(st, 1, sizeof st - 1, f);
    fclose(f);
    st[n] = '\0';
    const char *p = strrchr(st, ')');
    return p && p[1] == ' ' && p[2] == 'Z';
}

static void crash_killed_supervisor_leaves_no_serving_process(void **state)
{
    (void)state;
    h_server s;
    start(&s, "crash_app", NULL);
    long child = (long)h_stat(&s, NULL, "pid");
    assert_true(child > 0 && child != s.pid);
    assert_false(gone(&child));
    kill(s.pid, SIGKILL);
    assert_int_equal(wait_exit(&s, DEADLINE_MS), 128 + SIGKILL);
    assert_true(h_poll(gone, &child, DEADLINE_MS));
    h_free(&s);
}

/* ---- crash loops under --reload: the crash page ------------------------- */

typedef struct rl {
    char dir[PATH_MAX];
    char app[PATH_MAX + 16];
} rl;

/* Put fixture NAME in place of t->app the way a linker would (a new file
 * renamed over it). */
static void put_build(rl *t, const char *fixture)
{
    h_replace_file(h_fixture(fixture), t->app);
}

static void rl_setup(rl *t)
{
    snprintf(t->dir, sizeof t->dir, "/tmp/bgserve-test-crash-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->app, sizeof t->app, "%s/app.so", t->dir);
}

static int crash_page_served(void *arg)
{
    h_server *s = arg;
    h_resp r;
    int page = h_get(s, "/ok", &r) == 0 && r.status == 500;
    h_resp_free(&r);
    return page;
}

static int fine_again(void *arg)
{
    h_server *s = arg;
    h_resp r;
    int ok = h_get(s, "/ok", &r) == 0 && r.status == 200;
    h_resp_free(&r);
    return ok;
}

static void crash_every_request_after_reload_gets_the_crash_page(void **state)
{
    (void)state;
    rl t;
    rl_setup(&t);
    put_build(&t, "crash_app");
    h_server s;
    const char *args[] = {"--reload", NULL};
    if (h_start_app(&s, t.app, args, NULL) != 0)
        fail();
    expect_ok(&s);
    put_build(&t, "crash_every");
    assert_true(h_wait_log(&s, "reload: generation 2 serving", DEADLINE_MS));
    /* Each request crashes the serving process until the third crash of
     * this build; then every request gets the crash page. */
    for (int i = 0; i < 3; i++)
        expect_dropped(&s, "/ok");
    assert_true(h_wait_log(&s, "not restarting this build", DEADLINE_MS));
    h_assert_contains(s.log, "it crashed again (3 crashes)");

    const char *html[] = {"Accept: text/html,application/xhtml+xml,*/*;q=0.8", NULL};
    h_resp r;
    assert_int_equal(h_http(&s, "GET", "/ok", NULL, 0, html, &r), 0);
    assert_int_equal(r.status, 500);
    assert_non_null(strstr(h_header(&r, "Content-Type"), "text/html"));
    assert_non_null(strstr(r.body, "<!DOCTYPE html>"));
    assert_non_null(strstr(r.body, "always_crashes at tests/fixtures/crash_every.c:"));
    assert_non_null(strstr(r.body, "plugin &#39;crash_every&#39;")); /* escaped */
    h_assert_lacks(r.body, "plugin 'crash_every'");
    h_assert_lacks(r.body, "http://"); /* no external assets */
    h_assert_lacks(r.body, "src=");
    h_resp_free(&r);

    assert_int_equal(h_get(&s, "/ok", &r), 0);
    assert_int_equal(r.status, 500);
    assert_non_null(strstr(h_header(&r, "Content-Type"), "text/plain"));
    assert_non_null(strstr(r.body, "always_crashes at tests/fixtures/crash_every.c:"));
    h_resp_free(&r);
    assert_int_equal(h_stat(&s, NULL, "crashes"), 3);

    /* A good build ends the crash page. */
    put_build(&t, "crash_app");
    assert_true(h_poll_server(&s, fine_again, &s, DEADLINE_MS));
    expect_ok(&s);
    assert_int_equal(h_count_log(&s, "bgserve: listening on"), 1);
    assert_int_equal(h_stop(&s, SIGINT), 0);
    h_free(&s);
    h_rm_rf(t.dir);
}

static void crash_in_start_hook_under_reload_waits_for_the_next_build(void **state)
{
    (void)state;
    rl t;
    rl_setup(&t);
    put_build(&t, "crash_start");
    h_server s;
    const char *args[] = {"--reload", NULL};
    /* The crash page answers, so bgserve listens. */
    if (h_start_app(&s, t.app, args, NULL) != 0)
        fail();
    assert_true(h_poll_server(&s, crash_page_served, &s, DEADLINE_MS));
    h_assert_contains(s.log, "not restarting this build");
    h_assert_contains(s.log, "it crashed in its start hook");
    h_resp r;
    assert_int_equal(h_get(&s, "/anything", &r), 0);
    assert_int_equal(r.status, 500);
    assert_non_null(strstr(r.body, "while running start hook"));
    h_resp_free(&r);

    put_build(&t, "crash_app");
    assert_true(h_poll_server(&s, fine_again, &s, DEADLINE_MS));
    assert_int_equal(h_stop(&s, SIGINT), 0);
    h_free(&s);
    h_rm_rf(t.dir);
}

int main(void)
{
    /* No core files from the crashes these tests provoke. */
    struct rlimit nocore = {0, 0};
    setrlimit(RLIMIT_CORE, &nocore);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(crash_segv_in_handler_is_reported_and_served_again),
        cmocka_unit_test(crash_report_counts_lost_tasks),
        cmocka_unit_test(crash_fpe_in_handler_names_route),
        cmocka_unit_test(crash_cleanup_spares_other_bgserves_copies),
        cmocka_unit_test(crash_segv_in_task_names_task_and_id),
        cmocka_unit_test(crash_abort_in_task_names_task),
        cmocka_unit_test(crash_in_service_create_names_the_service),
        cmocka_unit_test(crash_outside_plugin_code_says_so),
        cmocka_unit_test(crash_in_start_hook_gives_up_with_128_plus_signal),
        cmocka_unit_test(crash_loop_without_reload_exits_after_the_limit),
        cmocka_unit_test(crash_single_process_exits_with_the_signal),
        cmocka_unit_test(crash_killed_supervisor_leaves_no_serving_process),
        cmocka_unit_test(crash_every_request_after_reload_gets_the_crash_page),
        cmocka_unit_test(crash_in_start_hook_under_reload_waits_for_the_next_build),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
