/*
 * register - tasks declared by the route table, run concurrently.
 *
 *   POST /register   201 {"message":"Created"} (application/json)
 *
 * The handler only answers.  The route itself names two tasks, run at
 * once after every response of the route (BGS_CONCURRENT):
 *   send_email_notification  payload "Account created"; logs it
 *   write_in_file            appends "Notification sent @ <ISO time>\n"
 *                            to log.txt in $BGSERVE_DATA_DIR (else the
 *                            working directory)
 *
 * Demonstrates route-level tasks (declared data, not code in the
 * handler) and safe appends from concurrent runs: the file is opened
 * with O_APPEND and each line goes out in one write(), so lines from
 * runs on different workers never interleave.
 */
#include <bgserve.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int send_email_notification(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    /* Stand-in for a mail API call. */
    bgs_task_log(ctx, "email notification: %.*s", (int)len, (const char *)payload);
    return 0;
}

static int write_in_file(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    char path[4096], line[96], when[32];
    (void)payload;
    (void)len;

    const char *dir = getenv("BGSERVE_DATA_DIR");
    if (dir == NULL || *dir == '\0')
        dir = ".";
    if ((size_t)snprintf(path, sizeof path, "%s/log.txt", dir) >= sizeof path) {
        bgs_task_error(ctx, "BGSERVE_DATA_DIR is too long");
        return -1;
    }
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int n = snprintf(line, sizeof line, "Notification sent @ %s\n", when);

    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        bgs_task_error(ctx, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    ssize_t w = write(fd, line, (size_t)n);
    int saved = errno;
    close(fd);
    if (w != n) {
        bgs_task_error(ctx, "cannot append to %s: %s", path,
                       w < 0 ? strerror(saved) : "short write");
        return -1;
    }
    return 0;
}

static int create_account(bgs_req *req, bgs_res *res)
{
    (void)req;
    int rc = bgs_res_status(res, 201);
    if (rc == 0)
        rc = bgs_res_content_type(res, "application/json");
    if (rc == 0)
        rc = bgs_res_printf(res, "{\"message\":\"Created\"}");
    return rc;
}

static const char account_created[] = "Account created";

static const bgs_route_task register_tasks[] = {
    {.name = "send_email_notification", .payload = account_created,
     .payload_len = sizeof account_created - 1},
    {.name = "write_in_file"},
};

static const bgs_route routes[] = {
    {.method = "POST", .path = "/register", .handler = create_account,
     .tasks = register_tasks, .task_count = BGS_COUNT(register_tasks),
     .task_mode = BGS_CONCURRENT},
};

static const bgs_task_def tasks[] = {
    {.name = "send_email_notification", .fn = send_email_notification},
    {.name = "write_in_file", .fn = write_in_file},
};

BGS_PLUGIN(.name = "register", .version = "1.0.0",
           .routes = routes, .route_count = BGS_COUNT(routes),
           .tasks = tasks, .task_count = BGS_COUNT(tasks))
