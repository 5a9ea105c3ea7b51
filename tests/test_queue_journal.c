/*
 * test_queue_journal.c - the durable queue backend (queue_journal.c) in
 * process, over a journal in a temporary directory: what each operation
 * leaves in the journal (add, start, succeed, dead letter, finish, retry
 * with its time), ad hoc jobs kept in memory and counted apart, the
 * capacity and shutdown refusals that write nothing, a replay adopted
 * with its not-before time, consumers racing the writer, takes that
 * claim several jobs with one start commit and hand the claimed ones
 * back at shutdown (as queued again), a SIGKILL after
 * thousands of durable enqueues, and a full disk (the completion says
 * so, the jobs still run here, nothing that was said durable is lost).
 * Tests that kill a process or limit file sizes do it in a forked child.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"
#include "journal_sandbox.h"
#include "bgserve.h"
#include "journal.h"
#include "queue.h"
#include "queue_journal.h"
#include "sched.h"
#include "util.h"

/* The timers of every queue here (the engine's, in the server). */
static sched *timers;

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the items the queue carries ------------------------------------------------ */

typedef struct item {
    queue_node node;
    uint64_t id;
    const char *name;          /* NULL: an ad hoc task */
    char payload[32];
    uint32_t attempts;         /* runs started; the test's to keep */
    uint32_t max_attempts;
    int await_start;           /* describe's await_start */
} item;

static item *item_of(queue_node *n)
{
    return UTIL_CONTAINER_OF(n, item, node);
}

static void describe(const queue_node *n, queue_job *out, void *arg)
{
    const item *it = UTIL_CONTAINER_OF(n, item, node);
    (void)arg;
    out->id = it->id;
    out->name = it->name;
    out->payload = it->payload;
    out->len = strlen(it->payload);
    out->attempts = it->attempts;
    out->max_attempts = it->max_attempts;
    out->request_id = "req-q";
    out->await_start = it->await_start;
}

static void item_init(item *it, journal *j, const char *name, const char *payload)
{
    memset(it, 0, sizeof *it);
    it->id = name ? journal_next_id(j) : 0;
    it->name = name;
    snprintf(it->payload, sizeof it->payload, "%s", payload);
    it->max_attempts = 3;
}

/* Wait (deadline 30 s) until d has been called want times. */
static void wait_calls(done_count *d, int want)
{
    uint64_t deadline = util_now_us() + 30u * 1000000u;
    while (count_now(d, NULL) < want && util_now_us() < deadline)
        usleep(1000);
    assert_int_equal(count_now(d, NULL), want);
}

/* Take n as the holder of a node does: count the run it starts. */
static item *take_run(queue *q)
{
    queue_node *n = queue_take(q);
    assert_non_null(n);
    item *it = item_of(n);
    it->attempts++;
    return it;
}

/* One task as found on disk: state, attempts, error, not-before. */
typedef struct found {
    char state[32];
    char error[128];
    char name[32];
    uint32_t attempts;
    uint64_t not_before_us;
    int interrupted;
} found;

static void found_fill(void *arg, const journal_rec *r)
{
    found *f = arg;
    snprintf(f->state, sizeof f->state, "%s", r->state);
    snprintf(f->error, sizeof f->error, "%s", r->last_error ? r->last_error : "");
    snprintf(f->name, sizeof f->name, "%s", r->name);
    f->attempts = r->attempts;
    f->not_before_us = r->not_before_us;
    f->interrupted = r->interrupted;
}

static found lookup(journal *j, uint64_t id)
{
    found f = {0};
    assert_int_equal(journal_lookup(j, id, found_fill, &f), 0);
    return f;
}

/* The replay snapshot, by id (up to 64). */
typedef struct replayed {
    size_t n;
    uint64_t ids[64];
    found f[64];
} replayed;

static void replay_collect(void *arg, const journal_rec *r)
{
    replayed *s = arg;
    if (s->n < 64) {
        s->ids[s->n] = r->id;
        found_fill(&s->f[s->n], r);
        s->n++;
    }
}

static const found *replayed_find(const replayed *s, uint64_t id)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->ids[i] == id)
            return &s->f[i];
    return NULL;
}

/* ---- what each operation writes ------------------------------------------------- */

/* A batch of named jobs and one ad hoc job: the completion says durable
 * once; take writes the start, ack the end (succeeded, dead letter for
 * "failed", finish for other states), nack the retry with its time; a
 * job taken and never acked is replayed as interrupted; the ad hoc job
 * is never written and is counted apart. */
static void queue_journal_records_each_step(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    queue *q = queue_journal_new(j, timers, 0, QUEUE_LINGER_DEFAULT, describe, NULL);
    assert_string_equal(q->ops->name, "journal");
    item ok, bad, cancel, retry, crash, adhoc;
    item_init(&ok, j, "ok", "p1");
    item_init(&bad, j, "bad", "p2");
    item_init(&cancel, j, "cancel", "p3");
    item_init(&retry, j, "retry", "p4");
    item_init(&crash, j, "crash", "p5");
    item_init(&adhoc, j, NULL, "");
    queue_node *nodes[] = {&ok.node, &bad.node, &cancel.node, &retry.node, &crash.node,
                           &adhoc.node};
    done_count d = DONE_COUNT_INIT;
    assert_int_equal(queue_enqueue_at(q, nodes, 6, 0, count_done, &d), 0);
    wait_calls(&d, 1);
    assert_int_equal(d.last_status, 0);
    queue_journal_counts c;
    queue_journal_get_counts(q, &c);
    assert_int_equal(c.journaled, 5);
    assert_int_equal(c.memory_only, 1);
    assert_int_equal(queue_depth(q), 6);

    for (int i = 0; i < 6; i++)
        assert_ptr_equal(take_run(q), item_of(nodes[i]));
    queue_ack(q, &ok.node, &(queue_outcome){.end = QUEUE_SUCCEEDED});
    queue_ack(q, &bad.node, &(queue_outcome){.end = QUEUE_FAILED, .error = "out of tries"});
    queue_ack(q, &cancel.node, &(queue_outcome){.end = QUEUE_CANCELLED, .error = "timed out"});
    uint64_t wall_before = util_wall_us();
    assert_int_equal(queue_nack(q, &retry.node, util_now_us() + 3600u * 1000000u, "flaky"), 0);
    queue_ack(q, &adhoc.node, &(queue_outcome){.end = QUEUE_SUCCEEDED});
    /* crash is left running */
    queue_shutdown(q);
    assert_ptr_equal(queue_try_take(q), &retry.node); /* handed back to be finished */
    queue_destroy(q);
    journal_close(j);

    j = js_open_ok(sb->path);
    replayed s = {0};
    assert_int_equal(journal_replay(j, replay_collect, &s), 2);
    const found *r = replayed_find(&s, retry.id);
    assert_non_null(r);
    assert_string_equal(r->state, "queued");
    assert_string_equal(r->error, "flaky");
    assert_int_equal(r->attempts, 1);
    /* its time survives, as wall clock: about an hour after the nack */
    assert_true(r->not_before_us >= wall_before + 3590u * 1000000u);
    assert_true(r->not_before_us <= util_wall_us() + 3600u * 1000000u);
    const found *x = replayed_find(&s, crash.id);
    assert_non_null(x);
    assert_int_equal(x->interrupted, 1);
    assert_int_equal(x->attempts, 1);

    found f = lookup(j, ok.id);
    assert_string_equal(f.state, "succeeded");
    assert_int_equal(f.attempts, 1);
    f = lookup(j, bad.id);
    assert_string_equal(f.state, "dead");
    assert_string_equal(f.error, "out of tries");
    f = lookup(j, cancel.id);
    assert_string_equal(f.state, "cancelled");
    assert_string_equal(f.error, "timed out");
    journal_stats st;
    journal_get_stats(j, &st);
    assert_int_equal(st.dead, 1);
    assert_int_equal(st.pending, 2);
    journal_close(j);
}

/* A batch of ad hoc jobs only is durable at once (nothing to write). */
static void queue_journal_memory_only_batch_is_done_at_once(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    queue *q = queue_journal_new(j, timers, 0, QUEUE_LINGER_DEFAULT, describe, NULL);
    item a, b;
    item_init(&a, j, NULL, "");
    item_init(&b, j, NULL, "");
    queue_node *two[] = {&a.node, &b.node};
    done_count d = DONE_COUNT_INIT;
    assert_int_equal(queue_enqueue_at(q, two, 2, 0, count_done, &d), 0);
    assert_int_equal(count_now(&d, NULL), 1); /* before enqueue returned */
    assert_int_equal(d.last_status, 0);
    queue_ack(q, take_run(q) == &a ? &a.node : &b.node,
              &(queue_outcome){.end = QUEUE_SUCCEEDED});
    queue_journal_counts c;
    queue_journal_get_counts(q, &c);
    assert_int_equal(c.journaled, 0);
    assert_int_equal(c.memory_only, 2);
    queue_shutdown(q);
    assert_ptr_equal(queue_try_take(q), &b.node);
    queue_destroy(q);
    journal_stats st;
    journal_get_stats(j, &st);
    assert_int_equal(st.pending, 0);
    journal_close(j);
}

/* Refused enqueues (capacity, shutdown) write nothing and get no
 * completion; a nack after shutdown is refused (the caller keeps the
 * node) but its retry is recorded for the next start; a node handed back
 * after shutdown records no start. */
static void queue_journal_refusals_write_nothing(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    queue *q = queue_journal_new(j, timers, 2, QUEUE_LINGER_DEFAULT, describe, NULL);
    item a, b, c, e;
    item_init(&a, j, "a", "1");
    item_init(&b, j, "b", "2");
    item_init(&c, j, "c", "3");
    item_init(&e, j, "e", "4");
    queue_node *ab[] = {&a.node, &b.node}, *cc[] = {&c.node}, *ee[] = {&e.node};
    done_count d = DONE_COUNT_INIT;
    assert_int_equal(queue_enqueue_at(q, ab, 2, 0, count_done, &d), 0);
    assert_int_equal(queue_enqueue_at(q, cc, 1, 0, count_done, &d), BGS_EFULL);
    /* a retry of an accepted job is never refused for capacity */
    item *t = take_run(q);
    assert_ptr_equal(t, &a);
    assert_int_equal(queue_enqueue_at(q, cc, 1, 0, count_done, &d), 0); /* room again */
    assert_int_equal(queue_nack(q, &a.node, 0, "again"), 0);
    assert_int_equal(queue_depth(q), 3);
    assert_ptr_equal(take_run(q), &b);
    queue_ack(q, &b.node, &(queue_outcome){.end = QUEUE_SUCCEEDED});
    assert_ptr_equal(take_run(q), &c);
    queue_shutdown(q);
    assert_int_equal(queue_enqueue_at(q, ee, 1, 0, count_done, &d), BGS_ESHUTDOWN);
    uint64_t wall_before = util_wall_us();
    assert_int_equal(queue_nack(q, &c.node, util_now_us() + 60u * 1000000u, "later"),
                     BGS_ESHUTDOWN);
    assert_ptr_equal(queue_try_take(q), &a.node); /* handed back: no start */
    assert_null(queue_try_take(q));
    queue_destroy(q);
    journal_close(j);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.failed, 0);

    j = js_open_ok(sb->path);
    replayed s = {0};
    assert_int_equal(journal_replay(j, replay_collect, &s), 2);
    const found *fa = replayed_find(&s, a.id);
    assert_non_null(fa);
    assert_string_equal(fa->state, "queued"); /* the nack, then no start */
    assert_int_equal(fa->interrupted, 0);
    assert_int_equal(fa->attempts, 1);
    const found *fc = replayed_find(&s, c.id);
    assert_non_null(fc);
    assert_string_equal(fc->error, "later");
    assert_true(fc->not_before_us >= wall_before + 50u * 1000000u);
    assert_int_equal(journal_lookup(j, e.id, found_fill, &(found){0}), JOURNAL_ENOTFOUND);
    journal_close(j);
}

/* A replayed job is adopted with its not-before time: it waits for it
 * (in wall clock as recorded); one whose time has passed is ready. */
static void queue_journal_adopt_keeps_not_before(void **state)
{
    sandbox *sb = *state;
    assert_int_equal(sched_run(timers), 0);
    journal *j = js_open_ok(sb->path);
    queue *q = queue_journal_new(j, timers, 0, QUEUE_LINGER_DEFAULT, describe, NULL);
    item later, soon;
    item_init(&later, j, "later", "L");
    item_init(&soon, j, "soon", "S");
    queue_node *l[] = {&later.node}, *s1[] = {&soon.node};
    done_count d = DONE_COUNT_INIT;
    assert_int_equal(queue_enqueue_at(q, l, 1, util_now_us() + 3600u * 1000000u, count_done, &d), 0);
    assert_int_equal(queue_enqueue_at(q, s1, 1, util_now_us() + 50000u, count_done, &d), 0);
    wait_calls(&d, 2);
    assert_int_equal(d.failed, 0);
    queue_shutdown(q);
    assert_non_null(queue_try_take(q));
    assert_non_null(queue_try_take(q));
    queue_destroy(q);
    journal_close(j);

    /* the next start */
    j = js_open_ok(sb->path);
    replayed s = {0};
    assert_int_equal(journal_replay(j, replay_collect, &s), 2);
    q = queue_journal_new(j, timers, 0, QUEUE_LINGER_DEFAULT, describe, NULL);
    item back[2];
    for (size_t i = 0; i < 2; i++) {
        memset(&back[i], 0, sizeof back[i]);
        back[i].id = s.ids[i];
        back[i].name = s.ids[i] == later.id ? "later" : "soon";
        back[i].attempts = s.f[i].attempts;
        assert_int_equal(queue_journal_adopt(q, &back[i].node, s.f[i].not_before_us), 0);
    }
    uint64_t deadline = util_now_us() + 30u * 1000000u;
    queue_node *got;
    while ((got = queue_try_take(q)) == NULL && util_now_us() < deadline)
        usleep(1000);
    assert_non_null(got);
    assert_int_equal(item_of(got)->id, soon.id);
    assert_null(queue_try_take(q)); /* "later" waits for its hour */
    queue_shutdown(q);
    assert_int_equal(queue_journal_adopt(q, &back[0].node, 0), BGS_ESHUTDOWN);
    got = queue_try_take(q);
    assert_non_null(got);
    assert_int_equal(item_of(got)->id, later.id);
    queue_destroy(q);
    journal_close(j);

    /* "soon" was started in the second run, "later" never was */
    j = js_open_ok(sb->path);
    s = (replayed){0};
    assert_int_equal(journal_replay(j, replay_collect, &s), 2);
    assert_int_equal(replayed_find(&s, soon.id)->interrupted, 1);
    assert_int_equal(replayed_find(&s, later.id)->interrupted, 0);
    journal_close(j);
    sched_halt(timers);
}

/* ---- many threads ------------------------------------------------------------------ */

#define RACE_PRODUCERS 4
#define RACE_PER_PRODUCER 500
#define RACE_CONSUMERS 3

typedef struct race {
    queue *q;
    journal *j;
    item *items;
    done_count done;
    atomic_int acked;
} race;

typedef struct producer_arg {
    race *r;
    int first;
} producer_arg;

static void *produce(void *arg)
{
    producer_arg *p = arg;
    for (int i = 0; i < RACE_PER_PRODUCER; i += 2) {
        item *it = &p->r->items[p->first + i];
        queue_node *two[] = {&it[0].node, &it[1].node};
        if (queue_enqueue_at(p->r->q, two, 2, 0, count_done, &p->r->done) != 0)
            abort();
    }
    return NULL;
}

static void *consume(void *arg)
{
    race *r = arg;
    queue_node *n;
    while ((n = queue_take(r->q)) != NULL) {
        item *it = item_of(n);
        it->attempts++;
        if (it->attempts == 1 && it->id % 5 == 0) {
            queue_nack(r->q, n, 0, "once more"); /* a retry, at once */
            continue;
        }
        queue_ack(r->q, n, &(queue_outcome){.end = QUEUE_SUCCEEDED});
        atomic_fetch_add(&r->acked, 1);
    }
    return NULL;
}

/* Producers and consumers race the writer (a job may be taken, retried
 * and acked before its add is committed): every batch is durable once,
 * and after a reopen every job is "succeeded", none pending. */
static void queue_journal_consumers_race_the_writer(void **state)
{
    sandbox *sb = *state;
    const int total = RACE_PRODUCERS * RACE_PER_PRODUCER;
    race r = {.done = DONE_COUNT_INIT};
    r.j = js_open_ok(sb->path);
    r.q = queue_journal_new(r.j, timers, 0, QUEUE_LINGER_DEFAULT, describe, NULL);
    r.items = calloc((size_t)total, sizeof *r.items);
    for (int i = 0; i < total; i++)
        item_init(&r.items[i], r.j, (i % 10 == 9) ? NULL : "job", "x");
    pthread_t pt[RACE_PRODUCERS], ct[RACE_CONSUMERS];
    producer_arg pa[RACE_PRODUCERS];
    for (int i = 0; i < RACE_CONSUMERS; i++)
        assert_int_equal(pthread_create(&ct[i], NULL, consume, &r), 0);
    for (int i = 0; i < RACE_PRODUCERS; i++) {
        pa[i] = (producer_arg){.r = &r, .first = i * RACE_PER_PRODUCER};
        assert_int_equal(pthread_create(&pt[i], NULL, produce, &pa[i]), 0);
    }
    for (int i = 0; i < RACE_PRODUCERS; i++)
        pthread_join(pt[i], NULL);
    uint64_t deadline = util_now_us() + 60u * 1000000u;
    while (atomic_load(&r.acked) < total && util_now_us() < deadline)
        usleep(1000);
    assert_int_equal(atomic_load(&r.acked), total);
    queue_shutdown(r.q);
    for (int i = 0; i < RACE_CONSUMERS; i++)
        pthread_join(ct[i], NULL);
    queue_journal_counts c;
    queue_journal_get_counts(r.q, &c);
    assert_int_equal(c.journaled + c.memory_only, (uint64_t)total);
    assert_int_equal(c.memory_only, (uint64_t)total / 10);
    queue_destroy(r.q);
    journal_close(r.j);
    assert_int_equal(r.done.n, total / 2);
    assert_int_equal(r.done.failed, 0);

    r.j = js_open_ok(sb->path);
    replayed s = {0};
    assert_int_equal(journal_replay(r.j, replay_collect, &s), 0);
    for (int i = 0; i < total; i++) {
        if (r.items[i].name == NULL)
            continue;
        found f = lookup(r.j, r.items[i].id);
        assert_string_equal(f.state, "succeeded");
        assert_int_equal(f.attempts, r.items[i].attempts);
    }
    journal_close(r.j);
    free(r.items);
}

/* ---- a kill ------------------------------------------------------------------------ */

/* The child enqueues batches of 4 forever, consumers ack some, and it
 * writes the ids of each batch its completion called durable to a pipe;
 * the parent kills it after KILL_AFTER of them. */
#define KILL_AFTER 4000

typedef struct kill_ctx {
    int fd;
    uint64_t ids[4];
} kill_ctx;

static void report_durable(void *arg, int status, const char *msg)
{
    kill_ctx *k = arg;
    (void)msg;
    if (status == 0 && write(k->fd, k->ids, sizeof k->ids) != (ssize_t)sizeof k->ids)
        _exit(3);
    free(k);
}

static void *kill_consumer(void *arg)
{
    queue *q = arg;
    queue_node *n;
    while ((n = queue_take(q)) != NULL) {
        item *it = item_of(n);
        it->attempts++;
        if (it->id % 2)
            queue_ack(q, n, &(queue_outcome){.end = QUEUE_SUCCEEDED});
        /* the others stay "running": interrupted at the kill */
    }
    return NULL;
}

static void kill_child(const char *path, int fd)
{
    journal *j = js_open_ok(path);
    queue *q = queue_journal_new(j, timers, 0, QUEUE_LINGER_DEFAULT, describe, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, kill_consumer, q) != 0)
        _exit(4);
    for (;;) {
        item *its = calloc(4, sizeof *its);
        kill_ctx *k = malloc(sizeof *k);
        queue_node *nodes[4];
        k->fd = fd;
        for (int i = 0; i < 4; i++) {
            its[i].id = journal_next_id(j);
            its[i].name = "k";
            its[i].max_attempts = 2;
            snprintf(its[i].payload, sizeof its[i].payload, "%" PRIu64, its[i].id);
            k->ids[i] = its[i].id;
            nodes[i] = &its[i].node;
        }
        if (queue_enqueue_at(q, nodes, 4, 0, report_durable, k) != 0)
            _exit(5);
    }
}

/* Every id the child was told was durable is in the journal after the
 * kill: replayed (queued or interrupted) or finished as succeeded. */
static void queue_journal_kill_loses_nothing_durable(void **state)
{
    sandbox *sb = *state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        kill_child(sb->path, p[1]);
        _exit(0);
    }
    close(p[1]);
    size_t n = 0, cap = KILL_AFTER + 64;
    uint64_t *ids = calloc(cap, sizeof *ids);
    uint64_t batch[4];
    while (n < KILL_AFTER) {
        ssize_t got = read(p[0], batch, sizeof batch);
        assert_int_equal(got, (ssize_t)sizeof batch);
        for (int i = 0; i < 4; i++)
            ids[n++] = batch[i];
    }
    kill(pid, SIGKILL);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    close(p[0]);

    journal *j = js_open_ok(sb->path);
    journal_replay(j, replay_collect, &(replayed){0}); /* drop the snapshot */
    for (size_t i = 0; i < n; i++) {
        found f = {0};
        assert_int_equal(journal_lookup(j, ids[i], found_fill, &f), 0);
        if (strcmp(f.state, "succeeded") == 0)
            continue;
        if (strcmp(f.state, "queued") != 0 && strcmp(f.state, "running") != 0)
            fail_msg("task %" PRIu64 ": state %s", ids[i], f.state);
    }
    journal_close(j);
    free(ids);
}

/* ---- claims: several starts, one commit ---------------------------------------------- */

enum { CLAIM_JOBS = 200 };

/* Enqueue n named jobs in one batch and wait until they are durable. */
static item *enqueue_durable(queue *q, journal *j, size_t n, const char *name)
{
    item *its = calloc(n, sizeof *its);
    queue_node **nodes = calloc(n, sizeof *nodes);
    assert_non_null(its);
    assert_non_null(nodes);
    for (size_t i = 0; i < n; i++) {
        item_init(&its[i], j, name, "c");
        nodes[i] = &its[i].node;
    }
    done_count d = DONE_COUNT_INIT;
    assert_int_equal(queue_enqueue_at(q, nodes, n, 0, count_done, &d), 0);
    wait_calls(&d, 1);
    assert_int_equal(d.last_status, 0);
    free(nodes);
    return its;
}

/* A take that finds more ready jobs claims several at once: every job a
 * take returns is already on disk as running (its start committed before
 * its run can begin, the claimed ones too), the order is kept, and the
 * starts of 200 jobs share a few commits instead of taking one each. */
static void queue_journal_claims_share_one_commit(void **state)
{
    sandbox *sb = *state;
    journal *j = js_open_ok(sb->path);
    queue *q = queue_journal_new(j, timers, 0, QUEUE_LINGER_DEFAULT, describe, NULL);
    item *its = enqueue_durable(q, j, CLAIM_JOBS, "claimed");
    journal_stats s0, s1;
    journal_get_stats(j, &s0);
    for (size_t i = 0; i < CLAIM_JOBS; i++) {
        item *it = take_run(q);
        assert_ptr_equal(it, &its[i]);
        found f = lookup(j, it->id); /* a reader sees only what is committed */
        assert_string_equal(f.state, "running");
        assert_int_equal(f.attempts, 1);
    }
    journal_get_stats(j, &s1);
    assert_int_equal(s1.records - s0.records, CLAIM_JOBS); /* one start each */
    fprintf(stderr, "claims: %" PRIu64 " commits for %d starts\n", s1.commits - s0.commits,
            CLAIM_JOBS);
    assert_true(s1.commits - s0.commits <= CLAIM_JOBS / 8);
    for (size_t i = 0; i < CLAIM_JOBS; i++)
        queue_ack(q, &its[i].node, &(queue_outcome){.end = QUEUE_SUCCEEDED});
    queue_shutdown(q);
    assert_null(queue_try_take(q));
    queue_destroy(q);
    journal_close(j);
    free(its);
}

/* Lazy starts: a take claims one job and returns without waiting for
 * its start's commit (the writer is held: nothing can commit), and a job
 * acked before the writer's next batch is written once, queued ->
 * succeeded with its attempt (one row for its start and its end).  A job
 * whose describe says await_start is on disk as running when take
 * returns it, as without lazy starts. */
static void queue_journal_lazy_starts_fold_into_the_ack(void **state)
{
    sandbox *sb = *state;
    enum { N = 20 };
    journal *j = js_open_ok(sb->path);
    queue *q = queue_journal_new(j, timers, 0, QUEUE_LINGER_DEFAULT, describe, NULL);
    queue_journal_lazy_starts(q, 1);
    item *its = enqueue_durable(q, j, N, "lazy");
    js_gate g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .want = 1};
    js_hold_writer(j, &g);
    journal_stats s0, s1;
    journal_get_stats(j, &s0);
    for (size_t i = 0; i < N; i++) {
        item *it = take_run(q); /* would hang here if it waited for the commit */
        assert_ptr_equal(it, &its[i]);
        assert_int_equal(queue_depth(q), N - 1 - i); /* one claimed at a time */
        queue_ack(q, &it->node, &(queue_outcome){.end = QUEUE_SUCCEEDED});
    }
    js_gate_append(&g, 1);
    for (uint64_t deadline = util_now_us() + 20000000; util_now_us() < deadline;) {
        journal_get_stats(j, &s1);
        if (s1.unwritten == 0 && s1.commits > s0.commits)
            break;
        usleep(1000);
    }
    assert_int_equal(s1.unwritten, 0);
    assert_int_equal(s1.records - s0.records, N); /* one row each */
    for (size_t i = 0; i < N; i++) {
        found f = lookup(j, its[i].id);
        assert_string_equal(f.state, "succeeded");
        assert_int_equal(f.attempts, 1);
    }

    item *slow = enqueue_durable(q, j, 1, "awaited");
    slow->await_start = 1;
    item *it = take_run(q);
    assert_ptr_equal(it, slow);
    found f = lookup(j, it->id); /* committed before take returned */
    assert_string_equal(f.state, "running");
    assert_int_equal(f.attempts, 1);
    queue_ack(q, &it->node, &(queue_outcome){.end = QUEUE_SUCCEEDED});
    queue_shutdown(q);
    queue_destroy(q);
    journal_close(j);
    free(slow);
    free(its);
}

/* Jobs claimed with a take but not handed out yet when the queue shuts
 * down come back through try_take, in their order, and go back to the
 * journal as queued with their attempts as they were (they never ran);
 * the one that was handed out stays running (interrupted at the next
 * start). */
static void queue_journal_shutdown_hands_claims_back(void **state)
{
    sandbox *sb = *state;
    enum { N = 10 };
    journal *j = js_open_ok(sb->path);
    queue *q = queue_journal_new(j, timers, 0, QUEUE_LINGER_DEFAULT, describe, NULL);
    item *its = enqueue_durable(q, j, N, "handed");
    assert_ptr_equal(take_run(q), &its[0]);
    assert_string_equal(lookup(j, its[1].id).state, "running"); /* claimed with it */
    assert_int_equal(queue_depth(q), N - 1);
    queue_shutdown(q);
    assert_null(queue_take(q));
    for (size_t i = 1; i < N; i++)
        assert_ptr_equal(queue_try_take(q), &its[i].node);
    assert_null(queue_try_take(q));
    queue_destroy(q);
    journal_close(j);

    j = js_open_ok(sb->path);
    replayed s = {0};
    assert_int_equal(journal_replay(j, replay_collect, &s), N);
    const found *first = replayed_find(&s, its[0].id);
    assert_non_null(first);
    assert_int_equal(first->interrupted, 1);
    assert_int_equal(first->attempts, 1);
    for (size_t i = 1; i < N; i++) {
        const found *f = replayed_find(&s, its[i].id);
        assert_non_null(f);
        assert_string_equal(f->state, "queued");
        assert_int_equal(f->interrupted, 0);
        assert_int_equal(f->attempts, 0);
    }
    journal_close(j);
    free(its);
}

/* ---- a full disk ------------------------------------------------------------------- */

enum { DF_OPEN = 20, DF_NO_FAILURE, DF_STATUS, DF_MSG, DF_NOT_RUN, DF_RECOVER, DF_LOST,
       DF_FOUND_FAILED };

/* One job with a 16 KiB payload (a big item of its own). */
typedef struct big_item {
    item it;
    char big[16384];
} big_item;

static void describe_big(const queue_node *n, queue_job *out, void *arg)
{
    const big_item *b = (const big_item *)UTIL_CONTAINER_OF(n, item, node);
    describe(n, out, arg);
    out->payload = b->big;
    out->len = sizeof b->big;
}

static int disk_full_child(const char *path)
{
    signal(SIGXFSZ, SIG_IGN);
    journal_config cfg = {.path = path};
    journal *j = NULL;
    char err[1024];
    if (journal_open(&cfg, &j, err, sizeof err) != 0)
        return DF_OPEN;
    queue *q = queue_journal_new(j, timers, 0, QUEUE_LINGER_DEFAULT, describe_big, NULL);
    enum { MAX = 400 };
    static big_item items[MAX + 1];
    static int durable[MAX + 1];
    int failures = 0, n = 0;
    h_capture_begin();
    js_limit_file_size(256 * 1024);
    /* one at a time until three commits failed */
    for (; n < MAX && failures < 3; n++) {
        item_init(&items[n].it, j, "big", "b");
        memset(items[n].big, 'x', sizeof items[n].big);
        queue_node *one[] = {&items[n].it.node};
        done_count d = DONE_COUNT_INIT;
        if (queue_enqueue_at(q, one, 1, 0, count_done, &d) != 0)
            return DF_STATUS;
        while (count_now(&d, NULL) == 0)
            usleep(1000);
        if (d.last_status != 0) {
            failures++;
            if (d.last_status != BGS_EFULL)
                return DF_STATUS;
            if (strstr(d.last_msg, "the disk is full") == NULL || strstr(d.last_msg, path) == NULL)
                return DF_MSG;
        }
        durable[n] = d.last_status == 0;
        /* the job still runs here, durable or not */
        queue_node *got = queue_try_take(q);
        if (got != one[0])
            return DF_NOT_RUN;
        items[n].it.attempts++;
        if (durable[n] && n % 2)
            queue_ack(q, got, &(queue_outcome){.end = QUEUE_SUCCEEDED});
    }
    if (failures < 3)
        return DF_NO_FAILURE;
    js_limit_file_size(RLIM_INFINITY);
    item_init(&items[n].it, j, "after", "a");
    queue_node *one[] = {&items[n].it.node};
    done_count d = DONE_COUNT_INIT;
    if (queue_enqueue_at(q, one, 1, 0, count_done, &d) != 0)
        return DF_RECOVER;
    while (count_now(&d, NULL) == 0)
        usleep(1000);
    if (d.last_status != 0)
        return DF_RECOVER;
    durable[n++] = 1;
    queue_shutdown(q);
    while (queue_try_take(q) != NULL)
        ;
    queue_destroy(q);
    journal_close(j);
    free(h_capture_end());

    /* every durable job is on disk; no failed one is */
    if (journal_open(&cfg, &j, err, sizeof err) != 0)
        return DF_OPEN;
    journal_replay(j, replay_collect, &(replayed){0});
    for (int i = 0; i < n; i++) {
        found f = {0};
        int rc = journal_lookup(j, items[i].it.id, found_fill, &f);
        if (durable[i] && rc != 0)
            return DF_LOST;
        if (!durable[i] && rc != JOURNAL_ENOTFOUND)
            return DF_FOUND_FAILED;
    }
    journal_close(j);
    return 0;
}

/* A commit that fails for a full disk (RLIMIT_FSIZE) tells the enqueuer
 * BGS_EFULL with the journal's message; its job still runs in this
 * process; commits work again once there is room; after a reopen every
 * job that was said durable is there and none that was not. */
static void queue_journal_disk_full_completion_says_so(void **state)
{
    sandbox *sb = *state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(disk_full_child(sb->path));
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fprintf(stderr, "disk-full child: status 0x%x (exit codes: %d open, %d no failure, "
                "%d status, %d message, %d not run, %d not recovered, %d lost, %d found "
                "failed)\n", status, DF_OPEN, DF_NO_FAILURE, DF_STATUS, DF_MSG, DF_NOT_RUN,
                DF_RECOVER, DF_LOST, DF_FOUND_FAILED);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, js_setup, js_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(queue_journal_records_each_step),
        T(queue_journal_memory_only_batch_is_done_at_once),
        T(queue_journal_refusals_write_nothing),
        T(queue_journal_adopt_keeps_not_before),
        T(queue_journal_consumers_race_the_writer),
        T(queue_journal_claims_share_one_commit),
        T(queue_journal_shutdown_hands_claims_back),
        T(queue_journal_lazy_starts_fold_into_the_ack),
        T(queue_journal_kill_loses_nothing_durable),
        T(queue_journal_disk_full_completion_says_so),
    };
    timers = sched_new();
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    sched_free(timers);
    return failed;
}
