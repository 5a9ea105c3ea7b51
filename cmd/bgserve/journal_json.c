/*
 * journal_json.c - the journal in the status monitor's JSON (see
 * journal_json.h).  A record is copied out of journal_lookup's callback
 * (valid only during it) and written afterwards; no lock is held while
 * writing.
 */
#include "journal_json.h"

#include "queue_journal.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

static void time_keys(json *j, const char *iso_key, const char *us_key, uint64_t wall)
{
    char buf[96];
    json_key(j, iso_key);
    if (wall == 0) {
        json_null(j);
    } else {
        util_iso_time(buf, sizeof buf, wall, 6);
        json_str(j, buf);
    }
    json_key(j, us_key);
    if (wall == 0)
        json_null(j);
    else
        json_u64(j, wall);
}

/* The record, written while journal_lookup holds it. */
static void write_rec(void *arg, const journal_rec *r)
{
    json *j = arg;
    json_obj_begin(j);
    json_key(j, "id");
    json_u64(j, r->id);
    json_key(j, "name");
    json_str(j, r->name);
    json_key(j, "state");
    json_str(j, r->state);
    json_key(j, "attempts");
    json_u64(j, r->attempts);
    json_key(j, "max_attempts");
    json_u64(j, r->max_attempts);
    time_keys(j, "created_at", "created_at_us", r->created_us);
    time_keys(j, "started_at", "started_at_us", r->started_us);
    time_keys(j, "finished_at", "finished_at_us", r->finished_us);
    time_keys(j, "not_before", "not_before_us", r->not_before_us);
    json_key(j, "error");
    json_str(j, r->last_error);
    json_key(j, "request_id");
    json_str(j, r->request_id);
    json_key(j, "payload_bytes");
    json_u64(j, r->payload_len);
    json_key(j, "adhoc");
    json_bool(j, 0);
    json_key(j, "source");
    json_str(j, "journal");
    json_obj_end(j);
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
    time_keys(j, "last_commit", "last_commit_us", st.last_commit_us);
    json_key(j, "journaled");
    json_u64(j, c.journaled);
    json_key(j, "memory_only");
    json_u64(j, c.memory_only);
    json_obj_end(j);
}
