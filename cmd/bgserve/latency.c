/*
 * latency.c - the log-linear latency histogram (see latency.h).
 *
 * Bucket b < 16 holds the value b exactly.  Above, a value with its
 * highest set bit at e (e >= 4) goes to 16 + (e - 4) * 8 + the three bits
 * below the highest: eight buckets per power of two.  No state of its own;
 * counts are relaxed atomics in the caller's latency_hist.
 */
#include "latency.h"

unsigned latency_bucket(uint64_t v)
{
    if (v < 16)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    unsigned b = 16u + (e - 4u) * 8u + (unsigned)((v >> (e - 3u)) & 7u);
    return b < LATENCY_BUCKETS ? b : LATENCY_BUCKETS - 1;
}

uint64_t latency_bucket_upper(unsigned b)
{
    if (b < 16)
        return b;
    unsigned e = (b - 16u) / 8u + 4u, sub = (b - 16u) % 8u;
    return ((uint64_t)(8u + sub + 1u) << (e - 3u)) - 1u;
}

void latency_add(latency_hist *h, uint64_t us)
{
    atomic_fetch_add_explicit(&h->bucket[latency_bucket(us)], 1, memory_order_relaxed);
}

uint64_t latency_percentile(latency_hist *h, unsigned pct)
{
    uint64_t counts[LATENCY_BUCKETS], total = 0, seen = 0;
    for (unsigned i = 0; i < LATENCY_BUCKETS; i++) {
        counts[i] = atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        total += counts[i];
    }
    if (total == 0)
        return 0;
    uint64_t want = (total * pct + 99) / 100;
    for (unsigned i = 0; i < LATENCY_BUCKETS; i++) {
        seen += counts[i];
        if (seen >= want)
            return latency_bucket_upper(i);
    }
    return latency_bucket_upper(LATENCY_BUCKETS - 1);
}
