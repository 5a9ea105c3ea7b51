/*
 * test_cli.c - option parsing: defaults, every option in both forms, the
 * PORT variable, usage errors, --help and --version text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "helpers.h"
#include "http.h"
#include "queue.h"

/* Stands in for http.c, so this test does not link the HTTP room. */
const char *http_mhd_version(void)
{
    return "9.9.9-test";
}

typedef struct run {
    int rc;
    cli_config cfg;
    char *out, *err;
} run;

/* Parse a NULL-terminated list of arguments (argv[0] is added). */
static run parse(const char *first, ...)
{
    char *argv[64];
    int argc = 0;
    va_list ap;
    argv[argc++] = (char *)"bgserve";
    va_start(ap, first);
    for (const char *a = first; a != NULL; a = va_arg(ap, const char *)) {
        assert_true(argc < 63);
        argv[argc++] = (char *)a;
    }
    va_end(ap);
    argv[argc] = NULL;

    run r;
    size_t olen, elen;
    memset(&r, 0, sizeof(r));
    FILE *out = open_memstream(&r.out, &olen);
    FILE *err = open_memstream(&r.err, &elen);
    assert_non_null(out);
    assert_non_null(err);
    r.rc = cli_parse(argc, argv, &r.cfg, out, err);
    fclose(out);
    fclose(err);
    return r;
}

static void run_free(run *r)
{
    free(r->out);
    free(r->err);
}

static int setup(void **state)
{
    (void)state;
    unsetenv("PORT");
    return 0;
}

static void cli_defaults(void **state)
{
    (void)state;
    run r = parse("app.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_string_equal(r.cfg.plugin_path, "app.so");
    assert_string_equal(r.cfg.host, "127.0.0.1");
    assert_int_equal(r.cfg.port, 8000);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(r.cfg.threads, cores > 1024 ? 1024 : cores < 1 ? 1 : cores);
    assert_int_equal(r.cfg.timeout_s, 30);
    assert_int_equal(r.cfg.conn_limit, 1024);
    assert_int_equal(r.cfg.max_body, 1024 * 1024);
    assert_int_equal(r.cfg.workers, 16);
    assert_int_equal(r.cfg.queue_cap, 65536);
    assert_int_equal(r.cfg.linger_us, QUEUE_LINGER_ADAPTIVE);
    assert_int_equal(r.cfg.inline_us, 50);
    assert_int_equal(r.cfg.keep, 10000);
    assert_int_equal(r.cfg.drain_timeout_ms, 10000);
    assert_int_equal(r.cfg.introspection, 1);
    assert_int_equal(r.cfg.quiet, 0);
    assert_int_equal(r.cfg.log_json, 0);
    assert_int_equal(r.cfg.color, -1);
    assert_int_equal(r.cfg.check, 0);
    assert_int_equal(r.cfg.debounce_ms, 20);
    assert_int_equal(r.cfg.single_process, 0);
    assert_string_equal(r.out, "");
    assert_string_equal(r.err, "");
    run_free(&r);
}

static void cli_every_option_separate_value(void **state)
{
    (void)state;
    run r = parse("--host", "0.0.0.0", "--port", "9001", "--threads", "3",
                  "--timeout", "5", "--max-connections", "77", "--max-body",
                  "2048", "--workers", "4", "--queue", "100", "--linger", "0", "--inline-tasks", "0", "--keep", "0",
                  "--drain-timeout", "2.5", "--no-introspection", "--quiet",
                  "--log-format", "json", "--color", "never", "--check",
                  "--watch-debounce", "5", "--single-process", "x.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_string_equal(r.err, "");
    assert_string_equal(r.cfg.plugin_path, "x.so");
    assert_string_equal(r.cfg.host, "0.0.0.0");
    assert_int_equal(r.cfg.port, 9001);
    assert_int_equal(r.cfg.threads, 3);
    assert_int_equal(r.cfg.timeout_s, 5);
    assert_int_equal(r.cfg.conn_limit, 77);
    assert_int_equal(r.cfg.max_body, 2048);
    assert_int_equal(r.cfg.workers, 4);
    assert_int_equal(r.cfg.queue_cap, 100);
    assert_int_equal(r.cfg.linger_us, 0);
    assert_int_equal(r.cfg.inline_us, 0);
    assert_int_equal(r.cfg.keep, 0);
    assert_int_equal(r.cfg.drain_timeout_ms, 2500);
    assert_int_equal(r.cfg.introspection, 0);
    assert_int_equal(r.cfg.quiet, 1);
    assert_int_equal(r.cfg.log_json, 1);
    assert_int_equal(r.cfg.color, 0);
    assert_int_equal(r.cfg.check, 1);
    assert_int_equal(r.cfg.debounce_ms, 5);
    assert_int_equal(r.cfg.single_process, 1);
    run_free(&r);
}

static void cli_equals_form(void **state)
{
    (void)state;
    run r = parse("--host=::1", "--port=0", "--threads=1024", "--timeout=86400",
                  "--max-connections=1", "--max-body=1G", "--workers=1024",
                  "--queue=16777216", "--linger=100000", "--inline-tasks=1000", "--keep=10000000", "--drain-timeout=0",
                  "--log-format=text", "--color=always", "a.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_string_equal(r.err, "");
    assert_string_equal(r.cfg.host, "::1");
    assert_int_equal(r.cfg.port, 0);
    assert_int_equal(r.cfg.threads, 1024);
    assert_int_equal(r.cfg.timeout_s, 86400);
    assert_int_equal(r.cfg.conn_limit, 1);
    assert_int_equal(r.cfg.max_body, 1024ull * 1024 * 1024);
    assert_int_equal(r.cfg.workers, 1024);
    assert_int_equal(r.cfg.queue_cap, 16777216);
    assert_int_equal(r.cfg.linger_us, 100000);
    assert_int_equal(r.cfg.inline_us, 1000);
    assert_int_equal(r.cfg.keep, 10000000);
    assert_int_equal(r.cfg.drain_timeout_ms, 0);
    assert_int_equal(r.cfg.log_json, 0);
    assert_int_equal(r.cfg.color, 1);
    run_free(&r);
}

static void cli_short_options(void **state)
{
    (void)state;
    run r = parse("-p", "1234", "-q", "a.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_int_equal(r.cfg.port, 1234);
    assert_int_equal(r.cfg.quiet, 1);
    run_free(&r);
    r = parse("a.so", "-p4321", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_int_equal(r.cfg.port, 4321);
    run_free(&r);
    r = parse("--color", "auto", "--", "-weird.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_int_equal(r.cfg.color, -1);
    assert_string_equal(r.cfg.plugin_path, "-weird.so");
    run_free(&r);
}

/* --linger takes "adaptive" (the default, said explicitly) as well as a
 * number; the last one given wins. */
static void cli_linger_adaptive(void **state)
{
    (void)state;
    run r = parse("--linger", "250", "--linger", "adaptive", "a.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_int_equal(r.cfg.linger_us, QUEUE_LINGER_ADAPTIVE);
    run_free(&r);
    r = parse("--linger=adaptive", "--linger=250", "a.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_int_equal(r.cfg.linger_us, 250);
    run_free(&r);
}

static void cli_max_body_suffixes(void **state)
{
    (void)state;
    static const struct { const char *in; size_t want; } cases[] = {
        {"0", 0}, {"1k", 1024}, {"3K", 3072}, {"2m", 2u << 20},
        {"5M", 5u << 20}, {"1g", 1u << 30}, {"1024M", 1u << 30},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run r = parse("--max-body", cases[i].in, "a.so", NULL);
        assert_int_equal(r.rc, CLI_RUN);
        assert_int_equal(r.cfg.max_body, cases[i].want);
        run_free(&r);
    }
}

static void cli_drain_timeout_fractions(void **state)
{
    (void)state;
    static const struct { const char *in; unsigned want; } cases[] = {
        {"0.5", 500}, {"1.25", 1250}, {"3600", 3600000}, {"0.0015", 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run r = parse("--drain-timeout", cases[i].in, "a.so", NULL);
        assert_int_equal(r.rc, CLI_RUN);
        assert_int_equal(r.cfg.drain_timeout_ms, cases[i].want);
        run_free(&r);
    }
}

static void cli_port_env(void **state)
{
    (void)state;
    setenv("PORT", "5050", 1);
    run r = parse("a.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_int_equal(r.cfg.port, 5050);
    run_free(&r);

    /* --port wins over PORT, even an invalid PORT. */
    setenv("PORT", "nope", 1);
    r = parse("--port", "7", "a.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_int_equal(r.cfg.port, 7);
    run_free(&r);

    r = parse("a.so", NULL);
    assert_int_equal(r.rc, CLI_EXIT_USAGE);
    h_assert_contains(r.err, "PORT");
    h_assert_contains(r.err, "'nope'");
    h_assert_contains(r.err, "Try 'bgserve --help'");
    run_free(&r);

    setenv("PORT", "65536", 1);
    r = parse("a.so", NULL);
    assert_int_equal(r.rc, CLI_EXIT_USAGE);
    h_assert_contains(r.err, "PORT");
    run_free(&r);

    setenv("PORT", "", 1);
    r = parse("a.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_int_equal(r.cfg.port, 8000);
    run_free(&r);
    unsetenv("PORT");
}

/* A usage error: exit code, one "bgserve: " line containing want, then
 * the hint line, nothing on out. */
static void expect_usage(const char *want, const char *first, ...)
{
    char *argv[16];
    int argc = 0;
    va_list ap;
    argv[argc++] = (char *)"bgserve";
    va_start(ap, first);
    for (const char *a = first; a != NULL; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;

    char *out = NULL, *err = NULL;
    size_t olen, elen;
    FILE *fo = open_memstream(&out, &olen);
    FILE *fe = open_memstream(&err, &elen);
    cli_config cfg;
    int rc = cli_parse(argc, argv, &cfg, fo, fe);
    fclose(fo);
    fclose(fe);
    if (strstr(err, want) == NULL)
        fail_msg("expected '%s' in: %s", want, err);
    assert_int_equal(rc, CLI_EXIT_USAGE);
    assert_string_equal(out, "");
    assert_true(strncmp(err, "bgserve: ", 9) == 0);
    const char *nl = strchr(err, '\n');
    assert_non_null(nl);
    assert_string_equal(nl + 1, "Try 'bgserve --help' for more information.\n");
    free(out);
    free(err);
}

static void cli_usage_errors(void **state)
{
    (void)state;
    expect_usage("unknown option '--bogus'", "--bogus", "a.so", NULL);
    expect_usage("unknown option '--bogus'", "--bogus=1", "a.so", NULL);
    expect_usage("unknown option '-x'", "-x", "a.so", NULL);
    expect_usage("unknown option '-qh'", "-qh", "a.so", NULL);
    expect_usage("option '--port' needs a value", "a.so", "--port", NULL);
    expect_usage("option '--port' needs a value", "a.so", "-p", NULL);
    expect_usage("option '--quiet' takes no value", "--quiet=yes", "a.so", NULL);
    expect_usage("missing APP.so (the plugin to serve)", NULL);
    expect_usage("missing APP.so (the plugin to serve)", "--quiet", NULL);
    expect_usage("more than one APP.so given ('a.so' and 'b.so')", "a.so",
                 "b.so", NULL);
    expect_usage("--port must be a whole number from 0 to 65535 (got '65536')",
                 "--port", "65536", "a.so", NULL);
    expect_usage("--port must be a whole number from 0 to 65535 (got '-1')",
                 "--port", "-1", "a.so", NULL);
    expect_usage("--port must be a whole number from 0 to 65535 (got '80x')",
                 "--port=80x", "a.so", NULL);
    expect_usage("--inline-tasks must be a whole number from 0 to 1000 (got '1001')",
                 "--inline-tasks", "1001", "a.so", NULL);
    expect_usage("--inline-tasks must be a whole number from 0 to 1000 (got 'fast')",
                 "--inline-tasks", "fast", "a.so", NULL);
    expect_usage("--threads must be a whole number from 1 to 1024 (got '0')",
                 "--threads", "0", "a.so", NULL);
    expect_usage("--threads must be a whole number from 1 to 1024 (got '1025')",
                 "--threads", "1025", "a.so", NULL);
    expect_usage("--timeout must be a whole number of seconds from 1 to 86400",
                 "--timeout", "0", "a.so", NULL);
    expect_usage("--max-connections must be a whole number from 1 to",
                 "--max-connections", "0", "a.so", NULL);
    expect_usage("--max-body must be a size from 0 to 1G", "--max-body",
                 "2G", "a.so", NULL);
    expect_usage("--max-body must be a size from 0 to 1G", "--max-body",
                 "1X", "a.so", NULL);
    expect_usage("--max-body must be a size from 0 to 1G", "--max-body",
                 "1kk", "a.so", NULL);
    expect_usage("--workers must be a whole number from 1 to 1024 (got 'many')",
                 "--workers", "many", "a.so", NULL);
    expect_usage("--queue must be a whole number from 1 to 16777216",
                 "--queue", "16777217", "a.so", NULL);
    expect_usage("--linger must be 'adaptive' or a whole number of microseconds from 0 to 100000 (got '100001')",
                 "--linger", "100001", "a.so", NULL);
    expect_usage("--linger must be 'adaptive' or a whole number of microseconds from 0 to 100000 (got 'Adaptive')",
                 "--linger", "Adaptive", "a.so", NULL);
    expect_usage("--linger must be 'adaptive' or a whole number of microseconds from 0 to 100000 (got '1ms')",
                 "--linger", "1ms", "a.so", NULL);
    expect_usage("--linger must be 'adaptive' or a whole number of microseconds from 0 to 100000 (got '-1')",
                 "--linger=-1", "a.so", NULL);
    expect_usage("--keep must be a whole number from 0 to 10000000",
                 "--keep", "10000001", "a.so", NULL);
    expect_usage("--drain-timeout must be a number of seconds from 0 to 3600",
                 "--drain-timeout", "3600.5", "a.so", NULL);
    expect_usage("--drain-timeout must be a number of seconds from 0 to 3600",
                 "--drain-timeout", "1.", "a.so", NULL);
    expect_usage("--drain-timeout must be a number of seconds from 0 to 3600",
                 "--drain-timeout", "nan", "a.so", NULL);
    expect_usage("--watch-debounce must be milliseconds from 0 to 10000 (got '10001')",
                 "--watch-debounce", "10001", "a.so", NULL);
    expect_usage("--log-format must be text or json (got 'xml')",
                 "--log-format", "xml", "a.so", NULL);
    expect_usage("--color must be auto, always or never (got 'yes')",
                 "--color=yes", "a.so", NULL);
    expect_usage("--host needs an address", "--host=", "a.so", NULL);
    expect_usage("--broker-name must be a word without braces, colons or spaces (got 'a:b')",
                 "--broker-name", "a:b", "a.so", NULL);
    expect_usage("--broker-name must be a word without braces, colons or spaces (got '')",
                 "--broker-name=", "a.so", NULL);
    expect_usage("--broker-visibility must be milliseconds from 100 to 86400000 (got '99')",
                 "--broker-visibility", "99", "a.so", NULL);
    expect_usage("--broker-capacity must be a number of tasks from 1 to 1000000000 (got '0')",
                 "--broker-capacity", "0", "a.so", NULL);
    expect_usage("--journal and --broker are two homes for the same tasks: give one of them",
                 "--journal", "j.db", "--broker", "redis://h", "a.so", NULL);
}

static void cli_broker_options(void **state)
{
    (void)state;
    unsetenv("BGSERVE_BROKER");
    run r = parse("--broker", "redis://h:1", "--broker-name", "shop", "--broker-visibility",
                  "2500", "--broker-capacity", "1000", "--concurrency", "8", "a.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_string_equal(r.cfg.broker_url, "redis://h:1");
    assert_string_equal(r.cfg.broker_name, "shop");
    assert_int_equal(r.cfg.broker_visibility_ms, 2500);
    assert_int_equal(r.cfg.broker_capacity, 1000);
    assert_int_equal(r.cfg.workers, 8);
    run_free(&r);
    r = parse("a.so", NULL);
    assert_null(r.cfg.broker_url);
    run_free(&r);
    /* The environment is the default; the option wins. */
    setenv("BGSERVE_BROKER", "redis://from-env:2", 1);
    r = parse("a.so", NULL);
    assert_string_equal(r.cfg.broker_url, "redis://from-env:2");
    run_free(&r);
    r = parse("--broker", "redis://opt:3", "a.so", NULL);
    assert_string_equal(r.cfg.broker_url, "redis://opt:3");
    run_free(&r);
    unsetenv("BGSERVE_BROKER");
}

static void cli_help_lists_everything(void **state)
{
    (void)state;
    run r = parse("--help", NULL); /* no APP.so needed */
    assert_int_equal(r.rc, CLI_EXIT_OK);
    assert_string_equal(r.err, "");
    assert_true(strncmp(r.out, "Usage: bgserve [OPTIONS] APP.so\n", 32) == 0);
    static const char *const words[] = {
        "--host", "--port", "-p,", "--threads", "--timeout",
        "--max-connections", "--max-body", "--workers", "--queue", "--linger", "--keep",
        "--drain-timeout", "--no-introspection", "--quiet", "-q,",
        "--log-format", "--color", "--check", "--help", "-h,", "--version",
        "-V,", "PORT", "BGSERVE_DEBUG", "NO_COLOR", "SIGINT", "SIGTERM",
        "second SIGINT", "default 127.0.0.1", "else 8000", "default 30",
        "default 1024", "default 1M", "default 16", "default 65536",
        "default 10000", "(default 10)", "default text", "default auto",
        "I/O", "Exit status", "0  ok", "1  plugin refused", "2  usage error",
        "worker --broker URL", "--broker URL", "--broker-name", "--broker-visibility",
        "--broker-capacity", "BGSERVE_BROKER",
    };
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strstr(r.out, words[i]) == NULL)
            fail_msg("--help does not mention '%s'", words[i]);
    run_free(&r);

    r = parse("a.so", "-h", NULL);
    assert_int_equal(r.rc, CLI_EXIT_OK);
    h_assert_contains(r.out, "Usage: bgserve");
    run_free(&r);
}

static void cli_version_lines(void **state)
{
    (void)state;
    run r = parse("--version", NULL);
    assert_int_equal(r.rc, CLI_EXIT_OK);
    assert_string_equal(r.out, "bgserve 0.1.0\nplugin ABI 1.1\n"
                               "libmicrohttpd 9.9.9-test\n");
    assert_string_equal(r.err, "");
    run_free(&r);
    r = parse("-V", NULL);
    assert_int_equal(r.rc, CLI_EXIT_OK);
    h_assert_contains(r.out, "bgserve " BGSERVE_VERSION "\n");
    run_free(&r);
}

static void cli_reentrant(void **state)
{
    (void)state;
    /* Repeated calls share no state: an error does not leak into the next
     * parse, and options from one call do not carry over. */
    run r = parse("--port", "1", "--quiet", "a.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    run_free(&r);
    r = parse("--nope", NULL);
    assert_int_equal(r.rc, CLI_EXIT_USAGE);
    run_free(&r);
    r = parse("b.so", NULL);
    assert_int_equal(r.rc, CLI_RUN);
    assert_int_equal(r.cfg.port, 8000);
    assert_int_equal(r.cfg.quiet, 0);
    assert_string_equal(r.cfg.plugin_path, "b.so");
    run_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(cli_broker_options, setup),
        cmocka_unit_test_setup(cli_defaults, setup),
        cmocka_unit_test_setup(cli_every_option_separate_value, setup),
        cmocka_unit_test_setup(cli_equals_form, setup),
        cmocka_unit_test_setup(cli_short_options, setup),
        cmocka_unit_test_setup(cli_linger_adaptive, setup),
        cmocka_unit_test_setup(cli_max_body_suffixes, setup),
        cmocka_unit_test_setup(cli_drain_timeout_fractions, setup),
        cmocka_unit_test_setup(cli_port_env, setup),
        cmocka_unit_test_setup(cli_usage_errors, setup),
        cmocka_unit_test_setup(cli_help_lists_everything, setup),
        cmocka_unit_test_setup(cli_version_lines, setup),
        cmocka_unit_test_setup(cli_reentrant, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
