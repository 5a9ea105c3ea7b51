/*
 * hello - the smallest bgserve app; benchmarks use it.
 *
 *   GET /        200 "Hello, World!"
 *   GET /task    the same, plus one no-op task with a 64-byte payload
 *   GET /tasks4  the same, plus four such tasks
 */
#include <bgserve.h>

static const char payload[64] = "a 64-byte payload for the no-op benchmark task.................";

static int noop(bgs_task_ctx *ctx, const void *data, size_t len)
{
    (void)ctx;
    (void)data;
    (void)len;
    return 0;
}

static int hello(bgs_req *req, bgs_res *res)
{
    (void)req;
    return bgs_res_text(res, 200, "Hello, World!");
}

static int with_tasks(bgs_res *res, int n)
{
    for (int i = 0; i < n; i++) {
        int rc = bgs_res_task(res, "noop", payload, sizeof payload, NULL);
        if (rc == BGS_EFULL || rc == BGS_ESHUTDOWN) /* load: come back later */
            return bgs_res_text(res, 503, bgs_strerror(rc));
        if (rc != 0) /* a bug: bgserve printed a warning; 500 */
            return rc;
    }
    return bgs_res_text(res, 200, "Hello, World!");
}

static int one_task(bgs_req *req, bgs_res *res)
{
    (void)req;
    return with_tasks(res, 1);
}

static int four_tasks(bgs_req *req, bgs_res *res)
{
    (void)req;
    bgs_res_task_mode(res, BGS_CONCURRENT);
    return with_tasks(res, 4);
}

static const bgs_route routes[] = {
    BGS_GET("/", hello),
    BGS_GET("/task", one_task),
    BGS_GET("/tasks4", four_tasks),
};

static const bgs_task_def tasks[] = {
    {.name = "noop", .fn = noop},
};

BGS_PLUGIN(.name = "hello", .version = "1.0.0",
           .routes = routes, .route_count = BGS_COUNT(routes),
           .tasks = tasks, .task_count = BGS_COUNT(tasks))
