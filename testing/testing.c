/*
 * testing.c - the testing library (bgserve/testing.h): a plugin loaded in
 * process with a task engine of its own, requests dispatched without a
 * socket, task records read back, the clock moved.
 *
 * A client owns: its task engine (tasks_new: workers, records, and the
 * scheduler whose clock bgst_advance moves), its generation slot (the
 * "current generation" its requests are dispatched to, generation_slot_new), a
 * service scope for bgst_service, and the waiters of its requests'
 * deferred answers.  Nothing of one client is reachable from another:
 * that is what makes several open at once independent.  What the process
 * shares is set up once (init_once): the log (quiet: no access lines),
 * the host API table every generation is given (generation_setup), the
 * deferred-response room.
 *
 * Threads: the caller's thread runs everything here (one thread at a
 * time per client, testing.h).  Other threads touch only a waiter: the
 * deferred answer's resume function runs on whichever thread completed
 * it (a worker, the client's timer thread), under the waiter's own lock.
 * Waiting for tasks polls the engine's records (tasks_record_visit takes
 * the records lock) every millisecond until the deadline.
 *
 * Exported: only the bgst_ functions (API below); the library is built
 * with hidden visibility and its archive's other symbols are made local
 * (Makefile), so the server's rooms inside it never clash with a test's
 * own names.
 */
#include <bgserve/testing.h>

#include "deferred.h"
#include "dispatch.h"
#include "generation.h"
#include "hostapi.h"
#include "log.h"
#include "request.h"
#include "response.h"
#include "sched.h"
#include "services.h"
#include "tasks.h"
#include "util.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define API __attribute__((visibility("default")))

#define DEFAULT_WORKERS 4u
#define DEFAULT_TIMEOUT_MS 30000u
#define POLL_NS 1000000L
#define MAX_TASK_IDS 256

/* A request's deferred answer is final (the resume function ran). */
typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;         /* CLOCK_MONOTONIC */
    int resumed;               /* mu */
    struct waiter *next;       /* the client's orphans */
} waiter;

struct bgst_client {
    int failed;                /* bgst_open failed: every call is BGST_ESTATE */
    char err[2048];            /* the last failure's message */
    char *path;
    tasks_engine *engine;
    generation_slot *slot;
    services_scope *scope;     /* bgst_service's */
    int skip_delays;
    unsigned serial;           /* this client's number, in request ids */
    uint64_t requests;         /* requests sent */
    waiter *orphans;           /* waiters of requests that timed out: a late
                                  resume may still touch them until close */
};

typedef struct hdr {
    char *name, *value;
} hdr;

struct bgst_response {
    unsigned status;
    hdr *headers;
    size_t nheaders;
    char *body;                /* NUL-terminated */
    size_t body_len;
    uint64_t *tasks;
    size_t ntasks;
};

static atomic_uint next_serial = 1;

/* ---- the process's part ----------------------------------------------------------- */

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_once(void)
{
    /* Plugin lines and bgserve's warnings to stderr, no access lines. */
    log_init(&(log_config){.color = 0, .quiet = 1, .own_min_level = BGS_LOG_WARN});
    generation_setup(&(generation_deps){.host_api = hostapi_table(), .tasks = NULL});
    deferred_start();
}

/* ---- errors ------------------------------------------------------------------------- */

__attribute__((format(printf, 3, 4)))
static int fail(bgst_client *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return code;
}

static int usable(bgst_client *c)
{
    if (c == NULL)
        return 0;
    if (c->failed) {
        fail(c, BGST_ESTATE, "bgst: this client failed to open (%s): close it with bgst_close",
             c->path ? c->path : "?");
        return 0;
    }
    c->err[0] = '\0';
    return 1;
}

API const char *bgst_code_name(int code)
{
    switch (code) {
    case BGST_OK: return "BGST_OK";
    case BGST_EINVAL: return "BGST_EINVAL";
    case BGST_ELOAD: return "BGST_ELOAD";
    case BGST_ESTART: return "BGST_ESTART";
    case BGST_ETIMEOUT: return "BGST_ETIMEOUT";
    case BGST_ENOTFOUND: return "BGST_ENOTFOUND";
    case BGST_ESTATE: return "BGST_ESTATE";
    default: return "BGST_E?";
    }
}

API const char *bgst_version(void)
{
    return BGST_VERSION;
}

API const char *bgst_errmsg(const bgst_client *c)
{
    if (c == NULL)
        return "no client (bgst_open was given a NULL out pointer?)";
    return c->err;
}

/* ---- open and close ----------------------------------------------------------------- */

API int bgst_open(bgst_client **out, const char *path, const bgst_options *opts)
{
    pthread_once(&once, init_once);
    bgst_client *c = xcalloc(1, sizeof *c);
    bgst_options o = opts ? *opts : (bgst_options){0};
    int rc = BGST_OK;
    c->serial = atomic_fetch_add(&next_serial, 1);
    c->skip_delays = o.skip_delays;
    c->slot = generation_slot_new();
    c->path = path ? xstrdup(path) : NULL;
    if (out == NULL) {
        rc = BGST_EINVAL;
        goto failed;
    }
    if (path == NULL) {
        rc = fail(c, BGST_EINVAL, "bgst_open: path is NULL; give the plugin's .so, "
                  "e.g. \"build/myapp.so\"");
        goto failed;
    }
    c->engine = tasks_new(&(tasks_config){.workers = o.workers ? o.workers : DEFAULT_WORKERS,
                                          .keep = o.keep ? o.keep : TASKS_DEFAULT_KEEP});
    if (c->engine == NULL) {
        rc = fail(c, BGST_ESTART, "bgst_open: cannot start the task threads for '%s' "
                  "(out of threads? close the clients you no longer use)", path);
        goto failed;
    }
    generation *g = NULL;
    if (generation_create_for(c->engine, path, 1, 0, &g, c->err, sizeof c->err) != 0) {
        rc = BGST_ELOAD; /* c->err holds the server's own words */
        goto failed;
    }
    generation_slot_set(c->slot, g);
    generation_activate(g); /* its periodic tasks run on this client's clock */
    *out = c;
    return BGST_OK;
failed:
    c->failed = 1;
    if (out)
        *out = c;
    else
        bgst_close(c);
    return rc;
}

API void bgst_close(bgst_client *c)
{
    if (c == NULL)
        return;
    services_scope_end(c->scope);
    c->scope = NULL;
    if (c->engine) {
        tasks_shutdown(c->engine, 0);
        deferred_stop_for(tasks_sched(c->engine));
    }
    /* The stop hook runs here, when the slot's reference was the last
     * (the tasks holding one are final now). */
    generation_slot_abandon(c->slot);
    generation_slot_free(c->slot);
    tasks_free(c->engine);
    while (c->orphans) {
        waiter *w = c->orphans;
        c->orphans = w->next;
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
    }
    free(c->path);
    free(c);
}

/* ---- requests ----------------------------------------------------------------------- */

/* The request's headers: the caller's, then the defaults. */
typedef struct req_headers {
    const bgst_header *given;
    size_t ngiven;
    const char *ctype;   /* default Content-Type, or NULL */
    char length[24];     /* Content-Length, "" when no body */
} req_headers;

static const char *find_given(const req_headers *h, const char *name)
{
    for (size_t i = 0; i < h->ngiven; i++)
        if (h->given[i].name && util_strcaseeq(h->given[i].name, name))
            return h->given[i].value;
    return NULL;
}

static const char *header_fn(void *ctx, const char *name)
{
    const req_headers *h = ctx;
    const char *v = find_given(h, name);
    if (v)
        return v;
    if (util_strcaseeq(name, "Content-Type"))
        return h->ctype;
    if (util_strcaseeq(name, "Content-Length"))
        return h->length[0] ? h->length : NULL;
    if (util_strcaseeq(name, "Host"))
        return "localhost";
    return NULL;
}

static void resumed(void *ctx)
{
    waiter *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->resumed = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int check_request(bgst_client *c, const bgst_request *rq)
{
    if (rq == NULL || rq->target == NULL)
        return fail(c, BGST_EINVAL, "bgst_do: no target; give the path (and query), "
                    "like \"/notes?title=a%%20b\"");
    if (rq->target[0] != '/')
        return fail(c, BGST_EINVAL, "bgst_do: the target must start with '/' (got '%s')",
                    rq->target);
    const char *m = rq->method ? rq->method : "GET";
    if (*m == '\0')
        return fail(c, BGST_EINVAL, "bgst_do: empty method; use \"GET\", \"POST\"...");
    for (; *m; m++)
        if (*m < 'A' || *m > 'Z')
            return fail(c, BGST_EINVAL, "bgst_do: the method must be upper case letters, "
                        "like GET or POST (got '%s')", rq->method);
    if (rq->body == NULL && rq->body_len > 0)
        return fail(c, BGST_EINVAL, "bgst_do: body_len %zu with a NULL body", rq->body_len);
    if (rq->nheaders > 0 && rq->headers == NULL)
        return fail(c, BGST_EINVAL, "bgst_do: nheaders %zu with NULL headers", rq->nheaders);
    for (size_t i = 0; i < rq->nheaders; i++)
        if (rq->headers[i].name == NULL || rq->headers[i].value == NULL ||
            response_check_header(rq->headers[i].name, rq->headers[i].value) != 0)
            return fail(c, BGST_EINVAL, "bgst_do: header %zu ('%s'): the name must be a "
                        "token and the value must not hold CR, LF or NUL", i,
                        rq->headers[i].name ? rq->headers[i].name : "(null)");
    return BGST_OK;
}

static void add_hdr(bgst_response *r, const char *name, const char *value)
{
    r->headers = xrealloc(r->headers, (r->nheaders + 1) * sizeof *r->headers);
    r->headers[r->nheaders].name = xstrdup(name);
    r->headers[r->nheaders].value = xstrdup(value);
    r->nheaders++;
}

/* "12,13,14" into r->tasks. */
static void parse_task_ids(bgst_response *r, const char *list)
{
    for (const char *p = list; p && *p && r->ntasks < MAX_TASK_IDS;) {
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p)
            break;
        r->tasks = xrealloc(r->tasks, (r->ntasks + 1) * sizeof *r->tasks);
        r->tasks[r->ntasks++] = v;
        p = *end == ',' ? end + 1 : NULL;
    }
}

/* The answer as a client sees it: the response's headers, then the ones
 * the carrier adds (as http.c and bgserve request do). */
static bgst_response *collect(struct bgs_req *req, struct bgs_res *res, int head)
{
    bgst_response *r = xcalloc(1, sizeof *r);
    r->status = res->status;
    for (size_t i = 0; i < res->nheaders; i++) {
        add_hdr(r, res->headers[i].name, res->headers[i].value);
        if (util_strcaseeq(res->headers[i].name, "Bgserve-Tasks") && r->ntasks == 0)
            parse_task_ids(r, res->headers[i].value);
    }
    const char *type = res->untyped ? NULL : response_content_type(res);
    if (type)
        add_hdr(r, "Content-Type", type);
    char length[24];
    snprintf(length, sizeof length, "%zu", res->body_len);
    add_hdr(r, "Content-Length", length);
    add_hdr(r, "X-Request-Id", req->id);
    size_t len = 0;
    char *body = head ? NULL : response_take_body(res, &len);
    r->body = xmalloc(len + 1);
    if (len)
        memcpy(r->body, body, len);
    r->body[len] = '\0';
    r->body_len = len;
    free(body);
    return r;
}

/* Wait (w->mu held) for the resume, until deadline_us.  0 or -1. */
static int wait_resumed(waiter *w, uint64_t deadline_us)
{
    while (!w->resumed) {
        if (util_now_us() >= deadline_us)
            return -1;
        struct timespec ts = util_mono_timespec(deadline_us);
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    }
    return 0;
}

API int bgst_do(bgst_client *c, const bgst_request *rq, bgst_response **out)
{
    if (out)
        *out = NULL;
    if (!usable(c))
        return c ? BGST_ESTATE : BGST_EINVAL;
    if (out == NULL)
        return fail(c, BGST_EINVAL, "bgst_do: out is NULL; pass &response");
    int rc = check_request(c, rq);
    if (rc != BGST_OK)
        return rc;
    const char *method = rq->method ? rq->method : "GET";
    unsigned timeout_ms = rq->timeout_ms ? rq->timeout_ms : DEFAULT_TIMEOUT_MS;
    uint64_t t0 = util_now_us();
    uint64_t deadline = t0 + (uint64_t)timeout_ms * 1000u;

    req_headers h = {.given = rq->headers, .ngiven = rq->nheaders};
    if (rq->body) {
        h.ctype = "application/x-www-form-urlencoded";
        snprintf(h.length, sizeof h.length, "%zu", rq->body_len);
    }
    waiter *w = xcalloc(1, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    util_cond_init_mono(&w->cv);

    const dispatch_env env = {.introspection = 1, .plugin_path = c->path, .tasks = c->engine,
                              .slot = c->slot};
    struct bgs_req req;
    struct bgs_res res;
    char rid[48];
    snprintf(rid, sizeof rid, "bgst%u-%llu", c->serial, (unsigned long long)++c->requests);
    int how = dispatch_local_request(
        &env,
        &(dispatch_local){.target = rq->target, .id = rid, .body = rq->body,
                          .body_len = rq->body ? rq->body_len : 0,
                          .carrier = "the testing library",
                          .origin = {.method = method, .header_fn = header_fn, .header_ctx = &h,
                                     .resume_fn = resumed, .resume_ctx = w,
                                     .remote = "127.0.0.1"}},
        &req, &res);
    while (how == DISPATCH_SUSPEND) {
        dispatch_arm(&res);
        pthread_mutex_lock(&w->mu);
        int late = wait_resumed(w, deadline) != 0;
        w->resumed = 0;
        pthread_mutex_unlock(&w->mu);
        if (late) {
            /* Not answered: the request ends undelivered (its deferred
             * handle is gone for the plugin: BGS_ESTATE), and its waiter
             * stays until close for a resume already on its way. */
            dispatch_finish(&req, &res, 0, 0, util_now_us() - t0);
            request_free(&req);
            response_free(&res);
            w->next = c->orphans;
            c->orphans = w;
            return fail(c, BGST_ETIMEOUT, "bgst_do: %s %s: no answer within %u ms (a "
                        "deferred response never completed; raise bgst_request.timeout_ms "
                        "or see why the plugin did not complete it)", method, rq->target,
                        timeout_ms);
        }
        how = dispatch_resumed(&env, &req, &res);
    }
    *out = collect(&req, &res, strcmp(method, "HEAD") == 0);
    dispatch_finish(&req, &res, 1, 1, util_now_us() - t0);
    request_free(&req);
    response_free(&res);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
    return BGST_OK;
}

API int bgst_send(bgst_client *c, const char *method, const char *target, const char *body,
                  bgst_response **out)
{
    bgst_request rq = {.method = method, .target = target, .body = body,
                       .body_len = body ? strlen(body) : 0};
    return bgst_do(c, &rq, out);
}

API void bgst_response_free(bgst_response *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    free(r->body);
    free(r->tasks);
    free(r);
}

API unsigned bgst_status(const bgst_response *r)
{
    return r ? r->status : 0;
}

API const char *bgst_body(const bgst_response *r, size_t *len)
{
    if (len)
        *len = r ? r->body_len : 0;
    return r ? r->body : "";
}

API const char *bgst_header_get(const bgst_response *r, const char *name)
{
    if (r == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < r->nheaders; i++)
        if (util_strcaseeq(r->headers[i].name, name))
            return r->headers[i].value;
    return NULL;
}

API size_t bgst_header_count(const bgst_response *r)
{
    return r ? r->nheaders : 0;
}

API int bgst_header_at(const bgst_response *r, size_t i, const char **name, const char **value)
{
    if (r == NULL || i >= r->nheaders)
        return BGST_EINVAL;
    if (name)
        *name = r->headers[i].name;
    if (value)
        *value = r->headers[i].value;
    return BGST_OK;
}

API size_t bgst_response_task_count(const bgst_response *r)
{
    return r ? r->ntasks : 0;
}

API uint64_t bgst_response_task(const bgst_response *r, size_t i)
{
    return r && i < r->ntasks ? r->tasks[i] : 0;
}

/* ---- tasks ---------------------------------------------------------------------------- */

/* Under the records lock: copy, nothing else. */
static void copy_record(void *arg, const tasks_record *rec)
{
    bgst_task *t = arg;
    t->id = rec->id;
    snprintf(t->name, sizeof t->name, "%s", rec->adhoc || rec->name == NULL ? "" : rec->name);
    t->state = (int)rec->state;
    t->state_name = tasks_state_name(rec->state);
    t->final = rec->state >= TASKS_SUCCEEDED;
    t->attempts = rec->attempts;
    t->max_attempts = rec->max_attempts;
    t->error = rec->error ? xstrdup(rec->error) : NULL;
    snprintf(t->request_id, sizeof t->request_id, "%s", rec->request_id ? rec->request_id : "");
    t->has_result = rec->has_result;
    t->result_status = rec->result_status;
    t->result_type = rec->result_type ? xstrdup(rec->result_type) : NULL;
    if (rec->result) {
        t->result = xmalloc(rec->result_len + 1);
        memcpy(t->result, rec->result, rec->result_len);
        ((char *)t->result)[rec->result_len] = '\0';
        t->result_len = rec->result_len;
    }
}

API void bgst_task_clear(bgst_task *t)
{
    if (t == NULL)
        return;
    free(t->error);
    free(t->result_type);
    free(t->result);
    memset(t, 0, sizeof *t);
}

static int get_task(bgst_client *c, uint64_t id, bgst_task *out)
{
    bgst_task_clear(out);
    if (tasks_record_visit(c->engine, id, copy_record, out) != 0)
        return fail(c, BGST_ENOTFOUND, "no task %llu in this client (unknown, or its record "
                    "was evicted: raise bgst_options.keep)", (unsigned long long)id);
    return BGST_OK;
}

API int bgst_task_get(bgst_client *c, uint64_t id, bgst_task *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!usable(c))
        return c ? BGST_ESTATE : BGST_EINVAL;
    if (out == NULL)
        return fail(c, BGST_EINVAL, "bgst_task_get: out is NULL; pass &task");
    return get_task(c, id, out);
}

/* skip_delays: when nothing runs or is ready, move the clock to the next
 * timer. */
static void maybe_jump(bgst_client *c)
{
    if (!c->skip_delays || tasks_busy(c->engine))
        return;
    sched *s = tasks_sched(c->engine);
    uint64_t due = sched_next_due(s), now = util_now_us();
    if (due > now)
        sched_advance(s, due - now);
}

static void nap(void)
{
    struct timespec ts = {0, POLL_NS};
    nanosleep(&ts, NULL);
}

/* Is task id final?  1, 0, or BGST_ENOTFOUND. */
static int is_final(bgst_client *c, uint64_t id)
{
    bgst_task t = {0};
    int rc = get_task(c, id, &t);
    int fin = t.final;
    bgst_task_clear(&t);
    return rc != BGST_OK ? rc : fin;
}

/* Poll until every id is final or the deadline. */
static int wait_ids(bgst_client *c, const uint64_t *ids, size_t n, unsigned timeout_ms)
{
    uint64_t deadline = util_now_us() + (uint64_t)timeout_ms * 1000u;
    size_t done = 0;
    for (;;) {
        while (done < n) {
            int f = is_final(c, ids[done]);
            if (f < 0)
                return f;
            if (!f)
                break;
            done++;
        }
        if (done == n)
            return BGST_OK;
        if (util_now_us() >= deadline)
            return fail(c, BGST_ETIMEOUT, "task %llu is not final after %u ms (still queued, "
                        "running or waiting to retry; raise the timeout, or open the client "
                        "with skip_delays / call bgst_advance for backoff and delays)",
                        (unsigned long long)ids[done], timeout_ms);
        maybe_jump(c);
        nap();
    }
}

API int bgst_task_wait(bgst_client *c, uint64_t id, unsigned timeout_ms, bgst_task *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!usable(c))
        return c ? BGST_ESTATE : BGST_EINVAL;
    if (out == NULL)
        return fail(c, BGST_EINVAL, "bgst_task_wait: out is NULL; pass &task");
    int rc = wait_ids(c, &id, 1, timeout_ms);
    if (rc == BGST_ENOTFOUND)
        return rc;
    char keep[sizeof c->err];
    snprintf(keep, sizeof keep, "%s", c->err); /* the timeout's message */
    int got = get_task(c, id, out);
    if (got != BGST_OK)
        return got;
    if (rc != BGST_OK)
        snprintf(c->err, sizeof c->err, "%s", keep);
    return rc;
}

API int bgst_response_wait(bgst_client *c, const bgst_response *r, unsigned timeout_ms)
{
    if (!usable(c))
        return c ? BGST_ESTATE : BGST_EINVAL;
    if (r == NULL)
        return fail(c, BGST_EINVAL, "bgst_response_wait: the response is NULL");
    return wait_ids(c, r->tasks, r->ntasks, timeout_ms);
}

API int bgst_idle_wait(bgst_client *c, unsigned timeout_ms)
{
    if (!usable(c))
        return c ? BGST_ESTATE : BGST_EINVAL;
    uint64_t deadline = util_now_us() + (uint64_t)timeout_ms * 1000u;
    size_t live;
    while ((live = tasks_live(c->engine)) > 0) {
        if (util_now_us() >= deadline)
            return fail(c, BGST_ETIMEOUT, "%zu task%s still not final after %u ms", live,
                        live == 1 ? "" : "s", timeout_ms);
        maybe_jump(c);
        nap();
    }
    return BGST_OK;
}

/* ---- time ------------------------------------------------------------------------------ */

API int bgst_advance(bgst_client *c, unsigned ms)
{
    if (!usable(c))
        return c ? BGST_ESTATE : BGST_EINVAL;
    sched_advance(tasks_sched(c->engine), (uint64_t)ms * 1000u);
    return BGST_OK;
}

API int bgst_run_next_timer(bgst_client *c, int *fired)
{
    if (fired)
        *fired = 0;
    if (!usable(c))
        return c ? BGST_ESTATE : BGST_EINVAL;
    sched *s = tasks_sched(c->engine);
    uint64_t due = sched_next_due(s);
    if (due == 0)
        return BGST_OK;
    uint64_t now = util_now_us();
    sched_advance(s, due > now ? due - now : 0);
    if (fired)
        *fired = 1;
    return BGST_OK;
}

/* ---- the app ----------------------------------------------------------------------------- */

API void *bgst_app_data(bgst_client *c)
{
    if (!usable(c))
        return NULL;
    generation *g = generation_slot_get(c->slot);
    void *data = g ? g->app.data : NULL;
    generation_release(g);
    return data;
}

API int bgst_service(bgst_client *c, const char *name, void **out)
{
    if (out)
        *out = NULL;
    if (!usable(c))
        return c ? BGST_ESTATE : BGST_EINVAL;
    if (name == NULL || out == NULL)
        return fail(c, BGST_EINVAL, "bgst_service: %s is NULL", name ? "out" : "name");
    generation *g = generation_slot_get(c->slot);
    char why[256] = "";
    void *svc = g ? services_lookup(g->services, &c->scope, name, why, sizeof why) : NULL;
    generation_release(g);
    if (svc == NULL)
        return fail(c, BGST_ENOTFOUND, "bgst_service(\"%s\"): %s", name,
                    why[0] ? why : "its create function failed (see its message above)");
    *out = svc;
    return BGST_OK;
}
