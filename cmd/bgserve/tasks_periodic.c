/*
 * tasks_periodic.c - periodic schedules: a task run every interval for
 * an owner (a generation), never overlapping itself, and the phase a
 * reload keeps.
 *
 * Owns the "periodic" part of struct tasks_engine (tasks_internal.h): p_mu
 * guards the schedule list, each schedule's stopped/inflight/refs, and
 * the phase memo.  A schedule's timer (sched.h) fires on the scheduler
 * thread (on_tick), which makes an item and dispatches it like any other
 * (tasks_runs.c); the item carries a watcher (periodic_done) that says
 * when the run is final, so the runs never call back in here.  A
 * schedule holds a reference to its owner until it is stopped; stopping
 * waits for a tick in progress (sched_cancel) before releasing it.
 */
#include "tasks_internal.h"

#include "log.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

struct periodic {
    periodic *next;              /* p_mu */
    sched_timer timer;
    tasks_engine *engine;
    const tasks_owner *owner;    /* retained until stopped */
    const plugin_task *def;      /* valid while owner is held */
    task_kind *kind;
    void *payload;
    size_t len;
    uint64_t interval_us;
    uint64_t next_due;           /* scheduler thread (and add, before arming) */
    int stopped, inflight, refs; /* p_mu */
};

/* The phase of the schedules a reload stopped, so the next generation's
 * schedules of the same task and interval go on at the same time instead
 * of restarting their timers (saving every 4 s would otherwise starve a
 * task that runs every 5 s).  p_mu; replaced at each reload. */
struct phase_memo {
    phase_memo *next;
    char *name;
    uint64_t interval_us, next_due;
};

static void phases_clear_locked(tasks_engine *t)
{
    while (t->phases) {
        phase_memo *m = t->phases;
        t->phases = m->next;
        free(m->name);
        free(m);
    }
}

/* The remembered next run of name every interval_us, or 0; consumed. */
static uint64_t phase_take_locked(tasks_engine *t, const char *name, uint64_t interval_us)
{
    for (phase_memo **mp = &t->phases; *mp; mp = &(*mp)->next) {
        phase_memo *m = *mp;
        if (m->interval_us == interval_us && strcmp(m->name, name) == 0) {
            uint64_t due = m->next_due;
            *mp = m->next;
            free(m->name);
            free(m);
            return due;
        }
    }
    return 0;
}

static void periodic_unref(periodic *p)
{
    tasks_engine *t = p->engine;
    pthread_mutex_lock(&t->p_mu);
    int last = --p->refs == 0;
    pthread_mutex_unlock(&t->p_mu);
    if (last) {
        free(p->payload);
        free(p);
    }
}

/* The watcher on every item of a schedule: its run is final. */
static void periodic_done(void *arg, tasks_final *f)
{
    periodic *p = arg;
    (void)f;
    pthread_mutex_lock(&p->engine->p_mu);
    p->inflight = 0;
    pthread_mutex_unlock(&p->engine->p_mu);
    periodic_unref(p);
}

static void on_tick(sched_timer *tm)
{
    periodic *p = UTIL_CONTAINER_OF(tm, periodic, timer);
    tasks_engine *t = p->engine;
    uint64_t now = util_now_us();

    pthread_mutex_lock(&t->p_mu);
    if (p->stopped) {
        pthread_mutex_unlock(&t->p_mu);
        return;
    }
    p->next_due = tm->due_us + p->interval_us; /* due_us: moved by sched_advance too */
    if (p->next_due <= now)
        p->next_due = now + p->interval_us; /* missed ticks are not caught up */
    sched_add(t->sched, &p->timer, p->next_due, on_tick);
    if (p->inflight) {
        pthread_mutex_unlock(&t->p_mu);
        tasks_kadd(&p->kind->ticks_skipped, 1);
        log_msg(BGS_LOG_DEBUG, "periodic task %s: tick skipped, the previous run is still in progress",
                p->kind->name);
        return;
    }
    if (t->broker) {
        /* Once per interval across every process on the broker: whoever
         * takes the lease (for 9/10 of the interval) runs the tick. */
        pthread_mutex_unlock(&t->p_mu);
        uint64_t ms = p->interval_us / 1000u * 9u / 10u;
        int got = broker_lease(t->broker, p->kind->name,
                               ms == 0 ? 1u : ms > UINT32_MAX ? UINT32_MAX : (unsigned)ms);
        if (got != 1) {
            log_msg(BGS_LOG_DEBUG, "periodic task %s: this tick runs in another process%s",
                    p->kind->name, got < 0 ? " (or nowhere: redis is away)" : "");
            return;
        }
        pthread_mutex_lock(&t->p_mu);
        if (p->stopped) {
            pthread_mutex_unlock(&t->p_mu);
            return;
        }
    }
    int rc = atomic_load(&t->accepting) ? tasks_runs_reserve(t) : BGS_ESHUTDOWN;
    if (rc != 0) {
        pthread_mutex_unlock(&t->p_mu);
        tasks_kadd(&p->kind->ticks_skipped, 1);
        const char *hint;
        const char *cause = tasks_refusal(t, rc, &hint); /* dispatch's words for it */
        log_msg(BGS_LOG_WARN, "periodic task %s: tick skipped: %s%s", p->kind->name, cause, hint);
        return;
    }
    p->inflight = 1;
    p->refs++;
    pthread_mutex_unlock(&t->p_mu);

    /* p->owner stays valid: stopping this schedule waits for this
     * callback (sched_cancel) before it releases the reference. */
    task_item *it = tasks_records_new(t, p->owner, p->kind, p->def, NULL, BGS_CONCURRENT,
                                      p->payload, p->len, 0);
    pthread_mutex_lock(&t->rec_mu);
    tasks_records_watch_locked(it, periodic_done, p);
    pthread_mutex_unlock(&t->rec_mu);
    tasks_runs_dispatch(it);
}

int tasks_periodic_add(tasks_engine *t, const tasks_owner *owner, const plugin_task *def,
                       uint32_t interval_ms, const void *payload, size_t len,
                       uint32_t flags)
{
    if (t == NULL || interval_ms == 0 || (payload == NULL && len != 0))
        return BGS_EINVAL;
    if (atomic_load(&t->periodic_closed))
        return BGS_ESHUTDOWN;
    if (def == NULL)
        return BGS_ENOTASK;

    periodic *p = xcalloc(1, sizeof(*p));
    p->engine = t;
    p->owner = owner;
    if (owner && owner->retain)
        owner->retain(owner);
    p->def = def;
    p->kind = tasks_records_kind_of(t, def);
    p->payload = len ? xmemdup(payload, len) : NULL;
    p->len = len;
    p->interval_us = (uint64_t)interval_ms * 1000u;
    p->refs = 1;
    uint64_t now = util_now_us();
    p->next_due = now + ((flags & BGS_TASK_RUN_AT_START) ? 0 : p->interval_us);

    pthread_mutex_lock(&t->p_mu);
    uint64_t kept = phase_take_locked(t, def->name, p->interval_us); /* a reload keeps the phase */
    if (kept)
        p->next_due = kept > now ? kept : now;
    p->next = t->plist;
    t->plist = p;
    sched_add(t->sched, &p->timer, p->next_due, on_tick);
    pthread_mutex_unlock(&t->p_mu);
    return 0;
}

/* Stop the schedules of owner (every schedule when owner is NULL). */
static void periodic_stop(tasks_engine *t, const tasks_owner *owner)
{
    periodic *stop = NULL;

    pthread_mutex_lock(&t->p_mu);
    phases_clear_locked(t);
    for (periodic **pp = &t->plist; *pp;) {
        periodic *p = *pp;
        if (owner == NULL || p->owner == owner) {
            *pp = p->next;
            p->stopped = 1;
            if (owner != NULL) { /* a reload: remember when it was due */
                phase_memo *m = xcalloc(1, sizeof *m);
                m->name = xstrdup(p->kind->name);
                m->interval_us = p->interval_us;
                m->next_due = p->next_due;
                m->next = t->phases;
                t->phases = m;
            }
            p->next = stop;
            stop = p;
        } else {
            pp = &p->next;
        }
    }
    pthread_mutex_unlock(&t->p_mu);

    while (stop) {
        periodic *next = stop->next;
        sched_cancel(t->sched, &stop->timer); /* a tick in progress finishes first */
        const tasks_owner *o = stop->owner;
        stop->owner = NULL;
        if (o && o->release)
            o->release(o);
        periodic_unref(stop);
        stop = next;
    }
}

void tasks_periodic_stop_owner(tasks_engine *t, const tasks_owner *owner)
{
    if (t && owner)
        periodic_stop(t, owner);
}

void tasks_periodic_stop_all(tasks_engine *t)
{
    atomic_store(&t->periodic_closed, 1);
    periodic_stop(t, NULL);
}
