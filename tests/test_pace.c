/*
 * test_pace.c - the adaptive linger (pace.h): one step of the controller
 * for every kind of window (saturated by us, by others, time to spare, in
 * between; never past its bound), reading /proc/stat
 * (all CPUs, the allowed ones, a line cut short, no CPU line), the pace
 * driven by a test source through windows of its own clock (measured once
 * per window, up to the bound when saturated, down to 0 with time to
 * spare, unchanged by a source that cannot read), and the real
 * /proc/stat of this machine.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sched.h>

#include "pace.h"
#include "queue.h"
#include "util.h"

/* Saturated by this process (no idle time, and ours is most of it). */
#define BUSY 0, 1000
/* Time to spare, ours or not. */
#define SPARE 600, 400

static void pace_step_follows_the_cpus(void **state)
{
    (void)state;
    /* Saturated by us: from 0 to the first step, then doubling, up to the bound. */
    assert_int_equal(pace_step(0, BUSY), PACE_STEP_MIN_US);
    assert_int_equal(pace_step(PACE_STEP_MIN_US, PACE_BUSY_PERMILLE - 1, PACE_HEAVY_PERMILLE),
                     2 * PACE_STEP_MIN_US);
    assert_int_equal(pace_step(PACE_MAX_US / 2 + 1, BUSY), PACE_MAX_US);
    assert_int_equal(pace_step(PACE_MAX_US, BUSY), PACE_MAX_US);
    /* Time to spare: halving, and 0 below the first step. */
    assert_int_equal(pace_step(PACE_MAX_US, PACE_SPARE_PERMILLE, 800), PACE_MAX_US / 2);
    assert_int_equal(pace_step(PACE_STEP_MIN_US, SPARE), 0);
    assert_int_equal(pace_step(0, SPARE), 0);
    /* Saturated by others, with little of it ours: our wake-ups are
     * few, so they go at once. */
    assert_int_equal(pace_step(64, 0, PACE_LIGHT_PERMILLE - 1), 32);
    /* In between: unchanged, so the two do not chase each other. */
    assert_int_equal(pace_step(64, PACE_BUSY_PERMILLE, 900), 64);
    assert_int_equal(pace_step(64, PACE_SPARE_PERMILLE - 1, 900), 64);
    assert_int_equal(pace_step(64, 0, PACE_HEAVY_PERMILLE - 1), 64);
    /* Never past the bound, whatever it starts from and sees. */
    for (unsigned l = 0; l <= 4 * PACE_MAX_US; l += 7)
        for (unsigned pm = 0; pm <= 1000; pm += 10)
            for (unsigned own = 0; own <= 1000; own += 100)
                assert_true(pace_step(l, pm, own) <= PACE_MAX_US);
}

static const char stat_text[] =
    "cpu  300 0 100 900 100 0 0 0 0 0\n"
    "cpu0 100 0 50 400 50 0 0 0 0 0\n"
    "cpu1 200 0 50 500 50 0 0 10 0 0\n"
    "intr 12345 0 0 0\n"
    "ctxt 999\n";

static int only_cpu1(int cpu, void *arg)
{
    (void)arg;
    return cpu == 1;
}

static void pace_parse_stat_sums_the_allowed_cpus(void **state)
{
    (void)state;
    uint64_t idle, total;
    assert_int_equal(pace_parse_stat(stat_text, NULL, NULL, &idle, &total), 0);
    assert_int_equal(idle, 450 + 550);              /* idle + iowait of cpu0 and cpu1 */
    assert_int_equal(total, 600 + 810);             /* steal counts as busy */
    assert_int_equal(pace_parse_stat(stat_text, only_cpu1, NULL, &idle, &total), 0);
    assert_int_equal(idle, 550);
    assert_int_equal(total, 810);
    /* A line cut short by the buffer is not counted. */
    assert_int_equal(pace_parse_stat("cpu 1 2 3 4\ncpu0 1 0 1 8 0 0 0 0\ncpu1 5 0 5", NULL, NULL,
                                     &idle, &total), 0);
    assert_int_equal(idle, 8);
    assert_int_equal(total, 10);
    /* No per-CPU line (or none allowed): nothing to go by. */
    assert_int_equal(pace_parse_stat("cpu 1 2 3 4\nintr 1\n", NULL, NULL, &idle, &total), -1);
    assert_int_equal(pace_parse_stat("cpu0 1 0 1 8 0 0 0 0\n", only_cpu1, NULL, &idle, &total), -1);
    assert_int_equal(pace_parse_stat("", NULL, NULL, &idle, &total), -1);
}

/* A test source: every reading adds 1000 ticks, idle_pm of them idle
 * and own_pm of them this process's. */
typedef struct fake_cpus {
    pace_reading r;
    unsigned idle_pm, own_pm;
    int fail;
    int reads;
} fake_cpus;

static int read_fake(void *arg, pace_reading *r)
{
    fake_cpus *f = arg;
    f->reads++;
    if (f->fail)
        return -1;
    f->r.idle += f->idle_pm;
    f->r.own += f->own_pm;
    f->r.total += 1000;
    *r = f->r;
    return 0;
}

static int teardown_source(void **state)
{
    (void)state;
    pace_test_source(NULL, NULL, 0);
    return 0;
}

static void pace_follows_its_source_window_by_window(void **state)
{
    (void)state;
    enum { WINDOW = 1000 };
    fake_cpus f = {.idle_pm = 0, .own_pm = 900};
    pace_test_source(read_fake, &f, WINDOW);
    assert_int_equal(pace_current(), PACE_FALLBACK_US);
    assert_int_equal(pace_idle_permille(), -1);

    uint64_t now = 1000000;
    assert_int_equal(pace_linger(now), PACE_FALLBACK_US); /* the first reading: no window yet */
    assert_int_equal(f.reads, 1);
    assert_int_equal(pace_linger(now + WINDOW - 1), PACE_FALLBACK_US); /* same window */
    assert_int_equal(f.reads, 1);

    /* Saturated: up to the bound, one step per window, never past it. */
    unsigned prev = PACE_FALLBACK_US;
    for (int i = 1; i <= 12; i++) {
        now += WINDOW;
        unsigned l = pace_linger(now);
        assert_int_equal(f.reads, 1 + i);
        assert_true(l >= prev && l <= PACE_MAX_US);
        prev = l;
    }
    assert_int_equal(prev, PACE_MAX_US);
    assert_int_equal(pace_idle_permille(), 0);

    /* Between the thresholds: it stays. */
    f.idle_pm = (PACE_BUSY_PERMILLE + PACE_SPARE_PERMILLE) / 2;
    now += WINDOW;
    assert_int_equal(pace_linger(now), PACE_MAX_US);

    /* Time to spare: down to 0, where every push wakes a worker. */
    f.idle_pm = 600;
    f.own_pm = 400;
    for (int i = 0; i < 12; i++) {
        now += WINDOW;
        unsigned l = pace_linger(now);
        assert_true(l <= prev);
        prev = l;
    }
    assert_int_equal(prev, 0);
    assert_int_equal(pace_idle_permille(), 600);
    assert_int_equal(pace_own_permille(), 400);
    assert_int_equal(pace_current(), 0);

    /* A source that cannot read leaves the linger where it is. */
    f.fail = 1;
    now += WINDOW;
    assert_int_equal(pace_linger(now), 0);
}

/* With no reading at all the pace stays at its fallback. */
static void pace_without_readings_keeps_the_fallback(void **state)
{
    (void)state;
    fake_cpus f = {.fail = 1};
    pace_test_source(read_fake, &f, 10);
    uint64_t now = 1000;
    for (int i = 0; i < 5; i++, now += 10)
        assert_int_equal(pace_linger(now), PACE_FALLBACK_US);
    assert_int_equal(f.reads, 5);
    assert_int_equal(pace_idle_permille(), -1);
}

/* This machine's /proc/stat: within a few windows the pace has measured
 * an idle share, and its linger is within the bound. */
static void pace_reads_this_machine(void **state)
{
    (void)state;
    pace_test_source(NULL, NULL, 0);
    uint64_t deadline = util_now_us() + 20u * 1000000u;
    while (pace_idle_permille() < 0 && util_now_us() < deadline) {
        pace_linger(util_now_us());
        sched_yield();
    }
    assert_true(pace_idle_permille() >= 0);
    assert_true(pace_idle_permille() <= 1000);
    assert_true(pace_own_permille() >= 0 && pace_own_permille() <= 1000);
    assert_true(pace_current() <= PACE_MAX_US);
}

/* The bound the stats and --help state is the sentry's watch at the
 * adaptive linger's largest value: three lingers, at least 200 µs. */
static void pace_bound_is_the_sentrys_watch(void **state)
{
    (void)state;
    assert_int_equal(queue_linger_bound_us(PACE_MAX_US), 3 * PACE_MAX_US);
    assert_int_equal(queue_linger_bound_us(30), 200);
    assert_int_equal(queue_linger_bound_us(0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pace_step_follows_the_cpus),
        cmocka_unit_test(pace_parse_stat_sums_the_allowed_cpus),
        cmocka_unit_test_teardown(pace_follows_its_source_window_by_window, teardown_source),
        cmocka_unit_test_teardown(pace_without_readings_keeps_the_fallback, teardown_source),
        cmocka_unit_test_teardown(pace_reads_this_machine, teardown_source),
        cmocka_unit_test(pace_bound_is_the_sentrys_watch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
