/*
 * test_crash.c - a fatal signal inside plugin code: bgserve names the
 * route or task (with its id) and the generation, prints a backtrace, and
 * exits with 128+signal.  Uses tests/fixtures/crash_app.so.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

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

static void start(h_server *s)
{
    if (h_start_app(s, h_build_path("tests/fixtures/crash_app.so"), NULL, NULL) != 0)
        fail();
}

static void crash_segv_in_handler_names_route(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    start(&s);
    assert_int_equal(h_get(&s, "/ok", &r), 0); /* serving before the crash */
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    h_get(&s, "/segv", &r); /* the connection dies with the server */
    assert_int_equal(r.status, 0);
    h_resp_free(&r);
    assert_int_equal(wait_exit(&s, 15000), 128 + SIGSEGV);
    h_assert_contains(s.log, "bgserve crashed in plugin code: SIGSEGV");
    h_assert_contains(s.log, "while running route GET /segv (request ");
    h_assert_contains(s.log, "generation 1 of plugin 'crash_app'");
    h_assert_contains(s.log, "backtrace:\n");
    h_free(&s);
}

static void crash_fpe_in_handler_names_route(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    start(&s);
    h_get(&s, "/fpe", &r);
    h_resp_free(&r);
    assert_int_equal(wait_exit(&s, 15000), 128 + SIGFPE);
    h_assert_contains(s.log, "bgserve crashed in plugin code: SIGFPE");
    h_assert_contains(s.log, "while running route GET /fpe");
    h_assert_contains(s.log, "generation 1");
    h_assert_lacks(s.log, "not in plugin code");
    h_free(&s);
}

static void crash_in_service_create_names_the_service(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    start(&s);
    h_get(&s, "/service", &r);
    h_resp_free(&r);
    assert_int_equal(wait_exit(&s, 15000), 128 + SIGSEGV);
    h_assert_contains(s.log, "bgserve crashed in plugin code: SIGSEGV");
    h_assert_contains(s.log, "while running service 'broken' hook");
    h_assert_contains(s.log, "generation 1 of plugin 'crash_app'");
    h_free(&s);
}

static void crash_abort_in_task_names_task_and_id(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    start(&s);
    assert_int_equal(h_get(&s, "/abort-task", &r), 0);
    assert_int_equal(r.status, 200);
    const char *ids = h_header(&r, "Bgserve-Tasks");
    assert_non_null(ids);
    char expect[128];
    snprintf(expect, sizeof expect, "while running task 'boom' id %s (request ", ids);
    h_resp_free(&r);
    assert_int_equal(wait_exit(&s, 15000), 128 + SIGABRT);
    h_assert_contains(s.log, "bgserve crashed in plugin code: SIGABRT");
    h_assert_contains(s.log, expect);
    h_assert_contains(s.log, "generation 1");
    h_assert_contains(s.log, "backtrace:\n");
    h_free(&s);
}

static void crash_outside_plugin_code_says_so(void **state)
{
    (void)state;
    h_server s;
    start(&s);
    /* SIGBUS sent from outside: no plugin code is running anywhere. */
    kill(s.pid, SIGBUS);
    assert_int_equal(wait_exit(&s, 15000), 128 + SIGBUS);
    h_assert_contains(s.log, "bgserve crashed (not in plugin code): SIGBUS");
    h_assert_contains(s.log, "backtrace:\n");
    h_free(&s);
}

int main(void)
{
    /* No core files from the crashes these tests provoke. */
    struct rlimit nocore = {0, 0};
    setrlimit(RLIMIT_CORE, &nocore);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(crash_segv_in_handler_names_route),
        cmocka_unit_test(crash_fpe_in_handler_names_route),
        cmocka_unit_test(crash_abort_in_task_names_task_and_id),
        cmocka_unit_test(crash_in_service_create_names_the_service),
        cmocka_unit_test(crash_outside_plugin_code_says_so),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
