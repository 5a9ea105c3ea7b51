/*
 * plugin.c - the loader (implements plugin.h): dlopen a plugin, validate
 * its descriptor against ABI v1, copy its tables into server-owned memory
 * and build its router.
 *
 * State: a plugin struct per load, owned by the caller (the generation).
 * Nothing here keeps a pointer into the plugin image except function
 * pointers.  No globals, no locks: a load runs on one thread (main, or
 * the reload thread) and the result is read-only afterwards.
 *
 * The descriptor and every table element are read through memcpy into a
 * zeroed local copy of the size this server knows, limited to the size
 * the plugin recorded, so fields past an older plugin's struct count as
 * zero and a newer plugin's extra fields are ignored.  plugin_validate
 * and plugin_load share one walk (build), so what is validated is
 * exactly what is copied.
 */
#include "plugin.h"

#include "image.h"
#include "log.h"
#include "urls.h"
#include "util.h"
#include "version.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------ */
/* ABI 1.0 sizes and limits                                            */
/* ------------------------------------------------------------------ */

/* The 1.0 layout ends at the last field of each struct; frozen here so a
 * later minor version that appends fields keeps accepting 1.0 plugins. */
#define ROUTE_SIZE_1_0 ((uint32_t)(offsetof(bgs_route, task_mode) + sizeof(uint32_t)))
#define TASK_SIZE_1_0 ((uint32_t)(offsetof(bgs_task_def, flags) + sizeof(uint32_t)))
#define ROUTE_TASK_SIZE_1_0 ((uint32_t)(offsetof(bgs_route_task, payload_len) + sizeof(uint64_t)))

/* Sanity limits: anything past these is garbage, not a real plugin. */
#define MAX_ELEMENT_SIZE 4096u
#define MAX_TASK_NAME 64u
#define MAX_PAYLOAD ((uint64_t)16 << 20)

static const char FIX_REBUILD[] =
    "rebuild the plugin from source with BGS_PLUGIN(...) from this "
    "bgserve's <bgserve.h>";

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

/* "WHAT\n  fix: FIX" into err; always returns -1. */
static int refuse(char *err, size_t errlen, const char *fix, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int refuse(char *err, size_t errlen, const char *fix, const char *fmt, ...)
{
    if (errlen == 0)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < errlen)
        snprintf(err + n, errlen - (size_t)n, "\n  fix: %s", fix);
    return -1;
}

static const char *str_or(const char *s, const char *dflt)
{
    return s != NULL ? s : dflt;
}

/* Element i of an array of elements of `size` bytes, read into out (of
 * `known` bytes), zero-filled past what the plugin provided. */
static void read_element(const void *base, uint32_t size, size_t i,
                         void *out, size_t known)
{
    memset(out, 0, known);
    memcpy(out, (const char *)base + (size_t)size * i,
           size < known ? size : known);
}

static int task_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_TASK_NAME)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                 (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                 c == ':' || c == '-';
        if (!ok)
            return 0;
    }
    return 1;
}

static int is_reserved(const char *path)
{
    return strncmp(path, URLS_PREFIX, URLS_PREFIX_LEN) == 0 &&
           (path[URLS_PREFIX_LEN] == '\0' || path[URLS_PREFIX_LEN] == '/');
}

/* Free the tables of p (partially filled is fine), not p itself. */
static void free_tables(plugin *p)
{
    for (size_t i = 0; i < p->nroutes; i++) {
        plugin_route *r = &p->routes[i];
        for (uint32_t k = 0; k < r->ntasks; k++) {
            free(r->tasks[k].name);
            free(r->tasks[k].payload);
        }
        free(r->tasks);
        free(r->method);
        free(r->path);
        free(r->stats);
    }
    free(p->routes);
    p->routes = NULL;
    p->nroutes = 0;
    for (size_t i = 0; i < p->ntasks; i++)
        free(p->tasks[i].name);
    free(p->tasks);
    p->tasks = NULL;
    p->ntasks = 0;
    router_free(p->router);
    p->router = NULL;
    free(p->name);
    free(p->version);
    p->name = p->version = NULL;
}

/* ------------------------------------------------------------------ */
/* Validation and copying                                              */
/* ------------------------------------------------------------------ */

static int check_header(const bgs_plugin *d, bgs_plugin *dd, char *err,
                        size_t errlen)
{
    if (d == NULL)
        return refuse(err, errlen,
                      "make bgserve_plugin_v1 return the descriptor "
                      "(BGS_PLUGIN(...) from <bgserve.h> does this)",
                      "bgserve_plugin_v1 returned NULL instead of a "
                      "descriptor");
    /* The 16-byte header never moves; read it before trusting a size. */
    memset(dd, 0, sizeof(*dd));
    memcpy(dd, d, offsetof(bgs_plugin, name));
    if (dd->magic != BGS_PLUGIN_MAGIC)
        return refuse(err, errlen, FIX_REBUILD,
                      "bad descriptor magic 0x%08x (expected 0x%08x, "
                      "\"BGSV\"): this is not a bgserve plugin, or its "
                      "descriptor is corrupt",
                      dd->magic, BGS_PLUGIN_MAGIC);
    if (dd->abi_major != BGS_ABI_MAJOR)
        return refuse(err, errlen,
                      "rebuild the plugin against this bgserve's bgserve.h, "
                      "or run it with a bgserve that supports its ABI",
                      "built for plugin ABI %u.%u but this bgserve supports "
                      "%u.x (%u.%u)", dd->abi_major, dd->abi_minor,
                      BGS_ABI_MAJOR, BGS_ABI_MAJOR, BGS_ABI_MINOR);
    if (dd->abi_minor > BGS_ABI_MINOR)
        return refuse(err, errlen,
                      "upgrade bgserve, or rebuild the plugin against the "
                      "older bgserve.h that ships with this bgserve",
                      "built for ABI %u.%u, this bgserve %s supports up to "
                      "%u.%u", dd->abi_major, dd->abi_minor, BGSERVE_VERSION,
                      BGS_ABI_MAJOR, BGS_ABI_MINOR);
    if (dd->struct_size < BGS_PLUGIN_SIZE_1_0)
        return refuse(err, errlen, FIX_REBUILD,
                      "descriptor struct_size %u is smaller than the ABI "
                      "1.0 descriptor (%u bytes)",
                      dd->struct_size, BGS_PLUGIN_SIZE_1_0);
    memcpy(dd, d, dd->struct_size < sizeof(*dd) ? dd->struct_size : sizeof(*dd));

    struct {
        const char *field;
        const char *type;
        uint32_t have, min;
    } sizes[] = {
        {"route_size", "bgs_route", dd->route_size, ROUTE_SIZE_1_0},
        {"task_size", "bgs_task_def", dd->task_size, TASK_SIZE_1_0},
        {"route_task_size", "bgs_route_task", dd->route_task_size,
         ROUTE_TASK_SIZE_1_0},
    };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        if (sizes[i].have < sizes[i].min)
            return refuse(err, errlen, FIX_REBUILD,
                          "descriptor %s %u is smaller than the ABI 1.0 %s "
                          "(%u bytes)", sizes[i].field, sizes[i].have,
                          sizes[i].type, sizes[i].min);
        if (sizes[i].have > MAX_ELEMENT_SIZE)
            return refuse(err, errlen, FIX_REBUILD,
                          "descriptor %s %u is implausibly large (over %u "
                          "bytes): the descriptor is corrupt",
                          sizes[i].field, sizes[i].have, MAX_ELEMENT_SIZE);
    }
    return 0;
}

static int build_tasks(const bgs_plugin *dd, plugin *p, char *err,
                       size_t errlen)
{
    if (dd->task_count > 0 && dd->tasks == NULL)
        return refuse(err, errlen,
                      "point .tasks at the task table, or set .task_count "
                      "to 0", "task table is NULL but task_count is %u",
                      dd->task_count);
    if (p != NULL) {
        p->tasks = xcalloc(dd->task_count, sizeof(plugin_task));
    }
    for (uint32_t i = 0; i < dd->task_count; i++) {
        bgs_task_def t;
        read_element(dd->tasks, dd->task_size, i, &t, sizeof(t));
        if (t.name == NULL)
            return refuse(err, errlen, "give every task a name",
                          "task %u has no name (NULL)", i);
        if (!task_name_ok(t.name))
            return refuse(err, errlen,
                          "use 1 to 64 characters from A-Z a-z 0-9 _ . : -",
                          "task %u has an invalid name '%.80s'", i, t.name);
        if (t.fn == NULL)
            return refuse(err, errlen, "give the task a function",
                          "task %u '%s' has no function (fn is NULL)", i,
                          t.name);
        for (uint32_t k = 0; k < i; k++) {
            bgs_task_def o;
            read_element(dd->tasks, dd->task_size, k, &o, sizeof(o));
            if (strcmp(o.name, t.name) == 0)
                return refuse(err, errlen,
                              "give each task a unique name",
                              "duplicate task name '%s' (tasks %u and %u)",
                              t.name, k, i);
        }
        if (p != NULL) {
            plugin_task *pt = &p->tasks[p->ntasks++];
            pt->name = xstrdup(t.name);
            pt->fn = t.fn;
            pt->max_attempts = t.max_attempts ? t.max_attempts : PLUGIN_DEFAULT_MAX_ATTEMPTS;
            pt->backoff_base_ms = t.backoff_base_ms ? t.backoff_base_ms : PLUGIN_DEFAULT_BACKOFF_BASE_MS;
            pt->backoff_cap_ms = t.backoff_cap_ms ? t.backoff_cap_ms : PLUGIN_DEFAULT_BACKOFF_CAP_MS;
            pt->max_concurrency = t.max_concurrency;
            pt->every_ms = t.every_ms;
            pt->timeout_ms = t.timeout_ms;
            pt->flags = t.flags;
        }
    }
    return 0;
}

/* Is name in the descriptor's task table (already validated)? */
static int task_known(const bgs_plugin *dd, const char *name)
{
    for (uint32_t i = 0; i < dd->task_count; i++) {
        bgs_task_def t;
        read_element(dd->tasks, dd->task_size, i, &t, sizeof(t));
        if (strcmp(t.name, name) == 0)
            return 1;
    }
    return 0;
}

static int build_route_tasks(const bgs_plugin *dd, const bgs_route *rt,
                             uint32_t ri, plugin_route *pr, char *err,
                             size_t errlen)
{
    const char *m = str_or(rt->method, "(null)");
    if (rt->task_mode != BGS_SEQUENTIAL && rt->task_mode != BGS_CONCURRENT)
        return refuse(err, errlen,
                      "use BGS_SEQUENTIAL (0) or BGS_CONCURRENT (1)",
                      "route %u (%s %s) has task_mode %u", ri, m, rt->path,
                      rt->task_mode);
    if (rt->task_count > 0 && rt->tasks == NULL)
        return refuse(err, errlen,
                      "point .tasks at the route's task list, or set "
                      ".task_count to 0",
                      "route %u (%s %s) has task_count %u but tasks is NULL",
                      ri, m, rt->path, rt->task_count);
    if (pr != NULL && rt->task_count > 0)
        pr->tasks = xcalloc(rt->task_count, sizeof(plugin_route_task));
    for (uint32_t k = 0; k < rt->task_count; k++) {
        bgs_route_task t;
        read_element(rt->tasks, dd->route_task_size, k, &t, sizeof(t));
        if (t.name == NULL)
            return refuse(err, errlen, "name a task from the task table",
                          "route %u (%s %s) task %u has no name (NULL)",
                          ri, m, rt->path, k);
        if (!task_known(dd, t.name))
            return refuse(err, errlen,
                          "add the task to the plugin's task table "
                          "(.tasks), or fix the name",
                          "route %u (%s %s) task %u names unknown task "
                          "'%.80s'", ri, m, rt->path, k, t.name);
        if (t.payload_len > 0 && t.payload == NULL)
            return refuse(err, errlen,
                          "point .payload at the data, or set .payload_len "
                          "to 0",
                          "route %u (%s %s) task %u '%s' has payload_len "
                          "%llu but payload is NULL", ri, m, rt->path, k,
                          t.name, (unsigned long long)t.payload_len);
        if (t.payload_len > MAX_PAYLOAD)
            return refuse(err, errlen,
                          "keep fixed route-task payloads small; pass "
                          "large data another way",
                          "route %u (%s %s) task %u '%s' has a payload of "
                          "%llu bytes (the limit is %llu)", ri, m, rt->path,
                          k, t.name, (unsigned long long)t.payload_len,
                          (unsigned long long)MAX_PAYLOAD);
        if (pr != NULL) {
            plugin_route_task *pt = &pr->tasks[pr->ntasks++];
            pt->name = xstrdup(t.name);
            pt->len = (size_t)t.payload_len;
            pt->payload = pt->len ? xmemdup(t.payload, pt->len) : NULL;
        }
    }
    return 0;
}

/* The fix for a reason router_add gave. */
static const char *route_fix(const char *why)
{
    if (strncmp(why, "unknown method", 14) == 0)
        return "use one of GET HEAD POST PUT PATCH DELETE OPTIONS, in upper "
               "case";
    if (strncmp(why, "duplicate route", 15) == 0)
        return "remove one of the two routes, or change its method or path "
               "({id} and {name} in the same place match the same paths)";
    return "write the path as /literal/{param}/...: a leading '/', no empty "
           "segments, each parameter {name} alone in its segment with name "
           "= [A-Za-z_][A-Za-z0-9_]*, literals in visible ASCII without "
           "% ? #";
}

static int build_routes(const bgs_plugin *dd, plugin *p, router *r,
                        char *err, size_t errlen)
{
    if (dd->route_count > 0 && dd->routes == NULL)
        return refuse(err, errlen,
                      "point .routes at the route table, or set "
                      ".route_count to 0",
                      "route table is NULL but route_count is %u",
                      dd->route_count);
    if (p != NULL)
        p->routes = xcalloc(dd->route_count, sizeof(plugin_route));
    for (uint32_t i = 0; i < dd->route_count; i++) {
        bgs_route rt;
        char why[256];
        read_element(dd->routes, dd->route_size, i, &rt, sizeof(rt));
        const char *m = str_or(rt.method, "(null)");
        const char *path = str_or(rt.path, "(null)");
        if (rt.method == NULL)
            return refuse(err, errlen,
                          "set .method to GET HEAD POST PUT PATCH DELETE "
                          "or OPTIONS",
                          "route %u (%s %s) has no method", i, m, path);
        if (rt.path == NULL)
            return refuse(err, errlen, "set .path, e.g. \"/users/{id}\"",
                          "route %u (%s %s) has no path", i, m, path);
        if (rt.handler == NULL)
            return refuse(err, errlen, "give the route a handler function",
                          "route %u (%s %s) has no handler (NULL)", i, m,
                          path);
        if (is_reserved(rt.path))
            return refuse(err, errlen,
                          "move the route: " URLS_PREFIX "/ is reserved for "
                          "bgserve's own endpoints",
                          "route %u (%s %s) is under the reserved prefix "
                          URLS_PREFIX "/", i, m, path);
        plugin_route *pr = p != NULL ? &p->routes[i] : NULL;
        if (router_add(r, rt.method, rt.path, pr, why, sizeof(why)) < 0)
            return refuse(err, errlen, route_fix(why),
                          "invalid route %u (%s %s): %s", i, m, path, why);
        if (pr != NULL) {
            /* Count it now, so a failure below frees what it holds. */
            p->nroutes++;
            pr->method = xstrdup(rt.method);
            pr->path = xstrdup(rt.path);
            pr->handler = rt.handler;
            pr->mode = rt.task_mode;
            pr->stats = xcalloc(1, sizeof *pr->stats);
        }
        if (build_route_tasks(dd, &rt, i, pr, err, errlen) < 0)
            return -1;
    }
    return 0;
}

/*
 * Validate d; when p is not NULL also copy everything into p (on
 * failure p holds a partial copy for free_tables).  Returns 0 or -1.
 */
static int build(const bgs_plugin *d, plugin *p, char *err, size_t errlen)
{
    bgs_plugin dd;
    if (check_header(d, &dd, err, errlen) < 0)
        return -1;
    if (build_tasks(&dd, p, err, errlen) < 0)
        return -1;
    router *r = router_new();
    if (p != NULL)
        p->router = r;
    int rc = build_routes(&dd, p, r, err, errlen);
    if (p == NULL)
        router_free(r);
    if (rc < 0)
        return -1;
    if (p != NULL) {
        /* Route tasks name their definitions once, here, not per request. */
        for (size_t i = 0; i < p->nroutes; i++)
            for (uint32_t k = 0; k < p->routes[i].ntasks; k++)
                p->routes[i].tasks[k].def = plugin_find_task(p, p->routes[i].tasks[k].name);
        p->name = xstrdup(str_or(dd.name, ""));
        p->version = xstrdup(str_or(dd.version, ""));
        p->abi_major = dd.abi_major;
        p->abi_minor = dd.abi_minor;
        p->start = dd.start;
        p->stop = dd.stop;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Public API                                                          */
/* ------------------------------------------------------------------ */

int plugin_validate(const bgs_plugin *d, char *err, size_t errlen)
{
    return build(d, NULL, err, errlen);
}

int plugin_load(const char *path, const bgs_host_api *api, plugin **out,
                char *err, size_t errlen)
{
    char why[1024];
    int rc = -1;
    plugin *p = xcalloc(1, sizeof(plugin));
    *out = NULL;
    p->path = xstrdup(path);
    if (strchr(path, '/') == NULL) {
        size_t n = strlen(path) + 3;
        p->load_path = xmalloc(n);
        snprintf(p->load_path, n, "./%s", path);
    } else {
        p->load_path = xstrdup(path);
    }

    char what[768];
    int irc = image_prepare(p->load_path, &p->copy_path, what, sizeof(what));
    if (irc == IMAGE_EINCOMPLETE) {
        refuse(why, sizeof(why),
               "wait for the build to finish writing it (with --reload, "
               "bgserve tries again at the next write)",
               "incomplete file: %s", what);
        goto out;
    }
    if (irc == IMAGE_ESTATICTLS) {
        refuse(why, sizeof(why),
               "build it with the default TLS model (no -ftls-model=initial-exec, "
               "no initial-exec __thread variables) or keep thread-local state out "
               "of the plugin",
               "%s", what);
        goto out;
    }
    if (irc == IMAGE_ECOPY) {
        refuse(why, sizeof(why),
               "make $XDG_RUNTIME_DIR or /tmp writable for this user",
               "%s", what);
        goto out;
    }

    const char *de = what;
    if (irc == IMAGE_OK) {
        dlerror();
        p->dl = dlopen(p->copy_path, RTLD_NOW | RTLD_LOCAL);
        if (p->dl == NULL)
            de = str_or(dlerror(), "dlopen failed");
    }
    if (p->dl == NULL) {
        char fix[512];
        struct stat st;
        if (stat(p->load_path, &st) < 0)
            snprintf(fix, sizeof(fix),
                     "check the path (a path without '/' is taken relative "
                     "to the current directory) and build the plugin first");
        else if (S_ISDIR(st.st_mode))
            snprintf(fix, sizeof(fix), "give the path of the plugin's .so "
                     "file, not a directory");
        else
            snprintf(fix, sizeof(fix),
                     "build it as a shared object (cc -shared -fPIC "
                     "-Wl,-z,defs -o app.so app.c ...) and check that its "
                     "libraries resolve with 'ldd %s'", p->load_path);
        refuse(why, sizeof(why), fix, "not a loadable shared object: %s", de);
        goto out;
    }

    dlerror();
    void *sym = dlsym(p->dl, "bgserve_plugin_v1");
    if (sym == NULL) {
        refuse(why, sizeof(why),
               "define the plugin with BGS_PLUGIN(...) from <bgserve.h>, "
               "which exports bgserve_plugin_v1",
               "no bgserve_plugin_v1 symbol: this is not a bgserve plugin");
        goto out;
    }
    bgs_plugin_entry_fn entry;
    /* POSIX guarantees a data pointer from dlsym converts to a function
     * pointer; memcpy keeps -Wpedantic-style warnings away. */
    memcpy(&entry, &sym, sizeof(entry));
    if (build(entry(api), p, why, sizeof(why)) < 0)
        goto out;
    rc = 0;

out:
    if (rc < 0) {
        snprintf(err, errlen, "bgserve: cannot load plugin '%s': %s", path,
                 why);
        plugin_unload(p);
        return -1;
    }
    *out = p;
    return 0;
}

void plugin_unload(plugin *p)
{
    if (p == NULL)
        return;
    free_tables(p);
    if (p->dl != NULL) {
        dlclose(p->dl);
        /* Did it really leave?  A plugin that pins itself (threads of its
         * own, a registered destructor, unique symbols) stays mapped. */
        void *still = dlopen(p->copy_path, RTLD_NOW | RTLD_NOLOAD);
        if (still != NULL) {
            log_msg(BGS_LOG_WARN, "plugin '%s' is still loaded after dlclose: it keeps "
                    "something alive (threads, atexit, thread keys?); see docs/ABI.md",
                    p->path);
            dlclose(still);
        }
    }
    image_remove(p->copy_path);
    free(p->copy_path);
    free(p->path);
    free(p->load_path);
    free(p);
}

const plugin_task *plugin_find_task(const plugin *p, const char *name)
{
    if (p == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < p->ntasks; i++)
        if (strcmp(p->tasks[i].name, name) == 0)
            return &p->tasks[i];
    return NULL;
}
