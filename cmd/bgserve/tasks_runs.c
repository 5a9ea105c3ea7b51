/*
 * tasks_runs.c - the task engine's runs: queue reservations, dispatch
 * to the queue, one attempt on a worker, retries (back into the queue
 * with queue_nack), timeouts, the per-name concurrency caps, sequences,
 * bringing a task to its final state, and tasks queued at once
 * (tasks_enqueue, and tasks_retry for a failed one).
 *
 * Inline runs.  Handing a task to a worker costs a wake-up: 7 to 22 µs of
 * CPU on a small virtual machine (bench/README.md, section 23), against
 * well under a microsecond for a task such as "count this" or "append a
 * line".  So a task whose runs have been brief runs on the thread that
 * submits it, right after its response was sent (tasks_group_submit, on
 * the HTTP thread), with no wake-up and no wait.  Brief means: of the
 * same generation, at least TASKS_BRIEF_SEEN runs seen, and a decaying
 * score of runs over t->inline_us (--inline-tasks) below
 * TASKS_SLOW_LIMIT, which a share of slow runs of about 1 in 32 keeps it
 * over (a thread preempted now and then in a short run does not).  An
 * inline run that holds its thread TASKS_STALL_US or more is logged with
 * what to do, sends the name back to the workers for a while, and after
 * TASKS_STALLS_MAX such runs for the rest of the generation.  Only named
 * tasks without a concurrency cap or BGS_TASK_NO_INLINE run inline,
 * first attempts only (a retry comes from the queue's timer); with
 * --journal only those written ahead of their response, and only with
 * lazy starts (queue_journal.h: an awaited start would hold the HTTP
 * thread for a commit); never with --broker (the workers it feeds run
 * the tasks).
 *
 * Owns the "runs" part of struct tasks_engine (tasks_internal.h): the queue, the
 * reservations (`accepted`, an atomic bounded by queue_cap), the
 * accepting/stopping flags, the dispatch histogram, and conc_mu, which
 * guards each kind's conc_running and wait list.  Record fields are
 * changed through tasks_records.c under rec_mu.  No lock is held while
 * plugin code runs (the task, its free function, watchers).  Calls only
 * tasks_records.c of the engine; a periodic run learns that its item is
 * final through the watcher tasks_periodic.c put on it.
 */
#include "tasks_internal.h"

#include "crash.h"
#include "handle.h"
#include "log.h"
#include "queue_journal.h"
#include "queue_redis.h"
#include "util.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ---------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Delay before attempt `failed + 1`: base * 2^(failed-1), capped, with
 * "equal jitter" (half fixed, half random) so retries of many tasks that
 * failed together spread out. */
static uint64_t backoff_ms(const plugin_task *def, uint64_t id, uint32_t failed)
{
    uint64_t base = def && def->backoff_base_ms ? def->backoff_base_ms : PLUGIN_DEFAULT_BACKOFF_BASE_MS;
    uint64_t cap = def && def->backoff_cap_ms ? def->backoff_cap_ms : PLUGIN_DEFAULT_BACKOFF_CAP_MS;
    uint64_t d = base;
    for (uint32_t i = 1; i < failed && d < cap; i++)
        d *= 2;
    if (d > cap)
        d = cap;
    uint64_t half = d / 2;
    return d - half + splitmix64(id * 131u + failed) % (half + 1);
}

static void log_event(const char *event, uint64_t id, const char *name,
                      uint32_t attempt, uint64_t dur, const char *err, uint64_t retry_ms)
{
    log_task_rec r = {
        .event = event, .id = id, .name = name, .attempt = attempt,
        .duration_us = dur, .error = err, .retry_in_ms = retry_ms,
    };
    log_task(&r);
}

/* ---- reservations ------------------------------------------------------------ */

int tasks_runs_reserve(tasks_engine *t)
{
    size_t n = atomic_fetch_add(&t->accepted, 1);
    if (n >= t->queue_cap) {
        atomic_fetch_sub(&t->accepted, 1);
        return BGS_EFULL;
    }
    return 0;
}

int tasks_runs_admit(tasks_engine *t, const plugin_task *def, int adhoc)
{
    if (!atomic_load(&t->accepting))
        return BGS_ESHUTDOWN;
    if (def == NULL && !adhoc)
        return BGS_ENOTASK;
    /* Redis known to be away: a named task is load (503), not lost. */
    if (!adhoc && t->broker && !broker_available(t->broker))
        return BGS_EFULL;
    return tasks_runs_reserve(t);
}

/* Here, beside tasks_runs_admit whose refusals it explains (and below
 * tasks_periodic.c, which logs them too). */
const char *tasks_refusal(tasks_engine *t, int rc, const char **hint)
{
    const char *h = "";
    const char *cause;
    if (rc == BGS_ESHUTDOWN || !atomic_load(&t->accepting)) {
        cause = "the server is shutting down";
    } else if (t->broker && !broker_available(t->broker)) {
        cause = "redis (--broker), which keeps the tasks, is unreachable";
        h = "; bring redis back: the server reconnects by itself";
    } else {
        cause = "the task queue is full";
        h = "; raise --queue, or --workers if tasks wait to run";
    }
    if (hint)
        *hint = h;
    return cause;
}

static void unreserve(tasks_engine *t)
{
    atomic_fetch_sub(&t->accepted, 1);
}

/* ---- final states --------------------------------------------------------------- */

static void chain_stop(task_item *next, uint64_t pred_id, const char *pred_name,
                       int pred_state, uint8_t pred_jflags);

/*
 * Bring it to final state st with error err (copied; NULL for none).
 * Releases what the item owns first (free_fn, payload), then publishes
 * the final record, calls the watchers, continues or stops its sequence,
 * releases the capacity and the owner.  The caller must own it;
 * afterwards it may be freed at any time by ring eviction.  end_us: when
 * the run that ends it ended (util_now_us), or 0 (none, or read it now).
 */
static void finalize_at(task_item *it, int st, const char *err, uint64_t end_us)
{
    task_kind *kind = it->kind;
    tasks_engine *t = kind->engine;
    const tasks_owner *owner = it->owner;
    task_item *next = it->group_next;
    uint64_t id = it->id, dur;
    uint32_t attempts;
    char errcopy[TASKS_ERR_MAX];
    uint8_t jflags; /* read below after publishing, when it may be reused */

    it->group_next = NULL;
    it->owner = NULL;
    if ((it->jflags & (TASKS_JF_WRITTEN | TASKS_JF_LINKED)) == TASKS_JF_WRITTEN) {
        /* Written ahead of a dispatch that never came (discarded,
         * skipped): the journal must not run it at the next start, unless
         * a shutdown kept it for then; the broker's workers will,
         * untracked here. */
        if (t->journal && !(it->jflags & TASKS_JF_KEPT))
            journal_finish(t->journal, id, tasks_state_name((tasks_state)st), err, NULL, NULL);
        else if (t->broker)
            queue_redis_forget(t->q, id,
                               !(it->jflags & (TASKS_JF_ELSEWHERE | TASKS_JF_SETTLED)));
    }
    if (it->free_fn) {
        bgs_free_fn f = it->free_fn;
        it->free_fn = NULL;
        crash_frame cf; /* names the task if its free function crashes */
        crash_enter_task(&cf, kind->name, id, tasks_records_rid(it), it->owner_number);
        f(it->arg);
        crash_leave(&cf);
    }
    if (!tasks_records_payload_inline(it) && st != TASKS_FAILED) {
        /* A large one: do not keep it in the ring (a failed one is kept
         * for tasks_retry; len stays, for the record). */
        free(it->payload);
        it->payload = NULL;
    }
    if (err) /* it may be evicted once published: log from a copy */
        snprintf(errcopy, sizeof(errcopy), "%s", err);
    jflags = it->jflags;

    tasks_final fin = {.id = id, .name = kind->name, .state = (tasks_state)st,
                       .error = err ? errcopy : NULL};
    task_watch *watchers = tasks_records_finish(it, st, err, end_us, &fin, &dur, &attempts);

    static const char *const events[] = {
        [TASKS_SUCCEEDED] = "done", [TASKS_FAILED] = "failed", [TASKS_SKIPPED] = "skipped",
        [TASKS_DISCARDED] = "discarded", [TASKS_CANCELLED] = "cancelled",
    };
    if (!(jflags & TASKS_JF_ELSEWHERE) && (st != TASKS_SUCCEEDED || log_task_routine()))
        log_event(events[st], id, kind->name, attempts, dur, err ? errcopy : NULL, 0);

    while (watchers) {
        task_watch *w = watchers;
        watchers = w->next;
        w->cb(w->arg, &fin);
        free(w);
    }
    if (fin.result_type) /* unless a watcher took them; mostly none */
        free(fin.result_type);
    if (fin.result)
        free(fin.result);

    if (next) {
        if (st == TASKS_SUCCEEDED)
            tasks_runs_seq_start(next);
        else
            chain_stop(next, id, kind->name, st, jflags);
    }
    unreserve(t);
    if (owner && owner->release)
        owner->release(owner);
}

void tasks_runs_finalize(task_item *it, int st, const char *err)
{
    finalize_at(it, st, err, 0);
}

void tasks_runs_hand_back(task_item *it)
{
    tasks_engine *t = it->kind->engine;
    const tasks_owner *owner = it->owner;
    it->owner = NULL;
    tasks_records_drop(it);
    unreserve(t);
    if (owner && owner->release)
        owner->release(owner);
}

/* The rest of a sequence after a task that did not succeed: skipped, or
 * cancelled when the engine is shutting down; kept (with it) when the
 * shutdown kept the one before for the next start.  --broker, steps
 * Redis holds already (written ahead): they stay there with the one
 * before when it went on without this server (ELSEWHERE), or the worker
 * that ended it skipped them there too (SETTLED). */
static void chain_stop(task_item *next, uint64_t pred_id, const char *pred_name,
                       int pred_state, uint8_t pred_jflags)
{
    char msg[256];
    int st = atomic_load(&next->kind->engine->stopping) ? TASKS_CANCELLED : TASKS_SKIPPED;
    int kept = pred_jflags & TASKS_JF_KEPT;
    uint8_t inredis = 0;
    if (next->kind->engine->broker && (next->jflags & TASKS_JF_WRITTEN))
        inredis = pred_jflags & TASKS_JF_ELSEWHERE ? TASKS_JF_ELSEWHERE : TASKS_JF_SETTLED;

    if (inredis == TASKS_JF_ELSEWHERE)
        snprintf(msg, sizeof(msg), "this server stopped; the task stays in redis and runs on "
                 "the workers after task %" PRIu64 " (%s)", pred_id, pred_name);
    else if (kept)
        snprintf(msg, sizeof(msg), "server is shutting down before task %" PRIu64 " (%s), the "
                 "one before it in its sequence, ran; it stays queued in the journal for the "
                 "next start", pred_id, pred_name);
    else
        snprintf(msg, sizeof(msg), "previous task %" PRIu64 " (%s) %s", pred_id, pred_name,
                 tasks_state_name(pred_state));
    while (next) {
        task_item *n2 = next->group_next;
        next->group_next = NULL;
        if (kept)
            next->jflags |= TASKS_JF_KEPT;
        next->jflags |= inredis;
        tasks_runs_finalize(next, st, msg);
        next = n2;
    }
}

void tasks_runs_keep(task_item *it, const char *why)
{
    char msg[TASKS_ERR_MAX];
    if (it->kind->engine->journal) {
        it->jflags |= TASKS_JF_KEPT;
        snprintf(msg, sizeof msg, "%s; it stays queued in the journal for the next start", why);
        why = msg;
    }
    tasks_runs_finalize(it, TASKS_CANCELLED, why);
}

int tasks_runs_hand_back_stopped(task_item *it, int retrying)
{
    tasks_engine *t = it->kind->engine;
    char why[160] = "", msg[TASKS_ERR_MAX];
    if (!t->broker || !it->def || !queue_redis_consumes(t->q))
        return BGS_ENOTFOUND;
    int rc = queue_redis_hand_back(t->q, &it->qnode, why, sizeof why);
    if (rc == BGS_ENOTFOUND)
        return rc;
    if (rc == 0)
        snprintf(msg, sizeof msg, "handed back to redis as this worker stopped: another worker "
                 "will %s it", retrying ? "retry" : "run");
    else
        snprintf(msg, sizeof msg, "could not be handed back to redis as this worker stopped "
                 "(%s): it stays pending there, and another worker claims it after the "
                 "visibility timeout (%u ms)", why, broker_visibility_ms(t->broker));
    it->jflags |= TASKS_JF_ELSEWHERE; /* queue_redis logged where it went */
    tasks_runs_finalize(it, TASKS_CANCELLED, msg);
    return 0;
}

/* tasks_runs_keep for one a worker took (its start is on disk, or
 * counted in Redis) and did not run: the journal gets it back as queued,
 * attempts as they were; a broker's worker hands it back to Redis. */
static void keep_taken(task_item *it, const char *why)
{
    tasks_engine *t = it->kind->engine;
    if (t->journal && it->def)
        journal_unstart(t->journal, it->id, it->attempts, NULL, NULL);
    else if (tasks_runs_hand_back_stopped(it, 0) == 0)
        return;
    tasks_runs_keep(it, why);
}

/* ---- dispatch ---------------------------------------------------------------------- */

/* The cause (and hint, what to do) of a refusal rc of a task accepted
 * already, in the words of the 503s (tasks_refusal); a refusal of Redis
 * while it is reachable (over --broker-capacity, or an error it answered)
 * in queue_redis's words, backend ("" for none) and backend_hint, what to
 * do about it, as every other refusal has. */
static const char *dispatch_refusal(tasks_engine *t, int rc, const char *backend,
                                    const char *backend_hint, const char **hint)
{
    if (rc == BGS_EFULL && backend[0] && atomic_load(&t->accepting) &&
        broker_available(t->broker)) {
        *hint = backend_hint;
        return backend;
    }
    return tasks_refusal(t, rc, hint);
}

/* tasks_runs_dispatch; done/arg (may be NULL): told when it is durable. */
static void dispatch_done(task_item *it, queue_done_fn done, void *arg)
{
    tasks_engine *t = it->kind->engine;
    queue *q = t->q;
    char backend[256] = "";
    const char *backend_hint = "";
    int rc, written = it->jflags & TASKS_JF_WRITTEN;
    it->jflags |= TASKS_JF_LINKED; /* now: once linked, a worker owns it */
    if (written && t->journal)
        rc = queue_journal_adopt(q, &it->qnode, 0);
    else if (written)
        rc = queue_redis_link(q, &it->qnode);
    else if (t->broker)
        rc = queue_redis_enqueue(q, &it->qnode, done, arg, backend, sizeof backend,
                                 &backend_hint);
    else
        rc = queue_enqueue_at(q, (queue_node *const[]){&it->qnode}, 1, 0, done, arg);
    if (rc != 0) { /* refused: still ours (a push stamps TASKS_MONO_US) */
        const char *hint;
        const char *cause = dispatch_refusal(t, rc, backend, backend_hint, &hint);
        char why[448]; /* backend, hint, and tasks_runs_keep's words within TASKS_ERR_MAX */
        snprintf(why, sizeof why, "%s%s; the task never ran", cause, hint);
        it->jflags &= (uint8_t)~TASKS_JF_LINKED;
        if (done && !written)
            done(arg, rc, cause); /* the request answers 503 */
        if (written && rc == BGS_ESHUTDOWN)
            tasks_runs_keep(it, why); /* the journal runs it at the next start */
        else
            tasks_runs_finalize(it, TASKS_CANCELLED, why);
    }
}

void tasks_runs_dispatch(task_item *it)
{
    dispatch_done(it, NULL, NULL);
}

void tasks_runs_dispatch_batch(task_item **its, size_t n)
{
    queue_node *nodes[16];

    if (n == 0)
        return;
    tasks_engine *t = its[0]->kind->engine;
    if (t->journal || t->broker) { /* written ahead, or ad hoc: one by one */
        for (size_t i = 0; i < n; i++)
            tasks_runs_dispatch(its[i]);
        return;
    }
    for (size_t i = 0; i < n; i++)
        nodes[i] = &its[i]->qnode;
    if (queue_enqueue_batch(its[0]->kind->engine->q, nodes, n) != 0) /* stamps TASKS_MONO_US */
        for (size_t i = 0; i < n; i++)
            tasks_runs_finalize(its[i], TASKS_CANCELLED, "server is shutting down; the task never ran");
}

int tasks_runs_skip_undelivered(const task_item *it)
{
    return it->def && (it->def->flags & BGS_TASK_DELIVERED_ONLY) &&
           atomic_load_explicit(&it->delivered, memory_order_relaxed) == 0;
}

void tasks_runs_seq_start(task_item *it)
{
    while (it) {
        if (!tasks_runs_skip_undelivered(it)) {
            tasks_runs_dispatch(it);
            return;
        }
        task_item *next = it->group_next;
        it->group_next = NULL;
        tasks_runs_finalize(it, TASKS_SKIPPED, "response was not fully delivered");
        it = next;
    }
}

/* ---- one attempt (worker threads) ---------------------------------------------------- */

static void on_timeout(sched_timer *tm)
{
    task_item *it = UTIL_CONTAINER_OF(tm, task_extra, timeout_timer)->item;
    atomic_fetch_or(&it->cancel, TASKS_CANCEL_SET | TASKS_CANCEL_TIMEOUT);
}

/* ---- inline runs ------------------------------------------------------------ */

#define TASKS_BRIEF_SEEN 32u      /* runs of a generation before any runs inline */
#define TASKS_SLOW_WEIGHT 1024u   /* what a slow run adds to the score */
#define TASKS_SLOW_LIMIT 1024u    /* inline only below: 1 slow run in 32 keeps it above */
#define TASKS_SLOW_DECAY 5        /* each brief run takes 1/32 of the score off */
#define TASKS_STALL_US 10000u     /* an inline run this long held its HTTP thread */
#define TASKS_STALL_WEIGHT 32768u /* a stall: on the workers for about 110 runs */
#define TASKS_STALLS_MAX 3u       /* then on the workers until the next generation */
#define TASKS_STALL_LOG_US 10000000u /* a stall line per name at most this often */

int tasks_runs_inline_ok(const task_item *it)
{
    const task_kind *k = it->kind;
    const plugin_task *def = it->def;
    if (k->engine->inline_us == 0 || def == NULL || def->max_concurrency || it->attempts ||
        (def->flags & BGS_TASK_NO_INLINE))
        return 0;
    if (k->engine->journal && !(it->jflags & TASKS_JF_WRITTEN))
        return 0; /* not on disk (the journal refused it): the usual way says so */
    return atomic_load_explicit(&k->brief_gen, memory_order_relaxed) == it->owner_number &&
           atomic_load_explicit(&k->brief_seen, memory_order_relaxed) >= TASKS_BRIEF_SEEN &&
           atomic_load_explicit(&k->slow_score, memory_order_relaxed) < TASKS_SLOW_LIMIT &&
           atomic_load_explicit(&k->stalls, memory_order_relaxed) < TASKS_STALLS_MAX;
}

/* An inline run held its thread for dur µs: say so (at most once per
 * TASKS_STALL_LOG_US per name, and always the last time). */
static void note_stall(task_item *it, uint64_t dur)
{
    task_kind *k = it->kind;
    unsigned n = atomic_fetch_add_explicit(&k->stalls, 1, memory_order_relaxed) + 1;
    uint64_t now = util_now_us();
    unsigned long long last = atomic_load_explicit(&k->stall_logged_us, memory_order_relaxed);
    if (n < TASKS_STALLS_MAX && last && now - last < TASKS_STALL_LOG_US)
        return;
    atomic_store_explicit(&k->stall_logged_us, now, memory_order_relaxed);
    log_msg(BGS_LOG_WARN,
            "task %" PRIu64 " (%s) ran %.1f ms on an HTTP thread, and the requests on that "
            "thread waited for it: bgserve runs a task there, right after its response is "
            "sent, while its runs take under %u us (--inline-tasks). %s; to keep every task "
            "on the workers, start bgserve with --inline-tasks 0",
            it->id, k->name, (double)dur / 1000.0, k->engine->inline_us,
            n >= TASKS_STALLS_MAX ? "Its runs go to the workers from now on, until the app is "
                                    "reloaded"
                                  : "Its next runs go to the workers");
}

/* What a run whose task function took dur µs says of its name (see
 * "Inline runs" at the top). */
static void note_run(task_item *it, uint64_t dur, int inl)
{
    task_kind *k = it->kind;
    unsigned limit = k->engine->inline_us;
    if (limit == 0 || it->def == NULL)
        return;
    if (atomic_load_explicit(&k->brief_gen, memory_order_relaxed) != it->owner_number) {
        /* Another generation: its code may differ. */
        atomic_store_explicit(&k->brief_seen, 0, memory_order_relaxed);
        atomic_store_explicit(&k->slow_score, 0, memory_order_relaxed);
        atomic_store_explicit(&k->stalls, 0, memory_order_relaxed);
        atomic_store_explicit(&k->brief_gen, it->owner_number, memory_order_relaxed);
    }
    unsigned seen = atomic_load_explicit(&k->brief_seen, memory_order_relaxed);
    if (seen < TASKS_BRIEF_SEEN)
        atomic_store_explicit(&k->brief_seen, seen + 1, memory_order_relaxed);
    unsigned s = atomic_load_explicit(&k->slow_score, memory_order_relaxed), s2 = s;
    if (dur > limit)
        s2 = s + (inl && dur >= TASKS_STALL_US ? TASKS_STALL_WEIGHT : TASKS_SLOW_WEIGHT);
    else if (s > 0)
        s2 = s - ((s >> TASKS_SLOW_DECAY) ? (s >> TASKS_SLOW_DECAY) : 1);
    if (s2 < s && dur > limit) /* wrapped: stay at the top */
        s2 = UINT_MAX;
    if (s2 != s)
        atomic_store_explicit(&k->slow_score, s2, memory_order_relaxed);
    if (inl && dur >= TASKS_STALL_US)
        note_stall(it, dur);
}

/* Tell the queue the job is final (a durable backend records it). */
static void ack(tasks_engine *t, task_item *it, queue_end end, const char *err)
{
    queue_outcome o = {.end = end, .error = err};
    queue_ack(t->q, &it->qnode, &o);
}

/* One attempt of it on this worker, or inline on the thread that
 * submitted it (inl: wall is the wall clock tasks_runs_inline read just
 * before its stamp, which is then this run's start), up to its next
 * state. */
static void run_once(task_item *it, int inl, uint64_t wall)
{
    bgs_task_ctx ctx;
    tasks_engine *t = it->kind->engine;
    const plugin_task *def = it->def;
    /* The wall clock first: the record's end is started_wall plus the
     * run's monotonic length (tasks_records_finish), which so never
     * passes the wall clock at the end, and the next task of a sequence,
     * started after it, never seems to start before it ended.  Inline,
     * both were read a moment ago, in that order: not again. */
    uint64_t started_wall = inl ? wall : util_wall_us();
    uint64_t now = inl ? TASKS_MONO_US(it) : util_now_us(), end, dur;
    int rc;

    /* Field by field: ctx.err (512 bytes) is read only once has_err is set. */
    ctx.item = it;
    ctx.scope = NULL;
    ctx.has_err = 0;
    ctx.err[0] = '\0';
    ctx.has_result = 0;
    ctx.res_status = 0;
    ctx.res_type = NULL;
    ctx.res_data = NULL;
    ctx.res_len = 0;

    uint64_t submitted = TASKS_MONO_US(it);
    pthread_mutex_lock(&t->rec_mu);
    tasks_records_transition_locked(it, TASKS_RUNNING);
    ctx.attempt = ++it->attempts;
    it->started_wall = started_wall;
    TASKS_MONO_US(it) = now;
    pthread_mutex_unlock(&t->rec_mu);

    if (ctx.attempt == 1)
        latency_add(&t->dispatch_hist, now - submitted);
    if (log_task_routine())
        log_event("start", it->id, it->kind->name, ctx.attempt, 0, NULL, 0);

    if (def && def->timeout_ms)
        sched_add(t->sched, &tasks_records_extra(it)->timeout_timer,
                  now + (uint64_t)def->timeout_ms * 1000u, on_timeout);
    crash_frame cf; /* names the task if it crashes */
    crash_enter_task(&cf, it->kind->name, it->id, tasks_records_rid(it), it->owner_number);
    cf.plugin = it->owner ? it->owner->label : NULL; /* for misuse warnings */
    bgs_task_ctx *h = handle_open(HANDLE_TASK, &ctx, HANDLE_THREAD_BOUND);
    /* The task's own time, for the inline verdict: not the start line
     * (a write to a terminal can take longer than the task) nor ours. */
    uint64_t fn_start = util_now_us();
    rc = def ? def->fn(h, it->payload, it->len) : it->afn(h, it->arg);
    uint64_t fn_end = util_now_us(), fn_us = fn_end - fn_start;
    handle_close(h); /* a kept handle is refused from now on */
    crash_leave(&cf);
    /* The run ends where its function did (one clock read fewer), unless
     * a timer or a scope of services the task opened is left to end. */
    int more = (def && def->timeout_ms) || ctx.scope;
    if (def && def->timeout_ms)
        sched_cancel(t->sched, &it->x->timeout_timer);
    services_scope_end(ctx.scope);
    end = more ? util_now_us() : fn_end;
    dur = end - now;
    note_run(it, fn_us, inl);

    if (ctx.has_result) { /* moved into the record */
        task_extra *x = tasks_records_extra(it);
        pthread_mutex_lock(&t->rec_mu);
        free(x->res_type);
        free(x->res_data);
        x->has_result = 1;
        x->res_status = ctx.res_status;
        x->res_type = ctx.res_type;
        x->res_data = ctx.res_data;
        x->res_len = ctx.res_len;
        pthread_mutex_unlock(&t->rec_mu);
    }

    if (rc == 0) {
        ack(t, it, QUEUE_SUCCEEDED, NULL);
        finalize_at(it, TASKS_SUCCEEDED, NULL, end);
        return;
    }
    char err[TASKS_ERR_MAX + 64];
    if (ctx.has_err)
        snprintf(err, sizeof(err), "%s", ctx.err);
    else
        snprintf(err, sizeof(err), "task returned %d", rc);
    if (atomic_load(&it->cancel)) {
        char why[TASKS_ERR_MAX + 128];
        if (atomic_load(&it->cancel) & TASKS_CANCEL_TIMEOUT)
            snprintf(why, sizeof(why), "timed out after %" PRIu32 " ms: %s",
                     def->timeout_ms, err);
        else
            snprintf(why, sizeof(why), "cancelled at shutdown: %s", err);
        ack(t, it, QUEUE_CANCELLED, why);
        finalize_at(it, TASKS_CANCELLED, why, end);
        return;
    }
    if (ctx.attempt >= it->max_attempts) {
        ack(t, it, QUEUE_FAILED, err);
        finalize_at(it, TASKS_FAILED, err, end);
        return;
    }

    uint64_t delay = backoff_ms(def, it->id, ctx.attempt);
    pthread_mutex_lock(&t->rec_mu);
    tasks_records_transition_locked(it, TASKS_RETRYING);
    free(it->error);
    it->error = xstrdup(err);
    pthread_mutex_unlock(&t->rec_mu);
    log_event("retry", it->id, it->kind->name, ctx.attempt, dur, err, delay);
    /* The queue holds it until the backoff is over.  A shutdown that
     * began meanwhile refuses it (it would never run): cancel it here;
     * unless the queue handed it to other processes even so (--broker: a
     * worker's own task is in Redis's delayed set; with Redis away, any
     * task it ran stays pending there), where it is not lost.
     * One that comes later hands it back with try_take. */
    int nrc = queue_nack(t->q, &it->qnode, util_now_us() + delay * 1000u, err);
    if (nrc == QUEUE_ELSEWHERE) {
        it->jflags |= TASKS_JF_ELSEWHERE; /* queue_redis logged it */
        tasks_runs_finalize(it, TASKS_CANCELLED,
                            "handed back to redis as this worker stopped: another worker will "
                            "retry it");
    } else if (nrc != 0) {
        tasks_runs_keep(it, "server is shutting down; the retry never ran");
    }
}

/* Run it (taken from the queue, or inline: inl and wall as for
 * run_once), then what waits for its name's cap. */
static void run_node(task_item *it, tasks_engine *t, int inl, uint64_t wall)
{
    /* Enforce the per-name cap, run, and when a capped run ends, run the
     * next task of that name waiting for a slot. */
    while (it) {
        task_kind *kind = it->kind;
        uint32_t cap = it->def ? it->def->max_concurrency : 0;
        if (atomic_load(&t->stopping)) {
            /* Taken just before the queue shut down: do not start it. */
            keep_taken(it, "cancelled at shutdown; the task never ran");
            return;
        }
        if (cap) {
            pthread_mutex_lock(&t->conc_mu);
            if (kind->conc_running >= cap && atomic_load(&t->stopping)) {
                /* The shutdown has emptied the wait lists already. */
                pthread_mutex_unlock(&t->conc_mu);
                keep_taken(it, "cancelled at shutdown; the task never ran");
                return;
            }
            if (kind->conc_running >= cap) {
                /* Wait for a slot without holding this worker. */
                it->wait_next = NULL;
                if (kind->wait_tail)
                    kind->wait_tail->wait_next = it;
                else
                    kind->wait_head = it;
                kind->wait_tail = it;
                pthread_mutex_unlock(&t->conc_mu);
                return;
            }
            kind->conc_running++;
            pthread_mutex_unlock(&t->conc_mu);
        }
        run_once(it, inl, wall); /* it is no longer ours */
        inl = 0; /* the waiting ones came from the queue */
        it = NULL;
        if (cap) {
            pthread_mutex_lock(&t->conc_mu);
            kind->conc_running--;
            if (!atomic_load(&t->stopping) && kind->wait_head) {
                it = kind->wait_head;
                kind->wait_head = it->wait_next;
                if (kind->wait_head == NULL)
                    kind->wait_tail = NULL;
                it->wait_next = NULL;
            }
            pthread_mutex_unlock(&t->conc_mu);
        }
    }
}

void tasks_runs_node(queue_node *n, void *arg)
{
    run_node(UTIL_CONTAINER_OF(n, task_item, qnode), arg, 0, 0);
}

void tasks_runs_inline(task_item *it)
{
    tasks_engine *t = it->kind->engine;
    if (t->journal) {
        /* Its row is on disk (written ahead of the response); its start
         * goes to the next transaction, its end comes from the ack. */
        if (!queue_journal_start_here(t->q, &it->qnode)) {
            tasks_runs_dispatch(it);
            return;
        }
        it->jflags |= TASKS_JF_LINKED; /* ours to run: the ack records its end */
    }
    /* The run's start, wall clock first (run_once), and what a push
     * stamps: its dispatch starts, and ends, now. */
    uint64_t wall = util_wall_us();
    TASKS_MONO_US(it) = util_now_us();
    atomic_fetch_add_explicit(&t->inline_runs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&it->kind->inline_runs, 1, memory_order_relaxed);
    run_node(it, t, 1, wall);
}

void tasks_runs_cancel_waiting(tasks_engine *t)
{
    task_item *waiting = NULL;
    pthread_mutex_lock(&t->conc_mu);
    for (task_kind *k = atomic_load(&t->kinds); k; k = k->next) {
        while (k->wait_head) {
            task_item *it = k->wait_head;
            k->wait_head = it->wait_next;
            it->wait_next = waiting;
            waiting = it;
        }
        k->wait_tail = NULL;
    }
    pthread_mutex_unlock(&t->conc_mu);
    while (waiting) {
        task_item *next = waiting->wait_next;
        keep_taken(waiting, "cancelled at shutdown; the task never ran");
        waiting = next;
    }
}

/* ---- tasks queued at once (any thread) ------------------------------------------------ */

int tasks_enqueue(tasks_engine *t, const tasks_owner *owner, const char *request_id,
                  const plugin_task *def, const void *payload, size_t len,
                  tasks_final_fn cb, void *arg, uint64_t *id_out)
{
    return tasks_enqueue_gated(t, owner, request_id, def, payload, len, cb, arg, id_out, NULL);
}

int tasks_enqueue_gated(tasks_engine *t, const tasks_owner *owner, const char *request_id,
                        const plugin_task *def, const void *payload, size_t len,
                        tasks_final_fn cb, void *arg, uint64_t *id_out, durable_gate *gate)
{
    if (t == NULL || (payload == NULL && len != 0))
        return BGS_EINVAL;
    int rc = tasks_runs_admit(t, def, 0);
    if (rc != 0)
        return rc;
    task_item *it = tasks_records_new_rid(t, owner, tasks_records_kind_of(t, def), def, request_id,
                                      BGS_CONCURRENT, payload, len, 0);
    if (cb) {
        pthread_mutex_lock(&t->rec_mu);
        tasks_records_watch_locked(it, cb, arg);
        pthread_mutex_unlock(&t->rec_mu);
    }
    if (id_out)
        *id_out = it->id; /* read before dispatch: it may finish at once */
    if ((t->journal || t->broker) && gate) {
        durable_expect(gate); /* undone by dispatch_done if refused */
        dispatch_done(it, durable_done, gate);
    } else {
        tasks_runs_seq_start(it);
    }
    return 0;
}

/* What a retry takes of a task the journal holds (copied out of the
 * record, which lives only during the lookup's callback). */
typedef struct journal_copy {
    char *name, *rid;
    void *payload;
    size_t len;
    int retriable;   /* a dead letter, or failed for good */
} journal_copy;

static void copy_from_journal(void *arg, const journal_rec *r)
{
    journal_copy *c = arg;
    c->name = xstrdup(r->name);
    c->rid = r->request_id ? xstrdup(r->request_id) : NULL;
    c->len = r->payload_len;
    c->payload = r->payload_len ? xmemdup(r->payload, r->payload_len) : NULL;
    c->retriable = strcmp(r->state, "dead") == 0 || strcmp(r->state, "failed") == 0;
}

/* tasks_retry for a task no longer in memory: a dead letter (or a task
 * that failed for good) of this run or an earlier one, found in the
 * journal.  It is queued as a new task; its journal entry stays. */
static int retry_from_journal(tasks_engine *t, const tasks_owner *owner, const plugin *p,
                              uint64_t id, uint64_t *new_id, char *name, size_t name_cap)
{
    journal_copy c = {0};
    int rc = journal_lookup(t->journal, id, copy_from_journal, &c);
    if (rc == JOURNAL_ECLOSED)
        return BGS_ESHUTDOWN;
    if (rc != 0) {
        if (rc != JOURNAL_ENOTFOUND)
            log_msg(BGS_LOG_WARN, "retry of task %" PRIu64 ": the journal cannot be read (%s)",
                    id, journal_strerror(rc));
        return BGS_ENOTFOUND;
    }
    snprintf(name, name_cap, "%s", c.name);
    if (!c.retriable)
        rc = BGS_ESTATE;
    else
        rc = tasks_enqueue(t, owner, c.rid, plugin_find_task(p, c.name), c.payload, c.len, NULL,
                           NULL, new_id);
    free(c.name);
    free(c.rid);
    free(c.payload);
    return rc;
}

int tasks_retry(tasks_engine *t, const tasks_owner *owner, const plugin *p, uint64_t id,
                uint64_t *new_id, char *name, size_t name_cap)
{
    pthread_mutex_lock(&t->rec_mu);
    task_item *it = tasks_records_find_locked(t, id);
    if (it == NULL) {
        pthread_mutex_unlock(&t->rec_mu);
        return t->journal ? retry_from_journal(t, owner, p, id, new_id, name, name_cap)
                          : BGS_ENOTFOUND;
    }
    snprintf(name, name_cap, "%s", it->kind->name);
    if (it->state != TASKS_FAILED || it->def == NULL || (it->payload == NULL && it->len != 0)) {
        pthread_mutex_unlock(&t->rec_mu);
        return BGS_ESTATE;
    }
    size_t len = it->len;
    void *payload = len ? xmemdup(it->payload, len) : NULL;
    const char *r = tasks_records_rid(it);
    char *rid = r ? xstrdup(r) : NULL;
    pthread_mutex_unlock(&t->rec_mu);
    int rc = tasks_enqueue(t, owner, rid, plugin_find_task(p, name), payload, len, NULL, NULL,
                           new_id);
    free(payload);
    free(rid);
    return rc;
}
