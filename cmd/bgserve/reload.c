/*
 * reload.c - the reload thread: watches the plugin file and the source
 * directories with inotify, runs the build command, and reloads.
 *
 * One thread owns everything here except `wake_fd` (an eventfd any
 * thread may write to ask for a reload or a stop) and `build_pid` (read
 * by reload_stop to end a running build; atomic).
 *
 * The plugin file: IN_CLOSE_WRITE | IN_MOVED_TO on its directory,
 * filtered by its exact name, covers a linker writing in place (GNU ld),
 * a temporary file renamed over it (lld, mv), cp and install.  After the
 * last such event bgserve waits `settle_ms`, checks that the file is a
 * complete ELF image (else it waits for the next write), and reloads.
 *
 * Sources: every directory under each --watch DIR (skipping hidden ones
 * and ones named build) is watched; a change to a file that is not a
 * build product (.o .so .a .d ...), not hidden and not an editor's
 * backup starts a `debounce_ms` timer; when it fires the build command
 * runs with its output shown, and a successful build that rewrites the
 * plugin file leads to a reload through the watch above.  A watched
 * directory that goes away (IN_IGNORED: deleted, or moved, which drops
 * its watch) leaves the list; a subdirectory comes back through its
 * parent's IN_CREATE or IN_MOVED_TO, a --watch DIR itself through a
 * check every REWATCH_MS, after which a build runs (its sources may have
 * changed while nothing watched them).
 */
#include "reload.h"

#include "events.h"
#include "generation.h"
#include "image.h"
#include "log.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_WDS 1024
#define WAKE_RELOAD 1u
#define WAKE_STOP (1u << 20)

static reload_config cfg;           /* reload thread only after start */
static pthread_t thread;
static int running;                 /* main thread only */
static int wake_fd = -1;            /* written by any thread */
static int ino_fd = -1;             /* reload thread */
static int plugin_wd = -1;
static char plugin_dir[PATH_MAX];
static const char *plugin_base;
static struct {
    int wd;
    char *path;
} wds[MAX_WDS];                     /* source directories; reload thread */
static unsigned nwds;
static unsigned char top_gone[RELOAD_MAX_WATCH]; /* --watch DIR i went away; reload thread */
static atomic_int build_pid;

/* ---- source directories ---------------------------------------------------- */

/* Build products, hidden files and editor droppings never start a build. */
static int ignored_name(const char *name)
{
    static const char *const suffixes[] = {".o", ".so", ".a", ".d", ".gch", ".tmp",
                                           ".swp", ".swx", ".pyc", "~"};
    size_t n = strlen(name);
    if (name[0] == '.' || name[0] == '#' || strcmp(name, "4913") == 0)
        return 1;
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t k = strlen(suffixes[i]);
        if (n >= k && strcmp(name + n - k, suffixes[i]) == 0)
            return 1;
    }
    return 0;
}

static int ignored_dir(const char *name)
{
    return name[0] == '.' || strcmp(name, "build") == 0;
}

static void watch_tree(const char *dir, int depth)
{
    if (nwds >= MAX_WDS || depth > 8)
        return;
    int wd = inotify_add_watch(ino_fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM |
                                                IN_CREATE | IN_DELETE | IN_MOVE_SELF | IN_ONLYDIR);
    if (wd < 0) {
        log_msg(BGS_LOG_WARN, "--watch: cannot watch %s: %s", dir, strerror(errno));
        return;
    }
    wds[nwds].wd = wd;
    wds[nwds].path = xstrdup(dir);
    nwds++;
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || ignored_dir(e->d_name))
            continue;
        char sub[PATH_MAX];
        struct stat st;
        if (snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name) >= (int)sizeof sub)
            continue;
        if (lstat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            watch_tree(sub, depth + 1);
    }
    closedir(d);
}

static const char *wd_path(int wd)
{
    for (unsigned i = 0; i < nwds; i++)
        if (wds[i].wd == wd)
            return wds[i].path;
    return NULL;
}

/* The watch wd is gone (its directory was deleted or moved): forget it,
 * and when it was a --watch DIR, look for that directory to come back. */
static void forget_wd(int wd)
{
    for (unsigned i = 0; i < nwds; i++) {
        if (wds[i].wd != wd)
            continue;
        for (unsigned k = 0; k < cfg.nwatch; k++)
            if (!top_gone[k] && strcmp(wds[i].path, cfg.watch_dirs[k]) == 0) {
                top_gone[k] = 1;
                log_msg(BGS_LOG_WARN, "--watch: %s went away; watching for it to come back",
                        cfg.watch_dirs[k]);
            }
        free(wds[i].path);
        wds[i] = wds[--nwds];
        return;
    }
}

static int any_top_gone(void)
{
    for (unsigned k = 0; k < cfg.nwatch; k++)
        if (top_gone[k])
            return 1;
    return 0;
}

/* Watch again the --watch directories that are back.  Returns 1 when one
 * is. */
static int rewatch_tops(void)
{
    int back = 0;
    for (unsigned k = 0; k < cfg.nwatch; k++) {
        struct stat st;
        if (!top_gone[k] || stat(cfg.watch_dirs[k], &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        top_gone[k] = 0;
        watch_tree(cfg.watch_dirs[k], 0);
        log_msg(BGS_LOG_INFO, "--watch: watching %s again", cfg.watch_dirs[k]);
        back = 1;
    }
    return back;
}

/* ---- the build ------------------------------------------------------------------ */

/* Is this output line the compiler's error (gcc and clang: "FILE:L:C:
 * error: ...", "fatal error:"; ld: "undefined reference")? */
static int error_line(const char *line)
{
    return strstr(line, "error:") != NULL || strstr(line, "Error ") != NULL ||
           strstr(line, "undefined reference") != NULL;
}

/* The start of a failed build's output kept for the dashboard (the
 * compiler's first errors are at the start). */
#define BUILD_OUTPUT_KEEP (16u << 10)

/* Pass the build's output through to stderr line by line, keep its first
 * error line (else its first line) in first, and its first
 * BUILD_OUTPUT_KEEP bytes in *kept (malloc'd, NUL-terminated). */
static void relay_output(int fd, char *first, size_t cap, char **kept)
{
    size_t klen = 0, kcap = 0;
    *kept = NULL;
    util_buf_append(kept, &kcap, &klen, "", 0, 256);
    char buf[4096], line[1024];
    size_t ll = 0;
    int have_error = 0;
    first[0] = '\0';
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (write(2, buf, (size_t)n) < 0) {
            /* stderr closed: keep reading so the build does not block */
        }
        if (klen < BUILD_OUTPUT_KEEP)
            util_buf_append(kept, &kcap, &klen, buf,
                            (size_t)n < BUILD_OUTPUT_KEEP - klen ? (size_t)n : BUILD_OUTPUT_KEEP - klen, 256);
        for (ssize_t k = 0; k < n; k++) {
            if (buf[k] != '\n') {
                if (ll < sizeof line - 1)
                    line[ll++] = buf[k];
                continue;
            }
            line[ll] = '\0';
            if (ll > 0 && !have_error && (first[0] == '\0' || error_line(line))) {
                size_t c = ll < cap - 1 ? ll : cap - 1;
                memcpy(first, line, c);
                first[c] = '\0';
                have_error = error_line(line);
            }
            ll = 0;
        }
    }
}

/* Run the build command; its output is shown as it comes.  0 when it
 * exited 0.  A failure counts in reload_failures with the compiler's
 * first error line as last_reload_error. */
static int run_build(void)
{
    log_msg(BGS_LOG_INFO, "build: running '%s'", cfg.build_cmd);
    uint64_t t0 = util_now_us();
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
        log_msg(BGS_LOG_ERROR, "build: cannot start: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        log_msg(BGS_LOG_ERROR, "build: cannot start: %s", strerror(errno));
        close(out[0]);
        close(out[1]);
        return -1;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        pthread_sigmask(SIG_SETMASK, &none, NULL);
        dup2(out[1], 1);
        dup2(out[1], 2);
        execl("/bin/sh", "sh", "-c", cfg.build_cmd, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    atomic_store(&build_pid, pid);
    char first[512], *output;
    relay_output(out[0], first, sizeof first, &output);
    close(out[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    atomic_store(&build_pid, 0);
    double secs = (double)(util_now_us() - t0) / 1e6;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        free(output);
        log_msg(BGS_LOG_INFO, "build succeeded in %.2f s", secs);
        return 0;
    }
    generation *g = generation_current();
    unsigned long long keep = g ? (unsigned long long)g->number : 0;
    generation_release(g);
    char why[700];
    if (WIFEXITED(status))
        snprintf(why, sizeof why, "build failed (exit %d): %s", WEXITSTATUS(status),
                 first[0] ? first : "(no output)");
    else
        snprintf(why, sizeof why, "build failed (killed by signal %d): %s", WTERMSIG(status),
                 first[0] ? first : "(no output)");
    generation_note_build_failure(why);
    /* The dashboard shows the line, then the compiler's output. */
    size_t wl = strlen(why), ol = strlen(output);
    char *full = xmalloc(wl + 2 + ol + 1);
    memcpy(full, why, wl);
    memcpy(full + wl, "\n\n", 2);
    memcpy(full + wl + 2, output, ol + 1);
    events_reload("build", 0, 0, 0, full);
    free(full);
    free(output);
    log_msg(BGS_LOG_ERROR, "%s (in %.2f s); keeping generation %llu", why, secs, keep);
    return -1;
}

/* ---- the thread ---------------------------------------------------------------------- */

#define PLUGIN_MASK (IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR | IN_DELETE_SELF | IN_MOVE_SELF)
#define REWATCH_MS 250

/* The plugin's directory went away (make clean): try to watch it again.
 * Returns 1 when watching again. */
static int rewatch_plugin_dir(void)
{
    plugin_wd = inotify_add_watch(ino_fd, plugin_dir, PLUGIN_MASK);
    if (plugin_wd < 0)
        return 0;
    log_msg(BGS_LOG_INFO, "reload: watching %s again", plugin_dir);
    return 1;
}

static void try_reload(void)
{
    char why[1024];
    struct stat st;
    if (stat(cfg.plugin_path, &st) != 0 && errno == ENOENT)
        return; /* removed (make clean): its next write brings it back */
    if (image_check(cfg.plugin_path, why, sizeof why) == IMAGE_EINCOMPLETE) {
        log_msg(BGS_LOG_INFO, "reload: waiting for '%s' to be complete: %s",
                cfg.plugin_path, why);
        return;
    }
    generation_reload(cfg.plugin_path, cfg.max_generations);
}

static void *reload_main(void *arg)
{
    (void)arg;
    uint64_t plugin_due = 0, build_due = 0; /* monotonic us; 0: none */
    /* A build we ran exited 0: the writes to the plugin it made are
     * complete, so they load without the settle delay. */
    int own_build = 0;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));

    for (;;) {
        uint64_t now = util_now_us(), due = 0;
        if (plugin_due && (!due || plugin_due < due))
            due = plugin_due;
        if (build_due && (!due || build_due < due))
            due = build_due;
        int timeout = -1;
        if (due)
            timeout = due <= now ? 0 : (int)((due - now + 999) / 1000);
        if (ino_fd >= 0 && (plugin_wd < 0 || any_top_gone()) && (timeout < 0 || timeout > REWATCH_MS))
            timeout = REWATCH_MS;

        struct pollfd pf[2] = {{.fd = wake_fd, .events = POLLIN},
                               {.fd = ino_fd, .events = POLLIN}};
        int n = poll(pf, ino_fd >= 0 ? 2 : 1, timeout);
        if (n < 0 && errno != EINTR)
            break;

        if (n > 0 && (pf[0].revents & POLLIN)) {
            uint64_t v = 0;
            if (read(wake_fd, &v, sizeof v) == (ssize_t)sizeof v) {
                if (v >= WAKE_STOP)
                    break;
                generation_reload(cfg.plugin_path, cfg.max_generations);
                plugin_due = 0;
            }
        }
        if (n > 0 && ino_fd >= 0 && (pf[1].revents & POLLIN)) {
            ssize_t len;
            while ((len = read(ino_fd, buf, sizeof buf)) > 0) {
                for (char *p = buf; p < buf + len;) {
                    struct inotify_event *ev = (struct inotify_event *)(void *)p;
                    p += sizeof *ev + ev->len;
                    if (ev->wd == plugin_wd && (ev->mask & IN_IGNORED)) {
                        plugin_wd = -1;
                        log_msg(BGS_LOG_WARN, "reload: %s went away; watching for it to "
                                "come back (the current code keeps serving)", plugin_dir);
                        continue;
                    }
                    if (ev->wd != plugin_wd && (ev->mask & IN_MOVE_SELF)) {
                        /* Its path is no longer where we look: drop the
                         * watch (IN_IGNORED follows and forgets it). */
                        inotify_rm_watch(ino_fd, ev->wd);
                        continue;
                    }
                    if (ev->wd != plugin_wd && (ev->mask & IN_IGNORED)) {
                        forget_wd(ev->wd);
                        continue;
                    }
                    if (ev->len == 0)
                        continue;
                    if (ev->wd == plugin_wd && strcmp(ev->name, plugin_base) == 0 &&
                        (ev->mask & (IN_CLOSE_WRITE | IN_MOVED_TO))) {
                        plugin_due = util_now_us() + (own_build ? 0 : (uint64_t)cfg.settle_ms * 1000u);
                        continue;
                    }
                    const char *dir = wd_path(ev->wd);
                    if (dir == NULL)
                        continue;
                    if ((ev->mask & (IN_CREATE | IN_MOVED_TO)) && (ev->mask & IN_ISDIR)) {
                        if (!ignored_dir(ev->name)) {
                            char sub[PATH_MAX];
                            if (snprintf(sub, sizeof sub, "%s/%s", dir, ev->name) < (int)sizeof sub)
                                watch_tree(sub, 1);
                        }
                        continue;
                    }
                    if (ev->mask & IN_ISDIR)
                        continue;
                    if (ignored_name(ev->name) || cfg.build_cmd == NULL)
                        continue;
                    if (ev->mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE))
                        build_due = util_now_us() + (uint64_t)cfg.debounce_ms * 1000u;
                }
            }
        }

        if (ino_fd >= 0 && plugin_wd < 0 && cfg.watch_plugin && rewatch_plugin_dir())
            plugin_due = util_now_us() + (uint64_t)cfg.settle_ms * 1000u; /* it may be there */
        if (ino_fd >= 0 && rewatch_tops() && cfg.build_cmd)
            build_due = util_now_us() + (uint64_t)cfg.debounce_ms * 1000u;

        own_build = 0; /* its events were read above */
        now = util_now_us();
        if (build_due && now >= build_due) {
            build_due = 0;
            /* the .so it writes arrives as an event, read at once */
            own_build = run_build() == 0;
        }
        if (plugin_due && now >= plugin_due) {
            plugin_due = 0;
            try_reload();
        }
    }
    return NULL;
}

static int dir_of(const char *path, char *out, size_t len)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return snprintf(out, len, ".") >= (int)len ? -1 : 0;
    size_t n = (size_t)(slash - path);
    if (n == 0)
        n = 1;
    if (n >= len)
        return -1;
    memcpy(out, path, n);
    out[n] = '\0';
    return 0;
}

/* Close what reload_prepare opened (nothing runs on it). */
static void unprepare(void)
{
    for (unsigned i = 0; i < nwds; i++)
        free(wds[i].path);
    nwds = 0;
    memset(top_gone, 0, sizeof top_gone);
    if (ino_fd >= 0)
        close(ino_fd);
    if (wake_fd >= 0)
        close(wake_fd);
    ino_fd = wake_fd = -1;
}

int reload_prepare(const reload_config *c, char *err, size_t errlen)
{
    cfg = *c;
    if (cfg.settle_ms == 0)
        cfg.settle_ms = RELOAD_DEFAULT_SETTLE_MS;
    atomic_init(&build_pid, 0);
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd < 0) {
        snprintf(err, errlen, "bgserve: cannot create an eventfd: %s", strerror(errno));
        return -1;
    }
    if (cfg.watch_plugin || cfg.nwatch) {
        ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (ino_fd < 0) {
            snprintf(err, errlen, "bgserve: --reload: inotify is not available: %s\n"
                     "  fix: raise fs.inotify.max_user_instances, or reload with SIGHUP",
                     strerror(errno));
            unprepare();
            return -1;
        }
        plugin_base = strrchr(cfg.plugin_path, '/');
        plugin_base = plugin_base ? plugin_base + 1 : cfg.plugin_path;
        if (dir_of(cfg.plugin_path, plugin_dir, sizeof plugin_dir) != 0 ||
            (plugin_wd = inotify_add_watch(ino_fd, plugin_dir, PLUGIN_MASK)) < 0) {
            snprintf(err, errlen, "bgserve: --reload: cannot watch the plugin's directory '%s': %s\n"
                     "  fix: check that the directory exists and is readable",
                     plugin_dir, strerror(errno));
            unprepare();
            return -1;
        }
        for (unsigned i = 0; i < cfg.nwatch; i++) {
            struct stat st;
            if (stat(cfg.watch_dirs[i], &st) != 0 || !S_ISDIR(st.st_mode)) {
                snprintf(err, errlen, "bgserve: --watch %s: not a directory\n"
                         "  fix: give a directory of sources to watch", cfg.watch_dirs[i]);
                unprepare();
                return -1;
            }
            watch_tree(cfg.watch_dirs[i], 0);
        }
    }
    return 0;
}

int reload_start(char *err, size_t errlen)
{
    if (pthread_create(&thread, NULL, reload_main, NULL) != 0) {
        snprintf(err, errlen, "bgserve: cannot start the reload thread");
        return -1;
    }
    running = 1;
    if (cfg.watch_plugin || cfg.nwatch)
        log_msg(BGS_LOG_INFO, "reload: watching %s%s%s%s", cfg.plugin_path,
                cfg.nwatch ? " and sources under " : "", cfg.nwatch ? cfg.watch_dirs[0] : "",
                cfg.nwatch > 1 ? " ..." : "");
    return 0;
}

void reload_request(void)
{
    uint64_t one = WAKE_RELOAD;
    if (wake_fd >= 0 && write(wake_fd, &one, sizeof one) < 0) {
        /* the counter is saturated: a reload is pending anyway */
    }
}

void reload_stop(void)
{
    if (!running) {
        unprepare(); /* prepared, never started (or nothing at all) */
        return;
    }
    pid_t pid = atomic_load(&build_pid);
    if (pid > 0)
        kill(pid, SIGTERM);
    uint64_t stop = WAKE_STOP;
    if (write(wake_fd, &stop, sizeof stop) < 0) {
        /* cannot happen below the counter's limit */
    }
    pthread_join(thread, NULL);
    running = 0;
    unprepare();
}
