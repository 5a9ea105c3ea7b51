/*
 * tasks.h - background tasks: records, groups, retries, the status ring,
 * stats, periodic runs and shutdown drain.  The queue backend and the
 * worker pool sit behind this interface (queue.h, workers.h).
 *
 * The HTTP side only ever talks to this header:
 *   handler attaches  -> tasks_group_new / tasks_group_add  (HTTP thread)
 *   request completed -> tasks_group_submit or tasks_group_discard
 * tasks never calls back into http.
 */
#ifndef BGSERVE_TASKS_H
#define BGSERVE_TASKS_H

#include "bgserve.h"
#include "generation.h"
#include "journal.h"
#include "json.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* The defaults, here only: tasks_start applies them to zero fields, and
 * cli.c prints them and starts from them.  Plain numbers (cli.c's help
 * text spells them with UTIL_STR). */
#define TASKS_DEFAULT_WORKERS 16
#define TASKS_DEFAULT_QUEUE_CAP 65536
#define TASKS_DEFAULT_KEEP 10000

typedef struct tasks_config {
    unsigned workers;           /* task threads; 0: TASKS_DEFAULT_WORKERS */
    unsigned queue_cap;         /* tasks accepted but not finished, at most;
                                 * 0: TASKS_DEFAULT_QUEUE_CAP */
    unsigned keep;              /* finished records kept for introspection */
    unsigned linger_us;         /* queue coalescing window (queue_mem_new); 0: none */
    journal *journal;           /* --journal (borrowed; closed after tasks_shutdown),
                                 * or NULL: tasks live in memory only */
} tasks_config;

/* Set up and start the worker threads and the scheduler.  0 or -1.
 * With a journal, named tasks go through queue_journal (queue_journal.h)
 * and their ids come from the journal (they never repeat). */
int tasks_start(const tasks_config *cfg);

/* With a journal: run on gen the tasks an earlier run left queued or
 * running (interrupted ones with attempt + 1, each at its not-before
 * time); a task whose name gen does not have goes to the dead letters
 * with that reason, and a warning.  Once, after tasks_start, when the
 * first generation is loaded. */
void tasks_replay(generation *gen);

/*
 * Shutdown: refuse new tasks (BGS_ESHUTDOWN), stop periodic schedules,
 * let queued and running tasks finish for up to drain_ms, then set every
 * cancellation flag, wait briefly for running ones to return, stop the
 * workers, and print the report: how many finished, and every task that
 * did not (id, name, state), one line each.  Returns the number of tasks
 * that did not finish.
 */
size_t tasks_shutdown(unsigned drain_ms);

/* Print the same report at once (second SIGINT); async-signal-unsafe,
 * call from a normal thread. */
void tasks_report_unfinished(void);

/* ---- attaching (HTTP threads) ---------------------------------------- */

typedef struct tasks_group tasks_group;

/* A group of tasks attached to one response.  Holds a reference to gen.
 * request_id is copied.  mode: BGS_SEQUENTIAL or BGS_CONCURRENT. */
tasks_group *tasks_group_new(generation *gen, const char *request_id,
                             uint32_t mode);
int tasks_group_set_mode(tasks_group *g, uint32_t mode); /* BGS_EINVAL */

/*
 * Attach a named task; the payload is copied.  Reserves queue capacity
 * now, so a task accepted here is never dropped later.  Returns 0 with
 * *id_out set (id_out may be NULL), BGS_ENOTASK, BGS_EFULL (queue full),
 * BGS_ESHUTDOWN.  On error nothing was attached.
 */
int tasks_group_add(tasks_group *g, const char *name, const void *payload,
                    size_t len, uint64_t *id_out);
/* Attach an ad hoc task.  On error free_fn(arg) has NOT been called: the
 * caller still owns arg. */
int tasks_group_add_fn(tasks_group *g, bgs_adhoc_fn fn, void *arg,
                       bgs_free_fn free_fn, uint64_t *id_out);

size_t tasks_group_count(const tasks_group *g);
/* "12,13,14" into buf (truncated safely); returns the needed length. */
size_t tasks_group_ids(const tasks_group *g, char *buf, size_t cap);

/* Hand the group to the workers (consumes g).  delivered: 1 when the
 * response was fully sent; tasks flagged BGS_TASK_DELIVERED_ONLY are
 * recorded as skipped when it is 0. */
void tasks_group_submit(tasks_group *g, int delivered);
/* Drop the group (consumes g): every task is recorded as discarded with
 * reason as its error, and logged. */
void tasks_group_discard(tasks_group *g, const char *reason);

/* ---- tasks queued at once, and watching for final states ---------------- */

/* What a watcher learns when its task reaches a final state.  Pointers
 * are valid only during the callback. */
typedef struct tasks_final {
    uint64_t id;
    const char *name;
    const char *state;          /* "succeeded", "failed", ... */
    int succeeded;
    const char *error;          /* NULL when none */
    int has_result;             /* the task called bgs_task_result */
    uint32_t result_status;
    const char *result_type;    /* NULL when none */
    const void *result;
    size_t result_len;
} tasks_final;

/* Runs once, on the thread that finalised the task (a worker, the timer
 * thread, or shutdown), with no tasks lock held.  Must be quick. */
typedef void (*tasks_final_fn)(void *arg, const tasks_final *f);

/*
 * Queue a named task now, not tied to a response (deferred responses,
 * awaiting a task).  cb (may be NULL) is called when it is final.
 * Returns 0 with *id_out set, BGS_ENOTASK, BGS_EFULL, BGS_ESHUTDOWN; on
 * error cb is never called.
 */
int tasks_enqueue(generation *gen, const char *request_id, const char *name,
                  const void *payload, size_t len, tasks_final_fn cb, void *arg,
                  uint64_t *id_out);

/* Call cb when task id is final.  0: registered; 1: already final (cb is
 * not called); BGS_ENOTFOUND: unknown or evicted. */
int tasks_watch(uint64_t id, tasks_final_fn cb, void *arg);

/* Record whether the response of the request that queued task id reached
 * the client (for tasks queued with tasks_enqueue). */
void tasks_note_delivery(uint64_t id, int delivered);

/* ---- periodic (start hook thread, scheduler thread) -------------------- */

/* Register a periodic run of task `name` of generation gen.  BGS_ENOTASK,
 * BGS_EINVAL (interval 0). */
int tasks_periodic_add(generation *gen, const char *name, uint32_t interval_ms,
                       const void *payload, size_t len, uint32_t flags);
/* Stop every schedule of gen (at reload swap or shutdown). */
void tasks_periodic_stop_gen(generation *gen);

/* ---- introspection ---------------------------------------------------- */

/* The record of task id as a JSON object; BGS_ENOTFOUND if unknown or
 * evicted. */
int tasks_record_json(uint64_t id, json *j);
/* The ids of the newest records (live and finished), newest first, at
 * most max; returns how many. */
size_t tasks_recent_ids(uint64_t *ids, size_t max);
/* Queue a failed named task again on gen, with the same payload and
 * request id.  0 with *new_id set; BGS_ENOTFOUND (unknown or evicted),
 * BGS_ESTATE (not failed, or an ad hoc task), or what tasks_enqueue
 * returns.  The task's name is copied into name (when known). */
int tasks_retry(generation *gen, uint64_t id, uint64_t *new_id, char *name, size_t name_cap);
/* Write the keys "tasks", "queue", "workers" into the open object j. */
void tasks_stats_json(json *j);
/* Tasks queued (or waiting to retry) and running now, summed over every
 * task name.  Lock-free and async-signal-safe: the crash handler calls
 * it to say how many tasks a crash loses. */
void tasks_gauges(uint64_t *queued, uint64_t *running);

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
