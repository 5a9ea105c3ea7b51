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

#include <stdatomic.h>
#include <stdint.h>

typedef struct generation generation;

/* The app handle plugins see.  Owned by its generation. */
struct bgs_app {
    generation *gen;
    void *data;            /* bgs_app_set_data; the plugin's to use */
    int failed;            /* set by bgs_app_fail */
    int starting;          /* 1 while the start hook runs */
    int check_only;        /* --check: validate, register nothing */
    char fail_msg[512];
};

struct generation {
    atomic_long refs;
    uint64_t number;       /* 1 for the first load */
    plugin *plugin;
    struct bgs_app app;
    services *services;
    int started;           /* the start hook succeeded: stop hook runs */
};

/*
 * Load path as generation number `number`: load and validate the plugin,
 * run its start hook, register its periodic tasks.  The new generation
 * has one reference (the caller's).  On failure returns -1 with the full
 * message in err and nothing left loaded.
 */
#define GEN_CHECK_ONLY 0x1u /* --check: run the hooks, schedule nothing */

int gen_create(const char *path, uint64_t number, unsigned flags,
               generation **out, char *err, size_t errlen);

void gen_retain(generation *g);
/* Drop a reference; the last one retires the generation. */
void gen_release(generation *g);

/* The current generation, with a reference the caller must release. */
generation *gen_current(void);
/* Make g current (takes over the caller's reference); the previous one
 * loses the reference the "current" slot held. */
void gen_set_current(generation *g);

/* The host API table (hostapi.c). */
const bgs_host_api *hostapi_table(void);

#endif
