/*
 * http.c - libmicrohttpd glue: the access handler, request bodies,
 * suspend/resume, the completion notice, connections and the listening
 * socket.  The only room that includes microhttpd.h.  What a request
 * means (routes, handlers, tasks, bgserve's endpoints) is dispatch.c's;
 * the request and response structs are request.c's.
 *
 * How a request travels here:
 *   uri_log      (MHD thread) allocates the per-request `exchange` and
 *                sets its request up from the raw target (request_init); it
 *                becomes *req_cls.
 *   on_request   (same thread) first call: headers are in (a request on
 *                a connection past the limit, one HTTP/1.1 forbids but
 *                libmicrohttpd passed on, and a too large Content-Length
 *                are answered here).  Later calls
 *                collect the body (up to --max-body, else 413); every
 *                request dispatches on the final call, so keep-alive
 *                connections stay open.  dispatch_request answers into
 *                the response, which send_answer queues, or asks to
 *                suspend (a deferred answer): the connection is resumed
 *                when it is final and dispatch_resumed answers.
 *                The dashboard's event stream (dispatch says
 *                DISPATCH_STREAM) is answered here with a callback
 *                response (serve_events) that reads from dashboard.c and
 *                suspends while there is nothing new.
 *   on_completed (same thread) libmicrohttpd has written the last byte
 *                (or given up): dispatch_finish settles the tasks and
 *                the generation reference, and the access line is
 *                written.
 * An exchange is touched only by the thread libmicrohttpd runs its
 * connection on, so it needs no lock.  Shared state: `daemon` and
 * `listen_fd` (written by the main thread before serving starts and at
 * shutdown), the atomic counters below, and the connection slots (one
 * per open connection, see "connections": the lists of connections
 * waiting for a request are under conns_mu, which any libmicrohttpd
 * thread and the main thread take; never held across a libmicrohttpd
 * call or a handler).
 *
 * Connection limit (on_accept, docs/http.md): bgserve's, not
 * libmicrohttpd's; past it the oldest idle keep-alive connection is
 * closed, else the new one is answered 503 or closed at once.
 *
 * Shutdown (http_quiesce, docs/http.md): `draining` makes every later
 * response say Connection: close; idle connections are closed at once
 * and busy ones when their request completes, so http_wait_idle can wait
 * for the last connection to close rather than for a moment with no
 * request in flight (a kept-alive connection could start another one
 * right after, and MHD_stop_daemon would then drop its answer).
 */
#include "http.h"

#include "dashboard.h"
#include "dispatch.h"
#include "log.h"
#include "request.h"
#include "util.h"

#include <microhttpd.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Past max_body, keep reading (and discarding) at most this much more of
 * a chunked body before giving up on the connection. */
#define DISCARD_LIMIT (64u << 20)

typedef struct conn_slot conn_slot;

/* One request on its way through libmicrohttpd: the request and its
 * response (request.h; their answer is what gets sent) and what only the
 * glue needs. */
typedef struct exchange {
    struct bgs_req req;
    struct bgs_res res;
    uint64_t start_us;
    int started;          /* on_request has seen this request */
    int too_large;
    size_t discarded;
    int responded;        /* res was queued to libmicrohttpd */
    int peer_gone;        /* the client left while suspended */
    uintptr_t uri_start;  /* where libmicrohttpd's raw target began and its */
    uintptr_t uri_end;    /* first NUL (see bad_request_line); 0: unknown */
    conn_slot *slot;      /* its connection (outlives the exchange) */
    int introspection;    /* one of bgserve's /_bgserve requests (counted apart) */
} exchange;

static http_config config;        /* written before serving starts */
static dispatch_env denv;          /* written before serving starts */
static struct MHD_Daemon *daemon_; /* main thread only */
static int listen_fd = -1;        /* main thread only */
static int quiesced;              /* main thread only: http_quiesce ran */
static uint64_t started_us;       /* written before serving starts */
static uint32_t rid_prefix;       /* written before serving starts */
static atomic_uint_fast64_t rid_counter;
static atomic_uint_fast64_t requests_total;  /* not counting /_bgserve/ */
static atomic_uint_fast64_t introspection_total; /* /_bgserve/ requests */
static atomic_uint_fast64_t errors_total;    /* plugin requests answered 5xx */
static atomic_uint in_flight;
static int nul_check;             /* libmicrohttpd < 1.0: see bad_request_line */

/* ---- connections ------------------------------------------------------------ */

/*
 * Every open connection has a conn_slot (its libmicrohttpd socket
 * context), made when libmicrohttpd reports the connection started and
 * freed when it reports it closed, which it does before it closes the
 * socket: so shutdown(slot->fd) under conns_mu never reaches a reused fd.
 *
 * A connection waits for a request from its start ("fresh": nothing read
 * yet) or from the end of its last request ("idle": kept alive) until its
 * next request line arrives (uri_log).  Waiting slots are kept in two
 * lists, oldest first.  Closing a waiting connection from any thread is
 * shutdown(fd, SHUT_RD): libmicrohttpd's next read sees end of file and
 * closes it.  Bytes the client already sent are still read first, so a
 * request that raced with the close is read and answered (with
 * Connection: close), never half-read; a request sent after it is never
 * read and the client sees the connection closed (safe to retry).
 * libmicrohttpd reads only while it waits for a request, never while a
 * handler runs or a response is written, so a request that started is
 * never cut by this.
 *
 * The limit (--max-connections) is bgserve's, in on_accept, not
 * libmicrohttpd's: at its own limit libmicrohttpd 0.9.75 stops accepting,
 * and new clients wait in the listen backlog, unanswered, until a
 * connection closes.  Past the limit bgserve closes the oldest idle
 * keep-alive connection to make room; with none, it accepts up to
 * `overflow` more connections only to answer their first request 503
 * with Retry-After (and a short timeout), and closes any beyond at once.
 */
struct conn_slot {
    conn_slot *prev, *next;   /* its list (conns_mu) */
    int list;                 /* LIST_NONE, LIST_FRESH or LIST_IDLE (conns_mu) */
    int fd;
    int overflow;             /* past the limit: its request is answered 503 */
    atomic_int closing;       /* read side shut: answer with Connection: close */
};

enum { LIST_NONE = -1, LIST_FRESH = 0, LIST_IDLE = 1 };

static pthread_mutex_t conns_mu = PTHREAD_MUTEX_INITIALIZER;
static struct { conn_slot *head, *tail; } waiting[2]; /* conns_mu */
static atomic_uint conns_open;            /* written under conns_mu */
static atomic_int draining;               /* set once, by http_quiesce */
static unsigned conn_limit;               /* written before serving starts */
static unsigned conn_overflow;            /* written before serving starts */
static atomic_uint_fast64_t conns_rejected; /* past the limit: 503 or closed */
static atomic_uint_fast64_t conns_evicted;  /* idle ones closed to make room */
static atomic_uint_fast64_t limit_logged_us; /* the last "limit reached" line */
/* on_accept's verdict for the connection libmicrohttpd is about to start
 * on this thread (the accept and the start run in one call). */
static _Thread_local int accept_overflow;

/* Connections past the limit that are accepted to be answered 503:
 * OVERFLOW_MIN + a sixteenth of the limit. */
#define OVERFLOW_MIN 16u
/* Files the process needs besides its connections: the listening socket,
 * a wake-up fd per HTTP thread (counted apart), stdio,
 * inotify, the plugin's own files. */
#define FD_SPARE 64u
/* A connection past the limit waits at most this long for its request. */
#define OVERFLOW_TIMEOUT_S 2u
/* At most one "connection limit reached" line per this many us. */
#define LIMIT_LOG_EVERY_US (10u * 1000000u)

static void list_push(conn_slot *c, int list)
{
    c->prev = waiting[list].tail;
    c->next = NULL;
    if (waiting[list].tail)
        waiting[list].tail->next = c;
    else
        waiting[list].head = c;
    waiting[list].tail = c;
    c->list = list;
}

static void list_remove(conn_slot *c)
{
    if (c->list == LIST_NONE)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        waiting[c->list].head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        waiting[c->list].tail = c->prev;
    c->prev = c->next = NULL;
    c->list = LIST_NONE;
}

/* Close a waiting connection (see above).  Under conns_mu. */
static void close_waiting(conn_slot *c)
{
    list_remove(c);
    atomic_store(&c->closing, 1);
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_RD);
}

/* The connection waits for a request (on `list`): keep it, or close it
 * when the server is stopping. */
static void conn_waiting(conn_slot *c, int list)
{
    pthread_mutex_lock(&conns_mu);
    if (atomic_load(&c->closing)) {
        /* closing already */
    } else if (atomic_load(&draining)) {
        close_waiting(c);
    } else {
        list_remove(c);
        list_push(c, list);
    }
    pthread_mutex_unlock(&conns_mu);
}

/* One line, at most every LIMIT_LOG_EVERY_US, when clients are turned
 * away. */
static void note_rejected(unsigned open)
{
    uint64_t n = atomic_fetch_add(&conns_rejected, 1) + 1;
    uint64_t last = atomic_load(&limit_logged_us);
    uint64_t now = util_now_us();
    /* `last` may be a later reading than `now`, taken by another thread
     * between the two loads: `now < last + ...`, never `now - last`,
     * which would wrap and let a second line through. */
    if ((last != 0 && now < last + LIMIT_LOG_EVERY_US) ||
        !atomic_compare_exchange_strong(&limit_logged_us, &last, now))
        return;
    log_msg(BGS_LOG_WARN, "connection limit reached: %u connections open, none idle "
            "(--max-connections %u); new clients get 503 with Retry-After: 1, or are closed "
            "at once past %u; %llu turned away so far (/_bgserve/stats: connections.rejected). "
            "Raise --max-connections, or lower --timeout so idle clients are closed sooner",
            open, conn_limit, conn_limit + conn_overflow, (unsigned long long)n);
}

/* MHD_AcceptPolicyCallback, on the libmicrohttpd thread that accepted. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    (void)cls;
    (void)addr;
    (void)addrlen;
    enum { ACCEPT, OVERFLOW, REFUSE } v = ACCEPT;
    pthread_mutex_lock(&conns_mu);
    unsigned open = atomic_load(&conns_open);
    if (open < conn_limit || atomic_load(&draining)) {
        v = ACCEPT;
    } else if (waiting[LIST_IDLE].head) {
        close_waiting(waiting[LIST_IDLE].head); /* the oldest idle keep-alive one */
        atomic_fetch_add(&conns_evicted, 1);
    } else {
        v = open < conn_limit + conn_overflow ? OVERFLOW : REFUSE;
    }
    pthread_mutex_unlock(&conns_mu);
    accept_overflow = v == OVERFLOW;
    if (v != ACCEPT)
        note_rejected(open);
    return v == REFUSE ? MHD_NO : MHD_YES;
}

/* libmicrohttpd thread of the connection. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        conn_slot *c = xcalloc(1, sizeof *c);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        c->fd = ci ? ci->connect_fd : -1;
        c->list = LIST_NONE;
        c->overflow = accept_overflow;
        accept_overflow = 0;
        atomic_init(&c->closing, 0);
        if (c->overflow && config.timeout_s > OVERFLOW_TIMEOUT_S)
            MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, OVERFLOW_TIMEOUT_S);
        pthread_mutex_lock(&conns_mu);
        atomic_fetch_add(&conns_open, 1);
        pthread_mutex_unlock(&conns_mu);
        *socket_context = c;
        conn_waiting(c, LIST_FRESH);
        return;
    }
    conn_slot *c = *socket_context;
    if (c == NULL)
        return;
    *socket_context = NULL;
    pthread_mutex_lock(&conns_mu);
    list_remove(c);
    atomic_fetch_sub(&conns_open, 1);
    pthread_mutex_unlock(&conns_mu);
    free(c);
}

/* A request line arrived on conn: its connection is busy until
 * on_completed.  Returns its slot (NULL: none known). */
static conn_slot *conn_busy(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_slot *c = ci ? ci->socket_context : NULL;
    if (c == NULL)
        return NULL;
    pthread_mutex_lock(&conns_mu);
    list_remove(c);
    pthread_mutex_unlock(&conns_mu);
    return c;
}

/* Must the response on ex's connection close it? */
static int must_close(const exchange *ex)
{
    return atomic_load(&draining) || (ex->slot && atomic_load(&ex->slot->closing));
}

/* ---- small helpers -------------------------------------------------------- */

const char *http_mhd_version(void)
{
    return MHD_get_version();
}

uint64_t http_requests_total(void)
{
    return atomic_load(&requests_total);
}

/* /_bgserve/stats' counters (dispatch_env and dashboard_config.counters). */
static void fill_counters(introspect_counters *c)
{
    *c = (introspect_counters){
        .requests = atomic_load(&requests_total),
        .errors = atomic_load(&errors_total),
        .introspection_requests = atomic_load(&introspection_total),
        .uptime_s = (util_now_us() - started_us) / 1000000u,
        .conns_open = atomic_load(&conns_open),
        .in_flight = atomic_load(&in_flight),
        .conns_limit = conn_limit,
        .conns_rejected = atomic_load(&conns_rejected),
        .conns_evicted = atomic_load(&conns_evicted),
        .tasks = config.tasks,
    };
}

static const char *lookup_header(void *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

static void resume_conn(void *conn)
{
    MHD_resume_connection(conn);
}

/* The per-request formatting below avoids printf: on GET / it was a
 * measurable share of bgserve's own CPU (bench/README.md). */

/* "a.b.c.d" into buf (at least 16 bytes). */
static void format_ipv4(const unsigned char *a, char *buf)
{
    char *p = buf;
    for (int i = 0; i < 4; i++) {
        unsigned v = a[i];
        if (v >= 100)
            *p++ = (char)('0' + v / 100);
        if (v >= 10)
            *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        *p++ = i < 3 ? '.' : '\0';
    }
}

/* The request id: the 8-hex-digit prefix, then n in hex (at least 8
 * digits), cut to cap - 1 characters like snprintf("%08x%08llx"). */
static void format_rid(char *out, size_t cap, uint32_t prefix, uint64_t n)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[24];
    size_t len = 0;
    unsigned digits = 8;
    while (digits < 16 && (n >> (digits * 4)) != 0)
        digits++;
    for (int i = 7; i >= 0; i--)
        tmp[len++] = hex[(prefix >> (i * 4)) & 15u];
    for (int i = (int)digits - 1; i >= 0; i--)
        tmp[len++] = hex[(n >> (i * 4)) & 15u];
    if (len > cap - 1)
        len = cap - 1;
    memcpy(out, tmp, len);
    out[len] = '\0';
}

static void format_remote(struct MHD_Connection *conn, char *buf, size_t len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    buf[0] = '-';
    buf[1] = '\0';
    if (ci == NULL || ci->client_addr == NULL)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET && len >= INET_ADDRSTRLEN)
        format_ipv4((const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr, buf);
    else if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, buf, (socklen_t)len);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, buf, (socklen_t)len);
}

static void add_header(struct MHD_Response *r, const char *name, const char *value)
{
    if (MHD_add_response_header(r, name, value) != MHD_YES)
        log_msg(BGS_LOG_WARN, "libmicrohttpd refused response header '%s'", name);
}

/* Queue the answer in ex->res: its status, body (handed to
 * libmicrohttpd, which frees it), content type and headers. */
static enum MHD_Result send_answer(struct MHD_Connection *conn, exchange *ex)
{
    struct MHD_Response *r;
    struct bgs_res *res = &ex->res;
    const char *ctype = response_content_type(res);
    size_t len;
    char *body = response_take_body(res, &len);
    if (len > 0)
        r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    else {
        free(body);
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    if (r == NULL)
        return MHD_NO;
    if (ctype)
        add_header(r, "Content-Type", ctype);
    add_header(r, "X-Request-Id", ex->req.id);
    for (size_t i = 0; i < res->nheaders; i++)
        add_header(r, res->headers[i].name, res->headers[i].value);
    if (res->close || must_close(ex))
        add_header(r, "Connection", "close");
    ex->responded = 1;
    enum MHD_Result rc = MHD_queue_response(conn, res->status, r);
    MHD_destroy_response(r);
    return rc;
}

/* An answer the glue gives itself, before dispatch. */
static enum MHD_Result send_text(struct MHD_Connection *conn, exchange *ex,
                                 unsigned status, const char *text, int close_conn)
{
    response_set_text(&ex->res, status, text);
    ex->res.close = close_conn;
    return send_answer(conn, ex);
}

/* ---- libmicrohttpd callbacks ---------------------------------------------- */

static void *uri_log(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)cls;
    exchange *ex = xcalloc(1, sizeof *ex);
    ex->slot = conn_busy(conn);
    ex->start_us = util_now_us();
    if (uri != NULL && nul_check) {
        ex->uri_start = (uintptr_t)uri;
        ex->uri_end = (uintptr_t)(uri + strlen(uri));
    }
    request_init(&ex->req, &ex->res, uri ? uri : "/");
    uint64_t n = atomic_fetch_add_explicit(&rid_counter, 1, memory_order_relaxed) + 1;
    char rid[sizeof ex->req.id];
    format_rid(rid, sizeof rid, rid_prefix, n);
    request_set_id(&ex->req, rid);
    atomic_fetch_add(&in_flight, 1);
    ex->introspection = dispatch_is_introspection(&denv, ex->req.url);
    atomic_fetch_add_explicit(ex->introspection ? &introspection_total : &requests_total, 1,
                              memory_order_relaxed);
    return ex;
}

/* Did the client close its side while we held the connection?  A write
 * into a closed socket still succeeds once, so libmicrohttpd alone would
 * report such a response as delivered. */
static int peer_gone(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL)
        return 0;
    char c;
    ssize_t n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* ---- the dashboard's event stream (dashboard.h) ---------------------------- */

/* A stream's reader: libmicrohttpd calls it whenever it can send more.
 * With nothing to send the connection is suspended until the dashboard
 * wakes it (resume_conn); a wake that comes before the suspension
 * cancels it (libmicrohttpd), and the reader is simply called again. */
typedef struct sse_stream {
    dashboard_client *client;
    struct MHD_Connection *conn;
} sse_stream;

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    sse_stream *s = cls;
    long n = dashboard_client_read(s->client, buf, max);
    if (n > 0)
        return n;
    if (n < 0)
        return MHD_CONTENT_READER_END_OF_STREAM;
    MHD_suspend_connection(s->conn);
    return 0;
}

static void sse_free(void *cls)
{
    sse_stream *s = cls;
    dashboard_client_free(s->client);
    free(s);
}

static enum MHD_Result serve_events(struct MHD_Connection *conn, exchange *ex)
{
    sse_stream *s = xcalloc(1, sizeof *s);
    s->conn = conn;
    s->client = dashboard_client_new(lookup_header(conn, "Last-Event-ID"), resume_conn, conn);
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384,
                                                               sse_read, s, sse_free);
    if (r == NULL) {
        sse_free(s);
        return MHD_NO;
    }
    add_header(r, "Content-Type", "text/event-stream");
    add_header(r, "Cache-Control", "no-store");
    add_header(r, "X-Request-Id", ex->req.id);
    if (must_close(ex))
        add_header(r, "Connection", "close");
    ex->res.status = 200;
    ex->responded = 1;
    enum MHD_Result rc = MHD_queue_response(conn, 200, r);
    MHD_destroy_response(r);
    return rc;
}

/* Send what dispatch answered, or stream the dashboard's events, or
 * suspend the connection until the deferred answer is final. */
static enum MHD_Result answer_dispatched(struct MHD_Connection *conn, exchange *ex, int how)
{
    if (how == DISPATCH_ANSWERED)
        return send_answer(conn, ex);
    if (how == DISPATCH_STREAM)
        return serve_events(conn, ex);
    /* Answer later: hold no HTTP thread meanwhile. */
    MHD_suspend_connection(conn);
    dispatch_arm(&ex->res);
    return MHD_YES;
}

/* Called when libmicrohttpd runs the access handler again after a
 * deferred response was resumed. */
static enum MHD_Result answer_deferred(struct MHD_Connection *conn, exchange *ex)
{
    if (peer_gone(conn)) {
        ex->peer_gone = 1;
        return MHD_NO; /* close: nobody is there to answer */
    }
    return answer_dispatched(conn, ex, dispatch_resumed(&denv, &ex->req, &ex->res));
}

/* The longest request line bad_request_line believes: libmicrohttpd keeps
 * the whole request head in a per-connection pool far smaller than this. */
#define REQUEST_LINE_MAX (1u << 20)

/* What libmicrohttpd 0.9.75 lets through that HTTP/1.1 forbids and bgserve
 * can still see, answered 400 before routing (docs/http.md lists what
 * only libmicrohttpd sees):
 *   - a NUL byte in the request target: libmicrohttpd hands over the
 *     target cut at the NUL ("GET /t\0abc" would be routed to /t).  In
 *     0.9.x the version string follows the raw target in the same buffer,
 *     so a version that starts past the first NUL + 1 means the target
 *     went on after a NUL.  libmicrohttpd 1.0 refuses such a request line
 *     itself, and the check is off there (nul_check).
 *   - an HTTP/1.1 request without Host (RFC 9112 section 3.2).
 * Returns the 400 body, or NULL when the request is fine. */
static const char *bad_request_line(struct MHD_Connection *conn, const exchange *ex,
                                    const char *version)
{
    if (ex->uri_end != 0 && version[0] != '\0') {
        uintptr_t v = (uintptr_t)version;
        if (v > ex->uri_end + 1 && v - ex->uri_start < REQUEST_LINE_MAX)
            return "Bad Request: NUL byte in the request target\n";
    }
    if (strncmp(version, "HTTP/1.", 7) == 0 && strcmp(version + 7, "0") != 0 &&
        lookup_header(conn, "Host") == NULL)
        return "Bad Request: an HTTP/1.1 request needs a Host header\n";
    return NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    (void)cls;
    (void)url;
    exchange *ex = *req_cls;
    if (ex == NULL) /* no uri_log call: cannot happen with our options */
        return MHD_NO;

    if (!ex->started) {
        char remote[sizeof ex->req.remote];
        ex->started = 1;
        format_remote(conn, remote, sizeof remote);
        request_set_origin(&ex->req, &(request_origin){.method = method, .header_fn = lookup_header,
                                               .header_ctx = conn, .resume_fn = resume_conn,
                                               .resume_ctx = conn, .remote = remote});
        if (ex->slot && ex->slot->overflow) {
            response_add_header(&ex->res, "Retry-After", "1");
            return send_text(conn, ex, 503, "Service Unavailable: the server is at its connection "
                             "limit (--max-connections), retry later\n", 1);
        }
        const char *bad = bad_request_line(conn, ex, version ? version : "");
        if (bad)
            return send_text(conn, ex, 400, bad, 1);
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno || *end || end == cl)
                return send_text(conn, ex, 400, "Bad Request: invalid Content-Length\n", 1);
            if (v > config.max_body)
                return send_text(conn, ex, 413, "Payload Too Large\n", 1);
        }
        /* Dispatch on the final call, also without a body: libmicrohttpd
         * 0.9.75 closes the connection after a response queued while the
         * request is still being read (this first call), which cost every
         * request a new TCP connection (bench/README.md). */
        return MHD_YES;
    }

    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (ex->too_large) {
            ex->discarded += n;
            return ex->discarded > DISCARD_LIMIT ? MHD_NO : MHD_YES;
        }
        if (ex->req.body_len + n > config.max_body) {
            ex->too_large = 1;
            request_body_drop(&ex->req);
            return MHD_YES;
        }
        request_body_append(&ex->req, upload_data, n);
        return MHD_YES;
    }

    if ((ex->res.deferred || ex->res.held) && !ex->responded) /* resumed */
        return answer_deferred(conn, ex);
    if (ex->responded)
        return MHD_YES;
    if (ex->too_large)
        return send_text(conn, ex, 413, "Payload Too Large\n", 1);
    return answer_dispatched(conn, ex, dispatch_request(&denv, &ex->req, &ex->res));
}

static const char *termination_note(enum MHD_RequestTerminationCode toe)
{
    switch (toe) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK: return NULL;
    case MHD_REQUEST_TERMINATED_WITH_ERROR: return "connection error";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return "timed out";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return "server shutdown";
    case MHD_REQUEST_TERMINATED_READ_ERROR: return "client aborted";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT: return "client aborted";
    default: return "not delivered";
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    exchange *ex = *req_cls;
    if (ex == NULL)
        return;
    *req_cls = NULL;
    /* Completed means the last byte was written, so a response was sent. */
    int delivered = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && !ex->peer_gone && ex->responded;
    uint64_t duration_us = util_now_us() - ex->start_us;
    dispatch_finish(&ex->req, &ex->res, ex->responded, delivered, duration_us);
    if (ex->started) {
        log_access_rec rec = {
            .method = ex->req.method ? ex->req.method : "-",
            .path = ex->req.url,
            .status = ex->responded ? ex->res.status : 0,
            .duration_us = duration_us,
            .bytes = ex->responded ? ex->res.body_len : 0,
            .request_id = ex->req.id,
            .note = ex->peer_gone ? "client left while the response was deferred"
                    : ex->responded ? termination_note(toe) : "no response",
        };
        log_access(&rec);
        if (!ex->introspection && ex->responded && ex->res.status >= 500)
            atomic_fetch_add_explicit(&errors_total, 1, memory_order_relaxed);
    }
    if (ex->slot)
        conn_waiting(ex->slot, LIST_IDLE);
    request_free(&ex->req);
    response_free(&ex->res);
    free(ex);
    atomic_fetch_sub(&in_flight, 1);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char buf[512];
    (void)cls;
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    log_msg(BGS_LOG_DEBUG, "libmicrohttpd: %s", buf);
}

/* ---- listening -------------------------------------------------------------- */

static unsigned overflow_for(unsigned limit)
{
    return OVERFLOW_MIN + limit / 16;
}

/* Each connection is a file descriptor.  Raise the soft RLIMIT_NOFILE to
 * what --max-connections needs (Debian's default soft limit, 1024, is
 * below the default limit's need); when the hard limit is lower, serve
 * fewer connections and say so, rather than fail at accept() later (then
 * libmicrohttpd stops accepting until a connection closes: a silent
 * hang). */
static void fit_fd_limit(unsigned threads)
{
    rlim_t spare = FD_SPARE + 2u * (threads > 1 ? threads : 1);
    rlim_t want = (rlim_t)conn_limit + conn_overflow + spare;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
        return;
    struct rlimit nr = rl;
    nr.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &nr) == 0)
        rl.rlim_cur = nr.rlim_cur;
    if (rl.rlim_cur >= want)
        return;
    /* limit + overflow_for(limit) must fit in what is left */
    rlim_t room = rl.rlim_cur > spare + OVERFLOW_MIN ? rl.rlim_cur - spare - OVERFLOW_MIN : 0;
    unsigned fit = (unsigned)(room * 16 / 17);
    if (fit < 1)
        fit = 1;
    log_msg(BGS_LOG_WARN, "--max-connections %u needs about %llu open files, but this process may "
            "open at most %llu (its hard limit, `ulimit -Hn`): serving at most %u connections. "
            "Raise the hard limit (ulimit -Hn, systemd's LimitNOFILE=) or lower --max-connections",
            conn_limit, (unsigned long long)want, (unsigned long long)rl.rlim_cur, fit);
    conn_limit = fit;
    conn_overflow = overflow_for(fit);
}


/* "HOST:PORT" (or "[V6]:PORT") of a bound socket. */
static void socket_name(int fd, char *hostport, size_t hplen)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    memset(&ss, 0, sizeof ss);
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    char addr[INET6_ADDRSTRLEN] = "?";
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof addr);
        snprintf(hostport, hplen, "[%s]:%u", addr, ntohs(s6->sin6_port));
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof addr);
        snprintf(hostport, hplen, "%s:%u", addr, ntohs(s4->sin_port));
    }
}

int http_bind(const char *host, unsigned port_no, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char port[16];
    snprintf(port, sizeof port, "%u", port_no);
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "bgserve: cannot resolve --host '%s': %s\n"
                 "  fix: give an IP address such as 127.0.0.1 or ::1, or a resolvable name",
                 host, gai_strerror(gai));
        return -1;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "bgserve: cannot listen on %s port %u: %s\n"
                 "  fix: %s", host, port_no, strerror(saved),
                 saved == EADDRINUSE ? "another program uses that port: stop it, or pick another with --port (0 picks a free one)"
                 : saved == EACCES ? "ports below 1024 need privileges: use a port >= 1024"
                 : "check --host and --port");
        return -1;
    }
    return fd;
}

int http_start(const http_config *cfg, char *err, size_t errlen)
{
    char hostport[INET6_ADDRSTRLEN + 16];
    config = *cfg;
    denv = (dispatch_env){.introspection = cfg->introspection, .crash_page = cfg->crash_page,
                          .plugin_path = cfg->plugin_path, .counters = fill_counters,
                          .tasks = cfg->tasks, .durable = cfg->durable};
    started_us = util_now_us();
    nul_check = strncmp(MHD_get_version(), "0.", 2) == 0;
    conn_limit = cfg->conn_limit ? cfg->conn_limit : 1;
    conn_overflow = overflow_for(conn_limit);
    fit_fd_limit(cfg->threads);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    rid_prefix = (uint32_t)(ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 8) ^ ((uint64_t)getpid() << 16));

    listen_fd = cfg->listen_fd > 0 ? cfg->listen_fd : http_bind(cfg->host, cfg->port, err, errlen);
    if (listen_fd < 0)
        return -1;
    socket_name(listen_fd, hostport, sizeof hostport);

    struct MHD_OptionItem ops[16];
    size_t n = 0;
    ops[n++] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, listen_fd, NULL};
    if (cfg->threads > 1) /* a pool of 1 is no pool: libmicrohttpd warns */
        ops[n++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, (intptr_t)cfg->threads, NULL};
    ops[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)cfg->timeout_s, NULL};
    /* bgserve's own limit is in on_accept; libmicrohttpd's (split evenly
     * over its threads) must never be reached, or it stops accepting. */
    unsigned mhd_threads = cfg->threads > 1 ? cfg->threads : 1;
    ops[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT,
                                       (intptr_t)(conn_limit + conn_overflow + 1) * mhd_threads, NULL};
    ops[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

    /* Before libmicrohttpd: a client waiting in the backlog (a page
     * reconnecting after a crash) may ask for the event stream at once. */
    if (cfg->introspection && dashboard_start(&(dashboard_config){.counters = fill_counters, .tasks = config.tasks}) != 0) {
        close(listen_fd);
        listen_fd = -1;
        snprintf(err, errlen, "bgserve: cannot start the dashboard's thread\n"
                 "  fix: the system is out of threads or memory; or run with --no-introspection");
        return -1;
    }
    /* poll(2), not epoll: in a thread pool, libmicrohttpd 0.9.75's
     * MHD_quiesce_daemon removes the listening socket from each worker's
     * epoll set while that worker may be removing it itself (it does once
     * it sees was_quiesced); whichever loses gets ENOENT and calls
     * MHD_PANIC, so a SIGTERM under load could abort the server before it
     * said "stopping".  With poll a quiesced worker just leaves the socket
     * out of its next poll set (and its accept returns at once). */
    unsigned flags = MHD_USE_POLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    /* The logger first: libmicrohttpd reports options given before it on
     * stderr as "MHD_OPTION_EXTERNAL_LOGGER is not the first option". */
    daemon_ = MHD_start_daemon(
        flags, 0, on_accept, NULL, on_request, NULL,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL,
        MHD_OPTION_ARRAY, ops,
        MHD_OPTION_URI_LOG_CALLBACK, uri_log, NULL,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
        MHD_OPTION_END);
    if (daemon_ == NULL) {
        dashboard_stop();
        close(listen_fd);
        listen_fd = -1;
        snprintf(err, errlen, "bgserve: libmicrohttpd %s could not start on %s\n"
                 "  fix: run with BGSERVE_DEBUG=1 to see libmicrohttpd's reason",
                 MHD_get_version(), hostport);
        return -1;
    }
    /* Exactly this line: scripts and tests parse it. */
    char line[128];
    int ln = snprintf(line, sizeof line, "bgserve: listening on http://%s\n", hostport);
    if (cfg->announce && write(2, line, (size_t)ln) < 0) {
        /* stderr closed: nothing else to tell */
    }
    return 0;
}

void http_quiesce(void)
{
    /* From here on every response says Connection: close (must_close). */
    atomic_store(&draining, 1);
    if (daemon_ == NULL || quiesced) {
        dashboard_end_streams();
        return;
    }
    quiesced = 1;
    /* The quiesce comes before anything that wakes a libmicrohttpd thread
     * (ending the event streams resumes their connections).  With poll
     * (http_start) the quiesce has no race with the workers; on an epoll
     * pool it had one that aborted the process. */
    MHD_socket fd = MHD_quiesce_daemon(daemon_);
    /* Refuse new clients at once (shutting a listening socket down resets
     * the connections waiting in its backlog: never read, safe to retry),
     * but close it only in http_stop, after MHD_stop_daemon:
     * libmicrohttpd's pool threads may still be polling it (ThreadSanitizer
     * saw the race). */
    if (fd != MHD_INVALID_SOCKET)
        shutdown(fd, SHUT_RDWR);
    listen_fd = fd == MHD_INVALID_SOCKET ? -1 : (int)fd;
    dashboard_end_streams(); /* event streams end: their connections close */
    /* Connections waiting for a request close now; busy ones when their
     * request is answered (conn_waiting). */
    pthread_mutex_lock(&conns_mu);
    for (int l = LIST_FRESH; l <= LIST_IDLE; l++)
        while (waiting[l].head)
            close_waiting(waiting[l].head);
    pthread_mutex_unlock(&conns_mu);
}

unsigned http_wait_idle(unsigned deadline_ms)
{
    /* After the cut-over a connection with no request in progress is
     * closing already, so "no connection left" is "every request that
     * reached a handler has been answered". */
    uint64_t end = util_now_us() + (uint64_t)deadline_ms * 1000u;
    while (atomic_load(&conns_open) > 0 && util_now_us() < end) {
        struct timespec ts = {0, 2 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return atomic_load(&in_flight);
}

void http_stop(void)
{
    dashboard_stop(); /* no wake-up may reach libmicrohttpd once it stops */
    if (daemon_ == NULL)
        return;
    MHD_stop_daemon(daemon_);
    daemon_ = NULL;
    if (listen_fd >= 0)
        close(listen_fd);
    listen_fd = -1;
}
