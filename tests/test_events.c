/*
 * test_events.c - the dashboard's ears (cmd/bgserve/events.c): task
 * changes are remembered only while a dashboard watches, each id once in
 * a row, with overflow reported; the reload history keeps the newest
 * EVENTS_RELOADS_MAX entries and counts every change.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include "events.h"
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Nobody watches: nothing is remembered. */
static void events_nothing_kept_without_watchers(void **state)
{
    (void)state;
    uint64_t ids[8];
    int missed = 1;
    assert_int_equal(events_watchers(), 0);
    events_task_changed(1);
    events_task_changed(2);
    assert_int_equal(events_take_tasks(ids, 8, &missed), 0);
    assert_int_equal(missed, 0);
}

/* While one watches: ids in order, a repeat in a row once, taken once. */
static void events_changes_kept_while_watched(void **state)
{
    (void)state;
    uint64_t ids[8];
    int missed = 1;
    events_watch_begin();
    assert_int_equal(events_watchers(), 1);
    events_task_changed(7);
    events_task_changed(7);
    events_task_changed(8);
    events_task_changed(7);
    assert_int_equal(events_take_tasks(ids, 8, &missed), 3);
    assert_int_equal(missed, 0);
    assert_int_equal(ids[0], 7);
    assert_int_equal(ids[1], 8);
    assert_int_equal(ids[2], 7);
    assert_int_equal(events_take_tasks(ids, 8, &missed), 0);
    events_watch_end();
    assert_int_equal(events_watchers(), 0);
}

/* More changes than fit: the caller is told it missed some. */
static void events_overflow_is_reported(void **state)
{
    (void)state;
    static uint64_t ids[EVENTS_DIRTY_MAX];
    int missed = 0;
    events_watch_begin();
    for (uint64_t i = 1; i <= EVENTS_DIRTY_MAX + 5; i++)
        events_task_changed(i);
    assert_int_equal(events_take_tasks(ids, EVENTS_DIRTY_MAX, &missed), EVENTS_DIRTY_MAX);
    assert_int_equal(missed, 1);
    /* A smaller buffer than what is kept: missed too. */
    events_task_changed(1);
    events_task_changed(2);
    assert_int_equal(events_take_tasks(ids, 1, &missed), 1);
    assert_int_equal(missed, 1);
    assert_int_equal(events_take_tasks(ids, 4, &missed), 0);
    assert_int_equal(missed, 0);
    /* The last watcher leaving forgets what was kept. */
    events_task_changed(3);
    events_watch_end();
    events_watch_begin();
    assert_int_equal(events_take_tasks(ids, 4, &missed), 0);
    events_watch_end();
}

/* Task log lines: kept only while watched, numbered, cut to
 * EVENTS_LOG_LINE, the oldest dropped past EVENTS_LOGS_MAX. */
static void events_task_lines(void **state)
{
    (void)state;
    uint64_t since = events_log_seq();
    events_task_log(5, 1, "unwatched");
    assert_int_equal(events_log_seq(), since);
    events_watch_begin();
    events_task_log(5, 2, "first <b>");
    events_task_log(6, 1, "second");
    json j;
    json_init(&j);
    assert_int_equal(events_logs_json(&j, &since), 2);
    size_t len;
    char *out = json_take(&j, &len);
    h_assert_contains(out, "[[5,2,");
    h_assert_contains(out, ",\"first <b>\"],[6,1,");
    free(out);
    assert_int_equal(events_logs_json(&j, &since), 0);
    free(json_take(&j, &len));
    char big[EVENTS_LOG_LINE * 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    for (int i = 0; i < EVENTS_LOGS_MAX + 3; i++)
        events_task_log(7, 1, big);
    uint64_t none = 0;
    assert_int_equal(events_logs_json(&j, &none), EVENTS_LOGS_MAX);
    out = json_take(&j, &len);
    assert_non_null(strstr(out, "\"]"));
    /* Each text is cut to EVENTS_LOG_LINE - 1 characters. */
    const char *q = strstr(out, ",\"x");
    assert_non_null(q);
    assert_int_equal(strcspn(q + 2, "\""), EVENTS_LOG_LINE - 1);
    free(out);
    events_watch_end();
}

/* The history keeps the newest entries, oldest first, errors escaped. */
static void events_reload_history_wraps(void **state)
{
    (void)state;
    uint64_t seq0 = events_reload_seq();
    events_reload("load", 1, 1, 1500, NULL);
    for (int i = 0; i < EVENTS_RELOADS_MAX; i++)
        events_reload("build", 0, 0, 0, "x.c:1: error: <b>\"quoted\"</b>\nnext line");
    events_reload("reload", 2, 1, 2500, NULL);
    assert_int_equal(events_reload_seq(), seq0 + EVENTS_RELOADS_MAX + 2);
    json j;
    json_init(&j);
    events_reloads_json(&j);
    size_t len;
    char *out = json_take(&j, &len);
    /* The first load was pushed out; the last reload is last. */
    h_assert_lacks(out, "\"kind\":\"load\"");
    h_assert_contains(out, "{\"kind\":\"reload\",\"generation\":2,\"ok\":true,");
    h_assert_contains(out, "\"load_ms\":2.5,\"error\":null}]");
    h_assert_contains(out, "\"error\":\"x.c:1: error: <b>\\\"quoted\\\"</b>\\nnext line\"");
    int n = 0;
    for (const char *p = out; (p = strstr(p, "\"kind\":")) != NULL; p++)
        n++;
    assert_int_equal(n, EVENTS_RELOADS_MAX);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(events_nothing_kept_without_watchers),
        cmocka_unit_test(events_changes_kept_while_watched),
        cmocka_unit_test(events_overflow_is_reported),
        cmocka_unit_test(events_task_lines),
        cmocka_unit_test(events_reload_history_wraps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
