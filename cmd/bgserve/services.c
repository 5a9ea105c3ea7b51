/*
 * services.c - the registry of named services a plugin registers in its
 * start hook, and the scopes that hold per-request / per-task instances.
 *
 * Registry (struct services, one per generation):
 *   - entries: written by services_register, which only runs while the
 *     start hook runs (one thread, before lookups begin), and read by
 *     lookups from any thread.  Both take `mu`, so even a misplaced late
 *     registration cannot race.
 *   - singleton state (entry->state, ->instance, ->creator) and the
 *     `created` order list: guarded by `mu`.  The create call itself runs
 *     with `mu` released; other threads asking for the same singleton
 *     meanwhile wait on `cond` in a while loop, so it is created exactly
 *     once and a slow create does not block lookups of other services.
 *     A create that returns NULL leaves the entry uncreated (the next
 *     lookup tries again).  A create that looks up its own service (on
 *     the creating thread) is reported instead of deadlocking.
 *   - services_free runs after the last lookup (the generation retires),
 *     destroying singletons in reverse order of creation.
 *
 * Scopes (struct services_scope): owned by the one thread running the
 * request or task, so they have no lock.  They keep a copy of each
 * instance's destroy function and arg, so services_scope_end does not
 * touch the registry.
 */
#include "services.h"

#include "log.h"
#include "util.h"

#include "crash.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { S_NONE, S_CREATING, S_READY };

typedef struct entry {
    char *name;
    uint32_t lifetime;
    bgs_service_create_fn create;
    bgs_service_destroy_fn destroy;
    void *arg;
    /* Singletons only; guarded by services.mu. */
    int state;
    void *instance;
    pthread_t creator; /* valid while state == S_CREATING */
    char hook[96];     /* "service 'NAME'": names it in a crash report */
    uint64_t gen;      /* the owning generation, for crash reports */
    const char *plugin;
} entry;

struct services {
    pthread_mutex_t mu;
    pthread_cond_t cond;  /* a singleton left S_CREATING */
    entry **v;            /* registered entries; guarded by mu */
    size_t n, cap;
    entry **created;      /* singletons in creation order; guarded by mu */
    size_t ncreated;
    uint64_t gen;         /* set once by services_set_origin, before use */
    const char *plugin;
};

typedef struct scope_item {
    const entry *e;       /* registered entries outlive every scope: a
                             scope belongs to a request or task run, which
                             holds the generation owning the registry */
    void *instance;
    bgs_service_destroy_fn destroy;
    void *arg;
} scope_item;

struct services_scope {
    scope_item *items;    /* in creation order */
    size_t n, cap;
};

/* ------------------------------------------------------------------ */
/* Calls into plugin code, named for crash reports                     */
/* ------------------------------------------------------------------ */

static void *call_create(const entry *e, bgs_service_create_fn create, void *arg)
{
    crash_frame cf;
    crash_enter_hook(&cf, e->hook, e->gen, e->plugin);
    void *inst = create(arg);
    crash_leave(&cf);
    return inst;
}

static void call_destroy(const entry *e, bgs_service_destroy_fn destroy, void *inst, void *arg)
{
    crash_frame cf;
    crash_enter_hook(&cf, e->hook, e->gen, e->plugin);
    destroy(inst, arg);
    crash_leave(&cf);
}

void services_set_origin(services *s, uint64_t gen, const char *plugin)
{
    s->gen = gen;
    s->plugin = plugin;
}

/* ------------------------------------------------------------------ */
/* Registry                                                            */
/* ------------------------------------------------------------------ */

services *services_new(void)
{
    services *s = xcalloc(1, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    return s;
}

void services_free(services *s)
{
    if (s == NULL)
        return;
    for (size_t i = s->ncreated; i-- > 0;) {
        entry *e = s->created[i];
        if (e->destroy != NULL)
            call_destroy(e, e->destroy, e->instance, e->arg);
    }
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i]->name);
        free(s->v[i]);
    }
    free(s->v);
    free(s->created);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* Called with s->mu held. */
static entry *find(services *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i]->name, name) == 0)
            return s->v[i];
    return NULL;
}

int services_register(services *s, const char *name, uint32_t lifetime,
                      bgs_service_create_fn create,
                      bgs_service_destroy_fn destroy, void *arg,
                      char *err, size_t errlen)
{
    int rc = 0;
    char dummy[1];

    if (err == NULL) {
        err = dummy;
        errlen = sizeof dummy;
    }
    if (name == NULL || name[0] == '\0') {
        snprintf(err, errlen, "a service needs a non-empty name");
        return BGS_EINVAL;
    }
    if (create == NULL) {
        snprintf(err, errlen, "service '%s' has no create function; pass one", name);
        return BGS_EINVAL;
    }
    if (lifetime != BGS_SINGLETON && lifetime != BGS_SCOPED &&
        lifetime != BGS_TRANSIENT) {
        snprintf(err, errlen, "service '%s' has unknown lifetime %u; use "
                 "BGS_SINGLETON, BGS_SCOPED or BGS_TRANSIENT", name, (unsigned)lifetime);
        return BGS_EINVAL;
    }

    pthread_mutex_lock(&s->mu);
    if (find(s, name) != NULL) {
        rc = BGS_EINVAL;
        goto out;
    }
    entry *e = xcalloc(1, sizeof(*e));
    e->name = xstrdup(name);
    e->lifetime = lifetime;
    e->create = create;
    e->destroy = destroy;
    snprintf(e->hook, sizeof(e->hook), "service '%.64s'", name);
    e->gen = s->gen;
    e->plugin = s->plugin;
    e->arg = arg;
    e->state = S_NONE;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
        s->created = xrealloc(s->created, s->cap * sizeof(*s->created));
    }
    s->v[s->n++] = e;
out:
    pthread_mutex_unlock(&s->mu);
    if (rc != 0)
        snprintf(err, errlen, "service '%s' is already registered; each "
                 "name can be registered once", name);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Lookups                                                             */
/* ------------------------------------------------------------------ */

static void *get_singleton(services *s, entry *e, char *err, size_t errlen)
{
    void *inst = NULL;

    /* s->mu is held on entry and on return. */
    while (e->state == S_CREATING) {
        if (pthread_equal(e->creator, pthread_self())) {
            snprintf(err, errlen, "service '%s' was looked up while it was "
                     "being created (its create function depends on "
                     "itself); break the cycle", e->name);
            return NULL;
        }
        pthread_cond_wait(&s->cond, &s->mu);
    }
    if (e->state == S_READY)
        return e->instance;

    e->state = S_CREATING;
    e->creator = pthread_self();
    pthread_mutex_unlock(&s->mu);
    inst = call_create(e, e->create, e->arg);
    pthread_mutex_lock(&s->mu);
    if (inst != NULL) {
        e->instance = inst;
        e->state = S_READY;
        s->created[s->ncreated++] = e;
    } else
        e->state = S_NONE;
    pthread_cond_broadcast(&s->cond);
    return inst;
}

static void scope_add(services_scope *sc, const entry *e, void *inst,
                      bgs_service_destroy_fn destroy, void *arg)
{
    if (sc->n == sc->cap) {
        sc->cap = sc->cap ? sc->cap * 2 : 4;
        sc->items = xrealloc(sc->items, sc->cap * sizeof(*sc->items));
    }
    sc->items[sc->n++] = (scope_item){e, inst, destroy, arg};
}

void *services_lookup(services *s, services_scope **scope, const char *name,
                      char *err, size_t errlen)
{
    void *inst = NULL;

    err[0] = '\0';
    if (name == NULL) {
        snprintf(err, errlen, "NULL service name; pass the name given to bgs_app_service()");
        return NULL;
    }
    if (s == NULL) {
        snprintf(err, errlen, "service '%s' is not registered: this app registers no "
                 "services; register it in the start hook with bgs_app_service()", name);
        return NULL;
    }

    pthread_mutex_lock(&s->mu);
    entry *e = find(s, name);
    if (e == NULL) {
        pthread_mutex_unlock(&s->mu);
        snprintf(err, errlen, "service '%s' is not registered; register it "
                 "in the start hook with bgs_app_service()", name);
        return NULL;
    }
    if (e->lifetime == BGS_SINGLETON) {
        inst = get_singleton(s, e, err, errlen);
        pthread_mutex_unlock(&s->mu);
        goto check;
    }
    /* Scoped or transient: copy what we need, then work unlocked. */
    bgs_service_create_fn create = e->create;
    bgs_service_destroy_fn destroy = e->destroy;
    void *arg = e->arg;
    uint32_t lifetime = e->lifetime;
    pthread_mutex_unlock(&s->mu);

    if (scope == NULL) {
        snprintf(err, errlen, "service '%s' is %s and needs a request or task scope; "
                 "look it up with bgs_req_service() or bgs_task_service()", name,
                 lifetime == BGS_SCOPED ? "scoped" : "transient");
        return NULL;
    }
    if (*scope == NULL)
        *scope = xcalloc(1, sizeof(**scope));
    services_scope *sc = *scope;
    if (lifetime == BGS_SCOPED) {
        for (size_t i = 0; i < sc->n; i++)
            if (sc->items[i].e == e)
                return sc->items[i].instance;
    }
    inst = call_create(e, create, arg);
    if (inst != NULL)
        scope_add(sc, e, inst, destroy, arg);
check:
    if (inst == NULL && err[0] == '\0')
        log_msg(BGS_LOG_ERROR, "service '%s' could not be created: its "
                "create function returned NULL; check it (and any message "
                "it logged above)", name);
    return inst;
}

void *services_get(services *s, services_scope **scope, const char *name)
{
    char err[256];
    void *inst = services_lookup(s, scope, name, err, sizeof err);
    if (inst == NULL && err[0])
        log_msg(BGS_LOG_ERROR, "%s", err);
    return inst;
}

void services_scope_end(services_scope *scope)
{
    if (scope == NULL)
        return;
    for (size_t i = scope->n; i-- > 0;) {
        scope_item *it = &scope->items[i];
        if (it->destroy != NULL)
            call_destroy(it->e, it->destroy, it->instance, it->arg);
    }
    free(scope->items);
    free(scope);
}
