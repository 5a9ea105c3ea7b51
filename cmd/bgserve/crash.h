/*
 * crash.h - fatal signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT):
 * say what plugin code was running, hand the backtrace to the supervisor
 * (or print it), and die of the signal.
 *
 * A crash inside plugin code cannot be survived safely by the process it
 * happened in (the plugin may hold locks or have scribbled on memory),
 * so the serving process does not try: it records which route, task or
 * hook was running and in which generation, then restores the default
 * action and re-raises the signal, so it dies of it and a core can be
 * taken.  The supervisor (supervisor.h) reports and starts a new one.
 *
 * Every call into plugin code is bracketed by a crash_frame on the
 * caller's stack:
 *     crash_frame cf;
 *     crash_enter_route(&cf, route->method, route->path, req->id, gen);
 *     rc = route->handler(req, res);
 *     crash_leave(&cf);
 * The frames form a per-thread stack (thread-local, touched only by its
 * own thread and by the signal handler running on that thread), so
 * nesting (a stop hook run while a task releases its generation) reports
 * the innermost call.  The enter functions also give the thread an
 * alternate signal stack the first time, so a stack overflow in plugin
 * code is reported too.  Without crash_install they only record frames.
 */
#ifndef BGSERVE_CRASH_H
#define BGSERVE_CRASH_H

#include <stdint.h>

enum {
    CRASH_ROUTE = 1,
    CRASH_TASK = 2,
    CRASH_HOOK = 3,
};

/* Fields point at strings that outlive the call (server copies). */
typedef struct crash_frame {
    struct crash_frame *prev;
    int kind;            /* CRASH_* */
    const char *a;       /* route: method; task: name; hook: hook name */
    const char *b;       /* route: path template; else NULL */
    const char *rid;     /* request id, or NULL */
    uint64_t task_id;    /* task: its id */
    uint64_t gen;        /* generation number */
    const char *plugin;  /* plugin name, or NULL */
} crash_frame;

/* Install the handlers and the main thread's alternate stack (main
 * thread, before other threads start).  Also preloads what backtrace()
 * needs, so the handler does not load libraries.  supervisor_fd: the
 * pipe the crash record goes to (supervisor.h), or -1 to print the
 * report on stderr (--single-process). */
void crash_install(int supervisor_fd);

/* Tell the handler how to count the tasks a crash loses (queued and
 * running); fn must be async-signal-safe.  Main thread, at startup. */
typedef void (*crash_gauges_fn)(void *arg, uint64_t *queued, uint64_t *running);
/* The task gauges a crash report prints: fn(arg, ...) must be lock-free
 * and async-signal-safe (tasks_gauges with the engine).  The handler is
 * the process's, so this is the one process-wide pointer to the engine. */
void crash_set_gauges(crash_gauges_fn fn, void *arg);

void crash_enter_route(crash_frame *f, const char *method, const char *path,
                       const char *rid, uint64_t gen, const char *plugin);
void crash_enter_task(crash_frame *f, const char *name, uint64_t task_id,
                      const char *rid, uint64_t gen);
void crash_enter_hook(crash_frame *f, const char *hook, uint64_t gen,
                      const char *plugin);
/* Pop f (the innermost frame of this thread). */
void crash_leave(crash_frame *f);

/* The innermost frame of this thread, or NULL (for tests). */
const crash_frame *crash_current(void);

#endif
