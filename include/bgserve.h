/*
 * bgserve.h - the bgserve plugin ABI, version 1.
 *
 * This is the only header a plugin includes.  It is a promise: a plugin
 * built against ABI 1.0 keeps loading in every later 1.x server, and a
 * plugin the server cannot run is refused at load time with a message
 * that says why and what to do.
 *
 * Stability rules (the full text is docs/ABI.md):
 *  - A plugin exports exactly one symbol, bgserve_plugin_v1 (BGS_PLUGIN
 *    defines it).  It receives the host API table and returns a pointer
 *    to a static const descriptor (struct bgs_plugin).
 *  - The server accepts a descriptor when its magic matches, its
 *    abi_major equals the server's, its abi_minor is at most the
 *    server's, and its struct_size is at least the 1.0 size.
 *  - Every struct here holds only fixed-width integers and pointers: no
 *    enums, bool or bitfields.  Structs grow only by appending fields,
 *    and each growth bumps BGS_ABI_MINOR.  The server reads a descriptor
 *    only up to its struct_size and steps arrays by the element sizes the
 *    descriptor records, so an older plugin's shorter structs are fine.
 *  - The host API table (struct bgs_host_api) likewise only grows at its
 *    end.  A plugin built against 1.N only runs on a server >= 1.N, so
 *    every function it was compiled against is present.
 *  - Requests, responses, tasks and the app are opaque handles.
 *
 * Keeping a plugin reloadable (bgserve --reload): no threads of its own,
 * no atexit(), no pthread keys or initial-exec TLS, no constructors or
 * destructors, no signal handlers.  Keep state in the app (bgs_app_set_data)
 * or outside the process; one pointer can be handed to the next generation
 * with bgs_app_handover_set/get (docs/ABI.md shows how).
 *
 * Ownership: strings returned by request accessors belong to the request
 * and stay valid until the handler returns.  Data passed to response and
 * task functions is copied; the caller keeps ownership of what it passed.
 *
 * Handles and how long they live.  A handle is not a pointer: it names a
 * slot and a serial number, and the server checks it on every call, from
 * any thread.  A call with a handle whose life has ended, or from a
 * thread that may not use it, returns BGS_ESTATE (or the neutral value
 * the function documents) and never touches freed memory; a NULL handle
 * returns BGS_EINVAL.  Both print one warning naming the call, the
 * plugin and what was running, and count in /_bgserve/stats "misuse".
 *  - bgs_req, bgs_res: from the handler's call until it returns, on the
 *    thread that called the handler only.
 *  - bgs_task_ctx: from the task function's call until it returns, on
 *    the thread that called it only.
 *  - bgs_deferred: from bgs_res_defer until bgs_deferred_complete or
 *    bgs_deferred_release returns (also after its deadline passed: the
 *    first of those calls then returns BGS_ESTATE and ends it), on any
 *    thread.  A handle never completed ends when the server stops.
 *  - bgs_app: from the start hook until the stop hook returns (the
 *    generation's life), on any thread.
 */
#ifndef BGSERVE_H
#define BGSERVE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BGS_ABI_MAJOR 1
#define BGS_ABI_MINOR 1

/* "BGSV": the first field of every descriptor. */
#define BGS_PLUGIN_MAGIC 0x56534742u

/* ------------------------------------------------------------------ */
/* Result codes: 0 is success, failures are negative.                  */
/* ------------------------------------------------------------------ */

/*
 * What each code means to a plugin:
 *  BGS_EINVAL    a bad argument or a NULL handle: a bug in the plugin.
 *  BGS_ENOMEM    reserved: never returned (bgserve stops on out of memory).
 *  BGS_EFULL     the task queue is full: load, answer 503 and retry later.
 *  BGS_ENOTASK   no task of that name: a bug in the plugin (a typo).
 *  BGS_ESTATE    the handle's life has ended, it belongs to another thread,
 *                or the call is not allowed now: a bug in the plugin.
 *  BGS_EHEADER   a header name that is not a token, or CR/LF in a value.
 *  BGS_ENOTFOUND reserved for plugins: no host function returns it.
 *  BGS_ESHUTDOWN the server is stopping and takes no new tasks.
 *  BGS_ETOOMANY  reserved: never returned by this server.
 * Every BGS_EINVAL, BGS_ENOTASK, BGS_ESTATE and BGS_EHEADER a host
 * function returns also prints a warning saying where (docs/ABI.md).
 */
#define BGS_ERRNO_MAP(X)                                                   \
    X(EINVAL, -1, "invalid argument")                                      \
    X(ENOMEM, -2, "out of memory")                                         \
    X(EFULL, -3, "task queue is full, try again later")                    \
    X(ENOTASK, -4, "no task with that name in the plugin's task table")    \
    X(ESTATE, -5, "not allowed at this point of the request")              \
    X(EHEADER, -6, "header name or value contains CR, LF or NUL")          \
    X(ENOTFOUND, -7, "not found")                                          \
    X(ESHUTDOWN, -8, "server is shutting down")                            \
    X(ETOOMANY, -9, "too many items")

#define BGS__ERR_ENUM(name, code, text) BGS_##name = (code),
#define BGS__ERR_ONE(name, code, text) +1
enum {
    BGS_OK = 0,
    BGS_ERRNO_MAP(BGS__ERR_ENUM)
    /* One below the lowest code: every code c has BGS__ERR_LAST < c <= 0.
     * (In 1.0 it was, by mistake, equal to BGS_ESHUTDOWN.) */
    BGS__ERR_LAST = -(0 BGS_ERRNO_MAP(BGS__ERR_ONE)) - 1
};
#undef BGS__ERR_ENUM
#undef BGS__ERR_ONE

/* Text for a result code; never NULL. */
static inline const char *bgs_strerror(int code)
{
    switch (code) {
    case 0: return "success";
#define BGS__ERR_TEXT(name, c, text) case (c): return text;
    BGS_ERRNO_MAP(BGS__ERR_TEXT)
#undef BGS__ERR_TEXT
    default: return "unknown error";
    }
}

/* Name of a result code ("BGS_EFULL"); never NULL. */
static inline const char *bgs_errname(int code)
{
    switch (code) {
    case 0: return "BGS_OK";
#define BGS__ERR_NAME(name, c, text) case (c): return "BGS_" #name;
    BGS_ERRNO_MAP(BGS__ERR_NAME)
#undef BGS__ERR_NAME
    default: return "BGS_UNKNOWN";
    }
}

/* ------------------------------------------------------------------ */
/* Opaque handles                                                      */
/* ------------------------------------------------------------------ */

typedef struct bgs_req bgs_req;           /* one HTTP request */
typedef struct bgs_res bgs_res;           /* its response, being built */
typedef struct bgs_app bgs_app;           /* the loaded plugin instance */
typedef struct bgs_task_ctx bgs_task_ctx; /* one run of a task */
typedef struct bgs_deferred bgs_deferred; /* a response answered later */

/* A route handler.  Return 0 when the response is the one to send (any
 * status, 4xx included); anything else answers 500 and discards the
 * tasks attached to the response and the route's own tasks. */
typedef int (*bgs_handler_fn)(bgs_req *req, bgs_res *res);

/* A named task.  payload/len are a private copy made when the task was
 * attached.  Return 0 on success; non-zero is a failure that is retried
 * per the task's max_attempts. */
typedef int (*bgs_task_fn)(bgs_task_ctx *ctx, const void *payload, size_t len);

/* An ad hoc (in-process only) task: a function and its argument.  It is
 * run once; free_fn(arg), when not NULL, runs after it in every case
 * (also when the task is discarded or cancelled). */
typedef int (*bgs_adhoc_fn)(bgs_task_ctx *ctx, void *arg);
typedef void (*bgs_free_fn)(void *arg);

/* Services: create returns the instance (NULL is a failure); destroy
 * releases it.  arg is the pointer given at registration. */
typedef void *(*bgs_service_create_fn)(void *arg);
typedef void (*bgs_service_destroy_fn)(void *instance, void *arg);

/* ------------------------------------------------------------------ */
/* Constants                                                           */
/* ------------------------------------------------------------------ */

/* How the tasks attached to one response run. */
#define BGS_SEQUENTIAL 0u /* attach order; a failure skips the rest */
#define BGS_CONCURRENT 1u /* all at once; failures are independent */

/* bgs_task_def.flags */
#define BGS_TASK_DELIVERED_ONLY 0x1u /* skip if the client aborted */
#define BGS_TASK_RUN_AT_START 0x2u   /* periodic: first run at once */
#define BGS_TASK_NO_INLINE 0x4u      /* always on a worker thread, never inline
                                        on the HTTP thread however brief its
                                        runs (docs/tasks.md); servers before
                                        inline runs ignore it */

/* Service lifetimes */
#define BGS_SINGLETON 1u /* created at first lookup, destroyed at stop */
#define BGS_SCOPED 2u    /* one per request or task run */
#define BGS_TRANSIENT 3u /* new at every lookup, destroyed at scope end */

/* Log levels */
#define BGS_LOG_DEBUG 0u
#define BGS_LOG_INFO 1u
#define BGS_LOG_WARN 2u
#define BGS_LOG_ERROR 3u

/* ------------------------------------------------------------------ */
/* Tables a plugin provides                                            */
/* ------------------------------------------------------------------ */

/* A task run after every response the route's handler produced (any
 * status), with a fixed payload.  Its queue capacity is taken before the
 * handler runs: a full queue answers 503 without calling the handler.  A
 * failing handler (non-zero: 500) discards it; HEAD requests run none. */
typedef struct bgs_route_task {
    const char *name;     /* a name from the task table */
    const void *payload;  /* may be NULL when payload_len is 0 */
    uint64_t payload_len;
} bgs_route_task;

typedef struct bgs_route {
    const char *method;     /* GET HEAD POST PUT PATCH DELETE OPTIONS */
    const char *path;       /* "/users/{id}": literal or {param} segments */
    bgs_handler_fn handler;
    const bgs_route_task *tasks; /* route-level tasks, or NULL */
    uint32_t task_count;
    uint32_t task_mode;     /* BGS_SEQUENTIAL or BGS_CONCURRENT: the mode of the
                               response's one task group (docs/tasks.md) */
} bgs_route;

typedef struct bgs_task_def {
    const char *name;          /* unique within the plugin */
    bgs_task_fn fn;
    uint32_t max_attempts;     /* 0 or 1: no retry */
    uint32_t backoff_base_ms;  /* 0: 100 ms; doubled each retry, jittered */
    uint32_t backoff_cap_ms;   /* 0: 30000 ms */
    uint32_t max_concurrency;  /* 0: no cap on runs of this name at once */
    uint32_t every_ms;         /* non-zero: periodic with this interval */
    uint32_t timeout_ms;       /* non-zero: cancellation flag set after */
    uint32_t flags;            /* BGS_TASK_* */
} bgs_task_def;

struct bgs_host_api;

typedef struct bgs_plugin {
    /* Header: never moves. */
    uint32_t magic;            /* BGS_PLUGIN_MAGIC */
    uint32_t struct_size;      /* sizeof(bgs_plugin) as the plugin saw it */
    uint32_t abi_major;        /* BGS_ABI_MAJOR */
    uint32_t abi_minor;        /* BGS_ABI_MINOR */
    /* ABI 1.0 */
    const char *name;
    const char *version;
    const bgs_route *routes;
    uint32_t route_count;
    uint32_t route_size;       /* sizeof(bgs_route) */
    const bgs_task_def *tasks;
    uint32_t task_count;
    uint32_t task_size;        /* sizeof(bgs_task_def) */
    uint32_t route_task_size;  /* sizeof(bgs_route_task) */
    uint32_t reserved0;        /* zero; keeps the pointers below aligned */
    /* Called once after loading, before serving.  Return 0, or non-zero
     * after bgs_app_fail() to refuse to start with that message. */
    int (*start)(bgs_app *app);
    /* Called once when the app is retired (shutdown or reload). */
    void (*stop)(bgs_app *app);
} bgs_plugin;

/* The size of the 1.0 descriptor: the smallest the server accepts. */
#define BGS_PLUGIN_SIZE_1_0 ((uint32_t)(offsetof(bgs_plugin, stop) + sizeof(void (*)(void))))

/* ------------------------------------------------------------------ */
/* The host API table                                                  */
/* ------------------------------------------------------------------ */

#if defined(__GNUC__) || defined(__clang__)
#define BGS__PRINTF(f, a) __attribute__((format(printf, f, a)))
#define BGS__VPRINTF(f) __attribute__((format(printf, f, 0)))
#else
#define BGS__PRINTF(f, a)
#define BGS__VPRINTF(f)
#endif

/*
 * The contract, slot by slot.  Unless a slot says otherwise:
 *  - Handles: see "Handles and how long they live" at the top.  A NULL
 *    handle gives BGS_EINVAL, an ended one (or one of another thread)
 *    BGS_ESTATE; slots returning a pointer return NULL then, slots
 *    returning nothing do nothing.  Each such call prints one warning.
 *  - Strings passed in are read during the call only (copied if kept);
 *    a NULL string where a name is needed is BGS_EINVAL (NULL for
 *    pointer slots).
 *  - A pointer/length pair with a NULL pointer and a non-zero length is
 *    BGS_EINVAL; with length 0 the pointer may be NULL.
 *  - id_out may be NULL; it is written only on success.
 *  - Threads: req_* and res_* only on the thread running the handler,
 *    while it runs; task_* only on the thread running the task, while it
 *    runs; deferred_* and app_* (after start) on any thread.
 */
typedef struct bgs_host_api {
    uint32_t struct_size;
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t reserved0;

    /* ---- Request: handler thread, until the handler returns.  Returned
     * strings belong to the request and live until the handler returns.
     * Lookups of something absent return NULL (not a misuse). */
    const char *(*req_method)(bgs_req *req);        /* "GET", ... */
    const char *(*req_path)(bgs_req *req);          /* decoded; NULL if malformed */
    const char *(*req_param)(bgs_req *req, const char *name); /* {name} */
    const char *(*req_query)(bgs_req *req, const char *name); /* decoded, first */
    const char *(*req_header)(bgs_req *req, const char *name); /* any case */
    /* The body, or NULL when empty; *len (len may be NULL) gets its
     * length, 0 for a refused handle. */
    const void *(*req_body)(bgs_req *req, size_t *len);
    const char *(*req_remote_addr)(bgs_req *req);   /* "127.0.0.1" */
    const char *(*req_id)(bgs_req *req);            /* as in X-Request-Id */
    bgs_app *(*req_app)(bgs_req *req);
    /* The instance of service name for this request (BGS_SCOPED: one per
     * request, destroyed after the response), or NULL: for a NULL or
     * unknown name with a misuse warning (BGS_EINVAL), for a create
     * function that returned NULL with an error line. */
    void *(*req_service)(bgs_req *req, const char *name);
    /* A log line tagged with the request id; logged (tagged "-") even
     * when the handle is refused.  level: BGS_LOG_*. */
    void (*req_log)(bgs_req *req, uint32_t level, const char *fmt, ...) BGS__PRINTF(3, 4);

    /* ---- Response: handler thread, until the handler returns.  Results:
     * 0, BGS_EINVAL (bad argument, NULL handle) or BGS_ESTATE (ended
     * handle, other thread), and the codes a slot names. */
    int (*res_status)(bgs_res *res, uint32_t status); /* 100-599, default 200 */
    /* Adds a header (Content-Type replaces the type).  BGS_EHEADER for a
     * name that is not a token or a value with CR/LF; BGS_EINVAL for
     * Content-Length, Transfer-Encoding and Connection (bgserve's). */
    int (*res_header)(bgs_res *res, const char *name, const char *value);
    int (*res_content_type)(bgs_res *res, const char *type); /* BGS_EHEADER */
    int (*res_body)(bgs_res *res, const void *data, size_t len); /* replaces */
    int (*res_printf)(bgs_res *res, const char *fmt, ...) BGS__PRINTF(2, 3); /* appends */
    /* Attach task name, run after the response is sent (docs/tasks.md).
     * BGS_ENOTASK: no such task (a bug: answer 500); BGS_EFULL: the queue
     * is full (load: answer 503); BGS_ESHUTDOWN: the server is stopping. */
    int (*res_task)(bgs_res *res, const char *name, const void *payload,
                    size_t len, uint64_t *id_out);
    /* Attach an ad hoc task (fn NULL: BGS_EINVAL).  BGS_EFULL,
     * BGS_ESHUTDOWN as res_task; then free_fn is not called: arg is
     * still the caller's. */
    int (*res_task_fn)(bgs_res *res, bgs_adhoc_fn fn, void *arg,
                       bgs_free_fn free_fn, uint64_t *id_out);
    int (*res_task_mode)(bgs_res *res, uint32_t mode); /* BGS_SEQUENTIAL/CONCURRENT */
    /* 202 with Location: /_bgserve/tasks/ID (task_id 0: BGS_EINVAL). */
    int (*res_accepted)(bgs_res *res, uint64_t task_id);

    /* ---- App: any thread, while the generation lives; registration
     * only in the start hook.  A NULL app is BGS_EINVAL; a retired
     * generation's app (say, one handed over) or another kind of handle
     * is BGS_ESTATE (app_data returns NULL, the void ones do nothing). */
    /* In the start hook: the message the server prints when start
     * returns non-zero. */
    void (*app_fail)(bgs_app *app, const char *fmt, ...) BGS__PRINTF(2, 3);
    void (*app_set_data)(bgs_app *app, void *data);
    void *(*app_data)(bgs_app *app);
    /* Start hook only (else BGS_ESTATE).  BGS_EINVAL for an empty or
     * duplicate name, no create function, or an unknown lifetime. */
    int (*app_service)(bgs_app *app, const char *name, uint32_t lifetime,
                       bgs_service_create_fn create,
                       bgs_service_destroy_fn destroy, void *arg);
    /* Start hook only (else BGS_ESTATE).  BGS_ENOTASK for an unknown
     * task, BGS_EINVAL for interval 0. */
    int (*app_periodic)(bgs_app *app, const char *task, uint32_t interval_ms,
                        const void *payload, size_t len, uint32_t flags);
    void (*app_log)(bgs_app *app, uint32_t level, const char *fmt, ...) BGS__PRINTF(3, 4);

    /* ---- Task context: the task's thread, until the task function
     * returns.  A refused handle gives 0 / NULL / nothing, and
     * task_cancelled 1 (stop). */
    uint64_t (*task_id)(bgs_task_ctx *ctx);
    const char *(*task_name)(bgs_task_ctx *ctx);  /* lives as long as ctx */
    uint32_t (*task_attempt)(bgs_task_ctx *ctx); /* 1 for the first run */
    int (*task_cancelled)(bgs_task_ctx *ctx);    /* non-zero: stop soon */
    /* The failure message recorded for this attempt (the last call wins). */
    void (*task_error)(bgs_task_ctx *ctx, const char *fmt, ...) BGS__PRINTF(2, 3);
    /* The result an awaiting response answers with (status 100-599, else
     * BGS_EINVAL); type and data are copied. */
    int (*task_result)(bgs_task_ctx *ctx, uint32_t status, const char *type,
                       const void *data, size_t len);
    const char *(*task_request_id)(bgs_task_ctx *ctx); /* NULL if none */
    bgs_app *(*task_app)(bgs_task_ctx *ctx);
    void *(*task_service)(bgs_task_ctx *ctx, const char *name); /* as req_service */
    void (*task_log)(bgs_task_ctx *ctx, uint32_t level, const char *fmt, ...) BGS__PRINTF(3, 4);

    /* ---- Deferred responses.  res_defer (handler thread) returns a
     * handle the plugin completes later from any thread, exactly once,
     * with deferred_complete or deferred_release; the connection holds no
     * HTTP thread meanwhile.  timeout_ms 0 means 30 s; past it the client
     * gets 504 and the next complete returns BGS_ESTATE (and ends the
     * handle).  res_defer returns NULL for a refused response handle or
     * when the response is deferred already. */
    bgs_deferred *(*res_defer)(bgs_res *res, uint32_t timeout_ms);
    /* 0: the client gets status/type/body (copied; type NULL: text/plain).
     * BGS_EINVAL, handle still valid: status outside 100-599, NULL body
     * with a length, CR/LF in type.  BGS_ESTATE: the deadline or shutdown
     * came first (the handle ends), or the handle had ended already
     * (completed or released before). */
    int (*deferred_complete)(bgs_deferred *d, uint32_t status, const char *type,
                             const void *body, size_t len);
    void (*deferred_release)(bgs_deferred *d); /* give up: client gets 500 */
    /* Queue a task now (handler thread), without waiting for the response
     * to be sent.  Codes as res_task. */
    int (*req_enqueue)(bgs_req *req, const char *name, const void *payload,
                       size_t len, uint64_t *id_out);
    /* Queue a task now and answer with its result (bgs_task_result) when
     * it succeeds, 500 with its error when it fails, 504 at the deadline.
     * Codes as res_task; BGS_ESTATE when the response is deferred already. */
    int (*res_await)(bgs_res *res, const char *name, const void *payload,
                     size_t len, uint32_t timeout_ms, uint64_t *id_out);

    /* Reload hand-over: one pointer that survives `bgserve --reload`.
     * A generation offers state with app_handover_set (any time); the next
     * generation's start hook takes it with app_handover_get (NULL on the
     * first load, or when nothing was offered, or outside the start hook).
     * The old generation's stop hook asks app_handover_taken: non-zero
     * means the new generation owns the state now and the stop hook must
     * not free it. */
    void (*app_handover_set)(bgs_app *app, void *state);
    void *(*app_handover_get)(bgs_app *app);
    int (*app_handover_taken)(bgs_app *app);
    /* ABI 1.0 ends here.  Append only. */

    /* ---- ABI 1.1: va_list forms of the six variadic slots, so a plugin
     * can forward its own va_list.  Same contract as the variadic slot;
     * ap is used once (va_copy it to use it again). */
    void (*req_logv)(bgs_req *req, uint32_t level, const char *fmt, va_list ap) BGS__VPRINTF(3);
    int (*res_vprintf)(bgs_res *res, const char *fmt, va_list ap) BGS__VPRINTF(2);
    void (*app_failv)(bgs_app *app, const char *fmt, va_list ap) BGS__VPRINTF(2);
    void (*app_logv)(bgs_app *app, uint32_t level, const char *fmt, va_list ap) BGS__VPRINTF(3);
    void (*task_errorv)(bgs_task_ctx *ctx, const char *fmt, va_list ap) BGS__VPRINTF(2);
    void (*task_logv)(bgs_task_ctx *ctx, uint32_t level, const char *fmt, va_list ap) BGS__VPRINTF(3);
    /* ABI 1.1 ends here.  Append only. */
} bgs_host_api;

/* ------------------------------------------------------------------ */
/* Defining a plugin                                                   */
/* ------------------------------------------------------------------ */

#if defined(__GNUC__) || defined(__clang__)
#define BGS_EXPORT __attribute__((visibility("default")))
#define BGS_HIDDEN __attribute__((visibility("hidden")))
#else
#define BGS_EXPORT
#define BGS_HIDDEN
#endif

/* The host table, set by bgserve_plugin_v1 before anything else runs.
 * Every file of a plugin may use the bgs_* macros below. */
extern BGS_HIDDEN const bgs_host_api *bgs__api;

/* The entry point's type, for the loader. */
typedef const bgs_plugin *(*bgs_plugin_entry_fn)(const bgs_host_api *api);

#define BGS_COUNT(array) ((uint32_t)(sizeof(array) / sizeof((array)[0])))

/*
 * BGS_PLUGIN(.name = "hello", .routes = routes,
 *            .route_count = BGS_COUNT(routes), ...)
 * defines the descriptor and the one exported symbol.  Use it once per
 * plugin, at file scope.
 */
#define BGS_PLUGIN(...)                                                    \
    BGS_HIDDEN const bgs_host_api *bgs__api;                               \
    static const bgs_plugin bgs__descriptor = {                            \
        .magic = BGS_PLUGIN_MAGIC,                                         \
        .struct_size = (uint32_t)sizeof(bgs_plugin),                       \
        .abi_major = BGS_ABI_MAJOR,                                        \
        .abi_minor = BGS_ABI_MINOR,                                        \
        .route_size = (uint32_t)sizeof(bgs_route),                         \
        .task_size = (uint32_t)sizeof(bgs_task_def),                       \
        .route_task_size = (uint32_t)sizeof(bgs_route_task),               \
        __VA_ARGS__};                                                      \
    BGS_EXPORT const bgs_plugin *bgserve_plugin_v1(const bgs_host_api *api); \
    BGS_EXPORT const bgs_plugin *bgserve_plugin_v1(const bgs_host_api *api) \
    {                                                                      \
        bgs__api = api;                                                    \
        return &bgs__descriptor;                                           \
    }

/* Route table helpers. */
#define BGS_ROUTE(m, p, h) {.method = (m), .path = (p), .handler = (h)}
#define BGS_GET(p, h) BGS_ROUTE("GET", p, h)
#define BGS_POST(p, h) BGS_ROUTE("POST", p, h)
#define BGS_PUT(p, h) BGS_ROUTE("PUT", p, h)
#define BGS_PATCH(p, h) BGS_ROUTE("PATCH", p, h)
#define BGS_DELETE(p, h) BGS_ROUTE("DELETE", p, h)

/* Calls through the host table, so plugin code reads like plain calls. */
#define bgs_req_method(r) (bgs__api->req_method(r))
#define bgs_req_path(r) (bgs__api->req_path(r))
#define bgs_req_param(r, n) (bgs__api->req_param((r), (n)))
#define bgs_req_query(r, n) (bgs__api->req_query((r), (n)))
#define bgs_req_header(r, n) (bgs__api->req_header((r), (n)))
#define bgs_req_body(r, lenp) (bgs__api->req_body((r), (lenp)))
#define bgs_req_remote_addr(r) (bgs__api->req_remote_addr(r))
#define bgs_req_id(r) (bgs__api->req_id(r))
#define bgs_req_app(r) (bgs__api->req_app(r))
#define bgs_req_service(r, n) (bgs__api->req_service((r), (n)))
#define bgs_req_log(r, ...) (bgs__api->req_log((r), BGS_LOG_INFO, __VA_ARGS__))
#define bgs_req_log_at(r, lvl, ...) (bgs__api->req_log((r), (lvl), __VA_ARGS__))

#define bgs_res_status(r, s) (bgs__api->res_status((r), (s)))
#define bgs_res_header(r, n, v) (bgs__api->res_header((r), (n), (v)))
#define bgs_res_content_type(r, t) (bgs__api->res_content_type((r), (t)))
#define bgs_res_body(r, d, n) (bgs__api->res_body((r), (d), (n)))
#define bgs_res_printf(r, ...) (bgs__api->res_printf((r), __VA_ARGS__))
#define bgs_res_task(r, name, p, n, idp) (bgs__api->res_task((r), (name), (p), (n), (idp)))
#define bgs_res_task_fn(r, fn, arg, freefn, idp) (bgs__api->res_task_fn((r), (fn), (arg), (freefn), (idp)))
#define bgs_res_task_mode(r, m) (bgs__api->res_task_mode((r), (m)))
#define bgs_res_accepted(r, id) (bgs__api->res_accepted((r), (id)))

#define bgs_app_fail(a, ...) (bgs__api->app_fail((a), __VA_ARGS__))
#define bgs_app_set_data(a, d) (bgs__api->app_set_data((a), (d)))
#define bgs_app_data(a) (bgs__api->app_data(a))
#define bgs_app_service(a, n, l, c, d, arg) (bgs__api->app_service((a), (n), (l), (c), (d), (arg)))
#define bgs_app_periodic(a, t, ms, p, n, f) (bgs__api->app_periodic((a), (t), (ms), (p), (n), (f)))
#define bgs_app_log(a, ...) (bgs__api->app_log((a), BGS_LOG_INFO, __VA_ARGS__))
#define bgs_app_log_at(a, lvl, ...) (bgs__api->app_log((a), (lvl), __VA_ARGS__))

#define bgs_task_id(c) (bgs__api->task_id(c))
#define bgs_task_name(c) (bgs__api->task_name(c))
#define bgs_task_attempt(c) (bgs__api->task_attempt(c))
#define bgs_task_cancelled(c) (bgs__api->task_cancelled(c))
#define bgs_task_error(c, ...) (bgs__api->task_error((c), __VA_ARGS__))
#define bgs_task_result(c, s, t, d, n) (bgs__api->task_result((c), (s), (t), (d), (n)))
#define bgs_task_request_id(c) (bgs__api->task_request_id(c))
#define bgs_task_app(c) (bgs__api->task_app(c))
#define bgs_task_service(c, n) (bgs__api->task_service((c), (n)))
#define bgs_task_log(c, ...) (bgs__api->task_log((c), BGS_LOG_INFO, __VA_ARGS__))
#define bgs_task_log_at(c, lvl, ...) (bgs__api->task_log((c), (lvl), __VA_ARGS__))

#define bgs_res_defer(r, ms) (bgs__api->res_defer((r), (ms)))
#define bgs_deferred_complete(d, s, t, b, n) (bgs__api->deferred_complete((d), (s), (t), (b), (n)))
#define bgs_deferred_release(d) (bgs__api->deferred_release(d))
#define bgs_req_enqueue(r, name, p, n, idp) (bgs__api->req_enqueue((r), (name), (p), (n), (idp)))
#define bgs_res_await(r, name, p, n, ms, idp) (bgs__api->res_await((r), (name), (p), (n), (ms), (idp)))

#define bgs_req_logv(r, lvl, fmt, ap) (bgs__api->req_logv((r), (lvl), (fmt), (ap)))
#define bgs_res_vprintf(r, fmt, ap) (bgs__api->res_vprintf((r), (fmt), (ap)))
#define bgs_app_failv(a, fmt, ap) (bgs__api->app_failv((a), (fmt), (ap)))
#define bgs_app_logv(a, lvl, fmt, ap) (bgs__api->app_logv((a), (lvl), (fmt), (ap)))
#define bgs_task_errorv(c, fmt, ap) (bgs__api->task_errorv((c), (fmt), (ap)))
#define bgs_task_logv(c, lvl, fmt, ap) (bgs__api->task_logv((c), (lvl), (fmt), (ap)))

#define bgs_app_handover_set(a, p) (bgs__api->app_handover_set((a), (p)))
#define bgs_app_handover_get(a) (bgs__api->app_handover_get(a))
#define bgs_app_handover_taken(a) (bgs__api->app_handover_taken(a))

/* Convenience: status, text/plain type and body in one call. */
static inline int bgs_res_text(bgs_res *res, uint32_t status, const char *text)
{
    int rc = bgs_res_status(res, status);
    if (rc == 0)
        rc = bgs_res_content_type(res, "text/plain; charset=utf-8");
    if (rc == 0)
        rc = bgs_res_printf(res, "%s", text);
    return rc;
}

#ifdef __cplusplus
}
#endif

#endif /* BGSERVE_H */
