/*
 * test_journal_cmd.c - `bgserve journal FILE ls|show|retry|purge`, run
 * through the real build/bgserve against journals this test fills with
 * journal.c, also while it keeps one open with its writer running (as a
 * server would).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"
#include "journal.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct sandbox {
    char dir[64];
    char path[128];
    journal *j;              /* open with its writer while the test runs */
    uint64_t queued, done, dead, failed;
} sandbox;

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
} waiter;

static void on_done(void *arg, int status, const char *msg)
{
    (void)msg;
    waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->n += status == 0 ? 1 : 1000;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static uint64_t add(journal *j, const char *name, const char *payload, size_t len)
{
    journal_task t = {.id = journal_next_id(j), .name = name, .payload = payload,
                      .payload_len = len, .max_attempts = 2, .request_id = "r-42"};
    assert_int_equal(journal_add(j, &t, 1, NULL, NULL), 0);
    return t.id;
}

/* A journal with one task in each of: queued, succeeded, dead, failed,
 * left open (the tools must work on a live journal). */
static int setup(void **state)
{
    sandbox *sb = calloc(1, sizeof *sb);
    if (sb == NULL)
        return -1;
    strcpy(sb->dir, "/tmp/bgserve-journal-cmd-XXXXXX");
    if (mkdtemp(sb->dir) == NULL)
        return -1;
    snprintf(sb->path, sizeof sb->path, "%s/tasks.db", sb->dir);
    journal_config cfg = {.path = sb->path};
    char err[1024];
    if (journal_open(&cfg, &sb->j, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    journal *j = sb->j;
    sb->queued = add(j, "send_mail", "to=ann@example.com", 18);
    sb->done = add(j, "resize", "img=7", 5);
    sb->dead = add(j, "charge", "\x01\x02\xff", 3);
    sb->failed = add(j, "export", "", 0);
    waiter w = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    journal_start(j, sb->done, 1, NULL, NULL);
    journal_succeed(j, sb->done, "{\"w\":640}", NULL, NULL);
    journal_start(j, sb->dead, 2, NULL, NULL);
    journal_dead(j, sb->dead, "card declined", NULL, NULL);
    journal_start(j, sb->failed, 1, NULL, NULL);
    journal_finish(j, sb->failed, "failed", "disk quota", on_done, &w);
    pthread_mutex_lock(&w.mu);
    while (w.n == 0)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    *state = sb;
    return w.n == 1 ? 0 : -1;
}

static int teardown(void **state)
{
    sandbox *sb = *state;
    journal_close(sb->j);
    h_rm_rf(sb->dir);
    free(sb);
    return 0;
}

static int run(char **out, const char *a1, const char *a2, const char *a3, const char *a4,
               const char *a5)
{
    const char *argv[] = {h_build_path("bgserve"), "journal", a1, a2, a3, a4, a5, NULL};
    return h_run(argv, out);
}

static char *id_text(uint64_t id)
{
    static char buf[4][24];
    static int slot;
    char *b = buf[slot++ % 4];
    snprintf(b, 24, "%" PRIu64, id);
    return b;
}

/* ---- ls ------------------------------------------------------------------------- */

static void journal_cmd_ls_lists_every_task_on_a_live_journal(void **state)
{
    sandbox *sb = *state;
    char *out, line[512];
    assert_int_equal(run(&out, sb->path, "ls", NULL, NULL, NULL), 0);
    h_assert_contains(out, "ID");
    h_assert_contains(out, "STATE");
    assert_int_equal(h_line_with(out, "send_mail", line, sizeof line), 0);
    h_assert_contains(line, id_text(sb->queued));
    h_assert_contains(line, "queued");
    h_assert_contains(line, "0/2");
    assert_int_equal(h_line_with(out, "resize", line, sizeof line), 0);
    h_assert_contains(line, "succeeded");
    assert_int_equal(h_line_with(out, "charge", line, sizeof line), 0);
    h_assert_contains(line, "dead");
    h_assert_contains(line, "card declined");
    assert_int_equal(h_line_with(out, "export", line, sizeof line), 0);
    h_assert_contains(line, "failed");
    h_assert_contains(line, "disk quota");
    free(out);
}

static void journal_cmd_ls_state_filters(void **state)
{
    sandbox *sb = *state;
    char *out;
    assert_int_equal(run(&out, sb->path, "ls", "--state", "dead", NULL), 0);
    h_assert_contains(out, "charge");
    h_assert_lacks(out, "send_mail");
    h_assert_lacks(out, "resize");
    free(out);
    assert_int_equal(run(&out, sb->path, "ls", "--state", "queued", NULL), 0);
    h_assert_contains(out, "send_mail");
    h_assert_lacks(out, "charge");
    h_assert_lacks(out, "export");
    free(out);
    assert_int_equal(run(&out, sb->path, "ls", "--state", "paused", NULL), 2);
    h_assert_contains(out, "unknown --state");
    h_assert_contains(out, "'paused'");
    h_assert_contains(out, "Usage: bgserve journal FILE ls");
    free(out);
    assert_int_equal(run(&out, sb->path, "ls", "--state", NULL, NULL), 2);
    h_assert_contains(out, "--state needs a STATE");
    free(out);
}

/* ---- show ----------------------------------------------------------------------- */

static void journal_cmd_show_prints_every_field(void **state)
{
    sandbox *sb = *state;
    char *out;
    assert_int_equal(run(&out, sb->path, "show", id_text(sb->queued), NULL, NULL), 0);
    h_assert_contains(out, "name:         send_mail");
    h_assert_contains(out, "state:        queued");
    h_assert_contains(out, "attempts:     0 of 2");
    h_assert_contains(out, "request id:   r-42");
    h_assert_contains(out, "payload:      18 bytes, text:\nto=ann@example.com\n");
    free(out);
    assert_int_equal(run(&out, sb->path, "show", id_text(sb->dead), NULL, NULL), 0);
    h_assert_contains(out, "state:        dead");
    h_assert_contains(out, "last error:   card declined");
    h_assert_contains(out, "payload:      3 bytes, hex:\n0102ff\n");
    free(out);
    assert_int_equal(run(&out, sb->path, "show", id_text(sb->done), NULL, NULL), 0);
    h_assert_contains(out, "result:       {\"w\":640}");
    free(out);
}

static void journal_cmd_show_unknown_id_fails(void **state)
{
    sandbox *sb = *state;
    char *out;
    assert_int_equal(run(&out, sb->path, "show", "987654", NULL, NULL), 1);
    h_assert_contains(out, "no task 987654");
    h_assert_contains(out, sb->path);
    free(out);
    assert_int_equal(run(&out, sb->path, "show", "seven", NULL, NULL), 2);
    h_assert_contains(out, "ID must be a task id");
    free(out);
    assert_int_equal(run(&out, sb->path, "show", NULL, NULL, NULL), 2);
    h_assert_contains(out, "missing ID after 'show'");
    free(out);
}

/* ---- retry ---------------------------------------------------------------------- */

typedef struct replayed {
    uint64_t ids[16];
    uint32_t attempts[16];
    int n;
} replayed;

static void note_replay(void *arg, const journal_rec *r)
{
    replayed *p = arg;
    if (p->n < 16) {
        p->attempts[p->n] = r->attempts;
        p->ids[p->n++] = r->id;
    }
}

static void journal_cmd_retry_queues_dead_and_failed_tasks(void **state)
{
    sandbox *sb = *state;
    char *out;
    assert_int_equal(run(&out, sb->path, "retry", id_text(sb->dead), NULL, NULL), 0);
    h_assert_contains(out, "queued again");
    free(out);
    assert_int_equal(run(&out, sb->path, "retry", id_text(sb->failed), NULL, NULL), 0);
    free(out);
    assert_int_equal(run(&out, sb->path, "show", id_text(sb->dead), NULL, NULL), 0);
    h_assert_contains(out, "state:        queued");
    h_assert_contains(out, "attempts:     0 of 2");
    h_assert_contains(out, "last error:   card declined");
    free(out);
    /* the next server start replays them, under the same ids */
    journal_close(sb->j);
    journal_config cfg = {.path = sb->path};
    char err[1024];
    assert_int_equal(journal_open(&cfg, &sb->j, err, sizeof err), 0);
    replayed r = {0};
    assert_int_equal(journal_replay(sb->j, note_replay, &r), 3);
    assert_int_equal(r.ids[0], sb->queued);
    assert_int_equal(r.ids[1], sb->dead);
    assert_int_equal(r.ids[2], sb->failed);
    assert_int_equal(r.attempts[1], 0);
}

static void journal_cmd_retry_refuses_live_and_succeeded_tasks(void **state)
{
    sandbox *sb = *state;
    char *out;
    assert_int_equal(run(&out, sb->path, "retry", id_text(sb->done), NULL, NULL), 1);
    h_assert_contains(out, "is succeeded; only dead or failed tasks can be retried");
    free(out);
    assert_int_equal(run(&out, sb->path, "retry", id_text(sb->queued), NULL, NULL), 1);
    h_assert_contains(out, "is queued");
    free(out);
    assert_int_equal(run(&out, sb->path, "retry", "424242", NULL, NULL), 1);
    h_assert_contains(out, "no task 424242");
    free(out);
}

/* ---- purge ---------------------------------------------------------------------- */

static void journal_cmd_purge_removes_finished_tasks_only(void **state)
{
    sandbox *sb = *state;
    char *out;
    /* everything is younger than the default 7 days */
    assert_int_equal(run(&out, sb->path, "purge", NULL, NULL, NULL), 0);
    h_assert_contains(out, "purged 0 finished tasks older than 7 days");
    free(out);
    assert_int_equal(run(&out, sb->path, "purge", "--older", "0", NULL), 0);
    h_assert_contains(out, "purged 3 finished tasks older than 0 days");
    free(out);
    assert_int_equal(run(&out, sb->path, "ls", NULL, NULL, NULL), 0);
    h_assert_contains(out, "send_mail");
    h_assert_lacks(out, "resize");
    h_assert_lacks(out, "charge");
    h_assert_lacks(out, "export");
    free(out);
    assert_int_equal(run(&out, sb->path, "purge", "--older", "-3", NULL), 2);
    h_assert_contains(out, "--older DAYS must be a whole number of days");
    free(out);
    assert_int_equal(run(&out, sb->path, "purge", "--older", NULL, NULL), 2);
    h_assert_contains(out, "--older needs DAYS");
    free(out);
}

/* ---- usage and bad files -------------------------------------------------------------- */

static void journal_cmd_usage_errors(void **state)
{
    sandbox *sb = *state;
    char *out;
    assert_int_equal(run(&out, NULL, NULL, NULL, NULL, NULL), 2);
    h_assert_contains(out, "missing FILE");
    free(out);
    assert_int_equal(run(&out, sb->path, NULL, NULL, NULL, NULL), 2);
    h_assert_contains(out, "missing command (ls, show, retry or purge)");
    free(out);
    assert_int_equal(run(&out, sb->path, "drop", NULL, NULL, NULL), 2);
    h_assert_contains(out, "unknown command (ls, show, retry or purge) 'drop'");
    free(out);
    assert_int_equal(run(&out, "--verbose", "ls", NULL, NULL, NULL), 2);
    h_assert_contains(out, "unknown option '--verbose'");
    free(out);
    assert_int_equal(run(&out, sb->path, "ls", "extra", NULL, NULL), 2);
    h_assert_contains(out, "unexpected argument to ls 'extra'");
    free(out);
    assert_int_equal(run(&out, "--help", NULL, NULL, NULL, NULL), 0);
    h_assert_contains(out, "Usage: bgserve journal FILE ls [--state STATE]");
    h_assert_contains(out, "Exit status:");
    free(out);
}

static void journal_cmd_bad_files_fail_with_one_message(void **state)
{
    sandbox *sb = *state;
    char *out, path[192];
    snprintf(path, sizeof path, "%s/missing.db", sb->dir);
    assert_int_equal(run(&out, path, "ls", NULL, NULL, NULL), 1);
    h_assert_contains(out, path);
    h_assert_contains(out, "No such file or directory");
    /* and the tool never creates one */
    assert_int_equal(access(path, F_OK), -1);
    free(out);

    snprintf(path, sizeof path, "%s/garbage.db", sb->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 100; i++)
        fputs("garbage garbage garbage garbage\n", f);
    fclose(f);
    assert_int_equal(run(&out, path, "ls", NULL, NULL, NULL), 1);
    h_assert_contains(out, "corrupt or not an SQLite database");
    h_assert_contains(out, "move it aside");
    free(out);

    assert_int_equal(run(&out, sb->dir, "ls", NULL, NULL, NULL), 1);
    h_assert_contains(out, "not a regular file");
    free(out);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(journal_cmd_ls_lists_every_task_on_a_live_journal),
        T(journal_cmd_ls_state_filters),
        T(journal_cmd_show_prints_every_field),
        T(journal_cmd_show_unknown_id_fails),
        T(journal_cmd_retry_queues_dead_and_failed_tasks),
        T(journal_cmd_retry_refuses_live_and_succeeded_tasks),
        T(journal_cmd_purge_removes_finished_tasks_only),
        T(journal_cmd_usage_errors),
        T(journal_cmd_bad_files_fail_with_one_message),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
