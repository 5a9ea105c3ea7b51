/*
 * fuzz_router.c - libFuzzer target: route template parsing and matching.
 *
 * Input: byte 0 picks how many of the following '\n'-separated lines are
 * templates (0..7); every other line is a request path.  Each line's first
 * byte picks the method.  Checks: router_check_template agrees with
 * router_add (apart from duplicates), an added literal template matches
 * itself and finds its own route, lookups never report more than
 * ROUTER_MAX_PARAMS parameters and parameter values lie in the scratch
 * buffer.  The scratch buffer is exactly as large as the contract says, so
 * AddressSanitizer catches any overrun.
 */
#include "router.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
#define NMETHODS (sizeof methods / sizeof methods[0])

static void check(int ok)
{
    if (!ok)
        abort();
}

static void lookup(const router *r, const char *method, const char *path,
                   void *expect)
{
    size_t n = strlen(path);
    char *scratch = malloc(n + 1);
    router_match m;
    memset(&m, 0, sizeof m);
    int rc = router_lookup(r, method, path, scratch, &m);
    check(rc >= ROUTER_FOUND && rc <= ROUTER_BAD_PATH);
    if (rc == ROUTER_FOUND) {
        check(m.nparams <= ROUTER_MAX_PARAMS);
        for (unsigned i = 0; i < m.nparams; i++) {
            check(m.params[i].name != NULL);
            check(m.params[i].value >= scratch && m.params[i].value <= scratch + n);
            check(strlen(m.params[i].value) <= n);
        }
        if (expect)
            check(m.data == expect);
    } else if (rc == ROUTER_BAD_METHOD) {
        check(memchr(m.allow, '\0', sizeof m.allow) != NULL);
    }
    check(expect == NULL || rc == ROUTER_FOUND);
    free(scratch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    unsigned ntemplates = data[0] % 8;
    router *r = router_new();
    char err[256];
    /* Route data: the addresses of these ids, distinct per template. */
    static int ids[8];

    const uint8_t *p = data + 1, *end = data + size;
    unsigned line = 0;
    while (p <= end) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        const char *method = methods[(len ? p[0] : line) % NMETHODS];
        const uint8_t *s = len ? p + 1 : p;
        size_t slen = len ? len - 1 : 0;
        char *text = malloc(slen + 1);
        memcpy(text, s, slen);
        text[slen] = '\0';
        if (strlen(text) == slen) { /* NUL inside: not a C string, skip */
            if (line < ntemplates) {
                int checked = router_check_template(text, err, sizeof err);
                int added = router_add(r, method, text, &ids[line], err, sizeof err);
                check(memchr(err, '\0', sizeof err) != NULL);
                if (checked != 0)
                    check(added != 0);
                else if (added != 0)
                    check(strncmp(err, "duplicate route", 15) == 0);
                if (added == 0 && strchr(text, '{') == NULL)
                    lookup(r, method, text, &ids[line]);
            } else {
                lookup(r, method, text, NULL);
            }
        }
        free(text);
        line++;
        if (nl == NULL)
            break;
        p = nl + 1;
    }
    check(router_count(r) <= ntemplates);
    router_free(r);
    return 0;
}
