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

typedef struct count_key {
    const char *key;
    uint64_t value;
} count_key;

static void counts(json *j, const count_key *k, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        json_key(j, k[i].key);
        json_u64(j, k[i].value);
    }
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
    const count_key disk[] = {
        {"pending", st.pending}, {"dead", st.dead}, {"unwritten", st.unwritten},
        {"commits", st.commits}, {"failed_commits", st.failed_commits},
        {"records", st.records},
    };
    counts(j, disk, sizeof disk / sizeof disk[0]);
    json_key(j, "mean_batch");
    json_double(j, st.mean_batch);
    json_time_pair(j, "last_commit", "last_commit_us", st.last_commit_us);
    const count_key run[] = {{"journaled", c.journaled}, {"memory_only", c.memory_only}};
    counts(j, run, sizeof run / sizeof run[0]);
    /* The one nested object, after the flat counters. */
    json_key(j, "commit_us");
    json_obj_begin(j);
    const count_key pct[] = {{"p50", st.commit_p50_us}, {"p99", st.commit_p99_us}};
    counts(j, pct, sizeof pct / sizeof pct[0]);
    json_obj_end(j);
    json_obj_end(j);
}
