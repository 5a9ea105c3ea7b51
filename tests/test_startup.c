/*
 * test_startup.c - what bgserve says, and when, around serving: options,
 * the host and the port are checked before the plugin's start hook runs
 * and before "listening", and so are inotify's limits under --reload; a
 * server that never served says nothing about draining or retiring (also
 * when libmicrohttpd fails after the start hook); a drain that leaves tasks unfinished exits with status 3 and
 * leaves no private plugin copy behind, and a second SIGINT cuts it short
 * with status 1, with or without the supervisor; BGSERVE_DEBUG shows no stray
 * libmicrohttpd line.  The plugin is tests/fixtures/misuse_app.so, whose
 * start hook logs "forwarded app line 5" (or refuses to start when
 * MISUSE_FAIL_START is set).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define START_HOOK_LINE "forwarded app line 5"

/* Run bgserve with args (NULL-terminated, plugin last); its exit status,
 * and everything it printed in *out. */
static int run_bgserve(const char *const *args, char **out)
{
    const char *argv[16] = {h_build_path("bgserve")};
    size_t n = 1;
    for (size_t i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return h_run(argv, out);
}

/* Nothing about serving or draining: the server never served. */
static void assert_never_served(const char *out)
{
    h_assert_lacks(out, "listening on");
    h_assert_lacks(out, "drain:");
    h_assert_lacks(out, "retired");
}

static void startup_missing_watch_dir_refused_before_anything(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {"--port", "0", "--watch", "/nonexistent/src", h_fixture("misuse_app"), NULL};
    assert_int_equal(run_bgserve(args, &out), 2);
    h_assert_contains(out, "--watch /nonexistent/src: not a directory");
    h_assert_lacks(out, START_HOOK_LINE);
    assert_never_served(out);
    free(out);
}

static void startup_port_in_use_refused_before_start_hook(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 1), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    char port[16];
    snprintf(port, sizeof port, "%u", (unsigned)ntohs(sa.sin_port));

    /* with the supervisor and without it */
    for (int single = 0; single < 2; single++) {
        char *out;
        const char *args[] = {"--port", port, h_fixture("misuse_app"), NULL, NULL};
        if (single) {
            args[2] = "--single-process";
            args[3] = h_fixture("misuse_app");
        }
        assert_int_equal(run_bgserve(args, &out), 1);
        h_assert_contains(out, "cannot listen on 127.0.0.1 port");
        h_assert_lacks(out, START_HOOK_LINE);
        h_assert_lacks(out, "serving plugin");
        assert_never_served(out);
        free(out);
    }
    close(fd);
}

static void startup_unresolvable_host_refused_before_start_hook(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {"--port", "0", "--host", "no-such-host.invalid", h_fixture("misuse_app"), NULL};
    assert_int_equal(run_bgserve(args, &out), 1);
    h_assert_contains(out, "cannot resolve --host 'no-such-host.invalid'");
    h_assert_lacks(out, START_HOOK_LINE);
    assert_never_served(out);
    free(out);
}

static void startup_refused_plugin_says_nothing_about_draining(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {"--port", "0", h_fixture("major2"), NULL};
    assert_int_equal(run_bgserve(args, &out), 1);
    h_assert_contains(out, "cannot load plugin");
    assert_never_served(out);
    free(out);
}

static void startup_failed_start_hook_says_nothing_about_draining(void **state)
{
    (void)state;
    h_server s;
    static const char *const env[] = {"MISUSE_FAIL_START=no database", NULL};
    assert_int_equal(h_start(&s, h_fixture("misuse_app"), NULL, env), -1);
    h_drain_log(&s);
    h_assert_contains(s.log, "forwarded refusal: no database");
    assert_never_served(s.log);
    h_free(&s);
}

static void startup_listening_after_the_start_hook(void **state)
{
    (void)state;
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("misuse_app"), NULL, NULL), 0);
    h_drain_log(&s);
    const char *hook = strstr(s.log, START_HOOK_LINE);
    const char *listening = strstr(s.log, "listening on");
    assert_non_null(hook);
    assert_non_null(listening);
    assert_true(hook < listening);
    h_stop_clean(&s);
    h_free(&s);
}

static void startup_debug_shows_no_stray_logger_line(void **state)
{
    (void)state;
    h_server s;
    static const char *const env[] = {"BGSERVE_DEBUG=1", NULL};
    assert_int_equal(h_start_app(&s, h_fixture("misuse_app"), NULL, env), 0);
    h_resp r;
    assert_int_equal(h_get(&s, "/codes", &r), 0);
    h_resp_free(&r);
    h_stop_clean(&s);
    h_assert_lacks(s.log, "is not the first option");
    h_assert_lacks(s.log, "MHD_OPTION");
    h_free(&s);
}

/* Private plugin copies in dir ("PID.N.NAME"): the test gives the server
 * a directory of its own, so all of them are its copies (the supervisor's
 * serving process makes them under its own pid). */
static int copies_in(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static void shutdown_abandoned_task_exits_3_and_removes_the_copy(void **state)
{
    (void)state;
    char runtime[] = "/tmp/bgserve-startup-XXXXXX";
    assert_non_null(mkdtemp(runtime));
    char env_dir[64], copies[128];
    snprintf(env_dir, sizeof env_dir, "XDG_RUNTIME_DIR=%s", runtime);
    snprintf(copies, sizeof copies, "%s/bgserve", runtime);
    const char *const env[] = {env_dir, NULL};
    static const char *const args[] = {"--drain-timeout", "0.2", NULL};
    h_server s;
    h_resp r;
    assert_int_equal(h_start_app(&s, h_fixture("misuse_app"), args, env), 0);
    assert_int_equal(copies_in(copies), 1); /* the loaded copy */
    assert_int_equal(h_get(&s, "/stuck", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_true(h_wait_log(&s, "stuck start", 20000));

    assert_int_equal(h_stop(&s, SIGTERM), 3);
    h_assert_contains(s.log, "drain: 0 tasks finished, 1 did not");
    h_assert_contains(s.log, "stuck in plugin code");
    assert_int_equal(copies_in(copies), 0);
    h_free(&s);
    h_rm_rf(runtime);
}

/* libmicrohttpd refuses to start after the start hook ran (here: 300
 * HTTP threads need a wake-up fd each, the hard limit is 256): the error,
 * and nothing about serving, draining or retiring. */
static void startup_http_failure_after_start_hook_says_only_that(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "ulimit -n 256 && exec \"$0\" \"$@\"");
    for (int single = 0; single < 2; single++) {
        const char *argv[] = {"/bin/sh", "-c", cmd, h_build_path("bgserve"), "--port", "0",
                              "--threads", "300", h_fixture("misuse_app"), NULL, NULL};
        if (single) {
            argv[8] = "--single-process";
            argv[9] = h_fixture("misuse_app");
        }
        char *out = NULL;
        assert_int_equal(h_run(argv, &out), 1);
        h_assert_contains(out, START_HOOK_LINE);
        h_assert_contains(out, "could not start on 127.0.0.1:");
        assert_never_served(out);
        free(out);
    }
}

/* Start-up is a table of steps: when one fails after others started
 * (libmicrohttpd, as above), those are stopped in reverse order, each
 * once, and bgserve exits 1 with the failing step's message only. */
static void startup_failed_step_stops_the_earlier_ones_in_reverse(void **state)
{
    (void)state;
    static const char *const stops[] = {
        "stopping: drain", "stopping: plugin", "stopping: reload watches",
        "stopping: private copies", "stopping: tasks", "stopping: deferred", "stopping: broker",
        "stopping: journal",
    };
    const char *argv[] = {"/bin/sh", "-c", "ulimit -n 256 && BGSERVE_DEBUG=1 exec \"$0\" \"$@\"",
                          h_build_path("bgserve"), "--single-process", "--port", "0",
                          "--threads", "300", h_fixture("misuse_app"), NULL};
    char *out = NULL;
    assert_int_equal(h_run(argv, &out), 1);
    h_assert_contains(out, "starting: http");
    h_assert_contains(out, "could not start on 127.0.0.1:");
    h_assert_lacks(out, "stopping: http");
    h_assert_lacks(out, "starting: replay");
    const char *at = strstr(out, "could not start on");
    for (size_t i = 0; i < sizeof stops / sizeof stops[0]; i++) {
        const char *p = strstr(at, stops[i]);
        if (p == NULL)
            h_fail_text(out, "'%s' missing, or out of order, after the failure:", stops[i]);
        at = p;
        assert_null(strstr(p + 1, stops[i])); /* once */
    }
    assert_never_served(out);
    free(out);
}

/* inotify cannot be had (no instances allowed, in a user namespace of
 * the test's own): refused before the start hook, never listening. */
static void startup_reload_without_inotify_refused_before_start_hook(void **state)
{
    (void)state;
    const char *argv[] = {"/usr/bin/unshare", "--user", "--map-root-user", "/bin/sh", "-c",
                          "echo 0 > /proc/sys/user/max_inotify_instances || exit 99; "
                          "exec \"$0\" \"$@\"",
                          h_build_path("bgserve"), "--port", "0", "--reload",
                          h_fixture("misuse_app"), NULL};
    if (access(argv[0], X_OK) != 0) {
        print_message("no %s: skipped\n", argv[0]);
        skip();
    }
    char *out = NULL;
    int rc = h_run(argv, &out);
    if (rc == 99 || strstr(out, "unshare: ") != NULL) {
        print_message("no user namespaces here (%s): skipped\n", out);
        free(out);
        skip();
    }
    assert_int_equal(rc, 1);
    h_assert_contains(out, "--reload: inotify is not available");
    h_assert_lacks(out, START_HOOK_LINE);
    assert_never_served(out);
    free(out);
}

/* A second SIGINT during the drain exits at once with status 1 and the
 * list of unfinished tasks, through the supervisor as without it (the
 * drain alone would take 60 s: past h_stop's deadline). */
static void shutdown_second_sigint_exits_at_once(void **state)
{
    (void)state;
    for (int single = 0; single < 2; single++) {
        static const char *const sup[] = {"--drain-timeout", "60", NULL};
        static const char *const one[] = {"--drain-timeout", "60", "--single-process", NULL};
        h_server s;
        h_resp r;
        assert_int_equal(h_start_app(&s, h_fixture("misuse_app"), single ? one : sup, NULL), 0);
        assert_int_equal(h_get(&s, "/stuck", &r), 0);
        assert_int_equal(r.status, 200);
        h_resp_free(&r);
        assert_true(h_wait_log(&s, "stuck start", 20000));
        assert_int_equal(kill(s.pid, SIGINT), 0);
        assert_true(h_wait_log(&s, "SIGINT: stopping", 20000));
        assert_int_equal(h_stop(&s, SIGINT), 1);
        h_assert_contains(s.log, "second SIGINT: exiting now");
        h_assert_contains(s.log, "unfinished: 1 task");
        h_assert_contains(s.log, "stuck");
        h_free(&s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(startup_missing_watch_dir_refused_before_anything),
        cmocka_unit_test(startup_port_in_use_refused_before_start_hook),
        cmocka_unit_test(startup_unresolvable_host_refused_before_start_hook),
        cmocka_unit_test(startup_refused_plugin_says_nothing_about_draining),
        cmocka_unit_test(startup_failed_start_hook_says_nothing_about_draining),
        cmocka_unit_test(startup_listening_after_the_start_hook),
        cmocka_unit_test(startup_debug_shows_no_stray_logger_line),
        cmocka_unit_test(startup_http_failure_after_start_hook_says_only_that),
        cmocka_unit_test(startup_failed_step_stops_the_earlier_ones_in_reverse),
        cmocka_unit_test(startup_reload_without_inotify_refused_before_start_hook),
        cmocka_unit_test(shutdown_abandoned_task_exits_3_and_removes_the_copy),
        cmocka_unit_test(shutdown_second_sigint_exits_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
