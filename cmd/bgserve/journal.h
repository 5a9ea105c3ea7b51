/*
 * journal.h - the durable task journal: one SQLite file (WAL mode) that
 * holds every named task from the moment it is accepted until it is
 * finished or dead-lettered, so a crash, a kill or a restart loses no
 * accepted task.
 *
 * Writes go through one writer thread that commits what many threads
 * appended in one transaction per batch (group commit) and then calls
 * each record's completion callback, in append order: status 0 means the
 * record is on disk ("durable"), anything else means it is not and says
 * why.  Reads at open (the replay snapshot) and the `bgserve journal`
 * subcommand use their own connections.
 *
 * Threads: every function may be called from any thread once journal_open
 * returned, except journal_close (once, after every other call).
 * Callbacks run on the writer thread and must not call journal_close.
 */
#ifndef BGSERVE_JOURNAL_H
#define BGSERVE_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

/* The schema this bgserve writes; a journal with a higher one is refused,
 * one with a lower one is brought up to it when it is opened for writing
 * (version 2 added tasks.prev, the sequence link; version 3 tasks.live and
 * its partial index in place of the index on state; version 4 the packs,
 * an add of several tasks in one row). */
#define JOURNAL_SCHEMA_VERSION 4

/* Result codes (0 or negative), also handed to completion callbacks. */
#define JOURNAL_ERRNO_MAP(X)                                                  \
    X(EINVAL, -1, "invalid argument")                                         \
    X(ECORRUPT, -2, "the file is corrupt or not a bgserve journal")           \
    X(ESCHEMA, -3, "the journal has a newer schema")                          \
    X(EACCESS, -4, "the journal cannot be created or written")                \
    X(ELOCKED, -5, "another bgserve has the journal open")                    \
    X(EFULL, -6, "the disk is full")                                          \
    X(EIO, -7, "a write failed")                                              \
    X(ENOTFOUND, -8, "no such task")                                          \
    X(ECLOSED, -9, "the journal is closing")

#define JOURNAL__ENUM(name, val, text) JOURNAL_##name = (val),
enum { JOURNAL_ERRNO_MAP(JOURNAL__ENUM) };
#undef JOURNAL__ENUM

/* Text of a result code; never NULL. */
const char *journal_strerror(int rc);

typedef struct journal journal;

typedef enum journal_sync {
    JOURNAL_SYNC_NORMAL = 0, /* synchronous=NORMAL: survives a process crash */
    JOURNAL_SYNC_FULL = 1    /* synchronous=FULL: survives a power loss */
} journal_sync;

/* Parse "normal" / "full"; 0, or JOURNAL_EINVAL. */
int journal_sync_parse(const char *text, journal_sync *out);

typedef struct journal_config {
    const char *path;
    journal_sync sync;
    unsigned max_batch;   /* rows a transaction writes at most (an add counts
                           * its tasks, several starts as one record count
                           * each, any other record 1; a record with more is
                           * a transaction of its own); 0: 512 */
    unsigned defer_max_us; /* how long a record that nobody waits for (a lazy
                            * start; an end, retry or unstart given no
                            * callback) may wait for a commit that a
                            * waited-for record starts; 0: 5000 */
} journal_config;

/*
 * Open (creating it and its schema on first use) the journal at
 * cfg->path, take its lock (an flock on "PATH-lock", which names the
 * owner's pid), load the replay snapshot and start the writer thread.
 * Returns 0 and *out, or a negative JOURNAL_E* with one message in err
 * (file, what is wrong, what to do) and nothing left open.
 */
int journal_open(const journal_config *cfg, journal **out, char *err, size_t cap);

/*
 * Commit everything appended so far, stop the writer and close.  Records
 * appended after journal_close began get JOURNAL_ECLOSED.  j may be NULL.
 */
void journal_close(journal *j);

/*
 * A task id that was never used in this journal and never will be again,
 * even after a crash: ids are reserved in blocks whose end is committed
 * (with meta.next_id) before an id of the block is handed out.
 */
uint64_t journal_next_id(journal *j);

/* Called on the writer thread once the record is committed (status 0) or
 * has failed (a negative JOURNAL_E*, with msg saying what happened;
 * msg is NULL on success and valid only during the call). */
typedef void (*journal_done_fn)(void *arg, int status, const char *msg);

/* A task as it is accepted.  Strings and the payload are copied. */
typedef struct journal_task {
    uint64_t id;              /* from journal_next_id */
    const char *name;         /* the task function's name */
    const void *payload;      /* may be NULL when payload_len is 0 */
    size_t payload_len;
    uint32_t max_attempts;
    uint64_t not_before_us;   /* wall clock; 0: run at once */
    const char *request_id;   /* NULL when none */
    uint64_t prev_id;         /* in a sequence, the task before it (0: none):
                               * a replay runs it after that one succeeded */
} journal_task;

/*
 * Append n new tasks (state "queued") as one unit: they are committed in
 * the same transaction and done(arg, ...) is called once for all of
 * them.  done may be NULL.  Returns 0 (done will be called exactly
 * once), or JOURNAL_EINVAL / JOURNAL_ECLOSED (done is not called).
 */
int journal_add(journal *j, const journal_task *tasks, size_t n, journal_done_fn done,
                void *arg);

/*
 * State transitions, each committed by the writer like journal_add (done
 * may be NULL; return values as journal_add's):
 *   start:   "running", attempts = attempt, started time.
 *   unstart: a start whose run never began (its taker was shut down
 *            first): back to "queued" with attempts as they were before
 *            it; a task that is not running is left alone
 *            (JOURNAL_ENOTFOUND to done).
 *   succeed: "succeeded", finished time, result (may be NULL).
 *   retry:   back to "queued" with not_before_us (wall clock) and the
 *            error of the failed attempt.
 *   finish:  a final state other than success ("failed", "cancelled",
 *            "discarded") with its error.
 *   dead:    moved to the dead-letter table with its last error.
 */
int journal_start(journal *j, uint64_t id, uint32_t attempt, journal_done_fn done, void *arg);
/*
 * A lazy start: the same row change as journal_start, with no callback
 * and no wait.  It is held aside (not in the append order) until the
 * writer's next batch, which takes it after every record appended before
 * that batch; or, if its task's end, retry or unstart is appended first,
 * it moves into that record, which writes the row once (an end: queued
 * to its final state, with the attempt and the start time).  With nothing
 * else to write, the writer commits it after defer_max_us (5 ms).  The
 * task must have no other start pending.  0, JOURNAL_EINVAL, or
 * JOURNAL_ECLOSED after close began.
 */
int journal_start_lazy(journal *j, uint64_t id, uint32_t attempt);
/* The starts of several tasks as one record: one transaction, one call
 * of done (JOURNAL_ENOTFOUND when any of them was not live; the others
 * are started).  Returns as journal_add. */
typedef struct journal_started {
    uint64_t id;
    uint32_t attempt;
} journal_started;
int journal_start_many(journal *j, const journal_started *starts, size_t n,
                       journal_done_fn done, void *arg);
/* Given no callback (done NULL), an unstart, success, retry, finish or
 * dead is deferred: it takes its place in the append order but does not
 * start a transaction of its own; it goes into the next one that a
 * record with a callback starts, or is committed defer_max_us after it
 * was appended when none comes (nobody waits for it, so under load it
 * rides along with the adds). */
int journal_unstart(journal *j, uint64_t id, uint32_t attempts, journal_done_fn done,
                    void *arg);
int journal_succeed(journal *j, uint64_t id, const char *result, journal_done_fn done,
                    void *arg);
int journal_retry(journal *j, uint64_t id, uint64_t not_before_us, const char *error,
                  journal_done_fn done, void *arg);
int journal_finish(journal *j, uint64_t id, const char *state, const char *error,
                   journal_done_fn done, void *arg);
int journal_dead(journal *j, uint64_t id, const char *error, journal_done_fn done, void *arg);

/* A task found in the journal (replay, lookup). */
typedef struct journal_rec {
    uint64_t id;
    const char *name;
    const void *payload;
    size_t payload_len;
    const char *state;        /* queued running succeeded failed ... dead */
    uint32_t attempts;        /* attempts started so far */
    uint32_t max_attempts;
    uint64_t not_before_us;   /* 0: none */
    uint64_t created_us, started_us, finished_us; /* wall clock, 0: not yet */
    const char *last_error;   /* NULL when none */
    const char *request_id;   /* NULL when none */
    const char *result;       /* NULL when none */
    int interrupted;          /* replay: it was "running" when the journal
                               * was last closed or its process died */
    uint64_t prev_id;         /* replay: the task before it in its sequence,
                               * 0 when none (journal_task.prev_id) */
} journal_rec;

/*
 * Call fn for every task that was "queued" or "running" when the journal
 * was opened, oldest id first (the snapshot is freed afterwards; a second
 * call finds nothing).  A task's next attempt is rec->attempts + 1, for
 * interrupted ones too (at-least-once); not_before_us is kept.  The
 * record is valid only during the call.  Returns how many were replayed.
 */
size_t journal_replay(journal *j, void (*fn)(void *arg, const journal_rec *rec), void *arg);

/*
 * Look the task up on disk (its row or its pack, then the dead-letter table)
 * and call fn with it.  0, JOURNAL_ENOTFOUND, or another JOURNAL_E*.
 */
int journal_lookup(journal *j, uint64_t id, void (*fn)(void *arg, const journal_rec *rec),
                   void *arg);

typedef struct journal_stats {
    const char *file;         /* valid while j is open */
    uint64_t pending;         /* committed tasks not finished (queued or running) */
    uint64_t dead;            /* rows in the dead-letter table */
    uint64_t unwritten;       /* records appended, not yet committed */
    uint64_t commits;         /* transactions committed */
    uint64_t records;         /* records those commits covered */
    uint64_t failed_commits;  /* transactions that failed */
    double mean_batch;        /* records / commits (0 before the first) */
    uint64_t last_commit_us;  /* wall clock of the last commit, 0: none */
    uint64_t commit_p50_us;   /* time a commit took (BEGIN to COMMIT of one batch, */
    uint64_t commit_p99_us;   /* successful ones), percentiles; 0 before the first */
} journal_stats;

void journal_get_stats(journal *j, journal_stats *out);

/* ------------------------------------------------------------------ */
/* Offline access: `bgserve journal FILE ...`                          */
/* ------------------------------------------------------------------ */

/*
 * A plain connection to an existing journal, without its lock and without
 * a writer, so it works while a server has the journal open (SQLite's WAL
 * lets readers and one writer at a time share the file; a write waits up
 * to 5 s for the server's current commit).  Changes made through it reach
 * a running server at its next start (replay).
 */
typedef struct journal_db journal_db;

/* 0 and *out, or a negative JOURNAL_E* with the message in err (a missing
 * file is JOURNAL_ENOTFOUND). */
int journal_db_open(const char *path, journal_db **out, char *err, size_t cap);
void journal_db_close(journal_db *db);

/* Call fn for each task in state (NULL: every task, then the dead
 * letters; "dead": the dead-letter table), by id.  Returns how many, or a
 * negative JOURNAL_E* with the message in err. */
long journal_db_each(journal_db *db, const char *state,
                     void (*fn)(void *arg, const journal_rec *rec), void *arg, char *err,
                     size_t cap);

/* The task id (tasks table, then dead letters): 0, JOURNAL_ENOTFOUND, or
 * another JOURNAL_E* (message in err). */
int journal_db_get(journal_db *db, uint64_t id, void (*fn)(void *arg, const journal_rec *rec),
                   void *arg, char *err, size_t cap);

/* Queue the dead-lettered or finally failed task id again: state
 * "queued", attempts 0, no not-before, on its own (no longer after the
 * task before it in its sequence); its id and last error are kept.
 * 0, JOURNAL_ENOTFOUND, JOURNAL_EINVAL (it is queued, running or
 * succeeded; err says which), or another JOURNAL_E*. */
int journal_db_retry(journal_db *db, uint64_t id, char *err, size_t cap);

/* Delete finished tasks (every state but queued and running) and dead
 * letters that finished before before_us (wall clock).  0 with *removed,
 * or a negative JOURNAL_E*. */
int journal_db_purge(journal_db *db, uint64_t before_us, uint64_t *removed, char *err,
                     size_t cap);

#endif
