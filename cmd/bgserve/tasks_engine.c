/*
 * tasks_engine.c - the task engine's life: tasks_new (its scheduler, the
 * queue, the workers), tasks_shutdown (stop accepting, drain,
 * cancel, the report of what did not finish), tasks_free, and the stats.
 *
 * Owns the "life" part of struct tasks_engine (tasks_internal.h): life_mu guards
 * the workers pointer (stats read it while the shutdown stops them); shut
 * and abandoned belong to the thread that makes and frees the engine
 * (main).  The drain waits on the records' rec_cv.  With a journal
 * (--journal) the queue is queue_journal's, and tasks_replay runs what an
 * earlier process left unfinished.  Calls the other files of the engine;
 * none calls back in here.
 */
#include "tasks_internal.h"

#include "journal_json.h"
#include "log.h"
#include "pace.h"
#include "queue_journal.h"
#include "queue_redis.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHUTDOWN_GRACE_US 1000000u /* running tasks get this after cancel */

/* What queue_journal writes for an item (queue_describe_fn).  Called by
 * the item's owner of the moment (enqueuer, taker, acker), which alone
 * writes the fields read here.  Ad hoc items have no name: memory only. */
static void describe_item(const queue_node *n, queue_job *out, void *arg)
{
    const task_item *it = UTIL_CONTAINER_OF(n, task_item, qnode);
    (void)arg;
    out->id = it->id;
    out->name = it->def ? it->kind->name : NULL;
    out->payload = it->payload;
    out->len = it->payload ? it->len : 0;
    out->attempts = it->attempts;
    out->max_attempts = it->max_attempts;
    out->request_id = tasks_records_rid(it);
    out->await_start = (it->jflags & TASKS_JF_AWAIT_START) != 0;
}

tasks_engine *tasks_new(const tasks_config *cfg)
{
    tasks_engine *t = xcalloc(1, sizeof(*t));

    t->sched = sched_new(); /* first: the queues time their jobs on it */
    tasks_records_init(t, cfg->keep);
    pthread_mutex_init(&t->conc_mu, NULL);
    pthread_mutex_init(&t->p_mu, NULL);
    pthread_mutex_init(&t->life_mu, NULL);
    t->queue_cap = cfg->queue_cap ? cfg->queue_cap : TASKS_DEFAULT_QUEUE_CAP;
    t->linger_us = cfg->linger_us;
    /* Inline runs skip the queue: not where a broker's workers run the
     * tasks, nor with a journal whose starts are awaited (an inline run
     * would wait for a commit on the HTTP thread). */
    t->inline_us = cfg->broker || (cfg->journal && !cfg->lazy_starts) ? 0 : cfg->inline_us;
    /* Bounded by the reservations instead of a queue capacity. */
    t->journal = cfg->journal;
    t->q = cfg->broker ? tasks_broker_queue(t, cfg)
           : t->journal ? queue_journal_new(t->journal, t->sched, 0, t->linger_us, describe_item, NULL)
                        : queue_mem_new(t->sched, 0, t->linger_us);
    if (t->q == NULL) {
        log_msg(BGS_LOG_ERROR, "cannot start the broker's thread");
        goto fail;
    }
    if (t->journal && !cfg->broker && cfg->lazy_starts)
        queue_journal_lazy_starts(t->q, 1); /* before the workers take */
    if (sched_run(t->sched) != 0) {
        log_msg(BGS_LOG_ERROR, "cannot start the timer thread");
        goto fail;
    }
    t->w = workers_start(cfg->workers ? cfg->workers : TASKS_DEFAULT_WORKERS, t->q,
                         tasks_runs_node, t);
    if (t->w == NULL)
        goto fail;
    atomic_store(&t->accepting, 1);
    return t;
fail:
    if (t->q)
        queue_destroy(t->q);
    sched_free(t->sched);
    tasks_records_destroy(t);
    pthread_mutex_destroy(&t->conc_mu);
    pthread_mutex_destroy(&t->p_mu);
    pthread_mutex_destroy(&t->life_mu);
    free(t);
    return NULL;
}

/* A task of the replay, by id: its item, or NULL when it will not run
 * (dead-lettered or skipped), so the rest of its sequence is skipped. */
typedef struct replayed {
    uint64_t id;
    task_item *it;
    uint64_t not_before_us;
    int chained;                /* runs after its sequence's previous task */
} replayed;

typedef struct replay_ctx {
    tasks_engine *t;
    const tasks_owner *owner;
    const plugin *p;
    uint64_t crashed_id;        /* the task the last crash ran in, 0: none */
    int crashed_sig;
    size_t queued, interrupted, gone, crashed, skipped;
    replayed *seen;             /* by id: journal_replay goes oldest first */
    size_t nseen, capseen;
} replay_ctx;

static void replay_note(replay_ctx *c, uint64_t id, task_item *it, uint64_t not_before_us)
{
    if (c->nseen == c->capseen) {
        c->capseen = c->capseen ? 2 * c->capseen : 64;
        c->seen = xrealloc(c->seen, c->capseen * sizeof(*c->seen));
    }
    c->seen[c->nseen++] = (replayed){.id = id, .it = it, .not_before_us = not_before_us};
}

static replayed *replay_find(replay_ctx *c, uint64_t id)
{
    size_t lo = 0, hi = c->nseen;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->seen[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < c->nseen && c->seen[lo].id == id ? &c->seen[lo] : NULL;
}

static void state_of(void *arg, const journal_rec *r)
{
    snprintf(arg, 32, "%s", r->state);
}

/*
 * A task of a sequence (prev_id: the one before it).  Returns the item
 * to run it after, NULL to run it now (the one before succeeded, or is
 * not known any more), or sets *why when it must not run: the one before
 * will not run, or finished without success.
 */
static task_item *replay_after(replay_ctx *c, uint64_t prev_id, char *why, size_t cap)
{
    replayed *p = replay_find(c, prev_id);
    if (p != NULL) {
        if (p->it == NULL)
            snprintf(why, cap, "previous task %" PRIu64 " of its sequence will not run", prev_id);
        return p->it;
    }
    char state[32] = "";
    if (journal_lookup(c->t->journal, prev_id, state_of, state) == 0 && state[0] &&
        strcmp(state, "succeeded") != 0)
        snprintf(why, cap, "previous task %" PRIu64 " of its sequence %s", prev_id, state);
    return NULL;
}

/* Move task id to the dead letters with why, and say so once. */
static void replay_dead(tasks_engine *t, uint64_t id, const char *why)
{
    log_msg(BGS_LOG_WARN, "journal: task %" PRIu64 " moved to the dead letters: %s "
            "(bgserve journal FILE retry %" PRIu64 " queues it again)", id, why, id);
    journal_dead(t->journal, id, why, NULL, NULL);
}

/* One task an earlier run left queued or running: run it for the owner,
 * by name; a name the plugin does not have goes to the dead letters. */
static void replay_one(void *arg, const journal_rec *r)
{
    replay_ctx *c = arg;
    tasks_engine *t = c->t;
    char skip[160] = "";
    task_item *after = r->prev_id ? replay_after(c, r->prev_id, skip, sizeof skip) : NULL;
    if (skip[0]) {
        journal_finish(t->journal, r->id, "skipped", skip, NULL, NULL);
        replay_note(c, r->id, NULL, 0);
        c->skipped++;
        return;
    }
    const plugin_task *def = c->p ? plugin_find_task(c->p, r->name) : NULL;
    if (def == NULL) {
        char why[320];
        snprintf(why, sizeof why, "task '%s' no longer exists in %s (generation %" PRIu64 ")",
                 r->name, c->p ? c->p->name : "the plugin", c->owner ? c->owner->number : 0);
        replay_dead(t, r->id, why);
        replay_note(c, r->id, NULL, 0);
        c->gone++;
        return;
    }
    uint32_t max = r->max_attempts ? r->max_attempts : 1;
    /* The attempt the last crash ran: recorded as running when its start
     * was committed before the crash; still queued, with the attempts
     * before it, when the start was lazy and not yet written (or the
     * journal was written before starts were). */
    uint32_t crashed_attempt = r->interrupted ? r->attempts : r->attempts + 1;
    int crashed = r->id == c->crashed_id;
    if (crashed && crashed_attempt >= max) {
        /* It crashed the last serving process on its last attempt: run
         * again, it would most likely crash this one too. */
        char why[320];
        snprintf(why, sizeof why, "attempt %" PRIu32 " of %" PRIu32 " crashed the serving "
                 "process (signal %d)", crashed_attempt, max, c->crashed_sig);
        replay_dead(t, r->id, why);
        replay_note(c, r->id, NULL, 0);
        c->crashed++;
        return;
    }
    atomic_fetch_add(&t->accepted, 1); /* accepted by an earlier run: never refused */
    task_item *it = tasks_records_new_rid(t, c->owner, tasks_records_kind_of(t, def), def,
                                      r->request_id, r->prev_id ? BGS_SEQUENTIAL : BGS_CONCURRENT,
                                      r->payload, r->payload_len, r->id);
    pthread_mutex_lock(&t->rec_mu);
    /* The next run is attempts + 1; a crash counts as an attempt. */
    it->attempts = crashed ? crashed_attempt : r->attempts;
    /* Its next start is awaited (even with lazy starts), so that a crash
     * in that run finds it on disk: a row left running by a dead process
     * says `attempts` whether the next run's lazy start was committed or
     * not, and a crash counted here is in memory only. */
    if (r->interrupted || crashed)
        it->jflags |= TASKS_JF_AWAIT_START;
    if (r->max_attempts)
        it->max_attempts = r->max_attempts;
    it->created_wall = r->created_us;
    pthread_mutex_unlock(&t->rec_mu);
    if (r->interrupted)
        c->interrupted++;
    else
        c->queued++;
    replay_note(c, r->id, it, r->not_before_us);
    if (after != NULL) {
        /* Started by the one before when it succeeds (tasks_runs_seq_start,
         * which links it without writing it again), skipped if it does not. */
        it->jflags |= TASKS_JF_WRITTEN;
        after->group_next = it;
        c->seen[c->nseen - 1].chained = 1;
    }
}

void tasks_replay(tasks_engine *t, const tasks_owner *owner, const plugin *p,
                  uint64_t crashed_id, int crashed_sig)
{
    if (t == NULL || t->journal == NULL || p == NULL)
        return;
    replay_ctx c = {.t = t, .owner = owner, .p = p, .crashed_id = crashed_id,
                    .crashed_sig = crashed_sig};
    size_t n = journal_replay(t->journal, replay_one, &c);
    /* Linked once every sequence is chained: a task must not finish
     * before the one after it is attached to it. */
    for (size_t i = 0; i < c.nseen; i++) {
        task_item *it = c.seen[i].it;
        if (it == NULL || c.seen[i].chained ||
            queue_journal_adopt(t->q, &it->qnode, c.seen[i].not_before_us) == 0)
            continue;
        /* Shutting down: the sequence stays queued on disk, in its order,
         * for the next start (nothing is written for the rest of it). */
        tasks_runs_keep(it, "server is shutting down; the task never ran");
    }
    free(c.seen);
    if (n > 0)
        log_msg(BGS_LOG_INFO, "journal: %zu task%s from an earlier run: %zu queued, %zu "
                "interrupted (run again, attempt + 1), %zu dead-lettered (function gone), "
                "%zu dead-lettered (crashed the process on its last attempt)%s",
                n, n == 1 ? "" : "s", c.queued, c.interrupted, c.gone, c.crashed,
                c.skipped ? "; some skipped: an earlier task of their sequence did not succeed"
                          : "");
}

typedef struct unfinished {
    uint64_t id;
    const char *name; /* kinds live as long as the engine */
    int state;
    uint32_t attempts;
    uint64_t running_us;
} unfinished;

/* Copy the live records (rec_mu held).  *n gets the count. */
static unfinished *snapshot_live_locked(tasks_engine *t, size_t *n)
{
    unfinished *u = xcalloc(t->live_count ? t->live_count : 1, sizeof(*u));
    size_t i = 0;
    uint64_t now = util_now_us();
    for (task_item *it = t->live_head; it; it = it->lnext, i++) {
        u[i].id = it->id;
        u[i].name = it->kind->name;
        u[i].state = it->state;
        u[i].attempts = it->attempts;
        u[i].running_us = it->state == TASKS_RUNNING ? now - TASKS_MONO_US(it) : 0;
    }
    *n = i;
    return u;
}

/* A warning, or info for a task that goes on elsewhere (kept). */
static void print_unfinished_line(const unfinished *u, const char *outcome, int kept)
{
    int level = kept ? BGS_LOG_INFO : BGS_LOG_WARN;
    if (u->state == TASKS_RUNNING)
        log_msg(level, "  task %" PRIu64 " %s %s (attempt %" PRIu32 ", running for %.3f s%s%s)",
                u->id, u->name, tasks_state_name(u->state), u->attempts,
                (double)u->running_us / 1e6, outcome ? "; " : "", outcome ? outcome : "");
    else
        log_msg(level, "  task %" PRIu64 " %s %s (%" PRIu32 " attempts so far%s%s)",
                u->id, u->name, tasks_state_name(u->state), u->attempts,
                outcome ? "; " : "", outcome ? outcome : "");
}

size_t tasks_shutdown(tasks_engine *t, unsigned drain_ms)
{
    if (t == NULL || t->shut)
        return 0;
    t->shut = 1;
    uint64_t deadline = util_now_us() + (uint64_t)drain_ms * 1000u;
    uint64_t fin0, fin1;

    /* 1. No new work; periodic schedules release their owners.  A worker
     * reads nothing more from the broker. */
    atomic_store(&t->accepting, 0);
    tasks_periodic_stop_all(t);
    int consumer = t->broker && queue_redis_consumes(t->q);
    if (consumer)
        queue_redis_drain(t->q);

    /* 2. Drain: queued, running and retrying tasks go on until the deadline. */
    pthread_mutex_lock(&t->rec_mu);
    fin0 = t->finished_total;
    t->draining = 1;
    while (t->live_count > 0 && util_now_us() < deadline) {
        struct timespec ts = util_mono_timespec(deadline);
        pthread_cond_timedwait(&t->rec_cv, &t->rec_mu, &ts);
    }
    fin1 = t->finished_total;

    /* 3. Cancel what is left.  What the report covers is taken now, in
     * the hold of rec_mu that read fin1 and sets stopping: a task either
     * finished in the drain (fin1 - fin0) or is in u.  A worker ends a
     * task because of the shutdown only after this hold (it read
     * stopping, or the queue, shut below, refused its nack or dispatch;
     * either way its finalize takes rec_mu later), so none ends unseen.
     * The snapshot used to come after queue_shutdown: a retry whose nack
     * the stopped queue refused was cancelled by its worker in between
     * and counted nowhere ("0 did not"). */
    size_t nu;
    atomic_store(&t->stopping, 1);
    unfinished *u = snapshot_live_locked(t, &nu);
    pthread_mutex_unlock(&t->rec_mu);

    /* Stop the queue and the timer thread, so that nothing moves while
     * we cancel and collect. */
    queue_shutdown(t->q);
    sched_halt(t->sched);

    pthread_mutex_lock(&t->rec_mu);
    for (task_item *it = t->live_head; it; it = it->lnext)
        atomic_fetch_or(&it->cancel, TASKS_CANCEL_SET);
    pthread_mutex_unlock(&t->rec_mu);

    /* The queue hands back the ready ones, then those waiting to retry.
     * A worker's go back to the broker (queue_redis_drain). */
    queue_node *n;
    while ((n = queue_try_take(t->q)) != NULL) {
        task_item *it = UTIL_CONTAINER_OF(n, task_item, qnode);
        pthread_mutex_lock(&t->rec_mu);
        int retrying = it->state == TASKS_RETRYING;
        pthread_mutex_unlock(&t->rec_mu);
        /* A worker's named task goes back to Redis: its record says
         * where it went, not that it never runs. */
        if (consumer && tasks_runs_hand_back_stopped(it, retrying) == 0)
            continue;
        tasks_runs_keep(it, retrying ? "cancelled at shutdown before its retry ran"
                                     : "cancelled at shutdown; the task never ran");
    }
    tasks_runs_cancel_waiting(t);
    /* --broker: the tasks added to Redis are the workers' now; their
     * records here end without a word (the report says where they are). */
    size_t nelse = 0, capelse = 0;
    uint64_t *elsewhere = NULL;
    while (t->broker && (n = queue_redis_take_sent(t->q)) != NULL) {
        task_item *it = UTIL_CONTAINER_OF(n, task_item, qnode);
        if (nelse == capelse) {
            capelse = capelse ? 2 * capelse : 16;
            elsewhere = xrealloc(elsewhere, capelse * sizeof(*elsewhere));
        }
        elsewhere[nelse++] = it->id;
        it->jflags |= TASKS_JF_ELSEWHERE;
        /* The steps after it that Redis keeps whole stay there too
         * (tasks_runs.c, chain_stop). */
        for (task_item *s = it->group_next; s && (s->jflags & TASKS_JF_WRITTEN); s = s->group_next) {
            if (nelse == capelse) {
                capelse = 2 * capelse;
                elsewhere = xrealloc(elsewhere, capelse * sizeof(*elsewhere));
            }
            elsewhere[nelse++] = s->id;
        }
        tasks_runs_finalize(it, TASKS_CANCELLED, "this server stopped; the task stays in redis "
                                                 "and runs on the workers");
    }

    /* 4. Grace for running tasks to notice the flag and return. */
    uint64_t grace = util_now_us() + SHUTDOWN_GRACE_US;
    pthread_mutex_lock(&t->rec_mu);
    while (t->running_now > 0 && util_now_us() < grace) {
        struct timespec ts = util_mono_timespec(grace);
        pthread_cond_timedwait(&t->rec_cv, &t->rec_mu, &ts);
    }
    pthread_mutex_unlock(&t->rec_mu);

    pthread_mutex_lock(&t->life_mu);
    workers *w = t->w;
    t->w = NULL;
    pthread_mutex_unlock(&t->life_mu);
    unsigned stuck = workers_stop(w, grace);
    if (stuck)
        t->abandoned = 1;

    /* 5. The report; nothing when no task ever existed (a server that
     * stopped before serving, e.g. its plugin was refused).  A worker's
     * tasks that ended here unfinished are back in Redis (handed back,
     * or pending until another worker claims them): not lost. */
    char (*outcome)[160] = xcalloc(nu ? nu : 1, sizeof *outcome);
    int *kept = xcalloc(nu ? nu : 1, sizeof *kept);
    size_t nlost = 0, nback = 0, njournal = 0, nlate = 0;
    for (size_t i = 0; i < nu; i++) {
        pthread_mutex_lock(&t->rec_mu);
        task_item *it = tasks_records_find_locked(t, u[i].id);
        int now_state = it ? it->state : -1;
        /* --journal: cancelled here, but its row stays queued for the
         * next start (tasks_runs_keep set the flag before finalising). */
        int injournal = it && now_state == TASKS_CANCELLED && (it->jflags & TASKS_JF_KEPT);
        /* One another process queued that went back to Redis (a failed
         * run's retry, or handed back) has no record here any more; the
         * drain kept its id. */
        int gone = 0;
        for (size_t k = 0; consumer && !it && k < t->ngone && !gone; k++)
            gone = t->gone[k] == u[i].id;
        pthread_mutex_unlock(&t->rec_mu);
        int away = 0;
        for (size_t k = 0; k < nelse && !away; k++)
            away = elsewhere[k] == u[i].id;
        /* A worker's task final by now was acked (or handed back when
         * cancelled): nothing of it is lost. */
        int back = gone || (consumer && now_state == TASKS_CANCELLED);
        /* One that succeeded in the grace period finished: nothing lost. */
        int late = now_state == TASKS_SUCCEEDED;
        kept[i] = away || injournal || late ||
                  (consumer && (now_state < 0 || tasks_is_final(now_state)));
        nback += (size_t)(away || back);
        njournal += (size_t)injournal;
        nlate += (size_t)late;
        nlost += (size_t)!kept[i];
        if (away)
            snprintf(outcome[i], sizeof outcome[i], "in redis: it runs on the workers");
        else if (back)
            snprintf(outcome[i], sizeof outcome[i], "back in redis: another worker runs it");
        else if (injournal)
            snprintf(outcome[i], sizeof outcome[i], "never ran here; kept queued in the "
                     "journal, it runs at the next start");
        else if (consumer && now_state == TASKS_RUNNING)
            snprintf(outcome[i], sizeof outcome[i], "did not return within the grace period; "
                     "abandoned (in redis, another worker claims it after the visibility "
                     "timeout)");
        else if (now_state < 0)
            snprintf(outcome[i], sizeof outcome[i], "finished after the deadline");
        else if (tasks_is_final(now_state))
            snprintf(outcome[i], sizeof outcome[i], "now %s", tasks_state_name(now_state));
        else if (now_state == TASKS_RUNNING)
            snprintf(outcome[i], sizeof outcome[i], "did not return within the grace period; "
                     "abandoned");
        else
            snprintf(outcome[i], sizeof outcome[i], "never ran; still %s",
                     tasks_state_name(now_state));
    }
    char inredis[64] = "", keptj[80] = "";
    if (consumer)
        snprintf(inredis, sizeof inredis, ", %zu went back to redis for other workers", nback);
    else if (t->broker)
        snprintf(inredis, sizeof inredis, ", %zu stay in redis for the workers", nback);
    if (t->journal)
        snprintf(keptj, sizeof keptj, ", %zu stay queued in the journal for the next "
                 "start", njournal);
    if (nu || fin1 != fin0 || atomic_load(&t->next_id) != 1)
        log_msg(nlost ? BGS_LOG_WARN : BGS_LOG_INFO, "drain: %" PRIu64 " tasks finished, %zu did "
                "not%s%s", fin1 - fin0 + nlate, nlost, inredis, keptj);
    for (size_t i = 0; i < nu; i++)
        print_unfinished_line(&u[i], outcome[i], kept[i]);
    free(kept);
    free(outcome);
    free(u);
    free(elsewhere);
    if (stuck)
        log_msg(BGS_LOG_WARN, "drain: %u worker thread%s stuck in plugin code; not waiting for %s",
                stuck, stuck == 1 ? "" : "s", stuck == 1 ? "it" : "them");

    pthread_mutex_lock(&t->rec_mu);
    t->draining = 0;
    pthread_mutex_unlock(&t->rec_mu);
    return nlost;
}

int tasks_abandoned(const tasks_engine *t)
{
    return t != NULL && t->abandoned;
}

void tasks_free(tasks_engine *t)
{
    if (t == NULL)
        return;
    tasks_shutdown(t, 0);
    if (t->abandoned)
        return; /* stuck workers still use the queue and the records */
    if (t->q)
        queue_destroy(t->q);
    sched_free(t->sched);
    tasks_records_destroy(t); /* every task is final: the shutdown saw to it */
    pthread_mutex_destroy(&t->conc_mu);
    pthread_mutex_destroy(&t->p_mu);
    pthread_mutex_destroy(&t->life_mu);
    free(t);
}

void tasks_report_unfinished(tasks_engine *t)
{
    size_t nu;
    pthread_mutex_lock(&t->rec_mu);
    unfinished *u = snapshot_live_locked(t, &nu);
    pthread_mutex_unlock(&t->rec_mu);
    log_msg(BGS_LOG_WARN, "unfinished: %zu task%s", nu, nu == 1 ? "" : "s");
    for (size_t i = 0; i < nu; i++)
        print_unfinished_line(&u[i], NULL, 0);
    free(u);
}

/*
 * "queue.depth" is the number of tasks waiting in the queue for a worker
 * (ready to run now); "queue.accepted" counts every task accepted and not
 * yet final (the figure queue_cap bounds).
 */
void tasks_stats_json(tasks_engine *t, json *j)
{
    json_key(j, "tasks");
    json_obj_begin(j);
    for (task_kind *k = atomic_load_explicit(&t->kinds, memory_order_acquire); k; k = k->next) {
        json_key(j, k->name);
        json_obj_begin(j);
#define KEY(f)           \
    json_key(j, #f);     \
    json_u64(j, atomic_load_explicit(&k->f, memory_order_relaxed));
        KEY(queued) KEY(running) KEY(succeeded) KEY(failed) KEY(retried)
        KEY(skipped) KEY(discarded) KEY(cancelled) KEY(ticks_skipped) KEY(inline_runs)
#undef KEY
        json_obj_end(j);
    }
    json_obj_end(j);

    json_key(j, "queue");
    json_obj_begin(j);
    json_key(j, "depth");
    json_u64(j, queue_depth(t->q));
    json_key(j, "capacity");
    json_u64(j, t->queue_cap);
    json_key(j, "accepted");
    json_u64(j, atomic_load(&t->accepted));
    json_key(j, "backend");
    json_str(j, t->q->ops->name);
    json_key(j, "wakeups");
    json_u64(j, queue_wakeups(t->q));
    /* Runs that skipped the queue (tasks_runs.c, "Inline runs"). */
    json_key(j, "inline_us");
    json_u64(j, t->inline_us);
    json_key(j, "inline_runs");
    json_u64(j, atomic_load_explicit(&t->inline_runs, memory_order_relaxed));
    /* The wake-up policy (docs/tasks.md, "When tasks run"): the linger
     * now, the longest a task may wait for company, and for the adaptive
     * one what it follows: the CPUs' idle share, the pushes a second,
     * and its experiments (judged, and kept). */
    int adaptive = t->linger_us == QUEUE_LINGER_ADAPTIVE;
    json_key(j, "linger_mode");
    json_str(j, adaptive ? "adaptive" : "fixed");
    json_key(j, "linger_us");
    json_u64(j, adaptive ? pace_current() : t->linger_us);
    json_key(j, "linger_bound_us");
    json_u64(j, queue_linger_bound_us(adaptive ? PACE_MAX_US : t->linger_us));
    if (adaptive) {
        int idle = pace_idle_permille();
        json_key(j, "cpu_idle_pct");
        if (idle < 0)
            json_null(j);
        else
            json_double(j, idle / 10.0);
        json_key(j, "pushes_per_s");
        json_u64(j, pace_rate());
        json_key(j, "linger_probes");
        json_u64(j, pace_probes());
        json_key(j, "linger_probes_kept");
        json_u64(j, pace_kept());
    }
    json_obj_end(j);

    pthread_mutex_lock(&t->life_mu);
    unsigned busy = workers_busy(t->w), total = workers_total(t->w);
    pthread_mutex_unlock(&t->life_mu);
    json_key(j, "workers");
    json_obj_begin(j);
    json_key(j, "busy");
    json_u64(j, busy);
    json_key(j, "total");
    json_u64(j, total);
    json_obj_end(j);

    if (t->journal)
        journal_json_stats(t->journal, t->q, j);
    if (t->broker)
        tasks_broker_stats_json(t, j);

    json_key(j, "dispatch_us");
    json_obj_begin(j);
    json_key(j, "p50");
    json_u64(j, latency_percentile(&t->dispatch_hist, 50));
    json_key(j, "p99");
    json_u64(j, latency_percentile(&t->dispatch_hist, 99));
    json_obj_end(j);
}

int tasks_busy(tasks_engine *t)
{
    pthread_mutex_lock(&t->rec_mu);
    size_t running = t->running_now;
    pthread_mutex_unlock(&t->rec_mu);
    return running > 0 || queue_depth(t->q) > 0;
}

size_t tasks_live(tasks_engine *t)
{
    pthread_mutex_lock(&t->rec_mu);
    size_t n = t->live_count;
    pthread_mutex_unlock(&t->rec_mu);
    return n;
}

sched *tasks_sched(tasks_engine *t)
{
    return t->sched;
}

journal *tasks_journal(tasks_engine *t)
{
    return t ? t->journal : NULL;
}
