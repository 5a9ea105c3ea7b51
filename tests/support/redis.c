/*
 * redis.c - a private redis-server per test (redis.h).  The port comes
 * from binding port 0 and closing; when another process takes it before
 * redis-server binds, the start is tried again on a new port.  The rig
 * (h_rig) belongs to the test's main thread like everything here.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "redis.h"

#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int h_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void nap_ms(unsigned ms)
{
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL); /* polling interval */
}

static redisContext *connect_to(h_redis *r)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    if (r->password[0]) {
        redisReply *a = redisCommand(c, "AUTH %s", r->password);
        if (a)
            freeReplyObject(a);
    }
    return c;
}

/* 1 once the server answers PING with PONG. */
static int answers(h_redis *r)
{
    redisContext *c = connect_to(r);
    if (!c)
        return 0;
    redisReply *p = redisCommand(c, "PING");
    int ok = p && p->type == REDIS_REPLY_STATUS && strcmp(p->str, "PONG") == 0;
    if (p)
        freeReplyObject(p);
    redisFree(c);
    return ok;
}

/* Spawn redis-server on r->port; 1 when it answers, 0 when it exited
 * (e.g. the port was taken). */
static int spawn(h_redis *r)
{
    char port[16], logf[128];
    snprintf(port, sizeof port, "%d", r->port);
    snprintf(logf, sizeof logf, "%s/redis.log", r->dir);
    const char *argv[48];
    size_t n = 0;
    argv[n++] = "redis-server";
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--bind";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--dir";
    argv[n++] = r->dir;
    argv[n++] = "--logfile";
    argv[n++] = logf;
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--daemonize";
    argv[n++] = "no";
    if (r->password[0]) {
        argv[n++] = "--requirepass";
        argv[n++] = r->password;
    }
    for (size_t i = 0; r->extra[i] && n < 46; i++)
        argv[n++] = r->extra[i];
    argv[n] = NULL;
    r->pid = fork();
    assert_true(r->pid >= 0);
    if (r->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
        }
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    uint64_t end = h_now_ms() + 10000;
    while (h_now_ms() < end) {
        if (answers(r))
            return 1;
        int st;
        if (waitpid(r->pid, &st, WNOHANG) == r->pid) {
            r->pid = 0;
            return 0;
        }
        nap_ms(5);
    }
    kill(r->pid, SIGKILL);
    waitpid(r->pid, NULL, 0);
    r->pid = 0;
    return 0;
}

static void print_log(h_redis *r)
{
    char path[128];
    snprintf(path, sizeof path, "%s/redis.log", r->dir);
    char *log = h_slurp(path, NULL);
    fprintf(stderr, "redis-server log (%s):\n%s\n", path, log ? log : "(none)");
    free(log);
}

void h_redis_start(h_redis *r, const char *password, const char *const *extra)
{
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "/tmp/bgserve-redis-XXXXXX");
    assert_non_null(mkdtemp(r->dir));
    if (password)
        snprintf(r->password, sizeof r->password, "%s", password);
    for (size_t i = 0; extra && extra[i] && i + 1 < sizeof r->extra / sizeof r->extra[0]; i++)
        r->extra[i] = extra[i];
    for (int tries = 0; tries < 5; tries++) {
        r->port = h_free_port();
        if (spawn(r)) {
            snprintf(r->url, sizeof r->url, "redis://127.0.0.1:%d", r->port);
            return;
        }
    }
    print_log(r);
    fail_msg("redis-server did not start (is the Debian package redis-server installed?)");
}

static void halt(h_redis *r)
{
    if (r->pid <= 0)
        return;
    kill(r->pid, SIGTERM);
    uint64_t end = h_now_ms() + 10000;
    for (;;) {
        if (waitpid(r->pid, NULL, WNOHANG) == r->pid)
            break;
        if (h_now_ms() >= end) {
            kill(r->pid, SIGKILL);
            waitpid(r->pid, NULL, 0);
            break;
        }
        nap_ms(5);
    }
    r->pid = 0;
}

void h_redis_halt(h_redis *r) { halt(r); }

void h_redis_restart(h_redis *r)
{
    assert_int_equal(r->pid, 0);
    /* The port was ours a moment ago; give it a few tries to be free. */
    for (int tries = 0; tries < 50; tries++) {
        if (spawn(r))
            return;
        nap_ms(20);
    }
    print_log(r);
    fail_msg("redis-server did not restart on port %d", r->port);
}

void h_redis_stop(h_redis *r)
{
    halt(r);
    if (r->dir[0])
        h_rm_rf(r->dir);
    r->dir[0] = '\0';
}

static redisReply *vcmd(h_redis *r, const char *fmt, va_list ap)
{
    redisContext *c = connect_to(r);
    if (!c)
        fail_msg("cannot connect to the test's redis on port %d", r->port);
    redisReply *rep = redisvCommand(c, fmt, ap);
    redisFree(c);
    if (!rep)
        fail_msg("no reply from the test's redis to '%s'", fmt);
    return rep;
}

redisReply *h_redis_cmd(h_redis *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = vcmd(r, fmt, ap);
    va_end(ap);
    return rep;
}

long long h_redis_int(h_redis *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = vcmd(r, fmt, ap);
    va_end(ap);
    if (rep->type != REDIS_REPLY_INTEGER) {
        fprintf(stderr, "'%s' answered %s\n", fmt,
                rep->type == REDIS_REPLY_ERROR ? rep->str : "a non-integer");
        freeReplyObject(rep);
        fail_msg("expected an integer");
    }
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

void h_start_worker(h_server *w, const char *url, const char *plugin, const char *const *more,
                    const char *const *env)
{
    const char *argv[32];
    size_t n = 0;
    argv[n++] = h_build_path("bgserve");
    argv[n++] = "worker";
    argv[n++] = "--broker";
    argv[n++] = url;
    argv[n++] = "--concurrency";
    argv[n++] = "4";
    argv[n++] = "--color";
    argv[n++] = "never";
    for (size_t i = 0; more && more[i]; i++) {
        if (n >= 30)
            fail_msg("h_start_worker: too many arguments");
        argv[n++] = more[i];
    }
    argv[n++] = plugin;
    argv[n] = NULL;
    if (h_spawn(w, argv, env, "worker ready", 30000) != 0) {
        fprintf(stderr, "worker did not start:\n%s\n", w->log ? w->log : "");
        fail();
    }
}

void h_stop_worker(h_server *w)
{
    h_stop_clean(w);
    h_free(w);
}

/* ---- the rig ---------------------------------------------------------------- */

void h_rig_redis(h_rig *g, const char *const *extra, const char *logvar)
{
    memset(g, 0, sizeof *g);
    h_redis_start(&g->redis, NULL, extra);
    snprintf(g->logpath, sizeof g->logpath, "%s/ran.log", g->redis.dir);
    h_rig_env(g, "%s=%s", logvar, g->logpath);
}

void h_rig_env(h_rig *g, const char *fmt, ...)
{
    if (g->nenv >= H_RIG_ENV)
        fail_msg("h_rig_env: more than %d variables", H_RIG_ENV);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->envbuf[g->nenv], sizeof g->envbuf[g->nenv], fmt, ap);
    va_end(ap);
    g->env[g->nenv] = g->envbuf[g->nenv];
    g->env[++g->nenv] = NULL;
}

void h_rig_server(h_rig *g, const char *plugin, const char *const *more)
{
    const char *args[16];
    size_t n = 0;
    args[n++] = "--broker";
    args[n++] = g->redis.url;
    for (size_t i = 0; more && more[i]; i++) {
        if (n >= 15)
            fail_msg("h_rig_server: too many arguments");
        args[n++] = more[i];
    }
    args[n] = NULL;
    assert_int_equal(h_start_app(&g->server, plugin, args, g->env), 0);
    g->have_server = 1;
}

void h_rig_worker(h_rig *g, const char *plugin, const char *const *more)
{
    if (g->nw >= H_RIG_WORKERS)
        fail_msg("h_rig_worker: more than %d workers", H_RIG_WORKERS);
    h_start_worker(&g->w[g->nw], g->redis.url, plugin, more, g->env);
    g->nw++;
}

void h_rig_down(h_rig *g)
{
    while (g->nw > 0)
        h_stop_worker(&g->w[--g->nw]);
    if (g->have_server) {
        h_stop_clean(&g->server);
        h_free(&g->server);
        g->have_server = 0;
    }
    h_redis_stop(&g->redis);
}
