/*
 * sample_app - a small notes API, the starter app `make run` serves.
 *
 *   GET    /                      what this app offers
 *   GET    /notes?q=TEXT&limit=N  list notes (JSON), optionally filtered
 *   POST   /notes?title=TITLE     create a note; the body is its text.
 *                                 201 + Location; queues index_note and
 *                                 notify_watchers to run concurrently
 *   GET    /notes/{id}            one note (JSON) or 404
 *   DELETE /notes/{id}            204; the route itself names the
 *                                 audit_log task (route-level task)
 *   POST   /notes/{id}/export     202 Accepted + Location of the task's
 *                                 status monitor (/_bgserve/tasks/ID)
 *
 * The author comes from the X-Author header (default "anonymous").
 * PUT /notes answers 405 with Allow; unknown paths answer 404.
 *
 * State lives in the app (bgs_app_set_data), guarded by one mutex since
 * handlers run on several HTTP threads and tasks on worker threads.  It
 * survives a reload: each generation offers the store to the next one
 * (bgs_app_handover_set), whose start hook takes it, so `make dev` keeps
 * your notes while you edit.  A change to the layout of `store` or `note`
 * needs a restart of bgserve: new code would misread the old store.
 */
#include <bgserve.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_NOTES 1024

typedef struct note {
    unsigned id;
    char title[128];
    char author[64];
    char *text;
    int indexed;
} note;

typedef struct store {
    pthread_mutex_t lock;
    note notes[MAX_NOTES];
    unsigned count;
    unsigned next_id;
} store;

static store *get_store(bgs_app *app)
{
    return bgs_app_data(app);
}

/* Write s as a JSON string into res. */
static void json_string(bgs_res *res, const char *s)
{
    bgs_res_printf(res, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            bgs_res_printf(res, "\\%c", c);
        else if (c < 0x20)
            bgs_res_printf(res, "\\u%04x", c);
        else
            bgs_res_printf(res, "%c", c);
    }
    bgs_res_printf(res, "\"");
}

static void note_json(bgs_res *res, const note *n)
{
    bgs_res_printf(res, "{\"id\":%u,\"title\":", n->id);
    json_string(res, n->title);
    bgs_res_printf(res, ",\"author\":");
    json_string(res, n->author);
    bgs_res_printf(res, ",\"text\":");
    json_string(res, n->text);
    bgs_res_printf(res, ",\"indexed\":%s}", n->indexed ? "true" : "false");
}

static note *find(store *st, unsigned id)
{
    for (unsigned i = 0; i < st->count; i++)
        if (st->notes[i].id == id)
            return &st->notes[i];
    return NULL;
}

static int parse_id(bgs_req *req, unsigned *id)
{
    const char *s = bgs_req_param(req, "id");
    char *end;
    unsigned long v = strtoul(s ? s : "", &end, 10);
    if (s == NULL || *s == '\0' || *end != '\0' || v == 0 || v > 0xffffffffu)
        return -1;
    *id = (unsigned)v;
    return 0;
}

/* ---- handlers --------------------------------------------------------- */

static int index_page(bgs_req *req, bgs_res *res)
{
    (void)req;
    return bgs_res_text(res, 200,
                        "notes: a bgserve sample app\n"
                        "  GET    /notes?q=TEXT&limit=N\n"
                        "  POST   /notes?title=TITLE   (body: the text; header X-Author)\n"
                        "  GET    /notes/{id}\n"
                        "  DELETE /notes/{id}\n"
                        "  POST   /notes/{id}/export   (202 + status monitor)\n");
}

static int list_notes(bgs_req *req, bgs_res *res)
{
    store *st = get_store(bgs_req_app(req));
    const char *q = bgs_req_query(req, "q");
    const char *lim = bgs_req_query(req, "limit");
    long limit = lim ? strtol(lim, NULL, 10) : 100;
    if (limit <= 0)
        return bgs_res_text(res, 400, "limit must be a positive number\n");

    bgs_res_content_type(res, "application/json");
    bgs_res_printf(res, "[");
    pthread_mutex_lock(&st->lock);
    long shown = 0;
    for (unsigned i = 0; i < st->count && shown < limit; i++) {
        const note *n = &st->notes[i];
        if (q && !strstr(n->title, q) && !strstr(n->text, q))
            continue;
        if (shown++)
            bgs_res_printf(res, ",");
        note_json(res, n);
    }
    pthread_mutex_unlock(&st->lock);
    return bgs_res_printf(res, "]\n");
}

static int create_note(bgs_req *req, bgs_res *res)
{
    store *st = get_store(bgs_req_app(req));
    const char *title = bgs_req_query(req, "title");
    const char *author = bgs_req_header(req, "X-Author");
    size_t len;
    const char *body = bgs_req_body(req, &len);

    if (title == NULL || *title == '\0')
        return bgs_res_text(res, 400, "missing ?title=\n");
    pthread_mutex_lock(&st->lock);
    if (st->count == MAX_NOTES) {
        pthread_mutex_unlock(&st->lock);
        return bgs_res_text(res, 507, "the notebook is full\n");
    }
    note *n = &st->notes[st->count++];
    memset(n, 0, sizeof *n);
    n->id = st->next_id++;
    snprintf(n->title, sizeof n->title, "%s", title);
    snprintf(n->author, sizeof n->author, "%s", author ? author : "anonymous");
    n->text = malloc(len + 1);
    if (n->text == NULL) {
        st->count--;
        pthread_mutex_unlock(&st->lock);
        return -1;
    }
    if (len)
        memcpy(n->text, body, len);
    n->text[len] = '\0';
    unsigned id = n->id;
    pthread_mutex_unlock(&st->lock);

    /* Both tasks run after the 201 is on the wire, side by side. */
    bgs_res_task_mode(res, BGS_CONCURRENT);
    int rc = bgs_res_task(res, "index_note", &id, sizeof id, NULL);
    if (rc == 0)
        rc = bgs_res_task(res, "notify_watchers", &id, sizeof id, NULL);
    if (rc != 0)
        bgs_req_log_at(req, BGS_LOG_WARN, "note %u saved, tasks not queued: %s", id, bgs_strerror(rc));

    char loc[32];
    snprintf(loc, sizeof loc, "/notes/%u", id);
    bgs_res_status(res, 201);
    bgs_res_header(res, "Location", loc);
    bgs_res_content_type(res, "application/json");
    return bgs_res_printf(res, "{\"id\":%u}\n", id);
}

static int get_note(bgs_req *req, bgs_res *res)
{
    store *st = get_store(bgs_req_app(req));
    unsigned id;
    if (parse_id(req, &id) != 0)
        return bgs_res_text(res, 400, "note ids are positive numbers\n");
    pthread_mutex_lock(&st->lock);
    note *n = find(st, id);
    if (n == NULL) {
        pthread_mutex_unlock(&st->lock);
        return bgs_res_text(res, 404, "no such note\n");
    }
    bgs_res_content_type(res, "application/json");
    note_json(res, n);
    pthread_mutex_unlock(&st->lock);
    return bgs_res_printf(res, "\n");
}

static int delete_note(bgs_req *req, bgs_res *res)
{
    store *st = get_store(bgs_req_app(req));
    unsigned id;
    if (parse_id(req, &id) != 0)
        return bgs_res_text(res, 400, "note ids are positive numbers\n");
    pthread_mutex_lock(&st->lock);
    note *n = find(st, id);
    if (n) {
        free(n->text);
        *n = st->notes[--st->count];
    }
    pthread_mutex_unlock(&st->lock);
    if (n == NULL)
        return bgs_res_text(res, 404, "no such note\n");
    return bgs_res_status(res, 204);
}

static int export_note(bgs_req *req, bgs_res *res)
{
    unsigned id;
    uint64_t task;
    if (parse_id(req, &id) != 0)
        return bgs_res_text(res, 400, "note ids are positive numbers\n");
    int rc = bgs_res_task(res, "export_note", &id, sizeof id, &task);
    if (rc == BGS_EFULL)
        return bgs_res_text(res, 503, "busy, retry later\n");
    if (rc != 0)
        return rc;
    bgs_res_accepted(res, task);
    return bgs_res_text(res, 202, "export accepted: follow the Location header\n");
}

/* ---- tasks -------------------------------------------------------------- */

static unsigned payload_id(const void *p, size_t len)
{
    unsigned id = 0;
    if (len == sizeof id)
        memcpy(&id, p, sizeof id);
    return id;
}

static int index_note(bgs_task_ctx *ctx, const void *p, size_t len)
{
    store *st = get_store(bgs_task_app(ctx));
    unsigned id = payload_id(p, len);
    pthread_mutex_lock(&st->lock);
    note *n = find(st, id);
    if (n)
        n->indexed = 1;
    pthread_mutex_unlock(&st->lock);
    if (n == NULL) {
        bgs_task_error(ctx, "note %u is gone", id);
        return -1;
    }
    bgs_task_log(ctx, "indexed note %u", id);
    return 0;
}

static int notify_watchers(bgs_task_ctx *ctx, const void *p, size_t len)
{
    bgs_task_log(ctx, "watchers notified of note %u", payload_id(p, len));
    return 0;
}

static int audit_log(bgs_task_ctx *ctx, const void *p, size_t len)
{
    bgs_task_log(ctx, "audit: %.*s (request %s)", (int)len, (const char *)p,
                 bgs_task_request_id(ctx) ? bgs_task_request_id(ctx) : "-");
    return 0;
}

static int export_task(bgs_task_ctx *ctx, const void *p, size_t len)
{
    store *st = get_store(bgs_task_app(ctx));
    unsigned id = payload_id(p, len);
    struct timespec pause = {0, 200 * 1000000L}; /* pretend to render a PDF */
    nanosleep(&pause, NULL);
    pthread_mutex_lock(&st->lock);
    note *n = find(st, id);
    char out[256];
    int olen = n ? snprintf(out, sizeof out, "# %s\nby %s\n", n->title, n->author) : 0;
    pthread_mutex_unlock(&st->lock);
    if (n == NULL) {
        bgs_task_error(ctx, "note %u does not exist", id);
        return -1;
    }
    bgs_task_result(ctx, 200, "text/markdown", out, (size_t)olen);
    bgs_task_log(ctx, "exported note %u", id);
    return 0;
}

/* ---- tables --------------------------------------------------------------- */

static int start(bgs_app *app)
{
    store *st = bgs_app_handover_get(app); /* the previous generation's notes */
    if (st == NULL) {
        st = calloc(1, sizeof *st);
        if (st == NULL) {
            bgs_app_fail(app, "out of memory");
            return -1;
        }
        pthread_mutex_init(&st->lock, NULL);
        st->next_id = 1;
    }
    bgs_app_set_data(app, st);
    bgs_app_handover_set(app, st); /* offered to the next build */
    return 0;
}

static void stop(bgs_app *app)
{
    store *st = get_store(app);
    if (st == NULL || bgs_app_handover_taken(app))
        return; /* the next generation owns it now */
    for (unsigned i = 0; i < st->count; i++)
        free(st->notes[i].text);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

static const bgs_route_task on_delete[] = {
    {.name = "audit_log", .payload = "note deleted", .payload_len = 12},
};

static const bgs_route routes[] = {
    BGS_GET("/", index_page),
    BGS_GET("/notes", list_notes),
    BGS_POST("/notes", create_note),
    BGS_GET("/notes/{id}", get_note),
    {.method = "DELETE", .path = "/notes/{id}", .handler = delete_note,
     .tasks = on_delete, .task_count = BGS_COUNT(on_delete)},
    BGS_POST("/notes/{id}/export", export_note),
};

static const bgs_task_def tasks[] = {
    {.name = "index_note", .fn = index_note, .max_attempts = 3},
    {.name = "notify_watchers", .fn = notify_watchers},
    {.name = "audit_log", .fn = audit_log},
    {.name = "export_note", .fn = export_task, .max_concurrency = 2},
};

BGS_PLUGIN(.name = "notes", .version = "1.0.0",
           .routes = routes, .route_count = BGS_COUNT(routes),
           .tasks = tasks, .task_count = BGS_COUNT(tasks),
           .start = start, .stop = stop)
