/*
 * journal_cmd.h - `bgserve journal FILE ls|show|retry|purge`: look at and
 * act on a task journal without a server, also while one has it open.
 */
#ifndef BGSERVE_JOURNAL_CMD_H
#define BGSERVE_JOURNAL_CMD_H

#include <stdio.h>

/*
 * argv[0] is "journal".  Prints to out; messages go to err.  Returns the
 * exit status: 0, 1 when the journal cannot be used or the task is not
 * there (or cannot be retried), 2 for a usage error.
 */
int journal_cmd_main(int argc, char **argv, FILE *out, FILE *err);

#endif
