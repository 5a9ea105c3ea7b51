/*
 * introspect.h - the /_bgserve/ endpoints (urls.h): task status monitor
 * and stats.  Pure request -> reply; the http room does the I/O.
 */
#ifndef BGSERVE_INTROSPECT_H
#define BGSERVE_INTROSPECT_H

#include <stddef.h>
#include <stdint.h>

typedef struct introspect_reply {
    unsigned status;
    char *body;            /* malloc'd JSON, owned by the caller after */
    size_t len;
    const char *allow;     /* for 405, else NULL */
} introspect_reply;

typedef struct introspect_counters {
    uint64_t requests;               /* served for the plugin */
    uint64_t introspection_requests; /* to /_bgserve/ */
    uint64_t uptime_s;
    uint64_t conns_open;             /* connections open now */
    uint64_t in_flight;              /* requests in progress, this one too */
    uint64_t conns_limit;            /* --max-connections in force */
    uint64_t conns_rejected;         /* past the limit: answered 503 or closed */
    uint64_t conns_evicted;          /* idle keep-alive ones closed to make room */
} introspect_counters;

/* The id in "/_bgserve/tasks/ID" (decimal), or 0 when path is not a
 * task's status monitor. */
uint64_t introspect_task_id(const char *path);

/* path is the decoded path starting with "/_bgserve". */
void introspect_handle(const char *method, const char *path,
                       const introspect_counters *c, introspect_reply *out);

#endif
