/*
 * main.c - wiring and signals only: parse options, start the rooms in
 * order (log, tasks, generation, http), wait for a signal, stop them in
 * reverse order.  The subcommands `new` (scaffold.c), `routes`
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
#include "imagefile.h"
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
    if (gen_create(cfg->plugin_path, 1, GEN_CHECK_ONLY, &g, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    routes_print_tables(g->plugin, stdout);
    printf("ok: %s can be served by bgserve %s\n", cfg->plugin_path, BGSERVE_VERSION);
    fflush(stdout);
    gen_release(g);
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
    generation *g = gen_current();
    if (g == NULL)
        return -1;
    const plugin_task *d = plugin_find_task(g->plugin, name);
    if (d == NULL) {
        gen_release(g);
        return -1;
    }
    *def = d;
    *owner = &g->owner; /* carries the reference gen_current took */
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
                        .visibility_ms = cfg->broker_visibility_ms};
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

int main(int argc, char **argv)
{
    /* Subcommands come before the serve options. */
    if (argc > 1 && strcmp(argv[1], "new") == 0)
        return scaffold_main(argc - 1, argv + 1, stdout, stderr);
    if (argc > 1 && strcmp(argv[1], "routes") == 0)
        return routes_main(argc - 1, argv + 1, stdout, stderr);
    if (argc > 1 && strcmp(argv[1], "journal") == 0)
        return journal_cmd_main(argc - 1, argv + 1, stdout, stderr);
    if (argc > 1 && strcmp(argv[1], "request") == 0)
        return request_main(argc - 1, argv + 1, stdout, stderr);

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
        gen_setup(&(gen_deps){.host_api = hostapi_table()}); /* never activated */
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

    /* The journal: each serving process opens it (the lock dies with a
     * crashed one) before any task can be accepted. */
    journal *jr = NULL;
    if (cfg.journal_path != NULL) {
        journal_config jc = {.path = cfg.journal_path, .sync = cfg.journal_sync};
        char jerr[1024];
        if (journal_open(&jc, &jr, jerr, sizeof jerr) != 0) {
            fprintf(stderr, "bgserve: %s\n", jerr);
            return 1;
        }
    }
    broker *bk = NULL;
    if (cfg.broker_url && (bk = open_broker(&cfg)) == NULL)
        return 1;
    tasks_config tc = {.workers = cfg.workers, .queue_cap = cfg.queue_cap, .keep = cfg.keep,
                       .linger_us = cfg.linger_us, .journal = jr, .broker = bk,
                       .consume = worker ? cfg.workers : 0, .resolve = resolve_task};
    tasks_engine *engine = tasks_new(&tc);
    if (engine == NULL) {
        log_msg(BGS_LOG_ERROR, "cannot start the task workers");
        journal_close(jr);
        broker_close(bk);
        return 1;
    }
    if (bk && worker)
        log_msg(BGS_LOG_INFO, "worker %s: running the named tasks from %s (stream %s:tasks), "
                "up to %u at a time", broker_consumer(bk), broker_url_shown(bk),
                broker_prefix(bk), cfg.workers);
    else if (bk)
        log_msg(BGS_LOG_INFO, "broker: named tasks go to %s (stream %s:tasks) for bgserve "
                "worker processes; ad hoc tasks run here", broker_url_shown(bk),
                broker_prefix(bk));
    crash_set_gauges(tasks_gauges, engine);
    gen_setup(&(gen_deps){.host_api = hostapi_table(), .tasks = engine});

    if (deferred_start() != 0) {
        log_msg(BGS_LOG_ERROR, "cannot start the deferred-response thread");
        tasks_shutdown(engine, 0);
        journal_close(jr);
        return 1;
    }

    int stale = image_clean_stale();
    if (stale > 0)
        log_msg(BGS_LOG_INFO, "removed %d private plugin cop%s left by a crashed run",
                stale, stale == 1 ? "y" : "ies");

    /* inotify and the watches can fail: say so before the start hook. */
    char err[2048];
    reload_config rc_cfg = {
        .plugin_path = cfg.plugin_path, .watch_plugin = cfg.reload, .nwatch = cfg.nwatch,
        .build_cmd = cfg.build_cmd, .settle_ms = cfg.settle_ms,
        .debounce_ms = cfg.debounce_ms,
        .max_generations = cfg.max_generations,
    };
    for (unsigned i = 0; i < cfg.nwatch; i++)
        rc_cfg.watch_dirs[i] = cfg.watch[i];
    if (reload_prepare(&rc_cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        tasks_shutdown(engine, 0);
        journal_close(jr);
        return 1;
    }

    generation *g = NULL;
    if (supervisor_crash_mode()) { /* the build crash-looped: wait for the next */
        log_msg(BGS_LOG_WARN, "serving the crash page until a new build of %s loads",
                cfg.plugin_path);
    } else if (gen_create(cfg.plugin_path, 1, 0, &g, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        reload_stop();
        tasks_shutdown(engine, 0);
        journal_close(jr);
        return 1;
    } else {
        log_msg(BGS_LOG_INFO, "serving plugin %s %s from %s: %zu routes, %zu tasks (ABI %u.%u)",
                g->plugin->name[0] ? g->plugin->name : "(unnamed)",
                g->plugin->version[0] ? g->plugin->version : "-", cfg.plugin_path,
                g->plugin->nroutes, g->plugin->ntasks, g->plugin->abi_major, g->plugin->abi_minor);
        gen_set_current(g);
        gen_activate(g);
    }

    if (!worker && !is_loopback(cfg.host) && cfg.introspection)
        log_msg(BGS_LOG_WARN, "listening on %s with introspection on: anyone who can reach "
                "this address can read /_bgserve/ (task records, stats, the dashboard) and "
                "retry failed tasks from the dashboard; "
                "use --no-introspection to turn it off", cfg.host);

    http_config hc = {
        .host = cfg.host, .port = cfg.port, .threads = cfg.threads,
        .timeout_s = cfg.timeout_s, .conn_limit = cfg.conn_limit,
        .max_body = cfg.max_body, .introspection = cfg.introspection,
        .listen_fd = cfg.single_process ? fd : supervisor_listen_fd(),
        .announce = supervisor_announce(),
        .crash_page = supervisor_crash_mode() ? supervisor_crash_report() : NULL,
        .plugin_path = cfg.plugin_path,
        .tasks = engine,
        .durable = jr != NULL,
    };
    supervisor_ready(); /* past the start hook: a crash now is not a crash loop */
    if (!worker && http_start(&hc, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        reload_stop();
        tasks_shutdown(engine, 0);
        journal_close(jr);
        gen_abandon_current(); /* it never served: no "retired" line */
        return 1;
    }

    /* The tasks an earlier process left unfinished, once serving: a task
     * that crashes again is then a crash like any other, not a crash
     * loop before serving. */
    if (jr != NULL && g != NULL) {
        int csig = 0;
        uint64_t crashed = supervisor_crashed_task(&csig);
        /* before any reload can retire g */
        tasks_replay(engine, &g->owner, g->plugin, crashed, csig);
    }

    if (reload_start(err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        if (!worker) {
            http_quiesce();
            http_stop();
        }
        reload_stop();
        tasks_shutdown(engine, 0);
        journal_close(jr);
        deferred_stop();
        gen_set_current(NULL);
        return 1;
    }

    if (supervisor_build_changed()) /* a new build landed before the watch began */
        reload_request();
    if (worker)
        log_msg(BGS_LOG_INFO, "worker ready: reading %s:tasks", broker_prefix(bk));

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
    log_msg(BGS_LOG_INFO, "%s: stopping; finishing requests in flight, then draining tasks "
            "(up to %u ms; a second SIGINT exits at once)",
            sig == SIGINT ? "SIGINT" : "SIGTERM", cfg.drain_timeout_ms);

    pthread_t waiter;
    static second_signal_arg wa; /* the waiter may outlive this frame's end */
    wa.engine = engine;
    sigemptyset(&wa.set);
    sigaddset(&wa.set, SIGINT);
    sigaddset(&wa.set, SIGTERM);
    if (pthread_create(&waiter, NULL, second_signal, &wa) == 0)
        pthread_detach(waiter);

    reload_stop();
    /* Suspended connections must be answered before libmicrohttpd stops
     * (0.9.75 aborts when stopped with suspended connections). */
    deferred_shutdown_all();
    if (!worker) {
        unsigned left = http_wait_idle(cfg.drain_timeout_ms);
        if (left)
            log_msg(BGS_LOG_WARN, "%u requests still in flight at the deadline: closing them",
                    left);
        http_stop();
    }
    /* The engine is not freed: the second-signal thread may still report
     * from it until exit (its records are all that is left).  Nor is the
     * broker it uses. */
    size_t unfinished = tasks_shutdown(engine, cfg.drain_timeout_ms);
    /* What is left stays in the journal for the next start.  With tasks
     * abandoned on stuck workers it is left open: they may still record
     * their end, and exit releases the lock. */
    if (!unfinished)
        journal_close(jr);
    deferred_stop(); /* after the tasks: they may still complete handles */
    gen_set_current(NULL);
    /* A generation held by a stuck task is never unloaded: its private
     * copy would stay behind. */
    image_remove_own();
    log_msg(BGS_LOG_INFO, "stopped%s", unfinished ? " (some tasks did not finish: see above)" : "");
    return unfinished ? BGSERVE_EXIT_UNFINISHED : 0;
}
