/*
 * dispatch.c - route -> handler -> answer for one request, with no
 * socket (dispatch.h says how a carrier drives it).
 *
 * A request goes: split its target (request.c); bgserve's own
 * /_bgserve/ endpoints (introspect.c, long-polls through a deferral);
 * otherwise the current generation's router; the route's own tasks take
 * their queue capacity; the handler runs behind handles (handle.h) with
 * a crash frame naming it; its answer, or 500 when it failed, or a
 * deferral the carrier suspends on.  dispatch_finish settles the tasks
 * once the carrier knows whether the answer was delivered.
 *
 * State: none of its own besides the request and response it is given
 * (one thread at a time, request.h); the environment is the carrier's
 * and read-only here.
 */
#include "dispatch.h"

#include "crash.h"
#include "crashpage.h"
#include "dashboard.h"
#include "deferred.h"
#include "durable.h"
#include "generation.h"
#include "handle.h"
#include "latency.h"
#include "log.h"
#include "tasks.h"
#include "urls.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Long-poll limit for GET /_bgserve/tasks/ID?wait=MS. */
#define LONGPOLL_MAX_MS 300000u

int dispatch_is_introspection(const dispatch_env *env, const char *target)
{
    if (!env->introspection || strncmp(target, URLS_PREFIX, URLS_PREFIX_LEN) != 0)
        return 0;
    char after = target[URLS_PREFIX_LEN]; /* only now known to be in the string */
    return after == '/' || after == '?' || after == '\0';
}

/* The ids of the response's tasks, "12,13" (attached in order, then
 * queued now), as Bgserve-Tasks. */
static void add_task_ids(const dispatch_env *env, struct bgs_res *res)
{
    char ids[512];
    if (!env->introspection || tasks_group_count(res->group) == 0)
        return;
    tasks_group_ids(res->group, ids, sizeof ids);
    if (ids[0])
        response_add_header(res, "Bgserve-Tasks", ids);
}

/* An answer bgserve gives itself (not the handler's). */
static int answer_text(const dispatch_env *env, struct bgs_res *res, unsigned status,
                       const char *text)
{
    response_set_text(res, status, text);
    add_task_ids(env, res);
    return DISPATCH_ANSWERED;
}



/* ---- bgserve's endpoints ---------------------------------------------------- */

static void longpoll_done(void *arg, tasks_final *f)
{
    (void)f;
    deferred_complete(arg, 200, NULL, NULL, 0); /* wakes the connection */
}

/* GET /_bgserve/tasks/ID?wait=MS on a task not yet final: suspend until
 * it is, or until MS pass.  Returns 1 when suspending. */
static int start_longpoll(const dispatch_env *env, struct bgs_req *req, struct bgs_res *res)
{
    const char *wait = request_query_value(req, "wait");
    uint64_t id = introspect_task_id(req->path);
    if (wait == NULL || id == 0)
        return 0;
    char *end;
    unsigned long ms = strtoul(wait, &end, 10);
    if (*wait == '\0' || *end != '\0' || ms == 0)
        return 0;
    if (ms > LONGPOLL_MAX_MS)
        ms = LONGPOLL_MAX_MS;
    bgs_deferred *d = deferred_new_internal(tasks_sched(env->tasks), (uint32_t)ms, req->resume_fn, req->resume_ctx);
    int rc = tasks_watch(env->tasks, id, longpoll_done, d);
    if (rc == BGS_ENOTFOUND) /* another server's task? */
        rc = tasks_broker_watch(env->tasks, id, longpoll_done, d);
    if (rc != 0) {
        /* final already, or unknown: answer now */
        deferred_release(d);
        deferred_put(d, 1);
        return 0;
    }
    res->deferred = d;
    res->longpoll = 1;
    return 1;
}

static int serve_introspection(const dispatch_env *env, struct bgs_req *req, struct bgs_res *res)
{
    if (!res->longpoll && start_longpoll(env, req, res))
        return DISPATCH_SUSPEND;
    if (strcmp(req->path, URLS_EVENTS) == 0 && strcmp(req->method, "GET") == 0)
        return DISPATCH_STREAM;
    introspect_reply rep;
    if (!dashboard_handle(req->method, req->path, req->header_fn, req->header_ctx, &rep)) {
        introspect_counters c;
        memset(&c, 0, sizeof c);
        if (env->counters)
            env->counters(&c);
        c.tasks = env->tasks;
        introspect_handle(req->method, req->path, &c, &rep);
    }
    if (rep.allow)
        response_add_header(res, "Allow", rep.allow);
    for (size_t i = 0; i < INTROSPECT_MAX_HEADERS && rep.headers[i].name; i++)
        response_add_header(res, rep.headers[i].name, rep.headers[i].value);
    response_take_answer(res, rep.status, rep.ctype ? rep.ctype : "application/json", rep.body, rep.len);
    return DISPATCH_ANSWERED;
}

/* ---- --journal, --broker: the answer waits until its tasks are kept ------------ */

/* The journal or the broker could not keep the request's tasks: 503, and
 * the tasks of its groups never run here (those queued at once with
 * bgs_req_enqueue were handed to the workers already and do). */
static int answer_not_durable(const dispatch_env *env, struct bgs_res *res, const char *why)
{
    char body[768];
    tasks_group_drop(res->group, "the journal or the broker could not keep the task: "
                                 "answered 503");
    response_reset(res);
    response_add_header(res, "Retry-After", "1");
    snprintf(body, sizeof body, "Service Unavailable: the tasks of this request could not be "
             "made durable (%s), retry later\n", why);
    return answer_text(env, res, 503, body);
}

/*
 * The handler's answer is ready: write its groups' named tasks to the
 * journal or the broker (tasks_group_persist) and, while a commit of the request's
 * tasks is still to come, hold it (DISPATCH_SUSPEND; dispatch_arm lets
 * the last completion resume the carrier).  Else the answer, or 503.
 */
static int hold_for_journal(const dispatch_env *env, struct bgs_req *req, struct bgs_res *res)
{
    char why[512];
    if (tasks_group_persist(res->group, req->gate) != 0)
        return answer_not_durable(env, res, "the server is shutting down");
    if (durable_pending(req->gate) > 0) {
        res->held = 1;
        return DISPATCH_SUSPEND;
    }
    if (durable_status(req->gate, why, sizeof why) != 0)
        return answer_not_durable(env, res, why);
    add_task_ids(env, res);
    return DISPATCH_ANSWERED;
}

/* Resumed after the commits: the held answer, or 503. */
static int answer_held(const dispatch_env *env, struct bgs_req *req, struct bgs_res *res)
{
    char why[512];
    res->held = 0;
    if (durable_status(req->gate, why, sizeof why) != 0)
        return answer_not_durable(env, res, why);
    add_task_ids(env, res);
    return DISPATCH_ANSWERED;
}

/* ---- the plugin's routes ---------------------------------------------------- */

/* Start the response's task group with the route's own tasks, in the
 * route's mode (docs/tasks.md, "One group per response").  0, or
 * BGS_EFULL/BGS_ESHUTDOWN when the queue cannot take them (the caller
 * answers 503). */
static int attach_route_tasks(struct bgs_req *req, struct bgs_res *res, const plugin_route *route)
{
    if (route->ntasks == 0)
        return 0;
    res->mode = route->mode;
    res->group = tasks_group_init(&res->group_room, req->gen->tasks, &req->gen->owner, req->id,
                                  res->mode);
    for (uint32_t i = 0; i < route->ntasks; i++) {
        const plugin_route_task *t = &route->tasks[i];
        int rc = tasks_group_add(res->group, t->def, t->payload, t->len, NULL);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int run_route(const dispatch_env *env, struct bgs_req *req, struct bgs_res *res)
{
    int m = router_lookup(req->gen->plugin->router, req->method, req->raw_path,
                          req->scratch, &req->match);
    if (m == ROUTER_NOT_FOUND)
        return answer_text(env, res, 404, "Not Found\n");
    if (m == ROUTER_BAD_PATH)
        return answer_text(env, res, 400, "Bad Request: malformed path\n");
    if (m == ROUTER_BAD_METHOD) {
        response_add_header(res, "Allow", req->match.allow);
        return answer_text(env, res, 405, "Method Not Allowed\n");
    }

    const plugin_route *route = req->match.data;
    req->route = route;
    int head = strcmp(req->method, "HEAD") == 0;
    /* The route's own tasks take their queue capacity before the handler
     * runs, so a full queue answers 503 before any side effect of the
     * handler.  They run after any response the handler produced (any
     * status); a failing handler discards them with its own. */
    int trc = head ? 0 : attach_route_tasks(req, res, route);
    if (trc != 0) {
        const char *hint;
        const char *cause = tasks_refusal(req->gen->tasks, trc, &hint);
        char why[160], body[160];
        log_msg(BGS_LOG_WARN, "%s %s: route tasks not accepted: %s%s; answering 503 without "
                "running the handler rid=%s", route->method, route->path, cause, hint, req->id);
        snprintf(why, sizeof why, "%s: answered 503 before the handler", cause);
        tasks_group_drop(res->group, why);
        response_add_header(res, "Retry-After", "1");
        snprintf(body, sizeof body, "Service Unavailable: %s, retry later\n", cause);
        return answer_text(env, res, 503, body);
    }
    res->status = 200;
    crash_frame cf; /* names the route if the handler crashes */
    crash_enter_route(&cf, route->method, route->path, req->id, req->gen->number, req->gen->plugin->name);
    /* The plugin gets handles valid on this thread until the handler
     * returns (handle.h): one kept past that is refused, not followed. */
    bgs_req *hreq = handle_open(HANDLE_REQ, req, HANDLE_THREAD_BOUND);
    bgs_res *hres = handle_open(HANDLE_RES, res, HANDLE_THREAD_BOUND);
    int hrc = route->handler(hreq, hres);
    handle_close(hres);
    handle_close(hreq);
    crash_leave(&cf);
    if (hrc != 0) {
        log_msg(BGS_LOG_ERROR, "handler for %s %s failed (returned %d) rid=%s",
                route->method, route->path, hrc, req->id);
        tasks_group_drop(res->group, "handler failed");
        response_reset(res);
        return answer_text(env, res, 500, "Internal Server Error\n");
    }
    if (head)
        tasks_group_drop(res->group, "HEAD request: tasks do not run");
    if (res->deferred) {
        /* With --journal the attached tasks are written now, so their
         * commit overlaps the wait; the answer, once there, is held for
         * it like any other (dispatch_resumed).  A failure to hand them
         * to the journal is answered then too. */
        if (req->gate)
            (void)tasks_group_persist(res->group, req->gate);
        return DISPATCH_SUSPEND; /* answered by dispatch_resumed */
    }
    if (req->gate)
        return hold_for_journal(env, req, res);
    add_task_ids(env, res);
    return DISPATCH_ANSWERED;
}

int dispatch_request(const dispatch_env *env, struct bgs_req *req, struct bgs_res *res)
{
    if (request_parse_target(req) != 0)
        return answer_text(env, res, 400, "Bad Request: malformed percent-encoding\n");

    if (dispatch_is_introspection(env, req->url)) {
        if (request_decoded_path(req) == NULL)
            return answer_text(env, res, 400, "Bad Request: malformed percent-encoding\n");
        return serve_introspection(env, req, res);
    }

    req->gen = generation_slot_get(env->slot);
    if (req->gen == NULL && env->crash_page) { /* the build crash-looped */
        const char *ctype;
        size_t len;
        char *page = crashpage_render(env->crash_page, env->plugin_path,
                                      crashpage_wants_html(request_header(req, "Accept")),
                                      &len, &ctype);
        response_take_answer(res, 500, ctype, page, len);
        return DISPATCH_ANSWERED;
    }
    if (req->gen == NULL)
        return answer_text(env, res, 503, "Service Unavailable: no plugin loaded\n");
    if (env->durable)
        req->gate = durable_new(); /* counts the commits of its tasks */
    return run_route(env, req, res);
}

int dispatch_local_request(const dispatch_env *env, const dispatch_local *lr,
                           struct bgs_req *req, struct bgs_res *res)
{
    request_init(req, res, lr->target);
    request_set_origin(req, &lr->origin);
    request_set_id(req, lr->id);
    if (lr->body_len)
        request_body_append(req, lr->body, lr->body_len);
    int how = dispatch_request(env, req, res);
    if (how != DISPATCH_STREAM)
        return how;
    char text[256];
    snprintf(text, sizeof text, "%s does not stream " URLS_PREFIX "/events; use a running server\n",
             lr->carrier);
    response_set_text(res, 501, text);
    return DISPATCH_ANSWERED;
}

void dispatch_arm(struct bgs_res *res)
{
    /* Armed only once the carrier suspended, so a completion racing with
     * us cannot resume a request that is not suspended yet. */
    if (res->held)
        durable_arm(res->req->gate, res->req->resume_fn, res->req->resume_ctx);
    else
        deferred_arm(res->deferred);
}

int dispatch_resumed(const dispatch_env *env, struct bgs_req *req, struct bgs_res *res)
{
    uint32_t status;
    const char *type, *body;
    size_t len;
    if (res->held)
        return answer_held(env, req, res);
    int state = deferred_state(res->deferred, &status, &type, &body, &len);
    if (res->longpoll && state != DEFERRED_SHUTDOWN)
        return serve_introspection(env, req, res); /* the record as it is now */
    switch (state) {
    case DEFERRED_COMPLETED:
        (void)body; /* handed over, not copied */
        response_take_answer(res, status, type, len ? deferred_take_body(res->deferred) : NULL, len);
        if (req->gate) /* the commit of its tasks, as for an answer at once */
            return hold_for_journal(env, req, res);
        add_task_ids(env, res);
        return DISPATCH_ANSWERED;
    case DEFERRED_TIMED_OUT:
        return answer_text(env, res, 504, "Gateway Timeout: the deferred response was not completed in time\n");
    case DEFERRED_SHUTDOWN:
        res->close = 1;
        return answer_text(env, res, 503, "Service Unavailable: the server is shutting down\n");
    case DEFERRED_RELEASED:
    default: /* not final: cannot happen, resumed only when final */
        return answer_text(env, res, 500, "Internal Server Error: the deferred response was abandoned\n");
    }
}

void dispatch_finish(struct bgs_req *req, struct bgs_res *res, int answered, int delivered,
                     uint64_t duration_us)
{
    /* The route lives in the generation: count before releasing it. */
    if (req->route && req->route->stats) {
        plugin_route_stats *rs = req->route->stats;
        atomic_fetch_add_explicit(&rs->requests, 1, memory_order_relaxed);
        if (!answered || res->status >= 500)
            atomic_fetch_add_explicit(&rs->errors, 1, memory_order_relaxed);
        latency_add(&rs->latency, duration_us);
    }
    tasks_group_submit(res->group, delivered);
    res->group = NULL;
    if (res->deferred)
        deferred_put(res->deferred, delivered);
    res->deferred = NULL;
    services_scope_end(req->scope);
    req->scope = NULL;
    durable_release(req->gate);
    req->gate = NULL;
    generation_release(req->gen);
    req->gen = NULL;
}
