/*
 * test_json.c - the JSON writer: commas, escapes, invalid UTF-8, numbers,
 * large strings and buffer ownership; decimal digits of every length;
 * times; a task's record (task_json.c)
 * byte for byte, from memory and from the journal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "task_json.h"
#include "util.h"

/* The escaped form of one string value, quotes included. */
static char *str_json(const char *s, size_t n)
{
    json j;
    json_init(&j);
    json_strn(&j, s, n);
    return json_take(&j, NULL);
}

static void check_str(const char *in, size_t n, const char *want)
{
    char *got = str_json(in, n);
    assert_string_equal(got, want);
    free(got);
}

static void json_nested_commas(void **state)
{
    (void)state;
    json j;
    json_init(&j);
    json_obj_begin(&j);
    json_key(&j, "a");
    json_u64(&j, 1);
    json_key(&j, "b");
    json_arr_begin(&j);
    json_i64(&j, -2);
    json_obj_begin(&j);
    json_obj_end(&j);
    json_arr_begin(&j);
    json_arr_end(&j);
    json_obj_begin(&j);
    json_key(&j, "x");
    json_null(&j);
    json_key(&j, "y");
    json_bool(&j, 1);
    json_obj_end(&j);
    json_bool(&j, 0);
    json_arr_end(&j);
    json_key(&j, "c");
    json_str(&j, "s");
    json_key(&j, "d");
    json_str(&j, NULL);
    json_obj_end(&j);
    assert_string_equal(j.buf, "{\"a\":1,\"b\":[-2,{},[],{\"x\":null,\"y\":true},"
                               "false],\"c\":\"s\",\"d\":null}");
    assert_int_equal(j.len, strlen(j.buf));
    json_free(&j);
}

static void json_numbers(void **state)
{
    (void)state;
    json j;
    json_init(&j);
    json_arr_begin(&j);
    json_u64(&j, UINT64_MAX);
    json_u64(&j, 0);
    json_u64(&j, 9);
    json_u64(&j, 10);
    json_u64(&j, 1000000);
    json_i64(&j, INT64_MIN);
    json_double(&j, 0.1);
    json_double(&j, 1.5);
    json_double(&j, NAN);
    json_double(&j, INFINITY);
    json_double(&j, -INFINITY);
    json_arr_end(&j);
    assert_string_equal(j.buf, "[18446744073709551615,0,9,10,1000000,-9223372036854775808,"
                               "0.1,1.5,null,null,null]");
    json_free(&j);
}

/* util_u64_dec counts the digits without a loop: every length, at its
 * edges (10^k - 1, 10^k, 10^k + 1, 2^k), against printf. */
static void json_u64_every_length(void **state)
{
    (void)state;
    char got[UTIL_U64_DEC_MAX], want[32];
    uint64_t vs[3 * 20 + 64 + 2];
    size_t n = 0;
    vs[n++] = 0;
    vs[n++] = UINT64_MAX;
    for (uint64_t p = 1, k = 0; k < 20; k++, p *= 10) {
        vs[n++] = p - 1;
        vs[n++] = p;
        vs[n++] = p + 1;
    }
    for (unsigned k = 0; k < 64; k++)
        vs[n++] = (uint64_t)1 << k;
    for (size_t i = 0; i < n; i++) {
        snprintf(want, sizeof want, "%llu", (unsigned long long)vs[i]);
        memset(got, 'X', sizeof got);
        assert_int_equal(util_u64_dec(got, vs[i]), strlen(want));
        assert_string_equal(got, want);
    }
}

static void json_double_round_trips(void **state)
{
    (void)state;
    const double vals[] = {1.0 / 3.0, 2.0 / 3.0, 1e-300, 123456789.123456789,
                           5e-324, 1.7976931348623157e308, -0.0};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        json j;
        json_init(&j);
        json_double(&j, vals[i]);
        assert_true(strtod(j.buf, NULL) == vals[i]);
        json_free(&j);
    }
}

static void json_escapes(void **state)
{
    (void)state;
    check_str("a\"b\\c/", 6, "\"a\\\"b\\\\c/\"");
    check_str("\n\r\t\b\f", 5, "\"\\n\\r\\t\\b\\f\"");
    check_str("\x01\x1f\x7f", 3, "\"\\u0001\\u001f\x7f\"");
    check_str("a\0b", 3, "\"a\\u0000b\"");
    check_str("", 0, "\"\"");
}

static void json_key_escaped(void **state)
{
    (void)state;
    json j;
    json_init(&j);
    json_obj_begin(&j);
    json_key(&j, "k\"\n");
    json_u64(&j, 0);
    json_obj_end(&j);
    assert_string_equal(j.buf, "{\"k\\\"\\n\":0}");
    json_free(&j);
}

static void json_valid_utf8_passes(void **state)
{
    (void)state;
    /* é (2 bytes), € (3), U+10FFFF (4), U+FFFF and U+E000 (3) */
    const char *s = "\xc3\xa9\xe2\x82\xac\xf4\x8f\xbf\xbf\xef\xbf\xbf\xee\x80\x80";
    char want[64];
    snprintf(want, sizeof(want), "\"%s\"", s);
    check_str(s, strlen(s), want);
}

static void json_invalid_utf8_replaced(void **state)
{
    (void)state;
    check_str("\x80", 1, "\"\\ufffd\"");                 /* lone continuation */
    check_str("a\xff" "b", 3, "\"a\\ufffdb\"");          /* bad lead */
    check_str("\xc0\xaf", 2, "\"\\ufffd\\ufffd\"");      /* overlong lead C0 */
    check_str("\xe0\x80\xaf", 3, "\"\\ufffd\\ufffd\\ufffd\""); /* overlong 3 */
    check_str("\xf0\x8f\xbf\xbf", 4,
              "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");       /* overlong 4 */
    check_str("\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\""); /* surrogate */
    check_str("\xf4\x90\x80\x80", 4,
              "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");       /* > U+10FFFF */
    check_str("\xf5\x80", 2, "\"\\ufffd\\ufffd\"");      /* F5 lead */
    check_str("\xe2\x82", 2, "\"\\ufffd\"");             /* truncated at end */
    check_str("\xe2\x82" "x", 3, "\"\\ufffdx\"");        /* truncated mid */
    check_str("\xf0\x9f\x98" "\xc3\xa9", 5, "\"\\ufffd\xc3\xa9\"");
}

static void json_large_string(void **state)
{
    (void)state;
    size_t n = 1u << 20;
    char *big = malloc(n);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + i % 26);
    big[n / 2] = '"';
    json j;
    json_init(&j);
    json_strn(&j, big, n);
    assert_int_equal(j.len, n + 3); /* quotes and one backslash */
    assert_int_equal(j.buf[0], '"');
    assert_int_equal(j.buf[n + 2], '"');
    assert_int_equal(j.buf[n / 2 + 1], '\\');
    assert_int_equal(j.buf[n / 2 + 2], '"');
    assert_memory_equal(j.buf + 1, big, n / 2);
    assert_int_equal(j.buf[j.len], '\0');
    json_free(&j);
    free(big);
}

static void json_take_transfers_ownership(void **state)
{
    (void)state;
    json j;
    size_t len = 99;
    json_init(&j);
    char *empty = json_take(&j, &len);
    assert_string_equal(empty, "");
    assert_int_equal(len, 0);
    free(empty);

    json_arr_begin(&j);
    json_u64(&j, 7);
    json_arr_end(&j);
    char *out = json_take(&j, &len);
    assert_string_equal(out, "[7]");
    assert_int_equal(len, 3);
    /* The writer is reset and independent of the taken buffer. */
    assert_null(j.buf);
    assert_int_equal(j.len, 0);
    json_u64(&j, 8);
    assert_string_equal(j.buf, "8");
    assert_string_equal(out, "[7]");
    free(out);
    json_free(&j);
}

static void json_escape_into_appends(void **state)
{
    (void)state;
    json j;
    json_init(&j);
    json_escape_into(&j, "a\"", 2);
    json_escape_into(&j, "\n", 1);
    assert_string_equal(j.buf, "a\\\"\\n");
    json_free(&j);
}

static void json_times_iso_us_pair_and_null(void **state)
{
    (void)state;
    json j;
    json_init(&j);
    json_obj_begin(&j);
    json_time(&j, "a", 1795000000000100ull);
    json_time_us(&j, "b", 1795000000000100ull);
    json_time_pair(&j, "c", "c_us", 1795000000123456ull);
    json_time_pair(&j, "d", "d_us", 0); /* not yet: null */
    json_obj_end(&j);
    assert_string_equal(j.buf, "{\"a\":\"2026-11-18T11:06:40.000100Z\",\"b\":1795000000000100,"
                               "\"c\":\"2026-11-18T11:06:40.123456Z\",\"c_us\":1795000000123456,"
                               "\"d\":null,\"d_us\":null}");
    json_free(&j);
}

static void check_task(const task_json_view *v, const char *want)
{
    json j;
    json_init(&j);
    task_json_write(&j, v);
    assert_string_equal(j.buf, want);
    json_free(&j);
}

/* A record in memory, byte for byte as introspect.c wrote it before the
 * writer was shared with the journal's (so no client sees a change). */
static void json_task_record_from_memory_unchanged(void **state)
{
    (void)state;
    task_json_view v = {
        .source = TASK_JSON_MEMORY, .id = 42, .name = "send_mail", .state = "retrying",
        .attempts = 2, .max_attempts = 5, .created_us = 1795000000000100ull,
        .started_us = 1795000000123456ull, .error = "smtp: \"refused\"",
        .request_id = "5f2c9a3e00000001", .delivered = -1, .mode = "concurrent",
        .generation = 3, .payload_len = 17};
    check_task(&v,
        "{\"id\":42,\"name\":\"send_mail\",\"state\":\"retrying\",\"attempts\":2,\"max_attemp"
        "ts\":5,\"created_at\":\"2026-11-18T11:06:40.000100Z\",\"started_at\":\"2026-11-18T11"
        ":06:40.123456Z\",\"finished_at\":null,\"created_at_us\":1795000000000100,\"started_a"
        "t_us\":1795000000123456,\"finished_at_us\":null,\"error\":\"smtp: \\\"refused\\\"\","
        "\"request_id\":\"5f2c9a3e00000001\",\"delivered\":null,\"mode\":\"concurrent\",\"gen"
        "eration\":3,\"payload_bytes\":17,\"adhoc\":false,\"result\":null}");
    task_json_view r = {
        .source = TASK_JSON_MEMORY, .id = 7, .name = "fn", .state = "succeeded",
        .attempts = 1, .max_attempts = 1, .created_us = 1795000000000000ull,
        .started_us = 1795000000000001ull, .finished_us = 1795000001000000ull,
        .delivered = 1, .mode = "sequential", .generation = 1, .adhoc = 1, .has_result = 1,
        .result_status = 201, .result_type = "application/json", .result = "{\"a\":1}",
        .result_len = 7};
    check_task(&r,
        "{\"id\":7,\"name\":\"fn\",\"state\":\"succeeded\",\"attempts\":1,\"max_attempts\":1,"
        "\"created_at\":\"2026-11-18T11:06:40.000000Z\",\"started_at\":\"2026-11-18T11:06:40."
        "000001Z\",\"finished_at\":\"2026-11-18T11:06:41.000000Z\",\"created_at_us\":17950000"
        "00000000,\"started_at_us\":1795000000000001,\"finished_at_us\":1795000001000000,\"er"
        "ror\":null,\"request_id\":null,\"delivered\":true,\"mode\":\"sequential\",\"generati"
        "on\":1,\"payload_bytes\":0,\"adhoc\":true,\"result\":{\"status\":201,\"content_type\""
        ":\"application/json\",\"length\":7,\"body\":\"{\\\"a\\\":1}\"}}");
    r.delivered = 0;
    r.result_type = NULL;
    r.result = NULL;
    r.result_len = 0;
    check_task(&r,
        "{\"id\":7,\"name\":\"fn\",\"state\":\"succeeded\",\"attempts\":1,\"max_attempts\":1,"
        "\"created_at\":\"2026-11-18T11:06:40.000000Z\",\"started_at\":\"2026-11-18T11:06:40."
        "000001Z\",\"finished_at\":\"2026-11-18T11:06:41.000000Z\",\"created_at_us\":17950000"
        "00000000,\"started_at_us\":1795000000000001,\"finished_at_us\":1795000001000000,\"er"
        "ror\":null,\"request_id\":null,\"delivered\":false,\"mode\":\"sequential\",\"generat"
        "ion\":1,\"payload_bytes\":0,\"adhoc\":true,\"result\":{\"status\":201,\"content_type"
        "\":null,\"length\":0,\"body\":\"\"}}");
}

/* A journal row: the keys and values it always had, in the order of a
 * record in memory, with not_before after the other times and "source"
 * last; no delivery, mode, generation or result. */
static void json_task_record_from_journal(void **state)
{
    (void)state;
    task_json_view v = {
        .source = TASK_JSON_JOURNAL, .id = 9, .name = "export", .state = "dead",
        .attempts = 3, .max_attempts = 3, .created_us = 1795000000000100ull,
        .started_us = 1795000000500000ull, .finished_us = 1795000000900000ull,
        .not_before_us = 1795000002000000ull, .error = "boom", .request_id = "abc",
        .payload_len = 3, .delivered = 1, .has_result = 1 /* not written for a row */};
    check_task(&v,
        "{\"id\":9,\"name\":\"export\",\"state\":\"dead\",\"attempts\":3,\"max_attempts\":3,\""
        "created_at\":\"2026-11-18T11:06:40.000100Z\",\"started_at\":\"2026-11-18T11:06:40.50"
        "0000Z\",\"finished_at\":\"2026-11-18T11:06:40.900000Z\",\"not_before\":\"2026-11-18T"
        "11:06:42.000000Z\",\"created_at_us\":1795000000000100,\"started_at_us\":179500000050"
        "0000,\"finished_at_us\":1795000000900000,\"not_before_us\":1795000002000000,\"error\""
        ":\"boom\",\"request_id\":\"abc\",\"payload_bytes\":3,\"adhoc\":false,\"source\":\"jo"
        "urnal\"}");
    task_json_view q = {.source = TASK_JSON_JOURNAL, .id = 10, .name = "q", .state = "queued",
                        .max_attempts = 1, .created_us = 1795000000000100ull};
    check_task(&q,
        "{\"id\":10,\"name\":\"q\",\"state\":\"queued\",\"attempts\":0,\"max_attempts\":1,\"c"
        "reated_at\":\"2026-11-18T11:06:40.000100Z\",\"started_at\":null,\"finished_at\":null"
        ",\"not_before\":null,\"created_at_us\":1795000000000100,\"started_at_us\":null,\"fin"
        "ished_at_us\":null,\"not_before_us\":null,\"error\":null,\"request_id\":null,\"paylo"
        "ad_bytes\":0,\"adhoc\":false,\"source\":\"journal\"}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(json_nested_commas),
        cmocka_unit_test(json_numbers),
        cmocka_unit_test(json_u64_every_length),
        cmocka_unit_test(json_double_round_trips),
        cmocka_unit_test(json_escapes),
        cmocka_unit_test(json_key_escaped),
        cmocka_unit_test(json_valid_utf8_passes),
        cmocka_unit_test(json_invalid_utf8_replaced),
        cmocka_unit_test(json_large_string),
        cmocka_unit_test(json_take_transfers_ownership),
        cmocka_unit_test(json_escape_into_appends),
        cmocka_unit_test(json_times_iso_us_pair_and_null),
        cmocka_unit_test(json_task_record_from_memory_unchanged),
        cmocka_unit_test(json_task_record_from_journal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
