/*
 * test_log.c - the log lines: text formats, levels, colour, quiet, JSON
 * mode, truncation and whole lines from concurrent threads.  stderr is
 * redirected to a temporary file around each call being checked.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bgserve.h"
#include "log.h"
#include "helpers.h"

static void init(int color, int json, int quiet)
{
    log_config c = {color, json, quiet, NULL, NULL, 0};
    log_init(&c);
}

static void plugin(uint32_t level, const char *kind, const char *tag,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void plugin(uint32_t level, const char *kind, const char *tag,
                   const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_pluginv(level, kind, tag, fmt, ap);
    va_end(ap);
}

static int setup(void **state)
{
    (void)state;
    unsetenv("BGSERVE_DEBUG");
    init(0, 0, 0);
    return 0;
}

/* ---- text mode ---- */

static void log_text_levels(void **state)
{
    (void)state;
    h_capture_begin();
    log_msg(BGS_LOG_INFO, "listening on %s", "http://127.0.0.1:8000");
    log_msg(BGS_LOG_WARN, "careful");
    log_msg(BGS_LOG_ERROR, "broken %d", 7);
    log_msg(BGS_LOG_DEBUG, "hidden");
    char *out = h_capture_end();
    assert_string_equal(out, "bgserve: listening on http://127.0.0.1:8000\n"
                             "bgserve: warning: careful\n"
                             "bgserve: error: broken 7\n");
    free(out);
}

static void log_debug_needs_env(void **state)
{
    (void)state;
    setenv("BGSERVE_DEBUG", "1", 1);
    init(0, 0, 0);
    h_capture_begin();
    log_msg(BGS_LOG_DEBUG, "details %s", "here");
    char *out = h_capture_end();
    assert_string_equal(out, "bgserve: debug: details here\n");
    free(out);
    /* The variable is read by log_init, not at each line. */
    unsetenv("BGSERVE_DEBUG");
    h_capture_begin();
    log_msg(BGS_LOG_DEBUG, "still");
    out = h_capture_end();
    assert_string_equal(out, "bgserve: debug: still\n");
    free(out);
    init(0, 0, 0);
    h_capture_begin();
    log_msg(BGS_LOG_DEBUG, "gone");
    out = h_capture_end();
    assert_string_equal(out, "");
    free(out);
}

static void log_access_text(void **state)
{
    (void)state;
    log_access_rec a = {"GET", "/users/7", 200, 210, 13, "5f2c9a3e00000001", NULL};
    h_capture_begin();
    log_access(&a);
    a.method = "POST";
    a.path = "/jobs?x=1";
    a.status = 202;
    a.duration_us = 12345;
    a.bytes = 0;
    log_access(&a);
    a.duration_us = 1420000;
    a.status = 500;
    a.note = "client aborted";
    log_access(&a);
    a.duration_us = 999;
    a.note = NULL;
    log_access(&a);
    char *out = h_capture_end();
    assert_string_equal(out,
        "GET /users/7 200 0.21ms 13b rid=5f2c9a3e00000001\n"
        "POST /jobs?x=1 202 12.3ms 0b rid=5f2c9a3e00000001\n"
        "POST /jobs?x=1 500 1.42s 0b rid=5f2c9a3e00000001 (client aborted)\n"
        "POST /jobs?x=1 500 1.00ms 0b rid=5f2c9a3e00000001\n");
    free(out);
}

static void log_control_chars_shown_as_question_marks(void **state)
{
    (void)state;
    log_access_rec a = {"GET", "/a\nb\033[31m", 404, 1, 0, "r1", NULL};
    h_capture_begin();
    log_access(&a);
    log_msg(BGS_LOG_INFO, "two\nlines");
    char *out = h_capture_end();
    assert_string_equal(out, "GET /a?b?[31m 404 0.00ms 0b rid=r1\n"
                             "bgserve: two?lines\n");
    free(out);
}

static void log_colour_by_status_and_level(void **state)
{
    (void)state;
    init(1, 0, 0);
    log_access_rec a = {"GET", "/", 200, 1, 0, "r", NULL};
    h_capture_begin();
    log_access(&a);
    a.status = 301;
    log_access(&a);
    a.status = 404;
    log_access(&a);
    a.status = 503;
    log_access(&a);
    log_msg(BGS_LOG_WARN, "w");
    log_msg(BGS_LOG_ERROR, "e");
    char *out = h_capture_end();
    h_assert_contains(out, "GET / \033[32m200\033[0m 0.00ms");
    h_assert_contains(out, "GET / \033[36m301\033[0m");
    h_assert_contains(out, "GET / \033[33m404\033[0m");
    h_assert_contains(out, "GET / \033[31m503\033[0m");
    h_assert_contains(out, "bgserve: \033[33mwarning:\033[0m w\n");
    h_assert_contains(out, "bgserve: \033[31merror:\033[0m e\n");
    free(out);

    init(0, 0, 0);
    h_capture_begin();
    log_access(&a);
    out = h_capture_end();
    assert_null(strchr(out, '\033'));
    free(out);
}

static void log_task_text(void **state)
{
    (void)state;
    log_task_rec t = {"start", 42, "send_email", 1, 0, NULL, 0};
    h_capture_begin();
    log_task(&t);
    t.event = "done";
    t.duration_us = 1000000;
    log_task(&t);
    t.event = "failed";
    t.attempt = 3;
    t.error = "smtp refused";
    log_task(&t);
    t.event = "retry";
    t.attempt = 2;
    t.retry_in_ms = 200;
    log_task(&t);
    t.event = "skipped";
    t.error = "an earlier task failed";
    log_task(&t);
    t.event = "discarded";
    t.error = "handler failed";
    log_task(&t);
    t.event = "cancelled";
    t.error = "timeout";
    log_task(&t);
    t.event = "failed";
    t.attempt = 1;
    t.error = NULL;
    log_task(&t);
    char *out = h_capture_end();
    assert_string_equal(out,
        "bgserve: task 42 send_email start (attempt 1)\n"
        "bgserve: task 42 send_email done in 1.00s\n"
        "bgserve: task 42 send_email failed after 3 attempts: smtp refused\n"
        "bgserve: task 42 send_email retry 2 in 200ms: smtp refused\n"
        "bgserve: task 42 send_email skipped: an earlier task failed\n"
        "bgserve: task 42 send_email discarded: handler failed\n"
        "bgserve: task 42 send_email cancelled: timeout\n"
        "bgserve: task 42 send_email failed after 1 attempt\n");
    free(out);
}

static void log_plugin_text(void **state)
{
    (void)state;
    h_capture_begin();
    plugin(BGS_LOG_INFO, "req", "5f2c9a3e00000001", "user %d", 7);
    plugin(BGS_LOG_WARN, "task", "42", "slow");
    plugin(BGS_LOG_ERROR, "app", "hello", "db down");
    plugin(BGS_LOG_DEBUG, "app", "hello", "hidden");
    char *out = h_capture_end();
    assert_string_equal(out, "[req 5f2c9a3e00000001] user 7\n"
                             "[task 42] warning: slow\n"
                             "[app hello] error: db down\n");
    free(out);
}

/* A sink set in log_init is offered each plugin line first (formatted,
 * levels applied) and keeps the ones it returns 1 for; bgserve's own
 * lines never reach it. */
typedef struct sunk {
    int n;
    char kinds[4][8], tags[4][24], texts[4][64];
    uint32_t levels[4];
} sunk;

static int keep_tasks(void *arg, uint32_t level, const char *kind, const char *tag,
                      const char *text)
{
    sunk *s = arg;
    if (s->n < 4) {
        snprintf(s->kinds[s->n], sizeof s->kinds[0], "%s", kind);
        snprintf(s->tags[s->n], sizeof s->tags[0], "%s", tag);
        snprintf(s->texts[s->n], sizeof s->texts[0], "%s", text);
        s->levels[s->n] = level;
        s->n++;
    }
    return strcmp(kind, "task") == 0;
}

static void log_plugin_sink_keeps_what_it_takes(void **state)
{
    (void)state;
    sunk s = {0};
    log_config c = {0, 0, 0, keep_tasks, &s, 0};
    log_init(&c);
    h_capture_begin();
    plugin(BGS_LOG_WARN, "task", "42", "slow %d", 3);
    plugin(BGS_LOG_INFO, "req", "r1", "user %d", 7);
    plugin(BGS_LOG_DEBUG, "task", "42", "hidden");
    log_msg(BGS_LOG_INFO, "own line");
    char *out = h_capture_end();
    assert_string_equal(out, "[req r1] user 7\nbgserve: own line\n");
    free(out);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.kinds[0], "task");
    assert_string_equal(s.tags[0], "42");
    assert_string_equal(s.texts[0], "slow 3");
    assert_int_equal(s.levels[0], BGS_LOG_WARN);
    assert_string_equal(s.kinds[1], "req");
    assert_string_equal(s.texts[1], "user 7");
    init(0, 0, 0);
}

/* own_min_level drops bgserve's own lines below it, never a plugin's. */
static void log_own_min_level_spares_plugin_lines(void **state)
{
    (void)state;
    log_config c = {.own_min_level = BGS_LOG_WARN};
    log_init(&c);
    h_capture_begin();
    log_msg(BGS_LOG_INFO, "serving");
    log_msg(BGS_LOG_WARN, "careful");
    plugin(BGS_LOG_INFO, "app", "hello", "started");
    char *out = h_capture_end();
    assert_string_equal(out, "bgserve: warning: careful\n[app hello] started\n");
    free(out);
    init(0, 0, 0);
}

static void log_quiet_keeps_problems(void **state)
{
    (void)state;
    init(0, 0, 1);
    log_access_rec a = {"GET", "/", 200, 1, 0, "r", NULL};
    log_task_rec t = {"start", 1, "t", 1, 0, NULL, 0};
    h_capture_begin();
    log_access(&a);
    log_task(&t);
    t.event = "done";
    log_task(&t);
    static const char *const kept[] = {"failed", "retry", "skipped",
                                       "discarded", "cancelled"};
    for (size_t i = 0; i < 5; i++) {
        t.event = kept[i];
        t.error = "why";
        log_task(&t);
    }
    log_msg(BGS_LOG_INFO, "still here");
    char *out = h_capture_end();
    h_assert_lacks(out, "GET /");
    h_assert_lacks(out, "start");
    h_assert_lacks(out, "done");
    for (size_t i = 0; i < 5; i++)
        h_assert_contains(out, kept[i]);
    h_assert_contains(out, "bgserve: still here\n");
    free(out);
}

/* ---- JSON mode ---- */

/* One JSON object per line, with a well-formed timestamp first. */
static void check_json_line(const char *line, size_t len)
{
    assert_true(len > 40);
    assert_true(strncmp(line, "{\"ts\":\"", 7) == 0);
    const char *ts = line + 7; /* 2026-11-23T19:00:00.123Z */
    for (int i = 0; i < 24; i++) {
        char c = ts[i];
        if (i == 4 || i == 7)
            assert_int_equal(c, '-');
        else if (i == 10)
            assert_int_equal(c, 'T');
        else if (i == 13 || i == 16)
            assert_int_equal(c, ':');
        else if (i == 19)
            assert_int_equal(c, '.');
        else if (i == 23)
            assert_int_equal(c, 'Z');
        else
            assert_true(c >= '0' && c <= '9');
    }
    assert_int_equal(line[len - 1], '}');
    assert_null(memchr(line, '\033', len));
}

static void log_json_lines(void **state)
{
    (void)state;
    init(1, 1, 0); /* colour asked for, but never in JSON */
    log_access_rec a = {"GET", "/q\"x", 200, 210, 13, "rid1", NULL};
    log_task_rec t = {"retry", 42, "send_email", 2, 1500, "bad \"thing\"", 200};
    h_capture_begin();
    log_msg(BGS_LOG_INFO, "hello \"world\"\n");
    log_msg(BGS_LOG_WARN, "w");
    log_access(&a);
    log_task(&t);
    t.event = "done";
    t.error = NULL;
    log_task(&t);
    plugin(BGS_LOG_ERROR, "req", "rid1", "oops %s", "\x01");
    char *out = h_capture_end();

    const char *want[] = {
        ",\"level\":\"info\",\"msg\":\"hello \\\"world\\\"\\n\"}",
        ",\"level\":\"warn\",\"msg\":\"w\"}",
        ",\"type\":\"access\",\"method\":\"GET\",\"path\":\"/q\\\"x\","
        "\"status\":200,\"duration_us\":210,\"bytes\":13,\"request_id\":\"rid1\"}",
        ",\"type\":\"task\",\"event\":\"retry\",\"id\":42,\"name\":\"send_email\","
        "\"attempt\":2,\"duration_us\":1500,\"retry_in_ms\":200,"
        "\"error\":\"bad \\\"thing\\\"\"}",
        ",\"type\":\"task\",\"event\":\"done\",\"id\":42,\"name\":\"send_email\","
        "\"attempt\":2,\"duration_us\":1500,\"error\":null}",
        ",\"type\":\"plugin\",\"level\":\"error\",\"kind\":\"req\","
        "\"tag\":\"rid1\",\"msg\":\"oops \\u0001\"}",
    };
    char *p = out;
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        size_t len = (size_t)(nl - p);
        check_json_line(p, len);
        /* after "{"ts":"...Z"" comes the rest */
        *nl = '\0';
        assert_string_equal(p + 32, want[i]);
        p = nl + 1;
    }
    assert_string_equal(p, "");
    free(out);
}

/* ---- limits and threads ---- */

static void log_long_lines_truncated(void **state)
{
    (void)state;
    size_t n = 100 * 1024;
    char *big = malloc(n + 1);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++)
        big[i] = (i % 3 == 0) ? 'a' : (char)(i % 3 == 1 ? 0xc3 : 0xa9); /* aé */
    big[n] = '\0';

    h_capture_begin();
    log_msg(BGS_LOG_ERROR, "%s", big);
    char *out = h_capture_end();
    size_t len = strlen(out);
    assert_true(len <= 4096);
    assert_non_null(strchr(out, '\n'));
    assert_ptr_equal(strchr(out, '\n'), out + len - 1);
    assert_true(strncmp(out, "bgserve: error: aé", 19) == 0);
    assert_string_equal(out + len - 4, "...\n");
    /* cut on a character boundary: the byte before "..." ends a
     * character ('a' or the second byte of é) */
    unsigned char last = (unsigned char)out[len - 5];
    assert_true(last == 'a' || last == 0xa9);
    free(out);

    init(0, 1, 0);
    log_access_rec a = {"GET", big, 200, 1, 0, "r", NULL};
    h_capture_begin();
    log_msg(BGS_LOG_INFO, "%s", big);
    log_access(&a);
    out = h_capture_end();
    char *nl = strchr(out, '\n');
    assert_non_null(nl);
    check_json_line(out, (size_t)(nl - out));
    assert_true(nl - out < 4096);
    assert_true(strncmp(nl - 5, "...\"}", 5) == 0);
    char *nl2 = strchr(nl + 1, '\n');
    assert_non_null(nl2);
    check_json_line(nl + 1, (size_t)(nl2 - nl - 1));
    assert_true(nl2 - nl - 1 < 4096);
    h_assert_contains(nl + 1, "...\",\"status\":200");
    assert_string_equal(nl2 + 1, "");
    free(out);
    free(big);
}

#define NTHREADS 8
#define NLINES 300

static void *spam(void *arg)
{
    int id = (int)(intptr_t)arg;
    char pad[200];
    memset(pad, 'a' + id, sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    for (int i = 0; i < NLINES; i++)
        log_msg(BGS_LOG_INFO, "t%d n%d %s", id, i, pad);
    return NULL;
}

static void log_concurrent_lines_stay_whole(void **state)
{
    (void)state;
    pthread_t th[NTHREADS];
    h_capture_begin();
    for (intptr_t i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, spam, (void *)i), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    char *out = h_capture_end();

    int seen[NTHREADS] = {0};
    char *save = NULL;
    int lines = 0;
    for (char *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        int id, n, used = 0;
        assert_int_equal(sscanf(l, "bgserve: t%d n%d %n", &id, &n, &used), 2);
        assert_true(id >= 0 && id < NTHREADS);
        assert_int_equal(n, seen[id]); /* each thread's lines in order */
        seen[id]++;
        const char *pad = l + used;
        assert_int_equal(strlen(pad), 199);
        for (int k = 0; k < 199; k++)
            assert_int_equal(pad[k], 'a' + id);
        lines++;
    }
    assert_int_equal(lines, NTHREADS * NLINES);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(log_text_levels, setup),
        cmocka_unit_test_setup(log_debug_needs_env, setup),
        cmocka_unit_test_setup(log_access_text, setup),
        cmocka_unit_test_setup(log_control_chars_shown_as_question_marks, setup),
        cmocka_unit_test_setup(log_colour_by_status_and_level, setup),
        cmocka_unit_test_setup(log_task_text, setup),
        cmocka_unit_test_setup(log_plugin_text, setup),
        cmocka_unit_test_setup(log_plugin_sink_keeps_what_it_takes, setup),
        cmocka_unit_test_setup(log_own_min_level_spares_plugin_lines, setup),
        cmocka_unit_test_setup(log_quiet_keeps_problems, setup),
        cmocka_unit_test_setup(log_json_lines, setup),
        cmocka_unit_test_setup(log_long_lines_truncated, setup),
        cmocka_unit_test_setup(log_concurrent_lines_stay_whole, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
