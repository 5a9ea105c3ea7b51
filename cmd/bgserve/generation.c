/*
 * generation.c - reference-counted plugin generations and the current
 * pointer.
 *
 * `current` is guarded by current_lock; readers take a reference under
 * the lock, so a generation can never be freed between reading the
 * pointer and retaining it.  A generation's own fields are written only
 * in gen_create (one thread, before it is shared) and in retire (after
 * the last reference is gone), so they need no lock.
 */
#include "generation.h"

#include "crash.h"
#include "log.h"
#include "tasks.h"
#include "util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static generation *current; /* guarded by current_lock; holds one reference */

/* Runs when the last reference goes; schedules hold references, so
 * they were stopped before (tasks_periodic_stop_gen). */
static void retire(generation *g)
{
    if (g->started && g->plugin->stop) {
        g->app.starting = 0;
        crash_frame cf; /* names the hook if it crashes */
        crash_enter_hook(&cf, "stop", g->number, g->plugin->name);
        g->plugin->stop(&g->app);
        crash_leave(&cf);
    }
    services_free(g->services);
    plugin_unload(g->plugin);
    free(g);
}

int gen_create(const char *path, uint64_t number, unsigned flags,
               generation **out, char *err, size_t errlen)
{
    plugin *p = NULL;
    *out = NULL;
    if (plugin_load(path, hostapi_table(), &p, err, errlen) != 0)
        return -1;

    generation *g = xcalloc(1, sizeof *g);
    atomic_init(&g->refs, 1);
    g->number = number;
    g->plugin = p;
    g->services = services_new();
    g->app.gen = g;
    g->app.check_only = (flags & GEN_CHECK_ONLY) != 0;

    /* Periodic tasks from the table first, so a start hook that looks at
     * them sees a complete picture; the hook may add more. */
    for (size_t i = 0; i < p->ntasks && !g->app.check_only; i++) {
        const plugin_task *t = &p->tasks[i];
        if (t->every_ms == 0)
            continue;
        if (tasks_periodic_add(g, t->name, t->every_ms, NULL, 0, t->flags) != 0) {
            snprintf(err, errlen, "bgserve: plugin '%s': cannot schedule periodic task '%s'",
                     path, t->name);
            tasks_periodic_stop_gen(g); /* schedules hold references */
            gen_release(g);
            return -1;
        }
    }

    if (p->start) {
        g->app.starting = 1;
        crash_frame cf;
        crash_enter_hook(&cf, "start", g->number, p->name);
        int rc = p->start(&g->app);
        crash_leave(&cf);
        g->app.starting = 0;
        if (rc != 0 || g->app.failed) {
            snprintf(err, errlen,
                     "bgserve: plugin '%s' failed to start: %s\n"
                     "  fix: the plugin's start hook returned %d; see its message above%s",
                     path, g->app.failed ? g->app.fail_msg : "(the start hook gave no message)",
                     rc, g->app.failed ? "" : " (call bgs_app_fail() to explain a failure)");
            tasks_periodic_stop_gen(g); /* schedules hold references */
            gen_release(g); /* not started: the stop hook does not run */
            return -1;
        }
    }
    g->started = 1;
    *out = g;
    return 0;
}

void gen_retain(generation *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
}

void gen_release(generation *g)
{
    if (g == NULL)
        return;
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1)
        retire(g);
}

generation *gen_current(void)
{
    pthread_mutex_lock(&current_lock);
    generation *g = current;
    if (g)
        gen_retain(g);
    pthread_mutex_unlock(&current_lock);
    return g;
}

void gen_set_current(generation *g)
{
    pthread_mutex_lock(&current_lock);
    generation *old = current;
    current = g;
    pthread_mutex_unlock(&current_lock);
    gen_release(old);
}
