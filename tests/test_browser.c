/*
 * test_browser.c - the live dashboard in a real browser: runs each
 * scenario of tests/browser/dashboard.py (Debian's chromium, headless,
 * through chromedriver and python3-selenium) against BGSERVE_BUILD's
 * bgserve.  Each scenario starts its own server and browser and saves a
 * screenshot under BUILD/browser/.  A missing browser is a failure (the
 * script says what to install; make test installs it as root), never a
 * skip.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void run_scenario(const char *name)
{
    const char *build = getenv("BGSERVE_BUILD");
    const char *argv[] = {"/usr/bin/python3", "tests/browser/dashboard.py",
                          build && *build ? build : "build", name, NULL};
    char *out = NULL;
    int rc = h_run(argv, &out);
    char want[64];
    snprintf(want, sizeof want, "ok: %s", name);
    int said_ok = out && strstr(out, want), shot = out && strstr(out, "screenshot: ");
    if (rc != 0 || !said_ok || !shot)
        fprintf(stderr, "dashboard.py %s exited %d:\n%s", name, rc, out ? out : "");
    free(out); /* before the asserts: a failed one returns through longjmp */
    assert_int_equal(rc, 0);
    assert_true(said_ok);
    assert_true(shot);
}

/* No console error on load; the stream goes live. */
static void browser_page_loads_clean(void **state)
{
    (void)state;
    run_scenario("load");
}

/* A task attached by a request appears queued, then succeeded, with no
 * page reload. */
static void browser_task_goes_queued_to_succeeded(void **state)
{
    (void)state;
    run_scenario("task_live");
}

/* A failed build's compiler error appears at the top, as text. */
static void browser_failed_reload_shows_its_error(void **state)
{
    (void)state;
    run_scenario("reload_error");
}

/* The retry button re-runs a failed task. */
static void browser_retry_button_reruns_a_failed_task(void **state)
{
    (void)state;
    run_scenario("retry");
}

/* With --journal, a dead letter of an earlier run is on the page, and
 * its retry button re-runs it. */
static void browser_retry_button_reruns_a_dead_letter(void **state)
{
    (void)state;
    run_scenario("dead_letter");
}

/* An error holding <script> shows as text and never runs. */
static void browser_html_in_an_error_is_text(void **state)
{
    (void)state;
    run_scenario("escape");
}

/* Everything at once: the screenshot in docs/dashboard.png. */
static void browser_tour_screenshot(void **state)
{
    (void)state;
    run_scenario("tour");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(browser_page_loads_clean),
        cmocka_unit_test(browser_task_goes_queued_to_succeeded),
        cmocka_unit_test(browser_failed_reload_shows_its_error),
        cmocka_unit_test(browser_retry_button_reruns_a_failed_task),
        cmocka_unit_test(browser_retry_button_reruns_a_dead_letter),
        cmocka_unit_test(browser_html_in_an_error_is_text),
        cmocka_unit_test(browser_tour_screenshot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
