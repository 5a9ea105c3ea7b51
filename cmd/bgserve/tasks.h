/*
 * tasks.h - the background task engine: records, groups, retries, the
 * status ring, stats, periodic runs and the shutdown drain.
 *
 * The engine is a value: main makes one with tasks_new and hands it to
 * whoever attaches tasks (the generation room for periodic runs, hostapi
 * and http through the generation and the request), and frees it with
 * tasks_free.  Nothing in it is global, so tests make as many engines as
 * they like, each with its own workers, records, ids, counters and timer
 * thread (sched.h: its retries, timeouts, periodic ticks and the
 * deadlines of its requests' deferred answers).
 *
 * Tasks do not know generations.  Whoever attaches a task names it by a
 * resolved definition (plugin_task, looked up once by the caller: the
 * loader resolves route tasks at load time) and an owner (tasks_owner):
 * a small struct of function pointers and a context the task holds a
 * reference to while it is not final, and through which a running task
 * reaches its app and services.
 *
 * The request side (dispatch.c, hostapi.c) talks only to this header,
 * with one group per response (docs/tasks.md, "One group per response"):
 *   route, then handler attach -> tasks_group_init / tasks_group_add (HTTP thread)
 *   queued at once             -> tasks_group_enqueue
 *   handler failed, HEAD       -> tasks_group_drop
 *   request completed          -> tasks_group_submit
 * tasks never calls back into http.
 *
 * The engine is implemented by the tasks_*.c files, one job each, around
 * the private tasks_internal.h (its top comment has the map and the
 * locks); the JSON of a task record is introspect's (tasks_record_visit).
 */
#ifndef BGSERVE_TASKS_H
#define BGSERVE_TASKS_H

#include "bgserve.h"
#include "durable.h"
#include "journal.h"
#include "broker.h"
#include "json.h"
#include "plugin.h"
#include "sched.h"
#include "services.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* The defaults, here only: tasks_new applies them to zero fields, and
 * cli.c prints them and starts from them.  Plain numbers (cli.c's help
 * text spells them with UTIL_STR). */
#define TASKS_DEFAULT_WORKERS 16
#define TASKS_DEFAULT_QUEUE_CAP 65536
#define TASKS_DEFAULT_KEEP 10000
/* --inline-tasks: a task whose recent runs each took at most this many
 * microseconds runs on the HTTP thread right after its response is sent
 * (tasks_runs.c, "inline runs"). */
#define TASKS_DEFAULT_INLINE_US 50
#define TASKS_INLINE_MAX_US 1000

typedef struct tasks_engine tasks_engine;

struct tasks_owner;

/* The task name of the app now loaded (the current generation), for a
 * task another process accepted: 0 with *def and *owner set and a
 * reference to the owner held for the caller (release it), -1 when the
 * app has no such task, or -2 when no app is loaded yet (starting). */
typedef int (*tasks_resolve_fn)(void *arg, const char *name, const plugin_task **def,
                                const struct tasks_owner **owner);

typedef struct tasks_config {
    unsigned workers;           /* task threads; 0: TASKS_DEFAULT_WORKERS */
    unsigned queue_cap;         /* tasks accepted but not finished, at most;
                                 * 0: TASKS_DEFAULT_QUEUE_CAP */
    unsigned keep;              /* finished records kept for introspection */
    unsigned linger_us;         /* queue coalescing window (queue_mem_new); 0: none;
                                 * QUEUE_LINGER_ADAPTIVE: follows the load */
    unsigned inline_us;         /* tasks whose recent runs each took at most this
                                 * run on the HTTP thread once their response is
                                 * sent (tasks_group_submit); 0: never */
    journal *journal;           /* --journal (borrowed; closed after tasks_shutdown),
                                 * or NULL: tasks live in memory only */
    int lazy_starts;            /* with a journal: a run does not wait for its
                                 * start's commit (queue_journal_lazy_starts);
                                 * only where the crash record names a task
                                 * that crashes the process (the supervisor) */
    /* With a broker (not owned; close it after tasks_free) named tasks go
     * to its stream (queue_redis.h): a server (consume 0) adds them there,
     * a worker (bgserve worker: consume = workers) also runs what it
     * reads, resolving names through resolve.  Ids then come from a
     * block the broker reserves, unique across processes. */
    broker *broker;
    unsigned consume;
    tasks_resolve_fn resolve;
    void *resolve_arg;
} tasks_config;

/* A new engine with its workers running (and its timer thread, sched.h),
 * accepting tasks.  NULL when its threads cannot be started.  With a
 * journal, named tasks go through queue_journal (queue_journal.h) and
 * their ids come from the journal (they never repeat). */
tasks_engine *tasks_new(const tasks_config *cfg);

/*
 * Shutdown: refuse new tasks (BGS_ESHUTDOWN), stop periodic schedules,
 * let queued and running tasks finish for up to drain_ms, then set every
 * cancellation flag, wait briefly for running ones to return, stop the
 * workers, and print the report: how many finished, and every task that
 * did not (id, name, state), one line each.  Returns the number of tasks
 * that did not finish (with a broker, not counting those that stay in
 * Redis for the workers).  Records stay readable until tasks_free.  A second
 * call does nothing and returns 0.
 */
size_t tasks_shutdown(tasks_engine *t, unsigned drain_ms);
/* 1 when tasks_shutdown left worker threads stuck in plugin code (they
 * may still use the queue and its journal), else 0.  Main thread. */
int tasks_abandoned(const tasks_engine *t);

/* Free the engine (shutting it down first, with no drain, if that was not
 * done).  When worker threads were left stuck in plugin code, the engine
 * stays allocated for them.  NULL is fine.  Main thread. */
void tasks_free(tasks_engine *t);

/* Print the same report at once (second SIGINT); async-signal-unsafe,
 * call from a normal thread. */
void tasks_report_unfinished(tasks_engine *t);

/* A task's state.  Kept as this enum everywhere; tasks_state_name gives
 * the word records, logs and the report print. */
typedef enum tasks_state {
    TASKS_QUEUED,
    TASKS_RUNNING,
    TASKS_RETRYING,
    TASKS_SUCCEEDED, /* the final states from here on */
    TASKS_FAILED,
    TASKS_SKIPPED,
    TASKS_DISCARDED,
    TASKS_CANCELLED,
} tasks_state;

const char *tasks_state_name(tasks_state st);

/*
 * Whoever attaches a task: a task holds a reference (retain at attach,
 * release once final) and, while it runs, reaches the app and the
 * services through it.  The struct itself must stay valid while any task
 * holds a reference (a generation embeds its own).  retain and release
 * may be NULL (nothing to hold: tests); so may services (none).
 */
typedef struct tasks_owner {
    void (*retain)(const struct tasks_owner *o);
    void (*release)(const struct tasks_owner *o);
    services *(*services)(const struct tasks_owner *o);
    bgs_app *(*app)(const struct tasks_owner *o);
    void *ctx;                  /* the owner's own (a generation) */
    uint64_t number;            /* recorded as the task's "generation" */
    const char *label;          /* the plugin's name, for warnings; lives
                                 * as long as the owner */
} tasks_owner;

/*
 * Resolve definitions once, at load time: each plugin_task's kind (the
 * engine's counters for its name) is set, so attaching one needs no
 * lookup by name.  Definitions belong to this engine from then on; one
 * never resolved is found by name instead.
 */
void tasks_resolve(tasks_engine *t, plugin_task *defs, size_t n);

/* With a journal: run for owner, as the tasks of plugin p (looked up by
 * name, once each), the tasks an earlier run left queued or running
 * (interrupted ones with attempt + 1, each at its not-before time); a
 * task whose name p does not have goes to the dead letters with that
 * reason, and a warning, and so does task crashed_id (0: none; the one
 * the last serving process crashed in, with signal crashed_sig) when
 * that was its last attempt.  Once, after tasks_new, when the first
 * generation is loaded. */
void tasks_replay(tasks_engine *t, const tasks_owner *owner, const plugin *p,
                  uint64_t crashed_id, int crashed_sig);

/* ---- attaching (HTTP threads) ---------------------------------------- */

typedef struct tasks_group tasks_group;

/* A group of tasks attached to one response.  Holds a reference to the
 * owner; request_id is copied.  mode: BGS_SEQUENTIAL or BGS_CONCURRENT. */
tasks_group *tasks_group_new(tasks_engine *t, const tasks_owner *owner, const char *request_id,
                             uint32_t mode);

/* Room for a group inside the structure it belongs to (struct bgs_res),
 * so that a response's group costs no allocation. */
#define TASKS_GROUP_ROOM 96
typedef union tasks_group_room {
    max_align_t align_;
    unsigned char bytes_[TASKS_GROUP_ROOM];
} tasks_group_room;

/* tasks_group_new, but the group lives in room (any content) and holds no
 * reference to owner: the caller keeps owner alive until the group is
 * submitted or discarded (a response holds its generation), and room
 * too.  Submit and discard free what the group holds, never room. */
tasks_group *tasks_group_init(tasks_group_room *room, tasks_engine *t, const tasks_owner *owner,
                              const char *request_id, uint32_t mode);
int tasks_group_set_mode(tasks_group *g, uint32_t mode); /* BGS_EINVAL */

/*
 * Attach the task def (NULL: the name was not found: BGS_ENOTASK); the
 * payload is copied.  Reserves queue capacity now, so a task accepted
 * here is never dropped later.  Returns 0 with *id_out set (id_out may be
 * NULL), BGS_ENOTASK, BGS_EFULL (queue full), BGS_ESHUTDOWN.  On error
 * nothing was attached.
 */
int tasks_group_add(tasks_group *g, const plugin_task *def, const void *payload,
                    size_t len, uint64_t *id_out);
/* Attach an ad hoc task.  On error free_fn(arg) has NOT been called: the
 * caller still owns arg. */
int tasks_group_add_fn(tasks_group *g, bgs_adhoc_fn fn, void *arg,
                       bgs_free_fn free_fn, uint64_t *id_out);

/* Why a task was refused with rc (BGS_EFULL or BGS_ESHUTDOWN, from
 * tasks_group_add), for a 503: "the task queue is full", "redis
 * (--broker), which keeps the tasks, is unreachable" or "the server is
 * shutting down"; in *hint (hint may be NULL) what the operator can do,
 * as "; raise --queue ..." ("" when nothing).  Static strings.  BGS_EFULL
 * covers both a full queue and a Redis known to be away (tasks_group_add
 * checks Redis first): the cause is read again now, so a Redis that came
 * back in between reads as a full queue. */
const char *tasks_refusal(tasks_engine *t, int rc, const char **hint);

/* Tasks attached plus tasks queued (tasks_group_enqueue). */
size_t tasks_group_count(const tasks_group *g);
/* "12,13,14" into buf (truncated safely): the attached ones in order,
 * then the queued ones; returns the needed length. */
size_t tasks_group_ids(const tasks_group *g, char *buf, size_t cap);

/* Hand the attached tasks to the workers and record the delivery of the
 * queued ones (consumes g).  delivered: 1 when the response was fully
 * sent; tasks flagged BGS_TASK_DELIVERED_ONLY are recorded as skipped
 * when it is 0. */
void tasks_group_submit(tasks_group *g, int delivered);
/* Discard the attached tasks: each is recorded as discarded with reason
 * as its error, and logged.  The group stays, with its queued tasks, to
 * be submitted (a failing handler, HEAD). */
void tasks_group_drop(tasks_group *g, const char *reason);
/* tasks_group_drop, then free the group (consumes g). */
void tasks_group_discard(tasks_group *g, const char *reason);
/* With a journal: write the group's named tasks to the journal now, as one
 * record, counted on gate (durable.h), ahead of tasks_group_submit (which
 * then links them without writing them again).  With --broker: add them
 * to Redis now (tasks_group.c says which), and tell gate how it went.
 * Without either, with g NULL or with no named task, nothing happens.
 * 0, or BGS_ESHUTDOWN (the journal or the queue is closing: nothing was
 * written). */
int tasks_group_persist(tasks_group *g, durable_gate *gate);

/* ---- tasks queued at once, and watching for final states ---------------- */

/* What a watcher learns when its task reaches a final state.  Pointers
 * are valid only during the callback, except result and result_type: a
 * watcher may take them over (set them to NULL in f and free them later);
 * what is left is freed after the callback. */
typedef struct tasks_final {
    uint64_t id;
    const char *name;
    tasks_state state;
    const char *error;          /* NULL when none */
    int has_result;             /* the task called bgs_task_result */
    uint32_t result_status;
    char *result_type;          /* NULL when none */
    void *result;
    size_t result_len;
} tasks_final;

/* Runs once, on the thread that finalised the task (a worker, the timer
 * thread, or shutdown), with no tasks lock held.  Must be quick. */
typedef void (*tasks_final_fn)(void *arg, tasks_final *f);

/*
 * Queue the task def now, not tied to a response (deferred responses,
 * awaiting a task).  cb (may be NULL) is called when it is final.
 * Returns 0 with *id_out set, BGS_ENOTASK (def NULL), BGS_EFULL,
 * BGS_ESHUTDOWN; on error cb is never called.
 */
int tasks_enqueue(tasks_engine *t, const tasks_owner *owner, const char *request_id,
                  const plugin_task *def, const void *payload, size_t len,
                  tasks_final_fn cb, void *arg, uint64_t *id_out);
/* tasks_enqueue whose journal commit is counted on gate (durable.h; NULL:
 * not counted).  Without a journal, the same as tasks_enqueue. */
int tasks_enqueue_gated(tasks_engine *t, const tasks_owner *owner, const char *request_id,
                        const plugin_task *def, const void *payload, size_t len,
                        tasks_final_fn cb, void *arg, uint64_t *id_out, durable_gate *gate);

/* tasks_enqueue for a response: the task runs at once, on its own (never
 * in the group's sequence), with the group's owner and request id, and g
 * remembers it: tasks_group_ids lists it and tasks_group_submit records
 * whether the response reached the client.  The same returns. */
int tasks_group_enqueue(tasks_group *g, const plugin_task *def, const void *payload, size_t len,
                        tasks_final_fn cb, void *arg, uint64_t *id_out, durable_gate *gate);

/* Call cb when task id is final.  0: registered; 1: already final (cb is
 * not called); BGS_ENOTFOUND: unknown or evicted. */
int tasks_watch(tasks_engine *t, uint64_t id, tasks_final_fn cb, void *arg);

/* With a broker: tasks_watch for a task this process does not know (one
 * another server accepted), through its record in Redis; cb runs on the
 * broker's thread (or before this returns).  The same returns, and
 * BGS_EFULL when Redis is away; BGS_ENOTFOUND without a broker. */
int tasks_broker_watch(tasks_engine *t, uint64_t id, tasks_final_fn cb, void *arg);
/* With a broker: task id's record as Redis keeps it, as the JSON of GET
 * /_bgserve/tasks/ID (with "source":"redis").  0, BGS_ENOTFOUND (no
 * broker, or no such record) or BGS_EFULL (Redis away). */
int tasks_broker_record_json(tasks_engine *t, uint64_t id, json *j);

/* Record whether the response of the request that queued task id reached
 * the client (tasks_group_submit does, for the group's queued tasks). */
void tasks_note_delivery(tasks_engine *t, uint64_t id, int delivered);

/* ---- periodic (start hook thread, scheduler thread) -------------------- */

/* Run def every interval_ms for owner (held until stopped).  BGS_ENOTASK
 * (def NULL), BGS_EINVAL (interval 0), BGS_ESHUTDOWN. */
int tasks_periodic_add(tasks_engine *t, const tasks_owner *owner, const plugin_task *def,
                       uint32_t interval_ms, const void *payload, size_t len,
                       uint32_t flags);
/* Stop every schedule of owner (at reload swap), remembering their phase
 * for the next owner's schedules of the same task and interval. */
void tasks_periodic_stop_owner(tasks_engine *t, const tasks_owner *owner);

/* ---- introspection ---------------------------------------------------- */

/* A task's record as introspection shows it (introspect.c prints it).
 * Valid only during the tasks_record_visit callback. */
typedef struct tasks_record {
    uint64_t id;
    const char *name;
    tasks_state state;
    uint32_t attempts, max_attempts;
    uint64_t created_wall, started_wall, finished_wall; /* 0: not yet */
    const char *error;          /* NULL when none */
    const char *request_id;     /* NULL when none */
    int delivered;              /* -1: not known */
    uint32_t mode;              /* BGS_SEQUENTIAL or BGS_CONCURRENT */
    uint64_t generation;        /* the owner's number */
    size_t payload_len;         /* kept for a failed task (tasks_retry) */
    int adhoc;
    int has_result;
    uint32_t result_status;
    const char *result_type;    /* NULL when none */
    const void *result;
    size_t result_len;
} tasks_record;

/* Call fn with the record of task id, under the records lock (fn must be
 * quick and must not call the engine).  0, or BGS_ENOTFOUND if unknown or
 * evicted (fn not called). */
int tasks_record_visit(tasks_engine *t, uint64_t id, void (*fn)(void *arg, const tasks_record *r),
                       void *arg);
/* The ids of the newest records (live and finished), newest first, at
 * most max; returns how many. */
size_t tasks_recent_ids(tasks_engine *t, uint64_t *ids, size_t max);
/* Queue the failed named task id again for owner, as the task of the same
 * name in plugin p (the current one: the definition is looked up by name
 * once, here), with the same payload and request id.  With a journal, a
 * task no longer in memory is looked up there: a dead letter (or a task
 * failed for good) of this run or an earlier one is queued the same way
 * (its entry stays).  0 with *new_id set; BGS_ENOTFOUND (unknown, or
 * evicted and not in the journal), BGS_ESTATE (not failed, or an ad hoc
 * task), BGS_ESHUTDOWN, or what tasks_enqueue returns (BGS_ENOTASK: p has
 * no task of that name).  The task's name is copied into name (when
 * known). */
int tasks_retry(tasks_engine *t, const tasks_owner *owner, const plugin *p, uint64_t id,
                uint64_t *new_id, char *name, size_t name_cap);
/* The engine's scheduler (owned by it, valid until tasks_free): deferred
 * answers time their deadlines on it, and tests move its clock
 * (sched_advance). */
sched *tasks_sched(tasks_engine *t);
/* 1 while a task runs or is ready to run (queued and due), 0 when every
 * live task waits for a timer or there is none: the testing library
 * moves the clock only then (skip_delays). */
int tasks_busy(tasks_engine *t);
/* Tasks not final yet (queued, waiting to retry, running). */
size_t tasks_live(tasks_engine *t);
/* The journal the engine writes (tasks_config), or NULL. */
journal *tasks_journal(tasks_engine *t);
/* Write the keys "tasks", "queue", "workers", "dispatch_us" (and
 * "journal" with one) into the open object j. */
void tasks_stats_json(tasks_engine *t, json *j);
/* Tasks queued (or waiting to retry) and running now in engine arg (a
 * tasks_engine *), summed over every task name.  Lock-free and
 * async-signal-safe: the crash handler calls it to say how many tasks a
 * crash loses (crash_set_gauges). */
void tasks_gauges(void *arg, uint64_t *queued, uint64_t *running);

/* ---- host API: task context functions (worker threads) --------------- */

uint64_t tasks_ctx_id(bgs_task_ctx *ctx);
const char *tasks_ctx_name(bgs_task_ctx *ctx);
uint32_t tasks_ctx_attempt(bgs_task_ctx *ctx);
int tasks_ctx_cancelled(bgs_task_ctx *ctx);
void tasks_ctx_error(bgs_task_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int tasks_ctx_result(bgs_task_ctx *ctx, uint32_t status, const char *type,
                     const void *data, size_t len);
const char *tasks_ctx_request_id(bgs_task_ctx *ctx);
bgs_app *tasks_ctx_app(bgs_task_ctx *ctx);
void *tasks_ctx_service(bgs_task_ctx *ctx, const char *name);
void tasks_ctx_log(bgs_task_ctx *ctx, uint32_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* ABI 1.1: the va_list forms. */
void tasks_ctx_errorv(bgs_task_ctx *ctx, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
void tasks_ctx_logv(bgs_task_ctx *ctx, uint32_t level, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#endif
