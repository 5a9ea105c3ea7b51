/*
 * json.h - a small JSON writer into a growable buffer.
 *
 * Strings are escaped: quotes, backslashes and control characters become
 * escapes, and bytes that are not valid UTF-8 become U+FFFD, so the
 * output is always valid JSON.  Commas are inserted automatically.  A
 * writer belongs to one thread.
 */
#ifndef BGSERVE_JSON_H
#define BGSERVE_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define JSON_MAX_DEPTH 32

typedef struct json {
    char *buf;       /* NUL-terminated; owned by the writer */
    size_t len, cap;
    int depth;
    unsigned char first[JSON_MAX_DEPTH]; /* 1: no element yet at depth */
    int after_key;   /* the next value follows a key */
} json;

void json_init(json *j);
void json_free(json *j);
/* Hand the buffer to the caller (free() it); the writer is reset. */
char *json_take(json *j, size_t *len);
/* Write the text and a newline to out (a command's JSON output); the
 * writer is reset. */
void json_print_line(json *j, FILE *out);

void json_obj_begin(json *j);
void json_obj_end(json *j);
void json_arr_begin(json *j);
void json_arr_end(json *j);
void json_key(json *j, const char *key);
void json_str(json *j, const char *s);            /* NULL writes null */
void json_strn(json *j, const char *s, size_t n);
void json_u64(json *j, uint64_t v);
void json_i64(json *j, int64_t v);
void json_double(json *j, double v);
void json_bool(json *j, int v);
void json_null(json *j);

/* Times (wall clock, µs since the epoch; 0 means "not yet" and writes
 * null), each under its key: json_time as ISO 8601 UTC with microseconds
 * ("2026-11-23T19:00:00.000100Z"), json_time_us as the number, and
 * json_time_pair both, as key and us_key, one after the other. */
void json_time(json *j, const char *key, uint64_t wall_us);
void json_time_us(json *j, const char *key, uint64_t wall_us);
void json_time_pair(json *j, const char *key, const char *us_key, uint64_t wall_us);

/* Append the escaped form of s[0..n) without the surrounding quotes (for
 * callers that assemble a string value piece by piece). */
void json_escape_into(json *j, const char *s, size_t n);

#endif
