/*
 * harness.c - integration-test helpers (see harness.h).
 *
 * A test owns its h_server; nothing here is shared between threads except
 * the static path/header slots, which tests use from their main thread.
 */
#include "harness.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 8

uint64_t h_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t h_now_ms(void)
{
    return h_now_ns() / 1000000u;
}

const char *h_build_path(const char *rel)
{
    static char slots[SLOTS][1024];
    static unsigned next;
    const char *build = getenv("BGSERVE_BUILD");
    char *buf = slots[next++ % SLOTS];
    snprintf(buf, sizeof slots[0], "%s/%s", build && *build ? build : "build", rel);
    return buf;
}

const char *h_build_sanitize(void)
{
    static char san[128];
    const char *build = getenv("BGSERVE_BUILD");
    const char *p = build ? strstr(build, "san-") : NULL;
    snprintf(san, sizeof san, "%s", p ? p + 4 : "");
    for (char *c = san; *c; c++)
        if (*c == '-')
            *c = ',';
    return san;
}

/* Append to a buffer only this function allocates: its size is the
 * smallest power of two (at least 64) above len, so it doubles rather
 * than growing by each chunk (a server's log read 4 KiB at a time cost
 * quadratic copying, which under ThreadSanitizer kept test_conns reading
 * for minutes). */
static void append(char **buf, size_t *len, const char *data, size_t n)
{
    size_t cap = 64, need = *len + n + 1;
    while (cap < *len + 1)
        cap *= 2;
    char *p = *buf;
    if (p == NULL || need > cap) {
        while (cap < need)
            cap *= 2;
        p = realloc(*buf, cap);
    }
    if (p == NULL)
        abort();
    memcpy(p + *len, data, n);
    *len += n;
    p[*len] = '\0';
    *buf = p;
}

void h_drain_log(h_server *s)
{
    char chunk[4096];
    if (s->err_fd < 0)
        return;
    for (;;) {
        ssize_t n = read(s->err_fd, chunk, sizeof chunk);
        if (n > 0) {
            append(&s->log, &s->log_len, chunk, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        break;
    }
}

/* Print the end of s's log (the last LOG_TAIL bytes) after what. */
#define LOG_TAIL 16384
static void print_log_tail(const h_server *s, const char *what)
{
    size_t from = s->log_len > LOG_TAIL ? s->log_len - LOG_TAIL : 0;
    fprintf(stderr, "%s; its log%s:\n%s\n", what, from ? " ends" : "",
            s->log ? s->log + from : "");
}

typedef struct log_wait {
    h_server *s;
    const char *needle;
} log_wait;

static int log_shows(void *arg)
{
    log_wait *w = arg;
    h_drain_log(w->s);
    return w->s->log && strstr(w->s->log, w->needle) ? 1 : 0;
}

int h_wait_log(h_server *s, const char *needle, unsigned deadline_ms)
{
    log_wait w = {s, needle};
    int found = h_poll_server(s, log_shows, &w, deadline_ms);
    if (!found && !h_server_ended(s, NULL, 0)) { /* the deadline (h_poll_server said an exit) */
        char what[256];
        snprintf(what, sizeof what, "h_wait_log: \"%s\" not in bgserve's log within %u ms",
                 needle, deadline_ms);
        print_log_tail(s, what);
    }
    return found;
}

int h_count_log(h_server *s, const char *needle)
{
    int count = 0;
    h_drain_log(s);
    for (const char *p = s->log; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        count++;
    return count;
}

static void child_exec(const char *const *argv, const char *const *extra_env, int errfd)
{
    /* A test that fails mid-way never stops its server: let it go with
     * the test instead of lingering. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (extra_env)
        for (const char *const *e = extra_env; *e; e++)
            putenv((char *)*e);
    dup2(errfd, 2);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0)
        dup2(null, 0);
    execv(argv[0], (char *const *)argv);
    fprintf(stderr, "harness: exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* Start argv[0] with stdout and stderr going to s's log; 0 or -1. */
static int spawn(h_server *s, const char *const *argv, const char *const *extra_env)
{
    /* The server writes into an unlinked temporary file, never a pipe:
     * a pipe nobody drains would block a chatty server. */
    char tmpl[] = "/tmp/bgserve-test-log-XXXXXX";
    int wfd = mkostemp(tmpl, O_CLOEXEC);
    if (wfd < 0)
        return -1;
    s->err_fd = open(tmpl, O_RDONLY | O_CLOEXEC);
    unlink(tmpl);
    if (s->err_fd < 0) {
        close(wfd);
        return -1;
    }
    s->pid = fork();
    if (s->pid < 0)
        return -1;
    if (s->pid == 0) {
        dup2(wfd, 1); /* stdout too, so --check output is seen */
        child_exec(argv, extra_env, wfd);
    }
    close(wfd);

    return 0;
}

/* Poll s's log until ready(s, arg) says 1 (0 is returned) or -1, the
 * process exits or the deadline passes (-1 is returned). */
static int await_log(h_server *s, unsigned deadline_ms,
                     int (*ready)(h_server *s, const void *arg), const void *arg)
{
    uint64_t end = h_now_ms() + deadline_ms;
    while (h_now_ms() < end) {
        h_drain_log(s);
        int r = ready(s, arg);
        if (r != 0)
            return r > 0 ? 0 : -1;
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            h_drain_log(s);
            s->pid = 0;
            return -1;
        }
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL); /* polling interval */
    }
    return -1;
}

static int log_has(h_server *s, const void *needle)
{
    return s->log && strstr(s->log, needle) ? 1 : 0;
}

/* The "listening on http://HOST:PORT" line: s->port and s->base. */
static int listening(h_server *s, const void *arg)
{
    (void)arg;
    const char *marker = "bgserve: listening on http://";
    const char *line = s->log ? strstr(s->log, marker) : NULL;
    if (!line || !strchr(line, '\n'))
        return 0;
    const char *hostport = line + strlen(marker);
    const char *nl = strchr(hostport, '\n');
    /* the last ':' before the end of this line (IPv6 has more) */
    const char *colon = NULL;
    for (const char *c = hostport; c < nl; c++)
        if (*c == ':')
            colon = c;
    if (!colon)
        return 0;
    s->port = atoi(colon + 1);
    snprintf(s->base, sizeof s->base, "http://127.0.0.1:%d", s->port);
    return s->port > 0 ? 1 : -1;
}

int h_spawn(h_server *s, const char *const *argv, const char *const *extra_env,
            const char *ready, unsigned deadline_ms)
{
    memset(s, 0, sizeof *s);
    s->err_fd = -1;
    if (spawn(s, argv, extra_env) != 0)
        return -1;
    return await_log(s, deadline_ms, log_has, ready);
}

int h_start(h_server *s, const char *plugin, const char *const *args,
            const char *const *extra_env)
{
    return h_start_bin(s, h_build_path("bgserve"), plugin, args, extra_env);
}

int h_start_bin(h_server *s, const char *bin, const char *plugin,
                const char *const *args, const char *const *extra_env)
{
    const char *argv[64];
    size_t n = 0;
    memset(s, 0, sizeof *s);
    s->err_fd = -1;
    argv[n++] = bin;
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--color";
    argv[n++] = "never";
    if (args)
        for (const char *const *a = args; *a && n < 60; a++)
            argv[n++] = *a;
    argv[n++] = plugin;
    argv[n] = NULL;
    if (spawn(s, argv, extra_env) != 0)
        return -1;

    return await_log(s, 10000, listening, NULL);
}

/* Wait for pid to exit, reading its output meanwhile (s may be NULL):
 * a server blocked on a full stderr pipe would never exit. */
static int wait_exit(h_server *s, pid_t pid, unsigned deadline_ms)
{
    uint64_t end = h_now_ms() + deadline_ms;
    int status;
    for (;;) {
        if (s)
            h_drain_log(s);
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (r < 0)
            return -1;
        if (h_now_ms() >= end)
            return -2;
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL); /* polling interval, not a wait for an event */
    }
}

int h_stop(h_server *s, int sig)
{
    if (s->pid <= 0)
        return -1;
    if (sig)
        kill(s->pid, sig);
    int rc = wait_exit(s, s->pid, 15000);
    if (rc == -2) {
        kill(s->pid, SIGKILL);
        rc = wait_exit(s, s->pid, 5000);
    }
    s->pid = 0;
    h_drain_log(s);
    /* An abort or a sanitizer's report is never what a test stops a
     * server for: show the log, so a rare failure can be read from CI. */
    if (rc == 128 + SIGABRT || (s->log && strstr(s->log, "Sanitizer")))
        fprintf(stderr, "bgserve, sent signal %d, exited %d; its log:\n%s\n", sig, rc,
                s->log ? s->log : "");
    return rc;
}

void h_free(h_server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
    }
    if (s->err_fd >= 0)
        close(s->err_fd);
    free(s->log);
    memset(s, 0, sizeof *s);
    s->err_fd = -1;
}

int h_run(const char *const *argv, char **out)
{
    int pipefd[2];
    char *buf = NULL;
    size_t len = 0;

    append(&buf, &len, "", 0);
    *out = buf;
    if (pipe2(pipefd, O_CLOEXEC) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(pipefd[1], 1);
        child_exec(argv, NULL, pipefd[1]);
    }
    close(pipefd[1]);
    char chunk[4096];
    ssize_t n;
    while ((n = read(pipefd[0], chunk, sizeof chunk)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        append(&buf, &len, chunk, (size_t)n);
    }
    close(pipefd[0]);
    *out = buf;
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- HTTP ---------------------------------------------------------------- */

struct sink {
    char **buf;
    size_t *len;
};

static size_t on_data(char *data, size_t size, size_t nmemb, void *arg)
{
    struct sink *s = arg;
    append(s->buf, s->len, data, size * nmemb);
    return size * nmemb;
}

int h_http(h_server *s, const char *method, const char *url,
           const char *body, size_t body_len, const char *const *headers,
           h_resp *r)
{
    static int curl_ready;
    char full[2048];
    size_t hlen = 0;
    struct curl_slist *list = NULL;

    if (!curl_ready) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        curl_ready = 1;
    }
    memset(r, 0, sizeof *r);
    append(&r->body, &r->body_len, "", 0);
    append(&r->headers, &hlen, "", 0);
    if (strncmp(url, "http", 4) == 0)
        snprintf(full, sizeof full, "%s", url);
    else
        snprintf(full, sizeof full, "%s%s", s->base, url);

    CURL *c = curl_easy_init();
    struct sink bs = {&r->body, &r->body_len}, hs = {&r->headers, &hlen};
    curl_easy_setopt(c, CURLOPT_URL, full);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    if (headers)
        for (const char *const *h = headers; *h; h++)
            list = curl_slist_append(list, *h);
    list = curl_slist_append(list, "Expect:");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &bs);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &hs);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_cleanup(c);
    curl_slist_free_all(list);
    return (int)rc;
}

int h_get(h_server *s, const char *path, h_resp *r)
{
    return h_http(s, "GET", path, NULL, 0, NULL, r);
}

const char *h_header(const h_resp *r, const char *name)
{
    static char slots[SLOTS][1024];
    static unsigned next;
    size_t nlen = strlen(name);
    for (const char *line = r->headers; line && *line;) {
        const char *eol = strstr(line, "\r\n");
        size_t llen = eol ? (size_t)(eol - line) : strlen(line);
        if (llen > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
            char *buf = slots[next++ % SLOTS];
            const char *v = line + nlen + 1;
            while (*v == ' ')
                v++;
            size_t vlen = llen - (size_t)(v - line);
            if (vlen >= sizeof slots[0])
                vlen = sizeof slots[0] - 1;
            memcpy(buf, v, vlen);
            buf[vlen] = '\0';
            return buf;
        }
        line = eol ? eol + 2 : line + llen;
    }
    return NULL;
}

void h_resp_free(h_resp *r)
{
    free(r->body);
    free(r->headers);
    memset(r, 0, sizeof *r);
}

int h_server_ended(const h_server *s, char *how, size_t cap)
{
    char dummy[8];
    if (how == NULL) {
        how = dummy;
        cap = sizeof dummy;
    }
    if (s->pid <= 0) {
        snprintf(how, cap, "is not running");
        return 1;
    }
    siginfo_t si;
    memset(&si, 0, sizeof si);
    /* WNOWAIT: the process stays a zombie, so h_stop still reaps it and
     * returns its status, and its pid is not reused meanwhile. */
    if (waitid(P_PID, (id_t)s->pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
        if (errno == EINTR)
            return 0;
        snprintf(how, cap, "cannot be waited for (%s)", strerror(errno));
        return 1;
    }
    if (si.si_pid == 0)
        return 0;
    if (si.si_code == CLD_EXITED)
        snprintf(how, cap, "exited with status %d", si.si_status);
    else
        snprintf(how, cap, "was killed by signal %d (%s)", si.si_status, strsignal(si.si_status));
    return 1;
}

int h_poll_server(h_server *s, int (*cond)(void *arg), void *arg, unsigned deadline_ms)
{
    uint64_t end = h_now_ms() + deadline_ms;
    char how[96];
    int v;
    while (!(v = cond(arg))) {
        if (s && h_server_ended(s, how, sizeof how)) {
            h_drain_log(s);
            v = cond(arg); /* what it wrote last may be what we wait for */
            if (!v) {
                char what[192];
                snprintf(what, sizeof what, "bgserve (pid %d) %s while the test waited for it",
                         (int)s->pid, how);
                print_log_tail(s, what);
            }
            return v;
        }
        if (h_now_ms() >= end)
            break;
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL); /* polling interval */
    }
    return v;
}

int h_poll(int (*cond)(void *arg), void *arg, unsigned deadline_ms)
{
    return h_poll_server(NULL, cond, arg, deadline_ms);
}
