/*
 * journal.c - the durable task journal (journal.h): schema, lock, replay
 * snapshot, the group-commit writer and the offline connection that the
 * `bgserve journal` subcommand uses.
 *
 * The file: an SQLite database in WAL mode with four tables.  `meta`
 * holds schema_version and next_id; `tasks` one row per task from its
 * acceptance to its final state; `packs` one row per add of several
 * tasks of one request (journal_pack.h), whose tasks move to rows of
 * tasks when anything but a success happens to them; `dead` the tasks
 * that exhausted their attempts, with their last error.  tasks.live and
 * packs.live (1 while queued or running) carry partial indexes of the
 * live ones (schema version 4).  Times are microseconds since the
 * epoch.  Ids never repeat: open commits meta.next_id = first free id +
 * ID_BLOCK before handing out any id, and the writer moves that ceiling
 * on, in the same transaction as the records, whenever the ids handed
 * out come within half a block of it.
 *
 * Ownership of the file: a server holds an flock on "PATH-lock" (with its
 * pid written there) for as long as the journal is open; a second server
 * is refused.  The subcommand takes no lock; SQLite's own locking keeps
 * its reads and writes consistent with the server's.
 *
 * Threads: records are appended by any thread to a FIFO list under `mu`;
 * the writer wakes for those with a callback (nwaited counts them) and
 * lets the others wait for them, defer_max_us at most.  The one writer
 * thread takes them in order, up to max_batch rows' worth (batch_rows;
 * the list counts its records and their rows, so that the usual batch,
 * all of it, is taken without walking the list under mu), folds each
 * start whose add is in the same batch into that add (fold_starts), applies
 * them in one BEGIN IMMEDIATE ... COMMIT on its own connection (wdb, the
 * prepared statements, the fold table and the map of live packs are the
 * writer's alone after open; each pack a batch changed is written once,
 * before COMMIT) and then calls their
 * callbacks in append order, outside `mu`.  A failed transaction is rolled
 * back (and the map of packs read again from the file) and every record
 * in it gets the error; the writer goes on with the
 * next batch and logs once per failing episode.  Lookups use a second
 * connection under `read_mu`.  Checkpoints run on a third connection
 * (cdb), on a checkpointer thread that the writer wakes (ckpt_want, under
 * `mu`) from SQLite's WAL hook.  The stats counters, the id ceiling and
 * the replay snapshot are guarded by `mu`; the commit-time histogram is
 * lock-free (latency.h), written by the writer only.
 */
#include "journal.h"

#include "journal_pack.h"
#include "latency.h"
#include "log.h"
#include "util.h"

#include "bgserve.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define ID_BLOCK 4096u
#define BUSY_TIMEOUT_MS 5000
/* Rows a transaction writes at most (journal_config.max_batch).  A commit
 * costs about 10 000 instructions a row, so 512 rows keep one near 2 ms
 * on the machines bench/README.md describes, however far behind the
 * writer is: the responses in a batch are all released at its commit,
 * and a writer that falls behind would otherwise take ever larger
 * batches (1024 records of up to 32 rows each before). */
#define DEFAULT_MAX_BATCH 512u
/* A record that nobody waits for (a lazy start, journal_start_lazy, or
 * an end, retry or unstart given no callback) waits at most this long
 * (journal_config.defer_max_us) for a batch that a waited-for record
 * starts (an add whose response is held, an awaited start) before the
 * writer commits it by itself.  Under load such records ride along in
 * the adds' commits instead of waking the writer for commits of their
 * own; a crash in the window replays the task, as at-least-once allows
 * (docs/journal.md). */
#define DEFAULT_DEFER_MAX_US 5000u
/* WAL frames (pages) of growth after which the checkpointer thread
 * backfills them into the file (SQLite's own autocheckpoint threshold),
 * and the WAL's length after which the writer does it itself because
 * the checkpointer fell behind (wal_hook says why both). */
#define CKPT_FRAMES 1000
#define CKPT_BACKSTOP 10000

#define COLS "id,name,payload,state,attempts,max_attempts,not_before,created,started," \
             "finished,last_error,request_id,result"
#define LIVE "state IN ('queued','running')"
/* The live tasks through the partial index (schema_sql); the state is
 * checked as well, so a row whose state was changed by hand (an SQL
 * UPDATE of state alone) counts by its state, as before version 3. */
#define LIVE_ROWS "live=1 AND " LIVE

/* The tasks in packs, read as rows of COLS (journal_pack.h): k numbers a
 * pack's tasks, PK(f) reads field f of task k.i (bgs_pack); a moved task
 * (state NULL here) is read from its row in tasks instead.  The queries
 * below put these beside the rows of tasks, by id. */
#define PK(f) "bgs_pack(p.tasks,p.ends,k.i," #f ")"
#define PACK_K "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM k WHERE i<63) "
#define PACK_COLS PK(0) "," PK(1) "," PK(2) "," PK(3) "," PK(4) "," PK(5) "," PK(6) \
                  ",p.created," PK(8) "," PK(9) ",NULL,p.request_id,NULL"
#define PACK_FROM " FROM packs p JOIN k ON k.i<p.n"
/* The rows of tasks (COLS, then tcols) where twhere, beside the tasks
 * in packs (PACK_COLS, then pcols) where pwhere. */
#define TASKS_AND_PACKS(tcols, twhere, pcols, pwhere)                                  \
    PACK_K "SELECT " COLS tcols " FROM tasks" twhere " UNION ALL SELECT " PACK_COLS pcols \
        PACK_FROM " WHERE " pwhere
/* a task by id (?1), in tasks or in the packs that may hold it */
#define Q_TASK_BY_ID                                                                       \
    TASKS_AND_PACKS("", " WHERE id=?1", "", "p.first BETWEEN ?1-1024 AND ?1 AND p.last>=?1 " \
                    "AND " PK(0) "=?1 AND " PK(3) " IS NOT NULL")

/* Schema version 4: the table of packs (journal_pack.h), an add of
 * several tasks in one row: its first and last ids (the key, and how far
 * a lookup looks back: JOURNAL_PACK_SPAN), its count, creation time and
 * request id, the tasks blob, the ends blob, live (1 while any task in it is
 * queued) with a partial index as tasks.live's, and the latest finish
 * time in it (purge).  A task in a pack is queued or succeeded; any
 * other change moves it to a row of its own in `tasks` first. */
#define PACKS_SQL                                                                      \
    "CREATE TABLE packs (first INTEGER PRIMARY KEY, last INTEGER NOT NULL,"            \
    " n INTEGER NOT NULL, created INTEGER NOT NULL, request_id TEXT,"                 \
    " tasks BLOB NOT NULL, ends BLOB, live INTEGER, finished INTEGER);"               \
    "CREATE INDEX packs_live ON packs(live) WHERE live IS NOT NULL;"

/* Schema version 3.  tasks.live is 1 while the task is queued or running
 * and NULL afterwards; the partial index tasks_live holds the live tasks
 * only.  A start (queued to running) or a retry (back to queued) leaves
 * live alone and so writes no index entry; a task's life costs one entry
 * inserted at its add and one deleted at its end.  Version 2 indexed
 * state, which every state change rewrote, for every task ever run. */
static const char schema_sql[] =
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "CREATE TABLE tasks (id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB NOT NULL,"
    " state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " max_attempts INTEGER NOT NULL, not_before INTEGER NOT NULL DEFAULT 0,"
    " created INTEGER NOT NULL, started INTEGER, finished INTEGER, last_error TEXT,"
    " request_id TEXT, result TEXT, prev INTEGER NOT NULL DEFAULT 0, live INTEGER);"
    "CREATE INDEX tasks_live ON tasks(live) WHERE live IS NOT NULL;"
    PACKS_SQL
    "CREATE TABLE dead (id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB NOT NULL,"
    " state TEXT NOT NULL, attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL,"
    " not_before INTEGER NOT NULL, created INTEGER NOT NULL, started INTEGER,"
    " finished INTEGER, last_error TEXT, request_id TEXT, result TEXT);"
    "INSERT INTO meta VALUES ('next_id', 1);";

/* From schema version 1: the sequence link (tasks.prev). */
static const char upgrade_v2_sql[] =
    "ALTER TABLE tasks ADD COLUMN prev INTEGER NOT NULL DEFAULT 0;"
    "UPDATE meta SET value=2 WHERE key='schema_version';";

/* From schema version 2: tasks.live and its partial index, in place of
 * the index on state (schema_sql says why). */
static const char upgrade_v3_sql[] =
    "ALTER TABLE tasks ADD COLUMN live INTEGER;"
    "UPDATE tasks SET live=1 WHERE " LIVE ";"
    "DROP INDEX IF EXISTS tasks_state;"
    "CREATE INDEX tasks_live ON tasks(live) WHERE live IS NOT NULL;"
    "UPDATE meta SET value=3 WHERE key='schema_version';";

/* From schema version 3: the packs (PACKS_SQL). */
static const char upgrade_v4_sql[] =
    PACKS_SQL
    "UPDATE meta SET value=4 WHERE key='schema_version';";

/* ------------------------------------------------------------------ */
/* Result codes and messages                                           */
/* ------------------------------------------------------------------ */

const char *journal_strerror(int rc)
{
    switch (rc) {
    case 0:
        return "success";
#define JOURNAL__TEXT(name, val, text) \
    case (val):                        \
        return text;
        JOURNAL_ERRNO_MAP(JOURNAL__TEXT)
#undef JOURNAL__TEXT
    default:
        return "unknown journal error";
    }
}

int journal_sync_parse(const char *text, journal_sync *out)
{
    if (text != NULL && strcmp(text, "normal") == 0) {
        *out = JOURNAL_SYNC_NORMAL;
        return 0;
    }
    if (text != NULL && strcmp(text, "full") == 0) {
        *out = JOURNAL_SYNC_FULL;
        return 0;
    }
    return JOURNAL_EINVAL;
}

/*
 * Map a failed SQLite call on db to a JOURNAL_E* and write one message:
 * "journal PATH: DOING: what is wrong (SQLite: ...); what to do".
 */
static int sql_fail(sqlite3 *db, int src, const char *path, const char *doing, char *err,
                    size_t cap)
{
    int saved = errno; /* an I/O error's errno, when SQLite did not keep it */
    int prim = src & 0xff;
    int sys = db ? sqlite3_system_errno(db) : 0;
    if (sys == 0 && prim == SQLITE_IOERR)
        sys = saved;
    const char *sqlmsg = db ? sqlite3_errmsg(db) : sqlite3_errstr(src);
    char why[320];
    if (sys != 0)
        snprintf(why, sizeof why, "SQLite: %s; %s", sqlmsg, strerror(sys));
    else
        snprintf(why, sizeof why, "SQLite: %s", sqlmsg);

    int rc;
    if (prim == SQLITE_FULL || sys == ENOSPC || sys == EDQUOT || sys == EFBIG) {
        rc = JOURNAL_EFULL;
        snprintf(err, cap,
                 "journal %s: %s: the disk is full (%s); free space on its file system "
                 "(or raise the file size limit, ulimit -f), or give a --journal FILE on "
                 "another file system",
                 path, doing, why);
    } else if (prim == SQLITE_NOTADB || prim == SQLITE_CORRUPT || prim == SQLITE_FORMAT) {
        rc = JOURNAL_ECORRUPT;
        snprintf(err, cap,
                 "journal %s: %s: the file is corrupt or not an SQLite database (%s); "
                 "move it aside (mv %s %s.bad) to start a new journal, or give another "
                 "--journal FILE",
                 path, doing, why, path, path);
    } else if (prim == SQLITE_READONLY || prim == SQLITE_CANTOPEN || prim == SQLITE_PERM ||
               prim == SQLITE_AUTH) {
        rc = JOURNAL_EACCESS;
        snprintf(err, cap,
                 "journal %s: %s: the file cannot be created or written (%s); make the file "
                 "and its directory writable (SQLite also writes %s-wal and %s-shm next to "
                 "it), or give another --journal FILE",
                 path, doing, why, path, path);
    } else if (prim == SQLITE_BUSY || prim == SQLITE_LOCKED) {
        rc = JOURNAL_ELOCKED;
        snprintf(err, cap,
                 "journal %s: %s: another process held the file's write lock for more than "
                 "%d ms (%s); finish that process's write (a long `bgserve journal` "
                 "command?) and try again",
                 path, doing, BUSY_TIMEOUT_MS, why);
    } else {
        rc = JOURNAL_EIO;
        snprintf(err, cap,
                 "journal %s: %s: a write failed (%s); check the disk and the kernel log "
                 "(dmesg), or give another --journal FILE",
                 path, doing, why);
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* Opening a connection: existence, schema, version                    */
/* ------------------------------------------------------------------ */

static int exec_sql(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* One integer from sql (first column of the first row) into *out.  An
 * SQLite result code; SQLITE_DONE when there is no row. */
static int query_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* SQLite's process-wide settings, before its first use: no memory
 * statistics, whose mutex every allocation of SQLite's would take (about
 * 45 per task written).  Too late when SQLite was used already (a plugin
 * linked to it): sqlite3_config refuses, and nothing else changes. */
static void sqlite_setup(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

/*
 * Open path as a journal: create it and its schema when create is set
 * and the file is new (or empty), refuse a file that is not a bgserve
 * journal or has a newer schema.  0 and *out, or a JOURNAL_E* with err.
 */
static int db_connect(const char *path, int create, sqlite3 **out, char *err, size_t cap)
{
    sqlite3 *db = NULL;
    int64_t n = 0, version = 0;
    /* NOMUTEX: each connection is used by one thread at a time (journal.c's
     * locks say which), so SQLite's per-call connection mutex is waste. */
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
    static pthread_once_t setup_once = PTHREAD_ONCE_INIT;
    pthread_once(&setup_once, sqlite_setup);
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        rc = sql_fail(db, rc, path, "cannot open", err, cap);
        goto fail;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    rc = journal_pack_register(db);
    if (rc != SQLITE_OK) {
        rc = sql_fail(db, rc, path, "cannot set it up", err, cap);
        goto fail;
    }

    rc = query_int(db, "SELECT count(*) FROM sqlite_master", &n);
    if (rc != SQLITE_OK) {
        rc = sql_fail(db, rc, path, "cannot read it", err, cap);
        goto fail;
    }
    if (n == 0 && create) {
        rc = exec_sql(db, "PRAGMA journal_mode=WAL");
        if (rc == SQLITE_OK)
            rc = exec_sql(db, "BEGIN IMMEDIATE");
        if (rc == SQLITE_OK)
            rc = exec_sql(db, schema_sql);
        if (rc == SQLITE_OK) {
            char sql[96];
            snprintf(sql, sizeof sql, "INSERT INTO meta VALUES ('schema_version', %d)",
                     JOURNAL_SCHEMA_VERSION);
            rc = exec_sql(db, sql);
        }
        if (rc == SQLITE_OK)
            rc = exec_sql(db, "COMMIT");
        if (rc != SQLITE_OK) {
            rc = sql_fail(db, rc, path, "cannot create the journal", err, cap);
            if (!sqlite3_get_autocommit(db))
                exec_sql(db, "ROLLBACK");
            goto fail;
        }
    }
    rc = query_int(db, "SELECT value FROM meta WHERE key='schema_version'", &version);
    if (rc != SQLITE_OK || version < 1) {
        snprintf(err, cap,
                 "journal %s: the file is an SQLite database but not a bgserve journal (%s); "
                 "give another --journal FILE (bgserve creates a new one), or move this "
                 "file aside",
                 path, rc == SQLITE_OK || rc == SQLITE_DONE ? "no schema version" :
                 "no meta table");
        rc = JOURNAL_ECORRUPT;
        goto fail;
    }
    if (version > JOURNAL_SCHEMA_VERSION) {
        snprintf(err, cap,
                 "journal %s: it has schema version %" PRId64 " and this bgserve knows "
                 "versions up to %d; use the newer bgserve that wrote it, or give another "
                 "--journal FILE",
                 path, version, JOURNAL_SCHEMA_VERSION);
        rc = JOURNAL_ESCHEMA;
        goto fail;
    }
    if (sqlite3_db_readonly(db, "main") == 1) {
        snprintf(err, cap,
                 "journal %s: the file cannot be written (it is read-only to this process); "
                 "make the file and its directory writable, or give another --journal FILE",
                 path);
        rc = JOURNAL_EACCESS;
        goto fail;
    }
    if (version < JOURNAL_SCHEMA_VERSION) { /* bring it up to date (a server, or
                                             * `bgserve journal`), in one transaction */
        rc = exec_sql(db, "BEGIN IMMEDIATE");
        if (rc == SQLITE_OK && version < 2)
            rc = exec_sql(db, upgrade_v2_sql);
        if (rc == SQLITE_OK && version < 3)
            rc = exec_sql(db, upgrade_v3_sql);
        if (rc == SQLITE_OK && version < 4)
            rc = exec_sql(db, upgrade_v4_sql);
        if (rc == SQLITE_OK)
            rc = exec_sql(db, "COMMIT");
        if (rc != SQLITE_OK) {
            char doing[64];
            snprintf(doing, sizeof doing, "cannot upgrade it to schema version %d",
                     JOURNAL_SCHEMA_VERSION);
            rc = sql_fail(db, rc, path, doing, err, cap);
            if (!sqlite3_get_autocommit(db))
                exec_sql(db, "ROLLBACK");
            goto fail;
        }
    }
    *out = db;
    return 0;
fail:
    sqlite3_close(db);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Rows                                                                */
/* ------------------------------------------------------------------ */

static const char *col_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

static uint64_t col_u64(sqlite3_stmt *st, int i)
{
    int64_t v = sqlite3_column_int64(st, i);
    return v > 0 ? (uint64_t)v : 0;
}

/* r from a row of COLS; pointers valid until the next step. */
static void row_rec(sqlite3_stmt *st, journal_rec *r)
{
    memset(r, 0, sizeof *r);
    r->id = col_u64(st, 0);
    r->name = col_text(st, 1);
    r->payload = sqlite3_column_blob(st, 2);
    r->payload_len = (size_t)sqlite3_column_bytes(st, 2);
    r->state = col_text(st, 3);
    r->attempts = (uint32_t)col_u64(st, 4);
    r->max_attempts = (uint32_t)col_u64(st, 5);
    r->not_before_us = col_u64(st, 6);
    r->created_us = col_u64(st, 7);
    r->started_us = col_u64(st, 8);
    r->finished_us = col_u64(st, 9);
    r->last_error = col_text(st, 10);
    r->request_id = col_text(st, 11);
    r->result = col_text(st, 12);
    if (sqlite3_column_count(st) > 13) /* the replay snapshot's query */
        r->prev_id = col_u64(st, 13);
    r->interrupted = r->state != NULL && strcmp(r->state, "running") == 0;
    if (r->name == NULL)
        r->name = "";
    if (r->state == NULL)
        r->state = "";
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void rec_copy(journal_rec *dst, const journal_rec *src)
{
    *dst = *src;
    dst->name = xstrdup(src->name);
    dst->payload = src->payload_len ? xmemdup(src->payload, src->payload_len) : NULL;
    dst->state = xstrdup(src->state);
    dst->last_error = dup_or_null(src->last_error);
    dst->request_id = dup_or_null(src->request_id);
    dst->result = dup_or_null(src->result);
}

static void rec_free(journal_rec *r)
{
    free((void *)r->name);
    free((void *)r->payload);
    free((void *)r->state);
    free((void *)r->last_error);
    free((void *)r->request_id);
    free((void *)r->result);
}

/* Run sql (binding id as ?1 when id is non-zero) and call fn per row.
 * The row count, or a negative SQLite code. */
static long each_row(sqlite3 *db, const char *sql, uint64_t id,
                     void (*fn)(void *arg, const journal_rec *rec), void *arg, int *sqlrc)
{
    sqlite3_stmt *st = NULL;
    long n = 0;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK && id != 0)
        sqlite3_bind_int64(st, 1, (int64_t)id);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        journal_rec r;
        row_rec(st, &r);
        fn(arg, &r);
        n++;
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    *sqlrc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    return n;
}

/* ------------------------------------------------------------------ */
/* The live journal                                                    */
/* ------------------------------------------------------------------ */

typedef enum op_kind { OP_ADD, OP_START, OP_UNSTART, OP_SUCCEED, OP_RETRY, OP_FINISH, OP_DEAD } op_kind;

enum { ST_INSERT, ST_START, ST_UNSTART, ST_SUCCEED, ST_RETRY, ST_FINISH, ST_DEAD_COPY, ST_DEAD_DEL,
       ST_META, ST_BEGIN, ST_COMMIT, ST_PACK_ADD, ST_PACK_ENDS, ST_PACK_MOVE, ST_COUNT };

#define FOLDED_START "attempts=coalesce(?5,attempts), started=coalesce(?6,started)"

static const char *const stmt_sql[ST_COUNT] = {
    /* a new task, queued, or running already when its start was folded in
     * (fold_starts: state ?9, attempts ?10, started ?11) */
    [ST_INSERT] = "INSERT INTO tasks (id,name,payload,state,attempts,max_attempts,not_before,"
                  "created,request_id,prev,started,live) "
                  "VALUES (?1,?2,?3,?9,?10,?4,?5,?6,?7,?8,?11,1)",
    [ST_START] = "UPDATE tasks SET state='running', attempts=?2, started=?3 WHERE id=?1 AND " LIVE,
    [ST_UNSTART] = "UPDATE tasks SET state='queued', attempts=?2 WHERE id=?1 AND state='running'",
    /* The ends and the retry: with a lazy start they took (journal_start_lazy),
     * its attempt ?5 and time ?6; NULL (the row's own) otherwise. */
    [ST_SUCCEED] = "UPDATE tasks SET state='succeeded', finished=?2, result=?3, live=NULL, "
                   FOLDED_START " WHERE id=?1 AND " LIVE,
    [ST_RETRY] = "UPDATE tasks SET state='queued', not_before=?2, last_error=?3, " FOLDED_START
                 " WHERE id=?1 AND " LIVE,
    [ST_FINISH] = "UPDATE tasks SET state=?4, finished=?2, last_error=?3, live=NULL, "
                  FOLDED_START " WHERE id=?1 AND " LIVE,
    [ST_DEAD_COPY] = "INSERT OR REPLACE INTO dead (" COLS ") SELECT id,name,payload,'dead',"
                     "coalesce(?5,attempts),max_attempts,not_before,created,coalesce(?6,started),"
                     "?2,?3,request_id,result FROM tasks WHERE id=?1 AND " LIVE,
    [ST_DEAD_DEL] = "DELETE FROM tasks WHERE id=?1",
    [ST_META] = "UPDATE meta SET value=?1 WHERE key='next_id'",
    /* prepared too: parsing them cost about 12 000 instructions a commit */
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_PACK_ADD] = "INSERT INTO packs (first,last,n,created,request_id,tasks,ends,live,finished) "
                    "VALUES (?1,?2,?3,?4,?5,?6,NULL,1,NULL)",
    [ST_PACK_ENDS] = "UPDATE packs SET ends=?2, live=?3, finished=?4 WHERE first=?1",
    /* task ?1, the ?3rd of pack ?2, to a row of its own (still queued) */
    [ST_PACK_MOVE] = "INSERT INTO tasks (id,name,payload,state,attempts,max_attempts,not_before,"
                     "created,request_id,prev,started,live) SELECT ?1,bgs_pack(tasks,ends,?3,1),"
                     "bgs_pack(tasks,ends,?3,2),'queued',0,bgs_pack(tasks,ends,?3,5),"
                     "bgs_pack(tasks,ends,?3,6),created,request_id,bgs_pack(tasks,ends,?3,13),"
                     "NULL,1 FROM packs WHERE first=?2",
    [ST_COMMIT] = "COMMIT",
};

/* A copied task of an OP_ADD record. */
typedef struct jtask {
    uint64_t id;
    char *name;
    void *payload;
    size_t len;
    uint32_t max_attempts;
    uint64_t not_before_us;
    char *request_id;
    uint64_t prev_id;
    uint32_t start_attempt;   /* writer: a start folded into the insert (0: none) */
    int fold_closed;          /* writer: no start may be folded in any more */
    uint64_t start_us;        /* writer: its time */
} jtask;

/*
 * One appended record: owned by the list, then by the writer.  A record
 * is one allocation: the jrec, then (rec_take, from buf) its tasks, its
 * starts and every string they point to.  Records of up to 256 bytes
 * (starts, ends) and of up to 1 KiB (adds of a few tasks) are recycled
 * through the journal's two pools (rec_new, pool_put):
 * they are made on the HTTP threads and freed on the writer, a hand-over
 * that cost malloc about 2 µs a journaled request in up to nine
 * allocations (bench/README.md section 25).
 */
#define NPOOLS 2
static const size_t pool_block[NPOOLS] = {256, 1024};
static const unsigned pool_max[NPOOLS] = {1024, 256}; /* blocks kept: 512 KiB at most */

typedef struct jrec {
    struct jrec *next;
    op_kind kind;
    uint64_t id;
    uint32_t attempt;
    uint64_t t_us;        /* OP_RETRY: not before */
    uint64_t at_us;       /* wall clock of the append */
    char *text;           /* result or error */
    char *state;          /* OP_FINISH */
    jtask *tasks;         /* OP_ADD */
    size_t ntasks;
    journal_started *starts; /* OP_START of several tasks (then id is 0); the
                              * writer sets an id to 0 when it folded that start */
    size_t nstarts;
    int folded;           /* writer: an OP_START of one task folded into its add;
                           * an OP_UNSTART that dropped a lazy start: no-op */
    uint32_t fold_attempt; /* an end or retry that took its task's lazy start
                            * (journal_start_lazy): that attempt, 0: none */
    uint64_t fold_started_us; /* and its time */
    uint64_t deferred_mono_us; /* done == NULL: when it was appended (monotonic) */
    journal_done_fn done;
    void *arg;
    int status;           /* set by the writer */
    int pooled;           /* 0, or 1 + the pool its block goes back to */
    size_t cap, used;     /* bytes of buf, and those rec_take handed out */
    char *msg;            /* when status is JOURNAL_ENOTFOUND (the writer's) */
    uint64_t buf[];       /* the record's tasks, starts and strings */
} jrec;

struct journal {
    char *path;
    journal_sync sync;
    unsigned max_batch;
    unsigned defer_max_us;
    int lock_fd;

    sqlite3 *wdb;                   /* the writer thread's, after open */
    sqlite3_stmt *st[ST_COUNT];     /* the writer thread's */
    int failing;                    /* writer: in a failing episode */
    jtask **fold;                   /* writer: open-addressing table of the batch's adds */
    size_t fold_cap;                /* writer: its slots, a power of two */
    journal_pack_map packs;         /* writer: the live packs, by task id */
    journal_pack *dirty;            /* writer: the packs the open transaction changed */
    unsigned char *pack_buf;        /* writer: where an add's tasks blob is made */
    size_t pack_buf_cap;
    uint64_t failed_in_episode;     /* writer */

    pthread_mutex_t read_mu;
    sqlite3 *rdb;                   /* lookups; read_mu */

    pthread_mutex_t pool_mu;        /* a leaf lock: nothing is taken under it */
    jrec *pool[NPOOLS];             /* pool_mu: free blocks of pool_block[i] bytes */
    unsigned npool[NPOOLS];         /* pool_mu */

    pthread_mutex_t mu;
    pthread_cond_t wake;            /* the writer waits for records */
    pthread_cond_t ext;             /* id takers wait for the ceiling */
    jrec *head, **tail;             /* mu */
    size_t nwaited;                 /* mu: records in head..tail with a done callback */
    size_t nlisted, listed_rows;    /* mu: records in head..tail, and the rows they write at most */
    jrec *lazy_head, **lazy_tail;   /* mu: lazy starts no batch has taken yet */
    size_t nlazy;                   /* mu */
    int writer_idle;                /* mu: the writer waits with no deadline */
    int ckpt_asked_at;              /* writer: the WAL's frames at the last checkpoint asked */
    uint64_t unwritten;             /* mu */
    int stopping;                   /* mu */
    int want_extend;                /* mu */
    uint64_t fail_gen;              /* mu: failed transactions so far */
    _Atomic uint64_t next_id;       /* the next id to hand out */
    _Atomic uint64_t ceiling;       /* ids below it are committed as used; mu to write */
    uint64_t pending, dead, commits, records, failed_commits, last_commit_us; /* mu */
    latency_hist commit_hist;       /* lock-free: how long each commit took */
    journal_rec *snap;              /* replay snapshot; mu */
    size_t nsnap;
    pthread_t thread;
    int thread_started;

    sqlite3 *cdb;                   /* the checkpointer thread's */
    pthread_cond_t ckpt_wake;       /* the checkpointer waits for ckpt_want */
    int ckpt_want;                  /* mu */
    pthread_t ckpt_thread;
    int ckpt_started;
};

/* The packs' part of the writer (below the rows'). */
static int pack_reload(journal *j);
static int pack_transition(journal *j, const jrec *r, uint64_t id, size_t *rows,
                           int64_t *dpending, int *rc);

/* ---- the directory and the lock ------------------------------------------------ */

/*
 * The directory the file is in must exist, be a directory and take new
 * files: the lock, and SQLite's FILE-wal and FILE-shm (created at every
 * open).  Said here, before SQLite's less precise "unable to open".
 */
static int check_dir(journal *j, char *err, size_t cap)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", j->path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof dir, ".");
    else
        slash[slash == dir ? 1 : 0] = '\0';
    struct stat st;
    int e = stat(dir, &st) == 0 ? 0 : errno;
    if (e == ENOENT) {
        snprintf(err, cap, "journal %s: its directory %s does not exist (%s); create it "
                 "(mkdir -p %s), or give another --journal FILE", j->path, dir, strerror(e),
                 dir);
        return JOURNAL_EACCESS;
    }
    if (e == ENOTDIR || (e == 0 && !S_ISDIR(st.st_mode))) {
        snprintf(err, cap, "journal %s: %s is not a directory (a file is where the path "
                 "needs one); give --journal a path in a directory, or move that file aside",
                 j->path, dir);
        return JOURNAL_EACCESS;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        snprintf(err, cap, "journal %s: cannot create files in its directory %s (%s), which "
                 "the journal needs (FILE-lock, FILE-wal, FILE-shm); make the directory "
                 "writable for this user (chmod u+wx %s, or run bgserve as its owner), or "
                 "give a --journal FILE in a directory you can write", j->path, dir,
                 strerror(errno), dir);
        return JOURNAL_EACCESS;
    }
    return 0;
}

static int take_lock(journal *j, char *err, size_t cap)
{
    char lpath[4096];
    snprintf(lpath, sizeof lpath, "%s-lock", j->path);
    int fd = open(lpath, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, cap,
                 "journal %s: cannot create its lock file %s: %s; make the directory "
                 "writable, or give another --journal FILE",
                 j->path, lpath, strerror(errno));
        return errno == ENOSPC || errno == EDQUOT ? JOURNAL_EFULL : JOURNAL_EACCESS;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        snprintf(err, cap,
                 "journal %s: another bgserve (pid %s) has it open (lock %s); stop that "
                 "server, or give this one another --journal FILE",
                 j->path, pid[0] ? pid : "unknown", lpath);
        close(fd);
        return JOURNAL_ELOCKED;
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        /* The pid is only for the message above; the lock is what counts. */
    }
    j->lock_fd = fd;
    return 0;
}

/* ---- open: first id, snapshot, statements ------------------------------------- */

/* Commit meta.next_id = ceiling on db (open, before the writer runs). */
static int commit_ceiling(journal *j, sqlite3 *db, uint64_t ceiling, char *err, size_t cap)
{
    char sql[128];
    snprintf(sql, sizeof sql, "UPDATE meta SET value=%" PRIu64 " WHERE key='next_id'", ceiling);
    int rc = exec_sql(db, "BEGIN IMMEDIATE");
    if (rc == SQLITE_OK)
        rc = exec_sql(db, sql);
    if (rc == SQLITE_OK)
        rc = exec_sql(db, "COMMIT");
    if (rc != SQLITE_OK) {
        int jrc = sql_fail(db, rc, j->path, "cannot write to it", err, cap);
        if (!sqlite3_get_autocommit(db))
            exec_sql(db, "ROLLBACK");
        return jrc;
    }
    return 0;
}

static void snap_add(void *arg, const journal_rec *r)
{
    journal *j = arg;
    if ((j->nsnap & (j->nsnap - 1)) == 0)
        j->snap = xrealloc(j->snap, (j->nsnap ? j->nsnap * 2 : 1) * sizeof *j->snap);
    rec_copy(&j->snap[j->nsnap++], r);
}

static int load_state(journal *j, char *err, size_t cap)
{
    sqlite3 *db = j->wdb;
    int64_t next = 1, maxt = 0, maxd = 0, pending = 0, dead = 0;
    int rc = query_int(db, "SELECT value FROM meta WHERE key='next_id'", &next);
    int64_t maxp = 0;
    if (rc == SQLITE_OK)
        rc = query_int(db, "SELECT coalesce(max(id),0) FROM tasks", &maxt);
    if (rc == SQLITE_OK)
        rc = query_int(db, "SELECT coalesce(max(last),0) FROM packs", &maxp);
    if (rc == SQLITE_OK)
        rc = pack_reload(j);
    if (rc == SQLITE_OK)
        rc = query_int(db, "SELECT coalesce(max(id),0) FROM dead", &maxd);
    if (rc == SQLITE_OK)
        rc = query_int(db, "SELECT count(*) FROM tasks WHERE " LIVE_ROWS, &pending);
    if (rc == SQLITE_OK)
        rc = query_int(db, "SELECT count(*) FROM dead", &dead);
    if (rc != SQLITE_OK)
        return sql_fail(db, rc, j->path, "cannot read it", err, cap);

    uint64_t first = next > 0 ? (uint64_t)next : 1;
    if (maxp > maxt)
        maxt = maxp;
    if ((uint64_t)maxt >= first)
        first = (uint64_t)maxt + 1;
    if ((uint64_t)maxd >= first)
        first = (uint64_t)maxd + 1;
    int jrc = commit_ceiling(j, db, first + ID_BLOCK, err, cap);
    if (jrc != 0)
        return jrc;
    atomic_store(&j->next_id, first);
    atomic_store(&j->ceiling, first + ID_BLOCK);
    j->pending = (uint64_t)pending;
    for (journal_pack *p = j->packs.all; p != NULL; p = p->all_next)
        j->pending += p->nlive;
    j->dead = (uint64_t)dead;

    each_row(db, TASKS_AND_PACKS(",prev", " WHERE " LIVE_ROWS, "," PK(13),
                                 "p.live=1 AND " PK(3) "='queued'") " ORDER BY 1",
             0, snap_add, j, &rc);
    if (rc != SQLITE_OK)
        return sql_fail(db, rc, j->path, "cannot read its tasks", err, cap);
    return 0;
}

static int check_file(journal *j, char *err, size_t cap)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(j->wdb, "PRAGMA quick_check", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *res = col_text(st, 0);
        if (res == NULL || strcmp(res, "ok") != 0) {
            snprintf(err, cap,
                     "journal %s: the file is corrupt (integrity check: %s); move it aside "
                     "(mv %s %s.bad) to start a new journal, or give another --journal FILE",
                     j->path, res ? res : "no answer", j->path, j->path);
            sqlite3_finalize(st);
            return JOURNAL_ECORRUPT;
        }
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK)
        return sql_fail(j->wdb, rc, j->path, "cannot check it", err, cap);

    rc = exec_sql(j->wdb, "PRAGMA journal_mode=WAL");
    if (rc == SQLITE_OK)
        rc = exec_sql(j->wdb, j->sync == JOURNAL_SYNC_FULL ? "PRAGMA synchronous=FULL"
                                                           : "PRAGMA synchronous=NORMAL");
    if (rc != SQLITE_OK)
        return sql_fail(j->wdb, rc, j->path, "cannot switch it to WAL mode", err, cap);
    for (int i = 0; i < ST_COUNT; i++) {
        rc = sqlite3_prepare_v3(j->wdb, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &j->st[i],
                                NULL);
        if (rc != SQLITE_OK)
            return sql_fail(j->wdb, rc, j->path, "cannot prepare its statements", err, cap);
    }
    return 0;
}

/* ---- the writer ------------------------------------------------------------------ */

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
    if (s != NULL)
        sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* Step a bound statement and reset it; an SQLite code (SQLITE_DONE).
 * Every statement has all of its parameters bound before each step, so
 * the bindings are not cleared. */
static int run(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc;
}

/* ---- folding a start into its add -------------------------------------------- */

/*
 * A worker may claim a task before the writer has taken the batch
 * holding that task's add (a task queued at once, bgs_req_enqueue; those
 * a response attaches reach the workers after their commit): the add and
 * the start are then in the same transaction, and the start needs no
 * row write of its own.
 * Before applying a batch the writer finds such pairs, the first start
 * of a task whose add is earlier in the batch with no other record of
 * that task between them, and moves the start into the add: the row is
 * inserted as running, with its attempt and start time.  The
 * transaction commits both or neither, so what is on disk after it is
 * the same.  fold_find: the slot of id in j->fold (NULL or the task).
 */
static jtask **fold_find(journal *j, uint64_t id)
{
    size_t mask = j->fold_cap - 1;
    size_t i = util_id_hash(id) & mask;
    while (j->fold[i] != NULL && j->fold[i]->id != id)
        i = (i + 1) & mask;
    return &j->fold[i];
}

/* The add in this batch of task id that may still take a folded start. */
static jtask *fold_open(journal *j, uint64_t id)
{
    jtask *t = *fold_find(j, id);
    return t != NULL && !t->fold_closed ? t : NULL;
}

static void fold_starts(journal *j, jrec *batch, size_t n)
{
    size_t ntasks = 0;
    jrec *r = batch;
    for (size_t i = 0; i < n; i++, r = r->next)
        ntasks += r->kind == OP_ADD ? r->ntasks : 0;
    if (ntasks == 0)
        return;
    if (j->fold_cap < 2 * ntasks) {
        free(j->fold);
        j->fold_cap = 64;
        while (j->fold_cap < 2 * ntasks)
            j->fold_cap *= 2;
        j->fold = xcalloc(j->fold_cap, sizeof *j->fold);
    } else {
        memset(j->fold, 0, j->fold_cap * sizeof *j->fold);
    }
    r = batch;
    for (size_t i = 0; i < n; i++, r = r->next) {
        jtask *t;
        if (r->kind == OP_ADD) {
            for (size_t k = 0; k < r->ntasks; k++)
                *fold_find(j, r->tasks[k].id) = &r->tasks[k];
        } else if (r->kind == OP_START && r->starts != NULL) {
            for (size_t k = 0; k < r->nstarts; k++)
                if ((t = fold_open(j, r->starts[k].id)) != NULL) {
                    t->start_attempt = r->starts[k].attempt;
                    t->start_us = r->at_us;
                    t->fold_closed = 1;
                    r->starts[k].id = 0;
                }
        } else if ((t = fold_open(j, r->id)) != NULL) {
            if (r->kind == OP_START && r->attempt > 0) {
                t->start_attempt = r->attempt;
                t->start_us = r->at_us;
                r->folded = 1;
            }
            t->fold_closed = 1; /* any other record of it: applied in order */
        }
    }
}

/* The message of a record whose task was not queued or running. */
static char *not_live_msg(journal *j, uint64_t id)
{
    char msg[512];
    snprintf(msg, sizeof msg, "journal %s: task %" PRIu64 " is not queued or running", j->path,
             id);
    return xstrdup(msg);
}

/* The starts of an OP_START of several tasks: as apply(), one by one;
 * a task that is not live is skipped and named in r->msg. */
static int apply_starts(journal *j, jrec *r, size_t *rows)
{
    sqlite3_stmt *st = j->st[ST_START];
    for (size_t i = 0; i < r->nstarts; i++) {
        if (r->starts[i].id == 0)
            continue; /* folded into its add */
        int prc;
        int64_t none = 0;
        if (pack_transition(j, r, r->starts[i].id, rows, &none, &prc))
            return prc;
        sqlite3_bind_int64(st, 1, (int64_t)r->starts[i].id);
        sqlite3_bind_int64(st, 2, r->starts[i].attempt);
        sqlite3_bind_int64(st, 3, (int64_t)r->at_us);
        int rc = run(st);
        if (rc != SQLITE_DONE)
            return rc;
        if (sqlite3_changes(j->wdb) == 0) {
            if (r->status == 0)
                r->msg = not_live_msg(j, r->starts[i].id);
            r->status = JOURNAL_ENOTFOUND;
        } else {
            *rows += 1;
        }
    }
    return SQLITE_DONE;
}

/* An end's or a retry's start folded in (?5, ?6), or NULL: none. */
static sqlite3_stmt *bind_folded(sqlite3_stmt *st, const jrec *r)
{
    if (r->fold_attempt) {
        sqlite3_bind_int64(st, 5, r->fold_attempt);
        sqlite3_bind_int64(st, 6, (int64_t)r->fold_started_us);
    } else {
        sqlite3_bind_null(st, 5);
        sqlite3_bind_null(st, 6);
    }
    return st;
}

/* ---- packs: an add of several tasks in one row (journal_pack.h) ------------------ */

/* Packs larger than this are written as rows: a blob is one value, and
 * SQLite's values stop at 1 GB (SQLITE_MAX_LENGTH). */
#define PACK_MAX_BYTES (1u << 20)

static int same_text(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* An add that goes into a pack: two tasks or more (up to JOURNAL_PACK_MAX),
 * one request id, ids within JOURNAL_PACK_SPAN, no start folded into it (a
 * running task has a row of its own), under PACK_MAX_BYTES.  Its smallest
 * and largest ids in *first and *last. */
static int packable(const jrec *r, uint64_t *first, uint64_t *last)
{
    if (r->ntasks < 2 || r->ntasks > JOURNAL_PACK_MAX)
        return 0;
    uint64_t lo = r->tasks[0].id, hi = lo;
    size_t bytes = 0;
    for (size_t i = 0; i < r->ntasks; i++) {
        const jtask *t = &r->tasks[i];
        if (t->start_attempt != 0 || !same_text(t->request_id, r->tasks[0].request_id))
            return 0;
        lo = t->id < lo ? t->id : lo;
        hi = t->id > hi ? t->id : hi;
        bytes += t->len + strlen(t->name) + 64;
    }
    *first = lo;
    *last = hi;
    return hi - lo <= JOURNAL_PACK_SPAN && bytes <= PACK_MAX_BYTES;
}

static int apply_pack_add(journal *j, jrec *r, uint64_t first, uint64_t last, size_t *rows,
                          int64_t *dpending)
{
    journal_pack_task pt[JOURNAL_PACK_MAX];
    size_t n = r->ntasks;
    for (size_t i = 0; i < n; i++) {
        const jtask *t = &r->tasks[i];
        pt[i] = (journal_pack_task){.id = t->id, .name = t->name, .payload = t->payload,
                                    .len = t->len, .max_attempts = t->max_attempts,
                                    .not_before_us = t->not_before_us, .prev_id = t->prev_id};
    }
    size_t size = journal_pack_tasks_size(pt, n);
    if (size > j->pack_buf_cap) {
        free(j->pack_buf);
        j->pack_buf_cap = size > 4096 ? size : 4096;
        j->pack_buf = xmalloc(j->pack_buf_cap);
    }
    unsigned char *blob = j->pack_buf;
    journal_pack_tasks_encode(pt, n, blob);
    sqlite3_stmt *st = j->st[ST_PACK_ADD];
    sqlite3_bind_int64(st, 1, (int64_t)first);
    sqlite3_bind_int64(st, 2, (int64_t)last);
    sqlite3_bind_int64(st, 3, (int64_t)n);
    sqlite3_bind_int64(st, 4, (int64_t)r->at_us);
    bind_text(st, 5, r->tasks[0].request_id);
    sqlite3_bind_blob(st, 6, blob, (int)size, SQLITE_STATIC);
    int rc = run(st);
    sqlite3_bind_null(st, 6);
    if (rc == SQLITE_DONE) {
        journal_pack_map_put(&j->packs, journal_pack_new(first, pt, (uint32_t)n));
        *rows += n;
        *dpending += (int64_t)n;
    }
    return rc;
}

static void pack_touch(journal *j, journal_pack *p)
{
    if (!p->dirty) {
        p->dirty = 1;
        p->dirty_next = j->dirty;
        j->dirty = p;
    }
}

/*
 * Record r of task id, kept in a pack.  A success without a result is
 * written into the pack's ends: returns 1 with *rc SQLITE_DONE.  Any
 * other change of a queued task first moves it to a row of its own
 * (ST_PACK_MOVE); then, or when the task is not in a live pack, or is
 * no longer queued there (its row's statement then finds no live row:
 * JOURNAL_ENOTFOUND), returns 0 and r applies to the row as before.
 * Returns 1 with *rc the SQLite code when the move failed.
 */
static int pack_transition(journal *j, const jrec *r, uint64_t id, size_t *rows,
                           int64_t *dpending, int *rc)
{
    journal_pack *p = journal_pack_map_find(&j->packs, id);
    int i = p ? journal_pack_index(p, id) : -1;
    journal_pack_end e;
    if (i < 0 ||
        journal_pack_end_get(p->ends, p->n * (size_t)JOURNAL_PACK_END_BYTES, p->n, (size_t)i,
                             &e) != 0 ||
        e.status != JOURNAL_PACK_QUEUED || r->kind == OP_UNSTART)
        return 0; /* an unstart finds no running row either way */
    if (r->kind == OP_SUCCEED && r->text == NULL) {
        e = (journal_pack_end){.status = JOURNAL_PACK_SUCCEEDED, .attempts = r->fold_attempt,
                               .started_us = r->fold_attempt ? r->fold_started_us : 0,
                               .finished_us = r->at_us};
        journal_pack_end_set(p->ends, (size_t)i, &e);
        if (r->at_us > p->finished_us)
            p->finished_us = r->at_us;
        p->nlive--;
        pack_touch(j, p);
        *rows += 1;
        *dpending -= 1;
        *rc = SQLITE_DONE;
        return 1;
    }
    sqlite3_stmt *st = j->st[ST_PACK_MOVE];
    sqlite3_bind_int64(st, 1, (int64_t)id);
    sqlite3_bind_int64(st, 2, (int64_t)p->first);
    sqlite3_bind_int64(st, 3, i);
    int src = run(st);
    if (src != SQLITE_DONE) {
        *rc = src;
        return 1;
    }
    e = (journal_pack_end){.status = JOURNAL_PACK_MOVED};
    journal_pack_end_set(p->ends, (size_t)i, &e);
    p->nlive--;
    pack_touch(j, p);
    return 0;
}

/* Write the ends of every pack the transaction changed. */
static int pack_flush(journal *j)
{
    sqlite3_stmt *st = j->st[ST_PACK_ENDS];
    for (journal_pack *p = j->dirty; p != NULL; p = p->dirty_next) {
        sqlite3_bind_int64(st, 1, (int64_t)p->first);
        sqlite3_bind_blob(st, 2, p->ends, (int)(p->n * JOURNAL_PACK_END_BYTES), SQLITE_STATIC);
        if (p->nlive > 0)
            sqlite3_bind_int(st, 3, 1);
        else
            sqlite3_bind_null(st, 3);
        if (p->finished_us > 0)
            sqlite3_bind_int64(st, 4, (int64_t)p->finished_us);
        else
            sqlite3_bind_null(st, 4);
        int rc = run(st);
        if (rc != SQLITE_DONE)
            return rc;
    }
    return SQLITE_DONE;
}

/* After a commit: packs with nothing queued in them leave the map. */
static void pack_committed(journal *j)
{
    for (journal_pack *p = j->dirty, *next; p != NULL; p = next) {
        next = p->dirty_next;
        p->dirty = 0;
        p->dirty_next = NULL;
        if (p->nlive == 0) {
            journal_pack_map_drop(&j->packs, p);
            journal_pack_free(p);
        }
    }
    j->dirty = NULL;
}

/*
 * The map from the file: every pack with a task queued in it.  At open,
 * and after a failed transaction (its changes to the map were rolled
 * back with it).  An SQLite code; a malformed pack is SQLITE_CORRUPT.
 */
static int pack_reload(journal *j)
{
    journal_pack_map_clear(&j->packs);
    j->dirty = NULL;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(j->wdb, "SELECT first, tasks, ends FROM packs WHERE live=1", -1,
                                &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *blob = sqlite3_column_blob(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        const unsigned char *ends = sqlite3_column_blob(st, 2);
        size_t elen = (size_t)sqlite3_column_bytes(st, 2);
        size_t n = journal_pack_tasks_count(blob, len);
        journal_pack_task t[JOURNAL_PACK_MAX];
        rc = n == 0 ? SQLITE_CORRUPT : SQLITE_OK;
        for (size_t i = 0; i < n && rc == SQLITE_OK; i++)
            rc = journal_pack_tasks_get(blob, len, i, &t[i]) == 0 ? SQLITE_OK : SQLITE_CORRUPT;
        if (rc != SQLITE_OK)
            break;
        journal_pack *p = journal_pack_new(col_u64(st, 0), t, (uint32_t)n);
        p->nlive = 0;
        for (size_t i = 0; i < n && rc == SQLITE_OK; i++) {
            journal_pack_end e;
            if (journal_pack_end_get(ends, elen, n, i, &e) != 0) {
                rc = SQLITE_CORRUPT;
                break;
            }
            journal_pack_end_set(p->ends, i, &e);
            p->nlive += e.status == JOURNAL_PACK_QUEUED;
            if (e.status == JOURNAL_PACK_SUCCEEDED && e.finished_us > p->finished_us)
                p->finished_us = e.finished_us;
        }
        if (rc != SQLITE_OK || p->nlive == 0) {
            journal_pack_free(p);
            continue;
        }
        journal_pack_map_put(&j->packs, p);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/*
 * Apply r inside the open transaction.  SQLITE_DONE when applied (or when
 * it found no live task: r->status is JOURNAL_ENOTFOUND then, the batch
 * goes on), another SQLite code when the transaction must fail.  rows:
 * rows written; the pending/dead deltas are applied after the commit.
 */
static int apply(journal *j, jrec *r, size_t *rows, int64_t *dpending, int64_t *ddead)
{
    sqlite3_stmt *st;
    int rc = SQLITE_DONE;
    uint64_t first, last;
    if (r->kind == OP_ADD && packable(r, &first, &last))
        return apply_pack_add(j, r, first, last, rows, dpending);
    if (r->kind != OP_ADD && r->starts == NULL && !r->folded &&
        pack_transition(j, r, r->id, rows, dpending, &rc))
        return rc;
    switch (r->kind) {
    case OP_ADD:
        st = j->st[ST_INSERT];
        for (size_t i = 0; i < r->ntasks && rc == SQLITE_DONE; i++) {
            const jtask *t = &r->tasks[i];
            sqlite3_bind_int64(st, 1, (int64_t)t->id);
            sqlite3_bind_text(st, 2, t->name, -1, SQLITE_STATIC);
            sqlite3_bind_blob(st, 3, t->len ? t->payload : "", (int)t->len, SQLITE_STATIC);
            sqlite3_bind_int64(st, 4, t->max_attempts);
            sqlite3_bind_int64(st, 5, (int64_t)t->not_before_us);
            sqlite3_bind_int64(st, 6, (int64_t)r->at_us);
            bind_text(st, 7, t->request_id);
            sqlite3_bind_int64(st, 8, (int64_t)t->prev_id);
            sqlite3_bind_text(st, 9, t->start_attempt ? "running" : "queued", -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 10, t->start_attempt);
            if (t->start_attempt)
                sqlite3_bind_int64(st, 11, (int64_t)t->start_us);
            else
                sqlite3_bind_null(st, 11);
            rc = run(st);
        }
        if (rc == SQLITE_DONE) {
            *rows += r->ntasks;
            *dpending += (int64_t)r->ntasks;
        }
        return rc;
    case OP_START:
        if (r->starts != NULL)
            return apply_starts(j, r, rows);
        if (r->folded)
            return SQLITE_DONE;
        st = j->st[ST_START];
        sqlite3_bind_int64(st, 2, r->attempt);
        sqlite3_bind_int64(st, 3, (int64_t)r->at_us);
        break;
    case OP_UNSTART:
        if (r->folded)
            return SQLITE_DONE;
        st = j->st[ST_UNSTART];
        sqlite3_bind_int64(st, 2, r->attempt);
        break;
    case OP_SUCCEED:
        st = bind_folded(j->st[ST_SUCCEED], r);
        sqlite3_bind_int64(st, 2, (int64_t)r->at_us);
        bind_text(st, 3, r->text);
        break;
    case OP_RETRY:
        st = bind_folded(j->st[ST_RETRY], r);
        sqlite3_bind_int64(st, 2, (int64_t)r->t_us);
        bind_text(st, 3, r->text);
        break;
    case OP_FINISH:
        st = bind_folded(j->st[ST_FINISH], r);
        sqlite3_bind_int64(st, 2, (int64_t)r->at_us);
        bind_text(st, 3, r->text);
        sqlite3_bind_text(st, 4, r->state, -1, SQLITE_STATIC);
        break;
    case OP_DEAD:
    default:
        st = bind_folded(j->st[ST_DEAD_COPY], r);
        sqlite3_bind_int64(st, 2, (int64_t)r->at_us);
        bind_text(st, 3, r->text);
        break;
    }
    sqlite3_bind_int64(st, 1, (int64_t)r->id);
    rc = run(st);
    if (rc != SQLITE_DONE)
        return rc;
    if (sqlite3_changes(j->wdb) == 0) {
        r->status = JOURNAL_ENOTFOUND;
        r->msg = not_live_msg(j, r->id);
        return SQLITE_DONE;
    }
    *rows += 1;
    if (r->kind == OP_DEAD) {
        st = j->st[ST_DEAD_DEL];
        sqlite3_bind_int64(st, 1, (int64_t)r->id);
        rc = run(st);
        *rows += 1;
        *dpending -= 1;
        *ddead += 1;
    } else if (r->kind == OP_SUCCEED || r->kind == OP_FINISH) {
        *dpending -= 1;
    }
    return rc;
}

/*
 * One transaction for the n records from batch (and the id ceiling when
 * it is non-zero).  0, or the JOURNAL_E* of the failure with err set
 * (everything rolled back).
 */
static int commit_batch(journal *j, jrec *batch, size_t n, uint64_t ceiling, size_t *rows,
                        int64_t *dpending, int64_t *ddead, char *err, size_t cap)
{
    fold_starts(j, batch, n);
    int rc = run(j->st[ST_BEGIN]);
    rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    const char *doing = "cannot begin a transaction";
    jrec *r = batch;
    for (size_t i = 0; i < n && rc == SQLITE_OK; i++, r = r->next) {
        rc = apply(j, r, rows, dpending, ddead);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        doing = "cannot write a task";
    }
    if (rc == SQLITE_OK) {
        rc = pack_flush(j);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    if (rc == SQLITE_OK && ceiling != 0) {
        sqlite3_bind_int64(j->st[ST_META], 1, (int64_t)ceiling);
        rc = run(j->st[ST_META]);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        doing = "cannot write the next id";
    }
    if (rc == SQLITE_OK) {
        rc = run(j->st[ST_COMMIT]);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        doing = "cannot commit";
    }
    if (rc == SQLITE_OK) {
        pack_committed(j);
        return 0;
    }
    int jrc = sql_fail(j->wdb, rc, j->path, doing, err, cap);
    if (!sqlite3_get_autocommit(j->wdb))
        exec_sql(j->wdb, "ROLLBACK");
    /* The map had this transaction's changes: back to what is on disk.  A
     * failure here leaves packed tasks out of it; their ends then find no
     * live row (JOURNAL_ENOTFOUND) and the tasks run again after a
     * restart, as at-least-once allows. */
    if (pack_reload(j) != SQLITE_OK)
        log_msg(BGS_LOG_WARN, "journal %s: cannot read its packs again after a failed "
                "transaction: %s", j->path, sqlite3_errmsg(j->wdb));
    return jrc;
}

/* Give back to pool i the chain first..last of n records (their msg
 * freed) in one lock; those beyond pool_max[i] are freed. */
static void pool_put(journal *j, int i, jrec *first, jrec *last, unsigned n)
{
    pthread_mutex_lock(&j->pool_mu);
    if (j->npool[i] + n <= pool_max[i]) {
        last->next = j->pool[i];
        j->pool[i] = first;
        j->npool[i] += n;
        first = NULL;
    }
    pthread_mutex_unlock(&j->pool_mu);
    while (first != NULL) {
        jrec *next = first == last ? NULL : first->next;
        free(first);
        first = next;
    }
}

/* Free the records of the list r (linked by next): each block back to
 * its pool, the blocks of a pool together in one lock. */
static void jrec_free_list(journal *j, jrec *r)
{
    jrec *first[NPOOLS] = {NULL}, *last[NPOOLS] = {NULL};
    unsigned n[NPOOLS] = {0};
    while (r != NULL) {
        jrec *next = r->next;
        free(r->msg);
        if (r->pooled) {
            int i = r->pooled - 1;
            r->next = first[i];
            first[i] = r;
            if (last[i] == NULL)
                last[i] = r;
            n[i]++;
        } else {
            free(r);
        }
        r = next;
    }
    for (int i = 0; i < NPOOLS; i++)
        if (first[i] != NULL)
            pool_put(j, i, first[i], last[i], n[i]);
}

static void jrec_free(journal *j, jrec *r)
{
    r->next = NULL;
    jrec_free_list(j, r);
}

/* The rows r writes at most: an add, its tasks; a claim, its starts. */
static size_t batch_rows(const jrec *r)
{
    if (r->kind == OP_ADD)
        return r->ntasks;
    return r->starts != NULL ? r->nstarts : 1;
}

static void *writer_main(void *arg)
{
    journal *j = arg;
    char err[1024];
    pthread_mutex_lock(&j->mu);
    for (;;) {
        while (j->nwaited == 0 && !j->want_extend && !j->stopping) {
            /* Nothing anybody waits for: the oldest deferred record (the
             * list's head then, or a lazy start) sets the deadline. */
            uint64_t oldest = UINT64_MAX;
            if (j->head != NULL)
                oldest = j->head->deferred_mono_us;
            if (j->lazy_head != NULL && j->lazy_head->deferred_mono_us < oldest)
                oldest = j->lazy_head->deferred_mono_us;
            if (oldest == UINT64_MAX) {
                j->writer_idle = 1;
                pthread_cond_wait(&j->wake, &j->mu);
                j->writer_idle = 0;
                continue;
            }
            uint64_t due = oldest + j->defer_max_us;
            if (util_now_us() >= due)
                break;
            struct timespec ts = util_mono_timespec(due);
            pthread_cond_timedwait(&j->wake, &j->mu, &ts);
        }
        if (j->head == NULL && !j->want_extend && j->lazy_head == NULL)
            break; /* stopping, and everything is written */

        jrec *batch = j->head;
        jrec **end = &batch; /* the last record's next, where lazy starts go */
        size_t n = 0;
        if (j->listed_rows <= j->max_batch) {
            /* All of it, without touching the records under mu: they were
             * made on other threads, and each first touch is a cache miss
             * that every push would wait behind. */
            n = j->nlisted;
            if (n > 0)
                end = j->tail;
            j->nwaited = 0;
            j->nlisted = 0;
            j->listed_rows = 0;
            j->head = NULL;
            j->tail = &j->head;
        } else {
            jrec *last = NULL;
            size_t nrows = 0;
            for (jrec *r = batch; r != NULL; r = r->next) {
                size_t w = batch_rows(r);
                if (n > 0 && nrows + w > j->max_batch)
                    break; /* a larger record is a transaction of its own */
                last = r;
                n++;
                nrows += w;
                if (r->done != NULL)
                    j->nwaited--;
            }
            if (last != NULL) {
                j->head = last->next;
                if (j->head == NULL)
                    j->tail = &j->head;
                last->next = NULL;
                end = &last->next;
                j->nlisted -= n;
                j->listed_rows -= nrows;
            }
        }
        if (j->head == NULL && j->lazy_head != NULL) {
            /* Every record appended so far is in this batch: the lazy
             * starts go after them (after their tasks' adds). */
            *end = j->lazy_head;
            n += j->nlazy;
            j->lazy_head = NULL;
            j->lazy_tail = &j->lazy_head;
            j->nlazy = 0;
        }
        uint64_t next = atomic_load(&j->next_id);
        uint64_t ceiling = 0;
        if (j->want_extend || next + ID_BLOCK / 2 >= atomic_load(&j->ceiling))
            ceiling = next + ID_BLOCK;
        j->want_extend = 0;
        pthread_mutex_unlock(&j->mu);

        size_t rows = 0;
        int64_t dpending = 0, ddead = 0;
        uint64_t t0 = util_now_us();
        int rc = commit_batch(j, batch, n, ceiling, &rows, &dpending, &ddead, err, sizeof err);
        if (rc == 0)
            latency_add(&j->commit_hist, util_now_us() - t0);
        uint64_t now = util_wall_us();

        pthread_mutex_lock(&j->mu);
        j->unwritten -= n;
        if (rc == 0) {
            j->commits++;
            j->records += rows;
            j->last_commit_us = now;
            j->pending = (uint64_t)((int64_t)j->pending + dpending);
            j->dead = (uint64_t)((int64_t)j->dead + ddead);
            if (ceiling > atomic_load(&j->ceiling))
                atomic_store(&j->ceiling, ceiling);
        } else {
            j->failed_commits++;
            j->fail_gen++;
        }
        pthread_cond_broadcast(&j->ext);
        pthread_mutex_unlock(&j->mu);

        /* Once per episode: the first failure and the recovery. */
        if (rc != 0 && !j->failing) {
            j->failing = 1;
            j->failed_in_episode = 0;
            log_msg(BGS_LOG_ERROR, "%s (tasks cannot be made durable until this is fixed; "
                    "bgserve logs again when commits work)", err);
        } else if (rc == 0 && j->failing) {
            j->failing = 0;
            log_msg(BGS_LOG_INFO, "journal %s: commits work again after %" PRIu64
                    " failed transaction%s", j->path, j->failed_in_episode,
                    j->failed_in_episode == 1 ? "" : "s");
        }
        if (rc != 0)
            j->failed_in_episode++;

        for (jrec *r = batch; r != NULL; r = r->next) {
            if (r->done == NULL)
                continue;
            if (rc != 0)
                r->done(r->arg, rc, err);
            else if (r->status != 0)
                r->done(r->arg, r->status, r->msg);
            else
                r->done(r->arg, 0, NULL);
        }
        jrec_free_list(j, batch);
        pthread_mutex_lock(&j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* ---- the checkpointer -------------------------------------------------------------- */

/*
 * Checkpoints (copying the WAL's pages back into the file, with an fsync
 * of each) run on a thread and connection of their own, so that a commit
 * never waits for one: SQLite's automatic checkpoint would run inside the
 * commit that crosses its threshold, on the writer thread, and hold every
 * response waiting for that commit.  A passive checkpoint works beside the
 * writer; the WAL is reused from its start once one has caught up.
 */

/*
 * Writer thread, after each commit: the WAL holds `frames` pages.
 *
 * The checkpointer is asked once per CKPT_FRAMES of growth, not after
 * every commit past CKPT_FRAMES: under steady writes a passive
 * checkpoint never finds the WAL fully backfilled, so asking after each
 * commit kept it running back to back, each run paying two fdatasyncs
 * (the WAL's and the file's) for a few new frames: a quarter of the
 * server's CPU per journaled request (bench/README.md section 25).
 * Since a passive checkpoint cannot catch up with a writer that keeps
 * writing, the WAL is restarted from its start by the writer's own
 * checkpoint at CKPT_BACKSTOP, which finds at most the frames since the
 * checkpointer's last run to copy.
 */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    journal *j = arg;
    if (frames < j->ckpt_asked_at)
        j->ckpt_asked_at = 0; /* the WAL started again from its start */
    if (frames >= CKPT_BACKSTOP) {
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    } else if (frames >= j->ckpt_asked_at + CKPT_FRAMES) {
        j->ckpt_asked_at = frames;
        pthread_mutex_lock(&j->mu);
        j->ckpt_want = 1;
        pthread_cond_signal(&j->ckpt_wake);
        pthread_mutex_unlock(&j->mu);
    }
    return SQLITE_OK;
}

static void *ckpt_main(void *arg)
{
    journal *j = arg;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        while (!j->ckpt_want && !j->stopping)
            pthread_cond_wait(&j->ckpt_wake, &j->mu);
        if (j->stopping)
            break; /* the close checkpoints what is left */
        j->ckpt_want = 0;
        pthread_mutex_unlock(&j->mu);
        /* A failure (a full disk) leaves the pages in the WAL, where
         * they are durable; the commits report such faults. */
        sqlite3_wal_checkpoint_v2(j->cdb, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        pthread_mutex_lock(&j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* Before the writer starts: the checkpointer's connection, and the hook
 * that replaces SQLite's automatic checkpoint.  Without the connection
 * SQLite checkpoints in the writer's commits, as it does by itself. */
static void ckpt_prepare(journal *j)
{
    char err[512];
    if (db_connect(j->path, 0, &j->cdb, err, sizeof err) != 0)
        return;
    exec_sql(j->cdb, j->sync == JOURNAL_SYNC_FULL ? "PRAGMA synchronous=FULL"
                                                  : "PRAGMA synchronous=NORMAL");
    sqlite3_wal_hook(j->wdb, wal_hook, j);
}

/* Start the checkpointer thread; without it, back to SQLite's automatic
 * checkpoint (the call is serialized with the writer's by SQLite). */
static void ckpt_start(journal *j)
{
    if (j->cdb == NULL)
        return;
    if (pthread_create(&j->ckpt_thread, NULL, ckpt_main, j) == 0)
        j->ckpt_started = 1;
    else
        sqlite3_wal_autocheckpoint(j->wdb, CKPT_FRAMES);
}

/* ---- public API ------------------------------------------------------------------ */

static void journal_free(journal *j)
{
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(j->st[i]);
    free(j->fold);
    journal_pack_map_clear(&j->packs);
    free(j->pack_buf);
    sqlite3_close(j->cdb);
    sqlite3_close(j->wdb);
    sqlite3_close(j->rdb);
    for (size_t i = 0; i < j->nsnap; i++)
        rec_free(&j->snap[i]);
    free(j->snap);
    if (j->lock_fd >= 0)
        close(j->lock_fd); /* releases the flock */
    for (int i = 0; i < NPOOLS; i++)
        while (j->pool[i] != NULL) {
            jrec *next = j->pool[i]->next;
            free(j->pool[i]);
            j->pool[i] = next;
        }
    pthread_mutex_destroy(&j->mu);
    pthread_mutex_destroy(&j->read_mu);
    pthread_mutex_destroy(&j->pool_mu);
    pthread_cond_destroy(&j->wake);
    pthread_cond_destroy(&j->ext);
    pthread_cond_destroy(&j->ckpt_wake);
    free(j->path);
    free(j);
}

int journal_open(const journal_config *cfg, journal **out, char *err, size_t cap)
{
    if (cfg == NULL || cfg->path == NULL || cfg->path[0] == '\0' || out == NULL) {
        snprintf(err, cap, "journal: no file given; give --journal FILE");
        return JOURNAL_EINVAL;
    }
    journal *j = xcalloc(1, sizeof *j);
    j->path = xstrdup(cfg->path);
    j->sync = cfg->sync;
    j->max_batch = cfg->max_batch ? cfg->max_batch : DEFAULT_MAX_BATCH;
    j->defer_max_us = cfg->defer_max_us ? cfg->defer_max_us : DEFAULT_DEFER_MAX_US;
    j->lock_fd = -1;
    j->tail = &j->head;
    j->lazy_tail = &j->lazy_head;
    pthread_mutex_init(&j->mu, NULL);
    pthread_mutex_init(&j->read_mu, NULL);
    pthread_mutex_init(&j->pool_mu, NULL);
    util_cond_init_mono(&j->wake);
    pthread_cond_init(&j->ext, NULL);
    pthread_cond_init(&j->ckpt_wake, NULL);

    struct stat sb;
    int rc;
    if (stat(j->path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        snprintf(err, cap, "journal %s: it is not a regular file; give --journal a file path "
                 "(bgserve creates it)", j->path);
        rc = JOURNAL_EACCESS;
        goto fail;
    }
    rc = check_dir(j, err, cap);
    if (rc == 0)
        rc = take_lock(j, err, cap);
    if (rc == 0)
        rc = db_connect(j->path, 1, &j->wdb, err, cap);
    if (rc == 0)
        rc = check_file(j, err, cap);
    if (rc == 0)
        rc = load_state(j, err, cap);
    if (rc == 0)
        rc = db_connect(j->path, 0, &j->rdb, err, cap);
    if (rc != 0)
        goto fail;
    ckpt_prepare(j);
    ckpt_start(j); /* before the writer: until it runs, wdb is this thread's */
    if (pthread_create(&j->thread, NULL, writer_main, j) != 0) {
        snprintf(err, cap, "journal %s: cannot start its writer thread: %s", j->path,
                 strerror(errno));
        journal_close(j); /* stops the checkpointer */
        return JOURNAL_EIO;
    }
    j->thread_started = 1;
    *out = j;
    return 0;
fail:
    journal_free(j);
    return rc;
}

void journal_close(journal *j)
{
    if (j == NULL)
        return;
    pthread_mutex_lock(&j->mu);
    j->stopping = 1;
    pthread_cond_broadcast(&j->wake);
    pthread_cond_broadcast(&j->ext);
    pthread_cond_broadcast(&j->ckpt_wake);
    pthread_mutex_unlock(&j->mu);
    if (j->ckpt_started)
        pthread_join(j->ckpt_thread, NULL);
    if (j->thread_started)
        pthread_join(j->thread, NULL);
    journal_free(j);
}

uint64_t journal_next_id(journal *j)
{
    uint64_t id = atomic_fetch_add(&j->next_id, 1);
    if (id + ID_BLOCK / 2 < atomic_load(&j->ceiling))
        return id;
    pthread_mutex_lock(&j->mu);
    j->want_extend = 1;
    pthread_cond_signal(&j->wake);
    /* Past the committed ceiling: wait for the writer to move it (or to
     * fail, when the append that follows fails as well). */
    uint64_t gen = j->fail_gen;
    while (id >= atomic_load(&j->ceiling) && j->fail_gen == gen && !j->stopping)
        pthread_cond_wait(&j->ext, &j->mu);
    pthread_mutex_unlock(&j->mu);
    return id;
}

/*
 * r, a later record of its task (an end, a retry, an unstart), is being
 * appended: the task's lazy start that no batch has taken yet (there is
 * one at most: its holder appends it, then this) moves into r, which then
 * writes the row once (queued -> final: ST_SUCCEED & co. with ?5, ?6).
 * An unstart just drops it: the row is queued, attempts as they were.
 * mu held.
 */

static void take_lazy_locked(journal *j, jrec *r)
{
    jrec **pp = &j->lazy_head, *lz;
    while ((lz = *pp) != NULL && lz->id != r->id)
        pp = &lz->next;
    if (lz == NULL)
        return;
    *pp = lz->next;
    if (*pp == NULL)
        j->lazy_tail = pp;
    j->nlazy--;
    j->unwritten--;
    if (r->kind == OP_UNSTART) {
        r->folded = 1; /* nothing to undo */
    } else {
        r->fold_attempt = lz->attempt;
        r->fold_started_us = lz->at_us;
    }
    jrec_free(j, lz);
}

/* Queue r for the writer, or (lazy) aside as a lazy start
 * (journal_start_lazy); JOURNAL_ECLOSED (r freed) after close began. */
static int push_as(journal *j, jrec *r, int lazy)
{
    r->at_us = util_wall_us();
    if (r->done == NULL)
        r->deferred_mono_us = util_now_us();
    pthread_mutex_lock(&j->mu);
    if (j->stopping) {
        pthread_mutex_unlock(&j->mu);
        jrec_free(j, r);
        return JOURNAL_ECLOSED;
    }
    j->unwritten++;
    if (lazy) {
        *j->lazy_tail = r;
        j->lazy_tail = &r->next;
        j->nlazy++;
        if (j->writer_idle) /* so that it waits defer_max_us at most */
            pthread_cond_signal(&j->wake);
    } else {
        if (j->lazy_head != NULL && r->kind != OP_ADD && r->kind != OP_START)
            take_lazy_locked(j, r);
        *j->tail = r;
        j->tail = &r->next;
        j->nlisted++;
        j->listed_rows += batch_rows(r);
        if (r->done != NULL) {
            j->nwaited++;
            pthread_cond_signal(&j->wake);
        } else if (j->writer_idle) { /* deferred: defer_max_us at most */
            pthread_cond_signal(&j->wake);
        }
    }
    pthread_mutex_unlock(&j->mu);
    return 0;
}

static int push(journal *j, jrec *r)
{
    return push_as(j, r, 0);
}

/* A record with room for extra bytes of tasks, starts and strings. */
static jrec *rec_new(journal *j, op_kind kind, uint64_t id, journal_done_fn done, void *arg,
                     size_t extra)
{
    jrec *r = NULL;
    size_t size = sizeof *r + extra;
    int pooled = 0;
    for (int i = 0; i < NPOOLS && !pooled; i++) {
        if (size > pool_block[i])
            continue;
        pthread_mutex_lock(&j->pool_mu);
        if ((r = j->pool[i]) != NULL) {
            j->pool[i] = r->next;
            j->npool[i]--;
        }
        pthread_mutex_unlock(&j->pool_mu);
        size = pool_block[i];
        pooled = i + 1;
    }
    if (r == NULL)
        r = xmalloc(size);
    memset(r, 0, sizeof *r);
    r->pooled = pooled;
    r->cap = size - sizeof *r;
    r->kind = kind;
    r->id = id;
    r->done = done;
    r->arg = arg;
    return r;
}

/* The room n bytes take in a record: rounded up to 8, so that what
 * follows them stays aligned. */
static size_t room(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* n bytes of r's room (rec_new made room for them all). */
static void *rec_take(jrec *r, size_t n)
{
    void *p = (char *)r->buf + r->used;
    r->used += room(n);
    return p;
}

/* The room string s takes, with its NUL. */
static size_t str_room(const char *s)
{
    return s ? room(strlen(s) + 1) : 0;
}

static char *rec_str(jrec *r, const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    return memcpy(rec_take(r, n), s, n);
}

int journal_add(journal *j, const journal_task *tasks, size_t n, journal_done_fn done,
                void *arg)
{
    if (j == NULL || (tasks == NULL && n > 0) || n == 0)
        return JOURNAL_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (tasks[i].name == NULL || tasks[i].id == 0 ||
            (tasks[i].payload == NULL && tasks[i].payload_len > 0) ||
            tasks[i].payload_len > (size_t)INT32_MAX)
            return JOURNAL_EINVAL;
    size_t extra = n * sizeof(jtask);
    for (size_t i = 0; i < n; i++)
        extra += str_room(tasks[i].name) + room(tasks[i].payload_len) +
                 str_room(tasks[i].request_id);
    jrec *r = rec_new(j, OP_ADD, 0, done, arg, extra);
    r->tasks = rec_take(r, n * sizeof *r->tasks);
    memset(r->tasks, 0, n * sizeof *r->tasks);
    r->ntasks = n;
    for (size_t i = 0; i < n; i++) {
        jtask *t = &r->tasks[i];
        t->id = tasks[i].id;
        t->name = rec_str(r, tasks[i].name);
        t->len = tasks[i].payload_len;
        t->payload = t->len ? memcpy(rec_take(r, t->len), tasks[i].payload, t->len) : NULL;
        t->max_attempts = tasks[i].max_attempts;
        t->not_before_us = tasks[i].not_before_us;
        t->request_id = rec_str(r, tasks[i].request_id);
        t->prev_id = tasks[i].prev_id;
    }
    return push(j, r);
}

int journal_start(journal *j, uint64_t id, uint32_t attempt, journal_done_fn done, void *arg)
{
    if (j == NULL || id == 0)
        return JOURNAL_EINVAL;
    jrec *r = rec_new(j, OP_START, id, done, arg, 0);
    r->attempt = attempt;
    return push(j, r);
}

int journal_start_lazy(journal *j, uint64_t id, uint32_t attempt)
{
    if (j == NULL || id == 0 || attempt == 0)
        return JOURNAL_EINVAL;
    jrec *r = rec_new(j, OP_START, id, NULL, NULL, 0);
    r->attempt = attempt;
    return push_as(j, r, 1);
}

int journal_start_many(journal *j, const journal_started *starts, size_t n,
                       journal_done_fn done, void *arg)
{
    if (j == NULL || starts == NULL || n == 0)
        return JOURNAL_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (starts[i].id == 0)
            return JOURNAL_EINVAL;
    jrec *r = rec_new(j, OP_START, 0, done, arg, n * sizeof *starts);
    r->starts = memcpy(rec_take(r, n * sizeof *starts), starts, n * sizeof *starts);
    r->nstarts = n;
    return push(j, r);
}

int journal_unstart(journal *j, uint64_t id, uint32_t attempts, journal_done_fn done,
                    void *arg)
{
    if (j == NULL || id == 0)
        return JOURNAL_EINVAL;
    jrec *r = rec_new(j, OP_UNSTART, id, done, arg, 0);
    r->attempt = attempts;
    return push(j, r);
}

int journal_succeed(journal *j, uint64_t id, const char *result, journal_done_fn done,
                    void *arg)
{
    if (j == NULL || id == 0)
        return JOURNAL_EINVAL;
    jrec *r = rec_new(j, OP_SUCCEED, id, done, arg, str_room(result));
    r->text = rec_str(r, result);
    return push(j, r);
}

int journal_retry(journal *j, uint64_t id, uint64_t not_before_us, const char *error,
                  journal_done_fn done, void *arg)
{
    if (j == NULL || id == 0)
        return JOURNAL_EINVAL;
    jrec *r = rec_new(j, OP_RETRY, id, done, arg, str_room(error));
    r->t_us = not_before_us;
    r->text = rec_str(r, error);
    return push(j, r);
}

int journal_finish(journal *j, uint64_t id, const char *state, const char *error,
                   journal_done_fn done, void *arg)
{
    if (j == NULL || id == 0 || state == NULL || strcmp(state, "queued") == 0 ||
        strcmp(state, "running") == 0 || strcmp(state, "succeeded") == 0 ||
        strcmp(state, "dead") == 0)
        return JOURNAL_EINVAL;
    jrec *r = rec_new(j, OP_FINISH, id, done, arg, str_room(state) + str_room(error));
    r->state = rec_str(r, state);
    r->text = rec_str(r, error);
    return push(j, r);
}

int journal_dead(journal *j, uint64_t id, const char *error, journal_done_fn done, void *arg)
{
    if (j == NULL || id == 0)
        return JOURNAL_EINVAL;
    jrec *r = rec_new(j, OP_DEAD, id, done, arg, str_room(error));
    r->text = rec_str(r, error);
    return push(j, r);
}

size_t journal_replay(journal *j, void (*fn)(void *arg, const journal_rec *rec), void *arg)
{
    pthread_mutex_lock(&j->mu);
    journal_rec *snap = j->snap;
    size_t n = j->nsnap;
    j->snap = NULL;
    j->nsnap = 0;
    pthread_mutex_unlock(&j->mu);
    for (size_t i = 0; i < n; i++) {
        fn(arg, &snap[i]);
        rec_free(&snap[i]);
    }
    free(snap);
    return n;
}

int journal_lookup(journal *j, uint64_t id, void (*fn)(void *arg, const journal_rec *rec),
                   void *arg)
{
    int rc = SQLITE_OK;
    long n;
    pthread_mutex_lock(&j->read_mu);
    n = each_row(j->rdb, Q_TASK_BY_ID, id, fn, arg, &rc);
    if (n == 0 && rc == SQLITE_OK)
        n = each_row(j->rdb, "SELECT " COLS " FROM dead WHERE id=?1", id, fn, arg, &rc);
    pthread_mutex_unlock(&j->read_mu);
    if (rc != SQLITE_OK)
        return JOURNAL_EIO;
    return n > 0 ? 0 : JOURNAL_ENOTFOUND;
}

void journal_get_stats(journal *j, journal_stats *out)
{
    memset(out, 0, sizeof *out);
    out->file = j->path;
    pthread_mutex_lock(&j->mu);
    out->pending = j->pending;
    out->dead = j->dead;
    out->unwritten = j->unwritten;
    out->commits = j->commits;
    out->records = j->records;
    out->failed_commits = j->failed_commits;
    out->last_commit_us = j->last_commit_us;
    pthread_mutex_unlock(&j->mu);
    out->mean_batch = out->commits ? (double)out->records / (double)out->commits : 0.0;
    out->commit_p50_us = latency_percentile(&j->commit_hist, 50);
    out->commit_p99_us = latency_percentile(&j->commit_hist, 99);
}

/* ------------------------------------------------------------------ */
/* Offline access                                                      */
/* ------------------------------------------------------------------ */

struct journal_db {
    sqlite3 *db;
    char *path;
};

int journal_db_open(const char *path, journal_db **out, char *err, size_t cap)
{
    struct stat sb;
    if (path == NULL || stat(path, &sb) != 0) {
        snprintf(err, cap, "journal %s: %s; give the FILE a server wrote with --journal FILE",
                 path ? path : "(none)", path ? strerror(errno) : "no file given");
        return JOURNAL_ENOTFOUND;
    }
    if (!S_ISREG(sb.st_mode)) {
        snprintf(err, cap, "journal %s: it is not a regular file; give the FILE a server "
                 "wrote with --journal FILE", path);
        return JOURNAL_EINVAL;
    }
    sqlite3 *db = NULL;
    int rc = db_connect(path, 0, &db, err, cap);
    if (rc != 0)
        return rc;
    journal_db *d = xcalloc(1, sizeof *d);
    d->db = db;
    d->path = xstrdup(path);
    *out = d;
    return 0;
}

void journal_db_close(journal_db *db)
{
    if (db == NULL)
        return;
    sqlite3_close(db->db);
    free(db->path);
    free(db);
}

long journal_db_each(journal_db *db, const char *state,
                     void (*fn)(void *arg, const journal_rec *rec), void *arg, char *err,
                     size_t cap)
{
    int rc = SQLITE_OK;
    long n = 0;
    if (state == NULL) {
        n = each_row(db->db, TASKS_AND_PACKS("", "", "", PK(3) " IS NOT NULL") " ORDER BY 1", 0,
                     fn, arg, &rc);
        if (rc == SQLITE_OK)
            n += each_row(db->db, "SELECT " COLS " FROM dead ORDER BY id", 0, fn, arg, &rc);
    } else if (strcmp(state, "dead") == 0) {
        n = each_row(db->db, "SELECT " COLS " FROM dead ORDER BY id", 0, fn, arg, &rc);
    } else {
        sqlite3_stmt *st = NULL;
        /* the live states through the partial index, the others by a scan */
        int live = strcmp(state, "queued") == 0 || strcmp(state, "running") == 0;
        rc = sqlite3_prepare_v2(db->db,
                                live ? TASKS_AND_PACKS("", " WHERE live=1 AND state=?1", "",
                                                       "p.live=1 AND " PK(3) "=?1") " ORDER BY 1"
                                     : TASKS_AND_PACKS("", " WHERE state=?1", "", PK(3) "=?1")
                                           " ORDER BY 1",
                                -1, &st, NULL);
        if (rc == SQLITE_OK)
            sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
        while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            journal_rec r;
            row_rec(st, &r);
            fn(arg, &r);
            n++;
            rc = SQLITE_OK;
        }
        sqlite3_finalize(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    if (rc != SQLITE_OK)
        return sql_fail(db->db, rc, db->path, "cannot read its tasks", err, cap);
    return n;
}

int journal_db_get(journal_db *db, uint64_t id, void (*fn)(void *arg, const journal_rec *rec),
                   void *arg, char *err, size_t cap)
{
    int rc = SQLITE_OK;
    long n = each_row(db->db, Q_TASK_BY_ID, id, fn, arg, &rc);
    if (n == 0 && rc == SQLITE_OK)
        n = each_row(db->db, "SELECT " COLS " FROM dead WHERE id=?1", id, fn, arg, &rc);
    if (rc != SQLITE_OK)
        return sql_fail(db->db, rc, db->path, "cannot read the task", err, cap);
    if (n == 0) {
        snprintf(err, cap, "journal %s: no task %" PRIu64 " (see `bgserve journal %s ls`)",
                 db->path, id, db->path);
        return JOURNAL_ENOTFOUND;
    }
    return 0;
}

static void get_state(void *arg, const journal_rec *r)
{
    snprintf(arg, 32, "%s", r->state);
}

int journal_db_retry(journal_db *db, uint64_t id, char *err, size_t cap)
{
    char state[32] = "";
    int rc = exec_sql(db->db, "BEGIN IMMEDIATE");
    if (rc != SQLITE_OK)
        return sql_fail(db->db, rc, db->path, "cannot begin a transaction", err, cap);
    int jrc = journal_db_get(db, id, get_state, state, err, cap);
    if (jrc != 0)
        goto out;
    if (strcmp(state, "queued") == 0 || strcmp(state, "running") == 0 ||
        strcmp(state, "succeeded") == 0) {
        snprintf(err, cap, "journal %s: task %" PRIu64 " is %s; only dead or failed tasks can "
                 "be retried", db->path, id, state);
        jrc = JOURNAL_EINVAL;
        goto out;
    }
    char sql[512];
    if (strcmp(state, "dead") == 0)
        snprintf(sql, sizeof sql,
                 "INSERT OR REPLACE INTO tasks (" COLS ",live) SELECT id,name,payload,'queued',"
                 "0,max_attempts,0,created,NULL,NULL,last_error,request_id,NULL,1 FROM dead "
                 "WHERE id=%" PRIu64 "; DELETE FROM dead WHERE id=%" PRIu64,
                 id, id);
    else
        snprintf(sql, sizeof sql,
                 "UPDATE tasks SET state='queued', attempts=0, not_before=0, started=NULL, "
                 "finished=NULL, prev=0, live=1 WHERE id=%" PRIu64, id);
    rc = exec_sql(db->db, sql);
    if (rc == SQLITE_OK)
        rc = exec_sql(db->db, "COMMIT");
    if (rc != SQLITE_OK)
        jrc = sql_fail(db->db, rc, db->path, "cannot queue the task again", err, cap);
out:
    if (!sqlite3_get_autocommit(db->db))
        exec_sql(db->db, "ROLLBACK");
    return jrc;
}

int journal_db_purge(journal_db *db, uint64_t before_us, uint64_t *removed, char *err,
                     size_t cap)
{
    char sql[512];
    int rc = exec_sql(db->db, "BEGIN IMMEDIATE");
    uint64_t n = 0;
    snprintf(sql, sizeof sql, "DELETE FROM tasks WHERE NOT " LIVE " AND coalesce(finished,0) < %"
             PRIu64, before_us);
    if (rc == SQLITE_OK)
        rc = exec_sql(db->db, sql);
    if (rc == SQLITE_OK)
        n += (uint64_t)sqlite3_changes(db->db);
    /* a pack goes when nothing in it is queued and its last success is
     * older (its moved tasks are rows of tasks, above) */
    int64_t packed = 0;
    snprintf(sql, sizeof sql, PACK_K "SELECT count(*)" PACK_FROM " WHERE p.live IS NULL AND "
             "coalesce(p.finished,0) < %" PRIu64 " AND " PK(3) "='succeeded'", before_us);
    if (rc == SQLITE_OK)
        rc = query_int(db->db, sql, &packed);
    snprintf(sql, sizeof sql, "DELETE FROM packs WHERE live IS NULL AND coalesce(finished,0) < %"
             PRIu64, before_us);
    if (rc == SQLITE_OK)
        rc = exec_sql(db->db, sql);
    if (rc == SQLITE_OK)
        n += (uint64_t)packed;
    snprintf(sql, sizeof sql, "DELETE FROM dead WHERE coalesce(finished,0) < %" PRIu64,
             before_us);
    if (rc == SQLITE_OK)
        rc = exec_sql(db->db, sql);
    if (rc == SQLITE_OK)
        n += (uint64_t)sqlite3_changes(db->db);
    if (rc == SQLITE_OK)
        rc = exec_sql(db->db, "COMMIT");
    if (rc != SQLITE_OK) {
        int jrc = sql_fail(db->db, rc, db->path, "cannot purge", err, cap);
        if (!sqlite3_get_autocommit(db->db))
            exec_sql(db->db, "ROLLBACK");
        return jrc;
    }
    *removed = n;
    return 0;
}
