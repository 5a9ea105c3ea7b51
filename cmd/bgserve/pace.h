/*
 * pace.h - how long a queued task may wait for company before a worker
 * is woken for it (the *linger*), when it follows the load: the adaptive
 * default of bgserve (`--linger adaptive`).  docs/tasks.md, "When tasks
 * run", explains the policy; bench/README.md (sections 12, 14, 16) has the
 * measurements.
 *
 * A wake-up is cheap when the woken worker finds an idle CPU, and costs
 * the server several times a whole request when it must preempt a busy
 * HTTP thread (or the load generator).  Whether a longer linger is worth
 * its later starts cannot be read from inside the server (pace.c's top
 * comment says why, and why no direct measure of the HTTP threads is
 * used): so the pace *tries*.  It cuts time into windows of
 * PACE_WINDOW_US and counts, per window, the pushes (the tasks of one
 * response go to the queue in one push, so pushes per second follow the
 * requests completed), and reads the idle share of the CPUs this process
 * may run on (/proc/stat over the affinity mask).  After each window
 * pace_ctl_step decides the next one:
 *   - a light window (fewer than PACE_FEW_PER_S pushes a second: a dev
 *     server, or one on a machine busy with other work, whose wake-ups
 *     are few), or one where the CPUs had time to spare (idle at least
 *     PACE_SPARE_PERMILLE of it, so a woken worker finds one): the
 *     linger comes down a rung (below PACE_STEP_MIN_US it is 0: every
 *     task that finds a worker idle wakes it at once), and any experiment
 *     is called off.  The linger kept under load is remembered: the
 *     first busy window after light ones goes back to it (a pause in a
 *     closed loop, or the idle start of a server, does not undo what
 *     the experiments found);
 *   - otherwise it experiments: windows alternate between the kept
 *     linger and a *probe* at a neighbour on the ladder (a rung longer
 *     or shorter).  Each probe window is a trial, and its d is how many
 *     more pushes a second it served than the mean of the plain windows
 *     either side of it (so a load that drifts slowly cancels out), per
 *     mille and within +-PACE_CLIP_PERMILLE (one window disturbed by
 *     another process, or the client's start, weighs no more than
 *     that).  From PACE_MIN_TRIALS trials on, the mean of the d and its
 *     standard error decide, one-sided each way, with the benefit of the
 *     doubt to the shorter linger ("shown": by PACE_SE_TENTHS / 10
 *     standard errors):
 *       a shorter probe is kept when the mean loses no more than
 *       PACE_LOSS_PERMILLE and the loss is shown to be under
 *       PACE_MARGIN_PERMILLE (at a rate the server sustains, the client
 *       sets the rate, so "no loss" is the evidence that the earlier
 *       starts cost nothing), and refused when it is shown to lose more
 *       than PACE_LOSS_PERMILLE (at saturation a rung shorter does);
 *       a longer probe is kept when it is shown to gain more than
 *       PACE_GAIN_PERMILLE (a closed-loop client sends more when
 *       answered sooner: the wake-ups it saved were worth it), and
 *       refused when it is shown not to;
 *     an experiment that shows neither in PACE_MAX_TRIALS is refused
 *     (the load is too noisy to judge; the linger stays put).  A steady
 *     load decides in PACE_MIN_TRIALS trials, a noisier one later.
 *     PACE_GAIN_PERMILLE is above PACE_LOSS_PERMILLE, so that a step
 *     down whose loss was small enough to keep is not worth stepping up
 *     again (no flapping between two rungs).  A kept probe moves the
 *     linger and the next experiment goes the same way at once; a
 *     refused one turns the next experiment around, after
 *     PACE_REST_WINDOWS plain windows.  Requests per CPU second would be
 *     the wrong objective: a longer linger always saves CPU, also when
 *     the client sends no more for it; and the push rate alone, judged
 *     window by window, is too noisy on a shared machine (bench/README.md
 *     section 16), hence the trials.
 * The linger moves on a ladder of rungs PACE_RUNG times apart: 0,
 * PACE_STEP_MIN_US, ..., PACE_MAX_US, the bound (0, 16, 64, 256 µs).
 * Rungs that far apart differ enough in wake-ups (bench/README.md
 * section 10) for a probe's effect to show through a shared machine's
 * noise, and the ladder is climbed in three experiments.  The queue
 * (queue.c) derives its other times from the linger, so the longest a
 * task waits for company is queue_linger_bound_us of PACE_MAX_US (the
 * sentry's watch).
 *
 * State is process-wide (it describes the machine and its load, and
 * every queue of the process shares it) and lock-free on the fast path:
 * an atomic push count, and one thread at a time elected to measure
 * (pace_linger).  Measuring costs one pread of /proc/stat per window, on
 * the thread of a push; an idle server measures nothing.  Without a
 * readable /proc/stat the experiments (and the light rule) alone decide.
 */
#ifndef BGSERVE_PACE_H
#define BGSERVE_PACE_H

#include <stdint.h>

#define PACE_WINDOW_US 50000u
#define PACE_SPARE_PERMILLE 200u
#define PACE_FEW_PER_S 1000u
#define PACE_CLIP_PERMILLE 250u
#define PACE_GAIN_PERMILLE 50u
#define PACE_LOSS_PERMILLE 40u
#define PACE_MARGIN_PERMILLE 100u
#define PACE_SE_TENTHS 25u
#define PACE_MIN_TRIALS 5u
#define PACE_MAX_TRIALS 16u
#define PACE_REST_WINDOWS 40u
#define PACE_STEP_MIN_US 16u
#define PACE_RUNG 4u
#define PACE_MAX_US 256u
#define PACE_START_US PACE_MAX_US

/* The adaptive linger now, in µs; when the last measure is a window old
 * (now_us, util_now_us), this call measures and steps it first. */
unsigned pace_linger(uint64_t now_us);
/* The adaptive linger as last set, without measuring (stats). */
unsigned pace_current(void);
/* The idle share of the CPUs measured over the last window, per mille,
 * or -1 before the first measure or without /proc/stat. */
int pace_idle_permille(void);
/* Pushes a second in the last window (0 before the first), and the
 * experiments judged and probes kept since the start. */
uint64_t pace_rate(void);
uint64_t pace_probes(void);
uint64_t pace_kept(void);

/* What one reading of the CPUs says, in clock ticks (USER_HZ) since
 * some start: idle (idle + iowait) and all time of the CPUs we may run
 * on. */
typedef struct pace_reading {
    uint64_t idle, total;
} pace_reading;

/* What the pace saw in one window: its length, the pushes made in it,
 * and the CPUs' idle share, per mille (-1: not read). */
typedef struct pace_window {
    uint64_t us, pushes;
    int idle_permille;
} pace_window;

/* The controller: zeroed, then linger set to where it starts.  One
 * experiment is a series of trials (plain, probe, plain: the plain
 * window after a probe is also the one before the next); a trial's d is
 * the probe's pushes a second over the two plain windows' mean, less
 * one, per mille, within +-PACE_CLIP_PERMILLE. */
typedef struct pace_ctl {
    unsigned linger;        /* the linger kept under load */
    unsigned light;         /* the linger while the load is light */
    int in_light;           /* the last window was light */
    unsigned probe;         /* the linger of the experiment's probes */
    int down;               /* the probes are shorter (1) or longer (0) */
    int in_probe;           /* the window running is a probe */
    int have_before, have_tried;
    unsigned rest;          /* plain windows left before the next experiment */
    uint64_t before, tried; /* pushes a second: the last plain window, the probe */
    unsigned n;             /* the experiment's trials so far */
    int64_t sum, sumsq;     /* their d, and d squared (per mille) */
    uint64_t experiments, kept; /* judged, and probes kept, since the start */
} pace_ctl;

/* One step of the controller (top of file): after window w, the linger
 * for the next window (the kept one, or a probe). */
unsigned pace_ctl_step(pace_ctl *c, const pace_window *w);
/* The ladder's rungs next to linger_us, within 0..PACE_MAX_US. */
unsigned pace_longer(unsigned linger_us);
unsigned pace_shorter(unsigned linger_us);
/* From the text of /proc/stat, the idle (idle + iowait) and total ticks
 * summed over the per-CPU lines of the CPUs for which allowed(cpu, arg)
 * is true (every CPU when allowed is NULL).  0, or -1 when no such line
 * was found. */
int pace_parse_stat(const char *text, int (*allowed)(int cpu, void *arg), void *arg,
                    uint64_t *idle, uint64_t *total);

/* For tests: measure with fn(arg, &reading) (0, or -1: no reading)
 * instead of /proc/stat, every window µs;
 * NULL restores those.  Either way the pace starts again from
 * PACE_START_US, unmeasured, with no push counted. */
typedef int (*pace_source_fn)(void *arg, pace_reading *r);
void pace_test_source(pace_source_fn fn, void *arg, unsigned window);

#endif
