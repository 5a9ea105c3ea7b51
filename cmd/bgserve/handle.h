/*
 * handle.h - what the plugin holds in place of a pointer: the opaque
 * bgs_req, bgs_res, bgs_task_ctx, bgs_deferred and bgs_app handles.
 *
 * A handle names a slot in one process-wide table and the slot's serial
 * number; closing the handle bumps the serial, so every later use of it,
 * from any thread, finds a different serial and is refused before any
 * object is touched.  The plugin never receives an address it could use
 * after the object is freed.
 *
 * Two kinds of lifetime:
 *  - thread-bound (requests, responses, task contexts): valid only on the
 *    thread that opened it, until that thread closes it (the handler or
 *    the task run returned).  handle_get needs no lock: only the owner
 *    closes, and the owner is the caller.
 *  - any-thread (deferred responses, apps): the caller of handle_get must
 *    hold the lock under which the owning room closes its handles
 *    (deferred.c holds its `lock`, generation.c its `app_lock`), so the
 *    object cannot go away meanwhile.
 */
#ifndef BGSERVE_HANDLE_H
#define BGSERVE_HANDLE_H

enum {
    HANDLE_REQ = 1,
    HANDLE_RES = 2,
    HANDLE_TASK = 3,
    HANDLE_DEFERRED = 4,
    HANDLE_APP = 5,
};

#define HANDLE_THREAD_BOUND 1 /* handle_open flag: usable on this thread only */

/* A new live handle for obj (never NULL).  Aborts, like xmalloc, when
 * the table is full (millions of live handles). */
void *handle_open(int kind, void *obj, int flags);

/* End h's life: every later handle_get on it returns NULL.  NULL is
 * ignored.  Thread-bound handles are closed by their owner thread. */
void handle_close(void *h);

/* Why a lookup failed, for the misuse warning. */
enum {
    HANDLE_OK = 0,
    HANDLE_NULL,          /* h is NULL */
    HANDLE_WRONG_KIND,    /* a handle of another kind (or not a handle) */
    HANDLE_ENDED,         /* its life ended */
    HANDLE_OTHER_THREAD,  /* thread-bound, used from another thread */
};

/* The object behind h when h is a live handle of this kind usable on
 * this thread; else NULL, with the reason in *why (may be NULL). */
void *handle_get(int kind, const void *h, int *why);

/* Text for a HANDLE_* reason ("the handle's life has ended"). */
const char *handle_why(int why);

/* "request", "response", "task context", "deferred response", "app". */
const char *handle_kind_name(int kind);

#endif
