/*
 * events.h - what the live dashboard (dashboard.h) needs to hear from the
 * rooms below it, without those rooms knowing the dashboard: how many
 * dashboards are watching, which task records changed since the
 * dashboard last looked, and the reload history.
 *
 * Cheap when nobody watches: events_task_changed is one relaxed atomic
 * load then.  The task engine calls it under its record lock, so this
 * room's lock is a leaf: nothing is called while holding it.
 */
#ifndef BGSERVE_EVENTS_H
#define BGSERVE_EVENTS_H

#include "json.h"

#include <stddef.h>
#include <stdint.h>

/* Task ids remembered between two looks of the dashboard; past this the
 * dashboard is told it missed some (events_take_tasks). */
#define EVENTS_DIRTY_MAX 1024
/* Reloads (and failed reloads and builds) remembered, newest last. */
#define EVENTS_RELOADS_MAX 32

/* A dashboard started or stopped watching (dashboard.c, any thread). */
void events_watch_begin(void);
void events_watch_end(void);
/* Dashboards watching now. */
unsigned events_watchers(void);

/* The record of task id changed (any thread; may hold the task engine's
 * record lock).  Remembered only while a dashboard watches. */
void events_task_changed(uint64_t id);

/* Move the remembered ids (oldest first, possibly repeated) into ids,
 * at most cap; returns how many.  *missed is set to 1 when ids were
 * dropped since the last call (more than EVENTS_DIRTY_MAX, or more than
 * cap), else 0. */
size_t events_take_tasks(uint64_t *ids, size_t cap, int *missed);

/* Task log lines kept for the dashboard (while one watches), and the
 * longest kept (longer ones are cut). */
#define EVENTS_LOGS_MAX 512
#define EVENTS_LOG_LINE 256

/* Task id logged line at level (BGS_LOG_*); kept only while a dashboard
 * watches (the caller checks events_watchers() first to skip formatting). */
void events_task_log(uint64_t id, uint32_t level, const char *line);

/* The number of the last line kept (0: none yet). */
uint64_t events_log_seq(void);

/* The kept lines numbered after *since as a JSON array of [task id,
 * level, wall ms, text], oldest first; *since becomes the last one's
 * number.  Returns how many were written. */
size_t events_logs_json(json *j, uint64_t *since);

/* A load of the plugin: generation number (0 when it failed), ok, how
 * long loading took, and the error (copied; NULL when ok).  kind:
 * "load", "reload" or "build". */
void events_reload(const char *kind, uint64_t generation, int ok, uint64_t load_us,
                   const char *error);

/* Bumped by every events_reload: the dashboard resends the history when
 * it changed. */
uint64_t events_reload_seq(void);

/* The history as a JSON array of {kind, generation, ok, at, load_ms,
 * error}, oldest first. */
void events_reloads_json(json *j);

#endif
