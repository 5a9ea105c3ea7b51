/*
 * jobs - deferred responses: answer later, from a task, without holding
 * an HTTP thread.
 *
 *   GET /jobs/{n}?ms=M[&timeout=T]
 *       defers its response and queues the task `job`, which sleeps M ms
 *       and then completes the response: 200 "job {n} done".  With
 *       timeout=T (ms) the deadline is T, so T < M answers 504.
 *   GET /jobs/{n}/await?ms=M[&timeout=T][&fail=1]
 *       the same through bgs_res_await: the task `job_result` sets its
 *       result with bgs_task_result and bgserve answers with it (500 with
 *       the task's error when it fails, 504 at the deadline).
 *   GET /sleep?ms=M
 *       202 Accepted with the status monitor of a task that sleeps M ms;
 *       try GET Location?wait=60000 (long-poll).
 *   GET /
 *       200 "jobs": proves other routes are served while jobs wait.
 */
#include <bgserve.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct job {
    bgs_deferred *deferred; /* NULL for await jobs */
    unsigned long n;
    unsigned long ms;
    int fail;
} job;

/* Sleep ms in small slices, stopping early when the task is cancelled
 * (shutdown deadline).  Returns 0, or -1 when cancelled. */
static int nap(bgs_task_ctx *ctx, unsigned long ms)
{
    while (ms > 0) {
        if (bgs_task_cancelled(ctx))
            return -1;
        unsigned long step = ms < 10 ? ms : 10;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
    return 0;
}

static unsigned long query_ul(bgs_req *req, const char *name, unsigned long dflt)
{
    const char *v = bgs_req_query(req, name);
    return v ? strtoul(v, NULL, 10) : dflt;
}

static int parse_job(bgs_req *req, job *j)
{
    char *end;
    const char *n = bgs_req_param(req, "n");
    memset(j, 0, sizeof *j);
    j->n = strtoul(n, &end, 10);
    if (*n == '\0' || *end != '\0')
        return -1;
    j->ms = query_ul(req, "ms", 100);
    j->fail = query_ul(req, "fail", 0) != 0;
    return 0;
}

/* ---- tasks ------------------------------------------------------------- */

static int run_job(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    job j;
    char body[64];
    if (len != sizeof j)
        return -1;
    memcpy(&j, payload, sizeof j);
    if (nap(ctx, j.ms) != 0) {
        bgs_deferred_release(j.deferred);
        bgs_task_error(ctx, "cancelled");
        return -1;
    }
    int n = snprintf(body, sizeof body, "job %lu done", j.n);
    int rc = bgs_deferred_complete(j.deferred, 200, "text/plain; charset=utf-8", body, (size_t)n);
    if (rc != 0)
        bgs_task_log(ctx, "job %lu finished after the deadline: %s", j.n, bgs_strerror(rc));
    return 0;
}

static int run_job_result(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    job j;
    char body[64];
    if (len != sizeof j)
        return -1;
    memcpy(&j, payload, sizeof j);
    if (nap(ctx, j.ms) != 0)
        return -1;
    if (j.fail) {
        bgs_task_error(ctx, "job %lu failed on purpose", j.n);
        return -1;
    }
    int n = snprintf(body, sizeof body, "job %lu done", j.n);
    return bgs_task_result(ctx, 200, "text/plain; charset=utf-8", body, (size_t)n);
}

static int run_sleep(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    unsigned long ms = 0;
    if (len == sizeof ms)
        memcpy(&ms, payload, sizeof ms);
    return nap(ctx, ms);
}

/* ---- handlers ---------------------------------------------------------- */

static int deferred_job(bgs_req *req, bgs_res *res)
{
    job j;
    if (parse_job(req, &j) != 0)
        return bgs_res_text(res, 400, "n must be a number\n");
    j.deferred = bgs_res_defer(res, (uint32_t)query_ul(req, "timeout", 0));
    if (j.deferred == NULL)
        return -1;
    int rc = bgs_req_enqueue(req, "job", &j, sizeof j, NULL);
    if (rc != 0) {
        const char *msg = bgs_strerror(rc);
        bgs_deferred_complete(j.deferred, 503, "text/plain; charset=utf-8", msg, strlen(msg));
    }
    return 0;
}

static int awaited_job(bgs_req *req, bgs_res *res)
{
    job j;
    if (parse_job(req, &j) != 0)
        return bgs_res_text(res, 400, "n must be a number\n");
    int rc = bgs_res_await(res, "job_result", &j, sizeof j,
                           (uint32_t)query_ul(req, "timeout", 0), NULL);
    if (rc == BGS_EFULL || rc == BGS_ESHUTDOWN) /* load: come back later */
        return bgs_res_text(res, 503, bgs_strerror(rc));
    if (rc != 0) /* a bug: bgserve printed a warning; 500 */
        return rc;
    return 0;
}

static int sleep_accepted(bgs_req *req, bgs_res *res)
{
    unsigned long ms = query_ul(req, "ms", 1000);
    uint64_t id;
    int rc = bgs_res_task(res, "sleep", &ms, sizeof ms, &id);
    if (rc == BGS_EFULL || rc == BGS_ESHUTDOWN) /* load: come back later */
        return bgs_res_text(res, 503, bgs_strerror(rc));
    if (rc != 0) /* a bug: bgserve printed a warning; 500 */
        return rc;
    bgs_res_accepted(res, id);
    return bgs_res_text(res, 202, "accepted\n");
}

static int root(bgs_req *req, bgs_res *res)
{
    (void)req;
    return bgs_res_text(res, 200, "jobs");
}

static const bgs_route routes[] = {
    BGS_GET("/", root),
    BGS_GET("/jobs/{n}", deferred_job),
    BGS_GET("/jobs/{n}/await", awaited_job),
    BGS_GET("/sleep", sleep_accepted),
};

static const bgs_task_def tasks[] = {
    {.name = "job", .fn = run_job},
    {.name = "job_result", .fn = run_job_result},
    {.name = "sleep", .fn = run_sleep},
};

BGS_PLUGIN(.name = "jobs", .version = "1.0.0",
           .routes = routes, .route_count = BGS_COUNT(routes),
           .tasks = tasks, .task_count = BGS_COUNT(tasks))
