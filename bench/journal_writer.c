/*
 * bench/journal_writer.c - what the journal's writer spends per task,
 * without HTTP, workers or wall-clock noise: the rows it writes, its
 * commits, and (run under callgrind, bench/README.md) its instructions.
 *
 * Each task lives as in the server: its add (records of PER_ADD tasks, as
 * a response attaches them), its start (claims of 32, journal_start_many)
 * and its success.  The writer's batches are made deterministic: a gate
 * record's callback holds the writer while one round is appended, so
 * each round is one transaction holding the adds of round i, the ends
 * of round i - 1, and the starts of round i ("same": the claim reached
 * the writer before the add's commit, as under load) or of round i - 1
 * ("next": the add was committed first).  "lazy" models lazy starts
 * (docs/journal.md, under the supervisor): the adds of round i, and each
 * task of round i - 1 started lazily and ended at once, before the
 * writer's next batch, so that its end takes the start (two rows a task).
 *
 *   journal_writer [--tasks N] [--round R] [--per-add K] [--start same|next|lazy]
 *                  [--sync normal|full] DIR
 *
 * Prints tasks, commits, rows, rows per task, and the commit time
 * (BEGIN to COMMIT) per task.  Instructions per task: run it twice under
 * `valgrind --tool=callgrind` with two --tasks values and divide the
 * difference of the totals by the difference of the tasks.
 */
#include "journal.h"
#include "util.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered; /* the writer is in the callback */
    int open;    /* it may leave */
} gate;

static void gate_done(void *arg, int status, const char *msg)
{
    gate *g = arg;
    (void)status;
    (void)msg;
    pthread_mutex_lock(&g->mu);
    g->entered = 1;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

/* Append a record whose callback holds the writer; return once it does
 * (everything appended from then on is the next transaction). */
static void gate_close(journal *j, gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->entered = 0;
    g->open = 0;
    pthread_mutex_unlock(&g->mu);
    /* A record that finds no task: the same cheap update every round. */
    if (journal_unstart(j, UINT64_MAX / 2, 0, gate_done, g) != 0) {
        fprintf(stderr, "journal_writer: the journal refused a record\n");
        exit(1);
    }
    pthread_mutex_lock(&g->mu);
    while (!g->entered)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void gate_open(gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void usage(void)
{
    fprintf(stderr, "usage: journal_writer [--tasks N] [--round R] [--per-add K] "
            "[--start same|next|lazy] [--sync normal|full] DIR\n");
    exit(2);
}

int main(int argc, char **argv)
{
    size_t ntasks = 20000, round = 256, per_add = 4;
    int same = 1, lazy = 0;
    journal_sync sync = JOURNAL_SYNC_NORMAL;
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tasks") == 0 && i + 1 < argc)
            ntasks = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--round") == 0 && i + 1 < argc)
            round = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--per-add") == 0 && i + 1 < argc)
            per_add = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--start") == 0 && i + 1 < argc) {
            i++;
            same = strcmp(argv[i], "same") == 0 || strcmp(argv[i], "lazy") == 0;
            lazy = strcmp(argv[i], "lazy") == 0;
        }
        else if (strcmp(argv[i], "--sync") == 0 && i + 1 < argc) {
            if (journal_sync_parse(argv[++i], &sync) != 0)
                usage();
        } else if (argv[i][0] != '-' && dir == NULL)
            dir = argv[i];
        else
            usage();
    }
    if (dir == NULL || round == 0 || per_add == 0 || round % per_add != 0)
        usage();
    ntasks -= ntasks % round;

    char path[4096];
    snprintf(path, sizeof path, "%s/journal_writer.db", dir);
    unlink(path);
    journal_config cfg = {.path = path, .sync = sync, .max_batch = (unsigned)(4 * round + 8)};
    journal *j = NULL;
    char err[1024];
    if (journal_open(&cfg, &j, err, sizeof err) != 0) {
        fprintf(stderr, "journal_writer: %s\n", err);
        return 1;
    }
    uint64_t *ids = calloc(ntasks, sizeof *ids);
    journal_task *tasks = calloc(per_add, sizeof *tasks);
    static const char payload[] = "{\"n\":42}";
    gate gs[2] = {{.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER},
                  {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER}};
    size_t nrounds = ntasks / round;

    gate_close(j, &gs[0]);
    for (size_t r = 0; r <= nrounds + 1; r++) {
        size_t lo = r * round;
        if (r < nrounds) /* the adds of round r */
            for (size_t i = lo; i < lo + round; i += per_add) {
                for (size_t k = 0; k < per_add; k++) {
                    ids[i + k] = journal_next_id(j);
                    tasks[k] = (journal_task){.id = ids[i + k], .name = "work",
                                              .payload = payload,
                                              .payload_len = sizeof payload - 1,
                                              .max_attempts = 3, .request_id = "bench-req"};
                }
                journal_add(j, tasks, per_add, NULL, NULL);
            }
        size_t s = same ? r : r - 1; /* the round whose starts go now */
        if (!lazy && r <= nrounds && (same || r >= 1) && s < nrounds)
            for (size_t i = s * round; i < (s + 1) * round; i += 32) {
                journal_started st[32];
                size_t n = 0;
                for (; n < 32 && i + n < (s + 1) * round; n++)
                    st[n] = (journal_started){.id = ids[i + n], .attempt = 1};
                journal_start_many(j, st, n, NULL, NULL);
            }
        size_t e = same ? r - 1 : r - 2; /* the round whose ends go now */
        if (r >= (same ? 1u : 2u) && e < nrounds)
            for (size_t i = e * round; i < (e + 1) * round; i++) {
                if (lazy)
                    journal_start_lazy(j, ids[i], 1);
                journal_succeed(j, ids[i], NULL, NULL, NULL);
            }
        gate_open(&gs[r % 2]); /* the round is one transaction, behind the gate */
        gate_close(j, &gs[(r + 1) % 2]);
    }
    journal_stats st;
    journal_get_stats(j, &st);
    gate_open(&gs[(nrounds + 2) % 2]);
    journal_close(j);
    printf("tasks %zu, round %zu, per add %zu, start %s: %" PRIu64 " commits, %" PRIu64
           " rows (%.2f per task), commit p50 %" PRIu64 " us (%.2f us per task)\n",
           ntasks, round, per_add, lazy ? "lazy" : same ? "same" : "next", st.commits, st.records,
           (double)st.records / (double)ntasks, st.commit_p50_us,
           (double)st.commit_p50_us / (double)round);
    free(ids);
    free(tasks);
    return 0;
}
