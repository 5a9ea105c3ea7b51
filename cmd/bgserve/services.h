/*
 * services.h - named services with lifetimes, as plugins register them
 * in their start hook (BlackSheep's DI container, in C).
 *
 * A registry belongs to one generation.  Registration happens only while
 * the start hook runs (one thread); lookups come from any thread.
 * Singletons are created at first lookup under the registry lock and
 * destroyed by services_free in reverse order of creation.  Scoped and
 * transient instances live in a scope (one per request or per task run,
 * owned by the one thread running it, so unlocked) and are destroyed by
 * services_scope_end in reverse order of creation.
 */
#ifndef BGSERVE_SERVICES_H
#define BGSERVE_SERVICES_H

#include "bgserve.h"

#include <stdint.h>

typedef struct services services;
typedef struct services_scope services_scope;

services *services_new(void);
/* Which generation and plugin the registry belongs to, for crash reports
 * that name a service's create or destroy function. */
void services_set_origin(services *s, uint64_t gen, const char *plugin);
/* Destroy the singletons created so far (reverse order) and free. */
void services_free(services *s);

/* Returns 0, or BGS_EINVAL (NULL or empty name, NULL create, unknown
 * lifetime, a name already registered) with the reason in err (may be
 * NULL): logging it is the caller's, which knows the plugin's call site.
 * The registry copies name. */
int services_register(services *s, const char *name, uint32_t lifetime,
                      bgs_service_create_fn create,
                      bgs_service_destroy_fn destroy, void *arg,
                      char *err, size_t errlen);

/*
 * Look a service up.  Singleton: the one instance.  Scoped: the scope's
 * instance, created at its first lookup in that scope.  Transient: a new
 * instance, destroyed at scope end.  *scope may be NULL: a scope is then
 * created on demand and stored there.  Unknown name, failed create, or a
 * scoped/transient lookup without a scope pointer: NULL, and an error is
 * logged naming the service.
 */
void *services_get(services *s, services_scope **scope, const char *name);

/* services_get for the host API: a lookup the plugin got wrong (NULL or
 * unknown name, a scoped or transient service without a scope) is not
 * logged but explained in err, for a misuse warning at the plugin's call
 * site; err is "" for success and for a create function that returned
 * NULL (logged here, as by services_get). */
void *services_lookup(services *s, services_scope **scope, const char *name,
                      char *err, size_t errlen);

/* Destroy the scope's instances in reverse order of creation and free
 * the scope.  NULL is fine. */
void services_scope_end(services_scope *scope);

#endif
