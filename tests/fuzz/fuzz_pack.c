/*
 * fuzz_pack.c - libFuzzer target: the journal's pack blobs
 * (journal_pack.h), which a reader decodes from a file that a disk or a
 * hand may have damaged.
 *
 * The input is split at its first byte: that many bytes (modulo the
 * size) are a tasks blob, the rest an ends blob.  Checks: every decoded
 * name and payload lies inside the blob (AddressSanitizer watches a
 * copy of exactly its size), the name is NUL-terminated where its length
 * says, a blob that decodes encodes back to the same bytes, and an ends
 * entry has a known status.
 */
#include "journal_pack.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t split = 1 + data[0] % size;
    size_t tlen = split - 1, elen = size - split;
    unsigned char *tasks = malloc(tlen ? tlen : 1), *ends = malloc(elen ? elen : 1);
    memcpy(tasks, data + 1, tlen);
    memcpy(ends, data + split, elen);

    size_t n = journal_pack_tasks_count(tasks, tlen);
    check(n <= JOURNAL_PACK_MAX);
    journal_pack_task t[JOURNAL_PACK_MAX];
    size_t good = 0;
    for (size_t i = 0; i < n; i++) {
        if (journal_pack_tasks_get(tasks, tlen, i, &t[i]) != 0)
            break;
        const unsigned char *name = (const unsigned char *)t[i].name;
        const unsigned char *pay = t[i].payload;
        size_t nl = strlen(t[i].name);
        check(name >= tasks && name + nl < tasks + tlen && name[nl] == '\0');
        check(pay >= tasks && t[i].len <= tlen && pay + t[i].len <= tasks + tlen);
        good++;
    }
    check(journal_pack_tasks_get(tasks, tlen, n, &t[0]) != 0);
    if (n > 0 && good == n) {
        /* what decodes, encodes back to the same bytes (varints are
         * minimal when written; a longer spelling read back differs) */
        size_t want = journal_pack_tasks_size(t, n);
        if (want == tlen) {
            unsigned char *again = malloc(want);
            journal_pack_tasks_encode(t, n, again);
            check(memcmp(again, tasks, want) == 0);
            free(again);
        }
    }
    size_t en = (size_t)data[0] % (JOURNAL_PACK_MAX + 1);
    for (size_t i = 0; i < en; i++) {
        journal_pack_end e;
        if (journal_pack_end_get(ends, elen, en, i, &e) != 0)
            break;
        check(e.status == JOURNAL_PACK_QUEUED || e.status == JOURNAL_PACK_SUCCEEDED ||
              e.status == JOURNAL_PACK_MOVED);
    }
    free(tasks);
    free(ends);
    return 0;
}
