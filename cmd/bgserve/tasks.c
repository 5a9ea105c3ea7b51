/*
 * tasks.c - background tasks: items and their records, groups, retries,
 * the concurrency caps, the record ring, stats, periodic schedules and
 * the shutdown drain.  The queue backend (queue.h), the worker pool
 * (workers.h) and the timer thread (sched.h) sit underneath.
 *
 * A task_item is the unit of work *and* its record.  It is created at
 * attach (HTTP thread, or the scheduler for periodic ticks) and is, until
 * it reaches a final state, in exactly one place whose owner alone may
 * move it: an unsubmitted group (the HTTP thread), behind its sequential
 * predecessor (the thread running that one), the shared queue (also while
 * it waits there for a retry), a name's wait list (conc_mu), or a worker.  Once
 * final it sits in the record ring until evicted and freed.
 *
 * Threads: HTTP threads (attach, submit, discard, stats, records),
 * workers (runs), the scheduler thread (retries, timeouts, ticks), and
 * whoever calls tasks_start/tasks_shutdown (main).
 *
 * Locks (never hold two except in the order listed; none is held while
 * plugin code runs, and sched_cancel is never called holding any):
 *   p_mu     - periodic schedule list and each schedule's stopped/
 *              inflight/refs.  May call sched_add.
 *   rec_mu   - every record field (state, attempts, times, error,
 *              delivered, mode, result), the id hash, the live list,
 *              the ring, finished_total, running_now; rec_cv signals
 *              progress while draining.
 *   conc_mu  - each kind's conc_running and wait list.
 *   kinds_mu - serialises inserts into the prepend-only kind list, which
 *              readers walk without a lock (nodes are immutable and never
 *              freed; per-kind counters are atomics).
 *   life_mu  - the workers pointer, for stats vs start/shutdown.
 * Lock-free: ids (next_id), queue reservations (accepted), the accepting
 * and stopping flags, the dispatch-latency histogram (latency.c).
 */
#include "tasks.h"

#include "crash.h"
#include "events.h"
#include "handle.h"
#include "latency.h"
#include "log.h"
#include "misuse.h"
#include "plugin.h"
#include "queue.h"
#include "queue_journal.h"
#include "journal_json.h"
#include "sched.h"
#include "services.h"
#include "util.h"
#include "workers.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------ */
/* Types                                                               */
/* ------------------------------------------------------------------ */

enum {
    ST_QUEUED,
    ST_RUNNING,
    ST_RETRYING,
    ST_SUCCEEDED,
    ST_FAILED,
    ST_SKIPPED,
    ST_DISCARDED,
    ST_CANCELLED,
};

static const char *const state_names[] = {
    "queued", "running", "retrying", "succeeded",
    "failed", "skipped", "discarded", "cancelled",
};

#define SHUTDOWN_GRACE_US 1000000u /* running tasks get this after cancel */
#define ERR_MAX 512

/* Per task name, across generations.  Never freed. */
typedef struct task_kind {
    struct task_kind *next;  /* immutable once published */
    char *name;              /* immutable */
    atomic_ulong queued, running; /* gauges */
    atomic_ulong succeeded, failed, retried, skipped, discarded, cancelled,
        ticks_skipped;        /* counters */
    unsigned conc_running;   /* capped runs in progress; conc_mu */
    struct task_item *wait_head, *wait_tail; /* at their cap; conc_mu */
} task_kind;

typedef struct periodic periodic;

/* A callback waiting for an item's final state; rec_mu. */
typedef struct task_watch {
    struct task_watch *next;
    tasks_final_fn cb;
    void *arg;
} task_watch;

/* A request id shared by every task of one response (and by nobody else
 * for tasks_enqueue).  Immutable; the last item to be evicted frees it. */
typedef struct task_rid {
    atomic_uint refs;
    char s[];
} task_rid;

typedef struct task_item task_item;

/* What few tasks need, allocated on first use: the timer of a timeout
 * and the result of bgs_task_result.  The pointer to it is set under
 * rec_mu; the timer is owned like the item; the result fields are
 * guarded by rec_mu.  (A retry waits in the queue: queue_nack.) */
typedef struct task_extra {
    task_item *item;
    sched_timer timeout_timer;   /* pending while a run with timeout_ms is on */
    int has_result;
    uint32_t res_status;
    char *res_type;
    void *res_data;
    size_t res_len;
} task_extra;

/* Payloads up to this size live inside the item's own allocation (one
 * malloc instead of two); larger ones get their own, freed as soon as the
 * task is final rather than when the record is evicted. */
#define INLINE_PAYLOAD_MAX 256u

/* task_item.cancel: cancellation was asked for (shutdown or timeout), and
 * whether it was the timeout. */
#define CANCEL_SET 1u
#define CANCEL_TIMEOUT 2u

/*
 * Field order and widths keep the item small (bench/README.md, "memory
 * per queued task"): it is what every queued task costs.
 */
struct task_item {
    union {
        /* In the shared queue.  qnode.queued_us is the item's monotonic
         * clock (MONO_US): the queue stamps it at every push (dispatch),
         * and once a run starts its owner stores the run's start there. */
        queue_node qnode;
        struct task_item *wait_next; /* kind wait list (never queued at
                                      * the same time); conc_mu */
    };
    struct task_item *hnext;     /* id hash chain; rec_mu */
    struct task_item *lprev, *lnext; /* live list; rec_mu */
    struct task_item *group_next;    /* group list / sequential successor */

    /* Set at attach; owned by the item's current owner until final. */
    uint64_t id;
    task_kind *kind;
    const plugin_task *def;      /* NULL for an ad hoc task */
    generation *gen;             /* our reference; released when final */
    uint64_t gen_number;
    bgs_adhoc_fn afn;
    void *arg;
    bgs_free_fn free_fn;
    void *payload;               /* inline_data, a malloc'd copy, or NULL */
    size_t len;
    periodic *sched;             /* the schedule of a periodic run */

    /* The record: rec_mu. */
    int8_t state;
    int8_t delivered;            /* -1: not known (periodic, unsubmitted) */
    uint8_t mode;                /* BGS_SEQUENTIAL or BGS_CONCURRENT */
    uint32_t attempts;
    uint32_t max_attempts;       /* immutable */
    atomic_uint cancel;          /* CANCEL_* bits; 0: run on */
    uint64_t created_wall, started_wall, finished_wall; /* 0: null */
    task_rid *rid;               /* our reference; dropped at eviction */
    char *error;
    task_extra *x;               /* NULL until needed (see task_extra) */
    task_watch *watchers;        /* fired once, when final */
    max_align_t inline_data[];   /* a small payload (INLINE_PAYLOAD_MAX) */
};

/* When the item was last dispatched (queued) until a run starts, then
 * when that run started (see task_item.qnode). */
#define MONO_US(it) ((it)->qnode.queued_us)

struct tasks_group {
    generation *gen;             /* reference */
    task_rid *rid;               /* our reference; shared by the tasks */
    uint32_t mode;
    task_item *head, *tail;
    size_t count;
};

struct periodic {
    periodic *next;              /* p_mu */
    sched_timer timer;
    generation *gen;             /* reference until stopped */
    const plugin_task *def;      /* valid while gen is held */
    task_kind *kind;
    void *payload;
    size_t len;
    uint64_t interval_us;
    uint64_t next_due;           /* scheduler thread (and add, before arming) */
    int stopped, inflight, refs; /* p_mu */
};

/* One run, as the task function sees it.  Owned by the worker. */
struct bgs_task_ctx {
    task_item *item;
    uint32_t attempt;
    services_scope *scope;
    int has_err;
    char err[ERR_MAX];
    int has_result;
    uint32_t res_status;
    char *res_type;
    void *res_data;
    size_t res_len;
};

/* ------------------------------------------------------------------ */
/* Global state                                                        */
/* ------------------------------------------------------------------ */

static atomic_uint_fast64_t next_id = 1;
static atomic_size_t accepted;   /* reserved queue capacity */
static size_t queue_cap = TASKS_DEFAULT_QUEUE_CAP; /* written by tasks_start only */
static unsigned linger_us;       /* written by tasks_start only */
static atomic_int accepting;     /* 1 between start and shutdown */
static atomic_int stopping;      /* cancel phase of a shutdown */
static atomic_int shut_down;     /* after tasks_shutdown, until restart */
static int started;              /* main thread only */
static int abandoned;            /* workers stuck: keep Q; main only */
static queue *Q;                 /* written by tasks_start only */
static journal *J;               /* --journal, or NULL; written by tasks_start only */

static pthread_mutex_t life_mu = PTHREAD_MUTEX_INITIALIZER;
static workers *W;               /* life_mu */

static pthread_mutex_t kinds_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(task_kind *) kinds;
static _Atomic(task_kind *) adhoc_kind; /* the kind named "adhoc" */

static pthread_mutex_t conc_mu = PTHREAD_MUTEX_INITIALIZER;

static pthread_mutex_t p_mu = PTHREAD_MUTEX_INITIALIZER;
static periodic *plist;          /* p_mu */

/* The phase of the schedules a reload stopped, so the next generation's
 * schedules of the same task and interval go on at the same time instead
 * of restarting their timers (saving every 4 s would otherwise starve a
 * task that runs every 5 s).  p_mu; replaced at each reload. */
typedef struct phase_memo {
    struct phase_memo *next;
    char *name;
    uint64_t interval_us, next_due;
} phase_memo;
static phase_memo *phases;       /* p_mu */

static void phases_clear(void)
{
    while (phases) {
        phase_memo *m = phases;
        phases = m->next;
        free(m->name);
        free(m);
    }
}

/* The remembered next run of name every interval_us, or 0; consumed. */
static uint64_t phase_take(const char *name, uint64_t interval_us)
{
    for (phase_memo **mp = &phases; *mp; mp = &(*mp)->next) {
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

/* Adaptive: taken by HTTP threads and workers for a few hundred
 * nanoseconds per task, so a short spin beats sleeping in the kernel
 * and waking the holder's waiter (bench/README.md). */
static pthread_mutex_t rec_mu = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;
static pthread_cond_t rec_cv;    /* CLOCK_MONOTONIC; rec_mu */
static pthread_once_t rec_cv_once = PTHREAD_ONCE_INIT;
static task_item **htab;         /* id hash; rec_mu */
static size_t hcap, hcount;
static task_item live = {.lprev = &live, .lnext = &live}; /* sentinel */
static size_t live_count, running_now;
static task_item **ring;         /* finished records, oldest first */
static size_t ring_cap, ring_start, ring_len;
static uint64_t finished_total;
static int draining;             /* broadcast rec_cv on changes */

static latency_hist dispatch_hist; /* submit to first start (latency.h) */

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

static void rec_cv_init(void)
{
    util_cond_init_mono(&rec_cv);
}

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

/* ------------------------------------------------------------------ */
/* Kinds                                                               */
/* ------------------------------------------------------------------ */

static task_kind *kind_find(const char *name)
{
    for (task_kind *k = atomic_load_explicit(&kinds, memory_order_acquire); k; k = k->next)
        if (strcmp(k->name, name) == 0)
            return k;
    return NULL;
}

static task_kind *kind_get(const char *name)
{
    task_kind *k = kind_find(name);
    if (k)
        return k;
    pthread_mutex_lock(&kinds_mu);
    k = kind_find(name);
    if (k == NULL) {
        k = xcalloc(1, sizeof(*k));
        k->name = xstrdup(name);
        k->next = atomic_load_explicit(&kinds, memory_order_relaxed);
        atomic_store_explicit(&kinds, k, memory_order_release);
    }
    pthread_mutex_unlock(&kinds_mu);
    return k;
}

static void kadd(atomic_ulong *c, long d)
{
    if (d > 0)
        atomic_fetch_add_explicit(c, (unsigned long)d, memory_order_relaxed);
    else
        atomic_fetch_sub_explicit(c, (unsigned long)-d, memory_order_relaxed);
}

/* ------------------------------------------------------------------ */
/* Records (rec_mu held)                                               */
/* ------------------------------------------------------------------ */

static void hash_insert_locked(task_item *it)
{
    if (hcount + 1 > hcap) {
        size_t ncap = hcap ? hcap * 2 : 1024;
        task_item **nt = xcalloc(ncap, sizeof(*nt));
        for (size_t i = 0; i < hcap; i++) {
            task_item *e = htab[i];
            while (e) {
                task_item *next = e->hnext;
                size_t b = (size_t)(e->id & (ncap - 1));
                e->hnext = nt[b];
                nt[b] = e;
                e = next;
            }
        }
        free(htab);
        htab = nt;
        hcap = ncap;
    }
    size_t b = (size_t)(it->id & (hcap - 1));
    it->hnext = htab[b];
    htab[b] = it;
    hcount++;
}

static task_item *hash_find_locked(uint64_t id)
{
    if (hcap == 0)
        return NULL;
    for (task_item *e = htab[id & (hcap - 1)]; e; e = e->hnext)
        if (e->id == id)
            return e;
    return NULL;
}

static void hash_remove_locked(task_item *it)
{
    task_item **pp = &htab[it->id & (hcap - 1)];
    while (*pp && *pp != it)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = it->hnext;
        hcount--;
    }
}

static task_rid *rid_new(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    task_rid *r = xmalloc(sizeof(*r) + n);
    atomic_init(&r->refs, 1);
    memcpy(r->s, s, n);
    return r;
}

static task_rid *rid_ref(task_rid *r)
{
    if (r)
        atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    return r;
}

static void rid_unref(task_rid *r)
{
    if (r && atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
        free(r);
}

static const char *item_rid(const task_item *it)
{
    return it->rid ? it->rid->s : NULL;
}

static int payload_inline(const task_item *it)
{
    return it->payload == (const void *)it->inline_data;
}

/* The item's task_extra, allocated on first use; owner of it only. */
static task_extra *item_extra(task_item *it)
{
    if (it->x == NULL) {
        task_extra *x = xcalloc(1, sizeof(*x));
        x->item = it;
        pthread_mutex_lock(&rec_mu);
        it->x = x;
        pthread_mutex_unlock(&rec_mu);
    }
    return it->x;
}

static void item_free(task_item *it)
{
    rid_unref(it->rid);
    free(it->error);
    if (it->x) {
        free(it->x->res_type);
        free(it->x->res_data);
        free(it->x);
    }
    if (!payload_inline(it))
        free(it->payload);
    free(it);
}

static void evict_locked(task_item *it)
{
    hash_remove_locked(it);
    item_free(it);
}

/* Returns the record pushed out (out of the index already), for the
 * caller to item_free once it has unlocked rec_mu: freeing is the
 * slowest part and need not hold up the other threads. */
static task_item *ring_push_locked(task_item *it)
{
    task_item *out = NULL;
    if (ring_cap == 0) {
        hash_remove_locked(it);
        return it;
    }
    if (ring_len == ring_cap) {
        out = ring[ring_start];
        hash_remove_locked(out);
        ring[ring_start] = it;
        ring_start = (ring_start + 1) % ring_cap;
    } else {
        ring[(ring_start + ring_len) % ring_cap] = it;
        ring_len++;
    }
    return out;
}

/* Resize the ring to keep records, evicting the oldest that no longer fit. */
static void ring_resize_locked(size_t keep)
{
    size_t n = ring_len < keep ? ring_len : keep;
    task_item **nr = keep ? xcalloc(keep, sizeof(*nr)) : NULL;
    for (size_t i = 0; i < ring_len; i++) {
        task_item *it = ring[(ring_start + i) % ring_cap];
        if (i < ring_len - n)
            evict_locked(it);
        else
            nr[i - (ring_len - n)] = it;
    }
    free(ring);
    ring = nr;
    ring_cap = keep;
    ring_start = 0;
    ring_len = n;
}

/* Move it to state st, keeping the per-name gauges and counters. */
static void transition_locked(task_item *it, int st)
{
    task_kind *k = it->kind;
    int old = it->state;

    if (old == ST_QUEUED || old == ST_RETRYING)
        kadd(&k->queued, -1);
    else if (old == ST_RUNNING) {
        kadd(&k->running, -1);
        running_now--;
    }
    switch (st) {
    case ST_QUEUED: kadd(&k->queued, 1); break;
    case ST_RETRYING: kadd(&k->queued, 1); kadd(&k->retried, 1); break;
    case ST_RUNNING: kadd(&k->running, 1); running_now++; break;
    case ST_SUCCEEDED: kadd(&k->succeeded, 1); break;
    case ST_FAILED: kadd(&k->failed, 1); break;
    case ST_SKIPPED: kadd(&k->skipped, 1); break;
    case ST_DISCARDED: kadd(&k->discarded, 1); break;
    case ST_CANCELLED: kadd(&k->cancelled, 1); break;
    default: break;
    }
    it->state = st;
    if (draining)
        pthread_cond_broadcast(&rec_cv);
    events_task_changed(it->id); /* the live dashboard; a load when none */
}

static int is_final(int st)
{
    return st >= ST_SUCCEEDED;
}

/* ------------------------------------------------------------------ */
/* Items                                                               */
/* ------------------------------------------------------------------ */

/* Take one unit of queue capacity; BGS_EFULL when none is left. */
static int reserve(void)
{
    size_t n = atomic_fetch_add(&accepted, 1);
    if (n >= queue_cap) {
        atomic_fetch_sub(&accepted, 1);
        return BGS_EFULL;
    }
    return 0;
}

static void unreserve(void)
{
    atomic_fetch_sub(&accepted, 1);
}

/* A new queued item holding its own generation reference and a reference
 * to rid, with a copy of the payload, registered in the id table and the
 * live list.  Capacity was reserved by the caller. */
static task_item *item_new_id(generation *gen, task_kind *kind, const plugin_task *def,
                              task_rid *rid, uint32_t mode, const void *payload, size_t len,
                              uint64_t id)
{
    size_t inl = len <= INLINE_PAYLOAD_MAX ? len : 0;
    task_item *it = xcalloc(1, sizeof(*it) + inl);

    if (inl) {
        it->payload = it->inline_data;
        memcpy(it->payload, payload, len);
    } else if (len) {
        it->payload = xmemdup(payload, len);
    }
    it->len = len;

    /* With a journal, ids never repeat across runs (journal_next_id). */
    it->id = id ? id : J ? journal_next_id(J) : atomic_fetch_add(&next_id, 1);
    it->kind = kind;
    it->def = def;
    it->gen = gen;
    gen_retain(gen);
    it->gen_number = gen->number;
    it->max_attempts = def && def->max_attempts ? def->max_attempts : PLUGIN_DEFAULT_MAX_ATTEMPTS;
    atomic_init(&it->cancel, 0);
    it->delivered = -1;
    it->mode = (uint8_t)mode;
    it->rid = rid_ref(rid);
    it->created_wall = util_wall_us();
    it->state = -1;

    pthread_mutex_lock(&rec_mu);
    hash_insert_locked(it);
    it->lprev = live.lprev;
    it->lnext = &live;
    live.lprev->lnext = it;
    live.lprev = it;
    live_count++;
    transition_locked(it, ST_QUEUED);
    pthread_mutex_unlock(&rec_mu);
    return it;
}

static task_item *item_new(generation *gen, task_kind *kind, const plugin_task *def,
                           task_rid *rid, uint32_t mode, const void *payload, size_t len)
{
    return item_new_id(gen, kind, def, rid, mode, payload, len, 0);
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

static void periodic_done(periodic *p);
static void chain_stop(task_item *next, uint64_t pred_id, const char *pred_name,
                       int pred_state);
static void seq_start(task_item *it);

/*
 * Bring it to final state st with error err (copied; NULL for none).
 * Releases what the item owns first (free_fn, payload), then publishes
 * the final record, then continues or stops its sequence, releases the
 * capacity and the generation.  The caller must own it; afterwards it may
 * be freed at any time by ring eviction.
 */
static void finalize(task_item *it, int st, const char *err)
{
    generation *gen = it->gen;
    periodic *ps = it->sched;
    task_item *next = it->group_next;
    task_kind *kind = it->kind;
    uint64_t id = it->id, dur = 0;
    uint32_t attempts;
    char errcopy[ERR_MAX];

    it->group_next = NULL;
    it->gen = NULL;
    it->sched = NULL;
    if (it->free_fn) {
        bgs_free_fn f = it->free_fn;
        it->free_fn = NULL;
        crash_frame cf; /* names the task if its free function crashes */
        crash_enter_task(&cf, kind->name, id, item_rid(it), it->gen_number);
        f(it->arg);
        crash_leave(&cf);
    }
    if (!payload_inline(it) && st != ST_FAILED) {
        /* A large one: do not keep it in the ring (a failed one is kept
         * for tasks_retry; len stays, for the record). */
        free(it->payload);
        it->payload = NULL;
    }
    if (err) /* used only with err */
        snprintf(errcopy, sizeof(errcopy), "%s", err);

    pthread_mutex_lock(&rec_mu);
    if (it->state == ST_RUNNING)
        dur = util_now_us() - MONO_US(it);
    transition_locked(it, st);
    it->finished_wall = util_wall_us();
    free(it->error);
    it->error = err ? xstrdup(err) : NULL;
    attempts = it->attempts;
    task_watch *watchers = it->watchers;
    it->watchers = NULL;
    tasks_final fin = {.id = id, .name = kind->name, .state = state_names[st],
                       .succeeded = st == ST_SUCCEEDED, .error = err ? errcopy : NULL};
    if (watchers && it->x && it->x->has_result) {
        task_extra *x = it->x;
        fin.has_result = 1;
        fin.result_status = x->res_status;
        fin.result_type = x->res_type ? xstrdup(x->res_type) : NULL;
        fin.result = x->res_len ? xmemdup(x->res_data, x->res_len) : NULL;
        fin.result_len = x->res_len;
    }
    it->lprev->lnext = it->lnext;
    it->lnext->lprev = it->lprev;
    it->lprev = it->lnext = NULL;
    live_count--;
    finished_total++;
    task_item *evicted = ring_push_locked(it); /* it may be evicted itself */
    pthread_mutex_unlock(&rec_mu);
    if (evicted)
        item_free(evicted);

    static const char *const events[] = {
        [ST_SUCCEEDED] = "done", [ST_FAILED] = "failed", [ST_SKIPPED] = "skipped",
        [ST_DISCARDED] = "discarded", [ST_CANCELLED] = "cancelled",
    };
    log_event(events[st], id, kind->name, attempts, dur,
              err ? errcopy : NULL, 0);

    while (watchers) {
        task_watch *w = watchers;
        watchers = w->next;
        w->cb(w->arg, &fin);
        free(w);
    }
    free((void *)fin.result_type);
    free((void *)fin.result);

    if (ps)
        periodic_done(ps);
    if (next) {
        if (st == ST_SUCCEEDED)
            seq_start(next);
        else
            chain_stop(next, id, kind->name, st);
    }
    unreserve();
    gen_release(gen);
}

/* The rest of a sequence after a task that did not succeed: skipped, or
 * cancelled when the server is shutting down. */
static void chain_stop(task_item *next, uint64_t pred_id, const char *pred_name,
                       int pred_state)
{
    char msg[256];
    int st = atomic_load(&stopping) ? ST_CANCELLED : ST_SKIPPED;

    snprintf(msg, sizeof(msg), "previous task %" PRIu64 " (%s) %s", pred_id, pred_name,
             state_names[pred_state]);
    while (next) {
        task_item *n2 = next->group_next;
        next->group_next = NULL;
        finalize(next, st, msg);
        next = n2;
    }
}

/* Hand it to the workers; if the queue refuses (shut down), cancel it. */
static void dispatch(task_item *it)
{
    if (queue_enqueue(Q, &it->qnode) != 0) /* stamps MONO_US */
        finalize(it, ST_CANCELLED, "server is shutting down; the task never ran");
}

/* dispatch() for n items at once (the concurrent tasks of a response). */
static void dispatch_batch(task_item **its, size_t n)
{
    queue_node *nodes[16];

    for (size_t i = 0; i < n; i++)
        nodes[i] = &its[i]->qnode;
    if (queue_enqueue_batch(Q, nodes, n) != 0) /* stamps MONO_US */
        for (size_t i = 0; i < n; i++)
            finalize(its[i], ST_CANCELLED, "server is shutting down; the task never ran");
}

static int skip_undelivered(const task_item *it)
{
    return it->def && (it->def->flags & BGS_TASK_DELIVERED_ONLY) && it->delivered == 0;
}

/* Start a sequence at it: skip the leading tasks that must not run on an
 * undelivered response, dispatch the first that may. */
static void seq_start(task_item *it)
{
    while (it) {
        if (!skip_undelivered(it)) {
            dispatch(it);
            return;
        }
        task_item *next = it->group_next;
        it->group_next = NULL;
        finalize(it, ST_SKIPPED, "response was not fully delivered");
        it = next;
    }
}

/* ------------------------------------------------------------------ */
/* Runs (worker threads)                                               */
/* ------------------------------------------------------------------ */

static void on_timeout(sched_timer *t)
{
    task_item *it = UTIL_CONTAINER_OF(t, task_extra, timeout_timer)->item;
    atomic_fetch_or(&it->cancel, CANCEL_SET | CANCEL_TIMEOUT);
}

/* One attempt of it on this worker, up to its next state. */
static void run_once(task_item *it)
{
    bgs_task_ctx ctx;
    const plugin_task *def = it->def;
    uint64_t now = util_now_us(), dur;
    int rc;

    memset(&ctx, 0, sizeof(ctx));
    ctx.item = it;

    uint64_t submitted = MONO_US(it);
    pthread_mutex_lock(&rec_mu);
    transition_locked(it, ST_RUNNING);
    ctx.attempt = ++it->attempts;
    it->started_wall = util_wall_us();
    MONO_US(it) = now;
    pthread_mutex_unlock(&rec_mu);

    if (ctx.attempt == 1)
        latency_add(&dispatch_hist, now - submitted);
    log_event("start", it->id, it->kind->name, ctx.attempt, 0, NULL, 0);

    if (def && def->timeout_ms)
        sched_add(&item_extra(it)->timeout_timer, now + (uint64_t)def->timeout_ms * 1000u,
                  on_timeout);
    crash_frame cf; /* names the task if it crashes */
    crash_enter_task(&cf, it->kind->name, it->id, item_rid(it), it->gen_number);
    cf.plugin = it->gen && it->gen->plugin ? it->gen->plugin->name : NULL; /* for misuse warnings */
    bgs_task_ctx *h = handle_open(HANDLE_TASK, &ctx, HANDLE_THREAD_BOUND);
    rc = def ? def->fn(h, it->payload, it->len) : it->afn(h, it->arg);
    handle_close(h); /* a kept handle is refused from now on */
    crash_leave(&cf);
    if (def && def->timeout_ms)
        sched_cancel(&it->x->timeout_timer);
    services_scope_end(ctx.scope);
    dur = util_now_us() - now;

    if (ctx.has_result) {
        task_extra *x = item_extra(it);
        pthread_mutex_lock(&rec_mu);
        free(x->res_type);
        free(x->res_data);
        x->has_result = 1;
        x->res_status = ctx.res_status;
        x->res_type = ctx.res_type;
        x->res_data = ctx.res_data;
        x->res_len = ctx.res_len;
        pthread_mutex_unlock(&rec_mu);
    }

    if (rc == 0) {
        queue_ack(Q, &it->qnode, &(queue_outcome){.succeeded = 1, .state = state_names[ST_SUCCEEDED]});
        finalize(it, ST_SUCCEEDED, NULL);
        return;
    }
    char err[ERR_MAX + 64];
    if (ctx.has_err)
        snprintf(err, sizeof(err), "%s", ctx.err);
    else
        snprintf(err, sizeof(err), "task returned %d", rc);
    if (atomic_load(&it->cancel)) {
        char why[ERR_MAX + 128];
        if (atomic_load(&it->cancel) & CANCEL_TIMEOUT)
            snprintf(why, sizeof(why), "timed out after %" PRIu32 " ms: %s",
                     def->timeout_ms, err);
        else
            snprintf(why, sizeof(why), "cancelled at shutdown: %s", err);
        queue_ack(Q, &it->qnode, &(queue_outcome){.state = state_names[ST_CANCELLED], .error = why});
        finalize(it, ST_CANCELLED, why);
        return;
    }
    if (ctx.attempt >= it->max_attempts) {
        queue_ack(Q, &it->qnode, &(queue_outcome){.state = state_names[ST_FAILED], .error = err});
        finalize(it, ST_FAILED, err);
        return;
    }

    uint64_t delay = backoff_ms(def, it->id, ctx.attempt);
    pthread_mutex_lock(&rec_mu);
    transition_locked(it, ST_RETRYING);
    free(it->error);
    it->error = xstrdup(err);
    pthread_mutex_unlock(&rec_mu);
    log_event("retry", it->id, it->kind->name, ctx.attempt, dur, err, delay);
    /* The queue holds it until the backoff is over.  A shutdown that
     * began meanwhile refuses it (it would never run): cancel it here.
     * One that comes later hands it back with try_take. */
    if (queue_nack(Q, &it->qnode, util_now_us() + delay * 1000u, err) != 0)
        finalize(it, ST_CANCELLED, "server is shutting down; the retry never ran");
}

/* The worker's run function: enforce the per-name cap, run, and when a
 * capped run ends, run the next task of that name waiting for a slot. */
static void run_node(queue_node *n, void *arg)
{
    task_item *it = UTIL_CONTAINER_OF(n, task_item, qnode);
    (void)arg;

    while (it) {
        task_kind *kind = it->kind;
        uint32_t cap = it->def ? it->def->max_concurrency : 0;
        if (atomic_load(&stopping)) {
            /* Taken just before the queue shut down: do not start it. */
            finalize(it, ST_CANCELLED, "cancelled at shutdown; the task never ran");
            return;
        }
        if (cap) {
            pthread_mutex_lock(&conc_mu);
            if (kind->conc_running >= cap && atomic_load(&stopping)) {
                /* The shutdown has emptied the wait lists already. */
                pthread_mutex_unlock(&conc_mu);
                finalize(it, ST_CANCELLED, "cancelled at shutdown; the task never ran");
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
                pthread_mutex_unlock(&conc_mu);
                return;
            }
            kind->conc_running++;
            pthread_mutex_unlock(&conc_mu);
        }
        run_once(it); /* it is no longer ours */
        it = NULL;
        if (cap) {
            pthread_mutex_lock(&conc_mu);
            kind->conc_running--;
            if (!atomic_load(&stopping) && kind->wait_head) {
                it = kind->wait_head;
                kind->wait_head = it->wait_next;
                if (kind->wait_head == NULL)
                    kind->wait_tail = NULL;
                it->wait_next = NULL;
            }
            pthread_mutex_unlock(&conc_mu);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Groups (HTTP threads)                                               */
/* ------------------------------------------------------------------ */

tasks_group *tasks_group_new(generation *gen, const char *request_id, uint32_t mode)
{
    tasks_group *g = xcalloc(1, sizeof(*g));
    g->gen = gen;
    gen_retain(gen);
    g->rid = rid_new(request_id);
    g->mode = mode == BGS_CONCURRENT ? BGS_CONCURRENT : BGS_SEQUENTIAL;
    return g;
}

int tasks_group_set_mode(tasks_group *g, uint32_t mode)
{
    if (g == NULL || (mode != BGS_SEQUENTIAL && mode != BGS_CONCURRENT))
        return BGS_EINVAL;
    g->mode = mode;
    return 0;
}

static void group_append(tasks_group *g, task_item *it, uint64_t *id_out)
{
    if (g->tail)
        g->tail->group_next = it;
    else
        g->head = it;
    g->tail = it;
    g->count++;
    if (id_out)
        *id_out = it->id;
}

int tasks_group_add(tasks_group *g, const char *name, const void *payload,
                    size_t len, uint64_t *id_out)
{
    const plugin_task *def;

    if (g == NULL || name == NULL || (payload == NULL && len != 0))
        return BGS_EINVAL;
    if (!atomic_load(&accepting))
        return BGS_ESHUTDOWN;
    def = g->gen->plugin ? plugin_find_task(g->gen->plugin, name) : NULL;
    if (def == NULL)
        return BGS_ENOTASK;
    if (reserve() != 0)
        return BGS_EFULL;
    task_item *it = item_new(g->gen, kind_get(def->name), def, g->rid, g->mode, payload, len);
    group_append(g, it, id_out);
    return 0;
}

int tasks_group_add_fn(tasks_group *g, bgs_adhoc_fn fn, void *arg,
                       bgs_free_fn free_fn, uint64_t *id_out)
{
    if (g == NULL || fn == NULL)
        return BGS_EINVAL;
    if (!atomic_load(&accepting))
        return BGS_ESHUTDOWN;
    if (reserve() != 0)
        return BGS_EFULL;
    task_kind *k = atomic_load(&adhoc_kind);
    if (k == NULL) {
        k = kind_get("adhoc");
        atomic_store(&adhoc_kind, k);
    }
    task_item *it = item_new(g->gen, k, NULL, g->rid, g->mode, NULL, 0);
    it->afn = fn;
    it->arg = arg;
    it->free_fn = free_fn;
    group_append(g, it, id_out);
    return 0;
}

size_t tasks_group_count(const tasks_group *g)
{
    return g ? g->count : 0;
}

size_t tasks_group_ids(const tasks_group *g, char *buf, size_t cap)
{
    size_t need = 0;

    if (cap)
        buf[0] = '\0';
    for (const task_item *it = g ? g->head : NULL; it; it = it->group_next) {
        char one[1 + UTIL_U64_DEC_MAX];
        size_t n = need ? 1 : 0;
        one[0] = ',';
        n += util_u64_dec(one + n, it->id);
        /* Only whole ids are written: a truncated list never shows a
         * wrong id. */
        if (need + n < cap && (need == 0 || buf[need - 1] != '\0'))
            memcpy(buf + need, one, n + 1);
        else if (need < cap)
            cap = need; /* stop writing; buf already ends with NUL */
        need += n;
    }
    return need;
}

static void group_free(tasks_group *g)
{
    rid_unref(g->rid);
    gen_release(g->gen);
    free(g);
}

void tasks_group_submit(tasks_group *g, int delivered)
{
    if (g == NULL)
        return;
    pthread_mutex_lock(&rec_mu);
    for (task_item *it = g->head; it; it = it->group_next) {
        it->delivered = delivered ? 1 : 0;
        it->mode = g->mode;
    }
    pthread_mutex_unlock(&rec_mu);
    if (g->mode == BGS_CONCURRENT) {
        /* Every task that may run goes to the queue in one batch: one
         * lock and at most one wake-up for the whole response. */
        task_item *batch[16];
        size_t n = 0;
        task_item *it = g->head;
        while (it) {
            task_item *next = it->group_next;
            it->group_next = NULL;
            if (skip_undelivered(it))
                finalize(it, ST_SKIPPED, "response was not fully delivered");
            else
                batch[n++] = it;
            if (n == BGS_COUNT(batch) || (next == NULL && n > 0)) {
                dispatch_batch(batch, n);
                n = 0;
            }
            it = next;
        }
    } else if (g->head) {
        seq_start(g->head);
    }
    group_free(g);
}

void tasks_group_discard(tasks_group *g, const char *reason)
{
    if (g == NULL)
        return;
    task_item *it = g->head;
    while (it) {
        task_item *next = it->group_next;
        it->group_next = NULL;
        finalize(it, ST_DISCARDED, reason ? reason : "discarded");
        it = next;
    }
    group_free(g);
}

/* ------------------------------------------------------------------ */
/* Tasks queued at once; watchers (any thread)                         */
/* ------------------------------------------------------------------ */

static void watch_push_locked(task_item *it, tasks_final_fn cb, void *arg)
{
    task_watch *w = xmalloc(sizeof(*w));
    w->cb = cb;
    w->arg = arg;
    w->next = it->watchers;
    it->watchers = w;
}

int tasks_enqueue(generation *gen, const char *request_id, const char *name,
                  const void *payload, size_t len, tasks_final_fn cb, void *arg,
                  uint64_t *id_out)
{
    if (gen == NULL || name == NULL || (payload == NULL && len != 0))
        return BGS_EINVAL;
    if (!atomic_load(&accepting))
        return BGS_ESHUTDOWN;
    const plugin_task *def = gen->plugin ? plugin_find_task(gen->plugin, name) : NULL;
    if (def == NULL)
        return BGS_ENOTASK;
    if (reserve() != 0)
        return BGS_EFULL;
    task_rid *rid = rid_new(request_id);
    task_item *it = item_new(gen, kind_get(def->name), def, rid, BGS_CONCURRENT, payload, len);
    rid_unref(rid);
    if (cb) {
        pthread_mutex_lock(&rec_mu);
        watch_push_locked(it, cb, arg);
        pthread_mutex_unlock(&rec_mu);
    }
    if (id_out)
        *id_out = it->id; /* read before dispatch: it may finish at once */
    seq_start(it);
    return 0;
}

int tasks_watch(uint64_t id, tasks_final_fn cb, void *arg)
{
    int rc;
    pthread_mutex_lock(&rec_mu);
    task_item *it = hash_find_locked(id);
    if (it == NULL)
        rc = BGS_ENOTFOUND;
    else if (is_final(it->state))
        rc = 1;
    else {
        watch_push_locked(it, cb, arg);
        rc = 0;
    }
    pthread_mutex_unlock(&rec_mu);
    return rc;
}

void tasks_note_delivery(uint64_t id, int delivered)
{
    pthread_mutex_lock(&rec_mu);
    task_item *it = hash_find_locked(id);
    if (it)
        it->delivered = delivered ? 1 : 0;
    pthread_mutex_unlock(&rec_mu);
}

/* ------------------------------------------------------------------ */
/* Periodic schedules (start hook thread, scheduler thread)            */
/* ------------------------------------------------------------------ */

static void periodic_unref(periodic *p)
{
    pthread_mutex_lock(&p_mu);
    int last = --p->refs == 0;
    pthread_mutex_unlock(&p_mu);
    if (last) {
        free(p->payload);
        free(p);
    }
}

static void periodic_done(periodic *p)
{
    pthread_mutex_lock(&p_mu);
    p->inflight = 0;
    pthread_mutex_unlock(&p_mu);
    periodic_unref(p);
}

static void on_tick(sched_timer *t)
{
    periodic *p = UTIL_CONTAINER_OF(t, periodic, timer);
    uint64_t now = util_now_us();

    pthread_mutex_lock(&p_mu);
    if (p->stopped) {
        pthread_mutex_unlock(&p_mu);
        return;
    }
    p->next_due += p->interval_us;
    if (p->next_due <= now)
        p->next_due = now + p->interval_us; /* missed ticks are not caught up */
    sched_add(&p->timer, p->next_due, on_tick);
    if (p->inflight) {
        pthread_mutex_unlock(&p_mu);
        kadd(&p->kind->ticks_skipped, 1);
        log_msg(BGS_LOG_DEBUG, "periodic task %s: tick skipped, the previous run is still in progress",
                p->kind->name);
        return;
    }
    if (!atomic_load(&accepting) || reserve() != 0) {
        pthread_mutex_unlock(&p_mu);
        kadd(&p->kind->ticks_skipped, 1);
        log_msg(BGS_LOG_WARN, "periodic task %s: tick skipped, %s", p->kind->name,
                atomic_load(&accepting) ? "the task queue is full" : "not accepting tasks");
        return;
    }
    p->inflight = 1;
    p->refs++;
    pthread_mutex_unlock(&p_mu);

    /* p->gen stays valid: stopping this schedule waits for this callback
     * (sched_cancel) before it releases the reference. */
    task_item *it = item_new(p->gen, p->kind, p->def, NULL, BGS_CONCURRENT, p->payload, p->len);
    it->sched = p;
    dispatch(it);
}

int tasks_periodic_add(generation *gen, const char *name, uint32_t interval_ms,
                       const void *payload, size_t len, uint32_t flags)
{
    if (gen == NULL || name == NULL || interval_ms == 0 || (payload == NULL && len != 0))
        return BGS_EINVAL;
    if (atomic_load(&shut_down))
        return BGS_ESHUTDOWN;
    const plugin_task *def = gen->plugin ? plugin_find_task(gen->plugin, name) : NULL;
    if (def == NULL)
        return BGS_ENOTASK;

    periodic *p = xcalloc(1, sizeof(*p));
    p->gen = gen;
    gen_retain(gen);
    p->def = def;
    p->kind = kind_get(def->name);
    p->payload = len ? xmemdup(payload, len) : NULL;
    p->len = len;
    p->interval_us = (uint64_t)interval_ms * 1000u;
    p->refs = 1;
    uint64_t now = util_now_us();
    p->next_due = now + ((flags & BGS_TASK_RUN_AT_START) ? 0 : p->interval_us);

    pthread_mutex_lock(&p_mu);
    uint64_t kept = phase_take(def->name, p->interval_us); /* a reload keeps the phase */
    if (kept)
        p->next_due = kept > now ? kept : now;
    p->next = plist;
    plist = p;
    sched_add(&p->timer, p->next_due, on_tick);
    pthread_mutex_unlock(&p_mu);
    return 0;
}

/* Stop the schedules of gen (every schedule when gen is NULL). */
static void periodic_stop(generation *gen)
{
    periodic *stop = NULL;

    pthread_mutex_lock(&p_mu);
    phases_clear();
    for (periodic **pp = &plist; *pp;) {
        periodic *p = *pp;
        if (gen == NULL || p->gen == gen) {
            *pp = p->next;
            p->stopped = 1;
            if (gen != NULL) { /* a reload: remember when it was due */
                phase_memo *m = xcalloc(1, sizeof *m);
                m->name = xstrdup(p->kind->name);
                m->interval_us = p->interval_us;
                m->next_due = p->next_due;
                m->next = phases;
                phases = m;
            }
            p->next = stop;
            stop = p;
        } else {
            pp = &p->next;
        }
    }
    pthread_mutex_unlock(&p_mu);

    while (stop) {
        periodic *next = stop->next;
        sched_cancel(&stop->timer); /* a tick in progress finishes first */
        generation *g = stop->gen;
        stop->gen = NULL;
        gen_release(g);
        periodic_unref(stop);
        stop = next;
    }
}

void tasks_periodic_stop_gen(generation *gen)
{
    if (gen)
        periodic_stop(gen);
}

/* ------------------------------------------------------------------ */
/* Start and shutdown (main thread)                                    */
/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* The journal (--journal): what the durable queue writes, and replay  */
/* ------------------------------------------------------------------ */

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
    out->request_id = item_rid(it);
}

typedef struct replay_ctx {
    generation *gen;
    size_t queued, interrupted, gone;
} replay_ctx;

/* One task an earlier run left queued or running: run it on gen, by
 * name; a name gen does not have goes to the dead letters. */
static void replay_one(void *arg, const journal_rec *r)
{
    replay_ctx *c = arg;
    const plugin_task *def = c->gen->plugin ? plugin_find_task(c->gen->plugin, r->name) : NULL;
    if (def == NULL) {
        char why[320];
        snprintf(why, sizeof why, "task '%s' no longer exists in %s (generation %" PRIu64 ")",
                 r->name, c->gen->plugin ? c->gen->plugin->name : "the plugin", c->gen->number);
        log_msg(BGS_LOG_WARN, "journal: task %" PRIu64 " moved to the dead letters: %s "
                "(bgserve journal FILE retry %" PRIu64 " queues it again)", r->id, why, r->id);
        journal_dead(J, r->id, why, NULL, NULL);
        c->gone++;
        return;
    }
    atomic_fetch_add(&accepted, 1); /* accepted by an earlier run: never refused */
    task_rid *rid = rid_new(r->request_id);
    task_item *it = item_new_id(c->gen, kind_get(def->name), def, rid, BGS_CONCURRENT,
                                r->payload, r->payload_len, r->id);
    rid_unref(rid);
    pthread_mutex_lock(&rec_mu);
    it->attempts = r->attempts;     /* the next run is attempts + 1 */
    if (r->max_attempts)
        it->max_attempts = r->max_attempts;
    it->created_wall = r->created_us;
    pthread_mutex_unlock(&rec_mu);
    if (r->interrupted)
        c->interrupted++;
    else
        c->queued++;
    if (queue_journal_adopt(Q, &it->qnode, r->not_before_us) != 0)
        finalize(it, ST_CANCELLED, "server is shutting down; the task never ran");
}

void tasks_replay(generation *gen)
{
    if (J == NULL || gen == NULL)
        return;
    replay_ctx c = {.gen = gen};
    size_t n = journal_replay(J, replay_one, &c);
    if (n > 0)
        log_msg(BGS_LOG_INFO, "journal: %zu task%s from an earlier run: %zu queued, %zu "
                "interrupted (run again, attempt + 1), %zu dead-lettered (function gone)",
                n, n == 1 ? "" : "s", c.queued, c.interrupted, c.gone);
}

int tasks_start(const tasks_config *cfg)
{
    if (started)
        return -1;
    pthread_once(&rec_cv_once, rec_cv_init);
    queue_cap = cfg->queue_cap ? cfg->queue_cap : TASKS_DEFAULT_QUEUE_CAP;

    pthread_mutex_lock(&rec_mu);
    ring_resize_locked(cfg->keep);
    pthread_mutex_unlock(&rec_mu);

    if (Q && !abandoned)
        queue_destroy(Q);
    abandoned = 0;
    linger_us = cfg->linger_us;
    /* Bounded by the reservations instead of a queue capacity. */
    J = cfg->journal;
    Q = J ? queue_journal_new(J, 0, linger_us, describe_item, NULL) : queue_mem_new(0, linger_us);
    atomic_store(&stopping, 0);
    atomic_store(&shut_down, 0);
    if (sched_start() != 0)
        return -1;
    workers *w = workers_start(cfg->workers ? cfg->workers : TASKS_DEFAULT_WORKERS, Q, run_node, NULL);
    if (w == NULL) {
        sched_stop();
        return -1;
    }
    pthread_mutex_lock(&life_mu);
    W = w;
    pthread_mutex_unlock(&life_mu);
    atomic_store(&accepting, 1);
    started = 1;
    return 0;
}

typedef struct unfinished {
    uint64_t id;
    const char *name; /* kind names live forever */
    int state;
    uint32_t attempts;
    uint64_t running_us;
} unfinished;

/* Copy the live records (rec_mu held).  *n gets the count. */
static unfinished *snapshot_live_locked(size_t *n)
{
    unfinished *u = xcalloc(live_count ? live_count : 1, sizeof(*u));
    size_t i = 0;
    uint64_t now = util_now_us();
    for (task_item *it = live.lnext; it != &live; it = it->lnext, i++) {
        u[i].id = it->id;
        u[i].name = it->kind->name;
        u[i].state = it->state;
        u[i].attempts = it->attempts;
        u[i].running_us = it->state == ST_RUNNING ? now - MONO_US(it) : 0;
    }
    *n = i;
    return u;
}

static void print_unfinished_line(const unfinished *u, const char *outcome)
{
    if (u->state == ST_RUNNING)
        log_msg(BGS_LOG_WARN, "  task %" PRIu64 " %s %s (attempt %" PRIu32 ", running for %.3f s%s%s)",
                u->id, u->name, state_names[u->state], u->attempts,
                (double)u->running_us / 1e6, outcome ? "; " : "", outcome ? outcome : "");
    else
        log_msg(BGS_LOG_WARN, "  task %" PRIu64 " %s %s (%" PRIu32 " attempts so far%s%s)",
                u->id, u->name, state_names[u->state], u->attempts,
                outcome ? "; " : "", outcome ? outcome : "");
}

size_t tasks_shutdown(unsigned drain_ms)
{
    if (!started)
        return 0;
    uint64_t deadline = util_now_us() + (uint64_t)drain_ms * 1000u;
    uint64_t fin0, fin1;

    /* 1. No new work; periodic schedules release their generations. */
    atomic_store(&accepting, 0);
    atomic_store(&shut_down, 1);
    periodic_stop(NULL);

    /* 2. Drain: queued, running and retrying tasks go on until the deadline. */
    pthread_mutex_lock(&rec_mu);
    fin0 = finished_total;
    draining = 1;
    while (live_count > 0 && util_now_us() < deadline) {
        struct timespec ts = util_mono_timespec(deadline);
        pthread_cond_timedwait(&rec_cv, &rec_mu, &ts);
    }
    fin1 = finished_total;
    pthread_mutex_unlock(&rec_mu);

    /* 3. Cancel what is left.  Stop the queue and the timer thread first,
     * so that nothing moves while we collect. */
    atomic_store(&stopping, 1);
    queue_shutdown(Q);
    sched_stop();

    size_t nu;
    unfinished *u;
    pthread_mutex_lock(&rec_mu);
    u = snapshot_live_locked(&nu);
    for (task_item *it = live.lnext; it != &live; it = it->lnext)
        atomic_fetch_or(&it->cancel, CANCEL_SET);
    pthread_mutex_unlock(&rec_mu);

    /* The queue hands back the ready ones, then those waiting to retry. */
    queue_node *n;
    while ((n = queue_try_take(Q)) != NULL) {
        task_item *it = UTIL_CONTAINER_OF(n, task_item, qnode);
        pthread_mutex_lock(&rec_mu);
        int retrying = it->state == ST_RETRYING;
        pthread_mutex_unlock(&rec_mu);
        finalize(it, ST_CANCELLED, retrying ? "cancelled at shutdown before its retry ran"
                                            : "cancelled at shutdown; the task never ran");
    }

    task_item *waiting = NULL;
    pthread_mutex_lock(&conc_mu);
    for (task_kind *k = atomic_load(&kinds); k; k = k->next) {
        while (k->wait_head) {
            task_item *it = k->wait_head;
            k->wait_head = it->wait_next;
            it->wait_next = waiting;
            waiting = it;
        }
        k->wait_tail = NULL;
    }
    pthread_mutex_unlock(&conc_mu);
    while (waiting) {
        task_item *next = waiting->wait_next;
        finalize(waiting, ST_CANCELLED, "cancelled at shutdown; the task never ran");
        waiting = next;
    }

    /* 4. Grace for running tasks to notice the flag and return. */
    uint64_t grace = util_now_us() + SHUTDOWN_GRACE_US;
    pthread_mutex_lock(&rec_mu);
    while (running_now > 0 && util_now_us() < grace) {
        struct timespec ts = util_mono_timespec(grace);
        pthread_cond_timedwait(&rec_cv, &rec_mu, &ts);
    }
    pthread_mutex_unlock(&rec_mu);

    pthread_mutex_lock(&life_mu);
    workers *w = W;
    W = NULL;
    pthread_mutex_unlock(&life_mu);
    unsigned stuck = workers_stop(w, grace);
    if (stuck)
        abandoned = 1;

    /* 5. The report; nothing when no task ever existed (a server that
     * stopped before serving, e.g. its plugin was refused). */
    if (nu || fin1 != fin0 || atomic_load(&next_id) != 1)
        log_msg(nu ? BGS_LOG_WARN : BGS_LOG_INFO, "drain: %" PRIu64 " tasks finished, %zu did not",
                fin1 - fin0, nu);
    for (size_t i = 0; i < nu; i++) {
        char outcome[96];
        pthread_mutex_lock(&rec_mu);
        task_item *it = hash_find_locked(u[i].id);
        int now_state = it ? it->state : -1;
        pthread_mutex_unlock(&rec_mu);
        if (now_state < 0)
            snprintf(outcome, sizeof(outcome), "finished after the deadline");
        else if (is_final(now_state))
            snprintf(outcome, sizeof(outcome), "now %s", state_names[now_state]);
        else if (now_state == ST_RUNNING)
            snprintf(outcome, sizeof(outcome), "did not return within the grace period; abandoned");
        else
            snprintf(outcome, sizeof(outcome), "never ran; still %s", state_names[now_state]);
        print_unfinished_line(&u[i], outcome);
    }
    free(u);
    if (stuck)
        log_msg(BGS_LOG_WARN, "drain: %u worker thread%s stuck in plugin code; not waiting for %s",
                stuck, stuck == 1 ? "" : "s", stuck == 1 ? "it" : "them");

    pthread_mutex_lock(&rec_mu);
    draining = 0;
    pthread_mutex_unlock(&rec_mu);
    started = 0;
    return nu;
}

void tasks_report_unfinished(void)
{
    size_t nu;
    pthread_mutex_lock(&rec_mu);
    unfinished *u = snapshot_live_locked(&nu);
    pthread_mutex_unlock(&rec_mu);
    log_msg(BGS_LOG_WARN, "unfinished: %zu task%s", nu, nu == 1 ? "" : "s");
    for (size_t i = 0; i < nu; i++)
        print_unfinished_line(&u[i], NULL);
    free(u);
}

/* ------------------------------------------------------------------ */
/* Introspection                                                       */
/* ------------------------------------------------------------------ */

static void json_time(json *j, const char *key, uint64_t wall)
{
    char buf[96];
    json_key(j, key);
    if (wall == 0) {
        json_null(j);
        return;
    }
    util_iso_time(buf, sizeof(buf), wall, 6);
    json_str(j, buf);
}

static void json_time_us(json *j, const char *key, uint64_t wall)
{
    json_key(j, key);
    if (wall == 0)
        json_null(j);
    else
        json_u64(j, wall);
}

int tasks_record_json(uint64_t id, json *j)
{
    pthread_mutex_lock(&rec_mu);
    task_item *it = hash_find_locked(id);
    if (it == NULL) {
        pthread_mutex_unlock(&rec_mu);
        /* No longer in memory (evicted, or an earlier run's): the journal. */
        return J && journal_json_record(J, id, j) == 0 ? 0 : BGS_ENOTFOUND;
    }
    json_obj_begin(j);
    json_key(j, "id");
    json_u64(j, it->id);
    json_key(j, "name");
    json_str(j, it->kind->name);
    json_key(j, "state");
    json_str(j, state_names[it->state]);
    json_key(j, "attempts");
    json_u64(j, it->attempts);
    json_key(j, "max_attempts");
    json_u64(j, it->max_attempts);
    json_time(j, "created_at", it->created_wall);
    json_time(j, "started_at", it->started_wall);
    json_time(j, "finished_at", it->finished_wall);
    json_time_us(j, "created_at_us", it->created_wall);
    json_time_us(j, "started_at_us", it->started_wall);
    json_time_us(j, "finished_at_us", it->finished_wall);
    json_key(j, "error");
    json_str(j, it->error);
    json_key(j, "request_id");
    json_str(j, item_rid(it));
    json_key(j, "delivered");
    if (it->delivered < 0)
        json_null(j);
    else
        json_bool(j, it->delivered);
    json_key(j, "mode");
    json_str(j, it->mode == BGS_CONCURRENT ? "concurrent" : "sequential");
    json_key(j, "generation");
    json_u64(j, it->gen_number);
    json_key(j, "payload_bytes");
    json_u64(j, it->len);
    json_key(j, "adhoc");
    json_bool(j, it->kind == atomic_load(&adhoc_kind));
    json_key(j, "result");
    if (it->x == NULL || !it->x->has_result) {
        json_null(j);
    } else {
        task_extra *x = it->x;
        json_obj_begin(j);
        json_key(j, "status");
        json_u64(j, x->res_status);
        json_key(j, "content_type");
        json_str(j, x->res_type);
        json_key(j, "length");
        json_u64(j, x->res_len);
        json_key(j, "body");
        json_strn(j, x->res_data ? x->res_data : "", x->res_len);
        json_obj_end(j);
    }
    json_obj_end(j);
    pthread_mutex_unlock(&rec_mu);
    return 0;
}

size_t tasks_recent_ids(uint64_t *ids, size_t max)
{
    size_t n = 0, nl = 0;
    pthread_mutex_lock(&rec_mu);
    /* Live ones, newest first (the live list is in creation order)... */
    for (task_item *it = live.lprev; it != &live && nl < max; it = it->lprev)
        ids[nl++] = it->id;
    /* ...then merged with the ring's, newest first: ids grow with time. */
    uint64_t *live_ids = nl ? xmemdup(ids, nl * sizeof *ids) : NULL;
    size_t li = 0, ri = 0;
    while (n < max && (li < nl || ri < ring_len)) {
        uint64_t r = ri < ring_len ? ring[(ring_start + ring_len - 1 - ri) % ring_cap]->id : 0;
        if (li < nl && live_ids[li] > r) {
            ids[n++] = live_ids[li++];
        } else {
            ids[n++] = r;
            ri++;
        }
    }
    pthread_mutex_unlock(&rec_mu);
    free(live_ids);
    return n;
}

int tasks_retry(generation *gen, uint64_t id, uint64_t *new_id, char *name, size_t name_cap)
{
    pthread_mutex_lock(&rec_mu);
    task_item *it = hash_find_locked(id);
    if (it == NULL) {
        pthread_mutex_unlock(&rec_mu);
        return BGS_ENOTFOUND;
    }
    snprintf(name, name_cap, "%s", it->kind->name);
    if (it->state != ST_FAILED || it->def == NULL || (it->payload == NULL && it->len != 0)) {
        pthread_mutex_unlock(&rec_mu);
        return BGS_ESTATE;
    }
    size_t len = it->len;
    void *payload = len ? xmemdup(it->payload, len) : NULL;
    char *rid = item_rid(it) ? xstrdup(item_rid(it)) : NULL;
    pthread_mutex_unlock(&rec_mu);
    int rc = tasks_enqueue(gen, rid, name, payload, len, NULL, NULL, new_id);
    free(payload);
    free(rid);
    return rc;
}

void tasks_gauges(uint64_t *queued, uint64_t *running)
{
    uint64_t q = 0, r = 0;
    for (task_kind *k = atomic_load_explicit(&kinds, memory_order_acquire); k; k = k->next) {
        q += atomic_load_explicit(&k->queued, memory_order_relaxed);
        r += atomic_load_explicit(&k->running, memory_order_relaxed);
    }
    *queued = q;
    *running = r;
}

/*
 * "queue.depth" is the number of tasks waiting in the shared queue for a
 * worker (ready to run now); "queue.accepted" counts every task accepted
 * and not yet final (the figure queue_cap bounds).
 */
void tasks_stats_json(json *j)
{
    json_key(j, "tasks");
    json_obj_begin(j);
    for (task_kind *k = atomic_load_explicit(&kinds, memory_order_acquire); k; k = k->next) {
        json_key(j, k->name);
        json_obj_begin(j);
#define KEY(f)           \
    json_key(j, #f);     \
    json_u64(j, atomic_load_explicit(&k->f, memory_order_relaxed));
        KEY(queued) KEY(running) KEY(succeeded) KEY(failed) KEY(retried)
        KEY(skipped) KEY(discarded) KEY(cancelled) KEY(ticks_skipped)
#undef KEY
        json_obj_end(j);
    }
    json_obj_end(j);

    json_key(j, "queue");
    json_obj_begin(j);
    json_key(j, "depth");
    json_u64(j, Q ? queue_depth(Q) : 0);
    json_key(j, "capacity");
    json_u64(j, queue_cap);
    json_key(j, "accepted");
    json_u64(j, atomic_load(&accepted));
    json_key(j, "backend");
    json_str(j, Q ? Q->ops->name : "memory");
    json_key(j, "wakeups");
    json_u64(j, Q ? queue_wakeups(Q) : 0);
    json_key(j, "linger_us");
    json_u64(j, linger_us);
    json_obj_end(j);

    pthread_mutex_lock(&life_mu);
    unsigned busy = workers_busy(W), total = workers_total(W);
    pthread_mutex_unlock(&life_mu);
    json_key(j, "workers");
    json_obj_begin(j);
    json_key(j, "busy");
    json_u64(j, busy);
    json_key(j, "total");
    json_u64(j, total);
    json_obj_end(j);

    if (J)
        journal_json_stats(J, Q, j);

    json_key(j, "dispatch_us");
    json_obj_begin(j);
    json_key(j, "p50");
    json_u64(j, latency_percentile(&dispatch_hist, 50));
    json_key(j, "p99");
    json_u64(j, latency_percentile(&dispatch_hist, 99));
    json_obj_end(j);
}

/* ------------------------------------------------------------------ */
/* Task context (worker threads, during a run)                         */
/* ------------------------------------------------------------------ */

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
    return ctx ? item_rid(ctx->item) : NULL;
}

bgs_app *tasks_ctx_app(bgs_task_ctx *h)
{
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_app", "NULL");
    return ctx ? ctx->item->gen->app.handle : NULL;
}

void *tasks_ctx_service(bgs_task_ctx *h, const char *name)
{
    bgs_task_ctx *ctx = CTX_OF(h, "bgs_task_service", "NULL");
    if (ctx == NULL)
        return NULL;
    char why[256];
    void *inst = services_lookup(ctx->item->gen->services, &ctx->scope, name, why, sizeof why);
    if (inst == NULL && why[0])
        misuse(MISUSE_SITE, BGS_EINVAL, "NULL", "bgs_task_service(\"%s\"): %s",
               name ? name : "NULL", why);
    return inst;
}

/* The line is logged even when the handle is refused (tagged "-"). */
/* The live dashboard keeps the lines of the tasks it watches (events.h). */
static void dashboard_line(bgs_task_ctx *ctx, uint32_t level, const char *fmt, va_list ap)
{
    if (ctx == NULL || fmt == NULL || events_watchers() == 0)
        return;
    char line[EVENTS_LOG_LINE];
    vsnprintf(line, sizeof(line), fmt, ap);
    events_task_log(ctx->item->id, level, line);
}

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
