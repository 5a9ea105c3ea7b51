/*
 * tasks_records.c - the task engine's records: the per-name kinds, the
 * items (a task and its record in one), the id hash, the live list, the
 * ring of finished records, watchers, and reading a record for
 * introspection (tasks_record_visit; introspect.c prints it).
 *
 * Owns the "records" part of struct tasks_engine (tasks_internal.h).  rec_mu
 * guards every record field of every item (state, attempts, times,
 * error, result, watchers; delivered and mode are atomics), the id hash, the live list,
 * the ring, finished_total and running_now, and the spare items: small
 * items of finished records, kept (up to TASKS_SPARES_MAX) when evicted
 * so that the next record made reuses one instead of asking malloc,
 * which would otherwise free on the workers what it allocated on the
 * HTTP threads; a spare is taken and filled under the same hold of
 * rec_mu that publishes the new record, so making a record takes one
 * lock.  rec_cv signals progress while the shutdown drains.  kinds_mu
 * serialises inserts into the
 * prepend-only kind list, which readers walk without a lock.  Item ids
 * come from an atomic counter.  Nothing here calls another file of the
 * engine; every state change is told to the live dashboard
 * (events_task_changed, a leaf lock).
 */
#include "tasks_internal.h"

#include "events.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

static const char *const state_names[] = {
    [TASKS_QUEUED] = "queued",       [TASKS_RUNNING] = "running",
    [TASKS_RETRYING] = "retrying",   [TASKS_SUCCEEDED] = "succeeded",
    [TASKS_FAILED] = "failed",       [TASKS_SKIPPED] = "skipped",
    [TASKS_DISCARDED] = "discarded", [TASKS_CANCELLED] = "cancelled",
};

const char *tasks_state_name(tasks_state st)
{
    return (unsigned)st < BGS_COUNT(state_names) ? state_names[st] : "unknown";
}

/* ---- kinds ----------------------------------------------------------------- */

static task_kind *kind_find(tasks_engine *t, const char *name)
{
    for (task_kind *k = atomic_load_explicit(&t->kinds, memory_order_acquire); k; k = k->next)
        if (strcmp(k->name, name) == 0)
            return k;
    return NULL;
}

task_kind *tasks_records_kind(tasks_engine *t, const char *name)
{
    task_kind *k = kind_find(t, name);
    if (k)
        return k;
    pthread_mutex_lock(&t->kinds_mu);
    k = kind_find(t, name);
    if (k == NULL) {
        k = xcalloc(1, sizeof(*k));
        k->name = xstrdup(name);
        k->engine = t;
        k->next = atomic_load_explicit(&t->kinds, memory_order_relaxed);
        atomic_store_explicit(&t->kinds, k, memory_order_release);
    }
    pthread_mutex_unlock(&t->kinds_mu);
    return k;
}

task_kind *tasks_records_adhoc_kind(tasks_engine *t)
{
    task_kind *k = atomic_load(&t->adhoc_kind);
    if (k == NULL) {
        k = tasks_records_kind(t, "adhoc");
        atomic_store(&t->adhoc_kind, k);
    }
    return k;
}

task_kind *tasks_records_kind_of(tasks_engine *t, const plugin_task *def)
{
    task_kind *k = def->kind;
    return k && k->engine == t ? k : tasks_records_kind(t, def->name);
}

void tasks_resolve(tasks_engine *t, plugin_task *defs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        defs[i].kind = tasks_records_kind(t, defs[i].name);
}

/* ---- the id hash (rec_mu held) ------------------------------------------------ */

static void hash_insert_locked(tasks_engine *t, task_item *it)
{
    if (t->hcount + 1 > t->hcap) {
        size_t ncap = t->hcap ? t->hcap * 2 : 1024;
        task_item **nt = xcalloc(ncap, sizeof(*nt));
        for (size_t i = 0; i < t->hcap; i++) {
            task_item *e = t->htab[i];
            while (e) {
                task_item *next = e->hnext;
                size_t b = (size_t)(e->id & (ncap - 1));
                e->hnext = nt[b];
                nt[b] = e;
                e = next;
            }
        }
        free(t->htab);
        t->htab = nt;
        t->hcap = ncap;
    }
    size_t b = (size_t)(it->id & (t->hcap - 1));
    it->hnext = t->htab[b];
    t->htab[b] = it;
    t->hcount++;
}

task_item *tasks_records_find_locked(tasks_engine *t, uint64_t id)
{
    if (t->hcap == 0)
        return NULL;
    for (task_item *e = t->htab[id & (t->hcap - 1)]; e; e = e->hnext)
        if (e->id == id)
            return e;
    return NULL;
}

static void hash_remove_locked(tasks_engine *t, task_item *it)
{
    task_item **pp = &t->htab[it->id & (t->hcap - 1)];
    while (*pp && *pp != it)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = it->hnext;
        t->hcount--;
    }
}

/* ---- request ids --------------------------------------------------------------- */

void tasks_rid_set(task_rid *r, const char *s)
{
    if (s == NULL)
        return;
    size_t n = strlen(s) + 1;
    if (n > 1 && n <= sizeof r->s)
        memcpy(r->s, s, n);
    else
        r->far.heap = xmemdup(s, n);
}

void tasks_rid_copy(task_rid *r, const task_rid *src)
{
    if (src->s[0])
        *r = *src; /* a bgserve id: three words, no strlen */
    else if (src->far.heap)
        r->far.heap = xstrdup(src->far.heap);
}

void tasks_rid_clear(task_rid *r)
{
    if (r->s[0] == '\0')
        free(r->far.heap);
    memset(r, 0, sizeof *r);
}

const char *tasks_rid_str(const task_rid *r)
{
    return r->s[0] ? r->s : r->far.heap;
}

const char *tasks_records_rid(const task_item *it)
{
    return tasks_rid_str(&it->rid);
}

/* ---- items ---------------------------------------------------------------------- */

int tasks_records_payload_inline(const task_item *it)
{
    return it->payload == (const void *)it->inline_data;
}

task_extra *tasks_records_extra(task_item *it)
{
    if (it->x == NULL) {
        tasks_engine *t = it->kind->engine;
        task_extra *x = xcalloc(1, sizeof(*x));
        x->item = it;
        pthread_mutex_lock(&t->rec_mu);
        it->x = x;
        pthread_mutex_unlock(&t->rec_mu);
    }
    return it->x;
}

/* ---- spares: small items kept for reuse (rec_mu) ------------------------------ */

/* What an item let go of owns, to free once rec_mu is unlocked (the
 * slow part, which need not hold up the other threads). */
typedef struct item_parts {
    char *rid;         /* a request id of its own (task_rid.far.heap), or NULL */
    char *error;
    task_extra *x;
    void *payload;     /* a payload of its own (not inline), or NULL */
    task_item *whole;  /* the item itself when it was not kept */
} item_parts;

/* it is out of the index and the lists and nobody's any more: take its
 * parts into *p and keep a small item on the spare list for the next
 * record made (tasks_records_new), or leave it in p->whole; rec_mu held. */
static void retire_locked(tasks_engine *t, task_item *it, item_parts *p)
{
    p->rid = it->rid.s[0] ? NULL : it->rid.far.heap;
    p->error = it->error;
    p->x = it->x;
    p->payload = tasks_records_payload_inline(it) ? NULL : it->payload;
    p->whole = NULL;
    size_t n = atomic_load_explicit(&t->nspares, memory_order_relaxed);
    if (it->len <= TASKS_SMALL_PAYLOAD && n < TASKS_SPARES_MAX) {
        it->wait_next = t->spares;
        t->spares = it;
        atomic_store_explicit(&t->nspares, n + 1, memory_order_relaxed);
    } else {
        p->whole = it;
    }
}

/* rec_mu not held.  Each free is tested first: free(NULL) is still a
 * call, and a record of a brief task usually owns none of these. */
static void parts_free(item_parts *p)
{
    if (p->rid)
        free(p->rid);
    if (p->error)
        free(p->error);
    if (p->x) {
        free(p->x->res_type);
        free(p->x->res_data);
        free(p->x);
    }
    if (p->payload)
        free(p->payload);
    if (p->whole)
        free(p->whole);
}

/* Free it and all it owns (tasks_records_destroy). */
static void item_free(task_item *it)
{
    item_parts p = {.rid = it->rid.s[0] ? NULL : it->rid.far.heap,
                    .error = it->error, .x = it->x, .whole = it,
                    .payload = tasks_records_payload_inline(it) ? NULL : it->payload};
    parts_free(&p);
}

/* Fill a zeroed item for tasks_records_new (see there). */
static void item_fill(task_item *it, const tasks_owner *owner, task_kind *kind,
                      const plugin_task *def, const task_rid *rid, uint32_t mode,
                      const void *payload, size_t len, uint64_t id, uint64_t created_wall)
{
    if (len && len <= TASKS_INLINE_PAYLOAD_MAX) {
        it->payload = it->inline_data;
        memcpy(it->payload, payload, len);
    } else if (len) {
        it->payload = xmemdup(payload, len);
    }
    it->len = len;
    it->id = id;
    it->kind = kind;
    it->def = def;
    it->owner = owner;
    it->owner_number = owner ? owner->number : 0;
    it->max_attempts = def && def->max_attempts ? def->max_attempts : PLUGIN_DEFAULT_MAX_ATTEMPTS;
    atomic_init(&it->cancel, 0);
    atomic_init(&it->delivered, -1);
    atomic_init(&it->mode, (unsigned char)mode);
    if (rid)
        tasks_rid_copy(&it->rid, rid);
    it->created_wall = created_wall;
    it->state = -1;
}

task_item *tasks_records_new(tasks_engine *t, const tasks_owner *owner, task_kind *kind,
                             const plugin_task *def, const task_rid *rid, uint32_t mode,
                             const void *payload, size_t len, uint64_t id)
{
    task_item *it = NULL;
    int locked = 0;

    /* Everything that needs no lock first. */
    if (id == 0)
        id = t->journal ? journal_next_id(t->journal) : atomic_fetch_add(&t->next_id, 1);
    if (owner && owner->retain)
        owner->retain(owner);
    uint64_t created = util_wall_us();
    size_t extra = len <= TASKS_SMALL_PAYLOAD ? TASKS_SMALL_PAYLOAD
                   : len <= TASKS_INLINE_PAYLOAD_MAX ? len : 0;
    /* A small item of an evicted record is taken and filled under the
     * hold of rec_mu that publishes the new one: one lock per record
     * made.  When there is none to reuse (the first records of a run,
     * until the ring is full; nspares is a hint read unlocked), or the
     * payload is larger, a new one is made and filled before locking.
     * (One call of item_fill: the compiler inlines it.) */
    if (len <= TASKS_SMALL_PAYLOAD && atomic_load_explicit(&t->nspares, memory_order_relaxed) > 0) {
        pthread_mutex_lock(&t->rec_mu);
        it = t->spares;
        if (it) {
            t->spares = it->wait_next;
            atomic_store_explicit(&t->nspares,
                                  atomic_load_explicit(&t->nspares, memory_order_relaxed) - 1,
                                  memory_order_relaxed);
            memset(it, 0, sizeof(*it)); /* the payload area is written before it is read */
            locked = 1;
        } else {
            pthread_mutex_unlock(&t->rec_mu); /* the hint was stale */
        }
    }
    if (it == NULL)
        it = xcalloc(1, sizeof(*it) + extra);
    item_fill(it, owner, kind, def, rid, mode, payload, len, id, created);
    if (!locked)
        pthread_mutex_lock(&t->rec_mu);
    hash_insert_locked(t, it);
    it->lprev = t->live_tail;
    it->lnext = NULL;
    if (t->live_tail)
        t->live_tail->lnext = it;
    else
        t->live_head = it;
    t->live_tail = it;
    t->live_count++;
    tasks_records_transition_locked(it, TASKS_QUEUED);
    pthread_mutex_unlock(&t->rec_mu);
    return it;
}

task_item *tasks_records_new_rid(tasks_engine *t, const tasks_owner *owner, task_kind *kind,
                                 const plugin_task *def, const char *request_id, uint32_t mode,
                                 const void *payload, size_t len, uint64_t id)
{
    task_rid rid;
    memset(&rid, 0, sizeof rid);
    tasks_rid_set(&rid, request_id);
    task_item *it = tasks_records_new(t, owner, kind, def, &rid, mode, payload, len, id);
    tasks_rid_clear(&rid);
    return it;
}

/* ---- state (rec_mu held) -------------------------------------------------------- */

void tasks_records_transition_locked(task_item *it, int st)
{
    task_kind *k = it->kind;
    tasks_engine *t = k->engine;
    int old = it->state;

    if (old == TASKS_QUEUED || old == TASKS_RETRYING)
        tasks_kadd_locked(&k->queued, -1);
    else if (old == TASKS_RUNNING) {
        tasks_kadd_locked(&k->running, -1);
        t->running_now--;
    }
    switch (st) {
    case TASKS_QUEUED: tasks_kadd_locked(&k->queued, 1); break;
    case TASKS_RETRYING: tasks_kadd_locked(&k->queued, 1); tasks_kadd_locked(&k->retried, 1); break;
    case TASKS_RUNNING: tasks_kadd_locked(&k->running, 1); t->running_now++; break;
    case TASKS_SUCCEEDED: tasks_kadd_locked(&k->succeeded, 1); break;
    case TASKS_FAILED: tasks_kadd_locked(&k->failed, 1); break;
    case TASKS_SKIPPED: tasks_kadd_locked(&k->skipped, 1); break;
    case TASKS_DISCARDED: tasks_kadd_locked(&k->discarded, 1); break;
    case TASKS_CANCELLED: tasks_kadd_locked(&k->cancelled, 1); break;
    default: break;
    }
    it->state = (int8_t)st;
    if (t->draining)
        pthread_cond_broadcast(&t->rec_cv);
    events_task_changed(it->id); /* the live dashboard; a load when none */
}

void tasks_records_watch_locked(task_item *it, tasks_final_fn cb, void *arg)
{
    task_watch *w = xmalloc(sizeof(*w));
    w->cb = cb;
    w->arg = arg;
    w->next = it->watchers;
    it->watchers = w;
}

/* ---- the ring (rec_mu held) -------------------------------------------------------- */

static void evict_locked(tasks_engine *t, task_item *it)
{
    hash_remove_locked(t, it);
    item_free(it);
}

/* Returns the record pushed out (out of the index already), for the
 * caller to retire (retire_locked). */
static task_item *ring_push_locked(tasks_engine *t, task_item *it)
{
    task_item *out = NULL;
    if (t->ring_cap == 0) {
        hash_remove_locked(t, it);
        return it;
    }
    if (t->ring_len == t->ring_cap) {
        out = t->ring[t->ring_start];
        hash_remove_locked(t, out);
        t->ring[t->ring_start] = it;
        t->ring_start = (t->ring_start + 1) % t->ring_cap;
    } else {
        t->ring[(t->ring_start + t->ring_len) % t->ring_cap] = it;
        t->ring_len++;
    }
    return out;
}

static void live_unlink_locked(tasks_engine *t, task_item *it)
{
    if (it->lprev)
        it->lprev->lnext = it->lnext;
    else
        t->live_head = it->lnext;
    if (it->lnext)
        it->lnext->lprev = it->lprev;
    else
        t->live_tail = it->lprev;
    it->lprev = it->lnext = NULL;
    t->live_count--;
}

void tasks_records_drop(task_item *it)
{
    tasks_engine *t = it->kind->engine;
    item_parts parts;
    pthread_mutex_lock(&t->rec_mu);
    if (t->draining) {
        if (t->ngone == t->capgone) {
            t->capgone = t->capgone ? 2 * t->capgone : 16;
            t->gone = xrealloc(t->gone, t->capgone * sizeof(*t->gone));
        }
        t->gone[t->ngone++] = it->id;
    }
    tasks_records_transition_locked(it, -1); /* out of the gauges, into no counter */
    live_unlink_locked(t, it);
    hash_remove_locked(t, it);
    retire_locked(t, it, &parts);
    pthread_mutex_unlock(&t->rec_mu);
    parts_free(&parts);
}

task_watch *tasks_records_finish(task_item *it, int st, const char *err, uint64_t end_us,
                                 tasks_final *fin, uint64_t *dur, uint32_t *attempts)
{
    tasks_engine *t = it->kind->engine;
    char *err_copy = err ? xstrdup(err) : NULL; /* outside the lock */

    pthread_mutex_lock(&t->rec_mu);
    if (it->state == TASKS_RUNNING) {
        /* The run's end from its start and its length: one clock read
         * fewer per task.  run_once reads the start's wall clock before
         * its monotonic one, so this end is never later than the wall
         * clock at the end, and the next step of a sequence, started
         * after it, never seems to start before it finished. */
        *dur = (end_us ? end_us : util_now_us()) - TASKS_MONO_US(it);
        it->finished_wall = it->started_wall + *dur;
    } else {
        *dur = 0;
        it->finished_wall = util_wall_us();
    }
    tasks_records_transition_locked(it, st);
    if (it->error) /* a retried one's last error */
        free(it->error);
    it->error = err_copy;
    *attempts = it->attempts;
    task_watch *watchers = it->watchers;
    it->watchers = NULL;
    if (watchers && it->x && it->x->has_result) {
        /* The record keeps its result for introspection; the watchers get
         * one copy, which one of them may take over (tasks_final). */
        task_extra *x = it->x;
        fin->has_result = 1;
        fin->result_status = x->res_status;
        fin->result_type = x->res_type ? xstrdup(x->res_type) : NULL;
        fin->result = x->res_len ? xmemdup(x->res_data, x->res_len) : NULL;
        fin->result_len = x->res_len;
    }
    live_unlink_locked(t, it);
    t->finished_total++;
    task_item *evicted = ring_push_locked(t, it); /* it may be evicted itself */
    item_parts parts;
    if (evicted)
        retire_locked(t, evicted, &parts);
    pthread_mutex_unlock(&t->rec_mu);
    if (evicted)
        parts_free(&parts);
    return watchers;
}

/* ---- the engine's life ------------------------------------------------------------ */

void tasks_records_init(tasks_engine *t, size_t keep)
{
    pthread_mutexattr_t a;
    /* Adaptive: taken by HTTP threads and workers for a few hundred
     * nanoseconds per task, so a short spin beats sleeping in the kernel
     * and waking the holder's waiter (bench/README.md). */
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&t->rec_mu, &a);
    pthread_mutexattr_destroy(&a);
    util_cond_init_mono(&t->rec_cv);
    pthread_mutex_init(&t->kinds_mu, NULL);
    atomic_init(&t->next_id, 1);
    atomic_init(&t->kinds, NULL);
    t->ring_cap = keep;
    t->ring = keep ? xcalloc(keep, sizeof(*t->ring)) : NULL;
    atomic_init(&t->adhoc_kind, NULL);
    atomic_init(&t->nspares, 0);
}

void tasks_records_destroy(tasks_engine *t)
{
    for (size_t i = 0; i < t->ring_len; i++)
        evict_locked(t, t->ring[(t->ring_start + i) % t->ring_cap]);
    free(t->ring);
    free(t->htab);
    free(t->gone);
    while (t->spares) {
        task_item *it = t->spares;
        t->spares = it->wait_next;
        free(it);
    }
    task_kind *k = atomic_load(&t->kinds);
    while (k) {
        task_kind *next = k->next;
        free(k->name);
        free(k);
        k = next;
    }
    pthread_cond_destroy(&t->rec_cv);
    pthread_mutex_destroy(&t->rec_mu);
    pthread_mutex_destroy(&t->kinds_mu);
}

/* ---- reading (any thread) ------------------------------------------------------------ */

int tasks_record_visit(tasks_engine *t, uint64_t id, void (*fn)(void *arg, const tasks_record *r),
                       void *arg)
{
    pthread_mutex_lock(&t->rec_mu);
    task_item *it = tasks_records_find_locked(t, id);
    if (it == NULL) {
        pthread_mutex_unlock(&t->rec_mu);
        return BGS_ENOTFOUND;
    }
    tasks_record r = {
        .id = it->id,
        .name = it->kind->name,
        .state = (tasks_state)it->state,
        .attempts = it->attempts,
        .max_attempts = it->max_attempts,
        .created_wall = it->created_wall,
        .started_wall = it->started_wall,
        .finished_wall = it->finished_wall,
        .error = it->error,
        .request_id = tasks_records_rid(it),
        .delivered = atomic_load_explicit(&it->delivered, memory_order_relaxed),
        .mode = atomic_load_explicit(&it->mode, memory_order_relaxed),
        .generation = it->owner_number,
        .payload_len = it->len,
        .adhoc = it->kind == atomic_load(&t->adhoc_kind),
    };
    if (it->x && it->x->has_result) {
        r.has_result = 1;
        r.result_status = it->x->res_status;
        r.result_type = it->x->res_type;
        r.result = it->x->res_data;
        r.result_len = it->x->res_len;
    }
    fn(arg, &r);
    pthread_mutex_unlock(&t->rec_mu);
    return 0;
}

size_t tasks_recent_ids(tasks_engine *t, uint64_t *ids, size_t max)
{
    size_t n = 0, nl = 0;
    pthread_mutex_lock(&t->rec_mu);
    /* Live ones, newest first (the live list is in creation order)... */
    for (task_item *it = t->live_tail; it && nl < max; it = it->lprev)
        ids[nl++] = it->id;
    /* ...then merged with the ring's, newest first: ids grow with time. */
    uint64_t *live_ids = nl ? xmemdup(ids, nl * sizeof *ids) : NULL;
    size_t li = 0, ri = 0;
    while (n < max && (li < nl || ri < t->ring_len)) {
        uint64_t r = ri < t->ring_len
                         ? t->ring[(t->ring_start + t->ring_len - 1 - ri) % t->ring_cap]->id
                         : 0;
        if (li < nl && live_ids[li] > r) {
            ids[n++] = live_ids[li++];
        } else {
            ids[n++] = r;
            ri++;
        }
    }
    pthread_mutex_unlock(&t->rec_mu);
    free(live_ids);
    return n;
}

int tasks_watch(tasks_engine *t, uint64_t id, tasks_final_fn cb, void *arg)
{
    int rc;
    pthread_mutex_lock(&t->rec_mu);
    task_item *it = tasks_records_find_locked(t, id);
    if (it == NULL)
        rc = BGS_ENOTFOUND;
    else if (tasks_is_final(it->state))
        rc = 1;
    else {
        tasks_records_watch_locked(it, cb, arg);
        rc = 0;
    }
    pthread_mutex_unlock(&t->rec_mu);
    return rc;
}

void tasks_note_delivery(tasks_engine *t, uint64_t id, int delivered)
{
    pthread_mutex_lock(&t->rec_mu);
    task_item *it = tasks_records_find_locked(t, id);
    if (it)
        atomic_store_explicit(&it->delivered, delivered ? 1 : 0, memory_order_relaxed);
    pthread_mutex_unlock(&t->rec_mu);
}

void tasks_gauges(void *arg, uint64_t *queued, uint64_t *running)
{
    tasks_engine *t = arg;
    uint64_t q = 0, r = 0;
    for (task_kind *k = t ? atomic_load_explicit(&t->kinds, memory_order_acquire) : NULL; k;
         k = k->next) {
        q += atomic_load_explicit(&k->queued, memory_order_relaxed);
        r += atomic_load_explicit(&k->running, memory_order_relaxed);
    }
    *queued = q;
    *running = r;
}
