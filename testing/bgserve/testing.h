/*
 * bgserve/testing.h - test a bgserve plugin in process, without a server:
 * the testing library (libbgserve-testing, pkg-config bgserve-testing).
 *
 * A client (bgst_client) loads one plugin exactly as `bgserve APP.so`
 * does (the same checks and refusals, the start hook, its periodic
 * tasks), with a task engine of its own: its own workers, task records,
 * timer thread and clock.  A test sends requests through the same router
 * and handler the server uses, reads the answer, waits for the tasks the
 * answer attached and reads their records, and moves the client's clock
 * so that retries, backoff and periodic tasks happen in milliseconds.
 * Several clients may be open at once, on the same plugin or different
 * ones; each is independent (its plugin is loaded from a private copy,
 * so even two clients of one .so share no static variables).
 *
 *     bgst_client *c;
 *     if (bgst_open(&c, "build/myapp.so", NULL) != BGST_OK)
 *         fail("%s", bgst_errmsg(c));
 *     bgst_response *r;
 *     bgst_send(c, "POST", "/jobs", "n=3", &r);
 *     assert(bgst_status(r) == 202);
 *     bgst_task t;
 *     bgst_task_wait(c, bgst_response_task(r, 0), 5000, &t);
 *     assert(t.state == BGST_SUCCEEDED);
 *     bgst_task_clear(&t);
 *     bgst_response_free(r);
 *     bgst_close(c);                    // the stop hook runs here
 *
 * Versioning.  This interface is versioned on its own (BGST_VERSION_*),
 * apart from the plugin ABI of bgserve.h: changing one never changes the
 * other.  Within a major version functions and enum values are only
 * added, and struct bgst_request only grows at its end (zero the whole
 * struct, or use a designated initialiser, so new fields read as 0).
 * The shared library's soname carries the major version.
 *
 * Errors.  Every function that can fail returns BGST_OK (0) or a negative
 * BGST_E* code, and never aborts or exits because of the plugin, the
 * arguments or a timeout; bgst_errmsg(client) says what failed and what
 * to do, in the words `bgserve APP.so` would use.  (Like the server, the
 * library stops the process when memory runs out.)  A crash in plugin
 * code is a crash of the test program: run it under a debugger or the
 * sanitizers.
 *
 * Ownership and lifetimes.
 *  - bgst_client: from bgst_open (even a failed one: it carries the
 *    message) until bgst_close.  bgst_close stops accepting tasks,
 *    cancels those not final (their cancellation flag is set; running
 *    ones get a moment to return), answers pending deferred responses
 *    503, runs the plugin's stop hook and unloads it.  Everything
 *    obtained from a client must be freed before it is closed.
 *  - bgst_response: owned by the caller from bgst_send/bgst_do until
 *    bgst_response_free.  Strings read from it live as long as it does.
 *  - bgst_task: a copy of a task record, filled by bgst_task_get or
 *    bgst_task_wait; owned by the caller, released with bgst_task_clear
 *    (which frees its error and result).
 *  - Pointers returned by bgst_app_data and bgst_service belong to the
 *    plugin and are valid until bgst_close.
 *  - Arguments (paths, headers, bodies) are copied; the caller keeps them.
 *
 * Threads.  A client may be used from one thread at a time (the test's);
 * different clients from different threads at once.  The plugin's code
 * runs on the library's threads as in the server: the handler on the
 * calling thread, tasks on the client's workers, periodic ticks and
 * retries released by the client's timer thread.
 *
 * What is process-wide even so: the plugin's log lines go to standard
 * error, and bgserve's own warnings too (as with the server).
 */
#ifndef BGSERVE_TESTING_H
#define BGSERVE_TESTING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BGST_VERSION_MAJOR 0
#define BGST_VERSION_MINOR 1
#define BGST_VERSION_PATCH 0
#define BGST_VERSION "0.1.0"

/* ---- result codes ------------------------------------------------------- */

#define BGST_OK 0
#define BGST_EINVAL (-1)   /* a bad argument (NULL client, no target...) */
#define BGST_ELOAD (-2)    /* the plugin was refused: not found, not a plugin,
                            * an ABI this bgserve cannot run, a bad table, or
                            * its start hook failed (bgst_errmsg says which) */
#define BGST_ESTART (-3)   /* the client's threads could not be started */
#define BGST_ETIMEOUT (-4) /* not done within the deadline given */
#define BGST_ENOTFOUND (-5) /* no task with that id in this client */
#define BGST_ESTATE (-6)   /* not possible now (the client failed to open) */

/* "BGST_ETIMEOUT" for a code; "BGST_E?" for one not listed. */
const char *bgst_code_name(int code);

/* The library's version, BGST_VERSION as it was built. */
const char *bgst_version(void);

/* ---- clients ------------------------------------------------------------- */

typedef struct bgst_client bgst_client;

typedef struct bgst_options {
    unsigned workers;      /* task threads; 0: 4 */
    unsigned keep;         /* finished task records kept; 0: 10000 */
    /*
     * 1: while bgst_task_wait, bgst_response_wait or bgst_idle_wait wait
     * and no task of the client is running or ready to run, the client's
     * clock jumps to its next timer (a retry's backoff, a delayed task, a
     * periodic tick, a deferred answer's deadline): "retried 3 times with
     * backoff" takes milliseconds.  Time then also passes for anything
     * else waiting on the clock, e.g. a deferred response a thread of the
     * plugin's own was to complete.  0: the clock moves only with
     * real time and bgst_advance.
     */
    int skip_delays;
} bgst_options;

/*
 * Load the plugin at path (a .so built against bgserve.h) as `bgserve
 * path` would and run its start hook.  opts may be NULL (defaults).
 * BGST_OK; BGST_ELOAD, BGST_ESTART or BGST_EINVAL (path NULL).  Unless
 * out is NULL, *out is set even on failure: read bgst_errmsg(*out), then
 * bgst_close it (a failed client answers every other call BGST_ESTATE).
 */
int bgst_open(bgst_client **out, const char *path, const bgst_options *opts);

/* Stop the client (see "Ownership" above) and free it.  NULL is fine. */
void bgst_close(bgst_client *c);

/* The message of the client's last failure ("" when none, or c NULL and
 * then "no client (bgst_open was given a NULL out pointer?)").  Valid
 * until the next call on c. */
const char *bgst_errmsg(const bgst_client *c);

/* ---- requests -------------------------------------------------------------- */

typedef struct bgst_header {
    const char *name;
    const char *value;
} bgst_header;

typedef struct bgst_request {
    const char *method;          /* NULL: "GET" */
    const char *target;          /* path and query, percent-encoded: "/a?b=c" */
    const bgst_header *headers;  /* nheaders of them (may be NULL) */
    size_t nheaders;
    const void *body;            /* NULL: none */
    size_t body_len;
    unsigned timeout_ms;         /* wait at most this for a deferred or awaited
                                  * answer; 0: 30000 */
} bgst_request;

typedef struct bgst_response bgst_response;

/*
 * Serve one request: bgserve's own /_bgserve/ endpoints, or the plugin's
 * router and handler, with the route's and the handler's tasks; a
 * deferred answer (bgs_res_defer, bgs_res_await) is waited for.  Like a
 * client that reads the whole answer: the answer's tasks are then handed
 * to the workers (they are not waited for: bgst_response_wait).  A body
 * without a Content-Type header is sent as
 * application/x-www-form-urlencoded; Host is localhost unless given.
 * BGST_OK with *out set (any status, 404 and 500 included); BGST_EINVAL
 * (no target, one not starting with '/', a method not in upper case, a
 * header with CR or LF); BGST_ETIMEOUT (no answer within timeout_ms;
 * *out is NULL and the client should be closed); BGST_ESTATE.
 */
int bgst_do(bgst_client *c, const bgst_request *rq, bgst_response **out);

/* bgst_do with a method, a target and a body (a string, or NULL). */
int bgst_send(bgst_client *c, const char *method, const char *target, const char *body,
              bgst_response **out);

void bgst_response_free(bgst_response *r);

/* The status, e.g. 200. */
unsigned bgst_status(const bgst_response *r);
/* The body, NUL-terminated (the NUL is not counted in *len; len may be
 * NULL).  Empty for HEAD. */
const char *bgst_body(const bgst_response *r, size_t *len);
/* The value of the first header named name (any case), or NULL.  Besides
 * the handler's own: Content-Type, Content-Length, X-Request-Id and, when
 * tasks were attached, Bgserve-Tasks. */
const char *bgst_header_get(const bgst_response *r, const char *name);
size_t bgst_header_count(const bgst_response *r);
/* Header i (0-based): BGST_OK, or BGST_EINVAL past the end. */
int bgst_header_at(const bgst_response *r, size_t i, const char **name, const char **value);
/* The tasks the answer attached or queued, in the order of Bgserve-Tasks. */
size_t bgst_response_task_count(const bgst_response *r);
/* Task i's id, 0 past the end. */
uint64_t bgst_response_task(const bgst_response *r, size_t i);

/* ---- tasks ---------------------------------------------------------------- */

enum {
    BGST_QUEUED = 0,
    BGST_RUNNING,
    BGST_RETRYING,   /* waiting for its next attempt (backoff) */
    BGST_SUCCEEDED,  /* the final states from here on */
    BGST_FAILED,
    BGST_SKIPPED,
    BGST_DISCARDED,
    BGST_CANCELLED,
};

typedef struct bgst_task {
    uint64_t id;
    char name[128];          /* "" for an ad hoc task */
    int state;               /* BGST_QUEUED ... BGST_CANCELLED */
    const char *state_name;  /* "succeeded", ... (static) */
    int final;               /* state is BGST_SUCCEEDED or later */
    uint32_t attempts, max_attempts;
    char *error;             /* the last error, or NULL; owned */
    char request_id[64];     /* the request that attached it, or "" */
    int has_result;          /* the task called bgs_task_result */
    uint32_t result_status;
    char *result_type;       /* owned, or NULL */
    void *result;            /* owned (NUL-terminated), or NULL */
    size_t result_len;
} bgst_task;

/* Task id's record as it is now into *out (cleared first).  BGST_OK, or
 * BGST_ENOTFOUND (no such task, or evicted past bgst_options.keep). */
int bgst_task_get(bgst_client *c, uint64_t id, bgst_task *out);

/* Wait up to timeout_ms for task id to be final, then bgst_task_get it.
 * BGST_OK; BGST_ETIMEOUT (*out holds the record as it is: not final);
 * BGST_ENOTFOUND. */
int bgst_task_wait(bgst_client *c, uint64_t id, unsigned timeout_ms, bgst_task *out);

/* Wait up to timeout_ms for every task of r to be final.  BGST_OK,
 * BGST_ETIMEOUT, BGST_ENOTFOUND. */
int bgst_response_wait(bgst_client *c, const bgst_response *r, unsigned timeout_ms);

/* Wait up to timeout_ms until no task of the client is queued, waiting
 * to retry or running.  BGST_OK, BGST_ETIMEOUT. */
int bgst_idle_wait(bgst_client *c, unsigned timeout_ms);

/* Free what *t owns and zero it.  NULL is fine. */
void bgst_task_clear(bgst_task *t);

/* ---- time ----------------------------------------------------------------- */

/*
 * Move the client's clock forward by ms: every timer of the client (retry
 * backoffs, delayed and periodic tasks, task timeouts, deferred
 * deadlines) becomes due ms sooner, and those now due fire before this
 * returns (the tasks they release are queued, not waited for).  Periodic
 * ticks do not catch up: one tick at most per schedule per call.  Other
 * clients' clocks do not move.  BGST_OK, BGST_ESTATE.
 */
int bgst_advance(bgst_client *c, unsigned ms);

/* Move the clock to the client's next timer, so it fires now.  BGST_OK
 * with *fired 1, or 0 when no timer was pending (fired may be NULL). */
int bgst_run_next_timer(bgst_client *c, int *fired);

/* ---- the app -------------------------------------------------------------- */

/* What the start hook gave bgs_app_set_data, or NULL. */
void *bgst_app_data(bgst_client *c);

/* The service name the plugin registered (bgs_service_register), as the
 * plugin's handlers get it: a singleton's one instance; a scoped one's
 * instance for the client's own scope (one scope, ended at bgst_close).
 * BGST_OK with *out set; BGST_ENOTFOUND (no such service, or its create
 * function failed: bgst_errmsg says which). */
int bgst_service(bgst_client *c, const char *name, void **out);

#ifdef __cplusplus
}
#endif

#endif
