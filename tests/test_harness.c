/*
 * test_harness.c - the integration-test harness itself (tests/support/):
 * a wait on a server that has exited ends at once, says how it ended and
 * shows its log, instead of running out its deadline; the exit status is
 * still h_stop's to return.  A failed assertion on a text shows all of it.
 *
 * The deadlines here are far longer than run.sh lets a program run
 * (TEST_TIMEOUT), so a wait that ran them out fails the program.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "harness.h"
#include "helpers.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NEVER_MS (24u * 3600u * 1000u)

/* A "server" that says ready, waits for the file gate, then writes a
 * last line and exits with status 3. */
static void spawn_exiting(h_server *s, const char *gate)
{
    char script[256];
    snprintf(script, sizeof script,
             "echo ready >&2; while [ ! -e %s ]; do sleep 0.01; done; echo last words >&2; exit 3",
             gate);
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    assert_int_equal(h_spawn(s, argv, NULL, "ready", 20000), 0);
}

static void harness_wait_log_fails_at_once_when_the_server_exited(void **state)
{
    (void)state;
    char gate[] = "/tmp/bgserve-harness-XXXXXX";
    int fd = mkstemp(gate);
    assert_true(fd >= 0);
    close(fd);
    unlink(gate);
    h_server s;
    spawn_exiting(&s, gate);
    fd = open(gate, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    close(fd);
    /* What it wrote before it exited is still found. */
    assert_true(h_wait_log(&s, "last words", NEVER_MS));
    h_capture_begin();
    int found = h_wait_log(&s, "a line it never writes", NEVER_MS);
    char *said = h_capture_end();
    assert_int_equal(found, 0);
    h_assert_contains(said, "exited with status 3 while the test waited for it; its log:");
    h_assert_contains(said, "ready\nlast words\n");
    free(said);
    /* Not reaped: h_stop still gets the status. */
    assert_int_equal(h_stop(&s, 0), 3);
    h_free(&s);
    unlink(gate);
}

static void harness_waits_on_a_killed_server_say_the_signal(void **state)
{
    (void)state;
    h_server s;
    const char *argv[] = {"/bin/sh", "-c", "echo ready >&2; exec sleep 600", NULL};
    assert_int_equal(h_spawn(&s, argv, NULL, "ready", 20000), 0);
    assert_int_equal(kill(s.pid, SIGKILL), 0);
    h_capture_begin();
    /* h_wait_stat and h_wait_state poll the same way. */
    int got = h_wait_stat(&s, NULL, "requests", 1, NEVER_MS);
    char *state_body = h_wait_state(&s, "/_bgserve/tasks/1", "succeeded", NEVER_MS);
    char *said = h_capture_end();
    assert_int_equal(got, 0);
    assert_null(state_body);
    h_assert_contains(said, "was killed by signal 9");
    assert_int_equal(h_stop(&s, 0), 128 + SIGKILL);
    /* Stopped: a wait on it ends at once too. */
    h_capture_begin();
    assert_int_equal(h_wait_log(&s, "anything more", NEVER_MS), 0);
    free(said);
    said = h_capture_end();
    h_assert_contains(said, "is not running");
    free(said);
    h_free(&s);
}

/* Run assert_fn(text) in a child whose stdout and stderr go to a file,
 * with CMOCKA_TEST_ABORT=1 (cmocka aborts where a failed test would
 * return to its runner); what the child printed (free it). */
static char *failure_output(void (*assert_fn)(const char *text), const char *text)
{
    char path[] = "/tmp/bgserve-harness-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        setenv("CMOCKA_TEST_ABORT", "1", 1);
        assert_fn(text);
        _exit(0); /* not reached: the assertion fails */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    close(fd);
    char *out = h_slurp(path, NULL);
    unlink(path);
    assert_non_null(out);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    return out;
}

static void contains_absent(const char *text) { h_assert_contains(text, "a line it lacks"); }
static void lacks_present(const char *text) { h_assert_lacks(text, "line 00001"); }
static void fail_with_text(const char *text) { h_fail_text(text, "the test failed; its log:"); }

/* A failed h_assert_contains or h_assert_lacks, or h_fail_text, shows the
 * whole text (a server's log, often much longer than the 1 KiB one
 * message of cmocka's print_error holds), not its first kilobyte. */
static void harness_failures_show_the_whole_text(void **state)
{
    (void)state;
    size_t cap = 300 * 64 + 64, len = 0;
    char *text = malloc(cap);
    assert_non_null(text);
    for (int i = 1; i <= 300; i++)
        len += (size_t)snprintf(text + len, cap - len, "line %05d of a long server log\n", i);
    snprintf(text + len, cap - len, "the end of the log\n");
    void (*fns[])(const char *) = {contains_absent, lacks_present, fail_with_text};
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        char *out = failure_output(fns[i], text);
        if (strstr(out, text) == NULL)
            fail_msg("failure %zu printed %zu bytes, not the whole %zu-byte text", i,
                     strlen(out), strlen(text));
        free(out);
    }
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(harness_wait_log_fails_at_once_when_the_server_exited),
        cmocka_unit_test(harness_waits_on_a_killed_server_say_the_signal),
        cmocka_unit_test(harness_failures_show_the_whole_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
