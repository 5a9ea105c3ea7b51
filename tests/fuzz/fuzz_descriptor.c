/*
 * fuzz_descriptor.c - libFuzzer target: descriptor validation
 * (plugin_validate) fed arbitrary bytes as a descriptor and its route,
 * task and route-task tables.
 *
 * The input drives a small builder: header words (magic, sizes, ABI) are
 * either right or taken raw from the input, element sizes may be anything,
 * and each table element is filled with input bytes before its pointer
 * fields are set to input strings (or NULL) and dummy functions (or NULL).
 * Every table is allocated with exactly count * element-size bytes and
 * every string with exactly its length + 1, so AddressSanitizer catches a
 * validator that reads past what a plugin declared.  Pointer fields are
 * always valid or NULL: a plugin that lies with a wild pointer cannot be
 * defended against, and is not what this target is about.
 * Checks: a refusal always says what to fix, and err is NUL-terminated.
 */
#include "plugin.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

typedef struct rd {
    const uint8_t *p;
    size_t n;
    void *allocs[512]; /* everything to free at the end */
    size_t nallocs;
} rd;

static void *keep(rd *r, void *p)
{
    if (r->nallocs < sizeof r->allocs / sizeof r->allocs[0])
        r->allocs[r->nallocs++] = p;
    else
        abort(); /* cannot happen: counts are bounded below */
    return p;
}

static uint8_t u8(rd *r)
{
    if (r->n == 0)
        return 0;
    r->n--;
    return *r->p++;
}

static uint32_t u32(rd *r)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)u8(r) << (8 * i);
    return v;
}

static void bytes(rd *r, void *out, size_t n)
{
    size_t k = n < r->n ? n : r->n;
    memcpy(out, r->p, k);
    memset((char *)out + k, 0, n - k);
    r->p += k;
    r->n -= k;
}

static const char *const names[] = {"GET", "POST", "HEAD", "/", "/x/{id}", "task", "/_bgserve/x"};

/* NULL, a well-known string, or up to 80 input bytes. */
static const char *str(rd *r)
{
    uint8_t sel = u8(r);
    if (sel == 0)
        return NULL;
    if (sel <= sizeof names / sizeof names[0])
        return names[sel - 1];
    size_t len = u8(r) % 81;
    char *s = keep(r, malloc(len + 1));
    bytes(r, s, len);
    s[len] = '\0';
    return s;
}

static int dummy_handler(bgs_req *req, bgs_res *res)
{
    (void)req;
    (void)res;
    return 0;
}

static int dummy_task(bgs_task_ctx *ctx, const void *p, size_t n)
{
    (void)ctx;
    (void)p;
    (void)n;
    return 0;
}

static int dummy_start(bgs_app *app)
{
    (void)app;
    return 0;
}

/* Element size: right, or raw (bounded so tables stay small). */
static uint32_t elem_size(rd *r, int raw, uint32_t right)
{
    return raw ? u32(r) % 4200u : right;
}

/* Set a pointer field at off when the element of `size` bytes holds it. */
#define SET(elem, size, type, field, value)                                   \
    do {                                                                      \
        if (offsetof(type, field) + sizeof(((type *)0)->field) <= (size)) {   \
            __typeof__(((type *)0)->field) v_ = (value);                      \
            memcpy((char *)(elem) + offsetof(type, field), &v_, sizeof v_);   \
        }                                                                     \
    } while (0)

static void *table(rd *r, uint32_t count, uint32_t size)
{
    size_t n = (size_t)count * size;
    char *t = keep(r, malloc(n ? n : 1));
    bytes(r, t, n);
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rd r = {.p = data, .n = size};
    uint32_t flags = u32(&r);

    bgs_plugin *d = keep(&r, calloc(1, sizeof *d));
    d->magic = flags & 0x1 ? u32(&r) : BGS_PLUGIN_MAGIC;
    d->struct_size = flags & 0x2 ? u32(&r) : (uint32_t)sizeof *d;
    d->abi_major = flags & 0x4 ? u32(&r) : BGS_ABI_MAJOR;
    d->abi_minor = flags & 0x8 ? u32(&r) : BGS_ABI_MINOR;
    d->name = str(&r);
    d->version = str(&r);
    d->route_size = elem_size(&r, flags & 0x10, sizeof(bgs_route));
    d->task_size = elem_size(&r, flags & 0x20, sizeof(bgs_task_def));
    d->route_task_size = elem_size(&r, flags & 0x40, sizeof(bgs_route_task));
    d->reserved0 = flags & 0x80 ? u32(&r) : 0;
    d->start = flags & 0x100 ? dummy_start : NULL;

    /* Tasks. */
    d->task_count = u8(&r) % 6;
    if (!(flags & 0x200) || d->task_count == 0) {
        char *t = table(&r, d->task_count, d->task_size);
        for (uint32_t i = 0; i < d->task_count; i++) {
            char *e = t + (size_t)i * d->task_size;
            SET(e, d->task_size, bgs_task_def, name, str(&r));
            SET(e, d->task_size, bgs_task_def, fn, u8(&r) ? dummy_task : NULL);
        }
        d->tasks = (const bgs_task_def *)(void *)t;
    }

    /* Routes, each with a route-task list. */
    d->route_count = u8(&r) % 6;
    if (!(flags & 0x400) || d->route_count == 0) {
        char *t = table(&r, d->route_count, d->route_size);
        for (uint32_t i = 0; i < d->route_count; i++) {
            char *e = t + (size_t)i * d->route_size;
            SET(e, d->route_size, bgs_route, method, str(&r));
            SET(e, d->route_size, bgs_route, path, str(&r));
            SET(e, d->route_size, bgs_route, handler, u8(&r) ? dummy_handler : NULL);
            uint32_t nt = u8(&r) % 4;
            const bgs_route_task *list = NULL;
            if (nt > 0 && u8(&r) != 0) {
                char *lt = table(&r, nt, d->route_task_size);
                for (uint32_t k = 0; k < nt; k++) {
                    char *le = lt + (size_t)k * d->route_task_size;
                    SET(le, d->route_task_size, bgs_route_task, name, str(&r));
                    /* payload: NULL, or payload_len readable bytes */
                    uint64_t plen = u8(&r) % 16;
                    const void *payload = plen && u8(&r) ? keep(&r, calloc(1, plen)) : NULL;
                    SET(le, d->route_task_size, bgs_route_task, payload, payload);
                    SET(le, d->route_task_size, bgs_route_task, payload_len, plen);
                }
                list = (const bgs_route_task *)(void *)lt;
            }
            SET(e, d->route_size, bgs_route, tasks, list);
            SET(e, d->route_size, bgs_route, task_count, nt);
        }
        d->routes = (const bgs_route *)(void *)t;
    }

    char err[1024];
    memset(err, 'x', sizeof err);
    int rc = plugin_validate(d, err, sizeof err);
    check(rc == 0 || rc == -1);
    if (rc != 0) {
        check(memchr(err, '\0', sizeof err) != NULL);
        check(strstr(err, "fix: ") != NULL);
    }
    for (size_t i = 0; i < r.nallocs; i++)
        free(r.allocs[i]);
    return 0;
}
