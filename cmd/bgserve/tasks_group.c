/*
 * tasks_group.c - the tasks of one response (docs/tasks.md, "One group
 * per response"): made when the route or the handler attaches the first
 * (the route's first, then the handler's: one order, one mode), handed to
 * the workers when the response completed (submit); a failing handler
 * drops the attached ones.  Tasks queued at once for the response
 * (tasks_group_enqueue) run straight away and are only remembered by id,
 * so that the group lists them and records their delivery at submit.
 *
 * A group is owned by the HTTP thread serving its request and needs no
 * lock; its items are reserved and recorded at attach (tasks_records.c,
 * tasks_runs.c), so a full queue answers before the handler's side
 * effects are sent, and a discarded task leaves a record.  A group of a
 * response lives in the response (tasks_group_init: no allocation, and
 * the response's reference to its generation covers the owner); one of
 * tasks_group_new is allocated and holds a reference to its owner until
 * it is submitted or discarded.
 */
#include "tasks_internal.h"

#include "queue_redis.h"
#include "util.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

struct tasks_group {
    tasks_engine *engine;
    const tasks_owner *owner;    /* retained, unless in a room */
    task_rid rid;                /* copied into each task */
    uint32_t mode;
    int in_room;                 /* tasks_group_init: not ours to free */
    task_item *head, *tail;
    size_t count;                /* attached */
    uint64_t *queued;            /* ids queued at once */
    size_t nqueued, cap_queued;
};

static_assert(sizeof(struct tasks_group) <= sizeof(tasks_group_room),
              "TASKS_GROUP_ROOM (tasks.h) is too small for struct tasks_group");

static void group_init(tasks_group *g, tasks_engine *t, const tasks_owner *owner,
                       const char *request_id, uint32_t mode)
{
    memset(g, 0, sizeof *g);
    g->engine = t;
    g->owner = owner;
    tasks_rid_set(&g->rid, request_id);
    g->mode = mode == BGS_CONCURRENT ? BGS_CONCURRENT : BGS_SEQUENTIAL;
}

tasks_group *tasks_group_new(tasks_engine *t, const tasks_owner *owner, const char *request_id,
                             uint32_t mode)
{
    tasks_group *g = xmalloc(sizeof(*g));
    group_init(g, t, owner, request_id, mode);
    if (owner && owner->retain)
        owner->retain(owner);
    return g;
}

tasks_group *tasks_group_init(tasks_group_room *room, tasks_engine *t, const tasks_owner *owner,
                              const char *request_id, uint32_t mode)
{
    tasks_group *g = (tasks_group *)(void *)room;
    group_init(g, t, owner, request_id, mode);
    g->in_room = 1;
    return g;
}

int tasks_group_set_mode(tasks_group *g, uint32_t mode)
{
    if (g == NULL || (mode != BGS_SEQUENTIAL && mode != BGS_CONCURRENT))
        return BGS_EINVAL;
    g->mode = mode;
    return 0;
}

static void group_append(tasks_group *g, task_item *it, uint64_t *id_out)
{
    if (g->tail)
        g->tail->group_next = it;
    else
        g->head = it;
    g->tail = it;
    g->count++;
    if (id_out)
        *id_out = it->id;
}

int tasks_group_add(tasks_group *g, const plugin_task *def, const void *payload,
                    size_t len, uint64_t *id_out)
{
    if (g == NULL || (payload == NULL && len != 0))
        return BGS_EINVAL;
    tasks_engine *t = g->engine;
    int rc = tasks_runs_admit(t, def, 0);
    if (rc != 0)
        return rc;
    task_item *it = tasks_records_new(t, g->owner, tasks_records_kind_of(t, def), def,
                                      &g->rid, g->mode, payload, len, 0);
    group_append(g, it, id_out);
    return 0;
}

int tasks_group_add_fn(tasks_group *g, bgs_adhoc_fn fn, void *arg,
                       bgs_free_fn free_fn, uint64_t *id_out)
{
    if (g == NULL || fn == NULL)
        return BGS_EINVAL;
    tasks_engine *t = g->engine;
    int rc = tasks_runs_admit(t, NULL, 1);
    if (rc != 0)
        return rc;
    task_item *it = tasks_records_new(t, g->owner, tasks_records_adhoc_kind(t), NULL,
                                      &g->rid, g->mode, NULL, 0, 0);
    it->afn = fn;
    it->arg = arg;
    it->free_fn = free_fn;
    group_append(g, it, id_out);
    return 0;
}

int tasks_group_enqueue(tasks_group *g, const plugin_task *def, const void *payload, size_t len,
                        tasks_final_fn cb, void *arg, uint64_t *id_out, durable_gate *gate)
{
    uint64_t id;
    if (g == NULL)
        return BGS_EINVAL;
    int rc = tasks_enqueue_gated(g->engine, g->owner, tasks_rid_str(&g->rid), def, payload,
                                 len, cb, arg, &id, gate);
    if (rc != 0)
        return rc;
    if (g->nqueued == g->cap_queued) {
        g->cap_queued = g->cap_queued ? 2 * g->cap_queued : 4;
        g->queued = xrealloc(g->queued, g->cap_queued * sizeof(*g->queued));
    }
    g->queued[g->nqueued++] = id;
    if (id_out)
        *id_out = id;
    return 0;
}

size_t tasks_group_count(const tasks_group *g)
{
    return g ? g->count + g->nqueued : 0;
}

size_t tasks_group_ids(const tasks_group *g, char *buf, size_t cap)
{
    size_t need = 0;

    if (cap)
        buf[0] = '\0';
    const task_item *it = g ? g->head : NULL;
    for (size_t q = 0; it || (g && q < g->nqueued); it = it ? it->group_next : NULL) {
        char one[1 + UTIL_U64_DEC_MAX];
        size_t n = need ? 1 : 0;
        uint64_t id = it ? it->id : g->queued[q++];
        if (need + n + UTIL_U64_DEC_MAX <= cap) {
            /* Room for any id: written in place, with its NUL. */
            if (n)
                buf[need] = ',';
            need += n + util_u64_dec(buf + need + n, id);
            continue;
        }
        one[0] = ',';
        n += util_u64_dec(one + n, id);
        /* Only whole ids are written: a truncated list never shows a
         * wrong id. */
        if (need + n < cap && (need == 0 || buf[need - 1] != '\0'))
            memcpy(buf + need, one, n + 1);
        else if (need < cap)
            cap = need; /* stop writing; buf already ends with NUL */
        need += n;
    }
    return need;
}

static void group_free(tasks_group *g)
{
    free(g->queued);
    tasks_rid_clear(&g->rid);
    if (g->in_room)
        return;
    if (g->owner && g->owner->release)
        g->owner->release(g->owner);
    free(g);
}

/* A sequence Redis can keep whole: every step named, none added only
 * once the response is delivered, none written yet. */
static int seq_whole(const tasks_group *g)
{
    if (g->mode != BGS_SEQUENTIAL || g->head == NULL || g->head->group_next == NULL)
        return 0;
    for (const task_item *it = g->head; it; it = it->group_next)
        if (it->def == NULL || (it->def->flags & BGS_TASK_DELIVERED_ONLY) ||
            (it->jflags & TASKS_JF_WRITTEN))
            return 0;
    return 1;
}

/* --broker: the tasks the response's 2xx promises are in Redis: those of
 * a concurrent group; a whole sequence of named tasks (the first in the
 * stream, the rest kept with it for the workers to move on: the server
 * only links each step as it comes due, to learn its end); of another
 * sequence, the first (the rest are added as their predecessors
 * finish); except ad hoc ones (memory only) and BGS_TASK_DELIVERED_ONLY
 * ones (added once the response is delivered, so that an undelivered one
 * never runs).  Synchronous: one round trip. */
static int persist_broker(tasks_group *g, durable_gate *gate)
{
    size_t n = 0, cap = 0;
    queue_node **nodes = NULL;
    int whole = seq_whole(g);
    for (task_item *it = g->head; it; it = it->group_next) {
        if (it->def != NULL && !(it->jflags & TASKS_JF_WRITTEN) &&
            !(it->def->flags & BGS_TASK_DELIVERED_ONLY)) {
            if (n == cap) {
                cap = cap ? 2 * cap : 8;
                nodes = xrealloc(nodes, cap * sizeof(*nodes));
            }
            nodes[n++] = &it->qnode;
        }
        if (g->mode == BGS_SEQUENTIAL && !whole)
            break;
    }
    int rc = 0;
    if (n > 0) {
        char why[256];
        durable_expect(gate);
        rc = queue_redis_write(g->engine->q, nodes, n, whole, why, sizeof why);
        if (rc == BGS_ESHUTDOWN) {
            durable_unexpect(gate);
        } else {
            durable_done(gate, rc, why);
            for (size_t i = 0; rc == 0 && i < n; i++)
                UTIL_CONTAINER_OF(nodes[i], task_item, qnode)->jflags |= TASKS_JF_WRITTEN;
            rc = 0; /* told through the gate */
        }
    }
    free(nodes);
    return rc;
}

int tasks_group_persist(tasks_group *g, durable_gate *gate)
{
    if (g == NULL)
        return 0;
    if (g->engine->broker && !g->engine->journal)
        return persist_broker(g, gate);
    if (g->engine->journal == NULL)
        return 0;
    size_t n = 0, cap = 0;
    journal_task *jt = NULL;
    uint64_t prev = 0; /* a sequence's order survives a crash: each names the one before */
    for (task_item *it = g->head; it; it = it->group_next) {
        if (it->def == NULL)
            continue; /* ad hoc: memory only */
        uint64_t after = g->mode == BGS_SEQUENTIAL ? prev : 0;
        prev = it->id;
        if (it->jflags & TASKS_JF_WRITTEN)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            jt = xrealloc(jt, cap * sizeof(*jt));
        }
        jt[n++] = (journal_task){.id = it->id, .name = it->kind->name, .payload = it->payload,
                                 .payload_len = it->payload ? it->len : 0,
                                 .max_attempts = it->max_attempts,
                                 .request_id = tasks_records_rid(it), .prev_id = after};
    }
    int rc = 0;
    if (n > 0) {
        durable_expect(gate);
        rc = journal_add(g->engine->journal, jt, n, durable_done, gate);
        if (rc != 0) {
            durable_unexpect(gate);
            rc = rc == JOURNAL_ECLOSED ? BGS_ESHUTDOWN : BGS_EINVAL;
        } else {
            for (task_item *it = g->head; it; it = it->group_next)
                if (it->def != NULL)
                    it->jflags |= TASKS_JF_WRITTEN;
        }
    }
    free(jt);
    return rc;
}

void tasks_group_submit(tasks_group *g, int delivered)
{
    if (g == NULL)
        return;
    tasks_engine *t = g->engine;
    for (size_t i = 0; i < g->nqueued; i++)
        tasks_note_delivery(t, g->queued[i], delivered);
    /* Ours until dispatched: no lock (the record reads them as atomics). */
    for (task_item *it = g->head; it; it = it->group_next) {
        atomic_store_explicit(&it->delivered, delivered ? 1 : 0, memory_order_relaxed);
        atomic_store_explicit(&it->mode, (unsigned char)g->mode, memory_order_relaxed);
    }
    if (g->mode == BGS_CONCURRENT) {
        /* Every task that may run goes to the queue in one batch: one
         * lock and at most one wake-up for the whole response; then the
         * brief ones run here (tasks_runs.c, "Inline runs"), once the
         * others are on their way. */
        task_item *batch[16];
        task_item *here = NULL, **here_tail = &here;
        size_t n = 0;
        task_item *it = g->head;
        while (it) {
            task_item *next = it->group_next;
            it->group_next = NULL;
            if (tasks_runs_skip_undelivered(it)) {
                tasks_runs_finalize(it, TASKS_SKIPPED, "response was not fully delivered");
            } else if (tasks_runs_inline_ok(it)) {
                *here_tail = it;
                here_tail = &it->group_next;
            } else {
                batch[n++] = it;
            }
            if (n == BGS_COUNT(batch) || (next == NULL && n > 0)) {
                tasks_runs_dispatch_batch(batch, n);
                n = 0;
            }
            it = next;
        }
        group_free(g);
        while (here) {
            it = here;
            here = it->group_next;
            it->group_next = NULL;
            tasks_runs_inline(it);
        }
        return;
    }
    task_item *head = g->head;
    group_free(g);
    if (head && !tasks_runs_skip_undelivered(head) && tasks_runs_inline_ok(head))
        tasks_runs_inline(head); /* the rest of the sequence goes on from its end */
    else if (head)
        tasks_runs_seq_start(head);
}

void tasks_group_drop(tasks_group *g, const char *reason)
{
    if (g == NULL)
        return;
    task_item *it = g->head;
    g->head = g->tail = NULL;
    g->count = 0;
    while (it) {
        task_item *next = it->group_next;
        it->group_next = NULL;
        tasks_runs_finalize(it, TASKS_DISCARDED, reason ? reason : "discarded");
        it = next;
    }
}

void tasks_group_discard(tasks_group *g, const char *reason)
{
    if (g == NULL)
        return;
    tasks_group_drop(g, reason);
    group_free(g);
}
