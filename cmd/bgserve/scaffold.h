/*
 * scaffold.h - `bgserve new NAME`: a new plugin project in ./NAME/.
 */
#ifndef BGSERVE_SCAFFOLD_H
#define BGSERVE_SCAFFOLD_H

#include <stdio.h>

/*
 * argv[0] is "new".  Creates NAME/ with NAME.c (a route, a task and a
 * 202 Accepted with its status monitor), a Makefile (build through
 * `pkg-config bgserve`, `make run`, `make check`) and a .gitignore.
 * NAME is [A-Za-z][A-Za-z0-9_-]* (at most 64 characters).  Never
 * overwrites: an existing NAME is refused.  Returns the exit status:
 * 0, 1 when the project could not be created (nothing is left behind),
 * 2 for a usage error (a bad or missing NAME).
 */
int scaffold_main(int argc, char **argv, FILE *out, FILE *err);

/* 1 when name is acceptable as a project NAME, else 0. */
int scaffold_name_ok(const char *name);

#endif
