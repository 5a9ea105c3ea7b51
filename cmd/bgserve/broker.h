/*
 * broker.h - the Redis Streams broker: the Redis side of running one
 * plugin's named tasks on worker processes anywhere (hiredis).
 *
 * Everything an app keeps in Redis lives under one key prefix,
 * "bgserve:{NAME}" where NAME is the plugin's name unless overridden, so
 * two apps can share a Redis:
 *   PREFIX:tasks        the stream of jobs; one consumer group ("workers"
 *                       unless overridden) shares it among the workers;
 *                       an entry is deleted once acknowledged, so its
 *                       length is what is queued or running
 *   PREFIX:delayed      retries waiting for their time (a sorted set,
 *                       score = due time in Redis's clock, ms)
 *   PREFIX:dead         the dead-letter stream: jobs out of attempts (or
 *                       unreadable), with the last error
 *   PREFIX:task:ID      the record of task ID (a hash: state, attempts,
 *                       times, error, result); expires record_ttl_s after
 *                       the task is final
 *   PREFIX:ids          the task id counter (ids unique across processes)
 *   PREFIX:seq:ID       the steps still to come of a sequence whose step
 *                       ID is queued or running, in order (a list of
 *                       packed entries; broker_enqueue_seq)
 *   PREFIX:conc:NAME    leases of running tasks of NAME (max_concurrency
 *                       across workers)
 *   PREFIX:periodic:K   the lease of periodic schedule K (once per
 *                       interval across processes)
 *   PREFIX:done         notices of final states (id, state), so that the
 *                       process that enqueued a task learns it is done
 *                       (capped at about 100000 entries)
 *   PREFIX:meta         which app owns the prefix
 *
 * Threads: a broker may be used from any thread.  It keeps two
 * connections: one for commands (broker_enqueue, records, acks; one round
 * trip at a time under a mutex) and one for broker_read, which blocks in
 * XREADGROUP and is meant for one reader thread.  A lost connection is
 * re-made with backoff (100 ms doubling to 5 s); while Redis is
 * unreachable, calls fail at once with BROKER_EDOWN rather than waiting,
 * and the log says when it went, each retry that fails (at most one line
 * per backoff step) and when it came back.  A password is never logged.
 */
#ifndef BGSERVE_BROKER_H
#define BGSERVE_BROKER_H

#include <stddef.h>
#include <stdint.h>

/* Result codes (0 or negative). */
#define BROKER_ERRNO_MAP(X)                                                    \
    X(EINVAL, -1, "invalid broker URL or argument")                            \
    X(EDOWN, -2, "redis is unreachable")                                       \
    X(EAUTH, -3, "redis refused the credentials")                              \
    X(EFULL, -4, "the broker is over its capacity")                            \
    X(EPROTO, -5, "redis answered something unexpected")                       \
    X(ETLS, -6, "rediss:// (TLS) is not supported by this build's hiredis")    \
    X(EFOREIGN, -7, "the keys belong to another app")                          \
    X(ENOTFOUND, -8, "no such task record")

#define BROKER__ENUM(name, val, text) BROKER_##name = (val),
enum { BROKER_ERRNO_MAP(BROKER__ENUM) };
#undef BROKER__ENUM

/* Text of a result code; never NULL. */
const char *broker_strerror(int rc);

/* ---- URLs ---------------------------------------------------------------- */

#define BROKER_DEFAULT_PORT 6379

/* redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]; HOST may be [IPv6]; USER
 * and PASSWORD may be %-encoded. */
typedef struct broker_url {
    char host[256];
    unsigned port;
    unsigned db;
    char *user;      /* NULL: none (AUTH with the password alone) */
    char *password;  /* NULL: none; wiped and freed by broker_url_clear */
} broker_url;

/* Parse url into *out.  0, BROKER_EINVAL or BROKER_ETLS with a message
 * in err (never containing the password).  On error *out holds nothing
 * to free. */
int broker_url_parse(const char *url, broker_url *out, char *err, size_t cap);
/* Wipe and free the credentials; *u may be parsed into again. */
void broker_url_clear(broker_url *u);
/* "redis://HOST:PORT/DB" with ":***@" where a password was: safe to log
 * and to show in stats.  Returns buf. */
char *broker_url_redacted(const broker_url *u, char *buf, size_t cap);

/* ---- opening --------------------------------------------------------- */

typedef struct broker broker;

#define BROKER_DEFAULT_CONNECT_MS 2000u
#define BROKER_DEFAULT_CMD_MS 5000u
#define BROKER_DEFAULT_VISIBILITY_MS 30000u
#define BROKER_DEFAULT_RECORD_TTL_S 86400u

typedef struct broker_config {
    const char *url;
    const char *app;            /* the plugin's name (required): written in
                                 * every entry and in PREFIX:meta */
    const char *name;           /* NULL: app; the NAME in "bgserve:{NAME}" */
    const char *group;          /* NULL: "workers" */
    const char *consumer;       /* NULL: "HOSTNAME:PID" */
    unsigned connect_ms;        /* 0: BROKER_DEFAULT_CONNECT_MS */
    unsigned cmd_ms;            /* 0: BROKER_DEFAULT_CMD_MS */
    unsigned visibility_ms;     /* a running entry not touched for this long
                                 * is claimed by another worker;
                                 * 0: BROKER_DEFAULT_VISIBILITY_MS */
    unsigned record_ttl_s;      /* 0: BROKER_DEFAULT_RECORD_TTL_S */
    unsigned capacity;          /* queued + running + delayed at most;
                                 * 0: no bound */
} broker_config;

/*
 * Parse the URL, connect (AUTH, SELECT), claim or check PREFIX:meta and
 * make the stream and the group.  0 with *out set, or an error with a
 * message in err that says what to do: BROKER_EINVAL, BROKER_ETLS,
 * BROKER_EDOWN (not reachable within connect_ms), BROKER_EAUTH (wrong or
 * missing password), BROKER_EFOREIGN (the prefix belongs to another app).
 */
int broker_open(const broker_config *cfg, broker **out, char *err, size_t cap);
/* Close both connections and free b. */
void broker_close(broker *b);

/* 0 while the command connection is known to be down (lost, and not
 * re-made yet): callers answer 503 at once.  While down it tries to
 * reconnect when the backoff allows, so it also brings the broker back. */
int broker_available(broker *b);

/* The URL without password, the key prefix, the group, the consumer. */
const char *broker_url_shown(const broker *b);
const char *broker_prefix(const broker *b);
const char *broker_consumer(const broker *b);
unsigned broker_visibility_ms(const broker *b);
/* broker_config.capacity (0: no bound). */
unsigned broker_capacity(const broker *b);

/* ---- ids and enqueueing ------------------------------------------------ */

/* Reserve n consecutive task ids (unique across every process on this
 * Redis and prefix): the first in *first.  0 or BROKER_EDOWN/EPROTO. */
int broker_next_ids(broker *b, unsigned n, uint64_t *first);

typedef struct broker_job {
    uint64_t id;
    const char *name;
    const char *request_id;     /* NULL: none */
    uint32_t max_attempts;
    const void *payload;        /* may be NULL when len is 0 */
    size_t len;
} broker_job;

/*
 * Add the n jobs to the stream and write their records (state "queued"),
 * all or none, in one round trip.  0 once Redis has them; BROKER_EFULL
 * when they would take the broker past its capacity; BROKER_EDOWN when
 * Redis is unreachable (nothing was added, or, when the connection broke
 * mid-call, possibly all: at-least-once).
 */
int broker_enqueue(broker *b, const broker_job *jobs, size_t n);
/* broker_enqueue; seq nonzero: jobs[] are the steps of a sequence, in
 * order: the first goes to the stream, the others are kept with it
 * (PREFIX:seq:ID) and each goes to the stream in the same script that
 * finishes the step before (broker_finish "succeeded"); a step that ends
 * otherwise (or broker_dead) writes the others' records and notices as
 * "skipped" instead.  BROKER_EPROTO when Redis answered an error of its
 * own (out of memory, an ACL, a read-only replica...): its text goes to
 * answer (cap bytes; may be NULL), which is left "" otherwise. */
int broker_enqueue_seq(broker *b, const broker_job *jobs, size_t n, int seq, char *answer,
                       size_t cap);

/* ---- reading and finishing (workers) ----------------------------------- */

#define BROKER_ENTRY_MAX 48

typedef struct broker_msg {
    char entry[BROKER_ENTRY_MAX]; /* the stream entry id */
    uint64_t id;
    char *name;
    char *request_id;           /* NULL: none */
    uint32_t attempt;           /* runs before this delivery; broker_start
                                 * sets the number of this one */
    uint32_t max_attempts;
    void *payload;              /* NUL-terminated copy (not counted in len) */
    size_t len;
    uint64_t created_ms;        /* Redis's clock when first enqueued */
    int reclaimed;              /* came from a worker that stopped touching it */
} broker_msg;

/*
 * Move due retries back to the stream, claim entries idle past the
 * visibility timeout (at most every visibility_ms / 4), then read up to
 * max new entries, blocking up to block_ms when there are none.  *out is
 * a malloc'd array of *n messages (free with broker_msgs_free), or NULL
 * with *n 0.  Entries of another app or unreadable ones are moved to the
 * dead-letter stream with the reason and logged, never returned.
 * 0, BROKER_EDOWN (after the connection failed; wait and call again).
 */
int broker_read(broker *b, unsigned max, unsigned block_ms, broker_msg **out, size_t *n);
void broker_msgs_free(broker_msg *msgs, size_t n);
/* Free what one message holds (not m itself). */
void broker_msg_clear(broker_msg *m);

/* A run of m starts: count the attempt in its record (state "running",
 * started, worker) and set m->attempt to it. */
int broker_start(broker *b, broker_msg *m);

/* Reset the idle time of the n entries (ids of messages still running
 * here), so that no other worker claims them.  Call more often than
 * visibility_ms. */
int broker_touch(broker *b, const char *const *entries, size_t n);

typedef struct broker_outcome {
    const char *state;          /* "succeeded", "failed", "cancelled", ... */
    const char *error;          /* NULL: none */
    int has_result;
    uint32_t result_status;
    const char *result_type;    /* NULL: none */
    const void *result;
    size_t result_len;
} broker_outcome;

/* m reached a final state: acknowledge and delete its entry, write the
 * record (expiring after record_ttl_s) and a notice in PREFIX:done, in
 * one transaction.  The record's attempts become m->attempt when they
 * are fewer (runs retried in the worker while Redis was away); the same
 * holds for broker_retry and broker_dead. */
int broker_finish(broker *b, const broker_msg *m, const broker_outcome *o);

/* A run of m failed and it runs again in delay_ms: acknowledge it and put
 * it in the delayed set (state "retrying", error kept). */
int broker_retry(broker *b, const broker_msg *m, unsigned delay_ms, const char *error);

/* m was not run (its name is at its max_concurrency): put it back in
 * delay_ms without counting an attempt (state "queued"). */
int broker_defer(broker *b, const broker_msg *m, unsigned delay_ms);

/* m's run (started with broker_start) was interrupted by its worker's
 * stop: acknowledge it and put it in the delayed set, due at once, for
 * another worker, with its attempts as before this run (state "queued",
 * error kept): the interrupted run does not count against max_attempts. */
int broker_hand_back(broker *b, const broker_msg *m, const char *error);

/* m's run failed while Redis was away, so its worker kept it to retry it
 * itself, and stopped before that retry (m->attempt numbers the run it
 * waited for): acknowledge it and put it in the delayed set due in
 * delay_ms, the rest of its backoff, as broker_retry would have (state
 * "retrying", error), with the runs made so far (m->attempt - 1). */
int broker_hand_back_retry(broker *b, const broker_msg *m, unsigned delay_ms, const char *error);

/* m is out of attempts (or cannot run): acknowledge it, add it to the
 * dead-letter stream with error, record state "failed" (and a notice). */
int broker_dead(broker *b, const broker_msg *m, const char *error);

/* ---- final-state notices ---------------------------------------------- */

/* The id of the newest notice in PREFIX:done ("0-0" when none) into
 * cursor: where a process that starts listening begins. */
int broker_done_cursor(broker *b, char *cursor, size_t cap);
/* The ids of the tasks that reached a final state after cursor (which
 * moves on), waiting up to block_ms when none did (0: no wait); *ids is
 * malloc'd (NULL when *n is 0).  Uses the reader's connection. */
int broker_done_read(broker *b, char *cursor, size_t cursor_cap, unsigned block_ms,
                     uint64_t **ids, size_t *n);

/* ---- leases ------------------------------------------------------------ */

/* Take (or renew) a slot of task name for token, limited to max holders
 * across every process; a slot lapses lease_ms after its last take.
 * 1: held; 0: all max slots are taken; or an error. */
int broker_conc_take(broker *b, const char *name, unsigned max, const char *token,
                     unsigned lease_ms);
int broker_conc_release(broker *b, const char *name, const char *token);

/* Take the lease of periodic schedule key for ttl_ms if nobody holds it:
 * 1 taken (run the tick), 0 another process holds it; or an error. */
int broker_lease(broker *b, const char *key, unsigned ttl_ms);

/* ---- records and stats ------------------------------------------------- */

typedef struct broker_record {
    uint64_t id;
    char *name;
    char *request_id;           /* NULL: none */
    char *state;
    uint32_t attempts, max_attempts;
    uint64_t created_ms, started_ms, finished_ms; /* 0: not yet */
    char *error;                /* NULL: none */
    char *worker;               /* the consumer that ran it last; NULL */
    int has_result;
    uint32_t result_status;
    char *result_type;          /* NULL: none */
    char *result;               /* NUL-terminated copy */
    size_t result_len;
} broker_record;

/* The record of task id.  0, BROKER_ENOTFOUND (unknown or expired),
 * BROKER_EDOWN.  Free with broker_record_clear. */
int broker_record_get(broker *b, uint64_t id, broker_record *r);
void broker_record_clear(broker_record *r);

typedef struct broker_stats {
    int up;                     /* the command connection is up */
    uint64_t stream_len;        /* queued + running */
    uint64_t pending;           /* delivered, not acknowledged */
    uint64_t consumers;
    uint64_t delayed;
    uint64_t dead;
    uint64_t reconnects;        /* connections re-made since open */
} broker_stats;

/* Read the numbers (one round trip).  0 or BROKER_EDOWN (s->up is 0 and
 * the counts are 0 then). */
int broker_stats_get(broker *b, broker_stats *s);

#endif
