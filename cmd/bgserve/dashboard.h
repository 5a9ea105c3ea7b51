/*
 * dashboard.h - the live dashboard at GET /_bgserve/ (docs/dashboard.md):
 * its page (HTML, JavaScript and CSS compiled into the binary), its event
 * stream GET /_bgserve/events (Server-Sent Events) and its action, POST
 * /_bgserve/tasks/ID/retry.  Exists only with introspection on.
 *
 * The http room does the I/O: it asks dashboard_handle for the page and
 * the action, and streams an event stream by reading a dashboard_client
 * (dashboard_client_read) from libmicrohttpd's content reader callback.
 */
#ifndef BGSERVE_DASHBOARD_H
#define BGSERVE_DASHBOARD_H

#include "introspect.h"

#include <stddef.h>
#include <stdint.h>

/* Updates are built at most this often, and only while a client is
 * connected; stats go out every DASHBOARD_STATS_EVERY ticks. */
#define DASHBOARD_TICK_MS 250u
#define DASHBOARD_STATS_EVERY 4u
/* Events kept for clients that reconnect (Last-Event-ID), at most this
 * many and this many bytes; a client further behind gets a snapshot. */
#define DASHBOARD_RING_EVENTS 256u
#define DASHBOARD_RING_BYTES (4u << 20)
/* Task records in a snapshot, and in an update after missed changes. */
#define DASHBOARD_RECENT_TASKS 200u
/* The dead letters (--journal) a snapshot holds at most, the newest. */
#define DASHBOARD_DEAD_LETTERS 100u

typedef struct dashboard_config {
    /* The http room's counters (requests, errors, connections); called
     * on the dashboard's thread and on HTTP threads. */
    void (*counters)(introspect_counters *c);
    struct tasks_engine *tasks; /* the engine whose tasks are shown */
} dashboard_config;

/* Start the thread that builds updates (it sleeps while no client is
 * connected).  Before serving; 0 or -1. */
int dashboard_start(const dashboard_config *cfg);
/* End every stream (dashboard_end_streams) and join the thread.  After
 * the last client is woken, before libmicrohttpd stops. */
void dashboard_stop(void);

/* ---- the event stream ------------------------------------------------------- */

typedef struct dashboard_client dashboard_client;

/*
 * A client of GET /_bgserve/events.  last_event_id: the Last-Event-ID
 * header (NULL: none): a client that reconnects gets the events it
 * missed, or a fresh snapshot when they are gone.  wake(arg) is called
 * (from any thread, with no lock held) once after each read that
 * returned 0, when there is more to read.  The caller owns the client
 * until dashboard_client_free.
 */
dashboard_client *dashboard_client_new(const char *last_event_id, void (*wake)(void *arg),
                                       void *arg);

/* The next bytes of the stream into buf: > 0 bytes, 0 when there is
 * nothing now (wake will be called: suspend until then), -1 at the end
 * of the stream (the server is stopping). */
long dashboard_client_read(dashboard_client *c, char *buf, size_t max);

/* The client went away (or its stream ended): forget it.  Must not race
 * with a wake: call it only when the stream is not waiting. */
void dashboard_client_free(dashboard_client *c);

/* Every stream ends at its next read; waiting ones are woken (the
 * shutdown cut-over).  Clients connecting later end at once. */
void dashboard_end_streams(void);

/* ---- the page and the action ---------------------------------------------- */

/*
 * Answer method path (decoded, under /_bgserve) when it is the page, one
 * of its assets, or the retry action; header(ctx, name) looks up a
 * request header.  Returns 1 with *out filled (body malloc'd), or 0 when
 * the path is not the dashboard's.
 */
int dashboard_handle(const char *method, const char *path,
                     const char *(*header)(void *ctx, const char *name), void *ctx,
                     introspect_reply *out);

#endif
