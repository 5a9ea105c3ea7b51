/*
 * pace.c - the adaptive linger (pace.h explains the policy).
 *
 * Owns the process-wide pace state below.  The linger, the push count,
 * the last window's shares and rate and the experiment counters are
 * atomics anyone reads; next_us (when the next measure is due) is an
 * atomic the fast path reads; everything else (the controller, the
 * /proc/stat descriptor, the CPU mask, the previous reading) belongs to
 * the thread that holds measure_mu, taken with trylock by a push that
 * finds a measure due, so no push ever waits for another's measure.
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

static atomic_uint cur_linger = PACE_START_US;
static atomic_uint_fast64_t pushes;   /* since the last measure */
static atomic_int idle_pm = -1;
static atomic_int own_pm = -1;
static atomic_uint_fast64_t last_rate, n_probes, n_kept;
static atomic_uint_fast64_t next_us;

static pthread_mutex_t measure_mu = PTHREAD_MUTEX_INITIALIZER;
/* measure_mu: */
static pace_ctl ctl = {.linger = PACE_START_US};
static uint64_t prev_us;          /* when the last window began; 0: none yet */
static int stat_fd = -2;          /* -2: not opened yet; -1: unreadable */
static cpu_set_t mask;
static int have_mask;
static pace_reading prev;
static int have_prev;
static char buf[65536];
static pace_source_fn source;     /* NULL: /proc/stat */
static void *source_arg;
static atomic_uint window_us = PACE_WINDOW_US;

unsigned pace_longer(unsigned linger_us)
{
    return linger_us < PACE_STEP_MIN_US ? PACE_STEP_MIN_US
           : linger_us > PACE_MAX_US / PACE_RUNG ? PACE_MAX_US : PACE_RUNG * linger_us;
}

unsigned pace_shorter(unsigned linger_us)
{
    if (linger_us > PACE_MAX_US)
        return PACE_MAX_US;
    return linger_us / PACE_RUNG < PACE_STEP_MIN_US ? 0 : linger_us / PACE_RUNG;
}

/* The verdict of the experiment so far: keep the probe (1), refuse it
 * (-1), or try again (0).  Every trial votes, so that one window
 * disturbed by something else (another process, the client's start)
 * counts as one vote however far off it is; the experiment ends when
 * one side leads by PACE_LEAD votes, or refuses after PACE_MAX_TRIALS. */
static int verdict(const pace_ctl *c)
{
    if (c->score >= (int)PACE_LEAD)
        return 1;
    if (c->score <= -(int)PACE_LEAD || c->n >= PACE_MAX_TRIALS)
        return -1;
    return 0;
}

static void end_experiment(pace_ctl *c)
{
    c->n = 0;
    c->score = 0;
    c->experiments++;
}

unsigned pace_ctl_step(pace_ctl *c, const pace_window *w)
{
    uint64_t rate = w->us ? w->pushes * 1000000 / w->us : 0;
    if (c->linger > PACE_MAX_US)
        c->linger = PACE_MAX_US;
    if (rate < PACE_FEW_PER_S || w->idle_permille >= (int)PACE_SPARE_PERMILLE) {
        /* Light, or a woken worker finds a CPU: wake at once, soon.  An
         * experiment under way is called off (the load changed); the
         * linger kept under load is not forgotten. */
        c->light = pace_shorter(c->in_light ? c->light : c->linger);
        c->in_light = 1;
        c->n = 0;
        c->score = 0;
        c->in_probe = c->have_before = c->have_tried = 0;
        c->rest = 0;
        return c->light;
    }
    if (c->in_light) {
        /* Busy again: back to the linger kept under load; this window
         * ran at the light one, so it is no experiment's plain window. */
        c->in_light = 0;
        return c->linger;
    }
    if (c->in_probe) {
        c->tried = rate;
        c->have_tried = 1;
        c->in_probe = 0;
        return c->linger;
    }
    /* A plain window ended: it closes the trial of the probe before it. */
    if (c->have_tried && c->have_before) {
        uint64_t ref = (c->before + rate) / 2;
        uint64_t gap = c->before > rate ? c->before - rate : rate - c->before;
        c->have_tried = 0;
        c->n++;
        /* Plain windows that differ by more than PACE_NOISE_PERMILLE: the
         * load moved under the probe, which then says nothing (but counts
         * towards PACE_MAX_TRIALS). */
        if (ref > 0 && gap * 1000 <= ref * PACE_NOISE_PERMILLE) {
            int64_t d = ((int64_t)c->tried - (int64_t)ref) * 1000 / (int64_t)ref;
            /* A longer probe votes for itself when it served more than
             * PACE_GAIN_PERMILLE more; a shorter one unless it served
             * more than PACE_LOSS_PERMILLE less. */
            int yes = c->down ? d >= -(int64_t)PACE_LOSS_PERMILLE : d > (int64_t)PACE_GAIN_PERMILLE;
            c->score += yes ? 1 : -1;
        }
        int v = verdict(c);
        if (v > 0) {
            c->linger = c->probe;
            c->kept++;
            end_experiment(c);
            c->have_before = 0; /* this window ran at the old linger */
            return c->linger;   /* and the next probe goes the same way */
        }
        if (v < 0) {
            end_experiment(c);
            c->down = !c->down;
            c->rest = PACE_REST_WINDOWS;
        }
    }
    c->before = rate;
    c->have_before = 1;
    if (c->rest > 0) {
        c->rest--;
        return c->linger;
    }
    if (c->n == 0) { /* a new experiment: which way can it go */
        if (c->linger == 0)
            c->down = 0;
        else if (c->linger == PACE_MAX_US)
            c->down = 1;
        c->probe = c->down ? pace_shorter(c->linger) : pace_longer(c->linger);
    }
    c->in_probe = 1;
    return c->probe;
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

/* Close the window that ends at now and step the linger; measure_mu
 * held. */
static void measure_locked(uint64_t now)
{
    pace_reading r;
    pace_window w = {.idle_permille = -1, .own_permille = -1};
    w.pushes = atomic_exchange_explicit(&pushes, 0, memory_order_relaxed);
    if ((source ? source(source_arg, &r) : read_cpus(&r)) == 0) {
        if (have_prev && r.total > prev.total) {
            uint64_t total = r.total - prev.total;
            /* iowait may go back a little between readings (proc(5)) */
            w.idle_permille = r.idle > prev.idle ? (int)permille(r.idle - prev.idle, total) : 0;
            w.own_permille = r.own > prev.own ? (int)permille(r.own - prev.own, total) : 0;
            atomic_store_explicit(&idle_pm, w.idle_permille, memory_order_relaxed);
            atomic_store_explicit(&own_pm, w.own_permille, memory_order_relaxed);
        }
        prev = r;
        have_prev = 1;
    }
    if (prev_us != 0 && now > prev_us) {
        /* A window that was idle for long is measured over all of it:
         * the first push after a pause finds a light window. */
        w.us = now - prev_us;
        unsigned next = pace_ctl_step(&ctl, &w);
        atomic_store_explicit(&cur_linger, next, memory_order_relaxed);
        atomic_store_explicit(&last_rate, w.pushes * 1000000 / w.us, memory_order_relaxed);
        atomic_store_explicit(&n_probes, ctl.experiments, memory_order_relaxed);
        atomic_store_explicit(&n_kept, ctl.kept, memory_order_relaxed);
    }
    prev_us = now;
}

unsigned pace_linger(uint64_t now_us)
{
    atomic_fetch_add_explicit(&pushes, 1, memory_order_relaxed);
    if (now_us >= atomic_load_explicit(&next_us, memory_order_relaxed) &&
        pthread_mutex_trylock(&measure_mu) == 0) {
        if (now_us >= atomic_load_explicit(&next_us, memory_order_relaxed)) {
            measure_locked(now_us);
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

uint64_t pace_rate(void)
{
    return atomic_load_explicit(&last_rate, memory_order_relaxed);
}

uint64_t pace_probes(void)
{
    return atomic_load_explicit(&n_probes, memory_order_relaxed);
}

uint64_t pace_kept(void)
{
    return atomic_load_explicit(&n_kept, memory_order_relaxed);
}

void pace_test_source(pace_source_fn fn, void *arg, unsigned window)
{
    pthread_mutex_lock(&measure_mu);
    source = fn;
    source_arg = arg;
    have_prev = 0;
    prev_us = 0;
    ctl = (pace_ctl){.linger = PACE_START_US};
    atomic_store(&window_us, fn ? window : PACE_WINDOW_US);
    atomic_store(&next_us, 0);
    atomic_store(&pushes, 0);
    atomic_store(&cur_linger, PACE_START_US);
    atomic_store(&idle_pm, -1);
    atomic_store(&own_pm, -1);
    atomic_store(&last_rate, 0);
    atomic_store(&n_probes, 0);
    atomic_store(&n_kept, 0);
    pthread_mutex_unlock(&measure_mu);
}
