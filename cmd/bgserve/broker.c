/*
 * broker.c - the Redis Streams broker (broker.h): URL parsing, the two
 * connections and their reconnects, and the Redis commands and Lua
 * scripts behind enqueue, read, finish, retry, dead-letter and leases.
 *
 * Every change that touches more than one key runs as one Lua script
 * (atomic, one round trip): enqueue checks the capacity and adds the
 * entries and records; retry, defer, finish and dead acknowledge and
 * delete the entry together with what follows (the delayed set, the
 * record, the dead-letter stream) and, for a step of a sequence, with
 * moving the next step to the stream or skipping the rest
 * (LUA_SEQ_NEXT).  The scripts read Redis's own clock
 * (TIME), so machines with skewed clocks agree on when a retry is due.
 * A delayed retry is the entry's field list packed with cmsgpack, moved
 * back to the stream by whichever reader finds it due.  Scripts are
 * loaded at open and called by SHA; after a Redis restart (empty script
 * cache) the NOSCRIPT answer makes the call send the body once.
 *
 * State and locks: everything set by broker_open is immutable after it.
 * `cmd` (the command connection, with its reconnect state) belongs to
 * whoever holds cmd_mu; `rd` (the reader's connection) and the claim
 * cursor to whoever holds read_mu.  The connection counter is atomic.
 * Neither lock is held while the other is taken.
 */
#include "broker.h"

#include "log.h"
#include "util.h"

#include "bgserve.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#define BACKOFF_FIRST_MS 100u
#define BACKOFF_MAX_MS 5000u
#define PROMOTE_BATCH 256
#define CLAIM_BATCH 64
#define DEFAULT_GROUP "workers"
#define DONE_MAXLEN "100000" /* final-state notices kept in PREFIX:done */

/* ------------------------------------------------------------------ */
/* Result codes                                                        */
/* ------------------------------------------------------------------ */

const char *broker_strerror(int rc)
{
    switch (rc) {
    case 0:
        return "success";
#define BROKER__TEXT(name, val, text) \
    case (val):                       \
        return text;
        BROKER_ERRNO_MAP(BROKER__TEXT)
#undef BROKER__TEXT
    default:
        return "unknown broker error";
    }
}

/* ------------------------------------------------------------------ */
/* URLs                                                                */
/* ------------------------------------------------------------------ */

/* s[0..n) %-decoded into a new string, or NULL when a %XX is malformed. */
static char *pct_decode(const char *s, size_t n)
{
    char *out = xmalloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[o++] = s[i];
            continue;
        }
        int hi = i + 2 < n ? util_hexval((unsigned char)s[i + 1]) : -1;
        int lo = i + 2 < n ? util_hexval((unsigned char)s[i + 2]) : -1;
        if (hi >= 0 && lo >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
            continue;
        }
        explicit_bzero(out, n + 1);
        free(out);
        return NULL;
    }
    out[o] = '\0';
    return out;
}

/* An unsigned decimal of s[0..n) no larger than max into *v; 0 or -1. */
static int parse_uint(const char *s, size_t n, unsigned long max, unsigned *v)
{
    if (n == 0 || n > 10)
        return -1;
    unsigned long x = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        x = x * 10 + (unsigned long)(s[i] - '0');
    }
    if (x > max)
        return -1;
    *v = (unsigned)x;
    return 0;
}

void broker_url_clear(broker_url *u)
{
    if (u->password) {
        explicit_bzero(u->password, strlen(u->password));
        free(u->password);
    }
    free(u->user);
    memset(u, 0, sizeof *u);
}

int broker_url_parse(const char *url, broker_url *out, char *err, size_t cap)
{
    memset(out, 0, sizeof *out);
    static const char usage[] = "expected redis://[:PASSWORD@]HOST[:PORT][/DB]";
    if (!url || !*url) {
        snprintf(err, cap, "empty broker URL: %s", usage);
        return BROKER_EINVAL;
    }
    const char *p;
    if (strncmp(url, "rediss://", 9) == 0) {
        snprintf(err, cap,
                 "rediss:// (TLS) needs hiredis with TLS support (1.0 or later, "
                 "hiredis_ssl); this bgserve is built with hiredis %d.%d, which has "
                 "none: use redis:// on a trusted network, or a TLS tunnel "
                 "(stunnel, ssh -L) to reach the server",
                 HIREDIS_MAJOR, HIREDIS_MINOR);
        return BROKER_ETLS;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        /* Show only the scheme: the rest may hold a password. */
        const char *colon = strstr(url, "://");
        snprintf(err, cap, "broker URL with scheme '%.*s': %s",
                 colon ? (int)(colon - url) : 0, url, usage);
        return BROKER_EINVAL;
    }
    p = url + 8;
    const char *end = p + strcspn(p, "/?#");
    /* Credentials: everything up to the last '@' before the path. */
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon) {
            snprintf(err, cap, "broker URL: credentials without ':' (a password "
                               "goes after a colon: redis://:PASSWORD@HOST)");
            return BROKER_EINVAL;
        }
        if (colon > p) {
            out->user = pct_decode(p, (size_t)(colon - p));
            if (!out->user)
                goto bad_pct;
        }
        out->password = pct_decode(colon + 1, (size_t)(at - colon - 1));
        if (!out->password)
            goto bad_pct;
        p = at + 1;
    }
    /* Host and port. */
    const char *hend;
    const char *portp = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb) {
            snprintf(err, cap, "broker URL: '[' without ']' around an IPv6 host");
            goto fail;
        }
        if ((size_t)(rb - p - 1) >= sizeof out->host || rb == p + 1) {
            snprintf(err, cap, "broker URL: bad IPv6 host");
            goto fail;
        }
        memcpy(out->host, p + 1, (size_t)(rb - p - 1));
        hend = rb + 1;
        if (hend < end && *hend != ':') {
            snprintf(err, cap, "broker URL: junk after the IPv6 host");
            goto fail;
        }
        if (hend < end)
            portp = hend + 1;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        hend = colon ? colon : end;
        if (hend == p) {
            snprintf(err, cap, "broker URL without a host: %s", usage);
            goto fail;
        }
        if ((size_t)(hend - p) >= sizeof out->host) {
            snprintf(err, cap, "broker URL: host name too long");
            goto fail;
        }
        memcpy(out->host, p, (size_t)(hend - p));
        if (colon)
            portp = colon + 1;
    }
    out->port = BROKER_DEFAULT_PORT;
    if (portp && (parse_uint(portp, (size_t)(end - portp), 65535, &out->port) < 0 ||
                  out->port == 0)) {
        snprintf(err, cap, "broker URL: bad port '%.*s' (1-65535)", (int)(end - portp), portp);
        goto fail;
    }
    if (*end == '/' && end[1]) {
        const char *d = end + 1;
        if (parse_uint(d, strlen(d), 1000000, &out->db) < 0) {
            snprintf(err, cap, "broker URL: bad database number '%s' (a number: /0, /1, ...)",
                     d);
            goto fail;
        }
    } else if (*end && !(*end == '/' && !end[1])) {
        snprintf(err, cap, "broker URL: query or fragment not supported: %s", usage);
        goto fail;
    }
    return 0;
bad_pct:
    snprintf(err, cap, "broker URL: a bad %%XX escape in the credentials");
fail:
    broker_url_clear(out);
    return BROKER_EINVAL;
}

char *broker_url_redacted(const broker_url *u, char *buf, size_t cap)
{
    int v6 = strchr(u->host, ':') != NULL;
    snprintf(buf, cap, "redis://%s%s%s%s%s%s:%u/%u", u->user ? u->user : "",
             u->password ? ":***" : "", (u->user || u->password) ? "@" : "",
             v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, u->db);
    return buf;
}

/* ------------------------------------------------------------------ */
/* Lua scripts                                                         */
/* ------------------------------------------------------------------ */

#define LUA_NOW "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

/* The record (hash key k) counts at least `at` runs (a number or its
 * string): a run retried in a worker while Redis was away was not
 * counted by START, so the script that ends or requeues the job writes
 * it. */
#define LUA_RUNS                                                                            \
    "local function runs_at_least(k, at)\n"                                                 \
    "  at = tonumber(at)\n"                                                                 \
    "  if at and at > tonumber(redis.call('HGET', k, 'attempts') or '0') then\n"           \
    "    redis.call('HSET', k, 'attempts', at)\n"                                           \
    "  end\n"                                                                               \
    "end\n"

enum { S_ENQUEUE, S_PROMOTE, S_START, S_REQUEUE, S_FINISH, S_DEAD, S_CONC, S_COUNT };

/*
 * The step after task `id` of a sequence (PREFIX:seq:ID, written by
 * ENQUEUE), once task id is final with `state`: "succeeded" moves the
 * next step to the stream (the rest of the list then waits under the
 * next step's id); any other state skips every step left, with their
 * records and notices, as the in-process skip rule does
 * (tasks_runs.c, chain_stop: the same error text).  A task of no
 * sequence has no list: nothing to do.
 */
#define LUA_SEQ_NEXT                                                                        \
    "local function seq_next(prefix, id, state, stream, done, ttl)\n"                       \
    "  local k = prefix .. ':seq:' .. id\n"                                                 \
    "  if redis.call('EXISTS', k) == 0 then return end\n"                                   \
    "  local function id_of(f)\n"                                                           \
    "    for i = 1, #f, 2 do if f[i] == 'id' then return f[i + 1] end end\n"               \
    "  end\n"                                                                               \
    "  if state == 'succeeded' then\n"                                                      \
    "    local f = cmsgpack.unpack(redis.call('LPOP', k))\n"                                \
    "    redis.call('XADD', stream, '*', unpack(f))\n"                                      \
    "    if redis.call('EXISTS', k) == 1 then\n"                                            \
    "      redis.call('RENAME', k, prefix .. ':seq:' .. id_of(f))\n"                        \
    "    end\n"                                                                             \
    "    return\n"                                                                          \
    "  end\n"                                                                               \
    "  local name = redis.call('HGET', prefix .. ':task:' .. id, 'name') or '?'\n"          \
    "  local why = 'previous task ' .. id .. ' (' .. name .. ') ' .. state\n"               \
    "  for _, m in ipairs(redis.call('LRANGE', k, 0, -1)) do\n"                             \
    "    local sid = id_of(cmsgpack.unpack(m))\n"                                           \
    "    local rk = prefix .. ':task:' .. sid\n"                                            \
    "    redis.call('HSET', rk, 'state', 'skipped', 'error', why, 'finished', now)\n"       \
    "    redis.call('EXPIRE', rk, ttl)\n"                                                   \
    "    redis.call('XADD', done, 'MAXLEN', '~', " DONE_MAXLEN ", '*', 'id', sid,\n"        \
    "               'state', 'skipped')\n"                                                  \
    "  end\n"                                                                               \
    "  redis.call('DEL', k)\n"                                                              \
    "end\n"

static const char *const script_text[S_COUNT] = {
    /* ENQUEUE  KEYS: stream delayed
     * ARGV: cap n app prefix seq, then id name rid max payload per job.
     * seq "1": a sequence; the first job goes to the stream, the others,
     * in order, to the list PREFIX:seq:ID (ID: the first's), from which
     * FINISH and DEAD move them on (LUA_SEQ_NEXT). */
    [S_ENQUEUE] = LUA_NOW
    "local cap, n = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "if cap > 0 and redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + n > cap then\n"
    "  return redis.error_reply('FULL the broker holds its capacity of ' .. cap .. ' tasks')\n"
    "end\n"
    "local rest = ARGV[4] .. ':seq:' .. ARGV[6]\n"
    "for i = 0, n - 1 do\n"
    "  local o = 5 + i * 5\n"
    "  local id, name, rid, max = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 4]\n"
    "  local f = {'app', ARGV[3], 'id', id, 'name', name, 'attempt', '0',\n"
    "             'max', max, 'rid', rid, 'created', now, 'payload', ARGV[o + 5]}\n"
    "  if i > 0 and ARGV[5] == '1' then\n"
    "    redis.call('RPUSH', rest, cmsgpack.pack(f))\n"
    "  else\n"
    "    redis.call('XADD', KEYS[1], '*', unpack(f))\n"
    "  end\n"
    "  redis.call('HSET', ARGV[4] .. ':task:' .. id, 'name', name, 'rid', rid, 'state', 'queued',\n"
    "             'attempts', 0, 'max', max, 'created', now)\n"
    "end\n"
    "return n\n",
    /* PROMOTE  KEYS: delayed stream  ARGV: limit */
    [S_PROMOTE] = LUA_NOW
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))\n"
    "for _, m in ipairs(due) do\n"
    "  redis.call('XADD', KEYS[2], '*', unpack(cmsgpack.unpack(m)))\n"
    "  redis.call('ZREM', KEYS[1], m)\n"
    "end\n"
    "return #due\n",
    /* START  KEYS: record  ARGV: worker attempts-if-no-record name max */
    [S_START] = LUA_NOW
    "if redis.call('EXISTS', KEYS[1]) == 0 then\n"
    "  redis.call('HSET', KEYS[1], 'attempts', ARGV[2], 'name', ARGV[3], 'max', ARGV[4],\n"
    "             'created', now)\n"
    "end\n"
    "local a = redis.call('HINCRBY', KEYS[1], 'attempts', 1)\n"
    "redis.call('HSET', KEYS[1], 'state', 'running', 'started', now, 'worker', ARGV[1])\n"
    "return a\n",
    /* REQUEUE  KEYS: stream delayed record
     * ARGV: group entry delay_ms state error attempt [uncount]
     * uncount "1": the record's attempts become `attempt` too (a run
     * handed back by a stopping worker does not count); otherwise they
     * become `attempt` when they are fewer (as for FINISH) */
    [S_REQUEUE] = LUA_NOW LUA_RUNS
    "local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])\n"
    "local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('XDEL', KEYS[1], ARGV[2])\n"
    "if #e == 0 then return 0 end\n"
    "local f = e[1][2]\n"
    "for i = 1, #f, 2 do if f[i] == 'attempt' then f[i + 1] = ARGV[6] end end\n"
    "redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), cmsgpack.pack(f))\n"
    "redis.call('HSET', KEYS[3], 'state', ARGV[4])\n"
    "if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], 'error', ARGV[5]) end\n"
    "if ARGV[7] == '1' then redis.call('HSET', KEYS[3], 'attempts', ARGV[6])\n"
    "else runs_at_least(KEYS[3], ARGV[6]) end\n"
    "return acked\n",
    /* FINISH  KEYS: stream record done
     * ARGV: group entry ttl state error has_result status type result id
     * prefix attempt
     * attempt: the runs so far; the record's attempts become it when they
     * are fewer (a retry run locally while Redis was away was not counted) */
    [S_FINISH] = LUA_NOW LUA_SEQ_NEXT LUA_RUNS
    "local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('XDEL', KEYS[1], ARGV[2])\n"
    "redis.call('HSET', KEYS[2], 'state', ARGV[4], 'finished', now)\n"
    "runs_at_least(KEYS[2], ARGV[12])\n"
    "if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'error', ARGV[5]) end\n"
    "if ARGV[6] == '1' then\n"
    "  redis.call('HSET', KEYS[2], 'res_status', ARGV[7], 'res_type', ARGV[8], 'res', ARGV[9])\n"
    "end\n"
    "redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))\n"
    "redis.call('XADD', KEYS[3], 'MAXLEN', '~', " DONE_MAXLEN ", '*', 'id', ARGV[10], 'state', ARGV[4])\n"
    "seq_next(ARGV[11], ARGV[10], ARGV[4], KEYS[1], KEYS[3], tonumber(ARGV[3]))\n"
    "return acked\n",
    /* DEAD  KEYS: stream dead record done
     * ARGV: group entry error ttl worker write_record id prefix attempt
     * attempt: as for FINISH */
    [S_DEAD] = LUA_NOW LUA_SEQ_NEXT LUA_RUNS
    "local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])\n"
    "local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('XDEL', KEYS[1], ARGV[2])\n"
    "local f = {}\n"
    "if #e > 0 then f = e[1][2] end\n"
    "for _, v in ipairs({'error', ARGV[3], 'entry', ARGV[2], 'worker', ARGV[5], 'dead_at', now}) do\n"
    "  table.insert(f, v)\n"
    "end\n"
    "redis.call('XADD', KEYS[2], '*', unpack(f))\n"
    "if ARGV[6] == '1' then\n"
    "  redis.call('HSET', KEYS[3], 'state', 'failed', 'error', ARGV[3], 'finished', now)\n"
    "  runs_at_least(KEYS[3], ARGV[9])\n"
    "  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))\n"
    "  redis.call('XADD', KEYS[4], 'MAXLEN', '~', " DONE_MAXLEN ", '*', 'id', ARGV[7], 'state', 'failed')\n"
    "  seq_next(ARGV[8], ARGV[7], 'failed', KEYS[1], KEYS[4], tonumber(ARGV[4]))\n"
    "end\n"
    "return acked\n",
    /* CONC  KEYS: leases  ARGV: max token lease_ms */
    [S_CONC] = LUA_NOW
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "local ms = tonumber(ARGV[3])\n"
    "if not redis.call('ZSCORE', KEYS[1], ARGV[2]) and\n"
    "   redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end\n"
    "redis.call('ZADD', KEYS[1], now + ms, ARGV[2])\n"
    "redis.call('PEXPIRE', KEYS[1], ms * 2)\n"
    "return 1\n",
};

/* ------------------------------------------------------------------ */
/* Types                                                               */
/* ------------------------------------------------------------------ */

/* One connection and its reconnect state; owned by whoever holds the
 * mutex that guards it (broker.cmd_mu or broker.read_mu). */
typedef struct conn {
    redisContext *c;            /* NULL while down */
    const char *role;           /* "command" or "reader" (log lines) */
    unsigned backoff_ms;        /* 0 while up */
    uint64_t next_try_us;       /* no reconnect before (util_now_us) */
    uint64_t down_since_us;     /* 0 while up */
} conn;

struct broker {
    /* Immutable after broker_open. */
    broker_url url;
    char shown[320];
    char *app, *prefix, *group, *consumer;
    char *k_stream, *k_delayed, *k_dead, *k_ids, *k_meta, *k_done;
    unsigned connect_ms, cmd_ms, visibility_ms, record_ttl_s, capacity;
    char sha[S_COUNT][41];

    pthread_mutex_t cmd_mu;
    conn cmd;                   /* cmd_mu */

    pthread_mutex_t read_mu;
    conn rd;                    /* read_mu */
    uint64_t next_claim_us;     /* read_mu */
    char claim_cursor[BROKER_ENTRY_MAX]; /* read_mu */

    atomic_ullong reconnects;
    atomic_int cmd_up;          /* cmd.c is connected (broker_available) */
};

/* A command's arguments: pointers and lengths, with the strings it made
 * (numbers, keys) owned here until args_free. */
typedef struct args {
    size_t n, cap;
    const char **v;
    size_t *len;
    char **owned;
    size_t nowned, owned_cap;
} args;

static void args_add(args *a, const void *p, size_t len)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 16;
        a->v = xrealloc(a->v, a->cap * sizeof *a->v);
        a->len = xrealloc(a->len, a->cap * sizeof *a->len);
    }
    a->v[a->n] = p ? p : "";
    a->len[a->n] = len;
    a->n++;
}

static void args_own(args *a, char *s)
{
    if (a->nowned == a->owned_cap) {
        a->owned_cap = a->owned_cap ? a->owned_cap * 2 : 8;
        a->owned = xrealloc(a->owned, a->owned_cap * sizeof *a->owned);
    }
    a->owned[a->nowned++] = s;
    args_add(a, s, strlen(s));
}

static void args_str(args *a, const char *s) { args_add(a, s, s ? strlen(s) : 0); }

static void args_u64(args *a, uint64_t x)
{
    char *s = xmalloc(UTIL_U64_DEC_MAX);
    util_u64_dec(s, x);
    args_own(a, s);
}

static void args_fmt(args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void args_fmt(args *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) {
        fprintf(stderr, "bgserve: out of memory\n");
        abort();
    }
    va_end(ap);
    args_own(a, s);
}

static void args_free(args *a)
{
    for (size_t i = 0; i < a->nowned; i++)
        free(a->owned[i]);
    free(a->owned);
    free(a->v);
    free(a->len);
    memset(a, 0, sizeof *a);
}

/* ------------------------------------------------------------------ */
/* Connections                                                         */
/* ------------------------------------------------------------------ */

static struct timeval tv_ms(unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* Send a (emptied afterwards) on c, a fresh context during connect.
 * -1: no answer (the connection failed; *r is NULL).  0: Redis answered
 * an error, left in *r for the caller's message.  1: any other answer,
 * in *r when keep is set, else freed (*r NULL). */
static int command_ok(redisContext *c, args *a, int keep, redisReply **r)
{
    *r = redisCommandArgv(c, (int)a->n, a->v, a->len);
    args_free(a);
    if (!*r)
        return -1;
    if ((*r)->type == REDIS_REPLY_ERROR)
        return 0;
    if (!keep) {
        freeReplyObject(*r);
        *r = NULL;
    }
    return 1;
}

/* Make a connection: connect, AUTH, SELECT, PING, load the scripts (the
 * first time).  0 with *out, or an error with a message in err. */
static int connect_one(broker *b, redisContext **out, int load_scripts, char *err, size_t cap)
{
    *out = NULL;
    redisContext *c = redisConnectWithTimeout(b->url.host, (int)b->url.port,
                                              tv_ms(b->connect_ms));
    if (!c || c->err) {
        snprintf(err, cap, "cannot reach redis at %s:%u (%s): is redis-server running "
                 "there, and the URL right?", b->url.host, b->url.port,
                 c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return BROKER_EDOWN;
    }
    redisSetTimeout(c, tv_ms(b->cmd_ms));
    redisEnableKeepAlive(c);
    int rc = 0, ok;
    redisReply *r = NULL;
    args a = {0};
    if (b->url.password) {
        args_str(&a, "AUTH");
        if (b->url.user)
            args_str(&a, b->url.user);
        args_str(&a, b->url.password);
        if ((ok = command_ok(c, &a, 0, &r)) < 0)
            goto io;
        if (!ok) {
            snprintf(err, cap, "redis at %s:%u refused the credentials in the broker URL "
                     "(%s): check the password", b->url.host, b->url.port, r->str);
            rc = BROKER_EAUTH;
            goto out;
        }
    }
    args_str(&a, "PING");
    if ((ok = command_ok(c, &a, 0, &r)) < 0)
        goto io;
    if (!ok) {
        if (strncmp(r->str, "NOAUTH", 6) == 0) {
            snprintf(err, cap, "redis at %s:%u needs a password: give it in the broker "
                     "URL, redis://:PASSWORD@%s:%u", b->url.host, b->url.port,
                     b->url.host, b->url.port);
            rc = BROKER_EAUTH;
        } else {
            snprintf(err, cap, "redis at %s:%u answered PING with: %s", b->url.host,
                     b->url.port, r->str);
            rc = BROKER_EPROTO;
        }
        goto out;
    }
    if (b->url.db) {
        args_str(&a, "SELECT");
        args_u64(&a, b->url.db);
        if ((ok = command_ok(c, &a, 0, &r)) < 0)
            goto io;
        if (!ok) {
            snprintf(err, cap, "redis at %s:%u has no database %u (%s): use a smaller "
                     "number after the '/' in the URL", b->url.host, b->url.port,
                     b->url.db, r->str);
            rc = BROKER_EINVAL;
            goto out;
        }
    }
    for (int i = 0; load_scripts && i < S_COUNT; i++) {
        args_str(&a, "SCRIPT");
        args_str(&a, "LOAD");
        args_str(&a, script_text[i]);
        if ((ok = command_ok(c, &a, 1, &r)) < 0)
            goto io;
        if (!ok || r->type != REDIS_REPLY_STRING || r->len != 40) {
            snprintf(err, cap, "redis at %s:%u did not load bgserve's Lua scripts (%s): "
                     "bgserve needs Redis 6.2 or later with scripting enabled",
                     b->url.host, b->url.port,
                     r->type == REDIS_REPLY_ERROR ? r->str : "unexpected answer");
            rc = BROKER_EPROTO;
            goto out;
        }
        memcpy(b->sha[i], r->str, 40);
        b->sha[i][40] = '\0';
        freeReplyObject(r);
        r = NULL;
    }
    *out = c;
    return 0;
io:
    snprintf(err, cap, "lost redis at %s:%u while connecting (%s)", b->url.host,
             b->url.port, c->errstr);
    rc = BROKER_EDOWN;
out:
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return rc;
}

/* The connection broke (or timed out): drop it and start the backoff. */
static void conn_lost(broker *b, conn *k)
{
    log_msg(BGS_LOG_WARN, "broker: lost the %s connection to redis at %s (%s); "
            "reconnecting with backoff (%u ms, doubling up to %u ms)",
            k->role, b->shown, k->c && k->c->errstr[0] ? k->c->errstr : "closed",
            BACKOFF_FIRST_MS, BACKOFF_MAX_MS);
    if (k->c)
        redisFree(k->c);
    k->c = NULL;
    if (k == &b->cmd)
        atomic_store(&b->cmd_up, 0);
    k->down_since_us = util_now_us();
    k->backoff_ms = BACKOFF_FIRST_MS;
    k->next_try_us = k->down_since_us; /* one try at once */
}

/* Make sure k is up: 0, or BROKER_EDOWN at once while in backoff. */
static int conn_ensure(broker *b, conn *k)
{
    if (k->c && !k->c->err)
        return 0;
    if (k->c)
        conn_lost(b, k);
    uint64_t now = util_now_us();
    if (now < k->next_try_us)
        return BROKER_EDOWN;
    char err[512];
    redisContext *c;
    int rc = connect_one(b, &c, 0, err, sizeof err);
    if (rc < 0) {
        log_msg(BGS_LOG_WARN, "broker: %s (next try in %u ms)", err, k->backoff_ms);
        k->next_try_us = util_now_us() + (uint64_t)k->backoff_ms * 1000u;
        k->backoff_ms = k->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : k->backoff_ms * 2;
        return BROKER_EDOWN;
    }
    uint64_t down_ms = (util_now_us() - k->down_since_us) / 1000u;
    log_msg(BGS_LOG_INFO, "broker: reconnected the %s connection to redis at %s after "
            "%" PRIu64 ".%01" PRIu64 " s", k->role, b->shown, down_ms / 1000,
            down_ms % 1000 / 100);
    k->c = c;
    if (k == &b->cmd)
        atomic_store(&b->cmd_up, 1);
    k->backoff_ms = 0;
    k->down_since_us = 0;
    atomic_fetch_add(&b->reconnects, 1);
    return 0;
}

/*
 * Run a command on k (its lock held): the reply, or NULL with *rc set
 * (BROKER_EDOWN: unreachable or broken, the connection is dropped).  An
 * error reply is returned as a reply, with *rc 0.  A connection that
 * broke while idle (Redis restarted) shows it only at its next command:
 * that command is sent once more on a new connection (at least once: a
 * command Redis ran before the break may run twice).
 */
static redisReply *conn_cmd(broker *b, conn *k, args *a, int *rc)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        *rc = conn_ensure(b, k);
        if (*rc < 0)
            return NULL;
        redisReply *r = redisCommandArgv(k->c, (int)a->n, a->v, a->len);
        if (r)
            return r;
        int timed_out = k->c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK);
        conn_lost(b, k);
        *rc = BROKER_EDOWN;
        if (timed_out) /* slow, not gone: do not pile on */
            return NULL;
    }
    return NULL;
}

/* Start a script call in a: EVALSHA SHA NKEYS. */
static void args_script(args *a, int which, unsigned nkeys, const char *sha)
{
    args_str(a, "EVALSHA");
    args_str(a, sha);
    args_u64(a, nkeys);
    (void)which;
}

/* Run script `which` (a started with args_script): EVALSHA, and EVAL with
 * the body when Redis lost its script cache. */
static redisReply *conn_script(broker *b, conn *k, int which, args *a, int *rc)
{
    redisReply *r = conn_cmd(b, k, a, rc);
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        freeReplyObject(r);
        a->v[0] = "EVAL";
        a->len[0] = 4;
        a->v[1] = script_text[which];
        a->len[1] = strlen(script_text[which]);
        r = conn_cmd(b, k, a, rc);
    }
    return r;
}

/* A reply that is not what was expected: log it, free it, BROKER_EPROTO. */
static int unexpected(redisReply *r, const char *what)
{
    log_msg(BGS_LOG_WARN, "broker: %s: redis answered %s", what,
            r && r->type == REDIS_REPLY_ERROR ? r->str : "something unexpected");
    if (r)
        freeReplyObject(r);
    return BROKER_EPROTO;
}

/* Run a command on the command connection (consumes a) and expect a
 * reply of type `type` (NIL is also accepted when nil_ok): the reply, or
 * NULL with *rc set. */
static redisReply *cmd_expect(broker *b, args *a, int type, int nil_ok, const char *what,
                              int *rc)
{
    pthread_mutex_lock(&b->cmd_mu);
    redisReply *r = conn_cmd(b, &b->cmd, a, rc);
    pthread_mutex_unlock(&b->cmd_mu);
    args_free(a);
    if (r && r->type != type && !(nil_ok && r->type == REDIS_REPLY_NIL)) {
        *rc = unexpected(r, what);
        r = NULL;
    }
    return r;
}

/* Run a script on the command connection and expect an integer. */
static int cmd_script_int(broker *b, int which, args *a, const char *what, long long *out)
{
    int rc;
    pthread_mutex_lock(&b->cmd_mu);
    redisReply *r = conn_script(b, &b->cmd, which, a, &rc);
    pthread_mutex_unlock(&b->cmd_mu);
    args_free(a);
    if (!r)
        return rc;
    if (r->type != REDIS_REPLY_INTEGER)
        return unexpected(r, what);
    if (out)
        *out = r->integer;
    freeReplyObject(r);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Opening                                                             */
/* ------------------------------------------------------------------ */

static char *key(const broker *b, const char *suffix)
{
    char *s;
    if (asprintf(&s, "%s:%s", b->prefix, suffix) < 0) {
        fprintf(stderr, "bgserve: out of memory\n");
        abort();
    }
    return s;
}

/* The prefix's owner: claim it for b->app, or refuse when another app
 * has it.  Then make the stream and the group. */
static int claim_keys(broker *b, char *err, size_t cap)
{
    args a = {0};
    int rc;
    args_str(&a, "HSETNX");
    args_str(&a, b->k_meta);
    args_str(&a, "app");
    args_str(&a, b->app);
    redisReply *r = conn_cmd(b, &b->cmd, &a, &rc);
    args_free(&a);
    if (!r)
        goto down;
    freeReplyObject(r);
    args_str(&a, "HGET");
    args_str(&a, b->k_meta);
    args_str(&a, "app");
    r = conn_cmd(b, &b->cmd, &a, &rc);
    args_free(&a);
    if (!r)
        goto down;
    if (r->type != REDIS_REPLY_STRING) {
        snprintf(err, cap, "redis at %s: cannot read %s", b->shown, b->k_meta);
        freeReplyObject(r);
        return BROKER_EPROTO;
    }
    if (strcmp(r->str, b->app) != 0) {
        snprintf(err, cap, "the redis keys %s:* belong to app '%s', not '%s': give this "
                 "app a name of its own (--broker-name) or delete %s if '%s' is gone",
                 b->prefix, r->str, b->app, b->k_meta, r->str);
        freeReplyObject(r);
        return BROKER_EFOREIGN;
    }
    freeReplyObject(r);
    args_str(&a, "XGROUP");
    args_str(&a, "CREATE");
    args_str(&a, b->k_stream);
    args_str(&a, b->group);
    args_str(&a, "0");
    args_str(&a, "MKSTREAM");
    r = conn_cmd(b, &b->cmd, &a, &rc);
    args_free(&a);
    if (!r)
        goto down;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        snprintf(err, cap, "redis at %s: cannot make consumer group %s on %s (%s)",
                 b->shown, b->group, b->k_stream, r->str);
        freeReplyObject(r);
        return BROKER_EPROTO;
    }
    freeReplyObject(r);
    return 0;
down:
    snprintf(err, cap, "lost redis at %s while opening the broker", b->shown);
    return rc;
}

int broker_open(const broker_config *cfg, broker **out, char *err, size_t cap)
{
    *out = NULL;
    if (!cfg->app || !*cfg->app) {
        snprintf(err, cap, "broker: no app name");
        return BROKER_EINVAL;
    }
    broker *b = xcalloc(1, sizeof *b);
    int rc = broker_url_parse(cfg->url, &b->url, err, cap);
    if (rc < 0) {
        free(b);
        return rc;
    }
    broker_url_redacted(&b->url, b->shown, sizeof b->shown);
    b->app = xstrdup(cfg->app);
    const char *name = cfg->name && *cfg->name ? cfg->name : cfg->app;
    if (asprintf(&b->prefix, "bgserve:{%s}", name) < 0)
        abort();
    b->group = xstrdup(cfg->group && *cfg->group ? cfg->group : DEFAULT_GROUP);
    if (cfg->consumer && *cfg->consumer) {
        b->consumer = xstrdup(cfg->consumer);
    } else {
        char host[256] = "host";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        if (asprintf(&b->consumer, "%s:%ld", host, (long)getpid()) < 0)
            abort();
    }
    b->k_stream = key(b, "tasks");
    b->k_delayed = key(b, "delayed");
    b->k_dead = key(b, "dead");
    b->k_ids = key(b, "ids");
    b->k_meta = key(b, "meta");
    b->k_done = key(b, "done");
    b->connect_ms = cfg->connect_ms ? cfg->connect_ms : BROKER_DEFAULT_CONNECT_MS;
    b->cmd_ms = cfg->cmd_ms ? cfg->cmd_ms : BROKER_DEFAULT_CMD_MS;
    b->visibility_ms = cfg->visibility_ms ? cfg->visibility_ms : BROKER_DEFAULT_VISIBILITY_MS;
    b->record_ttl_s = cfg->record_ttl_s ? cfg->record_ttl_s : BROKER_DEFAULT_RECORD_TTL_S;
    b->capacity = cfg->capacity;
    b->cmd.role = "command";
    b->rd.role = "reader";
    strcpy(b->claim_cursor, "0-0");
    pthread_mutex_init(&b->cmd_mu, NULL);
    pthread_mutex_init(&b->read_mu, NULL);

    rc = connect_one(b, &b->cmd.c, 1, err, cap);
    if (rc == 0)
        rc = claim_keys(b, err, cap);
    if (rc == 0)
        rc = connect_one(b, &b->rd.c, 0, err, cap);
    if (rc < 0) {
        broker_close(b);
        return rc;
    }
    atomic_store(&b->cmd_up, 1);
    *out = b;
    return 0;
}

void broker_close(broker *b)
{
    if (!b)
        return;
    if (b->cmd.c)
        redisFree(b->cmd.c);
    if (b->rd.c)
        redisFree(b->rd.c);
    pthread_mutex_destroy(&b->cmd_mu);
    pthread_mutex_destroy(&b->read_mu);
    broker_url_clear(&b->url);
    free(b->app);
    free(b->prefix);
    free(b->group);
    free(b->consumer);
    free(b->k_stream);
    free(b->k_delayed);
    free(b->k_dead);
    free(b->k_ids);
    free(b->k_meta);
    free(b->k_done);
    free(b);
}

int broker_available(broker *b)
{
    if (atomic_load(&b->cmd_up))
        return 1;
    /* Down: try to reconnect when the backoff allows (at once otherwise);
     * a caller that finds the connection busy hears "down" this time. */
    if (pthread_mutex_trylock(&b->cmd_mu) != 0)
        return 0;
    int rc = conn_ensure(b, &b->cmd);
    pthread_mutex_unlock(&b->cmd_mu);
    return rc == 0;
}
const char *broker_url_shown(const broker *b) { return b->shown; }
const char *broker_prefix(const broker *b) { return b->prefix; }
const char *broker_consumer(const broker *b) { return b->consumer; }
unsigned broker_visibility_ms(const broker *b) { return b->visibility_ms; }
unsigned broker_capacity(const broker *b) { return b->capacity; }

/* ------------------------------------------------------------------ */
/* Ids and enqueueing                                                  */
/* ------------------------------------------------------------------ */

int broker_next_ids(broker *b, unsigned n, uint64_t *first)
{
    if (n == 0)
        return BROKER_EINVAL;
    args a = {0};
    args_str(&a, "INCRBY");
    args_str(&a, b->k_ids);
    args_u64(&a, n);
    int rc;
    redisReply *r = cmd_expect(b, &a, REDIS_REPLY_INTEGER, 0, "reserving task ids", &rc);
    if (!r)
        return rc;
    if (r->integer < (long long)n)
        return unexpected(r, "reserving task ids");
    *first = (uint64_t)r->integer - n + 1;
    freeReplyObject(r);
    return 0;
}

int broker_enqueue(broker *b, const broker_job *jobs, size_t n)
{
    return broker_enqueue_seq(b, jobs, n, 0, NULL, 0);
}

int broker_enqueue_seq(broker *b, const broker_job *jobs, size_t n, int seq, char *answer,
                       size_t cap)
{
    if (answer && cap)
        answer[0] = '\0';
    if (n == 0)
        return 0;
    args a = {0};
    args_script(&a, S_ENQUEUE, 2, b->sha[S_ENQUEUE]);
    args_str(&a, b->k_stream);
    args_str(&a, b->k_delayed);
    args_u64(&a, b->capacity);
    args_u64(&a, n);
    args_str(&a, b->app);
    args_str(&a, b->prefix);
    args_str(&a, seq ? "1" : "0");
    for (size_t i = 0; i < n; i++) {
        if (!jobs[i].name || !*jobs[i].name) {
            args_free(&a);
            return BROKER_EINVAL;
        }
        args_u64(&a, jobs[i].id);
        args_str(&a, jobs[i].name);
        args_str(&a, jobs[i].request_id);
        args_u64(&a, jobs[i].max_attempts);
        args_add(&a, jobs[i].payload, jobs[i].len);
    }
    int rc;
    pthread_mutex_lock(&b->cmd_mu);
    redisReply *r = conn_script(b, &b->cmd, S_ENQUEUE, &a, &rc);
    pthread_mutex_unlock(&b->cmd_mu);
    args_free(&a);
    if (!r)
        return rc;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "FULL", 4) == 0) {
        freeReplyObject(r);
        return BROKER_EFULL;
    }
    if (r->type == REDIS_REPLY_ERROR && answer && cap)
        snprintf(answer, cap, "%s", r->str);
    if (r->type != REDIS_REPLY_INTEGER)
        return unexpected(r, "adding tasks to the stream");
    freeReplyObject(r);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Reading                                                             */
/* ------------------------------------------------------------------ */

void broker_msg_clear(broker_msg *m)
{
    free(m->name);
    free(m->request_id);
    free(m->payload);
    memset(m, 0, sizeof *m);
}

void broker_msgs_free(broker_msg *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        broker_msg_clear(&msgs[i]);
    free(msgs);
}

static int parse_u64(const char *s, size_t len, uint64_t *v)
{
    if (len == 0 || len > 20)
        return -1;
    uint64_t x = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return -1;
        x = x * 10 + d;
    }
    *v = x;
    return 0;
}

/*
 * One stream entry [id, [field, value, ...]] into m.  0, or -1 with why
 * (static text or written into why) when it is not a job of this app.
 */
static int parse_entry(const broker *b, const redisReply *e, broker_msg *m, char *why,
                       size_t cap)
{
    memset(m, 0, sizeof *m);
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[0]->len >= BROKER_ENTRY_MAX) {
        snprintf(why, cap, "not a stream entry");
        return -1;
    }
    memcpy(m->entry, e->element[0]->str, e->element[0]->len + 1);
    const redisReply *f = e->element[1];
    if (f->type != REDIS_REPLY_ARRAY || f->elements % 2) {
        snprintf(why, cap, "entry %s has no fields (deleted?)", m->entry);
        return -1;
    }
    const redisReply *app = NULL;
    int have_id = 0, have_name = 0;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        uint64_t x;
        if (strcmp(k->str, "app") == 0) {
            app = v;
        } else if (strcmp(k->str, "id") == 0) {
            have_id = parse_u64(v->str, v->len, &m->id) == 0 && m->id;
        } else if (strcmp(k->str, "name") == 0 && v->len > 0) {
            free(m->name);
            m->name = xstrndup(v->str, v->len);
            have_name = 1;
        } else if (strcmp(k->str, "rid") == 0) {
            free(m->request_id);
            m->request_id = v->len ? xstrndup(v->str, v->len) : NULL;
        } else if (strcmp(k->str, "attempt") == 0 && parse_u64(v->str, v->len, &x) == 0) {
            m->attempt = x > UINT32_MAX ? UINT32_MAX : (uint32_t)x;
        } else if (strcmp(k->str, "max") == 0 && parse_u64(v->str, v->len, &x) == 0) {
            m->max_attempts = x > UINT32_MAX ? UINT32_MAX : (uint32_t)x;
        } else if (strcmp(k->str, "created") == 0 && parse_u64(v->str, v->len, &x) == 0) {
            m->created_ms = x;
        } else if (strcmp(k->str, "payload") == 0) {
            free(m->payload);
            m->payload = xmalloc(v->len + 1);
            memcpy(m->payload, v->str, v->len);
            ((char *)m->payload)[v->len] = '\0';
            m->len = v->len;
        }
    }
    if (!app) {
        snprintf(why, cap, "entry %s is not a bgserve task (no 'app' field)", m->entry);
        return -1;
    }
    if (strcmp(app->str, b->app) != 0) {
        snprintf(why, cap, "entry %s belongs to app '%.*s', not '%s': two apps share the "
                 "stream %s (give one of them its own --broker-name)", m->entry,
                 (int)(app->len > 64 ? 64 : app->len), app->str, b->app, b->k_stream);
        return -1;
    }
    if (!have_id || !have_name) {
        snprintf(why, cap, "entry %s lacks a task id or name", m->entry);
        return -1;
    }
    return 0;
}

/* Move an entry that is not ours to the dead-letter stream (read_mu held,
 * on the reader's connection). */
static void dead_foreign(broker *b, const char *entry, const char *why)
{
    log_msg(BGS_LOG_WARN, "broker: moved to %s: %s", b->k_dead, why);
    args a = {0};
    args_script(&a, S_DEAD, 4, b->sha[S_DEAD]);
    args_str(&a, b->k_stream);
    args_str(&a, b->k_dead);
    args_str(&a, b->k_meta); /* neither is written: write_record is 0 */
    args_str(&a, b->k_done);
    args_str(&a, b->group);
    args_str(&a, entry);
    args_str(&a, why);
    args_u64(&a, b->record_ttl_s);
    args_str(&a, b->consumer);
    args_str(&a, "0");
    args_str(&a, "0");
    int rc;
    redisReply *r = conn_script(b, &b->rd, S_DEAD, &a, &rc);
    args_free(&a);
    if (r && r->type != REDIS_REPLY_INTEGER)
        unexpected(r, "dead-lettering a foreign entry");
    else if (r)
        freeReplyObject(r);
}

/* Append the entries of array `entries` to *msgs (read_mu held). */
static void take_entries(broker *b, const redisReply *entries, int reclaimed,
                         broker_msg **msgs, size_t *n, size_t *cap)
{
    if (!entries || entries->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *e = entries->element[i];
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 16;
            *msgs = xrealloc(*msgs, *cap * sizeof **msgs);
        }
        broker_msg *m = &(*msgs)[*n];
        char why[512];
        if (parse_entry(b, e, m, why, sizeof why) < 0) {
            if (m->entry[0])
                dead_foreign(b, m->entry, why);
            broker_msg_clear(m);
            continue;
        }
        m->reclaimed = reclaimed;
        if (reclaimed)
            log_msg(BGS_LOG_WARN, "broker: claimed task %" PRIu64 " (%s, entry %s): its "
                    "worker did not touch it for %u ms (stopped or died?)", m->id, m->name,
                    m->entry, b->visibility_ms);
        (*n)++;
    }
}

/* Move due retries to the stream (read_mu held). */
static int promote(broker *b)
{
    args a = {0};
    args_script(&a, S_PROMOTE, 2, b->sha[S_PROMOTE]);
    args_str(&a, b->k_delayed);
    args_str(&a, b->k_stream);
    args_u64(&a, PROMOTE_BATCH);
    int rc;
    redisReply *r = conn_script(b, &b->rd, S_PROMOTE, &a, &rc);
    args_free(&a);
    if (!r)
        return rc;
    if (r->type != REDIS_REPLY_INTEGER)
        return unexpected(r, "moving due retries to the stream");
    freeReplyObject(r);
    return 0;
}

/* The stream or the group is gone (FLUSHALL, a Redis without persistence
 * restarted): make them again (read_mu held; frees r, the NOGROUP
 * answer). */
static void remake_group(broker *b, redisReply *r)
{
    log_msg(BGS_LOG_WARN, "broker: the consumer group %s of %s is gone (%s); making it "
            "again", b->group, b->k_stream, r->str);
    freeReplyObject(r);
    args a = {0};
    args_str(&a, "XGROUP");
    args_str(&a, "CREATE");
    args_str(&a, b->k_stream);
    args_str(&a, b->group);
    args_str(&a, "0");
    args_str(&a, "MKSTREAM");
    int rc;
    redisReply *g = conn_cmd(b, &b->rd, &a, &rc);
    args_free(&a);
    if (g)
        freeReplyObject(g);
}

/* XAUTOCLAIM entries idle past the visibility timeout (read_mu held). */
static int claim(broker *b, unsigned max, broker_msg **msgs, size_t *n, size_t *cap)
{
    args a = {0};
    args_str(&a, "XAUTOCLAIM");
    args_str(&a, b->k_stream);
    args_str(&a, b->group);
    args_str(&a, b->consumer);
    args_u64(&a, b->visibility_ms);
    args_str(&a, b->claim_cursor);
    args_str(&a, "COUNT");
    args_u64(&a, max < CLAIM_BATCH ? max : CLAIM_BATCH);
    int rc;
    redisReply *r = conn_cmd(b, &b->rd, &a, &rc);
    args_free(&a);
    if (!r)
        return rc;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOGROUP", 7) == 0) {
        remake_group(b, r);
        return 0;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
        r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[0]->len >= sizeof b->claim_cursor)
        return unexpected(r, "XAUTOCLAIM");
    memcpy(b->claim_cursor, r->element[0]->str, r->element[0]->len + 1);
    take_entries(b, r->element[1], 1, msgs, n, cap);
    freeReplyObject(r);
    return 0;
}

int broker_read(broker *b, unsigned max, unsigned block_ms, broker_msg **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (max == 0)
        return BROKER_EINVAL;
    broker_msg *msgs = NULL;
    size_t cap = 0;
    pthread_mutex_lock(&b->read_mu);
    int rc = promote(b);
    uint64_t now = util_now_us();
    if (rc == 0 && now >= b->next_claim_us) {
        rc = claim(b, max, &msgs, n, &cap);
        /* Walk the pending list faster while the cursor is mid-way. */
        b->next_claim_us = now + (strcmp(b->claim_cursor, "0-0") == 0
                                  ? (uint64_t)b->visibility_ms * 250u : 0);
    }
    if (rc == 0 && *n < max) {
        args a = {0};
        args_str(&a, "XREADGROUP");
        args_str(&a, "GROUP");
        args_str(&a, b->group);
        args_str(&a, b->consumer);
        args_str(&a, "COUNT");
        args_u64(&a, max - *n);
        if (*n == 0 && block_ms > 0) {
            args_str(&a, "BLOCK");
            args_u64(&a, block_ms);
        }
        args_str(&a, "STREAMS");
        args_str(&a, b->k_stream);
        args_str(&a, ">");
        rc = conn_ensure(b, &b->rd);
        if (rc == 0)
            redisSetTimeout(b->rd.c, tv_ms(block_ms + b->cmd_ms));
        redisReply *r = rc == 0 ? conn_cmd(b, &b->rd, &a, &rc) : NULL;
        args_free(&a);
        if (b->rd.c)
            redisSetTimeout(b->rd.c, tv_ms(b->cmd_ms));
        if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOGROUP", 7) == 0) {
            remake_group(b, r);
            r = NULL;
        } else if (r && r->type == REDIS_REPLY_ARRAY) {
            for (size_t i = 0; i < r->elements; i++) {
                const redisReply *s = r->element[i];
                if (s->type == REDIS_REPLY_ARRAY && s->elements == 2)
                    take_entries(b, s->element[1], 0, &msgs, n, &cap);
            }
            freeReplyObject(r);
        } else if (r && r->type != REDIS_REPLY_NIL) {
            rc = unexpected(r, "XREADGROUP");
        } else if (r) {
            freeReplyObject(r);
        }
    }
    pthread_mutex_unlock(&b->read_mu);
    if (*n == 0) {
        free(msgs);
        msgs = NULL;
    }
    *out = msgs;
    return *n ? 0 : rc;
}

/* The final-state notices after cursor (an entry id of PREFIX:done;
 * "0-0" for all), on the reader's connection. */
int broker_done_read(broker *b, char *cursor, size_t cursor_cap, unsigned block_ms,
                     uint64_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    args a = {0};
    args_str(&a, "XREAD");
    args_str(&a, "COUNT");
    args_u64(&a, 1024);
    if (block_ms) {
        args_str(&a, "BLOCK");
        args_u64(&a, block_ms);
    }
    args_str(&a, "STREAMS");
    args_str(&a, b->k_done);
    args_str(&a, cursor);
    pthread_mutex_lock(&b->read_mu);
    int rc = conn_ensure(b, &b->rd);
    redisReply *r = NULL;
    if (rc == 0) {
        redisSetTimeout(b->rd.c, tv_ms(block_ms + b->cmd_ms));
        r = conn_cmd(b, &b->rd, &a, &rc);
        if (b->rd.c)
            redisSetTimeout(b->rd.c, tv_ms(b->cmd_ms));
    }
    pthread_mutex_unlock(&b->read_mu);
    args_free(&a);
    if (!r)
        return rc;
    if (r->type == REDIS_REPLY_NIL) {
        freeReplyObject(r);
        return 0;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 ||
        r->element[0]->type != REDIS_REPLY_ARRAY || r->element[0]->elements != 2)
        return unexpected(r, "reading final-state notices");
    const redisReply *es = r->element[0]->element[1];
    uint64_t *out = xmalloc((es->elements ? es->elements : 1) * sizeof *out);
    for (size_t i = 0; i < es->elements; i++) {
        const redisReply *e = es->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING || e->element[0]->len >= cursor_cap)
            continue;
        memcpy(cursor, e->element[0]->str, e->element[0]->len + 1);
        const redisReply *f = e->element[1];
        for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements; k += 2)
            if (f->element[k]->type == REDIS_REPLY_STRING &&
                f->element[k + 1]->type == REDIS_REPLY_STRING &&
                strcmp(f->element[k]->str, "id") == 0 &&
                parse_u64(f->element[k + 1]->str, f->element[k + 1]->len, &out[*n]) == 0)
                (*n)++;
    }
    freeReplyObject(r);
    if (*n == 0)
        free(out);
    else
        *ids = out;
    return 0;
}

int broker_done_cursor(broker *b, char *cursor, size_t cap)
{
    args a = {0};
    args_str(&a, "XREVRANGE");
    args_str(&a, b->k_done);
    args_str(&a, "+");
    args_str(&a, "-");
    args_str(&a, "COUNT");
    args_str(&a, "1");
    int rc;
    redisReply *r = cmd_expect(b, &a, REDIS_REPLY_ARRAY, 0, "reading the last notice", &rc);
    if (!r)
        return rc;
    snprintf(cursor, cap, "0-0");
    if (r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
        r->element[0]->elements == 2 && r->element[0]->element[0]->type == REDIS_REPLY_STRING &&
        r->element[0]->element[0]->len < cap)
        memcpy(cursor, r->element[0]->element[0]->str, r->element[0]->element[0]->len + 1);
    freeReplyObject(r);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Running and finishing                                               */
/* ------------------------------------------------------------------ */

static void args_record_key(args *a, const broker *b, uint64_t id)
{
    args_fmt(a, "%s:task:%" PRIu64, b->prefix, id);
}

int broker_start(broker *b, broker_msg *m)
{
    args a = {0};
    args_script(&a, S_START, 1, b->sha[S_START]);
    args_record_key(&a, b, m->id);
    args_str(&a, b->consumer);
    args_u64(&a, m->attempt);
    args_str(&a, m->name);
    args_u64(&a, m->max_attempts);
    long long v = 0;
    int rc = cmd_script_int(b, S_START, &a, "counting an attempt", &v);
    if (rc == 0)
        m->attempt = v > 0 && v <= UINT32_MAX ? (uint32_t)v : m->attempt + 1;
    return rc;
}

int broker_touch(broker *b, const char *const *entries, size_t n)
{
    if (n == 0)
        return 0;
    args a = {0};
    args_str(&a, "XCLAIM");
    args_str(&a, b->k_stream);
    args_str(&a, b->group);
    args_str(&a, b->consumer);
    args_str(&a, "0");
    for (size_t i = 0; i < n; i++)
        args_str(&a, entries[i]);
    args_str(&a, "JUSTID");
    int rc;
    redisReply *r = cmd_expect(b, &a, REDIS_REPLY_ARRAY, 0, "XCLAIM (touching running entries)",
                               &rc);
    if (!r)
        return rc;
    freeReplyObject(r);
    return 0;
}

int broker_finish(broker *b, const broker_msg *m, const broker_outcome *o)
{
    args a = {0};
    args_script(&a, S_FINISH, 3, b->sha[S_FINISH]);
    args_str(&a, b->k_stream);
    args_record_key(&a, b, m->id);
    args_str(&a, b->k_done);
    args_str(&a, b->group);
    args_str(&a, m->entry);
    args_u64(&a, b->record_ttl_s);
    args_str(&a, o->state);
    args_str(&a, o->error);
    args_str(&a, o->has_result ? "1" : "0");
    args_u64(&a, o->result_status);
    args_str(&a, o->result_type);
    args_add(&a, o->result, o->has_result ? o->result_len : 0);
    args_u64(&a, m->id);
    args_str(&a, b->prefix);
    args_u64(&a, m->attempt);
    long long acked = 0;
    int rc = cmd_script_int(b, S_FINISH, &a, "finishing a task", &acked);
    if (rc == 0 && acked == 0)
        log_msg(BGS_LOG_WARN, "broker: task %" PRIu64 " (entry %s) finished here after "
                "another worker claimed it: it may run twice (raise the visibility "
                "timeout above the task's run time)", m->id, m->entry);
    return rc;
}

/* REQUEUE with the entry's attempts set to attempt; uncount: the record's
 * too (a run handed back). */
static int requeue(broker *b, const broker_msg *m, unsigned delay_ms, const char *state,
                   const char *error, uint32_t attempt, int uncount)
{
    args a = {0};
    args_script(&a, S_REQUEUE, 3, b->sha[S_REQUEUE]);
    args_str(&a, b->k_stream);
    args_str(&a, b->k_delayed);
    args_record_key(&a, b, m->id);
    args_str(&a, b->group);
    args_str(&a, m->entry);
    args_u64(&a, delay_ms);
    args_str(&a, state);
    args_str(&a, error);
    args_u64(&a, attempt);
    if (uncount)
        args_str(&a, "1");
    return cmd_script_int(b, S_REQUEUE, &a, uncount ? "handing a task back" : "putting a task back",
                          NULL);
}

int broker_retry(broker *b, const broker_msg *m, unsigned delay_ms, const char *error)
{
    return requeue(b, m, delay_ms, "retrying", error, m->attempt, 0);
}

int broker_defer(broker *b, const broker_msg *m, unsigned delay_ms)
{
    return requeue(b, m, delay_ms, "queued", NULL, m->attempt, 0);
}

int broker_dead(broker *b, const broker_msg *m, const char *error)
{
    args a = {0};
    args_script(&a, S_DEAD, 4, b->sha[S_DEAD]);
    args_str(&a, b->k_stream);
    args_str(&a, b->k_dead);
    args_record_key(&a, b, m->id);
    args_str(&a, b->k_done);
    args_str(&a, b->group);
    args_str(&a, m->entry);
    args_str(&a, error ? error : "failed");
    args_u64(&a, b->record_ttl_s);
    args_str(&a, b->consumer);
    args_str(&a, "1");
    args_u64(&a, m->id);
    args_str(&a, b->prefix);
    args_u64(&a, m->attempt);
    return cmd_script_int(b, S_DEAD, &a, "dead-lettering a task", NULL);
}

int broker_hand_back(broker *b, const broker_msg *m, const char *error)
{
    return requeue(b, m, 0, "queued", error, m->attempt > 0 ? m->attempt - 1 : 0, 1);
}

int broker_hand_back_retry(broker *b, const broker_msg *m, unsigned delay_ms, const char *error)
{
    return requeue(b, m, delay_ms, "retrying", error, m->attempt > 0 ? m->attempt - 1 : 0, 0);
}

/* ------------------------------------------------------------------ */
/* Leases                                                              */
/* ------------------------------------------------------------------ */

int broker_conc_take(broker *b, const char *name, unsigned max, const char *token,
                     unsigned lease_ms)
{
    if (!name || !token || max == 0 || lease_ms == 0)
        return BROKER_EINVAL;
    args a = {0};
    args_script(&a, S_CONC, 1, b->sha[S_CONC]);
    args_fmt(&a, "%s:conc:%s", b->prefix, name);
    args_u64(&a, max);
    args_str(&a, token);
    args_u64(&a, lease_ms);
    long long v = 0;
    int rc = cmd_script_int(b, S_CONC, &a, "taking a concurrency slot", &v);
    return rc < 0 ? rc : v ? 1 : 0;
}

int broker_conc_release(broker *b, const char *name, const char *token)
{
    args a = {0};
    args_str(&a, "ZREM");
    args_fmt(&a, "%s:conc:%s", b->prefix, name);
    args_str(&a, token);
    int rc;
    redisReply *r = cmd_expect(b, &a, REDIS_REPLY_INTEGER, 0, "releasing a concurrency slot",
                               &rc);
    if (!r)
        return rc;
    freeReplyObject(r);
    return 0;
}

int broker_lease(broker *b, const char *k, unsigned ttl_ms)
{
    if (!k || ttl_ms == 0)
        return BROKER_EINVAL;
    args a = {0};
    args_str(&a, "SET");
    args_fmt(&a, "%s:periodic:%s", b->prefix, k);
    args_str(&a, b->consumer);
    args_str(&a, "NX");
    args_str(&a, "PX");
    args_u64(&a, ttl_ms);
    int rc;
    redisReply *r = cmd_expect(b, &a, REDIS_REPLY_STATUS, 1, "taking a periodic lease", &rc);
    if (!r)
        return rc;
    rc = r->type == REDIS_REPLY_STATUS;
    freeReplyObject(r);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Records and stats                                                   */
/* ------------------------------------------------------------------ */

void broker_record_clear(broker_record *r)
{
    free(r->name);
    free(r->request_id);
    free(r->state);
    free(r->error);
    free(r->worker);
    free(r->result_type);
    free(r->result);
    memset(r, 0, sizeof *r);
}

static uint64_t field_u64(const redisReply *v)
{
    uint64_t x = 0;
    return parse_u64(v->str, v->len, &x) == 0 ? x : 0;
}

static char *field_str(const redisReply *v) { return v->len ? xstrndup(v->str, v->len) : NULL; }

int broker_record_get(broker *b, uint64_t id, broker_record *rec)
{
    memset(rec, 0, sizeof *rec);
    args a = {0};
    args_str(&a, "HGETALL");
    args_record_key(&a, b, id);
    int rc;
    redisReply *r = cmd_expect(b, &a, REDIS_REPLY_ARRAY, 0, "reading a task record", &rc);
    if (!r)
        return rc;
    if (r->elements == 0) {
        freeReplyObject(r);
        return BROKER_ENOTFOUND;
    }
    rec->id = id;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        const char *f = k->str;
        if (strcmp(f, "name") == 0) {
            rec->name = field_str(v);
        } else if (strcmp(f, "rid") == 0) {
            rec->request_id = field_str(v);
        } else if (strcmp(f, "state") == 0) {
            rec->state = field_str(v);
        } else if (strcmp(f, "attempts") == 0) {
            uint64_t x = field_u64(v);
            rec->attempts = x > UINT32_MAX ? UINT32_MAX : (uint32_t)x;
        } else if (strcmp(f, "max") == 0) {
            uint64_t x = field_u64(v);
            rec->max_attempts = x > UINT32_MAX ? UINT32_MAX : (uint32_t)x;
        } else if (strcmp(f, "created") == 0) {
            rec->created_ms = field_u64(v);
        } else if (strcmp(f, "started") == 0) {
            rec->started_ms = field_u64(v);
        } else if (strcmp(f, "finished") == 0) {
            rec->finished_ms = field_u64(v);
        } else if (strcmp(f, "error") == 0) {
            rec->error = field_str(v);
        } else if (strcmp(f, "worker") == 0) {
            rec->worker = field_str(v);
        } else if (strcmp(f, "res_status") == 0) {
            rec->has_result = 1;
            rec->result_status = (uint32_t)field_u64(v);
        } else if (strcmp(f, "res_type") == 0) {
            rec->result_type = field_str(v);
        } else if (strcmp(f, "res") == 0) {
            rec->result = xmalloc(v->len + 1);
            memcpy(rec->result, v->str, v->len);
            rec->result[v->len] = '\0';
            rec->result_len = v->len;
        }
    }
    freeReplyObject(r);
    if (!rec->state) {
        broker_record_clear(rec);
        return BROKER_ENOTFOUND;
    }
    return 0;
}

int broker_stats_get(broker *b, broker_stats *s)
{
    memset(s, 0, sizeof *s);
    s->reconnects = atomic_load(&b->reconnects);
    const char *cmds[5][4] = {
        {"XLEN", b->k_stream, NULL, NULL},
        {"XPENDING", b->k_stream, b->group, NULL},
        {"XINFO", "GROUPS", b->k_stream, NULL},
        {"ZCARD", b->k_delayed, NULL, NULL},
        {"XLEN", b->k_dead, NULL, NULL},
    };
    redisReply *rep[5] = {0};
    int rc;
    pthread_mutex_lock(&b->cmd_mu);
    rc = conn_ensure(b, &b->cmd);
    for (int i = 0; rc == 0 && i < 5; i++) {
        int argc = 0;
        size_t lens[4];
        while (argc < 4 && cmds[i][argc]) {
            lens[argc] = strlen(cmds[i][argc]);
            argc++;
        }
        redisAppendCommandArgv(b->cmd.c, argc, cmds[i], lens);
    }
    for (int i = 0; rc == 0 && i < 5; i++) {
        void *r = NULL;
        if (redisGetReply(b->cmd.c, &r) != REDIS_OK) {
            conn_lost(b, &b->cmd);
            rc = BROKER_EDOWN;
            break;
        }
        rep[i] = r;
    }
    s->up = rc == 0;
    pthread_mutex_unlock(&b->cmd_mu);
    if (rc == 0) {
        if (rep[0]->type == REDIS_REPLY_INTEGER)
            s->stream_len = (uint64_t)rep[0]->integer;
        if (rep[1]->type == REDIS_REPLY_ARRAY && rep[1]->elements >= 1 &&
            rep[1]->element[0]->type == REDIS_REPLY_INTEGER)
            s->pending = (uint64_t)rep[1]->element[0]->integer;
        if (rep[2]->type == REDIS_REPLY_ARRAY) {
            for (size_t g = 0; g < rep[2]->elements; g++) {
                const redisReply *gr = rep[2]->element[g];
                int ours = 0;
                long long consumers = 0;
                for (size_t i = 0; gr->type == REDIS_REPLY_ARRAY && i + 1 < gr->elements;
                     i += 2) {
                    const redisReply *k = gr->element[i], *v = gr->element[i + 1];
                    if (k->type != REDIS_REPLY_STRING)
                        continue;
                    if (strcmp(k->str, "name") == 0 && v->type == REDIS_REPLY_STRING)
                        ours = strcmp(v->str, b->group) == 0;
                    else if (strcmp(k->str, "consumers") == 0 &&
                             v->type == REDIS_REPLY_INTEGER)
                        consumers = v->integer;
                }
                if (ours)
                    s->consumers = (uint64_t)consumers;
            }
        }
        if (rep[3]->type == REDIS_REPLY_INTEGER)
            s->delayed = (uint64_t)rep[3]->integer;
        if (rep[4]->type == REDIS_REPLY_INTEGER)
            s->dead = (uint64_t)rep[4]->integer;
    }
    for (int i = 0; i < 5; i++)
        if (rep[i])
            freeReplyObject(rep[i]);
    return rc;
}
