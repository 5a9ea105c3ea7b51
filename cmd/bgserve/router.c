/*
 * router.c - route templates and matching (implements router.h).
 *
 * State: a segment tree owned by the router.  Each node has its literal
 * children in an array sorted by (length, bytes), so a lookup is a binary
 * search that mostly compares lengths, at most one parameter child, and
 * one entry per method for the templates that end at this node.  A
 * trailing slash is stored as a final literal child with the empty name,
 * so "/users" and "/users/" are different nodes.
 *
 * Threads: router_add runs on one thread while the router is built; after
 * that the tree is read-only and router_lookup (which never allocates and
 * never writes to the router) may run on any number of threads at once.
 * No locks.
 *
 * Parameter names live in the method entry, not in the node, because
 * "GET /u/{id}" and "DELETE /u/{uid}" share the node "/u/{}".  For the
 * same reason "/u/{id}" and "/u/{name}" with the same method are
 * duplicates: they match exactly the same paths.
 */
#include "router.h"

#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Types                                                               */
/* ------------------------------------------------------------------ */

enum { NMETHODS = 7 };

/* Fixed order: also the order of the Allow header. */
static const char *const method_names[NMETHODS] = {
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
};
enum { M_GET = 0, M_HEAD = 1 };

typedef struct route_entry {
    void *data;
    char *tmpl;                 /* the template as added (messages) */
    unsigned nparams;
    char *names[ROUTER_MAX_PARAMS];
} route_entry;

typedef struct node node;

typedef struct literal_child {
    char *seg;                  /* "" for a trailing slash */
    size_t len;
    node *child;
} literal_child;

struct node {
    literal_child *lits;        /* sorted by (len, memcmp) */
    size_t nlits;
    node *param;                /* the {name} child, or NULL */
    route_entry *methods[NMETHODS];
};

struct router {
    node root;
    size_t count;
};

/* One parsed template segment. */
typedef struct tseg {
    const char *p;
    size_t len;
    int is_param;               /* p/len is then the name inside braces */
} tseg;

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

static int method_index(const char *m)
{
    if (m == NULL)
        return -1;
    for (int i = 0; i < NMETHODS; i++)
        if (strcmp(m, method_names[i]) == 0)
            return i;
    return -1;
}

static int lit_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return alen < blen ? -1 : 1;
    return memcmp(a, b, alen);
}

/* Index of the literal child seg, or -1; *ins gets the insert position. */
static long lit_find(const node *n, const char *seg, size_t len, size_t *ins)
{
    size_t lo = 0, hi = n->nlits;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = lit_cmp(seg, len, n->lits[mid].seg, n->lits[mid].len);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (ins != NULL)
        *ins = lo;
    return -1;
}

static int is_name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static int is_name_char(char c)
{
    return is_name_start(c) || (c >= '0' && c <= '9');
}

/* ------------------------------------------------------------------ */
/* Template parsing                                                    */
/* ------------------------------------------------------------------ */

/*
 * Split tmpl into segments (at most cap), checking every rule.  A
 * trailing slash yields a final empty literal segment.  Returns the
 * number of segments, or -1 with a reason in err.
 */
static long parse_template(const char *tmpl, tseg *segs, size_t cap,
                           char *err, size_t errlen)
{
    if (tmpl == NULL) {
        snprintf(err, errlen, "path is missing (NULL)");
        return -1;
    }
    if (tmpl[0] != '/') {
        snprintf(err, errlen, "path must start with '/'");
        return -1;
    }
    size_t nsegs = 0;
    unsigned nparams = 0;
    const char *p = tmpl + 1;
    if (*p == '\0')
        return 0; /* "/" */
    for (;;) {
        const char *end = strchr(p, '/');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        int last = end == NULL;
        if (len == 0 && !last) {
            snprintf(err, errlen, "empty segment ('//') in path");
            return -1;
        }
        if (nsegs == cap) {
            snprintf(err, errlen, "path has more than %zu segments", cap);
            return -1;
        }
        tseg *s = &segs[nsegs];
        int braces = memchr(p, '{', len) != NULL || memchr(p, '}', len) != NULL;
        if (braces) {
            int ok = len >= 3 && p[0] == '{' && p[len - 1] == '}' &&
                     is_name_start(p[1]);
            for (size_t i = 2; ok && i + 1 < len; i++)
                ok = is_name_char(p[i]);
            if (!ok) {
                snprintf(err, errlen, "malformed parameter in segment '%.*s'",
                         (int)len, p);
                return -1;
            }
            s->p = p + 1;
            s->len = len - 2;
            s->is_param = 1;
            for (size_t i = 0; i < nsegs; i++) {
                if (segs[i].is_param && segs[i].len == s->len &&
                    memcmp(segs[i].p, s->p, s->len) == 0) {
                    snprintf(err, errlen, "parameter '{%.*s}' appears twice",
                             (int)s->len, s->p);
                    return -1;
                }
            }
            if (++nparams > ROUTER_MAX_PARAMS) {
                snprintf(err, errlen, "more than %d parameters in path",
                         ROUTER_MAX_PARAMS);
                return -1;
            }
        } else {
            for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)p[i];
                if (c == '%' || c == '?' || c == '#') {
                    snprintf(err, errlen, "segment '%.*s' contains '%c'",
                             (int)len, p, c);
                    return -1;
                }
                if (c <= 0x20 || c >= 0x7f) {
                    snprintf(err, errlen,
                             "segment '%.*s' contains byte 0x%02x (only "
                             "visible ASCII is allowed)", (int)len, p, c);
                    return -1;
                }
            }
            s->p = p;
            s->len = len;
            s->is_param = 0;
        }
        nsegs++;
        if (last)
            break;
        p = end + 1;
    }
    return (long)nsegs;
}

/* Enough for any template a person writes; longer ones are refused. */
enum { MAX_SEGS = 64 };

/* ------------------------------------------------------------------ */
/* Building                                                            */
/* ------------------------------------------------------------------ */

router *router_new(void)
{
    return xcalloc(1, sizeof(router));
}

static void entry_free(route_entry *e)
{
    if (e == NULL)
        return;
    for (unsigned i = 0; i < e->nparams; i++)
        free(e->names[i]);
    free(e->tmpl);
    free(e);
}

static void node_free_children(node *n)
{
    for (size_t i = 0; i < n->nlits; i++) {
        node_free_children(n->lits[i].child);
        free(n->lits[i].child);
        free(n->lits[i].seg);
    }
    free(n->lits);
    if (n->param != NULL) {
        node_free_children(n->param);
        free(n->param);
    }
    for (int i = 0; i < NMETHODS; i++)
        entry_free(n->methods[i]);
}

void router_free(router *r)
{
    if (r == NULL)
        return;
    node_free_children(&r->root);
    free(r);
}

size_t router_count(const router *r)
{
    return r->count;
}

int router_check_template(const char *tmpl, char *err, size_t errlen)
{
    tseg segs[MAX_SEGS];
    return parse_template(tmpl, segs, MAX_SEGS, err, errlen) < 0 ? -1 : 0;
}

/* The node for segs, or NULL when it does not exist yet. */
static node *find_node(router *r, const tseg *segs, size_t nsegs)
{
    node *n = &r->root;
    for (size_t i = 0; i < nsegs && n != NULL; i++) {
        if (segs[i].is_param) {
            n = n->param;
        } else {
            long k = lit_find(n, segs[i].p, segs[i].len, NULL);
            n = k < 0 ? NULL : n->lits[k].child;
        }
    }
    return n;
}

static node *make_node(router *r, const tseg *segs, size_t nsegs)
{
    node *n = &r->root;
    for (size_t i = 0; i < nsegs; i++) {
        if (segs[i].is_param) {
            if (n->param == NULL)
                n->param = xcalloc(1, sizeof(node));
            n = n->param;
            continue;
        }
        size_t ins = 0;
        long k = lit_find(n, segs[i].p, segs[i].len, &ins);
        if (k >= 0) {
            n = n->lits[k].child;
            continue;
        }
        n->lits = xrealloc(n->lits, (n->nlits + 1) * sizeof(literal_child));
        memmove(&n->lits[ins + 1], &n->lits[ins],
                (n->nlits - ins) * sizeof(literal_child));
        n->nlits++;
        literal_child *lc = &n->lits[ins];
        lc->seg = xstrndup(segs[i].p, segs[i].len);
        lc->len = segs[i].len;
        lc->child = xcalloc(1, sizeof(node));
        n = lc->child;
    }
    return n;
}

int router_add(router *r, const char *method, const char *tmpl, void *data,
               char *err, size_t errlen)
{
    int mi = method_index(method);
    if (mi < 0) {
        snprintf(err, errlen, "unknown method '%s'",
                 method != NULL ? method : "(null)");
        return -1;
    }
    tseg segs[MAX_SEGS];
    long nsegs = parse_template(tmpl, segs, MAX_SEGS, err, errlen);
    if (nsegs < 0)
        return -1;
    node *existing = find_node(r, segs, (size_t)nsegs);
    if (existing != NULL && existing->methods[mi] != NULL) {
        const char *old = existing->methods[mi]->tmpl;
        if (strcmp(old, tmpl) == 0)
            snprintf(err, errlen, "duplicate route %s %s", method, tmpl);
        else
            snprintf(err, errlen, "duplicate route %s %s (matches the same "
                     "paths as %s %s)", method, tmpl, method, old);
        return -1;
    }

    node *n = make_node(r, segs, (size_t)nsegs);
    route_entry *e = xcalloc(1, sizeof(route_entry));
    e->data = data;
    e->tmpl = xstrdup(tmpl);
    for (long i = 0; i < nsegs; i++)
        if (segs[i].is_param)
            e->names[e->nparams++] = xstrndup(segs[i].p, segs[i].len);
    n->methods[mi] = e;
    r->count++;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Matching                                                            */
/* ------------------------------------------------------------------ */

long router_pct_decode(const char *src, size_t len, char *dst, int plus_is_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        if (c == '%') {
            if (len - i < 3) /* fewer than two characters follow */
                return -1;
            int hi = util_hexval((unsigned char)src[i + 1]);
            int lo = util_hexval((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1;
            dst[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '\0') {
            return -1;
        } else if (c == '+' && plus_is_space) {
            dst[o++] = ' ';
        } else {
            dst[o++] = c;
        }
    }
    dst[o] = '\0';
    return (long)o;
}

/* Per-call state of one match; lives on the caller's stack. */
typedef struct match_state {
    const char *raw;            /* the raw path */
    char *scratch;              /* decoded segments at their raw offsets */
    int mi;                     /* method index, -1 when unknown */
    unsigned allow_mask;        /* methods of every node the path reached */
    const char *values[ROUTER_MAX_PARAMS];
    const route_entry *found;
} match_state;

/* The entry serving method mi at n (HEAD falls back to GET), or NULL. */
static const route_entry *entry_for(const node *n, int mi)
{
    if (mi < 0)
        return NULL;
    if (n->methods[mi] != NULL)
        return n->methods[mi];
    if (mi == M_HEAD)
        return n->methods[M_GET];
    return NULL;
}

/*
 * Match the segments starting at raw offset pos (just after a '/', or
 * the end of the path when pos == -1) below n.  Literal children are
 * tried before the parameter child; returns 1 when a route for the
 * method was found (st->found, st->values filled).
 */
static int descend(const node *n, match_state *st, long pos, unsigned depth)
{
    if (pos < 0) {
        unsigned mask = 0;
        for (int i = 0; i < NMETHODS; i++)
            if (n->methods[i] != NULL)
                mask |= 1u << i;
        if (mask == 0)
            return 0;
        st->allow_mask |= mask;
        st->found = entry_for(n, st->mi);
        return st->found != NULL;
    }
    const char *seg = st->raw + pos;
    const char *slash = strchr(seg, '/');
    size_t rawlen = slash != NULL ? (size_t)(slash - seg) : strlen(seg);
    long next = slash != NULL ? (long)(slash - st->raw) + 1 : -1;
    const char *dec = st->scratch + pos;
    size_t declen = strlen(dec);

    long k = lit_find(n, dec, declen, NULL);
    if (k >= 0 && descend(n->lits[k].child, st, next, depth))
        return 1;
    if (n->param != NULL && rawlen > 0 && depth < ROUTER_MAX_PARAMS) {
        st->values[depth] = dec;
        if (descend(n->param, st, next, depth + 1))
            return 1;
    }
    return 0;
}

int router_lookup(const router *r, const char *method, const char *raw_path,
                  char *scratch, router_match *m)
{
    m->data = NULL;
    m->nparams = 0;
    m->allow[0] = '\0';
    if (raw_path == NULL || raw_path[0] != '/')
        return ROUTER_NOT_FOUND;

    /* Decode every segment in place first: a bad escape anywhere is a
     * bad request whatever the routes are. */
    scratch[0] = '\0';
    for (const char *p = raw_path + 1;;) {
        const char *slash = strchr(p, '/');
        size_t len = slash != NULL ? (size_t)(slash - p) : strlen(p);
        if (router_pct_decode(p, len, scratch + (p - raw_path), 0) < 0)
            return ROUTER_BAD_PATH;
        if (slash == NULL)
            break;
        p = slash + 1;
    }

    match_state st = {.raw = raw_path, .scratch = scratch,
                      .mi = method_index(method)};
    /* "/" is the root itself; any other path has at least one segment. */
    long start = raw_path[1] == '\0' ? -1 : 1;
    if (descend(&r->root, &st, start, 0)) {
        m->data = st.found->data;
        m->nparams = st.found->nparams;
        for (unsigned i = 0; i < st.found->nparams; i++) {
            m->params[i].name = st.found->names[i];
            m->params[i].value = st.values[i];
        }
        return ROUTER_FOUND;
    }
    if (st.allow_mask == 0)
        return ROUTER_NOT_FOUND;

    if (st.allow_mask & (1u << M_GET))
        st.allow_mask |= 1u << M_HEAD;
    size_t o = 0;
    for (int i = 0; i < NMETHODS; i++) {
        if (!(st.allow_mask & (1u << i)))
            continue;
        /* 7 names with separators fit in allow[96] with room to spare. */
        int w = snprintf(m->allow + o, sizeof(m->allow) - o, "%s%s",
                         o ? ", " : "", method_names[i]);
        o += (size_t)w;
    }
    return ROUTER_BAD_METHOD;
}
