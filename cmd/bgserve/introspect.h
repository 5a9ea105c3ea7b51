/*
 * introspect.h - the /_bgserve/ endpoints (urls.h): task status monitor
 * and stats.  Pure request -> reply; the http room does the I/O.
 */
#ifndef BGSERVE_INTROSPECT_H
#define BGSERVE_INTROSPECT_H

#include "json.h"

#include <stddef.h>
#include <stdint.h>

#define INTROSPECT_MAX_HEADERS 4

typedef struct introspect_reply {
    unsigned status;
    char *body;            /* malloc'd JSON, owned by the caller after */
    size_t len;
    const char *allow;     /* for 405, else NULL */
    const char *ctype;     /* NULL: application/json */
    struct {               /* more headers (static strings); name NULL: none */
        const char *name, *value;
    } headers[INTROSPECT_MAX_HEADERS];
} introspect_reply;

typedef struct introspect_counters {
    uint64_t requests;               /* served for the plugin */
    uint64_t errors;                 /* of those, answered 5xx or not at all */
    uint64_t introspection_requests; /* to /_bgserve/ */
    uint64_t uptime_s;
    uint64_t conns_open;             /* connections open now */
    uint64_t in_flight;              /* requests in progress, this one too */
    uint64_t conns_limit;            /* --max-connections in force */
    uint64_t conns_rejected;         /* past the limit: answered 503 or closed */
    uint64_t conns_evicted;          /* idle keep-alive ones closed to make room */
    struct tasks_engine *tasks;             /* the engine whose tasks are shown */
} introspect_counters;

/* The id in "/_bgserve/tasks/ID" (decimal), or 0 when path is not a
 * task's status monitor. */
uint64_t introspect_task_id(const char *path);

/* Fill out with status and the body {"error": msg}. */
void introspect_reply_error(introspect_reply *out, unsigned status, const char *msg);

/* Write the keys of GET /_bgserve/stats into the open object j. */
void introspect_stats_json(json *j, const introspect_counters *c);

/* The record of task id of engine t as a JSON object into j:
 * 0, or BGS_ENOTFOUND if unknown or evicted, or BGS_EFULL when only the
 * broker could know it and Redis is unreachable. */
struct tasks_engine;
struct json;
int introspect_task_json(struct tasks_engine *t, uint64_t id, struct json *j);

/* path is the decoded path starting with "/_bgserve". */
void introspect_handle(const char *method, const char *path,
                       const introspect_counters *c, introspect_reply *out);

#endif
