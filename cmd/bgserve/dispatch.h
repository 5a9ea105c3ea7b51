/*
 * dispatch.h - route -> handler -> answer, with no socket: bgserve's own
 * /_bgserve/ endpoints, the router, the plugin's handler, the route's and
 * the handler's tasks, deferred answers.  No libmicrohttpd here (http.c
 * is one carrier of requests; an in-process caller is another).
 *
 * How to serve one request without a socket (one thread at a time per
 * request; any number of requests at once):
 *
 *     struct bgs_req req;
 *     struct bgs_res res;
 *     request_init(&req, &res, "/notes/1?x=y");            // request.h
 *     request_set_origin(&req, &(request_origin){.method = "POST",
 *                    .header_fn = my_lookup, .header_ctx = my_headers,
 *                    .resume_fn = my_wake, .resume_ctx = my_waiter});
 *     request_set_id(&req, "test-1");
 *     request_body_append(&req, body, len);                // as often as needed
 *     if (dispatch_request(&env, &req, &res) == DISPATCH_SUSPEND) {
 *         dispatch_arm(&res);                          // my_wake runs once final
 *         ... wait until my_wake was called (any thread) ...
 *         dispatch_resumed(&env, &req, &res);          // may suspend again
 *     }
 *     // the answer: res.status, response_content_type(&res), res.headers[0..nheaders),
 *     // res.body / res.body_len (response_take_body to keep it), res.close
 *     dispatch_finish(&req, &res, 1, 1, 0);            // answered, delivered
 *     request_free(&req);
 *     response_free(&res);
 *
 * dispatch_local_request does the set-up and the first dispatch_request
 * in one call for an in-process caller.
 * The generation serving the request is env->slot's at dispatch time;
 * the task engine (tasks_new, in env->tasks and the generation's) and
 * deferred_start must be running for tasks and deferred answers.  Headers the answer must carry besides
 * res.headers are the carrier's (Content-Length, Connection, the request
 * id); Bgserve-Tasks is added to res.headers here when env->introspection.
 */
#ifndef BGSERVE_DISPATCH_H
#define BGSERVE_DISPATCH_H

#include "introspect.h"
#include "request.h"

typedef struct dispatch_env {
    int introspection;      /* serve /_bgserve/ and add Bgserve-Tasks */
    const char *crash_page; /* while no generation serves: the crash report
                               every request gets (crashpage.h), or NULL (503) */
    const char *plugin_path;
    /* Fills the counters of /_bgserve/stats; NULL: zeros. */
    void (*counters)(introspect_counters *c);
    struct tasks_engine *tasks; /* the engine: records, stats, long-polls */
    struct generation_slot *slot;      /* whose generation serves (generation.h);
                                   NULL: the process's current one */
    /* --journal, --broker: an answer that carries tasks is held (DISPATCH_SUSPEND)
     * until the journal committed them or Redis has them, or becomes a 503. */
    int durable;
} dispatch_env;

enum {
    DISPATCH_ANSWERED = 0, /* res holds the answer */
    DISPATCH_SUSPEND = 1,  /* answered later (a deferral, a long-poll, or
                              with env->durable an answer held until its
                              tasks are committed): suspend, then
                              dispatch_arm */
    DISPATCH_STREAM = 2,   /* GET /_bgserve/events: the carrier streams the
                              dashboard's events (dashboard.h), or answers
                              with a status of its own if it cannot */
};

/* Is target (path and query, percent-encoded) one of bgserve's own
 * /_bgserve endpoints rather than the plugin's? */
int dispatch_is_introspection(const dispatch_env *env, const char *target);

/* Route the request and answer it into res: bgserve's endpoints, or the
 * plugin's handler (with its tasks).  req must have its target, origin,
 * id and body.  DISPATCH_ANSWERED, DISPATCH_SUSPEND or DISPATCH_STREAM. */
int dispatch_request(const dispatch_env *env, struct bgs_req *req, struct bgs_res *res);

/* The carrier has suspended the request: from now on a final state of the
 * deferred answer calls req->resume_fn (perhaps at once, on this thread). */
void dispatch_arm(struct bgs_res *res);

/* The request was resumed: put the final answer into res (the deferred
 * one, 504, 503 at shutdown, 500 when abandoned; a long-poll's record as
 * it is now).  DISPATCH_ANSWERED. */
int dispatch_resumed(const dispatch_env *env, struct bgs_req *req, struct bgs_res *res);

/* A request made in process, not read from a socket (bgserve request,
 * the testing library).  Every pointer is the caller's and only read. */
typedef struct dispatch_local {
    const char *target;       /* path and query, percent-encoded (copied) */
    request_origin origin;    /* method, headers, resume function, remote */
    const char *id;           /* the request id (copied) */
    const void *body;         /* body_len bytes (copied); NULL when none */
    size_t body_len;
    const char *carrier;      /* names the caller in the 501 an event stream
                                 gets: "bgserve request" */
} dispatch_local;

/* Set up req and res for lr (request_init and the rest) and dispatch the
 * request.  GET /_bgserve/events, which needs a socket, is answered with
 * 501 naming lr->carrier.  DISPATCH_ANSWERED, or DISPATCH_SUSPEND: the
 * caller waits as dispatch_arm / dispatch_resumed say.  Either way the
 * caller ends it with dispatch_finish, request_free and response_free. */
int dispatch_local_request(const dispatch_env *env, const dispatch_local *lr,
                           struct bgs_req *req, struct bgs_res *res);

/* The request is over: count it in its route's stats (answered: an
 * answer was sent; duration_us: from its start), hand its tasks to the
 * workers (delivered: the client got the whole answer), record the
 * delivery of tasks queued during it, drop the deferral's connection
 * reference, end scoped services, release the generation.  Call once. */
void dispatch_finish(struct bgs_req *req, struct bgs_res *res, int answered, int delivered,
                     uint64_t duration_us);

#endif
