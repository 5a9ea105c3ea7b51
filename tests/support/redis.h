/*
 * redis.h - a private redis-server for a test: on a free loopback port,
 * in its own temporary directory (no persistence unless asked), stopped
 * and removed at the end.  Also a command helper to set up and inspect
 * what the code under test wrote, a starter for `bgserve worker`, and
 * the rig of the broker's end-to-end tests (h_rig: a redis-server, a
 * server and workers on it, stopped together).
 *
 * The server dies with the test process (PR_SET_PDEATHSIG), so a failed
 * test never leaves one behind.  Functions fail the test (cmocka) when
 * redis-server cannot start; they run on the test's main thread.
 */
#ifndef BGSERVE_TEST_REDIS_H
#define BGSERVE_TEST_REDIS_H

#include "harness.h"

#include <hiredis/hiredis.h>
#include <sys/types.h>

typedef struct h_redis {
    pid_t pid;               /* 0 while stopped */
    int port;
    char dir[64];            /* its --dir, with redis.log inside */
    char url[128];           /* "redis://127.0.0.1:PORT" (no password) */
    char password[64];       /* "" for none (--requirepass) */
    const char *extra[16];   /* extra redis-server arguments, kept for restarts */
} h_redis;

/* Start redis-server with the extra arguments (NULL-terminated, may be
 * NULL; the strings must outlive r); password: NULL or a --requirepass.
 * Waits until it answers PING. */
void h_redis_start(h_redis *r, const char *password, const char *const *extra);

/* Stop it (SIGTERM; SIGKILL past a deadline) and keep its directory and
 * port, so h_redis_restart brings the same server back. */
void h_redis_halt(h_redis *r);
void h_redis_restart(h_redis *r);

/* Stop it and remove its directory. */
void h_redis_stop(h_redis *r);

/* Run one command (hiredis format) on a fresh connection; the reply
 * (freeReplyObject it), failing the test when there is none. */
redisReply *h_redis_cmd(h_redis *r, const char *fmt, ...);
/* The same for a command answering an integer. */
long long h_redis_int(h_redis *r, const char *fmt, ...);

/* Start `BGSERVE_BUILD/bgserve worker --broker URL --concurrency 4
 * --color never MORE... PLUGIN` (more: NULL-terminated, may be NULL; env
 * as for h_spawn) and wait for its "worker ready" line; fails the test
 * with the worker's log when it does not come. */
void h_start_worker(h_server *w, const char *url, const char *plugin, const char *const *more,
                    const char *const *env);

/* h_stop_clean a worker (exit 0, no sanitizer report, its log printed
 * otherwise) and h_free it. */
void h_stop_worker(h_server *w);

/* ---- the rig ---------------------------------------------------------------- */

#define H_RIG_WORKERS 3
#define H_RIG_ENV 4

/* A redis-server, the file the fixture logs its runs to (in the
 * server's directory) and the environment of every process started on
 * it; the server (while have_server) and the workers w[0..nw) started
 * on it.  h_rig_down stops whatever of these is up. */
typedef struct h_rig {
    h_redis redis;
    char logpath[128];               /* REDIS_DIR/ran.log */
    char envbuf[H_RIG_ENV][160];     /* what env[] points at */
    const char *env[H_RIG_ENV + 1];  /* "NAME=value", NULL-terminated */
    size_t nenv;
    h_server server;
    int have_server;
    h_server w[H_RIG_WORKERS];
    int nw;
} h_rig;

/* Zero g, start its redis-server (extra as for h_redis_start) and put
 * "logvar=LOGPATH" in its environment; nothing else started yet. */
void h_rig_redis(h_rig *g, const char *const *extra, const char *logvar);

/* Add "NAME=value" (a printf format) to g's environment; fails the test
 * past H_RIG_ENV entries. */
void h_rig_env(h_rig *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Start plugin as g->server with "--broker URL" and more (NULL-terminated,
 * may be NULL); fails the test with its log when it does not start. */
void h_rig_server(h_rig *g, const char *plugin, const char *const *more);

/* Start a worker on g's redis (h_start_worker) as g->w[g->nw++]. */
void h_rig_worker(h_rig *g, const char *plugin, const char *const *more);

/* Stop the workers, the server (each clean, as h_stop_worker) and
 * redis-server, removing its directory. */
void h_rig_down(h_rig *g);

/* A loopback TCP port nobody listens on at the moment of the call. */
int h_free_port(void);

#endif
