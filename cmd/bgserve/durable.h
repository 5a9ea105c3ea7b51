/*
 * durable.h - a request's wait for the journal: how many of the commits
 * that cover its tasks are still to come, and whether one failed.
 *
 * With --journal or --broker, the http room gives each request a gate.
 * The task engine counts on it every batch it hands to the journal (or
 * adds to the broker's stream) for that request (durable_expect, then
 * durable_done as the batch's completion, from the journal's writer
 * thread, or at once after the broker's round trip).  Before the response leaves, http
 * looks at the gate: nothing pending, send; else suspend the connection
 * and durable_arm it, so the last completion resumes it; then answer
 * 503 instead when a commit failed (durable_status).
 *
 * Reference counted: the request holds one reference (durable_new) and
 * each expected completion one, so a completion may come after the
 * request is gone.  Every function is thread-safe.
 */
#ifndef BGSERVE_DURABLE_H
#define BGSERVE_DURABLE_H

#include <stddef.h>

typedef struct durable_gate durable_gate;

/* A gate with nothing pending, and the caller's reference. */
durable_gate *durable_new(void);
/* Drop the caller's reference (NULL: nothing). */
void durable_release(durable_gate *g);

/* One more completion to come: call before handing the batch over with
 * durable_done as its completion and g as its argument. */
void durable_expect(durable_gate *g);
/* The hand-over failed (no completion will come): undo durable_expect. */
void durable_unexpect(durable_gate *g);
/* The completion (a queue_done_fn / journal_done_fn): status 0 when the
 * batch is on disk, else why not (msg, copied).  Drops its reference. */
void durable_done(void *g, int status, const char *msg);

/* Completions still to come. */
unsigned durable_pending(durable_gate *g);
/*
 * The connection is suspended: resume(conn) is called once, by the last
 * completion, or at once (on this thread) when none is pending any more.
 * At most once per gate.
 */
void durable_arm(durable_gate *g, void (*resume)(void *conn), void *conn);
/* 0 when every completion so far said durable, else the first failure's
 * status, with its message copied into msg. */
int durable_status(durable_gate *g, char *msg, size_t cap);

#endif
