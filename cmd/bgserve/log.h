/*
 * log.h - every line bgserve writes to stderr: its own messages, the
 * access log, task events and plugin log lines.
 *
 * Configured once by log_init before any thread starts; after that the
 * settings are read-only.  Each line is formatted into a local buffer and
 * written with one write(2), so lines from different threads never
 * interleave.  Colour only when stderr is a terminal (or forced).
 */
#ifndef BGSERVE_LOG_H
#define BGSERVE_LOG_H

#include <stdarg.h>
#include <stdint.h>

#define LOG_COLOR_AUTO (-1)

/* Offered each plugin line (log_pluginv) that its level lets through,
 * formatted (text, without the tag): return 1 to keep it (then it is not
 * written), 0 to have it written as usual.  Any thread, no lock held;
 * must be quick. */
typedef int (*log_sink_fn)(void *arg, uint32_t level, const char *kind, const char *tag,
                           const char *text);

typedef struct log_config {
    int color;        /* LOG_COLOR_AUTO, 0 or 1 */
    int json;         /* 1: one JSON object per line */
    int quiet;        /* 1: no access lines and no task start/finish lines */
    log_sink_fn plugin_sink;  /* NULL: every plugin line is written */
    void *plugin_sink_arg;
    uint32_t own_min_level;   /* bgserve's own lines (log_msg) below this
                               * BGS_LOG_* level are not written; 0: all */
} log_config;

void log_init(const log_config *cfg);

/* "bgserve: message" (or {"level":..,"msg":..}); level is BGS_LOG_*. */
void log_msg(uint32_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* One access line: method path status duration bytes request-id. */
typedef struct log_access_rec {
    const char *method;
    const char *path;      /* as requested, with query */
    unsigned status;
    uint64_t duration_us;
    uint64_t bytes;        /* response body bytes */
    const char *request_id;
    const char *note;      /* NULL, or e.g. "client aborted" */
} log_access_rec;
void log_access(const log_access_rec *r);

/* A line from plugin code, tagged: kind is "req", "task" or "app", tag
 * the request id, task id or plugin name. */
void log_pluginv(uint32_t level, const char *kind, const char *tag,
                 const char *fmt, va_list ap);

/* Task events. */
typedef struct log_task_rec {
    const char *event;     /* "start" "done" "failed" "retry" "skipped"
                              "discarded" "cancelled" */
    uint64_t id;
    const char *name;
    uint32_t attempt;
    uint64_t duration_us;  /* 0 when not meaningful */
    const char *error;     /* NULL when none */
    uint64_t retry_in_ms;  /* for "retry" */
} log_task_rec;
void log_task(const log_task_rec *r);
/* 0 under --quiet: then log_task drops "start" and "done", and a caller
 * may skip building them (they are two of every task's lines). */
int log_task_routine(void);

#endif
