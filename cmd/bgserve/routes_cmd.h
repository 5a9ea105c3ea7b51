/*
 * routes_cmd.h - `bgserve routes APP.so [--json]` and the route and task
 * tables that `bgserve --check` prints: one place for the table code.
 */
#ifndef BGSERVE_ROUTES_CMD_H
#define BGSERVE_ROUTES_CMD_H

#include "plugin.h"

#include <stdio.h>

/*
 * Print the plugin line, then the route table (METHOD PATH HANDLER TASKS)
 * and the task table (TASK ATTEMPTS BACKOFF CONCURRENCY EVERY TIMEOUT
 * FLAGS) as aligned text columns.  Handlers are named from the plugin
 * file's symbol table; a stripped plugin shows "NAME.so+0xOFFSET".
 */
void routes_cmd_print_tables(const plugin *p, FILE *out);

/* The same information as one JSON object (and a newline). */
void routes_cmd_print_json(const plugin *p, FILE *out);

/*
 * `bgserve routes ...`: argv[0] is "routes".  Loads the plugin like
 * --check (start hook run, nothing scheduled), prints the tables to out
 * and returns the exit status: 0, 1 when the plugin is refused, 2 for a
 * usage error (printed to err).
 */
int routes_cmd_main(int argc, char **argv, FILE *out, FILE *err);

#endif
