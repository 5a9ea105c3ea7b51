/*
 * test_json.c - the JSON writer: commas, escapes, invalid UTF-8, numbers,
 * large strings and buffer ownership.
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(json_nested_commas),
        cmocka_unit_test(json_numbers),
        cmocka_unit_test(json_double_round_trips),
        cmocka_unit_test(json_escapes),
        cmocka_unit_test(json_key_escaped),
        cmocka_unit_test(json_valid_utf8_passes),
        cmocka_unit_test(json_invalid_utf8_replaced),
        cmocka_unit_test(json_large_string),
        cmocka_unit_test(json_take_transfers_ownership),
        cmocka_unit_test(json_escape_into_appends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
