/*
 * dashboard.c - the live dashboard (dashboard.h): the page's assets,
 * compiled into the binary from cmd/bgserve/dashboard/, the event stream's
 * snapshots and updates, and the retry action.
 *
 * The event stream.  A thread (the ticker) sleeps while no client is
 * connected.  While one is, every DASHBOARD_TICK_MS it builds at most one
 * update: the task records changed since the last tick (events.h: the
 * task engine names them, each once however often it changed), every
 * DASHBOARD_STATS_EVERY ticks the stats with rates, the plugin and the
 * route table, and the reload history when it changed.  An update is one
 * SSE event ("event: update") with the id BOOT-SEQ, kept in a ring of
 * the last DASHBOARD_RING_EVENTS events (DASHBOARD_RING_BYTES at most)
 * so a client that reconnects with Last-Event-ID gets what it missed.  A
 * new client, one from another server process (BOOT differs), or one
 * further behind than the ring gets a snapshot first ("event:
 * snapshot": everything the page shows, and the recent samples for its
 * charts).  A client holds one event at a time (a reference to it and an
 * offset), so a slow client costs a bounded amount: when it falls behind
 * the ring it gets a snapshot, never a backlog.
 *
 * State and locks: d_mu guards the ring, the sequence number, the client
 * list and each client's cursor and waiting flag, the samples and the
 * stopping flags; d_cv wakes the ticker.  Nothing outside this room is
 * called with d_mu held (the tasks' and events' locks are taken only
 * without it), and wake callbacks run after it is released.  A client's
 * current event and offset are touched only by the thread reading it
 * (one libmicrohttpd thread at a time).
 */
#include "dashboard.h"

#include "events.h"
#include "generation.h"
#include "journal_json.h"
#include "json.h"
#include "log.h"
#include "tasks.h"
#include "urls.h"
#include "util.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the assets ------------------------------------------------------------------ */

/* The files under cmd/bgserve/dashboard/, each followed by a NUL (the
 * Makefile makes this object depend on them; the path is relative to
 * the directory make runs in). */
#define ASSET(sym, file)                                        \
    __asm__(".section .rodata\n"                                \
            ".balign 16\n" #sym "_start:\n"                     \
            ".incbin \"cmd/bgserve/dashboard/" file "\"\n" #sym \
            "_end:\n"                                           \
            ".byte 0\n"                                         \
            ".previous\n");                                     \
    extern const char sym##_start[], sym##_end[];

ASSET(asset_html, "index.html")
ASSET(asset_js, "dashboard.js")
ASSET(asset_css, "dashboard.css")

typedef struct asset {
    const char *path, *ctype, *start, *end;
} asset;

static const asset assets[] = {
    {URLS_DASHBOARD, "text/html; charset=utf-8", asset_html_start, asset_html_end},
    {URLS_PREFIX "/dashboard.js", "text/javascript; charset=utf-8", asset_js_start, asset_js_end},
    {URLS_PREFIX "/dashboard.css", "text/css; charset=utf-8", asset_css_start, asset_css_end},
};

/* Scripts and styles come only from bgserve itself, never inline: a
 * value that slipped through unescaped still could not run. */
#define CSP "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " \
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/* ---- state ------------------------------------------------------------------------- */

typedef struct event {
    atomic_uint refs;
    uint64_t seq;     /* 0: a snapshot, owned by one client */
    size_t len;
    char text[];      /* the SSE event, NUL-terminated */
} event;

struct dashboard_client {
    dashboard_client *prev, *next; /* d_mu */
    uint64_t seq;                  /* the last event taken; d_mu */
    int snapshot;                  /* needs a snapshot first; d_mu */
    int waiting;                   /* read returned 0, not woken yet; d_mu */
    void (*wake)(void *arg);
    void *arg;
    event *cur;                    /* being written (reader only) */
    size_t off;
};

/* One sample per stats tick for the charts: what a page that connects
 * late still draws. */
#define SAMPLES 300
typedef struct sample {
    uint64_t at_ms;   /* wall clock */
    double rps, eps;
    uint64_t queued, running;
} sample;

static dashboard_config cfg;            /* written by dashboard_start */
static char boot[24];                   /* written by dashboard_start */

static pthread_mutex_t d_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t d_cv = PTHREAD_COND_INITIALIZER;
static event *ring[DASHBOARD_RING_EVENTS]; /* d_mu */
static size_t ring_start, ring_len, ring_bytes; /* d_mu */
static uint64_t seq;                    /* the last event's; d_mu */
static dashboard_client clients = {.prev = &clients, .next = &clients}; /* d_mu */
static int ended;                       /* streams end; d_mu */
static int stopping;                    /* the ticker ends; d_mu */
static int running;                     /* the ticker runs; main thread */
static pthread_t ticker;
static sample samples[SAMPLES];         /* d_mu; a ring */
static size_t sample_start, sample_len; /* d_mu */

/* The ticker's own (its thread only). */
static uint64_t last_requests, last_errors, last_stats_us;
static uint64_t sent_reload_seq = UINT64_MAX;
static uint64_t sent_log_seq;

static void event_unref(event *e)
{
    if (e && atomic_fetch_sub(&e->refs, 1) == 1)
        free(e);
}

/* An SSE event: "id: BOOT-SEQ", "event: NAME", the JSON as one data
 * line (json.c escapes every newline); a snapshot also sets the
 * reconnection delay. */
static event *event_make(const char *name, uint64_t s, int retry, const char *data, size_t dlen)
{
    char head[128];
    int hn = snprintf(head, sizeof head, "%sid: %s-%" PRIu64 "\nevent: %s\ndata: ",
                      retry ? "retry: 1000\n" : "", boot, s, name);
    size_t len = (size_t)hn + dlen + 2;
    event *e = xmalloc(sizeof *e + len + 1);
    atomic_init(&e->refs, 1);
    e->seq = s;
    e->len = len;
    memcpy(e->text, head, (size_t)hn);
    memcpy(e->text + hn, data, dlen);
    memcpy(e->text + hn + dlen, "\n\n", 3);
    return e;
}

/* ---- what the page shows --------------------------------------------------------------- */

static void plugin_json(json *j, generation *g)
{
    json_key(j, "plugin");
    if (g == NULL) {
        json_null(j);
        return;
    }
    char at[48];
    util_iso_time(at, sizeof at, g->loaded_wall_us, 3);
    json_obj_begin(j);
    json_key(j, "name");
    json_str(j, g->plugin->name);
    json_key(j, "version");
    json_str(j, g->plugin->version);
    json_key(j, "path");
    json_str(j, g->plugin->path);
    json_key(j, "generation");
    json_u64(j, g->number);
    json_key(j, "loaded_at");
    json_str(j, at);
    json_key(j, "load_ms");
    json_double(j, (double)g->load_us / 1000.0);
    json_obj_end(j);
}

static void routes_json(json *j, generation *g)
{
    json_key(j, "routes");
    json_arr_begin(j);
    for (size_t i = 0; g && i < g->plugin->nroutes; i++) {
        const plugin_route *r = &g->plugin->routes[i];
        json_obj_begin(j);
        json_key(j, "method");
        json_str(j, r->method);
        json_key(j, "path");
        json_str(j, r->path);
        json_key(j, "tasks");
        json_u64(j, r->ntasks);
        if (r->stats) {
            json_key(j, "requests");
            json_u64(j, atomic_load_explicit(&r->stats->requests, memory_order_relaxed));
            json_key(j, "errors");
            json_u64(j, atomic_load_explicit(&r->stats->errors, memory_order_relaxed));
            json_key(j, "p50_us");
            json_u64(j, latency_percentile(&r->stats->latency, 50));
            json_key(j, "p99_us");
            json_u64(j, latency_percentile(&r->stats->latency, 99));
        }
        json_obj_end(j);
    }
    json_arr_end(j);
}

static void task_list_json(json *j, const uint64_t *ids, size_t n)
{
    json_key(j, "tasks");
    json_arr_begin(j);
    for (size_t i = 0; i < n; i++)
        introspect_task_json(cfg.tasks, ids[i], j); /* evicted meanwhile: nothing */
    json_arr_end(j);
}

/* The newest DASHBOARD_DEAD_LETTERS ids of the journal's dead letters. */
typedef struct dead_ring {
    uint64_t ids[DASHBOARD_DEAD_LETTERS];
    size_t n; /* seen; the ring holds the last of them */
} dead_ring;

static void dead_note(void *arg, const journal_rec *r)
{
    dead_ring *d = arg;
    d->ids[d->n++ % DASHBOARD_DEAD_LETTERS] = r->id;
}

/* "dead": with --journal, the newest dead letters the journal holds (of
 * this run and earlier ones), newest first, as records in state "dead",
 * so that the page can retry them.  Read once per snapshot through a
 * reader connection of its own (the server's writer is not held up). */
static void dead_letters_json(json *j)
{
    journal *jr = tasks_journal(cfg.tasks);
    if (jr == NULL)
        return;
    journal_stats st;
    journal_get_stats(jr, &st);
    journal_db *db = NULL;
    dead_ring d = {.n = 0};
    char err[512];
    long rc = journal_db_open(st.file, &db, err, sizeof err);
    if (rc == 0) {
        rc = journal_db_each(db, "dead", dead_note, &d, err, sizeof err);
        journal_db_close(db);
    }
    if (rc < 0)
        log_msg(BGS_LOG_WARN, "dashboard: the dead letters are not shown: %s", err);
    json_key(j, "dead");
    json_arr_begin(j);
    size_t have = d.n < DASHBOARD_DEAD_LETTERS ? d.n : DASHBOARD_DEAD_LETTERS;
    for (size_t i = 0; i < have; i++) /* one purged meanwhile: nothing */
        journal_json_record(jr, d.ids[(d.n - 1 - i) % DASHBOARD_DEAD_LETTERS], j);
    json_arr_end(j);
}

static void sample_json(json *j, const sample *s)
{
    json_arr_begin(j);
    json_u64(j, s->at_ms);
    json_double(j, s->rps);
    json_double(j, s->eps);
    json_u64(j, s->queued);
    json_u64(j, s->running);
    json_arr_end(j);
}

/* "stats", "rates" and a new sample ("sample"), "plugin" and "routes".
 * The ticker's thread (rates are since its last call). */
static void stats_part(json *j)
{
    introspect_counters c;
    memset(&c, 0, sizeof c);
    cfg.counters(&c);
    uint64_t now = util_now_us();
    double dt = last_stats_us ? (double)(now - last_stats_us) / 1e6 : 0;
    sample s = {.at_ms = util_wall_us() / 1000u};
    if (dt > 0) {
        s.rps = (double)(c.requests - last_requests) / dt;
        s.eps = (double)(c.errors - last_errors) / dt;
    }
    last_stats_us = now;
    last_requests = c.requests;
    last_errors = c.errors;
    tasks_gauges(cfg.tasks, &s.queued, &s.running);
    pthread_mutex_lock(&d_mu);
    if (sample_len == SAMPLES)
        sample_start = (sample_start + 1) % SAMPLES;
    else
        sample_len++;
    samples[(sample_start + sample_len - 1) % SAMPLES] = s;
    pthread_mutex_unlock(&d_mu);

    json_key(j, "stats");
    json_obj_begin(j);
    introspect_stats_json(j, &c);
    json_obj_end(j);
    json_key(j, "sample");
    sample_json(j, &s);
    generation *g = generation_current();
    plugin_json(j, g);
    routes_json(j, g);
    generation_release(g);
}

/* Everything the page shows, as of event sequence number at. */
static event *snapshot(uint64_t at)
{
    json j;
    json_init(&j);
    json_obj_begin(&j);
    introspect_counters c;
    memset(&c, 0, sizeof c);
    cfg.counters(&c);
    json_key(&j, "stats");
    json_obj_begin(&j);
    introspect_stats_json(&j, &c);
    json_obj_end(&j);
    generation *g = generation_current();
    plugin_json(&j, g);
    routes_json(&j, g);
    generation_release(g);
    json_key(&j, "reloads");
    events_reloads_json(&j);
    uint64_t since = 0;
    json_key(&j, "logs");
    events_logs_json(&j, &since);
    uint64_t ids[DASHBOARD_RECENT_TASKS];
    task_list_json(&j, ids, tasks_recent_ids(cfg.tasks, ids, DASHBOARD_RECENT_TASKS));
    dead_letters_json(&j);
    sample copy[SAMPLES];
    pthread_mutex_lock(&d_mu);
    size_t n = sample_len;
    for (size_t i = 0; i < n; i++)
        copy[i] = samples[(sample_start + i) % SAMPLES];
    pthread_mutex_unlock(&d_mu);
    json_key(&j, "samples");
    json_arr_begin(&j);
    for (size_t i = 0; i < n; i++)
        sample_json(&j, &copy[i]);
    json_arr_end(&j);
    json_obj_end(&j);
    size_t len;
    char *data = json_take(&j, &len);
    event *e = event_make("snapshot", at, 1, data, len);
    free(data);
    return e;
}

/* ---- the ring and the clients ---------------------------------------------------------- */

/* Append e (taking the caller's reference), dropping the oldest events
 * past the ring's limits.  d_mu held. */
static void append_locked(event *e)
{
    while (ring_len > 0 && (ring_len == DASHBOARD_RING_EVENTS ||
                            ring_bytes + e->len > DASHBOARD_RING_BYTES)) {
        event *old = ring[ring_start];
        ring_start = (ring_start + 1) % DASHBOARD_RING_EVENTS;
        ring_len--;
        ring_bytes -= old->len;
        event_unref(old);
    }
    ring[(ring_start + ring_len) % DASHBOARD_RING_EVENTS] = e;
    ring_len++;
    ring_bytes += e->len;
}

/* The event numbered s, with a reference, or NULL when it left the ring.
 * d_mu held. */
static event *find_locked(uint64_t s)
{
    if (ring_len == 0)
        return NULL;
    uint64_t first = ring[ring_start]->seq;
    if (s < first || s > seq)
        return NULL;
    event *e = ring[(ring_start + (size_t)(s - first)) % DASHBOARD_RING_EVENTS];
    atomic_fetch_add(&e->refs, 1);
    return e;
}

/* Parse "BOOT-SEQ": 1 with *s set when BOOT is this process's. */
static int parse_event_id(const char *id, uint64_t *s)
{
    size_t bl = strlen(boot);
    if (id == NULL || strncmp(id, boot, bl) != 0 || id[bl] != '-')
        return 0;
    const char *p = id + bl + 1;
    char *end;
    if (*p < '0' || *p > '9')
        return 0;
    unsigned long long v = strtoull(p, &end, 10);
    if (*end != '\0')
        return 0;
    *s = v;
    return 1;
}

dashboard_client *dashboard_client_new(const char *last_event_id, void (*wake)(void *arg),
                                       void *arg)
{
    dashboard_client *c = xcalloc(1, sizeof *c);
    c->wake = wake;
    c->arg = arg;
    uint64_t s = 0;
    events_watch_begin();
    pthread_mutex_lock(&d_mu);
    int resumable = parse_event_id(last_event_id, &s) && s <= seq &&
                    (s == seq || (ring_len > 0 && s + 1 >= ring[ring_start]->seq));
    c->snapshot = !resumable;
    c->seq = resumable ? s : 0;
    c->prev = clients.prev;
    c->next = &clients;
    clients.prev->next = c;
    clients.prev = c;
    pthread_cond_signal(&d_cv); /* the ticker wakes up for it */
    pthread_mutex_unlock(&d_mu);
    return c;
}

long dashboard_client_read(dashboard_client *c, char *buf, size_t max)
{
    if (c->cur == NULL) {
        int snap = 0;
        uint64_t at = 0;
        pthread_mutex_lock(&d_mu);
        if (ended) {
            pthread_mutex_unlock(&d_mu);
            return -1;
        }
        if (!c->snapshot && c->seq < seq) {
            c->cur = find_locked(c->seq + 1);
            if (c->cur)
                c->seq = c->cur->seq;
            else
                c->snapshot = 1; /* fell behind the ring */
        }
        if (c->snapshot) {
            snap = 1;
            c->snapshot = 0;
            at = c->seq = seq;
        } else if (c->cur == NULL) {
            c->waiting = 1;
        }
        pthread_mutex_unlock(&d_mu);
        if (snap)
            c->cur = snapshot(at);
        if (c->cur == NULL)
            return 0;
        c->off = 0;
    }
    size_t n = c->cur->len - c->off;
    if (n > max)
        n = max;
    memcpy(buf, c->cur->text + c->off, n);
    c->off += n;
    if (c->off == c->cur->len) {
        event_unref(c->cur);
        c->cur = NULL;
    }
    return (long)n;
}

void dashboard_client_free(dashboard_client *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&d_mu);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    pthread_mutex_unlock(&d_mu);
    event_unref(c->cur);
    free(c);
    events_watch_end();
}

/* Wake every waiting client (d_mu not held). */
static void wake_all(dashboard_client **woken, size_t n)
{
    for (size_t i = 0; i < n; i++)
        woken[i]->wake(woken[i]->arg);
}

/* The waiting clients, taken off waiting, into a malloc'd array.  d_mu
 * held. */
static dashboard_client **take_waiting_locked(size_t *n)
{
    size_t count = 0;
    for (dashboard_client *c = clients.next; c != &clients; c = c->next)
        count += c->waiting != 0;
    dashboard_client **w = xmalloc((count ? count : 1) * sizeof *w);
    *n = 0;
    for (dashboard_client *c = clients.next; c != &clients; c = c->next)
        if (c->waiting) {
            c->waiting = 0;
            w[(*n)++] = c;
        }
    return w;
}

void dashboard_end_streams(void)
{
    size_t n;
    pthread_mutex_lock(&d_mu);
    ended = 1;
    dashboard_client **w = take_waiting_locked(&n);
    pthread_mutex_unlock(&d_mu);
    wake_all(w, n);
    free(w);
}

/* ---- the ticker ---------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Build one update, if anything changed, and append it. */
static void tick(unsigned n)
{
    static uint64_t ids[EVENTS_DIRTY_MAX];
    int missed = 0;
    size_t nid = events_take_tasks(ids, EVENTS_DIRTY_MAX, &missed);
    if (missed) {
        nid = tasks_recent_ids(cfg.tasks, ids, DASHBOARD_RECENT_TASKS);
    } else if (nid > 1) {
        qsort(ids, nid, sizeof ids[0], cmp_u64);
        size_t k = 1;
        for (size_t i = 1; i < nid; i++)
            if (ids[i] != ids[k - 1])
                ids[k++] = ids[i];
        nid = k;
    }
    int with_stats = n % DASHBOARD_STATS_EVERY == 0;
    uint64_t rs = events_reload_seq();
    int with_reloads = rs != sent_reload_seq;
    int with_logs = events_log_seq() != sent_log_seq;
    if (nid == 0 && !with_stats && !with_reloads && !with_logs)
        return;

    json j;
    json_init(&j);
    json_obj_begin(&j);
    if (with_logs) {
        json_key(&j, "logs");
        events_logs_json(&j, &sent_log_seq);
    }
    if (nid > 0 || missed)
        task_list_json(&j, ids, nid);
    if (missed) {
        json_key(&j, "missed"); /* some changes are not in this update */
        json_bool(&j, 1);
    }
    if (with_stats)
        stats_part(&j);
    if (with_reloads) {
        sent_reload_seq = rs;
        json_key(&j, "reloads");
        events_reloads_json(&j);
    }
    json_obj_end(&j);
    size_t len;
    char *data = json_take(&j, &len);

    pthread_mutex_lock(&d_mu);
    event *e = event_make("update", seq + 1, 0, data, len);
    seq++;
    size_t nw;
    dashboard_client **w = take_waiting_locked(&nw);
    append_locked(e);
    pthread_mutex_unlock(&d_mu);
    free(data);
    wake_all(w, nw);
    free(w);
}

static void *ticker_main(void *arg)
{
    (void)arg;
    unsigned n = 0;
    pthread_mutex_lock(&d_mu);
    while (!stopping) {
        if (clients.next == &clients) {
            /* Nobody watches: sleep until a client connects.  The next
             * one starts with fresh stats and rates. */
            last_stats_us = 0;
            n = 0;
            pthread_cond_wait(&d_cv, &d_mu);
            continue;
        }
        pthread_mutex_unlock(&d_mu);
        tick(n++);
        pthread_mutex_lock(&d_mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)DASHBOARD_TICK_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        while (!stopping && pthread_cond_timedwait(&d_cv, &d_mu, &ts) == 0) {
            /* a client connected: keep the beat */
        }
    }
    pthread_mutex_unlock(&d_mu);
    return NULL;
}

int dashboard_start(const dashboard_config *c)
{
    cfg = *c;
    snprintf(boot, sizeof boot, "%" PRIx64, (util_wall_us() ^ ((uint64_t)getpid() << 40)) & 0xffffffffffffu);
    pthread_mutex_lock(&d_mu);
    stopping = 0;
    ended = 0;
    pthread_mutex_unlock(&d_mu);
    if (pthread_create(&ticker, NULL, ticker_main, NULL) != 0)
        return -1;
    running = 1;
    return 0;
}

void dashboard_stop(void)
{
    dashboard_end_streams();
    if (!running)
        return;
    pthread_mutex_lock(&d_mu);
    stopping = 1;
    pthread_cond_broadcast(&d_cv);
    pthread_mutex_unlock(&d_mu);
    pthread_join(ticker, NULL);
    running = 0;
    pthread_mutex_lock(&d_mu);
    while (ring_len > 0) {
        event_unref(ring[ring_start]);
        ring_start = (ring_start + 1) % DASHBOARD_RING_EVENTS;
        ring_len--;
    }
    ring_bytes = 0;
    pthread_mutex_unlock(&d_mu);
}

/* ---- the page and the action ----------------------------------------------------------------- */

/* A JSON error reply, formatted. */
static void reply(introspect_reply *out, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void reply(introspect_reply *out, unsigned status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    introspect_reply_error(out, status, msg);
}

/* Is host (a Host header: NAME or NAME:PORT, [V6]:PORT) a name a DNS
 * rebinding attack cannot use: an IP address, "localhost" or a name under
 * ".localhost"?  A page of another site that rebinds its own name to
 * 127.0.0.1 is same-origin with bgserve and may send any header, but its
 * requests carry its own name in Host. */
static int host_is_local(const char *host)
{
    char name[256];
    if (host == NULL || *host == '\0' || strlen(host) >= sizeof name)
        return 0;
    if (host[0] == '[')
        return strchr(host, ']') != NULL; /* an IPv6 literal */
    snprintf(name, sizeof name, "%s", host);
    char *colon = strrchr(name, ':');
    if (colon)
        *colon = '\0';
    size_t n = strlen(name);
    if (util_strcaseeq(name, "localhost") ||
        (n > 10 && util_strcaseeq(name + n - 10, ".localhost")))
        return 1;
    struct in_addr a4;
    return inet_pton(AF_INET, name, &a4) == 1;
}

/* POST /_bgserve/tasks/ID/retry */
static void retry(const char *path, const char *(*header)(void *ctx, const char *name), void *ctx,
                  introspect_reply *out)
{
    const char *action = header(ctx, URLS_ACTION_HEADER);
    if (action == NULL || *action == '\0') {
        reply(out, 403, "dashboard actions need the header " URLS_ACTION_HEADER
              " (the page sends it; another site cannot)");
        return;
    }
    const char *host = header(ctx, "Host");
    if (!host_is_local(host)) {
        reply(out, 403, "dashboard actions are refused for Host '%s': open the dashboard at "
              "an IP address or localhost (a name could be another site's, rebound to this "
              "server)", host ? host : "");
        return;
    }
    char idpath[64];
    size_t plen = strlen(path) - (sizeof URLS_RETRY_SUFFIX - 1);
    if (plen >= sizeof idpath) {
        reply(out, 404, "no such task");
        return;
    }
    memcpy(idpath, path, plen);
    idpath[plen] = '\0';
    uint64_t id = introspect_task_id(idpath);
    if (id == 0) {
        reply(out, 404, "no such task: " URLS_TASKS "ID" URLS_RETRY_SUFFIX " takes a task id");
        return;
    }
    generation *g = generation_current();
    if (g == NULL) {
        reply(out, 503, "no plugin is loaded: nothing can run the task");
        return;
    }
    char name[256] = "";
    uint64_t nid = 0;
    int rc = tasks_retry(cfg.tasks, &g->owner, g->plugin, id, &nid, name, sizeof name);
    generation_release(g);
    switch (rc) {
    case 0: {
        json j;
        json_init(&j);
        json_obj_begin(&j);
        json_key(&j, "id");
        json_u64(&j, nid);
        json_key(&j, "retry_of");
        json_u64(&j, id);
        json_key(&j, "name");
        json_str(&j, name);
        json_obj_end(&j);
        out->status = 202;
        out->body = json_take(&j, &out->len);
        return;
    }
    case BGS_ENOTFOUND:
        reply(out, 404, "no such task: unknown id, or its record was evicted (see --keep)");
        return;
    case BGS_ESTATE:
        reply(out, 409, "task %" PRIu64 " (%s) cannot be retried: only a failed named task can",
              id, name);
        return;
    case BGS_ENOTASK:
        reply(out, 409, "the plugin loaded now has no task named '%s'", name);
        return;
    case BGS_EFULL:
    case BGS_ESHUTDOWN: { /* load: the cause and what to do, as dispatch's 503 says them */
        const char *hint;
        const char *cause = tasks_refusal(cfg.tasks, rc, &hint);
        out->headers[0].name = "Retry-After";
        out->headers[0].value = "1";
        reply(out, 503, "task %" PRIu64 " was not queued again: %s, retry later%s", id, cause, hint);
        return;
    }
    default:
        reply(out, 503, "task %" PRIu64 " was not queued again: %s", id, bgs_strerror(rc));
        return;
    }
}

int dashboard_handle(const char *method, const char *path,
                     const char *(*header)(void *ctx, const char *name), void *ctx,
                     introspect_reply *out)
{
    memset(out, 0, sizeof *out);
    size_t pl = strlen(path), sl = sizeof URLS_RETRY_SUFFIX - 1;
    if (strncmp(path, URLS_TASKS, URLS_TASKS_LEN) == 0 && pl > sl &&
        strcmp(path + pl - sl, URLS_RETRY_SUFFIX) == 0) {
        if (strcmp(method, "POST") != 0) {
            out->allow = "POST";
            reply(out, 405, "retry is a POST with the header " URLS_ACTION_HEADER);
            return 1;
        }
        retry(path, header, ctx, out);
        return 1;
    }
    if (strcmp(path, URLS_PREFIX) == 0 && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)) {
        /* /_bgserve without its slash: the page is one step away. */
        out->headers[0].name = "Location";
        out->headers[0].value = URLS_DASHBOARD;
        reply(out, 308, "the dashboard is at " URLS_DASHBOARD);
        return 1;
    }
    for (size_t i = 0; i < sizeof assets / sizeof assets[0]; i++) {
        if (strcmp(path, assets[i].path) != 0)
            continue;
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
            out->allow = "GET, HEAD";
            reply(out, 405, "the dashboard answers GET and HEAD only");
            return 1;
        }
        size_t len = (size_t)(assets[i].end - assets[i].start);
        out->status = 200;
        out->body = xmemdup(assets[i].start, len);
        out->len = len;
        out->ctype = assets[i].ctype;
        out->headers[0].name = "Content-Security-Policy";
        out->headers[0].value = CSP;
        out->headers[1].name = "X-Content-Type-Options";
        out->headers[1].value = "nosniff";
        out->headers[2].name = "Cache-Control";
        out->headers[2].value = "no-store";
        out->headers[3].name = "Referrer-Policy";
        out->headers[3].value = "no-referrer";
        return 1;
    }
    return 0;
}
