/*
 * orders - a task whose payload comes from the request body.
 *
 *   POST /orders   body: a JSON object with a string "email", e.g.
 *                  {"item": "book", "email": "a@b.example"}
 *                  201 {"message":"Order created"}; attaches the task
 *                  send_confirmation with the email as its payload, which
 *                  sleeps one second, then logs
 *                  "confirmation sent to a@b.example".
 *                  400 with a message when the body is not a JSON object
 *                  or has no string "email" at its top level.
 *
 * Demonstrates that task payloads are copied at attach time: the request
 * body is gone when the task runs.  The JSON scanner below is small but
 * careful: it walks the whole object (nested values, escapes), looks at
 * top-level keys only, and decodes the email's escapes.
 */
#include <bgserve.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#define EMAIL_MAX 320 /* RFC 3696: 64 + 1 + 255, with room to spare */

/* ---- a small JSON scanner ------------------------------------------------ */

typedef struct scan {
    const char *p, *end;
} scan;

static void skip_ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_hex4(scan *s, unsigned *out)
{
    unsigned v = 0;
    if (s->end - s->p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s->p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + (unsigned)h;
    }
    s->p += 4;
    *out = v;
    return 0;
}

/* Append code point cp as UTF-8 to out (cap bytes, NUL kept); -1 when it
 * does not fit. */
static int put_utf8(char *out, size_t cap, size_t *n, unsigned cp)
{
    char buf[4];
    size_t k;
    if (cp < 0x80) {
        buf[0] = (char)cp;
        k = 1;
    } else if (cp < 0x800) {
        buf[0] = (char)(0xC0 | (cp >> 6));
        buf[1] = (char)(0x80 | (cp & 0x3F));
        k = 2;
    } else if (cp < 0x10000) {
        buf[0] = (char)(0xE0 | (cp >> 12));
        buf[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        buf[2] = (char)(0x80 | (cp & 0x3F));
        k = 3;
    } else {
        buf[0] = (char)(0xF0 | (cp >> 18));
        buf[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        buf[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        buf[3] = (char)(0x80 | (cp & 0x3F));
        k = 4;
    }
    if (out == NULL) {
        *n += k;
        return 0;
    }
    if (*n + k + 1 > cap)
        return -1;
    memcpy(out + *n, buf, k);
    *n += k;
    out[*n] = '\0';
    return 0;
}

/*
 * Scan a JSON string at s->p (which is at the opening quote).  With out,
 * decode it there (cap bytes, NUL-terminated); with out NULL, only skip
 * it.  Returns 0, or -1 when the string is malformed, holds a NUL, or
 * does not fit.
 */
static int scan_string(scan *s, char *out, size_t cap, size_t *len)
{
    size_t n = 0;
    if (s->p >= s->end || *s->p != '"')
        return -1;
    s->p++;
    if (out && cap)
        out[0] = '\0';
    while (s->p < s->end) {
        unsigned char c = (unsigned char)*s->p++;
        unsigned cp;
        if (c == '"') {
            if (len)
                *len = n;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            /* UTF-8 bytes are copied one by one */
            if (out == NULL) {
                n++;
                continue;
            }
            if (n + 2 > cap)
                return -1;
            out[n++] = (char)c;
            out[n] = '\0';
            continue;
        }
        if (s->p >= s->end)
            return -1;
        c = (unsigned char)*s->p++;
        switch (c) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (read_hex4(s, &cp) != 0)
                return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u')
                    return -1;
                s->p += 2;
                if (read_hex4(s, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return -1;
            }
            if (cp == 0)
                return -1; /* a NUL would cut the payload short */
            break;
        default:
            return -1;
        }
        if (put_utf8(out, cap, &n, cp) != 0)
            return -1;
    }
    return -1;
}

/* Skip one JSON value of any kind (nesting up to 64 levels). */
static int skip_value(scan *s, int depth)
{
    skip_ws(s);
    if (s->p >= s->end || depth > 64)
        return -1;
    char c = *s->p;
    if (c == '"')
        return scan_string(s, NULL, 0, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        s->p++;
        skip_ws(s);
        if (s->p < s->end && *s->p == close) {
            s->p++;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                skip_ws(s);
                if (scan_string(s, NULL, 0, NULL) != 0)
                    return -1;
                skip_ws(s);
                if (s->p >= s->end || *s->p != ':')
                    return -1;
                s->p++;
            }
            if (skip_value(s, depth + 1) != 0)
                return -1;
            skip_ws(s);
            if (s->p >= s->end)
                return -1;
            if (*s->p == ',') {
                s->p++;
                continue;
            }
            if (*s->p == close) {
                s->p++;
                return 0;
            }
            return -1;
        }
    }
    static const char *const literals[] = {"true", "false", "null"};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(literals[i]);
        if ((size_t)(s->end - s->p) >= n && memcmp(s->p, literals[i], n) == 0) {
            s->p += n;
            return 0;
        }
    }
    /* a number: a run of the characters numbers are made of */
    const char *start = s->p;
    while (s->p < s->end && *s->p != '\0' && strchr("+-.0123456789eE", *s->p))
        s->p++;
    return s->p > start ? 0 : -1;
}

enum { FOUND = 0, NOT_OBJECT = -1, NO_EMAIL = -2 };

/* Find the string value of the top-level key "email" in the JSON object
 * body[0..len).  The whole document must be one well-formed object. */
static int find_email(const char *body, size_t len, char *email, size_t cap)
{
    scan s = {body, body + len};
    int found = 0;

    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{')
        return NOT_OBJECT;
    s.p++;
    skip_ws(&s);
    if (s.p < s.end && *s.p == '}') {
        s.p++;
    } else {
        for (;;) {
            char key[16];
            size_t klen = 0;
            skip_ws(&s);
            scan probe = s;
            /* Keys longer than key[] are skipped, never truncated into a
             * false match. */
            int is_email = scan_string(&probe, key, sizeof key, &klen) == 0 &&
                           klen == 5 && memcmp(key, "email", 5) == 0;
            if (scan_string(&s, NULL, 0, NULL) != 0)
                return NOT_OBJECT;
            skip_ws(&s);
            if (s.p >= s.end || *s.p != ':')
                return NOT_OBJECT;
            s.p++;
            skip_ws(&s);
            if (is_email && !found && s.p < s.end && *s.p == '"') {
                scan v = s;
                size_t vlen = 0;
                if (scan_string(&v, email, cap, &vlen) == 0 && vlen > 0)
                    found = 1;
            }
            if (skip_value(&s, 1) != 0)
                return NOT_OBJECT;
            skip_ws(&s);
            if (s.p < s.end && *s.p == ',') {
                s.p++;
                continue;
            }
            if (s.p < s.end && *s.p == '}') {
                s.p++;
                break;
            }
            return NOT_OBJECT;
        }
    }
    skip_ws(&s);
    if (s.p != s.end)
        return NOT_OBJECT;
    return found ? FOUND : NO_EMAIL;
}

/* ---- the app ---------------------------------------------------------------- */

static int send_confirmation(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    /* Stand-in for talking to a mail server: about one second. */
    for (int i = 0; i < 100; i++) {
        if (bgs_task_cancelled(ctx)) {
            bgs_task_error(ctx, "cancelled before the confirmation was sent");
            return -1;
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    bgs_task_log(ctx, "confirmation sent to %.*s", (int)len, (const char *)payload);
    return 0;
}

static int create_order(bgs_req *req, bgs_res *res)
{
    char email[EMAIL_MAX + 1];
    size_t len = 0;
    const char *body = bgs_req_body(req, &len);

    int found = body ? find_email(body, len, email, sizeof email) : NOT_OBJECT;
    if (found == NOT_OBJECT)
        return bgs_res_text(res, 400, "Bad Request: the body must be a JSON object, "
                                      "e.g. {\"email\": \"you@example.com\"}\n");
    if (found == NO_EMAIL)
        return bgs_res_text(res, 400, "Bad Request: \"email\" is missing, empty, not a "
                                      "string, or longer than 320 bytes\n");

    int rc = bgs_res_task(res, "send_confirmation", email, strlen(email), NULL);
    if (rc != 0)
        return bgs_res_text(res, 503, "Service Unavailable: cannot queue the confirmation, "
                                      "try again later\n");
    rc = bgs_res_status(res, 201);
    if (rc == 0)
        rc = bgs_res_content_type(res, "application/json");
    if (rc == 0)
        rc = bgs_res_printf(res, "{\"message\":\"Order created\"}");
    return rc;
}

static const bgs_route routes[] = {
    BGS_POST("/orders", create_order),
};

static const bgs_task_def tasks[] = {
    {.name = "send_confirmation", .fn = send_confirmation},
};

BGS_PLUGIN(.name = "orders", .version = "1.0.0",
           .routes = routes, .route_count = BGS_COUNT(routes),
           .tasks = tasks, .task_count = BGS_COUNT(tasks))
