/*
 * sched.h - timer threads for everything that happens later: retry
 * backoffs, task timeouts, periodic ticks and deferred deadlines.
 * Workers never sleep.
 *
 * A scheduler is a value: each task engine owns one (tasks_new makes it,
 * tasks_free frees it, tasks_sched lends it), with its own heap, lock and
 * thread, so two engines in one process (the testing library's
 * instances) never share timers, and moving one's clock (sched_advance)
 * does not move the other's.
 *
 * A timer is embedded in its owner's struct (UTIL_CONTAINER_OF gets the
 * owner back in the callback) and is zeroed before first use; it is only
 * ever added to one scheduler.  Callbacks run on the scheduler's thread
 * without any scheduler lock held, one at a time, so they may add timers
 * (also re-arm their own) but must be short.
 *
 * Timers may be added before sched_run and after sched_halt; they then
 * wait until the thread runs.  All functions but sched_new and sched_free
 * are thread-safe.
 */
#ifndef BGSERVE_SCHED_H
#define BGSERVE_SCHED_H

#include <stddef.h>
#include <stdint.h>

typedef struct sched sched;
typedef struct sched_timer sched_timer;
typedef void (*sched_fn)(sched_timer *t);

struct sched_timer {
    uint64_t due_us;   /* monotonic (util_now_us); guarded by the sched lock;
                        * in its callback, the time it was due (after any
                        * sched_advance) */
    sched_fn fn;
    size_t slot;       /* heap index + 1 while pending, 0 otherwise */
};

/* A scheduler whose thread is not running yet (timers added now wait).
 * Never NULL (allocation aborts, util.h). */
sched *sched_new(void);
/* Start its thread: 0, or -1 when it cannot be started.  Once. */
int sched_run(sched *s);
/* Stop and join its thread (a callback in progress finishes first).
 * Pending timers stay pending: they do not fire.  A second call does
 * nothing. */
void sched_halt(sched *s);
/* Halt, then free s.  No timer may still be pending on it (cancel them
 * first: their owners are about to be freed anyway).  NULL is fine. */
void sched_free(sched *s);

/* Arm t to call fn at due_us (monotonic microseconds).  t must not be
 * pending already. */
void sched_add(sched *s, sched_timer *t, uint64_t due_us, sched_fn fn);

/*
 * Disarm t.  Waits while its callback is running, so when this returns
 * the callback is not running and will not run unless re-added.  Returns
 * 1 when t was pending and is now removed (its callback never ran for this
 * arming), 0 when it was not pending.  Never call it from t's own callback.
 */
int sched_cancel(sched *s, sched_timer *t);

/* Timers currently armed. */
size_t sched_pending(const sched *s);

/*
 * Move this scheduler's clock forward by us: every pending timer becomes
 * due us sooner (never before now), so those due within us fire now, in
 * due order, as if that time had passed.  Timers added later are timed
 * from the real clock as always.  Returns once every timer due by then
 * has fired (or the thread is not running: at once), with how many
 * timers were pending when it was called.  For tests (testing.h); the
 * server never calls it.
 */
size_t sched_advance(sched *s, uint64_t us);

/* The due time of the earliest pending timer, or 0 when none. */
uint64_t sched_next_due(const sched *s);

#endif
