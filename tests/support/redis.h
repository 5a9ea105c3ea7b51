/*
 * redis.h - a private redis-server for a test: on a free loopback port,
 * in its own temporary directory (no persistence unless asked), stopped
 * and removed at the end.  Also a command helper to set up and inspect
 * what the code under test wrote, and a starter for `bgserve worker`.
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

/* A loopback TCP port nobody listens on at the moment of the call. */
int h_free_port(void);

#endif
