/*
 * pace.c - the adaptive linger (pace.h has the policy's rules).
 *
 * Owns the process-wide pace state below.  The linger, the push count,
 * the last window's idle share and rate and the experiment counters are
 * atomics anyone reads; next_us (when the next measure is due) is an
 * atomic the fast path reads; everything else (the controller, the
 * /proc/stat descriptor, the CPU mask, the previous reading) belongs to
 * the thread that holds measure_mu, taken with trylock by a push that
 * finds a measure due, so no push ever waits for another's measure.
 *
 * Why the experiments are the signal, and how their verdict is
 * reached.  What the pace must tell apart is a rate the server
 * sustains (the client sets it; every wake-up saved only delays tasks)
 * from saturation under a closed loop (every wake-up saved becomes a
 * request), on cores the client shares.  Readings from inside do not
 * tell them apart there (bench/README.md sections 13, 14, 21):
 *   - the CPUs' idle share: 0-5 % in both, since the client uses what
 *     bgserve leaves (it still brings the linger down when there is
 *     idle time: a woken worker then finds a CPU);
 *   - the HTTP threads' time in poll, or the requests accepted and not
 *     yet answered at a window's end: a closed-loop client starved of
 *     CPU by the wake-ups sends more slowly, so the HTTP threads wait
 *     for it in poll and no request is queued, which reads as room to
 *     spare; section 14 tried the time in poll, and at linger 0 under
 *     wrk it read 26-28 % idle while the wake-ups halved throughput.
 *     The signal feeds itself, and the same holds for any measure of
 *     how busy bgserve's own threads are, CPU clocks included;
 *   - this process's share of the CPU time: on a machine busy with other
 *     work it falls under full load (it was measured and shown, never
 *     used, and is gone).
 * What does tell them apart is cause and effect: change the linger for a
 * window and see whether the requests a second follow.  At a sustained
 * rate they do not, whichever way the linger moves; at saturation they
 * do (the quiet sweep of section 18: `/task` served 41 300 req/s at
 * linger 0, 45 300 at 30 µs, 58 600 at 300 µs).  So the experiments stay,
 * and what changed is how they are judged (section 21):
 *   - one-sided each way, with the benefit of the doubt to the shorter
 *     linger: a shorter probe is kept unless it loses (at a fixed rate
 *     "no loss" *is* the evidence), a longer one only if it shows a
 *     gain; the loss that refuses a step down (4 %) is below the gain
 *     that buys a step up (5 %), so a load near the edge does not flap
 *     between two rungs;
 *   - by the trials' mean and its standard error, not by votes with a
 *     lead of four and a gate that dropped every trial whose plain
 *     windows differed by more than 10 %.  At a fixed rate on this
 *     machine while others built, windows 50 ms apart differed by
 *     10-25 %: the gate dropped 10 of 12 trials and the experiment ended
 *     undecided (section 18's "0 probes kept" looks the same).  A mean
 *     uses every trial, its standard error says when it is enough, and
 *     clipping each trial's d to +-25 % keeps one wild window from
 *     deciding (what the votes were for).  On a steady load it decides
 *     in five trials (half a second); on a noisy one it takes more, and
 *     on one too noisy to show anything in sixteen it stays put, which
 *     under saturation is the safe way.
 * The model runs in tests/test_pace.c check each of these rules: remove
 * the clip, the standard error, the margin, or the gap between gain and
 * loss, and one of them fails.
 */
#include "pace.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_uint cur_linger = PACE_START_US;
static atomic_uint_fast64_t pushes;   /* since the last measure */
static atomic_int idle_pm = -1;
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

/* Whether a - b is at least PACE_SE_TENTHS / 10 standard errors of the
 * trials' mean, with a, b and the mean scaled by the trials' count n
 * (so that they stay integers) and v = (n sumsq - sum^2) / (n - 1),
 * which is that scaled standard error's square: (n se)^2 = n var = v. */
static int by_se(int64_t a, int64_t b, int64_t v)
{
    return a >= b && 100 * (a - b) * (a - b) >= (int64_t)(PACE_SE_TENTHS * PACE_SE_TENTHS) * v;
}

/* The verdict of the experiment so far: keep the probe (1), refuse it
 * (-1), or try again (0), from the mean of its trials' d and that
 * mean's standard error, once there are PACE_MIN_TRIALS of them; "shown"
 * below means by PACE_SE_TENTHS / 10 standard errors.  A shorter probe
 * is kept when the mean loses no more than PACE_LOSS_PERMILLE and the
 * loss is shown to be under PACE_MARGIN_PERMILLE, and refused when it
 * is shown to lose more than PACE_LOSS_PERMILLE; a longer one is kept
 * when it is shown to gain more than PACE_GAIN_PERMILLE, and refused
 * when it is shown not to.  A steady load decides within a few trials,
 * a noisier one later; one too noisy to decide in PACE_MAX_TRIALS is
 * refused, and the linger stays put. */
_Static_assert(PACE_MIN_TRIALS >= 2, "a standard error needs two trials");

static int verdict(const pace_ctl *c)
{
    int64_t n = c->n;
    if (n < (int64_t)PACE_MIN_TRIALS)
        return 0;
    int64_t m = c->sum; /* the mean, scaled by n, as the thresholds below */
    int64_t v = (n * c->sumsq - c->sum * c->sum) / (n - 1);
    int64_t loss = -(int64_t)PACE_LOSS_PERMILLE * n, gain = (int64_t)PACE_GAIN_PERMILLE * n;
    if (c->down) {
        if (m >= loss && by_se(m, -(int64_t)PACE_MARGIN_PERMILLE * n, v))
            return 1;
        if (m < loss && by_se(loss, m, v))
            return -1;
    } else {
        if (m > gain && by_se(m, gain, v))
            return 1;
        if (by_se(gain, m, v))
            return -1;
    }
    return n >= (int64_t)PACE_MAX_TRIALS ? -1 : 0;
}

/* Forget the trials under way (an experiment ended, or called off). */
static void clear_trials(pace_ctl *c)
{
    c->n = 0;
    c->sum = c->sumsq = 0;
    c->in_probe = c->have_before = c->have_tried = 0;
}

static void end_experiment(pace_ctl *c)
{
    clear_trials(c);
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
        clear_trials(c);
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
        c->have_tried = 0;
        c->n++;
        if (ref > 0) {
            int64_t d = ((int64_t)c->tried - (int64_t)ref) * 1000 / (int64_t)ref;
            /* A window disturbed by something else (another process, the
             * client's start) weighs at most PACE_CLIP_PERMILLE. */
            if (d > (int64_t)PACE_CLIP_PERMILLE)
                d = PACE_CLIP_PERMILLE;
            if (d < -(int64_t)PACE_CLIP_PERMILLE)
                d = -(int64_t)PACE_CLIP_PERMILLE;
            c->sum += d;
            c->sumsq += d * d;
        }
        int v = verdict(c);
        if (v > 0) {
            c->linger = c->probe;
            c->kept++;
            end_experiment(c);  /* this window ran at the old linger: */
            return c->linger;   /* no before; the next probe goes the same way */
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

/* A reading of the CPUs we may run on, from /proc/stat: 0, or -1 when
 * it cannot be read; measure_mu held. */
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
    return pace_parse_stat(buf, have_mask ? in_mask : NULL, NULL, &r->idle, &r->total);
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
    pace_window w = {.idle_permille = -1};
    w.pushes = atomic_exchange_explicit(&pushes, 0, memory_order_relaxed);
    if ((source ? source(source_arg, &r) : read_cpus(&r)) == 0) {
        if (have_prev && r.total > prev.total) {
            uint64_t total = r.total - prev.total;
            /* iowait may go back a little between readings (proc(5)) */
            w.idle_permille = r.idle > prev.idle ? (int)permille(r.idle - prev.idle, total) : 0;
            atomic_store_explicit(&idle_pm, w.idle_permille, memory_order_relaxed);
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
    atomic_store(&last_rate, 0);
    atomic_store(&n_probes, 0);
    atomic_store(&n_kept, 0);
    pthread_mutex_unlock(&measure_mu);
}
