/*
 * urls.h - the URLs bgserve answers itself, the one place they are
 * spelled: the reserved prefix (plugins may not route under it, see
 * plugin.c), the status monitor of a task (the Location of a 202) and the
 * stats, all served by introspect.c.  Header only, including nothing, so
 * the loader, hostapi, http and introspect can all share it.
 */
#ifndef BGSERVE_URLS_H
#define BGSERVE_URLS_H

#define URLS_PREFIX "/_bgserve"                 /* no trailing slash */
#define URLS_PREFIX_LEN (sizeof URLS_PREFIX - 1)
#define URLS_TASKS URLS_PREFIX "/tasks/"        /* + the task's decimal id */
#define URLS_TASKS_LEN (sizeof URLS_TASKS - 1)
#define URLS_STATS URLS_PREFIX "/stats"

#endif
