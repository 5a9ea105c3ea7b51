/*
 * test_journal.c - the durable task journal (journal.c) in process:
 * group commit across threads, callbacks in append order, replay after a
 * reopen and after a SIGKILL in the middle of a batch, ids that never
 * repeat, dead letters, and each fault (corrupt file, newer schema, not
 * writable, locked by another owner, disk full at open and while
 * writing, by RLIMIT_FSIZE and on a small tmpfs).  Each test works in its
 * own temporary directory; tests that kill a process, limit file sizes or
 * mount a file system do it in a forked child.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"
#include "journal.h"
#include "journal_sandbox.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* journal_open expected to fail with want; returns the message. */
static char *open_fails(const char *path, int want)
{
    journal_config cfg = {.path = path, .sync = JOURNAL_SYNC_NORMAL};
    journal *j = NULL;
    char err[1024] = "";
    int rc = journal_open(&cfg, &j, err, sizeof err);
    if (rc != want)
        fprintf(stderr, "journal_open: %d (%s), wanted %d\n", rc, err, want);
    assert_int_equal(rc, want);
    assert_null(j);
    return strdup(err);
}

/* Add one task named name with payload text; returns its id. */
static uint64_t add_one(journal *j, const char *name, const char *payload,
                        journal_done_fn done, void *arg)
{
    journal_task t = {.id = journal_next_id(j), .name = name, .payload = payload,
                      .payload_len = payload ? strlen(payload) : 0, .max_attempts = 3,
                      .request_id = "req-1"};
    assert_int_equal(journal_add(j, &t, 1, done, arg), 0);
    return t.id;
}

/* ---- replay records -------------------------------------------------------------- */

typedef struct seen {
    size_t n;
    journal_rec recs[64];
    char names[64][32];
    char payloads[64][64];
    char errors[64][64];
} seen;

static void collect(void *arg, const journal_rec *r)
{
    seen *s = arg;
    if (s->n >= 64)
        return;
    s->recs[s->n] = *r;
    snprintf(s->names[s->n], 32, "%s", r->name);
    snprintf(s->payloads[s->n], 64, "%.*s", (int)r->payload_len, (const char *)r->payload);
    snprintf(s->errors[s->n], 64, "%s", r->last_error ? r->last_error : "");
    s->recs[s->n].name = s->names[s->n];
    s->recs[s->n].payload = s->payloads[s->n];
    s->recs[s->n].last_error = s->errors[s->n];
    s->recs[s->n].state = r->interrupted ? "running" : "queued";
    s->n++;
}

static void collect_state(void *arg, const journal_rec *r)
{
    char *state = arg;
    snprintf(state, 96, "%s|%s|%u", r->state, r->last_error ? r->last_error : "",
             r->attempts);
}

/* Poll (20 s at most) until task id reads want ("state|error|attempts"),
 * for what the writer commits by itself. */
static void wait_state(journal *j, uint64_t id, const char *want)
{
    char st[96] = "";
    for (uint64_t deadline = util_now_us() + 20000000; util_now_us() < deadline;) {
        assert_int_equal(journal_lookup(j, id, collect_state, st), 0);
        if (strcmp(st, want) == 0)
            break;
        usleep(1000);
    }
    assert_string_equal(st, want);
}

/* ---- tests ----------------------------------------------------------------------- */

static void journal_replays_queued_tasks_after_reopen(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    done_count c = DONE_COUNT_INIT;
    uint64_t a = add_one(j, "send_mail", "to=ann", count_done, &c);
    uint64_t b = add_one(j, "resize", "img=7", count_done, &c);
    uint64_t e = add_one(j, "empty", NULL, count_done, &c);
    journal_close(j);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.failed, 0);

    j = js_open_ok(sb->path);
    seen s = {0};
    assert_int_equal(journal_replay(j, collect, &s), 3);
    assert_int_equal(s.recs[0].id, a);
    assert_string_equal(s.names[0], "send_mail");
    assert_string_equal(s.payloads[0], "to=ann");
    assert_int_equal(s.recs[0].max_attempts, 3);
    assert_int_equal(s.recs[0].attempts, 0);
    assert_int_equal(s.recs[0].interrupted, 0);
    assert_int_equal(s.recs[1].id, b);
    assert_int_equal(s.recs[2].id, e);
    assert_int_equal(s.recs[2].payload_len, 0);
    /* the snapshot is handed out once */
    assert_int_equal(journal_replay(j, collect, &s), 0);
    journal_stats st;
    journal_get_stats(j, &st);
    assert_int_equal(st.pending, 3);
    assert_string_equal(st.file, sb->path);
    journal_close(j);
}

/* A task's sequence link (prev_id) comes back with the replay. */
static void journal_replay_keeps_the_sequence_link(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    journal_task t[2] = {
        {.id = journal_next_id(j), .name = "first", .max_attempts = 1},
        {.id = journal_next_id(j), .name = "second", .max_attempts = 1},
    };
    t[1].prev_id = t[0].id;
    assert_int_equal(journal_add(j, t, 2, NULL, NULL), 0);
    journal_close(j);

    j = js_open_ok(sb->path);
    seen s = {0};
    assert_int_equal(journal_replay(j, collect, &s), 2);
    assert_int_equal(s.recs[0].prev_id, 0);
    assert_int_equal(s.recs[1].prev_id, t[0].id);
    journal_close(j);
}

/* The schema of version 2 as bgserve wrote it (version 1: without
 * tasks.prev), with four tasks: 1 queued, 2 running, 3 succeeded, 4 a
 * dead letter.  The upgrade tests start from these files. */
static void make_old_journal(const char *path, int version)
{
    char sql[2048];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL;"
             "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
             "CREATE TABLE tasks (id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
             " payload BLOB NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
             " max_attempts INTEGER NOT NULL, not_before INTEGER NOT NULL DEFAULT 0,"
             " created INTEGER NOT NULL, started INTEGER, finished INTEGER, last_error TEXT,"
             " request_id TEXT, result TEXT%s);"
             "CREATE INDEX tasks_state ON tasks(state);"
             "CREATE TABLE dead (id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
             " payload BLOB NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,"
             " max_attempts INTEGER NOT NULL, not_before INTEGER NOT NULL,"
             " created INTEGER NOT NULL, started INTEGER, finished INTEGER, last_error TEXT,"
             " request_id TEXT, result TEXT);"
             "INSERT INTO meta VALUES ('next_id', 5), ('schema_version', %d);"
             "INSERT INTO tasks (id,name,payload,state,attempts,max_attempts,created) VALUES"
             " (1,'old_queued',x'7131','queued',0,3,1000),"
             " (2,'old_running',x'7232','running',1,3,1000),"
             " (3,'old_done',x'',  'succeeded',1,3,1000);"
             "INSERT INTO dead VALUES (4,'old_dead',x'',  'dead',3,3,0,1000,2000,3000,"
             " 'boom',NULL,NULL);",
             version >= 2 ? ", prev INTEGER NOT NULL DEFAULT 0" : "", version);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    if (version >= 3) /* what version 3 had: tasks.live and its partial index */
        assert_int_equal(sqlite3_exec(db, "ALTER TABLE tasks ADD COLUMN live INTEGER;"
                                          "UPDATE tasks SET live=1 WHERE state IN ('queued',"
                                          "'running');"
                                          "DROP INDEX tasks_state;"
                                          "CREATE INDEX tasks_live ON tasks(live) WHERE live "
                                          "IS NOT NULL;",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
    sqlite3_close(db);
}

/* One integer from sql on a plain connection to path (-1: no row). */
static long long sql_int(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    long long v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static int schema_version(const char *path)
{
    return (int)sql_int(path, "SELECT value FROM meta WHERE key='schema_version'");
}

/* After an upgrade to version 4: tasks.live marks exactly the queued and
 * running tasks, the index on state is gone and the partial one is there
 * (version 3), and the packs table is there (version 4). */
static void assert_schema_current(const char *path)
{
    assert_int_equal(schema_version(path), 4);
    assert_int_equal(sql_int(path, "SELECT count(*) FROM sqlite_master WHERE "
                                   "name IN ('packs','packs_live')"), 2);
    assert_int_equal(sql_int(path, "SELECT count(*) FROM sqlite_master WHERE "
                                   "name='tasks_state'"), 0);
    assert_int_equal(sql_int(path, "SELECT count(*) FROM sqlite_master WHERE "
                                   "name='tasks_live'"), 1);
    assert_int_equal(sql_int(path, "SELECT count(*) FROM tasks WHERE (coalesce(live,0)=1) "
                                   "<> (state IN ('queued','running'))"), 0);
    assert_int_equal(sql_int(path, "SELECT count(*) FROM tasks WHERE live IS NOT NULL AND "
                                   "live<>1"), 0);
}

static void wait_count(done_count *c, int want);

/* A journal of schema version 1, 2 or 3 is brought up to version 4 when a
 * server or the subcommand opens it; its queued and running tasks replay
 * as before (the running one as interrupted), the finished ones and the
 * dead letter stay, ids go on after them, and the upgraded file works
 * as a new one: a replayed task finishes, a new one is added, and the
 * next reopen replays exactly the live ones. */
static void check_upgrade(const char *path, int version)
{
    make_old_journal(path, version);
    journal_db *d = NULL;
    char err[1024];
    assert_int_equal(journal_db_open(path, &d, err, sizeof err), 0);
    journal_db_close(d);
    assert_schema_current(path);

    unlink(path);
    char side[300];
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
    make_old_journal(path, version);
    journal *j = js_open_ok(path);
    assert_schema_current(path);
    seen s = {0};
    assert_int_equal(journal_replay(j, collect, &s), 2);
    assert_int_equal(s.recs[0].id, 1);
    assert_string_equal(s.names[0], "old_queued");
    assert_string_equal(s.payloads[0], "q1");
    assert_int_equal(s.recs[0].interrupted, 0);
    assert_int_equal(s.recs[0].prev_id, 0);
    assert_int_equal(s.recs[1].id, 2);
    assert_int_equal(s.recs[1].interrupted, 1);
    assert_int_equal(s.recs[1].attempts, 1);
    journal_stats st;
    journal_get_stats(j, &st);
    assert_int_equal(st.pending, 2);
    assert_int_equal(st.dead, 1);
    char state[96] = "";
    assert_int_equal(journal_lookup(j, 3, collect_state, state), 0);
    assert_string_equal(state, "succeeded||1");
    assert_int_equal(journal_lookup(j, 4, collect_state, state), 0);
    assert_string_equal(state, "dead|boom|3");

    done_count c = DONE_COUNT_INIT;
    assert_int_equal(journal_start(j, 1, 1, count_done, &c), 0);
    assert_int_equal(journal_succeed(j, 1, NULL, count_done, &c), 0);
    uint64_t b = add_one(j, "new", "v3", count_done, &c);
    assert_true(b >= 5);
    wait_count(&c, 3);
    assert_int_equal(c.failed, 0);
    journal_close(j);
    assert_schema_current(path);

    j = js_open_ok(path);
    s.n = 0;
    assert_int_equal(journal_replay(j, collect, &s), 2);
    assert_int_equal(s.recs[0].id, 2);
    assert_int_equal(s.recs[1].id, b);
    journal_close(j);
}

static void journal_upgrades_schema_version_3(void **state)
{
    sandbox *sb = *state;
    check_upgrade(sb->path, 3);
}

static void journal_upgrades_schema_version_2(void **state)
{
    sandbox *sb = *state;
    check_upgrade(sb->path, 2);
}

static void journal_upgrades_schema_version_1(void **state)
{
    sandbox *sb = *state;
    check_upgrade(sb->path, 1);
}

static void journal_replay_keeps_retries_and_interrupted_runs(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    done_count c = DONE_COUNT_INIT;
    uint64_t run = add_one(j, "t_run", "r", NULL, NULL);
    uint64_t retry = add_one(j, "t_retry", "q", NULL, NULL);
    uint64_t ok = add_one(j, "t_ok", "o", NULL, NULL);
    uint64_t failed = add_one(j, "t_failed", "f", NULL, NULL);
    uint64_t later = util_wall_us() + 3600ull * 1000000ull;
    assert_int_equal(journal_start(j, run, 2, count_done, &c), 0);
    assert_int_equal(journal_start(j, retry, 1, count_done, &c), 0);
    assert_int_equal(journal_retry(j, retry, later, "timeout after 5 s", count_done, &c), 0);
    assert_int_equal(journal_start(j, ok, 1, count_done, &c), 0);
    assert_int_equal(journal_succeed(j, ok, "{\"ok\":true}", count_done, &c), 0);
    assert_int_equal(journal_start(j, failed, 1, count_done, &c), 0);
    assert_int_equal(journal_finish(j, failed, "failed", "boom", count_done, &c), 0);
    journal_close(j);
    assert_int_equal(c.n, 7);
    assert_int_equal(c.failed, 0);

    j = js_open_ok(sb->path);
    seen s = {0};
    assert_int_equal(journal_replay(j, collect, &s), 2);
    assert_int_equal(s.recs[0].id, run);
    assert_int_equal(s.recs[0].interrupted, 1);
    assert_int_equal(s.recs[0].attempts, 2); /* its next run is attempt 3 */
    assert_int_equal(s.recs[1].id, retry);
    assert_int_equal(s.recs[1].interrupted, 0);
    assert_int_equal(s.recs[1].attempts, 1);
    assert_int_equal(s.recs[1].not_before_us, later);
    assert_string_equal(s.errors[1], "timeout after 5 s");

    char st[96] = "";
    assert_int_equal(journal_lookup(j, ok, collect_state, st), 0);
    assert_string_equal(st, "succeeded||1");
    assert_int_equal(journal_lookup(j, failed, collect_state, st), 0);
    assert_string_equal(st, "failed|boom|1");
    assert_int_equal(journal_lookup(j, 999999, collect_state, st), JOURNAL_ENOTFOUND);
    journal_stats jst;
    journal_get_stats(j, &jst);
    assert_int_equal(jst.pending, 2);
    journal_close(j);
}

static void journal_dead_letters_keep_the_last_error(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    done_count c = DONE_COUNT_INIT;
    uint64_t id = add_one(j, "flaky", "x", NULL, NULL);
    assert_int_equal(journal_start(j, id, 3, NULL, NULL), 0);
    assert_int_equal(journal_dead(j, id, "3 attempts: connection refused", count_done, &c), 0);
    /* a transition of a task that is no longer live is refused, alone */
    done_count late = DONE_COUNT_INIT;
    assert_int_equal(journal_succeed(j, id, NULL, count_done, &late), 0);
    journal_close(j);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.failed, 0);
    assert_int_equal(late.n, 1);
    assert_int_equal(late.last_status, JOURNAL_ENOTFOUND);
    h_assert_contains(late.last_msg, "is not queued or running");

    j = js_open_ok(sb->path);
    seen s = {0};
    assert_int_equal(journal_replay(j, collect, &s), 0);
    char st[96] = "";
    assert_int_equal(journal_lookup(j, id, collect_state, st), 0);
    assert_string_equal(st, "dead|3 attempts: connection refused|3");
    journal_stats jst;
    journal_get_stats(j, &jst);
    assert_int_equal(jst.dead, 1);
    assert_int_equal(jst.pending, 0);
    journal_close(j);
}

/* ---- callbacks in order, group commit ---------------------------------------------- */

typedef struct order {
    pthread_mutex_t mu;
    int next;      /* the sequence number the next callback must carry */
    int bad;
} order;

typedef struct order_arg {
    order *o;
    int seq;
} order_arg;

static void order_done(void *arg, int status, const char *msg)
{
    (void)msg;
    order_arg *a = arg;
    pthread_mutex_lock(&a->o->mu);
    if (a->seq != a->o->next || status != 0)
        a->o->bad++;
    a->o->next++;
    pthread_mutex_unlock(&a->o->mu);
}

static void journal_callbacks_run_in_append_order(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    enum { N = 2000 };
    order o = {.mu = PTHREAD_MUTEX_INITIALIZER};
    order_arg *args = calloc(N, sizeof *args);
    for (int i = 0; i < N; i++) {
        args[i] = (order_arg){&o, i};
        if (i % 3 == 0) {
            add_one(j, "t", "p", order_done, &args[i]);
        } else {
            uint64_t id = add_one(j, "t", "p", NULL, NULL);
            assert_int_equal(journal_start(j, id, 1, order_done, &args[i]), 0);
        }
    }
    journal_close(j);
    assert_int_equal(o.next, N);
    assert_int_equal(o.bad, 0);
    free(args);
}

static void wait_count(done_count *c, int want)
{
    for (uint64_t deadline = util_now_us() + 20000000; util_now_us() < deadline;) {
        if (count_now(c, NULL) >= want)
            break;
        usleep(1000);
    }
    assert_int_equal(count_now(c, NULL), want);
}

typedef struct producer {
    journal *j;
    js_gate *g;
    done_count *c;
    int n;
} producer;

static void *produce(void *arg)
{
    producer *p = arg;
    for (int i = 0; i < p->n; i++) {
        journal_task t = {.id = journal_next_id(p->j), .name = "batch", .payload = "b",
                          .payload_len = 1, .max_attempts = 1};
        if (journal_add(p->j, &t, 1, count_done, p->c) != 0)
            return (void *)1;
        js_gate_append(p->g, 1);
    }
    return NULL;
}

/* journal_open with at most max_batch rows a transaction. */
static journal *open_batch(const char *path, unsigned max_batch)
{
    journal_config cfg = {.path = path, .sync = JOURNAL_SYNC_NORMAL, .max_batch = max_batch};
    journal *j = NULL;
    char err[1024] = "";
    assert_int_equal(journal_open(&cfg, &j, err, sizeof err), 0);
    return j;
}

static void journal_group_commit_batches_many_threads(void **state)
{
    sandbox *sb = *state;
    enum { THREADS = 4, EACH = 200 };
    journal *j = open_batch(sb->path, THREADS * EACH);
    js_gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER,
              .want = THREADS * EACH};
    done_count c = DONE_COUNT_INIT;
    js_hold_writer(j, &g);

    pthread_t th[THREADS];
    producer p[THREADS];
    for (int i = 0; i < THREADS; i++) {
        p[i] = (producer){j, &g, &c, EACH};
        assert_int_equal(pthread_create(&th[i], NULL, produce, &p[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        void *res;
        pthread_join(th[i], &res);
        assert_null(res);
    }
    /* all of them in the one transaction after the held one */
    wait_count(&c, THREADS * EACH);
    journal_stats st;
    journal_get_stats(j, &st);
    assert_int_equal(st.commits, 2);
    assert_int_equal(st.records, THREADS * EACH + 1);
    journal_close(j);
    assert_int_equal(c.n, THREADS * EACH);
    assert_int_equal(c.failed, 0);

    j = js_open_ok(sb->path);
    journal_get_stats(j, &st);
    assert_int_equal(st.pending, THREADS * EACH + 1);
    journal_close(j);
}

typedef struct file_size_wait {
    const char *path;
    off_t at_least;
} file_size_wait;

static int file_reached(void *arg)
{
    file_size_wait *w = arg;
    struct stat st;
    return stat(w->path, &st) == 0 && st.st_size >= w->at_least;
}

/* The WAL is checkpointed while the journal is open (by the journal's
 * checkpointer thread, not inside a commit): once 16 MiB of tasks are
 * committed, the main file holds their pages before any close. */
static void journal_checkpoints_while_open(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    enum { N = 2000, SIZE = 8192 };
    char *big = malloc(SIZE);
    assert_non_null(big);
    memset(big, 'x', SIZE);
    done_count d = DONE_COUNT_INIT;
    for (int i = 0; i < N; i++) {
        journal_task t = {.id = journal_next_id(j), .name = "big", .payload = big,
                          .payload_len = SIZE, .max_attempts = 1};
        assert_int_equal(journal_add(j, &t, 1, count_done, &d), 0);
    }
    wait_count(&d, N);
    assert_int_equal(d.failed, 0);
    file_size_wait w = {.path = sb->path, .at_least = (off_t)N * SIZE / 2};
    assert_true(h_poll(file_reached, &w, 20000));
    journal_close(j);
    free(big);
}

/* Several starts as one record: one commit, one completion; a task in
 * it that is not live is named (JOURNAL_ENOTFOUND) and the others are
 * started all the same.  An unstart puts a running task back to queued
 * with its attempts as they were; on a task that is not running it
 * changes nothing and says so. */
static void journal_start_many_and_unstart(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    uint64_t a = add_one(j, "t_a", "a", NULL, NULL);
    uint64_t b = add_one(j, "t_b", "b", NULL, NULL);
    done_count d = DONE_COUNT_INIT;
    uint64_t c = add_one(j, "t_c", "c", count_done, &d);
    wait_count(&d, 1); /* the adds are committed: they are not counted below */
    journal_started two[] = {{.id = a, .attempt = 1}, {.id = b, .attempt = 1}};
    journal_stats s0, s1;
    journal_get_stats(j, &s0);
    assert_int_equal(journal_start_many(j, two, 2, count_done, &d), 0);
    wait_count(&d, 2);
    assert_int_equal(d.last_status, 0);
    journal_get_stats(j, &s1);
    assert_int_equal(s1.records - s0.records, 2);
    char st[96] = "";
    assert_int_equal(journal_lookup(j, a, collect_state, st), 0);
    assert_string_equal(st, "running||1");
    assert_int_equal(journal_lookup(j, b, collect_state, st), 0);
    assert_string_equal(st, "running||1");

    /* c was finished: not live; a is started again (attempt 2) */
    assert_int_equal(journal_finish(j, c, "cancelled", "stop", NULL, NULL), 0);
    journal_started gone[] = {{.id = c, .attempt = 1}, {.id = a, .attempt = 2}};
    assert_int_equal(journal_start_many(j, gone, 2, count_done, &d), 0);
    wait_count(&d, 3);
    assert_int_equal(d.last_status, JOURNAL_ENOTFOUND);
    char want[128];
    snprintf(want, sizeof want, "task %" PRIu64 " is not queued or running", c);
    h_assert_contains(d.last_msg, want);
    assert_int_equal(journal_lookup(j, a, collect_state, st), 0);
    assert_string_equal(st, "running||2");

    assert_int_equal(journal_unstart(j, a, 1, count_done, &d), 0);
    assert_int_equal(journal_unstart(j, c, 0, count_done, &d), 0);
    wait_count(&d, 5);
    assert_int_equal(d.last_status, JOURNAL_ENOTFOUND);
    assert_int_equal(journal_lookup(j, a, collect_state, st), 0);
    assert_string_equal(st, "queued||1");
    assert_int_equal(journal_lookup(j, c, collect_state, st), 0);
    assert_string_equal(st, "cancelled|stop|0");

    assert_int_equal(journal_start_many(j, two, 0, NULL, NULL), JOURNAL_EINVAL);
    assert_int_equal(journal_start_many(j, NULL, 1, NULL, NULL), JOURNAL_EINVAL);
    journal_started zero[] = {{.id = 0, .attempt = 1}};
    assert_int_equal(journal_start_many(j, zero, 1, NULL, NULL), JOURNAL_EINVAL);
    assert_int_equal(journal_unstart(j, 0, 0, NULL, NULL), JOURNAL_EINVAL);
    journal_close(j);
}


/* Add n tasks as one record (their completion counted in c). */
static uint64_t add_n(journal *j, size_t n, done_count *c)
{
    journal_task t[32];
    assert_true(n <= 32);
    for (size_t i = 0; i < n; i++)
        t[i] = (journal_task){.id = journal_next_id(j), .name = "n", .max_attempts = 1};
    assert_int_equal(journal_add(j, t, n, count_done, c), 0);
    return t[0].id;
}

/* A transaction writes at most max_batch rows: records are taken in
 * order while they fit, and one larger than that is a transaction of
 * its own (an add counts its tasks, several starts count each). */
static void journal_batches_are_bounded_by_rows(void **state)
{
    sandbox *sb = *state;
    journal *j = open_batch(sb->path, 8);
    js_gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .want = 1};
    js_hold_writer(j, &g);
    journal_stats s0, s1;
    journal_get_stats(j, &s0);
    done_count c = DONE_COUNT_INIT;
    uint64_t first = add_n(j, 3, &c); /* transaction 1: 3 + 3 rows */
    add_n(j, 3, &c);
    add_n(j, 3, &c);                  /* transaction 2: 3 + 1 */
    add_n(j, 1, &c);
    add_n(j, 20, &c);                 /* transaction 3: 20, alone */
    journal_started two[] = {{.id = first, .attempt = 1}, {.id = first + 1, .attempt = 1}};
    assert_int_equal(journal_start_many(j, two, 2, count_done, &c), 0); /* 4: 2 */
    js_gate_append(&g, 1);
    wait_count(&c, 6);
    assert_int_equal(c.failed, 0);
    journal_get_stats(j, &s1);
    assert_int_equal(s1.commits - s0.commits, 4);
    assert_int_equal(s1.records - s0.records, 3 + 3 + 3 + 1 + 20 + 2);
    journal_close(j);
}

static void get_started(void *arg, const journal_rec *r)
{
    *(uint64_t *)arg = r->started_us;
}

/* A start that reaches the writer in the same batch as its task's add is
 * folded into the add: the row is inserted as running, with its attempt
 * and start time, and no row of its own is written.  A start of a task
 * added in an earlier batch, an unstart after a folded start and a
 * second start of the same task are written as their own rows, in
 * order.  After a reopen the running ones replay as interrupted. */
static void journal_folds_a_start_into_its_add(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    done_count c = DONE_COUNT_INIT;
    uint64_t old = add_one(j, "old", "o", count_done, &c);
    wait_count(&c, 1);
    js_gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .want = 1};
    js_hold_writer(j, &g);
    journal_stats s0, s1;
    journal_get_stats(j, &s0);

    uint64_t a = add_one(j, "a", "pa", count_done, &c);
    uint64_t b = add_one(j, "b", "pb", count_done, &c);
    uint64_t d = add_one(j, "d", "pd", count_done, &c);
    journal_started two[] = {{.id = a, .attempt = 1}, {.id = old, .attempt = 1}};
    assert_int_equal(journal_start_many(j, two, 2, count_done, &c), 0);
    assert_int_equal(journal_start(j, b, 1, count_done, &c), 0);
    assert_int_equal(journal_unstart(j, b, 0, count_done, &c), 0);
    assert_int_equal(journal_start(j, d, 1, count_done, &c), 0);
    assert_int_equal(journal_start(j, d, 2, count_done, &c), 0);
    js_gate_append(&g, 1);
    wait_count(&c, 1 + 8);
    assert_int_equal(c.failed, 0);

    journal_get_stats(j, &s1);
    assert_int_equal(s1.commits - s0.commits, 1);
    /* three inserts, old's start, b's unstart, d's second start */
    assert_int_equal(s1.records - s0.records, 6);
    char st[96] = "";
    assert_int_equal(journal_lookup(j, a, collect_state, st), 0);
    assert_string_equal(st, "running||1");
    uint64_t started = 0;
    assert_int_equal(journal_lookup(j, a, get_started, &started), 0);
    assert_true(started > 0);
    assert_int_equal(journal_lookup(j, old, collect_state, st), 0);
    assert_string_equal(st, "running||1");
    assert_int_equal(journal_lookup(j, b, collect_state, st), 0);
    assert_string_equal(st, "queued||0");
    assert_int_equal(journal_lookup(j, d, collect_state, st), 0);
    assert_string_equal(st, "running||2");
    journal_close(j);

    j = js_open_ok(sb->path);
    seen s = {0};
    assert_int_equal(journal_replay(j, collect, &s), 5); /* with js_hold_writer's task */
    uint64_t want_ids[] = {old, a, b, d};
    int want_interrupted[] = {1, 1, 0, 1};
    for (size_t i = 0; i < 4; i++) {
        size_t k = 0;
        while (k < s.n && s.recs[k].id != want_ids[i])
            k++;
        assert_true(k < s.n);
        assert_int_equal(s.recs[k].interrupted, want_interrupted[i]);
    }
    journal_close(j);
}

static void get_times(void *arg, const journal_rec *r)
{
    uint64_t *t = arg;
    t[0] = r->started_us;
    t[1] = r->finished_us;
}

/* A lazy start is written with the writer's next batch, after every record
 * appended before it, or moves into its task's end, retry or unstart when
 * that comes first: with the writer held, a success, a retry and a dead
 * letter each write the row once (with the attempt and the start time),
 * an unstart writes nothing, a lazy start behind its task's add is folded
 * into the insert, and one with nothing after it is written alone. */
static void journal_lazy_starts_fold_into_their_end(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    done_count c = DONE_COUNT_INIT;
    uint64_t ok = add_one(j, "ok", "o", count_done, &c);
    uint64_t again = add_one(j, "again", "r", count_done, &c);
    uint64_t dead = add_one(j, "dead", "x", count_done, &c);
    uint64_t back = add_one(j, "back", "b", count_done, &c);
    uint64_t alone = add_one(j, "alone", "l", count_done, &c);
    wait_count(&c, 5);
    js_gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .want = 1};
    js_hold_writer(j, &g);
    journal_stats s0, s1;
    journal_get_stats(j, &s0);

    assert_int_equal(journal_start_lazy(j, ok, 1), 0);
    assert_int_equal(journal_succeed(j, ok, "fine", count_done, &c), 0);
    assert_int_equal(journal_start_lazy(j, again, 1), 0);
    assert_int_equal(journal_retry(j, again, 42, "later", count_done, &c), 0);
    assert_int_equal(journal_start_lazy(j, dead, 3), 0);
    assert_int_equal(journal_dead(j, dead, "gave up", count_done, &c), 0);
    assert_int_equal(journal_start_lazy(j, back, 1), 0);
    assert_int_equal(journal_unstart(j, back, 0, count_done, &c), 0);
    uint64_t fresh = add_one(j, "fresh", "n", count_done, &c);
    assert_int_equal(journal_start_lazy(j, fresh, 1), 0);
    assert_int_equal(journal_start_lazy(j, alone, 2), 0);
    journal_stats mid;
    journal_get_stats(j, &mid);
    assert_int_equal(mid.unwritten, 7); /* 5 records and 2 lazy starts */
    js_gate_append(&g, 1);
    wait_count(&c, 5 + 5);
    assert_int_equal(c.failed, 0);
    for (uint64_t deadline = util_now_us() + 20000000; util_now_us() < deadline;) {
        journal_get_stats(j, &s1);
        if (s1.unwritten == 0)
            break;
        usleep(1000);
    }
    assert_int_equal(s1.unwritten, 0);
    /* ok, again: 1 each; dead: 2 (its copy, its removal); back: none;
     * fresh: its insert, as running; alone: its start */
    assert_int_equal(s1.records - s0.records, 1 + 1 + 2 + 0 + 1 + 1);
    assert_int_equal(s1.commits - s0.commits, 1);

    char st[96] = "";
    uint64_t t[2] = {0, 0};
    assert_int_equal(journal_lookup(j, ok, collect_state, st), 0);
    assert_string_equal(st, "succeeded||1");
    assert_int_equal(journal_lookup(j, ok, get_times, t), 0);
    assert_true(t[0] > 0 && t[1] >= t[0]);
    assert_int_equal(journal_lookup(j, again, collect_state, st), 0);
    assert_string_equal(st, "queued|later|1");
    assert_int_equal(journal_lookup(j, again, get_times, t), 0);
    assert_true(t[0] > 0);
    assert_int_equal(journal_lookup(j, dead, collect_state, st), 0);
    assert_string_equal(st, "dead|gave up|3");
    assert_int_equal(journal_lookup(j, back, collect_state, st), 0);
    assert_string_equal(st, "queued||0");
    assert_int_equal(journal_lookup(j, fresh, collect_state, st), 0);
    assert_string_equal(st, "running||1");
    assert_int_equal(journal_lookup(j, alone, collect_state, st), 0);
    assert_string_equal(st, "running||2");

    /* nothing else to write: the writer commits it by itself, soon */
    uint64_t late = add_one(j, "late", "z", count_done, &c);
    wait_count(&c, 11);
    assert_int_equal(journal_start_lazy(j, late, 1), 0);
    wait_state(j, late, "running||1");

    assert_int_equal(journal_start_lazy(j, 0, 1), JOURNAL_EINVAL);
    assert_int_equal(journal_start_lazy(j, late, 0), JOURNAL_EINVAL);
    assert_int_equal(journal_start_lazy(NULL, late, 1), JOURNAL_EINVAL);
    journal_close(j);
}

/* An add of several tasks writes each with its own fields: an add of
 * five (with a payload left empty and a request id left out) replays
 * every task as given, in order. */
static void journal_an_add_of_five_writes_each_task(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    journal_task t[5];
    char names[5][16], payloads[5][16], rids[5][16];
    for (int i = 0; i < 5; i++) {
        snprintf(names[i], sizeof names[i], "task%d", i);
        snprintf(payloads[i], sizeof payloads[i], "payload-%d", i * 11);
        snprintf(rids[i], sizeof rids[i], "req-%d", i);
        t[i] = (journal_task){.id = journal_next_id(j), .name = names[i],
                              .payload = i == 2 ? NULL : payloads[i],
                              .payload_len = i == 2 ? 0 : strlen(payloads[i]),
                              .max_attempts = (uint32_t)(i + 1),
                              .request_id = i == 3 ? NULL : rids[i],
                              .prev_id = i ? t[i - 1].id : 0};
    }
    done_count c = DONE_COUNT_INIT;
    assert_int_equal(journal_add(j, t, 5, count_done, &c), 0);
    wait_count(&c, 1);
    assert_int_equal(c.failed, 0);
    journal_close(j);

    j = js_open_ok(sb->path);
    seen s = {0};
    assert_int_equal(journal_replay(j, collect, &s), 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(s.recs[i].id, t[i].id);
        assert_string_equal(s.names[i], names[i]);
        assert_string_equal(s.payloads[i], i == 2 ? "" : payloads[i]);
        assert_int_equal(s.recs[i].max_attempts, i + 1);
        assert_int_equal(s.recs[i].prev_id, t[i].prev_id);
        assert_int_equal(s.recs[i].attempts, 0);
        assert_string_equal(s.recs[i].state, "queued");
    }
    char st[96] = "";
    assert_int_equal(journal_lookup(j, t[3].id, collect_state, st), 0);
    assert_string_equal(st, "queued||0");
    journal_close(j);
}

/* An end given no callback waits for a transaction that a waited-for
 * record starts: with a deferral longer than the test, it stays
 * unwritten until the next add, and both share that add's commit. */
static void journal_an_end_nobody_waits_for_rides_with_the_next_add(void **state)
{
    sandbox *sb = *state;
    journal_config cfg = {.path = sb->path, .defer_max_us = 600u * 1000000u};
    journal *j = NULL;
    char err[1024] = "";
    assert_int_equal(journal_open(&cfg, &j, err, sizeof err), 0);
    done_count c = DONE_COUNT_INIT;
    uint64_t a = add_one(j, "a", "pa", count_done, &c);
    wait_count(&c, 1);
    journal_stats s0, s1;
    journal_get_stats(j, &s0);
    assert_int_equal(journal_start_lazy(j, a, 1), 0);
    assert_int_equal(journal_succeed(j, a, "ok", NULL, NULL), 0);
    journal_get_stats(j, &s1);
    assert_int_equal(s1.unwritten, 1); /* the end, with the start in it */
    assert_int_equal(s1.commits, s0.commits);
    char st[96] = "";
    assert_int_equal(journal_lookup(j, a, collect_state, st), 0);
    assert_string_equal(st, "queued||0");

    uint64_t b = add_one(j, "b", "pb", count_done, &c);
    wait_count(&c, 2);
    journal_get_stats(j, &s1);
    assert_int_equal(s1.commits - s0.commits, 1);
    assert_int_equal(s1.records - s0.records, 2);
    assert_int_equal(s1.unwritten, 0);
    assert_int_equal(journal_lookup(j, a, collect_state, st), 0);
    assert_string_equal(st, "succeeded||1");
    assert_int_equal(journal_lookup(j, b, collect_state, st), 0);
    assert_string_equal(st, "queued||0");

    /* closing writes what is deferred */
    assert_int_equal(journal_retry(j, b, 42, "later", NULL, NULL), 0);
    journal_close(j);
    j = js_open_ok(sb->path);
    assert_int_equal(journal_lookup(j, b, collect_state, st), 0);
    assert_string_equal(st, "queued|later|0");
    journal_close(j);
}

/* With nothing waited for to come, the writer commits a deferred end
 * by itself (after 5 ms by default). */
static void journal_a_lone_end_is_committed_by_itself(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    done_count c = DONE_COUNT_INIT;
    uint64_t a = add_one(j, "a", "pa", count_done, &c);
    wait_count(&c, 1);
    assert_int_equal(journal_finish(j, a, "cancelled", "stopped", NULL, NULL), 0);
    wait_state(j, a, "cancelled|stopped|0");
    journal_stats s;
    journal_get_stats(j, &s);
    assert_int_equal(s.unwritten, 0);
    journal_close(j);
}

static void journal_stats_count_commits_and_batches(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    js_gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .want = 10};
    js_hold_writer(j, &g);
    done_count c = DONE_COUNT_INIT;
    for (int i = 0; i < 10; i++) {
        add_one(j, "t", "p", count_done, &c);
        js_gate_append(&g, 1);
    }
    /* the ten share the second commit */
    wait_count(&c, 10);
    journal_stats st;
    journal_get_stats(j, &st);
    assert_int_equal(st.commits, 2);
    assert_int_equal(st.records, 11);
    assert_true(st.mean_batch == 5.5);
    assert_int_equal(st.unwritten, 0);
    assert_int_equal(st.failed_commits, 0);
    assert_true(st.last_commit_us > 0);
    /* each commit's time is counted: percentiles of two values */
    assert_true(st.commit_p50_us > 0);
    assert_true(st.commit_p99_us >= st.commit_p50_us);
    journal_close(j);
}

/* ---- ids ---------------------------------------------------------------------------- */

/* In a child: take n ids (committing one task every 1000), write the
 * last id to fd, then die by SIGKILL without closing. */
static void ids_child(const char *path, int fd, int n)
{
    journal_config cfg = {.path = path};
    journal *j = NULL;
    char err[1024];
    if (journal_open(&cfg, &j, err, sizeof err) != 0)
        _exit(3);
    uint64_t id = 0;
    for (int i = 0; i < n; i++) {
        id = journal_next_id(j);
        if (i % 1000 == 0) {
            journal_task t = {.id = id, .name = "n", .max_attempts = 1};
            journal_add(j, &t, 1, NULL, NULL);
        }
    }
    if (write(fd, &id, sizeof id) != sizeof id)
        _exit(4);
    kill(getpid(), SIGKILL);
    _exit(5);
}

static void journal_ids_never_repeat(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    uint64_t a = journal_next_id(j), b = journal_next_id(j);
    assert_true(b > a);
    journal_close(j); /* no task was ever added with a or b */

    j = js_open_ok(sb->path);
    uint64_t c = journal_next_id(j);
    assert_true(c > b);
    journal_close(j);

    /* a killed process that went past several id blocks */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        ids_child(sb->path, fds[1], 10000);
    }
    close(fds[1]);
    uint64_t last = 0;
    assert_int_equal(read(fds[0], &last, sizeof last), (ssize_t)sizeof last);
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_true(last >= c + 10000);

    j = js_open_ok(sb->path);
    uint64_t d = journal_next_id(j);
    assert_true(d > last);
    journal_close(j);
}

/* ---- SIGKILL in the middle of a batch ------------------------------------------------ */

typedef struct kill_arg {
    int fd;
    uint64_t ids[8];
} kill_arg;

static void report_durable(void *arg, int status, const char *msg)
{
    (void)msg;
    kill_arg *k = arg;
    if (status == 0 && write(k->fd, k->ids, sizeof k->ids) != (ssize_t)sizeof k->ids)
        _exit(6);
    free(k);
}

/* In a child: add tasks in groups of 8 forever; each group's ids go to fd
 * once its commit is done. */
static void kill_child(const char *path, int fd)
{
    journal_config cfg = {.path = path};
    journal *j = NULL;
    char err[1024];
    if (journal_open(&cfg, &j, err, sizeof err) != 0)
        _exit(3);
    for (;;) {
        kill_arg *k = calloc(1, sizeof *k);
        journal_task t[8];
        k->fd = fd;
        for (int i = 0; i < 8; i++) {
            k->ids[i] = journal_next_id(j);
            t[i] = (journal_task){.id = k->ids[i], .name = "k", .payload = "payload",
                                  .payload_len = 7, .max_attempts = 2};
        }
        if (journal_add(j, t, 8, report_durable, k) != 0)
            _exit(4);
    }
}

typedef struct idset {
    uint64_t *ids;
    size_t n, cap;
} idset;

static void idset_add(void *arg, const journal_rec *r)
{
    idset *s = arg;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1024;
        s->ids = realloc(s->ids, s->cap * sizeof *s->ids);
    }
    s->ids[s->n++] = r->id;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void journal_sigkill_mid_batch_loses_nothing_durable(void **state)
{
    sandbox *sb = *state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        kill_child(sb->path, fds[1]);
    }
    close(fds[1]);
    size_t cap = 1 << 16, n = 0;
    uint64_t *durable = malloc(cap * sizeof *durable);
    int killed = 0;
    for (;;) {
        uint64_t buf[8];
        ssize_t got = read(fds[0], buf, sizeof buf);
        if (got <= 0)
            break;
        assert_int_equal(got, (ssize_t)sizeof buf); /* pipe writes of 64 bytes are atomic */
        if (n + 8 > cap) {
            cap *= 2;
            durable = realloc(durable, cap * sizeof *durable);
        }
        memcpy(durable + n, buf, sizeof buf);
        n += 8;
        if (!killed && n >= 4000) {
            kill(pid, SIGKILL); /* the writer is mid-batch: the adds never stop */
            killed = 1;
        }
    }
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    journal *j = js_open_ok(sb->path);
    idset s = {0};
    journal_replay(j, idset_add, &s);
    journal_close(j);
    qsort(s.ids, s.n, sizeof *s.ids, cmp_u64);
    assert_true(s.n >= n);
    size_t missing = 0;
    for (size_t i = 0; i < n; i++)
        if (bsearch(&durable[i], s.ids, s.n, sizeof *s.ids, cmp_u64) == NULL)
            missing++;
    assert_int_equal(missing, 0);
    free(s.ids);
    free(durable);
}

/* ---- faults at open ------------------------------------------------------------------ */

static void journal_refuses_a_corrupt_file(void **state)
{
    sandbox *sb = *state;
    FILE *f = fopen(sb->path, "w");
    assert_non_null(f);
    for (int i = 0; i < 200; i++)
        fputs("this is not an sqlite database at all\n", f);
    fclose(f);
    char *msg = open_fails(sb->path, JOURNAL_ECORRUPT);
    h_assert_contains(msg, sb->path);
    h_assert_contains(msg, "corrupt or not an SQLite database");
    h_assert_contains(msg, "move it aside");
    free(msg);
}

static void journal_refuses_an_other_sqlite_database(void **state)
{
    sandbox *sb = *state;
    sqlite3 *db;
    assert_int_equal(sqlite3_open(sb->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE notes (x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    char *msg = open_fails(sb->path, JOURNAL_ECORRUPT);
    h_assert_contains(msg, "not a bgserve journal");
    free(msg);
}

static void journal_refuses_a_newer_schema(void **state)
{
    sandbox *sb = *state;
    journal_close(js_open_ok(sb->path));
    sqlite3 *db;
    assert_int_equal(sqlite3_open(sb->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE meta SET value=99 WHERE key='schema_version'",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    char *msg = open_fails(sb->path, JOURNAL_ESCHEMA);
    h_assert_contains(msg, "schema version 99");
    h_assert_contains(msg, "knows versions up to 4");
    free(msg);
    /* the offline tools refuse it the same way */
    journal_db *d = NULL;
    char err[1024];
    assert_int_equal(journal_db_open(sb->path, &d, err, sizeof err), JOURNAL_ESCHEMA);
}

static void journal_refuses_a_path_it_cannot_create(void **state)
{
    sandbox *sb = *state;
    char path[256];
    snprintf(path, sizeof path, "%s/no/such/dir/tasks.db", sb->dir);
    char *msg = open_fails(path, JOURNAL_EACCESS);
    h_assert_contains(msg, path);
    h_assert_contains(msg, "No such file or directory");
    h_assert_contains(msg, "mkdir -p");
    free(msg);
    msg = open_fails(sb->dir, JOURNAL_EACCESS);
    h_assert_contains(msg, "not a regular file");
    free(msg);
    /* a file where the path needs a directory */
    char file[192];
    snprintf(file, sizeof file, "%s/plain", sb->dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(path, sizeof path, "%s/tasks.db", file);
    msg = open_fails(path, JOURNAL_EACCESS);
    h_assert_contains(msg, "is not a directory");
    h_assert_contains(msg, "give --journal a path in a directory");
    free(msg);
}

/* journal_open(path) in a child that is not root (it gives up root
 * first: root may write anywhere) must fail with JOURNAL_EACCESS; its
 * message into msg. */
static void open_unprivileged_refused(const char *path, char *msg, size_t cap)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        if (getuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
            _exit(3);
        journal_config cfg = {.path = path};
        journal *j = NULL;
        char err[1024] = "";
        int rc = journal_open(&cfg, &j, err, sizeof err);
        if (write(fds[1], err, strlen(err)) < 0)
            _exit(4);
        _exit(rc == JOURNAL_EACCESS ? 0 : 10 + (rc < 0 ? -rc : rc));
    }
    close(fds[1]);
    ssize_t got = read(fds[0], msg, cap - 1);
    msg[got > 0 ? got : 0] = '\0';
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fprintf(stderr, "child status %d, message: %s\n", status, msg);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* A directory the journal cannot create files in: refused before SQLite
 * is asked, saying how to fix it.  As root the open runs in a child that
 * gives up root first (root may write anywhere). */
static void journal_refuses_a_directory_it_cannot_write(void **state)
{
    sandbox *sb = *state;
    char dir[128], path[192];
    snprintf(dir, sizeof dir, "%s/ro", sb->dir);
    snprintf(path, sizeof path, "%s/tasks.db", dir);
    assert_int_equal(mkdir(dir, 0555), 0);
    assert_int_equal(chmod(sb->dir, 0755), 0);
    char msg[1024];
    open_unprivileged_refused(path, msg, sizeof msg);
    h_assert_contains(msg, "cannot create files in its directory");
    h_assert_contains(msg, "Permission denied");
    h_assert_contains(msg, "chmod u+wx");
    assert_int_equal(access(path, F_OK), -1); /* nothing was created */
}

/* A read-only journal: as root the check runs in a child that gives up
 * root first (root may write anything). */
static void journal_refuses_a_file_it_cannot_write(void **state)
{
    sandbox *sb = *state;
    journal_close(js_open_ok(sb->path));
    assert_int_equal(chmod(sb->dir, 0777), 0);
    char lock[160];
    snprintf(lock, sizeof lock, "%s-lock", sb->path);
    assert_int_equal(chmod(sb->path, 0444), 0);
    assert_int_equal(chmod(lock, 0666), 0);
    char msg[1024];
    open_unprivileged_refused(sb->path, msg, sizeof msg);
    h_assert_contains(msg, sb->path);
    h_assert_contains(msg, "cannot be");
    h_assert_contains(msg, "writable");
}

static void journal_refuses_a_second_owner_but_not_the_tools(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    uint64_t id = add_one(j, "held", "h", NULL, NULL);
    char *msg = open_fails(sb->path, JOURNAL_ELOCKED);
    char pid[32];
    snprintf(pid, sizeof pid, "(pid %ld)", (long)getpid());
    h_assert_contains(msg, pid);
    h_assert_contains(msg, "another bgserve");
    h_assert_contains(msg, "stop that server");
    free(msg);

    /* the offline connection reads a live journal once the add is durable */
    journal_close(j);
    j = js_open_ok(sb->path);
    journal_db *d = NULL;
    char err[1024];
    assert_int_equal(journal_db_open(sb->path, &d, err, sizeof err), 0);
    char st[96] = "";
    assert_int_equal(journal_db_get(d, id, collect_state, st, err, sizeof err), 0);
    assert_string_equal(st, "queued||0");
    journal_db_close(d);
    journal_close(j);
    /* the lock goes with the owner */
    journal_close(js_open_ok(sb->path));
}

/* ---- packs: an add of several tasks in one row ------------------------------------------ */

/* Add n tasks as one record (one request id): names p0, p1, ..., payloads
 * "v0", "v1", ...; the ids go to ids[]. */
static void add_pack(journal *j, size_t n, uint64_t *ids, journal_done_fn done, void *arg)
{
    journal_task t[8];
    char names[8][8], pays[8][8];
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "p%zu", i);
        snprintf(pays[i], sizeof pays[i], "v%zu", i);
        t[i] = (journal_task){.id = journal_next_id(j), .name = names[i], .payload = pays[i],
                              .payload_len = strlen(pays[i]), .max_attempts = 3,
                              .not_before_us = 0, .request_id = "req-pack"};
        ids[i] = t[i].id;
    }
    if (n > 1)
        t[1].prev_id = t[0].id;
    assert_int_equal(journal_add(j, t, n, done, arg), 0);
}

static void copy_request_id(void *arg, const journal_rec *r)
{
    snprintf(arg, 32, "%s", r->request_id ? r->request_id : "(null)");
}

static void collect_all(void *arg, const journal_rec *r)
{
    seen *s = arg;
    if (s->n >= 64)
        return;
    collect(arg, r);
    s->recs[s->n - 1].state = NULL; /* collect's replay view; keep the real one below */
    snprintf(s->errors[s->n - 1], 64, "%s", r->state);
}

/* An add of several tasks is one row of packs and none of tasks; each
 * task reads as before through every reader: lookup, replay (with its
 * name, payload and sequence link), the subcommand's ls and get; a
 * success updates the pack; pending counts the tasks still queued. */
static void journal_packs_an_add_of_several_tasks(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    done_count c = DONE_COUNT_INIT;
    uint64_t id[4];
    add_pack(j, 4, id, count_done, &c);
    wait_count(&c, 1);
    assert_int_equal(c.failed, 0);
    assert_int_equal(sql_int(sb->path, "SELECT count(*) FROM packs"), 1);
    assert_int_equal(sql_int(sb->path, "SELECT count(*) FROM tasks"), 0);
    char st[96];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(journal_lookup(j, id[i], collect_state, st), 0);
        assert_string_equal(st, "queued||0");
    }
    assert_int_equal(journal_succeed(j, id[0], NULL, count_done, &c), 0);
    assert_int_equal(journal_succeed(j, id[2], NULL, count_done, &c), 0);
    wait_count(&c, 3);
    assert_int_equal(c.failed, 0);
    assert_string_equal((journal_lookup(j, id[0], collect_state, st), st), "succeeded||0");
    assert_string_equal((journal_lookup(j, id[1], collect_state, st), st), "queued||0");
    journal_stats jst;
    journal_get_stats(j, &jst);
    assert_int_equal(jst.pending, 2);
    journal_close(j);

    j = js_open_ok(sb->path);
    journal_get_stats(j, &jst);
    assert_int_equal(jst.pending, 2);
    seen s = {0};
    assert_int_equal(journal_replay(j, collect, &s), 2);
    assert_int_equal(s.recs[0].id, id[1]);
    assert_string_equal(s.names[0], "p1");
    assert_string_equal(s.payloads[0], "v1");
    assert_int_equal(s.recs[0].prev_id, id[0]);
    assert_int_equal(s.recs[0].max_attempts, 3);
    char rid[32] = "";
    assert_int_equal(journal_lookup(j, id[1], copy_request_id, rid), 0);
    assert_string_equal(rid, "req-pack");
    assert_int_equal(s.recs[1].id, id[3]);
    assert_string_equal(s.payloads[1], "v3");
    /* new ids go on after the pack's */
    assert_true(journal_next_id(j) > id[3]);
    journal_close(j);

    journal_db *d = NULL;
    char err[1024];
    assert_int_equal(journal_db_open(sb->path, &d, err, sizeof err), 0);
    s.n = 0;
    assert_int_equal(journal_db_each(d, NULL, collect_all, &s, err, sizeof err), 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(s.recs[i].id, id[i]);
    assert_string_equal(s.errors[0], "succeeded");
    assert_string_equal(s.errors[1], "queued");
    s.n = 0;
    assert_int_equal(journal_db_each(d, "queued", collect_all, &s, err, sizeof err), 2);
    assert_int_equal(s.recs[1].id, id[3]);
    s.n = 0;
    assert_int_equal(journal_db_each(d, "succeeded", collect_all, &s, err, sizeof err), 2);
    assert_int_equal(journal_db_get(d, id[2], collect_state, st, err, sizeof err), 0);
    assert_string_equal(st, "succeeded||0");
    /* a packed task is queued or succeeded: not one to retry */
    assert_int_equal(journal_db_retry(d, id[1], err, sizeof err), JOURNAL_EINVAL);
    h_assert_contains(err, "is queued");
    journal_db_close(d);
}

/* Any change of a packed task but a success without a result moves it
 * to a row of its own first, where it lives on as before: a start, a
 * retry, a failure, a dead letter, a success with a result.  It is read
 * once, from that row, by every reader; a change of a task that is no
 * longer queued in its pack, or an unstart of a queued one, is refused
 * as for a row (JOURNAL_ENOTFOUND). */
static void journal_moves_a_packed_task_that_changes_otherwise(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    done_count c = DONE_COUNT_INIT;
    uint64_t id[6];
    add_pack(j, 6, id, count_done, &c);
    wait_count(&c, 1);
    uint64_t later = util_wall_us() + 3600ull * 1000000ull;
    assert_int_equal(journal_start(j, id[0], 1, count_done, &c), 0);
    assert_int_equal(journal_retry(j, id[1], later, "try again", count_done, &c), 0);
    assert_int_equal(journal_finish(j, id[2], "failed", "boom", count_done, &c), 0);
    assert_int_equal(journal_dead(j, id[3], "gave up", count_done, &c), 0);
    assert_int_equal(journal_succeed(j, id[4], "{\"r\":1}", count_done, &c), 0);
    wait_count(&c, 6);
    assert_int_equal(c.failed, 0);
    done_count bad = DONE_COUNT_INIT;
    assert_int_equal(journal_succeed(j, id[4], NULL, count_done, &bad), 0);
    assert_int_equal(journal_unstart(j, id[5], 0, count_done, &bad), 0);
    wait_count(&bad, 2);
    assert_int_equal(bad.failed, 2);
    assert_int_equal(bad.last_status, JOURNAL_ENOTFOUND);
    char st[96];
    assert_string_equal((journal_lookup(j, id[0], collect_state, st), st), "running||1");
    assert_string_equal((journal_lookup(j, id[1], collect_state, st), st), "queued|try again|0");
    assert_string_equal((journal_lookup(j, id[2], collect_state, st), st), "failed|boom|0");
    assert_string_equal((journal_lookup(j, id[3], collect_state, st), st), "dead|gave up|0");
    assert_string_equal((journal_lookup(j, id[4], collect_state, st), st), "succeeded||0");
    assert_string_equal((journal_lookup(j, id[5], collect_state, st), st), "queued||0");
    assert_int_equal(sql_int(sb->path, "SELECT count(*) FROM tasks"), 4);
    journal_stats jst;
    journal_get_stats(j, &jst);
    assert_int_equal(jst.pending, 3);
    assert_int_equal(jst.dead, 1);
    journal_close(j);

    j = js_open_ok(sb->path);
    seen s = {0};
    assert_int_equal(journal_replay(j, collect, &s), 3);
    assert_int_equal(s.recs[0].id, id[0]);
    assert_int_equal(s.recs[0].interrupted, 1);
    assert_string_equal(s.names[0], "p0");
    assert_string_equal(s.payloads[0], "v0");
    assert_int_equal(s.recs[1].id, id[1]);
    assert_int_equal(s.recs[1].not_before_us, later);
    assert_int_equal(s.recs[1].prev_id, id[0]);
    assert_int_equal(s.recs[2].id, id[5]);
    journal_close(j);

    journal_db *d = NULL;
    char err[1024];
    assert_int_equal(journal_db_open(sb->path, &d, err, sizeof err), 0);
    s.n = 0;
    /* each task once (the dead letter after the tasks) */
    assert_int_equal(journal_db_each(d, NULL, collect_all, &s, err, sizeof err), 6);
    assert_int_equal(journal_db_retry(d, id[2], err, sizeof err), 0);
    journal_db_close(d);
}

/* Not packed: an add of one task, or of tasks of different requests. */
static void journal_packs_only_tasks_of_one_request(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    add_one(j, "alone", "x", NULL, NULL);
    journal_task t[2] = {
        {.id = journal_next_id(j), .name = "a", .max_attempts = 1, .request_id = "r1"},
        {.id = journal_next_id(j), .name = "b", .max_attempts = 1, .request_id = "r2"},
    };
    assert_int_equal(journal_add(j, t, 2, NULL, NULL), 0);
    journal_close(j);
    assert_int_equal(sql_int(sb->path, "SELECT count(*) FROM tasks"), 3);
    assert_int_equal(sql_int(sb->path, "SELECT count(*) FROM packs"), 0);
}

/* Purge removes a pack once nothing in it is queued and its last success
 * is older, and counts its tasks; a pack with a queued task stays. */
static void journal_purge_removes_finished_packs(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    done_count c = DONE_COUNT_INIT;
    uint64_t a[3], b[2];
    add_pack(j, 3, a, NULL, NULL);
    add_pack(j, 2, b, count_done, &c);
    wait_count(&c, 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(journal_succeed(j, a[i], NULL, count_done, &c), 0);
    assert_int_equal(journal_succeed(j, b[0], NULL, count_done, &c), 0);
    wait_count(&c, 5);
    assert_int_equal(c.failed, 0);
    journal_close(j);
    journal_db *d = NULL;
    char err[1024];
    uint64_t removed = 0;
    assert_int_equal(journal_db_open(sb->path, &d, err, sizeof err), 0);
    assert_int_equal(journal_db_purge(d, util_wall_us() + 1000000, &removed, err, sizeof err), 0);
    assert_int_equal(removed, 3);
    assert_int_equal(journal_db_get(d, a[1], collect_state, err, err, sizeof err),
                     JOURNAL_ENOTFOUND);
    char st[96];
    assert_int_equal(journal_db_get(d, b[0], collect_state, st, err, sizeof err), 0);
    assert_string_equal(st, "succeeded||0");
    journal_db_close(d);
    assert_int_equal(sql_int(sb->path, "SELECT count(*) FROM packs"), 1);
}

/* A failed transaction rolls the packs back with it: a pack added in it
 * is not there (its tasks' ends find nothing), one committed before is
 * (its ends work). */
static void journal_failed_transaction_rolls_packs_back(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    done_count c = DONE_COUNT_INIT;
    uint64_t a[2];
    add_pack(j, 2, a, count_done, &c);
    wait_count(&c, 1);
    /* the same first id again: the packs' key refuses it, the batch fails */
    journal_task t[2] = {
        {.id = a[0], .name = "dup", .max_attempts = 1, .request_id = "r"},
        {.id = journal_next_id(j), .name = "new", .max_attempts = 1, .request_id = "r"},
    };
    done_count f = DONE_COUNT_INIT;
    h_capture_begin();
    assert_int_equal(journal_add(j, t, 2, count_done, &f), 0);
    wait_count(&f, 1);
    free(h_capture_end());
    assert_int_equal(f.failed, 1);
    done_count e = DONE_COUNT_INIT;
    assert_int_equal(journal_succeed(j, t[1].id, NULL, count_done, &e), 0);
    assert_int_equal(journal_succeed(j, a[1], NULL, count_done, &e), 0);
    wait_count(&e, 2);
    assert_int_equal(e.failed, 1); /* t[1] was never committed */
    char st[96];
    assert_string_equal((journal_lookup(j, a[1], collect_state, st), st), "succeeded||0");
    assert_string_equal((journal_lookup(j, a[0], collect_state, st), st), "queued||0");
    assert_int_equal(journal_lookup(j, t[1].id, collect_state, st), JOURNAL_ENOTFOUND);
    journal_close(j);
}

/* A pack row whose blob was damaged (by hand, or a bad disk) is refused
 * at open with the file named, not read past its end. */
static void journal_refuses_a_malformed_pack(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    uint64_t a[2];
    add_pack(j, 2, a, NULL, NULL);
    journal_close(j);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(sb->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE packs SET tasks=substr(tasks,1,20)", NULL, NULL,
                                  NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    char *msg = open_fails(sb->path, JOURNAL_ECORRUPT);
    h_assert_contains(msg, sb->path);
    free(msg);
    journal_db *d = NULL;
    char err[1024];
    assert_int_equal(journal_db_open(sb->path, &d, err, sizeof err), 0);
    char st[96];
    assert_true(journal_db_get(d, a[0], collect_state, st, err, sizeof err) < 0);
    h_assert_contains(err, "malformed");
    journal_db_close(d);
}

/* ---- disk full ----------------------------------------------------------------------- */

/* Exit codes of the disk-full children: 0 when every check passed. */
enum { DF_OPEN = 20, DF_NO_FAILURE, DF_WRONG_STATUS, DF_MSG, DF_NOT_RECOVERED, DF_LOST,
       DF_LOG, DF_FILLER, DF_SKIP = 77 };

static void journal_disk_full_at_open_is_one_clear_error(void **state)
{
    sandbox *sb = *state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        js_limit_file_size(0);
        journal_config cfg = {.path = sb->path};
        journal *j = NULL;
        char err[1024] = "";
        int rc = journal_open(&cfg, &j, err, sizeof err);
        fprintf(stderr, "child: rc %d: %s\n", rc, err);
        if (rc != JOURNAL_EFULL)
            _exit(DF_WRONG_STATUS);
        if (strstr(err, "the disk is full") == NULL || strstr(err, sb->path) == NULL)
            _exit(DF_MSG);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* How the disk fills up: with RLIMIT_FSIZE (256 KiB past the WAL file's
 * size), or on a small file system by a filler file that leaves about
 * 192 KiB free.  df_free undoes it. */
typedef struct df_fault {
    int tmpfs;
    char filler[256];
} df_fault;

static int df_fill(df_fault *f, const char *path)
{
    if (!f->tmpfs) {
        struct stat st;
        char wal[160];
        snprintf(wal, sizeof wal, "%s-wal", path);
        rlim_t limit = 256 * 1024;
        if (stat(wal, &st) == 0 && (rlim_t)st.st_size > limit / 2)
            limit = (rlim_t)st.st_size + limit;
        js_limit_file_size(limit);
        return 0;
    }
    snprintf(f->filler, sizeof f->filler, "%s.filler", path);
    int fd = open(f->filler, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    static char chunk[65536];
    off_t size = 0;
    ssize_t n;
    while ((n = write(fd, chunk, sizeof chunk)) > 0)
        size += n;
    int ok = n < 0 && errno == ENOSPC && size > 192 * 1024 &&
             ftruncate(fd, size - 192 * 1024) == 0;
    close(fd);
    return ok ? 0 : -1;
}

static void df_free(const df_fault *f)
{
    if (f->tmpfs)
        unlink(f->filler);
    else
        js_limit_file_size(RLIM_INFINITY);
}

static int df_child(const char *path, df_fault *fault)
{
    signal(SIGXFSZ, SIG_IGN);
    journal_config cfg = {.path = path};
    journal *j = NULL;
    char err[1024] = "";
    if (journal_open(&cfg, &j, err, sizeof err) != 0)
        return DF_OPEN;
    static char big[16384];
    memset(big, 'x', sizeof big - 1);
    done_count c = DONE_COUNT_INIT;

    h_capture_begin();
    if (df_fill(fault, path) != 0) {
        free(h_capture_end());
        return DF_FILLER;
    }
    /* one by one until a commit fails, then two more failures: one log line */
    int failures = 0, added = 0;
    for (int i = 0; i < 400 && failures < 3; i++) {
        int before = count_now(&c, NULL), status = 0;
        add_one(j, "big", big, count_done, &c);
        added++;
        while (count_now(&c, &status) == before)
            usleep(1000);
        if (status != 0)
            failures++;
    }
    df_free(fault);
    done_count after = DONE_COUNT_INIT;
    uint64_t keep = add_one(j, "after", "a", count_done, &after);
    while (count_now(&after, NULL) == 0)
        usleep(1000);
    journal_stats jst;
    journal_get_stats(j, &jst);
    journal_close(j);
    char *log = h_capture_end();
    fprintf(stderr, "%s", log);

    if (failures == 0)
        return DF_NO_FAILURE;
    if (c.last_status != JOURNAL_EFULL)
        return DF_WRONG_STATUS;
    if (strstr(c.last_msg, "the disk is full") == NULL || strstr(c.last_msg, path) == NULL)
        return DF_MSG;
    if (after.last_status != 0 || jst.failed_commits != 3)
        return DF_NOT_RECOVERED;
    int n_fail = 0;
    for (const char *p = log; (p = strstr(p, "the disk is full")) != NULL; p++)
        n_fail++;
    if (n_fail != 1 || strstr(log, "commits work again after 3 failed transactions") == NULL)
        return DF_LOG;
    free(log);
    /* everything whose callback said durable is there */
    j = NULL;
    if (journal_open(&cfg, &j, err, sizeof err) != 0)
        return DF_OPEN;
    idset s = {0};
    journal_replay(j, idset_add, &s);
    journal_close(j);
    int ok = s.n == (size_t)(added - failures + 1) && s.ids[s.n - 1] == keep;
    free(s.ids);
    return ok ? 0 : DF_LOST;
}

/* Wait for a disk-full child; 1 when it skipped (no mount namespace). */
static int df_wait(pid_t pid)
{
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFEXITED(status) && WEXITSTATUS(status) == DF_SKIP)
        return 1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fprintf(stderr, "disk-full child: status 0x%x (exit codes: %d open, %d no failure, "
                "%d status, %d message, %d not recovered, %d lost, %d log, %d filler)\n",
                status, DF_OPEN, DF_NO_FAILURE, DF_WRONG_STATUS, DF_MSG, DF_NOT_RECOVERED,
                DF_LOST, DF_LOG, DF_FILLER);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    return 0;
}

static void journal_disk_full_fails_the_batch_and_recovers(void **state)
{
    sandbox *sb = *state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        df_fault f = {.tmpfs = 0};
        _exit(df_child(sb->path, &f));
    }
    df_wait(pid);
}

/* The same on a 1 MiB tmpfs that the child mounts in a mount namespace of
 * its own (ENOSPC, SQLITE_FULL); skipped where mounting is not allowed. */
static void journal_disk_full_on_a_small_file_system(void **state)
{
    sandbox *sb = *state;
    char mnt[128];
    snprintf(mnt, sizeof mnt, "%s/small", sb->dir);
    assert_int_equal(mkdir(mnt, 0755), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
            mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0)
            _exit(DF_SKIP);
        char path[192];
        snprintf(path, sizeof path, "%s/tasks.db", mnt);
        df_fault f = {.tmpfs = 1};
        _exit(df_child(path, &f));
    }
    if (df_wait(pid))
        skip();
}

/* ---- misuse -------------------------------------------------------------------------- */

static void journal_rejects_bad_arguments(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    journal_task t = {.id = 0, .name = "x"};
    assert_int_equal(journal_add(j, &t, 1, NULL, NULL), JOURNAL_EINVAL);
    t.id = journal_next_id(j);
    t.name = NULL;
    assert_int_equal(journal_add(j, &t, 1, NULL, NULL), JOURNAL_EINVAL);
    t.name = "x";
    t.payload_len = 4;
    assert_int_equal(journal_add(j, &t, 1, NULL, NULL), JOURNAL_EINVAL);
    assert_int_equal(journal_add(j, NULL, 0, NULL, NULL), JOURNAL_EINVAL);
    assert_int_equal(journal_finish(j, 5, "succeeded", NULL, NULL, NULL), JOURNAL_EINVAL);
    assert_int_equal(journal_finish(j, 5, NULL, NULL, NULL, NULL), JOURNAL_EINVAL);
    assert_int_equal(journal_start(j, 0, 1, NULL, NULL), JOURNAL_EINVAL);
    journal_sync s;
    assert_int_equal(journal_sync_parse("full", &s), 0);
    assert_int_equal(s, JOURNAL_SYNC_FULL);
    assert_int_equal(journal_sync_parse("normal", &s), 0);
    assert_int_equal(s, JOURNAL_SYNC_NORMAL);
    assert_int_equal(journal_sync_parse("off", &s), JOURNAL_EINVAL);
    assert_string_equal(journal_strerror(JOURNAL_ELOCKED), "another bgserve has the journal open");
    journal_close(j);
    journal_close(NULL);
    char *msg = open_fails("", JOURNAL_EINVAL);
    h_assert_contains(msg, "--journal FILE");
    free(msg);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, js_setup, js_teardown)
    const struct CMUnitTest tests[] = {
        T(journal_replays_queued_tasks_after_reopen),
        T(journal_replay_keeps_retries_and_interrupted_runs),
        T(journal_replay_keeps_the_sequence_link),
        T(journal_upgrades_schema_version_1),
        T(journal_upgrades_schema_version_2),
        T(journal_upgrades_schema_version_3),
        T(journal_packs_an_add_of_several_tasks),
        T(journal_moves_a_packed_task_that_changes_otherwise),
        T(journal_packs_only_tasks_of_one_request),
        T(journal_purge_removes_finished_packs),
        T(journal_failed_transaction_rolls_packs_back),
        T(journal_refuses_a_malformed_pack),
        T(journal_folds_a_start_into_its_add),
        T(journal_lazy_starts_fold_into_their_end),
        T(journal_an_add_of_five_writes_each_task),
        T(journal_an_end_nobody_waits_for_rides_with_the_next_add),
        T(journal_a_lone_end_is_committed_by_itself),
        T(journal_batches_are_bounded_by_rows),
        T(journal_dead_letters_keep_the_last_error),
        T(journal_start_many_and_unstart),
        T(journal_checkpoints_while_open),
        T(journal_callbacks_run_in_append_order),
        T(journal_group_commit_batches_many_threads),
        T(journal_stats_count_commits_and_batches),
        T(journal_ids_never_repeat),
        T(journal_sigkill_mid_batch_loses_nothing_durable),
        T(journal_refuses_a_corrupt_file),
        T(journal_refuses_an_other_sqlite_database),
        T(journal_refuses_a_newer_schema),
        T(journal_refuses_a_path_it_cannot_create),
        T(journal_refuses_a_file_it_cannot_write),
        T(journal_refuses_a_directory_it_cannot_write),
        T(journal_refuses_a_second_owner_but_not_the_tools),
        T(journal_disk_full_at_open_is_one_clear_error),
        T(journal_disk_full_fails_the_batch_and_recovers),
        T(journal_disk_full_on_a_small_file_system),
        T(journal_rejects_bad_arguments),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
