/*
 * test_misuse.c - a plugin that misuses the host API
 * (tests/fixtures/misuse_app.so) against the real server: each misuse
 * gets its documented result code, and no other request is affected.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <signal.h>
#include <stdio.h>
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(misuse_double_completion_keeps_first_answer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
