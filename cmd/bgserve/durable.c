/*
 * durable.c - a request's wait for the journal (durable.h).
 *
 * State: one mutex per gate guards everything in it: the references,
 * the completions pending, the first failure and the armed resume.  The
 * resume is called outside the mutex, by whoever brings pending to 0
 * while armed (the last completion, or durable_arm itself).
 */
#include "durable.h"

#include "util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct durable_gate {
    pthread_mutex_t mu;
    unsigned refs;           /* mu */
    unsigned pending;        /* mu */
    int status;              /* mu: the first failure, 0 when none */
    char msg[512];           /* mu */
    void (*resume)(void *);  /* mu: set by durable_arm, cleared when called */
    void *conn;              /* mu */
};

durable_gate *durable_new(void)
{
    durable_gate *g = xcalloc(1, sizeof(*g));
    pthread_mutex_init(&g->mu, NULL);
    g->refs = 1;
    return g;
}

/* Drop one reference; mu held on entry, released here. */
static void unref_unlock(durable_gate *g)
{
    int last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) {
        pthread_mutex_destroy(&g->mu);
        free(g);
    }
}

void durable_release(durable_gate *g)
{
    if (g == NULL)
        return;
    pthread_mutex_lock(&g->mu);
    unref_unlock(g);
}

void durable_expect(durable_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->refs++;
    g->pending++;
    pthread_mutex_unlock(&g->mu);
}

/* One completion less (it came, or will not come): the resume to call,
 * if this was the last one and the gate is armed.  mu held. */
static void (*settle_locked(durable_gate *g, void **conn))(void *)
{
    void (*resume)(void *) = NULL;
    if (--g->pending == 0 && g->resume) {
        resume = g->resume;
        *conn = g->conn;
        g->resume = NULL;
    }
    return resume;
}

void durable_unexpect(durable_gate *g)
{
    void *conn = NULL;
    pthread_mutex_lock(&g->mu);
    void (*resume)(void *) = settle_locked(g, &conn);
    unref_unlock(g); /* the caller still holds its own reference */
    if (resume)
        resume(conn);
}

void durable_done(void *arg, int status, const char *msg)
{
    durable_gate *g = arg;
    void *conn = NULL;
    pthread_mutex_lock(&g->mu);
    if (status != 0 && g->status == 0) {
        g->status = status;
        snprintf(g->msg, sizeof g->msg, "%s", msg ? msg : "the journal could not record it");
    }
    void (*resume)(void *) = settle_locked(g, &conn);
    /* Resume before dropping our reference: the request (which holds its
     * own until it ends) cannot be gone while its connection is
     * suspended. */
    pthread_mutex_unlock(&g->mu);
    if (resume)
        resume(conn);
    durable_release(g);
}

unsigned durable_pending(durable_gate *g)
{
    pthread_mutex_lock(&g->mu);
    unsigned n = g->pending;
    pthread_mutex_unlock(&g->mu);
    return n;
}

void durable_arm(durable_gate *g, void (*resume)(void *conn), void *conn)
{
    pthread_mutex_lock(&g->mu);
    int now = g->pending == 0;
    if (!now) {
        g->resume = resume;
        g->conn = conn;
    }
    pthread_mutex_unlock(&g->mu);
    if (now)
        resume(conn);
}

int durable_status(durable_gate *g, char *msg, size_t cap)
{
    pthread_mutex_lock(&g->mu);
    int st = g->status;
    if (st != 0 && msg != NULL && cap > 0)
        snprintf(msg, cap, "%s", g->msg);
    pthread_mutex_unlock(&g->mu);
    return st;
}
