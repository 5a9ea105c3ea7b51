/*
 * request.c - the owner of struct bgs_req and struct bgs_res (request.h):
 * setting a request up from its target, its body, its query and path
 * decoding, and building the response (status, headers, body).
 *
 * No lock: a request and its response are touched by one thread at a
 * time (request.h says which).  Nothing here knows libmicrohttpd, the
 * router's tables or the plugin: headers are reached through the
 * carrier's lookup function, and the plugin's calls arrive through
 * hostapi.c, which checks handles and reports misuse before calling in.
 */
#include "request.h"

#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The answer's Content-Type when the handler set none. */
#define RES_DEFAULT_TYPE "text/plain; charset=utf-8"

/* ---- the request ---------------------------------------------------------- */

void req_init(struct bgs_req *req, struct bgs_res *res, const char *uri)
{
    size_t n = strlen(uri);
    memset(req, 0, sizeof *req);
    memset(res, 0, sizeof *res);
    req->url = xmalloc(3 * (n + 1));
    memcpy(req->url, uri, n + 1);
    req->url_len = n;
    req->raw_path_buf = req->url + n + 1;
    req->scratch = req->url + 2 * (n + 1);
    req->raw_path = req->url;
    req->remote[0] = '-';
    req->res = res;
    res->req = req;
    res->status = 200;
}

void req_set_origin(struct bgs_req *req, const req_origin *o)
{
    req->method = o->method;
    req->header_fn = o->header_fn;
    req->header_ctx = o->header_ctx;
    req->resume_fn = o->resume_fn;
    req->resume_ctx = o->resume_ctx;
    snprintf(req->remote, sizeof req->remote, "%s", o->remote ? o->remote : "-");
}

void req_set_id(struct bgs_req *req, const char *id)
{
    snprintf(req->id, sizeof req->id, "%s", id);
}

void req_body_append(struct bgs_req *req, const void *data, size_t n)
{
    util_buf_append(&req->body, &req->body_cap, &req->body_len, data, n, 1024);
}

void req_body_drop(struct bgs_req *req)
{
    free(req->body);
    req->body = NULL;
    req->body_len = req->body_cap = 0;
}

int req_parse_target(struct bgs_req *req)
{
    /* The router decodes the path segment by segment; the whole decoded
     * path is made only when asked for (req_decoded_path). */
    char *q = memchr(req->url, '?', req->url_len);
    size_t plen = q ? (size_t)(q - req->url) : req->url_len;
    memcpy(req->raw_path_buf, req->url, plen);
    req->raw_path_buf[plen] = '\0';
    req->raw_path = req->raw_path_buf;
    return q ? req_parse_query(req, q + 1) : 0;
}

const char *req_decoded_path(struct bgs_req *req)
{
    if (req->path == NULL) {
        size_t n = strlen(req->raw_path);
        req->path = xmalloc(n + 1);
        if (router_pct_decode(req->raw_path, n, req->path, 0) < 0) {
            free(req->path);
            req->path = NULL;
        }
    }
    return req->path;
}

const char *req_query_value(struct bgs_req *req, const char *name)
{
    for (unsigned i = 0; i < req->nquery; i++)
        if (strcmp(req->query[i].name, name) == 0)
            return req->query[i].value;
    return NULL;
}

const char *req_param(const struct bgs_req *req, const char *name)
{
    for (unsigned i = 0; i < req->match.nparams; i++)
        if (strcmp(req->match.params[i].name, name) == 0)
            return req->match.params[i].value;
    return NULL;
}

const char *req_header(const struct bgs_req *req, const char *name)
{
    return req->header_fn ? req->header_fn(req->header_ctx, name) : NULL;
}

int req_parse_query(struct bgs_req *req, const char *qs)
{
    size_t n = strlen(qs), npairs = 1;
    for (const char *a = strchr(qs, '&'); a && npairs < REQ_MAX_QUERY; a = strchr(a + 1, '&'))
        npairs++;
    /* Each pair needs its length + 2 (two NULs; the '=' is reused for one
     * when present), and pairs are at most n: 2n + 2 always suffices
     * ("k" alone needs 3 bytes, found by fuzz_pct).  The pairs' array
     * comes first in the same block. */
    req->query = xmalloc(npairs * sizeof(req_kv) + 2 * n + 2);
    req->query_buf = (char *)(req->query + npairs);
    char *out = req->query_buf;
    const char *p = qs;

    req->nquery = 0;
    while (*p && req->nquery < npairs) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t)(amp - p) : strlen(p);
        if (plen > 0) {
            const char *eq = memchr(p, '=', plen);
            size_t klen = eq ? (size_t)(eq - p) : plen;
            long k = router_pct_decode(p, klen, out, 1);
            if (k < 0)
                return -1;
            req->query[req->nquery].name = out;
            out += k + 1;
            const char *v = eq ? eq + 1 : p + plen;
            size_t vlen = eq ? plen - klen - 1 : 0;
            long vl = router_pct_decode(v, vlen, out, 1);
            if (vl < 0)
                return -1;
            req->query[req->nquery].value = out;
            out += vl + 1;
            req->nquery++;
        }
        if (amp == NULL)
            break;
        p = amp + 1;
    }
    return 0;
}

void req_free(struct bgs_req *req)
{
    free(req->url); /* raw_path_buf and scratch too */
    free(req->path);
    free(req->query); /* query_buf too */
    free(req->body);
}

/* ---- the response --------------------------------------------------------- */

static void free_headers(struct bgs_res *res)
{
    for (size_t i = 0; i < res->nheaders; i++) {
        free(res->headers[i].name);
        free(res->headers[i].value);
    }
    free(res->headers);
    res->headers = NULL;
    res->nheaders = res->cap_headers = 0;
}

void res_free(struct bgs_res *res)
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

int res_check_header(const char *name, const char *value)
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

void res_add_header(struct bgs_res *res, const char *name, const char *value)
{
    if (res->nheaders == res->cap_headers) {
        res->cap_headers = res->cap_headers ? res->cap_headers * 2 : 4;
        res->headers = xrealloc(res->headers, res->cap_headers * sizeof *res->headers);
    }
    res->headers[res->nheaders].name = xstrdup(name);
    res->headers[res->nheaders].value = xstrdup(value);
    res->nheaders++;
}

int res_set_header(struct bgs_res *res, const char *name, const char *value, const char **why)
{
    int rc = res_check_header(name, value);
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
        res_set_content_type(res, value);
        return 0;
    }
    res_add_header(res, name, value);
    return 0;
}

void res_set_content_type(struct bgs_res *res, const char *type)
{
    free(res->content_type);
    res->content_type = xstrdup(type);
    res->untyped = 0;
}

const char *res_content_type(const struct bgs_res *res)
{
    if (res->content_type)
        return res->content_type;
    return res->untyped ? NULL : RES_DEFAULT_TYPE;
}

void res_append(struct bgs_res *res, const void *data, size_t len)
{
    util_buf_append(&res->body, &res->body_cap, &res->body_len, data, len, 64);
}

int res_vprintf(struct bgs_res *res, const char *fmt, va_list ap)
{
    char small[256];
    va_list ap2;
    if (strcmp(fmt, "%s") == 0) {
        /* bgs_res_text's call: copy the string, no format to parse. */
        const char *str = va_arg(ap, const char *);
        res_append(res, str ? str : "(null)", str ? strlen(str) : 6);
        return 0;
    }
    va_copy(ap2, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    if (n < 0 || (size_t)n < sizeof small) {
        va_end(ap2);
        if (n < 0)
            return BGS_EINVAL;
        res_append(res, small, (size_t)n);
        return 0;
    }
    util_buf_reserve(&res->body, &res->body_cap, res->body_len, (size_t)n, 64);
    vsnprintf(res->body + res->body_len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    res->body_len += (size_t)n;
    return 0;
}

void res_set_text(struct bgs_res *res, unsigned status, const char *text)
{
    res_take_answer(res, status, RES_DEFAULT_TYPE, xstrdup(text), strlen(text));
}

void res_take_answer(struct bgs_res *res, unsigned status, const char *type,
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

char *res_take_body(struct bgs_res *res, size_t *len)
{
    char *body = res->body;
    *len = body ? res->body_len : 0;
    res->body = NULL;
    res->body_cap = 0;
    res->body_len = *len;
    return body;
}

void res_reset(struct bgs_res *res)
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
