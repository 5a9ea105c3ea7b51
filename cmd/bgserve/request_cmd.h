/*
 * request_cmd.h - `bgserve request APP.so METHOD PATH ...`: one request
 * served in process, without a socket, through the server's own loader,
 * router and handler, then the response's tasks run to completion; the
 * answer and every task's outcome are printed.
 */
#ifndef BGSERVE_REQUEST_CMD_H
#define BGSERVE_REQUEST_CMD_H

#include <stdio.h>

/* Exit statuses of `bgserve request` (docs/bgserve.1, EXIT STATUS). */
enum {
    REQUEST_EXIT_OK = 0,        /* 2xx or 3xx, and every task succeeded */
    REQUEST_EXIT_REFUSED = 1,   /* the plugin was refused or did not start */
    REQUEST_EXIT_USAGE = 2,     /* a usage error (printed) */
    REQUEST_EXIT_STATUS = 3,    /* answered with a status of 400 or more */
    REQUEST_EXIT_TASK = 4,      /* a task did not succeed */
    REQUEST_EXIT_TIMEOUT = 5,   /* no answer, or a task not final, in --timeout */
};

/*
 * `bgserve request ...`: argv[0] is "request".  The answer and the task
 * outcomes go to out; bgserve's warnings and errors and the plugin's own
 * lines (other than its tasks') to stderr; usage errors to err.  Returns
 * the exit status above; a crash in plugin code ends the process with
 * the signal, like `bgserve --single-process`.
 */
int request_cmd_main(int argc, char **argv, FILE *out, FILE *err);

#endif
