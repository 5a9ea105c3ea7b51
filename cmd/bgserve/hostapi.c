/*
 * hostapi.c - the function table handed to plugins, and the request,
 * response and app accessors behind it: each checks the plugin's handle
 * and arguments, reports misuse, and calls request.c, which owns the
 * request and response structs.
 *
 * The table is one static const struct; it only ever grows at its end
 * (see include/bgserve.h).  The plugin holds handles, not pointers
 * (handle.h): every request and response function first resolves its
 * handle, which succeeds only on the HTTP thread running the handler and
 * only until the handler returns, so these functions need no locks and
 * never reach a finished request.  Every refusal is reported where it
 * happened (misuse.h), with the plugin's call site (MISUSE_SITE) for the
 * rate limit.  App functions run in the start hook (registration) or on
 * any thread (data, log); the app's fields are written only while the
 * start hook runs.
 */
#include "hostapi.h"

#include "deferred.h"
#include "generation.h"
#include "handle.h"
#include "log.h"
#include "misuse.h"
#include "request.h"
#include "services.h"
#include "tasks.h"
#include "urls.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- request ------------------------------------------------------------ */

/* The request behind h, or NULL after the misuse was reported. */
#define REQ_OF(h, fn) ((struct bgs_req *)misuse_handle(HANDLE_REQ, (h), MISUSE_SITE, (fn), "NULL", NULL))

static const char *host_req_method(bgs_req *h)
{
    struct bgs_req *req = REQ_OF(h, "bgs_req_method");
    return req ? req->method : NULL;
}

static const char *host_req_path(bgs_req *h)
{
    struct bgs_req *req = REQ_OF(h, "bgs_req_path");
    return req ? request_decoded_path(req) : NULL;
}

static const char *host_req_param(bgs_req *h, const char *name)
{
    struct bgs_req *req = REQ_OF(h, "bgs_req_param");
    if (req == NULL)
        return NULL;
    if (name == NULL) {
        misuse(MISUSE_SITE, BGS_EINVAL, "NULL", "bgs_req_param(NULL): NULL name");
        return NULL;
    }
    return request_param(req, name);
}

static const char *host_req_query(bgs_req *h, const char *name)
{
    struct bgs_req *req = REQ_OF(h, "bgs_req_query");
    if (req == NULL)
        return NULL;
    if (name == NULL) {
        misuse(MISUSE_SITE, BGS_EINVAL, "NULL", "bgs_req_query(NULL): NULL name");
        return NULL;
    }
    return request_query_value(req, name);
}

static const char *host_req_header(bgs_req *h, const char *name)
{
    struct bgs_req *req = REQ_OF(h, "bgs_req_header");
    if (req == NULL)
        return NULL;
    if (name == NULL) {
        misuse(MISUSE_SITE, BGS_EINVAL, "NULL", "bgs_req_header(NULL): NULL name");
        return NULL;
    }
    return request_header(req, name);
}

static const void *host_req_body(bgs_req *h, size_t *len)
{
    struct bgs_req *req = REQ_OF(h, "bgs_req_body");
    if (len)
        *len = req ? req->body_len : 0;
    return req && req->body_len ? req->body : NULL;
}

static const char *host_req_remote_addr(bgs_req *h)
{
    struct bgs_req *req = REQ_OF(h, "bgs_req_remote_addr");
    return req ? req->remote : NULL;
}

static const char *host_req_id(bgs_req *h)
{
    struct bgs_req *req = REQ_OF(h, "bgs_req_id");
    return req ? req->id : NULL;
}

static bgs_app *host_req_app(bgs_req *h)
{
    struct bgs_req *req = REQ_OF(h, "bgs_req_app");
    return req ? req->gen->app.handle : NULL;
}

static void *host_req_service(bgs_req *h, const char *name)
{
    struct bgs_req *req = REQ_OF(h, "bgs_req_service");
    if (req == NULL)
        return NULL;
    char why[256];
    void *inst = services_lookup(req->gen->services, &req->scope, name, why, sizeof why);
    if (inst == NULL && why[0])
        misuse(MISUSE_SITE, BGS_EINVAL, "NULL", "bgs_req_service(\"%s\"): %s",
               name ? name : "NULL", why);
    return inst;
}

/* The line is logged even when the handle is refused (tagged "-"): the
 * plugin's message is worth more than the tag. */
static void host_req_logv(bgs_req *h, uint32_t level, const char *fmt, va_list ap)
{
    struct bgs_req *req = misuse_handle(HANDLE_REQ, h, MISUSE_SITE, "bgs_req_logv", "nothing", NULL);
    log_pluginv(level, "req", req ? req->id : "-", fmt ? fmt : "(null)", ap);
}

static void host_req_log(bgs_req *h, uint32_t level, const char *fmt, ...)
{
    va_list ap;
    struct bgs_req *req = misuse_handle(HANDLE_REQ, h, MISUSE_SITE, "bgs_req_log", "nothing", NULL);
    va_start(ap, fmt);
    log_pluginv(level, "req", req ? req->id : "-", fmt ? fmt : "(null)", ap);
    va_end(ap);
}

/* ---- response ------------------------------------------------------------- */

/* The response behind h, or NULL after the misuse was reported (code
 * gets BGS_EINVAL or BGS_ESTATE). */
#define RES_OF(h, fn, code) \
    ((struct bgs_res *)misuse_handle(HANDLE_RES, (h), MISUSE_SITE, (fn), NULL, &(code)))

/* A misuse code from fn is reported at the plugin's call site. */
#define REPORT(rc, ...) (misuse_code(rc) ? misuse(MISUSE_SITE, (rc), NULL, __VA_ARGS__) : (rc))

static int host_res_status(bgs_res *h, uint32_t status)
{
    int code;
    struct bgs_res *res = RES_OF(h, "bgs_res_status", code);
    if (res == NULL)
        return code;
    if (status < 100 || status > 599)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_status(%u): not an HTTP status (100-599)", status);
    res->status = status;
    return 0;
}

static int host_res_header(bgs_res *h, const char *name, const char *value)
{
    int code;
    const char *why = "";
    struct bgs_res *res = RES_OF(h, "bgs_res_header", code);
    if (res == NULL)
        return code;
    int rc = response_set_header(res, name, value, &why);
    if (rc != 0)
        return misuse(MISUSE_SITE, rc, NULL, "bgs_res_header(%s%s%s): %s", name ? "\"" : "",
                      name ? name : "NULL", name ? "\"" : "", why);
    return 0;
}

static int host_res_content_type(bgs_res *h, const char *type)
{
    int code;
    struct bgs_res *res = RES_OF(h, "bgs_res_content_type", code);
    if (res == NULL)
        return code;
    if (type == NULL)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_content_type(NULL): NULL type");
    if (response_check_header("Content-Type", type) != 0)
        return misuse(MISUSE_SITE, BGS_EHEADER, NULL, "bgs_res_content_type(): the type contains CR or LF");
    response_set_content_type(res, type);
    return 0;
}

/* Replaces the body: the handler states what the body is. */
static int host_res_body(bgs_res *h, const void *data, size_t len)
{
    int code;
    struct bgs_res *res = RES_OF(h, "bgs_res_body", code);
    if (res == NULL)
        return code;
    if (data == NULL && len > 0)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_body(NULL, %zu): NULL data with a length", len);
    res->body_len = 0; /* replaces */
    response_append(res, data, len);
    return 0;
}

static int host_res_printf(bgs_res *h, const char *fmt, ...)
{
    int code;
    va_list ap;
    struct bgs_res *res = RES_OF(h, "bgs_res_printf", code);
    if (res == NULL)
        return code;
    if (fmt == NULL)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_printf(NULL): NULL format");
    va_start(ap, fmt);
    int rc = response_vprintf(res, fmt, ap);
    va_end(ap);
    return REPORT(rc, "bgs_res_printf(\"%s\"): the format could not be expanded", fmt);
}

static int host_res_vprintf(bgs_res *h, const char *fmt, va_list ap)
{
    int code;
    struct bgs_res *res = RES_OF(h, "bgs_res_vprintf", code);
    if (res == NULL)
        return code;
    if (fmt == NULL)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_vprintf(NULL): NULL format");
    int rc = response_vprintf(res, fmt, ap);
    return REPORT(rc, "bgs_res_vprintf(\"%s\"): the format could not be expanded", fmt);
}

/* The response's one task group (docs/tasks.md), made on first use
 * unless the route's own tasks made it. */
static tasks_group *res_group(struct bgs_res *res)
{
    if (res->group == NULL)
        res->group = tasks_group_init(&res->group_room, res->req->gen->tasks,
                                      &res->req->gen->owner, res->req->id, res->mode);
    return res->group;
}

static int host_res_task(bgs_res *h, const char *name, const void *payload,
                         size_t len, uint64_t *id_out)
{
    int code;
    struct bgs_res *res = RES_OF(h, "bgs_res_task", code);
    if (res == NULL)
        return code;
    if (name == NULL)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_task(NULL): NULL task name");
    if (payload == NULL && len > 0)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_task(\"%s\", NULL, %zu): NULL payload with a length", name, len);
    int rc = tasks_group_add(res_group(res), plugin_find_task(res->req->gen->plugin, name),
                             payload, len, id_out);
    return REPORT(rc, "bgs_res_task(\"%s\"): %s", name, rc == BGS_ENOTASK ? "no task with that name" : bgs_strerror(rc));
}

static int host_res_task_fn(bgs_res *h, bgs_adhoc_fn fn, void *arg,
                            bgs_free_fn free_fn, uint64_t *id_out)
{
    int code;
    struct bgs_res *res = RES_OF(h, "bgs_res_task_fn", code);
    if (res == NULL)
        return code;
    if (fn == NULL)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_task_fn(NULL): NULL function");
    return tasks_group_add_fn(res_group(res), fn, arg, free_fn, id_out);
}

static int host_res_task_mode(bgs_res *h, uint32_t mode)
{
    int code;
    struct bgs_res *res = RES_OF(h, "bgs_res_task_mode", code);
    if (res == NULL)
        return code;
    if (mode != BGS_SEQUENTIAL && mode != BGS_CONCURRENT)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_task_mode(%u): not BGS_SEQUENTIAL or BGS_CONCURRENT", mode);
    res->mode = mode;
    if (res->group)
        return tasks_group_set_mode(res->group, mode);
    return 0;
}

static int host_res_accepted(bgs_res *h, uint64_t task_id)
{
    char loc[64];
    int code;
    const char *why = "";
    struct bgs_res *res = RES_OF(h, "bgs_res_accepted", code);
    if (res == NULL)
        return code;
    if (task_id == 0)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_accepted(0): task id 0 names no task");
    snprintf(loc, sizeof loc, URLS_TASKS "%llu", (unsigned long long)task_id);
    res->status = 202;
    return response_set_header(res, "Location", loc, &why);
}

static bgs_deferred *host_res_defer(bgs_res *h, uint32_t timeout_ms)
{
    struct bgs_res *res = misuse_handle(HANDLE_RES, h, MISUSE_SITE, "bgs_res_defer", "NULL", NULL);
    if (res == NULL)
        return NULL;
    if (res->deferred != NULL) {
        misuse(MISUSE_SITE, BGS_ESTATE, "NULL", "bgs_res_defer(): the response is deferred already");
        return NULL;
    }
    res->deferred = deferred_new(tasks_sched(res->req->gen->tasks), timeout_ms, res->req->resume_fn, res->req->resume_ctx);
    return deferred_handle(res->deferred);
}

static int host_deferred_complete(bgs_deferred *h, uint32_t status, const char *type,
                                  const void *body, size_t len)
{
    return deferred_host_complete(h, status, type, body, len, MISUSE_SITE);
}

static void host_deferred_release(bgs_deferred *h)
{
    deferred_host_release(h, MISUSE_SITE);
}

static int host_req_enqueue(bgs_req *h, const char *name, const void *payload,
                            size_t len, uint64_t *id_out)
{
    uint64_t id;
    int code;
    struct bgs_req *req = misuse_handle(HANDLE_REQ, h, MISUSE_SITE, "bgs_req_enqueue", NULL, &code);
    if (req == NULL)
        return code;
    if (name == NULL)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_req_enqueue(NULL): NULL task name");
    if (payload == NULL && len > 0)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_req_enqueue(\"%s\", NULL, %zu): NULL payload with a length", name, len);
    int rc = tasks_group_enqueue(res_group(req->res), plugin_find_task(req->gen->plugin, name),
                                 payload, len, NULL, NULL, &id, req->gate);
    if (rc != 0)
        return REPORT(rc, "bgs_req_enqueue(\"%s\"): %s", name, rc == BGS_ENOTASK ? "no task with that name" : bgs_strerror(rc));
    if (id_out)
        *id_out = id;
    return 0;
}

/* The awaited task is final: answer with its result (handed over, not
 * copied) or its error. */
static void await_done(void *arg, tasks_final *f)
{
    bgs_deferred *d = arg;
    if (f->state == TASKS_SUCCEEDED) {
        if (f->has_result) {
            deferred_complete_take(d, f->result_status ? f->result_status : 200,
                                   f->result_type, f->result, f->result_len);
            f->result_type = NULL;
            f->result = NULL;
        } else {
            deferred_complete(d, 200, NULL, NULL, 0);
        }
        return;
    }
    char msg[700];
    int n = snprintf(msg, sizeof msg, "task %llu (%s) %s%s%s\n", (unsigned long long)f->id,
                     f->name, tasks_state_name(f->state), f->error ? ": " : "",
                     f->error ? f->error : "");
    if (n < 0)
        n = 0;
    deferred_complete(d, 500, "text/plain; charset=utf-8", msg,
                      (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
}

static int host_res_await(bgs_res *h, const char *name, const void *payload,
                          size_t len, uint32_t timeout_ms, uint64_t *id_out)
{
    uint64_t id;
    int code;
    struct bgs_res *res = RES_OF(h, "bgs_res_await", code);
    if (res == NULL)
        return code;
    if (name == NULL)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_await(NULL): NULL task name");
    if (payload == NULL && len > 0)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_res_await(\"%s\", NULL, %zu): NULL payload with a length", name, len);
    if (res->deferred != NULL)
        return misuse(MISUSE_SITE, BGS_ESTATE, NULL, "bgs_res_await(\"%s\"): the response is deferred already", name);
    bgs_deferred *d = deferred_new(tasks_sched(res->req->gen->tasks), timeout_ms, res->req->resume_fn, res->req->resume_ctx);
    res->deferred = d;
    int rc = tasks_group_enqueue(res_group(res), plugin_find_task(res->req->gen->plugin, name),
                                 payload, len, await_done, d, &id, res->req->gate);
    if (rc != 0) {
        /* Nobody else has the handle: undo the deferral entirely. */
        res->deferred = NULL;
        deferred_release(d);
        deferred_put(d, 1);
        return REPORT(rc, "bgs_res_await(\"%s\"): %s", name, rc == BGS_ENOTASK ? "no task with that name" : bgs_strerror(rc));
    }
    if (id_out)
        *id_out = id;
    return 0;
}

/* ---- app ------------------------------------------------------------------ */

/* The app behind h, with the app-handle lock held for reading until
 * APP_LEAVE (generation.h), or NULL after the misuse was reported (code
 * gets BGS_EINVAL for NULL, BGS_ESTATE for a retired generation's or a
 * wrong handle).  A macro, so the call site is the plugin's. */
#define APP_ENTER(h, fn, ret, code) app_enter((h), MISUSE_SITE, (fn), (ret), (code))
#define APP_LEAVE() generation_app_leave()

static struct bgs_app *app_enter(bgs_app *h, const void *site, const char *fn,
                                 const char *ret, int *code)
{
    int why;
    struct bgs_app *app = generation_app_enter(h, &why);
    if (app == NULL) {
        int rc = misuse_bad_handle(HANDLE_APP, why, site, fn, ret);
        if (code)
            *code = rc;
    }
    return app;
}

static void app_failv(struct bgs_app *app, const char *fmt, va_list ap)
{
    vsnprintf(app->fail_msg, sizeof app->fail_msg, fmt ? fmt : "(no message)", ap);
    app->failed = 1;
}

static void host_app_fail(bgs_app *h, const char *fmt, ...)
{
    va_list ap;
    struct bgs_app *app = APP_ENTER(h, "bgs_app_fail", "nothing", NULL);
    if (app == NULL)
        return;
    va_start(ap, fmt);
    app_failv(app, fmt, ap);
    va_end(ap);
    APP_LEAVE();
}

static void host_app_failv(bgs_app *h, const char *fmt, va_list ap)
{
    struct bgs_app *app = APP_ENTER(h, "bgs_app_failv", "nothing", NULL);
    if (app == NULL)
        return;
    app_failv(app, fmt, ap);
    APP_LEAVE();
}

static void host_app_set_data(bgs_app *h, void *data)
{
    struct bgs_app *app = APP_ENTER(h, "bgs_app_set_data", "nothing", NULL);
    if (app == NULL)
        return;
    app->data = data;
    APP_LEAVE();
}

static void *host_app_data(bgs_app *h)
{
    struct bgs_app *app = APP_ENTER(h, "bgs_app_data", "NULL", NULL);
    if (app == NULL)
        return NULL;
    void *data = app->data;
    APP_LEAVE();
    return data;
}

static int host_app_service(bgs_app *h, const char *name, uint32_t lifetime,
                            bgs_service_create_fn create,
                            bgs_service_destroy_fn destroy, void *arg)
{
    int rc;
    struct bgs_app *app = APP_ENTER(h, "bgs_app_service", NULL, &rc);
    if (app == NULL)
        return rc;
    char why[256];
    if (!app->starting) {
        rc = BGS_ESTATE;
        snprintf(why, sizeof why, "outside the start hook; register services in the start hook");
    } else {
        rc = services_register(app->gen->services, name, lifetime, create, destroy, arg,
                               why, sizeof why);
    }
    APP_LEAVE();
    return REPORT(rc, "bgs_app_service(\"%s\"): %s", name ? name : "NULL", why);
}

static int host_app_periodic(bgs_app *h, const char *task, uint32_t interval_ms,
                             const void *payload, size_t len, uint32_t flags)
{
    int rc;
    struct bgs_app *app = APP_ENTER(h, "bgs_app_periodic", NULL, &rc);
    if (app == NULL)
        return rc;
    int starting = app->starting;
    if (task == NULL || interval_ms == 0 || (payload == NULL && len > 0) || !starting)
        rc = 0; /* reported below, without the lock */
    else
        rc = generation_add_periodic(app->gen, task, interval_ms, payload, len, flags);
    APP_LEAVE();
    if (task == NULL)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_app_periodic(NULL): NULL task name");
    if (interval_ms == 0)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_app_periodic(\"%s\", 0): interval 0", task);
    if (payload == NULL && len > 0)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_app_periodic(\"%s\", NULL, %zu): NULL payload with a length", task, len);
    if (!starting)
        return misuse(MISUSE_SITE, BGS_ESTATE, NULL, "bgs_app_periodic(\"%s\"): outside the start "
                      "hook; register periodic tasks in the start hook", task);
    return REPORT(rc, "bgs_app_periodic(\"%s\"): %s", task,
                  rc == BGS_ENOTASK ? "no task with that name" : bgs_strerror(rc));
}

/* The line is logged even when the handle is refused (tagged "-"): the
 * plugin's message is worth more than the tag. */
static void host_app_logv(bgs_app *h, uint32_t level, const char *fmt, va_list ap)
{
    char name[128] = "-";
    struct bgs_app *app = APP_ENTER(h, "bgs_app_logv", "nothing", NULL);
    if (app != NULL) {
        if (app->gen->plugin->name[0])
            snprintf(name, sizeof name, "%s", app->gen->plugin->name);
        APP_LEAVE();
    }
    log_pluginv(level, "app", name, fmt ? fmt : "(null)", ap);
}

static void host_app_log(bgs_app *h, uint32_t level, const char *fmt, ...)
{
    char name[128] = "-";
    va_list ap;
    struct bgs_app *app = APP_ENTER(h, "bgs_app_log", "nothing", NULL);
    if (app != NULL) {
        if (app->gen->plugin->name[0])
            snprintf(name, sizeof name, "%s", app->gen->plugin->name);
        APP_LEAVE();
    }
    va_start(ap, fmt);
    log_pluginv(level, "app", name, fmt ? fmt : "(null)", ap);
    va_end(ap);
}

static void host_app_handover_set(bgs_app *h, void *state)
{
    struct bgs_app *app = APP_ENTER(h, "bgs_app_handover_set", "nothing", NULL);
    if (app == NULL)
        return;
    generation_handover_set(app, state);
    APP_LEAVE();
}

static void *host_app_handover_get(bgs_app *h)
{
    struct bgs_app *app = APP_ENTER(h, "bgs_app_handover_get", "NULL", NULL);
    if (app == NULL)
        return NULL;
    void *state = app->starting ? generation_handover_get(app) : NULL;
    APP_LEAVE();
    return state;
}

static int host_app_handover_taken(bgs_app *h)
{
    struct bgs_app *app = APP_ENTER(h, "bgs_app_handover_taken", "0", NULL);
    if (app == NULL)
        return 0;
    int taken = generation_handover_taken(app);
    APP_LEAVE();
    return taken;
}

/* ---- the table ------------------------------------------------------------ */

static const bgs_host_api host_api = {
    .struct_size = sizeof(bgs_host_api),
    .abi_major = BGS_ABI_MAJOR,
    .abi_minor = BGS_ABI_MINOR,
    .req_method = host_req_method,
    .req_path = host_req_path,
    .req_param = host_req_param,
    .req_query = host_req_query,
    .req_header = host_req_header,
    .req_body = host_req_body,
    .req_remote_addr = host_req_remote_addr,
    .req_id = host_req_id,
    .req_app = host_req_app,
    .req_service = host_req_service,
    .req_log = host_req_log,
    .res_status = host_res_status,
    .res_header = host_res_header,
    .res_content_type = host_res_content_type,
    .res_body = host_res_body,
    .res_printf = host_res_printf,
    .res_task = host_res_task,
    .res_task_fn = host_res_task_fn,
    .res_task_mode = host_res_task_mode,
    .res_accepted = host_res_accepted,
    .app_fail = host_app_fail,
    .app_set_data = host_app_set_data,
    .app_data = host_app_data,
    .app_service = host_app_service,
    .app_periodic = host_app_periodic,
    .app_log = host_app_log,
    .task_id = tasks_ctx_id,
    .task_name = tasks_ctx_name,
    .task_attempt = tasks_ctx_attempt,
    .task_cancelled = tasks_ctx_cancelled,
    .task_error = tasks_ctx_error,
    .task_result = tasks_ctx_result,
    .task_request_id = tasks_ctx_request_id,
    .task_app = tasks_ctx_app,
    .task_service = tasks_ctx_service,
    .task_log = tasks_ctx_log,
    .res_defer = host_res_defer,
    .deferred_complete = host_deferred_complete,
    .deferred_release = host_deferred_release,
    .req_enqueue = host_req_enqueue,
    .res_await = host_res_await,
    .app_handover_set = host_app_handover_set,
    .app_handover_get = host_app_handover_get,
    .app_handover_taken = host_app_handover_taken,
    /* ABI 1.1 */
    .req_logv = host_req_logv,
    .res_vprintf = host_res_vprintf,
    .app_failv = host_app_failv,
    .app_logv = host_app_logv,
    .task_errorv = tasks_ctx_errorv,
    .task_logv = tasks_ctx_logv,
};

const bgs_host_api *hostapi_table(void)
{
    return &host_api;
}
