/*
 * misuse.c - the warning line for a plugin's misuse of the host API, its
 * rate limit and its counter.
 *
 * Any thread may report.  The rate limit keeps, per call site (hashed
 * into a small table; a collision only shares a budget), when the site
 * last printed and how many it suppressed since: a site prints its first
 * misuse at once and then at most one line per MISUSE_INTERVAL_US, which
 * says how many were suppressed.  The table is guarded by `mu`; the count
 * is atomic.  What was running comes from the thread's crash frames
 * (crash.h), which every call into plugin code pushes.
 */
#include "misuse.h"

#include "bgserve.h"
#include "crash.h"
#include "generation.h"
#include "handle.h"
#include "log.h"
#include "util.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

#define MISUSE_SITES 256u
#define MISUSE_INTERVAL_US (10u * 1000000u)

typedef struct site_budget {
    const void *site;
    uint64_t last_us;
    uint64_t suppressed;
} site_budget;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static site_budget sites[MISUSE_SITES]; /* mu */
static atomic_uint_fast64_t total;

uint64_t misuse_count(void)
{
    return atomic_load(&total);
}

/* May site print now?  *suppressed: how many it did not print before. */
static int budget(const void *site, uint64_t *suppressed)
{
    uintptr_t v = (uintptr_t)site;
    site_budget *b = &sites[(v ^ (v >> 9) ^ (v >> 17)) % MISUSE_SITES];
    uint64_t now = util_now_us();
    int ok;
    pthread_mutex_lock(&mu);
    if (b->site != site) {
        b->site = site;
        b->last_us = 0;
        b->suppressed = 0;
    }
    ok = b->last_us == 0 || now - b->last_us >= MISUSE_INTERVAL_US;
    if (ok) {
        *suppressed = b->suppressed;
        b->suppressed = 0;
        b->last_us = now ? now : 1;
    } else {
        b->suppressed++;
    }
    pthread_mutex_unlock(&mu);
    return ok;
}

/* "route GET /x, request ID", "task NAME id N", "the start hook" or "a
 * plugin thread"; the plugin's name in *plugin_name. */
static void running(char *buf, size_t cap, char *plugin_name, size_t pcap)
{
    const crash_frame *f = crash_current();
    const char *p = f ? f->plugin : NULL;
    if (f == NULL)
        snprintf(buf, cap, "a plugin thread");
    else if (f->kind == CRASH_ROUTE)
        snprintf(buf, cap, "route %s %s, request %s", f->a, f->b ? f->b : "",
                 f->rid ? f->rid : "-");
    else if (f->kind == CRASH_TASK)
        snprintf(buf, cap, "task %s id %" PRIu64, f->a, f->task_id);
    else
        snprintf(buf, cap, "the %s hook", f->a ? f->a : "plugin");
    if (p == NULL) {
        /* One plugin per server: its name.  No reference is taken, so a
         * misuse reported under a room's lock never retires a generation
         * (and runs its stop hook) there. */
        generation_current_name(plugin_name, pcap);
    } else {
        snprintf(plugin_name, pcap, "%s", p);
    }
}

int misuse(const void *site, int code, const char *ret, const char *what, ...)
{
    char text[512], ctx[200], plugin_name[128], more[64] = "";
    uint64_t suppressed = 0;
    atomic_fetch_add(&total, 1);
    if (!budget(site, &suppressed))
        return code;
    va_list ap;
    va_start(ap, what);
    vsnprintf(text, sizeof text, what, ap);
    va_end(ap);
    running(ctx, sizeof ctx, plugin_name, sizeof plugin_name);
    if (suppressed)
        snprintf(more, sizeof more, " (%" PRIu64 " more from this call site not shown)",
                 suppressed);
    if (ret)
        log_msg(BGS_LOG_WARN, "%s in plugin '%s' (%s): returns %s (%s)%s", text, plugin_name,
                ctx, ret, bgs_errname(code), more);
    else
        log_msg(BGS_LOG_WARN, "%s in plugin '%s' (%s): returns %s%s", text, plugin_name, ctx,
                bgs_errname(code), more);
    return code;
}

int misuse_bad_handle(int kind, int why, const void *site, const char *fn, const char *ret)
{
    int rc = why == HANDLE_NULL ? BGS_EINVAL : BGS_ESTATE;
    const char *life = kind == HANDLE_TASK ? "it is valid during the task run, on its thread"
                       : kind == HANDLE_DEFERRED ? "it is valid until completed or released"
                       : kind == HANDLE_APP ? "it is valid from the start hook until the stop hook returns"
                                            : "it is valid until the handler returns, on its thread";
    return misuse(site, rc, ret, "%s(): %s handle: %s (%s)", fn, handle_kind_name(kind),
                  handle_why(why), life);
}

