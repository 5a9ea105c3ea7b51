/*
 * test_broker_scale.c - the Redis broker end to end: the real
 * build/bgserve with --broker and `build/bgserve worker` processes on a
 * redis-server of the test's own (tests/support/redis.h), all on
 * loopback, with the fixture scale_app (its runs write "WHAT PID ID
 * ATTEMPT BUILD [SEQ POS]" lines to a file the test reads).
 *
 * - 10,000 tasks (2,000 under a sanitizer), 100 per request, run exactly
 *   once on two workers, and both workers run some;
 * - Redis (AOF on) restarted mid-run, a task running through it: the
 *   requests meanwhile get 503, the rest is served, and every task that
 *   got a 2xx runs exactly once;
 * - periodic ticks in a server and two workers run once per interval
 *   (the lease), not once per process;
 * - sequences keep their order and their skip rule with their steps on
 *   different workers, and run to their end after the server that
 *   accepted them stopped;
 * - `bgserve worker --reload`: the plugin replaced while tasks come in,
 *   none lost, the new build runs the later ones;
 * - a worker stopped (SIGTERM) while its task runs hands the task back
 *   to Redis, uncounted, says so, exits 0, and another worker runs it;
 *   while it drains it takes nothing new.
 *
 * Everything runs on the test's main thread; every wait polls with a
 * deadline.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"
#include "redis.h"

#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 30000u
#define BULK_DEADLINE_MS 240000u /* 10,000 tasks through Redis, under a sanitizer too */
#define PER_REQUEST 100          /* tasks one /add attaches */

/* One line of the fixture's log. */
typedef struct run {
    char what[8];
    long pid;
    uint64_t id;
    unsigned attempt;
    char build;
    long seq, pos; /* -1 when the line has none */
} run;

/* ---- the rig (h_rig, tests/support/redis.h) with scale_app --------------------- */

static void nap(void)
{
    struct timespec ts = {0, 5 * 1000000L};
    nanosleep(&ts, NULL); /* polling interval */
}

/* A redis-server (extra: its arguments, may be NULL) and the fixture's
 * environment; nothing started on it yet.  more_env: NULL or one more
 * "NAME=value" for every process. */
static void rig_redis(h_rig *g, const char *const *extra, const char *more_env)
{
    h_rig_redis(g, extra, "SCALE_APP_LOG");
    h_rig_env(g, "SCALE_APP_GO=%s/go", g->redis.dir);
    if (more_env)
        h_rig_env(g, "%s", more_env);
}

static void start_server(h_rig *g, const char *const *more)
{
    h_rig_server(g, h_fixture("scale_app"), more);
}

/* rig_redis (no more environment), then the server with more arguments. */
static void rig_up(h_rig *g, const char *const *extra, const char *const *more)
{
    rig_redis(g, extra, NULL);
    start_server(g, more);
}

/* The dead letters hold ndead jobs; then stop everything (h_rig_down). */
static void rig_done(h_rig *g, long long ndead)
{
    assert_int_equal(h_redis_int(&g->redis, "XLEN bgserve:{scale_app}:dead"), ndead);
    h_rig_down(g);
}

static void start_worker(h_rig *g, h_server *w, const char *plugin, const char *const *more)
{
    h_start_worker(w, g->redis.url, plugin ? plugin : h_fixture("scale_app"), more, g->env);
}

static void add_worker(h_rig *g, const char *const *more)
{
    h_rig_worker(g, h_fixture("scale_app"), more);
}

/* ---- the fixture's log -------------------------------------------------------- */

/* Every line of the log (malloc'd; *n gets the count). */
static run *load_runs(h_rig *g, size_t *n)
{
    char *text = h_slurp(g->logpath, NULL);
    size_t cap = 64, k = 0;
    run *rs = malloc(cap * sizeof *rs);
    assert_non_null(rs);
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (!nl)
            break; /* a line still being written: not yet */
        *nl = '\0';
        run r = {.seq = -1, .pos = -1};
        unsigned long long id;
        int f = sscanf(line, "%7s %ld %llu %u %c %ld %ld", r.what, &r.pid, &id, &r.attempt,
                       &r.build, &r.seq, &r.pos);
        if (f < 5)
            fail_msg("a line of the fixture's log does not parse: '%s'", line);
        r.id = id;
        if (k == cap) {
            cap *= 2;
            rs = realloc(rs, cap * sizeof *rs);
            assert_non_null(rs);
        }
        rs[k++] = r;
        line = nl + 1;
    }
    free(text);
    *n = k;
    return rs;
}

/* Lines "what" (and, when pid > 0, of pid). */
static size_t count_runs(h_rig *g, const char *what, long pid)
{
    size_t n, c = 0;
    run *rs = load_runs(g, &n);
    for (size_t i = 0; i < n; i++)
        c += strcmp(rs[i].what, what) == 0 && (pid <= 0 || rs[i].pid == pid);
    free(rs);
    return c;
}

static size_t wait_runs(h_rig *g, const char *what, long pid, size_t want, unsigned deadline_ms)
{
    uint64_t end = h_now_ms() + deadline_ms;
    size_t n;
    while ((n = count_runs(g, what, pid)) < want && h_now_ms() < end)
        nap();
    return n;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- requests ------------------------------------------------------------------- */

typedef struct idlist {
    uint64_t *v;
    size_t n, cap;
} idlist;

static void ids_push(idlist *l, uint64_t id)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        assert_non_null(l->v);
    }
    l->v[l->n++] = id;
}

/* GET path; on 200 the ids of the body go to ids (may be NULL).  The
 * status, or -1 on a transport error. */
static long get_ids(h_server *s, const char *path, idlist *ids)
{
    h_resp r;
    if (h_get(s, path, &r) != 0)
        return -1;
    long st = r.status;
    if (st == 200 && ids) {
        for (char *p = r.body; *p;) {
            char *end;
            unsigned long long id = strtoull(p, &end, 10);
            if (end == p)
                break;
            ids_push(ids, id);
            p = end + (*end == '\n');
        }
    }
    h_resp_free(&r);
    return st;
}

/* Every id of ids ran exactly once as "what" (sorted copies compared);
 * the count per worker pid in per[] (pids[] of nw workers). */
static void assert_each_ran_once(h_rig *g, const char *what, const idlist *ids, const pid_t *pids,
                                 size_t nw, size_t *per)
{
    size_t n;
    run *rs = load_runs(g, &n);
    uint64_t *seen = malloc((n ? n : 1) * sizeof *seen);
    assert_non_null(seen);
    size_t k = 0;
    for (size_t w = 0; w < nw; w++)
        per[w] = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(rs[i].what, what) != 0)
            continue;
        seen[k++] = rs[i].id;
        for (size_t w = 0; w < nw; w++)
            per[w] += rs[i].pid == (long)pids[w];
    }
    free(rs);
    uint64_t *want = malloc((ids->n ? ids->n : 1) * sizeof *want);
    assert_non_null(want);
    memcpy(want, ids->v, ids->n * sizeof *want);
    qsort(want, ids->n, sizeof *want, cmp_u64);
    qsort(seen, k, sizeof *seen, cmp_u64);
    for (size_t i = 1; i < ids->n; i++)
        if (want[i] == want[i - 1])
            fail_msg("task id %" PRIu64 " was given twice", want[i]);
    for (size_t i = 0, j = 0; i < ids->n || j < k;) {
        if (j >= k || (i < ids->n && want[i] < seen[j]))
            fail_msg("task %" PRIu64 " got a 2xx and never ran", want[i]);
        if (i >= ids->n || seen[j] < want[i])
            fail_msg("task %" PRIu64 " ran but was never accepted", seen[j]);
        if (j + 1 < k && seen[j + 1] == seen[j])
            fail_msg("task %" PRIu64 " ran twice", seen[j]);
        i++;
        j++;
    }
    free(want);
    free(seen);
}

/* The server's record of task id once its state is state (malloc'd). */
static char *wait_record(h_rig *g, uint64_t id, const char *state)
{
    return h_wait_task(&g->server, id, state, DEADLINE_MS);
}

/* ---- 1. many tasks, two workers --------------------------------------------- */

static void broker_scale_tasks_run_once_on_both_workers(void **state)
{
    (void)state;
    /* A sanitizer build runs everything several times slower. */
    const size_t total = h_build_sanitize()[0] ? 2000 : 10000;
    h_rig g;
    rig_up(&g, NULL, NULL);
    add_worker(&g, NULL);
    add_worker(&g, NULL);
    idlist ids = {0};
    char path[96];
    snprintf(path, sizeof path, "/add?task=count&n=%d&mode=concurrent", PER_REQUEST);
    for (size_t i = 0; i < total / PER_REQUEST; i++) {
        long st = get_ids(&g.server, path, &ids);
        if (st != 200)
            fail_msg("request %zu of %s: %ld", i, path, st);
    }
    assert_int_equal(ids.n, total);
    size_t ran = wait_runs(&g, "ran", 0, total, BULK_DEADLINE_MS);
    assert_int_equal(ran, total);
    pid_t pids[2] = {g.w[0].pid, g.w[1].pid};
    size_t per[2];
    assert_each_ran_once(&g, "ran", &ids, pids, 2, per);
    /* Shared: each worker ran some, and nothing ran anywhere else. */
    assert_true(per[0] > 0);
    assert_true(per[1] > 0);
    assert_int_equal(per[0] + per[1], total);
    /* The server hears of every final state; nothing is left in Redis. */
    assert_true(h_wait_stat(&g.server, "broker", "awaited_here", 0, DEADLINE_MS));
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{scale_app}:tasks"), 0);
    free(ids.v);
    rig_done(&g, 0);
}

/* ---- small requests ---------------------------------------------------------- */

static uint64_t add_one(h_rig *g, const char *task)
{
    idlist ids = {0};
    char path[64];
    snprintf(path, sizeof path, "/add?task=%s&n=1", task);
    assert_int_equal(get_ids(&g->server, path, &ids), 200);
    assert_int_equal(ids.n, 1);
    uint64_t id = ids.v[0];
    free(ids.v);
    return id;
}

/* The file $SCALE_APP_GO: hold tasks finish once it is there. */
static void make_go(h_rig *g)
{
    char path[128];
    snprintf(path, sizeof path, "%s/go", g->redis.dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

/* ---- 2. Redis restarted mid-run ---------------------------------------------- */

/* GET path, which attaches named tasks, while Redis is away: 503 (the
 * server's, with Retry-After, when the tasks were not taken, or the
 * app's when bgs_res_task said BGS_EFULL at once), never a 2xx, nor a
 * hang (h_get returns). */
static void expect_503(h_rig *g, const char *path)
{
    h_resp r;
    assert_int_equal(h_get(&g->server, path, &r), 0);
    if (r.status != 503)
        fail_msg("GET %s while redis is down: %ld %s", path, r.status, r.body);
    h_resp_free(&r);
}

/* Redis (AOF on) goes away and comes back while a worker runs a task and
 * tasks wait in the stream: the requests meanwhile get 503, the rest is
 * served, and every task that got a 2xx, before or after, runs exactly
 * once, the one that ran through the outage included. */
static void broker_scale_redis_restart_loses_nothing_accepted(void **state)
{
    (void)state;
    static const char *const aof[] = {"--appendonly", "yes", "--appendfsync", "always", NULL};
    h_rig g;
    rig_up(&g, aof, NULL);
    /* One task at a time: the worker runs hold through the outage and
     * leaves the others in the stream. */
    const char *one[] = {"--concurrency", "1", NULL};
    add_worker(&g, one);
    idlist ids = {0};
    assert_int_equal(get_ids(&g.server, "/add?task=hold&n=1", &ids), 200);
    assert_int_equal(wait_runs(&g, "start", g.w[0].pid, 1, DEADLINE_MS), 1);
    const char *batch = "/add?task=count&n=20&mode=concurrent";
    for (int i = 0; i < 5; i++)
        assert_int_equal(get_ids(&g.server, batch, &ids), 200);
    assert_int_equal(h_redis_int(&g.redis, "XLEN bgserve:{scale_app}:tasks"), 101);

    h_redis_halt(&g.redis);
    for (int i = 0; i < 5; i++)
        expect_503(&g, batch);
    assert_int_equal(h_get_status(&g.server, "/adhoc"), 200); /* the rest is served */
    assert_true(h_wait_log(&g.server, "lost the command connection to redis", DEADLINE_MS));

    h_redis_restart(&g.redis);
    uint64_t end = h_now_ms() + DEADLINE_MS;
    long st;
    while ((st = get_ids(&g.server, batch, &ids)) != 200 && h_now_ms() < end)
        assert_int_equal(st, 503); /* until the server has reconnected */
    assert_int_equal(st, 200);
    for (int i = 0; i < 4; i++)
        assert_int_equal(get_ids(&g.server, batch, &ids), 200);

    make_go(&g); /* the task that ran through the outage finishes */
    add_worker(&g, NULL);
    assert_int_equal(wait_runs(&g, "ran", 0, ids.n, BULK_DEADLINE_MS), ids.n);
    pid_t pids[2] = {g.w[0].pid, g.w[1].pid};
    size_t per[2];
    assert_each_ran_once(&g, "ran", &ids, pids, 2, per);
    assert_int_equal(per[0] + per[1], ids.n);
    /* Its record says so on the server that accepted it. */
    free(wait_record(&g, ids.v[0], "succeeded"));
    free(ids.v);
    rig_done(&g, 0);
}

/* ---- 3. periodic ticks and sequences across processes ---------------------------- */

#define TICK_MS "300"
#define TICKS 10 /* runs to wait for */

/* Ticks every TICK_MS in the server and two workers: each tick's lease
 * goes to one process, so the runs are fewer than the ticks the other
 * processes gave up (without the lease every process would run each of
 * its ticks, and none would give one up). */
static void broker_scale_periodic_once_per_interval(void **state)
{
    (void)state;
    h_rig g;
    rig_redis(&g, NULL, "SCALE_APP_TICK_MS=" TICK_MS);
    h_rig_env(&g, "BGSERVE_DEBUG=1"); /* the "runs in another process" lines */
    start_server(&g, NULL);
    add_worker(&g, NULL);
    add_worker(&g, NULL);
    assert_int_equal(wait_runs(&g, "tick", 0, TICKS, DEADLINE_MS), TICKS);
    const char *gave_up = "periodic task tick: this tick runs in another process";
    /* Stop the three at once: what ran and what was given up is final. */
    h_server *procs[1 + H_RIG_WORKERS] = {&g.server};
    int np = 1;
    for (int i = 0; i < g.nw; i++)
        procs[np++] = &g.w[i];
    for (int i = 0; i < np; i++)
        kill(procs[i]->pid, SIGTERM);
    int given_up = 0;
    for (int i = 0; i < np; i++) {
        int rc = h_stop(procs[i], 0);
        if (rc != 0)
            fprintf(stderr, "exit %d; log:\n%s\n", rc, procs[i]->log);
        assert_int_equal(rc, 0);
        h_assert_lacks(procs[i]->log, "Sanitizer");
        given_up += h_count_log(procs[i], gave_up);
        h_free(procs[i]);
    }
    g.have_server = 0;
    g.nw = 0;
    size_t runs = count_runs(&g, "tick", 0);
    if (!((size_t)given_up > runs))
        fail_msg("%zu tick runs, %d ticks given up to another process", runs, given_up);
    /* Every tick that ran ran once. */
    size_t n;
    run *rs = load_runs(&g, &n);
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (strcmp(rs[i].what, "tick") == 0 && strcmp(rs[j].what, "tick") == 0)
                assert_true(rs[i].id != rs[j].id);
    free(rs);
    rig_done(&g, 0);
}

enum { SEQ_LEN = 6 };

/* The positions of sequence tag in the log's order (-1 past the end);
 * the pids of its steps in pid[]; the count. */
static size_t seq_steps(const run *rs, size_t n, long tag, long *pos, long *pid, uint64_t *id)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k < SEQ_LEN; i++) {
        if (rs[i].seq != tag || (strcmp(rs[i].what, "step") && strcmp(rs[i].what, "fail")))
            continue;
        pos[k] = rs[i].pos;
        pid[k] = rs[i].pid;
        id[k] = rs[i].id;
        k++;
    }
    return k;
}

/* Sequences of six steps: each step runs after the one before it
 * finished, in order, whichever worker runs it (sequences are sent
 * until one has its steps on both workers).  A failed step skips the
 * ones after it: they never run and their records say skipped. */
static void broker_scale_sequences_keep_order_across_workers(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, NULL, NULL);
    add_worker(&g, NULL);
    add_worker(&g, NULL);
    int spanned = 0;
    long tag = 0;
    uint64_t end = h_now_ms() + DEADLINE_MS;
    while (!spanned && h_now_ms() < end) {
        /* A round of four sequences at once, then their checks. */
        idlist ids[4] = {{0}};
        size_t want = count_runs(&g, "step", 0) + 4 * SEQ_LEN;
        for (int i = 0; i < 4; i++) {
            char path[64];
            snprintf(path, sizeof path, "/seq?tag=%ld&n=%d", tag + i, SEQ_LEN);
            assert_int_equal(get_ids(&g.server, path, &ids[i]), 200);
            assert_int_equal(ids[i].n, SEQ_LEN);
        }
        assert_int_equal(wait_runs(&g, "step", 0, want, DEADLINE_MS), want);
        size_t n;
        run *rs = load_runs(&g, &n);
        for (int i = 0; i < 4; i++) {
            long pos[SEQ_LEN], pid[SEQ_LEN];
            uint64_t id[SEQ_LEN];
            assert_int_equal(seq_steps(rs, n, tag + i, pos, pid, id), SEQ_LEN);
            for (long k = 0; k < SEQ_LEN; k++) {
                assert_int_equal(pos[k], k);
                assert_int_equal(id[k], ids[i].v[k]);
                spanned |= pid[k] != pid[0];
            }
            free(ids[i].v);
        }
        free(rs);
        tag += 4;
    }
    assert_true(spanned);
    /* The skip rule: step 2 of 6 fails; 3, 4 and 5 never run. */
    idlist ids = {0};
    char path[64];
    snprintf(path, sizeof path, "/seq?tag=%ld&n=%d&fail=2", tag, SEQ_LEN);
    assert_int_equal(get_ids(&g.server, path, &ids), 200);
    char *rec = wait_record(&g, ids.v[2], "failed");
    h_assert_contains(rec, "fails");
    free(rec);
    for (int k = 3; k < SEQ_LEN; k++)
        free(wait_record(&g, ids.v[k], "skipped"));
    size_t n;
    run *rs = load_runs(&g, &n);
    long pos[SEQ_LEN], pid[SEQ_LEN];
    uint64_t id[SEQ_LEN];
    assert_int_equal(seq_steps(rs, n, tag, pos, pid, id), 3);
    free(rs);
    assert_int_equal(count_runs(&g, "fail", 0), 1);
    free(ids.v);
    rig_done(&g, 1);
}

/* The state of task id in its record in Redis, once it is want, or
 * what it was at the deadline (malloc'd; "" when there is no record). */
static char *wait_redis_state(h_rig *g, uint64_t id, const char *want)
{
    uint64_t end = h_now_ms() + DEADLINE_MS;
    char *st = NULL;
    do {
        if (st)
            nap();
        free(st);
        redisReply *r = h_redis_cmd(&g->redis, "HGET bgserve:{scale_app}:task:%" PRIu64
                                    " state", id);
        st = strdup(r->type == REDIS_REPLY_STRING ? r->str : "");
        freeReplyObject(r);
        assert_non_null(st);
    } while (strcmp(st, want) != 0 && h_now_ms() < end);
    return st;
}

/* A sequence outlives the server that accepted it: at the 2xx Redis has
 * every step (the first in the stream, the rest kept with it), and the
 * workers move it on.  The server is stopped (SIGTERM) while step 0
 * runs, before step 1 is due; the three steps still run, in order, each
 * after the one before finished, and their records say succeeded. */
static void broker_scale_sequence_outlives_its_server(void **state)
{
    (void)state;
    h_rig g;
    const char *quick[] = {"--drain-timeout", "0", NULL};
    rig_up(&g, NULL, quick);
    add_worker(&g, NULL);
    add_worker(&g, NULL);
    idlist ids = {0};
    assert_int_equal(get_ids(&g.server, "/add?task=hold&n=3", &ids), 200);
    assert_int_equal(ids.n, 3);
    assert_int_equal(wait_runs(&g, "start", 0, 1, DEADLINE_MS), 1);
    assert_int_equal(h_redis_int(&g.redis, "LLEN bgserve:{scale_app}:seq:%" PRIu64, ids.v[0]),
                     2);
    int rc = h_stop(&g.server, SIGTERM);
    if (rc != 0)
        fprintf(stderr, "server log:\n%s\n", g.server.log);
    assert_int_equal(rc, 0);
    h_assert_contains(g.server.log, "3 stay in redis for the workers");
    h_assert_lacks(g.server.log, "untracked here");
    h_assert_lacks(g.server.log, "Sanitizer");
    h_free(&g.server);
    g.have_server = 0;

    make_go(&g);
    assert_int_equal(wait_runs(&g, "ran", 0, 3, DEADLINE_MS), 3);
    for (size_t k = 0; k < 3; k++) {
        char *st = wait_redis_state(&g, ids.v[k], "succeeded");
        assert_string_equal(st, "succeeded");
        free(st);
    }
    /* In order: each step started after the one before it ran. */
    size_t n;
    run *rs = load_runs(&g, &n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k >= 6 || rs[i].id != ids.v[k / 2])
            fail_msg("line %zu of the log: %s %" PRIu64 ", out of the sequence's order", i,
                     rs[i].what, rs[i].id);
        assert_string_equal(rs[i].what, k % 2 ? "ran" : "start");
        k++;
    }
    assert_int_equal(k, 6);
    free(rs);
    assert_int_equal(h_redis_int(&g.redis, "EXISTS bgserve:{scale_app}:seq:%" PRIu64,
                                 ids.v[0]), 0);
    free(ids.v);
    rig_done(&g, 0);
}

/* ---- 4. bgserve worker --reload ------------------------------------------------------ */

/* The plugin of a worker under --reload is replaced while tasks keep
 * coming: every task runs exactly once, build A ran the first, build B
 * the last. */
static void broker_scale_worker_reload_loses_nothing(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, NULL, NULL);
    char dir[PATH_MAX], plugin[PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/out", g.redis.dir);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(plugin, sizeof plugin, "%s/scale_app.so", dir); /* the same broker name */
    h_replace_file(h_fixture("scale_app"), plugin);
    const char *reload[] = {"--reload", NULL};
    h_server w;
    start_worker(&g, &w, plugin, reload);
    idlist ids = {0};
    const char *batch = "/add?task=count&n=50&mode=concurrent";
    for (int i = 0; i < 4; i++)
        assert_int_equal(get_ids(&g.server, batch, &ids), 200);
    assert_int_equal(wait_runs(&g, "ran", 0, ids.n, DEADLINE_MS), ids.n); /* by build A */
    h_replace_file(h_fixture("scale_app_b"), plugin);
    /* Tasks keep coming until build B runs some. */
    uint64_t end = h_now_ms() + DEADLINE_MS;
    int b_ran = 0;
    while (!b_ran && h_now_ms() < end) {
        assert_int_equal(get_ids(&g.server, batch, &ids), 200);
        size_t n;
        run *rs = load_runs(&g, &n);
        for (size_t i = 0; i < n && !b_ran; i++)
            b_ran = rs[i].build == 'B';
        free(rs);
    }
    assert_true(b_ran);
    for (int i = 0; i < 4; i++)
        assert_int_equal(get_ids(&g.server, batch, &ids), 200);
    assert_int_equal(wait_runs(&g, "ran", 0, ids.n, BULK_DEADLINE_MS), ids.n);
    pid_t pids[1] = {w.pid};
    size_t per[1];
    assert_each_ran_once(&g, "ran", &ids, pids, 1, per);
    assert_int_equal(per[0], ids.n);
    /* Build A ran the first tasks, build B the last. */
    size_t n;
    run *rs = load_runs(&g, &n);
    assert_int_equal(rs[0].build, 'A');
    assert_int_equal(rs[n - 1].build, 'B');
    free(rs);
    assert_true(h_wait_log(&w, "generation 2 serving", DEADLINE_MS));
    h_stop_worker(&w);
    free(ids.v);
    rig_done(&g, 0);
}

/* ---- 5. a worker stopped while its task runs ----------------------------------- */

/* Stopped with no time to drain, the worker cancels the task and hands
 * it back to Redis (not counted as an attempt: it did not fail), says
 * so, and exits 0: nothing of its own is lost.  Another worker runs it. */
static void broker_scale_stopped_worker_hands_its_task_back(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, NULL, NULL);
    const char *quick[] = {"--drain-timeout", "0", NULL};
    h_server a;
    start_worker(&g, &a, NULL, quick);
    uint64_t id = add_one(&g, "hold");
    assert_int_equal(wait_runs(&g, "start", a.pid, 1, DEADLINE_MS), 1);
    int rc = h_stop(&a, SIGTERM);
    if (rc != 0)
        fprintf(stderr, "worker log:\n%s\n", a.log);
    assert_int_equal(rc, 0);
    char line[128];
    snprintf(line, sizeof line, "task %" PRIu64 " (hold) handed back to redis for another "
             "worker", id);
    h_assert_contains(a.log, line);
    snprintf(line, sizeof line, "task %" PRIu64 " hold running", id);
    char found[512];
    assert_int_equal(h_line_with(a.log, "back in redis: another worker runs it", found,
                                 sizeof found), 0);
    h_assert_contains(found, line);
    h_assert_contains(a.log, "drain: 0 tasks finished, 0 did not, 1 went back to redis");
    h_assert_lacks(a.log, "Sanitizer");
    h_free(&a);
    /* In Redis, for the next worker: the delayed set, due now. */
    assert_int_equal(h_redis_int(&g.redis, "ZCARD bgserve:{scale_app}:delayed"), 1);
    add_worker(&g, NULL);
    make_go(&g);
    assert_int_equal(wait_runs(&g, "ran", g.w[0].pid, 1, DEADLINE_MS), 1);
    char *rec = wait_record(&g, id, "succeeded");
    assert_int_equal(h_json_num(rec, "attempts"), 1);
    free(rec);
    assert_int_equal(count_runs(&g, "start", 0), 2);
    rig_done(&g, 0);
}

/* While it drains, a stopping worker takes nothing new from the stream:
 * the tasks added meanwhile run on the other worker, and its own task,
 * finished within the drain, is acknowledged (exit 0). */
static void broker_scale_draining_worker_takes_nothing_new(void **state)
{
    (void)state;
    h_rig g;
    rig_up(&g, NULL, NULL);
    add_worker(&g, NULL); /* b: g.w[0] */
    h_server a;
    start_worker(&g, &a, NULL, NULL);
    /* The hold task on a: b is idle and reads first only by chance, so
     * add until a has one. */
    idlist held = {0};
    uint64_t end = h_now_ms() + DEADLINE_MS;
    while (count_runs(&g, "start", a.pid) == 0 && h_now_ms() < end) {
        ids_push(&held, add_one(&g, "hold"));
        size_t want = held.n;
        uint64_t e2 = h_now_ms() + DEADLINE_MS;
        while (count_runs(&g, "start", 0) < want && h_now_ms() < e2)
            nap();
    }
    assert_true(count_runs(&g, "start", a.pid) > 0);
    kill(a.pid, SIGTERM);
    assert_true(h_wait_log(&a, "worker stopping: reading no more tasks", DEADLINE_MS));
    idlist ids = {0};
    for (int i = 0; i < 4; i++)
        assert_int_equal(get_ids(&g.server, "/add?task=count&n=10&mode=concurrent", &ids), 200);
    assert_int_equal(wait_runs(&g, "ran", 0, ids.n, DEADLINE_MS), ids.n);
    assert_int_equal(count_runs(&g, "ran", a.pid), 0);
    make_go(&g);
    int rc = h_stop(&a, 0);
    if (rc != 0)
        fprintf(stderr, "worker log:\n%s\n", a.log);
    assert_int_equal(rc, 0);
    h_assert_lacks(a.log, "Sanitizer");
    h_free(&a);
    assert_int_equal(wait_runs(&g, "ran", 0, ids.n + held.n, DEADLINE_MS), ids.n + held.n);
    free(held.v);
    free(ids.v);
    rig_done(&g, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(broker_scale_tasks_run_once_on_both_workers),
        cmocka_unit_test(broker_scale_redis_restart_loses_nothing_accepted),
        cmocka_unit_test(broker_scale_periodic_once_per_interval),
        cmocka_unit_test(broker_scale_sequences_keep_order_across_workers),
        cmocka_unit_test(broker_scale_sequence_outlives_its_server),
        cmocka_unit_test(broker_scale_worker_reload_loses_nothing),
        cmocka_unit_test(broker_scale_stopped_worker_hands_its_task_back),
        cmocka_unit_test(broker_scale_draining_worker_takes_nothing_new),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
