/*
 * cli.c - command-line options and the PORT environment variable into a
 * cli_config; --help and --version text; usage errors.
 *
 * A small parser of its own (no getopt): it keeps no state between calls,
 * so cli_parse is re-entrant and tests can call it any number of times.
 * Accepted forms: "--opt value", "--opt=value", "-p value", "-pvalue",
 * and "--" to end the options.  PORT from the environment is the
 * default for --port; an empty PORT counts as unset, an invalid one is a
 * usage error (a typo there would otherwise go unnoticed).  Runs once in main before any thread
 * starts; it owns no shared state.  Strings in the config (host, plugin
 * path) point into argv.
 */
#include "cli.h"

#include "bgserve.h"
#include "http.h"
#include "journal.h"
#include "pace.h"
#include "queue.h"
#include "reload.h"
#include "tasks.h"
#include "urls.h"
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_PORT 8000u
/* Defaults of options no other room owns (each written here only: the
 * help text prints them with UTIL_STR). */
#define CLI_DEFAULT_TIMEOUT_S 30
#define CLI_DEFAULT_CONN_LIMIT 1024
#define CLI_DEFAULT_DRAIN_S 10
#define MAX_BODY_CAP (1024ull * 1024 * 1024)

enum opt_id {
    O_HOST, O_PORT, O_THREADS, O_TIMEOUT, O_MAXCONN, O_MAXBODY, O_WORKERS,
    O_QUEUE, O_LINGER, O_INLINE, O_KEEP, O_DRAIN, O_NOINTRO, O_QUIET, O_LOGFMT, O_COLOR, O_CHECK,
    O_HELP, O_VERSION, O_RELOAD, O_WATCH, O_BUILD, O_SETTLE, O_MAXGEN, O_SINGLE, O_DEBOUNCE,
    O_JOURNAL, O_JSYNC, O_BROKER, O_BROKER_NAME, O_BROKER_VIS, O_BROKER_CAP
};

typedef struct opt {
    const char *name; /* long name without "--" */
    char short_name;  /* 0: none */
    int has_arg;
    enum opt_id id;
} opt;

static const opt options[] = {
    {"host", 0, 1, O_HOST},
    {"port", 'p', 1, O_PORT},
    {"threads", 0, 1, O_THREADS},
    {"timeout", 0, 1, O_TIMEOUT},
    {"max-connections", 0, 1, O_MAXCONN},
    {"max-body", 0, 1, O_MAXBODY},
    {"workers", 0, 1, O_WORKERS},
    {"queue", 0, 1, O_QUEUE},
    {"linger", 0, 1, O_LINGER},
    {"inline-tasks", 0, 1, O_INLINE},
    {"keep", 0, 1, O_KEEP},
    {"drain-timeout", 0, 1, O_DRAIN},
    {"journal", 0, 1, O_JOURNAL},
    {"journal-sync", 0, 1, O_JSYNC},
    {"no-introspection", 0, 0, O_NOINTRO},
    {"quiet", 'q', 0, O_QUIET},
    {"log-format", 0, 1, O_LOGFMT},
    {"color", 0, 1, O_COLOR},
    {"check", 0, 0, O_CHECK},
    {"reload", 0, 0, O_RELOAD},
    {"watch", 0, 1, O_WATCH},
    {"build", 0, 1, O_BUILD},
    {"reload-settle", 0, 1, O_SETTLE},
    {"watch-debounce", 0, 1, O_DEBOUNCE},
    {"max-generations", 0, 1, O_MAXGEN},
    {"single-process", 0, 0, O_SINGLE},
    {"broker", 0, 1, O_BROKER},
    {"broker-name", 0, 1, O_BROKER_NAME},
    {"broker-visibility", 0, 1, O_BROKER_VIS},
    {"broker-capacity", 0, 1, O_BROKER_CAP},
    {"concurrency", 0, 1, O_WORKERS}, /* bgserve worker's word for --workers */
    {"help", 'h', 0, O_HELP},
    {"version", 'V', 0, O_VERSION},
};

#define NOPTIONS (sizeof(options) / sizeof(options[0]))

/* ------------------------------------------------------------------ */
/* Help and version                                                    */
/* ------------------------------------------------------------------ */

static unsigned online_cores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > 1024 ? 1024u : (unsigned)n;
}

static void print_help(FILE *out)
{
    fprintf(out,
"Usage: bgserve [OPTIONS] APP.so\n"
"       bgserve new NAME\n"
"       bgserve routes [--json] APP.so\n"
"       bgserve worker --broker URL [--concurrency N] [--reload] APP.so\n"
"       bgserve request APP.so METHOD PATH [-H 'Name: value']... [-d DATA]\n"
"Serve a plugin's routes over HTTP and run the background tasks its\n"
"responses attach, on worker threads, after each response is sent.\n"
"\n"
"Commands:\n"
"  new NAME                   create ./NAME/ with a plugin source, a Makefile\n"
"                             (make, make check, make run; built through\n"
"                             pkg-config bgserve) and a .gitignore\n"
"  routes [--json] APP.so     print the plugin's route and task tables\n"
"  worker --broker URL APP.so run APP.so's named tasks from the broker, with\n"
"                             no HTTP (--concurrency N at once, default " UTIL_STR(TASKS_DEFAULT_WORKERS) ";\n"
"                             --reload, --watch, --build as for serving)\n"
"  request APP.so METHOD PATH serve one request in process, run its tasks to\n"
"                             completion, print the answer and each task's\n"
"                             outcome (bgserve request --help)\n"
"\n"
"Options:\n"
"      --host HOST            address to listen on (default 127.0.0.1)\n"
"  -p, --port N               port, 0-65535; 0 picks a free one\n"
"                             (default: $PORT if set, else 8000)\n"
"      --threads N            HTTP threads, 1-1024 (default: online cores, %u)\n"
"      --timeout SECONDS      idle connection timeout, 1-86400 (default " UTIL_STR(CLI_DEFAULT_TIMEOUT_S) ")\n"
"      --max-connections N    connections at once, 1-1000000 (default " UTIL_STR(CLI_DEFAULT_CONN_LIMIT) "); past\n"
"                             it the oldest idle keep-alive connection is\n"
"                             closed, else new clients get 503 + Retry-After\n"
"      --max-body SIZE        largest request body, 0 to 1G; suffix k, M or G\n"
"                             for binary multiples (default 1M)\n"
"      --workers N            task worker threads, 1-1024 (default " UTIL_STR(TASKS_DEFAULT_WORKERS) ").  Tasks\n"
"                             mostly wait on I/O (mail, HTTP calls, files), so\n"
"                             more workers than cores pays off\n"
"      --queue N              tasks waiting to run at most, 1-16777216; when\n"
"                             full, attaching a task fails with BGS_EFULL\n"
"                             (default " UTIL_STR(TASKS_DEFAULT_QUEUE_CAP) ")\n"
"      --linger USEC|adaptive under steady load, how long a queued task may\n"
"                             wait so that the tasks of several responses\n"
"                             share one worker wake-up.  adaptive (the\n"
"                             default) follows the load: a worker is woken at\n"
"                             once while the load is light or the CPUs have\n"
"                             time to spare; under load bgserve tries longer\n"
"                             and shorter lingers and keeps what serves more\n"
"                             requests/s (the shorter one when equal), with\n"
"                             tasks waiting up to %u microseconds for\n"
"                             company.  A number,\n"
"                             0-%u microseconds, fixes it: more gives more\n"
"                             requests/s and later task starts; 0 wakes a\n"
"                             worker for every response\n"
"      --inline-tasks USEC    run a named task on the HTTP thread, right\n"
"                             after its response is sent, while its recent\n"
"                             runs each took at most USEC microseconds: no\n"
"                             wake-up and no wait for a worker.  0-" UTIL_STR(TASKS_INLINE_MAX_US) ";\n"
"                             0 runs every task on the workers (default " UTIL_STR(TASKS_DEFAULT_INLINE_US) ")\n"
"      --keep N               finished tasks kept for the status monitor,\n"
"                             0-10000000 (default " UTIL_STR(TASKS_DEFAULT_KEEP) ")\n"
"      --drain-timeout SECONDS  on stop, how long to wait for queued and\n"
"                             running tasks, 0-3600, fractions allowed\n"
"                             (default " UTIL_STR(CLI_DEFAULT_DRAIN_S) ")\n"
"      --journal FILE         keep named tasks in FILE (SQLite, created on\n"
"                             first use) until they finish: queued, retrying\n"
"                             and interrupted tasks run again after a crash,\n"
"                             a kill or a restart (docs/journal.md)\n"
"      --journal-sync normal|full\n"
"                             normal survives a crash of bgserve, full a\n"
"                             power loss too, at an fsync per commit\n"
"                             (default normal)\n"
"      --no-introspection     don't serve " URLS_PREFIX "/ (status monitor) or send\n"
"                             Bgserve-Tasks headers (default: served)\n"
"  -q, --quiet                no access lines and no task start/done lines\n"
"                             (failures, retries and discards still print)\n"
"      --log-format text|json\n"
"                             log line format (default text)\n"
"      --color auto|always|never\n"
"                             colour the log (default auto: only on a\n"
"                             terminal)\n"
"      --check                load and validate APP.so, then exit\n"
"      --reload               reload APP.so when it is rewritten (inotify):\n"
"                             requests and tasks in flight finish on the old\n"
"                             code; a broken build keeps the old code serving\n"
"      --watch DIR            watch sources under DIR (repeatable, at most 16;\n"
"                             implies --reload); a change runs --build\n"
"      --build CMD            build command run by /bin/sh on source changes,\n"
"                             e.g. --build \"make sample_app\"\n"
"      --watch-debounce MS    wait after the last source change before\n"
"                             running --build, 0-10000 (default " UTIL_STR(RELOAD_DEFAULT_DEBOUNCE_MS) ")\n"
"      --reload-settle MS     wait after the last write to APP.so before\n"
"                             loading it, 0-10000 (default " UTIL_STR(RELOAD_DEFAULT_SETTLE_MS) ")\n"
"      --max-generations N    plugin generations loaded at once while old\n"
"                             ones finish their work, 2-64 (default " UTIL_STR(RELOAD_DEFAULT_MAX_GENERATIONS) ")\n"
"      --single-process       no supervisor: a crash in plugin code ends\n"
"                             bgserve (for gdb, valgrind and core files);\n"
"                             by default a supervisor reports the crash with\n"
"                             file:line and starts a new serving process\n"
"                             (with --journal, a run then waits for its\n"
"                             start's commit: docs/journal.md)\n"
"      --broker URL           named tasks go to a Redis stream, run by\n"
"                             `bgserve worker` processes anywhere:\n"
"                             redis://[:PASSWORD@]HOST[:PORT][/DB] (ad hoc\n"
"                             tasks stay here; docs/broker.md)\n"
"      --broker-name NAME     the NAME in the Redis keys bgserve:{NAME}:...\n"
"                             (default: APP.so's file name without .so)\n"
"      --broker-visibility MS a running task whose worker stops touching it\n"
"                             (crashed) runs again elsewhere after this,\n"
"                             100-86400000 (default 30000)\n"
"      --broker-capacity N    tasks the broker holds at most (queued, running\n"
"                             and waiting to retry, across all servers and\n"
"                             workers); beyond it requests that attach named\n"
"                             tasks get 503, 1-1000000000 (default: no bound)\n"
"  -h, --help                 show this help and exit\n"
"  -V, --version              show versions and exit\n"
"\n"
"Environment:\n"
"  PORT            default for --port\n"
"  BGSERVE_DEBUG   when set (to anything), print debug lines\n"
"  BGSERVE_BROKER  default for --broker (keeps a password out of ps)\n"
"  NO_COLOR        when set, no colour with --color auto\n"
"\n"
"Signals:\n"
"  SIGINT, SIGTERM   graceful stop: stop accepting requests, finish those in\n"
"                    flight, drain tasks (up to --drain-timeout), then exit\n"
"  second SIGINT     exit at once, with the report of unfinished tasks\n"
"  SIGHUP            reload APP.so now (with or without --reload)\n"
"\n"
"Exit status:\n"
"  0  ok\n"
"  1  plugin refused, or a runtime error\n"
"  128+N  the serving process crashed with signal N and bgserve gave up\n"
"         (a crash before serving, or 3 crashes of one build, without\n"
"         --reload; with --single-process, any crash)\n"
"  2  usage error\n"
"\n"
"See bgserve(1) for the full manual.\n",
            online_cores(), queue_linger_bound_us(PACE_MAX_US), QUEUE_LINGER_MAX_US);
}

static void print_version(FILE *out)
{
    fprintf(out, "bgserve %s\nplugin ABI %d.%d\nlibmicrohttpd %s\n",
            BGSERVE_VERSION, BGS_ABI_MAJOR, BGS_ABI_MINOR, http_mhd_version());
}

/* ------------------------------------------------------------------ */
/* Values                                                              */
/* ------------------------------------------------------------------ */

static int usage(FILE *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage(FILE *err, const char *fmt, ...)
{
    va_list ap;
    fputs("bgserve: ", err);
    va_start(ap, fmt);
    vfprintf(err, fmt, ap);
    va_end(ap);
    fputs("\nTry 'bgserve --help' for more information.\n", err);
    return CLI_EXIT_USAGE;
}

/* Digits only (no sign, no spaces); 0 on success. */
static int parse_digits(const char *s, unsigned long long *out, const char **end)
{
    unsigned long long v = 0;
    const char *p = s;
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (~0ull - 9) / 10)
            return -1;
        v = v * 10 + (unsigned long long)(*p - '0');
    }
    *out = v;
    *end = p;
    return 0;
}

static int parse_uint(const char *s, unsigned long long lo,
                      unsigned long long hi, unsigned *out)
{
    unsigned long long v;
    const char *end;
    if (parse_digits(s, &v, &end) != 0 || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = (unsigned)v;
    return 0;
}

/* A byte count with an optional k/K/m/M/g/G suffix (binary multiples). */
static int parse_size(const char *s, size_t *out)
{
    unsigned long long v, mult = 1;
    const char *end;
    if (parse_digits(s, &v, &end) != 0)
        return -1;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': mult = 1024ull; break;
    case 'm': case 'M': mult = 1024ull * 1024; break;
    case 'g': case 'G': mult = 1024ull * 1024 * 1024; break;
    default: return -1;
    }
    if (*end != '\0' && end[1] != '\0')
        return -1;
    if (v > MAX_BODY_CAP / mult)
        return -1;
    *out = (size_t)(v * mult);
    return 0;
}

int cli_seconds_ms(const char *s, unsigned *out_ms)
{
    unsigned long long whole, frac_ms = 0;
    const char *p;
    if (parse_digits(s, &whole, &p) != 0)
        return -1;
    if (*p == '.') {
        p++;
        unsigned long long scale = 100;
        if (*p < '0' || *p > '9')
            return -1;
        for (; *p >= '0' && *p <= '9'; p++) {
            frac_ms += (unsigned long long)(*p - '0') * scale;
            scale /= 10; /* digits past milliseconds are ignored */
        }
    }
    if (*p != '\0' || whole > 3600 || (whole == 3600 && frac_ms > 0))
        return -1;
    *out_ms = (unsigned)(whole * 1000 + frac_ms);
    return 0;
}

static const opt *find_long(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (strlen(options[i].name) == len &&
            memcmp(options[i].name, name, len) == 0)
            return &options[i];
    return NULL;
}

static const opt *find_short(char c)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (options[i].short_name == c)
            return &options[i];
    return NULL;
}

#define RANGE(name, lo, hi)                                                \
    usage(err, "--%s must be a whole number from %s to %s (got '%s')",     \
          name, lo, hi, val)

/* Apply one option; returns CLI_RUN, CLI_EXIT_OK or CLI_EXIT_USAGE. */
static int apply(const opt *o, const char *val, cli_config *cfg,
                 int *port_given, FILE *out, FILE *err)
{
    switch (o->id) {
    case O_HOST:
        if (val[0] == '\0')
            return usage(err, "--host needs an address, e.g. 127.0.0.1 or 0.0.0.0");
        cfg->host = val;
        break;
    case O_PORT:
        if (parse_uint(val, 0, 65535, &cfg->port) != 0)
            return RANGE("port", "0", "65535");
        *port_given = 1;
        break;
    case O_THREADS:
        if (parse_uint(val, 1, 1024, &cfg->threads) != 0)
            return RANGE("threads", "1", "1024");
        break;
    case O_TIMEOUT:
        if (parse_uint(val, 1, 86400, &cfg->timeout_s) != 0)
            return usage(err, "--timeout must be a whole number of seconds "
                         "from 1 to 86400 (got '%s')", val);
        break;
    case O_MAXCONN:
        if (parse_uint(val, 1, 1000000, &cfg->conn_limit) != 0)
            return RANGE("max-connections", "1", "1000000");
        break;
    case O_MAXBODY:
        if (parse_size(val, &cfg->max_body) != 0)
            return usage(err, "--max-body must be a size from 0 to 1G, in "
                         "bytes or with a k, M or G suffix (got '%s')", val);
        break;
    case O_WORKERS:
        if (parse_uint(val, 1, 1024, &cfg->workers) != 0)
            return RANGE("workers", "1", "1024");
        break;
    case O_QUEUE:
        if (parse_uint(val, 1, 16777216, &cfg->queue_cap) != 0)
            return RANGE("queue", "1", "16777216");
        break;
    case O_LINGER:
        if (strcmp(val, "adaptive") == 0)
            cfg->linger_us = QUEUE_LINGER_ADAPTIVE;
        else if (parse_uint(val, 0, QUEUE_LINGER_MAX_US, &cfg->linger_us) != 0)
            return usage(err, "--linger must be 'adaptive' or a whole number of "
                         "microseconds from 0 to %u (got '%s')", QUEUE_LINGER_MAX_US, val);
        break;
    case O_INLINE:
        if (parse_uint(val, 0, TASKS_INLINE_MAX_US, &cfg->inline_us) != 0)
            return RANGE("inline-tasks", "0", UTIL_STR(TASKS_INLINE_MAX_US));
        break;
    case O_KEEP:
        if (parse_uint(val, 0, 10000000, &cfg->keep) != 0)
            return RANGE("keep", "0", "10000000");
        break;
    case O_DRAIN:
        if (cli_seconds_ms(val, &cfg->drain_timeout_ms) != 0)
            return usage(err, "--drain-timeout must be a number of seconds "
                         "from 0 to 3600, like 10 or 0.5 (got '%s')", val);
        break;
    case O_JOURNAL:
        if (*val == '\0')
            return usage(err, "--journal needs a file, like --journal tasks.db");
        cfg->journal_path = val;
        break;
    case O_JSYNC:
        if (journal_sync_parse(val, &cfg->journal_sync) != 0)
            return usage(err, "--journal-sync must be normal or full (got '%s')", val);
        cfg->journal_sync_given = 1;
        break;
    case O_NOINTRO:
        cfg->introspection = 0;
        break;
    case O_QUIET:
        cfg->quiet = 1;
        break;
    case O_LOGFMT:
        if (strcmp(val, "text") == 0)
            cfg->log_json = 0;
        else if (strcmp(val, "json") == 0)
            cfg->log_json = 1;
        else
            return usage(err, "--log-format must be text or json (got '%s')", val);
        break;
    case O_COLOR:
        if (strcmp(val, "auto") == 0)
            cfg->color = -1;
        else if (strcmp(val, "always") == 0)
            cfg->color = 1;
        else if (strcmp(val, "never") == 0)
            cfg->color = 0;
        else
            return usage(err, "--color must be auto, always or never (got '%s')", val);
        break;
    case O_CHECK:
        cfg->check = 1;
        break;
    case O_RELOAD:
        cfg->reload = 1;
        break;
    case O_WATCH:
        if (cfg->nwatch >= sizeof cfg->watch / sizeof cfg->watch[0])
            return usage(err, "--watch can be given at most 16 times");
        if (*val == '\0')
            return usage(err, "--watch needs a directory");
        cfg->watch[cfg->nwatch++] = val;
        cfg->reload = 1;
        break;
    case O_BUILD:
        if (*val == '\0')
            return usage(err, "--build needs a command, like --build \"make\"");
        cfg->build_cmd = val;
        break;
    case O_DEBOUNCE:
        if (parse_uint(val, 0, 10000, &cfg->debounce_ms) != 0)
            return usage(err, "--watch-debounce must be milliseconds from 0 to 10000 "
                         "(got '%s')", val);
        break;
    case O_SETTLE:
        if (parse_uint(val, 0, 10000, &cfg->settle_ms) != 0)
            return usage(err, "--reload-settle must be milliseconds from 0 to 10000 "
                         "(got '%s')", val);
        break;
    case O_SINGLE:
        cfg->single_process = 1;
        break;
    case O_BROKER:
        cfg->broker_url = val;
        break;
    case O_BROKER_NAME:
        if (!*val || strpbrk(val, "{}: \t"))
            return usage(err, "--broker-name must be a word without braces, colons or "
                         "spaces (got '%s')", val);
        cfg->broker_name = val;
        break;
    case O_BROKER_VIS:
        if (parse_uint(val, 100, 86400000, &cfg->broker_visibility_ms) != 0)
            return usage(err, "--broker-visibility must be milliseconds from 100 to 86400000 "
                         "(got '%s')", val);
        break;
    case O_BROKER_CAP:
        if (parse_uint(val, 1, 1000000000, &cfg->broker_capacity) != 0)
            return usage(err, "--broker-capacity must be a number of tasks from 1 to "
                         "1000000000 (got '%s')", val);
        break;
    case O_MAXGEN:
        if (parse_uint(val, 2, 64, &cfg->max_generations) != 0)
            return usage(err, "--max-generations must be a number from 2 to 64 "
                         "(got '%s')", val);
        break;
    case O_HELP:
        print_help(out);
        return CLI_EXIT_OK;
    case O_VERSION:
        print_version(out);
        return CLI_EXIT_OK;
    }
    return CLI_RUN;
}

static void set_defaults(cli_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = "127.0.0.1";
    cfg->port = DEFAULT_PORT;
    cfg->threads = online_cores();
    cfg->timeout_s = CLI_DEFAULT_TIMEOUT_S;
    cfg->conn_limit = CLI_DEFAULT_CONN_LIMIT;
    cfg->max_body = 1024 * 1024;
    cfg->workers = TASKS_DEFAULT_WORKERS;
    cfg->queue_cap = TASKS_DEFAULT_QUEUE_CAP;
    cfg->linger_us = QUEUE_LINGER_DEFAULT;
    cfg->inline_us = TASKS_DEFAULT_INLINE_US;
    cfg->keep = TASKS_DEFAULT_KEEP;
    cfg->drain_timeout_ms = CLI_DEFAULT_DRAIN_S * 1000u;
    cfg->introspection = 1;
    cfg->color = -1;
    cfg->settle_ms = RELOAD_DEFAULT_SETTLE_MS;
    cfg->debounce_ms = RELOAD_DEFAULT_DEBOUNCE_MS;
    cfg->max_generations = RELOAD_DEFAULT_MAX_GENERATIONS;
}

/* ------------------------------------------------------------------ */
/* Parsing                                                             */
/* ------------------------------------------------------------------ */

int cli_parse(int argc, char **argv, cli_config *cfg, FILE *out, FILE *err)
{
    int port_given = 0, options_done = 0;

    set_defaults(cfg);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const opt *o;
        const char *val = NULL;
        int rc;

        if (options_done || a[0] != '-' || a[1] == '\0') {
            if (cfg->plugin_path != NULL)
                return usage(err, "more than one APP.so given ('%s' and "
                             "'%s'); serve one plugin at a time",
                             cfg->plugin_path, a);
            cfg->plugin_path = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            options_done = 1;
            continue;
        }
        if (a[1] == '-') {
            const char *name = a + 2, *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            o = find_long(name, len);
            if (o == NULL)
                return usage(err, "unknown option '--%.*s'", (int)len, name);
            if (eq != NULL) {
                if (!o->has_arg)
                    return usage(err, "option '--%s' takes no value", o->name);
                val = eq + 1;
            }
        } else {
            o = find_short(a[1]);
            if (o == NULL || (a[2] != '\0' && !o->has_arg))
                return usage(err, "unknown option '%s'", a);
            if (a[2] != '\0')
                val = a + 2;
        }
        if (o->has_arg && val == NULL) {
            if (i + 1 >= argc)
                return usage(err, "option '--%s' needs a value", o->name);
            val = argv[++i];
        }
        rc = apply(o, val, cfg, &port_given, out, err);
        if (rc != CLI_RUN)
            return rc;
    }

    if (!port_given) {
        const char *env = getenv("PORT");
        if (env != NULL && env[0] != '\0' &&
            parse_uint(env, 0, 65535, &cfg->port) != 0)
            return usage(err, "the environment variable PORT must be a port "
                         "number from 0 to 65535 (got '%s'); fix or unset "
                         "it, or pass --port", env);
    }
    if (cfg->plugin_path == NULL)
        return usage(err, "missing APP.so (the plugin to serve)");
    if (cfg->journal_sync_given && cfg->journal_path == NULL)
        return usage(err, "--journal-sync sets how the journal is written: give the "
                     "journal with --journal FILE");
    /* The environment keeps a password out of ps's view of argv. */
    const char *env_broker = getenv("BGSERVE_BROKER");
    if (cfg->broker_url == NULL && cfg->journal_path == NULL && env_broker && *env_broker)
        cfg->broker_url = env_broker;
    if (cfg->broker_url != NULL && cfg->journal_path != NULL)
        return usage(err, "--journal and --broker are two homes for the same tasks: give "
                     "one of them");
    if (cfg->build_cmd != NULL && cfg->nwatch == 0)
        return usage(err, "--build runs on source changes: give the sources with "
                     "--watch DIR");
    /* Checked here, before anything starts or prints "listening". */
    for (unsigned w = 0; w < cfg->nwatch; w++) {
        struct stat st;
        if (stat(cfg->watch[w], &st) != 0 || !S_ISDIR(st.st_mode))
            return usage(err, "--watch %s: not a directory (%s); give a directory of "
                         "sources to watch", cfg->watch[w],
                         stat(cfg->watch[w], &st) != 0 ? strerror(errno) : "a file");
    }
    return CLI_RUN;
}
