/*
 * queue_journal.h - the durable queue backend: the queue.h contract over
 * the SQLite journal (journal.h), so that a job whose enqueue completion
 * said "durable" survives a crash, a kill and a restart.
 *
 * What each operation writes (through the journal's group-commit writer):
 *   enqueue   journal_add of the batch's named jobs, as one unit; the
 *             completion is the journal's commit (status 0: on disk).
 *   take      journal_start with attempt = queue_job.attempts + 1, and
 *             waits for its commit before it returns the node: a run
 *             that a crash interrupts is on disk as running, so the next
 *             start runs it as attempt + 1, never as the same attempt.
 *   ack       QUEUE_SUCCEEDED: journal_succeed; QUEUE_FAILED (attempts
 *             exhausted, or a function that no longer exists):
 *             journal_dead with the error; QUEUE_CANCELLED:
 *             journal_finish with state "cancelled".
 *   nack      journal_retry with the retry time (as wall clock), so the
 *             schedule survives a restart.
 * Jobs without a name (ad hoc function tasks) are never written: they run
 * in memory only and are counted apart (queue_journal_counts).
 *
 * The journal is borrowed: its owner opens it (startup faults are its
 * business), takes ids from it (journal_next_id), replays it at start
 * (journal_replay, then queue_journal_adopt for each job it keeps) and
 * closes it after queue_destroy.  Completions may still arrive from the
 * journal's writer thread after destroy, until journal_close; they touch
 * nothing of the queue.
 */
#ifndef BGSERVE_QUEUE_JOURNAL_H
#define BGSERVE_QUEUE_JOURNAL_H

#include "journal.h"
#include "queue.h"

#include <stddef.h>
#include <stdint.h>

/*
 * A queue writing to j (borrowed; open until after queue_destroy and
 * journal_close comes after it).  cap bounds the nodes linked, ready or
 * waiting (BGS_EFULL beyond it; 0: no bound); linger_us as for
 * queue_mem_new (s too).  describe tells what to write for a node; it is called
 * on the enqueuing and taking threads, with no lock of the queue's held.
 * A completion's status is 0, BGS_ESHUTDOWN when the journal was closing,
 * or BGS_EFULL for any write failure (the disk is full, an I/O error),
 * with the journal's message saying which.
 */
queue *queue_journal_new(journal *j, sched *s, size_t cap, unsigned linger_us,
                         queue_describe_fn describe, void *describe_arg);

/*
 * Link n, a job the journal holds already (replay): nothing is written;
 * it is handed out no earlier than not_before_wall_us (wall clock, as in
 * journal_rec; 0 or past: at once).  Never refused for capacity (it was
 * accepted by an earlier run).  0 or BGS_ESHUTDOWN (the caller keeps n).
 */
int queue_journal_adopt(queue *q, queue_node *n, uint64_t not_before_wall_us);

/*
 * Lazy starts (call before the first take; off by default): a take hands
 * out the job at once and its start goes to the journal's next
 * transaction, without waiting for its commit; a short job's start and
 * end then share one row write (journal.c's fold).  A process that dies
 * during a run may thus leave the job on disk as queued with its attempts
 * as before that run, so whoever turns this on must count such a run
 * otherwise: the supervisor's crash record does (tasks_replay).  A job
 * whose describe sets await_start still waits for its start's commit.
 */
void queue_journal_lazy_starts(queue *q, int on);

/*
 * Run n here: n, a job the journal holds already (written ahead of its
 * response) and never linked, is about to run on the caller's thread
 * without going through the queue (the engine's inline runs).  With lazy
 * starts its start goes to the journal's next transaction and 1 is
 * returned: run it, then ack or nack it as if it had been taken.  0
 * (nothing done) when it must go the usual way: no lazy starts, its
 * describe says await_start, or the queue is shut down.
 */
int queue_journal_start_here(queue *q, queue_node *n);

/* (Failed commits are the journal's: journal_stats.failed_commits.) */
typedef struct queue_journal_counts {
    uint64_t journaled;    /* jobs written by enqueue */
    uint64_t memory_only;  /* jobs without a name: never written */
    uint64_t unrecorded;   /* takes, acks and nacks the journal refused
                            * (it was closing) */
} queue_journal_counts;

/* The counters of q (made by queue_journal_new). */
void queue_journal_get_counts(queue *q, queue_journal_counts *out);

#endif
