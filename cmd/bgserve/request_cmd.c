/*
 * request_cmd.c - `bgserve request APP.so METHOD PATH [-H 'Name: value']...
 * [-d DATA | -d @FILE] [--json] [--timeout S]`: a test client without a
 * server.
 *
 * The plugin is loaded as the server loads it (generation_create: the same
 * checks, refusals and start hook; its periodic tasks are not scheduled),
 * the task workers and the deferred-answer thread are started as in the
 * server, and the request goes through dispatch.c (bgserve's endpoints,
 * the router, the route's tasks, the handler) like one from a socket.  A
 * deferred or awaited answer is waited for.  Then the response's tasks
 * (Bgserve-Tasks: the handler's, the route's and those queued during the
 * request) run to completion, retries included, and each one's outcome
 * is printed with its log lines; at most --timeout in all.
 *
 * Threads: the main thread does everything above.  Three callbacks come
 * from others: the deferred answer's resume (any thread), each task's
 * final callback (a worker or the timer thread), and the log sink (any
 * thread running plugin code).  They touch only `run`, under run.mu, and
 * signal run.cv.  On a timeout bgserve leaves at once (_exit): plugin
 * code may still be running and nothing of it is freed.
 */
#include "request_cmd.h"

#include "cli.h"
#include "crash.h"
#include "deferred.h"
#include "dispatch.h"
#include "generation.h"
#include "hostapi.h"
#include "json.h"
#include "log.h"
#include "request.h"
#include "tasks.h"
#include "util.h"
#include "version.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 64
#define MAX_TASKS 64
#define DEFAULT_TIMEOUT_MS 30000u

static const char usage_text[] =
    "Usage: bgserve request APP.so METHOD PATH [-H 'Name: value']... [-d DATA | -d @FILE]\n"
    "                       [--json] [--timeout S]\n";

/* ------------------------------------------------------------------ */
/* Arguments                                                           */
/* ------------------------------------------------------------------ */

typedef struct args {
    const char *plugin, *method, *target;
    char *hname[MAX_HEADERS];     /* owned */
    const char *hvalue[MAX_HEADERS];
    size_t nheaders;
    char *body;                   /* owned; NULL: no body */
    size_t body_len;
    int json;
    unsigned timeout_ms;
} args;

static void args_free(args *a)
{
    for (size_t i = 0; i < a->nheaders; i++)
        free(a->hname[i]);
    free(a->body);
}

static int usage(FILE *err, const char *fmt, const char *arg)
{
    fputs("bgserve request: ", err);
    fprintf(err, fmt, arg ? arg : "");
    fputs("\n", err);
    fputs(usage_text, err);
    return REQUEST_EXIT_USAGE;
}

/* "Name: value" into the header list. */
static int add_header(args *a, const char *h, FILE *err)
{
    const char *colon = strchr(h, ':');
    if (colon == NULL || colon == h)
        return usage(err, "-H needs 'Name: value' (got '%s')", h);
    if (a->nheaders == MAX_HEADERS)
        return usage(err, "at most 64 -H headers%s", NULL);
    char *name = xstrndup(h, (size_t)(colon - h));
    const char *value = colon + 1;
    while (*value == ' ' || *value == '\t')
        value++;
    if (response_check_header(name, value) != 0) {
        free(name);
        return usage(err, "-H '%s': the name must be a token and the value must not "
                     "hold CR, LF or NUL", h);
    }
    a->hname[a->nheaders] = name;
    a->hvalue[a->nheaders++] = value;
    return 0;
}

/* All of f into *data. */
static int read_all(FILE *f, char **data, size_t *len)
{
    size_t cap = 0, n = 0, got;
    char *buf = NULL;
    do {
        util_buf_reserve(&buf, &cap, n, 4096, 4096);
        got = fread(buf + n, 1, cap - n - 1, f); /* (cap counts the NUL) */
        n += got;
    } while (got > 0);
    if (ferror(f)) {
        free(buf);
        return -1;
    }
    *data = buf;
    *len = n;
    return 0;
}

/* -d DATA, -d @FILE, -d @- (standard input). */
static int set_body(args *a, const char *d, FILE *err)
{
    if (a->body != NULL)
        return usage(err, "-d given twice; give the whole body once%s", NULL);
    if (d[0] != '@') {
        a->body_len = strlen(d);
        a->body = xmemdup(d, a->body_len + 1);
        return 0;
    }
    const char *path = d + 1;
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (f == NULL) {
        fprintf(err, "bgserve request: -d @%s: %s\n", path, strerror(errno));
        return REQUEST_EXIT_USAGE;
    }
    int rc = read_all(f, &a->body, &a->body_len);
    int saved = errno;
    if (f != stdin)
        fclose(f);
    if (rc != 0) {
        fprintf(err, "bgserve request: -d @%s: %s\n", path, strerror(saved));
        return REQUEST_EXIT_USAGE;
    }
    return 0;
}

/* An option's value: "--opt value" or "--opt=value" (short: "-H value",
 * "-Hvalue").  NULL when missing (usage printed). */
static const char *value_of(int argc, char **argv, int *i, const char *opt, FILE *err)
{
    const char *a = argv[*i];
    size_t n = strlen(opt);
    if (strncmp(a, opt, n) == 0 && a[n] == '=' && opt[1] == '-')
        return a + n + 1;
    if (strncmp(a, opt, n) == 0 && a[n] != '\0' && opt[1] != '-')
        return a + n;
    if (*i + 1 >= argc) {
        usage(err, "%s needs a value", opt);
        return NULL;
    }
    return argv[++*i];
}

static int is_opt(const char *a, const char *opt)
{
    size_t n = strlen(opt);
    if (strncmp(a, opt, n) != 0)
        return 0;
    return a[n] == '\0' || (opt[1] == '-' ? a[n] == '=' : 1);
}

/* Returns -1 to go on, else the exit status (help, usage). */
static int parse(int argc, char **argv, args *a, FILE *out, FILE *err)
{
    const char *pos[3];
    size_t npos = 0;
    int options_done = 0;
    a->timeout_ms = DEFAULT_TIMEOUT_MS;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char *v;
        int rc;
        if (options_done || s[0] != '-' || s[1] == '\0') {
            if (npos == 3)
                return usage(err, "one APP.so, METHOD and PATH; extra argument '%s'", s);
            pos[npos++] = s;
        } else if (strcmp(s, "--") == 0) {
            options_done = 1;
        } else if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            fputs(usage_text, out);
            fputs("Serve one request with APP.so in process, as `bgserve APP.so` would (same\n"
                  "checks and start hook; no socket), print the status line, headers and\n"
                  "body, then run the response's tasks to completion and print each one's\n"
                  "outcome and log lines.\n"
                  "  -H 'Name: value'  a request header (repeatable)\n"
                  "  -d DATA           the request body; -d @FILE reads it from FILE, -d @-\n"
                  "                    from standard input (sets Content-Type:\n"
                  "                    application/x-www-form-urlencoded unless -H gives one)\n"
                  "  --json            one JSON object instead (status, headers, body, tasks)\n"
                  "  --timeout S       wait at most S seconds in all (default 30)\n"
                  "Exit status: 0 for a 2xx or 3xx answer when every task succeeded; 1 the\n"
                  "plugin was refused or did not start; 2 usage; 3 an answer of 400 or more;\n"
                  "4 a task did not succeed; 5 no answer or a task not final in --timeout.\n",
                  out);
            return REQUEST_EXIT_OK;
        } else if (is_opt(s, "-H") || is_opt(s, "--header")) {
            if ((v = value_of(argc, argv, &i, s[1] == '-' ? "--header" : "-H", err)) == NULL)
                return REQUEST_EXIT_USAGE;
            if ((rc = add_header(a, v, err)) != 0)
                return rc;
        } else if (is_opt(s, "-d") || is_opt(s, "--data")) {
            if ((v = value_of(argc, argv, &i, s[1] == '-' ? "--data" : "-d", err)) == NULL)
                return REQUEST_EXIT_USAGE;
            if ((rc = set_body(a, v, err)) != 0)
                return rc;
        } else if (strcmp(s, "--json") == 0) {
            a->json = 1;
        } else if (is_opt(s, "--timeout")) {
            if ((v = value_of(argc, argv, &i, "--timeout", err)) == NULL)
                return REQUEST_EXIT_USAGE;
            if (cli_seconds_ms(v, &a->timeout_ms) != 0 || a->timeout_ms == 0)
                return usage(err, "--timeout must be seconds from 0.001 to 3600 (got '%s')", v);
        } else {
            return usage(err, "unknown option '%s'", s);
        }
    }
    if (npos < 3)
        return usage(err, npos == 0 ? "missing APP.so, METHOD and PATH%s"
                     : npos == 1 ? "missing METHOD and PATH%s" : "missing PATH%s", NULL);
    a->plugin = pos[0];
    a->method = pos[1];
    a->target = pos[2];
    for (const char *m = a->method; *m; m++)
        if (*m < 'A' || *m > 'Z')
            return usage(err, "METHOD must be upper case letters, like GET or POST (got '%s')",
                         a->method);
    if (a->target[0] != '/')
        return usage(err, "PATH must start with '/' (got '%s'); give the query too, "
                     "percent-encoded, like /notes?title=a%%20b", a->target);
    return -1;
}

/* ------------------------------------------------------------------ */
/* The run: what other threads report                                  */
/* ------------------------------------------------------------------ */

typedef struct line {
    char kind[8];
    char tag[32];
    uint32_t level;
    char *text;
} line;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int resumed;               /* the deferred answer is final */
    size_t finals;             /* tasks seen final by their callbacks */
    line *lines;               /* plugin lines kept (task lines; --json: request lines) */
    size_t nlines, cap;
    int keep_all;              /* --json: keep request lines too */
} run = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int sink(void *arg, uint32_t level, const char *kind, const char *tag, const char *text)
{
    (void)arg;
    if (strcmp(kind, "task") != 0 && !(run.keep_all && strcmp(kind, "req") == 0))
        return 0; /* app lines, and request lines without --json: stderr */
    pthread_mutex_lock(&run.mu);
    if (run.nlines == run.cap) {
        run.cap = run.cap ? run.cap * 2 : 16;
        run.lines = xrealloc(run.lines, run.cap * sizeof *run.lines);
    }
    line *l = &run.lines[run.nlines++];
    snprintf(l->kind, sizeof l->kind, "%s", kind);
    snprintf(l->tag, sizeof l->tag, "%s", tag);
    l->level = level;
    l->text = xstrdup(text);
    pthread_mutex_unlock(&run.mu);
    return 1;
}

static void resumed(void *ctx)
{
    (void)ctx;
    pthread_mutex_lock(&run.mu);
    run.resumed = 1;
    pthread_cond_broadcast(&run.cv);
    pthread_mutex_unlock(&run.mu);
}

static void task_final(void *arg, tasks_final *f)
{
    (void)arg;
    (void)f;
    pthread_mutex_lock(&run.mu);
    run.finals++;
    pthread_cond_broadcast(&run.cv);
    pthread_mutex_unlock(&run.mu);
}

/* Wait (run.mu held) until *flag reaches want or the deadline; 0 or -1. */
static int wait_for(const int *flag, const size_t *count, size_t want, uint64_t deadline_us)
{
    while (flag ? !*flag : *count < want) {
        if (util_now_us() >= deadline_us)
            return -1;
        struct timespec ts = util_mono_timespec(deadline_us);
        pthread_cond_timedwait(&run.cv, &run.mu, &ts);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Tasks                                                               */
/* ------------------------------------------------------------------ */

typedef struct task_out {
    uint64_t id;
    int known;                 /* a record was found */
    char name[128];
    char state[16];
    uint64_t attempts;
    char *error;               /* owned; NULL when none */
    uint64_t created_us, finished_us; /* wall clock; 0: not yet */
} task_out;

static void copy_record(void *arg, const tasks_record *r)
{
    task_out *t = arg;
    t->known = 1;
    snprintf(t->name, sizeof t->name, "%s", r->name ? r->name : "");
    snprintf(t->state, sizeof t->state, "%s", tasks_state_name(r->state));
    t->attempts = r->attempts;
    t->created_us = r->created_wall;
    t->finished_us = r->finished_wall;
    t->error = r->error ? xstrdup(r->error) : NULL;
}

static void read_record(tasks_engine *engine, task_out *t)
{
    if (tasks_record_visit(engine, t->id, copy_record, t) != 0)
        snprintf(t->state, sizeof t->state, "unknown");
}

/* "12,13,14" into ids; returns how many. */
static size_t parse_ids(const char *list, uint64_t *ids, size_t cap)
{
    size_t n = 0;
    for (const char *p = list; p && *p && n < cap;) {
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p)
            break;
        ids[n++] = v;
        p = *end == ',' ? end + 1 : NULL;
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* Printing                                                            */
/* ------------------------------------------------------------------ */

static const char *reason(unsigned status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 418: return "I'm a teapot";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "";
    }
}

static const char *level_name(uint32_t level)
{
    return level == BGS_LOG_ERROR ? "error" : level == BGS_LOG_WARN ? "warning"
           : level == BGS_LOG_DEBUG ? "debug" : "info";
}

/* The answer as a client sees it: the response's headers, then the ones
 * the carrier adds (Content-Type, Content-Length, X-Request-Id). */
typedef struct answer {
    int answered;
    unsigned status;
    const char *names[MAX_HEADERS + 3];
    const char *values[MAX_HEADERS + 3];
    char length[24];
    size_t nheaders;
    const char *body;
    size_t body_len;
} answer;

static void collect_answer(answer *an, struct bgs_req *req, struct bgs_res *res, int head)
{
    an->answered = 1;
    an->status = res->status;
    for (size_t i = 0; i < res->nheaders && an->nheaders < MAX_HEADERS; i++) {
        an->names[an->nheaders] = res->headers[i].name;
        an->values[an->nheaders++] = res->headers[i].value;
    }
    const char *type = res->untyped ? NULL : response_content_type(res);
    if (type) {
        an->names[an->nheaders] = "Content-Type";
        an->values[an->nheaders++] = type;
    }
    snprintf(an->length, sizeof an->length, "%zu", res->body_len);
    an->names[an->nheaders] = "Content-Length";
    an->values[an->nheaders++] = an->length;
    an->names[an->nheaders] = "X-Request-Id";
    an->values[an->nheaders++] = req->id;
    an->body = head ? "" : res->body ? res->body : "";
    an->body_len = head ? 0 : res->body ? res->body_len : 0;
}

/* From accepted to final (waiting, retries and backoff included); 0
 * while not final. */
static double duration_ms(const task_out *t)
{
    return t->created_us && t->finished_us >= t->created_us
               ? (double)(t->finished_us - t->created_us) / 1000.0 : 0.0;
}

static void print_text(FILE *out, const answer *an, const task_out *ts, size_t nt,
                       int timed_out)
{
    if (!an->answered) {
        fprintf(out, "no answer within --timeout\n");
        return;
    }
    fprintf(out, "HTTP/1.1 %u %s\n", an->status, reason(an->status));
    for (size_t i = 0; i < an->nheaders; i++)
        fprintf(out, "%s: %s\n", an->names[i], an->values[i]);
    fputs("\n", out);
    fwrite(an->body, 1, an->body_len, out);
    if (an->body_len && an->body[an->body_len - 1] != '\n')
        fputs("\n", out);
    for (size_t i = 0; i < nt; i++) {
        const task_out *t = &ts[i];
        fprintf(out, "%stask %" PRIu64 " %s: %s", i == 0 ? "\n" : "", t->id,
                t->name[0] ? t->name : "?", t->state);
        if (t->known && t->finished_us)
            fprintf(out, " (%" PRIu64 " attempt%s, %.2f ms)", t->attempts,
                    t->attempts == 1 ? "" : "s", duration_ms(t));
        else if (t->known)
            fprintf(out, " (%" PRIu64 " attempt%s so far)", t->attempts,
                    t->attempts == 1 ? "" : "s");
        if (t->error)
            fprintf(out, ": %s", t->error);
        fputs("\n", out);
        char tag[32];
        snprintf(tag, sizeof tag, "%" PRIu64, t->id);
        for (size_t k = 0; k < run.nlines; k++) {
            const line *l = &run.lines[k];
            if (strcmp(l->kind, "task") != 0 || strcmp(l->tag, tag) != 0)
                continue;
            if (l->level == BGS_LOG_INFO)
                fprintf(out, "  %s\n", l->text);
            else
                fprintf(out, "  %s: %s\n", level_name(l->level), l->text);
        }
    }
    if (timed_out)
        fprintf(out, "\nstopped waiting after --timeout: the tasks above that are not "
                "final were still %s\n", "running or queued");
}

/* The kept lines of kind (and tag, unless NULL) as a JSON array. */
static void json_lines(json *j, const char *kind, const char *tag)
{
    json_arr_begin(j);
    for (size_t k = 0; k < run.nlines; k++) {
        const line *l = &run.lines[k];
        if (strcmp(l->kind, kind) != 0 || (tag && strcmp(l->tag, tag) != 0))
            continue;
        json_obj_begin(j);
        json_key(j, "level");
        json_str(j, level_name(l->level));
        json_key(j, "text");
        json_str(j, l->text);
        json_obj_end(j);
    }
    json_arr_end(j);
}

static void print_json(FILE *out, const answer *an, const task_out *ts, size_t nt,
                       int timed_out, int code)
{
    json j;
    json_init(&j);
    json_obj_begin(&j);
    json_key(&j, "answered");
    json_bool(&j, an->answered);
    if (an->answered) {
        json_key(&j, "status");
        json_u64(&j, an->status);
        json_key(&j, "reason");
        json_str(&j, reason(an->status));
        json_key(&j, "headers");
        json_arr_begin(&j);
        for (size_t i = 0; i < an->nheaders; i++) {
            json_arr_begin(&j);
            json_str(&j, an->names[i]);
            json_str(&j, an->values[i]);
            json_arr_end(&j);
        }
        json_arr_end(&j);
        json_key(&j, "body");
        json_strn(&j, an->body, an->body_len);
    }
    json_key(&j, "log");
    json_lines(&j, "req", NULL);
    json_key(&j, "tasks");
    json_arr_begin(&j);
    for (size_t i = 0; i < nt; i++) {
        const task_out *t = &ts[i];
        char tag[32];
        snprintf(tag, sizeof tag, "%" PRIu64, t->id);
        json_obj_begin(&j);
        json_key(&j, "id");
        json_u64(&j, t->id);
        json_key(&j, "name");
        json_str(&j, t->name[0] ? t->name : NULL);
        json_key(&j, "state");
        json_str(&j, t->state);
        json_key(&j, "attempts");
        json_u64(&j, t->attempts);
        json_key(&j, "error");
        json_str(&j, t->error);
        json_key(&j, "duration_ms");
        json_double(&j, duration_ms(t));
        json_key(&j, "log");
        json_lines(&j, "task", tag);
        json_obj_end(&j);
    }
    json_arr_end(&j);
    json_key(&j, "timed_out");
    json_bool(&j, timed_out);
    json_key(&j, "exit");
    json_u64(&j, (uint64_t)code);
    json_obj_end(&j);
    json_print_line(&j, out);
    json_free(&j);
}

/* ------------------------------------------------------------------ */
/* The subcommand                                                      */
/* ------------------------------------------------------------------ */

static const char *find_header(void *ctx, const char *name)
{
    const args *a = ctx;
    for (size_t i = 0; i < a->nheaders; i++)
        if (util_strcaseeq(a->hname[i], name))
            return a->hvalue[i];
    return NULL;
}

/* Headers a client would send that the command line did not give. */
static void default_headers(args *a)
{
    static char length[24];
    if (a->body != NULL && find_header(a, "Content-Type") == NULL && a->nheaders < MAX_HEADERS) {
        a->hname[a->nheaders] = xstrdup("Content-Type");
        a->hvalue[a->nheaders++] = "application/x-www-form-urlencoded";
    }
    if (a->body != NULL && find_header(a, "Content-Length") == NULL && a->nheaders < MAX_HEADERS) {
        snprintf(length, sizeof length, "%zu", a->body_len);
        a->hname[a->nheaders] = xstrdup("Content-Length");
        a->hvalue[a->nheaders++] = length;
    }
    if (find_header(a, "Host") == NULL && a->nheaders < MAX_HEADERS) {
        a->hname[a->nheaders] = xstrdup("Host");
        a->hvalue[a->nheaders++] = "localhost";
    }
}

static int exit_code(const answer *an, const task_out *ts, size_t nt, int timed_out)
{
    if (timed_out || !an->answered)
        return REQUEST_EXIT_TIMEOUT;
    if (an->status >= 400)
        return REQUEST_EXIT_STATUS;
    for (size_t i = 0; i < nt; i++)
        if (strcmp(ts[i].state, "succeeded") != 0)
            return REQUEST_EXIT_TASK;
    return REQUEST_EXIT_OK;
}

static void print(const args *a, FILE *out, const answer *an, const task_out *ts, size_t nt,
                  int timed_out, int code)
{
    pthread_mutex_lock(&run.mu);
    if (a->json)
        print_json(out, an, ts, nt, timed_out, code);
    else
        print_text(out, an, ts, nt, timed_out);
    pthread_mutex_unlock(&run.mu);
    fflush(out);
}

int request_cmd_main(int argc, char **argv, FILE *out, FILE *err)
{
    args a = {0};
    int rc = parse(argc, argv, &a, out, err);
    if (rc >= 0) {
        args_free(&a);
        return rc;
    }
    default_headers(&a);
    uint64_t deadline = util_now_us() + (uint64_t)a.timeout_ms * 1000u;

    util_cond_init_mono(&run.cv);
    run.keep_all = a.json;
    log_init(&(log_config){.color = LOG_COLOR_AUTO, .quiet = 1, .plugin_sink = sink,
                           .own_min_level = BGS_LOG_WARN});
    crash_install(-1); /* a crash in plugin code: the report, then the signal */
    tasks_engine *engine = tasks_new(&(tasks_config){.keep = TASKS_DEFAULT_KEEP});
    if (engine == NULL || deferred_start() != 0) {
        fprintf(err, "bgserve request: cannot start the task workers\n");
        return REQUEST_EXIT_REFUSED;
    }
    crash_set_gauges(tasks_gauges, engine);
    generation_setup(&(generation_deps){.host_api = hostapi_table(), .tasks = engine});
    char msg[2048];
    generation *g = NULL;
    if (generation_create(a.plugin, 1, 0, &g, msg, sizeof msg) != 0) {
        fprintf(err, "%s\n", msg);
        tasks_shutdown(engine, 0);
        deferred_stop();
        tasks_free(engine);
        args_free(&a);
        return REQUEST_EXIT_REFUSED;
    }
    generation_set_current(g); /* periodic tasks are not scheduled (no generation_activate) */

    /* One request, as http.c would carry it. */
    const dispatch_env env = {.introspection = 1, .plugin_path = a.plugin, .tasks = engine};
    struct bgs_req req;
    struct bgs_res res;
    char rid[24];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(rid, sizeof rid, "%08x00000001",
             (unsigned)(now.tv_nsec ^ (now.tv_sec << 8) ^ ((long)getpid() << 16)));
    answer an = {0};
    int timed_out = 0;
    uint64_t t0 = util_now_us();
    int how = dispatch_local_request(
        &env,
        &(dispatch_local){.target = a.target, .id = rid, .body = a.body, .body_len = a.body_len,
                          .carrier = "bgserve request",
                          .origin = {.method = a.method, .header_fn = find_header,
                                     .header_ctx = &a, .resume_fn = resumed,
                                     .remote = "127.0.0.1"}},
        &req, &res);
    if (how == DISPATCH_SUSPEND) {
        dispatch_arm(&res);
        pthread_mutex_lock(&run.mu);
        timed_out = wait_for(&run.resumed, NULL, 0, deadline) != 0;
        pthread_mutex_unlock(&run.mu);
        if (timed_out) { /* the handle is still out there: leave */
            int code = exit_code(&an, NULL, 0, 1);
            print(&a, out, &an, NULL, 0, 1, code);
            fflush(err);
            _exit(code);
        }
        dispatch_resumed(&env, &req, &res);
    }
    collect_answer(&an, &req, &res, strcmp(a.method, "HEAD") == 0);

    /* The tasks: settle them as delivered, then wait for each. */
    uint64_t ids[MAX_TASKS];
    size_t nt = 0;
    for (size_t i = 0; i < res.nheaders; i++)
        if (util_strcaseeq(res.headers[i].name, "Bgserve-Tasks"))
            nt = parse_ids(res.headers[i].value, ids, MAX_TASKS);
    dispatch_finish(&req, &res, 1, 1, util_now_us() - t0);
    size_t want = 0;
    for (size_t i = 0; i < nt; i++)
        if (tasks_watch(engine, ids[i], task_final, NULL) == 0)
            want++;
    pthread_mutex_lock(&run.mu);
    timed_out = wait_for(NULL, &run.finals, want, deadline) != 0;
    pthread_mutex_unlock(&run.mu);

    task_out *ts = xcalloc(nt ? nt : 1, sizeof *ts);
    for (size_t i = 0; i < nt; i++) {
        ts[i].id = ids[i];
        read_record(engine, &ts[i]);
    }
    int code = exit_code(&an, ts, nt, timed_out);
    print(&a, out, &an, ts, nt, timed_out, code);
    if (timed_out) { /* plugin code may still be running: leave */
        fflush(err);
        _exit(code);
    }

    request_free(&req);
    response_free(&res);
    for (size_t i = 0; i < nt; i++)
        free(ts[i].error);
    free(ts);
    tasks_shutdown(engine, 0);
    deferred_stop();
    generation_abandon_current(); /* the stop hook runs; no "retired" line */
    tasks_free(engine);
    for (size_t i = 0; i < run.nlines; i++)
        free(run.lines[i].text);
    free(run.lines);
    args_free(&a);
    return code;
}
