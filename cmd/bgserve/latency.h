/*
 * latency.h - a latency histogram: counts of microsecond values in
 * log-linear buckets (exact below 16 us, then eight buckets per power of
 * two, so a percentile is within 12.5% of the true value), and
 * percentiles of it.  The task engine keeps one for dispatch latency (from
 * submit to the first attempt's start), the journal one for its commits.
 *
 * A value, not a room with state: the owner embeds it, zeroed (static
 * storage, or memset) means empty.  Lock-free: any thread may add while
 * another reads percentiles; a reader sees each bucket's count at some
 * moment of its read, not one snapshot of all of them.
 */
#ifndef BGSERVE_LATENCY_H
#define BGSERVE_LATENCY_H

#include <stdatomic.h>
#include <stdint.h>

#define LATENCY_BUCKETS 320 /* the last one also takes every larger value */

typedef struct latency_hist {
    atomic_ulong bucket[LATENCY_BUCKETS];
} latency_hist;

/* Count one value of us microseconds. */
void latency_add(latency_hist *h, uint64_t us);

/* The pct-th percentile (0-100) as the upper bound of its bucket, in
 * microseconds; 0 when nothing was counted. */
uint64_t latency_percentile(latency_hist *h, unsigned pct);

/* The bucket a value falls into, and the largest value of bucket b
 * (exposed for the tests). */
unsigned latency_bucket(uint64_t us);
uint64_t latency_bucket_upper(unsigned b);

#endif
