/*
 * http.h - the HTTP room: the only one that knows libmicrohttpd.
 */
#ifndef BGSERVE_HTTP_H
#define BGSERVE_HTTP_H

#include <stddef.h>
#include <stdint.h>

typedef struct http_config {
    const char *host;
    unsigned port;          /* 0: any free port */
    unsigned threads;       /* libmicrohttpd epoll thread pool size */
    unsigned timeout_s;     /* idle connection timeout */
    unsigned conn_limit;
    size_t max_body;
    int introspection;      /* serve /_bgserve/ and send Bgserve-Tasks */
    int listen_fd;          /* > 0: a bound listening socket to serve (the
                               supervisor's); 0 or -1: bind host:port */
    int announce;           /* print the listening line */
    const char *crash_page; /* while no generation serves: the crash
                               report every request gets (crashpage.h),
                               or NULL (503) */
    const char *plugin_path;
    struct tasks_engine *tasks;    /* the engine: records and stats for
                               /_bgserve/, long-polls, deliveries */
    int durable;            /* --journal, --broker: a response waits for the commit of
                               its tasks (durable.h) */
} http_config;

/* Bind and listen on host:port (0: any free port); the socket is
 * non-blocking and close-on-exec.  Returns it, or -1 with a message
 * (what failed and what to do) in err. */
int http_bind(const char *host, unsigned port, char *err, size_t errlen);

/*
 * Bind (unless given listen_fd), start libmicrohttpd and print the
 * listening line (when announce)
 * "bgserve: listening on http://HOST:PORT".  Requests are served by the
 * current generation (generation.h).  Returns 0, or -1 with a message
 * (what failed and what to do) in err.
 */
int http_start(const http_config *cfg, char *err, size_t errlen);

/*
 * The shutdown cut-over (docs/http.md): from this call on every response
 * carries Connection: close; new connections are refused (those waiting
 * in the listen backlog are reset, never read); idle keep-alive
 * connections are closed now, busy ones once their request is answered.
 * Requests in flight go on.  Main thread; safe before http_start, and
 * a second call does nothing.
 */
void http_quiesce(void);

/* After http_quiesce: wait until every connection has closed (so every
 * request that reached a handler was answered), or deadline_ms passes.
 * Returns the number of requests still in flight (cut by http_stop). */
unsigned http_wait_idle(unsigned deadline_ms);

/* Close every connection and stop the threads. */
void http_stop(void);

/* Requests received since start. */
uint64_t http_requests_total(void);

/* libmicrohttpd's version string. */
const char *http_mhd_version(void);

#endif
