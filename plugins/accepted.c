/*
 * accepted - answer at once, work later: the 202 Accepted pattern.
 *
 *   GET /    202 "Operation accepted", Location: /_bgserve/tasks/ID (the
 *            status monitor of the task); the task sleeps one second,
 *            then logs "Done!".
 *
 * Demonstrates that the response is sent before the task runs, and that
 * bgs_res_accepted points the client at the task's record, which it can
 * poll until the state is "succeeded".
 */
#include <bgserve.h>

#include <time.h>

/* Sleep about one second in short steps, so a shutdown's cancellation
 * flag is noticed quickly. */
static int slow_operation(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)payload;
    (void)len;
    for (int i = 0; i < 100; i++) {
        if (bgs_task_cancelled(ctx)) {
            bgs_task_error(ctx, "cancelled before the operation finished");
            return -1;
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    bgs_task_log(ctx, "Done!");
    return 0;
}

static int accept_operation(bgs_req *req, bgs_res *res)
{
    uint64_t id = 0;
    (void)req;
    int rc = bgs_res_task(res, "slow_operation", NULL, 0, &id);
    if (rc == BGS_EFULL || rc == BGS_ESHUTDOWN) /* load: come back later */
        return bgs_res_text(res, 503, bgs_strerror(rc));
    if (rc != 0) /* a bug: bgserve printed a warning; 500 */
        return rc;
    rc = bgs_res_text(res, 202, "Operation accepted");
    if (rc == 0)
        rc = bgs_res_accepted(res, id);
    return rc;
}

static const bgs_route routes[] = {
    BGS_GET("/", accept_operation),
};

static const bgs_task_def tasks[] = {
    {.name = "slow_operation", .fn = slow_operation},
};

BGS_PLUGIN(.name = "accepted", .version = "1.0.0",
           .routes = routes, .route_count = BGS_COUNT(routes),
           .tasks = tasks, .task_count = BGS_COUNT(tasks))
