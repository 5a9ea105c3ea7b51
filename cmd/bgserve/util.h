/*
 * util.h - small helpers every room uses: allocation, time, strings.
 *
 * Out-of-memory rule: allocation goes through xmalloc/xcalloc/xrealloc/
 * xstrdup, which print a message and abort when the system is out of
 * memory.  No caller checks their result.  (A development server that
 * cannot allocate a few bytes cannot do anything useful either.)
 *
 * Errors, in every room of cmd/bgserve/ (one convention; keep to it):
 *   - A function that can fail returns int: 0 on success, a negative value
 *     on failure; never a positive failure, never 1 for success.  One that
 *     returns a pointer returns NULL on failure.
 *   - The value is -1 when callers need not tell failures apart, else a
 *     named code ROOM_E*.  Codes that are printed come from one X-macro
 *     table that also yields ROOM_strerror (BGS_ERRNO_MAP in bgserve.h,
 *     JOURNAL_ERRNO_MAP, BROKER_ERRNO_MAP); codes that come with a message
 *     (IMAGE_E*) need no table.
 *   - A failure the user must act on is described by the callee in the
 *     caller's buffer (char *err, size_t errlen, last): one line saying what
 *     went wrong and what to do.  The callee does not log it; the one caller
 *     that decides (main, a subcommand, the loader, reload) prints it once.
 *     Code with nobody to return to (a worker, a timer, a background
 *     thread) logs with log_msg, saying what happens next.
 *   - 1/0 answers (predicates, "handled it": dashboard_handle,
 *     crashpage_wants_html) and reasons (HANDLE_*, tasks_state) are values,
 *     not errors; where such a function can also fail, failure is negative.
 */
#ifndef BGSERVE_UTIL_H
#define BGSERVE_UTIL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
void *xmemdup(const void *p, size_t n);

/* The one growable byte buffer (JSON documents, response bodies, request
 * bodies): *buf holds len bytes and a NUL in *cap bytes.  Reserve makes
 * room for extra more bytes and the NUL, doubling from first_cap; append
 * copies n bytes after the len used, advances *len and writes the NUL.
 * Sizes past SIZE_MAX / 2 abort with a message (the out-of-memory rule). */
void util_buf_reserve(char **buf, size_t *cap, size_t len, size_t extra, size_t first_cap);
void util_buf_append(char **buf, size_t *cap, size_t *len, const void *data, size_t n,
                     size_t first_cap);

/* Monotonic clock in microseconds (CLOCK_MONOTONIC). */
uint64_t util_now_us(void);
/* Wall clock in microseconds since the epoch (CLOCK_REALTIME). */
uint64_t util_wall_us(void);
/* A util_now_us() time as a struct timespec: the deadline of a
 * pthread_cond_timedwait on a CLOCK_MONOTONIC condition variable. */
struct timespec util_mono_timespec(uint64_t us);
/* pthread_cond_init on the monotonic clock, so that timed waits on cv take
 * util_mono_timespec deadlines and ignore changes of the wall clock. */
void util_cond_init_mono(pthread_cond_t *cv);

/* Wall-clock time wall_us as ISO-8601 UTC ("2026-11-23T19:00:00.123Z")
 * with frac_digits (3 or 6) digits of the second. */
void util_iso_time(char *buf, size_t cap, uint64_t wall_us, unsigned frac_digits);

/* v in decimal at buf, which must hold UTIL_U64_DEC_MAX bytes; returns
 * the length (without the NUL it writes).  On the per-task paths, where
 * snprintf's format parsing showed in the profile. */
#define UTIL_U64_DEC_MAX 21
size_t util_u64_dec(char *buf, uint64_t v);

/* Copy s into buf of cap bytes (cap > 0), cut to cap - 1 characters and
 * always NUL-terminated, as snprintf(buf, cap, "%s", s) does without
 * parsing a format: on the per-request path. */
void util_copy_str(char *buf, size_t cap, const char *s);

/* A task id spread over a size_t (Fibonacci hashing): mask its low bits
 * for an open-addressing table of a power-of-two size. */
size_t util_id_hash(uint64_t id);

/* The value of hex digit c (0-15), or -1 when c is not one. */
int util_hexval(unsigned char c);

/* Case-insensitive ASCII equality: 1 when equal, 0 otherwise. */
int util_strcaseeq(const char *a, const char *b);

/* A macro's value as a string literal: UTIL_STR(16) is "16". */
#define UTIL_STR(x) UTIL_STR_(x)
#define UTIL_STR_(x) #x

#define UTIL_CONTAINER_OF(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

#endif
