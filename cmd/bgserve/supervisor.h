/*
 * supervisor.h - the process that outlives crashes.
 *
 * `bgserve APP.so` (without --single-process or --check) binds the
 * listening socket and becomes a supervisor: it forks the serving
 * process, which inherits the socket and runs everything else (main.c
 * goes on as before in the child).  When the serving process dies of a
 * signal the supervisor prints the crash report with symbolized frames
 * and forks a new serving process on the same socket, so clients that
 * connect meanwhile wait in the backlog.  A build that keeps crashing is
 * not restarted: under --reload the next serving process shows a crash
 * page until a new build loads; otherwise bgserve gives up with
 * 128+signal.  SIGINT, SIGTERM and SIGHUP sent to the supervisor are
 * passed on to the serving process; its exit status becomes bgserve's.
 */
#ifndef BGSERVE_SUPERVISOR_H
#define BGSERVE_SUPERVISOR_H

#include "json.h"

#include <stdint.h>

/* Crashes of one build (or one crash before it serves) that make it a
 * crash loop. */
#define SUPERVISOR_CRASH_LIMIT 3

enum { SUPERVISOR_CHILD = -1 };

typedef struct supervisor_config {
    const char *plugin_path; /* APP.so as given */
    int reload;              /* --reload: wait for the next build of a crash loop */
    int journal;             /* --journal: the next serving process runs the
                              * crashed one's tasks again (the report says so) */
} supervisor_config;

/*
 * Be the supervisor of the bound listening socket fd (http_bind).
 * Returns SUPERVISOR_CHILD in a new serving process (main goes on
 * starting the server; the accessors below describe its situation), or
 * in the supervisor the exit status bgserve ends with.  Call before any
 * thread exists.
 */
int supervisor_run(const supervisor_config *cfg, int fd);

/* In a serving process: the inherited listening socket, or -1 when not
 * supervised (bind it yourself). */
int supervisor_listen_fd(void);
/* The pipe the crash handler writes its record to, or -1. */
int supervisor_report_fd(void);
/* 1 when this process must print the listening line (the first one to
 * serve; also 1 when not supervised). */
int supervisor_announce(void);
/* In a serving process started after a crash in a task: that task's id
 * (and the signal in *sig, may be NULL); 0 otherwise. */
uint64_t supervisor_crashed_task(int *sig);
/* 1 when the previous build crash-looped: start without a generation
 * and answer with the crash page until a reload loads a new build. */
int supervisor_crash_mode(void);
/* In crash mode: 1 when the plugin file is no longer the build that
 * crash-looped (call once its watch is set up: no write is missed). */
int supervisor_build_changed(void);
/* The report of the crash that started crash mode (NUL-terminated), or
 * NULL. */
const char *supervisor_crash_report(void);
/* Tell the supervisor this process is about to serve: the plugin is
 * loaded and its start hook ran (a later crash is not "before serving"). */
void supervisor_ready(void);
/* Write "crashes", "last_crash" (null before any), "serving_processes"
 * and "pid" (this serving process's) into the open object j. */
void supervisor_stats_json(json *j);

#endif
