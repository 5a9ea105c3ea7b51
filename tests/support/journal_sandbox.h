/*
 * journal_sandbox.h - what the tests of the task journal share: a
 * temporary directory per test with a journal path in it (cmocka setup
 * and teardown), opening a journal that must open, a completion counter,
 * and a file size limit for the disk-full children.
 *
 * Header-only (static inline), so that only the tests that include it
 * link the journal.  Include it after <cmocka.h>.
 */
#ifndef BGSERVE_JOURNAL_SANDBOX_H
#define BGSERVE_JOURNAL_SANDBOX_H

#include "helpers.h"
#include "journal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

typedef struct sandbox {
    char dir[64];
    char path[128]; /* DIR/tasks.db, not created */
} sandbox;

/* cmocka setup: a fresh /tmp/bgserve-journal-XXXXXX. */
static inline int js_setup(void **state)
{
    sandbox *sb = calloc(1, sizeof *sb);
    if (sb == NULL)
        return -1;
    strcpy(sb->dir, "/tmp/bgserve-journal-XXXXXX");
    if (mkdtemp(sb->dir) == NULL)
        return -1;
    snprintf(sb->path, sizeof sb->path, "%s/tasks.db", sb->dir);
    *state = sb;
    return 0;
}

/* cmocka teardown: the directory and everything in it go. */
static inline int js_teardown(void **state)
{
    sandbox *sb = *state;
    h_rm_rf(sb->dir);
    free(sb);
    return 0;
}

/* journal_open with sync normal, which must succeed (its message is
 * printed when it does not). */
static inline journal *js_open_ok(const char *path)
{
    journal_config cfg = {.path = path, .sync = JOURNAL_SYNC_NORMAL};
    journal *j = NULL;
    char err[1024] = "";
    int rc = journal_open(&cfg, &j, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "journal_open: %s\n", err);
    assert_int_equal(rc, 0);
    return j;
}

/* A completion counter with its last status and failure message. */
typedef struct done_count {
    pthread_mutex_t mu;
    int n, failed;
    int last_status;
    char last_msg[512];
} done_count;

#define DONE_COUNT_INIT {.mu = PTHREAD_MUTEX_INITIALIZER}

/* A journal_done_fn / queue_done_fn that counts into arg (a done_count). */
static inline void count_done(void *arg, int status, const char *msg)
{
    done_count *c = arg;
    pthread_mutex_lock(&c->mu);
    c->n++;
    c->last_status = status;
    if (status != 0) {
        c->failed++;
        snprintf(c->last_msg, sizeof c->last_msg, "%s", msg ? msg : "(null)");
    }
    pthread_mutex_unlock(&c->mu);
}

/* c->n, read under its lock; *status (may be NULL) gets the last status. */
static inline int count_now(done_count *c, int *status)
{
    pthread_mutex_lock(&c->mu);
    int n = c->n;
    if (status != NULL)
        *status = c->last_status;
    pthread_mutex_unlock(&c->mu);
    return n;
}

/* The first commit's callback holds the writer until `appended` reaches
 * `want` (the test's threads count what they appended): those records
 * then share the next transaction. */
typedef struct js_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered;   /* the writer is in js_gate_done */
    int status;
    int appended;
    int want;
} js_gate;

static inline void js_gate_done(void *arg, int status, const char *msg)
{
    (void)msg;
    js_gate *g = arg;
    pthread_mutex_lock(&g->mu);
    g->entered = 1;
    g->status = status;
    pthread_cond_broadcast(&g->cv);
    while (g->appended < g->want)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

/* Add a task whose callback holds the writer; return once it does. */
static inline void js_hold_writer(journal *j, js_gate *g)
{
    journal_task t = {.id = journal_next_id(j), .name = "first", .payload = "f",
                      .payload_len = 1, .max_attempts = 3, .request_id = "req-1"};
    assert_int_equal(journal_add(j, &t, 1, js_gate_done, g), 0);
    pthread_mutex_lock(&g->mu);
    while (!g->entered)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    assert_int_equal(g->status, 0);
}

/* Count n more records appended (the writer goes on at `want`). */
static inline void js_gate_append(js_gate *g, int n)
{
    pthread_mutex_lock(&g->mu);
    g->appended += n;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Files this process writes may grow to bytes at most (RLIM_INFINITY:
 * no limit); SIGXFSZ must be ignored for a write past it to fail with
 * EFBIG instead of killing the process. */
static inline void js_limit_file_size(rlim_t bytes)
{
    struct rlimit rl;
    getrlimit(RLIMIT_FSIZE, &rl);
    rl.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &rl);
}

#endif
