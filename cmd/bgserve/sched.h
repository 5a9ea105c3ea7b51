/*
 * sched.h - one timer thread for everything that happens later: retry
 * backoffs, task timeouts and periodic ticks.  Workers never sleep.
 *
 * A timer is embedded in its owner's struct (UTIL_CONTAINER_OF gets the
 * owner back in the callback) and is zeroed before first use.  Callbacks
 * run on the scheduler thread without any scheduler lock held, one at a
 * time, so they may add timers (also re-arm their own) but must be short.
 *
 * Timers may be added before sched_start and after sched_stop; they then
 * wait until the thread runs.  All functions are thread-safe.
 */
#ifndef BGSERVE_SCHED_H
#define BGSERVE_SCHED_H

#include <stddef.h>
#include <stdint.h>

typedef struct sched_timer sched_timer;
typedef void (*sched_fn)(sched_timer *t);

struct sched_timer {
    uint64_t due_us;   /* monotonic (util_now_us); guarded by the sched lock */
    sched_fn fn;
    size_t slot;       /* heap index + 1 while pending, 0 otherwise */
};

/* Start the timer thread, or count one more user of the running one
 * (each task engine is one).  0 or -1. */
int sched_start(void);
/* One user less; the last stops and joins the timer thread.  Pending
 * timers stay pending (they do not fire); a callback in progress
 * finishes first. */
void sched_stop(void);

/* Arm t to call fn at due_us (monotonic microseconds).  t must not be
 * pending already. */
void sched_add(sched_timer *t, uint64_t due_us, sched_fn fn);

/*
 * Disarm t.  Waits while its callback is running, so when this returns
 * the callback is not running and will not run unless re-added.  Returns
 * 1 when t was pending and is now removed (its callback never ran for this
 * arming), 0 when it was not pending.  Never call it from t's own callback.
 */
int sched_cancel(sched_timer *t);

/* Timers currently armed. */
size_t sched_pending(void);

#endif
