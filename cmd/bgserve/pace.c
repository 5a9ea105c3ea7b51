/*
 * pace.c - the adaptive linger (pace.h explains the policy).
 *
 * Owns the process-wide pace state below.  The linger and the idle share
 * are atomics anyone reads; next_us (when the next measure is due) is an
 * atomic the fast path reads; everything else (the /proc/stat descriptor,
 * the CPU mask, the previous reading) belongs to the thread that holds
 * measure_mu, taken with trylock by a push that finds a measure due, so
 * no push ever waits for another's measure.
 */
#include "pace.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_uint cur_linger = PACE_FALLBACK_US; /* until the first window is measured */
static atomic_int idle_pm = -1;
static atomic_int own_pm = -1;
static atomic_uint_fast64_t next_us;

static pthread_mutex_t measure_mu = PTHREAD_MUTEX_INITIALIZER;
/* measure_mu: */
static int stat_fd = -2;          /* -2: not opened yet; -1: unreadable */
static cpu_set_t mask;
static int have_mask;
static pace_reading prev;
static int have_prev;
static char buf[65536];
static pace_source_fn source;     /* NULL: /proc/stat */
static void *source_arg;
static atomic_uint window_us = PACE_WINDOW_US;

unsigned pace_step(unsigned linger_us, unsigned idle_permille, unsigned own_permille)
{
    unsigned next = linger_us > PACE_MAX_US ? PACE_MAX_US : linger_us;
    if (idle_permille >= PACE_SPARE_PERMILLE || own_permille < PACE_LIGHT_PERMILLE)
        next = next / 2 < PACE_STEP_MIN_US ? 0 : next / 2;
    else if (idle_permille < PACE_BUSY_PERMILLE && own_permille >= PACE_HEAVY_PERMILLE)
        next = next < PACE_STEP_MIN_US ? PACE_STEP_MIN_US
               : next > PACE_MAX_US / 2 ? PACE_MAX_US : 2 * next;
    return next;
}

int pace_parse_stat(const char *text, int (*allowed)(int cpu, void *arg), void *arg,
                    uint64_t *idle, uint64_t *total)
{
    int found = 0;
    *idle = *total = 0;
    for (const char *p = text; strncmp(p, "cpu", 3) == 0;) {
        const char *eol = strchr(p, '\n');
        if (eol == NULL)
            break; /* a line cut short by the buffer: not counted */
        if (p[3] >= '0' && p[3] <= '9') {
            char *q;
            int cpu = (int)strtol(p + 3, &q, 10);
            /* user nice system idle iowait irq softirq steal (guest is
             * counted in user already) */
            uint64_t v[8] = {0};
            for (int i = 0; i < 8 && q < eol; i++)
                v[i] = strtoull(q, &q, 10);
            if (allowed == NULL || allowed(cpu, arg)) {
                *idle += v[3] + v[4];
                for (int i = 0; i < 8; i++)
                    *total += v[i];
                found = 1;
            }
        }
        p = eol + 1;
    }
    return found ? 0 : -1;
}

static int in_mask(int cpu, void *arg)
{
    (void)arg;
    return cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &mask);
}

/* A reading of the CPUs we may run on, from /proc/stat, and of this
 * process's CPU time: 0, or -1 when /proc/stat cannot be read;
 * measure_mu held. */
static int read_cpus(pace_reading *r)
{
    if (stat_fd == -2) {
        stat_fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
        have_mask = sched_getaffinity(0, sizeof(mask), &mask) == 0;
    }
    if (stat_fd < 0)
        return -1;
    ssize_t n = pread(stat_fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0) {
        close(stat_fd);
        stat_fd = -1;
        return -1;
    }
    buf[n] = '\0';
    if (pace_parse_stat(buf, have_mask ? in_mask : NULL, NULL, &r->idle, &r->total) != 0)
        return -1;
    struct timespec ts;
    long hz = sysconf(_SC_CLK_TCK);
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0 || hz <= 0)
        return -1;
    r->own = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) / (1000000000u / (uint64_t)hz);
    return 0;
}

/* Per mille of the window's total ticks, at most 1000. */
static unsigned permille(uint64_t part, uint64_t total)
{
    return part >= total ? 1000u : (unsigned)(part * 1000 / total);
}

/* Read the CPUs and step the linger; measure_mu held. */
static void measure_locked(void)
{
    pace_reading r;
    if ((source ? source(source_arg, &r) : read_cpus(&r)) != 0)
        return;
    if (have_prev && r.total > prev.total) {
        uint64_t total = r.total - prev.total;
        /* iowait may go back a little between readings (proc(5)) */
        unsigned idle = r.idle > prev.idle ? permille(r.idle - prev.idle, total) : 0;
        unsigned own = r.own > prev.own ? permille(r.own - prev.own, total) : 0;
        atomic_store_explicit(&idle_pm, (int)idle, memory_order_relaxed);
        atomic_store_explicit(&own_pm, (int)own, memory_order_relaxed);
        atomic_store_explicit(&cur_linger, pace_step(atomic_load(&cur_linger), idle, own),
                              memory_order_relaxed);
    }
    prev = r;
    have_prev = 1;
}

unsigned pace_linger(uint64_t now_us)
{
    if (now_us >= atomic_load_explicit(&next_us, memory_order_relaxed) &&
        pthread_mutex_trylock(&measure_mu) == 0) {
        if (now_us >= atomic_load_explicit(&next_us, memory_order_relaxed)) {
            /* A window that was idle for long measured over all of it:
             * the first push after a pause finds the CPUs idle. */
            measure_locked();
            atomic_store_explicit(&next_us, now_us + atomic_load(&window_us), memory_order_relaxed);
        }
        pthread_mutex_unlock(&measure_mu);
    }
    return atomic_load_explicit(&cur_linger, memory_order_relaxed);
}

unsigned pace_current(void)
{
    return atomic_load_explicit(&cur_linger, memory_order_relaxed);
}

int pace_idle_permille(void)
{
    return atomic_load_explicit(&idle_pm, memory_order_relaxed);
}

int pace_own_permille(void)
{
    return atomic_load_explicit(&own_pm, memory_order_relaxed);
}

void pace_test_source(pace_source_fn fn, void *arg, unsigned window)
{
    pthread_mutex_lock(&measure_mu);
    source = fn;
    source_arg = arg;
    have_prev = 0;
    atomic_store(&window_us, fn ? window : PACE_WINDOW_US);
    atomic_store(&next_us, 0);
    atomic_store(&cur_linger, PACE_FALLBACK_US);
    atomic_store(&idle_pm, -1);
    atomic_store(&own_pm, -1);
    pthread_mutex_unlock(&measure_mu);
}
