/*
 * symbolize.h - program counters of a dead serving process turned into
 * "function at file:line" with elfutils' libdwfl (DWARF line tables,
 * ELF symbol tables).  Used by the supervisor after a crash.
 */
#ifndef BGSERVE_SYMBOLIZE_H
#define BGSERVE_SYMBOLIZE_H

#include <stddef.h>
#include <stdint.h>

/*
 * maps: the text of the process's /proc/PID/maps as its crash handler
 * read it (the ELF files it names must still exist: bgserve's private
 * plugin copies are removed only after this call).  pcs[0..n): the
 * frames, innermost first; pcs[0] is the faulting instruction when
 * first_exact, every other one a return address.  A module whose path
 * starts with copy_dir is shown as plugin_path (the file the user built,
 * not the private copy).  Returns a malloc'd text, one line per frame:
 *     "  #0  segv at tests/fixtures/crash_app.c:22 (crash_app.so+0x1139)\n"
 * Never fails: frames it cannot name are shown as module+offset or as a
 * bare address.  The caller frees the result.
 */
char *symbolize_frames(const char *maps, size_t maps_len, const uintptr_t *pcs, size_t n,
                       int first_exact, const char *copy_dir, const char *plugin_path);

#endif
