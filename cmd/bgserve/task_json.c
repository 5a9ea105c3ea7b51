/*
 * task_json.c - a task's record as JSON (task_json.h): the one writer
 * behind GET /_bgserve/tasks/ID, whether the record is in memory or read
 * back from the journal.  The keys common to both come in one order; a
 * source adds its own keys at fixed places (a journal row has no
 * delivery, mode, generation or result, and has a not-before time; a
 * record in Redis has no delivery, mode, generation or payload size, and
 * names the worker).
 *
 * No state: the view is the caller's, the writer the calling thread's.
 */
#include "task_json.h"

static void result_json(json *j, const task_json_view *v)
{
    json_key(j, "result");
    if (!v->has_result) {
        json_null(j);
        return;
    }
    json_obj_begin(j);
    json_key(j, "status");
    json_u64(j, v->result_status);
    json_key(j, "content_type");
    json_str(j, v->result_type);
    json_key(j, "length");
    json_u64(j, v->result_len);
    json_key(j, "body");
    json_strn(j, v->result ? v->result : "", v->result_len);
    json_obj_end(j);
}

void task_json_write(json *j, const task_json_view *v)
{
    int journal = v->source == TASK_JSON_JOURNAL;
    int redis = v->source == TASK_JSON_BROKER;

    json_obj_begin(j);
    json_key(j, "id");
    json_u64(j, v->id);
    json_key(j, "name");
    json_str(j, v->name);
    json_key(j, "state");
    json_str(j, v->state);
    json_key(j, "attempts");
    json_u64(j, v->attempts);
    json_key(j, "max_attempts");
    json_u64(j, v->max_attempts);
    json_time(j, "created_at", v->created_us);
    json_time(j, "started_at", v->started_us);
    json_time(j, "finished_at", v->finished_us);
    if (journal)
        json_time(j, "not_before", v->not_before_us);
    json_time_us(j, "created_at_us", v->created_us);
    json_time_us(j, "started_at_us", v->started_us);
    json_time_us(j, "finished_at_us", v->finished_us);
    if (journal)
        json_time_us(j, "not_before_us", v->not_before_us);
    json_key(j, "error");
    json_str(j, v->error);
    json_key(j, "request_id");
    json_str(j, v->request_id);
    if (!journal && !redis) {
        json_key(j, "delivered");
        if (v->delivered < 0)
            json_null(j);
        else
            json_bool(j, v->delivered);
        json_key(j, "mode");
        json_str(j, v->mode);
        json_key(j, "generation");
        json_u64(j, v->generation);
    }
    json_key(j, "payload_bytes");
    if (redis)
        json_null(j); /* a record in Redis does not say */
    else
        json_u64(j, v->payload_len);
    json_key(j, "adhoc");
    json_bool(j, v->adhoc);
    if (journal) {
        json_key(j, "source");
        json_str(j, "journal");
    } else {
        result_json(j, v);
    }
    if (redis) {
        json_key(j, "worker");
        json_str(j, v->worker);
        json_key(j, "source");
        json_str(j, "redis");
    }
    json_obj_end(j);
}
