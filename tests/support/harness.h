/*
 * harness.h - integration-test helpers: run the real build/bgserve, read
 * its listening line, talk HTTP with libcurl, and poll with deadlines.
 *
 * Paths come from BGSERVE_BUILD (set by make; default "build"), so the
 * same tests run against sanitizer builds.
 */
#ifndef BGSERVE_HARNESS_H
#define BGSERVE_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* "build/..." joined with rel, in a static buffer per call slot (8 slots,
 * round robin): e.g. h_build_path("plugins/hello.so"). */
const char *h_build_path(const char *rel);

/* The SANITIZE value the build in BGSERVE_BUILD was made with:
 * "address,undefined" for build/san-address-undefined, "" for a plain
 * build.  Whatever links that build's libraries needs the same flags. */
const char *h_build_sanitize(void);

/* A running server. */
typedef struct h_server {
    pid_t pid;
    int port;
    char base[64];        /* "http://127.0.0.1:PORT" */
    int err_fd;           /* read end of its stderr (non-blocking) */
    char *log;            /* everything read from stderr so far */
    size_t log_len;
} h_server;

/*
 * Start build/bgserve with `--port 0`, the given extra arguments
 * (NULL-terminated) and the plugin path last; wait (deadline 10 s) for
 * the "bgserve: listening on http://HOST:PORT" line.  Returns 0, or -1
 * if the server exited or never listened (its log is in s->log).
 * extra_env: NULL or NULL-terminated "NAME=value" strings added to the
 * environment of the child.
 */
int h_start(h_server *s, const char *plugin, const char *const *args,
            const char *const *extra_env);

/* h_start with another server binary (e.g. an installed bgserve) in
 * place of build/bgserve. */
int h_start_bin(h_server *s, const char *bin, const char *plugin,
                const char *const *args, const char *const *extra_env);

/* Start any program (argv[0] a path; argv NULL-terminated) the same way,
 * and wait (deadline_ms) for its log to contain ready.  0, or -1 when
 * it exited or never said it (its log is in s->log).  s->port is 0. */
int h_spawn(h_server *s, const char *const *argv, const char *const *extra_env,
            const char *ready, unsigned deadline_ms);

/* Read what the server wrote to stderr so far into s->log. */
void h_drain_log(h_server *s);

/* Poll s->log (draining stderr) until it contains needle; deadline in
 * ms.  Returns 1 when found; else 0, at the deadline or at once when the
 * process exited without writing it (h_poll_server), after printing the
 * end of its log to stderr. */
int h_wait_log(h_server *s, const char *needle, unsigned deadline_ms);

/* Count occurrences of needle in s->log (after draining). */
int h_count_log(h_server *s, const char *needle);

/* Send sig (0: none, it was sent already) and wait for exit, reading its
 * output meanwhile (deadline 15 s, then SIGKILL).  Returns the
 * exit status as from waitpid's WEXITSTATUS, or 128+signal; frees
 * nothing (call h_free). */
int h_stop(h_server *s, int sig);
void h_free(h_server *s);

/* Run a program to completion, capturing stdout+stderr.  Returns the
 * exit status (128+signal if killed); *out is malloc'd, NUL-terminated. */
int h_run(const char *const *argv, char **out);

/* One HTTP exchange with libcurl. */
typedef struct h_resp {
    long status;
    char *body;           /* NUL-terminated */
    size_t body_len;
    char *headers;        /* raw response headers */
} h_resp;

/*
 * method: "GET", "POST", ...; url: full URL or a path joined to s->base;
 * body may be NULL; headers: NULL or NULL-terminated "Name: value".
 * Returns 0, or the CURLcode on a transport error.
 */
int h_http(h_server *s, const char *method, const char *url,
           const char *body, size_t body_len, const char *const *headers,
           h_resp *r);
int h_get(h_server *s, const char *path, h_resp *r);
/* Value of response header name (case-insensitive), copied into a
 * static per-call buffer slot, or NULL. */
const char *h_header(const h_resp *r, const char *name);
void h_resp_free(h_resp *r);

/* Poll cond(arg) every few ms until it returns non-zero or deadline_ms
 * passes.  Returns the last value of cond. */
int h_poll(int (*cond)(void *arg), void *arg, unsigned deadline_ms);

/* h_poll for a condition that only s's process can make true: when the
 * process has exited (or s has none), cond is asked once more and, still
 * 0, the wait ends at once instead of at the deadline, with the end of
 * s's log printed to stderr.  The process is not reaped: h_stop returns
 * its status as before. */
int h_poll_server(h_server *s, int (*cond)(void *arg), void *arg, unsigned deadline_ms);

/* Has s's process ended (1) or is it running (0)?  When it has, how (may
 * be NULL) says so: "exited with status 3", "was killed by signal 9
 * (Killed)", "is not running".  Does not reap it. */
int h_server_ended(const h_server *s, char *how, size_t cap);

/* Monotonic milliseconds. */
uint64_t h_now_ms(void);

/* Monotonic nanoseconds: for ordering events across threads, where two
 * readings in the same millisecond must still compare. */
uint64_t h_now_ns(void);

#endif
