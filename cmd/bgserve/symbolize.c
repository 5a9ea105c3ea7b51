/*
 * symbolize.c - names the frames of a crash (see symbolize.h).
 *
 * Runs in the supervisor, which is single-threaded, after the serving
 * process has died; no state is kept between calls.  libdwfl is given
 * the dead process's memory map (the text its crash handler read from
 * /proc/self/maps) through dwfl_linux_proc_maps_report, so every module
 * is reported at the address it was loaded at; each program counter is
 * then looked up in its module's symbol table (function) and DWARF line
 * table (file:line).  A return address is looked up one byte back, so a
 * call at the end of a line is not reported as the line after it.
 */
#include "symbolize.h"

#include "util.h"

#include <elfutils/libdwfl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Only the debug information inside each file: a plugin and bgserve
 * carry theirs (-g).  Separate debug files (/usr/lib/debug, debuginfod)
 * are not searched: reading libc's took 130 ms, and the respawn waits
 * for the report; system libraries are named from their symbol tables. */
static int own_debuginfo_only(Dwfl_Module *mod, void **userdata, const char *modname,
                              Dwarf_Addr base, const char *file_name,
                              const char *debuglink_file, GElf_Word debuglink_crc,
                              char **debuginfo_file_name)
{
    (void)mod, (void)userdata, (void)modname, (void)base, (void)file_name;
    (void)debuglink_file, (void)debuglink_crc, (void)debuginfo_file_name;
    return -1;
}

static const Dwfl_Callbacks callbacks = {
    .find_elf = dwfl_linux_proc_find_elf,
    .find_debuginfo = own_debuginfo_only,
};

/* A source path relative to the working directory when it lies below it. */
static const char *short_path(const char *path, const char *cwd)
{
    size_t n = cwd ? strlen(cwd) : 0;
    if (n > 1 && strncmp(path, cwd, n) == 0 && path[n] == '/')
        return path + n + 1;
    return path;
}

static void one_frame(FILE *out, Dwfl *dwfl, size_t i, uintptr_t pc, int exact,
                      const char *copy_dir, const char *plugin_path, const char *cwd)
{
    Dwarf_Addr addr = (Dwarf_Addr)pc - (exact ? 0 : 1);
    Dwfl_Module *mod = dwfl ? dwfl_addrmodule(dwfl, addr) : NULL;
    fprintf(out, "  #%-2zu ", i);
    if (mod == NULL) {
        fprintf(out, "0x%llx\n", (unsigned long long)pc);
        return;
    }
    const char *modname = dwfl_module_info(mod, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    size_t dl = strlen(copy_dir);
    if (modname && dl > 0 && strncmp(modname, copy_dir, dl) == 0 && modname[dl] == '/')
        modname = plugin_path; /* the private copy stands for the user's file */
    const char *base = modname ? strrchr(modname, '/') : NULL;
    base = base ? base + 1 : (modname ? modname : "?");

    GElf_Off off = 0;
    GElf_Sym sym;
    const char *fn = dwfl_module_addrinfo(mod, addr, &off, &sym, NULL, NULL, NULL);
    Dwarf_Addr bias = 0;
    dwfl_module_getelf(mod, &bias);
    int line = 0;
    const char *src = NULL;
    Dwfl_Line *dl_line = dwfl_module_getsrc(mod, addr);
    if (dl_line)
        src = dwfl_lineinfo(dl_line, NULL, &line, NULL, NULL, NULL);

    fprintf(out, "%s", fn ? fn : "??");
    if (src && line > 0)
        fprintf(out, " at %s:%d", short_path(src, cwd), line);
    fprintf(out, " (%s+0x%llx)\n", base, (unsigned long long)(pc - bias));
}

char *symbolize_frames(const char *maps, size_t maps_len, const uintptr_t *pcs, size_t n,
                       int first_exact, const char *copy_dir, const char *plugin_path)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (out == NULL)
        return xstrdup("  (no memory to print the backtrace)\n");
    char cwd[4096];
    const char *wd = getcwd(cwd, sizeof cwd);

    Dwfl *dwfl = dwfl_begin(&callbacks);
    if (dwfl && maps && maps_len > 0) {
        FILE *m = fmemopen((void *)maps, maps_len, "r");
        dwfl_report_begin(dwfl);
        if (m == NULL || dwfl_linux_proc_maps_report(dwfl, m) != 0) {
            dwfl_end(dwfl);
            dwfl = NULL;
        } else {
            dwfl_report_end(dwfl, NULL, NULL);
        }
        if (m)
            fclose(m);
    }
    for (size_t i = 0; i < n; i++)
        one_frame(out, dwfl, i, pcs[i], i == 0 && first_exact, copy_dir ? copy_dir : "",
                  plugin_path, wd);
    if (dwfl)
        dwfl_end(dwfl);
    fclose(out);
    if (text == NULL)
        return xstrdup("");
    return text;
}
