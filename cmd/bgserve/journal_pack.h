/*
 * journal_pack.h - the packed form of an add in the journal (schema
 * version 4): the tasks a response accepted together, in one row of the
 * `packs` table instead of one row each in `tasks`.
 *
 * A pack row holds two blobs.  `tasks` (written once, at the add): each
 * task's id, name, payload, attempts limit, not-before time and sequence
 * link.  `ends` (rewritten when its tasks end): each task's status in the
 * pack (queued, succeeded here, or moved to a `tasks` row of its own),
 * attempts, start and finish times.  Both are little-endian with fixed
 * widths, so any reader decodes them the same way; every decode checks
 * its bounds and reports a malformed blob rather than read past it.
 *
 * journal_pack_register adds the SQL function bgs_pack(tasks, ends, i, field),
 * through which the journal's queries read task i of a pack as if it
 * were a row of `tasks` (the fields are the JOURNAL_PACK_F_* numbers).
 *
 * The map (writer thread only) finds the live pack of a task id.
 */
#ifndef BGSERVE_JOURNAL_PACK_H
#define BGSERVE_JOURNAL_PACK_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#define JOURNAL_PACK_MAX 64     /* tasks in a pack at most */
#define JOURNAL_PACK_SPAN 1024  /* last id - first id, at most (lookups search that far back) */
#define JOURNAL_PACK_END_BYTES 21

enum { JOURNAL_PACK_QUEUED = 0, JOURNAL_PACK_SUCCEEDED = 1, JOURNAL_PACK_MOVED = 2 };

/* bgs_pack()'s fields: the positions of the columns they stand for in
 * journal.c's COLS, and 13 for the sequence link. */
enum {
    JOURNAL_PACK_F_ID = 0, JOURNAL_PACK_F_NAME = 1, JOURNAL_PACK_F_PAYLOAD = 2,
    JOURNAL_PACK_F_STATE = 3,
    JOURNAL_PACK_F_ATTEMPTS = 4, JOURNAL_PACK_F_MAX_ATTEMPTS = 5, JOURNAL_PACK_F_NOT_BEFORE = 6,
    JOURNAL_PACK_F_STARTED = 8, JOURNAL_PACK_F_FINISHED = 9, JOURNAL_PACK_F_PREV = 13
};

typedef struct journal_pack_task {
    uint64_t id;
    const char *name;        /* NUL-terminated (in the blob when decoded) */
    const void *payload;
    size_t len;
    uint32_t max_attempts;
    uint64_t not_before_us;
    uint64_t prev_id;
} journal_pack_task;

typedef struct journal_pack_end {
    int status;              /* JOURNAL_PACK_QUEUED, _SUCCEEDED or _MOVED */
    uint32_t attempts;
    uint64_t started_us, finished_us;
} journal_pack_end;

/* The tasks blob of n tasks (1..JOURNAL_PACK_MAX): its size, then the blob
 * written into out (that many bytes). */
size_t journal_pack_tasks_size(const journal_pack_task *t, size_t n);
void journal_pack_tasks_encode(const journal_pack_task *t, size_t n, unsigned char *out);
/* The count of tasks in a blob, 0 when it is malformed. */
size_t journal_pack_tasks_count(const unsigned char *blob, size_t len);
/* Task i of a blob (pointers into it): 0, or -1 when i is out of range
 * or the blob is malformed. */
int journal_pack_tasks_get(const unsigned char *blob, size_t len, size_t i, journal_pack_task *out);

/* End i of an ends blob of n tasks: a NULL or empty blob is every task
 * queued.  0, or -1 when the blob is malformed (not n entries) or i >= n. */
int journal_pack_end_get(const unsigned char *ends, size_t len, size_t n, size_t i,
                         journal_pack_end *out);
/* Write end i into an ends blob of at least (i + 1) entries. */
void journal_pack_end_set(unsigned char *ends, size_t i, const journal_pack_end *e);

/* bgs_pack() on db: SQLITE_OK or an SQLite code. */
int journal_pack_register(sqlite3 *db);

/* A live pack, as the writer keeps it. */
typedef struct journal_pack {
    uint64_t first;          /* the row's key: its smallest id */
    uint32_t n, nlive;       /* tasks, and those still queued in the pack */
    int dirty;               /* its ends changed in the open transaction */
    struct journal_pack *dirty_next;
    struct journal_pack *all_prev, *all_next; /* the map's list of its packs */
    uint64_t finished_us;    /* the latest success in it */
    unsigned char *ends;     /* n * JOURNAL_PACK_END_BYTES, after ids[] */
    uint64_t ids[];          /* its tasks' ids, in blob order */
} journal_pack;

/* A pack of the n tasks t (their ids, in blob order), all queued. */
journal_pack *journal_pack_new(uint64_t first, const journal_pack_task *t, uint32_t n);
void journal_pack_free(journal_pack *p);
/* The index of id in p, or -1. */
int journal_pack_index(const journal_pack *p, uint64_t id);

/* id -> pack, for every task of every pack in it. */
typedef struct journal_pack_map {
    struct journal_pack_slot *slot;
    size_t cap, count;       /* slots (a power of two, or 0), and ids in it */
    journal_pack *all;       /* every pack in it */
} journal_pack_map;

/* Add p and all of its ids. */
void journal_pack_map_put(journal_pack_map *m, journal_pack *p);
journal_pack *journal_pack_map_find(const journal_pack_map *m, uint64_t id);
/* Remove all of p's ids and p from the map; p is not freed. */
void journal_pack_map_drop(journal_pack_map *m, journal_pack *p);
/* Free every pack in the map and the map's table. */
void journal_pack_map_clear(journal_pack_map *m);

#endif
