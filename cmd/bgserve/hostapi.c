/*
 * hostapi.c - the function table handed to plugins, and the request,
 * response and app accessors behind it.
 *
 * The table is one static const struct; it only ever grows at its end
 * (see include/bgserve.h).  Request and response functions run on the
 * HTTP thread that owns the request (no locks).  App functions run in the
 * start hook (registration) or on any thread (data, log); the app's
 * fields are written only while the start hook runs.
 */
#include "hostapi.h"

#include "deferred.h"
#include "generation.h"
#include "log.h"
#include "request.h"
#include "services.h"
#include "tasks.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- request ------------------------------------------------------------ */

static const char *req_method(bgs_req *req) { return req ? req->method : NULL; }
const char *req_decoded_path(struct bgs_req *req)
{
    if (req->path == NULL) {
        size_t n = strlen(req->raw_path);
        req->path = xmalloc(n + 1);
        if (router_pct_decode(req->raw_path, n, req->path, 0) < 0) {
            free(req->path);
            req->path = NULL;
        }
    }
    return req->path;
}

static const char *req_path(bgs_req *req) { return req ? req_decoded_path(req) : NULL; }

static const char *req_param(bgs_req *req, const char *name)
{
    if (req == NULL || name == NULL)
        return NULL;
    for (unsigned i = 0; i < req->match.nparams; i++)
        if (strcmp(req->match.params[i].name, name) == 0)
            return req->match.params[i].value;
    return NULL;
}

const char *req_query_value(struct bgs_req *req, const char *name)
{
    if (req == NULL || name == NULL)
        return NULL;
    for (unsigned i = 0; i < req->nquery; i++)
        if (strcmp(req->query[i].name, name) == 0)
            return req->query[i].value;
    return NULL;
}

static const char *req_header(bgs_req *req, const char *name)
{
    if (req == NULL || name == NULL || req->header_fn == NULL)
        return NULL;
    return req->header_fn(req->conn, name);
}

static const void *req_body(bgs_req *req, size_t *len)
{
    if (len)
        *len = req ? req->body_len : 0;
    return req && req->body_len ? req->body : NULL;
}

static const char *req_remote_addr(bgs_req *req) { return req ? req->remote : NULL; }
static const char *req_id(bgs_req *req) { return req ? req->id : NULL; }
static bgs_app *req_app(bgs_req *req) { return req ? &req->gen->app : NULL; }

static void *req_service(bgs_req *req, const char *name)
{
    if (req == NULL)
        return NULL;
    return services_get(req->gen->services, &req->scope, name);
}

static void req_log(bgs_req *req, uint32_t level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_pluginv(level, "req", req ? req->id : "-", fmt, ap);
    va_end(ap);
}

/* ---- query parsing -------------------------------------------------------- */

int req_parse_query(struct bgs_req *req, const char *qs)
{
    size_t n = strlen(qs), npairs = 1;
    for (const char *a = strchr(qs, '&'); a && npairs < REQ_MAX_QUERY; a = strchr(a + 1, '&'))
        npairs++;
    /* Each pair needs its length + 2 (two NULs; the '=' is reused for one
     * when present), and pairs are at most n: 2n + 2 always suffices
     * ("k" alone needs 3 bytes, found by fuzz_pct).  The pairs' array
     * comes first in the same block. */
    req->query = xmalloc(npairs * sizeof(req_kv) + 2 * n + 2);
    req->query_buf = (char *)(req->query + npairs);
    char *out = req->query_buf;
    const char *p = qs;

    req->nquery = 0;
    while (*p && req->nquery < npairs) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t)(amp - p) : strlen(p);
        if (plen > 0) {
            const char *eq = memchr(p, '=', plen);
            size_t klen = eq ? (size_t)(eq - p) : plen;
            long k = router_pct_decode(p, klen, out, 1);
            if (k < 0)
                return -1;
            req->query[req->nquery].name = out;
            out += k + 1;
            const char *v = eq ? eq + 1 : p + plen;
            size_t vlen = eq ? plen - klen - 1 : 0;
            long vl = router_pct_decode(v, vlen, out, 1);
            if (vl < 0)
                return -1;
            req->query[req->nquery].value = out;
            out += vl + 1;
            req->nquery++;
        }
        if (amp == NULL)
            break;
        p = amp + 1;
    }
    return 0;
}

void req_set_url(struct bgs_req *req, const char *uri)
{
    size_t n = strlen(uri);
    req->url = xmalloc(3 * (n + 1));
    memcpy(req->url, uri, n + 1);
    req->url_len = n;
    req->raw_path_buf = req->url + n + 1;
    req->scratch = req->url + 2 * (n + 1);
}

void req_free(struct bgs_req *req)
{
    free(req->url); /* raw_path_buf and scratch too */
    free(req->path);
    free(req->query); /* query_buf too */
}

void res_free(struct bgs_res *res)
{
    for (size_t i = 0; i < res->nheaders; i++) {
        free(res->headers[i].name);
        free(res->headers[i].value);
    }
    free(res->headers);
    free(res->content_type);
    free(res->body);
    free(res->queued_ids);
}

/* ---- response ------------------------------------------------------------- */

/* RFC 9110 tchar: ALPHA, DIGIT and !#$%&'*+-.^_`|~, as a bitmap over
 * ASCII (a strchr per character showed in the per-request profile). */
static int is_tchar(unsigned char c)
{
    static const uint64_t lo = UINT64_C(0x3ff6cfa00000000); /* 0-63 */
    static const uint64_t hi = UINT64_C(0x57ffffffc7fffffe); /* 64-127 */
    return c < 64 ? (int)((lo >> c) & 1u) : c < 128 ? (int)((hi >> (c - 64)) & 1u) : 0;
}

int res_check_header(const char *name, const char *value)
{
    if (name == NULL || value == NULL || *name == '\0')
        return BGS_EHEADER;
    for (const char *p = name; *p; p++)
        if (!is_tchar((unsigned char)*p))
            return BGS_EHEADER;
    for (const char *p = value; *p; p++)
        if (*p == '\r' || *p == '\n')
            return BGS_EHEADER;
    return 0;
}

void res_add_header(struct bgs_res *res, const char *name, const char *value)
{
    if (res->nheaders == res->cap_headers) {
        res->cap_headers = res->cap_headers ? res->cap_headers * 2 : 4;
        res->headers = xrealloc(res->headers, res->cap_headers * sizeof *res->headers);
    }
    res->headers[res->nheaders].name = xstrdup(name);
    res->headers[res->nheaders].value = xstrdup(value);
    res->nheaders++;
}

static int res_status(bgs_res *res, uint32_t status)
{
    if (res == NULL || status < 100 || status > 599)
        return BGS_EINVAL;
    res->status = status;
    return 0;
}

static int res_header(bgs_res *res, const char *name, const char *value)
{
    if (res == NULL)
        return BGS_EINVAL;
    int rc = res_check_header(name, value);
    if (rc != 0) {
        log_msg(BGS_LOG_WARN, "refused response header %s%s%s rid=%s: %s",
                name ? "'" : "", name ? name : "(null)", name ? "'" : "",
                res->req ? res->req->id : "-", bgs_strerror(rc));
        return rc;
    }
    /* libmicrohttpd owns framing; a plugin setting these would break it. */
    if (util_strcaseeq(name, "Content-Length") || util_strcaseeq(name, "Transfer-Encoding") ||
        util_strcaseeq(name, "Connection"))
        return BGS_EINVAL;
    if (util_strcaseeq(name, "Content-Type")) {
        free(res->content_type);
        res->content_type = xstrdup(value);
        return 0;
    }
    res_add_header(res, name, value);
    return 0;
}

static int res_content_type(bgs_res *res, const char *type)
{
    if (res == NULL || type == NULL)
        return BGS_EINVAL;
    if (res_check_header("Content-Type", type) != 0)
        return BGS_EHEADER;
    free(res->content_type);
    res->content_type = xstrdup(type);
    return 0;
}

static void body_reserve(bgs_res *res, size_t extra)
{
    size_t need = res->body_len + extra + 1;
    if (need <= res->body_cap)
        return;
    size_t cap = res->body_cap ? res->body_cap : 64;
    while (cap < need)
        cap *= 2;
    res->body = xrealloc(res->body, cap);
    res->body_cap = cap;
}

/* Append len bytes of data to the body (kept NUL-terminated). */
static int res_append(bgs_res *res, const void *data, size_t len)
{
    body_reserve(res, len);
    if (len)
        memcpy(res->body + res->body_len, data, len);
    res->body_len += len;
    res->body[res->body_len] = '\0';
    return 0;
}

/* Replaces the body: the handler states what the body is. */
static int res_body(bgs_res *res, const void *data, size_t len)
{
    if (res == NULL || (data == NULL && len > 0))
        return BGS_EINVAL;
    res->body_len = 0;
    return res_append(res, data, len);
}

/* Appends, so a body can be written in several calls. */
static int res_printf(bgs_res *res, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    if (res == NULL || fmt == NULL)
        return BGS_EINVAL;
    va_start(ap, fmt);
    if (strcmp(fmt, "%s") == 0) {
        /* bgs_res_text's call: copy the string, no format to parse. */
        const char *s = va_arg(ap, const char *);
        va_end(ap);
        return res_append(res, s ? s : "(null)", s ? strlen(s) : 6);
    }
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return BGS_EINVAL;
    if ((size_t)n < sizeof small)
        return res_append(res, small, (size_t)n);
    body_reserve(res, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(res->body + res->body_len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    res->body_len += (size_t)n;
    return 0;
}

static tasks_group *res_group(bgs_res *res)
{
    if (res->group == NULL)
        res->group = tasks_group_new(res->req->gen, res->req->id, res->mode);
    return res->group;
}

static int res_task(bgs_res *res, const char *name, const void *payload,
                    size_t len, uint64_t *id_out)
{
    if (res == NULL || name == NULL || (payload == NULL && len > 0))
        return BGS_EINVAL;
    if (!res->in_handler)
        return BGS_ESTATE;
    return tasks_group_add(res_group(res), name, payload, len, id_out);
}

static int res_task_fn(bgs_res *res, bgs_adhoc_fn fn, void *arg,
                       bgs_free_fn free_fn, uint64_t *id_out)
{
    if (res == NULL || fn == NULL)
        return BGS_EINVAL;
    if (!res->in_handler)
        return BGS_ESTATE;
    return tasks_group_add_fn(res_group(res), fn, arg, free_fn, id_out);
}

static int res_task_mode(bgs_res *res, uint32_t mode)
{
    if (res == NULL || (mode != BGS_SEQUENTIAL && mode != BGS_CONCURRENT))
        return BGS_EINVAL;
    res->mode = mode;
    if (res->group)
        return tasks_group_set_mode(res->group, mode);
    return 0;
}

static int res_accepted(bgs_res *res, uint64_t task_id)
{
    char loc[64];
    if (res == NULL || task_id == 0)
        return BGS_EINVAL;
    snprintf(loc, sizeof loc, "/_bgserve/tasks/%llu", (unsigned long long)task_id);
    res->status = 202;
    return res_header(res, "Location", loc);
}

static bgs_deferred *res_defer(bgs_res *res, uint32_t timeout_ms)
{
    if (res == NULL || !res->in_handler || res->deferred != NULL)
        return NULL;
    res->deferred = deferred_new(timeout_ms, res->req->resume_fn, res->req->conn);
    return res->deferred;
}

static void remember_queued(bgs_res *res, uint64_t id)
{
    res->queued_ids = xrealloc(res->queued_ids, (res->nqueued + 1) * sizeof *res->queued_ids);
    res->queued_ids[res->nqueued++] = id;
}

static int req_enqueue(bgs_req *req, const char *name, const void *payload,
                       size_t len, uint64_t *id_out)
{
    uint64_t id;
    if (req == NULL || name == NULL || (payload == NULL && len > 0))
        return BGS_EINVAL;
    if (!req->res->in_handler)
        return BGS_ESTATE;
    int rc = tasks_enqueue(req->gen, req->id, name, payload, len, NULL, NULL, &id);
    if (rc != 0)
        return rc;
    remember_queued(req->res, id);
    if (id_out)
        *id_out = id;
    return 0;
}

/* The awaited task is final: answer with its result or its error. */
static void await_done(void *arg, const tasks_final *f)
{
    bgs_deferred *d = arg;
    if (f->succeeded) {
        if (f->has_result)
            deferred_complete(d, f->result_status ? f->result_status : 200, f->result_type,
                              f->result, f->result_len);
        else
            deferred_complete(d, 200, NULL, NULL, 0);
        return;
    }
    char msg[700];
    int n = snprintf(msg, sizeof msg, "task %llu (%s) %s%s%s\n", (unsigned long long)f->id,
                     f->name, f->state, f->error ? ": " : "", f->error ? f->error : "");
    if (n < 0)
        n = 0;
    deferred_complete(d, 500, "text/plain; charset=utf-8", msg,
                      (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
}

static int res_await(bgs_res *res, const char *name, const void *payload,
                     size_t len, uint32_t timeout_ms, uint64_t *id_out)
{
    uint64_t id;
    if (res == NULL || name == NULL || (payload == NULL && len > 0))
        return BGS_EINVAL;
    if (!res->in_handler || res->deferred != NULL)
        return BGS_ESTATE;
    bgs_deferred *d = res_defer(res, timeout_ms);
    int rc = tasks_enqueue(res->req->gen, res->req->id, name, payload, len, await_done, d, &id);
    if (rc != 0) {
        /* Nobody else has the handle: undo the deferral entirely. */
        res->deferred = NULL;
        deferred_release(d);
        deferred_put(d, 1);
        return rc;
    }
    remember_queued(res, id);
    if (id_out)
        *id_out = id;
    return 0;
}

/* ---- app ------------------------------------------------------------------ */

static void app_fail(bgs_app *app, const char *fmt, ...)
{
    va_list ap;
    if (app == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(app->fail_msg, sizeof app->fail_msg, fmt ? fmt : "(no message)", ap);
    va_end(ap);
    app->failed = 1;
}

static void app_set_data(bgs_app *app, void *data)
{
    if (app)
        app->data = data;
}

static void *app_data(bgs_app *app) { return app ? app->data : NULL; }

static int app_service(bgs_app *app, const char *name, uint32_t lifetime,
                       bgs_service_create_fn create,
                       bgs_service_destroy_fn destroy, void *arg)
{
    if (app == NULL)
        return BGS_EINVAL;
    if (!app->starting) {
        log_msg(BGS_LOG_ERROR, "bgs_app_service('%s') outside the start hook: "
                "register services in the start hook", name ? name : "(null)");
        return BGS_ESTATE;
    }
    return services_register(app->gen->services, name, lifetime, create, destroy, arg);
}

static int app_periodic(bgs_app *app, const char *task, uint32_t interval_ms,
                        const void *payload, size_t len, uint32_t flags)
{
    if (app == NULL || task == NULL || interval_ms == 0 || (payload == NULL && len > 0))
        return BGS_EINVAL;
    if (!app->starting) {
        log_msg(BGS_LOG_ERROR, "bgs_app_periodic('%s') outside the start hook: "
                "register periodic tasks in the start hook", task);
        return BGS_ESTATE;
    }
    return gen_add_periodic(app->gen, task, interval_ms, payload, len, flags);
}

static void app_log(bgs_app *app, uint32_t level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_pluginv(level, "app", app && app->gen->plugin->name[0] ? app->gen->plugin->name : "-", fmt, ap);
    va_end(ap);
}

static void app_handover_set(bgs_app *app, void *state)
{
    if (app)
        gen_handover_set(app, state);
}

static void *app_handover_get(bgs_app *app)
{
    if (app == NULL || !app->starting)
        return NULL;
    return gen_handover_get(app);
}

static int app_handover_taken(bgs_app *app)
{
    return app ? gen_handover_taken(app) : 0;
}

/* ---- the table ------------------------------------------------------------ */

static const bgs_host_api host_api = {
    .struct_size = sizeof(bgs_host_api),
    .abi_major = BGS_ABI_MAJOR,
    .abi_minor = BGS_ABI_MINOR,
    .req_method = req_method,
    .req_path = req_path,
    .req_param = req_param,
    .req_query = req_query_value,
    .req_header = req_header,
    .req_body = req_body,
    .req_remote_addr = req_remote_addr,
    .req_id = req_id,
    .req_app = req_app,
    .req_service = req_service,
    .req_log = req_log,
    .res_status = res_status,
    .res_header = res_header,
    .res_content_type = res_content_type,
    .res_body = res_body,
    .res_printf = res_printf,
    .res_task = res_task,
    .res_task_fn = res_task_fn,
    .res_task_mode = res_task_mode,
    .res_accepted = res_accepted,
    .app_fail = app_fail,
    .app_set_data = app_set_data,
    .app_data = app_data,
    .app_service = app_service,
    .app_periodic = app_periodic,
    .app_log = app_log,
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
    .res_defer = res_defer,
    .deferred_complete = deferred_complete,
    .deferred_release = deferred_release,
    .req_enqueue = req_enqueue,
    .res_await = res_await,
    .app_handover_set = app_handover_set,
    .app_handover_get = app_handover_get,
    .app_handover_taken = app_handover_taken,
};

const bgs_host_api *hostapi_table(void)
{
    return &host_api;
}
