/*
 * log.c - every line bgserve writes to stderr (fd 2): its own messages,
 * access lines, task events and plugin log lines, as text or JSON.
 *
 * State: the settings in `g` (colour, JSON, quiet, debug).  log_init
 * writes them once, before any thread starts; afterwards every thread
 * only reads them, so there is no lock.  Before log_init the defaults
 * apply (colour auto, text, not quiet, no debug lines).
 *
 * Each line is formatted into a buffer on the caller's stack (text) or a
 * bounded heap buffer (JSON) and written with one write(2), so lines from
 * different threads never interleave.  A line never exceeds LINE_MAX
 * bytes (the pipe atomicity limit): long text is cut at a UTF-8 boundary
 * and ends with "...", and in JSON mode the long fields are shortened the
 * same way until the object fits, so the line stays valid JSON.
 *
 * Text formats:
 *   bgserve: message                      (info)
 *   bgserve: warning: message             (warn, "warning:" yellow)
 *   bgserve: error: message               (error, "error:" red)
 *   bgserve: debug: message               (only with BGSERVE_DEBUG set)
 *   GET /users/7 200 0.21ms 13b rid=5f2c9a3e00000001 (note)
 *   bgserve: task 42 send_email done in 1.00s
 *   [req 5f2c9a3e00000001] message        (plugin lines carry no
 *   [task 42] warning: message             "bgserve: " prefix: they are
 *   [app hello] message                    the app's own words)
 * Control characters in text mode fields (a path, a plugin message) are
 * shown as '?' so a line stays one line and cannot drive the terminal.
 */
#include "log.h"

#include "bgserve.h"
#include "json.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_ 4096

#define C_RESET "\033[0m"
#define C_RED "\033[31m"
#define C_GREEN "\033[32m"
#define C_YELLOW "\033[33m"
#define C_CYAN "\033[36m"
#define C_DIM "\033[2m"

/* Written by log_init only (before threads); read-only afterwards. */
static struct {
    int inited;
    int color; /* resolved: 0 or 1 (after log_init) */
    int json;
    int quiet;
    int debug;
    log_sink_fn plugin_sink;
    void *plugin_sink_arg;
    uint32_t own_min_level;
} g;

static int color_auto(void)
{
    const char *term = getenv("TERM");
    if (!isatty(2))
        return 0;
    if (term != NULL && strcmp(term, "dumb") == 0)
        return 0;
    return getenv("NO_COLOR") == NULL;
}

void log_init(const log_config *cfg)
{
    g.color = cfg->color == LOG_COLOR_AUTO ? color_auto() : cfg->color != 0;
    g.json = cfg->json != 0;
    g.quiet = cfg->quiet != 0;
    g.debug = getenv("BGSERVE_DEBUG") != NULL;
    g.plugin_sink = cfg->plugin_sink;
    g.plugin_sink_arg = cfg->plugin_sink_arg;
    g.own_min_level = cfg->own_min_level;
    g.inited = 1;
}

static int use_color(void)
{
    if (g.json)
        return 0;
    return g.inited ? g.color : color_auto();
}

/* ------------------------------------------------------------------ */
/* Output                                                              */
/* ------------------------------------------------------------------ */

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(2, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report it */
        }
        p += w;
        n -= (size_t)w;
    }
}

/* A text line being built on the stack. */
typedef struct line {
    char buf[LINE_MAX_];
    size_t len;
    int full;
} line;

/* Room kept for "...\n" (and a colour reset) when cutting. */
#define TAIL_ROOM 12

/* Longest prefix of s[0..n) that fits in room bytes, cut at a UTF-8
 * character boundary. */
static size_t cut_utf8(const char *s, size_t n, size_t room)
{
    if (n <= room)
        return n;
    size_t k = room;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    return k;
}

/* Append n bytes; clean: control characters become '?'. */
static void lput(line *l, const char *s, size_t n, int clean)
{
    if (l->full)
        return;
    size_t room = sizeof(l->buf) - TAIL_ROOM - l->len;
    size_t k = cut_utf8(s, n, room);
    for (size_t i = 0; i < k; i++) {
        unsigned char c = (unsigned char)s[i];
        l->buf[l->len++] = clean && (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (k < n)
        l->full = 1;
}

static void lstr(line *l, const char *s)
{
    lput(l, s, strlen(s), 0);
}

static void luser(line *l, const char *s)
{
    if (s == NULL)
        s = "-";
    lput(l, s, strlen(s), 1);
}

static void lprintf(line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void lprintf(line *l, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    lput(l, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1, 0);
}

static void lcolor(line *l, const char *code)
{
    if (use_color())
        lstr(l, code);
}

static void lflush(line *l)
{
    if (l->full) {
        if (use_color()) {
            memcpy(l->buf + l->len, C_RESET, sizeof(C_RESET) - 1);
            l->len += sizeof(C_RESET) - 1;
        }
        memcpy(l->buf + l->len, "...", 3);
        l->len += 3;
    }
    l->buf[l->len++] = '\n';
    write_all(l->buf, l->len);
}

/* Format a message into a bounded buffer; returns its length (cut to
 * fit, at a UTF-8 boundary, with "..." appended when cut). */
static size_t format_msg(char *buf, size_t cap, const char *fmt, va_list ap)
{
    int n = vsnprintf(buf, cap, fmt, ap);
    if (n < 0) {
        buf[0] = '\0';
        return 0;
    }
    if ((size_t)n < cap)
        return (size_t)n;
    size_t k = cut_utf8(buf, cap - 1, cap - 4);
    memcpy(buf + k, "...", 4);
    return k + 3;
}

/* ------------------------------------------------------------------ */
/* JSON lines                                                          */
/* ------------------------------------------------------------------ */

static void json_ts(json *j)
{
    char tmp[48];
    util_iso_time(tmp, sizeof(tmp), util_wall_us(), 3);
    json_key(j, "ts");
    json_str(j, tmp);
}

/* A string field cut to at most limit bytes (with "..." when cut). */
static void json_field(json *j, const char *key, const char *s, size_t limit)
{
    json_key(j, key);
    if (s == NULL) {
        json_null(j);
        return;
    }
    size_t n = strlen(s);
    if (n <= limit) {
        json_strn(j, s, n);
        return;
    }
    char tmp[LINE_MAX_ + 4];
    if (limit > LINE_MAX_)
        limit = LINE_MAX_;
    size_t k = cut_utf8(s, n, limit);
    memcpy(tmp, s, k);
    memcpy(tmp + k, "...", 3);
    json_strn(j, tmp, k + 3);
}

static const char *level_name(uint32_t level)
{
    switch (level) {
    case BGS_LOG_DEBUG: return "debug";
    case BGS_LOG_WARN: return "warn";
    case BGS_LOG_ERROR: return "error";
    default: return "info";
    }
}

/* The fields of one JSON line; build() writes the object with string
 * fields cut to limit bytes. */
typedef void (*json_build_fn)(json *j, const void *arg, size_t limit);

static void emit_json(json_build_fn build, const void *arg)
{
    json j;
    size_t n;
    for (size_t limit = LINE_MAX_ - 512;; limit /= 2) {
        json_init(&j);
        build(&j, arg, limit);
        if (j.len < LINE_MAX_ || limit < 16)
            break;
        json_free(&j);
    }
    char *text = json_take(&j, &n);
    text = xrealloc(text, n + 1);
    text[n] = '\n';
    write_all(text, n + 1);
    free(text);
}

/* ------------------------------------------------------------------ */
/* Messages                                                            */
/* ------------------------------------------------------------------ */

static int level_shown(uint32_t level)
{
    return level != BGS_LOG_DEBUG || g.debug;
}

static void level_word(line *l, uint32_t level)
{
    switch (level) {
    case BGS_LOG_DEBUG:
        lcolor(l, C_DIM);
        lstr(l, "debug:");
        break;
    case BGS_LOG_WARN:
        lcolor(l, C_YELLOW);
        lstr(l, "warning:");
        break;
    case BGS_LOG_ERROR:
        lcolor(l, C_RED);
        lstr(l, "error:");
        break;
    default:
        return;
    }
    lcolor(l, C_RESET);
    lstr(l, " ");
}

typedef struct msg_arg {
    uint32_t level;
    const char *kind, *tag; /* plugin lines only */
    const char *msg;
} msg_arg;

static void build_msg(json *j, const void *arg, size_t limit)
{
    const msg_arg *m = arg;
    json_obj_begin(j);
    json_ts(j);
    if (m->kind != NULL) {
        json_key(j, "type");
        json_str(j, "plugin");
    }
    json_key(j, "level");
    json_str(j, level_name(m->level));
    if (m->kind != NULL) {
        json_field(j, "kind", m->kind, limit);
        json_field(j, "tag", m->tag, limit);
    }
    json_field(j, "msg", m->msg, limit);
    json_obj_end(j);
}

/* Write one formatted message line. */
static void emit_msg(uint32_t level, const char *kind, const char *tag, const char *text)
{
    if (g.json) {
        msg_arg m = {level, kind, tag, text};
        emit_json(build_msg, &m);
        return;
    }
    line l;
    l.len = 0;
    l.full = 0;
    if (kind != NULL) {
        lstr(&l, "[");
        luser(&l, kind);
        lstr(&l, " ");
        luser(&l, tag);
        lstr(&l, "] ");
    } else
        lstr(&l, "bgserve: ");
    level_word(&l, level);
    luser(&l, text);
    lflush(&l);
}

static void vmsg(uint32_t level, const char *kind, const char *tag,
                 const char *fmt, va_list ap)
{
    char text[LINE_MAX_];
    if (!level_shown(level) || (kind == NULL && level < g.own_min_level))
        return;
    format_msg(text, sizeof(text), fmt, ap);
    if (kind != NULL && g.plugin_sink != NULL &&
        g.plugin_sink(g.plugin_sink_arg, level, kind, tag, text))
        return;
    emit_msg(level, kind, tag, text);
}

void log_msg(uint32_t level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg(level, NULL, NULL, fmt, ap);
    va_end(ap);
}

void log_pluginv(uint32_t level, const char *kind, const char *tag,
                 const char *fmt, va_list ap)
{
    vmsg(level, kind ? kind : "app", tag ? tag : "-", fmt, ap);
}

/* ------------------------------------------------------------------ */
/* Access lines                                                        */
/* ------------------------------------------------------------------ */

/* "0.21ms" below 1 ms, "12.3ms" below 1 s, else "1.42s". */
static void fmt_duration(char *buf, size_t cap, uint64_t us)
{
    if (us < 1000)
        snprintf(buf, cap, "%.2fms", (double)us / 1000.0);
    else if (us < 1000000)
        snprintf(buf, cap, "%.1fms", (double)us / 1000.0);
    else
        snprintf(buf, cap, "%.2fs", (double)us / 1000000.0);
}

static const char *status_color(unsigned status)
{
    if (status >= 500)
        return C_RED;
    if (status >= 400)
        return C_YELLOW;
    if (status >= 300)
        return C_CYAN;
    if (status >= 200)
        return C_GREEN;
    return "";
}

static void build_access(json *j, const void *arg, size_t limit)
{
    const log_access_rec *r = arg;
    json_obj_begin(j);
    json_ts(j);
    json_key(j, "type");
    json_str(j, "access");
    json_field(j, "method", r->method, limit);
    json_field(j, "path", r->path, limit);
    json_key(j, "status");
    json_u64(j, r->status);
    json_key(j, "duration_us");
    json_u64(j, r->duration_us);
    json_key(j, "bytes");
    json_u64(j, r->bytes);
    json_field(j, "request_id", r->request_id, limit);
    if (r->note != NULL)
        json_field(j, "note", r->note, limit);
    json_obj_end(j);
}

void log_access(const log_access_rec *r)
{
    char dur[32];
    if (g.quiet)
        return;
    if (g.json) {
        emit_json(build_access, r);
        return;
    }
    line l;
    l.len = 0;
    l.full = 0;
    luser(&l, r->method);
    lstr(&l, " ");
    luser(&l, r->path);
    lstr(&l, " ");
    lcolor(&l, status_color(r->status));
    lprintf(&l, "%u", r->status);
    lcolor(&l, C_RESET);
    fmt_duration(dur, sizeof(dur), r->duration_us);
    lprintf(&l, " %s %" PRIu64 "b rid=", dur, r->bytes);
    luser(&l, r->request_id);
    if (r->note != NULL) {
        lstr(&l, " (");
        luser(&l, r->note);
        lstr(&l, ")");
    }
    lflush(&l);
}

/* ------------------------------------------------------------------ */
/* Task lines                                                          */
/* ------------------------------------------------------------------ */

static void build_task(json *j, const void *arg, size_t limit)
{
    const log_task_rec *r = arg;
    json_obj_begin(j);
    json_ts(j);
    json_key(j, "type");
    json_str(j, "task");
    json_field(j, "event", r->event, limit);
    json_key(j, "id");
    json_u64(j, r->id);
    json_field(j, "name", r->name, limit);
    json_key(j, "attempt");
    json_u64(j, r->attempt);
    json_key(j, "duration_us");
    json_u64(j, r->duration_us);
    if (r->event != NULL && strcmp(r->event, "retry") == 0) {
        json_key(j, "retry_in_ms");
        json_u64(j, r->retry_in_ms);
    }
    json_field(j, "error", r->error, limit);
    json_obj_end(j);
}

int log_task_routine(void)
{
    return !g.quiet;
}

void log_task(const log_task_rec *r)
{
    const char *ev = r->event ? r->event : "?";
    /* start and done, the two lines of every task (--quiet drops them):
     * the first letter spares most events a strcmp */
    int routine = (ev[0] == 's' && strcmp(ev, "start") == 0) ||
                  (ev[0] == 'd' && strcmp(ev, "done") == 0);
    char dur[32];

    if (g.quiet && routine)
        return;
    if (g.json) {
        emit_json(build_task, r);
        return;
    }
    line l;
    l.len = 0;
    l.full = 0;
    lprintf(&l, "bgserve: task %" PRIu64 " ", r->id);
    luser(&l, r->name);
    lstr(&l, " ");
    if (strcmp(ev, "start") == 0) {
        lprintf(&l, "start (attempt %" PRIu32 ")", r->attempt);
    } else if (strcmp(ev, "done") == 0) {
        fmt_duration(dur, sizeof(dur), r->duration_us);
        lcolor(&l, C_GREEN);
        lstr(&l, "done");
        lcolor(&l, C_RESET);
        lprintf(&l, " in %s", dur);
    } else if (strcmp(ev, "failed") == 0) {
        lcolor(&l, C_RED);
        lstr(&l, "failed");
        lcolor(&l, C_RESET);
        lprintf(&l, " after %" PRIu32 " attempt%s", r->attempt,
                r->attempt == 1 ? "" : "s");
    } else if (strcmp(ev, "retry") == 0) {
        /* attempt is the number of the attempt about to run. */
        lcolor(&l, C_YELLOW);
        lstr(&l, "retry");
        lcolor(&l, C_RESET);
        if (r->retry_in_ms < 1000)
            lprintf(&l, " %" PRIu32 " in %" PRIu64 "ms", r->attempt,
                    r->retry_in_ms);
        else
            lprintf(&l, " %" PRIu32 " in %.1fs", r->attempt,
                    (double)r->retry_in_ms / 1000.0);
    } else {
        /* skipped, discarded, cancelled (and anything new) */
        lcolor(&l, strcmp(ev, "discarded") == 0 ? C_RED : C_YELLOW);
        luser(&l, ev);
        lcolor(&l, C_RESET);
    }
    if (r->error != NULL) {
        lstr(&l, ": ");
        luser(&l, r->error);
    }
    lflush(&l);
}
