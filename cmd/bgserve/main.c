/*
 * main.c - wiring and signals only: parse options, start the rooms as a
 * table of steps (`steps`: journal, broker, deferred, tasks, private copies,
 * reload watches, plugin, drain, http, replay, reload; each with its
 * start and its stop), wait for a signal, stop them in reverse order.  A
 * step that fails to start stops the ones before it, in reverse, and
 * bgserve exits 1; BGSERVE_DEBUG=1 logs each step as it starts and
 * stops.  The subcommands `new` (scaffold.c), `routes`
 * (routes_cmd.c) and `journal` (journal_cmd.c) are dispatched before
 * option parsing.  `bgserve worker` is this same wiring without HTTP and
 * without the supervisor: the engine on the broker (--broker) runs the
 * named tasks it reads from Redis.  Unless --single-process, supervisor_run first binds
 * the socket and forks: everything after it runs in the serving process.
 *
 * Signals: SIGINT, SIGTERM and SIGHUP are blocked in every thread and
 * taken with sigwait() by the main thread, so no handler runs in an
 * arbitrary thread.  After the first SIGINT/SIGTERM the main thread
 * drains; a helper thread waits for a second SIGINT and then exits at
 * once with the report of unfinished tasks.  SIGPIPE is ignored.
 */
#include "broker.h"
#include "cli.h"
#include "crash.h"
#include "deferred.h"
#include "generation.h"
#include "hostapi.h"
#include "http.h"
#include "image.h"
#include "journal.h"
#include "journal_cmd.h"
#include "log.h"
#include "reload.h"
#include "request_cmd.h"
#include "routes_cmd.h"
#include "scaffold.h"
#include "supervisor.h"
#include "tasks.h"
#include "util.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Exit status when the drain ended with tasks cancelled or abandoned
 * (docs/bgserve.1, EXIT STATUS). */
#define BGSERVE_EXIT_UNFINISHED 3

static int run_check(const cli_config *cfg)
{
    char err[2048];
    generation *g = NULL;
    if (generation_create(cfg->plugin_path, 1, GEN_CHECK_ONLY, &g, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    routes_cmd_print_tables(g->plugin, stdout);
    printf("ok: %s can be served by bgserve %s\n", cfg->plugin_path, BGSERVE_VERSION);
    fflush(stdout);
    generation_release(g);
    return 0;
}

typedef struct second_signal_arg {
    sigset_t set;
    tasks_engine *engine;
} second_signal_arg;

/* Waits for a second SIGINT during the drain. */
static void *second_signal(void *arg)
{
    second_signal_arg *a = arg;
    int sig;
    while (sigwait(&a->set, &sig) == 0) {
        if (sig == SIGINT || sig == SIGTERM) {
            log_msg(BGS_LOG_WARN, "second %s: exiting now", sig == SIGINT ? "SIGINT" : "SIGTERM");
            tasks_report_unfinished(a->engine);
            _exit(1);
        }
    }
    return NULL;
}

/* The current generation's task name (tasks_config.resolve): a
 * worker runs what a server accepted with the code loaded now. */
static int resolve_task(void *arg, const char *name, const plugin_task **def,
                        const tasks_owner **owner)
{
    (void)arg;
    generation *g = generation_current();
    if (g == NULL)
        return -2; /* not loaded yet: the job waits */
    const plugin_task *d = plugin_find_task(g->plugin, name);
    if (d == NULL) {
        generation_release(g);
        return -1;
    }
    *def = d;
    *owner = &g->owner; /* carries the reference generation_current took */
    return 0;
}

/* Open the broker of --broker: NAME is --broker-name or APP.so's file
 * name without its extension.  NULL after printing why. */
static broker *open_broker(const cli_config *cfg)
{
    char name[128];
    const char *base = strrchr(cfg->plugin_path, '/');
    base = base ? base + 1 : cfg->plugin_path;
    snprintf(name, sizeof name, "%.*s", (int)strcspn(base, "."), base);
    if (cfg->broker_name)
        snprintf(name, sizeof name, "%s", cfg->broker_name);
    broker_config bc = {.url = cfg->broker_url, .app = name,
                        .visibility_ms = cfg->broker_visibility_ms,
                        .capacity = cfg->broker_capacity};
    broker *b = NULL;
    char err[1024];
    if (broker_open(&bc, &b, err, sizeof err) != 0) {
        fprintf(stderr, "bgserve: --broker: %s\n", err);
        return NULL;
    }
    return b;
}

static int is_loopback(const char *host)
{
    return strcmp(host, "127.0.0.1") == 0 || strncmp(host, "127.", 4) == 0 ||
           strcmp(host, "::1") == 0 || strcmp(host, "localhost") == 0;
}

/* ---- serving: start-up as a table of steps -------------------------------- */

/* What the steps share; main thread only. */
typedef struct serving {
    const cli_config *cfg;
    int fd;                 /* the socket bound before the fork (--single-process) */
    int worker;             /* bgserve worker: no HTTP */
    journal *jr;            /* --journal, or NULL */
    broker *bk;             /* --broker, or NULL; never closed once the
                               engine uses it */
    tasks_engine *engine;   /* never freed: the second-signal thread may
                               report from it until exit */
    generation *g;          /* the first generation, or NULL (crash page) */
    int served;             /* http started: the generation has served */
    unsigned drain_ms;      /* the drain's deadline; 0 when a start failed */
    size_t unfinished;      /* tasks the drain left */
    reload_config rc_cfg;
    char err[2048];
} serving;

static int start_journal(serving *s)
{
    /* Each serving process opens it (the lock dies with a crashed one)
     * before any task can be accepted. */
    if (s->cfg->journal_path == NULL)
        return 0;
    journal_config jc = {.path = s->cfg->journal_path, .sync = s->cfg->journal_sync};
    if (journal_open(&jc, &s->jr, s->err, sizeof s->err) != 0) {
        fprintf(stderr, "bgserve: %s\n", s->err);
        return -1;
    }
    return 0;
}

static void stop_journal(serving *s)
{
    /* What is left stays in the journal for the next start; the close
     * commits the records still to be written (the end of a run the
     * drain cancelled, a claimed task handed back).  With tasks abandoned
     * on stuck workers it is left open: they may still record their end,
     * and exit releases the lock. */
    if (!tasks_abandoned(s->engine))
        journal_close(s->jr);
}

static int start_broker(serving *s)
{
    if (s->cfg->broker_url && (s->bk = open_broker(s->cfg)) == NULL)
        return -1;
    return 0;
}

static void stop_broker(serving *s)
{
    if (s->engine == NULL) /* the engine keeps using it until exit */
        broker_close(s->bk);
}

static int start_deferred(serving *s)
{
    (void)s;
    if (deferred_start() != 0) {
        log_msg(BGS_LOG_ERROR, "cannot start the deferred-response thread");
        return -1;
    }
    return 0;
}

static void stop_deferred(serving *s)
{
    (void)s;
    deferred_stop(); /* after the tasks: they may still complete handles */
}

static int start_tasks(serving *s)
{
    const cli_config *c = s->cfg;
    tasks_config tc = {.workers = c->workers, .queue_cap = c->queue_cap, .keep = c->keep,
                       .linger_us = c->linger_us, .inline_us = c->inline_us,
                       .journal = s->jr, .broker = s->bk,
                       .consume = s->worker ? c->workers : 0, .resolve = resolve_task,
                       /* the crash record names a task that crashes us */
                       .lazy_starts = supervisor_report_fd() >= 0};
    s->engine = tasks_new(&tc);
    if (s->engine == NULL) {
        log_msg(BGS_LOG_ERROR, "cannot start the task workers");
        return -1;
    }
    if (s->bk && s->worker)
        log_msg(BGS_LOG_INFO, "worker %s: running the named tasks from %s (stream %s:tasks), "
                "up to %u at a time", broker_consumer(s->bk), broker_url_shown(s->bk),
                broker_prefix(s->bk), c->workers);
    else if (s->bk)
        log_msg(BGS_LOG_INFO, "broker: named tasks go to %s (stream %s:tasks) for bgserve "
                "worker processes; ad hoc tasks run here", broker_url_shown(s->bk),
                broker_prefix(s->bk));
    crash_set_gauges(tasks_gauges, s->engine);
    generation_setup(&(generation_deps){.host_api = hostapi_table(), .tasks = s->engine});
    return 0;
}

static void stop_tasks(serving *s)
{
    tasks_shutdown(s->engine, 0); /* nothing left to do after the drain step */
}

static int start_copies(serving *s)
{
    (void)s;
    int stale = image_clean_stale();
    if (stale > 0)
        log_msg(BGS_LOG_INFO, "removed %d private plugin cop%s left by a crashed run",
                stale, stale == 1 ? "y" : "ies");
    return 0;
}

static void stop_copies(serving *s)
{
    (void)s;
    /* A generation held by a stuck task is never unloaded: its private
     * copy would stay behind. */
    image_remove_own();
}

/* inotify and the watches can fail: say so before the start hook. */
static int start_watches(serving *s)
{
    const cli_config *c = s->cfg;
    s->rc_cfg = (reload_config){
        .plugin_path = c->plugin_path, .watch_plugin = c->reload, .nwatch = c->nwatch,
        .build_cmd = c->build_cmd, .settle_ms = c->settle_ms,
        .debounce_ms = c->debounce_ms,
        .max_generations = c->max_generations,
    };
    for (unsigned i = 0; i < c->nwatch; i++)
        s->rc_cfg.watch_dirs[i] = c->watch[i];
    if (reload_prepare(&s->rc_cfg, s->err, sizeof s->err) != 0) {
        fprintf(stderr, "%s\n", s->err);
        return -1;
    }
    return 0;
}

static void stop_reload(serving *s)
{
    (void)s;
    reload_stop(); /* the thread if it runs, then the watches */
}

static int start_plugin(serving *s)
{
    const char *path = s->cfg->plugin_path;
    if (supervisor_crash_mode()) { /* the build crash-looped: wait for the next */
        log_msg(BGS_LOG_WARN, "serving the crash page until a new build of %s loads", path);
        return 0;
    }
    if (generation_create(path, 1, 0, &s->g, s->err, sizeof s->err) != 0) {
        fprintf(stderr, "%s\n", s->err);
        return -1;
    }
    const plugin *p = s->g->plugin;
    log_msg(BGS_LOG_INFO, "serving plugin %s %s from %s: %zu routes, %zu tasks (ABI %u.%u)",
            p->name[0] ? p->name : "(unnamed)", p->version[0] ? p->version : "-", path,
            p->nroutes, p->ntasks, p->abi_major, p->abi_minor);
    generation_set_current(s->g);
    generation_activate(s->g);
    return 0;
}

static void stop_plugin(serving *s)
{
    if (s->served)
        generation_set_current(NULL);
    else
        generation_abandon_current(); /* it never served: no "retired" line */
}

/* Stopping lets the tasks drain (up to drain_ms) before the generation
 * they run on is let go. */
static void stop_drain(serving *s)
{
    s->unfinished = tasks_shutdown(s->engine, s->drain_ms);
}

static int start_http(serving *s)
{
    const cli_config *c = s->cfg;
    if (s->worker) {
        supervisor_ready();
        return 0;
    }
    if (!is_loopback(c->host) && c->introspection)
        log_msg(BGS_LOG_WARN, "listening on %s with introspection on: anyone who can reach "
                "this address can read /_bgserve/ (task records, stats, the dashboard) and "
                "retry failed tasks from the dashboard; "
                "use --no-introspection to turn it off", c->host);
    http_config hc = {
        .host = c->host, .port = c->port, .threads = c->threads,
        .timeout_s = c->timeout_s, .conn_limit = c->conn_limit,
        .max_body = c->max_body, .introspection = c->introspection,
        .listen_fd = c->single_process ? s->fd : supervisor_listen_fd(),
        .announce = supervisor_announce(),
        .crash_page = supervisor_crash_mode() ? supervisor_crash_report() : NULL,
        .plugin_path = c->plugin_path,
        .tasks = s->engine,
        .durable = s->jr != NULL || s->bk != NULL, /* a 2xx: its tasks are kept */
    };
    supervisor_ready(); /* past the start hook: a crash now is not a crash loop */
    if (http_start(&hc, s->err, sizeof s->err) != 0) {
        fprintf(stderr, "%s\n", s->err);
        return -1;
    }
    s->served = 1;
    return 0;
}

static void stop_http(serving *s)
{
    if (!s->worker)
        http_quiesce(); /* done already after a signal */
    /* Suspended connections must be answered before libmicrohttpd stops
     * (0.9.75 aborts when stopped with suspended connections). */
    deferred_shutdown_all();
    if (s->worker)
        return;
    unsigned left = http_wait_idle(s->drain_ms);
    if (left)
        log_msg(BGS_LOG_WARN, "%u requests still in flight at the deadline: closing them", left);
    http_stop();
}

/* The tasks an earlier process left unfinished, once serving: a task that
 * crashes again is then a crash like any other, not a crash loop before
 * serving. */
static int start_replay(serving *s)
{
    if (s->jr != NULL && s->g != NULL) {
        int csig = 0;
        uint64_t crashed = supervisor_crashed_task(&csig);
        /* before any reload can retire g */
        tasks_replay(s->engine, &s->g->owner, s->g->plugin, crashed, csig);
    }
    return 0;
}

static int start_reload(serving *s)
{
    if (reload_start(s->err, sizeof s->err) != 0) {
        fprintf(stderr, "%s\n", s->err);
        return -1;
    }
    if (supervisor_build_changed()) /* a new build landed before the watch began */
        reload_request();
    if (s->worker)
        log_msg(BGS_LOG_INFO, "worker ready: reading %s:tasks", broker_prefix(s->bk));
    return 0;
}

typedef struct step {
    const char *name;
    int (*start)(serving *s);  /* 0, or -1 having said why; NULL: nothing */
    void (*stop)(serving *s);  /* undoes start; NULL: nothing */
} step;

/* In start order; stopped in reverse, on a failed start from the step
 * before the one that failed, at shutdown from the last. */
static const step steps[] = {
    {"journal", start_journal, stop_journal},
    {"broker", start_broker, stop_broker},
    {"deferred", start_deferred, stop_deferred},
    {"tasks", start_tasks, stop_tasks},
    {"private copies", start_copies, stop_copies},
    {"reload watches", start_watches, stop_reload},
    {"plugin", start_plugin, stop_plugin},
    {"drain", NULL, stop_drain},
    {"http", start_http, stop_http},
    {"replay", start_replay, NULL},
    {"reload", start_reload, stop_reload},
};

/* Stop steps[0..n) in reverse. */
static void unwind(serving *s, size_t n)
{
    while (n-- > 0) {
        log_msg(BGS_LOG_DEBUG, "stopping: %s", steps[n].name);
        if (steps[n].stop)
            steps[n].stop(s);
    }
}

/* Start every step; on a failure stop those started, in reverse, and
 * return -1 (the failing step has said why). */
static int start_all(serving *s)
{
    for (size_t i = 0; i < BGS_COUNT(steps); i++) {
        log_msg(BGS_LOG_DEBUG, "starting: %s", steps[i].name);
        if (steps[i].start && steps[i].start(s) != 0) {
            s->drain_ms = 0;
            unwind(s, i);
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    /* Subcommands come before the serve options. */
    if (argc > 1 && strcmp(argv[1], "new") == 0)
        return scaffold_main(argc - 1, argv + 1, stdout, stderr);
    if (argc > 1 && strcmp(argv[1], "routes") == 0)
        return routes_cmd_main(argc - 1, argv + 1, stdout, stderr);
    if (argc > 1 && strcmp(argv[1], "journal") == 0)
        return journal_cmd_main(argc - 1, argv + 1, stdout, stderr);
    if (argc > 1 && strcmp(argv[1], "request") == 0)
        return request_cmd_main(argc - 1, argv + 1, stdout, stderr);

    int worker = argc > 1 && strcmp(argv[1], "worker") == 0;
    if (worker) { /* the options follow "worker" */
        argc--;
        argv++;
    }
    cli_config cfg;
    int rc = cli_parse(argc, argv, &cfg, stdout, stderr);
    if (rc == CLI_EXIT_OK)
        return 0;
    if (rc != CLI_RUN)
        return 2;
    if (worker && cfg.broker_url == NULL && !cfg.check) {
        fprintf(stderr, "bgserve worker: no broker: give --broker redis://HOST:PORT (or set "
                "BGSERVE_BROKER)\n");
        return 2;
    }
    if (worker)
        cfg.single_process = 1; /* no HTTP to keep serving through a crash */

    log_config lc = {.color = cfg.color, .json = cfg.log_json, .quiet = cfg.quiet};
    log_init(&lc);
    signal(SIGPIPE, SIG_IGN);
    if (cfg.check) {
        generation_setup(&(generation_deps){.host_api = hostapi_table()}); /* never activated */
        crash_install(-1);
        return run_check(&cfg);
    }
    /* The options are valid (cli_parse); the host must resolve and the
     * port bind before anything starts, the start hook included. */
    char berr[1024];
    int fd = worker ? 0 : http_bind(cfg.host, cfg.port, berr, sizeof berr);
    if (fd < 0) {
        fprintf(stderr, "%s\n", berr);
        return 1;
    }
    if (!cfg.single_process) {
        supervisor_config sc = {.plugin_path = cfg.plugin_path, .reload = cfg.reload,
                                .journal = cfg.journal_path != NULL};
        rc = supervisor_run(&sc, fd); /* returns here in each serving process */
        if (rc != SUPERVISOR_CHILD)
            return rc;
    }
    crash_install(supervisor_report_fd()); /* before any thread */

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    static serving s; /* static: the steps' state for the whole run */
    s.cfg = &cfg;
    s.fd = fd;
    s.worker = worker;
    if (start_all(&s) != 0)
        return 1;

    int sig = 0;
    for (;;) {
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            log_msg(BGS_LOG_INFO, "SIGHUP: reloading");
            reload_request();
            continue;
        }
        break;
    }
    /* The cut-over first (docs/http.md, "Shutdown"): from here on every
     * response closes its connection and nothing new is accepted. */
    if (!worker)
        http_quiesce();
    if (worker)
        log_msg(BGS_LOG_INFO, "%s: stopping; the tasks running here may finish (up to %u ms), "
                "then go back to redis for other workers (a second SIGINT exits at once)",
                sig == SIGINT ? "SIGINT" : "SIGTERM", cfg.drain_timeout_ms);
    else
        log_msg(BGS_LOG_INFO, "%s: stopping; finishing requests in flight, then draining "
                "tasks (up to %u ms; a second SIGINT exits at once)",
                sig == SIGINT ? "SIGINT" : "SIGTERM", cfg.drain_timeout_ms);

    pthread_t waiter;
    static second_signal_arg wa; /* the waiter may outlive this frame's end */
    wa.engine = s.engine;
    sigemptyset(&wa.set);
    sigaddset(&wa.set, SIGINT);
    sigaddset(&wa.set, SIGTERM);
    if (pthread_create(&waiter, NULL, second_signal, &wa) == 0)
        pthread_detach(waiter);

    s.drain_ms = cfg.drain_timeout_ms;
    unwind(&s, BGS_COUNT(steps));
    log_msg(BGS_LOG_INFO, "stopped%s", s.unfinished ? " (some tasks did not finish: see above)" : "");
    return s.unfinished ? BGSERVE_EXIT_UNFINISHED : 0;
}
