/*
 * request.h - what a request and its response are inside bgserve: the
 * structs behind the opaque bgs_req and bgs_res handles.
 *
 * Both live inside the http room's per-request state and are touched by
 * exactly one HTTP thread at a time (the one libmicrohttpd runs the
 * request on), so they need no lock.  The plugin never sees these
 * addresses: it gets handles (handle.h) valid while the handler runs.  hostapi.c implements the plugin's
 * accessors over them; nothing here knows libmicrohttpd: headers are
 * reached through a lookup function the http room provides.
 */
#ifndef BGSERVE_REQUEST_H
#define BGSERVE_REQUEST_H

#include "bgserve.h"
#include "deferred.h"
#include "generation.h"
#include "router.h"
#include "services.h"
#include "tasks.h"

#include <stddef.h>
#include <stdint.h>

typedef struct req_kv {
    char *name;   /* decoded, points into bgs_req.query_buf */
    char *value;
} req_kv;

#define REQ_MAX_QUERY 64

struct bgs_req {
    const char *method;       /* owned by libmicrohttpd, request lifetime */
    const char *raw_path;     /* percent-encoded path without query */
    /* One allocation per request holds the target and two more buffers of
     * its size (req_set_url): fewer mallocs on the hot path. */
    char *url;                /* raw request target, owned (the block) */
    size_t url_len;
    char *raw_path_buf;       /* in url's block: raw_path without the query */
    char *scratch;            /* in url's block: the router's decode buffer */
    char *path;               /* decoded path, owned; made on first use */
    router_match match;       /* params point into scratch */
    /* The query's pairs and their decoded text, in one allocation made
     * only when there is a query (req_parse_query). */
    req_kv *query;            /* owned (the block); nquery entries */
    char *query_buf;          /* in query's block: decoded pairs live here */
    unsigned nquery;
    const char *(*header_fn)(void *conn, const char *name);
    void *conn;
    deferred_resume_fn resume_fn; /* resumes conn after a deferral */
    const char *body;         /* NULL when none */
    size_t body_len;
    char remote[64];
    char id[24];
    generation *gen;          /* a reference, released by http */
    services_scope *scope;    /* scoped services, ended by http */
    struct bgs_res *res;
};

typedef struct res_hdr {
    char *name;
    char *value;
} res_hdr;

struct bgs_res {
    uint32_t status;          /* default 200 */
    char *content_type;       /* owned; NULL: text/plain */
    res_hdr *headers;      /* owned */
    size_t nheaders, cap_headers;
    char *body;               /* owned (malloc) */
    size_t body_len, body_cap;
    uint32_t mode;            /* BGS_SEQUENTIAL / BGS_CONCURRENT */
    tasks_group *group;       /* tasks attached by the handler, or NULL */
    struct bgs_req *req;
    bgs_deferred *deferred;   /* set by res_defer; http holds a reference */
    uint64_t *queued_ids;     /* tasks queued now (req_enqueue, res_await) */
    size_t nqueued;
};

/* The whole path percent-decoded (made on first use: the router decodes
 * segment by segment and most handlers never ask), or NULL when it is
 * malformed. */
const char *req_decoded_path(struct bgs_req *req);

/* The decoded value of query parameter name (the first), or NULL. */
const char *req_query_value(struct bgs_req *req, const char *name);

/* Parse "a=1&b=x%20y" into req->query (decoded).  Returns 0, or -1 when
 * an escape is malformed. */
int req_parse_query(struct bgs_req *req, const char *qs);

/* Free everything a request and its response own (not the generation
 * reference, the scope or the task group: http handles those). */
void req_free(struct bgs_req *req);

/* Copy the request target into req (url, url_len), with room for
 * raw_path_buf and scratch behind it. */
void req_set_url(struct bgs_req *req, const char *uri);
void res_free(struct bgs_res *res);

/* Append a header bgserve itself sends (Allow, Retry-After): copied,
 * not checked. */
void res_add_header(struct bgs_res *res, const char *name, const char *value);

/* Check a header name (RFC 9110 token) and value (no CR, LF, NUL):
 * 0 or BGS_EHEADER. */
int res_check_header(const char *name, const char *value);

#endif
