/*
 * generation.h - one loaded instance of the plugin, reference counted.
 *
 * A generation owns its plugin (dlopen handle, tables, router), its app
 * handle and its services.  Each request and each task holds a reference
 * to the generation it started in; the current generation is swapped by
 * reload, and a generation retires (stop hook, services destroyed,
 * dlclose) when its last reference goes.
 */
#ifndef BGSERVE_GENERATION_H
#define BGSERVE_GENERATION_H

#include "bgserve.h"
#include "plugin.h"
#include "services.h"
#include "tasks.h"

#include <stdatomic.h>
#include <stdint.h>

typedef struct generation generation;

/* The app behind the handle plugins see.  Owned by its generation. */
struct bgs_app {
    generation *gen;
    void *handle;          /* what the plugin holds (handle.h): opened before
                            * the start hook, closed after the stop hook */
    void *data;            /* bgs_app_set_data; the plugin's to use */
    int failed;            /* set by bgs_app_fail */
    int starting;          /* 1 while the start hook runs */
    int check_only;        /* --check: validate, register nothing */
    char fail_msg[512];
    /* Reload hand-over, guarded by the hand-over lock in generation.c. */
    generation *handover_from; /* the previous generation, during start */
    void *handover;            /* offered to the next generation */
    int handover_taken;        /* the next generation took it */
};

/* A periodic run registered by the start hook or the task table, held
 * until the generation is activated (made current). */
typedef struct generation_periodic {
    struct generation_periodic *next;
    const plugin_task *def;    /* in the generation's plugin */
    uint32_t interval_ms;
    void *payload;
    size_t len;
    uint32_t flags;
} generation_periodic;

struct generation {
    atomic_long refs;
    uint64_t number;       /* 1 for the first load */
    plugin *plugin;
    struct bgs_app app;
    services *services;
    int started;           /* the start hook succeeded: stop hook runs */
    generation_periodic *periodic; /* registered at start, scheduled at activation */
    tasks_owner owner;     /* what the generation's tasks hold (generation_retain) */
    tasks_engine *tasks;          /* the engine its tasks go to (generation_deps); NULL
                            * in check-only tools */
    uint64_t load_us;      /* how long loading and starting took */
    atomic_int quiet;      /* generation_abandon_current: retire without a line */
    uint64_t loaded_wall_us; /* when it finished loading (wall clock) */
};

/*
 * What generations need: the host API table every plugin is given
 * (hostapi_table(), passed in because hostapi sits above this room), and
 * the task engine their tasks and periodic schedules go to.  A
 * generation's tasks hold it through its owner handle (tasks_owner),
 * so the engine never sees this header.  tasks may be NULL in tools that
 * only load with GEN_CHECK_ONLY and never activate a generation.
 */
typedef struct generation_deps {
    const bgs_host_api *host_api;
    tasks_engine *tasks;
} generation_deps;

/* Set once, before the first generation_create and before any other thread
 * starts (main, routes_cmd); copied. */
void generation_setup(const generation_deps *deps);

/*
 * Load path as generation number `number`: load and validate the plugin,
 * run its start hook, register its periodic tasks.  The new generation
 * has one reference (the caller's).  On failure returns -1 with the full
 * message in err and nothing left loaded.
 */
#define GEN_CHECK_ONLY 0x1u /* --check: run the hooks, schedule nothing */

int generation_create(const char *path, uint64_t number, unsigned flags,
               generation **out, char *err, size_t errlen);
/* generation_create for another task engine than generation_setup's (the testing
 * library: one engine per instance).  engine may be NULL only with
 * GEN_CHECK_ONLY.  Says nothing to the dashboard's events. */
int generation_create_for(tasks_engine *engine, const char *path, uint64_t number, unsigned flags,
                   generation **out, char *err, size_t errlen);

void generation_retain(generation *g);
/* Drop a reference; the last one retires the generation. */
void generation_release(generation *g);

/* Schedule g's periodic tasks: call when g becomes current. */
void generation_activate(generation *g);

/* Register a periodic run during the start hook (hostapi).  BGS_ENOTASK,
 * BGS_EINVAL. */
int generation_add_periodic(generation *g, const char *task, uint32_t interval_ms,
                     const void *payload, size_t len, uint32_t flags);

/*
 * The app behind plugin handle h (bgs_app *), for a host function: on
 * success the app-handle lock is held for reading until generation_app_leave, so
 * its generation cannot retire meanwhile (never call generation_release, or
 * anything that may, in between).  NULL, with the HANDLE_* reason in
 * *why and no lock held, for a handle that is NULL, of another kind or
 * whose generation has retired.
 */
struct bgs_app *generation_app_enter(const void *h, int *why);
void generation_app_leave(void);

/* The current generation's plugin name ("?" when none), copied into buf;
 * takes no reference. */
void generation_current_name(char *buf, size_t cap);

/* Hand-over between generations (hostapi). */
void generation_handover_set(bgs_app *app, void *state);
void *generation_handover_get(bgs_app *app);
int generation_handover_taken(bgs_app *app);

/*
 * Reload: load path as the next generation, swap it in, retire the old
 * one when its last reference goes.  At most max_generations may be
 * loaded at once: past that, wait (and say which one is held).  On
 * failure the current generation keeps serving and the reason is printed
 * in the same words as at startup.  Returns 0 or -1.  One reload at a time.
 */
int generation_reload(const char *path, unsigned max_generations);

/* A build run for a reload failed: counted in reload_failures, and why
 * (e.g. the compiler's first error line) becomes last_reload_error. */
void generation_note_build_failure(const char *why);

/* Write "generation", "reloads", "reload_failures", "last_reload_error". */
struct json;
void generation_stats_json(struct json *j);

/*
 * Where "the current generation" lives.  The process has one (NULL below
 * means it: generation_current, generation_set_current, reloads and the dashboard use
 * it); the testing library makes one per instance, so requests
 * dispatched for that instance (dispatch_env.slot) are served by its own
 * plugin.  A slot holds one reference to its generation.
 */
typedef struct generation_slot generation_slot;
/* A new empty slot; generation_slot_free drops its generation (the stop hook
 * runs when that was the last reference).  Never NULL. */
generation_slot *generation_slot_new(void);
void generation_slot_free(generation_slot *s);
/* The slot's generation with a reference the caller must release, or
 * NULL.  Any thread. */
generation *generation_slot_get(generation_slot *s);
/* Make g the slot's (takes over the caller's reference); the previous one
 * loses the reference the slot held.  Any thread. */
void generation_slot_set(generation_slot *s, generation *g);
/* generation_slot_set(s, NULL), its retirement printing no "retired" line. */
void generation_slot_abandon(generation_slot *s);

/* The current generation, with a reference the caller must release. */
generation *generation_current(void);
/* Make g current (takes over the caller's reference); the previous one
 * loses the reference the "current" slot held. */
void generation_set_current(generation *g);

/* Start-up failed after the start hook (the server never served): drop
 * the current generation like generation_set_current(NULL), but its retirement
 * (stop hook, unload) prints no "generation N retired". */
void generation_abandon_current(void);

#endif
