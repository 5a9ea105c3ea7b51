/*
 * request.h - what a request and its response are inside bgserve: the
 * structs behind the opaque bgs_req and bgs_res handles, and the only
 * functions that change them (request.c).
 *
 * Who writes what:
 *   - request.c owns both structs: it sets them up (req_init), keeps the
 *     request body (req_body_append: the one copy), splits the target
 *     (req_parse_target), and builds the answer (status, headers, body:
 *     each held once, in bgs_res).  It knows neither libmicrohttpd nor
 *     the router's callers.
 *   - whoever carries the request (http.c for a socket, or an in-process
 *     caller) fills the request's origin (req_set_origin, req_set_id) and
 *     reads the answer back (res_* getters and fields below).
 *   - dispatch.c routes it, runs the handler and settles its tasks; it
 *     writes gen, scope, match and the task fields.
 *   - hostapi.c gives the plugin these functions behind handles.
 * Both structs are touched by exactly one thread at a time (the one the
 * carrier runs the request on), so they need no lock.  The plugin never
 * sees these addresses: it gets handles (handle.h) valid while the
 * handler runs.
 */
#ifndef BGSERVE_REQUEST_H
#define BGSERVE_REQUEST_H

#include "bgserve.h"
#include "deferred.h"
#include "durable.h"
#include "generation.h"
#include "router.h"
#include "services.h"
#include "tasks.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef struct req_kv {
    char *name;   /* decoded, points into bgs_req.query_buf */
    char *value;
} req_kv;

#define REQ_MAX_QUERY 64

/* Looks a request header up by name (any case); NULL when absent. */
typedef const char *(*req_header_fn)(void *ctx, const char *name);

/* Where a request came from: given by its carrier (req_set_origin). */
typedef struct req_origin {
    const char *method;          /* kept as given: must live as long as the request */
    req_header_fn header_fn;     /* may be NULL: no headers */
    void *header_ctx;
    deferred_resume_fn resume_fn; /* wakes the carrier once a deferred answer is final */
    void *resume_ctx;
    const char *remote;          /* peer address, copied; NULL: "-" */
} req_origin;

struct bgs_req {
    const char *method;       /* the carrier's, request lifetime */
    const char *raw_path;     /* percent-encoded path without query */
    /* One allocation per request holds the target and two more buffers of
     * its size (req_init): fewer mallocs on the hot path. */
    char *url;                /* raw request target, owned (the block) */
    size_t url_len;
    char *raw_path_buf;       /* in url's block: raw_path without the query */
    char *scratch;            /* in url's block: the router's decode buffer */
    char *path;               /* decoded path, owned; made on first use */
    router_match match;       /* params point into scratch (dispatch) */
    const plugin_route *route; /* the route matched, or NULL (dispatch) */
    /* The query's pairs and their decoded text, in one allocation made
     * only when there is a query (req_parse_query). */
    req_kv *query;            /* owned (the block); nquery entries */
    char *query_buf;          /* in query's block: decoded pairs live here */
    unsigned nquery;
    req_header_fn header_fn;
    void *header_ctx;
    deferred_resume_fn resume_fn; /* resumes the carrier after a deferral */
    void *resume_ctx;
    char *body;               /* owned, the only copy; NULL when none */
    size_t body_len, body_cap;
    char remote[64];
    char id[24];
    generation *gen;          /* a reference, released by dispatch_finish */
    services_scope *scope;    /* scoped services, ended by dispatch_finish */
    durable_gate *gate;       /* --journal: the commits of its tasks (dispatch's) */
    struct bgs_res *res;
};

typedef struct res_hdr {
    char *name;
    char *value;
} res_hdr;

struct bgs_res {
    uint32_t status;          /* 200 until set */
    char *content_type;       /* owned; NULL: see res_content_type */
    int untyped;              /* send no Content-Type at all (res_take_body) */
    int close;                /* the answer closes the connection */
    res_hdr *headers;         /* owned */
    size_t nheaders, cap_headers;
    /* The body, the only copy.  Once the carrier took it (res_take_body)
     * body is NULL and body_len still says how many bytes it was. */
    char *body;               /* owned (malloc), kept NUL-terminated */
    size_t body_len, body_cap;
    uint32_t mode;            /* BGS_SEQUENTIAL / BGS_CONCURRENT: the group's */
    tasks_group *group;       /* the response's tasks (route's, handler's,
                                 queued now: docs/tasks.md), or NULL */
    struct bgs_req *req;
    bgs_deferred *deferred;   /* set by the handler or a long-poll; the
                                 connection's reference is dropped by
                                 dispatch_finish */
    int longpoll;             /* suspended on /_bgserve/tasks/ID?wait= */
    int held;                 /* suspended until its tasks are durable */
};

/* ---- the request ------------------------------------------------------- */

/* Set up req and res as a pair for request target uri (path and query,
 * percent-encoded; copied).  Everything else is empty; status 200. */
void req_init(struct bgs_req *req, struct bgs_res *res, const char *uri);

/* Where the request came from (see req_origin). */
void req_set_origin(struct bgs_req *req, const req_origin *o);

/* The request id (copied, cut to fit). */
void req_set_id(struct bgs_req *req, const char *id);

/* Append n bytes to the request body.  req_body_drop forgets it (a body
 * past the limit is not kept). */
void req_body_append(struct bgs_req *req, const void *data, size_t n);
void req_body_drop(struct bgs_req *req);

/* Split the target into raw_path and the query (decoded).  0, or -1 when
 * the query's percent-encoding is malformed. */
int req_parse_target(struct bgs_req *req);

/* The whole path percent-decoded (made on first use: the router decodes
 * segment by segment and most handlers never ask), or NULL when it is
 * malformed. */
const char *req_decoded_path(struct bgs_req *req);

/* The decoded value of query parameter name (the first), or NULL. */
const char *req_query_value(struct bgs_req *req, const char *name);

/* The value of the route parameter name, or NULL. */
const char *req_param(const struct bgs_req *req, const char *name);

/* The value of request header name (any case), or NULL. */
const char *req_header(const struct bgs_req *req, const char *name);

/* Parse "a=1&b=x%20y" into req->query (decoded).  Returns 0, or -1 when
 * an escape is malformed. */
int req_parse_query(struct bgs_req *req, const char *qs);

/* Free everything a request owns (not the generation reference, the
 * scope or the tasks: dispatch_finish settles those).  Safe on a zeroed
 * struct. */
void req_free(struct bgs_req *req);

/* ---- the response ------------------------------------------------------ */

/* Free everything a response owns (the same exceptions as req_free). */
void res_free(struct bgs_res *res);

/* Check a header name (RFC 9110 token) and value (no CR, LF, NUL):
 * 0 or BGS_EHEADER. */
int res_check_header(const char *name, const char *value);

/* Append a header bgserve itself sends (Allow, Retry-After): copied,
 * not checked. */
void res_add_header(struct bgs_res *res, const char *name, const char *value);

/* Set a header the plugin asked for: checked, and Content-Type goes to
 * content_type.  0, or BGS_EHEADER / BGS_EINVAL with *why saying what is
 * wrong (nothing changed). */
int res_set_header(struct bgs_res *res, const char *name, const char *value, const char **why);

/* Replace the content type (copied). */
void res_set_content_type(struct bgs_res *res, const char *type);

/* The Content-Type to send: the one set, "text/plain; charset=utf-8"
 * when none was, or NULL for an untyped answer. */
const char *res_content_type(const struct bgs_res *res);

/* Append len bytes to the body; res_vprintf appends formatted text
 * (0 or BGS_EINVAL when the format cannot be expanded). */
void res_append(struct bgs_res *res, const void *data, size_t len);
int res_vprintf(struct bgs_res *res, const char *fmt, va_list ap);

/* The whole answer at once: status and a copy of text as plain text. */
void res_set_text(struct bgs_res *res, unsigned status, const char *text);

/* The whole answer at once, taking over body (malloc'd, may be NULL when
 * len is 0).  type NULL: send no Content-Type. */
void res_take_answer(struct bgs_res *res, unsigned status, const char *type,
                     char *body, size_t len);

/* Hand the body over to the carrier: returns it (malloc'd; NULL when
 * empty) with its length in *len; res keeps body_len for the access log. */
char *res_take_body(struct bgs_res *res, size_t *len);

/* Forget what the handler built (status, headers, body, content type),
 * for an error answer; keep what must outlive it (a deferral, the task
 * group with the tasks queued already: dispatch settles them). */
void res_reset(struct bgs_res *res);

#endif
