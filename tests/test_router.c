/*
 * test_router.c - unit tests for router.c: templates, matching, decoding,
 * 404 vs 405, HEAD fallback, error messages.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "router.h"

/* Distinct data pointers for routes. */
static int tag[128];

static router *make(const char *const *specs)
{
    router *r = router_new();
    char err[256];
    for (size_t i = 0; specs[i] != NULL; i += 2) {
        int rc = router_add(r, specs[i], specs[i + 1], &tag[i / 2], err,
                            sizeof(err));
        if (rc != 0)
            fail_msg("router_add %s %s: %s", specs[i], specs[i + 1], err);
    }
    return r;
}

/* Match and return the result; m filled. */
static int lookup(const router *r, const char *method, const char *path,
                  router_match *m)
{
    static char scratch[1024];
    assert_true(strlen(path) < sizeof(scratch));
    return router_lookup(r, method, path, scratch, m);
}

static const char *param(const router_match *m, const char *name)
{
    for (unsigned i = 0; i < m->nparams; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return m->params[i].value;
    return NULL;
}

static void router_literal_beats_param(void **state)
{
    (void)state;
    const char *specs[] = {"GET", "/users/{id}", "GET", "/users/me", NULL};
    router *r = make(specs);
    router_match m;
    assert_int_equal(lookup(r, "GET", "/users/me", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[1]);
    assert_int_equal(m.nparams, 0);
    assert_int_equal(lookup(r, "GET", "/users/42", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[0]);
    assert_int_equal(m.nparams, 1);
    assert_string_equal(m.params[0].name, "id");
    assert_string_equal(m.params[0].value, "42");
    router_free(r);
}

static void router_backtracks_from_literal(void **state)
{
    (void)state;
    const char *specs[] = {"GET", "/a/b/d", "GET", "/a/{x}/c", NULL};
    router *r = make(specs);
    router_match m;
    assert_int_equal(lookup(r, "GET", "/a/b/c", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[1]);
    assert_string_equal(param(&m, "x"), "b");
    assert_int_equal(lookup(r, "GET", "/a/b/d", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[0]);
    assert_int_equal(lookup(r, "GET", "/a/b/e", &m), ROUTER_NOT_FOUND);
    router_free(r);
}

static void router_backtracks_for_method(void **state)
{
    (void)state;
    /* The literal node has only GET; POST must still find the param route. */
    const char *specs[] = {"GET", "/a/b", "POST", "/a/{x}", NULL};
    router *r = make(specs);
    router_match m;
    assert_int_equal(lookup(r, "POST", "/a/b", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[1]);
    assert_string_equal(param(&m, "x"), "b");
    assert_int_equal(lookup(r, "DELETE", "/a/b", &m), ROUTER_BAD_METHOD);
    assert_string_equal(m.allow, "GET, HEAD, POST");
    router_free(r);
}

static void router_params_decoded_per_segment(void **state)
{
    (void)state;
    const char *specs[] = {"GET", "/files/{dir}/{name}", NULL};
    router *r = make(specs);
    router_match m;
    assert_int_equal(lookup(r, "GET", "/files/a%2Fb/hello%20world", &m),
                     ROUTER_FOUND);
    assert_int_equal(m.nparams, 2);
    assert_string_equal(m.params[0].name, "dir");
    assert_string_equal(m.params[0].value, "a/b");
    assert_string_equal(m.params[1].name, "name");
    assert_string_equal(m.params[1].value, "hello world");
    /* '+' is not a space in paths. */
    assert_int_equal(lookup(r, "GET", "/files/x/a+b", &m), ROUTER_FOUND);
    assert_string_equal(param(&m, "name"), "a+b");
    router_free(r);
}

static void router_literal_matches_decoded_segment(void **state)
{
    (void)state;
    const char *specs[] = {"GET", "/users", NULL};
    router *r = make(specs);
    router_match m;
    assert_int_equal(lookup(r, "GET", "/us%65rs", &m), ROUTER_FOUND);
    assert_int_equal(lookup(r, "GET", "/us%2Fers", &m), ROUTER_NOT_FOUND);
    router_free(r);
}

static void router_bad_escapes_are_bad_path(void **state)
{
    (void)state;
    const char *specs[] = {"GET", "/x/{p}", NULL};
    router *r = make(specs);
    router_match m;
    const char *bad[] = {"/x/%", "/x/%4", "/x/%zz", "/x/%00", "/x/a%0",
                         "/nothing/%g1", "/%00/x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = lookup(r, "GET", bad[i], &m);
        if (rc != ROUTER_BAD_PATH)
            fail_msg("%s: got %d, want ROUTER_BAD_PATH", bad[i], rc);
    }
    assert_int_equal(lookup(r, "GET", "/x/%41", &m), ROUTER_FOUND);
    assert_string_equal(param(&m, "p"), "A");
    router_free(r);
}

static void router_pct_decode_rules(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(router_pct_decode("a%20b+c", 7, out, 0), 7 - 2);
    assert_string_equal(out, "a b+c");
    assert_int_equal(router_pct_decode("a%20b+c", 7, out, 1), 5);
    assert_string_equal(out, "a b c");
    assert_int_equal(router_pct_decode("%2f%2F", 6, out, 0), 2);
    assert_string_equal(out, "//");
    /* Only len bytes are read. */
    assert_int_equal(router_pct_decode("abc%zz", 3, out, 0), 3);
    assert_string_equal(out, "abc");
    assert_int_equal(router_pct_decode("", 0, out, 0), 0);
    assert_string_equal(out, "");
    assert_int_equal(router_pct_decode("%", 1, out, 0), -1);
    assert_int_equal(router_pct_decode("%a", 2, out, 0), -1);
    assert_int_equal(router_pct_decode("%ag", 3, out, 0), -1);
    assert_int_equal(router_pct_decode("x%00", 4, out, 0), -1);
}

static void router_404_vs_405_with_allow(void **state)
{
    (void)state;
    const char *specs[] = {"POST", "/items", "GET", "/items",
                           "DELETE", "/items/{id}", "OPTIONS", "/items", NULL};
    router *r = make(specs);
    router_match m;
    assert_int_equal(lookup(r, "PUT", "/items", &m), ROUTER_BAD_METHOD);
    assert_string_equal(m.allow, "GET, HEAD, POST, OPTIONS");
    assert_null(m.data);
    assert_int_equal(lookup(r, "GET", "/items/3", &m), ROUTER_BAD_METHOD);
    assert_string_equal(m.allow, "DELETE");
    /* An unknown method on a known path is also 405. */
    assert_int_equal(lookup(r, "FETCH", "/items", &m), ROUTER_BAD_METHOD);
    assert_string_equal(m.allow, "GET, HEAD, POST, OPTIONS");
    assert_int_equal(lookup(r, "GET", "/nope", &m), ROUTER_NOT_FOUND);
    assert_string_equal(m.allow, "");
    assert_int_equal(lookup(r, "GET", "/items/3/x", &m), ROUTER_NOT_FOUND);
    router_free(r);
}

static void router_head_falls_back_to_get(void **state)
{
    (void)state;
    const char *specs[] = {"GET", "/a", "GET", "/b", "HEAD", "/b", NULL};
    router *r = make(specs);
    router_match m;
    assert_int_equal(lookup(r, "HEAD", "/a", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[0]);
    assert_int_equal(lookup(r, "HEAD", "/b", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[2]);
    assert_int_equal(lookup(r, "GET", "/b", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[1]);
    assert_int_equal(lookup(r, "POST", "/b", &m), ROUTER_BAD_METHOD);
    assert_string_equal(m.allow, "GET, HEAD");
    router_free(r);
}

static void router_trailing_slash_is_significant(void **state)
{
    (void)state;
    const char *specs[] = {"GET", "/users", "GET", "/docs/", "GET", "/",
                           "GET", "/p/{id}", NULL};
    router *r = make(specs);
    router_match m;
    assert_int_equal(lookup(r, "GET", "/users", &m), ROUTER_FOUND);
    assert_int_equal(lookup(r, "GET", "/users/", &m), ROUTER_NOT_FOUND);
    assert_int_equal(lookup(r, "GET", "/docs/", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[1]);
    assert_int_equal(lookup(r, "GET", "/docs", &m), ROUTER_NOT_FOUND);
    assert_int_equal(lookup(r, "GET", "/", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[2]);
    assert_int_equal(lookup(r, "GET", "//", &m), ROUTER_NOT_FOUND);
    /* A parameter never matches an empty segment. */
    assert_int_equal(lookup(r, "GET", "/p/", &m), ROUTER_NOT_FOUND);
    assert_int_equal(lookup(r, "GET", "/p/1/", &m), ROUTER_NOT_FOUND);
    assert_int_equal(lookup(r, "GET", "/users//", &m), ROUTER_NOT_FOUND);
    assert_int_equal(lookup(r, "GET", "users", &m), ROUTER_NOT_FOUND);
    router_free(r);
}

static void router_template_errors(void **state)
{
    (void)state;
    static const struct {
        const char *tmpl, *want;
    } cases[] = {
        {"users", "path must start with '/'"},
        {"", "path must start with '/'"},
        {"/a//b", "empty segment"},
        {"//", "empty segment"},
        {"/users/{id", "malformed parameter in segment '{id'"},
        {"/a{id}", "malformed parameter in segment 'a{id}'"},
        {"/{id}x", "malformed parameter in segment '{id}x'"},
        {"/{", "malformed parameter in segment '{'"},
        {"/{}", "malformed parameter in segment '{}'"},
        {"/{1x}", "malformed parameter in segment '{1x}'"},
        {"/{a-b}", "malformed parameter in segment '{a-b}'"},
        {"/x}", "malformed parameter in segment 'x}'"},
        {"/{id}/{id}", "parameter '{id}' appears twice"},
        {"/a%20b", "contains '%'"},
        {"/a?b", "contains '?'"},
        {"/a#b", "contains '#'"},
        {"/a b", "contains byte 0x20"},
        {"/caf\xc3\xa9", "contains byte 0xc3"},
        {"/tab\t", "contains byte 0x09"},
    };
    router *r = router_new();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[256] = "";
        assert_int_equal(router_check_template(cases[i].tmpl, err, sizeof(err)), -1);
        if (strstr(err, cases[i].want) == NULL)
            fail_msg("template '%s': message '%s' lacks '%s'", cases[i].tmpl,
                     err, cases[i].want);
        char err2[256] = "";
        assert_int_equal(router_add(r, "GET", cases[i].tmpl, NULL, err2,
                                    sizeof(err2)), -1);
        assert_string_equal(err, err2);
    }
    assert_int_equal(router_count(r), 0);

    /* Too many parameters. */
    char big[512] = "";
    for (int i = 0; i <= ROUTER_MAX_PARAMS; i++)
        snprintf(big + strlen(big), sizeof(big) - strlen(big), "/{p%d}", i);
    char err[256];
    assert_int_equal(router_check_template(big, err, sizeof(err)), -1);
    h_assert_contains(err, "more than 16 parameters");

    /* Valid ones pass. */
    const char *ok[] = {"/", "/a", "/a/", "/{_x1}/b/{Y}", "/a.b-c~d!$&'()*+,;=:@"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (router_check_template(ok[i], err, sizeof(err)) != 0)
            fail_msg("'%s' refused: %s", ok[i], err);
    }
    router_free(r);
}

static void router_unknown_method_refused(void **state)
{
    (void)state;
    router *r = router_new();
    char err[256];
    const char *bad[] = {"FETCH", "get", "Get", "", "CONNECT"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(router_add(r, bad[i], "/x", NULL, err, sizeof(err)), -1);
        char want[64];
        snprintf(want, sizeof(want), "unknown method '%s'", bad[i]);
        h_assert_contains(err, want);
    }
    assert_int_equal(router_add(r, NULL, "/x", NULL, err, sizeof(err)), -1);
    h_assert_contains(err, "unknown method");
    const char *good[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                          "OPTIONS"};
    for (size_t i = 0; i < 7; i++)
        assert_int_equal(router_add(r, good[i], "/x", NULL, err, sizeof(err)), 0);
    assert_int_equal(router_count(r), 7);
    router_free(r);
}

static void router_duplicates_refused(void **state)
{
    (void)state;
    router *r = router_new();
    char err[256];
    assert_int_equal(router_add(r, "GET", "/users/{id}", &tag[0], err, sizeof(err)), 0);
    assert_int_equal(router_add(r, "GET", "/users/{id}", &tag[1], err, sizeof(err)), -1);
    assert_string_equal(err, "duplicate route GET /users/{id}");
    /* Different parameter name: still the same paths. */
    assert_int_equal(router_add(r, "GET", "/users/{name}", &tag[1], err, sizeof(err)), -1);
    h_assert_contains(err, "duplicate route GET /users/{name}");
    h_assert_contains(err, "/users/{id}");
    /* Another method, or a trailing slash, is a different route. */
    assert_int_equal(router_add(r, "DELETE", "/users/{uid}", &tag[2], err, sizeof(err)), 0);
    assert_int_equal(router_add(r, "GET", "/users/{id}/", &tag[3], err, sizeof(err)), 0);
    assert_int_equal(router_count(r), 3);

    /* The failed adds left nothing behind, and names are per method. */
    router_match m;
    assert_int_equal(lookup(r, "GET", "/users/7", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[0]);
    assert_string_equal(m.params[0].name, "id");
    assert_int_equal(lookup(r, "DELETE", "/users/7", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[2]);
    assert_string_equal(m.params[0].name, "uid");
    assert_int_equal(lookup(r, "GET", "/users/7/", &m), ROUTER_FOUND);
    assert_ptr_equal(m.data, &tag[3]);
    router_free(r);
}

static void router_hundred_routes_all_match(void **state)
{
    (void)state;
    router *r = router_new();
    char err[256], tmpl[64], path[64];
    for (int i = 0; i < 100; i++) {
        switch (i % 4) {
        case 0: snprintf(tmpl, sizeof(tmpl), "/r%d", i); break;
        case 1: snprintf(tmpl, sizeof(tmpl), "/r%d/{id}", i); break;
        case 2: snprintf(tmpl, sizeof(tmpl), "/group/g%d/{a}/x", i); break;
        default: snprintf(tmpl, sizeof(tmpl), "/group/{g}/item%d", i); break;
        }
        assert_int_equal(router_add(r, "GET", tmpl, &tag[i], err, sizeof(err)), 0);
    }
    assert_int_equal(router_count(r), 100);
    for (int i = 0; i < 100; i++) {
        switch (i % 4) {
        case 0: snprintf(path, sizeof(path), "/r%d", i); break;
        case 1: snprintf(path, sizeof(path), "/r%d/v%d", i, i); break;
        case 2: snprintf(path, sizeof(path), "/group/g%d/v%d/x", i, i); break;
        default: snprintf(path, sizeof(path), "/group/g%d/item%d", i - 1, i); break;
        }
        router_match m;
        int rc = lookup(r, "GET", path, &m);
        if (rc != ROUTER_FOUND || m.data != &tag[i])
            fail_msg("route %d (%s): rc %d, data %p want %p", i, path, rc,
                     m.data, (void *)&tag[i]);
    }
    router_free(r);
}

static void router_many_params(void **state)
{
    (void)state;
    char tmpl[512] = "", path[512] = "", err[256];
    for (int i = 0; i < ROUTER_MAX_PARAMS; i++) {
        snprintf(tmpl + strlen(tmpl), sizeof(tmpl) - strlen(tmpl), "/{p%d}", i);
        snprintf(path + strlen(path), sizeof(path) - strlen(path), "/v%d", i);
    }
    router *r = router_new();
    assert_int_equal(router_add(r, "GET", tmpl, &tag[0], err, sizeof(err)), 0);
    router_match m;
    assert_int_equal(lookup(r, "GET", path, &m), ROUTER_FOUND);
    assert_int_equal(m.nparams, ROUTER_MAX_PARAMS);
    assert_string_equal(m.params[15].name, "p15");
    assert_string_equal(m.params[15].value, "v15");
    assert_string_equal(m.params[0].value, "v0");
    router_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(router_literal_beats_param),
        cmocka_unit_test(router_backtracks_from_literal),
        cmocka_unit_test(router_backtracks_for_method),
        cmocka_unit_test(router_params_decoded_per_segment),
        cmocka_unit_test(router_literal_matches_decoded_segment),
        cmocka_unit_test(router_bad_escapes_are_bad_path),
        cmocka_unit_test(router_pct_decode_rules),
        cmocka_unit_test(router_404_vs_405_with_allow),
        cmocka_unit_test(router_head_falls_back_to_get),
        cmocka_unit_test(router_trailing_slash_is_significant),
        cmocka_unit_test(router_template_errors),
        cmocka_unit_test(router_unknown_method_refused),
        cmocka_unit_test(router_duplicates_refused),
        cmocka_unit_test(router_hundred_routes_all_match),
        cmocka_unit_test(router_many_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
