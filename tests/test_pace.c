/*
 * test_pace.c - the adaptive linger (pace.h): one step of the controller
 * for every kind of window (saturated by us, by others, time to spare, in
 * between; never past its bound), with and without the HTTP threads'
 * share of the window in poll (which decides when the CPUs look saturated
 * but bgserve keeps up, as at a fixed rate beside a busy load generator),
 * that share from two readings (the threads' average; unknown when the
 * threads changed), reading /proc/stat
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

#include <pthread.h>
#include <sched.h>

#include "pace.h"
#include "queue.h"
#include "util.h"

/* Saturated by this process (no idle time, and ours is most of it). */
#define BUSY 0, 1000
/* Time to spare, ours or not. */
#define SPARE 600, 400
/* The HTTP threads not measured. */
#define NO_HTTP (-1)

static void pace_step_follows_the_cpus(void **state)
{
    (void)state;
    /* Saturated by us: from 0 to the first step, then doubling, up to the bound. */
    assert_int_equal(pace_step(0, BUSY, NO_HTTP), PACE_STEP_MIN_US);
    assert_int_equal(pace_step(PACE_STEP_MIN_US, PACE_BUSY_PERMILLE - 1, PACE_HEAVY_PERMILLE, NO_HTTP),
                     2 * PACE_STEP_MIN_US);
    assert_int_equal(pace_step(PACE_MAX_US / 2 + 1, BUSY, NO_HTTP), PACE_MAX_US);
    assert_int_equal(pace_step(PACE_MAX_US, BUSY, NO_HTTP), PACE_MAX_US);
    /* Time to spare: halving, and 0 below the first step. */
    assert_int_equal(pace_step(PACE_MAX_US, PACE_SPARE_PERMILLE, 800, NO_HTTP), PACE_MAX_US / 2);
    assert_int_equal(pace_step(PACE_STEP_MIN_US, SPARE, NO_HTTP), 0);
    assert_int_equal(pace_step(0, SPARE, NO_HTTP), 0);
    /* Saturated by others, with little of it ours: our wake-ups are
     * few, so they go at once. */
    assert_int_equal(pace_step(64, 0, PACE_LIGHT_PERMILLE - 1, NO_HTTP), 32);
    /* In between: unchanged, so the two do not chase each other. */
    assert_int_equal(pace_step(64, PACE_BUSY_PERMILLE, 900, NO_HTTP), 64);
    assert_int_equal(pace_step(64, PACE_SPARE_PERMILLE - 1, 900, NO_HTTP), 64);
    assert_int_equal(pace_step(64, 0, PACE_HEAVY_PERMILLE - 1, NO_HTTP), 64);
    /* Never past the bound, whatever it starts from and sees. */
    for (unsigned l = 0; l <= 4 * PACE_MAX_US; l += 7)
        for (unsigned pm = 0; pm <= 1000; pm += 10)
            for (unsigned own = 0; own <= 1000; own += 100)
                for (int http = -1; http <= 1000; http += 100)
                    assert_true(pace_step(l, pm, own, http) <= PACE_MAX_US);
}

/* The HTTP threads' time in poll: it tells a server that keeps up with
 * its load (a fixed rate, the CPUs kept busy by the load generator) from
 * a saturated one. */
static void pace_step_follows_the_http_threads(void **state)
{
    (void)state;
    /* The CPUs saturated, mostly by us, but the HTTP threads wait
     * in poll a fifth of the time or more: bgserve keeps up, wake up at once. */
    assert_int_equal(pace_step(PACE_MAX_US, BUSY, PACE_HTTP_SPARE_PERMILLE), PACE_MAX_US / 2);
    assert_int_equal(pace_step(PACE_STEP_MIN_US, BUSY, 500), 0);
    assert_int_equal(pace_step(0, 0, PACE_HEAVY_PERMILLE, 1000), 0);
    /* ... and it never sees a wait in poll under saturation: linger. */
    assert_int_equal(pace_step(0, BUSY, 0), PACE_STEP_MIN_US);
    assert_int_equal(pace_step(64, BUSY, PACE_HTTP_BUSY_PERMILLE - 1), 128);
    /* In between: unchanged. */
    assert_int_equal(pace_step(64, BUSY, PACE_HTTP_BUSY_PERMILLE), 64);
    assert_int_equal(pace_step(64, BUSY, PACE_HTTP_SPARE_PERMILLE - 1), 64);
    /* Busy HTTP threads do not override CPUs with time to spare (the
     * woken worker finds a free CPU) or a light share of ours. */
    assert_int_equal(pace_step(64, SPARE, 0), 32);
    assert_int_equal(pace_step(64, 0, PACE_LIGHT_PERMILLE - 1, 0), 32);
    /* Nor do they make a saturation of others ours. */
    assert_int_equal(pace_step(64, 0, PACE_HEAVY_PERMILLE - 1, 0), 64);
}

/* Two readings of two HTTP threads, 1 ms apart, busy a and b µs of it. */
static void http_readings(pace_reading *prev, pace_reading *cur, uint64_t a, uint64_t b)
{
    *prev = (pace_reading){.at_ns = 5000000, .http_set = 3, .http_n = 2,
                           .http_busy_ns = {7000000, 9000000}};
    *cur = *prev;
    cur->at_ns += 1000000;
    cur->http_busy_ns[0] += a * 1000;
    cur->http_busy_ns[1] += b * 1000;
}

static void pace_http_idle_is_the_threads_average(void **state)
{
    (void)state;
    pace_reading prev, cur;
    http_readings(&prev, &cur, 300, 600);
    assert_int_equal(pace_http_idle(&prev, &cur), 550);  /* 700 and 400 of 1000 µs in poll */
    http_readings(&prev, &cur, 900, 100);
    assert_int_equal(pace_http_idle(&prev, &cur), 500);
    http_readings(&prev, &cur, 0, 0);
    assert_int_equal(pace_http_idle(&prev, &cur), 1000); /* both waited all along */
    http_readings(&prev, &cur, 1000, 1000);
    assert_int_equal(pace_http_idle(&prev, &cur), 0);    /* neither ever waited */
    http_readings(&prev, &cur, 1200, 800);               /* one read a little late: */
    assert_int_equal(pace_http_idle(&prev, &cur), 100);  /* capped at the window, not -200 */
    /* Unknown: a thread came or went between the readings, ... */
    http_readings(&prev, &cur, 300, 600);
    cur.http_set++;
    assert_int_equal(pace_http_idle(&prev, &cur), -1);
    http_readings(&prev, &cur, 300, 600);
    cur.http_n = 1;
    assert_int_equal(pace_http_idle(&prev, &cur), -1);
    /* ... no thread to watch, or no time between the readings. */
    http_readings(&prev, &cur, 300, 600);
    prev.http_n = cur.http_n = 0;
    assert_int_equal(pace_http_idle(&prev, &cur), -1);
    http_readings(&prev, &cur, 0, 0);
    cur.at_ns = prev.at_ns;
    assert_int_equal(pace_http_idle(&prev, &cur), -1);
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
 * and own_pm of them this process's, and (with http_threads) 1 ms during
 * which each HTTP thread waited in poll http_idle_pm of it. */
typedef struct fake_cpus {
    pace_reading r;
    unsigned idle_pm, own_pm;
    unsigned http_threads, http_idle_pm;
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
    f->r.at_ns += 1000000;
    f->r.http_n = f->http_threads;
    for (unsigned i = 0; i < f->http_threads; i++)
        f->r.http_busy_ns[i] += 1000u * (1000u - f->http_idle_pm);
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

/* A fixed rate beside a load generator that keeps the CPUs busy: by the
 * CPUs alone the pace would linger; the HTTP threads waiting in poll say
 * bgserve keeps up, and the linger goes to 0.  When they stop waiting
 * (saturation) it climbs to the bound. */
static void pace_at_a_fixed_rate_wakes_at_once(void **state)
{
    (void)state;
    enum { WINDOW = 1000 };
    fake_cpus f = {.idle_pm = 20, .own_pm = 450, .http_threads = 2, .http_idle_pm = 0};
    pace_test_source(read_fake, &f, WINDOW);
    uint64_t now = 1000000;
    pace_linger(now);
    for (int i = 0; i < 12; i++)
        pace_linger(now += WINDOW);
    assert_int_equal(pace_current(), PACE_MAX_US);
    assert_int_equal(pace_http_idle_permille(), 0);

    f.http_idle_pm = 400; /* the CPUs unchanged: still 2 % idle, 45 % ours */
    for (int i = 0; i < 12; i++)
        pace_linger(now += WINDOW);
    assert_int_equal(pace_current(), 0);
    assert_int_equal(pace_http_idle_permille(), 400);
    assert_int_equal(pace_idle_permille(), 20);

    /* A thread comes (the set changes): that window goes by the CPUs
     * alone, and the one after by the threads again. */
    f.r.http_set++;
    f.http_threads = 3;
    pace_linger(now += WINDOW);
    assert_int_equal(pace_http_idle_permille(), -1);
    assert_int_equal(pace_current(), PACE_STEP_MIN_US);
    pace_linger(now += WINDOW);
    assert_int_equal(pace_http_idle_permille(), 400);
    assert_int_equal(pace_current(), 0);
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

static void *http_thread_that_exits(void *arg)
{
    (void)arg;
    pace_http_thread();
    return NULL;
}

/* This machine's /proc/stat and this thread's schedstat: within a few
 * windows the pace has measured an idle share and this thread's time in
 * poll (it never waits there: near 0), and its linger is within the
 * bound; a watched thread that exits is dropped, not read forever. */
static void pace_reads_this_machine(void **state)
{
    (void)state;
    pace_test_source(NULL, NULL, 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, http_thread_that_exits, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    pace_http_thread();
    pace_http_thread(); /* once per thread: the second call adds nothing */
    uint64_t deadline = util_now_us() + 20u * 1000000u;
    while ((pace_idle_permille() < 0 || pace_http_idle_permille() < 0) &&
           util_now_us() < deadline) {
        pace_linger(util_now_us());
        sched_yield();
    }
    assert_true(pace_idle_permille() >= 0);
    assert_true(pace_idle_permille() <= 1000);
    assert_true(pace_own_permille() >= 0 && pace_own_permille() <= 1000);
    assert_true(pace_http_idle_permille() >= 0 && pace_http_idle_permille() <= 1000);
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
        cmocka_unit_test(pace_step_follows_the_http_threads),
        cmocka_unit_test(pace_http_idle_is_the_threads_average),
        cmocka_unit_test(pace_parse_stat_sums_the_allowed_cpus),
        cmocka_unit_test_teardown(pace_follows_its_source_window_by_window, teardown_source),
        cmocka_unit_test_teardown(pace_at_a_fixed_rate_wakes_at_once, teardown_source),
        cmocka_unit_test_teardown(pace_without_readings_keeps_the_fallback, teardown_source),
        cmocka_unit_test_teardown(pace_reads_this_machine, teardown_source),
        cmocka_unit_test(pace_bound_is_the_sentrys_watch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
