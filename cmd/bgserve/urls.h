/*
 * urls.h - the URLs bgserve answers itself, the one place they are
 * spelled: the reserved prefix (plugins may not route under it, see
 * plugin.c), the status monitor of a task (the Location of a 202) and the
 * stats, served by introspect.c, and the live dashboard's (dashboard.c).
 * Header only, including nothing, so
 * the loader, hostapi, http and introspect can all share it.
 */
#ifndef BGSERVE_URLS_H
#define BGSERVE_URLS_H

#define URLS_PREFIX "/_bgserve"                 /* no trailing slash */
#define URLS_PREFIX_LEN (sizeof URLS_PREFIX - 1)
#define URLS_TASKS URLS_PREFIX "/tasks/"        /* + the task's decimal id */
#define URLS_TASKS_LEN (sizeof URLS_TASKS - 1)
#define URLS_STATS URLS_PREFIX "/stats"
#define URLS_DASHBOARD URLS_PREFIX "/"          /* the live dashboard's page */
#define URLS_EVENTS URLS_PREFIX "/events"       /* its event stream (SSE) */
#define URLS_RETRY_SUFFIX "/retry"              /* POST URLS_TASKS ID + this */
/* The header every dashboard action (a POST) must carry: a page of
 * another site cannot send it without a CORS preflight bgserve never
 * answers. */
#define URLS_ACTION_HEADER "X-Bgserve-Action"

#endif
