/*
 * request.h - what a request is inside bgserve: the struct behind the
 * opaque bgs_req handle, and the only functions that change it
 * (request.c).  Its response, struct bgs_res, is response.h's.
 *
 * Who writes what:
 *   - request.c and response.c own the two structs: it sets them up (request_init), keeps the
 *     request body (request_body_append: the one copy), splits the target
 *     (request_parse_target), and builds the answer (status, headers, body:
 *     each held once, in bgs_res).  It knows neither libmicrohttpd nor
 *     the router's callers.
 *   - whoever carries the request (http.c for a socket, or an in-process
 *     caller) fills the request's origin (request_set_origin, request_set_id) and
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
#include "response.h"
#include "router.h"
#include "services.h"
#include "tasks.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef struct request_kv {
    char *name;   /* decoded, points into bgs_req.query_buf */
    char *value;
} request_kv;

#define REQUEST_MAX_QUERY 64

/* Looks a request header up by name (any case); NULL when absent. */
typedef const char *(*request_header_fn)(void *ctx, const char *name);

/* Where a request came from: given by its carrier (request_set_origin). */
typedef struct request_origin {
    const char *method;          /* kept as given: must live as long as the request */
    request_header_fn header_fn;     /* may be NULL: no headers */
    void *header_ctx;
    deferred_resume_fn resume_fn; /* wakes the carrier once a deferred answer is final */
    void *resume_ctx;
    const char *remote;          /* peer address, copied; NULL: "-" */
} request_origin;

struct bgs_req {
    const char *method;       /* the carrier's, request lifetime */
    const char *raw_path;     /* percent-encoded path without query */
    /* One allocation per request holds the target and two more buffers of
     * its size (request_init): fewer mallocs on the hot path. */
    char *url;                /* raw request target, owned (the block) */
    size_t url_len;
    char *raw_path_buf;       /* in url's block: raw_path without the query */
    char *scratch;            /* in url's block: the router's decode buffer */
    char *path;               /* decoded path, owned; made on first use */
    router_match match;       /* params point into scratch (dispatch) */
    const plugin_route *route; /* the route matched, or NULL (dispatch) */
    /* The query's pairs and their decoded text, in one allocation made
     * only when there is a query (request_parse_query). */
    request_kv *query;            /* owned (the block); nquery entries */
    char *query_buf;          /* in query's block: decoded pairs live here */
    unsigned nquery;
    request_header_fn header_fn;
    void *header_ctx;
    deferred_resume_fn resume_fn; /* resumes the carrier after a deferral */
    void *resume_ctx;
    char *body;               /* owned, the only copy; NULL when none */
    size_t body_len, body_cap;
    char remote[64];
    char id[24];
    generation *gen;          /* a reference, released by dispatch_finish */
    services_scope *scope;    /* scoped services, ended by dispatch_finish */
    durable_gate *gate;       /* --journal, --broker: its tasks being kept (dispatch's) */
    struct bgs_res *res;
};

/* ---- the request ------------------------------------------------------- */

/* Set up req and res as a pair for request target uri (path and query,
 * percent-encoded; copied).  Everything else is empty; status 200. */
void request_init(struct bgs_req *req, struct bgs_res *res, const char *uri);

/* Where the request came from (see request_origin). */
void request_set_origin(struct bgs_req *req, const request_origin *o);

/* The request id (copied, cut to fit). */
void request_set_id(struct bgs_req *req, const char *id);

/* Append n bytes to the request body.  request_body_drop forgets it (a body
 * past the limit is not kept). */
void request_body_append(struct bgs_req *req, const void *data, size_t n);
void request_body_drop(struct bgs_req *req);

/* Split the target into raw_path and the query (decoded).  0, or -1 when
 * the query's percent-encoding is malformed. */
int request_parse_target(struct bgs_req *req);

/* The whole path percent-decoded (made on first use: the router decodes
 * segment by segment and most handlers never ask), or NULL when it is
 * malformed. */
const char *request_decoded_path(struct bgs_req *req);

/* The decoded value of query parameter name (the first), or NULL. */
const char *request_query_value(struct bgs_req *req, const char *name);

/* The value of the route parameter name, or NULL. */
const char *request_param(const struct bgs_req *req, const char *name);

/* The value of request header name (any case), or NULL. */
const char *request_header(const struct bgs_req *req, const char *name);

/* Parse "a=1&b=x%20y" into req->query (decoded).  Returns 0, or -1 when
 * an escape is malformed. */
int request_parse_query(struct bgs_req *req, const char *qs);

/* Free everything a request owns (not the generation reference, the
 * scope or the tasks: dispatch_finish settles those).  Safe on a zeroed
 * struct. */
void request_free(struct bgs_req *req);

#endif
