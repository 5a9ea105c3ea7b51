/*
 * soak_app - the plugin bench/soak runs for minutes: plain answers,
 * responses with one and several tasks, deferred responses completed by
 * a task, and awaited task results.  Built by bench/soak itself.
 *
 *   GET /         "ok"
 *   GET /task     one task
 *   GET /tasks    three concurrent tasks
 *   GET /defer    a deferred response, completed by a queued task
 *   GET /await    the result of a task (bgs_res_await)
 */
#include <bgserve.h>

#include <string.h>

static int work(bgs_task_ctx *ctx, const void *p, size_t len)
{
    (void)ctx;
    volatile unsigned sum = 0;
    for (size_t i = 0; i < len; i++)
        sum += ((const unsigned char *)p)[i];
    return 0;
}

static int complete(bgs_task_ctx *ctx, const void *p, size_t len)
{
    (void)ctx;
    bgs_deferred *d;
    if (len != sizeof d)
        return -1;
    memcpy(&d, p, sizeof d);
    return bgs_deferred_complete(d, 200, "text/plain", "deferred", 8) == 0 ? 0 : -1;
}

static int answer(bgs_task_ctx *ctx, const void *p, size_t len)
{
    return bgs_task_result(ctx, 200, "text/plain", p, len);
}

static int root(bgs_req *req, bgs_res *res)
{
    (void)req;
    return bgs_res_text(res, 200, "ok");
}

static int one(bgs_req *req, bgs_res *res)
{
    (void)req;
    int rc = bgs_res_task(res, "work", "payload", 7, NULL);
    return rc == 0 ? bgs_res_text(res, 200, "ok") : bgs_res_text(res, 503, bgs_strerror(rc));
}

static int three(bgs_req *req, bgs_res *res)
{
    (void)req;
    bgs_res_task_mode(res, BGS_CONCURRENT);
    for (int i = 0; i < 3; i++) {
        int rc = bgs_res_task(res, "work", "payload", 7, NULL);
        if (rc != 0)
            return bgs_res_text(res, 503, bgs_strerror(rc));
    }
    return bgs_res_text(res, 200, "ok");
}

static int defer(bgs_req *req, bgs_res *res)
{
    bgs_deferred *d = bgs_res_defer(res, 10000);
    if (d == NULL)
        return -1;
    int rc = bgs_req_enqueue(req, "complete", &d, sizeof d, NULL);
    if (rc != 0)
        bgs_deferred_release(d);
    return 0;
}

static int awaited(bgs_req *req, bgs_res *res)
{
    (void)req;
    int rc = bgs_res_await(res, "answer", "awaited", 7, 10000, NULL);
    return rc == 0 ? 0 : bgs_res_text(res, 503, bgs_strerror(rc));
}

static const bgs_route routes[] = {
    BGS_GET("/", root),
    BGS_GET("/task", one),
    BGS_GET("/tasks", three),
    BGS_GET("/defer", defer),
    BGS_GET("/await", awaited),
};

static const bgs_task_def tasks[] = {
    {.name = "work", .fn = work},
    {.name = "complete", .fn = complete},
    {.name = "answer", .fn = answer},
};

BGS_PLUGIN(.name = "soak_app", .version = "1.0.0",
           .routes = routes, .route_count = BGS_COUNT(routes),
           .tasks = tasks, .task_count = BGS_COUNT(tasks))
