/*
 * test_services.c - service lifetimes, destruction order, concurrent
 * singleton creation, lookup and registration errors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "services.h"
#include "helpers.h"

/* ---- a counting service ---- */

typedef struct counter {
    pthread_mutex_t mu;
    int created, destroyed;
    /* names of destroyed instances, in destruction order */
    const char *order[32];
    int norder;
} counter;

typedef struct inst {
    counter *c;
    const char *name;
    int serial;
} inst;

typedef struct svc_arg {
    counter *c;
    const char *name;
} svc_arg;

static void *svc_create(void *arg)
{
    svc_arg *a = arg;
    inst *i = calloc(1, sizeof(*i));
    assert_non_null(i);
    pthread_mutex_lock(&a->c->mu);
    i->c = a->c;
    i->name = a->name;
    i->serial = ++a->c->created;
    pthread_mutex_unlock(&a->c->mu);
    return i;
}

static void svc_destroy(void *instance, void *arg)
{
    inst *i = instance;
    (void)arg;
    pthread_mutex_lock(&i->c->mu);
    i->c->destroyed++;
    if (i->c->norder < 32)
        i->c->order[i->c->norder++] = i->name;
    pthread_mutex_unlock(&i->c->mu);
    free(i);
}

static void *null_create(void *arg)
{
    (void)arg;
    return NULL;
}

static void counter_init(counter *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
}

/* ---- tests ---- */

static void services_lifetimes_across_two_scopes(void **state)
{
    (void)state;
    counter cs, cc, ct;
    counter_init(&cs);
    counter_init(&cc);
    counter_init(&ct);
    svc_arg as = {&cs, "single"}, ac = {&cc, "scoped"}, at = {&ct, "trans"};
    services *s = services_new();
    assert_int_equal(services_register(s, "single", BGS_SINGLETON, svc_create,
                                       svc_destroy, &as, NULL, 0), 0);
    assert_int_equal(services_register(s, "scoped", BGS_SCOPED, svc_create,
                                       svc_destroy, &ac, NULL, 0), 0);
    assert_int_equal(services_register(s, "trans", BGS_TRANSIENT, svc_create,
                                       svc_destroy, &at, NULL, 0), 0);

    for (int round = 0; round < 2; round++) {
        services_scope *scope = NULL;
        inst *s1 = services_get(s, &scope, "single");
        inst *s2 = services_get(s, &scope, "single");
        inst *c1 = services_get(s, &scope, "scoped");
        inst *c2 = services_get(s, &scope, "scoped");
        inst *t1 = services_get(s, &scope, "trans");
        inst *t2 = services_get(s, &scope, "trans");
        assert_non_null(scope);
        assert_non_null(s1);
        assert_ptr_equal(s1, s2);
        assert_non_null(c1);
        assert_ptr_equal(c1, c2);
        assert_non_null(t1);
        assert_non_null(t2);
        assert_ptr_not_equal(t1, t2);
        assert_int_equal(cc.created, round + 1);
        assert_int_equal(ct.created, 2 * (round + 1));
        services_scope_end(scope);
        assert_int_equal(cc.destroyed, round + 1);
        assert_int_equal(ct.destroyed, 2 * (round + 1));
    }
    assert_int_equal(cs.created, 1);
    assert_int_equal(cs.destroyed, 0);
    services_free(s);
    assert_int_equal(cs.destroyed, 1);
    assert_int_equal(cc.created, cc.destroyed);
    assert_int_equal(ct.created, ct.destroyed);
}

static void services_singleton_without_scope(void **state)
{
    (void)state;
    counter c;
    counter_init(&c);
    svc_arg a = {&c, "one"};
    services *s = services_new();
    assert_int_equal(services_register(s, "one", BGS_SINGLETON, svc_create,
                                       svc_destroy, &a, NULL, 0), 0);
    assert_non_null(services_get(s, NULL, "one"));
    assert_int_equal(c.created, 1);
    services_free(s);
    assert_int_equal(c.destroyed, 1);
}

static void services_scope_destroys_in_reverse(void **state)
{
    (void)state;
    counter c;
    counter_init(&c);
    svc_arg a = {&c, "a"}, b = {&c, "b"}, t = {&c, "t"};
    services *s = services_new();
    assert_int_equal(services_register(s, "a", BGS_SCOPED, svc_create,
                                       svc_destroy, &a, NULL, 0), 0);
    assert_int_equal(services_register(s, "b", BGS_SCOPED, svc_create,
                                       svc_destroy, &b, NULL, 0), 0);
    assert_int_equal(services_register(s, "t", BGS_TRANSIENT, svc_create,
                                       svc_destroy, &t, NULL, 0), 0);
    services_scope *scope = NULL;
    /* creation order: b, t, a (registration order is a, b, t) */
    assert_non_null(services_get(s, &scope, "b"));
    assert_non_null(services_get(s, &scope, "t"));
    assert_non_null(services_get(s, &scope, "a"));
    assert_non_null(services_get(s, &scope, "b")); /* reused, no new one */
    services_scope_end(scope);
    assert_int_equal(c.norder, 3);
    assert_string_equal(c.order[0], "a");
    assert_string_equal(c.order[1], "t");
    assert_string_equal(c.order[2], "b");
    services_free(s);
}

static void services_singletons_destroyed_in_reverse(void **state)
{
    (void)state;
    counter c;
    counter_init(&c);
    svc_arg x = {&c, "x"}, y = {&c, "y"}, z = {&c, "z"}, u = {&c, "unused"};
    services *s = services_new();
    assert_int_equal(services_register(s, "x", BGS_SINGLETON, svc_create,
                                       svc_destroy, &x, NULL, 0), 0);
    assert_int_equal(services_register(s, "y", BGS_SINGLETON, svc_create,
                                       svc_destroy, &y, NULL, 0), 0);
    assert_int_equal(services_register(s, "z", BGS_SINGLETON, svc_create,
                                       svc_destroy, &z, NULL, 0), 0);
    assert_int_equal(services_register(s, "unused", BGS_SINGLETON, svc_create,
                                       svc_destroy, &u, NULL, 0), 0);
    assert_non_null(services_get(s, NULL, "z"));
    assert_non_null(services_get(s, NULL, "x"));
    assert_non_null(services_get(s, NULL, "y"));
    services_free(s);
    assert_int_equal(c.created, 3);
    assert_int_equal(c.norder, 3);
    assert_string_equal(c.order[0], "y");
    assert_string_equal(c.order[1], "x");
    assert_string_equal(c.order[2], "z");
}

/* ---- concurrent singleton creation ---- */

#define NTHREADS 8

typedef struct race {
    services *s;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int ready, go;
    void *got[NTHREADS];
} race;

typedef struct racer {
    race *r;
    int idx;
} racer;

static void *race_thread(void *arg)
{
    racer *me = arg;
    race *r = me->r;
    pthread_mutex_lock(&r->mu);
    r->ready++;
    pthread_cond_broadcast(&r->cond);
    while (!r->go)
        pthread_cond_wait(&r->cond, &r->mu);
    pthread_mutex_unlock(&r->mu);
    services_scope *scope = NULL;
    r->got[me->idx] = services_get(r->s, &scope, "shared");
    services_scope_end(scope);
    return NULL;
}

static void services_concurrent_singleton_created_once(void **state)
{
    (void)state;
    for (int iter = 0; iter < 20; iter++) {
        counter c;
        counter_init(&c);
        svc_arg a = {&c, "shared"};
        race r;
        memset(&r, 0, sizeof(r));
        pthread_mutex_init(&r.mu, NULL);
        pthread_cond_init(&r.cond, NULL);
        r.s = services_new();
        assert_int_equal(services_register(r.s, "shared", BGS_SINGLETON,
                                           svc_create, svc_destroy, &a, NULL, 0), 0);
        pthread_t th[NTHREADS];
        racer rs[NTHREADS];
        for (int i = 0; i < NTHREADS; i++) {
            rs[i] = (racer){&r, i};
            assert_int_equal(pthread_create(&th[i], NULL, race_thread, &rs[i]), 0);
        }
        pthread_mutex_lock(&r.mu);
        while (r.ready < NTHREADS)
            pthread_cond_wait(&r.cond, &r.mu);
        r.go = 1;
        pthread_cond_broadcast(&r.cond);
        pthread_mutex_unlock(&r.mu);
        for (int i = 0; i < NTHREADS; i++)
            pthread_join(th[i], NULL);
        assert_int_equal(c.created, 1);
        for (int i = 0; i < NTHREADS; i++) {
            assert_non_null(r.got[i]);
            assert_ptr_equal(r.got[i], r.got[0]);
        }
        services_free(r.s);
        assert_int_equal(c.destroyed, 1);
        pthread_cond_destroy(&r.cond);
        pthread_mutex_destroy(&r.mu);
        pthread_mutex_destroy(&c.mu);
    }
}

/* ---- errors ---- */

static void services_unknown_name_is_null(void **state)
{
    (void)state;
    services *s = services_new();
    services_scope *scope = NULL;
    h_capture_begin();
    void *p = services_get(s, &scope, "mailer");
    char *log = h_capture_end();
    assert_null(p);
    h_assert_contains(log, "error: ");
    h_assert_contains(log, "service 'mailer'");
    h_assert_contains(log, "bgs_app_service()");
    free(log);
    services_scope_end(scope);
    services_free(s);
}

static void services_failed_create_is_null(void **state)
{
    (void)state;
    services *s = services_new();
    assert_int_equal(services_register(s, "db", BGS_SINGLETON, null_create,
                                       NULL, NULL, NULL, 0), 0);
    assert_int_equal(services_register(s, "conn", BGS_SCOPED, null_create,
                                       NULL, NULL, NULL, 0), 0);
    services_scope *scope = NULL;
    h_capture_begin();
    void *p1 = services_get(s, &scope, "db");
    void *p2 = services_get(s, &scope, "conn");
    char *log = h_capture_end();
    assert_null(p1);
    assert_null(p2);
    h_assert_contains(log, "service 'db' could not be created");
    h_assert_contains(log, "service 'conn' could not be created");
    free(log);
    services_scope_end(scope);
    services_free(s);
}

static void services_scoped_needs_scope(void **state)
{
    (void)state;
    counter c;
    counter_init(&c);
    svc_arg a = {&c, "req"};
    services *s = services_new();
    assert_int_equal(services_register(s, "req", BGS_SCOPED, svc_create,
                                       svc_destroy, &a, NULL, 0), 0);
    h_capture_begin();
    void *p = services_get(s, NULL, "req");
    char *log = h_capture_end();
    assert_null(p);
    assert_int_equal(c.created, 0);
    h_assert_contains(log, "service 'req' is scoped");
    free(log);
    services_free(s);
}

/* Each refusal says why, and logs nothing itself: the host API reports
 * it once, as a misuse at the plugin's call site (test_misuse). */
static void services_register_errors(void **state)
{
    (void)state;
    services *s = services_new();
    char w_null[256], w_empty[256], w_create[256], w_life4[256], w_dup[256], w_first[256];
    h_capture_begin();
    int r_null = services_register(s, NULL, BGS_SINGLETON, null_create, NULL, NULL, w_null, sizeof w_null);
    int r_empty = services_register(s, "", BGS_SINGLETON, null_create, NULL, NULL, w_empty, sizeof w_empty);
    int r_create = services_register(s, "nocreate", BGS_SINGLETON, NULL, NULL, NULL, w_create, sizeof w_create);
    int r_life0 = services_register(s, "life", 0, null_create, NULL, NULL, NULL, 0);
    int r_life4 = services_register(s, "life", 4, null_create, NULL, NULL, w_life4, sizeof w_life4);
    int r_first = services_register(s, "dup", BGS_SCOPED, null_create, NULL, NULL, w_first, sizeof w_first);
    int r_dup = services_register(s, "dup", BGS_SINGLETON, null_create, NULL, NULL, w_dup, sizeof w_dup);
    char *log = h_capture_end();
    assert_int_equal(r_null, BGS_EINVAL);
    assert_int_equal(r_empty, BGS_EINVAL);
    assert_int_equal(r_create, BGS_EINVAL);
    assert_int_equal(r_life0, BGS_EINVAL);
    assert_int_equal(r_life4, BGS_EINVAL);
    assert_int_equal(r_first, 0);
    assert_int_equal(r_dup, BGS_EINVAL);
    h_assert_contains(w_null, "non-empty name");
    h_assert_contains(w_empty, "non-empty name");
    h_assert_contains(w_create, "service 'nocreate' has no create function");
    h_assert_contains(w_life4, "service 'life' has unknown lifetime 4");
    h_assert_contains(w_dup, "service 'dup' is already registered");
    assert_string_equal(log, "");
    free(log);
    services_free(s);
}

/* services_lookup explains a lookup the plugin got wrong instead of
 * logging it; a create function that failed is still logged. */
static void services_lookup_explains_misuse(void **state)
{
    (void)state;
    services *s = services_new();
    assert_int_equal(services_register(s, "db", BGS_SINGLETON, null_create, NULL, NULL, NULL, 0), 0);
    assert_int_equal(services_register(s, "conn", BGS_SCOPED, null_create, NULL, NULL, NULL, 0), 0);
    char why[256];
    h_capture_begin();
    assert_null(services_lookup(s, NULL, "mailer", why, sizeof why));
    h_assert_contains(why, "service 'mailer' is not registered");
    assert_null(services_lookup(s, NULL, NULL, why, sizeof why));
    h_assert_contains(why, "NULL service name");
    assert_null(services_lookup(s, NULL, "conn", why, sizeof why));
    h_assert_contains(why, "service 'conn' is scoped and needs a request or task scope");
    char *quiet = h_capture_end();
    assert_string_equal(quiet, "");
    free(quiet);
    h_capture_begin();
    assert_null(services_lookup(s, NULL, "db", why, sizeof why));
    char *log = h_capture_end();
    assert_string_equal(why, "");
    h_assert_contains(log, "service 'db' could not be created");
    free(log);
    services_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(services_lifetimes_across_two_scopes),
        cmocka_unit_test(services_singleton_without_scope),
        cmocka_unit_test(services_scope_destroys_in_reverse),
        cmocka_unit_test(services_singletons_destroyed_in_reverse),
        cmocka_unit_test(services_concurrent_singleton_created_once),
        cmocka_unit_test(services_unknown_name_is_null),
        cmocka_unit_test(services_failed_create_is_null),
        cmocka_unit_test(services_scoped_needs_scope),
        cmocka_unit_test(services_register_errors),
        cmocka_unit_test(services_lookup_explains_misuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
