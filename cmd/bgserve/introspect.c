/*
 * introspect.c - GET /_bgserve/tasks/ID (the status monitor that a 202
 * Accepted's Location points at) and GET /_bgserve/stats.  The live
 * dashboard's page, event stream and actions are dashboard.c's.
 *
 * Stateless: every answer is built from the task engine the http room
 * passes in (its stats; a record, printed here from the engine's
 * tasks_record view, written by task_json.c like a journal row) and
 * the counters, on the calling HTTP thread.
 */
#include "introspect.h"

#include "deferred.h"
#include "events.h"
#include "generation.h"
#include "journal_json.h"
#include "json.h"
#include "misuse.h"
#include "supervisor.h"
#include "task_json.h"
#include "tasks.h"
#include "urls.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

static void reply_json(introspect_reply *out, unsigned status, json *j)
{
    out->status = status;
    out->body = json_take(j, &out->len);
}

void introspect_reply_error(introspect_reply *out, unsigned status, const char *msg)
{
    json j;
    json_init(&j);
    json_obj_begin(&j);
    json_key(&j, "error");
    json_str(&j, msg);
    json_obj_end(&j);
    reply_json(out, status, &j);
}

uint64_t introspect_task_id(const char *path)
{
    if (strncmp(path, URLS_TASKS, URLS_TASKS_LEN) != 0)
        return 0;
    const char *s = path + URLS_TASKS_LEN;
    uint64_t v = 0;
    if (*s == '\0' || strlen(s) > 19)
        return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return 0;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    return v;
}

void introspect_stats_json(json *j, const introspect_counters *c)
{
    tasks_stats_json(c->tasks, j);
    json_key(j, "deferred");
    deferred_stats_json(j);
    generation_stats_json(j);
    json_key(j, "requests");
    json_u64(j, c->requests);
    json_key(j, "errors");
    json_u64(j, c->errors);
    json_key(j, "introspection_requests");
    json_u64(j, c->introspection_requests);
    json_key(j, "uptime_s");
    json_u64(j, c->uptime_s);
    json_key(j, "connections");
    json_obj_begin(j);
    json_key(j, "open");
    json_u64(j, c->conns_open);
    json_key(j, "requests_in_flight");
    json_u64(j, c->in_flight);
    json_key(j, "limit");
    json_u64(j, c->conns_limit);
    json_key(j, "rejected");
    json_u64(j, c->conns_rejected);
    json_key(j, "idle_closed");
    json_u64(j, c->conns_evicted);
    json_obj_end(j);
    json_key(j, "misuse"); /* host API calls refused, misuse.h */
    json_u64(j, misuse_count());
    supervisor_stats_json(j);
    json_key(j, "dashboard");
    json_obj_begin(j);
    json_key(j, "watchers"); /* event streams open now (dashboard.h) */
    json_u64(j, events_watchers());
    json_obj_end(j);
}

/* ---- a task's record (GET /_bgserve/tasks/ID) ------------------------------- */

/* Runs under the engine's records lock (tasks_record_visit). */
static void record_json(void *arg, const tasks_record *r)
{
    task_json_write(arg, &(task_json_view){
        .source = TASK_JSON_MEMORY, .id = r->id, .name = r->name,
        .state = tasks_state_name(r->state), .attempts = r->attempts,
        .max_attempts = r->max_attempts, .created_us = r->created_wall,
        .started_us = r->started_wall, .finished_us = r->finished_wall, .error = r->error,
        .request_id = r->request_id, .payload_len = r->payload_len, .adhoc = r->adhoc,
        .delivered = r->delivered,
        .mode = r->mode == BGS_CONCURRENT ? "concurrent" : "sequential",
        .generation = r->generation, .has_result = r->has_result,
        .result_status = r->result_status, .result_type = r->result_type,
        .result = r->result, .result_len = r->result_len});
}

int introspect_task_json(tasks_engine *t, uint64_t id, json *j)
{
    if (tasks_record_visit(t, id, record_json, j) == 0)
        return 0;
    /* No longer in memory (evicted, or an earlier run's): the journal;
     * or, with a broker, another process's task: its record in Redis. */
    journal *jr = tasks_journal(t);
    if (jr && journal_json_record(jr, id, j) == 0)
        return 0;
    return tasks_broker_record_json(t, id, j);
}

void introspect_handle(const char *method, const char *path,
                       const introspect_counters *c, introspect_reply *out)
{
    memset(out, 0, sizeof *out);
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        out->allow = "GET, HEAD";
        introspect_reply_error(out, 405, "introspection endpoints answer GET and HEAD only");
        return;
    }
    if (strcmp(path, URLS_STATS) == 0) {
        json j;
        json_init(&j);
        json_obj_begin(&j);
        introspect_stats_json(&j, c);
        json_obj_end(&j);
        reply_json(out, 200, &j);
        return;
    }
    if (strncmp(path, URLS_TASKS, URLS_TASKS_LEN) == 0) {
        uint64_t id = introspect_task_id(path);
        json j;
        json_init(&j);
        int rc = id != 0 ? introspect_task_json(c->tasks, id, &j) : BGS_ENOTFOUND;
        if (rc == 0) {
            reply_json(out, 200, &j);
            return;
        }
        json_free(&j);
        if (rc == BGS_EFULL) {
            out->headers[0].name = "Retry-After";
            out->headers[0].value = "1";
            introspect_reply_error(out, 503, "task not known to this server, and redis (--broker), "
                                             "which keeps every server's tasks, is unreachable: "
                                             "retry later");
            return;
        }
        introspect_reply_error(out, 404, "no such task: unknown id, or its record was evicted (see --keep)");
        return;
    }
    introspect_reply_error(out, 404, "unknown introspection endpoint; try " URLS_DASHBOARD ", " URLS_STATS " or " URLS_TASKS "ID");
}
