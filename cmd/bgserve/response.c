/*
 * response.c - the owner of struct bgs_res (response.h): building the
 * answer (status, headers, body, each held once) and handing it to the
 * request's carrier.
 *
 * No lock: a response is touched by one thread at a time, its request's
 * (request.h says which).  Nothing here knows libmicrohttpd or the
 * plugin: the plugin's calls arrive through hostapi.c, which checks
 * handles and reports misuse before calling in.
 */
#include "response.h"

#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The answer's Content-Type when the handler set none. */
#define RES_DEFAULT_TYPE "text/plain; charset=utf-8"

/* ---- the response --------------------------------------------------------- */

/* A header's name and value share one allocation (the name's). */
static void free_headers(struct bgs_res *res)
{
    for (size_t i = 0; i < res->nheaders; i++)
        free(res->headers[i].name);
    if (res->headers != res->hdr_inline)
        free(res->headers);
    res->headers = NULL;
    res->nheaders = res->cap_headers = 0;
}

void response_free(struct bgs_res *res)
{
    free_headers(res);
    free(res->content_type);
    free(res->body);
}

/* RFC 9110 tchar: ALPHA, DIGIT and !#$%&'*+-.^_`|~, as a bitmap over
 * ASCII (a strchr per character showed in the per-request profile). */
static int is_tchar(unsigned char c)
{
    static const uint64_t lo = UINT64_C(0x3ff6cfa00000000); /* 0-63 */
    static const uint64_t hi = UINT64_C(0x57ffffffc7fffffe); /* 64-127 */
    return c < 64 ? (int)((lo >> c) & 1u) : c < 128 ? (int)((hi >> (c - 64)) & 1u) : 0;
}

int response_check_header(const char *name, const char *value)
{
    if (name == NULL || value == NULL || *name == '\0')
        return BGS_EHEADER;
    for (const char *p = name; *p; p++)
        if (!is_tchar((unsigned char)*p))
            return BGS_EHEADER;
    for (const char *p = value; *p; p++)
        if (*p == '\r' || *p == '\n')
            return BGS_EHEADER;
    return 0;
}

void response_add_header(struct bgs_res *res, const char *name, const char *value)
{
    if (res->headers == NULL) {
        res->headers = res->hdr_inline;
        res->cap_headers = RESPONSE_INLINE_HEADERS;
    } else if (res->nheaders == res->cap_headers) {
        response_hdr *more = xmalloc(2 * res->cap_headers * sizeof *more);
        memcpy(more, res->headers, res->nheaders * sizeof *more);
        if (res->headers != res->hdr_inline)
            free(res->headers);
        res->headers = more;
        res->cap_headers *= 2;
    }
    size_t nl = strlen(name) + 1, vl = strlen(value) + 1;
    char *both = xmalloc(nl + vl);
    memcpy(both, name, nl);
    memcpy(both + nl, value, vl);
    res->headers[res->nheaders].name = both;
    res->headers[res->nheaders].value = both + nl;
    res->nheaders++;
}

int response_set_header(struct bgs_res *res, const char *name, const char *value, const char **why)
{
    int rc = response_check_header(name, value);
    if (rc != 0) {
        *why = "the name is not a token, or the value contains CR or LF";
        return rc;
    }
    /* The carrier owns framing; a plugin setting these would break it. */
    if (util_strcaseeq(name, "Content-Length") || util_strcaseeq(name, "Transfer-Encoding") ||
        util_strcaseeq(name, "Connection")) {
        *why = "bgserve sets this header itself";
        return BGS_EINVAL;
    }
    if (util_strcaseeq(name, "Content-Type")) {
        response_set_content_type(res, value);
        return 0;
    }
    response_add_header(res, name, value);
    return 0;
}

void response_set_content_type(struct bgs_res *res, const char *type)
{
    free(res->content_type);
    res->content_type = xstrdup(type);
    res->untyped = 0;
}

const char *response_content_type(const struct bgs_res *res)
{
    if (res->content_type)
        return res->content_type;
    return res->untyped ? NULL : RES_DEFAULT_TYPE;
}

void response_append(struct bgs_res *res, const void *data, size_t len)
{
    util_buf_append(&res->body, &res->body_cap, &res->body_len, data, len, 64);
}

int response_vprintf(struct bgs_res *res, const char *fmt, va_list ap)
{
    char small[256];
    va_list ap2;
    if (strcmp(fmt, "%s") == 0) {
        /* bgs_res_text's call: copy the string, no format to parse. */
        const char *str = va_arg(ap, const char *);
        response_append(res, str ? str : "(null)", str ? strlen(str) : 6);
        return 0;
    }
    va_copy(ap2, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    if (n < 0 || (size_t)n < sizeof small) {
        va_end(ap2);
        if (n < 0)
            return BGS_EINVAL;
        response_append(res, small, (size_t)n);
        return 0;
    }
    util_buf_reserve(&res->body, &res->body_cap, res->body_len, (size_t)n, 64);
    vsnprintf(res->body + res->body_len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    res->body_len += (size_t)n;
    return 0;
}

void response_set_text(struct bgs_res *res, unsigned status, const char *text)
{
    response_take_answer(res, status, RES_DEFAULT_TYPE, xstrdup(text), strlen(text));
}

void response_take_answer(struct bgs_res *res, unsigned status, const char *type,
                     char *body, size_t len)
{
    res->status = status;
    free(res->content_type);
    res->content_type = NULL;
    res->untyped = type == NULL;
    if (type && strcmp(type, RES_DEFAULT_TYPE) != 0)
        res->content_type = xstrdup(type);
    free(res->body);
    res->body = body;
    res->body_len = body ? len : 0;
    res->body_cap = res->body_len; /* not known: at least len */
}

char *response_take_body(struct bgs_res *res, size_t *len)
{
    char *body = res->body;
    *len = body ? res->body_len : 0;
    res->body = NULL;
    res->body_cap = 0;
    res->body_len = *len;
    return body;
}

void response_reset(struct bgs_res *res)
{
    free_headers(res);
    free(res->content_type);
    res->content_type = NULL;
    res->untyped = 0;
    free(res->body);
    res->body = NULL;
    res->body_len = res->body_cap = 0;
    res->status = 200;
}
