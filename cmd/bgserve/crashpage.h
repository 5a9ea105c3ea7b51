/*
 * crashpage.h - the page every request gets while a build crash-loops:
 * the supervisor's crash report as escaped, self-contained HTML for a
 * browser, or as plain text.  Pure: no state, no I/O.
 */
#ifndef BGSERVE_CRASHPAGE_H
#define BGSERVE_CRASHPAGE_H

#include <stddef.h>

/* 1 when an Accept header value (may be NULL) asks for text/html. */
int crashpage_wants_html(const char *accept);

/*
 * The body for report (NUL-terminated text): HTML when html, else text.
 * Returns a malloc'd body (the caller frees it) and its length in *len;
 * *ctype is a static content type.
 */
char *crashpage_render(const char *report, const char *plugin_path, int html,
                       size_t *len, const char **ctype);

#endif
