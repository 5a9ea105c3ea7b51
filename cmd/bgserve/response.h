/*
 * response.h - what a response is inside bgserve: the struct behind the
 * opaque bgs_res handle, and the only functions that change it
 * (response.c).  A response always comes with its request (request.h,
 * which says who writes what and on which thread).
 */
#ifndef BGSERVE_RESPONSE_H
#define BGSERVE_RESPONSE_H

#include "bgserve.h"
#include "deferred.h"
#include "tasks.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

struct bgs_req;

typedef struct response_hdr {
    char *name;
    char *value;
} response_hdr;

/* Headers a response holds without allocating an array for them
 * (Bgserve-Tasks, Location, Retry-After...). */
#define RESPONSE_INLINE_HEADERS 4

struct bgs_res {
    uint32_t status;          /* 200 until set */
    char *content_type;       /* owned; NULL: see response_content_type */
    int untyped;              /* send no Content-Type at all (response_take_body) */
    int close;                /* the answer closes the connection */
    response_hdr *headers;         /* owned; hdr_inline until it outgrows it */
    size_t nheaders, cap_headers;
    response_hdr hdr_inline[RESPONSE_INLINE_HEADERS]; /* the first headers: no malloc */
    /* The body, the only copy.  Once the carrier took it (response_take_body)
     * body is NULL and body_len still says how many bytes it was. */
    char *body;               /* owned (malloc), kept NUL-terminated */
    size_t body_len, body_cap;
    uint32_t mode;            /* BGS_SEQUENTIAL / BGS_CONCURRENT: the group's */
    tasks_group *group;       /* the response's one group (docs/tasks.md):
                                 the route's and the handler's tasks, and
                                 the ids of those queued at once; NULL
                                 until the first of them (dispatch.c
                                 attach_route_tasks, hostapi.c res_group)
                                 and again once dispatch_finish submitted
                                 it.  It lives in group_room
                                 (tasks_group_init) and holds no reference
                                 to the generation: the request's covers
                                 it (tasks_group.c) */
    tasks_group_room group_room; /* the group's storage: no allocation */
    struct bgs_req *req;
    bgs_deferred *deferred;   /* set by the handler or a long-poll; the
                                 connection's reference is dropped by
                                 dispatch_finish */
    int longpoll;             /* suspended on /_bgserve/tasks/ID?wait= */
    int held;                 /* suspended until its tasks are durable */
};

/* ---- the response ------------------------------------------------------ */

/* Free everything a response owns (the same exceptions as request_free). */
void response_free(struct bgs_res *res);

/* Check a header name (RFC 9110 token) and value (no CR, LF, NUL):
 * 0 or BGS_EHEADER. */
int response_check_header(const char *name, const char *value);

/* Append a header bgserve itself sends (Allow, Retry-After): copied,
 * not checked. */
void response_add_header(struct bgs_res *res, const char *name, const char *value);

/* Set a header the plugin asked for: checked, and Content-Type goes to
 * content_type.  0, or BGS_EHEADER / BGS_EINVAL with *why saying what is
 * wrong (nothing changed). */
int response_set_header(struct bgs_res *res, const char *name, const char *value, const char **why);

/* Replace the content type (copied). */
void response_set_content_type(struct bgs_res *res, const char *type);

/* The Content-Type to send: the one set, "text/plain; charset=utf-8"
 * when none was, or NULL for an untyped answer. */
const char *response_content_type(const struct bgs_res *res);

/* Append len bytes to the body; response_vprintf appends formatted text
 * (0 or BGS_EINVAL when the format cannot be expanded). */
void response_append(struct bgs_res *res, const void *data, size_t len);
int response_vprintf(struct bgs_res *res, const char *fmt, va_list ap);

/* The whole answer at once: status and a copy of text as plain text. */
void response_set_text(struct bgs_res *res, unsigned status, const char *text);

/* The whole answer at once, taking over body (malloc'd, may be NULL when
 * len is 0).  type NULL: send no Content-Type. */
void response_take_answer(struct bgs_res *res, unsigned status, const char *type,
                     char *body, size_t len);

/* Hand the body over to the carrier: returns it (malloc'd; NULL when
 * empty) with its length in *len; res keeps body_len for the access log. */
char *response_take_body(struct bgs_res *res, size_t *len);

/* Forget what the handler built (status, headers, body, content type),
 * for an error answer; keep what must outlive it (a deferral, the task
 * group with the tasks queued already: dispatch settles them). */
void response_reset(struct bgs_res *res);

#endif
