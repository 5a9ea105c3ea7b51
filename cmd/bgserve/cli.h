/*
 * cli.h - command-line options and environment into one config struct.
 * Parsed once by main before any thread starts; read-only afterwards.
 */
#ifndef BGSERVE_CLI_H
#define BGSERVE_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "journal.h"
#include "version.h"

typedef struct cli_config {
    const char *plugin_path;  /* the APP.so argument */
    const char *host;         /* --host, default 127.0.0.1 */
    unsigned port;            /* --port / PORT, default 8000; 0 = any */
    unsigned threads;         /* --threads, default: online cores */
    unsigned timeout_s;       /* --timeout, default 30 */
    unsigned conn_limit;      /* --max-connections, default 1024 */
    size_t max_body;          /* --max-body, default 1 MiB */
    unsigned workers;         /* --workers, default 16 */
    unsigned queue_cap;       /* --queue, default 65536 */
    unsigned linger_us;       /* --linger, default QUEUE_LINGER_DEFAULT */
    unsigned inline_us;       /* --inline-tasks, default TASKS_DEFAULT_INLINE_US; 0: off */
    unsigned keep;            /* --keep, default 10000 */
    unsigned drain_timeout_ms;/* --drain-timeout (seconds, fractions ok), default 10 s */
    int introspection;        /* 1 unless --no-introspection */
    int quiet;                /* --quiet */
    int log_json;             /* --log-format json */
    int color;                /* --color=auto|always|never: -1, 1, 0 */
    int check;                /* --check: validate and exit */
    int reload;               /* --reload (also implied by --watch) */
    const char *watch[16];    /* --watch DIR, repeatable */
    unsigned nwatch;
    const char *build_cmd;    /* --build CMD */
    unsigned settle_ms;       /* --reload-settle MS, default 50 */
    unsigned debounce_ms;     /* --watch-debounce MS, default 20 */
    unsigned max_generations; /* --max-generations N, default 8 */
    int single_process;       /* --single-process: no supervisor */
    const char *journal_path; /* --journal FILE, NULL: tasks in memory only */
    journal_sync journal_sync;/* --journal-sync, default normal */
    int journal_sync_given;
    const char *broker_url;   /* --broker URL, or NULL */
    const char *broker_name;  /* --broker-name NAME, or NULL */
    unsigned broker_visibility_ms; /* --broker-visibility MS; 0: the default */
    unsigned broker_capacity; /* --broker-capacity N; 0: no bound */
} cli_config;

enum {
    CLI_RUN = 0,       /* serve (or check) with cfg */
    CLI_EXIT_OK = 1,   /* --help or --version printed: exit 0 */
    CLI_EXIT_USAGE = 2 /* a usage error was printed: exit 2 */
};

/*
 * Parse argv (and PORT from the environment) into cfg.  --help and
 * --version print to out; usage errors print one clear line and a hint
 * to err.  Unknown options, missing values, values out of range and a
 * missing or extra APP.so are usage errors.
 */
int cli_parse(int argc, char **argv, cli_config *cfg, FILE *out, FILE *err);

/* Seconds with an optional fraction ("0.5"; digits past milliseconds are
 * ignored), 0 to 3600, into *out_ms.  0, or -1 when s is not that (the
 * subcommands' --timeout takes the same form as --drain-timeout). */
int cli_seconds_ms(const char *s, unsigned *out_ms);

#endif
