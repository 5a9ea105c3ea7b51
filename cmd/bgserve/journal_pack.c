/*
 * journal_pack.c - the packed form of an add (journal_pack.h): the two
 * blobs of a pack row, the SQL function that reads them, and the
 * writer's map from a task id to its live pack.
 *
 * The tasks blob: "BGP1", a byte n, then each task: its id, not-before
 * time, sequence link, attempts limit, name length and payload length as
 * unsigned LEB128 varints, then its name, a NUL and its payload (a small
 * task takes a few bytes more than its name and payload).  The ends
 * blob: n entries of JOURNAL_PACK_END_BYTES (u8 status, u32 attempts,
 * u64 started, u64 finished), little-endian, so that one can be rewritten
 * in place.
 *
 * The map is open addressing with linear probing and backward-shift
 * deletion (no tombstones); it and its packs belong to the writer thread.
 */
#include "journal_pack.h"

#include "util.h"

#include <stdlib.h>
#include <string.h>

#define MAGIC "BGP1"
#define HEAD 5u /* the magic and the count */

/* An unsigned LEB128 varint: 7 bits a byte, low first. */
static size_t varint_put(unsigned char *p, uint64_t v)
{
    size_t n = 0;
    do {
        p[n++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v != 0);
    return n;
}

static size_t varint_size(uint64_t v)
{
    size_t n = 1;
    while (v > 0x7f) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Read one at *pos (< end); 0, or -1 when it runs past end or past 64 bits. */
static int varint_get(const unsigned char *blob, size_t end, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*pos >= end)
            return -1;
        unsigned char b = blob[(*pos)++];
        if (shift == 63 && b > 1)
            return -1; /* more than 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* A task's fixed part: id, not-before, prev, max attempts, name length,
 * payload length, as varints; its name, a NUL and its payload follow. */
static size_t task_head_size(const journal_pack_task *t)
{
    return varint_size(t->id) + varint_size(t->not_before_us) + varint_size(t->prev_id) +
           varint_size(t->max_attempts) + varint_size(strlen(t->name)) + varint_size(t->len);
}

size_t journal_pack_tasks_size(const journal_pack_task *t, size_t n)
{
    size_t size = HEAD;
    for (size_t i = 0; i < n; i++)
        size += task_head_size(&t[i]) + strlen(t[i].name) + 1 + t[i].len;
    return size;
}

void journal_pack_tasks_encode(const journal_pack_task *t, size_t n, unsigned char *out)
{
    memcpy(out, MAGIC, 4);
    out[4] = (unsigned char)n;
    size_t off = HEAD;
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(t[i].name);
        off += varint_put(out + off, t[i].id);
        off += varint_put(out + off, t[i].not_before_us);
        off += varint_put(out + off, t[i].prev_id);
        off += varint_put(out + off, t[i].max_attempts);
        off += varint_put(out + off, nl);
        off += varint_put(out + off, t[i].len);
        memcpy(out + off, t[i].name, nl + 1);
        off += nl + 1;
        if (t[i].len)
            memcpy(out + off, t[i].payload, t[i].len);
        off += t[i].len;
    }
}

size_t journal_pack_tasks_count(const unsigned char *blob, size_t len)
{
    if (blob == NULL || len < HEAD || memcmp(blob, MAGIC, 4) != 0)
        return 0;
    size_t n = blob[4];
    return n <= JOURNAL_PACK_MAX ? n : 0;
}

/* The task at *pos (its end then); 0, or -1 when malformed. */
static int task_at(const unsigned char *blob, size_t len, size_t *pos, journal_pack_task *out)
{
    uint64_t v[6];
    for (int k = 0; k < 6; k++)
        if (varint_get(blob, len, pos, &v[k]) != 0)
            return -1;
    uint64_t nl = v[4], pl = v[5];
    size_t off = *pos;
    if (v[3] > UINT32_MAX || nl >= len - off || pl > len - off - nl - 1 ||
        blob[off + nl] != '\0' || memchr(blob + off, '\0', nl) != NULL)
        return -1;
    *out = (journal_pack_task){
        .id = v[0],
        .not_before_us = v[1],
        .prev_id = v[2],
        .max_attempts = (uint32_t)v[3],
        .name = (const char *)blob + off,
        .payload = blob + off + nl + 1,
        .len = pl,
    };
    *pos = off + nl + 1 + pl;
    return 0;
}

int journal_pack_tasks_get(const unsigned char *blob, size_t len, size_t i,
                           journal_pack_task *out)
{
    size_t n = journal_pack_tasks_count(blob, len), pos = HEAD;
    if (i >= n)
        return -1;
    for (size_t k = 0; k <= i; k++)
        if (task_at(blob, len, &pos, out) != 0)
            return -1;
    return 0;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

int journal_pack_end_get(const unsigned char *ends, size_t len, size_t n, size_t i,
                         journal_pack_end *out)
{
    if (i >= n)
        return -1;
    if (ends == NULL || len == 0) {
        *out = (journal_pack_end){.status = JOURNAL_PACK_QUEUED};
        return 0;
    }
    if (len != n * JOURNAL_PACK_END_BYTES)
        return -1;
    const unsigned char *e = ends + i * JOURNAL_PACK_END_BYTES;
    if (e[0] > JOURNAL_PACK_MOVED)
        return -1;
    *out = (journal_pack_end){
        .status = e[0],
        .attempts = get32(e + 1),
        .started_us = get64(e + 5),
        .finished_us = get64(e + 13),
    };
    return 0;
}

void journal_pack_end_set(unsigned char *ends, size_t i, const journal_pack_end *e)
{
    unsigned char *p = ends + i * JOURNAL_PACK_END_BYTES;
    p[0] = (unsigned char)e->status;
    put32(p + 1, e->attempts);
    put64(p + 5, e->started_us);
    put64(p + 13, e->finished_us);
}

/* ---- bgs_pack(tasks, ends, i, field) ------------------------------------------ */

static void result_u64_or_null(sqlite3_context *ctx, uint64_t v)
{
    if (v == 0)
        sqlite3_result_null(ctx);
    else
        sqlite3_result_int64(ctx, (sqlite3_int64)v);
}

static void bgs_pack(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    const unsigned char *blob = sqlite3_value_blob(argv[0]);
    size_t len = (size_t)sqlite3_value_bytes(argv[0]);
    const unsigned char *ends = sqlite3_value_blob(argv[1]);
    size_t elen = (size_t)sqlite3_value_bytes(argv[1]);
    sqlite3_int64 i = sqlite3_value_int64(argv[2]);
    int field = sqlite3_value_int(argv[3]);
    size_t n = journal_pack_tasks_count(blob, len);
    journal_pack_task t;
    journal_pack_end e;
    if (n > 0 && (i < 0 || (size_t)i >= n)) {
        /* SQLite may call it before it applies "k.i < p.n": no such task */
        sqlite3_result_null(ctx);
        return;
    }
    if (journal_pack_tasks_get(blob, len, (size_t)i, &t) != 0 ||
        journal_pack_end_get(ends, elen, n, (size_t)i, &e) != 0) {
        sqlite3_result_error(ctx, "a bgserve pack row is malformed (packs.tasks or packs.ends)",
                             -1);
        return;
    }
    switch (field) {
    case JOURNAL_PACK_F_ID: sqlite3_result_int64(ctx, (sqlite3_int64)t.id); break;
    case JOURNAL_PACK_F_NAME: sqlite3_result_text(ctx, t.name, -1, SQLITE_TRANSIENT); break;
    case JOURNAL_PACK_F_PAYLOAD:
        sqlite3_result_blob(ctx, t.payload, (int)t.len, SQLITE_TRANSIENT);
        break;
    case JOURNAL_PACK_F_STATE:
        if (e.status == JOURNAL_PACK_QUEUED)
            sqlite3_result_text(ctx, "queued", -1, SQLITE_STATIC);
        else if (e.status == JOURNAL_PACK_SUCCEEDED)
            sqlite3_result_text(ctx, "succeeded", -1, SQLITE_STATIC);
        else
            sqlite3_result_null(ctx); /* moved: its row in tasks says */
        break;
    case JOURNAL_PACK_F_ATTEMPTS: sqlite3_result_int64(ctx, e.attempts); break;
    case JOURNAL_PACK_F_MAX_ATTEMPTS: sqlite3_result_int64(ctx, t.max_attempts); break;
    case JOURNAL_PACK_F_NOT_BEFORE:
        sqlite3_result_int64(ctx, (sqlite3_int64)t.not_before_us);
        break;
    case JOURNAL_PACK_F_STARTED: result_u64_or_null(ctx, e.started_us); break;
    case JOURNAL_PACK_F_FINISHED: result_u64_or_null(ctx, e.finished_us); break;
    case JOURNAL_PACK_F_PREV: sqlite3_result_int64(ctx, (sqlite3_int64)t.prev_id); break;
    default: sqlite3_result_error(ctx, "bgs_pack: no such field", -1); break;
    }
}

int journal_pack_register(sqlite3 *db)
{
    return sqlite3_create_function_v2(db, "bgs_pack", 4, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
                                      NULL, bgs_pack, NULL, NULL, NULL);
}

/* ---- packs and the map --------------------------------------------------------- */

journal_pack *journal_pack_new(uint64_t first, const journal_pack_task *t, uint32_t n)
{
    /* one block: the pack, its ids, its ends */
    journal_pack *p = xcalloc(1, sizeof *p + n * (sizeof p->ids[0] + JOURNAL_PACK_END_BYTES));
    p->first = first;
    p->n = n;
    p->nlive = n;
    p->ends = (unsigned char *)(p->ids + n);
    for (uint32_t i = 0; i < n; i++)
        p->ids[i] = t[i].id;
    return p;
}

void journal_pack_free(journal_pack *p)
{
    free(p);
}

int journal_pack_index(const journal_pack *p, uint64_t id)
{
    for (uint32_t i = 0; i < p->n; i++)
        if (p->ids[i] == id)
            return (int)i;
    return -1;
}

struct journal_pack_slot {
    uint64_t id; /* 0: empty (ids start at 1) */
    journal_pack *p;
};

static size_t home(const journal_pack_map *m, uint64_t id)
{
    return util_id_hash(id) & (m->cap - 1);
}

static void slot_put(journal_pack_map *m, uint64_t id, journal_pack *p)
{
    size_t i = home(m, id);
    while (m->slot[i].id != 0 && m->slot[i].id != id)
        i = (i + 1) & (m->cap - 1);
    if (m->slot[i].id == 0)
        m->count++;
    m->slot[i] = (struct journal_pack_slot){id, p};
}

static void grow(journal_pack_map *m)
{
    struct journal_pack_slot *old = m->slot;
    size_t oldcap = m->cap;
    m->cap = oldcap ? oldcap * 2 : 256;
    m->slot = xcalloc(m->cap, sizeof *m->slot);
    m->count = 0;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].id != 0)
            slot_put(m, old[i].id, old[i].p);
    free(old);
}

void journal_pack_map_put(journal_pack_map *m, journal_pack *p)
{
    while ((m->count + p->n) * 2 > m->cap)
        grow(m);
    for (uint32_t i = 0; i < p->n; i++)
        slot_put(m, p->ids[i], p);
    p->all_prev = NULL;
    p->all_next = m->all;
    if (m->all)
        m->all->all_prev = p;
    m->all = p;
}

journal_pack *journal_pack_map_find(const journal_pack_map *m, uint64_t id)
{
    if (m->cap == 0 || id == 0)
        return NULL;
    for (size_t i = home(m, id); m->slot[i].id != 0; i = (i + 1) & (m->cap - 1))
        if (m->slot[i].id == id)
            return m->slot[i].p;
    return NULL;
}

/* Remove id; the entries after it in its run move back into the hole
 * when their home allows (backward-shift deletion). */
static void slot_drop(journal_pack_map *m, uint64_t id)
{
    size_t mask = m->cap - 1, i = home(m, id);
    while (m->slot[i].id != 0 && m->slot[i].id != id)
        i = (i + 1) & mask;
    if (m->slot[i].id == 0)
        return;
    m->count--;
    for (size_t j = (i + 1) & mask; m->slot[j].id != 0; j = (j + 1) & mask) {
        size_t h = home(m, m->slot[j].id);
        /* j may move to i when its home is not in (i, j] (cyclically) */
        if ((j > i && (h <= i || h > j)) || (j < i && h <= i && h > j)) {
            m->slot[i] = m->slot[j];
            i = j;
        }
    }
    m->slot[i] = (struct journal_pack_slot){0, NULL};
}

void journal_pack_map_drop(journal_pack_map *m, journal_pack *p)
{
    for (uint32_t i = 0; i < p->n && m->cap; i++)
        slot_drop(m, p->ids[i]);
    if (p->all_prev)
        p->all_prev->all_next = p->all_next;
    else if (m->all == p)
        m->all = p->all_next;
    if (p->all_next)
        p->all_next->all_prev = p->all_prev;
    p->all_prev = p->all_next = NULL;
}

void journal_pack_map_clear(journal_pack_map *m)
{
    for (journal_pack *p = m->all, *next; p != NULL; p = next) {
        next = p->all_next;
        journal_pack_free(p);
    }
    free(m->slot);
    *m = (journal_pack_map){0};
}

/* journal.c's queries spell these numbers out (PK(f), "i<63", "?1-1024") */
_Static_assert(JOURNAL_PACK_MAX == 64 && JOURNAL_PACK_SPAN == 1024, "journal.c's pack queries");
_Static_assert(JOURNAL_PACK_F_ID == 0 && JOURNAL_PACK_F_NAME == 1 &&
               JOURNAL_PACK_F_PAYLOAD == 2 && JOURNAL_PACK_F_STATE == 3 &&
               JOURNAL_PACK_F_ATTEMPTS == 4 && JOURNAL_PACK_F_MAX_ATTEMPTS == 5 &&
               JOURNAL_PACK_F_NOT_BEFORE == 6 && JOURNAL_PACK_F_STARTED == 8 &&
               JOURNAL_PACK_F_FINISHED == 9 && JOURNAL_PACK_F_PREV == 13,
               "journal.c's PK() fields");
