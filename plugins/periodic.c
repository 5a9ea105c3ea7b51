/*
 * periodic - a task on a timer, and a scoped service it resolves.
 *
 *   GET /    200 "Hello, World! <ISO-8601 UTC time>"
 *
 * The start hook registers the scoped service "foo" (one instance per
 * request or task run, numbered foo#1, foo#2, ...) and schedules the task
 * "tick" every 1000 ms.  Each run logs the time and
 * the foo instance it resolved: "tick at 2026-11-23T19:00:00Z foo#3";
 * a new run gets a new instance, destroyed when the run ends.
 *
 * The instance counter lives in the app (bgs_app_set_data), not in a
 * static, so the plugin stays reloadable; it is atomic because ticks run
 * on worker threads and requests on HTTP threads.
 */
#include <bgserve.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct foo_counter {
    atomic_uint next_id;
} foo_counter;

typedef struct foo {
    unsigned id;
} foo;

static void *foo_create(void *arg)
{
    foo_counter *c = arg;
    foo *f = malloc(sizeof *f);
    if (f == NULL)
        return NULL;
    f->id = atomic_fetch_add(&c->next_id, 1) + 1;
    return f;
}

static void foo_destroy(void *instance, void *arg)
{
    (void)arg;
    free(instance);
}

static void iso_now(char *buf, size_t cap)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int tick(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    char when[32];
    (void)payload;
    (void)len;
    foo *f = bgs_task_service(ctx, "foo");
    if (f == NULL) {
        bgs_task_error(ctx, "service foo could not be created");
        return -1;
    }
    iso_now(when, sizeof when);
    bgs_task_log(ctx, "tick at %s foo#%u", when, f->id);
    return 0;
}

static int hello(bgs_req *req, bgs_res *res)
{
    char when[32];
    (void)req;
    iso_now(when, sizeof when);
    int rc = bgs_res_status(res, 200);
    if (rc == 0)
        rc = bgs_res_content_type(res, "text/plain; charset=utf-8");
    if (rc == 0)
        rc = bgs_res_printf(res, "Hello, World! %s", when);
    return rc;
}

static int start(bgs_app *app)
{
    foo_counter *c = calloc(1, sizeof *c);
    if (c == NULL) {
        bgs_app_fail(app, "periodic: out of memory");
        return -1;
    }
    atomic_init(&c->next_id, 0);
    bgs_app_set_data(app, c);
    int rc = bgs_app_service(app, "foo", BGS_SCOPED, foo_create, foo_destroy, c);
    if (rc != 0) {
        bgs_app_fail(app, "periodic: cannot register service foo: %s", bgs_strerror(rc));
        return -1;
    }
    rc = bgs_app_periodic(app, "tick", 1000, NULL, 0, 0);
    if (rc != 0) {
        bgs_app_fail(app, "periodic: cannot schedule tick: %s", bgs_strerror(rc));
        return -1;
    }
    return 0;
}

/* Runs after the last task and request of this app: no foo is alive. */
static void stop(bgs_app *app)
{
    free(bgs_app_data(app));
    bgs_app_set_data(app, NULL);
}

static const bgs_route routes[] = {
    BGS_GET("/", hello),
};

static const bgs_task_def tasks[] = {
    {.name = "tick", .fn = tick},
};

BGS_PLUGIN(.name = "periodic", .version = "1.0.0",
           .routes = routes, .route_count = BGS_COUNT(routes),
           .tasks = tasks, .task_count = BGS_COUNT(tasks),
           .start = start, .stop = stop)
