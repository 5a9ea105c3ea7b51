/*
 * deferred.h - responses answered later: reference-counted handles,
 * deadlines, and the thread that enforces them.
 *
 * A handle starts with two references: one for the plugin (dropped by
 * deferred_complete or deferred_release) and one for the connection
 * (dropped by the http room when the request ends).  So a late
 * completion, a timeout and a client disconnect can happen in any order.
 * Knows nothing of libmicrohttpd: the http room passes a resume function.
 */
#ifndef BGSERVE_DEFERRED_H
#define BGSERVE_DEFERRED_H

#include "bgserve.h"
#include "sched.h"

#include <stddef.h>
#include <stdint.h>

#define DEFERRED_DEFAULT_TIMEOUT_MS 30000u

enum {
    DEFERRED_PENDING = 0,
    DEFERRED_COMPLETED,   /* the plugin answered */
    DEFERRED_TIMED_OUT,   /* the deadline passed: 504 */
    DEFERRED_RELEASED,    /* the plugin gave up without answering: 500 */
    DEFERRED_SHUTDOWN,    /* the server is stopping: 503 */
};

typedef void (*deferred_resume_fn)(void *conn);

/* Ready the room (before or after tasks_new: deadlines run on the
 * scheduler thread tasks_new starts, and only handles armed while
 * serving have one).  deferred_stop, after tasks_shutdown, frees the
 * handles a plugin never settled.  0 or -1. */
int deferred_start(void);
void deferred_stop(void);
/* deferred_stop for the handles whose deadlines run on s only (one task
 * engine's: the testing library closing one instance while others go
 * on): pending ones are answered DEFERRED_SHUTDOWN first, then every
 * handle on s is freed.  Call after that engine's tasks_shutdown, before
 * tasks_free. */
void deferred_stop_for(sched *s);

/* A new pending handle with both references; its deadline runs on s (the
 * request's task engine's scheduler, tasks_sched).  timeout_ms 0 means
 * the default.  Not armed yet: see deferred_arm. */
bgs_deferred *deferred_new(sched *s, uint32_t timeout_ms, deferred_resume_fn resume,
                           void *conn);
/* The same for bgserve's own long-polls: not counted in the stats. */
bgs_deferred *deferred_new_internal(sched *s, uint32_t timeout_ms, deferred_resume_fn resume,
                                    void *conn);

/*
 * The connection is suspended: from now on a final state resumes it.  If
 * the handle is already final, resume is called at once.  Called by the
 * http room on the connection's thread.
 */
void deferred_arm(bgs_deferred *d);

/* deferred_complete taking over type and body (malloc'd; type may be
 * NULL for text/plain) instead of copying them: bgserve's own answers
 * (a task's result for bgs_res_await).  They are freed whatever
 * happens. */
int deferred_complete_take(bgs_deferred *d, uint32_t status, char *type, void *body,
                           size_t len);
/* The plugin's answer (any thread).  Copies type and body; drops the
 * plugin's reference.  BGS_ESTATE when the handle is no longer pending
 * (timed out, shut down), and then the reference is dropped too; also
 * BGS_ESTATE, changing nothing, when the plugin already completed or
 * released it.  BGS_EINVAL for a bad argument, and then nothing happened. */
int deferred_complete(bgs_deferred *d, uint32_t status, const char *type,
                      const void *body, size_t len);
/* The plugin gives up (any thread): the client gets 500. */
void deferred_release(bgs_deferred *d);

/* The plugin's handle for d (handle.h): opened by deferred_new, closed
 * when the plugin completes or releases it, or when d is freed. */
void *deferred_handle(bgs_deferred *d);

/* The host API's deferred_complete and deferred_release, on the plugin's
 * handle h (any thread).  A handle that is NULL, not a deferred handle,
 * or completed/released already gets BGS_EINVAL/BGS_ESTATE (nothing for
 * release) and a misuse warning (misuse.h); site is the plugin's call
 * site.  Otherwise as deferred_complete/deferred_release; bad arguments
 * give BGS_EINVAL and leave the handle valid. */
int deferred_host_complete(void *h, uint32_t status, const char *type, const void *body,
                           size_t len, const void *site);
void deferred_host_release(void *h, const void *site);

/* The connection side: read the final state and answer (pointers stay
 * valid until deferred_put). */
int deferred_state(bgs_deferred *d, uint32_t *status, const char **type,
                   const char **body, size_t *len);
/* The answer's body handed over to the caller (malloc'd, NULL when
 * empty), for the response that sends it: the body a task produced
 * reaches the client without another copy.  Once only; NULL after. */
void *deferred_take_body(bgs_deferred *d);
/* The connection side is done; delivered: the answer reached the client. */
void deferred_put(bgs_deferred *d, int delivered);

/* Move every pending handle to DEFERRED_SHUTDOWN and resume it. */
void deferred_shutdown_all(void);

/* Keys "pending", "completed", "timed_out", "abandoned" as JSON. */
struct json;
void deferred_stats_json(struct json *j);

#endif
