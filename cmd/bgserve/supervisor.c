/*
 * supervisor.c - the supervisor process and what a serving process
 * inherits from it (see supervisor.h).
 *
 * The supervisor is single-threaded and never starts a thread, so it
 * forks without exec: the serving process goes on with the parsed
 * options and the state below in its copy of memory.  It owns the
 * listening socket (bound before the first fork, never closed), a
 * signalfd for SIGINT, SIGTERM, SIGHUP and SIGCHLD (blocked), and one
 * close-on-exec pipe per serving process.  Over that pipe the serving
 * process sends "R\n" once its plugin is loaded and started, just before
 * it starts answering; its crash handler (crash.c) sends
 * the crash record.  Everything the pipe brings is kept until the
 * process is reaped, then read as a record: "KEY value" lines, and
 * after "M" the text of /proc/self/maps, from which symbolize.c names
 * the frames.
 *
 * The serving process runs in its own process group, so a Ctrl-C in the
 * terminal reaches only the supervisor, which passes each signal on
 * exactly once; it dies with the supervisor (PR_SET_PDEATHSIG), so a
 * killed bgserve leaves no serving process behind.
 *
 * A crash loop: a crash before the process served (or in its start
 * hook), or the SUPERVISOR_CRASH_LIMIT-th crash while the plugin file is
 * unchanged (same device, inode, size and modification time).
 *
 * State in a serving process (`child`): written by supervisor_run before
 * it returns there, read-only afterwards, read by any thread.
 */
#include "supervisor.h"

#include "crash.h"
#include "image.h"
#include "symbolize.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_RECORD (4u << 20) /* a crash record larger than this is cut */
#define MAX_PCS 64
#define GO_ON (-2)            /* the supervisor keeps running */

/* What a serving process knows about its supervisor. */
static struct {
    int supervised;
    int listen_fd, report_fd;
    int announce, crash_mode;
    unsigned starts;           /* serving processes started, this one included */
    uint64_t crashes;
    int last_signal;           /* 0: no crash yet */
    uint64_t last_when_us;     /* wall clock */
    char *last_what;           /* what was running, or a sentence */
    uint64_t last_task_id;     /* the task the last crash ran in, 0: none */
    char *last_report;         /* the whole report */
} child = {.listen_fd = -1, .report_fd = -1, .announce = 1};

/* The supervisor's own state (static, so a serving process's copy stays
 * reachable and leak checkers stay quiet). */
static struct {
    supervisor_config cfg_copy;
    const supervisor_config *cfg;
    sigset_t old_mask;
    int sfd;
    pid_t pid;                 /* the serving process, or 0 */
    int rd;                    /* its pipe, or -1 */
    char *buf;                 /* what it sent */
    size_t len, cap;           /* a util_buf */
    int served;                /* it sent "R" */
    int announced;             /* some serving process printed the line */
    int stopping;              /* SIGINT/SIGTERM passed on */
    struct stat build;         /* the plugin file at the last crash */
    unsigned build_crashes;    /* crashes while it stayed the same */
} sv = {.rd = -1};

/* ---- the serving process's side ------------------------------------------ */

int supervisor_listen_fd(void) { return child.supervised ? child.listen_fd : -1; }
int supervisor_report_fd(void) { return child.supervised ? child.report_fd : -1; }
int supervisor_announce(void) { return child.announce; }
uint64_t supervisor_crashed_task(int *sig)
{
    if (sig)
        *sig = child.last_signal;
    return child.last_task_id;
}
int supervisor_crash_mode(void) { return child.crash_mode; }
const char *supervisor_crash_report(void) { return child.last_report; }

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

int supervisor_build_changed(void)
{
    struct stat now;
    if (!child.crash_mode || stat(sv.cfg->plugin_path, &now) != 0)
        return 0;
    return !same_file(&now, &sv.build);
}

void supervisor_ready(void)
{
    if (child.supervised && write(child.report_fd, "R\n", 2) < 0) {
        /* supervisor gone: PR_SET_PDEATHSIG ends us */
    }
}

static const char *signame(int sig)
{
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGABRT: return "SIGABRT";
    case SIGKILL: return "SIGKILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGTRAP: return "SIGTRAP";
    case SIGSYS: return "SIGSYS";
    default: return "a signal";
    }
}

void supervisor_stats_json(json *j)
{
    json_key(j, "crashes");
    json_u64(j, child.crashes);
    json_key(j, "last_crash");
    if (child.last_signal == 0) {
        json_null(j);
    } else {
        json_obj_begin(j);
        json_key(j, "what");
        json_str(j, child.last_what);
        json_key(j, "signal");
        json_str(j, signame(child.last_signal));
        json_key(j, "when");
        char when[40];
        util_iso_time(when, sizeof when, child.last_when_us, 3);
        json_str(j, when);
        /* The report's first lines: the headline, what ran, the first frames. */
        const char *r = child.last_report ? child.last_report : "";
        const char *e = r;
        for (int lines = 0; *e && lines < 8; lines++) {
            const char *nl = strchr(e, '\n');
            e = nl ? nl + 1 : e + strlen(e);
        }
        json_key(j, "report");
        json_strn(j, r, (size_t)(e - r));
        json_obj_end(j);
    }
    json_key(j, "serving_processes");
    json_u64(j, child.starts ? child.starts : 1);
    json_key(j, "pid");
    json_u64(j, (uint64_t)getpid());
}

/* ---- the crash record ------------------------------------------------------ */

typedef struct record {
    int sig;
    const char *headline, *what, *fault, *hook;
    int kind;
    uint64_t queued, running;
    int have_gauges;
    uint64_t task_id;          /* the task that was running, 0: none */
    int exact;
    uintptr_t pcs[MAX_PCS];
    size_t npcs;
    const char *maps;
    size_t maps_len;
} record;

/* Split sv.buf in place into a record. */
static void parse_record(record *r)
{
    memset(r, 0, sizeof *r);
    char *p = sv.buf, *end = sv.buf + sv.len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            break;
        *nl = '\0';
        char key = p[0];
        char *val = p[1] == ' ' ? p + 2 : p + 1;
        p = nl + 1;
        switch (key) {
        case 'S': r->sig = atoi(val); break;
        case 'H': r->headline = val; break;
        case 'W': r->what = val; break;
        case 'A': r->fault = val; break;
        case 'K': {
            char *sp = strchr(val, ' ');
            r->kind = atoi(val);
            r->hook = sp ? sp + 1 : "";
            break;
        }
        case 'Q':
            r->have_gauges = sscanf(val, "%lu %lu", &r->queued, &r->running) == 2;
            break;
        case 'E': r->exact = 1; break;
        case 'T': r->task_id = strtoull(val, NULL, 10); break;
        case 'P':
            if (r->npcs < MAX_PCS)
                r->pcs[r->npcs++] = (uintptr_t)strtoull(val, NULL, 16);
            break;
        case 'M':
            r->maps = p;
            r->maps_len = (size_t)(end - p);
            return;
        case 'R': sv.served = 1; break; /* written by another thread meanwhile */
        default: break;
        }
    }
}

static void core_hint(FILE *o, int status)
{
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    struct rlimit rl = {0, 0};
    getrlimit(RLIMIT_CORE, &rl);
    if (WCOREDUMP(status))
        fprintf(o, "core: a core file was written (where: /proc/sys/kernel/core_pattern);"
                " open it with  gdb %s CORE\n", exe);
    else if (rl.rlim_cur == 0)
        fprintf(o, "core: none (core files are off: ulimit -c is 0); for one, run "
                "`ulimit -c unlimited` in this shell before bgserve, or debug live with "
                "`gdb --args %s --single-process %s`\n", exe, sv.cfg->plugin_path);
    else
        fprintf(o, "core: none was written (see /proc/sys/kernel/core_pattern); or debug "
                "live with `gdb --args %s --single-process %s`\n", exe, sv.cfg->plugin_path);
}

/* The report of a serving process that died of sig, as one text. */
static char *report(const record *r, pid_t pid, int status, int sig)
{
    char *text = NULL;
    size_t len = 0;
    FILE *o = open_memstream(&text, &len);
    if (o == NULL)
        return xstrdup("bgserve: the serving process crashed (no memory for the report)\n");
    if (r->headline == NULL) {
        fprintf(o, "bgserve: the serving process (pid %ld) was killed by %s "
                "(signal %d) without a crash report: killed from outside, or by the "
                "kernel's out-of-memory killer\n", (long)pid, signame(sig), sig);
    } else {
        fprintf(o, "%s\n", r->headline);
        if (r->what)
            fprintf(o, "  while running %s\n", r->what);
        if (r->fault)
            fprintf(o, "  fault address %s\n", r->fault);
        if (r->have_gauges && sv.cfg->journal)
            fprintf(o, "  tasks to be retried from the journal by the next serving process: "
                    "%lu queued, %lu running (ad hoc function tasks among them are lost: "
                    "they are never journaled)\n",
                    (unsigned long)r->queued, (unsigned long)r->running);
        else if (r->have_gauges)
            fprintf(o, "  tasks lost with the serving process: %lu queued, %lu running "
                    "(the in-memory queue does not survive a crash)\n",
                    (unsigned long)r->queued, (unsigned long)r->running);
        fprintf(o, "backtrace (serving process %ld):\n", (long)pid);
        const char *dir = image_dir();
        char *frames = symbolize_frames(r->maps, r->maps_len, r->pcs, r->npcs, r->exact,
                                        dir ? dir : "", sv.cfg->plugin_path);
        fputs(frames, o);
        free(frames);
    }
    core_hint(o, status);
    fclose(o);
    return text;
}

/* ---- the supervisor ---------------------------------------------------------- */

static void read_pipe(void)
{
    for (;;) {
        if (sv.cap - sv.len <= 4096) { /* (cap counts the buffer's NUL) */
            if (sv.cap >= MAX_RECORD) {
                char sink[4096]; /* cut: keep the head, drop the rest */
                if (read(sv.rd, sink, sizeof sink) > 0)
                    continue;
                break;
            }
            util_buf_reserve(&sv.buf, &sv.cap, sv.len, 4096, 16384);
        }
        ssize_t n = read(sv.rd, sv.buf + sv.len, sv.cap - sv.len - 1);
        if (n > 0) {
            if (!sv.served && sv.len + (size_t)n >= 2 && memcmp(sv.buf, "R\n", 2) == 0)
                sv.served = 1; /* (it may also come after a crash record's start) */
            sv.len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0) { /* every writer gone */
            close(sv.rd);
            sv.rd = -1;
        }
        break;
    }
    if (sv.served)
        sv.announced = 1;
}

/* Fork a serving process.  Returns SUPERVISOR_CHILD in it, GO_ON in the
 * supervisor, or an exit status when fork fails. */
static int spawn(int crash_mode)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        fprintf(stderr, "bgserve: cannot create a pipe for the serving process: %s\n",
                strerror(errno));
        return 1;
    }
    pid_t self = getpid();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "bgserve: cannot start the serving process (fork: %s)\n",
                strerror(errno));
        close(p[0]);
        close(p[1]);
        return 1;
    }
    if (pid == 0) {
        close(p[0]);
        close(sv.sfd);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != self)
            _exit(1); /* the supervisor died before the line above */
        image_set_owner(self); /* its copies stay while the supervisor lives */
        setpgid(0, 0);
        /* SIGINT, SIGTERM and SIGHUP stay blocked: main takes them with
         * sigwait.  Everything else as bgserve was started. */
        sigset_t m = sv.old_mask;
        sigaddset(&m, SIGINT);
        sigaddset(&m, SIGTERM);
        sigaddset(&m, SIGHUP);
        sigprocmask(SIG_SETMASK, &m, NULL);
        child.report_fd = p[1];
        child.announce = !sv.announced;
        child.crash_mode = crash_mode;
        child.starts++;
        return SUPERVISOR_CHILD;
    }
    close(p[1]);
    sv.rd = p[0];
    fcntl(sv.rd, F_SETFL, fcntl(sv.rd, F_GETFL) | O_NONBLOCK);
    sv.pid = pid;
    sv.len = 0;
    sv.served = 0;
    child.starts++;
    return GO_ON;
}

/* The serving process died of sig.  Report, then start another one (or
 * not).  Returns SUPERVISOR_CHILD in a new serving process, GO_ON when
 * the supervisor goes on, or bgserve's exit status. */
static int crashed(int status, int sig)
{
    pid_t pid = sv.pid;
    sv.pid = 0;
    if (sv.rd >= 0)
        read_pipe();
    if (sv.rd >= 0) {
        close(sv.rd);
        sv.rd = -1;
    }
    record r;
    parse_record(&r);
    char *text = report(&r, pid, status, sig);
    if (write(2, text, strlen(text)) < 0) {
        /* stderr closed */
    }
    /* Its private plugin copies, now that they are read; only its own:
     * another bgserve of this user may be reading its dead child's. */
    image_remove_pid(pid);

    child.crashes++;
    child.last_signal = sig;
    child.last_task_id = r.task_id;
    child.last_when_us = util_wall_us();
    free(child.last_what);
    child.last_what = xstrdup(r.what ? r.what : r.headline ? r.headline
                              : "killed from outside the process");
    free(child.last_report);
    child.last_report = text;

    if (sv.stopping)
        return 128 + sig;

    struct stat now;
    memset(&now, 0, sizeof now);
    stat(sv.cfg->plugin_path, &now);
    if (sv.build_crashes > 0 && same_file(&now, &sv.build)) {
        sv.build_crashes++;
    } else {
        sv.build = now;
        sv.build_crashes = 1;
    }
    /* A route or task ran: it served, even if the crash beat "R". */
    int in_start = r.kind == CRASH_HOOK && r.hook && strcmp(r.hook, "start") == 0;
    int before_serving = in_start || (!sv.served && r.kind != CRASH_ROUTE && r.kind != CRASH_TASK);
    if (!before_serving)
        sv.announced = 1; /* it printed the listening line */
    if (before_serving || sv.build_crashes >= SUPERVISOR_CRASH_LIMIT) {
        const char *why = in_start ? "it crashed in its start hook"
                          : before_serving ? "it crashed before it served"
                                           : "it crashed again";
        if (!sv.cfg->reload) {
            fprintf(stderr, "bgserve: giving up: %s (%u crash%s of this build of %s); "
                    "exiting with %d (128+%s)\n  fix: correct the plugin and start bgserve "
                    "again; with --reload bgserve waits for the next build instead\n",
                    why, sv.build_crashes, sv.build_crashes == 1 ? "" : "es",
                    sv.cfg->plugin_path, 128 + sig, signame(sig));
            return 128 + sig;
        }
        fprintf(stderr, "bgserve: not restarting this build of %s: %s (%u crash%s); "
                "every request gets the crash page (500) until the next build loads\n",
                sv.cfg->plugin_path, why, sv.build_crashes,
                sv.build_crashes == 1 ? "" : "es");
        return spawn(1);
    }
    fprintf(stderr, "bgserve: starting a new serving process on the same socket "
            "(crash %llu; the crashed process's connections are lost)\n",
            (unsigned long long)child.crashes);
    return spawn(0);
}

/* Reap the serving process if it ended.  Returns as crashed(), or the
 * exit status when it exited. */
static int reap(void)
{
    int status;
    for (;;) {
        pid_t w = waitpid(-1, &status, WNOHANG);
        if (w <= 0)
            return GO_ON;
        if (w != sv.pid)
            continue;
        if (WIFSIGNALED(status))
            return crashed(status, WTERMSIG(status));
        sv.pid = 0;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
}

/* GO_ON, or the exit status (or SUPERVISOR_CHILD). */
static int on_signal(const struct signalfd_siginfo *si)
{
    int sig = (int)si->ssi_signo;
    if (sig == SIGCHLD)
        return reap();
    if (sig == SIGINT || sig == SIGTERM)
        sv.stopping = 1;
    if (sv.pid > 0)
        kill(sv.pid, sig);
    return GO_ON;
}

int supervisor_run(const supervisor_config *cfg, int fd)
{
    sv.cfg_copy = *cfg;
    sv.cfg = &sv.cfg_copy;
    child.supervised = 1;
    child.listen_fd = fd;

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &sv.old_mask);
    sv.sfd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sv.sfd < 0) {
        fprintf(stderr, "bgserve: cannot start the supervisor (signalfd: %s)\n"
                "  fix: run with --single-process\n", strerror(errno));
        return 1;
    }

    int rc = spawn(0);
    while (rc == GO_ON) {
        struct pollfd pf[2] = {{.fd = sv.sfd, .events = POLLIN},
                               {.fd = sv.rd, .events = POLLIN}};
        if (poll(pf, sv.rd >= 0 ? 2 : 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "bgserve: supervisor: poll: %s\n", strerror(errno));
            rc = 1;
            break;
        }
        if (sv.rd >= 0 && pf[1].revents)
            read_pipe();
        if (pf[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sv.sfd, &si, sizeof si) == (ssize_t)sizeof si)
                rc = on_signal(&si);
        }
    }
    if (rc == SUPERVISOR_CHILD)
        return rc;
    if (sv.pid > 0) { /* only when the loop failed: do not leave it behind */
        kill(sv.pid, SIGTERM);
        waitpid(sv.pid, NULL, 0);
    }
    return rc;
}
