/*
 * reload.h - what triggers a reload: inotify on the plugin file
 * (--reload), source directories and a build command (--watch, --build),
 * and SIGHUP (reload_request).
 */
#ifndef BGSERVE_RELOAD_H
#define BGSERVE_RELOAD_H

#include <stddef.h>

#define RELOAD_MAX_WATCH 16

typedef struct reload_config {
    const char *plugin_path;
    int watch_plugin;                 /* --reload (or --watch) */
    const char *watch_dirs[RELOAD_MAX_WATCH];
    unsigned nwatch;
    const char *build_cmd;            /* NULL: none */
    unsigned settle_ms;               /* after the last write to the .so */
    unsigned debounce_ms;             /* after the last source change */
    unsigned max_generations;
} reload_config;

/* Start the reload thread.  Returns 0, or -1 with a message in err (a
 * watched directory that cannot be watched, say). */
int reload_start(const reload_config *cfg, char *err, size_t errlen);

/* Ask for a reload now (SIGHUP); returns at once. */
void reload_request(void);

/* Stop the thread (a running build is terminated). */
void reload_stop(void);

#endif
