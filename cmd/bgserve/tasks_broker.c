/*
 * tasks_broker.c - the task engine on the Redis Streams broker: the hooks
 * through which queue_redis (queue_redis.h) sees the engine's items.
 *
 * describe: a named item goes to the stream as its id, name, payload,
 *   max_attempts and request id; an ad hoc one (no definition) stays in
 *   this process.
 * limits/adopt (a worker): a job another process accepted is resolved by
 *   name in the app now loaded (tasks_config.resolve) and becomes an item
 *   of this engine with the broker's id and the attempt Redis counted, so
 *   the run, its log lines and its context look like those of a task
 *   attached here.
 * finished (a server): an item added here reached its final state on a
 *   worker: its record (attempts, error, result) is copied into the item
 *   and the item is finalised here, so watchers (?wait=, awaits, deferred
 *   responses) complete on the server that accepted the task.
 * result: the result a run stored, for the record in Redis.
 * released (a worker): a failed run with attempts left went to the
 *   delayed set (queue_nack), to run again on whichever worker reads it
 *   when due, or this worker stopped and handed the job back: the item
 *   leaves this process without a final state (tasks_runs_hand_back).
 * rejoin (a worker): a task enqueued here comes back from the stream to
 *   run here: its attempts are the ones Redis counted, wherever they ran.
 * Tasks another process accepted (a server asked about one by id): their
 *   record is read from Redis (GET /_bgserve/tasks/ID) and a watch
 *   (?wait=) waits for the notice of their final state.
 *
 * Runs on queue_redis's background thread (limits, adopt, finished,
 * released, rejoin; released also on a worker thread once that thread
 * stopped) and on workers (describe, result); takes rec_mu like the
 * other files.
 */
#include "tasks_internal.h"

#include "log.h"
#include "task_json.h"
#include "queue_redis.h"
#include "util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ID_BLOCK (1u << 24) /* ids a process reserves at once */

static void describe(const queue_node *n, queue_job *out, void *arg)
{
    (void)arg;
    const task_item *it = UTIL_CONTAINER_OF(n, task_item, qnode);
    out->id = it->id;
    out->name = it->def ? it->kind->name : NULL;
    out->payload = it->payload;
    out->len = it->len;
    out->max_attempts = it->max_attempts;
    out->request_id = tasks_records_rid(it);
}

static int limits(void *arg, const char *name, unsigned *max_conc, char *why, size_t cap)
{
    tasks_engine *t = arg;
    const plugin_task *def;
    const tasks_owner *owner;
    int rc = t->resolve ? t->resolve(t->resolve_arg, name, &def, &owner) : -1;
    if (rc == -2) {
        snprintf(why, cap, "the app is not loaded yet");
        return -2;
    }
    if (rc != 0) {
        snprintf(why, cap, "no task named '%s' in the app this worker runs", name);
        return -1;
    }
    *max_conc = def->max_concurrency;
    if (owner->release)
        owner->release(owner);
    return 0;
}

static queue_node *adopt(void *arg, const broker_msg *m, char *why, size_t cap)
{
    tasks_engine *t = arg;
    const plugin_task *def;
    const tasks_owner *owner;
    if (!t->resolve || t->resolve(t->resolve_arg, m->name, &def, &owner) != 0) {
        snprintf(why, cap, "no task named '%s' in the app this worker runs", m->name);
        return NULL;
    }
    /* The worker's concurrency bounds what it holds: no cap check. */
    atomic_fetch_add(&t->accepted, 1);
    task_item *it = tasks_records_new_rid(t, owner, tasks_records_kind_of(t, def), def,
                                      m->request_id, BGS_CONCURRENT, m->payload, m->len, m->id);
    if (owner->release)
        owner->release(owner); /* the item holds its own reference */
    pthread_mutex_lock(&t->rec_mu);
    it->attempts = m->attempt > 0 ? m->attempt - 1 : 0; /* the run counts this one */
    if (m->max_attempts)
        it->max_attempts = m->max_attempts;
    atomic_store_explicit(&it->delivered, 1, memory_order_relaxed);
    pthread_mutex_unlock(&t->rec_mu);
    return &it->qnode;
}

static tasks_state state_named(const char *s)
{
    for (int st = TASKS_SUCCEEDED; st <= TASKS_CANCELLED; st++)
        if (s && strcmp(s, tasks_state_name((tasks_state)st)) == 0)
            return (tasks_state)st;
    return TASKS_FAILED;
}

static void finished(void *arg, queue_node *n, const broker_record *rec)
{
    tasks_engine *t = arg;
    task_item *it = UTIL_CONTAINER_OF(n, task_item, qnode);
    if (!rec) {
        tasks_runs_finalize(it, TASKS_FAILED, "its record in redis expired or could not be "
                                              "read: the worker's outcome is unknown");
        return;
    }
    if (rec->has_result) {
        task_extra *x = tasks_records_extra(it);
        pthread_mutex_lock(&t->rec_mu);
        free(x->res_type);
        free(x->res_data);
        x->has_result = 1;
        x->res_status = rec->result_status;
        x->res_type = rec->result_type ? xstrdup(rec->result_type) : NULL;
        x->res_data = rec->result ? xmemdup(rec->result, rec->result_len) : NULL;
        x->res_len = rec->result ? rec->result_len : 0;
        pthread_mutex_unlock(&t->rec_mu);
    }
    pthread_mutex_lock(&t->rec_mu);
    it->attempts = rec->attempts;
    pthread_mutex_unlock(&t->rec_mu);
    tasks_runs_finalize(it, state_named(rec->state), rec->error);
}

static void released(void *arg, queue_node *n)
{
    (void)arg;
    tasks_runs_hand_back(UTIL_CONTAINER_OF(n, task_item, qnode));
}

static void rejoin(void *arg, queue_node *n, const broker_msg *m)
{
    tasks_engine *t = arg;
    task_item *it = UTIL_CONTAINER_OF(n, task_item, qnode);
    pthread_mutex_lock(&t->rec_mu);
    it->attempts = m->attempt > 0 ? m->attempt - 1 : 0; /* the run counts this one */
    pthread_mutex_unlock(&t->rec_mu);
}

static void result(void *arg, queue_node *n, broker_outcome *o)
{
    tasks_engine *t = arg;
    task_item *it = UTIL_CONTAINER_OF(n, task_item, qnode);
    /* The item is the caller's until it is finalised, after this ack. */
    pthread_mutex_lock(&t->rec_mu);
    const task_extra *x = it->x;
    if (x && x->has_result) {
        o->has_result = 1;
        o->result_status = x->res_status;
        o->result_type = x->res_type;
        o->result = x->res_data;
        o->result_len = x->res_len;
    }
    pthread_mutex_unlock(&t->rec_mu);
}

/* ---- tasks another process accepted ---------------------------------------- */

typedef struct remote_watch {
    tasks_final_fn cb;
    void *arg;
} remote_watch;

static void remote_final(void *arg, uint64_t id, const broker_record *rec)
{
    remote_watch *w = arg;
    tasks_final f = {.id = id, .name = rec && rec->name ? rec->name : "?",
                     .state = rec ? state_named(rec->state) : TASKS_FAILED,
                     .error = rec ? rec->error
                                  : "its record in redis expired or could not be read"};
    if (rec && rec->has_result) {
        f.has_result = 1;
        f.result_status = rec->result_status;
        f.result_type = rec->result_type ? xstrdup(rec->result_type) : NULL;
        f.result = rec->result ? xmemdup(rec->result, rec->result_len) : NULL;
        f.result_len = rec->result ? rec->result_len : 0;
    }
    w->cb(w->arg, &f);
    free(f.result_type); /* unless the callback took them */
    free(f.result);
    free(w);
}

int tasks_broker_watch(tasks_engine *t, uint64_t id, tasks_final_fn cb, void *arg)
{
    if (!t->broker)
        return BGS_ENOTFOUND;
    remote_watch *w = xmalloc(sizeof *w);
    *w = (remote_watch){.cb = cb, .arg = arg};
    int rc = queue_redis_watch(t->q, id, remote_final, w);
    if (rc != 0)
        free(w);
    return rc;
}

int tasks_broker_record_json(tasks_engine *t, uint64_t id, json *j)
{
    broker_record r;
    int rc = t->broker ? broker_record_get(t->broker, id, &r) : BROKER_ENOTFOUND;
    if (rc != 0)
        return rc == BROKER_ENOTFOUND ? BGS_ENOTFOUND : BGS_EFULL;
    task_json_write(j, &(task_json_view){
        .source = TASK_JSON_BROKER, .id = r.id ? r.id : id, .name = r.name, .state = r.state,
        .attempts = r.attempts, .max_attempts = r.max_attempts,
        .created_us = r.created_ms * 1000u, .started_us = r.started_ms * 1000u,
        .finished_us = r.finished_ms * 1000u, .error = r.error, .request_id = r.request_id,
        .has_result = r.has_result, .result_status = r.result_status,
        .result_type = r.result_type, .result = r.result, .result_len = r.result_len,
        .worker = r.worker});
    broker_record_clear(&r);
    return 0;
}

void tasks_broker_stats_json(tasks_engine *t, json *j)
{
    broker_stats s;
    int up = broker_stats_get(t->broker, &s) == 0;
    size_t held = 0, sent = 0;
    queue_redis_counts(t->q, &held, &sent);
    json_key(j, "broker");
    json_obj_begin(j);
    json_key(j, "url");
    json_str(j, broker_url_shown(t->broker));
    json_key(j, "up");
    json_bool(j, up);
#define NUM(k, v)     \
    json_key(j, k);   \
    json_u64(j, v);
    NUM("stream", s.stream_len)
    NUM("pending", s.pending)
    NUM("consumers", s.consumers)
    NUM("delayed", s.delayed)
    NUM("dead", s.dead)
    NUM("reconnects", s.reconnects)
    NUM("capacity", broker_capacity(t->broker)) /* 0: no bound */
    NUM("running_here", held)
    NUM("awaited_here", sent)
    NUM("watched_here", queue_redis_watches(t->q)) /* other processes' tasks */
#undef NUM
    json_key(j, "prefix"); /* last: its braces end flat readers' view */
    json_str(j, broker_prefix(t->broker));
    json_obj_end(j);
}

queue *tasks_broker_queue(tasks_engine *t, const tasks_config *cfg)
{
    t->broker = cfg->broker;
    t->resolve = cfg->resolve;
    t->resolve_arg = cfg->resolve_arg;
    uint64_t first;
    if (broker_next_ids(cfg->broker, ID_BLOCK, &first) == 0)
        atomic_store(&t->next_id, first);
    else
        log_msg(BGS_LOG_WARN, "broker: cannot reserve task ids in redis: this process numbers "
                "its tasks from 1, which other processes may use too");
    queue_redis_hooks h = {.describe = describe, .limits = limits, .adopt = adopt,
                           .finished = finished, .released = released, .rejoin = rejoin,
                           .result = result, .arg = t};
    queue_redis_config qc = {.consume = cfg->consume, .linger_us = cfg->linger_us,
                             .sched = t->sched};
    return queue_redis_new(cfg->broker, &qc, &h);
}
