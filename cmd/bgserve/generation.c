/*
 * generation.c - reference-counted plugin generations, the current
 * pointer, reloads and retirement.
 *
 * Each load of the plugin is a generation.  Requests and tasks hold a
 * reference to the generation they started in (tasks through the owner
 * handle each generation embeds, which the task engine retains and
 * releases without knowing what it is); so do periodic schedules, until
 * they are stopped at the swap.  The plugin's task definitions are
 * resolved for the engine once, when the generation is made.  When the last reference goes the
 * generation retires on the thread that dropped it: stop hook, services
 * destroyed, dlclose (with an RTLD_NOLOAD check) and the private copy
 * deleted.
 *
 * The "current" pointer is a value, generation_slot: the process's own
 * (`process_slot`, what generation_current and reloads use) and one per
 * instance of the testing library (generation_slot_new), so several plugins
 * loaded in one process each serve their own requests.
 *
 * Locks:
 *   slot->lock    - that slot's `current`; readers take a reference under
 *                   it, so a generation cannot be freed between reading
 *                   the pointer and retaining it.
 *   live_lock     - the count of loaded generations and live_cv, which
 *                   retirement signals (the bound on overlapping ones).
 *   stats_lock    - reload counters and the last reload error.
 *   handover_lock - every app's hand-over fields.
 *   app_lock      - the app handles (rwlock): host functions look one up
 *                   and use its app holding it for reading; retire closes
 *                   the handle holding it for writing, after the stop
 *                   hook, so no call is using the app when it is freed.
 *   reload_lock   - serialises generation_reload.
 * A generation's other fields are written only while it is created (one
 * thread, before it is shared) and in retire (after the last reference).
 */
#include "generation.h"

#include "crash.h"
#include "events.h"
#include "handle.h"
#include "json.h"
#include "log.h"
#include "util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static generation_deps deps; /* generation_setup, before any thread; read-only afterwards */

struct generation_slot {
    pthread_mutex_t lock;
    generation *current; /* guarded by lock; holds one reference */
};

static generation_slot process_slot = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_cv = PTHREAD_COND_INITIALIZER;
static unsigned live_count;          /* live_lock */
static generation *live_list[64];    /* live_lock: for "who holds what" */

static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t reloads, reload_failures; /* stats_lock */
static char *last_error;                  /* stats_lock; NULL when none */
static uint64_t next_number = 2;          /* reload_lock */

static pthread_mutex_t handover_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t app_lock = PTHREAD_RWLOCK_INITIALIZER;
static pthread_mutex_t reload_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- life and death ------------------------------------------------------- */

static void live_add(generation *g)
{
    pthread_mutex_lock(&live_lock);
    live_count++;
    for (size_t i = 0; i < sizeof live_list / sizeof live_list[0]; i++)
        if (live_list[i] == NULL) {
            live_list[i] = g;
            break;
        }
    pthread_mutex_unlock(&live_lock);
}

static void live_remove(generation *g)
{
    pthread_mutex_lock(&live_lock);
    live_count--;
    for (size_t i = 0; i < sizeof live_list / sizeof live_list[0]; i++)
        if (live_list[i] == g)
            live_list[i] = NULL;
    pthread_cond_broadcast(&live_cv);
    pthread_mutex_unlock(&live_lock);
}

static void free_periodic(generation *g)
{
    while (g->periodic) {
        generation_periodic *p = g->periodic;
        g->periodic = p->next;
        free(p->payload);
        free(p);
    }
}

/* Runs when the last reference goes; schedules hold references, so they
 * were stopped before (tasks_periodic_stop_owner). */
static void retire(generation *g)
{
    uint64_t number = g->number;
    int announce = g->started && !g->app.check_only && !atomic_load(&g->quiet);
    if (g->started && g->plugin->stop) {
        g->app.starting = 0;
        crash_frame cf; /* names the hook if it crashes */
        crash_enter_hook(&cf, "stop", g->number, g->plugin->name);
        g->plugin->stop(g->app.handle);
        crash_leave(&cf);
    }
    pthread_rwlock_wrlock(&app_lock);
    handle_close(g->app.handle);
    g->app.handle = NULL;
    pthread_rwlock_unlock(&app_lock);
    services_free(g->services);
    plugin_unload(g->plugin);
    free_periodic(g);
    /* Say it before freeing the slot: a reload waiting for room goes on
     * the moment the slot is free, and its lines must come after ours. */
    if (announce)
        log_msg(BGS_LOG_INFO, "generation %llu retired", (unsigned long long)number);
    live_remove(g);
    free(g);
}

void generation_setup(const generation_deps *d)
{
    deps = *d;
}

static void add_periodic(generation *g, const plugin_task *def, uint32_t interval_ms,
                         const void *payload, size_t len, uint32_t flags);

/* The owner handle a generation gives its tasks (tasks.h). */
static void owner_retain(const tasks_owner *o)
{
    generation_retain(o->ctx);
}

static void owner_release(const tasks_owner *o)
{
    generation_release(o->ctx);
}

static services *owner_services(const tasks_owner *o)
{
    return ((generation *)o->ctx)->services;
}

static bgs_app *owner_app(const tasks_owner *o)
{
    return ((generation *)o->ctx)->app.handle;
}

static int create(const char *path, uint64_t number, unsigned flags, generation *prev,
                  tasks_engine *engine, generation **out, char *err, size_t errlen)
{
    plugin *p = NULL;
    uint64_t t0 = util_now_us();
    *out = NULL;
    if (deps.host_api == NULL) {
        snprintf(err, errlen, "bgserve: internal error: cannot load '%s' before generation_setup() "
                 "gave the generation room its host API table", path);
        return -1;
    }
    if (plugin_load(path, deps.host_api, &p, err, errlen) != 0)
        return -1;

    generation *g = xcalloc(1, sizeof *g);
    atomic_init(&g->refs, 1);
    atomic_init(&g->quiet, 0);
    g->number = number;
    g->plugin = p;
    g->owner = (tasks_owner){.retain = owner_retain, .release = owner_release,
                             .services = owner_services, .app = owner_app, .ctx = g,
                             .number = number, .label = p->name};
    g->tasks = engine;
    if (engine)
        tasks_resolve(engine, p->tasks, p->ntasks);
    g->services = services_new();
    services_set_origin(g->services, number, p->name);
    g->app.gen = g;
    g->app.handle = handle_open(HANDLE_APP, &g->app, 0);
    g->app.check_only = (flags & GEN_CHECK_ONLY) != 0;
    live_add(g);

    for (size_t i = 0; i < p->ntasks; i++) {
        const plugin_task *t = &p->tasks[i];
        if (t->every_ms)
            add_periodic(g, t, t->every_ms, NULL, 0, t->flags);
    }

    if (p->start) {
        g->app.starting = 1;
        g->app.handover_from = prev;
        crash_frame cf; /* names the hook if it crashes */
        crash_enter_hook(&cf, "start", g->number, p->name);
        int rc = p->start(g->app.handle);
        crash_leave(&cf);
        g->app.starting = 0;
        pthread_mutex_lock(&handover_lock);
        g->app.handover_from = NULL;
        pthread_mutex_unlock(&handover_lock);
        if (rc != 0 || g->app.failed) {
            snprintf(err, errlen,
                     "bgserve: plugin '%s' failed to start: %s\n"
                     "  fix: the plugin's start hook returned %d; see its message above%s",
                     path, g->app.failed ? g->app.fail_msg : "(the start hook gave no message)",
                     rc, g->app.failed ? "" : " (call bgs_app_fail() to explain a failure)");
            generation_release(g); /* not started: the stop hook does not run */
            return -1;
        }
    }
    g->started = 1;
    g->load_us = util_now_us() - t0;
    g->loaded_wall_us = util_wall_us();
    *out = g;
    return 0;
}

int generation_create(const char *path, uint64_t number, unsigned flags,
               generation **out, char *err, size_t errlen)
{
    int rc = create(path, number, flags, NULL, deps.tasks, out, err, errlen);
    if (!(flags & GEN_CHECK_ONLY))
        events_reload("load", number, rc == 0, rc == 0 ? (*out)->load_us : 0, rc == 0 ? NULL : err);
    return rc;
}

int generation_create_for(tasks_engine *engine, const char *path, uint64_t number, unsigned flags,
                   generation **out, char *err, size_t errlen)
{
    return create(path, number, flags, NULL, engine, out, err, errlen);
}

void generation_activate(generation *g)
{
    for (generation_periodic *p = g->periodic; p; p = p->next)
        if (g->tasks == NULL ||
            tasks_periodic_add(g->tasks, &g->owner, p->def, p->interval_ms, p->payload,
                               p->len, p->flags) != 0)
            log_msg(BGS_LOG_ERROR, "cannot schedule periodic task '%s' of generation %llu",
                    p->def->name, (unsigned long long)g->number);
}

int generation_add_periodic(generation *g, const char *task, uint32_t interval_ms,
                     const void *payload, size_t len, uint32_t flags)
{
    if (task == NULL || interval_ms == 0 || (payload == NULL && len > 0))
        return BGS_EINVAL;
    const plugin_task *def = plugin_find_task(g->plugin, task);
    if (def == NULL)
        return BGS_ENOTASK;
    add_periodic(g, def, interval_ms, payload, len, flags);
    return 0;
}

static void add_periodic(generation *g, const plugin_task *def, uint32_t interval_ms,
                         const void *payload, size_t len, uint32_t flags)
{
    generation_periodic *p = xcalloc(1, sizeof *p);
    p->def = def;
    p->interval_ms = interval_ms;
    p->payload = len ? xmemdup(payload, len) : NULL;
    p->len = len;
    p->flags = flags;
    p->next = g->periodic;
    g->periodic = p;
}

void generation_retain(generation *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
}

void generation_release(generation *g)
{
    if (g == NULL)
        return;
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1)
        retire(g);
}

generation_slot *generation_slot_new(void)
{
    generation_slot *s = xcalloc(1, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    return s;
}

void generation_slot_free(generation_slot *s)
{
    if (s == NULL)
        return;
    generation_slot_set(s, NULL);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

generation *generation_slot_get(generation_slot *s)
{
    if (s == NULL)
        s = &process_slot;
    pthread_mutex_lock(&s->lock);
    generation *g = s->current;
    if (g)
        generation_retain(g);
    pthread_mutex_unlock(&s->lock);
    return g;
}

void generation_slot_set(generation_slot *s, generation *g)
{
    if (s == NULL)
        s = &process_slot;
    pthread_mutex_lock(&s->lock);
    generation *old = s->current;
    s->current = g;
    pthread_mutex_unlock(&s->lock);
    generation_release(old);
}

void generation_slot_abandon(generation_slot *s)
{
    if (s == NULL)
        s = &process_slot;
    pthread_mutex_lock(&s->lock);
    generation *g = s->current;
    s->current = NULL;
    pthread_mutex_unlock(&s->lock);
    if (g)
        atomic_store(&g->quiet, 1);
    generation_release(g);
}

generation *generation_current(void)
{
    return generation_slot_get(&process_slot);
}

void generation_abandon_current(void)
{
    generation_slot_abandon(&process_slot);
}

void generation_current_name(char *buf, size_t cap)
{
    pthread_mutex_lock(&process_slot.lock);
    snprintf(buf, cap, "%s", process_slot.current ? process_slot.current->plugin->name : "?");
    pthread_mutex_unlock(&process_slot.lock);
}

struct bgs_app *generation_app_enter(const void *h, int *why)
{
    pthread_rwlock_rdlock(&app_lock);
    struct bgs_app *app = handle_get(HANDLE_APP, h, why);
    if (app == NULL)
        pthread_rwlock_unlock(&app_lock);
    return app;
}

void generation_app_leave(void)
{
    pthread_rwlock_unlock(&app_lock);
}

void generation_set_current(generation *g)
{
    generation_slot_set(&process_slot, g);
}

/* ---- hand-over ---------------------------------------------------------------- */

void generation_handover_set(bgs_app *app, void *state)
{
    pthread_mutex_lock(&handover_lock);
    app->handover = state;
    app->handover_taken = 0;
    pthread_mutex_unlock(&handover_lock);
}

void *generation_handover_get(bgs_app *app)
{
    void *state = NULL;
    pthread_mutex_lock(&handover_lock);
    generation *prev = app->handover_from;
    if (prev && prev->app.handover && !prev->app.handover_taken) {
        state = prev->app.handover;
        prev->app.handover_taken = 1;
    }
    pthread_mutex_unlock(&handover_lock);
    return state;
}

int generation_handover_taken(bgs_app *app)
{
    pthread_mutex_lock(&handover_lock);
    int taken = app->handover_taken;
    pthread_mutex_unlock(&handover_lock);
    return taken;
}

/* ---- reload ------------------------------------------------------------------- */

/* Wait until fewer than max generations are loaded, saying who holds
 * the oldest.  reload_lock is held. */
static void wait_for_room(unsigned max)
{
    uint64_t next_note = 0;
    pthread_mutex_lock(&live_lock);
    while (live_count >= max) {
        uint64_t now = util_now_us();
        if (now >= next_note) {
            generation *oldest = NULL;
            for (size_t i = 0; i < sizeof live_list / sizeof live_list[0]; i++)
                if (live_list[i] && (!oldest || live_list[i]->number < oldest->number))
                    oldest = live_list[i];
            if (oldest)
                log_msg(BGS_LOG_WARN, "reload: %u generations are loaded (the most is %u, "
                        "see --max-generations); waiting for generation %llu to retire: it is "
                        "still held by %ld references (requests in flight, tasks, deferred "
                        "responses)", live_count, max, (unsigned long long)oldest->number,
                        atomic_load(&oldest->refs));
            next_note = now + 10u * 1000000u;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&live_cv, &live_lock, &ts);
    }
    pthread_mutex_unlock(&live_lock);
}

static void note_failure(const char *err)
{
    pthread_mutex_lock(&stats_lock);
    reload_failures++;
    free(last_error);
    last_error = xstrdup(err);
    pthread_mutex_unlock(&stats_lock);
}

void generation_note_build_failure(const char *why)
{
    note_failure(why); /* the dashboard hears of it from reload.c, with the output */
}

int generation_reload(const char *path, unsigned max_generations)
{
    char err[2048];
    pthread_mutex_lock(&reload_lock);
    wait_for_room(max_generations ? max_generations : 1);
    generation *old = generation_current();
    uint64_t old_number = old ? old->number : 0;
    generation *g = NULL;
    if (create(path, next_number, 0, old, deps.tasks, &g, err, sizeof err) != 0) {
        /* The same words as at startup, then what happens now. */
        note_failure(err); /* counted before it is said */
        events_reload("reload", 0, 0, 0, err);
        fprintf(stderr, "%s\n", err);
        log_msg(BGS_LOG_ERROR, "reload failed: keeping generation %llu",
                (unsigned long long)old_number);
        generation_release(old);
        pthread_mutex_unlock(&reload_lock);
        return -1;
    }
    next_number++;

    /* The swap: the old schedules stop first, so no periodic task runs
     * twice; requests and tasks already holding the old one finish on it. */
    if (old && old->tasks)
        tasks_periodic_stop_owner(old->tasks, &old->owner);
    /* Counted before the swap: whoever sees the new code also sees the
     * reload in /_bgserve/stats. */
    pthread_mutex_lock(&stats_lock);
    reloads++;
    free(last_error);
    last_error = NULL;
    pthread_mutex_unlock(&stats_lock);
    events_reload("reload", g->number, 1, g->load_us, NULL);
    generation_retain(g); /* ours, for the log line below */
    generation_set_current(g);
    generation_activate(g);
    long held = old ? atomic_load(&old->refs) - 1 : 0;
    log_msg(BGS_LOG_INFO, "reload: generation %llu serving (%zu routes, %zu tasks), loaded in "
            "%.1f ms; generation %llu retiring (%ld references)",
            (unsigned long long)g->number, g->plugin->nroutes, g->plugin->ntasks,
            (double)g->load_us / 1000.0, (unsigned long long)old_number, held);
    generation_release(g);
    generation_release(old);
    pthread_mutex_unlock(&reload_lock);
    return 0;
}

void generation_stats_json(json *j)
{
    generation *g = generation_current();
    json_key(j, "generation");
    json_u64(j, g ? g->number : 0);
    generation_release(g);
    pthread_mutex_lock(&stats_lock);
    json_key(j, "reloads");
    json_u64(j, reloads);
    json_key(j, "reload_failures");
    json_u64(j, reload_failures);
    json_key(j, "last_reload_error");
    json_str(j, last_error); /* NULL writes null */
    pthread_mutex_unlock(&stats_lock);
}
