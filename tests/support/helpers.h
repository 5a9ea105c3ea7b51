/*
 * helpers.h - helpers several tests share, on top of harness.h: flat JSON
 * fields, /_bgserve/stats counters and task records, starting and
 * stopping a server with its log shown when something goes wrong,
 * capturing stderr, reading files, fixtures.
 *
 * Functions named h_assert_* and those documented as failing the test
 * use cmocka's assertions; they run on the test's main thread.
 */
#ifndef BGSERVE_HELPERS_H
#define BGSERVE_HELPERS_H

#include <stddef.h>
#include <stdint.h>

#include "harness.h"

/* ---- flat JSON text ---------------------------------------------------- */

/* The string value of the first "key" in json, copied into buf; 0, or -1
 * when absent, null, not a string or longer than cap-1. */
int h_json_str(const char *json, const char *key, char *buf, size_t cap);

/* The number after the first "key": in json; -1 when absent or not a
 * non-negative number (null). */
long long h_json_num(const char *json, const char *key);

/* The number after "key": inside the first object "obj":{...} of json
 * (up to its first '}'); -1 when either is absent or not a number. */
long long h_json_obj_num(const char *json, const char *obj, const char *key);

/* ---- the server's introspection ---------------------------------------- */

/* A counter from GET /_bgserve/stats: "key" in object obj (NULL: the first
 * "key" anywhere).  Drains the log first.  -1 when the request fails or
 * the counter is absent (the stats body is printed then). */
long long h_stat(h_server *s, const char *obj, const char *key);

/* Poll h_stat until it equals want; 1, or 0 at the deadline (the last
 * value seen is printed) or once the server exited (h_poll_server). */
int h_wait_stat(h_server *s, const char *obj, const char *key, long long want,
                unsigned deadline_ms);

/* Poll GET path (e.g. "/_bgserve/tasks/7") until it answers 200 with a
 * body whose first "state" is state; returns that body (malloc'd), or
 * NULL at the deadline or once the server exited (h_poll_server), after
 * printing the last answer and the log's end. */
char *h_wait_state(h_server *s, const char *path, const char *state, unsigned deadline_ms);

/* h_wait_state on /_bgserve/tasks/ID, failing the test (cmocka) at the
 * deadline; the record (malloc'd). */
char *h_wait_task(h_server *s, uint64_t id, const char *state, unsigned deadline_ms);

/* The status of GET path, or -1 on a transport error. */
long h_get_status(h_server *s, const char *path);

/* POST /_bgserve/tasks/ID/retry, with the dashboard's action header when
 * with_header; the status, and the body (malloc'd) in *body when body is
 * not NULL. */
long h_post_retry(h_server *s, unsigned long long id, int with_header, char **body);

/* The same with a substring of the body in place of the state. */
char *h_wait_body(h_server *s, const char *path, const char *needle, unsigned deadline_ms);

/* ---- starting and stopping -------------------------------------------- */

/* h_start, printing "PLUGIN did not start:" and the server's log to
 * stderr when it fails.  Returns what h_start returns. */
int h_start_app(h_server *s, const char *plugin, const char *const *args,
                const char *const *extra_env);

/* Stop with SIGTERM and fail the test unless the server exits 0 with no
 * sanitizer report in its log (printed when it does not).  Does not free. */
void h_stop_clean(h_server *s);

/* Raise the soft limit of open files to want (capped at the hard limit);
 * children inherit it. */
void h_raise_fd_limit(unsigned long want);

/* ---- text, files, fixtures ---------------------------------------------- */

/* Fail the test unless hay contains needle / unless it does not; the
 * failure names the caller's file and line and prints the needle and the
 * whole haystack (a NULL hay fails both, printed as "(null)"). */
#define h_assert_contains(hay, needle) h_assert_contains_at((hay), (needle), __FILE__, __LINE__)
#define h_assert_lacks(hay, needle) h_assert_lacks_at((hay), (needle), __FILE__, __LINE__)
void h_assert_contains_at(const char *hay, const char *needle, const char *file, int line);
void h_assert_lacks_at(const char *hay, const char *needle, const char *file, int line);

/* Print text whole to stderr through cmocka (print_error), in pieces:
 * one print_error message holds 1 KiB at most, and a server's log is
 * often longer. */
void h_print_text(const char *text);

/* fail_msg for a message (printf format) followed by a long text (a
 * server's log, a command's output), printed whole (h_print_text).
 * Does not return. */
#define h_fail_text(text, ...) h_fail_text_at(__FILE__, __LINE__, (text), __VA_ARGS__)
void h_fail_text_at(const char *file, int line, const char *text, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), noreturn));

/* The first line of text that contains needle (without its newline),
 * copied into buf and cut at cap-1; 0, or -1 with buf "" when none. */
int h_line_with(const char *text, const char *needle, char *buf, size_t cap);

/* The whole file, NUL-terminated (malloc'd), its length in *len (may be
 * NULL); NULL when it cannot be opened. */
char *h_slurp(const char *path, size_t *len);

/* Put a copy of the file src at dst the way linkers and install tools
 * do: written to dst.tmp, then renamed over dst (mode 0755).  Fails the
 * test when src cannot be read or dst written. */
void h_replace_file(const char *src, const char *dst);

/* Remove dir and everything below it (rm -rf). */
void h_rm_rf(const char *dir);

/* h_build_path("tests/fixtures/NAME.so"); fails the test when that file
 * is missing. */
const char *h_fixture(const char *name);

/* ---- stderr capture (unit tests of rooms that log) ---------------------- */

/* Send fd 2 to a temporary file until h_capture_end, which restores it
 * and returns what was written (malloc'd, NUL-terminated).  Not nested. */
void h_capture_begin(void);
char *h_capture_end(void);

#endif
