/*
 * fuzz_pct.c - libFuzzer target: percent-decoding of paths and query
 * strings (router_pct_decode and request_parse_query).
 *
 * Checks: the decoded length never exceeds the input, the output is
 * NUL-terminated inside the buffer the contract promises (exactly
 * len + 1 bytes, so AddressSanitizer sees any overrun), decoding the
 * fully %XX-encoded form of a result gives the result back, and a parsed
 * query never has more than REQUEST_MAX_QUERY pairs, none longer than the
 * query (AddressSanitizer watches query_buf; "k" without '=' once
 * overflowed it).
 */
#include "request.h"
#include "router.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

static void decode_both_ways(const char *src, size_t len, int plus)
{
    char *dst = malloc(len + 1);
    long n = router_pct_decode(src, len, dst, plus);
    check(n >= -1 && n <= (long)len);
    if (n >= 0) {
        check(dst[n] == '\0');
        /* Round trip through the fully encoded form. */
        size_t elen = (size_t)n * 3;
        char *enc = malloc(elen + 1);
        for (long i = 0; i < n; i++)
            snprintf(enc + 3 * i, 4, "%%%02X", (unsigned char)dst[i]);
        char *back = malloc(elen + 1);
        long m = router_pct_decode(enc, elen, back, plus);
        if (memchr(dst, '\0', (size_t)n) == NULL) {
            check(m == n);
            check(memcmp(back, dst, (size_t)n) == 0);
        }
        free(back);
        free(enc);
    }
    free(dst);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *src = (const char *)data;
    decode_both_ways(src, size, 0);
    decode_both_ways(src, size, 1);

    char *qs = malloc(size + 1);
    memcpy(qs, data, size);
    qs[size] = '\0';
    struct bgs_req req;
    memset(&req, 0, sizeof req);
    if (request_parse_query(&req, qs) == 0) {
        size_t n = strlen(qs);
        check(req.nquery <= REQUEST_MAX_QUERY);
        for (unsigned i = 0; i < req.nquery; i++) {
            /* query_buf's size is the parser's business: ASan checks it */
            check(req.query[i].name >= req.query_buf && req.query[i].value > req.query[i].name);
            check(strlen(req.query[i].name) <= n && strlen(req.query[i].value) <= n);
        }
    }
    request_free(&req);
    free(qs);
    return 0;
}
