/*
 * routes_cmd.c - the route and task tables of a loaded plugin, as aligned
 * text (`bgserve routes`, `bgserve --check`) or JSON (`bgserve routes
 * --json`), and the `routes` subcommand itself.
 *
 * Handler names: plugins are built with hidden visibility, so dladdr()
 * cannot name a handler.  The plugin file's own ELF symbol table (.symtab,
 * kept unless the plugin was stripped) can: the handler's offset from the
 * object's load base falls inside one STT_FUNC symbol.  Stripped plugins
 * show "FILE+0xOFFSET".
 *
 * Runs in the main thread of a short-lived command, before any other
 * thread exists; it owns no shared state and takes no locks.
 */
#include "routes_cmd.h"

#include "generation.h"
#include "hostapi.h"
#include "json.h"
#include "log.h"
#include "util.h"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Handler names from the ELF symbol table                             */
/* ------------------------------------------------------------------ */

typedef struct symtab {
    char *image;          /* the whole file, or NULL when unreadable */
    size_t size;
    const ElfW(Sym) *syms;
    size_t nsyms;
    const char *strs;
    size_t strs_size;
} symtab;

static int read_file(const char *path, char **data, size_t *size)
{
    struct stat st;
    int rc = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) != 0 || st.st_size <= 0)
        goto out;
    char *buf = xmalloc((size_t)st.st_size);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n <= 0) {
            free(buf);
            goto out;
        }
        got += (size_t)n;
    }
    *data = buf;
    *size = got;
    rc = 0;
out:
    close(fd);
    return rc;
}

/* Fill st from the file's .symtab (or .dynsym); 0 or -1. */
static int symtab_load(symtab *st, const char *path)
{
    memset(st, 0, sizeof *st);
    if (read_file(path, &st->image, &st->size) != 0)
        return -1;
    const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)(const void *)st->image;
    if (st->size < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 ||
        eh->e_ident[EI_CLASS] != (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32) ||
        eh->e_shentsize != sizeof(ElfW(Shdr)) || eh->e_shoff == 0 ||
        eh->e_shoff > st->size ||
        (size_t)eh->e_shnum > (st->size - eh->e_shoff) / sizeof(ElfW(Shdr)))
        goto fail;
    const ElfW(Shdr) *sh = (const ElfW(Shdr) *)(const void *)(st->image + eh->e_shoff);
    const ElfW(Shdr) *best = NULL;
    for (size_t i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type == SHT_SYMTAB)
            best = &sh[i];
        else if (sh[i].sh_type == SHT_DYNSYM && best == NULL)
            best = &sh[i];
    }
    if (best == NULL || best->sh_link >= eh->e_shnum)
        goto fail;
    const ElfW(Shdr) *strsh = &sh[best->sh_link];
    if (best->sh_offset > st->size || best->sh_size > st->size - best->sh_offset ||
        strsh->sh_offset > st->size || strsh->sh_size > st->size - strsh->sh_offset)
        goto fail;
    st->syms = (const ElfW(Sym) *)(const void *)(st->image + best->sh_offset);
    st->nsyms = best->sh_size / sizeof(ElfW(Sym));
    st->strs = st->image + strsh->sh_offset;
    st->strs_size = strsh->sh_size;
    return 0;
fail:
    free(st->image);
    memset(st, 0, sizeof *st);
    return -1;
}

static void symtab_free(symtab *st)
{
    free(st->image);
    memset(st, 0, sizeof *st);
}

/* The function symbol covering offset, or NULL. */
static const char *symtab_find(const symtab *st, uintptr_t offset)
{
    for (size_t i = 0; i < st->nsyms; i++) {
        const ElfW(Sym) *s = &st->syms[i];
        if (ELF64_ST_TYPE(s->st_info) != STT_FUNC || s->st_shndx == SHN_UNDEF ||
            s->st_name >= st->strs_size)
            continue;
        if (offset >= s->st_value && offset < s->st_value + (s->st_size ? s->st_size : 1)) {
            const char *name = st->strs + s->st_name;
            if (memchr(name, '\0', st->strs_size - s->st_name) != NULL)
                return name;
        }
    }
    return NULL;
}

/* A malloc'd name for a handler in the loaded plugin. */
static char *handler_name(bgs_handler_fn fn)
{
    Dl_info info;
    char buf[512];
    void *addr;

    if (fn == NULL)
        return xstrdup("-");
    memcpy(&addr, &fn, sizeof addr); /* function to object pointer, as dladdr wants */
    if (dladdr(addr, &info) == 0 || info.dli_fbase == NULL) {
        snprintf(buf, sizeof buf, "%p", addr);
        return xstrdup(buf);
    }
    uintptr_t off = (uintptr_t)addr - (uintptr_t)info.dli_fbase;
    if (info.dli_sname != NULL && info.dli_saddr == addr)
        return xstrdup(info.dli_sname);
    symtab st;
    char *found = NULL;
    if (info.dli_fname != NULL && symtab_load(&st, info.dli_fname) == 0) {
        const char *name = symtab_find(&st, off);
        if (name != NULL)
            found = xstrdup(name);
        symtab_free(&st);
    }
    if (found != NULL)
        return found;
    const char *base = info.dli_fname ? strrchr(info.dli_fname, '/') : NULL;
    snprintf(buf, sizeof buf, "%s+0x%lx",
             base ? base + 1 : (info.dli_fname ? info.dli_fname : "?"), (unsigned long)off);
    return xstrdup(buf);
}

/* ------------------------------------------------------------------ */
/* Aligned text tables                                                 */
/* ------------------------------------------------------------------ */

typedef struct table {
    size_t ncols;
    char **cells;         /* rows * ncols, each malloc'd */
    size_t nrows;
} table;

static void table_row(table *t, char **cells)
{
    t->cells = xrealloc(t->cells, (t->nrows + 1) * t->ncols * sizeof *t->cells);
    memcpy(t->cells + t->nrows * t->ncols, cells, t->ncols * sizeof *cells);
    t->nrows++;
}

/* Two spaces between columns; the last column is not padded. */
static void table_print(table *t, FILE *out)
{
    size_t width[16] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            size_t w = strlen(t->cells[r * t->ncols + c]);
            if (w > width[c])
                width[c] = w;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        fputs("  ", out);
        for (size_t c = 0; c < t->ncols; c++) {
            const char *cell = t->cells[r * t->ncols + c];
            if (c + 1 < t->ncols)
                fprintf(out, "%-*s  ", (int)width[c], cell);
            else
                fputs(cell, out);
        }
        fputc('\n', out);
    }
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    t->cells = NULL;
    t->nrows = 0;
}

static char *fmt_ms(uint32_t ms)
{
    char buf[32];
    if (ms == 0)
        return xstrdup("-");
    snprintf(buf, sizeof buf, "%ums", ms);
    return xstrdup(buf);
}

static const char *mode_name(uint32_t mode)
{
    return mode == BGS_CONCURRENT ? "concurrent" : "sequential";
}

static char *route_tasks_text(const plugin_route *r)
{
    size_t len = 1;
    if (r->ntasks == 0)
        return xstrdup("-");
    for (uint32_t i = 0; i < r->ntasks; i++)
        len += strlen(r->tasks[i].name) + 2;
    len += sizeof " (concurrent)";
    char *s = xmalloc(len);
    s[0] = '\0';
    for (uint32_t i = 0; i < r->ntasks; i++) {
        if (i)
            strcat(s, ", ");
        strcat(s, r->tasks[i].name);
    }
    if (r->ntasks > 1) {
        strcat(s, " (");
        strcat(s, mode_name(r->mode));
        strcat(s, ")");
    }
    return s;
}

static char *task_flags_text(uint32_t flags)
{
    char buf[64] = "";
    if (flags & BGS_TASK_DELIVERED_ONLY)
        strcat(buf, "delivered-only");
    if (flags & BGS_TASK_RUN_AT_START)
        strcat(buf, buf[0] ? ",run-at-start" : "run-at-start");
    return xstrdup(buf[0] ? buf : "-");
}

void routes_cmd_print_tables(const plugin *p, FILE *out)
{
    char buf[64];
    fprintf(out, "plugin %s %s (ABI %u.%u) from %s\n",
            p->name[0] ? p->name : "(unnamed)", p->version[0] ? p->version : "-",
            p->abi_major, p->abi_minor, p->path);

    fprintf(out, "\nroutes (%zu):\n", p->nroutes);
    if (p->nroutes) {
        table t = {.ncols = 4};
        char *head[] = {xstrdup("METHOD"), xstrdup("PATH"), xstrdup("HANDLER"), xstrdup("TASKS")};
        table_row(&t, head);
        for (size_t i = 0; i < p->nroutes; i++) {
            const plugin_route *r = &p->routes[i];
            char *row[] = {xstrdup(r->method), xstrdup(r->path), handler_name(r->handler),
                           route_tasks_text(r)};
            table_row(&t, row);
        }
        table_print(&t, out);
    }

    fprintf(out, "\ntasks (%zu):\n", p->ntasks);
    if (p->ntasks) {
        table t = {.ncols = 7};
        char *head[] = {xstrdup("TASK"), xstrdup("ATTEMPTS"), xstrdup("BACKOFF"),
                        xstrdup("CONCURRENCY"), xstrdup("EVERY"), xstrdup("TIMEOUT"),
                        xstrdup("FLAGS")};
        table_row(&t, head);
        for (size_t i = 0; i < p->ntasks; i++) {
            const plugin_task *k = &p->tasks[i];
            char *row[7];
            row[0] = xstrdup(k->name);
            snprintf(buf, sizeof buf, "%u", k->max_attempts);
            row[1] = xstrdup(buf);
            snprintf(buf, sizeof buf, "%u..%ums", k->backoff_base_ms, k->backoff_cap_ms);
            row[2] = xstrdup(buf);
            snprintf(buf, sizeof buf, "%u", k->max_concurrency);
            row[3] = xstrdup(k->max_concurrency ? buf : "-");
            row[4] = fmt_ms(k->every_ms);
            row[5] = fmt_ms(k->timeout_ms);
            row[6] = task_flags_text(k->flags);
            table_row(&t, row);
        }
        table_print(&t, out);
    }
}

/* ------------------------------------------------------------------ */
/* JSON                                                                */
/* ------------------------------------------------------------------ */

void routes_cmd_print_json(const plugin *p, FILE *out)
{
    json j;
    char abi[32];

    json_init(&j);
    json_obj_begin(&j);
    json_key(&j, "plugin");
    json_obj_begin(&j);
    json_key(&j, "name");
    json_str(&j, p->name);
    json_key(&j, "version");
    json_str(&j, p->version);
    snprintf(abi, sizeof abi, "%u.%u", p->abi_major, p->abi_minor);
    json_key(&j, "abi");
    json_str(&j, abi);
    json_key(&j, "path");
    json_str(&j, p->path);
    json_obj_end(&j);

    json_key(&j, "routes");
    json_arr_begin(&j);
    for (size_t i = 0; i < p->nroutes; i++) {
        const plugin_route *r = &p->routes[i];
        char *h = handler_name(r->handler);
        json_obj_begin(&j);
        json_key(&j, "method");
        json_str(&j, r->method);
        json_key(&j, "path");
        json_str(&j, r->path);
        json_key(&j, "handler");
        json_str(&j, h);
        json_key(&j, "tasks");
        json_arr_begin(&j);
        for (uint32_t t = 0; t < r->ntasks; t++)
            json_str(&j, r->tasks[t].name);
        json_arr_end(&j);
        json_key(&j, "mode");
        json_str(&j, mode_name(r->mode));
        json_obj_end(&j);
        free(h);
    }
    json_arr_end(&j);

    json_key(&j, "tasks");
    json_arr_begin(&j);
    for (size_t i = 0; i < p->ntasks; i++) {
        const plugin_task *k = &p->tasks[i];
        json_obj_begin(&j);
        json_key(&j, "name");
        json_str(&j, k->name);
        json_key(&j, "max_attempts");
        json_u64(&j, k->max_attempts);
        json_key(&j, "backoff_base_ms");
        json_u64(&j, k->backoff_base_ms);
        json_key(&j, "backoff_cap_ms");
        json_u64(&j, k->backoff_cap_ms);
        json_key(&j, "max_concurrency");
        json_u64(&j, k->max_concurrency);
        json_key(&j, "every_ms");
        json_u64(&j, k->every_ms);
        json_key(&j, "timeout_ms");
        json_u64(&j, k->timeout_ms);
        json_key(&j, "delivered_only");
        json_bool(&j, (k->flags & BGS_TASK_DELIVERED_ONLY) != 0);
        json_key(&j, "run_at_start");
        json_bool(&j, (k->flags & BGS_TASK_RUN_AT_START) != 0);
        json_obj_end(&j);
    }
    json_arr_end(&j);
    json_obj_end(&j);

    json_print_line(&j, out);
    json_free(&j);
}

/* ------------------------------------------------------------------ */
/* The subcommand                                                      */
/* ------------------------------------------------------------------ */

static int routes_usage(FILE *err, const char *msg, const char *arg)
{
    fprintf(err, "bgserve routes: %s%s%s%s\n", msg, arg ? " '" : "", arg ? arg : "",
            arg ? "'" : "");
    fputs("Usage: bgserve routes [--json] APP.so\n", err);
    return 2;
}

int routes_cmd_main(int argc, char **argv, FILE *out, FILE *err)
{
    const char *path = NULL;
    int as_json = 0, options_done = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!options_done && strcmp(a, "--") == 0) {
            options_done = 1;
        } else if (!options_done && strcmp(a, "--json") == 0) {
            as_json = 1;
        } else if (!options_done && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)) {
            fputs("Usage: bgserve routes [--json] APP.so\n"
                  "Load APP.so like --check and print its route table (method, path,\n"
                  "handler, route-level tasks) and task table (name and options),\n"
                  "as aligned columns or, with --json, one JSON object.\n", out);
            return 0;
        } else if (!options_done && a[0] == '-' && a[1] != '\0') {
            return routes_usage(err, "unknown option", a);
        } else if (path != NULL) {
            return routes_usage(err, "more than one APP.so given; extra argument", a);
        } else {
            path = a;
        }
    }
    if (path == NULL)
        return routes_usage(err, "missing APP.so (the plugin to list)", NULL);

    log_config lc = {.color = 0, .json = 0, .quiet = 1};
    log_init(&lc);

    char msg[2048];
    generation *g = NULL;
    generation_setup(&(generation_deps){.host_api = hostapi_table()}); /* check-only: never activated */
    if (generation_create(path, 1, GEN_CHECK_ONLY, &g, msg, sizeof msg) != 0) {
        fprintf(err, "%s\n", msg);
        return 1;
    }
    if (as_json)
        routes_cmd_print_json(g->plugin, out);
    else
        routes_cmd_print_tables(g->plugin, out);
    fflush(out);
    generation_release(g);
    return 0;
}
