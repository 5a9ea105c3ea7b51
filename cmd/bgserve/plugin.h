/*
 * plugin.h - the loader: dlopen a plugin, validate its descriptor against
 * ABI v1, and copy its route and task tables into server-owned memory.
 *
 * Nothing here keeps a pointer into the plugin image except function
 * pointers (handlers, task functions, hooks), which are only called while
 * the plugin is loaded (the generation that owns it holds it open).
 */
#ifndef BGSERVE_PLUGIN_H
#define BGSERVE_PLUGIN_H

#include "bgserve.h"
#include "latency.h"
#include "router.h"

#include <stddef.h>
#include <stdint.h>

struct plugin_task;

typedef struct plugin_route_task {
    char *name;       /* copied */
    const struct plugin_task *def; /* the task it names, resolved at load */
    void *payload;    /* copied; NULL when len is 0 */
    size_t len;
} plugin_route_task;

/* What the route served in this generation: counted by dispatch_finish
 * when a request it matched completes (relaxed atomics, any thread). */
typedef struct plugin_route_stats {
    atomic_ulong requests;
    atomic_ulong errors;       /* answered 5xx, or not answered */
    latency_hist latency;      /* request start to completion, us */
} plugin_route_stats;

typedef struct plugin_route {
    char *method;     /* copied, upper case */
    char *path;       /* copied template */
    bgs_handler_fn handler;
    plugin_route_task *tasks;
    uint32_t ntasks;
    uint32_t mode;    /* BGS_SEQUENTIAL or BGS_CONCURRENT */
    plugin_route_stats *stats; /* owned; mutable through a const route */
} plugin_route;

/* What a task definition's zero fields mean, here only: the loader fills
 * them into plugin_task, and the task engine uses them for ad hoc tasks, which
 * have no definition. */
#define PLUGIN_DEFAULT_MAX_ATTEMPTS 1
#define PLUGIN_DEFAULT_BACKOFF_BASE_MS 100
#define PLUGIN_DEFAULT_BACKOFF_CAP_MS 30000

typedef struct plugin_task {
    char *name;       /* copied */
    bgs_task_fn fn;
    uint32_t max_attempts;    /* >= 1: defaults applied (PLUGIN_DEFAULT_*) */
    uint32_t backoff_base_ms; /* defaults applied */
    uint32_t backoff_cap_ms;  /* defaults applied */
    uint32_t max_concurrency; /* 0: no cap */
    uint32_t every_ms;
    uint32_t timeout_ms;
    uint32_t flags;
    struct task_kind *kind;   /* the task engine's counters for this name,
                               * set by tasks_resolve when a generation is
                               * made; NULL: found by name */
} plugin_task;

typedef struct plugin {
    char *path;            /* the path as given by the user */
    char *load_path;       /* the path as resolved ("./x.so" for "x.so") */
    char *copy_path;       /* the private copy actually dlopened */
    void *dl;              /* dlopen handle */
    char *name;            /* descriptor name (copied), "" when NULL */
    char *version;         /* descriptor version (copied), "" when NULL */
    uint32_t abi_major, abi_minor;
    plugin_route *routes;
    size_t nroutes;
    plugin_task *tasks;
    size_t ntasks;
    router *router;        /* route data: plugin_route * */
    int (*start)(bgs_app *app);
    void (*stop)(bgs_app *app);
} plugin;

/*
 * Load and validate the plugin at path (a path without '/' is taken
 * relative to the working directory, never searched for).  api is handed
 * to the plugin's bgserve_plugin_v1.  On success *out owns the plugin
 * (free it with plugin_unload).  On failure returns -1, nothing stays
 * loaded, and err holds the complete refusal message, for example
 *   bgserve: cannot load plugin 'x.so': <what is wrong>
 *     fix: <what to do>
 * The start hook is not run here.
 */
int plugin_load(const char *path, const bgs_host_api *api, plugin **out,
                char *err, size_t errlen);

/*
 * Validate a descriptor (pure: no dlopen).  Returns 0 or -1 with the
 * reason and the fix in err (without the "cannot load plugin" prefix).
 */
int plugin_validate(const bgs_plugin *d, char *err, size_t errlen);

/* dlclose and free everything; NULL is fine. */
void plugin_unload(plugin *p);

/* The task with this name, or NULL. */
const plugin_task *plugin_find_task(const plugin *p, const char *name);

#endif
