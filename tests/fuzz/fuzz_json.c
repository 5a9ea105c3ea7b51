/*
 * fuzz_json.c - libFuzzer target: the JSON writer as the task records
 * use it (names, error messages and request ids holding quotes,
 * backslashes, control characters and invalid UTF-8).
 *
 * The input is split at its first NUL into a task name and an error
 * message; a record-shaped object is written with them, and a strict
 * checker parses the output: it must be exactly one valid JSON value, in
 * valid UTF-8, without raw control characters, and every string must
 * decode back to its input when the input was valid UTF-8 (otherwise to
 * valid UTF-8 of its own).
 *
 * Then the same two strings go through the real record: a task whose
 * request id is the first and which fails with the second as its error
 * (the tasks subsystem runs with one worker, started on the first
 * input), and introspect_task_json's output must pass the same checks, with
 * "request_id" and "error" decoding back to what went in (as far as a C
 * string carries it: up to a NUL, and the error cut to its buffer).
 */
#include "introspect.h"
#include "json.h"
#include "log.h"
#include "tasks.h"
#include "util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

/* ---- a strict UTF-8 check -------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s (of n bytes), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

static int utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq(s + i, n - i);
        if (l == 0)
            return 0;
        i += l;
    }
    return 1;
}

/* ---- a strict JSON parser ------------------------------------------------------ */

typedef struct parser {
    const unsigned char *s;
    size_t n, i;
    unsigned char *str; /* last decoded string */
    size_t str_len;
} parser;

static void ws(parser *p)
{
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' ||
                           p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}

static int hex4(parser *p, unsigned *out)
{
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        if (p->i >= p->n)
            return 0;
        unsigned c = p->s[p->i++], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return 0;
        v = v * 16 + d;
    }
    *out = v;
    return 1;
}

static void put_cp(parser *p, unsigned cp)
{
    unsigned char *o = p->str + p->str_len;
    if (cp < 0x80)
        o[0] = (unsigned char)cp, p->str_len += 1;
    else if (cp < 0x800)
        o[0] = (unsigned char)(0xC0 | cp >> 6), o[1] = (unsigned char)(0x80 | (cp & 0x3F)), p->str_len += 2;
    else if (cp < 0x10000)
        o[0] = (unsigned char)(0xE0 | cp >> 12), o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)),
        o[2] = (unsigned char)(0x80 | (cp & 0x3F)), p->str_len += 3;
    else
        o[0] = (unsigned char)(0xF0 | cp >> 18), o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F)),
        o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)), o[3] = (unsigned char)(0x80 | (cp & 0x3F)),
        p->str_len += 4;
}

static int string(parser *p)
{
    if (p->i >= p->n || p->s[p->i] != '"')
        return 0;
    p->i++;
    free(p->str);
    p->str = malloc(p->n * 2 + 4); /* decoded is never longer than 2x */
    p->str_len = 0;
    while (p->i < p->n) {
        unsigned char c = p->s[p->i];
        if (c == '"') {
            p->i++;
            return 1;
        }
        if (c < 0x20)
            return 0; /* raw control character */
        if (c != '\\') {
            size_t l = utf8_seq(p->s + p->i, p->n - p->i);
            if (l == 0)
                return 0;
            memcpy(p->str + p->str_len, p->s + p->i, l);
            p->str_len += l;
            p->i += l;
            continue;
        }
        if (++p->i >= p->n)
            return 0;
        c = p->s[p->i++];
        switch (c) {
        case '"': case '\\': case '/': p->str[p->str_len++] = c; break;
        case 'b': p->str[p->str_len++] = '\b'; break;
        case 'f': p->str[p->str_len++] = '\f'; break;
        case 'n': p->str[p->str_len++] = '\n'; break;
        case 'r': p->str[p->str_len++] = '\r'; break;
        case 't': p->str[p->str_len++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (!hex4(p, &cp))
                return 0;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return 0; /* lone low surrogate */
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (p->i + 2 > p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u')
                    return 0;
                p->i += 2;
                if (!hex4(p, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    return 0;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_cp(p, cp);
            break;
        }
        default:
            return 0;
        }
    }
    return 0;
}

static int value(parser *p, int depth);

static int number(parser *p)
{
    size_t start = p->i;
    if (p->i < p->n && p->s[p->i] == '-')
        p->i++;
    if (p->i >= p->n)
        return 0;
    if (p->s[p->i] == '0')
        p->i++;
    else if (p->s[p->i] >= '1' && p->s[p->i] <= '9')
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
            p->i++;
    else
        return 0;
    return p->i > start;
}

static int literal(parser *p, const char *w)
{
    size_t l = strlen(w);
    if (p->n - p->i < l || memcmp(p->s + p->i, w, l) != 0)
        return 0;
    p->i += l;
    return 1;
}

static int value(parser *p, int depth)
{
    ws(p);
    if (p->i >= p->n || depth > 64)
        return 0;
    unsigned char c = p->s[p->i];
    if (c == '"')
        return string(p);
    if (c == 't')
        return literal(p, "true");
    if (c == 'f')
        return literal(p, "false");
    if (c == 'n')
        return literal(p, "null");
    if (c == '{' || c == '[') {
        unsigned char close = c == '{' ? '}' : ']';
        p->i++;
        ws(p);
        if (p->i < p->n && p->s[p->i] == close) {
            p->i++;
            return 1;
        }
        for (;;) {
            if (c == '{') {
                ws(p);
                if (!string(p))
                    return 0;
                ws(p);
                if (p->i >= p->n || p->s[p->i++] != ':')
                    return 0;
            }
            if (!value(p, depth + 1))
                return 0;
            ws(p);
            if (p->i >= p->n)
                return 0;
            if (p->s[p->i] == ',') {
                p->i++;
                continue;
            }
            if (p->s[p->i] == close) {
                p->i++;
                return 1;
            }
            return 0;
        }
    }
    return number(p);
}

/* ---- the target ---------------------------------------------------------------- */

/* doc (of len bytes) must be exactly one JSON value, in valid UTF-8;
 * returns its parser, for walking it again. */
static parser parse_whole(const char *doc, size_t len)
{
    check(strlen(doc) == len);
    check(utf8_valid((const unsigned char *)doc, len));
    parser p = {.s = (const unsigned char *)doc, .n = len};
    check(value(&p, 0));
    ws(&p);
    check(p.i == p.n);
    return p;
}

/* Parse doc, which must be one object whose string values, in order, are
 * the given inputs. */
static void check_doc(const char *doc, size_t len, const char *const *in,
                      const size_t *in_len, size_t nin)
{
    parser p = parse_whole(doc, len);

    /* Walk the strings again: every value string is decoded and compared. */
    p.i = 0;
    size_t k = 0;
    int expect_value = 0;
    while (p.i < p.n) {
        unsigned char c = p.s[p.i];
        if (c == '"') {
            check(string(&p));
            if (expect_value && k < nin) {
                if (utf8_valid((const unsigned char *)in[k], in_len[k])) {
                    check(p.str_len == in_len[k]);
                    check(memcmp(p.str, in[k], in_len[k]) == 0);
                } else {
                    check(utf8_valid(p.str, p.str_len));
                }
                k++;
            }
            expect_value = 0;
            continue;
        }
        expect_value = c == ':';
        p.i++;
    }
    check(k == nin);
    free(p.str);
}

/* The string value of key in the top-level object doc (parsed by p,
 * which holds it in p->str / p->str_len); 0 if absent or not a string. */
static int string_field(parser *p, const char *key)
{
    size_t klen = strlen(key);
    p->i = 0;
    ws(p);
    check(p->i < p->n && p->s[p->i] == '{');
    p->i++;
    for (;;) {
        ws(p);
        check(string(p));
        int match = p->str_len == klen && memcmp(p->str, key, klen) == 0;
        ws(p);
        check(p->i < p->n && p->s[p->i++] == ':');
        ws(p);
        if (match)
            return p->i < p->n && p->s[p->i] == '"' && string(p);
        check(value(p, 1));
        ws(p);
        check(p->i < p->n);
        if (p->s[p->i++] == '}')
            return 0;
    }
}

/* The decoded field must be the input as a C string carries it (up to a
 * NUL, at most max bytes); cut inputs and invalid UTF-8 only need to give
 * valid UTF-8. */
static void check_field(parser *p, const char *key, const char *in, size_t max)
{
    check(string_field(p, key));
    size_t n = strlen(in);
    if (n <= max && utf8_valid((const unsigned char *)in, n))
        check(p->str_len == n && memcmp(p->str, in, n) == 0);
    else
        check(utf8_valid(p->str, p->str_len));
}

/* ---- the real record ------------------------------------------------------------ */

#define ERR_CAP 511 /* the engine keeps an error of up to TASKS_ERR_MAX - 1 bytes */

static tasks_engine *record_engine;
static const tasks_owner record_owner = {.number = 1, .label = "fuzz"};

static int fail_with(bgs_task_ctx *ctx, void *arg)
{
    tasks_ctx_error(ctx, "%s", (const char *)arg);
    return 1;
}

static void check_record(const char *request_id, const char *err)
{
    if (record_engine == NULL) {
        log_config lc = {.quiet = 1}; /* only the failure line of each input */
        log_init(&lc);
        tasks_config cfg = {.workers = 1, .queue_cap = 64, .keep = 8, .linger_us = 0};
        record_engine = tasks_new(&cfg);
        check(record_engine != NULL);
    }
    uint64_t id;
    tasks_group *g = tasks_group_new(record_engine, &record_owner, request_id, BGS_CONCURRENT);
    check(tasks_group_add_fn(g, fail_with, (void *)err, NULL, &id) == 0);
    tasks_group_submit(g, 1);

    /* Poll until the record is final (the worker runs it at once). */
    char *doc = NULL;
    size_t len = 0;
    uint64_t deadline = util_now_us() + 10u * 1000000u;
    for (;;) {
        json j;
        json_init(&j);
        check(introspect_task_json(record_engine, id, &j) == 0);
        doc = json_take(&j, &len);
        if (strstr(doc, "\"state\":\"failed\"") != NULL)
            break;
        free(doc);
        check(util_now_us() < deadline);
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    parser p = parse_whole(doc, len);
    check_field(&p, "request_id", request_id, SIZE_MAX);
    check_field(&p, "error", err, ERR_CAP);
    free(p.str);
    free(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    const char *nul = memchr(s, '\0', size);
    size_t name_len = nul ? (size_t)(nul - s) : size;
    const char *err = nul ? nul + 1 : s + size;
    size_t err_len = nul ? size - name_len - 1 : 0;

    char *name = malloc(name_len + 1);
    memcpy(name, s, name_len);
    name[name_len] = '\0';

    json j;
    json_init(&j);
    json_obj_begin(&j);
    json_key(&j, "id");
    json_u64(&j, size);
    json_key(&j, "name");
    json_str(&j, name);
    json_key(&j, "state");
    json_str(&j, "failed");
    json_key(&j, "error");
    json_strn(&j, err, err_len);
    json_key(&j, "request_id");
    json_null(&j);
    json_key(&j, "nested");
    json_arr_begin(&j);
    json_obj_begin(&j);
    json_key(&j, name);
    json_i64(&j, -(int64_t)size);
    json_obj_end(&j);
    json_arr_end(&j);
    json_obj_end(&j);

    size_t len;
    char *doc = json_take(&j, &len);
    const char *in[] = {name, "failed", err};
    size_t in_len[] = {name_len, 6, err_len};
    check_doc(doc, len, in, in_len, 3);
    free(doc);

    char *errz = malloc(err_len + 1);
    memcpy(errz, err, err_len);
    errz[err_len] = '\0';
    check_record(name, errz); /* the task has finished with errz: free it */
    free(errz);
    free(name);
    json_free(&j);
    return 0;
}
