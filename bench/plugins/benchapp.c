/*
 * benchapp - the bench-only plugin: routes for the cases plugins/hello
 * does not cover.  Built to build/bench/benchapp.so by `make bench`.
 *
 *   GET /deferred  defers the response and queues one task (bgs_req_enqueue)
 *                  that completes it with "Hello, World!"; 501 when the
 *                  server has no bgs_req_enqueue yet
 *   GET /hold100   attaches 100 "park" tasks (concurrent, 64-byte payload)
 *   GET /release   lets every parked task return
 *   GET /burst?n=N attaches N "noop" tasks (default 100) and answers the
 *                  first one's id (bench/run's tasks-through-Redis case)
 *
 * The memory case runs bgserve with --workers 1: the first park task
 * holds the only worker until /release, so every other one stays queued.
 * `released` is the only shared state: written by an HTTP thread, read by
 * the worker; an atomic, so no lock.
 */
#include <bgserve.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char payload[64] = "a 64-byte payload for the no-op benchmark task.................";
static atomic_int released;

static int park(bgs_task_ctx *ctx, const void *data, size_t len)
{
    (void)data;
    (void)len;
    while (!atomic_load(&released) && !bgs_task_cancelled(ctx)) {
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static int hold100(bgs_req *req, bgs_res *res)
{
    (void)req;
    bgs_res_task_mode(res, BGS_CONCURRENT);
    for (int i = 0; i < 100; i++) {
        int rc = bgs_res_task(res, "park", payload, sizeof payload, NULL);
        if (rc != 0)
            return bgs_res_text(res, 503, bgs_strerror(rc));
    }
    return bgs_res_text(res, 200, "held\n");
}

static int release(bgs_req *req, bgs_res *res)
{
    (void)req;
    atomic_store(&released, 1);
    return bgs_res_text(res, 200, "released\n");
}

/* The payload carries the deferred handle itself. */
static int answer(bgs_task_ctx *ctx, const void *data, size_t len)
{
    bgs_deferred *d;
    if (len != sizeof d) {
        bgs_task_error(ctx, "payload is not a deferred handle");
        return 1;
    }
    memcpy(&d, data, sizeof d);
    bgs_deferred_complete(d, 200, "text/plain; charset=utf-8", "Hello, World!", 13);
    return 0;
}

static int deferred(bgs_req *req, bgs_res *res)
{
    if (bgs__api->req_enqueue == NULL)
        return bgs_res_text(res, 501, "needs bgs_req_enqueue\n");
    bgs_deferred *d = bgs_res_defer(res, 0);
    if (d == NULL)
        return 1;
    int rc = bgs_req_enqueue(req, "answer", &d, sizeof d, NULL);
    if (rc != 0) {
        bgs_deferred_complete(d, 503, "text/plain; charset=utf-8", "busy\n", 5);
        return 0;
    }
    return 0;
}

static int noop(bgs_task_ctx *ctx, const void *data, size_t len)
{
    (void)ctx;
    (void)data;
    (void)len;
    return 0;
}

static int burst(bgs_req *req, bgs_res *res)
{
    const char *ns = bgs_req_query(req, "n");
    long n = ns ? strtol(ns, NULL, 10) : 100;
    uint64_t first = 0;
    bgs_res_task_mode(res, BGS_CONCURRENT);
    for (long i = 0; i < n; i++) {
        uint64_t id;
        int rc = bgs_res_task(res, "noop", payload, sizeof payload, &id);
        if (rc != 0)
            return bgs_res_text(res, 503, bgs_strerror(rc));
        if (i == 0)
            first = id;
    }
    char body[32];
    snprintf(body, sizeof body, "%llu\n", (unsigned long long)first);
    return bgs_res_text(res, 200, body);
}

static const bgs_route routes[] = {
    BGS_GET("/burst", burst),
    BGS_GET("/deferred", deferred),
    BGS_GET("/hold100", hold100),
    BGS_GET("/release", release),
};

static const bgs_task_def tasks[] = {
    {.name = "park", .fn = park},
    {.name = "answer", .fn = answer},
    {.name = "noop", .fn = noop},
};

BGS_PLUGIN(.name = "benchapp", .version = "1.0.0",
           .routes = routes, .route_count = BGS_COUNT(routes),
           .tasks = tasks, .task_count = BGS_COUNT(tasks))
