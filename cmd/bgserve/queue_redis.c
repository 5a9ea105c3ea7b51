/*
 * queue_redis.c - the queue backend on the Redis Streams broker (see
 * queue_redis.h for the two roles, queue.h for the contract).
 *
 * State, all guarded by `mu`:
 *   held   - jobs read from the stream that this process runs: each node
 *            with its delivery (the stream entry, to acknowledge it) and
 *            its concurrency lease; hashed by node.  A held node is in the
 *            inner memory queue or with whoever took it.
 *   sent   - nodes enqueued here and added to the stream, waiting for the
 *            notice of their final state; hashed by task id.
 *            A node written ahead (queue_redis_write) stays its owner's
 *            until queue_redis_link; a notice that comes first is kept
 *            (final_seen) and acted on once it is linked (`late`).
 *   rel    - adopted nodes nacked into the delayed set, waiting for
 *            the background thread to hand them to the `released` hook
 *            (linked through queue_node.next); after the thread
 *            stopped, nack hands them over itself.  A node enqueued
 *            here goes back to `sent` instead: its retry may run on
 *            another worker, and its notice finishes it here.
 *   watch  - watches of tasks that other processes added (queue_redis_watch):
 *            called once with the record when the notice of the task's
 *            final state comes (or a late look-up finds it final).
 *   stop, shut - shutdown flags.
 *   draining - set when a worker begins to stop (queue_redis_drain):
 *            nothing more is read; running entries are still touched.
 * The background thread alone uses the notice cursor and the touch and
 * sweep clocks.  The broker calls are made with mu released; ownership
 * of a node moves under mu (out of `sent` or `held`) before any hook
 * sees it, so a node reaches its owner exactly once.
 *
 * The inner memory queue (queue_mem_new) does the handing out: adopted
 * jobs and ad hoc ones are pushed to it, take and try_take come from it.
 */
#include "queue_redis.h"

#include "log.h"
#include "util.h"

#include "bgserve.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKET 4096u
#define IDLE_WAIT_MS 100u
#define DEFER_MS 200u          /* a name at its cap is read again after this */
#define SWEEP_US 5000000u      /* look up records of nodes whose notice is late */
#define SWEEP_MAX 256u

typedef struct held {
    struct held *next;         /* bucket chain */
    queue_node *node;
    broker_msg msg;
    unsigned conc;             /* max_concurrency; 0: no lease held */
    int ours;                  /* the node was enqueued here (it was in
                                * `sent`), not adopted */
    uint64_t retry_at_us;      /* its run failed while Redis was away and
                                * it waits here for its retry, due then
                                * (util_now_us); 0: never */
    char *retry_error;         /* that run's error (NULL: none) */
    char token[BROKER_ENTRY_MAX + 8];
} held;

typedef struct sent {
    struct sent *next;         /* bucket chain */
    uint64_t id;
    uint64_t since_us;
    queue_node *node;
    int linked;                /* 0: written ahead (queue_redis_write), its
                                * owner has not handed it over yet */
    int final_seen;            /* its notice came before queue_redis_link */
} sent;

typedef struct rwatch {
    struct rwatch *next;
    uint64_t id;
    uint64_t since_us;
    queue_redis_watch_fn fn;
    void *arg;
} rwatch;

typedef struct rq {
    queue base;                /* first: a queue * is an rq * */
    broker *b;
    queue *mem;
    queue_redis_hooks h;
    unsigned consume;

    pthread_mutex_t mu;
    pthread_cond_t cv;         /* monotonic; the background thread waits */
    held *hb[NBUCKET];         /* mu */
    sent *sb[NBUCKET];         /* mu */
    size_t nheld, nsent;       /* mu */
    queue_node *rel;           /* mu */
    rwatch *watch;             /* mu */
    size_t nwatch;             /* mu */
    size_t late;               /* mu: linked nodes whose notice came early */
    int stop, shut;            /* mu */
    int draining;              /* mu: a worker that stops reads no more */

    char cursor[BROKER_ENTRY_MAX]; /* background thread */
    int have_cursor;               /* background thread */
    uint64_t next_touch_us, next_sweep_us; /* background thread */
    pthread_t thr;
} rq;

static rq *R(queue *q) { return (rq *)(void *)q; }

static size_t hptr(const void *p) { return ((uintptr_t)p >> 4) % NBUCKET; }
static size_t hid(uint64_t id) { return (size_t)(id * 0x9E3779B97F4A7C15ull >> 52) % NBUCKET; }

/* ---- the maps (mu held) -------------------------------------------------- */

static void held_put_locked(rq *r, held *x)
{
    size_t i = hptr(x->node);
    x->next = r->hb[i];
    r->hb[i] = x;
    r->nheld++;
}

static held *held_take_locked(rq *r, const queue_node *n)
{
    for (held **pp = &r->hb[hptr(n)]; *pp; pp = &(*pp)->next) {
        if ((*pp)->node == n) {
            held *x = *pp;
            *pp = x->next;
            r->nheld--;
            return x;
        }
    }
    return NULL;
}

static void sent_put_locked(rq *r, sent *s)
{
    size_t i = hid(s->id);
    s->next = r->sb[i];
    r->sb[i] = s;
    r->nsent++;
}

/* The link that points at the entry of task id, or at the NULL ending
 * its bucket. */
static sent **sent_slot_locked(rq *r, uint64_t id)
{
    sent **pp = &r->sb[hid(id)];
    while (*pp && (*pp)->id != id)
        pp = &(*pp)->next;
    return pp;
}

static sent *sent_unlink_locked(rq *r, sent **pp)
{
    sent *s = *pp;
    *pp = s->next;
    r->nsent--;
    return s;
}

static sent *sent_take_locked(rq *r, uint64_t id)
{
    sent **pp = sent_slot_locked(r, id);
    return *pp ? sent_unlink_locked(r, pp) : NULL;
}

/* Any linked node (after shutdown: back to its owner). */
static sent *sent_take_any_locked(rq *r)
{
    for (size_t i = 0; r->nsent && i < NBUCKET; i++)
        for (sent **pp = &r->sb[i]; *pp; pp = &(*pp)->next)
            if ((*pp)->linked)
                return sent_unlink_locked(r, pp);
    return NULL;
}

static void held_free(held *x)
{
    broker_msg_clear(&x->msg);
    free(x->retry_error);
    free(x);
}

/* Give back the lease of x (no lock held). */
static void conc_release(rq *r, held *x)
{
    if (x->conc)
        broker_conc_release(r->b, x->msg.name, x->token);
}

/* ---- enqueue --------------------------------------------------------------- */

/*
 * Add the n named jobs of nodes[] to the stream, all or none, and know
 * them (sent) until their notices; linked 0 keeps them their owner's
 * until queue_redis_link.  0, BGS_ESHUTDOWN, or BGS_EFULL (Redis away or
 * over capacity: load) with why saying which and a log line.
 */
static int add_to_stream(rq *r, queue_node *const *nodes, size_t n, int linked, int seq,
                         char *why, size_t cap, const char **hint)
{
    if (n == 0)
        return 0;
    broker_job *jobs = xcalloc(n, sizeof *jobs);
    sent **ss = xcalloc(n, sizeof *ss);
    for (size_t i = 0; i < n; i++) {
        queue_job job = {0};
        r->h.describe(nodes[i], &job, r->h.arg);
        jobs[i] = (broker_job){.id = job.id, .name = job.name, .request_id = job.request_id,
                               .max_attempts = job.max_attempts, .payload = job.payload,
                               .len = job.len};
        ss[i] = xcalloc(1, sizeof *ss[i]);
        *ss[i] = (sent){.id = job.id, .node = nodes[i], .since_us = util_now_us(),
                        .linked = linked};
    }
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    if (r->shut)
        rc = BGS_ESHUTDOWN;
    /* Known before the entries exist: a notice cannot come first. */
    for (size_t i = 0; rc == 0 && i < n; i++)
        sent_put_locked(r, ss[i]);
    pthread_mutex_unlock(&r->mu);
    char answer[256];
    int brc = rc == 0 ? broker_enqueue_seq(r->b, jobs, n, seq, answer, sizeof answer) : 0;
    if (brc < 0) {
        /* Over capacity, Redis away, or an error it answered: load, for
         * the caller (503). */
        const char *h = "";
        char *tail = strstr(answer, " script: "); /* which script: no help */
        size_t len = tail ? (size_t)(tail - answer) : strlen(answer);
        while (len > 0 && (answer[len - 1] == '.' || answer[len - 1] == ' '))
            len--;
        answer[len] = '\0';
        if (brc == BROKER_EFULL) {
            snprintf(why, cap, "the broker %s is over its capacity (--broker-capacity)",
                     broker_url_shown(r->b));
            h = "; queue it again once the workers (bgserve worker) have run some of the "
                "broker's tasks, or raise --broker-capacity";
        } else if (answer[0]) {
            snprintf(why, cap, "redis at %s answered an error: %s", broker_url_shown(r->b),
                     answer);
            h = "; redis takes no tasks until what it answered is put right (its log may "
                "say more); then queue it again";
        } else {
            snprintf(why, cap, "redis at %s did not take them (%s)", broker_url_shown(r->b),
                     broker_strerror(brc));
        }
        if (hint)
            *hint = h;
        log_msg(BGS_LOG_WARN, "broker: %zu task(s) (%s, ...) not added: %s", n, jobs[0].name,
                why);
        rc = BGS_EFULL;
        pthread_mutex_lock(&r->mu);
        for (size_t i = 0; i < n; i++)
            free(sent_take_locked(r, ss[i]->id));
        pthread_mutex_unlock(&r->mu);
    } else if (rc == 0) {
        pthread_cond_signal(&r->cv);
    } else {
        for (size_t i = 0; i < n; i++)
            free(ss[i]);
    }
    free(jobs);
    free(ss);
    return rc;
}

/* enqueue; why (cap bytes) says what Redis answered when it refused the
 * named jobs (BGS_EFULL), and *hint (may be NULL) what to do, in
 * add_to_stream's words. */
static int enqueue_why(rq *r, queue_node *const *nodes, size_t n, uint64_t not_before_us,
                       queue_done_fn done, void *done_arg, char *why, size_t cap,
                       const char **hint)
{
    queue_node **named = xcalloc(n ? n : 1, sizeof *named);
    queue_node **locals = xcalloc(n ? n : 1, sizeof *locals);
    size_t nj = 0, nl = 0;
    int later = not_before_us > util_now_us();
    for (size_t i = 0; i < n; i++) {
        queue_job job = {0};
        r->h.describe(nodes[i], &job, r->h.arg);
        /* A job with a time of its own waits here (the stream has no
         * not-before). */
        if (!job.name || later)
            locals[nl++] = nodes[i];
        else
            named[nj++] = nodes[i];
    }
    int rc = add_to_stream(r, named, nj, 1, 0, why, cap, hint);
    if (rc == 0 && nl) {
        rc = queue_enqueue_at(r->mem, locals, nl, not_before_us, NULL, NULL);
        if (rc < 0 && nj) {
            log_msg(BGS_LOG_WARN, "broker: %zu task(s) were added to the stream while the "
                    "server stopped; they run on the workers, untracked here", nj);
            pthread_mutex_lock(&r->mu);
            for (size_t i = 0; i < nj; i++) {
                queue_job job = {0};
                r->h.describe(named[i], &job, r->h.arg);
                free(sent_take_locked(r, job.id));
            }
            pthread_mutex_unlock(&r->mu);
        }
    }
    free(named);
    free(locals);
    if (rc == 0 && done)
        done(done_arg, 0, NULL);
    return rc;
}

static int rq_enqueue(queue *q, queue_node *const *nodes, size_t n, uint64_t not_before_us,
                      queue_done_fn done, void *done_arg)
{
    char why[256];
    return enqueue_why(R(q), nodes, n, not_before_us, done, done_arg, why, sizeof why, NULL);
}

int queue_redis_enqueue(queue *q, queue_node *n, queue_done_fn done, void *done_arg, char *why,
                        size_t cap, const char **hint)
{
    if (cap)
        why[0] = '\0';
    *hint = "";
    return enqueue_why(R(q), &n, 1, 0, done, done_arg, why, cap, hint);
}

int queue_redis_write(queue *q, queue_node *const *nodes, size_t n, int seq, char *why,
                      size_t cap)
{
    return add_to_stream(R(q), nodes, n, 0, seq, why, cap, NULL);
}

int queue_redis_link(queue *q, queue_node *n)
{
    rq *r = R(q);
    queue_job job = {0};
    r->h.describe(n, &job, r->h.arg);
    pthread_mutex_lock(&r->mu);
    sent *s = *sent_slot_locked(r, job.id);
    int late = s && !s->linked && s->final_seen;
    if (s)
        s->linked = 1;
    r->late += (size_t)late;
    pthread_mutex_unlock(&r->mu);
    if (late)
        pthread_cond_signal(&r->cv);
    return s ? 0 : BGS_EINVAL;
}

void queue_redis_forget(queue *q, uint64_t id, int untracked)
{
    rq *r = R(q);
    pthread_mutex_lock(&r->mu);
    sent **pp = sent_slot_locked(r, id);
    sent *s = *pp && !(*pp)->linked ? sent_unlink_locked(r, pp) : NULL;
    pthread_mutex_unlock(&r->mu);
    if (s && untracked)
        log_msg(BGS_LOG_WARN, "broker: task %" PRIu64 " was added to redis but its request "
                "did not hand it over here (answered with an error, or the server stopped): "
                "it runs on the workers, untracked here", id);
    free(s);
}

/* ---- take, ack, nack ------------------------------------------------------ */

static queue_node *rq_take(queue *q) { return queue_take(R(q)->mem); }

static queue_node *rq_try_take(queue *q) { return queue_try_take(R(q)->mem); }

queue_node *queue_redis_take_sent(queue *q)
{
    rq *r = R(q);
    queue_node *n;
    pthread_mutex_lock(&r->mu);
    sent *s = r->shut ? sent_take_any_locked(r) : NULL;
    pthread_mutex_unlock(&r->mu);
    if (!s)
        return NULL;
    n = s->node;
    free(s);
    return n;
}

/*
 * The job of x went back to Redis (the delayed set): its node leaves the
 * held jobs.  One enqueued here waits in `sent` for the notice of its
 * final state again, wherever its next attempt runs; an adopted one goes
 * to the `released` hook, through the background thread while it runs
 * (hooks are called one at a time), else at once.  Frees x.  0, or, for
 * a node enqueued here when the queue is shut down and from_bg is 0,
 * BGS_ESHUTDOWN: its owner may have taken back the nodes in `sent`
 * already (queue_redis_take_sent), so the node stays the caller's.
 */
static int give_back(rq *r, held *x, queue_node *n, int from_bg)
{
    sent *s = NULL;
    if (x->ours) {
        s = xcalloc(1, sizeof *s);
        *s = (sent){.id = x->msg.id, .node = n, .since_us = util_now_us(), .linked = 1};
    }
    conc_release(r, x);
    held_free(x);
    pthread_mutex_lock(&r->mu);
    int now = 0, shut = r->shut && !from_bg;
    if (s && shut) {
        pthread_mutex_unlock(&r->mu);
        free(s);
        return BGS_ESHUTDOWN;
    }
    if (s)
        sent_put_locked(r, s);
    else if (r->stop)
        now = 1;
    else {
        n->next = r->rel;
        r->rel = n;
    }
    pthread_mutex_unlock(&r->mu);
    if (now)
        r->h.released(r->h.arg, n);
    else
        pthread_cond_signal(&r->cv);
    return 0;
}

/*
 * A worker that stops hands the job of x (read from the stream, not
 * final) back to Redis for another worker, and logs where it went.  One
 * that waited here for a retry Redis could not take goes back with the
 * rest of its backoff, as broker_retry would have put it.  0, or the
 * broker's error: Redis was away or refused the one script (REQUEUE),
 * so the entry stays pending there, claimed by another worker after the
 * visibility timeout.  x stays the caller's.
 */
static int hand_back_held(rq *r, held *x)
{
    uint64_t now = util_now_us();
    int waited = x->retry_at_us > now;
    uint64_t ms = waited ? (x->retry_at_us - now + 999) / 1000 : 0;
    unsigned due_ms = ms > UINT32_MAX ? UINT32_MAX : (unsigned)ms;
    int rc = waited ? broker_hand_back_retry(r->b, &x->msg, due_ms, x->retry_error)
                    : broker_hand_back(r->b, &x->msg, "its worker stopped before it finished");
    if (rc == 0 && waited)
        log_msg(BGS_LOG_INFO, "broker: task %" PRIu64 " (%s) handed back to redis for "
                "another worker: this worker stopped while the task waited for its retry "
                "(attempt %" PRIu32 "), which stays due in %u ms", x->msg.id, x->msg.name,
                x->msg.attempt, due_ms);
    else if (rc == 0)
        log_msg(BGS_LOG_INFO, "broker: task %" PRIu64 " (%s) handed back to redis for "
                "another worker: this worker stopped before it finished (attempt %" PRIu32
                " does not count)", x->msg.id, x->msg.name, x->msg.attempt);
    else
        log_msg(BGS_LOG_WARN, "broker: task %" PRIu64 " (%s) could not be handed back "
                "(%s): it stays pending in redis and another worker claims it after the "
                "visibility timeout (%u ms)", x->msg.id, x->msg.name, broker_strerror(rc),
                broker_visibility_ms(r->b));
    return rc;
}

int queue_redis_hand_back(queue *q, queue_node *n, char *why, size_t cap)
{
    rq *r = R(q);
    pthread_mutex_lock(&r->mu);
    held *x = held_take_locked(r, n);
    pthread_mutex_unlock(&r->mu);
    if (!x)
        return BGS_ENOTFOUND;
    int rc = hand_back_held(r, x);
    if (rc < 0)
        snprintf(why, cap, "%s", broker_strerror(rc));
    conc_release(r, x);
    held_free(x);
    pthread_cond_signal(&r->cv); /* room to read more */
    return rc < 0 ? QUEUE_ELSEWHERE : 0;
}

static void rq_ack(queue *q, queue_node *n, const queue_outcome *o)
{
    rq *r = R(q);
    pthread_mutex_lock(&r->mu);
    held *x = held_take_locked(r, n);
    int shut = r->shut;
    pthread_mutex_unlock(&r->mu);
    if (!x) {
        queue_ack(r->mem, n, o);
        return;
    }
    if (shut && o->end == QUEUE_CANCELLED) {
        /* Stopped by this worker's shutdown: another worker runs it. */
        hand_back_held(r, x);
    } else if (o->end == QUEUE_FAILED) {
        /* Out of attempts: the dead letters keep it, with its last error. */
        int rc = broker_dead(r->b, &x->msg, o->error ? o->error : "failed");
        if (rc < 0)
            log_msg(BGS_LOG_WARN, "broker: task %" PRIu64 " (%s) failed but redis did not "
                    "record it (%s): after the visibility timeout it runs again",
                    x->msg.id, x->msg.name, broker_strerror(rc));
    } else {
        broker_outcome bo = {.state = queue_end_name(o->end), .error = o->error};
        if (r->h.result)
            r->h.result(r->h.arg, n, &bo);
        int rc = broker_finish(r->b, &x->msg, &bo);
        if (rc < 0)
            log_msg(BGS_LOG_WARN, "broker: task %" PRIu64 " (%s) is %s but redis did not "
                    "record it (%s): after the visibility timeout it runs again",
                    x->msg.id, x->msg.name, bo.state, broker_strerror(rc));
    }
    conc_release(r, x);
    held_free(x);
    pthread_cond_signal(&r->cv); /* room to read more */
}

static int rq_nack(queue *q, queue_node *n, uint64_t retry_at_us, const char *why)
{
    rq *r = R(q);
    pthread_mutex_lock(&r->mu);
    held *x = held_take_locked(r, n);
    pthread_mutex_unlock(&r->mu);
    if (!x)
        return queue_nack(r->mem, n, retry_at_us, why);
    uint64_t now = util_now_us();
    uint64_t delay_ms = retry_at_us > now ? (retry_at_us - now + 999) / 1000 : 0;
    int rc = broker_retry(r->b, &x->msg, delay_ms > UINT32_MAX ? UINT32_MAX : (unsigned)delay_ms,
                          why);
    if (rc < 0) {
        /* Redis is away: retry here; the entry stays ours (touched).
         * That run is one more attempt, which no broker_start counts:
         * the message carries it to the record when the job ends (or
         * goes back to Redis). */
        x->msg.attempt++;
        x->retry_at_us = retry_at_us > now ? retry_at_us : now;
        free(x->retry_error);
        x->retry_error = why ? xstrdup(why) : NULL;
        pthread_mutex_lock(&r->mu);
        held_put_locked(r, x);
        pthread_mutex_unlock(&r->mu);
        int mrc = queue_nack(r->mem, n, retry_at_us, why);
        if (mrc != BGS_ESHUTDOWN)
            return mrc;
        /* Shut down meanwhile: nothing here runs the retry, and nobody
         * acks the node any more, so its entry is forgotten here (its
         * node is the caller's again).  The job is not lost: its entry
         * stays pending in Redis, where another worker claims it. */
        pthread_mutex_lock(&r->mu);
        x = held_take_locked(r, n);
        pthread_mutex_unlock(&r->mu);
        if (x) {
            log_msg(BGS_LOG_WARN, "broker: task %" PRIu64 " (%s) could not be handed back "
                    "(%s): attempt %" PRIu32 " failed as this worker stopped; it stays pending "
                    "in redis and another worker claims it after the visibility timeout "
                    "(%u ms)", x->msg.id, x->msg.name, broker_strerror(rc),
                    x->msg.attempt - 1, broker_visibility_ms(r->b));
            conc_release(r, x);
            held_free(x);
        }
        return QUEUE_ELSEWHERE;
    }
    uint64_t id = x->msg.id;
    uint32_t attempt = x->msg.attempt;
    char name[128];
    snprintf(name, sizeof name, "%s", x->msg.name);
    if (give_back(r, x, n, 0) == 0)
        return 0;
    /* A task of this process's own after shutdown: its owner has taken
     * back the nodes waiting for notices, so the node stays the
     * caller's; the job itself is in the delayed set for another
     * worker. */
    log_msg(BGS_LOG_INFO, "broker: task %" PRIu64 " (%s) handed back to redis: attempt %" PRIu32
            " failed as this worker stopped; another worker will retry it", id, name, attempt);
    return QUEUE_ELSEWHERE;
}

static size_t rq_depth(queue *q) { return queue_depth(R(q)->mem); }
static uint64_t rq_wakeups(queue *q) { return queue_wakeups(R(q)->mem); }

void queue_redis_drain(queue *q)
{
    rq *r = R(q);
    if (!r->consume)
        return;
    pthread_mutex_lock(&r->mu);
    int first = !r->draining;
    r->draining = 1;
    size_t n = r->nheld;
    pthread_mutex_unlock(&r->mu);
    if (first)
        log_msg(BGS_LOG_INFO, "broker: worker stopping: reading no more tasks from %s:tasks; "
                "the %zu here finish or go back to redis", broker_prefix(r->b), n);
}

int queue_redis_consumes(queue *q) { return R(q)->consume > 0; }

void queue_redis_counts(queue *q, size_t *nheld, size_t *nsent)
{
    rq *r = R(q);
    pthread_mutex_lock(&r->mu);
    *nheld = r->nheld;
    *nsent = r->nsent;
    pthread_mutex_unlock(&r->mu);
}

/* ---- watching tasks other processes added ---------------------------------- */

size_t queue_redis_watches(queue *q)
{
    rq *r = R(q);
    pthread_mutex_lock(&r->mu);
    size_t n = r->nwatch;
    pthread_mutex_unlock(&r->mu);
    return n;
}

static int is_final_state(const char *st)
{
    return st && strcmp(st, "queued") != 0 && strcmp(st, "running") != 0 &&
           strcmp(st, "retrying") != 0;
}

/* Take the watches of task id (all of them when all is set) out of the
 * list; the chain of them (mu held). */
static rwatch *watch_take_locked(rq *r, uint64_t id, int all)
{
    rwatch *out = NULL;
    for (rwatch **pp = &r->watch; *pp;) {
        rwatch *w = *pp;
        if (all || w->id == id) {
            *pp = w->next;
            w->next = out;
            out = w;
            r->nwatch--;
        } else {
            pp = &w->next;
        }
    }
    return out;
}

/* Call and free the chain ws; rec is their task's record (NULL: none). */
static void watch_fire(rwatch *ws, const broker_record *rec)
{
    while (ws) {
        rwatch *next = ws->next;
        ws->fn(ws->arg, ws->id, rec);
        free(ws);
        ws = next;
    }
}

/* Task id is final (its notice came): its watches, with its record. */
static void watch_final(rq *r, uint64_t id)
{
    pthread_mutex_lock(&r->mu);
    rwatch *ws = r->nwatch ? watch_take_locked(r, id, 0) : NULL;
    pthread_mutex_unlock(&r->mu);
    if (!ws)
        return;
    broker_record rec;
    int got = broker_record_get(r->b, id, &rec) == 0;
    watch_fire(ws, got ? &rec : NULL);
    if (got)
        broker_record_clear(&rec);
}

int queue_redis_watch(queue *q, uint64_t id, queue_redis_watch_fn fn, void *arg)
{
    rq *r = R(q);
    broker_record rec;
    int rc = broker_record_get(r->b, id, &rec);
    if (rc < 0)
        return rc == BROKER_ENOTFOUND ? BGS_ENOTFOUND : BGS_EFULL;
    int final = is_final_state(rec.state);
    broker_record_clear(&rec);
    if (final)
        return 1;
    rwatch *w = xcalloc(1, sizeof *w);
    *w = (rwatch){.id = id, .since_us = util_now_us(), .fn = fn, .arg = arg};
    pthread_mutex_lock(&r->mu);
    int shut = r->shut;
    if (!shut) {
        w->next = r->watch;
        r->watch = w;
        r->nwatch++;
    }
    pthread_mutex_unlock(&r->mu);
    if (shut) {
        free(w);
        return 1;
    }
    pthread_cond_signal(&r->cv);
    /* Its notice may have gone by before the watch was in the list: look
     * again, now that a notice from here on finds it. */
    if (broker_record_get(r->b, id, &rec) != 0)
        return 0; /* the sweep looks again */
    final = is_final_state(rec.state);
    broker_record_clear(&rec);
    if (!final)
        return 0;
    int mine = 0;
    pthread_mutex_lock(&r->mu);
    for (rwatch **pp = &r->watch; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            r->nwatch--;
            mine = 1;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (!mine)
        return 0; /* the background thread has it: it calls fn */
    free(w);
    return 1;
}

/* ---- the background thread ------------------------------------------------- */

/* 1 when this process holds the entry already (mu held). */
static int held_has_entry_locked(rq *r, const char *entry)
{
    size_t seen = 0;
    for (size_t i = 0; i < NBUCKET && seen < r->nheld; i++)
        for (held *x = r->hb[i]; x; x = x->next, seen++)
            if (strcmp(x->msg.entry, entry) == 0)
                return 1;
    return 0;
}

/* A job read from the stream: check it, take its lease, count the
 * attempt, make its node and queue it here. */
static void take_job(rq *r, broker_msg *m)
{
    char why[512] = "";
    unsigned conc = 0;
    if (m->reclaimed) {
        /* Our own entry, idle because this thread was slow to touch it:
         * it runs here already. */
        pthread_mutex_lock(&r->mu);
        int ours = held_has_entry_locked(r, m->entry);
        pthread_mutex_unlock(&r->mu);
        if (ours) {
            broker_msg_clear(m);
            return;
        }
    }
    pthread_mutex_lock(&r->mu);
    int draining = r->draining;
    pthread_mutex_unlock(&r->mu);
    if (draining) {
        /* Read as this worker began to stop: for another worker. */
        broker_defer(r->b, m, 0);
        broker_msg_clear(m);
        return;
    }
    int lim = r->h.limits(r->h.arg, m->name, &conc, why, sizeof why);
    if (lim == -2) { /* read before the app was loaded: later */
        broker_defer(r->b, m, DEFER_MS);
        broker_msg_clear(m);
        return;
    }
    if (lim < 0) {
        log_msg(BGS_LOG_WARN, "broker: task %" PRIu64 ": %s; moved to the dead letters",
                m->id, why);
        broker_dead(r->b, m, why);
        broker_msg_clear(m);
        return;
    }
    held *x = xcalloc(1, sizeof *x);
    snprintf(x->token, sizeof x->token, "%" PRIu64 "@%s", m->id, m->entry);
    if (conc) {
        int got = broker_conc_take(r->b, m->name, conc, x->token, broker_visibility_ms(r->b));
        if (got == 0)
            broker_defer(r->b, m, DEFER_MS);
        if (got <= 0) {
            /* Not deferred (Redis away): the entry stays pending and is
             * claimed again after the visibility timeout. */
            broker_msg_clear(m);
            free(x);
            return;
        }
        x->conc = conc;
    }
    x->msg = *m;
    memset(m, 0, sizeof *m);
    if (broker_start(r->b, &x->msg) < 0) {
        conc_release(r, x);
        held_free(x);
        return;
    }
    if (x->msg.max_attempts && x->msg.attempt > x->msg.max_attempts) {
        snprintf(why, sizeof why, "attempt %" PRIu32 " of at most %" PRIu32 ": the worker "
                 "running the last one stopped before it finished", x->msg.attempt,
                 x->msg.max_attempts);
        log_msg(BGS_LOG_WARN, "broker: task %" PRIu64 " (%s): %s; moved to the dead letters",
                x->msg.id, x->msg.name, why);
        broker_dead(r->b, &x->msg, why);
        conc_release(r, x);
        held_free(x);
        return;
    }
    /* One of ours (added by this process): run the node it came from. */
    pthread_mutex_lock(&r->mu);
    sent **pp = sent_slot_locked(r, x->msg.id);
    sent *s = *pp && (*pp)->linked ? sent_unlink_locked(r, pp) : NULL;
    pthread_mutex_unlock(&r->mu);
    if (s) {
        x->node = s->node;
        x->ours = 1;
        free(s);
        if (r->h.rejoin)
            r->h.rejoin(r->h.arg, x->node, &x->msg);
    } else {
        x->node = r->h.adopt(r->h.arg, &x->msg, why, sizeof why);
    }
    if (!x->node) {
        log_msg(BGS_LOG_WARN, "broker: task %" PRIu64 " (%s) cannot run here: %s; moved to "
                "the dead letters", x->msg.id, x->msg.name, why);
        broker_dead(r->b, &x->msg, why);
        conc_release(r, x);
        held_free(x);
        return;
    }
    queue_node *node = x->node;
    pthread_mutex_lock(&r->mu);
    held_put_locked(r, x);
    pthread_mutex_unlock(&r->mu);
    /* Shutdown race: the node goes back to the stream. */
    if (queue_enqueue(r->mem, node) < 0) {
        pthread_mutex_lock(&r->mu);
        x = held_take_locked(r, node);
        pthread_mutex_unlock(&r->mu);
        if (x) {
            broker_hand_back(r->b, &x->msg, "its worker stopped before it ran");
            give_back(r, x, node, 1); /* the owner takes `sent` back after */
        }
    }
}

/* Touch every running entry and renew its lease. */
static void touch_all(rq *r)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->nheld, k = 0;
    char (*entries)[BROKER_ENTRY_MAX] = xmalloc((n ? n : 1) * sizeof *entries);
    typedef struct lease {
        char name[128];
        char token[BROKER_ENTRY_MAX + 8];
        unsigned conc;
    } lease;
    lease *ls = xmalloc((n ? n : 1) * sizeof *ls);
    size_t nl = 0;
    for (size_t i = 0; i < NBUCKET && k < n; i++) {
        for (held *x = r->hb[i]; x; x = x->next) {
            memcpy(entries[k++], x->msg.entry, BROKER_ENTRY_MAX);
            if (x->conc) {
                snprintf(ls[nl].name, sizeof ls[nl].name, "%s", x->msg.name);
                memcpy(ls[nl].token, x->token, sizeof ls[nl].token);
                ls[nl].conc = x->conc;
                nl++;
            }
        }
    }
    pthread_mutex_unlock(&r->mu);
    const char **ptrs = xmalloc((k ? k : 1) * sizeof *ptrs);
    for (size_t i = 0; i < k; i++)
        ptrs[i] = entries[i];
    if (k)
        broker_touch(r->b, ptrs, k);
    for (size_t i = 0; i < nl; i++)
        broker_conc_take(r->b, ls[i].name, ls[i].conc, ls[i].token, broker_visibility_ms(r->b));
    free(ptrs);
    free(entries);
    free(ls);
}

/* The node of task id, enqueued here, is final elsewhere. */
static void finish_sent(rq *r, uint64_t id, const broker_record *known)
{
    pthread_mutex_lock(&r->mu);
    sent **pp = sent_slot_locked(r, id);
    sent *s = NULL;
    if (*pp && !(*pp)->linked)
        (*pp)->final_seen = 1; /* finished once its owner links it */
    else if (*pp)
        s = sent_unlink_locked(r, pp);
    pthread_mutex_unlock(&r->mu);
    if (!s)
        return;
    broker_record rec;
    const broker_record *use = known;
    if (!use && broker_record_get(r->b, id, &rec) == 0)
        use = &rec;
    r->h.finished(r->h.arg, s->node, use);
    if (use == &rec)
        broker_record_clear(&rec);
    free(s);
}

/* The nodes whose notice came before they were linked. */
static void finish_late(rq *r)
{
    uint64_t ids[SWEEP_MAX];
    size_t n = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < NBUCKET && n < SWEEP_MAX; i++)
        for (sent *s = r->sb[i]; s && n < SWEEP_MAX; s = s->next)
            if (s->linked && s->final_seen)
                ids[n++] = s->id;
    r->late = n < SWEEP_MAX ? 0 : r->late; /* more: the next turn */
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < n; i++)
        finish_sent(r, ids[i], NULL);
}

/* Notices can be lost (trimmed, a Redis restarted without persistence):
 * look up the records of nodes that have waited a while. */
static void sweep(rq *r)
{
    uint64_t ids[SWEEP_MAX];
    size_t n = 0;
    uint64_t old = util_now_us() - SWEEP_US;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < NBUCKET && n < SWEEP_MAX; i++)
        for (sent *s = r->sb[i]; s && n < SWEEP_MAX; s = s->next)
            if (s->since_us < old)
                ids[n++] = s->id;
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < n; i++) {
        broker_record rec;
        if (broker_record_get(r->b, ids[i], &rec) == 0) {
            if (is_final_state(rec.state))
                finish_sent(r, ids[i], &rec);
            broker_record_clear(&rec);
        }
    }
    /* The same for watches; one whose record is gone ends without it. */
    n = 0;
    pthread_mutex_lock(&r->mu);
    for (rwatch *w = r->watch; w && n < SWEEP_MAX; w = w->next)
        if (w->since_us < old)
            ids[n++] = w->id;
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < n; i++) {
        broker_record rec;
        int rc = broker_record_get(r->b, ids[i], &rec);
        if (rc == 0 && !is_final_state(rec.state)) {
            broker_record_clear(&rec);
            continue;
        }
        if (rc != 0 && rc != BROKER_ENOTFOUND)
            continue; /* Redis away: later */
        pthread_mutex_lock(&r->mu);
        rwatch *ws = watch_take_locked(r, ids[i], 0);
        pthread_mutex_unlock(&r->mu);
        watch_fire(ws, rc == 0 ? &rec : NULL);
        if (rc == 0)
            broker_record_clear(&rec);
    }
}

static void wait_ms(rq *r, unsigned ms)
{
    struct timespec ts = util_mono_timespec(util_now_us() + (uint64_t)ms * 1000u);
    pthread_mutex_lock(&r->mu);
    if (!r->stop && !r->rel && !r->late)
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    pthread_mutex_unlock(&r->mu);
}

static void *bg_main(void *arg)
{
    rq *r = arg;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        int stop = r->stop;
        queue_node *rel = r->rel;
        r->rel = NULL;
        size_t room = r->consume > r->nheld && !r->draining ? r->consume - r->nheld : 0;
        size_t nsent = r->nsent + r->nwatch, late = r->late;
        pthread_mutex_unlock(&r->mu);
        while (rel) {
            queue_node *next = rel->next;
            r->h.released(r->h.arg, rel);
            rel = next;
        }
        if (stop)
            break;
        if (late)
            finish_late(r);
        uint64_t now = util_now_us();
        if (r->consume && now >= r->next_touch_us) {
            touch_all(r);
            r->next_touch_us = now + (uint64_t)broker_visibility_ms(r->b) * 1000u / 3;
        }
        /* Each read waits (up to IDLE_WAIT_MS) when there is nothing; with
         * neither to do, or Redis away, wait here instead. */
        int waited = 0;
        if (room) {
            broker_msg *msgs;
            size_t k;
            int rc = broker_read(r->b, (unsigned)room, nsent ? 20 : IDLE_WAIT_MS, &msgs, &k);
            for (size_t i = 0; i < k; i++)
                take_job(r, &msgs[i]);
            free(msgs);
            waited = rc == 0;
        }
        if (nsent) {
            if (!r->have_cursor)
                r->have_cursor = broker_done_cursor(r->b, r->cursor, sizeof r->cursor) == 0;
            uint64_t *ids = NULL;
            size_t k = 0;
            int rc = r->have_cursor
                         ? broker_done_read(r->b, r->cursor, sizeof r->cursor,
                                            room ? 0 : IDLE_WAIT_MS, &ids, &k)
                         : BROKER_EDOWN;
            for (size_t i = 0; i < k; i++) {
                finish_sent(r, ids[i], NULL);
                watch_final(r, ids[i]);
            }
            free(ids);
            waited = waited || (rc == 0 && !room);
            if (now >= r->next_sweep_us) {
                sweep(r);
                r->next_sweep_us = now + SWEEP_US;
            }
        }
        if (!waited)
            wait_ms(r, IDLE_WAIT_MS);
    }
    return NULL;
}

/* ---- shutdown, destroy, making one -------------------------------------- */

static void rq_shutdown(queue *q)
{
    rq *r = R(q);
    pthread_mutex_lock(&r->mu);
    int first = !r->shut;
    r->shut = 1;
    r->stop = 1;
    pthread_mutex_unlock(&r->mu);
    pthread_cond_broadcast(&r->cv);
    if (first)
        pthread_join(r->thr, NULL);
    queue_shutdown(r->mem);
    /* Nobody reads the notices any more: the watches end without. */
    pthread_mutex_lock(&r->mu);
    rwatch *ws = watch_take_locked(r, 0, 1);
    pthread_mutex_unlock(&r->mu);
    watch_fire(ws, NULL);
}

static void rq_destroy(queue *q)
{
    rq *r = R(q);
    pthread_mutex_lock(&r->mu);
    int joined = r->shut;
    r->stop = 1;
    pthread_mutex_unlock(&r->mu);
    if (!joined) {
        pthread_cond_broadcast(&r->cv);
        pthread_join(r->thr, NULL);
    }
    for (size_t i = 0; i < NBUCKET; i++) {
        while (r->hb[i]) {
            held *x = r->hb[i];
            r->hb[i] = x->next;
            held_free(x);
        }
        while (r->sb[i]) {
            sent *s = r->sb[i];
            r->sb[i] = s->next;
            free(s);
        }
    }
    watch_fire(watch_take_locked(r, 0, 1), NULL); /* not shut down first */
    queue_destroy(r->mem);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static const queue_ops rq_ops = {
    .name = "redis",
    .enqueue = rq_enqueue,
    .take = rq_take,
    .try_take = rq_try_take,
    .ack = rq_ack,
    .nack = rq_nack,
    .depth = rq_depth,
    .wakeups = rq_wakeups,
    .shutdown = rq_shutdown,
    .destroy = rq_destroy,
};

queue *queue_redis_new(broker *b, const queue_redis_config *cfg, const queue_redis_hooks *h)
{
    rq *r = xcalloc(1, sizeof *r);
    r->base.ops = &rq_ops;
    r->b = b;
    r->h = *h;
    r->consume = cfg->consume;
    r->mem = queue_mem_new(cfg->sched, 0, cfg->linger_us);
    pthread_mutex_init(&r->mu, NULL);
    util_cond_init_mono(&r->cv);
    r->have_cursor = broker_done_cursor(b, r->cursor, sizeof r->cursor) == 0;
    r->next_sweep_us = util_now_us() + SWEEP_US;
    if (pthread_create(&r->thr, NULL, bg_main, r) != 0) {
        queue_destroy(r->mem);
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        free(r);
        return NULL;
    }
    return &r->base;
}
