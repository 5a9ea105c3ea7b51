/*
 * tasks_internal.h - the task engine's own types, shared by the files
 * that implement tasks.h and by nobody else.
 *
 * The engine is split along its locks, one job per file, each the owner
 * of its part of struct tasks_engine (below) and of the lock that guards it:
 *   tasks_records.c  - task records: kinds (per-name counters), items
 *                      (and the spare ones kept for reuse), the id hash,
 *                      the live list, the finished ring, watchers.
 *                      rec_mu, kinds_mu.
 *   tasks_runs.c     - runs: queue reservations, dispatch, one attempt on
 *                      a worker, retries (queue_nack), per-name caps,
 *                      sequences, finalising, tasks queued at once.
 *                      conc_mu; the queue.
 *   tasks_ctx.c      - the task context the plugin sees during a run
 *                      (bgs_task_*); no lock (one worker owns a run).
 *   tasks_group.c    - the group of one response (HTTP thread).
 *   tasks_periodic.c - periodic schedules and their phases.  p_mu.
 *   tasks_engine.c   - life: new, shutdown (drain, cancel, report), free,
 *                      stats.  life_mu.
 * A file calls only the files listed above it (scripts/check-includes.sh
 * checks the rooms have no cycle); tasks_runs.c learns of periodic runs
 * only through the watcher each periodic item carries.
 *
 * Lock order (never hold two except in this order; none is held while
 * plugin code runs, and sched_cancel is never called holding any):
 *   p_mu -> rec_mu -> conc_mu; kinds_mu and life_mu alone.
 * Lock-free: ids (next_id), queue reservations (accepted), the accepting
 * and stopping flags, the per-name counters (atomics), the dispatch
 * latency histogram (latency.h).
 *
 * A task_item is the unit of work *and* its record.  It is created at
 * attach (HTTP thread, or the scheduler for periodic ticks) and is, until
 * it reaches a final state, in exactly one place whose owner alone may
 * move it: an unsubmitted group (the HTTP thread), behind its sequential
 * predecessor (the thread running that one), the queue (also while it
 * waits there for a retry), a name's wait list (conc_mu), or a worker.
 * Once final it sits in the record ring until evicted and freed.
 */
#ifndef BGSERVE_TASKS_INTERNAL_H
#define BGSERVE_TASKS_INTERNAL_H

#include "durable.h"
#include "latency.h"
#include "queue.h"
#include "sched.h"
#include "services.h"
#include "tasks.h"
#include "workers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define TASKS_ERR_MAX 512

typedef struct task_item task_item;

/* Per task name, for the life of the engine, across generations.  The
 * list is prepend-only (kinds_mu serialises inserts); readers walk it
 * without a lock: a published kind is immutable but for its atomics and
 * the conc_mu fields. */
typedef struct task_kind {
    struct task_kind *next;  /* immutable once published */
    char *name;              /* immutable */
    tasks_engine *engine;           /* immutable */
    atomic_ulong queued, running; /* gauges; written under rec_mu */
    atomic_ulong succeeded, failed, retried, skipped, discarded, cancelled; /* the same */
    atomic_ulong ticks_skipped;  /* counter; no lock (tasks_periodic.c) */
    unsigned conc_running;   /* capped runs in progress; conc_mu */
    task_item *wait_head, *wait_tail; /* at their cap; conc_mu */
    /* Inline runs (tasks_runs.c): whether its runs have been short.
     * Written by whichever thread ends a run, with no lock: relaxed
     * atomics, where a lost update only delays or hastens the verdict. */
    atomic_ulong brief_gen;      /* the generation (owner_number) counted */
    atomic_uint brief_seen;      /* its runs counted, up to TASKS_BRIEF_SEEN */
    atomic_uint slow_score;      /* decaying count of runs over the bound */
    atomic_uint stalls;          /* inline runs that held their thread long */
    atomic_ullong stall_logged_us; /* when the last stall was logged */
    atomic_ulong inline_runs;    /* counter: runs on an HTTP thread */
} task_kind;

/* A callback waiting for an item's final state; rec_mu. */
typedef struct task_watch {
    struct task_watch *next;
    tasks_final_fn cb;
    void *arg;
} task_watch;

/* A request id held by value: each task and each group has its own copy,
 * so none is allocated, shared or freed on another thread (bench/README.md,
 * section 20).  One of up to TASKS_RID_INLINE - 1 characters (bgserve's
 * own have 16) is in s; a longer or empty one (only from another producer,
 * through --broker) is a malloc'd copy in far.heap, with s[0] == '\0'.
 * All zero: none.  Set once (tasks_rid_set), then immutable until
 * tasks_rid_clear. */
#define TASKS_RID_INLINE 24
typedef union task_rid {
    char s[TASKS_RID_INLINE];
    struct {
        char inline_end;     /* s[0]: '\0' */
        char *heap;          /* NULL: none */
    } far;
} task_rid;

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
#define TASKS_INLINE_PAYLOAD_MAX 256u
/* Items with a payload up to this size (or none) are all made this size,
 * and a finished one is kept for the next (tasks_records.c, "spares"):
 * items are made by HTTP threads and freed by workers, which glibc's
 * per-thread caches cannot pair up (bench/README.md, section 12). */
#define TASKS_SMALL_PAYLOAD 64u
#define TASKS_SPARES_MAX 1024u

/* task_item.cancel: cancellation was asked for (shutdown or timeout), and
 * whether it was the timeout. */
#define TASKS_CANCEL_SET 1u
#define TASKS_CANCEL_TIMEOUT 2u

/*
 * Field order and widths keep the item small (bench/README.md, "memory
 * per queued task"): it is what every queued task costs.  The engine is
 * it->kind->engine.
 */
struct task_item {
    union {
        /* In the queue.  qnode.queued_us is the item's monotonic clock
         * (TASKS_MONO_US): the queue stamps it when the item becomes
         * ready (dispatch), and once a run starts its owner stores the
         * run's start there. */
        queue_node qnode;
        task_item *wait_next;    /* kind wait list (never queued at the
                                  * same time); conc_mu */
    };
    task_item *hnext;            /* id hash chain; rec_mu */
    task_item *lprev, *lnext;    /* live list; rec_mu */
    task_item *group_next;       /* group list / sequential successor */

    /* Set at attach; owned by the item's current owner until final. */
    uint64_t id;
    task_kind *kind;
    const plugin_task *def;      /* NULL for an ad hoc task */
    const tasks_owner *owner;    /* retained; released when final */
    uint64_t owner_number;       /* immutable: owner->number, for the record */
    bgs_adhoc_fn afn;
    void *arg;
    bgs_free_fn free_fn;
    void *payload;               /* inline_data, a malloc'd copy, or NULL */
    size_t len;

    /* The record: rec_mu, but for delivered and mode, which the item's
     * owner writes and anyone reads without a lock (relaxed atomics): the
     * group's submit sets them for a whole response without locking. */
    int8_t state;                /* tasks_state; -1 before the first */
    atomic_schar delivered;      /* -1: not known (periodic, unsubmitted) */
    atomic_uchar mode;           /* BGS_SEQUENTIAL or BGS_CONCURRENT */
    uint8_t jflags;              /* TASKS_JF_*: the item's owner */
    uint32_t attempts;
    uint32_t max_attempts;       /* immutable */
    atomic_uint cancel;          /* TASKS_CANCEL_* bits; 0: run on */
    uint64_t created_wall, started_wall, finished_wall; /* 0: null */
    task_rid rid;                /* immutable; far.heap freed at eviction */
    char *error;
    task_extra *x;               /* NULL until needed (see task_extra) */
    task_watch *watchers;        /* fired once, when final */
    max_align_t inline_data[];   /* a small payload (TASKS_INLINE_PAYLOAD_MAX) */
};

/* task_item.jflags, with --journal or --broker: written to the journal
 * (or added to the broker's stream) ahead of its dispatch
 * (tasks_group_persist), and linked into the queue since. */
#define TASKS_JF_WRITTEN 1u
#define TASKS_JF_LINKED 2u
/* --broker, at shutdown: its task stays in Redis for the workers; this
 * process finalises its record without a "cancelled" line. */
#define TASKS_JF_ELSEWHERE 4u
/* --journal, at shutdown: it never ran (or waits for its retry), and its
 * row stays as it is, queued for the next start; so do the rows of the
 * rest of its sequence (tasks_runs_keep). */
#define TASKS_JF_KEPT 8u
/* --broker: a step of a sequence Redis keeps whole, written ahead and
 * never linked here, whose end Redis records without this process (the
 * worker that ended the step before skipped it too): forgotten quietly. */
#define TASKS_JF_SETTLED 16u
/* --journal: a replayed task that was running when its process died, or
 * that the crash record named: each of its starts is committed before its
 * run, even with lazy starts (queue_journal.h), so that a crash in that
 * run finds its attempt on disk.  Its row alone cannot tell: a row left
 * running says the same whether a later lazy start was committed or not,
 * and the replay's count of a crashed attempt is in memory only. */
#define TASKS_JF_AWAIT_START 32u

/* When the item was last dispatched (queued) until a run starts, then
 * when that run started (see task_item.qnode). */
#define TASKS_MONO_US(it) ((it)->qnode.queued_us)

/* One run, as the task function sees it.  Owned by the worker. */
struct bgs_task_ctx {
    task_item *item;
    uint32_t attempt;
    services_scope *scope;
    int has_err;
    char err[TASKS_ERR_MAX];
    int has_result;
    uint32_t res_status;
    char *res_type;
    void *res_data;
    size_t res_len;
};

typedef struct periodic periodic;
typedef struct phase_memo phase_memo;

struct tasks_engine {
    /* records (tasks_records.c) */
    pthread_mutex_t rec_mu;      /* adaptive: held for a few hundred ns per task */
    pthread_cond_t rec_cv;       /* CLOCK_MONOTONIC; progress while draining */
    atomic_uint_fast64_t next_id;
    task_item **htab;            /* id hash; rec_mu */
    size_t hcap, hcount;         /* rec_mu */
    task_item *live_head, *live_tail; /* not final yet, oldest first; rec_mu */
    size_t live_count, running_now;   /* rec_mu */
    task_item **ring;            /* finished records, oldest first; rec_mu */
    size_t ring_cap, ring_start, ring_len; /* rec_mu */
    uint64_t finished_total;     /* rec_mu */
    int draining;                /* broadcast rec_cv on changes; rec_mu */
    uint64_t *gone;              /* ids of the tasks dropped while draining
                                  * (tasks_records_drop: they went on in
                                  * another process), for the drain report; rec_mu */
    size_t ngone, capgone;       /* rec_mu */
    task_item *spares;           /* small items to reuse, by wait_next; rec_mu */
    atomic_size_t nspares;       /* written under rec_mu; read without as a hint */
    pthread_mutex_t kinds_mu;
    _Atomic(task_kind *) kinds;  /* inserts under kinds_mu */
    _Atomic(task_kind *) adhoc_kind; /* the kind "adhoc", made on first use */

    /* runs (tasks_runs.c) */
    pthread_mutex_t conc_mu;     /* each kind's conc_running and wait list */
    queue *q;                    /* immutable after tasks_new */
    journal *journal;            /* --journal (borrowed), or NULL; immutable */
    size_t queue_cap;            /* immutable */
    unsigned linger_us;          /* immutable */
    unsigned inline_us;          /* immutable; 0: no inline runs */
    atomic_ulong inline_runs;    /* counter: runs on the thread that submitted */
    atomic_size_t accepted;      /* reserved queue capacity */
    atomic_int accepting;        /* 1 from tasks_new until shutdown */
    atomic_int stopping;         /* the cancel phase of the shutdown */
    latency_hist dispatch_hist;  /* submit to first start */

    /* the broker (tasks_broker.c); immutable after tasks_new, NULL: none */
    broker *broker;
    tasks_resolve_fn resolve;
    void *resolve_arg;

    /* the timers of its retries, timeouts, periodic ticks and deferred
     * deadlines (sched.h): owned, made first and freed last */
    sched *sched;

    /* periodic (tasks_periodic.c) */
    pthread_mutex_t p_mu;
    periodic *plist;             /* p_mu */
    phase_memo *phases;          /* p_mu */
    atomic_int periodic_closed;  /* shutdown began: no new schedule */

    /* life (tasks_engine.c) */
    pthread_mutex_t life_mu;
    workers *w;                  /* life_mu */
    int shut;                    /* tasks_shutdown ran; main thread */
    int abandoned;               /* workers stuck in plugin code; main thread */
};

/* A per-name counter that is written under rec_mu only (every one but
 * ticks_skipped, tasks_records_transition_locked): rec_mu orders the
 * writers, so a plain load and store do, without the locked
 * read-modify-write an atomic add costs five times per task; readers
 * still load it without the lock. */
static inline void tasks_kadd_locked(atomic_ulong *c, long d)
{
    unsigned long v = atomic_load_explicit(c, memory_order_relaxed);
    atomic_store_explicit(c, v + (unsigned long)d, memory_order_relaxed);
}

static inline void tasks_kadd(atomic_ulong *c, long d)
{
    if (d > 0)
        atomic_fetch_add_explicit(c, (unsigned long)d, memory_order_relaxed);
    else
        atomic_fetch_sub_explicit(c, (unsigned long)-d, memory_order_relaxed);
}

static inline int tasks_is_final(int st)
{
    return st >= TASKS_SUCCEEDED;
}

/* ---- tasks_records.c ---------------------------------------------------- */

void tasks_records_init(tasks_engine *t, size_t keep);
/* Free every record and kind (no task may be live). */
void tasks_records_destroy(tasks_engine *t);
/* The kind of name, made on first use. */
task_kind *tasks_records_kind(tasks_engine *t, const char *name);
/* The kind of ad hoc tasks ("adhoc"). */
task_kind *tasks_records_adhoc_kind(tasks_engine *t);
/* The kind of a definition: resolved at load time, or by name. */
task_kind *tasks_records_kind_of(tasks_engine *t, const plugin_task *def);

/* r (all zero) takes a copy of s (NULL: none), or of src; tasks_rid_clear
 * frees what it holds and leaves it all zero.  tasks_rid_str: the id, or
 * NULL. */
void tasks_rid_set(task_rid *r, const char *s);
void tasks_rid_copy(task_rid *r, const task_rid *src);
void tasks_rid_clear(task_rid *r);
const char *tasks_rid_str(const task_rid *r);
const char *tasks_records_rid(const task_item *it);
int tasks_records_payload_inline(const task_item *it);

/* A new queued item holding a reference to owner, with a copy of rid
 * (NULL: none) and of the payload, registered in the id hash and the live
 * list.  Capacity
 * was reserved by the caller.  id 0: a new one (from the journal when
 * there is one: ids then never repeat across runs). */
task_item *tasks_records_new(tasks_engine *t, const tasks_owner *owner, task_kind *kind,
                             const plugin_task *def, const task_rid *rid, uint32_t mode,
                             const void *payload, size_t len, uint64_t id);
/* The same with a request id as text (NULL: none). */
task_item *tasks_records_new_rid(tasks_engine *t, const tasks_owner *owner, task_kind *kind,
                                 const plugin_task *def, const char *request_id, uint32_t mode,
                                 const void *payload, size_t len, uint64_t id);
/* The item's task_extra, allocated on first use; owner of it only. */
task_extra *tasks_records_extra(task_item *it);

/* rec_mu held: */
task_item *tasks_records_find_locked(tasks_engine *t, uint64_t id);
void tasks_records_transition_locked(task_item *it, int st);
void tasks_records_watch_locked(task_item *it, tasks_final_fn cb, void *arg);

/*
 * Publish the final record of it (owned by the caller): state st, error
 * err (copied; NULL for none), out of the live list into the ring.  Fills
 * fin (with a copy of the result when there are watchers) and returns the
 * watchers to call, taken off the item.  *dur is how long the run that
 * ended took (0 when none was running), *attempts the attempts made.
 * end_us: when that run ended (util_now_us), 0 to read the clock here.
 * Afterwards it may be evicted and freed at any time.
 */
task_watch *tasks_records_finish(task_item *it, int st, const char *err, uint64_t end_us,
                                 tasks_final *fin, uint64_t *dur, uint32_t *attempts);

/* Take it (owned by the caller, not final) out of the records and free
 * it: it went on elsewhere (tasks_runs_hand_back).  While the engine
 * drains, its id is kept (gone): the drain report says where it went. */
void tasks_records_drop(task_item *it);

/* ---- tasks_runs.c ------------------------------------------------------- */

/* Take one unit of queue capacity: 0, or BGS_EFULL when none is left. */
int tasks_runs_reserve(tasks_engine *t);
/* The checks of an attach, in their order: 0 with one unit reserved,
 * BGS_ESHUTDOWN, BGS_ENOTASK (def NULL, unless adhoc), BGS_EFULL. */
int tasks_runs_admit(tasks_engine *t, const plugin_task *def, int adhoc);
/* Bring it to final state st with error err (see tasks_runs.c). */
void tasks_runs_finalize(task_item *it, int st, const char *err);
/* Hand it to the workers; cancel it if the queue refuses.  One the
 * journal has already (TASKS_JF_WRITTEN) is linked without a second
 * write. */
void tasks_runs_dispatch(task_item *it);
/* The same for n items at once, in one batch. */
void tasks_runs_dispatch_batch(task_item **its, size_t n);
/* Start a sequence at it (skipping leading undelivered-only tasks). */
void tasks_runs_seq_start(task_item *it);
int tasks_runs_skip_undelivered(const task_item *it);
/* The workers' run function (workers.h); arg is the engine. */
void tasks_runs_node(queue_node *n, void *arg);
/* Whether it may run inline (tasks_runs.c, "Inline runs"): a first
 * attempt of a named task whose recent runs were brief. */
int tasks_runs_inline_ok(const task_item *it);
/* Run it here and now, as a worker would (the caller owns it, it is in
 * no queue, and tasks_runs_inline_ok said yes). */
void tasks_runs_inline(task_item *it);
/* --broker: it (owned by the caller, without watchers or a sequence
 * after it: an adopted job) goes on in another process; its record
 * here ends without a final state and it is freed. */
void tasks_runs_hand_back(task_item *it);
/* A stopping worker (--broker): it, a named task read from the stream and
 * not final (never run here, or waiting for a retry it kept while Redis
 * was away; retrying says which), goes back to Redis for another worker
 * (queue_redis_hand_back), and its record ends cancelled saying where it
 * went: handed back, or, when Redis did not take it, pending there until
 * another worker claims it.  0, or BGS_ENOTFOUND when this is no worker
 * or it is no such task (the caller still owns it). */
int tasks_runs_hand_back_stopped(task_item *it, int retrying);
/* Shutdown: finalise every task waiting for a slot under its name's cap. */
void tasks_runs_cancel_waiting(tasks_engine *t);
/* Shutdown: it did not run and will not here (why says so).  Its record
 * ends cancelled; with --journal its row, and the rows of the rest of
 * its sequence, stay queued for the next start (TASKS_JF_KEPT). */
void tasks_runs_keep(task_item *it, const char *why);

/* ---- tasks_broker.c ------------------------------------------------------ */

/* The queue on the broker (cfg->broker set): the engine's hooks for
 * queue_redis.  NULL when its thread cannot start. */
queue *tasks_broker_queue(tasks_engine *t, const tasks_config *cfg);
/* Write the key "broker" (URL without password, the stream's numbers)
 * into the open object j: one round trip to Redis. */
void tasks_broker_stats_json(tasks_engine *t, json *j);

/* ---- tasks_periodic.c ---------------------------------------------------- */

/* Stop every schedule (shutdown), and forget the phases. */
void tasks_periodic_stop_all(tasks_engine *t);

#endif
