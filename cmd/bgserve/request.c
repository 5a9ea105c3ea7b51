/*
 * request.c - the owner of struct bgs_req (request.h): setting a request
 * up from its target, its body, its query and path decoding.  Its
 * response is response.c's.
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

/* ---- the request ---------------------------------------------------------- */

void request_init(struct bgs_req *req, struct bgs_res *res, const char *uri)
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

void request_set_origin(struct bgs_req *req, const request_origin *o)
{
    req->method = o->method;
    req->header_fn = o->header_fn;
    req->header_ctx = o->header_ctx;
    req->resume_fn = o->resume_fn;
    req->resume_ctx = o->resume_ctx;
    util_copy_str(req->remote, sizeof req->remote, o->remote ? o->remote : "-");
}

void request_set_id(struct bgs_req *req, const char *id)
{
    util_copy_str(req->id, sizeof req->id, id);
}

void request_body_append(struct bgs_req *req, const void *data, size_t n)
{
    util_buf_append(&req->body, &req->body_cap, &req->body_len, data, n, 1024);
}

void request_body_drop(struct bgs_req *req)
{
    free(req->body);
    req->body = NULL;
    req->body_len = req->body_cap = 0;
}

int request_parse_target(struct bgs_req *req)
{
    /* The router decodes the path segment by segment; the whole decoded
     * path is made only when asked for (request_decoded_path). */
    char *q = memchr(req->url, '?', req->url_len);
    size_t plen = q ? (size_t)(q - req->url) : req->url_len;
    memcpy(req->raw_path_buf, req->url, plen);
    req->raw_path_buf[plen] = '\0';
    req->raw_path = req->raw_path_buf;
    return q ? request_parse_query(req, q + 1) : 0;
}

const char *request_decoded_path(struct bgs_req *req)
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

const char *request_query_value(struct bgs_req *req, const char *name)
{
    for (unsigned i = 0; i < req->nquery; i++)
        if (strcmp(req->query[i].name, name) == 0)
            return req->query[i].value;
    return NULL;
}

const char *request_param(const struct bgs_req *req, const char *name)
{
    for (unsigned i = 0; i < req->match.nparams; i++)
        if (strcmp(req->match.params[i].name, name) == 0)
            return req->match.params[i].value;
    return NULL;
}

const char *request_header(const struct bgs_req *req, const char *name)
{
    return req->header_fn ? req->header_fn(req->header_ctx, name) : NULL;
}

int request_parse_query(struct bgs_req *req, const char *qs)
{
    size_t n = strlen(qs), npairs = 1;
    for (const char *a = strchr(qs, '&'); a && npairs < REQUEST_MAX_QUERY; a = strchr(a + 1, '&'))
        npairs++;
    /* Each pair needs its length + 2 (two NULs; the '=' is reused for one
     * when present), and pairs are at most n: 2n + 2 always suffices
     * ("k" alone needs 3 bytes, found by fuzz_pct).  The pairs' array
     * comes first in the same block. */
    req->query = xmalloc(npairs * sizeof(request_kv) + 2 * n + 2);
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

void request_free(struct bgs_req *req)
{
    free(req->url); /* raw_path_buf and scratch too */
    free(req->path);
    free(req->query); /* query_buf too */
    free(req->body);
}

