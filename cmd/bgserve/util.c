/*
 * util.c - allocation wrappers that abort on exhaustion, clocks, strings.
 * Stateless; safe from any thread.
 */
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void oom(size_t n)
{
    fprintf(stderr, "bgserve: out of memory allocating %zu bytes\n", n);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}

/* Blocks up to this size come from malloc and memset: glibc's calloc
 * (2.36, Debian 12) skips the per-thread cache that malloc serves small
 * blocks from and takes an arena lock instead, about 200 instructions
 * against 60 for a cached malloc and a short memset (bench/README.md,
 * section 20: an exchange per request, a task item, a hash bucket...).
 * Larger blocks keep calloc, which can hand out fresh pages without
 * clearing them.  1032 bytes is the largest block glibc caches. */
#define XCALLOC_CACHED_MAX 1024u

void *xcalloc(size_t count, size_t n)
{
    size_t total;
    count = count ? count : 1;
    n = n ? n : 1;
    if (!__builtin_mul_overflow(count, n, &total) && total <= XCALLOC_CACHED_MAX)
        return memset(xmalloc(total), 0, total);
    void *p = calloc(count, n);
    if (p == NULL)
        oom(count * n);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}

char *xstrdup(const char *s)
{
    return xmemdup(s, strlen(s) + 1);
}

char *xstrndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = xmalloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

void *xmemdup(const void *p, size_t n)
{
    void *q = xmalloc(n);
    if (n)
        memcpy(q, p, n);
    return q;
}

void util_buf_reserve(char **buf, size_t *cap, size_t len, size_t extra, size_t first_cap)
{
    if (extra > SIZE_MAX / 2 - len) {
        fprintf(stderr, "bgserve: buffer of %zu + %zu bytes too large\n", len, extra);
        abort();
    }
    size_t need = len + extra + 1;
    if (need <= *cap)
        return;
    size_t c = *cap ? *cap : first_cap ? first_cap : 64;
    while (c < need)
        c *= 2;
    *buf = xrealloc(*buf, c);
    *cap = c;
}

void util_buf_append(char **buf, size_t *cap, size_t *len, const void *data, size_t n,
                     size_t first_cap)
{
    util_buf_reserve(buf, cap, *len, n, first_cap);
    if (n)
        memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
}

static uint64_t clock_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t util_now_us(void)
{
    return clock_us(CLOCK_MONOTONIC);
}

void util_cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

struct timespec util_mono_timespec(uint64_t us)
{
    struct timespec ts = {
        .tv_sec = (time_t)(us / 1000000u),
        .tv_nsec = (long)(us % 1000000u) * 1000,
    };
    return ts;
}

uint64_t util_wall_us(void)
{
    return clock_us(CLOCK_REALTIME);
}

size_t util_id_hash(uint64_t id)
{
    return (size_t)((id * UINT64_C(0x9E3779B97F4A7C15)) >> 32);
}

size_t util_u64_dec(char *buf, uint64_t v)
{
    /* Two digits per division: every task id of a Bgserve-Tasks header
     * and every number of the JSON writer pass here. */
    static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930"
                                "31323334353637383940414243444546474849505152535455565758596061"
                                "6263646566676869707172737475767778798081828384858687888990919293"
                                "949596979899";
    static const uint64_t pow10[] = {
        1u, 10u, 100u, 1000u, 10000u, 100000u, 1000000u, 10000000u, 100000000u,
        1000000000u, 10000000000u, 100000000000u, 1000000000000u, 10000000000000u,
        100000000000000u, 1000000000000000u, 10000000000000000u, 100000000000000000u,
        1000000000000000000u, 10000000000000000000u,
    };
    /* Its digits: t = floor(bits * log10(2)) is the number of digits
     * or one short of it (1233 / 4096 ~ log10(2)); no loop. */
    unsigned t = ((64u - (unsigned)__builtin_clzll(v | 1u)) * 1233u) >> 12;
    size_t n = t + (v >= pow10[t]);
    if (n == 0)
        n = 1; /* v = 0 */
    char *p = buf + n;
    *p = '\0';
    while (v >= 100u) {
        unsigned r = (unsigned)(v % 100u);
        v /= 100u;
        p -= 2;
        p[0] = pairs[2 * r];
        p[1] = pairs[2 * r + 1];
    }
    if (v >= 10u) {
        p -= 2;
        p[0] = pairs[2 * v];
        p[1] = pairs[2 * v + 1];
    } else {
        *--p = (char)('0' + v);
    }
    return n;
}

void util_iso_time(char *buf, size_t cap, uint64_t wall_us, unsigned frac_digits)
{
    time_t secs = (time_t)(wall_us / 1000000u);
    unsigned frac = (unsigned)(wall_us % 1000000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    if (frac_digits == 3)
        snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac / 1000u);
    else
        snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%06uZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

int util_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int util_strcaseeq(const char *a, const char *b)
{
    for (;; a++, b++) {
        unsigned char x = (unsigned char)*a, y = (unsigned char)*b;
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y + 32);
        if (x != y)
            return 0;
        if (x == '\0')
            return 1;
    }
}

void util_copy_str(char *buf, size_t cap, const char *s)
{
    size_t n = strnlen(s, cap - 1);
    memcpy(buf, s, n);
    buf[n] = '\0';
}
