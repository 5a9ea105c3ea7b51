/*
 * reload.h - what triggers a reload: inotify on the plugin file
 * (--reload), source directories and a build command (--watch, --build),
 * and SIGHUP (reload_request).
 */
#ifndef BGSERVE_RELOAD_H
#define BGSERVE_RELOAD_H

#include <stddef.h>

#define RELOAD_MAX_WATCH 16
/* The defaults of --reload-settle, --watch-debounce and --max-generations
 * (cli.c sets them; a settle of 0 here is taken as the default). */
#define RELOAD_DEFAULT_SETTLE_MS 50
#define RELOAD_DEFAULT_DEBOUNCE_MS 20
#define RELOAD_DEFAULT_MAX_GENERATIONS 8

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

/* Everything that can fail before the thread runs: the wake-up eventfd,
 * inotify and its watches (events that arrive from here on are kept for
 * the thread).  Returns 0, or -1 with a message in err (inotify not
 * available, a watched directory that cannot be watched) and nothing
 * left open.  Called before the plugin's start hook, so these are
 * reported before anything starts. */
int reload_prepare(const reload_config *cfg, char *err, size_t errlen);

/* Start the reload thread on what reload_prepare set up (once serving).
 * Returns 0, or -1 with a message in err. */
int reload_start(char *err, size_t errlen);

/* Ask for a reload now (SIGHUP); returns at once. */
void reload_request(void);

/* Stop the thread (a running build is terminated) and close what
 * reload_prepare opened; also after a reload_prepare without a start. */
void reload_stop(void);

#endif
