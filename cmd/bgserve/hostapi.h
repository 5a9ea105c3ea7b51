/*
 * hostapi.h - the function table handed to plugins (hostapi.c).  The
 * request and response it works on are request.h's (request.c).
 *
 * Only the rooms that wire the server together (main, routes_cmd) take the
 * table and give it to the generation room (generation_setup): generation.c does
 * not include this header, since hostapi.c reaches into generations.
 */
#ifndef BGSERVE_HOSTAPI_H
#define BGSERVE_HOSTAPI_H

#include "bgserve.h"

/* The one static table; valid for the life of the process. */
const bgs_host_api *hostapi_table(void);

#endif
