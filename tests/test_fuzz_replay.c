/*
 * test_fuzz_replay.c - replays every fuzzing input kept in the tree
 * (tests/fuzz/corpus/TARGET/ and tests/fuzz/crashes/TARGET/) through the
 * fuzz targets' entry points, built with the normal toolchain and without
 * libFuzzer, so `make test` (and its sanitizer builds) re-checks the
 * seeds and every crash ever found.  A target aborts on a failed check,
 * which fails this program.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Each target's LLVMFuzzerTestOneInput, renamed by the Makefile. */
int fuzz_router_one(const uint8_t *data, size_t size);
int fuzz_pct_one(const uint8_t *data, size_t size);
int fuzz_json_one(const uint8_t *data, size_t size);
int fuzz_descriptor_one(const uint8_t *data, size_t size);
int fuzz_pack_one(const uint8_t *data, size_t size);

typedef int (*entry_fn)(const uint8_t *data, size_t size);

/* Run every regular file of dir through fn; the number of files run. */
static size_t replay_dir(const char *dir, entry_fn fn)
{
    DIR *d = opendir(dir);
    size_t count = 0;
    if (d == NULL)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue; /* ., .., .gitkeep */
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len;
        char *data = h_slurp(path, &len);
        if (data == NULL)
            continue; /* a directory or unreadable: not an input */
        fn((const uint8_t *)data, len);
        free(data);
        count++;
    }
    closedir(d);
    return count;
}

static void replay(const char *target, entry_fn fn)
{
    const char *src = getenv("BGSERVE_SRC");
    char dir[512];
    if (src == NULL || *src == '\0')
        src = ".";
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/%s", src, target);
    size_t seeds = replay_dir(dir, fn);
    snprintf(dir, sizeof dir, "%s/tests/fuzz/crashes/%s", src, target);
    size_t crashes = replay_dir(dir, fn);
    print_message("%s: %zu corpus inputs, %zu crash inputs replayed\n", target, seeds, crashes);
    assert_true(seeds > 0); /* a missing corpus must not pass silently */
    /* The empty input is always worth a run. */
    fn((const uint8_t *)"", 0);
}

static void fuzz_replay_router(void **state)
{
    (void)state;
    replay("router", fuzz_router_one);
}

static void fuzz_replay_pct(void **state)
{
    (void)state;
    replay("pct", fuzz_pct_one);
}

static void fuzz_replay_json(void **state)
{
    (void)state;
    replay("json", fuzz_json_one);
}

static void fuzz_replay_descriptor(void **state)
{
    (void)state;
    replay("descriptor", fuzz_descriptor_one);
}

static void fuzz_replay_pack(void **state)
{
    (void)state;
    replay("pack", fuzz_pack_one);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fuzz_replay_router),
        cmocka_unit_test(fuzz_replay_pct),
        cmocka_unit_test(fuzz_replay_json),
        cmocka_unit_test(fuzz_replay_descriptor),
        cmocka_unit_test(fuzz_replay_pack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
