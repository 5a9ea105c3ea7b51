/*
 * journal_json.c - the journal in the status monitor's JSON (see
 * journal_json.h).  A task's row is written by task_json.c, the writer
 * of a record in memory too, inside journal_lookup's callback (the row
 * is valid only during it).
 */
#include "journal_json.h"

#include "queue_journal.h"
#include "task_json.h"

/* The record, written while journal_lookup holds it. */
static void write_rec(void *arg, const journal_rec *r)
{
    task_json_write(arg, &(task_json_view){
        .source = TASK_JSON_JOURNAL, .id = r->id, .name = r->name, .state = r->state,
        .attempts = r->attempts, .max_attempts = r->max_attempts,
        .created_us = r->created_us, .started_us = r->started_us,
        .finished_us = r->finished_us, .error = r->last_error,
        .request_id = r->request_id, .payload_len = r->payload_len,
        .not_before_us = r->not_before_us});
}

int journal_json_record(journal *jr, uint64_t id, json *j)
{
    return journal_lookup(jr, id, write_rec, j);
}

void journal_json_stats(journal *jr, queue *q, json *j)
{
    journal_stats st;
    queue_journal_counts c = {0};
    journal_get_stats(jr, &st);
    if (q != NULL)
        queue_journal_get_counts(q, &c);
    json_key(j, "journal");
    json_obj_begin(j);
    json_key(j, "file");
    json_str(j, st.file);
    json_key(j, "pending");
    json_u64(j, st.pending);
    json_key(j, "dead");
    json_u64(j, st.dead);
    json_key(j, "unwritten");
    json_u64(j, st.unwritten);
    json_key(j, "commits");
    json_u64(j, st.commits);
    json_key(j, "failed_commits");
    json_u64(j, st.failed_commits);
    json_key(j, "mean_batch");
    json_double(j, st.mean_batch);
    json_time_pair(j, "last_commit", "last_commit_us", st.last_commit_us);
    json_key(j, "journaled");
    json_u64(j, c.journaled);
    json_key(j, "memory_only");
    json_u64(j, c.memory_only);
    json_obj_end(j);
}
