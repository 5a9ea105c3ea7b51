/*
 * test_latency.c - the latency histogram (latency.h): exact small values,
 * eight buckets per power of two above, the last bucket catching the
 * rest, and percentiles as the upper bound of their bucket.  Several
 * histograms side by side, none shared.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"
#include "latency.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static void latency_small_values_exact(void **state)
{
    (void)state;
    for (uint64_t v = 0; v < 16; v++) {
        assert_int_equal(latency_bucket(v), v);
        assert_int_equal(latency_bucket_upper((unsigned)v), v);
    }
}

/* Every value lies in its bucket's range, buckets grow monotonically, and
 * a bucket's width is at most an eighth of its lower bound. */
static void latency_buckets_cover_values_in_order(void **state)
{
    (void)state;
    unsigned prev = 0;
    for (uint64_t v = 1; v < (UINT64_C(1) << 40); v += v / 7 + 1) {
        unsigned b = latency_bucket(v);
        assert_true(b >= prev);
        prev = b;
        if (b == LATENCY_BUCKETS - 1)
            break;
        assert_true(v <= latency_bucket_upper(b));
        if (b > 0)
            assert_true(v > latency_bucket_upper(b - 1));
        if (v >= 16) {
            uint64_t lower = latency_bucket_upper(b - 1) + 1;
            assert_true((latency_bucket_upper(b) - lower + 1) * 8 <= lower);
        }
    }
}

static void latency_huge_values_land_in_last_bucket(void **state)
{
    (void)state;
    assert_int_equal(latency_bucket(UINT64_MAX), LATENCY_BUCKETS - 1);
    latency_hist *h = calloc(1, sizeof *h);
    assert_non_null(h);
    latency_add(h, UINT64_MAX);
    assert_int_equal(latency_percentile(h, 50), latency_bucket_upper(LATENCY_BUCKETS - 1));
    free(h);
}

static void latency_percentiles_of_known_counts(void **state)
{
    (void)state;
    latency_hist *h = calloc(1, sizeof *h), *other = calloc(1, sizeof *other);
    assert_non_null(h);
    assert_non_null(other);
    assert_int_equal(latency_percentile(h, 50), 0); /* empty */
    for (int i = 0; i < 98; i++)
        latency_add(h, 5);
    latency_add(h, 1000);
    latency_add(h, 1000);
    latency_add(other, 7);
    assert_int_equal(latency_percentile(h, 50), 5);
    assert_int_equal(latency_percentile(h, 98), 5);
    uint64_t p99 = latency_percentile(h, 99);
    assert_true(p99 >= 1000 && p99 <= 1000 + 1000 / 8);
    assert_int_equal(latency_percentile(h, 100), p99);
    assert_int_equal(latency_percentile(other, 50), 7); /* each its own */
    free(h);
    free(other);
}

#define ADDERS 4
#define PER_ADDER 20000

static void *adder(void *arg)
{
    for (int i = 0; i < PER_ADDER; i++)
        latency_add(arg, (uint64_t)(i % 3));
    return NULL;
}

/* Concurrent adds lose nothing (ThreadSanitizer checks the rest). */
static void latency_concurrent_adds_all_counted(void **state)
{
    (void)state;
    latency_hist *h = calloc(1, sizeof *h);
    assert_non_null(h);
    pthread_t t[ADDERS];
    for (int i = 0; i < ADDERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, adder, h), 0);
    for (int i = 0; i < ADDERS; i++)
        pthread_join(t[i], NULL);
    unsigned long total = 0;
    for (unsigned b = 0; b < LATENCY_BUCKETS; b++)
        total += atomic_load(&h->bucket[b]);
    assert_int_equal(total, ADDERS * PER_ADDER);
    assert_int_equal(latency_percentile(h, 100), 2);
    free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(latency_small_values_exact),
        cmocka_unit_test(latency_buckets_cover_values_in_order),
        cmocka_unit_test(latency_huge_values_land_in_last_bucket),
        cmocka_unit_test(latency_percentiles_of_known_counts),
        cmocka_unit_test(latency_concurrent_adds_all_counted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
