/*
 * test_sched.c - the timer thread: timers fire in due order whatever the
 * order they were added in, a cancelled timer never fires, cancel after
 * firing reports 0, and callbacks may re-arm their own timer; moving a
 * scheduler's clock (sched_advance) fires what became due and only on
 * that scheduler.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "sched.h"
#include "util.h"

#define DEADLINE_US (20u * 1000000u)

typedef struct tm_item {
    sched_timer timer;
    sched *s;
    int value;
    atomic_int fired;
    int rearm;  /* re-arm this many more times */
} tm_item;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int order[64];
static atomic_int norder;

static void on_fire(sched_timer *t)
{
    tm_item *it = UTIL_CONTAINER_OF(t, tm_item, timer);
    pthread_mutex_lock(&mu);
    int n = atomic_load(&norder);
    if (n < 64)
        order[n] = it->value;
    atomic_store(&norder, n + 1);
    pthread_mutex_unlock(&mu);
    atomic_fetch_add(&it->fired, 1);
    if (it->rearm > 0) {
        it->rearm--;
        sched_add(it->s, t, util_now_us(), on_fire);
    }
}

static int wait_count(int n)
{
    uint64_t deadline = util_now_us() + DEADLINE_US;
    struct timespec ts = {0, 1000000};
    while (atomic_load(&norder) < n) {
        if (util_now_us() > deadline)
            return 0;
        nanosleep(&ts, NULL);
    }
    return 1;
}

static void sched_fires_in_due_order(void **state)
{
    (void)state;
    tm_item items[20] = {0};
    sched *s = sched_new();
    atomic_store(&norder, 0);
    /* Added before the thread starts, in scrambled order; all in the
     * past or near future relative to one base, so due order is value
     * order. */
    uint64_t base = util_now_us();
    for (int k = 0; k < 20; k++) {
        int v = (k * 7) % 20;
        items[v].value = v;
        sched_add(s, &items[v].timer, base + (uint64_t)v * 100u, on_fire);
    }
    assert_int_equal(sched_pending(s), 20);
    assert_int_equal(sched_run(s), 0);
    assert_true(wait_count(20));
    sched_halt(s);
    pthread_mutex_lock(&mu);
    for (int v = 0; v < 20; v++)
        assert_int_equal(order[v], v);
    pthread_mutex_unlock(&mu);
    assert_int_equal(sched_pending(s), 0);
    sched_free(s);
}

static void sched_cancel_pending_never_fires(void **state)
{
    (void)state;
    sched *s = sched_new();
    tm_item far = {.value = 1, .s = s}, near = {.value = 2, .s = s};
    atomic_store(&norder, 0);
    assert_int_equal(sched_run(s), 0);
    sched_add(s, &far.timer, util_now_us() + 3600u * 1000000u, on_fire);
    sched_add(s, &near.timer, util_now_us(), on_fire);
    assert_true(wait_count(1));
    assert_int_equal(sched_cancel(s, &far.timer), 1);
    assert_int_equal(sched_cancel(s, &far.timer), 0);
    assert_int_equal(sched_cancel(s, &near.timer), 0); /* already fired */
    assert_int_equal(atomic_load(&far.fired), 0);
    assert_int_equal(atomic_load(&near.fired), 1);
    assert_int_equal(sched_pending(s), 0);
    sched_free(s);
}

static void sched_callback_may_rearm(void **state)
{
    (void)state;
    sched *s = sched_new();
    tm_item it = {.value = 5, .rearm = 4, .s = s};
    atomic_store(&norder, 0);
    assert_int_equal(sched_run(s), 0);
    sched_add(s, &it.timer, util_now_us(), on_fire);
    assert_true(wait_count(5));
    /* Re-armed 4 times, then it stops: cancel finds nothing pending. */
    assert_int_equal(sched_cancel(s, &it.timer), 0);
    assert_int_equal(atomic_load(&it.fired), 5);
    sched_free(s);
}

static void sched_stop_keeps_pending_timers(void **state)
{
    (void)state;
    sched *s = sched_new();
    tm_item it = {.value = 9, .s = s};
    atomic_store(&norder, 0);
    assert_int_equal(sched_run(s), 0);
    sched_halt(s);
    sched_add(s, &it.timer, util_now_us(), on_fire);
    assert_int_equal(sched_pending(s), 1);
    assert_int_equal(atomic_load(&it.fired), 0); /* no thread: nothing fires */
    assert_int_equal(sched_run(s), 0);
    assert_true(wait_count(1));
    assert_int_equal(atomic_load(&it.fired), 1);
    sched_free(s);
}

static void sched_advance_fires_what_became_due(void **state)
{
    (void)state;
    sched *s = sched_new();
    uint64_t hour = 3600u * 1000000u;
    tm_item soon = {.value = 1, .s = s}, later = {.value = 2, .s = s};
    atomic_store(&norder, 0);
    assert_int_equal(sched_run(s), 0);
    sched_add(s, &soon.timer, util_now_us() + hour, on_fire);
    sched_add(s, &later.timer, util_now_us() + 3 * hour, on_fire);
    assert_int_equal(sched_advance(s, 2 * hour), 2);
    /* Returned once it fired: no waiting needed. */
    assert_int_equal(atomic_load(&soon.fired), 1);
    assert_int_equal(atomic_load(&later.fired), 0);
    assert_int_equal(sched_pending(s), 1);
    /* The other one came two hours sooner, not more. */
    uint64_t due = sched_next_due(s);
    assert_true(due > util_now_us() + hour / 2);
    assert_true(due <= util_now_us() + hour + hour / 60);
    sched_advance(s, 2 * hour);
    assert_int_equal(atomic_load(&later.fired), 1);
    assert_int_equal(sched_next_due(s), 0);
    sched_free(s);
}

static void sched_advance_moves_only_its_own_clock(void **state)
{
    (void)state;
    sched *a = sched_new(), *b = sched_new();
    uint64_t hour = 3600u * 1000000u;
    tm_item ta = {.value = 1, .s = a}, tb = {.value = 2, .s = b};
    atomic_store(&norder, 0);
    assert_int_equal(sched_run(a), 0);
    assert_int_equal(sched_run(b), 0);
    sched_add(a, &ta.timer, util_now_us() + hour, on_fire);
    sched_add(b, &tb.timer, util_now_us() + hour, on_fire);
    sched_advance(a, 2 * hour);
    assert_int_equal(atomic_load(&ta.fired), 1);
    assert_int_equal(atomic_load(&tb.fired), 0);
    assert_int_equal(sched_cancel(b, &tb.timer), 1);
    sched_free(a);
    sched_free(b);
}

static void sched_advance_without_thread_returns(void **state)
{
    (void)state;
    sched *s = sched_new();
    tm_item it = {.value = 3, .s = s};
    sched_add(s, &it.timer, util_now_us() + 1000000u, on_fire);
    assert_int_equal(sched_advance(s, 2000000u), 1); /* moved, nothing ran it */
    assert_int_equal(atomic_load(&it.fired), 0);
    assert_true(sched_next_due(s) <= util_now_us());
    assert_int_equal(sched_cancel(s, &it.timer), 1);
    sched_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sched_fires_in_due_order),
        cmocka_unit_test(sched_cancel_pending_never_fires),
        cmocka_unit_test(sched_callback_may_rearm),
        cmocka_unit_test(sched_stop_keeps_pending_timers),
        cmocka_unit_test(sched_advance_fires_what_became_due),
        cmocka_unit_test(sched_advance_moves_only_its_own_clock),
        cmocka_unit_test(sched_advance_without_thread_returns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
