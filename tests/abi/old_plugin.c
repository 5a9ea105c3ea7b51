/*
 * old_plugin - a plugin built against the frozen ABI 1.0 header
 * (tests/abi/bgserve_1_0.h), never against include/bgserve.h.  test_abi
 * loads it on the current server: an old plugin keeps working.  It uses
 * every kind of table (routes, route tasks, task defs), hooks, services
 * and the last 1.0 functions of the host table (bgs_res_await).
 */
#include "bgserve_1_0.h"

#include <stdio.h>
#include <string.h>

static int started;

static void *make_counter(void *arg)
{
    (void)arg;
    static int counter = 41;
    return &counter;
}

static int start(bgs_app *app)
{
    started = 1;
    bgs_app_set_data(app, &started);
    return bgs_app_service(app, "counter", BGS_SINGLETON, make_counter, NULL, NULL);
}

static void stop(bgs_app *app)
{
    (void)app;
    started = 0;
}

static int hello(bgs_req *req, bgs_res *res)
{
    int *flag = bgs_app_data(bgs_req_app(req));
    int *counter = bgs_req_service(req, "counter");
    bgs_res_header(res, "X-Old-Plugin", "1.0");
    return bgs_res_printf(res, "old plugin: started=%d counter=%d", flag ? *flag : -1,
                          counter ? *counter : -1);
}

static int greet(bgs_req *req, bgs_res *res)
{
    const char *g = bgs_req_query(req, "greeting");
    return bgs_res_text(res, 200, "") == 0
               ? bgs_res_printf(res, "%s, %s", g ? g : "hello", bgs_req_param(req, "name"))
               : -1;
}

static int echo(bgs_req *req, bgs_res *res)
{
    size_t len;
    const void *body = bgs_req_body(req, &len);
    bgs_res_status(res, 201);
    bgs_res_content_type(res, "application/octet-stream");
    return bgs_res_body(res, body, len);
}

static int record(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    if (len != 5 || memcmp(payload, "hello", 5) != 0) {
        bgs_task_error(ctx, "unexpected payload of %zu bytes", len);
        return -1;
    }
    return 0;
}

static int with_task(bgs_req *req, bgs_res *res)
{
    (void)req;
    uint64_t id = 0;
    int rc = bgs_res_task(res, "record", "hello", 5, &id);
    if (rc != 0)
        return bgs_res_text(res, 503, bgs_strerror(rc));
    return bgs_res_printf(res, "task %llu", (unsigned long long)id);
}

static int square(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    int v = 0;
    if (len == sizeof v)
        memcpy(&v, payload, sizeof v);
    char out[32];
    int n = snprintf(out, sizeof out, "%d", v * v);
    return bgs_task_result(ctx, 200, "text/plain", out, (size_t)n);
}

static int awaited(bgs_req *req, bgs_res *res)
{
    (void)req;
    int v = 12;
    int rc = bgs_res_await(res, "square", &v, sizeof v, 10000, NULL);
    return rc == 0 ? 0 : bgs_res_text(res, 503, bgs_strerror(rc));
}

static const bgs_route_task after_ping[] = {
    {.name = "record", .payload = "hello", .payload_len = 5},
};

static const bgs_route routes[] = {
    BGS_GET("/old", hello),
    BGS_GET("/old/greet/{name}", greet),
    BGS_POST("/old/echo", echo),
    BGS_GET("/old/task", with_task),
    BGS_GET("/old/await", awaited),
    {.method = "GET", .path = "/old/ping", .handler = hello,
     .tasks = after_ping, .task_count = BGS_COUNT(after_ping), .task_mode = BGS_CONCURRENT},
};

static const bgs_task_def tasks[] = {
    {.name = "record", .fn = record, .max_attempts = 2},
    {.name = "square", .fn = square},
};

BGS_PLUGIN(.name = "old_plugin", .version = "1.0.0",
           .routes = routes, .route_count = BGS_COUNT(routes),
           .tasks = tasks, .task_count = BGS_COUNT(tasks),
           .start = start, .stop = stop)
