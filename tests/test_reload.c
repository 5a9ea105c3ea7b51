/*
 * test_reload.c - hot reload (issue 5) through the real build/bgserve.
 *
 * Each test copies build A or B of the reload fixture (reload_common.h)
 * to TMP/out/app.so, serves that path with XDG_RUNTIME_DIR=TMP/xdg (so
 * the private copies land in TMP/xdg/bgserve, where the test can count
 * them), then writes the other build over the path the ways linkers and
 * install tools do and checks which code serves: GET / answers 1000
 * bytes of the build's letter, so a response is whole from one
 * generation exactly when every byte is the same letter.
 *
 * Threads: in reload_alternating_builds_under_load a client thread owns
 * its curl handle and counters (published through atomics, read in full
 * after the join); everything else runs on the test's main thread.
 * Every wait is a poll with a deadline; no test sleeps for an event.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LETTER_DEADLINE_MS 20000u /* a written build serves within this */
#define LOG_DEADLINE_MS 30000u
#define BODY_LEN 1000             /* the fixture's GET / body */
#define LOAD_REQUESTS 2000        /* the client loop's minimum */
#define LOAD_RELOADS 20

/* How a new build lands on the plugin's path. */
typedef enum wmethod {
    W_INPLACE, /* open O_TRUNC + write, like GNU ld */
    W_RENAME,  /* a temp file in the same directory, then mv (lld) */
    W_CP,      /* cp over the file */
    W_INSTALL, /* install -m 755 */
} wmethod;

typedef struct rl {
    char root[256];         /* the test's temporary directory */
    char plugin[PATH_MAX];  /* root/out/app.so: the path bgserve serves */
    char copies[PATH_MAX];  /* root/xdg/bgserve: bgserve's private copies */
    char env[PATH_MAX + 32]; /* "XDG_RUNTIME_DIR=root/xdg" */
    char build_a[PATH_MAX]; /* absolute paths of the fixture builds */
    char build_b[PATH_MAX];
    h_server s;
    int passed;             /* set at the end of a test body */
} rl;

/* ---- files ------------------------------------------------------------------ */

/* The whole file at path; fails the test when it cannot be read. */
static char *read_all(const char *path, size_t *len)
{
    char *data = h_slurp(path, len);
    assert_non_null(data);
    return data;
}

/* Write data to path in two write() calls on an O_TRUNC descriptor. */
static void write_inplace(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    assert_true(fd >= 0);
    size_t half = len / 2;
    assert_int_equal(write(fd, data, half), (ssize_t)half);
    assert_int_equal(write(fd, data + half, len - half), (ssize_t)(len - half));
    assert_int_equal(close(fd), 0);
}

/* Run a shell snippet with $0, $1 bound to a, b; assert it succeeded. */
static void sh2(const char *script, const char *a, const char *b)
{
    const char *argv[] = {"/bin/sh", "-c", script, a, b, NULL};
    char *out = NULL;
    int rc = h_run(argv, &out);
    if (rc != 0)
        fprintf(stderr, "'%s' %s %s: exit %d\n%s\n", script, a, b ? b : "", rc, out);
    free(out);
    assert_int_equal(rc, 0);
}

/* Put the file src on the plugin's path by method m. */
static void put_plugin(rl *t, const char *src, wmethod m)
{
    static unsigned seq;
    char tmp[PATH_MAX + 32];
    size_t len;
    char *data;

    switch (m) {
    case W_INPLACE:
        data = read_all(src, &len);
        write_inplace(t->plugin, data, len);
        free(data);
        break;
    case W_RENAME:
        snprintf(tmp, sizeof tmp, "%s.tmp%u", t->plugin, seq++);
        data = read_all(src, &len);
        write_inplace(tmp, data, len);
        free(data);
        sh2("mv -f \"$0\" \"$1\"", tmp, t->plugin);
        break;
    case W_CP:
        sh2("cp \"$0\" \"$1\"", src, t->plugin);
        break;
    case W_INSTALL:
        sh2("install -m 755 \"$0\" \"$1\"", src, t->plugin);
        break;
    }
}

static void put_text(const char *path, const char *text)
{
    write_inplace(path, text, strlen(text));
}

/* Entries of dir other than . and ..; the first one's name in first. */
static int count_entries(const char *dir, char *first, size_t cap)
{
    DIR *d = opendir(dir);
    int n = 0;
    if (d == NULL)
        return -1;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (n++ == 0 && first)
            snprintf(first, cap, "%s", e->d_name);
    }
    closedir(d);
    return n;
}

/* ---- the server ------------------------------------------------------------- */

static void rl_start(rl *t, const char *const *args)
{
    const char *env[] = {t->env, NULL};
    assert_int_equal(h_start_app(&t->s, t->plugin, args, env), 0);
}

/* Stop with SIGTERM: a clean exit and no sanitizer report. */
static void rl_stop(rl *t)
{
    h_stop_clean(&t->s);
}

static int setup(void **state)
{
    rl *t = calloc(1, sizeof *t);
    char buf[512];
    if (t == NULL)
        return -1;
    t->s.err_fd = -1;
    snprintf(t->root, sizeof t->root, "/tmp/bgserve-reload-XXXXXX");
    if (mkdtemp(t->root) == NULL)
        return -1;
    snprintf(buf, sizeof buf, "%s/out", t->root);
    mkdir(buf, 0755);
    snprintf(buf, sizeof buf, "%s/xdg", t->root);
    mkdir(buf, 0700);
    snprintf(t->env, sizeof t->env, "XDG_RUNTIME_DIR=%s", buf);
    snprintf(t->copies, sizeof t->copies, "%s/bgserve", buf);
    snprintf(t->plugin, sizeof t->plugin, "%s/out/app.so", t->root);
    if (realpath(h_build_path("tests/fixtures/reload_a.so"), t->build_a) == NULL ||
        realpath(h_build_path("tests/fixtures/reload_b.so"), t->build_b) == NULL) {
        fprintf(stderr, "reload fixtures missing under %s\n", h_build_path(""));
        return -1;
    }
    *state = t;
    return 0;
}

/* Print the log's last lines, leaving out the periodic ticks (ten a
 * second) that would bury everything else. */
static void dump_log(const h_server *s)
{
    enum { KEEP = 80 };
    const char *starts[KEEP];
    size_t lens[KEEP], n = 0;
    for (const char *p = s->log; p && *p;) {
        size_t len = strcspn(p, "\n");
        const char *nl = p + len;
        if (!memmem(p, len, "tick", 4)) {
            starts[n % KEEP] = p;
            lens[n % KEEP] = len;
            n++;
        }
        p = *nl ? nl + 1 : nl;
    }
    fprintf(stderr, "---- server log (last %d lines without ticks) ----\n", n < KEEP ? (int)n : KEEP);
    for (size_t i = n < KEEP ? 0 : n - KEEP; i < n; i++)
        fprintf(stderr, "%.*s\n", (int)lens[i % KEEP], starts[i % KEEP]);
    fprintf(stderr, "----\n");
}

static int teardown(void **state)
{
    rl *t = *state;
    if (!t->passed && t->s.log) {
        h_drain_log(&t->s);
        dump_log(&t->s);
    }
    h_free(&t->s);
    h_rm_rf(t->root);
    free(t);
    return 0;
}

/* ---- HTTP ------------------------------------------------------------------- */

/* The letter of a whole fixture body, or 0 when it is not one. */
static char body_letter(const char *body, size_t len)
{
    if (len != BODY_LEN)
        return 0;
    for (size_t i = 1; i < len; i++)
        if (body[i] != body[0])
            return 0;
    return body[0];
}

static char served_letter(h_server *s)
{
    h_resp r;
    char c = 0;
    if (h_get(s, "/", &r) == 0 && r.status == 200)
        c = body_letter(r.body, r.body_len);
    h_resp_free(&r);
    return c;
}

struct letter_wait {
    h_server *s;
    char want;
    char last;
};

static int letter_is(void *arg)
{
    struct letter_wait *w = arg;
    w->last = served_letter(w->s);
    return w->last == w->want;
}

static void expect_letter(h_server *s, char want)
{
    struct letter_wait w = {s, want, 0};
    if (!h_poll_server(s, letter_is, &w, LETTER_DEADLINE_MS))
        fprintf(stderr, "GET / never served %c (last: %c)\n", want, w.last ? w.last : '?');
    assert_int_equal(w.last, want);
}

/* A number from /_bgserve/stats ("key":N); -1 when absent. */
static long long stat_num(h_server *s, const char *key)
{
    return h_stat(s, NULL, key);
}

/* The stats' "key": 's' for a string, 'n' for null, 0 when absent. */
static char stat_kind(h_server *s, const char *key)
{
    h_resp r;
    char pat[64], kind = 0;
    assert_int_equal(h_get(s, "/_bgserve/stats", &r), 0);
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(r.body, pat);
    if (p) {
        p += strlen(pat);
        kind = *p == '"' ? 's' : strncmp(p, "null", 4) == 0 ? 'n' : '?';
    }
    h_resp_free(&r);
    return kind;
}

/* GET /slowtask with a query; returns the task id from the body. */
static unsigned long long slowtask(h_server *s, const char *query)
{
    char path[PATH_MAX + 64];
    h_resp r;
    snprintf(path, sizeof path, "/slowtask%s", query);
    assert_int_equal(h_get(s, path, &r), 0);
    assert_int_equal(r.status, 202);
    unsigned long long id = strtoull(r.body, NULL, 10);
    h_resp_free(&r);
    assert_true(id > 0);
    return id;
}

/* ---- log -------------------------------------------------------------------- */

/* Offset of the first needle in the log at or after from; -1 if none. */
static long log_find(h_server *s, const char *needle, long from)
{
    h_drain_log(s);
    if (s->log == NULL || from < 0 || (size_t)from > s->log_len)
        return -1;
    const char *p = strstr(s->log + from, needle);
    return p ? (long)(p - s->log) : -1;
}

static void expect_log(h_server *s, const char *needle)
{
    if (!h_wait_log(s, needle, LOG_DEADLINE_MS))
        fprintf(stderr, "log never showed '%s'\n", needle);
    assert_true(h_count_log(s, needle) > 0);
}

struct count_wait {
    h_server *s;
    const char *needle;
    int want;
};

static int count_reached(void *arg)
{
    struct count_wait *w = arg;
    return h_count_log(w->s, w->needle) >= w->want;
}

/* Wait until the log holds needle at least n times. */
static void expect_log_count(h_server *s, const char *needle, int n)
{
    struct count_wait w = {s, needle, n};
    if (!h_poll_server(s, count_reached, &w, LOG_DEADLINE_MS))
        fprintf(stderr, "log showed '%s' %d times, wanted %d\n", needle,
                h_count_log(s, needle), n);
    assert_true(h_count_log(s, needle) >= n);
}

/* What bgserve says at startup when the plugin path holds what it holds
 * now: the "cannot load plugin" line, into buf. */
static void startup_refusal(rl *t, char *buf, size_t cap)
{
    const char *argv[] = {h_build_path("bgserve"), "--port", "0", "--color", "never",
                          t->plugin, NULL};
    char *out = NULL;
    int rc = h_run(argv, &out);
    assert_int_not_equal(rc, 0);
    if (h_line_with(out, "cannot load plugin", buf, cap) != 0)
        fprintf(stderr, "startup gave no refusal:\n%s\n", out);
    free(out);
    h_assert_contains(buf, "cannot load plugin");
}

/* ---- 1. alternating builds under a client loop ------------------------------ */

typedef struct load {
    char url[96];
    atomic_int stop;      /* main: its reloads are done */
    atomic_long done;     /* client: requests completed */
    /* Client-only until the join. */
    long failed, seen_a, seen_b;
    char first_failure[256];
} load;

typedef struct body_buf {
    char data[BODY_LEN + 64];
    size_t len;           /* bytes received, also past data's end */
} body_buf;

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    body_buf *b = arg;
    size_t n = size * nmemb;
    if (b->len < sizeof b->data)
        memcpy(b->data + b->len, data, n < sizeof b->data - b->len ? n : sizeof b->data - b->len);
    b->len += n;
    return n;
}

static void *client_loop(void *arg)
{
    load *l = arg;
    body_buf b;
    CURL *c = curl_easy_init();
    uint64_t end = h_now_ms() + 45000; /* a bound, should the server stall */
    curl_easy_setopt(c, CURLOPT_URL, l->url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    while (!(atomic_load(&l->stop) && atomic_load(&l->done) >= LOAD_REQUESTS) &&
           h_now_ms() < end) {
        long status = 0;
        b.len = 0;
        CURLcode rc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        char letter = rc == CURLE_OK && status == 200 && b.len <= sizeof b.data
                          ? body_letter(b.data, b.len) : 0;
        if (letter == 'A')
            l->seen_a++;
        else if (letter == 'B')
            l->seen_b++;
        else if (l->failed++ == 0)
            snprintf(l->first_failure, sizeof l->first_failure,
                     "request %ld: curl %d (%s), status %ld, %zu bytes starting '%.8s'",
                     atomic_load(&l->done), (int)rc, curl_easy_strerror(rc), status,
                     b.len, b.len ? b.data : "");
        atomic_fetch_add(&l->done, 1);
    }
    curl_easy_cleanup(c);
    return NULL;
}

struct done_wait {
    load *l;
    long want;
};

static int load_reached(void *arg)
{
    struct done_wait *w = arg;
    return atomic_load(&w->l->done) >= w->want;
}

static void reload_alternating_builds_under_load(void **state)
{
    rl *t = *state;
    load l;
    pthread_t th;

    memset(&l, 0, sizeof l);
    put_plugin(t, t->build_a, W_INPLACE);
    const char *args[] = {"--reload", NULL};
    rl_start(t, args);
    expect_letter(&t->s, 'A');

    snprintf(l.url, sizeof l.url, "%s/", t->s.base);
    assert_int_equal(pthread_create(&th, NULL, client_loop, &l), 0);
    for (int i = 0; i < LOAD_RELOADS; i++) {
        /* Spread the reloads over the loop: the next one after another
         * stretch of requests. */
        struct done_wait w = {&l, (long)(i + 1) * (LOAD_REQUESTS * 4 / 5 / LOAD_RELOADS)};
        h_poll(load_reached, &w, LETTER_DEADLINE_MS);
        char want = i % 2 == 0 ? 'B' : 'A';
        put_plugin(t, want == 'A' ? t->build_a : t->build_b, i % 4 < 2 ? W_RENAME : W_CP);
        expect_letter(&t->s, want);
    }
    atomic_store(&l.stop, 1);
    pthread_join(th, NULL);

    if (l.failed)
        fprintf(stderr, "%ld of %ld requests failed; first: %s\n", l.failed,
                atomic_load(&l.done), l.first_failure);
    assert_int_equal(l.failed, 0);
    assert_true(atomic_load(&l.done) >= LOAD_REQUESTS);
    assert_true(l.seen_a > 0);
    assert_true(l.seen_b > 0);
    assert_int_equal(l.seen_a + l.seen_b, atomic_load(&l.done));
    assert_int_equal(stat_num(&t->s, "reloads"), LOAD_RELOADS);
    assert_int_equal(stat_num(&t->s, "reload_failures"), 0);
    assert_int_equal(stat_num(&t->s, "generation"), LOAD_RELOADS + 1);
    assert_int_equal(stat_kind(&t->s, "last_reload_error"), 'n');
    assert_int_equal(h_count_log(&t->s, "bgserve: reload: generation "), LOAD_RELOADS);
    rl_stop(t);
    t->passed = 1;
}

/* ---- 2. each way a build lands ------------------------------------------------ */

static void reload_write_methods_picked_up(void **state)
{
    rl *t = *state;
    put_plugin(t, t->build_a, W_INPLACE);
    const char *args[] = {"--reload", NULL};
    rl_start(t, args);
    expect_letter(&t->s, 'A');

    put_plugin(t, t->build_b, W_INPLACE);
    expect_letter(&t->s, 'B');
    put_plugin(t, t->build_a, W_RENAME);
    expect_letter(&t->s, 'A');
    put_plugin(t, t->build_b, W_CP);
    expect_letter(&t->s, 'B');
    put_plugin(t, t->build_a, W_INSTALL);
    expect_letter(&t->s, 'A');

    assert_true(stat_num(&t->s, "reloads") >= 4);
    assert_int_equal(stat_num(&t->s, "reload_failures"), 0);
    assert_int_equal(h_count_log(&t->s, "reload failed"), 0);
    rl_stop(t);
    t->passed = 1;
}

/* ---- 3. a task attached before the swap runs the old code ------------------- */

static void reload_task_before_swap_runs_old_code(void **state)
{
    rl *t = *state;
    char query[PATH_MAX + 64], release[PATH_MAX + 16], line[96];
    put_plugin(t, t->build_a, W_INPLACE);
    const char *args[] = {"--reload", NULL};
    rl_start(t, args);
    expect_letter(&t->s, 'A');

    /* The task holds until the test creates the release file. */
    snprintf(release, sizeof release, "%s/release", t->root);
    snprintf(query, sizeof query, "?ms=0&until=%s", release);
    unsigned long long id = slowtask(&t->s, query);

    put_plugin(t, t->build_b, W_RENAME);
    expect_letter(&t->s, 'B');
    expect_log(&t->s, "bgserve: reload: generation ");
    /* Generation 1 is retiring, but its task holds it. */
    assert_int_equal(h_count_log(&t->s, "generation 1 retired"), 0);
    snprintf(line, sizeof line, "task from A id=%llu\n", id);
    assert_int_equal(h_count_log(&t->s, line), 0);

    put_text(release, "go\n");
    expect_log(&t->s, line);
    expect_log(&t->s, "generation 1 retired");
    snprintf(line, sizeof line, "task from B id=%llu\n", id);
    assert_int_equal(h_count_log(&t->s, line), 0);

    /* In order: the swap, the old task's end, then the retirement. */
    snprintf(line, sizeof line, "task from A id=%llu\n", id);
    long swap = log_find(&t->s, "bgserve: reload: generation ", 0);
    long done = log_find(&t->s, line, 0);
    long retired = log_find(&t->s, "generation 1 retired", 0);
    assert_true(swap >= 0 && done > swap && retired > done);

    /* A task attached now runs the new code. */
    id = slowtask(&t->s, "?ms=0");
    snprintf(line, sizeof line, "task from B id=%llu\n", id);
    expect_log(&t->s, line);
    rl_stop(t);
    t->passed = 1;
}

/* ---- 4. periodic tasks do not run twice at a swap ----------------------------- */

static void reload_periodic_switches_without_overlap(void **state)
{
    rl *t = *state;
    char query[PATH_MAX + 64], release[PATH_MAX + 16];
    put_plugin(t, t->build_a, W_INPLACE);
    const char *args[] = {"--reload", NULL};
    rl_start(t, args);
    expect_log_count(&t->s, "tick A\n", 3);

    /* Keep generation 1 alive past the swap: its schedule must stop at
     * the swap, not at its retirement. */
    snprintf(release, sizeof release, "%s/release", t->root);
    snprintf(query, sizeof query, "?ms=0&until=%s", release);
    slowtask(&t->s, query);

    put_plugin(t, t->build_b, W_RENAME);
    expect_letter(&t->s, 'B');
    expect_log_count(&t->s, "tick B\n", 5);
    assert_int_equal(h_count_log(&t->s, "generation 1 retired"), 0);

    long first_b = log_find(&t->s, "tick B\n", 0);
    long late_a = log_find(&t->s, "tick A\n", first_b);
    if (late_a >= 0)
        fprintf(stderr, "tick A at offset %ld after the first tick B at %ld\n", late_a, first_b);
    assert_true(first_b >= 0);
    assert_int_equal(late_a, -1);

    put_text(release, "go\n");
    expect_log(&t->s, "generation 1 retired");
    int ticks_b = h_count_log(&t->s, "tick B\n");
    expect_log_count(&t->s, "tick B\n", ticks_b + 3); /* B keeps ticking */
    assert_int_equal(log_find(&t->s, "tick A\n", first_b), -1);
    rl_stop(t);
    t->passed = 1;
}

/* ---- 5. failed reloads keep the old code ---------------------------------------- */

static void reload_failures_keep_serving(void **state)
{
    rl *t = *state;
    char refusal[1024], text[2048] = "";
    put_plugin(t, t->build_a, W_INPLACE);
    const char *args[] = {"--reload", NULL};
    rl_start(t, args);
    expect_letter(&t->s, 'A');
    assert_int_equal(stat_num(&t->s, "reload_failures"), 0);
    assert_int_equal(stat_kind(&t->s, "last_reload_error"), 'n');

    /* A broken build: text where the shared object should be. */
    for (int i = 0; i < 20; i++)
        strcat(text, "this is not a shared object\n");
    char stage[PATH_MAX + 16];
    snprintf(stage, sizeof stage, "%s/broken.txt", t->root);
    put_text(stage, text);
    put_plugin(t, stage, W_RENAME);
    /* Matched without the "bgserve: " prefix: the line comes at error
     * level, "bgserve: error: reload failed: ...". */
    expect_log(&t->s, "reload failed: keeping generation 1");
    assert_int_equal(served_letter(&t->s), 'A');
    startup_refusal(t, refusal, sizeof refusal);
    if (h_count_log(&t->s, refusal) == 0)
        fprintf(stderr, "reload did not say, as at startup: %s\n", refusal);
    assert_true(h_count_log(&t->s, refusal) > 0);
    assert_true(h_count_log(&t->s, "  fix: ") > 0);
    assert_int_equal(stat_num(&t->s, "reload_failures"), 1);
    assert_int_equal(stat_kind(&t->s, "last_reload_error"), 's');

    /* An ABI refusal: a plugin built for ABI 2.0. */
    char major2[PATH_MAX];
    assert_non_null(realpath(h_build_path("tests/fixtures/major2.so"), major2));
    put_plugin(t, major2, W_CP);
    expect_log_count(&t->s, "reload failed: keeping generation 1", 2);
    assert_int_equal(served_letter(&t->s), 'A');
    startup_refusal(t, refusal, sizeof refusal);
    h_assert_contains(refusal, "ABI 2.0");
    if (h_count_log(&t->s, refusal) == 0)
        fprintf(stderr, "reload did not say, as at startup: %s\n", refusal);
    assert_true(h_count_log(&t->s, refusal) > 0);
    assert_int_equal(stat_num(&t->s, "reload_failures"), 2);
    assert_int_equal(stat_kind(&t->s, "last_reload_error"), 's');
    assert_int_equal(stat_num(&t->s, "reloads"), 0);
    assert_int_equal(stat_num(&t->s, "generation"), 1);

    /* The next good build loads. */
    put_plugin(t, t->build_b, W_INSTALL);
    expect_letter(&t->s, 'B');
    assert_int_equal(stat_num(&t->s, "reloads"), 1);
    assert_int_equal(stat_num(&t->s, "reload_failures"), 2);
    expect_log(&t->s, "stop A");
    rl_stop(t);
    t->passed = 1;
}

/* ---- 6. SIGHUP ---------------------------------------------------------------- */

static void reload_sighup_without_watching(void **state)
{
    rl *t = *state;
    put_plugin(t, t->build_a, W_INPLACE);
    rl_start(t, NULL);
    expect_letter(&t->s, 'A');

    put_plugin(t, t->build_b, W_RENAME);
    assert_int_equal(served_letter(&t->s), 'A'); /* nothing watches the file */
    assert_int_equal(kill(t->s.pid, SIGHUP), 0);
    expect_log(&t->s, "bgserve: SIGHUP: reloading");
    expect_letter(&t->s, 'B');
    assert_int_equal(stat_num(&t->s, "reloads"), 1);

    /* Again, back to A: SIGHUP is not one-shot. */
    put_plugin(t, t->build_a, W_CP);
    assert_int_equal(kill(t->s.pid, SIGHUP), 0);
    expect_letter(&t->s, 'A');
    assert_int_equal(stat_num(&t->s, "reloads"), 2);
    rl_stop(t);
    t->passed = 1;
}

/* ---- 7. --watch and --build ----------------------------------------------------- */

/* Write the generated plugin source: the fixture body with letter c, or
 * (c == 0) a syntax error. */
static void write_source(const char *src, const char *common, char c)
{
    char text[PATH_MAX + 128];
    if (c)
        snprintf(text, sizeof text, "#define LETTER '%c'\n#include \"%s\"\n", c, common);
    else
        snprintf(text, sizeof text, "#define LETTER 'X'\n#include \"%s\"\nthis is not C(\n", common);
    write_inplace(src, text, strlen(text));
}

/* Paths of a --watch/--build test: ROOT/src/app.c built into the served
 * plugin. */
typedef struct watched {
    char srcdir[PATH_MAX + 8], src[PATH_MAX + 16], common[PATH_MAX];
} watched;

/* Serve letter A built from w->src, with --watch w->srcdir and a --build
 * command that compiles it over the plugin. */
static void start_watch_build(rl *t, watched *w)
{
    char inc[PATH_MAX], cmd[4 * PATH_MAX + 256];

    assert_non_null(realpath("tests/fixtures/reload_common.h", w->common));
    assert_non_null(realpath("include", inc));
    snprintf(w->srcdir, sizeof w->srcdir, "%s/src", t->root);
    assert_int_equal(mkdir(w->srcdir, 0755), 0);
    snprintf(w->src, sizeof w->src, "%s/app.c", w->srcdir);
    write_source(w->src, w->common, 'A');
    snprintf(cmd, sizeof cmd,
             "cc -std=c11 -I%s -fPIC -fvisibility=hidden -shared -Wl,-z,defs -o %s %s",
             inc, t->plugin, w->src);

    put_plugin(t, t->build_a, W_INPLACE);
    const char *args[] = {"--watch", w->srcdir, "--build", cmd, NULL};
    rl_start(t, args);
    expect_letter(&t->s, 'A');
}

static void reload_watch_and_build(void **state)
{
    rl *t = *state;
    watched w;
    start_watch_build(t, &w);
    const char *src = w.src, *common = w.common;

    /* A source change: the build runs, then the new code serves. */
    write_source(src, common, 'C');
    expect_log(&t->s, "bgserve: build: running '");
    expect_log(&t->s, "bgserve: build succeeded in ");
    expect_letter(&t->s, 'C');

    /* A syntax error: the build fails and C keeps serving. */
    write_source(src, common, 0);
    expect_log(&t->s, "build failed (exit ");
    char line[512];
    h_drain_log(&t->s);
    assert_int_equal(h_line_with(t->s.log, "build failed (exit ", line, sizeof line), 0);
    h_assert_contains(line, "; keeping generation ");
    assert_int_equal(served_letter(&t->s), 'C');
    /* Counted, with the compiler's first error line. */
    assert_int_equal(stat_num(&t->s, "reload_failures"), 1);
    h_resp r;
    assert_int_equal(h_get(&t->s, "/_bgserve/stats", &r), 0);
    char why[512];
    assert_int_equal(h_json_str(r.body, "last_reload_error", why, sizeof why), 0);
    h_resp_free(&r);
    h_assert_contains(why, "build failed (exit 1): ");
    h_assert_contains(why, "app.c:");
    h_assert_contains(why, "error");

    /* The next good build loads. */
    write_source(src, common, 'B');
    expect_log_count(&t->s, "bgserve: build succeeded in ", 2);
    expect_letter(&t->s, 'B');
    assert_int_equal(stat_kind(&t->s, "last_reload_error"), 'n');
    rl_stop(t);
    t->passed = 1;
}

/* A --watch directory deleted and made again (a branch switch, rm -rf and
 * a fresh copy): it is watched again, the build runs for what changed
 * while nothing watched, and the next edit builds again. */
static void reload_watch_dir_recreated(void **state)
{
    rl *t = *state;
    watched w;
    start_watch_build(t, &w);
    const char *srcdir = w.srcdir, *src = w.src, *common = w.common;

    assert_int_equal(unlink(src), 0);
    assert_int_equal(rmdir(srcdir), 0);
    expect_log(&t->s, "went away; watching for it to come back");
    assert_int_equal(served_letter(&t->s), 'A'); /* the old code keeps serving */

    assert_int_equal(mkdir(srcdir, 0755), 0);
    write_source(src, common, 'C');
    expect_log(&t->s, "--watch: watching ");
    expect_letter(&t->s, 'C');

    /* Watched again: an edit builds. */
    h_drain_log(&t->s);
    write_source(src, common, 'B');
    expect_letter(&t->s, 'B');
    rl_stop(t);
    t->passed = 1;
}

/* ---- 8. retired generations are unloaded and their copies deleted ------------- */

struct copies_wait {
    rl *t;
    int entries;          /* files in the copies directory */
    int mapped;           /* distinct copies mapped in the server */
    char entry[256];      /* the first file's name */
};

/* Distinct paths under dir mapped into pid (from /proc/PID/maps). */
static int mapped_copies(pid_t pid, const char *dir)
{
    char path[64], line[PATH_MAX + 256], seen[8][PATH_MAX + 32];
    int n = 0;
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, dir);
        if (p == NULL)
            continue;
        p[strcspn(p, "\n")] = '\0';
        int dup = 0;
        for (int i = 0; i < n; i++)
            dup |= strcmp(seen[i], p) == 0;
        if (!dup && n < 8)
            snprintf(seen[n++], sizeof seen[0], "%s", p);
    }
    fclose(f);
    return n;
}

static int one_copy_left(void *arg)
{
    struct copies_wait *w = arg;
    w->entries = count_entries(w->t->copies, w->entry, sizeof w->entry);
    /* the serving process (the supervisor forks it) maps the copies */
    w->mapped = mapped_copies((pid_t)h_stat(&w->t->s, NULL, "pid"), w->t->copies);
    return w->entries == 1 && w->mapped == 1;
}

static void reload_retired_generations_unloaded(void **state)
{
    rl *t = *state;
    char stale[PATH_MAX + 64], stale_old[PATH_MAX + 64], owned[PATH_MAX + 64], prefix[64];

    /* Copies left by a run that was killed: its serving process and its
     * supervisor are gone (and one named as an older bgserve named them,
     * PID.N.NAME).  A third whose serving process is gone but whose owner
     * (this test, standing in for another bgserve's supervisor writing
     * its crash report from it) lives is not stale. */
    pid_t dead = fork();
    assert_true(dead >= 0);
    if (dead == 0)
        _exit(0);
    assert_int_equal(waitpid(dead, NULL, 0), dead);
    assert_true(mkdir(t->copies, 0700) == 0 || errno == EEXIST);
    snprintf(stale, sizeof stale, "%s/%d-%d.0.app.so", t->copies, (int)dead, (int)dead);
    snprintf(stale_old, sizeof stale_old, "%s/%d.0.app.so", t->copies, (int)dead);
    snprintf(owned, sizeof owned, "%s/%d-%d.1.app.so", t->copies, (int)dead, (int)getpid());
    put_text(stale, "stale\n");
    put_text(stale_old, "stale\n");
    put_text(owned, "owned\n");

    put_plugin(t, t->build_a, W_INPLACE);
    const char *args[] = {"--reload", NULL};
    rl_start(t, args);
    expect_letter(&t->s, 'A');
    assert_int_equal(access(stale, F_OK), -1); /* cleaned at startup */
    assert_int_equal(access(stale_old, F_OK), -1);
    assert_int_equal(access(owned, F_OK), 0); /* its owner lives */
    assert_int_equal(unlink(owned), 0);

    put_plugin(t, t->build_b, W_RENAME);
    expect_letter(&t->s, 'B');
    put_plugin(t, t->build_a, W_CP);
    expect_letter(&t->s, 'A');
    put_plugin(t, t->build_b, W_INSTALL);
    expect_letter(&t->s, 'B');

    expect_log(&t->s, "bgserve: generation 1 retired");
    expect_log(&t->s, "bgserve: generation 2 retired");
    expect_log(&t->s, "bgserve: generation 3 retired");
    expect_log(&t->s, "stop A");
    expect_log(&t->s, "stop B");

    /* Only the serving generation's copy is left, on disk and mapped. */
    struct copies_wait w = {t, 0, 0, ""};
    if (!h_poll_server(&t->s, one_copy_left, &w, LOG_DEADLINE_MS))
        fprintf(stderr, "copies: %d in %s, %d mapped\n", w.entries, t->copies, w.mapped);
    assert_int_equal(w.entries, 1);
    assert_int_equal(w.mapped, 1);
    /* PID-OWNER.: the serving process's, owned by its supervisor */
    snprintf(prefix, sizeof prefix, "%d-%d.", (int)h_stat(&t->s, NULL, "pid"), (int)t->s.pid);
    assert_int_equal(strncmp(w.entry, prefix, strlen(prefix)), 0);
    assert_int_equal(h_count_log(&t->s, "still loaded after dlclose"), 0);

    rl_stop(t);
    assert_int_equal(count_entries(t->copies, NULL, 0), 0); /* the last one too */
    assert_int_equal(h_count_log(&t->s, "still loaded after dlclose"), 0);
    t->passed = 1;
}

/* ---- 9. hand-over ------------------------------------------------------------- */

static void reload_handover_passes_state(void **state)
{
    rl *t = *state;
    put_plugin(t, t->build_a, W_INPLACE);
    const char *args[] = {"--reload", NULL};
    rl_start(t, args);
    expect_letter(&t->s, 'A');
    assert_int_equal(h_count_log(&t->s, "handover got"), 0); /* first load */

    put_plugin(t, t->build_b, W_RENAME);
    expect_letter(&t->s, 'B');
    expect_log(&t->s, "handover got 1\n");
    put_plugin(t, t->build_a, W_RENAME);
    expect_letter(&t->s, 'A');
    expect_log(&t->s, "handover got 2\n");
    expect_log(&t->s, "stop B");
    rl_stop(t);
    t->passed = 1;
}

/* ---- 10. a file still being written is waited for, not refused ------------- */

static void reload_incomplete_file_waits(void **state)
{
    rl *t = *state;
    put_plugin(t, t->build_a, W_INPLACE);
    const char *args[] = {"--reload", NULL};
    rl_start(t, args);
    expect_letter(&t->s, 'A');

    /* Half of build B, as a linker that closed the file early would
     * leave it: its section headers lie past the end. */
    size_t len;
    char *data = read_all(t->build_b, &len);
    write_inplace(t->plugin, data, len / 2);
    expect_log(&t->s, "bgserve: reload: waiting for '");
    assert_int_equal(served_letter(&t->s), 'A');
    assert_int_equal(stat_num(&t->s, "reload_failures"), 0);
    assert_int_equal(h_count_log(&t->s, "reload failed"), 0);

    /* The rest arrives: the next write loads it. */
    write_inplace(t->plugin, data, len);
    free(data);
    expect_letter(&t->s, 'B');
    assert_int_equal(stat_num(&t->s, "reloads"), 1);
    assert_int_equal(stat_num(&t->s, "reload_failures"), 0);
    rl_stop(t);
    t->passed = 1;
}

/* ---- 11. at most --max-generations are loaded at once ------------------------ */

static void reload_waits_for_room_past_max_generations(void **state)
{
    rl *t = *state;
    char query[PATH_MAX + 64], release[PATH_MAX + 16];
    put_plugin(t, t->build_a, W_INPLACE);
    const char *args[] = {"--reload", "--max-generations", "2", NULL};
    rl_start(t, args);
    expect_letter(&t->s, 'A');

    /* A task holds generation 1 after the swap to generation 2. */
    snprintf(release, sizeof release, "%s/release", t->root);
    snprintf(query, sizeof query, "?ms=0&until=%s", release);
    slowtask(&t->s, query);
    put_plugin(t, t->build_b, W_RENAME);
    expect_letter(&t->s, 'B');

    /* A third build must wait: two generations are loaded. */
    put_plugin(t, t->build_a, W_RENAME);
    expect_log(&t->s, "waiting for generation 1 to retire");
    assert_int_equal(served_letter(&t->s), 'B');
    assert_int_equal(h_count_log(&t->s, "generation 3 serving"), 0);

    /* Releasing the task retires generation 1, and the reload goes on. */
    put_text(release, "go\n");
    expect_letter(&t->s, 'A');
    /* The swap serves the new code before its line is logged
     * (generation.c): wait for the line too. */
    expect_log(&t->s, "generation 3 serving");
    long wait = log_find(&t->s, "waiting for generation 1 to retire", 0);
    long retired = log_find(&t->s, "generation 1 retired", 0);
    long third = log_find(&t->s, "generation 3 serving", 0);
    assert_true(wait >= 0 && retired > wait && third > retired);
    rl_stop(t);
    t->passed = 1;
}

/* ---- 12. make clean: the plugin's directory goes away and comes back ------- */

static void reload_survives_make_clean(void **state)
{
    rl *t = *state;
    char out[PATH_MAX];
    put_plugin(t, t->build_a, W_INPLACE);
    const char *args[] = {"--reload", NULL};
    rl_start(t, args);
    expect_letter(&t->s, 'A');

    snprintf(out, sizeof out, "%s/out", t->root);
    h_rm_rf(out);
    expect_log(&t->s, "went away; watching for it to come back");
    assert_int_equal(served_letter(&t->s), 'A'); /* still serving */

    assert_int_equal(mkdir(out, 0755), 0);
    put_plugin(t, t->build_b, W_CP);
    expect_letter(&t->s, 'B');
    expect_log(&t->s, "again");
    assert_int_equal(stat_num(&t->s, "reload_failures"), 0);
    assert_int_equal(stat_num(&t->s, "reloads"), 1);
    rl_stop(t);
    t->passed = 1;
}

/* A periodic task keeps its phase across reloads: reloading (here with
 * SIGHUP) much more often than its 1000 ms interval does not restart its
 * timer, so it still runs. */
static void reload_periodic_keeps_its_phase(void **state)
{
    (void)state;
    h_server s;
    if (h_start_app(&s, h_build_path("plugins/periodic.so"), NULL, NULL) != 0)
        fail();
    char gen_line[64];
    int ran = 0;
    uint64_t end = h_now_ms() + 15000;
    for (int g = 2; !ran && h_now_ms() < end; g++) {
        kill(s.pid, SIGHUP);
        snprintf(gen_line, sizeof gen_line, "reload: generation %d serving", g);
        assert_true(h_wait_log(&s, gen_line, LOG_DEADLINE_MS));
        ran = h_stat(&s, "tick", "succeeded") > 0;
    }
    assert_true(ran);
    h_stop_clean(&s);
    h_free(&s);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT); /* before any thread */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(reload_alternating_builds_under_load, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_write_methods_picked_up, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_task_before_swap_runs_old_code, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_periodic_switches_without_overlap, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_failures_keep_serving, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_sighup_without_watching, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_watch_and_build, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_watch_dir_recreated, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_retired_generations_unloaded, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_handover_passes_state, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_incomplete_file_waits, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_waits_for_room_past_max_generations, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_survives_make_clean, setup, teardown),
        cmocka_unit_test(reload_periodic_keeps_its_phase),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
