/*
 * test_pace.c - the adaptive linger (pace.h).  The controller, fed
 * synthetic windows from model loads (deterministic, no clock): the
 * ladder; light windows and CPUs with time to spare bring the linger
 * down to 0 and call an experiment off; a closed-loop client that sends
 * more the fewer the wake-ups takes it up to its bound; an open-loop
 * client at a fixed rate (also one drifting up) takes it down to 0; a
 * load that stops gaining at some linger keeps it there; one wild window
 * is one vote, and a probe the load moved under is none; an experiment that finds nothing within its trials is
 * refused and rests.  Then /proc/stat (all CPUs, the allowed ones, a
 * line cut short, no CPU line), the pace driven through pace_linger by
 * a test source and counted pushes (measured once per window, with and
 * without CPU readings), and the real /proc/stat of this machine.
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

static void pace_ladder_doubles_and_halves(void **state)
{
    (void)state;
    assert_int_equal(pace_longer(0), PACE_STEP_MIN_US);
    assert_int_equal(pace_longer(PACE_STEP_MIN_US), PACE_RUNG * PACE_STEP_MIN_US);
    assert_int_equal(pace_longer(PACE_MAX_US / PACE_RUNG + 1), PACE_MAX_US);
    assert_int_equal(pace_longer(PACE_MAX_US), PACE_MAX_US);
    assert_int_equal(pace_shorter(PACE_MAX_US), PACE_MAX_US / PACE_RUNG);
    assert_int_equal(pace_shorter(PACE_RUNG * PACE_STEP_MIN_US - 1), 0);
    assert_int_equal(pace_shorter(PACE_STEP_MIN_US), 0);
    assert_int_equal(pace_shorter(0), 0);
    assert_int_equal(pace_shorter(4 * PACE_MAX_US), PACE_MAX_US);
    for (unsigned l = 0; l <= 4 * PACE_MAX_US; l += 7)
        assert_true(pace_longer(l) <= PACE_MAX_US && pace_shorter(l) <= PACE_MAX_US);
}

/* A model of the client: the pushes a second it makes in window i when
 * the server runs at linger. */
typedef uint64_t (*load_fn)(unsigned linger, unsigned i);

enum { WIN_US = 50000 };

/* A busy window (no idle CPU, most of it ours) that saw rate pushes a
 * second. */
static pace_window busy(uint64_t rate)
{
    return (pace_window){.us = WIN_US, .pushes = rate * WIN_US / 1000000,
                         .idle_permille = 0, .own_permille = 600};
}

/* n windows of load from window *i on, each at the linger the step
 * before returned (*next); the largest and smallest kept linger of the
 * last `tail` windows go to *hi and *lo. */
static void drive(pace_ctl *c, load_fn load, unsigned *i, unsigned n, unsigned *next,
                  unsigned tail, unsigned *lo, unsigned *hi)
{
    *lo = PACE_MAX_US;
    *hi = 0;
    for (unsigned k = 0; k < n; k++, (*i)++) {
        pace_window w = busy(load(*next, *i));
        *next = pace_ctl_step(c, &w);
        assert_true(*next <= PACE_MAX_US);
        if (k >= n - tail) {
            *lo = c->linger < *lo ? c->linger : *lo;
            *hi = c->linger > *hi ? c->linger : *hi;
        }
    }
}

/* Closed loop: every rung up the ladder saves wake-ups the client
 * turns into requests. */
static uint64_t closed_loop(unsigned linger, unsigned i)
{
    (void)i;
    return 40000 + 200 * (uint64_t)linger;
}

/* Open loop: the client's rate, whatever the server does. */
static uint64_t fixed_rate(unsigned linger, unsigned i)
{
    (void)linger;
    (void)i;
    return 30000;
}

/* Open loop, the rate rising by 1 % a window: the plain windows either
 * side of a probe cancel the drift. */
static uint64_t rising_rate(unsigned linger, unsigned i)
{
    (void)linger;
    return 30000 + 300 * (uint64_t)i;
}

/* Gains up to 64 µs, nothing beyond. */
static uint64_t gains_up_to_64(unsigned linger, unsigned i)
{
    (void)i;
    return 40000 + 200 * (uint64_t)(linger < 64 ? linger : 64);
}

static void pace_ctl_climbs_for_a_closed_loop(void **state)
{
    (void)state;
    pace_ctl c = {.linger = PACE_STEP_MIN_US};
    unsigned i = 0, next = c.linger, lo, hi;
    /* Each step up takes PACE_LEAD trials of two windows, then one plain. */
    drive(&c, closed_loop, &i, 200, &next, 100, &lo, &hi);
    assert_int_equal(lo, PACE_MAX_US);
    assert_int_equal(hi, PACE_MAX_US);
    assert_int_equal(c.kept, 2); /* 16 -> 64 -> 256 */
    assert_true(c.experiments > c.kept); /* at the bound it keeps trying shorter, refused */
}

static void pace_ctl_descends_for_a_fixed_rate(void **state)
{
    (void)state;
    load_fn loads[] = {fixed_rate, rising_rate};
    for (unsigned k = 0; k < 2; k++) {
        pace_ctl c = {.linger = PACE_MAX_US};
        unsigned i = 0, next = c.linger, lo, hi;
        drive(&c, loads[k], &i, 300, &next, 100, &lo, &hi);
        assert_int_equal(hi, 0);
        /* At 0 it still tries 16 now and then, and refuses it: the
         * probes are the only windows that linger. */
        unsigned probes = 0;
        for (unsigned n = 0; n < 100; n++, i++) {
            pace_window w = busy(loads[k](next, i));
            next = pace_ctl_step(&c, &w);
            probes += next != 0;
            assert_int_equal(c.linger, 0);
        }
        assert_true(probes > 0 && probes < 50);
    }
}

static void pace_ctl_settles_where_the_gain_stops(void **state)
{
    (void)state;
    pace_ctl c = {.linger = PACE_STEP_MIN_US};
    unsigned i = 0, next = c.linger, lo, hi;
    drive(&c, gains_up_to_64, &i, 400, &next, 200, &lo, &hi);
    assert_int_equal(lo, 64);
    assert_int_equal(hi, 64);
    /* From above, too: 256 loses nothing to 64, so it comes down. */
    c = (pace_ctl){.linger = PACE_MAX_US};
    next = c.linger;
    drive(&c, gains_up_to_64, &i, 400, &next, 200, &lo, &hi);
    assert_int_equal(lo, 64);
    assert_int_equal(hi, 64);
}

/* Every other probe window is disturbed by a tenfold burst: a vote each
 * way, so the experiment runs until the other trials lead by PACE_LEAD. */
static uint64_t fixed_rate_with_bursts(unsigned linger, unsigned i)
{
    (void)i;
    static unsigned probes;
    if (linger != 0 && probes++ % 2 == 0)
        return 300000;
    return 30000;
}

static void pace_ctl_counts_a_wild_window_once(void **state)
{
    (void)state;
    /* At 0 with a fixed rate: probes at 16 gain nothing; half of them
     * look ten times better.  Mean d would say keep 16; the votes do not. */
    pace_ctl c = {.linger = 0};
    unsigned i = 0, next = 0, lo, hi;
    drive(&c, fixed_rate_with_bursts, &i, 400, &next, 400, &lo, &hi);
    assert_int_equal(hi, 0);
    assert_true(c.experiments > 0);
    assert_int_equal(c.kept, 0);
}

/* The plain windows jump by a third around every probe: no trial votes,
 * and after PACE_MAX_TRIALS the experiment is refused, though every probe
 * served as much as the windows around it. */
static uint64_t jumpy_rate(unsigned linger, unsigned i)
{
    if (linger == 256 || linger == 16)
        return 35000;
    return i % 4 < 2 ? 30000 : 40000;
}

static void pace_ctl_ignores_probes_the_load_moved_under(void **state)
{
    (void)state;
    pace_ctl c = {.linger = 64};
    unsigned i = 0, next = 64, lo, hi;
    drive(&c, jumpy_rate, &i, 2 * PACE_MAX_TRIALS + 1, &next, 1, &lo, &hi);
    assert_int_equal(c.experiments, 1);
    assert_int_equal(c.kept, 0);
    assert_int_equal(c.linger, 64);
    assert_int_equal(c.score, 0);
}

static void pace_ctl_refuses_what_it_cannot_decide_and_rests(void **state)
{
    (void)state;
    pace_ctl c = {.linger = 64};
    /* Up probes that gain 5 % and 0 % in turn: the votes never lead by
     * PACE_LEAD, so after PACE_MAX_TRIALS the probe is refused. */
    uint64_t plain = 40000;
    unsigned next = 64, t = 0;
    pace_window w = busy(plain);
    next = pace_ctl_step(&c, &w);
    assert_int_equal(next, 256);
    while (c.experiments == 0) {
        assert_true(t < PACE_MAX_TRIALS);
        w = busy(t++ % 2 ? plain : plain * 105 / 100); /* the probe */
        assert_int_equal(pace_ctl_step(&c, &w), 64);
        w = busy(plain);                               /* plain after it */
        next = pace_ctl_step(&c, &w);
    }
    assert_int_equal(t, PACE_MAX_TRIALS);
    assert_int_equal(c.kept, 0);
    assert_int_equal(c.linger, 64);
    /* It rests, then tries the other way. */
    assert_int_equal(next, 64);
    for (unsigned r = 1; r < PACE_REST_WINDOWS; r++) {
        w = busy(plain);
        assert_int_equal(pace_ctl_step(&c, &w), 64);
    }
    w = busy(plain);
    assert_int_equal(pace_ctl_step(&c, &w), 16);
}

static void pace_ctl_halves_when_light_or_spare(void **state)
{
    (void)state;
    pace_window light[] = {
        {.us = WIN_US, .pushes = PACE_FEW_PER_S * WIN_US / 1000000 - 1, .idle_permille = 0,
         .own_permille = 900},                                                /* few pushes */
        {.us = WIN_US, .pushes = 5000, .idle_permille = PACE_SPARE_PERMILLE, .own_permille = 600},
        {.us = 0, .pushes = 0, .idle_permille = -1, .own_permille = -1},      /* no time */
    };
    for (unsigned k = 0; k < sizeof light / sizeof light[0]; k++) {
        pace_ctl c = {.linger = PACE_MAX_US};
        unsigned prev = PACE_MAX_US;
        for (int n = 0; n < 10; n++) {
            unsigned l = pace_ctl_step(&c, &light[k]);
            assert_int_equal(l, pace_shorter(prev));
            prev = l;
        }
        assert_int_equal(prev, 0);
        /* Busy again: back to the linger kept under load. */
        pace_window w = busy(40000);
        assert_int_equal(pace_ctl_step(&c, &w), PACE_MAX_US);
    }
    /* Without CPU readings the pushes alone decide: busy enough, it
     * experiments (the next window is a probe). */
    pace_ctl c = {.linger = 64};
    pace_window w = {.us = WIN_US, .pushes = 5000, .idle_permille = -1, .own_permille = -1};
    assert_int_equal(pace_ctl_step(&c, &w), 256);
}

static void pace_ctl_calls_off_an_experiment_when_the_load_goes(void **state)
{
    (void)state;
    pace_ctl c = {.linger = 64};
    pace_window w = busy(40000);
    assert_int_equal(pace_ctl_step(&c, &w), 256);  /* a probe next */
    w = busy(60000);
    assert_int_equal(pace_ctl_step(&c, &w), 64);   /* the probe served more */
    w.idle_permille = 500;                         /* then the CPUs go idle */
    assert_int_equal(pace_ctl_step(&c, &w), 16);
    assert_int_equal(c.n, 0);
    assert_int_equal(c.score, 0);
    /* Busy again: back to 64 for a window that ran at 16 and so counts
     * for nothing, then the plain window before a new experiment's first
     * probe; the probe seen before the pause counted for nothing. */
    w = busy(40000);
    assert_int_equal(pace_ctl_step(&c, &w), 64);
    assert_int_equal(c.n, 0);
    assert_int_equal(pace_ctl_step(&c, &w), 256);  /* the probe */
    assert_int_equal(c.n, 0);
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

/* One window of pushes from *now on: the first push (which measures
 * the window before and sets this one's linger l) and n(l) - 1 more,
 * spread over it; then *now moves to the next window.  Returns l. */
static unsigned window_of_pushes(uint64_t *now, unsigned window, unsigned (*n)(unsigned l))
{
    unsigned l = pace_linger(*now), k = n(l);
    for (unsigned i = 1; i < k; i++)
        pace_linger(*now + (uint64_t)i * window / k);
    *now += window;
    return l;
}

/* A closed loop: the longer the linger, the more pushes. */
static unsigned closed_pushes(unsigned l)
{
    return 10 + l / 4;
}

/* An open loop: 20 pushes a window, whatever the linger. */
static unsigned open_pushes(unsigned l)
{
    (void)l;
    return 20;
}

static void pace_follows_its_source_window_by_window(void **state)
{
    (void)state;
    enum { WINDOW = 1000 };
    fake_cpus f = {.idle_pm = 0, .own_pm = 900}; /* saturated, by us */
    pace_test_source(read_fake, &f, WINDOW);
    assert_int_equal(pace_current(), PACE_START_US);
    assert_int_equal(pace_idle_permille(), -1);
    assert_int_equal(pace_rate(), 0);

    uint64_t now = 1000000;
    assert_int_equal(pace_linger(now), PACE_START_US); /* the first reading: no window yet */
    assert_int_equal(f.reads, 1);
    assert_int_equal(pace_linger(now + WINDOW - 1), PACE_START_US); /* same window */
    assert_int_equal(f.reads, 1);
    now += WINDOW;

    /* An open loop, saturated by us: down from the start (the bound) to
     * 0, where it stays but for a probe now and then. */
    unsigned zeros = 0;
    for (int i = 0; i < 200; i++) {
        unsigned l = window_of_pushes(&now, WINDOW, open_pushes);
        assert_true(l <= PACE_MAX_US);
        if (i >= 100)
            zeros += l == 0;
    }
    assert_int_equal(f.reads, 1 + 200);
    assert_true(pace_kept() >= 3); /* 256 -> 64 -> 16 -> 0 */
    assert_true(zeros > 50);
    assert_int_equal(pace_rate(), 20u * 1000000u / WINDOW);
    assert_int_equal(pace_idle_permille(), 0);
    assert_int_equal(pace_own_permille(), 900);

    /* A closed loop at the same CPU shares: up to the bound, where only
     * the probes are shorter. */
    uint64_t kept = pace_kept();
    unsigned at_bound = 0;
    for (int i = 0; i < 200; i++) {
        unsigned l = window_of_pushes(&now, WINDOW, closed_pushes);
        if (i >= 150) {
            assert_true(l == PACE_MAX_US || l == PACE_MAX_US / PACE_RUNG);
            at_bound += l == PACE_MAX_US;
        }
    }
    assert_true(pace_kept() >= kept + 3); /* 0 -> 16 -> 64 -> 256 */
    assert_true(at_bound > 25);

    /* Then light windows (one push each, far apart): the linger comes
     * down a rung each window, to 0. */
    now += 10 * WINDOW;
    pace_linger(now); /* closes the last closed-loop window */
    unsigned prev = pace_current();
    for (int i = 0; i < 10; i++) {
        now += 10 * WINDOW;
        unsigned l = pace_linger(now);
        assert_true(l <= prev);
        prev = l;
    }
    assert_int_equal(prev, 0);
}

/* Without CPU readings the pushes alone decide. */
static void pace_without_readings_follows_the_pushes(void **state)
{
    (void)state;
    enum { WINDOW = 1000 };
    fake_cpus f = {.fail = 1};
    pace_test_source(read_fake, &f, WINDOW);
    uint64_t now = 1000;
    for (int i = 0; i < 200; i++)
        window_of_pushes(&now, WINDOW, open_pushes);
    assert_int_equal(pace_idle_permille(), -1);
    assert_int_equal(pace_own_permille(), -1);
    assert_true(pace_probes() > 0);
    assert_true(pace_current() <= PACE_STEP_MIN_US);
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
        cmocka_unit_test(pace_ladder_doubles_and_halves),
        cmocka_unit_test(pace_ctl_climbs_for_a_closed_loop),
        cmocka_unit_test(pace_ctl_descends_for_a_fixed_rate),
        cmocka_unit_test(pace_ctl_settles_where_the_gain_stops),
        cmocka_unit_test(pace_ctl_counts_a_wild_window_once),
        cmocka_unit_test(pace_ctl_ignores_probes_the_load_moved_under),
        cmocka_unit_test(pace_ctl_refuses_what_it_cannot_decide_and_rests),
        cmocka_unit_test(pace_ctl_halves_when_light_or_spare),
        cmocka_unit_test(pace_ctl_calls_off_an_experiment_when_the_load_goes),
        cmocka_unit_test(pace_parse_stat_sums_the_allowed_cpus),
        cmocka_unit_test_teardown(pace_follows_its_source_window_by_window, teardown_source),
        cmocka_unit_test_teardown(pace_without_readings_follows_the_pushes, teardown_source),
        cmocka_unit_test_teardown(pace_reads_this_machine, teardown_source),
        cmocka_unit_test(pace_bound_is_the_sentrys_watch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
