/*
 * version.h - bgserve's own version, printed by --version and --check and
 * in the loader's refusals.  The Makefile reads it for bgserve.pc; a room
 * of its own so that the loader need not include cli.h.
 */
#ifndef BGSERVE_VERSION_H
#define BGSERVE_VERSION_H

#define BGSERVE_VERSION "0.1.0"

#endif
