/*
 * router.h - route templates and matching.  Pure: no I/O, no globals.
 *
 * A router is built once (router_add from one thread) and then only read,
 * so any number of threads may call router_lookup on it at once.
 *
 * Templates: "/" or "/seg/seg/...", each segment a literal or "{name}"
 * where name is [A-Za-z_][A-Za-z0-9_]*.  A literal segment beats a
 * parameter at the same depth.  Trailing slash rule: a trailing slash is
 * significant, "/users/" and "/users" are different paths, and only
 * templates that end in "/" match paths that do.
 */
#ifndef BGSERVE_ROUTER_H
#define BGSERVE_ROUTER_H

#include <stddef.h>

#define ROUTER_MAX_PARAMS 16

typedef struct router router;

/* Result of router_lookup. */
enum {
    ROUTER_FOUND = 0,
    ROUTER_NOT_FOUND = 1,   /* no template matches the path: 404 */
    ROUTER_BAD_METHOD = 2,  /* path matches with other methods: 405 */
    ROUTER_BAD_PATH = 3,    /* path is not decodable (bad %xx, NUL): 400 */
};

typedef struct router_param {
    const char *name;  /* owned by the router */
    const char *value; /* points into the caller's scratch buffer */
} router_param;

typedef struct router_match {
    void *data;                 /* what router_add was given */
    unsigned nparams;
    router_param params[ROUTER_MAX_PARAMS];
    char allow[96];             /* on ROUTER_BAD_METHOD: "GET, HEAD, POST" */
} router_match;

/* A new empty router; never NULL (allocation aborts). */
router *router_new(void);
void router_free(router *r);

/*
 * Add a route.  method is an upper-case method name from
 * GET HEAD POST PUT PATCH DELETE OPTIONS; tmpl is a template as above.
 * The router copies both strings; data is stored as is.
 * Returns 0, or -1 with a one-line reason in err (for example
 * "path must start with '/'", "unknown method 'FETCH'",
 * "malformed parameter in segment '{id'", "duplicate route GET /x").
 * On error the router is unchanged.
 */
int router_add(router *r, const char *method, const char *tmpl, void *data,
               char *err, size_t errlen);

/* Validate a template without a router; same messages as router_add. */
int router_check_template(const char *tmpl, char *err, size_t errlen);

/* Number of routes added. */
size_t router_count(const router *r);

/*
 * Match a request (named router_lookup because router_match is the
 * result type above, and C has one namespace for both).  raw_path is
 * the path as sent (percent-encoded, no query string).  Each segment is
 * percent-decoded separately (so %2F inside a parameter does not split
 * it) into scratch, which must hold at least strlen(raw_path) + 1 bytes;
 * parameter values point into it.  A HEAD request matches GET routes
 * when no HEAD route exists.  Never allocates.
 * Returns one of the ROUTER_* results above and fills m.
 */
int router_lookup(const router *r, const char *method, const char *raw_path,
                  char *scratch, router_match *m);

/*
 * Percent-decode src[0..len) into dst (which must hold len + 1 bytes),
 * NUL-terminated.  plus_is_space turns '+' into ' ' (query strings).
 * Returns the decoded length, or -1 on a malformed escape or an
 * encoded NUL.
 */
long router_pct_decode(const char *src, size_t len, char *dst, int plus_is_space);

#endif
