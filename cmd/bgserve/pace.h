/*
 * pace.h - how long a queued task may wait for company before a worker
 * is woken for it (the *linger*), when it follows the load: the adaptive
 * default of bgserve (`--linger adaptive`).  docs/tasks.md, "When tasks
 * run", explains the policy; bench/README.md has the measurements.
 *
 * A wake-up is cheap when the woken worker finds an idle CPU, and costs
 * the server several times a whole request when it must preempt a busy
 * HTTP thread (or the load generator).  So the pace watches, over
 * windows of PACE_WINDOW_US, the CPUs this process may run on
 * (/proc/stat, restricted to its affinity mask): how much of their time
 * was idle, and how much of it this process used.  After each window it
 * moves the linger one step:
 *   - idle at least PACE_SPARE_PERMILLE of their time, or this process
 *     using less than PACE_LIGHT_PERMILLE of it (its wake-ups are few,
 *     whoever else keeps the CPUs busy): the linger halves (below
 *     PACE_STEP_MIN_US it is 0: every task that finds a worker idle
 *     wakes it at once);
 *   - idle less than PACE_BUSY_PERMILLE while this process uses at least
 *     PACE_HEAVY_PERMILLE: saturated, and by us; the linger doubles (from
 *     0 to PACE_STEP_MIN_US), up to PACE_MAX_US, the bound;
 *   - otherwise it stays, so the two do not chase each other.
 * The queue (queue.c) derives its other times from the linger, so the
 * bound on how long a task waits for company is queue_linger_bound_us of
 * PACE_MAX_US (the sentry's watch).
 *
 * State is process-wide (it describes the machine, and every queue of the
 * process shares it) and lock-free: atomics, and one thread at a time
 * elected to measure (pace_linger).  Measuring costs one pread of
 * /proc/stat per window, on the thread of a push; an idle server
 * measures nothing.  Without a readable /proc/stat the linger stays at
 * PACE_FALLBACK_US.
 */
#ifndef BGSERVE_PACE_H
#define BGSERVE_PACE_H

#include <stdint.h>

#define PACE_WINDOW_US 100000u
#define PACE_SPARE_PERMILLE 200u
#define PACE_BUSY_PERMILLE 100u
#define PACE_LIGHT_PERMILLE 125u
#define PACE_HEAVY_PERMILLE 250u
#define PACE_STEP_MIN_US 16u
#define PACE_MAX_US 256u
#define PACE_FALLBACK_US 30u

/* The adaptive linger now, in µs; when the last measure is a window old
 * (now_us, util_now_us), this call measures and steps it first. */
unsigned pace_linger(uint64_t now_us);
/* The adaptive linger as last set, without measuring (stats). */
unsigned pace_current(void);
/* The idle share of the CPUs measured over the last window, per mille,
 * or -1 before the first measure or without /proc/stat. */
int pace_idle_permille(void);
/* This process's share of the same CPUs' time, likewise. */
int pace_own_permille(void);

/* What one reading of the CPUs says, in clock ticks (USER_HZ) since
 * some start: idle (idle + iowait) and all time of the CPUs we may run
 * on, and the CPU time this process used. */
typedef struct pace_reading {
    uint64_t idle, total, own;
} pace_reading;

/* One step of the controller (top of file): the next linger from the
 * current one, the idle share of the window and this process's share,
 * both per mille of the CPUs' time. */
unsigned pace_step(unsigned linger_us, unsigned idle_permille, unsigned own_permille);
/* From the text of /proc/stat, the idle (idle + iowait) and total ticks
 * summed over the per-CPU lines of the CPUs for which allowed(cpu, arg)
 * is true (every CPU when allowed is NULL).  0, or -1 when no such line
 * was found. */
int pace_parse_stat(const char *text, int (*allowed)(int cpu, void *arg), void *arg,
                    uint64_t *idle, uint64_t *total);

/* For tests: measure with fn(arg, &reading) (0, or -1: no reading)
 * instead of /proc/stat and this process's CPU time, every window µs;
 * NULL restores those.  Either way the pace starts again from
 * PACE_FALLBACK_US, unmeasured. */
typedef int (*pace_source_fn)(void *arg, pace_reading *r);
void pace_test_source(pace_source_fn fn, void *arg, unsigned window);

#endif
