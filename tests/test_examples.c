/*
 * test_examples.c - the example plugins (plugins/accepted, periodic,
 * orders, register), each the seed scenario of the background-task issue,
 * run by the real build/bgserve and checked over HTTP and in its log.
 *
 * Every wait is a poll with a generous deadline; nothing sleeps for a
 * fixed time waiting for an event.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEADLINE_MS 30000u

/* ---- small helpers ---------------------------------------------------------- */

static int start_plugin(h_server *s, const char *name, const char *const *env)
{
    char rel[128];
    snprintf(rel, sizeof rel, "plugins/%s.so", name);
    return h_start_app(s, h_build_path(rel), NULL, env);
}

/* "YYYY-MM-DDTHH:MM:SSZ" at s */
static int is_iso_utc(const char *s)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
    for (size_t i = 0; shape[i]; i++) {
        if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
            return 0;
    }
    return 1;
}

/* ---- accepted --------------------------------------------------------------- */

static void examples_accepted_answers_before_the_task_runs(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    char loc[96], path[96], st[32];

    assert_int_equal(start_plugin(&s, "accepted", NULL), 0);
    assert_int_equal(h_get(&s, "/", &r), 0);
    assert_int_equal(r.status, 202);
    assert_string_equal(r.body, "Operation accepted");
    const char *l = h_header(&r, "Location");
    const char *ids = h_header(&r, "Bgserve-Tasks");
    assert_non_null(l);
    assert_non_null(ids);
    snprintf(loc, sizeof loc, "%s", l);
    snprintf(path, sizeof path, "/_bgserve/tasks/%s", ids);
    assert_string_equal(loc, path);
    h_resp_free(&r);

    /* The Location is the task's record at once.  How far the one-second
     * task got by now depends on the machine (a slow sanitizer run may
     * have finished it), so any state of a task that was not refused. */
    assert_int_equal(h_get(&s, loc, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(h_json_str(r.body, "state", st, sizeof st), 0);
    assert_true(strcmp(st, "queued") == 0 || strcmp(st, "running") == 0 ||
                strcmp(st, "succeeded") == 0);
    h_assert_contains(r.body, "\"name\":\"slow_operation\"");
    h_resp_free(&r);

    /* Its response was delivered in full: tasks start only after that. */
    char *rec = h_wait_state(&s, loc, "succeeded", DEADLINE_MS);
    assert_non_null(rec);
    h_assert_contains(rec, "\"delivered\":true");
    free(rec);
    char done[128];
    snprintf(done, sizeof done, "[task %s] Done!", loc + strlen("/_bgserve/tasks/"));
    assert_true(h_wait_log(&s, done, DEADLINE_MS));

    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
}

/* ---- periodic --------------------------------------------------------------- */

static int two_ticks(void *arg)
{
    return h_count_log(arg, "] tick at ") >= 2;
}

static void examples_periodic_ticks_with_a_new_scoped_service(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    unsigned ids[2];

    assert_int_equal(start_plugin(&s, "periodic", NULL), 0);
    assert_true(h_poll_server(&s, two_ticks, &s, DEADLINE_MS));
    const char *p = s.log;
    for (int i = 0; i < 2; i++) {
        p = strstr(p, "] tick at ");
        assert_non_null(p);
        p += strlen("] tick at ");
        assert_true(is_iso_utc(p));
        assert_memory_equal(p + 20, " foo#", 5);
        ids[i] = (unsigned)strtoul(p + 25, NULL, 10);
        assert_true(ids[i] > 0);
    }
    assert_int_not_equal(ids[0], ids[1]);

    assert_int_equal(h_get(&s, "/", &r), 0);
    assert_int_equal(r.status, 200);
    assert_true(strncmp(r.body, "Hello, World! ", 14) == 0);
    assert_int_equal(r.body_len, 14 + 20);
    assert_true(is_iso_utc(r.body + 14));
    h_resp_free(&r);

    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
}

/* ---- orders ----------------------------------------------------------------- */

static long post(h_server *s, const char *path, const char *body)
{
    static const char *const json_hdr[] = {"Content-Type: application/json", NULL};
    h_resp r;
    assert_int_equal(h_http(s, "POST", path, body, strlen(body), json_hdr, &r), 0);
    long status = r.status;
    if (status == 201)
        assert_non_null(h_header(&r, "Bgserve-Tasks"));
    else
        assert_null(h_header(&r, "Bgserve-Tasks"));
    h_resp_free(&r);
    return status;
}

static void examples_orders_confirms_by_email(void **state)
{
    (void)state;
    h_server s;

    assert_int_equal(start_plugin(&s, "orders", NULL), 0);
    assert_int_equal(post(&s, "/orders", "{\"item\": \"book\", \"email\": \"a@b.example\"}"), 201);
    assert_true(h_wait_log(&s, "confirmation sent to a@b.example", DEADLINE_MS));

    /* missing, not a string, only nested, not an object, malformed */
    assert_int_equal(post(&s, "/orders", "{\"item\": \"book\"}"), 400);
    assert_int_equal(post(&s, "/orders", "{\"email\": 42}"), 400);
    assert_int_equal(post(&s, "/orders", "{\"x\": {\"email\": \"c@d.example\"}}"), 400);
    assert_int_equal(post(&s, "/orders", "[\"email\", \"c@d.example\"]"), 400);
    assert_int_equal(post(&s, "/orders", "{\"email\": \"c@d.example\""), 400);
    assert_int_equal(post(&s, "/orders", "not json"), 400);

    /* a key that merely contains "email", then the real one with an escape */
    assert_int_equal(post(&s, "/orders", "{\"emails\": \"x@y.example\", "
                                         "\"email\": \"e\\u0040f.example\"}"), 201);
    assert_true(h_wait_log(&s, "confirmation sent to e@f.example", DEADLINE_MS));
    assert_int_equal(h_count_log(&s, "confirmation sent to x@y.example"), 0);

    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
}

/* ---- register --------------------------------------------------------------- */

struct file_wait {
    char path[256];
    char text[1024];
};

static int two_lines(void *arg)
{
    struct file_wait *w = arg;
    FILE *f = fopen(w->path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(w->text, 1, sizeof w->text - 1, f);
    fclose(f);
    w->text[n] = '\0';
    int lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += w->text[i] == '\n';
    return lines >= 2;
}

static void examples_register_runs_route_tasks_concurrently(void **state)
{
    (void)state;
    h_server s;
    h_resp r;
    static char dir[64], env_dir[96];
    char ids[2][64];

    snprintf(dir, sizeof dir, "/tmp/bgserve-register-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(env_dir, sizeof env_dir, "BGSERVE_DATA_DIR=%s", dir);
    const char *const env[] = {env_dir, NULL};
    assert_int_equal(start_plugin(&s, "register", env), 0);

    for (int i = 0; i < 2; i++) {
        assert_int_equal(h_http(&s, "POST", "/register", "{}", 2, NULL, &r), 0);
        assert_int_equal(r.status, 201);
        assert_string_equal(r.body, "{\"message\":\"Created\"}");
        assert_string_equal(h_header(&r, "Content-Type"), "application/json");
        const char *t = h_header(&r, "Bgserve-Tasks");
        assert_non_null(t);
        snprintf(ids[i], sizeof ids[i], "%s", t);
        h_resp_free(&r);
    }

    /* Both route tasks are announced, in table order. */
    for (int i = 0; i < 2; i++) {
        char path[96];
        unsigned long a, b;
        assert_int_equal(sscanf(ids[i], "%lu,%lu", &a, &b), 2);
        snprintf(path, sizeof path, "/_bgserve/tasks/%lu", a);
        assert_int_equal(h_get(&s, path, &r), 0);
        h_assert_contains(r.body, "\"name\":\"send_email_notification\"");
        h_assert_contains(r.body, "\"mode\":\"concurrent\"");
        h_resp_free(&r);
        snprintf(path, sizeof path, "/_bgserve/tasks/%lu", b);
        assert_int_equal(h_get(&s, path, &r), 0);
        h_assert_contains(r.body, "\"name\":\"write_in_file\"");
        h_resp_free(&r);
    }

    struct file_wait fw;
    snprintf(fw.path, sizeof fw.path, "%s/log.txt", dir);
    assert_true(h_poll(two_lines, &fw, DEADLINE_MS));
    const char *line = fw.text;
    for (int i = 0; i < 2; i++) {
        assert_true(strncmp(line, "Notification sent @ ", 20) == 0);
        assert_true(is_iso_utc(line + 20));
        assert_int_equal(line[40], '\n');
        line += 41;
    }
    assert_int_equal(*line, '\0');

    assert_true(h_wait_stat(&s, "send_email_notification", "succeeded", 2, DEADLINE_MS));
    assert_true(h_wait_stat(&s, "write_in_file", "succeeded", 2, DEADLINE_MS));
    assert_true(h_wait_log(&s, "email notification: Account created", DEADLINE_MS));

    assert_int_equal(h_stop(&s, SIGTERM), 0);
    h_free(&s);
    unlink(fw.path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(examples_accepted_answers_before_the_task_runs),
        cmocka_unit_test(examples_periodic_ticks_with_a_new_scoped_service),
        cmocka_unit_test(examples_orders_confirms_by_email),
        cmocka_unit_test(examples_register_runs_route_tasks_concurrently),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
