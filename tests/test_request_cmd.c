/*
 * test_request_cmd.c - `bgserve request APP.so METHOD PATH ...`: one
 * request in process, with no socket, through the server's loader,
 * router and handler; the answer (status line, headers, body) and then
 * each of the response's tasks run to completion (name, id, state,
 * attempts, error, log lines); --json; the exit statuses (0, 1 refused,
 * 2 usage, 3 status >= 400, 4 a task did not succeed, 5 --timeout,
 * 128+signal for a crash).  Fixtures: request_app.so (echo, tasks that
 * succeed, retry, fail and are skipped), plugins/jobs.so (deferred and
 * awaited answers, a slow task), crash_app.so, major2.so.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Run `bgserve request` with args (NULL-terminated); its exit status, and
 * everything it wrote (stdout and stderr) in *out. */
static int request(char **out, const char *const *args)
{
    const char *argv[32] = {h_build_path("bgserve"), "request"};
    size_t n = 2;
    for (size_t i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return h_run(argv, out);
}

static const char *app(void)
{
    return h_fixture("request_app");
}

static void request_cmd_prints_answer_then_task_outcomes(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {app(), "POST", "/greet", "-d", "ada", NULL};
    assert_int_equal(request(&out, args), 0);
    h_assert_contains(out, "[app request_app] start hook ran"); /* loaded as the server loads */
    h_assert_contains(out, "HTTP/1.1 201 Created\n");
    h_assert_contains(out, "\nBgserve-Tasks: 1\n");
    h_assert_contains(out, "\nContent-Type: text/plain; charset=utf-8\n");
    h_assert_contains(out, "\nContent-Length: 26\n");
    h_assert_contains(out, "\nX-Request-Id: ");
    h_assert_contains(out, "\n\ngreeting queued as task 1\n");
    h_assert_contains(out, "\ntask 1 hello: succeeded (1 attempt, ");
    h_assert_contains(out, " ms)\n  hello to ada\n"); /* its log line, under it */
    h_assert_lacks(out, "[task 1]");                  /* and only there */
    h_assert_contains(out, "[app request_app] stop hook ran");
    /* the answer comes before the tasks, the stop hook after them */
    assert_true(strstr(out, "HTTP/1.1") < strstr(out, "task 1 hello"));
    assert_true(strstr(out, "task 1 hello") < strstr(out, "stop hook ran"));
    h_assert_lacks(out, "listening");
    free(out);
}

static void request_cmd_headers_query_and_body_reach_the_handler(void **state)
{
    (void)state;
    char *out;
    char path[] = "/tmp/bgserve-request-body-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "from a file", 11), 11);
    close(fd);
    char at[64];
    snprintf(at, sizeof at, "@%s", path);

    const char *args[] = {app(), "POST", "/echo/hi%20there?q=a%2Bb", "-H", "X-Test: t1",
                          "-d", at, NULL};
    assert_int_equal(request(&out, args), 0);
    h_assert_contains(out, "HTTP/1.1 200 OK\nX-Echo: yes\n");
    h_assert_contains(out, "POST word=hi there q=a+b x-test=t1 "
                      "type=application/x-www-form-urlencoded body=from a file");
    h_assert_contains(out, "[req "); /* the request's log line, on stderr */
    h_assert_contains(out, "] echoing hi there");
    free(out);

    /* -H overrides the default type; --header=, -Hvalue and --data= forms */
    const char *args2[] = {app(), "POST", "/echo/x", "--header=Content-Type: text/x-mine",
                           "-HX-Test:t2", "--data=inline", NULL};
    assert_int_equal(request(&out, args2), 0);
    h_assert_contains(out, "x-test=t2 type=text/x-mine body=inline");
    free(out);

    /* HEAD: the GET handler runs, no body is shown */
    const char *args3[] = {app(), "HEAD", "/echo/x", NULL};
    assert_int_equal(request(&out, args3), 0);
    h_assert_contains(out, "HTTP/1.1 200 OK\n");
    h_assert_contains(out, "\nContent-Length: 37\n"); /* "HEAD word=x q=- ..." */
    h_assert_lacks(out, "HEAD word=x");
    free(out);
    unlink(path);
}

static void request_cmd_retries_run_to_completion(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {app(), "GET", "/flaky", NULL};
    assert_int_equal(request(&out, args), 0);
    h_assert_contains(out, "\ntask 1 flaky: succeeded (3 attempts, ");
    h_assert_contains(out, "  worked on attempt 3\n");
    free(out);
}

static void request_cmd_failed_task_exits_4(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {app(), "GET", "/broken", NULL};
    assert_int_equal(request(&out, args), 4);
    h_assert_contains(out, "HTTP/1.1 200 OK\n");
    h_assert_contains(out, "\ntask 1 broken: failed (2 attempts, ");
    h_assert_contains(out, " ms): disk full\n  warning: the disk is full\n");
    h_assert_contains(out, "\ntask 2 hello: skipped (0 attempts, ");
    h_assert_contains(out, "): previous task 1 (broken) failed\n");
    free(out);
}

static void request_cmd_error_status_exits_3(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {app(), "GET", "/nope", NULL};
    assert_int_equal(request(&out, args), 3);
    h_assert_contains(out, "HTTP/1.1 404 Not Found\n");
    free(out);
    const char *args2[] = {app(), "DELETE", "/greet", NULL};
    assert_int_equal(request(&out, args2), 3);
    h_assert_contains(out, "HTTP/1.1 405 Method Not Allowed\n");
    h_assert_contains(out, "\nAllow: POST\n");
    free(out);
    /* bgserve's own endpoints answer too; the event stream needs a socket */
    const char *args3[] = {app(), "GET", "/_bgserve/stats", NULL};
    assert_int_equal(request(&out, args3), 0);
    h_assert_contains(out, "\"requests\":");
    free(out);
    const char *args4[] = {app(), "GET", "/_bgserve/events", NULL};
    assert_int_equal(request(&out, args4), 3);
    h_assert_contains(out, "HTTP/1.1 501 Not Implemented\n");
    h_assert_contains(out, "bgserve request does not stream /_bgserve/events; use a running server");
    free(out);
}

/* A deferred answer completed by a task, and one awaiting a task's
 * result (plugins/jobs.c). */
static void request_cmd_waits_for_deferred_and_awaited_answers(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {h_build_path("plugins/jobs.so"), "GET", "/jobs/3", NULL};
    assert_int_equal(request(&out, args), 0);
    h_assert_contains(out, "HTTP/1.1 200 OK\n");
    h_assert_contains(out, "\n\njob 3 done\n");
    h_assert_contains(out, "\ntask 1 job: succeeded (1 attempt, ");
    free(out);
    const char *args2[] = {h_build_path("plugins/jobs.so"), "GET", "/jobs/4/await", NULL};
    assert_int_equal(request(&out, args2), 0);
    h_assert_contains(out, "\n\njob 4 done\n");
    h_assert_contains(out, "\ntask 1 job_result: succeeded (1 attempt, ");
    free(out);
}

/* The task sleeps a second; --timeout 0.2 stops waiting for it. */
static void request_cmd_timeout_exits_5(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {h_build_path("plugins/jobs.so"), "GET", "/sleep", "--timeout", "0.2",
                          NULL};
    assert_int_equal(request(&out, args), 5);
    h_assert_contains(out, "HTTP/1.1 202 Accepted\n");
    h_assert_contains(out, "\ntask 1 sleep: running (1 attempt so far)\n");
    h_assert_contains(out, "stopped waiting after --timeout");
    free(out);
}

/* The JSON line of out (the one starting with '{'), copied. */
static char *json_line(const char *out)
{
    const char *p = out[0] == '{' ? out : strstr(out, "\n{");
    assert_non_null(p);
    if (*p == '\n')
        p++;
    const char *end = strchr(p, '\n');
    assert_non_null(end);
    char *line = malloc((size_t)(end - p) + 1);
    assert_non_null(line);
    memcpy(line, p, (size_t)(end - p));
    line[end - p] = '\0';
    return line;
}

static void request_cmd_json_is_one_object(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {app(), "GET", "/broken", "--json", NULL};
    assert_int_equal(request(&out, args), 4);
    char *j = json_line(out);
    assert_int_equal(h_json_num(j, "status"), 200);
    assert_int_equal(h_json_num(j, "exit"), 4);
    h_assert_contains(j, "\"answered\":true");
    h_assert_contains(j, "\"headers\":[[\"Bgserve-Tasks\",\"1,2\"],");
    h_assert_contains(j, "\"body\":\"broken queued\"");
    h_assert_contains(j, "{\"id\":1,\"name\":\"broken\",\"state\":\"failed\",\"attempts\":2,"
                      "\"error\":\"disk full\",\"duration_ms\":");
    h_assert_contains(j, "\"log\":[{\"level\":\"warning\",\"text\":\"the disk is full\"}");
    h_assert_contains(j, "{\"id\":2,\"name\":\"hello\",\"state\":\"skipped\",\"attempts\":0,");
    h_assert_contains(j, "\"timed_out\":false");
    h_assert_lacks(out, "HTTP/1.1"); /* one object, nothing else on stdout */
    free(j);
    free(out);

    /* the request's own log lines are in it too */
    const char *args2[] = {app(), "GET", "/echo/w", "--json", NULL};
    assert_int_equal(request(&out, args2), 0);
    j = json_line(out);
    h_assert_contains(j, "\"log\":[{\"level\":\"info\",\"text\":\"echoing w\"}]");
    h_assert_contains(j, "\"tasks\":[]");
    free(j);
    free(out);
}

static void request_cmd_refused_plugin_exits_1(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {h_fixture("major2"), "GET", "/", NULL};
    assert_int_equal(request(&out, args), 1);
    h_assert_contains(out, "cannot load plugin");
    h_assert_lacks(out, "HTTP/1.1");
    free(out);

    /* a start hook that refuses: the same message as the server's */
    setenv("REQUEST_APP_FAIL", "1", 1);
    const char *args2[] = {app(), "GET", "/echo/x", NULL};
    int rc = request(&out, args2);
    unsetenv("REQUEST_APP_FAIL");
    assert_int_equal(rc, 1);
    h_assert_contains(out, "failed to start: no database (REQUEST_APP_FAIL is set)");
    h_assert_lacks(out, "HTTP/1.1");
    h_assert_lacks(out, "stop hook ran");
    free(out);
}

static void request_cmd_usage_errors_exit_2(void **state)
{
    (void)state;
    static const char *const bad[][8] = {
        {NULL},
        {"x.so", NULL},
        {"x.so", "GET", NULL},
        {"x.so", "get", "/", NULL},
        {"x.so", "GET", "nope", NULL},
        {"x.so", "GET", "/", "extra", NULL},
        {"x.so", "GET", "/", "-H", "no colon", NULL},
        {"x.so", "GET", "/", "-H", "Bad Name: v", NULL},
        {"x.so", "GET", "/", "-d", "a", "-d", "b", NULL},
        {"x.so", "GET", "/", "-d", "@/nonexistent/body", NULL},
        {"x.so", "GET", "/", "--timeout", "0", NULL},
        {"x.so", "GET", "/", "--timeout", "soon", NULL},
        {"x.so", "GET", "/", "--timeout", NULL},
        {"x.so", "GET", "/", "--bogus", NULL},
    };
    static const char *const why[] = {
        "missing APP.so, METHOD and PATH", "missing METHOD and PATH", "missing PATH",
        "METHOD must be upper case letters", "PATH must start with '/'",
        "extra argument 'extra'", "-H needs 'Name: value'", "the name must be a token",
        "-d given twice", "-d @/nonexistent/body: No such file or directory",
        "--timeout must be seconds", "--timeout must be seconds", "--timeout needs a value",
        "unknown option '--bogus'",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *out;
        int rc = request(&out, bad[i]);
        if (rc != 2 || strstr(out, why[i]) == NULL)
            fprintf(stderr, "case %zu: exit %d, want 2 and '%s':\n%s\n", i, rc, why[i], out);
        assert_int_equal(rc, 2);
        h_assert_contains(out, why[i]);
        free(out);
    }
    char *out;
    const char *help[] = {"--help", NULL};
    assert_int_equal(request(&out, help), 0);
    h_assert_contains(out, "Usage: bgserve request APP.so METHOD PATH");
    h_assert_contains(out, "Exit status: 0");
    free(out);
}

/* A crash in plugin code ends the command with the signal, after the
 * report naming the route. */
static void request_cmd_crash_ends_with_the_signal(void **state)
{
    (void)state;
    char *out;
    const char *args[] = {h_fixture("crash_app"), "GET", "/segv", NULL};
    assert_int_equal(request(&out, args), 128 + SIGSEGV);
    h_assert_contains(out, "bgserve crashed in plugin code: SIGSEGV");
    h_assert_contains(out, "while running route GET /segv (request ");
    h_assert_lacks(out, "HTTP/1.1");
    free(out);
}

int main(void)
{
    /* No core file from the crash test. */
    struct rlimit nocore = {0, 0};
    setrlimit(RLIMIT_CORE, &nocore);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(request_cmd_prints_answer_then_task_outcomes),
        cmocka_unit_test(request_cmd_headers_query_and_body_reach_the_handler),
        cmocka_unit_test(request_cmd_retries_run_to_completion),
        cmocka_unit_test(request_cmd_failed_task_exits_4),
        cmocka_unit_test(request_cmd_error_status_exits_3),
        cmocka_unit_test(request_cmd_waits_for_deferred_and_awaited_answers),
        cmocka_unit_test(request_cmd_timeout_exits_5),
        cmocka_unit_test(request_cmd_json_is_one_object),
        cmocka_unit_test(request_cmd_refused_plugin_exits_1),
        cmocka_unit_test(request_cmd_usage_errors_exit_2),
        cmocka_unit_test(request_cmd_crash_ends_with_the_signal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
