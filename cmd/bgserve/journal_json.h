/*
 * journal_json.h - the journal as the status monitor shows it: a task
 * record read from the journal file (for /_bgserve/tasks/ID when the
 * task is no longer in memory) and the "journal" key of
 * /_bgserve/stats.  Owns no state; any thread.
 */
#ifndef BGSERVE_JOURNAL_JSON_H
#define BGSERVE_JOURNAL_JSON_H

#include "journal.h"
#include "json.h"
#include "queue.h"

#include <stdint.h>

/* Task id as found in the journal (the tasks table, then the dead
 * letters), as one JSON object with the keys of a task record that the
 * file has, and "source": "journal".  0, or a JOURNAL_E* (nothing was
 * written). */
int journal_json_record(journal *jr, uint64_t id, json *j);

/* The key "journal" and its object: the figures of journal_get_stats,
 * and the tasks q (a queue_journal, may be NULL) wrote and kept in
 * memory only. */
void journal_json_stats(journal *jr, queue *q, json *j);

#endif
