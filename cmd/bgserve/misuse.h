/*
 * misuse.h - reporting a plugin's misuse of the host API where it
 * happened: one warning line naming the host function, the plugin, what
 * was running on this thread (a route with its request id, a task with
 * its id, a start/stop hook, or "a plugin thread") and the result code.
 *
 * Lines are rate-limited per call site (the plugin's return address), so
 * a loop cannot flood the log; every misuse is counted ("misuse" in
 * /_bgserve/stats).
 */
#ifndef BGSERVE_MISUSE_H
#define BGSERVE_MISUSE_H

#include "bgserve.h"
#include "handle.h"

#include <stdint.h>

/* The plugin's call site, taken in the host function itself. */
#define MISUSE_SITE __builtin_return_address(0)

/* Report that plugin code at site got code from a host function: what
 * is "bgs_fn(args): what went wrong"; ret is what the function returned
 * when that is not the code itself ("NULL", "nothing"), else NULL.
 * Returns code. */
int misuse(const void *site, int code, const char *ret, const char *what, ...)
    __attribute__((format(printf, 4, 5)));

/* Is code one a misuse gets (BGS_EINVAL, BGS_ESTATE, BGS_ENOTASK,
 * BGS_EHEADER)?  BGS_EFULL and BGS_ESHUTDOWN are load, not misuse.
 * Inline, as misuse_handle below: every host function asks on every
 * call, and the call into misuse.c cost more than the test. */
static inline int misuse_code(int code)
{
    return code == BGS_EINVAL || code == BGS_ESTATE || code == BGS_ENOTASK ||
           code == BGS_EHEADER;
}

/* Misuses reported since the process started. */
uint64_t misuse_count(void);

/* Report a handle of kind refused for reason why (HANDLE_*, from
 * handle_get) as misuse_handle does; returns the code (BGS_EINVAL for
 * HANDLE_NULL, else BGS_ESTATE).  For lookups a room makes itself. */
int misuse_bad_handle(int kind, int why, const void *site, const char *fn, const char *ret);

/* The object behind handle h of kind (handle.h), or NULL after reporting
 * the misuse from fn (e.g. "bgs_res_status"): BGS_EINVAL for a NULL
 * handle, BGS_ESTATE for one whose life has ended, of another kind or
 * of another thread; *code (may be NULL) gets it.  ret as for misuse.
 * Inline: every host function checks its handle on every call (about
 * 25 instructions of call and frame, per call, out of line). */
static inline void *misuse_handle(int kind, const void *h, const void *site, const char *fn,
                                  const char *ret, int *code)
{
    int why;
    void *obj = handle_get(kind, h, &why);
    if (obj != NULL)
        return obj;
    int rc = misuse_bad_handle(kind, why, site, fn, ret);
    if (code)
        *code = rc;
    return NULL;
}

#endif
