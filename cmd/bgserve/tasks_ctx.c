/*
 * tasks_ctx.c - the task context a plugin's task function sees during a
 * run: the bgs_task_* half of the host API (hostapi.c puts these in the
 * table).
 *
 * The context (struct bgs_task_ctx, tasks_internal.h) lives on the
 * stack of the worker running the attempt (tasks_runs.c); the plugin
 * holds a handle to it (handle.h), usable only on that thread and only
 * during the run, so nothing here takes a lock.  The app and the services
 * come from the task's owner (tasks_owner).
 */
#include "tasks_internal.h"

#include "events.h"
#include "handle.h"
#include "log.h"
#include "misuse.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

/* The plugin holds a handle (handle.h) opened by run_once for the run and
 * usable only on its worker thread, so these need no lock.  A handle that
 * is NULL, ended or used from another thread is refused and reported
 * (misuse.h) with the neutral result each function documents. */
#define CTX_OF(h, fn, ret) \
    ((bgs_task_ctx *)misuse_handle(HANDLE_TASK, (h), MISUSE_SITE, (fn), (ret), NULL))

uint64_t tasks_ctx_id(bgs_task_ctx *h)
{
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_id", "0");
    return ctx ? ctx->item->id : 0;
}

const char *tasks_ctx_name(bgs_task_ctx *h)
{
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_name", "NULL");
    return ctx ? ctx->item->kind->name : NULL;
}

uint32_t tasks_ctx_attempt(bgs_task_ctx *h)
{
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_attempt", "0");
    return ctx ? ctx->attempt : 0;
}

int tasks_ctx_cancelled(bgs_task_ctx *h)
{
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_cancelled", "1 (stop)");
    return ctx ? atomic_load(&ctx->item->cancel) != 0 : 1;
}

void tasks_ctx_errorv(bgs_task_ctx *h, const char *fmt, va_list ap)
{
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_errorv", "nothing");
    if (ctx == NULL)
        return;
    vsnprintf(ctx->err, sizeof(ctx->err), fmt ? fmt : "(no message)", ap);
    ctx->has_err = 1;
}

void tasks_ctx_error(bgs_task_ctx *h, const char *fmt, ...)
{
    va_list ap;
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_error", "nothing");
    if (ctx == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(ctx->err, sizeof(ctx->err), fmt ? fmt : "(no message)", ap);
    va_end(ap);
    ctx->has_err = 1;
}

int tasks_ctx_result(bgs_task_ctx *h, uint32_t status, const char *type,
                     const void *data, size_t len)
{
    int code;
    bgs_task_ctx *ctx = misuse_handle(HANDLE_TASK, h, MISUSE_SITE, "bgs_task_result", NULL, &code);
    if (ctx == NULL)
        return code;
    if (status < 100 || status > 599)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_task_result(%u): not an HTTP status (100-599)", status);
    if (data == NULL && len != 0)
        return misuse(MISUSE_SITE, BGS_EINVAL, NULL, "bgs_task_result(%u, NULL, %zu): NULL data with a length", status, len);
    free(ctx->res_type);
    free(ctx->res_data);
    ctx->has_result = 1;
    ctx->res_status = status;
    ctx->res_type = type ? xstrdup(type) : NULL;
    ctx->res_data = len ? xmemdup(data, len) : NULL;
    ctx->res_len = len;
    return 0;
}

const char *tasks_ctx_request_id(bgs_task_ctx *h)
{
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_request_id", "NULL");
    return ctx ? tasks_records_rid(ctx->item) : NULL;
}

bgs_app *tasks_ctx_app(bgs_task_ctx *h)
{
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_app", "NULL");
    const tasks_owner *o = ctx ? ctx->item->owner : NULL;
    return o && o->app ? o->app(o) : NULL;
}

void *tasks_ctx_service(bgs_task_ctx *h, const char *name)
{
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_service", "NULL");
    if (ctx == NULL)
        return NULL;
    const tasks_owner *o = ctx->item->owner;
    services *s = o && o->services ? o->services(o) : NULL;
    char why[256];
    void *inst = services_lookup(s, &ctx->scope, name, why, sizeof why);
    if (inst == NULL && why[0])
        misuse(MISUSE_SITE, BGS_EINVAL, "NULL", "bgs_task_service(\"%s\"): %s",
               name ? name : "NULL", why);
    return inst;
}

/* The live dashboard keeps the lines of the tasks it watches (events.h). */
static void dashboard_line(bgs_task_ctx *ctx, uint32_t level, const char *fmt, va_list ap)
{
    if (ctx == NULL || fmt == NULL || events_watchers() == 0)
        return;
    char line[EVENTS_LOG_LINE];
    vsnprintf(line, sizeof(line), fmt, ap);
    events_task_log(ctx->item->id, level, line);
}

/* The line is logged even when the handle is refused (tagged "-"). */
void tasks_ctx_logv(bgs_task_ctx *h, uint32_t level, const char *fmt, va_list ap)
{
    char tag[32] = "-";
    va_list ap2;
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_logv", "nothing");
    if (ctx)
        snprintf(tag, sizeof(tag), "%" PRIu64, ctx->item->id);
    va_copy(ap2, ap);
    dashboard_line(ctx, level, fmt, ap2);
    va_end(ap2);
    log_pluginv(level, "task", tag, fmt ? fmt : "(null)", ap);
}

void tasks_ctx_log(bgs_task_ctx *h, uint32_t level, const char *fmt, ...)
{
    char tag[32] = "-";
    va_list ap;
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_log", "nothing");
    if (ctx)
        snprintf(tag, sizeof(tag), "%" PRIu64, ctx->item->id);
    va_start(ap, fmt);
    dashboard_line(ctx, level, fmt, ap);
    va_end(ap);
    va_start(ap, fmt);
    log_pluginv(level, "task", tag, fmt ? fmt : "(null)", ap);
    va_end(ap);
}
