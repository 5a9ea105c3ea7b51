/*
 * test_misuse.c - a plugin that misuses the host API
 * (tests/fixtures/misuse_app.so) against the real server: each misuse
 * gets its documented result code and one warning line saying where it
 * happened, is counted in /_bgserve/stats, and no other request is
 * affected.  Handles kept past their life are used from a later request,
 * from a task and from the plugin's own thread; a retired generation's
 * app handle after a reload.
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

static void start_misuse(h_server *s)
{
    static const char *const args[] = {"--quiet", NULL};
    assert_int_equal(h_start_app(s, h_fixture("misuse_app"), args, NULL), 0);
}

/* GET /codes: "ok" when every misuse got its documented code. */
static void assert_codes_ok(h_server *s)
{
    h_resp r;
    assert_int_equal(h_get(s, "/codes", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok");
    h_resp_free(&r);
}

static void misuse_double_completion_keeps_first_answer(void **state)
{
    (void)state;
    h_server s;
    start_misuse(&s);
    for (int i = 0; i < 100; i++) {
        h_resp r;
        char want[64];
        assert_int_equal(h_get(&s, "/double", &r), 0);
        assert_int_equal(r.status, 200);
        const char *rid = h_header(&r, "X-Request-Id");
        assert_non_null(rid);
        snprintf(want, sizeof want, "answer for %s", rid);
        assert_string_equal(r.body, want);
        assert_string_equal(h_header(&r, "Content-Type"), "text/x-first");
        h_resp_free(&r);
    }
    assert_codes_ok(&s);
    assert_int_equal(h_stat(&s, "deferred", "completed"), 100);
    assert_int_equal(h_stat(&s, "deferred", "pending"), 0);
    h_drain_log(&s);
    assert_int_equal(h_count_log(&s, "refused response header"), 0);
    h_stop_clean(&s);
    h_free(&s);
}

/* GET path: 200 with body want, no task attached.  Returns the request id
 * (static). */
static const char *get_plain(h_server *s, const char *path, const char *want)
{
    static char rid[64];
    h_resp r;
    assert_int_equal(h_get(s, path, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, want);
    assert_null(h_header(&r, "Bgserve-Tasks"));
    snprintf(rid, sizeof rid, "%s", h_header(&r, "X-Request-Id"));
    h_resp_free(&r);
    return rid;
}

/* GET /keep; wait for the task that keeps its context to finish. */
static void keep_handles(h_server *s)
{
    h_resp r;
    char path[64];
    assert_int_equal(h_get(s, "/keep", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "kept");
    const char *ids = h_header(&r, "Bgserve-Tasks");
    assert_non_null(ids);
    snprintf(path, sizeof path, "/_bgserve/tasks/%s", ids);
    h_resp_free(&r);
    char *rec = h_wait_state(s, path, "succeeded", 20000);
    assert_non_null(rec);
    free(rec);
}

/* Every kind of kept handle got its warning exactly once (the fixture
 * uses each from one call site). */
static void assert_warned_once(h_server *s, const char *running)
{
    static const char *const lines[] = {
        "bgs_res_status(): response handle: the handle's life has ended",
        "bgs_res_task(): response handle: the handle's life has ended",
        "bgs_req_id(): request handle: the handle's life has ended",
        "bgs_deferred_complete(): deferred response handle: the handle's life has ended",
        "bgs_deferred_release(): deferred response handle: the handle's life has ended",
        "bgs_task_result(): task context handle: the handle's life has ended",
        "bgs_task_cancelled(): task context handle: the handle's life has ended",
    };
    char want[256];
    h_drain_log(s);
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        snprintf(want, sizeof want, "%s", lines[i]);
        if (h_count_log(s, want) != 1)
            fprintf(stderr, "log:\n%s\n", s->log);
        assert_int_equal(h_count_log(s, want), 1);
        char line[512];
        assert_int_equal(h_line_with(s->log, want, line, sizeof line), 0);
        h_assert_contains(line, "bgserve: warning: ");
        h_assert_contains(line, "in plugin 'misuse'");
        h_assert_contains(line, running);
        h_assert_contains(line, ": returns ");
    }
}

static void misuse_kept_handles_from_later_request(void **state)
{
    (void)state;
    h_server s;
    start_misuse(&s);
    keep_handles(&s);
    const char *rid = get_plain(&s, "/use", "used");
    char running[128];
    snprintf(running, sizeof running, "(route GET /use, request %s)", rid);
    assert_warned_once(&s, running);
    h_assert_contains(s.log, "bgs_res_status(): response handle: the handle's life has ended "
                             "(it is valid until the handler returns, on its thread) in plugin "
                             "'misuse' (route GET /use, request");
    assert_codes_ok(&s);
    assert_true(h_stat(&s, NULL, "misuse") >= 20);
    h_stop_clean(&s);
    h_free(&s);
}

static void misuse_kept_handles_from_task(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    char path[64];
    start_misuse(&s);
    keep_handles(&s);
    assert_int_equal(h_get(&s, "/use-task", &r), 0);
    assert_int_equal(r.status, 200);
    snprintf(path, sizeof path, "/_bgserve/tasks/%s", r.body);
    char running[64];
    snprintf(running, sizeof running, "(task use_in_task id %s)", r.body);
    h_resp_free(&r);
    char *rec = h_wait_state(&s, path, "succeeded", 20000);
    assert_non_null(rec);
    free(rec);
    assert_warned_once(&s, running);
    assert_codes_ok(&s);
    h_stop_clean(&s);
    h_free(&s);
}

static void misuse_handles_from_plugin_thread(void **state)
{
    (void)state;
    h_server s;
    start_misuse(&s);
    keep_handles(&s);
    get_plain(&s, "/use-thread", "threaded");
    assert_warned_once(&s, "(a plugin thread)");
    /* the live handles of the request that started the thread */
    h_assert_contains(s.log, "bgs_res_status(): response handle: the handle belongs to another thread");
    h_assert_contains(s.log, "bgs_req_id(): request handle: the handle belongs to another thread");
    assert_codes_ok(&s);
    h_stop_clean(&s);
    h_free(&s);
}

static void misuse_null_arguments_and_unknown_names(void **state)
{
    (void)state;
    h_server s;
    start_misuse(&s);
    const char *rid = get_plain(&s, "/nulls", "nulls");
    char want[256];
    snprintf(want, sizeof want, "bgserve: warning: bgs_res_task(\"sendmial\"): no task with that "
             "name in plugin 'misuse' (route GET /nulls, request %s): returns BGS_ENOTASK", rid);
    h_drain_log(&s);
    h_assert_contains(s.log, want);
    h_assert_contains(s.log, "bgs_res_task(\"noop\", NULL, 5): NULL payload with a length");
    h_assert_contains(s.log, "bgs_req_enqueue(\"noop\", NULL, 3): NULL payload with a length");
    h_assert_contains(s.log, "bgs_req_enqueue(\"sendmial\"): no task with that name");
    h_assert_contains(s.log, "bgs_res_status(): response handle: the handle is NULL");
    h_assert_contains(s.log, "bgs_req_id(): request handle: not a handle of this kind");
    assert_codes_ok(&s);
    h_stop_clean(&s);
    h_free(&s);
}

static void misuse_warnings_rate_limited_per_call_site(void **state)
{
    (void)state;
    h_server s;
    start_misuse(&s);
    long long before = h_stat(&s, NULL, "misuse");
    get_plain(&s, "/loop", "looped");
    get_plain(&s, "/loop", "looped");
    h_drain_log(&s);
    assert_int_equal(h_count_log(&s, "bgs_res_task(\"nosuch\")"), 1);
    assert_int_equal(h_stat(&s, NULL, "misuse"), before + 200);
    assert_codes_ok(&s);
    h_stop_clean(&s);
    h_free(&s);
}

/* The ABI 1.1 va_list slots forward the plugin's own va_list. */
static void misuse_va_list_slots_forward(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    char path[64];
    start_misuse(&s);
    assert_int_equal(h_get(&s, "/vlist", &r), 0);
    assert_int_equal(r.status, 200);
    unsigned long long id = 0;
    assert_int_equal(sscanf(r.body, "forwarded body 7 %llu", &id), 1);
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu", id);
    h_resp_free(&r);
    char *rec = h_wait_state(&s, path, "failed", 20000);
    assert_non_null(rec);
    h_assert_contains(rec, "forwarded task error 9");
    free(rec);
    h_drain_log(&s);
    h_assert_contains(s.log, "forwarded request line 42");
    h_assert_contains(s.log, "forwarded app line 5");
    h_assert_contains(s.log, "forwarded task error 9");
    assert_int_equal(h_stat(&s, NULL, "misuse"), 0);
    h_stop_clean(&s);
    h_free(&s);

    /* bgs_app_failv: the start hook's forwarded refusal is what is shown */
    static const char *const env[] = {"MISUSE_FAIL_START=no database", NULL};
    assert_int_equal(h_start(&s, h_fixture("misuse_app"), NULL, env), -1);
    h_assert_contains(s.log, "forwarded refusal: no database");
    h_free(&s);
}

/* The app handle is checked like the others: a handle of another kind,
 * and the previous generation's (handed over through a reload) once that
 * generation retired, are refused; service misuse (in the start hook and
 * in a handler) is reported once, where it happened. */
static void misuse_app_handles_and_services(void **state)
{
    (void)state;
    h_server s;
    static const char *const args[] = {"--quiet", NULL};
    static const char *const env[] = {"MISUSE_START_SERVICES=1", NULL};
    assert_int_equal(h_start_app(&s, h_fixture("misuse_app"), args, env), 0);
    const char *rid = get_plain(&s, "/app", "app old=none");
    char want[256];
    h_drain_log(&s);
    /* one line each, from the host API alone (no second error line) */
    assert_int_equal(h_count_log(&s, "service 'svc' is already registered"), 1);
    h_assert_contains(s.log, "bgserve: warning: bgs_app_service(\"svc\"): service 'svc' is already "
                      "registered; each name can be registered once in plugin 'misuse' "
                      "(the start hook): returns BGS_EINVAL");
    assert_int_equal(h_count_log(&s, "service 'nocreate' has no create function"), 1);
    h_assert_contains(s.log, "bgs_app_data(): app handle: not a handle of this kind");
    h_assert_contains(s.log, "bgs_app_service(\"late\"): outside the start hook");
    snprintf(want, sizeof want, "bgs_req_service(\"nosuch\"): service 'nosuch' is not registered; "
             "register it in the start hook with bgs_app_service() in plugin 'misuse' "
             "(route GET /app, request %s): returns NULL (BGS_EINVAL)", rid);
    h_assert_contains(s.log, want);
    assert_int_equal(h_count_log(&s, "service 'nosuch' is not registered"), 1);
    long long before = h_stat(&s, NULL, "misuse");

    kill(s.pid, SIGHUP); /* the same file again: generation 2 gets 1's handle */
    assert_true(h_wait_log(&s, "generation 1 retired", 20000));
    get_plain(&s, "/app", "app old=refused");
    h_drain_log(&s);
    h_assert_contains(s.log, "bgs_app_data(): app handle: the handle's life has ended "
                      "(it is valid from the start hook until the stop hook returns)");
    h_assert_contains(s.log, "bgs_app_set_data(): app handle: the handle's life has ended");
    h_assert_contains(s.log, "bgs_app_service(): app handle: the handle's life has ended");
    h_assert_contains(s.log, "bgs_app_periodic(): app handle: the handle's life has ended");
    h_assert_contains(s.log, "bgs_app_handover_taken(): app handle: the handle's life has ended");
    h_assert_contains(s.log, "line through a retired app handle");
    /* 2 in generation 2's start hook, 3 as before, 6 for the old handle */
    assert_int_equal(h_stat(&s, NULL, "misuse"), before + 2 + 3 + 6);
    assert_codes_ok(&s);
    h_stop_clean(&s);
    h_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(misuse_double_completion_keeps_first_answer),
        cmocka_unit_test(misuse_kept_handles_from_later_request),
        cmocka_unit_test(misuse_kept_handles_from_task),
        cmocka_unit_test(misuse_handles_from_plugin_thread),
        cmocka_unit_test(misuse_null_arguments_and_unknown_names),
        cmocka_unit_test(misuse_warnings_rate_limited_per_call_site),
        cmocka_unit_test(misuse_va_list_slots_forward),
        cmocka_unit_test(misuse_app_handles_and_services),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
