/*
 * helpers.c - helpers several tests share (see helpers.h).
 *
 * Everything runs on the calling test's main thread; the only shared
 * state is the stderr capture (saved_fd, cap_file), used by one test at
 * a time.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <ctype.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- running one test ---------------------------------------------------- */

/* BGSERVE_TEST_FILTER=PATTERN ('*' and '?' wildcards) runs only the
 * matching tests of a program: tests/run.sh prints it for a failing test,
 * and running each test alone shows that none depends on another. */
__attribute__((constructor)) static void filter_from_env(void)
{
    const char *f = getenv("BGSERVE_TEST_FILTER");
    if (f != NULL && *f != '\0')
        cmocka_set_test_filter(f);
}

/* ---- flat JSON text ---------------------------------------------------- */

int h_json_str(const char *json, const char *key, char *buf, size_t cap)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const char *p = strstr(json, pat);
    if (p == NULL)
        return -1;
    p += strlen(pat);
    const char *q = strchr(p, '"');
    if (q == NULL || (size_t)(q - p) >= cap)
        return -1;
    memcpy(buf, p, (size_t)(q - p));
    buf[q - p] = '\0';
    return 0;
}

long long h_json_num(const char *json, const char *key)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(json, pat);
    if (p == NULL)
        return -1;
    p += strlen(pat);
    if (!isdigit((unsigned char)*p))
        return -1;
    return (long long)strtoull(p, NULL, 10);
}

long long h_json_obj_num(const char *json, const char *obj, const char *key)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":{", obj);
    const char *o = strstr(json, pat);
    if (o == NULL)
        return -1;
    const char *end = strchr(o, '}');
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(o, pat);
    if (p == NULL || end == NULL || p > end)
        return -1;
    return h_json_num(p, key);
}

/* ---- the server's introspection ---------------------------------------- */

/* The counter, or -1; *body_out (when not NULL) keeps the stats body. */
static long long stat_get(h_server *s, const char *obj, const char *key, char **body_out)
{
    h_resp r;
    long long v = -1;
    h_drain_log(s);
    int rc = h_get(s, "/_bgserve/stats", &r);
    if (rc == 0 && r.status == 200)
        v = obj ? h_json_obj_num(r.body, obj, key) : h_json_num(r.body, key);
    else
        fprintf(stderr, "GET /_bgserve/stats: error %d, status %ld\n", rc, r.status);
    if (body_out) {
        *body_out = r.body;
        r.body = NULL;
    }
    h_resp_free(&r);
    return v;
}

long long h_stat(h_server *s, const char *obj, const char *key)
{
    char *body = NULL;
    long long v = stat_get(s, obj, key, &body);
    if (v < 0 && body && *body)
        fprintf(stderr, "stats without %s%s%s: %s\n", obj ? obj : "", obj ? "." : "", key, body);
    free(body);
    return v;
}

typedef struct stat_wait {
    h_server *s;
    const char *obj, *key;
    long long want, last;
} stat_wait;

static int stat_reaches(void *arg)
{
    stat_wait *w = arg;
    w->last = stat_get(w->s, w->obj, w->key, NULL);
    return w->last == w->want;
}

int h_wait_stat(h_server *s, const char *obj, const char *key, long long want,
                unsigned deadline_ms)
{
    stat_wait w = {.s = s, .obj = obj, .key = key, .want = want, .last = -1};
    int ok = h_poll_server(s, stat_reaches, &w, deadline_ms);
    if (!ok)
        fprintf(stderr, "stats %s.%s: wanted %lld, last seen %lld\n", obj ? obj : "", key, want,
                w.last);
    return ok;
}

typedef struct record_wait {
    h_server *s;
    const char *path;
    const char *state;  /* wanted "state", or NULL */
    const char *needle; /* wanted substring, or NULL */
    long status;        /* last answer */
    char last[64];      /* last state seen */
    char *body;         /* last body (owned) */
} record_wait;

static int record_matches(void *arg)
{
    record_wait *w = arg;
    h_resp r;
    h_drain_log(w->s); /* keep s->log current for the caller's log checks */
    free(w->body);
    w->body = NULL;
    w->last[0] = '\0';
    if (h_get(w->s, w->path, &r) != 0) {
        h_resp_free(&r);
        w->status = -1;
        return 0;
    }
    w->status = r.status;
    w->body = r.body;
    r.body = NULL;
    h_resp_free(&r);
    if (w->status != 200)
        return 0;
    if (h_json_str(w->body, "state", w->last, sizeof w->last) != 0)
        w->last[0] = '\0';
    if (w->state)
        return strcmp(w->last, w->state) == 0;
    return strstr(w->body, w->needle) != NULL;
}

static char *wait_record(record_wait *w, unsigned deadline_ms)
{
    if (h_poll_server(w->s, record_matches, w, deadline_ms))
        return w->body;
    h_drain_log(w->s);
    size_t len = w->s->log_len, from = len > 3000 ? len - 3000 : 0;
    fprintf(stderr, "%s: wanted %s%s, last seen status %ld state %s body %s\n"
            "server log ends:\n%s\n",
            w->path, w->state ? "state " : "", w->state ? w->state : w->needle, w->status,
            w->last, w->body ? w->body : "", w->s->log ? w->s->log + from : "");
    free(w->body);
    return NULL;
}

char *h_wait_state(h_server *s, const char *path, const char *state, unsigned deadline_ms)
{
    record_wait w = {.s = s, .path = path, .state = state};
    return wait_record(&w, deadline_ms);
}

char *h_wait_task(h_server *s, uint64_t id, const char *state, unsigned deadline_ms)
{
    char path[64];
    snprintf(path, sizeof path, "/_bgserve/tasks/%" PRIu64, id);
    char *rec = h_wait_state(s, path, state, deadline_ms);
    assert_non_null(rec);
    return rec;
}

char *h_wait_body(h_server *s, const char *path, const char *needle, unsigned deadline_ms)
{
    record_wait w = {.s = s, .path = path, .needle = needle};
    return wait_record(&w, deadline_ms);
}

long h_get_status(h_server *s, const char *path)
{
    h_resp r;
    if (h_get(s, path, &r) != 0)
        return -1;
    long st = r.status;
    h_resp_free(&r);
    return st;
}

/* ---- starting and stopping -------------------------------------------- */

int h_start_app(h_server *s, const char *plugin, const char *const *args,
                const char *const *extra_env)
{
    int rc = h_start(s, plugin, args, extra_env);
    if (rc != 0)
        fprintf(stderr, "%s did not start:\n%s\n", plugin, s->log ? s->log : "");
    return rc;
}

void h_stop_clean(h_server *s)
{
    int rc = h_stop(s, SIGTERM);
    const char *log = s->log ? s->log : "";
    if (rc != 0 || strstr(log, "Sanitizer") || strstr(log, "runtime error"))
        fprintf(stderr, "bgserve exit %d; log:\n%s\n", rc, log);
    assert_null(strstr(log, "Sanitizer"));
    assert_null(strstr(log, "runtime error"));
    assert_int_equal(rc, 0);
}

void h_raise_fd_limit(unsigned long want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---- text, files, fixtures ---------------------------------------------- */

void h_print_text(const char *text)
{
    enum { PIECE = 512 }; /* well within print_error's 1 KiB */
    size_t n = strlen(text);
    for (size_t i = 0; i < n; i += PIECE)
        print_error("%.*s", (int)(n - i < PIECE ? n - i : PIECE), text + i);
}

void h_fail_text_at(const char *file, int line, const char *text, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    print_error("ERROR: ");
    vprint_error(fmt, ap);
    va_end(ap);
    print_error("\n");
    h_print_text(text ? text : "(null)");
    print_error("\n");
    _fail(file, line);
    abort(); /* _fail does not return */
}

/* The haystack of a failed h_assert_*, whole, between two rules. */
static void print_hay(const char *hay)
{
    print_error("----\n");
    h_print_text(hay ? hay : "(null)");
    print_error("\n----\n");
}

void h_assert_contains_at(const char *hay, const char *needle, const char *file, int line)
{
    if (hay != NULL && strstr(hay, needle) != NULL)
        return;
    print_error("text does not contain \"%s\"; the text (%zu bytes) is:\n", needle,
                hay ? strlen(hay) : 0);
    print_hay(hay);
    _fail(file, line);
}

void h_assert_lacks_at(const char *hay, const char *needle, const char *file, int line)
{
    const char *at = hay ? strstr(hay, needle) : NULL;
    if (hay != NULL && at == NULL)
        return;
    print_error("text contains \"%s\" (at byte %zu) but should not; the text is:\n", needle,
                at ? (size_t)(at - hay) : 0);
    print_hay(hay);
    _fail(file, line);
}

int h_line_with(const char *text, const char *needle, char *buf, size_t cap)
{
    const char *p = strstr(text, needle);
    buf[0] = '\0';
    if (p == NULL)
        return -1;
    while (p > text && p[-1] != '\n')
        p--;
    size_t n = strcspn(p, "\n");
    if (n >= cap)
        n = cap - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return 0;
}

char *h_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0, got;
    do {
        if (n + 1 >= cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            if (buf == NULL)
                abort();
        }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
    } while (got > 0);
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

void h_replace_file(const char *src, const char *dst)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    size_t len;
    char *data = h_slurp(src, &len);
    assert_non_null(data);
    FILE *f = fopen(tmp, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    free(data);
    assert_int_equal(chmod(tmp, 0755), 0);
    assert_int_equal(rename(tmp, dst), 0);
}

void h_rm_rf(const char *dir)
{
    const char *argv[] = {"/bin/rm", "-rf", dir, NULL};
    char *out = NULL;
    h_run(argv, &out);
    free(out);
}

const char *h_fixture(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "tests/fixtures/%s.so", name);
    const char *path = h_build_path(rel);
    if (access(path, R_OK) != 0)
        fail_msg("fixture %s is missing: run make %s first", path, path);
    return path;
}

/* ---- stderr capture ------------------------------------------------------ */

static int saved_fd = -1; /* the real stderr while capturing */
static FILE *cap_file;    /* where fd 2 goes while capturing */

void h_capture_begin(void)
{
    fflush(stderr);
    cap_file = tmpfile();
    assert_non_null(cap_file);
    saved_fd = dup(2);
    assert_true(saved_fd >= 0);
    assert_true(dup2(fileno(cap_file), 2) >= 0);
}

char *h_capture_end(void)
{
    fflush(stderr);
    dup2(saved_fd, 2);
    close(saved_fd);
    saved_fd = -1;
    long n = lseek(fileno(cap_file), 0, SEEK_END);
    assert_true(n >= 0);
    char *out = calloc(1, (size_t)n + 1);
    assert_non_null(out);
    assert_int_equal(pread(fileno(cap_file), out, (size_t)n, 0), n);
    fclose(cap_file);
    cap_file = NULL;
    return out;
}

long h_post_retry(h_server *s, unsigned long long id, int with_header, char **body)
{
    char path[96];
    const char *hdrs[] = {"X-Bgserve-Action: retry", NULL};
    snprintf(path, sizeof path, "/_bgserve/tasks/%llu/retry", id);
    h_resp r;
    assert_int_equal(h_http(s, "POST", path, "", 0, with_header ? hdrs : NULL, &r), 0);
    long st = r.status;
    if (body)
        *body = strdup(r.body);
    h_resp_free(&r);
    return st;
}
