/*
 * test_loader.c - plugin.c in process: loading the fixture plugins,
 * refusal messages, copied tables and defaults, and plugin_validate on
 * descriptors built in memory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generation.h"
#include "helpers.h"
#include "plugin.h"

static const bgs_host_api api = {.struct_size = sizeof(bgs_host_api),
                                 .abi_major = BGS_ABI_MAJOR,
                                 .abi_minor = BGS_ABI_MINOR};

/* Load must fail with a complete message naming path. */
static void expect_refusal(const char *path, const char *const *words)
{
    plugin *p = (plugin *)(uintptr_t)1;
    char err[2048] = "";
    assert_int_equal(plugin_load(path, &api, &p, err, sizeof(err)), -1);
    assert_null(p);
    char prefix[1200];
    snprintf(prefix, sizeof(prefix), "bgserve: cannot load plugin '%s': ", path);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("message does not start with '%s':\n%s", prefix, err);
    h_assert_contains(err, "\n  fix: ");
    for (size_t i = 0; words[i] != NULL; i++)
        h_assert_contains(err, words[i]);
}

/* ------------------------------------------------------------------ */
/* Fixtures through plugin_load                                        */
/* ------------------------------------------------------------------ */

static void loader_refuses_each_fixture(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *words[5]; /* NULL-terminated */
    } cases[] = {
        {"no_symbol", {"no bgserve_plugin_v1 symbol", "BGS_PLUGIN(...)"}},
        {"null_desc", {"returned NULL"}},
        {"bad_magic", {"0x12345678", "0x56534742", "not a bgserve plugin", "corrupt"}},
        {"major2", {"built for plugin ABI 2.0 but this bgserve supports 1.x (1.1)", "rebuild"}},
        {"minor_newer", {"built for ABI 1.4, this bgserve 0.1.0 supports up to 1.1", "upgrade bgserve"}},
        {"small_struct", {"struct_size 16", "smaller than the ABI 1.0"}},
        {"null_handler", {"route 1 (GET /users)", "no handler"}},
        {"bad_method", {"route 1 (FETCH /things)", "unknown method 'FETCH'"}},
        {"bad_path", {"route 1 (GET users)", "path must start with '/'"}},
        {"dup_route", {"route 2 (GET /users/{name})", "duplicate route GET /users/{name}"}},
        {"bad_param", {"route 1 (GET /users/{id)", "malformed parameter in segment '{id'"}},
        {"reserved_route", {"route 1 (GET /_bgserve/x)", "reserved"}},
        {"dup_task", {"duplicate task name 'email'", "tasks 0 and 2"}},
        {"unknown_route_task", {"route 1 (POST /orders)", "unknown task 'send_invoice'"}},
        {"static_tls", {"flagged STATIC_TLS", "cannot be unloaded and reloaded"}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_refusal(h_fixture(cases[i].name), cases[i].words);
}

static void loader_refuses_text_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/bgs_loader_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/x.so", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("this is not an ELF file\n", f);
    fclose(f);
    const char *words[] = {"not a loadable shared object", "x.so", "ldd", NULL};
    expect_refusal(path, words);
    unlink(path);
    rmdir(dir);
}

static void loader_refuses_missing_file(void **state)
{
    (void)state;
    const char *words[] = {"not a loadable shared object",
                           "No such file or directory", "check the path", NULL};
    expect_refusal("/nonexistent/dir/app.so", words);
}

static void loader_bare_name_is_relative_to_cwd(void **state)
{
    (void)state;
    char cwd[1024], dir[1024];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    snprintf(dir, sizeof(dir), "%s", h_fixture("good"));
    *strrchr(dir, '/') = '\0';
    assert_int_equal(chdir(dir), 0);
    plugin *p = NULL;
    char err[1024] = "";
    int rc = plugin_load("good.so", &api, &p, err, sizeof(err));
    int rc2 = -2;
    if (rc == 0) {
        assert_string_equal(p->path, "good.so");
        assert_string_equal(p->load_path, "./good.so");
        plugin_unload(p);
        /* A bare name is never searched for (in LD_LIBRARY_PATH etc.). */
        assert_int_equal(chdir("/"), 0);
        rc2 = plugin_load("good.so", &api, &p, err, sizeof(err));
    }
    assert_int_equal(chdir(cwd), 0);
    if (rc != 0)
        fail_msg("load failed: %s", err);
    assert_int_equal(rc2, -1);
    h_assert_contains(err, "'good.so'");
}

static void loader_good_tables_copied(void **state)
{
    (void)state;
    plugin *p = NULL;
    char err[1024] = "";
    const char *path = h_fixture("good");
    if (plugin_load(path, &api, &p, err, sizeof(err)) != 0)
        fail_msg("load failed: %s", err);
    assert_string_equal(p->name, "good");
    assert_string_equal(p->version, "1.2.3");
    assert_int_equal(p->abi_major, 1);
    assert_int_equal(p->abi_minor, BGS_ABI_MINOR);
    assert_null(p->start);
    assert_non_null(p->dl);

    assert_int_equal(p->nroutes, 3);
    assert_string_equal(p->routes[0].method, "GET");
    assert_string_equal(p->routes[0].path, "/");
    assert_string_equal(p->routes[1].path, "/users/{id}");
    assert_string_equal(p->routes[2].method, "POST");
    assert_string_equal(p->routes[2].path, "/users");
    assert_non_null(p->routes[0].handler);
    assert_int_equal(p->routes[2].mode, BGS_CONCURRENT);
    assert_int_equal(p->routes[2].ntasks, 1);
    assert_string_equal(p->routes[2].tasks[0].name, "send_welcome");
    assert_int_equal(p->routes[2].tasks[0].len, 7);
    assert_memory_equal(p->routes[2].tasks[0].payload, "welcome", 7);
    assert_int_equal(p->routes[0].ntasks, 0);

    /* Strings live in server memory, not in the plugin image. */
    Dl_info info;
    assert_int_equal(dladdr(p->routes[1].path, &info), 0);
    assert_int_equal(dladdr(p->name, &info), 0);
    assert_int_equal(dladdr(p->routes[2].tasks[0].payload, &info), 0);
    /* ...while the handler does live there. */
    void *h;
    memcpy(&h, &p->routes[0].handler, sizeof(h));
    assert_int_not_equal(dladdr(h, &info), 0);

    assert_int_equal(p->ntasks, 1);
    const plugin_task *t = plugin_find_task(p, "send_welcome");
    assert_ptr_equal(t, &p->tasks[0]);
    assert_non_null(t->fn);
    assert_int_equal(t->max_attempts, 3);
    assert_int_equal(t->backoff_base_ms, 100);
    assert_int_equal(t->backoff_cap_ms, 30000);
    assert_int_equal(t->timeout_ms, 5000);
    assert_int_equal(t->max_concurrency, 0);
    assert_null(plugin_find_task(p, "nope"));
    assert_null(plugin_find_task(NULL, "send_welcome"));

    /* The router's data are the copied routes. */
    assert_int_equal(router_count(p->router), 3);
    char scratch[64];
    router_match m;
    assert_int_equal(router_lookup(p->router, "GET", "/users/9", scratch, &m),
                     ROUTER_FOUND);
    assert_ptr_equal(m.data, &p->routes[1]);
    assert_string_equal(m.params[0].value, "9");
    assert_int_equal(router_lookup(p->router, "POST", "/users", scratch, &m),
                     ROUTER_FOUND);
    assert_ptr_equal(m.data, &p->routes[2]);
    plugin_unload(p);
    plugin_unload(NULL);
}

static void loader_start_fails_fixture_loads(void **state)
{
    (void)state;
    /* The start hook is the generation's business: loading succeeds. */
    plugin *p = NULL;
    char err[1024] = "";
    if (plugin_load(h_fixture("start_fails"), &api, &p, err, sizeof(err)) != 0)
        fail_msg("load failed: %s", err);
    assert_non_null(p->start);
    assert_null(p->stop);
    plugin_unload(p);
}

/* ------------------------------------------------------------------ */
/* plugin_validate on descriptors in memory                            */
/* ------------------------------------------------------------------ */

static int h_ok(bgs_req *req, bgs_res *res)
{
    (void)req;
    (void)res;
    return 0;
}

static int t_ok(bgs_task_ctx *ctx, const void *payload, size_t len)
{
    (void)ctx;
    (void)payload;
    (void)len;
    return 0;
}

static bgs_plugin base_desc(const bgs_route *routes, uint32_t nroutes,
                            const bgs_task_def *tasks, uint32_t ntasks)
{
    bgs_plugin d = {
        .magic = BGS_PLUGIN_MAGIC,
        .struct_size = sizeof(bgs_plugin),
        .abi_major = BGS_ABI_MAJOR,
        .abi_minor = BGS_ABI_MINOR,
        .name = "mem",
        .routes = routes,
        .route_count = nroutes,
        .route_size = sizeof(bgs_route),
        .tasks = tasks,
        .task_count = ntasks,
        .task_size = sizeof(bgs_task_def),
        .route_task_size = sizeof(bgs_route_task),
    };
    return d;
}

static void expect_invalid(const bgs_plugin *d, const char *w1, const char *w2)
{
    char err[1024] = "";
    assert_int_equal(plugin_validate(d, err, sizeof(err)), -1);
    h_assert_contains(err, "\n  fix: ");
    h_assert_lacks(err, "cannot load plugin");
    h_assert_contains(err, w1);
    if (w2 != NULL)
        h_assert_contains(err, w2);
}

static void expect_valid(const bgs_plugin *d)
{
    char err[1024] = "";
    if (plugin_validate(d, err, sizeof(err)) != 0)
        fail_msg("refused: %s", err);
}

static void loader_validate_accepts_larger_descriptor(void **state)
{
    (void)state;
    static const bgs_route routes[] = {BGS_GET("/", h_ok)};
    /* A plugin from a future 1.x with fields appended (its minor is ours,
     * as the server refuses newer minors before looking further). */
    struct {
        bgs_plugin d;
        uint64_t future[6];
    } big;
    memset(&big, 0xa5, sizeof(big));
    big.d = base_desc(routes, 1, NULL, 0);
    big.d.struct_size = sizeof(big);
    expect_valid(&big.d);
    /* Exactly the 1.0 size is fine too. */
    bgs_plugin d = base_desc(routes, 1, NULL, 0);
    d.struct_size = BGS_PLUGIN_SIZE_1_0;
    expect_valid(&d);
    d.struct_size = BGS_PLUGIN_SIZE_1_0 - 1;
    expect_invalid(&d, "struct_size", "smaller than the ABI 1.0");
}

static void loader_validate_steps_by_element_size(void **state)
{
    (void)state;
    /* Elements larger than this server knows: the validator must step by
     * the recorded size, so the second element is read correctly. */
    struct big_route {
        bgs_route r;
        const char *future_a;
        uint64_t future_b;
    };
    struct big_task {
        bgs_task_def t;
        uint64_t future[3];
    };
    struct big_rtask {
        bgs_route_task t;
        uint64_t future;
    };
    static const struct big_rtask rtasks[] = {
        {{.name = "b", .payload = "xy", .payload_len = 2}, 7},
        {{.name = "a"}, 9},
    };
    struct big_route routes[] = {
        {BGS_GET("/one", h_ok), "junk", 1},
        {{.method = "POST", .path = "/two/{id}", .handler = h_ok,
          .tasks = &rtasks[0].t, .task_count = 2}, "junk", 2},
    };
    static const struct big_task tasks[] = {
        {{.name = "a", .fn = t_ok}, {1, 2, 3}},
        {{.name = "b", .fn = t_ok}, {4, 5, 6}},
    };
    bgs_plugin d = base_desc(&routes[0].r, 2, &tasks[0].t, 2);
    d.route_size = sizeof(struct big_route);
    d.task_size = sizeof(struct big_task);
    d.route_task_size = sizeof(struct big_rtask);
    expect_valid(&d);

    /* The second route's path is checked (so it was really read). */
    routes[1].r.path = "/two/{id";
    expect_invalid(&d, "route 1 (POST /two/{id)", "malformed parameter");
    routes[1].r.path = "/two/{id}";
    routes[1].r.method = "GET";
    routes[0].r.path = "/two/{x}";
    expect_invalid(&d, "route 1 (GET /two/{id})", "duplicate route");
}

static void loader_validate_header_checks(void **state)
{
    (void)state;
    static const bgs_route routes[] = {BGS_GET("/", h_ok)};
    char err[256];
    assert_int_equal(plugin_validate(NULL, err, sizeof(err)), -1);
    h_assert_contains(err, "returned NULL");

    bgs_plugin d = base_desc(routes, 1, NULL, 0);
    d.magic = 0xdeadbeefu;
    expect_invalid(&d, "0xdeadbeef", "expected 0x56534742");
    d = base_desc(routes, 1, NULL, 0);
    d.abi_major = 0;
    expect_invalid(&d, "built for plugin ABI 0.1", "supports 1.x");
    d = base_desc(routes, 1, NULL, 0);
    d.abi_minor = BGS_ABI_MINOR + 1;
    expect_invalid(&d, "supports up to 1.1", NULL);
    d = base_desc(routes, 1, NULL, 0);
    d.route_size = 8;
    expect_invalid(&d, "route_size 8", "bgs_route");
    d = base_desc(routes, 1, NULL, 0);
    d.task_size = 0;
    expect_invalid(&d, "task_size 0", "bgs_task_def");
    d = base_desc(routes, 1, NULL, 0);
    d.route_task_size = 23;
    expect_invalid(&d, "route_task_size 23", "bgs_route_task");
    d = base_desc(routes, 1, NULL, 0);
    d.route_size = 1u << 30;
    expect_invalid(&d, "route_size", "implausibly large");

    /* No routes at all is a valid (if quiet) plugin. */
    d = base_desc(NULL, 0, NULL, 0);
    expect_valid(&d);
    d.route_count = 2;
    expect_invalid(&d, "route table is NULL but route_count is 2", NULL);
    d = base_desc(routes, 1, NULL, 3);
    expect_invalid(&d, "task table is NULL but task_count is 3", NULL);
}

static void loader_validate_route_checks(void **state)
{
    (void)state;
    static const bgs_task_def tasks[] = {{.name = "t", .fn = t_ok}};
    bgs_route r[2] = {BGS_GET("/", h_ok), BGS_GET("/x", h_ok)};
    bgs_plugin d = base_desc(r, 2, tasks, 1);
    expect_valid(&d);

    r[1].method = NULL;
    expect_invalid(&d, "route 1", "has no method");
    r[1].method = "get";
    expect_invalid(&d, "route 1 (get /x)", "unknown method 'get'");
    r[1].method = "GET";
    r[1].path = NULL;
    expect_invalid(&d, "route 1", "has no path");
    r[1].path = "/_bgserve";
    expect_invalid(&d, "route 1 (GET /_bgserve)", "reserved");
    r[1].path = "/_bgservex";
    expect_valid(&d);
    r[1].path = "/a//b";
    expect_invalid(&d, "route 1 (GET /a//b)", "empty segment");

    r[1].path = "/x";
    r[1].task_mode = 2;
    expect_invalid(&d, "route 1 (GET /x) has task_mode 2", "BGS_CONCURRENT");
    r[1].task_mode = BGS_CONCURRENT;
    r[1].task_count = 1;
    expect_invalid(&d, "task_count 1 but tasks is NULL", NULL);

    bgs_route_task rt = {.name = "t", .payload = NULL, .payload_len = 4};
    r[1].tasks = &rt;
    expect_invalid(&d, "payload_len 4 but payload is NULL", NULL);
    rt.payload = "abcd";
    expect_valid(&d);
    rt.name = NULL;
    expect_invalid(&d, "route 1 (GET /x) task 0 has no name", NULL);
    rt.name = "other";
    expect_invalid(&d, "unknown task 'other'", "task table");
}

static void loader_validate_task_checks(void **state)
{
    (void)state;
    static const bgs_route routes[] = {BGS_GET("/", h_ok)};
    bgs_task_def t[2] = {{.name = "a.b:c-d_9", .fn = t_ok},
                         {.name = "z", .fn = t_ok}};
    bgs_plugin d = base_desc(routes, 1, t, 2);
    expect_valid(&d);

    t[1].name = NULL;
    expect_invalid(&d, "task 1 has no name", NULL);
    t[1].name = "";
    expect_invalid(&d, "task 1 has an invalid name ''", "A-Z a-z 0-9");
    t[1].name = "has space";
    expect_invalid(&d, "invalid name 'has space'", NULL);
    t[1].name = "slash/no";
    expect_invalid(&d, "invalid name 'slash/no'", NULL);
    char longname[80];
    memset(longname, 'n', 65);
    longname[65] = '\0';
    t[1].name = longname;
    expect_invalid(&d, "invalid name 'nnnn", NULL);
    longname[64] = '\0';
    expect_valid(&d);
    t[1].name = "z";
    t[1].fn = NULL;
    expect_invalid(&d, "task 1 'z' has no function", NULL);
    t[1].fn = t_ok;
    t[1].name = "a.b:c-d_9";
    expect_invalid(&d, "duplicate task name 'a.b:c-d_9' (tasks 0 and 1)", NULL);
}

static void loader_validate_never_writes_err_past_len(void **state)
{
    (void)state;
    bgs_plugin d = base_desc(NULL, 0, NULL, 0);
    d.magic = 1;
    char err[16];
    memset(err, 'Q', sizeof(err));
    assert_int_equal(plugin_validate(&d, err, 8), -1);
    assert_int_equal(strlen(err), 7);
    assert_int_equal(err[8], 'Q');
    assert_int_equal(plugin_validate(&d, err, 0), -1);
}

/* The generation room is given its host table by whoever wires the server
 * (generation_setup); loading before that is refused with a message, not a crash.
 * Linking this test without tasks.o or hostapi.o shows the room needs
 * neither. */
static void loader_generation_needs_setup(void **state)
{
    (void)state;
    char err[512] = "";
    generation *g = (generation *)&err; /* must be reset to NULL */
    assert_int_equal(generation_create(h_fixture("good"), 1, GEN_CHECK_ONLY, &g, err, sizeof err), -1);
    assert_null(g);
    h_assert_contains(err, "before generation_setup()");
    h_assert_contains(err, h_fixture("good"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(loader_refuses_each_fixture),
        cmocka_unit_test(loader_refuses_text_file),
        cmocka_unit_test(loader_refuses_missing_file),
        cmocka_unit_test(loader_bare_name_is_relative_to_cwd),
        cmocka_unit_test(loader_good_tables_copied),
        cmocka_unit_test(loader_start_fails_fixture_loads),
        cmocka_unit_test(loader_validate_accepts_larger_descriptor),
        cmocka_unit_test(loader_validate_steps_by_element_size),
        cmocka_unit_test(loader_validate_header_checks),
        cmocka_unit_test(loader_validate_route_checks),
        cmocka_unit_test(loader_validate_task_checks),
        cmocka_unit_test(loader_validate_never_writes_err_past_len),
        cmocka_unit_test(loader_generation_needs_setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
