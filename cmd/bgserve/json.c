/*
 * json.c - the JSON writer behind json.h: a growable NUL-terminated
 * buffer, automatic commas, and string escaping that always yields valid
 * JSON (quotes, backslashes and control characters escaped; bytes that are
 * not well-formed UTF-8 replaced by \ufffd, one per maximal ill-formed
 * subsequence as Unicode recommends; valid multi-byte UTF-8 copied as is).
 *
 * No shared state: a writer belongs to the one thread using it, and
 * json_escape_into is pure apart from the writer it appends to.
 */
#include "json.h"

#include "util.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Buffer                                                              */
/* ------------------------------------------------------------------ */

/* Make room for extra more bytes plus the terminating NUL. */
static void reserve(json *j, size_t extra)
{
    util_buf_reserve(&j->buf, &j->cap, j->len, extra, 64);
}

static void put(json *j, const char *s, size_t n)
{
    util_buf_append(&j->buf, &j->cap, &j->len, s, n, 64);
}

static void puts_(json *j, const char *s)
{
    put(j, s, strlen(s));
}

/* The separator before a value: nothing after a key, else a comma unless
 * this is the first element at the current depth. */
static void before_value(json *j)
{
    if (j->after_key) {
        j->after_key = 0;
        return;
    }
    if (!j->first[j->depth])
        put(j, ",", 1);
    j->first[j->depth] = 0;
}

/* ------------------------------------------------------------------ */
/* Escaping                                                            */
/* ------------------------------------------------------------------ */

/* Length of the well-formed UTF-8 sequence at s (at most n bytes), or,
 * when ill-formed, minus the length of its maximal ill-formed prefix
 * (always at least 1 byte). */
static long utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of byte 2 */

    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else
        return -1; /* continuation byte, C0, C1 or F5..FF */

    for (size_t i = 1; i < len; i++) {
        if (i >= n)
            return -(long)i;
        unsigned char b = s[i];
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h)
            return -(long)i;
    }
    return (long)len;
}

void json_escape_into(json *j, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;

    /* Worst case: every byte becomes a six-character escape. */
    if (n > (SIZE_MAX / 2) / 6) {
        fprintf(stderr, "bgserve: JSON string too large\n");
        abort();
    }
    reserve(j, n * 6);
    char *o = j->buf + j->len;
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c >= 0x80) {
            long r = utf8_seq(p + i, n - i);
            if (r > 0) {
                memcpy(o, p + i, (size_t)r);
                o += r;
                i += (size_t)r;
            } else {
                memcpy(o, "\\ufffd", 6);
                o += 6;
                i += (size_t)-r;
            }
            continue;
        }
        i++;
        switch (c) {
        case '"': *o++ = '\\'; *o++ = '"'; break;
        case '\\': *o++ = '\\'; *o++ = '\\'; break;
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case '\r': *o++ = '\\'; *o++ = 'r'; break;
        case '\t': *o++ = '\\'; *o++ = 't'; break;
        case '\b': *o++ = '\\'; *o++ = 'b'; break;
        case '\f': *o++ = '\\'; *o++ = 'f'; break;
        default:
            if (c < 0x20) {
                memcpy(o, "\\u00", 4);
                o[4] = hex[c >> 4];
                o[5] = hex[c & 0xF];
                o += 6;
            } else
                *o++ = (char)c;
        }
    }
    j->len = (size_t)(o - j->buf);
    j->buf[j->len] = '\0';
}

static void quoted(json *j, const char *s, size_t n)
{
    put(j, "\"", 1);
    json_escape_into(j, s, n);
    put(j, "\"", 1);
}

/* ------------------------------------------------------------------ */
/* Public API                                                          */
/* ------------------------------------------------------------------ */

void json_init(json *j)
{
    memset(j, 0, sizeof(*j));
    j->first[0] = 1;
}

void json_free(json *j)
{
    free(j->buf);
    json_init(j);
}

char *json_take(json *j, size_t *len)
{
    char *out = j->buf ? j->buf : xstrdup("");
    if (len)
        *len = j->len;
    json_init(j);
    return out;
}

void json_print_line(json *j, FILE *out)
{
    size_t len;
    char *text = json_take(j, &len);
    fwrite(text, 1, len, out);
    fputc('\n', out);
    free(text);
}

static void open_(json *j, char c)
{
    before_value(j);
    if (j->depth + 1 >= JSON_MAX_DEPTH) {
        fprintf(stderr, "bgserve: JSON nested deeper than %d levels\n",
                JSON_MAX_DEPTH - 1);
        abort();
    }
    put(j, &c, 1);
    j->depth++;
    j->first[j->depth] = 1;
}

static void close_(json *j, char c)
{
    if (j->depth > 0)
        j->depth--;
    j->after_key = 0;
    put(j, &c, 1);
}

void json_obj_begin(json *j) { open_(j, '{'); }
void json_obj_end(json *j) { close_(j, '}'); }
void json_arr_begin(json *j) { open_(j, '['); }
void json_arr_end(json *j) { close_(j, ']'); }

void json_key(json *j, const char *key)
{
    j->after_key = 0;
    before_value(j);
    quoted(j, key ? key : "", key ? strlen(key) : 0);
    put(j, ":", 1);
    j->after_key = 1;
}

void json_str(json *j, const char *s)
{
    if (s == NULL) {
        json_null(j);
        return;
    }
    json_strn(j, s, strlen(s));
}

void json_strn(json *j, const char *s, size_t n)
{
    if (s == NULL) {
        json_null(j);
        return;
    }
    before_value(j);
    quoted(j, s, n);
}

void json_u64(json *j, uint64_t v)
{
    char tmp[UTIL_U64_DEC_MAX];
    util_u64_dec(tmp, v);
    before_value(j);
    puts_(j, tmp);
}

void json_i64(json *j, int64_t v)
{
    char tmp[32];
    snprintf(tmp, sizeof(tmp), "%" PRId64, v);
    before_value(j);
    puts_(j, tmp);
}

void json_double(json *j, double v)
{
    char tmp[40];
    if (!isfinite(v)) {
        json_null(j);
        return;
    }
    /* The shortest of %.15g/%.16g/%.17g that reads back as v. */
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    before_value(j);
    puts_(j, tmp);
}

void json_bool(json *j, int v)
{
    before_value(j);
    puts_(j, v ? "true" : "false");
}

void json_null(json *j)
{
    before_value(j);
    puts_(j, "null");
}

/* ------------------------------------------------------------------ */
/* Times                                                               */
/* ------------------------------------------------------------------ */

void json_time(json *j, const char *key, uint64_t wall_us)
{
    char buf[96];
    json_key(j, key);
    if (wall_us == 0) {
        json_null(j);
        return;
    }
    util_iso_time(buf, sizeof buf, wall_us, 6);
    json_str(j, buf);
}

void json_time_us(json *j, const char *key, uint64_t wall_us)
{
    json_key(j, key);
    if (wall_us == 0)
        json_null(j);
    else
        json_u64(j, wall_us);
}

void json_time_pair(json *j, const char *key, const char *us_key, uint64_t wall_us)
{
    json_time(j, key, wall_us);
    json_time_us(j, us_key, wall_us);
}
