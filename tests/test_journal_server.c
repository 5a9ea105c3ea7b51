/*
 * test_journal_server.c - bgserve --journal, the real binary: each
 * startup fault (corrupt file, newer schema, a path it cannot create,
 * locked by another bgserve) is one message and exit 1; every task of a
 * 2xx response runs after a SIGKILL and a restart, none that was never
 * accepted, duplicates only from runs that began before the kill; a task
 * that crashes the serving process under the supervisor does not lose
 * the others and is not run into a second crash; a full disk answers 503
 * to requests with tasks and serves the rest; deferred and awaited
 * answers wait for the commit of their tasks too (503 on a full disk); a retry's schedule survives a restart; dead letters
 * after the last attempt, answered from the journal after a restart; a
 * replayed task whose function is gone is dead-lettered with a warning;
 * the dashboard's retry queues a dead letter of an earlier run again;
 * a stop that leaves only tasks kept queued for the next start exits 0,
 * one that also cancels a run exits 3;
 * /_bgserve/stats shows the journal.  Fixture: journal_app.so.
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

#include <inttypes.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 30000u

/* Run bgserve with args (NULL-terminated, plugin last): exit status and
 * output. */
static int run_bgserve(const char *const *args, char **out)
{
    const char *argv[20] = {h_build_path("bgserve")};
    size_t n = 1;
    for (size_t i = 0; args[i] && n < 19; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return h_run(argv, out);
}

/* A startup refused with exit 1, one message naming the file, never
 * serving. */
static char *refused(const char *path)
{
    char *out = NULL;
    const char *args[] = {"--port", "0", "--journal", path, h_fixture("journal_app"), NULL};
    int rc = run_bgserve(args, &out);
    if (rc != 1)
        fprintf(stderr, "exit %d: %s\n", rc, out);
    assert_int_equal(rc, 1);
    h_assert_contains(out, path);
    h_assert_lacks(out, "listening on");
    return out;
}

static void journal_server_startup_faults_exit_1(void **state)
{
    sandbox *sb = *state;

    /* not a database */
    FILE *f = fopen(sb->path, "w");
    assert_non_null(f);
    fputs("this is not an SQLite database, just text that is long enough to matter....\n", f);
    fclose(f);
    char *out = refused(sb->path);
    h_assert_contains(out, "corrupt or not an SQLite database");
    h_assert_contains(out, "move it aside");
    free(out);
    unlink(sb->path);

    /* a newer schema */
    journal_close(js_open_ok(sb->path));
    sqlite3 *db;
    assert_int_equal(sqlite3_open(sb->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE meta SET value=99 WHERE key='schema_version'",
                                  NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    out = refused(sb->path);
    h_assert_contains(out, "schema version 99");
    free(out);

    /* a path it cannot create */
    char missing[256];
    snprintf(missing, sizeof missing, "%s/no/such/dir/tasks.db", sb->dir);
    out = refused(missing);
    h_assert_contains(out, "No such file or directory");
    h_assert_contains(out, "mkdir -p");
    free(out);

    /* a bad --journal-sync is a usage error */
    const char *args[] = {"--port", "0", "--journal", missing, "--journal-sync", "fast",
                          h_fixture("journal_app"), NULL};
    assert_int_equal(run_bgserve(args, &out), 2);
    h_assert_contains(out, "--journal-sync must be normal or full (got 'fast')");
    free(out);
}

/* Write an executable script at path: `ulimit -f blocks` (SIGXFSZ
 * ignored), then exec bgserve with the script's arguments. */
static void write_limited(const char *path, unsigned blocks)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\ntrap '' XFSZ\nulimit -f %u\nexec %s \"$@\"\n", blocks,
            h_build_path("bgserve"));
    fclose(f);
    assert_int_equal(chmod(path, 0755), 0);
}

/* Where the journal's directory is wrong, and a disk full at start-up:
 * exit 1 and one message that says what to do. */
static void journal_server_directory_and_full_disk_faults_exit_1(void **state)
{
    sandbox *sb = *state;
    char file[128], path[192];

    /* a file where the path needs a directory */
    snprintf(file, sizeof file, "%s/plain", sb->dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(path, sizeof path, "%s/tasks.db", file);
    char *out = refused(path);
    h_assert_contains(out, "is not a directory");
    h_assert_contains(out, "give --journal a path in a directory");
    free(out);

    /* a directory it cannot create files in (as root, bgserve runs as
     * nobody: root may write anywhere) */
    char dir[128];
    snprintf(dir, sizeof dir, "%s/ro", sb->dir);
    assert_int_equal(mkdir(dir, 0555), 0);
    assert_int_equal(chmod(sb->dir, 0755), 0);
    snprintf(path, sizeof path, "%s/tasks.db", dir);
    const char *as_nobody[] = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               h_build_path("bgserve"), "--port", "0", "--journal", path,
                               h_fixture("journal_app"), NULL};
    int rc = h_run(getuid() == 0 ? as_nobody : as_nobody + 4, &out);
    if (rc != 1)
        fprintf(stderr, "exit %d: %s\n", rc, out);
    assert_int_equal(rc, 1);
    h_assert_contains(out, "cannot create files in its directory");
    h_assert_contains(out, "chmod u+wx");
    h_assert_lacks(out, "listening on");
    free(out);

    /* a full disk when the journal is created (ulimit -f 0) */
    char script[192];
    snprintf(script, sizeof script, "%s/nospace.sh", sb->dir);
    write_limited(script, 0);
    const char *full[] = {script, "--port", "0", "--journal", sb->path,
                          h_fixture("journal_app"), NULL};
    rc = h_run(full, &out);
    if (rc != 1)
        fprintf(stderr, "exit %d: %s\n", rc, out);
    assert_int_equal(rc, 1);
    h_assert_contains(out, sb->path);
    h_assert_contains(out, "the disk is full");
    h_assert_contains(out, "free space on its file system");
    h_assert_lacks(out, "listening on");
    free(out);
}

static void journal_server_refuses_a_journal_another_bgserve_has(void **state)
{
    sandbox *sb = *state;
    h_server a;
    const char *args[] = {"--journal", sb->path, NULL};
    assert_int_equal(h_start_app(&a, h_fixture("journal_app"), args, NULL), 0);
    char *out = refused(sb->path);
    h_assert_contains(out, "another bgserve (pid");
    h_assert_contains(out, "stop that server");
    free(out);
    h_stop_clean(&a);
    h_free(&a);
}

/* ---- which tasks ran ------------------------------------------------------------------ */

/* The lines "PAYLOAD ATTEMPT" of the fixture's log: how often each
 * payload ran, and the highest attempt seen. */
typedef struct runs {
    size_t n;
    char **payload;
    int *count, *max_attempt;
} runs;

static void runs_free(runs *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->payload[i]);
    free(r->payload);
    free(r->count);
    free(r->max_attempt);
    memset(r, 0, sizeof *r);
}

static long runs_find(const runs *r, const char *p)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->payload[i], p) == 0)
            return (long)i;
    return -1;
}

static runs read_runs(const char *log)
{
    runs r = {0};
    char *text = h_slurp(log, NULL);
    if (text == NULL)
        return r;
    size_t cap = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char p[128];
        int attempt;
        if (sscanf(line, "%127s %d", p, &attempt) != 2)
            continue;
        long i = runs_find(&r, p);
        if (i < 0) {
            if (r.n == cap) {
                cap = cap ? 2 * cap : 256;
                r.payload = realloc(r.payload, cap * sizeof *r.payload);
                r.count = realloc(r.count, cap * sizeof *r.count);
                r.max_attempt = realloc(r.max_attempt, cap * sizeof *r.max_attempt);
            }
            i = (long)r.n++;
            r.payload[i] = strdup(p);
            r.count[i] = 0;
            r.max_attempt[i] = 0;
        }
        r.count[i]++;
        if (attempt > r.max_attempt[i])
            r.max_attempt[i] = attempt;
    }
    free(text);
    return r;
}

typedef struct all_ran {
    const char *log;
    int requests, per_request;
    const char *prefix;
} all_ran;

/* Every payload PREFIX<k>-<i> for the accepted requests has run. */
static int every_accepted_ran(void *arg)
{
    all_ran *a = arg;
    runs r = read_runs(a->log);
    int ok = 1;
    for (int k = 0; k < a->requests && ok; k++)
        for (int i = 1; i <= a->per_request && ok; i++) {
            char p[64];
            snprintf(p, sizeof p, "%s%d-%d", a->prefix, k, i);
            ok = runs_find(&r, p) >= 0;
        }
    runs_free(&r);
    return ok;
}

/* The number after "label " in the line of log that contains needle;
 * -1 when absent. */
static long number_before(const char *log, const char *needle, const char *label)
{
    char line[512];
    if (h_line_with(log, needle, line, sizeof line) != 0)
        return -1;
    const char *p = strstr(line, label);
    if (p == NULL)
        return -1;
    while (p > line && p[-1] == ' ')
        p--;
    while (p > line && p[-1] >= '0' && p[-1] <= '9')
        p--;
    return strtol(p, NULL, 10);
}

/* GET /enq: n tasks "record" with payloads k<k>-1 .. k<k>-n, answered 202. */
static void enqueue_k(h_server *s, int k, int n)
{
    char path[96];
    snprintf(path, sizeof path, "/enq?n=%d&tag=k%d", n, k);
    h_resp r;
    assert_int_equal(h_get(s, path, &r), 0);
    assert_int_equal(r.status, 202);
    h_resp_free(&r);
}

#define KILL_REQUESTS 50
#define KILL_PER_REQUEST 40

/* 2000 tasks queued by 50 requests (each answered 202) and 50 attached to
 * responses (each answered 200), a SIGKILL right after the last answer
 * while most are still queued, a restart on the same journal: every task
 * of a 2xx runs, nothing else runs, and a task runs twice only if its
 * first run began before the kill. */
static void journal_server_sigkill_then_restart_runs_every_accepted_task(void **state)
{
    sandbox *sb = *state;
    char log[192];
    snprintf(log, sizeof log, "%s/runs.log", sb->dir);
    char env_log[256];
    snprintf(env_log, sizeof env_log, "JOURNAL_APP_LOG=%s", log);
    const char *env[] = {env_log, "JOURNAL_APP_SLEEP_MS=2", NULL};
    const char *args[] = {"--journal", sb->path, "--single-process", "--workers", "2", "--quiet",
                          NULL};
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, env), 0);
    for (int k = 0; k < KILL_REQUESTS; k++) {
        enqueue_k(&s, k, KILL_PER_REQUEST);
        char path[96];
        h_resp r;
        snprintf(path, sizeof path, "/attach?tag=a%d-1", k);
        assert_int_equal(h_get(&s, path, &r), 0);
        assert_int_equal(r.status, 200);
        h_resp_free(&r);
    }
    /* at once: a 2xx means its tasks are on disk */
    assert_int_equal(h_stop(&s, SIGKILL), 128 + SIGKILL);
    h_free(&s);
    runs before = read_runs(log);
    assert_true(before.n < KILL_REQUESTS * (KILL_PER_REQUEST + 1)); /* killed in the middle */

    const char *env2[] = {env_log, NULL};
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, env2), 0);
    all_ran a = {.log = log, .requests = KILL_REQUESTS, .per_request = KILL_PER_REQUEST,
                 .prefix = "k"};
    assert_true(h_poll(every_accepted_ran, &a, DEADLINE_MS));
    all_ran attached = {.log = log, .requests = KILL_REQUESTS, .per_request = 1, .prefix = "a"};
    assert_true(h_poll(every_accepted_ran, &attached, DEADLINE_MS));
    assert_true(h_wait_stat(&s, "journal", "pending", 0, DEADLINE_MS));
    assert_true(h_wait_log(&s, "from an earlier run", DEADLINE_MS));
    long interrupted = number_before(s.log, "from an earlier run", "interrupted");
    assert_true(interrupted >= 0);

    runs r = read_runs(log);
    long dups = 0;
    for (size_t i = 0; i < r.n; i++) {
        int k, idx;
        char kind;
        assert_int_equal(sscanf(r.payload[i], "%c%d-%d", &kind, &k, &idx), 3);
        assert_true(kind == 'k' || kind == 'a');
        assert_true(k >= 0 && k < KILL_REQUESTS && idx >= 1 &&
                    idx <= (kind == 'k' ? KILL_PER_REQUEST : 1));
        assert_true(r.count[i] <= 2);
        if (r.count[i] == 2) {
            /* its first run began before the kill: it was running then
             * (and recorded as running) */
            dups++;
            long b = runs_find(&before, r.payload[i]);
            assert_true(b >= 0);
            assert_int_equal(before.count[b], 1);
        }
    }
    runs_free(&before);
    assert_int_equal(r.n, KILL_REQUESTS * (KILL_PER_REQUEST + 1));
    /* --single-process (no crash record): a run's start is committed
     * before it begins, so each run again was on disk as running
     * (interrupted); under the supervisor starts are lazy instead */
    assert_true(dups <= interrupted);
    fprintf(stderr, "sigkill: %ld duplicate runs; the journal had %ld tasks as running\n", dups,
            interrupted);
    runs_free(&r);
    h_stop_clean(&s);
    h_free(&s);
}

/* ---- the journal as seen from outside --------------------------------------------- */

typedef struct on_disk {
    char state[32];
    char error[256];
    uint32_t attempts;
    uint64_t not_before_us;
} on_disk;

static void on_disk_fill(void *arg, const journal_rec *r)
{
    on_disk *d = arg;
    snprintf(d->state, sizeof d->state, "%s", r->state);
    snprintf(d->error, sizeof d->error, "%s", r->last_error ? r->last_error : "");
    d->attempts = r->attempts;
    d->not_before_us = r->not_before_us;
}

typedef struct disk_wait {
    const char *path;
    uint64_t id;
    const char *state;
    uint32_t attempts;         /* at least this many attempts started */
    on_disk got;
} disk_wait;

/* Task id is in state on disk (read through an offline connection, as
 * `bgserve journal` does, while the server runs). */
static int disk_state_is(void *arg)
{
    disk_wait *w = arg;
    journal_db *db = NULL;
    char err[512];
    if (journal_db_open(w->path, &db, err, sizeof err) != 0)
        return 0;
    memset(&w->got, 0, sizeof w->got);
    int rc = journal_db_get(db, w->id, on_disk_fill, &w->got, err, sizeof err);
    journal_db_close(db);
    return rc == 0 && strcmp(w->got.state, w->state) == 0 && w->got.attempts >= w->attempts;
}

/* Task id on disk now, in any state (no waiting): 1 and *d, or 0. */
static int on_disk_now(const char *path, uint64_t id, on_disk *d)
{
    disk_wait w = {.path = path, .id = id, .state = ""};
    disk_state_is(&w);
    *d = w.got;
    return w.got.state[0] != '\0';
}

/* Wait until task id is in state on disk, after at least attempts runs. */
static on_disk wait_disk_runs(const char *path, uint64_t id, const char *state,
                              uint32_t attempts)
{
    disk_wait w = {.path = path, .id = id, .state = state, .attempts = attempts};
    if (!h_poll(disk_state_is, &w, DEADLINE_MS))
        fail_msg("task %" PRIu64 " on disk: '%s' after %u attempts, wanted '%s' after %u",
                 id, w.got.state, w.got.attempts, state, attempts);
    return w.got;
}

static on_disk wait_disk_state(const char *path, uint64_t id, const char *state)
{
    disk_wait w = {.path = path, .id = id, .state = state};
    if (!h_poll(disk_state_is, &w, DEADLINE_MS))
        fail_msg("task %" PRIu64 " on disk: '%s', wanted '%s'", id, w.got.state, state);
    return w.got;
}

static uint64_t queue_task(h_server *s, const char *route)
{
    h_resp r;
    assert_int_equal(h_get(s, route, &r), 0);
    assert_int_equal(r.status, 202);
    uint64_t id = strtoull(r.body, NULL, 10);
    h_resp_free(&r);
    assert_true(id > 0);
    return id;
}

/* journal_app on the sandbox's journal (--single-process: a crash ends
 * the process) with its log in the sandbox. */
typedef struct app_run {
    char path[192];            /* the fixture's log */
    char env_log[256];
    const char *env[2];
    const char *args[6];
} app_run;

static void app_run_init(app_run *a, sandbox *sb)
{
    snprintf(a->path, sizeof a->path, "%s/runs.log", sb->dir);
    snprintf(a->env_log, sizeof a->env_log, "JOURNAL_APP_LOG=%s", a->path);
    a->env[0] = a->env_log;
    a->env[1] = NULL;
    const char *args[] = {"--journal", sb->path, "--single-process", "--quiet", NULL};
    memcpy(a->args, args, sizeof args);
}

static void app_run_start(app_run *a, h_server *s)
{
    assert_int_equal(h_start_app(s, h_fixture("journal_app"), a->args, a->env), 0);
}

/* The fixture's log is exactly want. */
static void app_run_log_is(const app_run *a, const char *want)
{
    char *text = h_slurp(a->path, NULL);
    assert_non_null(text);
    assert_string_equal(text, want);
    free(text);
}

/* Start the app again after the crash and wait until task id succeeded
 * on disk: the fixture's log is then want_log and the server has said
 * how many tasks it took over from the earlier run (took_over).  Stops
 * it; the task as on disk. */
static on_disk restart_until_succeeded(app_run *a, h_server *s, const sandbox *sb, uint64_t id,
                                       const char *want_log, const char *took_over)
{
    app_run_start(a, s);
    on_disk d = wait_disk_state(sb->path, id, "succeeded");
    app_run_log_is(a, want_log);
    assert_true(h_wait_log(s, took_over, DEADLINE_MS));
    h_stop_clean(s);
    h_free(s);
    return d;
}

/* A stop that is not clean by design (exit 3) must still be sound. */
static void no_sanitizer_report(const h_server *s)
{
    const char *log = s->log ? s->log : "";
    assert_null(strstr(log, "Sanitizer"));
    assert_null(strstr(log, "runtime error"));
}

#define RACE_REQUESTS 4
#define RACE_PER_REQUEST 100

/* The count after label in the replay line of s's log ("... N queued, M
 * interrupted ..."); 0 when there was no replay. */
static long replayed_count(h_server *s, const char *label)
{
    long n = number_before(s->log, "from an earlier run", label);
    return n < 0 ? 0 : n;
}

/* A SIGTERM while the replay at start is still running many tasks (two
 * workers, 2 ms a task, no drain time; the signal may even come before
 * the replay queued them): a sound exit (0, or 3 for the tasks the drain
 * left), then a third start runs whatever is left.  Every accepted task
 * runs, nothing else, and a task runs twice only if a replay found it
 * interrupted (at least once). */
static void journal_server_stop_during_replay_loses_nothing(void **state)
{
    sandbox *sb = *state;
    app_run l;
    app_run_init(&l, sb);
    char env_sleep[] = "JOURNAL_APP_SLEEP_MS=2";
    const char *env[] = {l.env_log, env_sleep, NULL};
    const char *one[] = {"--journal", sb->path, "--single-process", "--workers", "1",
                         "--quiet", NULL};
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), one, env), 0);
    for (int k = 0; k < RACE_REQUESTS; k++)
        enqueue_k(&s, k, RACE_PER_REQUEST);
    assert_int_equal(h_stop(&s, SIGKILL), 128 + SIGKILL);
    h_free(&s);

    /* the replay runs, and is stopped at once */
    const char *two[] = {"--journal", sb->path, "--single-process", "--workers", "2",
                         "--drain-timeout", "0", "--quiet", NULL};
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), two, env), 0);
    int rc = h_stop(&s, SIGTERM);
    if (rc != 0 && rc != 3)
        fprintf(stderr, "bgserve exit %d; log:\n%s\n", rc, s.log ? s.log : "");
    assert_true(rc == 0 || rc == 3);
    no_sanitizer_report(&s);
    long interrupted = replayed_count(&s, "interrupted");
    runs mid = read_runs(l.path);
    h_free(&s);

    app_run_start(&l, &s);
    all_ran a = {.log = l.path, .requests = RACE_REQUESTS, .per_request = RACE_PER_REQUEST,
                 .prefix = "k"};
    assert_true(h_poll(every_accepted_ran, &a, DEADLINE_MS));
    assert_true(h_wait_stat(&s, "journal", "pending", 0, DEADLINE_MS));
    interrupted += replayed_count(&s, "interrupted");
    h_stop_clean(&s);
    h_free(&s);

    runs r = read_runs(l.path);
    assert_int_equal(r.n, RACE_REQUESTS * RACE_PER_REQUEST);
    long dups = 0;
    for (size_t i = 0; i < r.n; i++) {
        int k, idx;
        assert_int_equal(sscanf(r.payload[i], "k%d-%d", &k, &idx), 2);
        assert_true(k >= 0 && k < RACE_REQUESTS && idx >= 1 && idx <= RACE_PER_REQUEST);
        assert_true(r.count[i] <= 2);
        dups += r.count[i] - 1;
    }
    assert_true(dups <= interrupted);
    fprintf(stderr, "stop during replay: %zu of %d had run before the third start; %ld "
            "duplicate runs, %ld interrupted\n", mid.n, RACE_REQUESTS * RACE_PER_REQUEST, dups,
            interrupted);
    runs_free(&mid);
    runs_free(&r);
}

/* A run that a crash interrupts (the task kills the process at once, on
 * its first attempt) comes back after the restart as attempt 2, never as
 * attempt 1 again: its start was committed before it ran.  This is
 * --single-process, where starts are awaited; were they lazy there, the
 * row would still say queued and attempt 1 would run again. */
static void journal_server_crash_in_a_run_replays_the_next_attempt(void **state)
{
    sandbox *sb = *state;
    app_run l;
    app_run_init(&l, sb);
    h_server s;
    app_run_start(&l, &s);
    uint64_t id = queue_task(&s, "/die?tag=k");
    assert_int_equal(h_stop(&s, 0), 128 + SIGKILL); /* the task killed it */
    h_free(&s);

    on_disk d = restart_until_succeeded(&l, &s, sb, id, "k 1\nk 2\nk end\n",
                                        "1 task from an earlier run: 0 queued, 1 interrupted");
    assert_int_equal(d.attempts, 2);
}

/* GET route (a /seq): 200, and the ids of its four tasks. */
static void get_sequence(h_server *s, const char *route, uint64_t ids[4])
{
    h_resp r;
    assert_int_equal(h_get(s, route, &r), 0);
    assert_int_equal(r.status, 200);
    const char *list = h_header(&r, "Bgserve-Tasks");
    assert_non_null(list);
    char *end = (char *)list;
    for (int i = 0; i < 4; i++) {
        ids[i] = strtoull(end, &end, 10);
        assert_true(ids[i] > 0);
        if (*end == ',')
            end++;
    }
    h_resp_free(&r);
}

/* Start the app and GET /seq?tag=s (four tasks in sequence, the second
 * kills the process on its first attempt): the ids of its tasks, once
 * the process is dead. */
static void sequence_then_crash(app_run *a, h_server *s, uint64_t ids[4])
{
    app_run_start(a, s);
    get_sequence(s, "/seq?tag=s", ids);
    assert_int_equal(h_stop(s, 0), 128 + SIGKILL); /* s-2 killed it */
    h_free(s);
}

/* A sequence that a crash interrupts goes on after the restart in its
 * order: the task that was running runs again (attempt 2), then each one
 * after it, one at a time (s-3 starts after s-2 ended); none runs twice. */
static void journal_server_sequence_keeps_its_order_after_a_crash(void **state)
{
    sandbox *sb = *state;
    app_run l;
    app_run_init(&l, sb);
    h_server s;
    uint64_t ids[4];
    sequence_then_crash(&l, &s, ids);

    restart_until_succeeded(&l, &s, sb, ids[3],
                            "s-1 1\ns-2 1\ns-2 2\ns-2 end\ns-3 1\ns-4 1\n",
                            "3 tasks from an earlier run: 2 queued, 1 interrupted");
}

typedef struct log_wait {
    const char *path, *text;
} log_wait;

/* The fixture's log is exactly w->text. */
static int log_is(void *arg)
{
    log_wait *w = arg;
    char *text = h_slurp(w->path, NULL);
    int ok = text != NULL && strcmp(text, w->text) == 0;
    free(text);
    return ok;
}

/* Start the app on the journal with one worker and no drain time, and
 * GET route (a /park with tag p): its id, once its task runs. */
static uint64_t start_parked(sandbox *sb, app_run *l, h_server *s, const char *route)
{
    app_run_init(l, sb);
    const char *args[] = {"--journal", sb->path, "--single-process", "--quiet", "--workers",
                          "1", "--drain-timeout", "0", NULL};
    assert_int_equal(h_start_app(s, h_fixture("journal_app"), args, l->env), 0);
    uint64_t parked = queue_task(s, route);
    assert_true(h_poll(log_is, &(log_wait){l->path, "p 1\n"}, DEADLINE_MS)); /* it runs */
    return parked;
}

/* A normal stop before a sequence began (its first task queued behind a
 * running one, on the only worker; no drain time): no task of it is
 * recorded as cancelled, all four stay queued on disk, and the next start
 * runs them, in their order, once each, as attempt 1. */
static void journal_server_stop_keeps_a_sequence_for_the_next_start(void **state)
{
    sandbox *sb = *state;
    app_run l;
    h_server s;
    uint64_t parked = start_parked(sb, &l, &s, "/park?tag=p");
    uint64_t ids[4];
    get_sequence(&s, "/seq?tag=s&die=0", ids);
    /* the park is cancelled (it ends, and succeeds); the sequence stays
     * queued in the journal: nothing is lost, exit 0 */
    assert_int_equal(h_stop(&s, SIGTERM), 0);
    no_sanitizer_report(&s);
    assert_int_equal(h_count_log(&s, "stays queued in the journal for the next start"), 4);
    h_assert_contains(s.log, "drain: 1 tasks finished, 0 did not, 4 stay queued in the "
                             "journal for the next start");
    h_assert_lacks(s.log, "some tasks did not finish");
    h_free(&s);
    app_run_log_is(&l, "p 1\n");
    on_disk d;
    for (int i = 0; i < 4; i++) {
        assert_true(on_disk_now(sb->path, ids[i], &d));
        assert_string_equal(d.state, "queued");
        assert_int_equal(d.attempts, 0);
    }
    assert_true(on_disk_now(sb->path, parked, &d));
    assert_string_equal(d.state, "succeeded");

    restart_until_succeeded(&l, &s, sb, ids[3], "p 1\ns-1 1\ns-2 1\ns-3 1\ns-4 1\n",
                            "4 tasks from an earlier run: 4 queued, 0 interrupted");
}

/* A stop that cancels a run as well as keeping queued tasks for the next
 * start: the summary counts them apart, and the cancelled run alone makes
 * the exit status 3. */
static void journal_server_stop_with_a_cancelled_run_exits_3(void **state)
{
    sandbox *sb = *state;
    app_run l;
    h_server s;
    uint64_t parked = start_parked(sb, &l, &s, "/park?tag=p&fail=1");
    uint64_t queued = queue_task(&s, "/park?tag=q");
    assert_int_equal(h_stop(&s, SIGTERM), 3);
    no_sanitizer_report(&s);
    h_assert_contains(s.log, "drain: 0 tasks finished, 1 did not, 1 stay queued in the "
                             "journal for the next start");
    char want[160], found[512];
    snprintf(want, sizeof want, "task %" PRIu64 " park queued", queued);
    assert_int_equal(h_line_with(s.log, "kept queued in the journal, it runs at the next start",
                                 found, sizeof found), 0);
    h_assert_contains(found, want);
    snprintf(want, sizeof want, "task %" PRIu64 " park_fails running", parked);
    assert_int_equal(h_line_with(s.log, "now cancelled", found, sizeof found), 0);
    h_assert_contains(found, want);
    h_assert_contains(s.log, "stopped (some tasks did not finish: see above)");
    h_free(&s);
    on_disk d;
    assert_true(on_disk_now(sb->path, parked, &d));
    assert_string_equal(d.state, "cancelled");
    assert_true(on_disk_now(sb->path, queued, &d));
    assert_string_equal(d.state, "queued");
}

/* The rest of an interrupted sequence whose earlier task did not succeed
 * (here: marked failed on disk before the restart) is skipped, with the
 * reason, and does not run. */
static void journal_server_sequence_after_a_failure_is_skipped(void **state)
{
    sandbox *sb = *state;
    app_run l;
    app_run_init(&l, sb);
    h_server s;
    uint64_t ids[4];
    sequence_then_crash(&l, &s, ids);
    sqlite3 *db;
    char sql[128];
    snprintf(sql, sizeof sql, "UPDATE tasks SET state='failed' WHERE id=%" PRIu64, ids[1]);
    assert_int_equal(sqlite3_open(sb->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    app_run_start(&l, &s);
    on_disk d = wait_disk_state(sb->path, ids[2], "skipped");
    char want[96];
    snprintf(want, sizeof want, "previous task %" PRIu64 " of its sequence failed", ids[1]);
    assert_string_equal(d.error, want);
    d = wait_disk_state(sb->path, ids[3], "skipped");
    snprintf(want, sizeof want, "previous task %" PRIu64 " of its sequence will not run",
             ids[2]);
    assert_string_equal(d.error, want);
    assert_true(h_wait_log(&s, "some skipped: an earlier task of their sequence did not "
                               "succeed", DEADLINE_MS));
    h_stop_clean(&s);
    h_free(&s);
    app_run_log_is(&l, "s-1 1\ns-2 1\n"); /* neither s-3 nor s-4 ran */

    /* `bgserve journal FILE retry` queues s-3 again on its own: it runs
     * at the next start although s-2 failed */
    char id3[32], *out = NULL;
    snprintf(id3, sizeof id3, "%" PRIu64, ids[2]);
    const char *retry[] = {"journal", sb->path, "retry", id3, NULL};
    assert_int_equal(run_bgserve(retry, &out), 0);
    free(out);
    app_run_start(&l, &s);
    wait_disk_state(sb->path, ids[2], "succeeded");
    h_stop_clean(&s);
    h_free(&s);
    app_run_log_is(&l, "s-1 1\ns-2 1\ns-3 1\n");
}

/* Under the supervisor, a task that crashes the serving process: the
 * report says the tasks will be retried, the next serving process runs
 * every other accepted task, and the crashing one (on its last attempt)
 * goes to the dead letters instead of crashing it again. */
static void journal_server_crash_in_a_task_loses_no_other_task(void **state)
{
    sandbox *sb = *state;
    char log[192], gate[192], env_log[256], env_gate[256];
    snprintf(log, sizeof log, "%s/runs.log", sb->dir);
    snprintf(gate, sizeof gate, "%s/crash-now", sb->dir);
    snprintf(env_log, sizeof env_log, "JOURNAL_APP_LOG=%s", log);
    snprintf(env_gate, sizeof env_gate, "JOURNAL_APP_SEGV_GATE=%s", gate);
    const char *env[] = {env_log, env_gate, "JOURNAL_APP_SLEEP_MS=20", NULL};
    const char *args[] = {"--journal", sb->path, "--workers", "2", NULL};
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, env), 0);
    uint64_t bad = queue_task(&s, "/segv"); /* holds a worker until the gate opens */
    h_resp r;
    assert_int_equal(h_get(&s, "/enq?n=30&tag=c0", &r), 0);
    assert_int_equal(r.status, 202);
    h_resp_free(&r);
    FILE *f = fopen(gate, "w");
    assert_non_null(f);
    fclose(f);
    assert_true(h_wait_log(&s, "starting a new serving process", DEADLINE_MS));
    h_assert_contains(s.log, "tasks to be retried from the journal by the next serving process");
    all_ran a = {.log = log, .requests = 1, .per_request = 30, .prefix = "c"};
    assert_true(h_poll(every_accepted_ran, &a, DEADLINE_MS));
    on_disk d = wait_disk_state(sb->path, bad, "dead");
    h_assert_contains(d.error, "crashed the serving process (signal 11)");
    assert_true(h_wait_log(&s, "moved to the dead letters", DEADLINE_MS));
    assert_int_equal(h_count_log(&s, "starting a new serving process"), 1);
    h_stop_clean(&s);
    h_free(&s);
}

/* Under the supervisor a run does not wait for its start's commit (lazy
 * starts): a task that crashes the serving process at once may still be
 * queued on disk, with no attempt counted.  The crash record counts it:
 * the next process runs attempt 2 (committed as running before it runs,
 * since that count was in memory only), and the one after that moves it
 * to the dead letters.  Each attempt runs once, and the task crashes two
 * processes, not more (without the committed start of attempt 2 the third
 * process would run attempt 2 again, and the supervisor give up). */
static void journal_server_crash_at_once_under_the_supervisor_uses_its_attempts(void **state)
{
    sandbox *sb = *state;
    app_run l;
    app_run_init(&l, sb);
    const char *args[] = {"--journal", sb->path, "--workers", "2", NULL};
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, l.env), 0);
    uint64_t id = queue_task(&s, "/crash?tag=c");
    on_disk d = wait_disk_state(sb->path, id, "dead");
    h_assert_contains(d.error, "attempt 2 of 2 crashed the serving process (signal 11)");
    assert_int_equal(d.attempts, 2);
    app_run_log_is(&l, "c 1\nc 2\n");
    assert_true(h_wait_log(&s, "moved to the dead letters", DEADLINE_MS));
    assert_int_equal(h_count_log(&s, "starting a new serving process"), 2);
    h_resp r; /* the third process serves */
    assert_int_equal(h_get(&s, "/attach?tag=after", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    h_stop_clean(&s);
    h_free(&s);
}

/* Under the supervisor (lazy starts) a brief task runs inline, on the
 * HTTP thread (docs/tasks.md, "Inline runs"), and the journal records it
 * as any other: every one ran once, and each row ends succeeded with
 * attempt 1.  Starts that are awaited (--single-process) never run
 * inline: stats_show_the_journal. */
static void journal_server_inline_runs_are_recorded(void **state)
{
    sandbox *sb = *state;
    app_run l;
    app_run_init(&l, sb);
    /* The widest bound: "record" writes a line, which a sanitizer build
     * on a busy machine can make slower than the default 50 us. */
    const char *args[] = {"--journal", sb->path, "--quiet", "--inline-tasks", "1000", NULL};
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, l.env), 0);
    assert_int_equal(h_stat(&s, "queue", "inline_us"), 1000);
    int n = 0;
    uint64_t last = 0;
    while ((h_stat(&s, "record", "inline_runs") < 10 || n % 8 != 0) && n < 3000) {
        char path[64];
        h_resp r;
        snprintf(path, sizeof path, "/attach?tag=i%d", n++);
        assert_int_equal(h_get(&s, path, &r), 0);
        assert_int_equal(r.status, 200);
        last = strtoull(h_header(&r, "Bgserve-Tasks"), NULL, 10);
        h_resp_free(&r);
    }
    assert_true(h_stat(&s, "record", "inline_runs") >= 10);
    assert_true(h_wait_stat(&s, "record", "succeeded", n, DEADLINE_MS));
    assert_true(h_wait_stat(&s, "journal", "pending", 0, DEADLINE_MS));
    on_disk d = wait_disk_state(sb->path, last, "succeeded");
    assert_int_equal(d.attempts, 1);
    runs r = read_runs(l.path);
    for (int i = 0; i < n; i++) {
        char p[32];
        snprintf(p, sizeof p, "i%d", i);
        long k = runs_find(&r, p);
        assert_true(k >= 0);
        assert_int_equal(r.count[k], 1);
        assert_int_equal(r.max_attempt[k], 1);
    }
    runs_free(&r);
    h_stop_clean(&s);
    h_free(&s);
}

/* A disk that fills up while serving (the file size limit, with SIGXFSZ
 * ignored, as a shell script sets it before exec): requests that queue
 * tasks get 503 saying why, requests without tasks are still served, and
 * the log says it once per failing episode. */
/* A deferred answer and an awaited one are held for the commit of their
 * tasks like any other: when the 200 arrives, the task is on disk. */
static void journal_server_deferred_answers_wait_for_the_commit(void **state)
{
    sandbox *sb = *state;
    const char *args[] = {"--journal", sb->path, "--single-process", "--quiet", NULL};
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, NULL), 0);
    static const char *const paths[] = {"/defer?tag=d1", "/await?tag=a1"};
    for (size_t i = 0; i < 2; i++) {
        h_resp r = {0};
        assert_int_equal(h_get(&s, paths[i], &r), 0);
        assert_int_equal(r.status, 200);
        const char *ids = h_header(&r, "Bgserve-Tasks");
        assert_non_null(ids);
        uint64_t id = strtoull(ids, NULL, 10);
        assert_true(id > 0);
        on_disk d;
        if (!on_disk_now(sb->path, id, &d))
            fail_msg("%s: task %" PRIu64 " is not on disk when its 200 arrived", paths[i], id);
        h_resp_free(&r);
    }
    h_stop_clean(&s);
    h_free(&s);
}

/* Fill the disk (ulimit -f) with requests that queue tasks until one is
 * answered 503: the journal cannot commit. */
static void fill_the_disk(h_server *s)
{
    long status = 0;
    h_resp r = {0};
    for (int sent = 0; sent < 5000 && status != 503; sent++) {
        char path[64];
        snprintf(path, sizeof path, "/enq?n=4&tag=f%d", sent);
        assert_int_equal(h_get(s, path, &r), 0);
        status = r.status;
        if (status != 503) {
            assert_int_equal(status, 202);
            h_resp_free(&r);
        }
    }
    assert_int_equal(status, 503);
    h_assert_contains(r.body, "could not be made durable");
    h_assert_contains(r.body, "the disk is full");
    assert_non_null(h_header(&r, "Retry-After"));
    h_resp_free(&r);
}

/* Start bgserve with args under `ulimit -f 1024` (SIGXFSZ ignored). */
static void start_limited(h_server *s, sandbox *sb, const char *const *args)
{
    char script[192];
    snprintf(script, sizeof script, "%s/limited.sh", sb->dir);
    write_limited(script, 1024);
    assert_int_equal(h_start_bin(s, script, h_fixture("journal_app"), args, NULL), 0);
}

/* Once the disk is full, a deferred or awaited answer whose task cannot
 * be committed is a 503 with Retry-After too, not its 200. */
static void journal_server_full_disk_deferred_answers_503(void **state)
{
    sandbox *sb = *state;
    const char *args[] = {"--journal", sb->path, "--single-process", "--quiet", NULL};
    h_server s;
    start_limited(&s, sb, args);
    fill_the_disk(&s);
    static const char *const routes[] = {"/defer", "/await"};
    for (size_t i = 0; i < 2; i++) {
        /* A commit fits now and then (SQLite reuses WAL pages): ask until
         * one is refused; each answer is 200 or that 503. */
        long status = 0;
        h_resp r = {0};
        for (int sent = 0; sent < 2000 && status != 503; sent++) {
            char path[64];
            snprintf(path, sizeof path, "%s?tag=x%d", routes[i], sent);
            assert_int_equal(h_get(&s, path, &r), 0);
            status = r.status;
            if (status != 503) {
                assert_int_equal(status, 200);
                h_resp_free(&r);
            }
        }
        if (status != 503)
            fail_msg("%s: never answered 503 on a full disk", routes[i]);
        h_assert_contains(r.body, "could not be made durable");
        assert_non_null(h_header(&r, "Retry-After"));
        h_resp_free(&r);
    }
    assert_int_equal(h_stop(&s, SIGKILL), 128 + SIGKILL);
    h_free(&s);
}

static void journal_server_full_disk_answers_503_and_serves_the_rest(void **state)
{
    sandbox *sb = *state;
    const char *args[] = {"--journal", sb->path, "--single-process", "--quiet", NULL};
    h_server s;
    h_resp r = {0};
    start_limited(&s, sb, args);
    fill_the_disk(&s);
    assert_int_equal(h_get(&s, "/adhoc", &r), 0); /* no task to write: served */
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_true(h_wait_log(&s, "the disk is full", DEADLINE_MS));
    /* once per episode: a commit that fits now and then (SQLite reuses
     * WAL pages) ends one, and the next failure starts another */
    long long failed = h_stat(&s, "journal", "failed_commits");
    int episodes = h_count_log(&s, "cannot be made durable until this is fixed");
    int recovered = h_count_log(&s, "commits work again after");
    assert_true(failed >= 1);
    assert_true(episodes >= 1 && episodes <= recovered + 1);
    assert_int_equal(h_stop(&s, SIGKILL), 128 + SIGKILL);
    h_free(&s);
}

/* A retry one minute away is on disk with its time; after a kill and a
 * restart the task waits for it (not run again at once). */
static void journal_server_retry_schedule_survives_a_restart(void **state)
{
    sandbox *sb = *state;
    const char *args[] = {"--journal", sb->path, "--single-process", NULL};
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, NULL), 0);
    uint64_t id = queue_task(&s, "/retry");
    on_disk d = wait_disk_runs(sb->path, id, "queued", 1); /* back from its first run */
    uint64_t now = util_wall_us();
    assert_int_equal(d.attempts, 1);
    assert_string_equal(d.error, "not yet");
    assert_true(d.not_before_us > now + 30u * 1000000u);
    assert_int_equal(h_stop(&s, SIGKILL), 128 + SIGKILL);
    h_free(&s);

    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, NULL), 0);
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%" PRIu64, id);
    char *body = h_wait_state(&s, path, "queued", DEADLINE_MS);
    assert_non_null(body);
    assert_int_equal(h_json_num(body, "attempts"), 1);
    free(body);
    on_disk again = wait_disk_state(sb->path, id, "queued");
    assert_int_equal(again.not_before_us, d.not_before_us);
    assert_true(h_wait_log(&s, "1 task from an earlier run: 1 queued", DEADLINE_MS));
    assert_int_equal(h_stop(&s, SIGKILL), 128 + SIGKILL);
    h_free(&s);
}

/* A task that fails its last attempt is a dead letter; after a restart
 * /_bgserve/tasks/ID answers from the journal; stats count it. */
static void journal_server_dead_letter_after_the_last_attempt(void **state)
{
    sandbox *sb = *state;
    const char *args[] = {"--journal", sb->path, "--single-process", NULL};
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, NULL), 0);
    uint64_t id = queue_task(&s, "/dead");
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%" PRIu64, id);
    free(h_wait_state(&s, path, "failed", DEADLINE_MS));
    on_disk d = wait_disk_state(sb->path, id, "dead");
    assert_string_equal(d.error, "broken on attempt 2");
    assert_int_equal(d.attempts, 2);
    assert_true(h_wait_stat(&s, "journal", "dead", 1, DEADLINE_MS));
    h_stop_clean(&s);
    h_free(&s);

    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, NULL), 0);
    h_resp r;
    assert_int_equal(h_get(&s, path, &r), 0);
    assert_int_equal(r.status, 200);
    h_assert_contains(r.body, "\"state\":\"dead\"");
    h_assert_contains(r.body, "\"source\":\"journal\"");
    h_assert_contains(r.body, "broken on attempt 2");
    h_resp_free(&r);
    /* ids never repeat across runs */
    assert_true(queue_task(&s, "/retry") > id);
    assert_int_equal(h_stat(&s, "journal", "dead"), 1);
    assert_int_equal(h_stop(&s, SIGKILL), 128 + SIGKILL); /* the retry is a minute away */
    h_free(&s);
}

/* A task the journal holds whose function the plugin no longer has:
 * dead-lettered at start with the reason, and one warning. */
static void journal_server_replayed_task_without_its_function_is_dead(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    journal_task t = {.id = journal_next_id(j), .name = "vanished", .payload = "x",
                      .payload_len = 1, .max_attempts = 1};
    assert_int_equal(journal_add(j, &t, 1, NULL, NULL), 0);
    journal_close(j);

    const char *args[] = {"--journal", sb->path, "--single-process", NULL};
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, NULL), 0);
    on_disk d = wait_disk_state(sb->path, t.id, "dead");
    h_assert_contains(d.error, "task 'vanished' no longer exists in journal_app");
    assert_true(h_wait_log(&s, "moved to the dead letters", DEADLINE_MS));
    assert_int_equal(h_count_log(&s, "moved to the dead letters"), 1);
    h_stop_clean(&s);
    h_free(&s);
}

/* The dashboard's retry (POST /_bgserve/tasks/ID/retry) reaches the dead
 * letters of an earlier run: one is queued again as a new task with its
 * payload and request id, and its entry stays; a task the journal holds
 * as succeeded, or a dead letter whose function is gone, is refused with
 * 409; an id the journal does not have either is 404. */
static void journal_server_dashboard_retries_a_dead_letter(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    journal_task dead = {.id = journal_next_id(j), .name = "record", .payload = "dl-payload",
                         .payload_len = 10, .max_attempts = 1, .request_id = "req-dl"};
    journal_task done = {.id = journal_next_id(j), .name = "record", .payload = "x",
                         .payload_len = 1, .max_attempts = 1};
    journal_task gone = {.id = journal_next_id(j), .name = "vanished", .payload = "x",
                         .payload_len = 1, .max_attempts = 1};
    journal_task all[] = {dead, done, gone};
    assert_int_equal(journal_add(j, all, 3, NULL, NULL), 0);
    assert_int_equal(journal_start(j, dead.id, 1, NULL, NULL), 0);
    assert_int_equal(journal_dead(j, dead.id, "broken in an earlier run", NULL, NULL), 0);
    assert_int_equal(journal_start(j, done.id, 1, NULL, NULL), 0);
    assert_int_equal(journal_succeed(j, done.id, NULL, NULL, NULL), 0);
    journal_close(j);

    char log[160], env_log[200];
    snprintf(log, sizeof log, "%s/runs.log", sb->dir);
    snprintf(env_log, sizeof env_log, "JOURNAL_APP_LOG=%s", log);
    const char *env[] = {env_log, NULL};
    const char *args[] = {"--journal", sb->path, "--single-process", NULL};
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, env), 0);
    wait_disk_state(sb->path, gone.id, "dead"); /* replayed: its function is gone */

    char *body = NULL;
    assert_int_equal(h_post_retry(&s, dead.id, 0, &body), 403); /* the header still counts */
    free(body);
    assert_int_equal(h_post_retry(&s, dead.id, 1, &body), 202);
    char want[96];
    snprintf(want, sizeof want, "\"retry_of\":%" PRIu64 ",\"name\":\"record\"", dead.id);
    h_assert_contains(body, want);
    const char *at = strstr(body, "\"id\":");
    assert_non_null(at);
    uint64_t nid = strtoull(at + 5, NULL, 10);
    assert_true(nid > gone.id);
    free(body);
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%" PRIu64, nid);
    body = h_wait_state(&s, path, "succeeded", DEADLINE_MS);
    assert_non_null(body);
    h_assert_contains(body, "\"request_id\":\"req-dl\"");
    free(body);
    char *ran = h_slurp(log, NULL);
    h_assert_contains(ran, "dl-payload 1\n");
    free(ran);
    wait_disk_state(sb->path, nid, "succeeded");
    wait_disk_state(sb->path, dead.id, "dead"); /* the dead letter stays */

    assert_int_equal(h_post_retry(&s, done.id, 1, &body), 409);
    h_assert_contains(body, "cannot be retried");
    free(body);
    assert_int_equal(h_post_retry(&s, gone.id, 1, &body), 409);
    h_assert_contains(body, "no task named 'vanished'");
    free(body);
    assert_int_equal(h_post_retry(&s, 999999999, 1, &body), 404);
    free(body);
    h_stop_clean(&s);
    h_free(&s);
}

/* /_bgserve/stats has the journal; ad hoc tasks are counted apart and
 * never written. */
static void journal_server_stats_show_the_journal(void **state)
{
    sandbox *sb = *state;
    const char *args[] = {"--journal", sb->path, "--single-process", NULL};
    h_server s;
    assert_int_equal(h_start_app(&s, h_fixture("journal_app"), args, NULL), 0);
    h_resp r;
    assert_int_equal(h_get(&s, "/enq?n=3&tag=st", &r), 0);
    assert_int_equal(r.status, 202);
    h_resp_free(&r);
    assert_int_equal(h_get(&s, "/adhoc", &r), 0);
    assert_int_equal(r.status, 200);
    h_resp_free(&r);
    assert_true(h_wait_stat(&s, "journal", "memory_only", 1, DEADLINE_MS));
    assert_true(h_wait_stat(&s, "journal", "journaled", 3, DEADLINE_MS));
    assert_true(h_wait_stat(&s, "journal", "pending", 0, DEADLINE_MS));
    assert_true(h_stat(&s, "journal", "commits") >= 1);
    assert_true(h_stat(&s, "journal", "last_commit_us") > 0);
    assert_int_equal(h_get(&s, "/_bgserve/stats", &r), 0);
    char file[256];
    assert_int_equal(h_json_str(strstr(r.body, "\"journal\""), "file", file, sizeof file), 0);
    assert_string_equal(file, sb->path);
    h_assert_contains(r.body, "\"backend\":\"journal\"");
    /* commit latency and batching: present and consistent (no timing) */
    const char *jo = strstr(r.body, "\"journal\"");
    long long p50 = h_json_obj_num(jo, "commit_us", "p50");
    long long p99 = h_json_obj_num(jo, "commit_us", "p99");
    assert_true(p50 > 0);
    assert_true(p99 >= p50);
    assert_true(h_json_num(jo, "records") >= 3);
    /* awaited starts (--single-process): no run is inline */
    assert_int_equal(h_json_obj_num(r.body, "queue", "inline_us"), 0);
    h_resp_free(&r);
    h_stop_clean(&s);
    h_free(&s);
}

#define T(f) cmocka_unit_test_setup_teardown(f, js_setup, js_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(journal_server_startup_faults_exit_1),
        T(journal_server_directory_and_full_disk_faults_exit_1),
        T(journal_server_refuses_a_journal_another_bgserve_has),
        T(journal_server_sigkill_then_restart_runs_every_accepted_task),
        T(journal_server_stop_during_replay_loses_nothing),
        T(journal_server_crash_in_a_task_loses_no_other_task),
    T(journal_server_crash_at_once_under_the_supervisor_uses_its_attempts),
        T(journal_server_inline_runs_are_recorded),
        T(journal_server_full_disk_answers_503_and_serves_the_rest),
        T(journal_server_deferred_answers_wait_for_the_commit),
        T(journal_server_full_disk_deferred_answers_503),
        T(journal_server_crash_in_a_run_replays_the_next_attempt),
        T(journal_server_sequence_keeps_its_order_after_a_crash),
        T(journal_server_sequence_after_a_failure_is_skipped),
        T(journal_server_stop_keeps_a_sequence_for_the_next_start),
        T(journal_server_stop_with_a_cancelled_run_exits_3),
        T(journal_server_retry_schedule_survives_a_restart),
        T(journal_server_dead_letter_after_the_last_attempt),
        T(journal_server_replayed_task_without_its_function_is_dead),
        T(journal_server_dashboard_retries_a_dead_letter),
        T(journal_server_stats_show_the_journal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
