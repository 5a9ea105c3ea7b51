/*
 * handle.c - the handle table: slots with serial numbers, so a handle the
 * plugin kept past its life is refused instead of reaching freed memory.
 *
 * A handle is a uintptr_t, never a real address:
 *     bits 63..32  the slot's serial when the handle was opened (odd)
 *     bits 31..4   the slot index
 *     bits  3..1   the kind (HANDLE_*)
 *     bit   0      1, so the value is never a valid aligned pointer
 * Serials are odd while a slot is open and even while it is free; open and
 * close each add one.  A 32-bit serial repeats after 2^31 reuses of one
 * slot, far beyond what a kept handle meets in practice.
 *
 * Slots live in chunks that are never freed (the chunk pointers only go
 * from NULL to set), so reading a slot is always safe.  Every slot field
 * is atomic, and a lookup reads them like a seqlock: serial, fields, then
 * serial again; a lookup racing with a reuse of the slot sees the serial
 * change and refuses.  The free list and chunk growth are guarded by
 * `mu`; lookups take no lock.
 *
 * Each thread keeps a few free slots of its own (tl_free, no lock): a
 * closed slot goes there while it has room, and an open takes from there
 * first.  Thread-bound handles are opened and closed on one thread, so
 * a request's and a task's handles never touch `mu`, whose cache line
 * would otherwise travel between the HTTP threads and the workers a few
 * times per request (bench/README.md, section 12).  A thread's slots go
 * back to the shared list when it exits (tl_key's destructor).
 */
#include "handle.h"

#include "util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

_Static_assert(sizeof(uintptr_t) >= 8, "handles need 64-bit pointers");

#define CHUNK_SLOTS 1024u
#define MAX_CHUNKS 16384u /* 16M slots: (1 << 28) indexes fit, this is less */

typedef struct slot {
    atomic_uint serial;       /* odd: open */
    atomic_int kind;
    atomic_uintptr_t obj;
    atomic_uintptr_t owner;   /* thread token, 0 when any thread may use it */
    uint32_t next_free;       /* mu; index + 1, 0 ends the list */
} slot;

/* Free slots a thread keeps for itself: enough for a request, its
 * response and a few deferred handles, or a task and what it opens. */
#define TL_FREE_MAX 8u

static _Atomic(slot *) chunks[MAX_CHUNKS];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint32_t free_head;    /* mu; index + 1 of the first free slot */
static uint32_t nslots;       /* mu; slots made so far */

/* This thread's free slots (indexes); only the thread itself. */
typedef struct tl_slots {
    uint32_t n;
    uint32_t idx[TL_FREE_MAX];
} tl_slots;
static _Thread_local tl_slots tl_free;
static _Thread_local int tl_registered; /* tl_key is set for this thread */
static pthread_key_t tl_key;  /* its value: the thread's &tl_free */
static pthread_once_t tl_once = PTHREAD_ONCE_INIT;

/* A value distinct for every live thread: the address of a thread-local. */
static _Thread_local char token_byte;
static uintptr_t thread_token(void)
{
    return (uintptr_t)&token_byte;
}

static slot *slot_at(uint32_t idx)
{
    if (idx / CHUNK_SLOTS >= MAX_CHUNKS)
        return NULL;
    slot *c = atomic_load_explicit(&chunks[idx / CHUNK_SLOTS], memory_order_acquire);
    return c ? &c[idx % CHUNK_SLOTS] : NULL;
}

/* A thread exits: its free slots go back to the shared list. */
static void tl_release(void *arg)
{
    tl_slots *f = arg;
    pthread_mutex_lock(&mu);
    while (f->n > 0) {
        uint32_t idx = f->idx[--f->n];
        slot_at(idx)->next_free = free_head;
        free_head = idx + 1;
    }
    pthread_mutex_unlock(&mu);
}

static void tl_key_make(void)
{
    if (pthread_key_create(&tl_key, tl_release) != 0) {
        fprintf(stderr, "bgserve: fatal: cannot create a thread key for the handle table\n");
        abort();
    }
}

static uint32_t take_slot(void)
{
    if (tl_free.n > 0)
        return tl_free.idx[--tl_free.n];
    pthread_mutex_lock(&mu);
    uint32_t idx;
    if (free_head) {
        idx = free_head - 1;
        free_head = slot_at(idx)->next_free;
    } else {
        if (nslots / CHUNK_SLOTS >= MAX_CHUNKS) {
            fprintf(stderr, "bgserve: fatal: more than %u live plugin handles\n",
                    MAX_CHUNKS * CHUNK_SLOTS);
            abort();
        }
        if (nslots % CHUNK_SLOTS == 0)
            atomic_store_explicit(&chunks[nslots / CHUNK_SLOTS],
                                  xcalloc(CHUNK_SLOTS, sizeof(slot)), memory_order_release);
        idx = nslots++;
    }
    pthread_mutex_unlock(&mu);
    return idx;
}

void *handle_open(int kind, void *obj, int flags)
{
    uint32_t idx = take_slot();
    slot *s = slot_at(idx);
    atomic_store_explicit(&s->kind, kind, memory_order_relaxed);
    atomic_store_explicit(&s->obj, (uintptr_t)obj, memory_order_relaxed);
    atomic_store_explicit(&s->owner, (flags & HANDLE_THREAD_BOUND) ? thread_token() : 0,
                          memory_order_relaxed);
    unsigned serial = atomic_load_explicit(&s->serial, memory_order_relaxed) + 1u;
    atomic_store_explicit(&s->serial, serial, memory_order_release);
    return (void *)(((uintptr_t)serial << 32) | ((uintptr_t)idx << 4) |
                    ((uintptr_t)kind << 1) | 1u);
}

void handle_close(void *h)
{
    uintptr_t v = (uintptr_t)h;
    if (v == 0)
        return;
    uint32_t idx = (uint32_t)((v >> 4) & 0xfffffffu);
    slot *s = slot_at(idx);
    if (s == NULL || atomic_load_explicit(&s->serial, memory_order_relaxed) != (unsigned)(v >> 32))
        return; /* closed already: nothing of ours to free */
    atomic_store_explicit(&s->obj, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->serial, 1u, memory_order_release);
    if (tl_free.n < TL_FREE_MAX) {
        if (!tl_registered) {
            /* This thread's first kept slot: have them handed back at exit. */
            pthread_once(&tl_once, tl_key_make);
            pthread_setspecific(tl_key, &tl_free);
            tl_registered = 1;
        }
        tl_free.idx[tl_free.n++] = idx;
        return;
    }
    pthread_mutex_lock(&mu);
    s->next_free = free_head;
    free_head = idx + 1;
    pthread_mutex_unlock(&mu);
}

void *handle_get(int kind, const void *h, int *why)
{
    uintptr_t v = (uintptr_t)h;
    int dummy;
    if (why == NULL)
        why = &dummy;
    if (v == 0) {
        *why = HANDLE_NULL;
        return NULL;
    }
    *why = HANDLE_WRONG_KIND;
    if ((v & 1u) == 0 || (int)((v >> 1) & 7u) != kind)
        return NULL;
    unsigned serial = (unsigned)(v >> 32);
    slot *s = slot_at((uint32_t)((v >> 4) & 0xfffffffu));
    if (s == NULL || (serial & 1u) == 0)
        return NULL;
    *why = HANDLE_ENDED;
    if (atomic_load_explicit(&s->serial, memory_order_acquire) != serial)
        return NULL;
    int k = atomic_load_explicit(&s->kind, memory_order_relaxed);
    uintptr_t obj = atomic_load_explicit(&s->obj, memory_order_relaxed);
    uintptr_t owner = atomic_load_explicit(&s->owner, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&s->serial, memory_order_relaxed) != serial || obj == 0)
        return NULL;
    if (k != kind) {
        *why = HANDLE_WRONG_KIND;
        return NULL;
    }
    if (owner != 0 && owner != thread_token()) {
        *why = HANDLE_OTHER_THREAD;
        return NULL;
    }
    *why = HANDLE_OK;
    return (void *)obj;
}

const char *handle_why(int why)
{
    switch (why) {
    case HANDLE_NULL: return "the handle is NULL";
    case HANDLE_WRONG_KIND: return "not a handle of this kind";
    case HANDLE_ENDED: return "the handle's life has ended";
    case HANDLE_OTHER_THREAD: return "the handle belongs to another thread";
    default: return "valid";
    }
}

const char *handle_kind_name(int kind)
{
    switch (kind) {
    case HANDLE_REQ: return "request";
    case HANDLE_RES: return "response";
    case HANDLE_TASK: return "task context";
    case HANDLE_DEFERRED: return "deferred response";
    case HANDLE_APP: return "app";
    default: return "handle";
    }
}
