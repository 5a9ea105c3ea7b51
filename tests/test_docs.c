/*
 * test_docs.c - every C example in README.md and docs/ (every *.md) builds as a
 * plugin and passes bgserve --check, and every test example (test_NAME.c)
 * builds with the testing library and passes against its plugin
 * (tests/docs/check.sh does the work).
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

static void docs_examples_build_and_check(void **state)
{
    (void)state;
    const char *build = getenv("BGSERVE_BUILD");
    const char *argv[] = {"/bin/sh", "tests/docs/check.sh", build && *build ? build : "build", NULL};
    char *out;
    int rc = h_run(argv, &out);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    h_assert_contains(out, "greet.c");
    h_assert_contains(out, "test_counter.c (ran against counter.so)"); /* docs/testing.md */
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(docs_examples_build_and_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
