/*
 * journal_cmd.c - the `bgserve journal` subcommand: parses its arguments
 * and prints what journal_db_* (journal.h) finds.
 *
 *   ls [--state S]     one line per task: id, state, attempts, name,
 *                      created, last error (dead letters last)
 *   show ID            every field of one task, its payload as text when
 *                      it is printable ASCII, else in hex
 *   retry ID           queue a dead or failed task again (same id)
 *   purge [--older D]  delete finished tasks and dead letters older than
 *                      D days (default 7)
 *
 * Runs in the main thread of a short-lived command: no shared state, no
 * locks of its own (SQLite's keep it consistent with a live server).
 */
#include "journal_cmd.h"

#include "journal.h"
#include "util.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define USAGE                                                                  \
    "Usage: bgserve journal FILE ls [--state STATE]\n"                         \
    "       bgserve journal FILE show ID\n"                                    \
    "       bgserve journal FILE retry ID\n"                                   \
    "       bgserve journal FILE purge [--older DAYS]\n"

static const char *const states[] = {"queued", "running", "succeeded", "failed",
                                     "cancelled", "discarded", "dead", NULL};

static int usage(FILE *err, const char *msg, const char *arg)
{
    fprintf(err, "bgserve journal: %s%s%s%s\n", msg, arg ? " '" : "", arg ? arg : "",
            arg ? "'" : "");
    fputs(USAGE, err);
    fputs("Run 'bgserve journal --help' for more.\n", err);
    return 2;
}

static int help(FILE *out)
{
    fputs(USAGE
          "\n"
          "Look at and act on the task journal a server keeps with --journal FILE.\n"
          "Works while a server has FILE open; changes (retry, purge) reach a\n"
          "running server at its next start.\n"
          "\n"
          "  ls [--state STATE]   list tasks, oldest first: ID STATE ATTEMPTS NAME\n"
          "                       CREATED ERROR.  STATE is one of queued, running,\n"
          "                       succeeded, failed, cancelled, discarded, dead\n"
          "  show ID              every field of task ID, with its payload\n"
          "  retry ID             queue the dead or failed task ID again: same id,\n"
          "                       attempts from 0, run at the server's next start\n"
          "  purge [--older DAYS] delete finished tasks and dead letters that\n"
          "                       finished more than DAYS days ago (default 7;\n"
          "                       0: all of them).  Queued and running tasks stay\n"
          "\n"
          "Exit status: 0 done, 1 the journal cannot be used or the task is not\n"
          "there (or cannot be retried), 2 usage error.  See docs/journal.md.\n",
          out);
    return 0;
}

/* A task id: a positive decimal number; 0 when it is not. */
static uint64_t parse_id(const char *s)
{
    if (s == NULL || *s < '0' || *s > '9')
        return 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    return *end == '\0' ? (uint64_t)v : 0;
}

static void iso(char *buf, size_t cap, uint64_t us)
{
    if (us == 0)
        snprintf(buf, cap, "-");
    else
        util_iso_time(buf, cap, us, 3);
}

/* ---- ls ------------------------------------------------------------------------- */

static void ls_row(void *arg, const journal_rec *r)
{
    FILE *out = arg;
    char created[40];
    iso(created, sizeof created, r->created_us);
    fprintf(out, "%-10" PRIu64 " %-10s %3u/%-4u %-24s %-24s %s\n", r->id, r->state, r->attempts,
            r->max_attempts, r->name, created, r->last_error ? r->last_error : "");
}

static int cmd_ls(journal_db *db, int argc, char **argv, FILE *out, FILE *err)
{
    const char *state = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--state") == 0 && i + 1 < argc) {
            state = argv[++i];
            int ok = 0;
            for (int k = 0; states[k] != NULL; k++)
                ok |= strcmp(states[k], state) == 0;
            if (!ok)
                return usage(err, "unknown --state (queued, running, succeeded, failed, "
                             "cancelled, discarded or dead)", state);
        } else if (strcmp(argv[i], "--state") == 0) {
            return usage(err, "--state needs a STATE", NULL);
        } else {
            return usage(err, "unexpected argument to ls", argv[i]);
        }
    }
    char msg[1024];
    fprintf(out, "%-10s %-10s %-8s %-24s %-24s %s\n", "ID", "STATE", "ATTEMPTS", "NAME",
            "CREATED", "ERROR");
    long n = journal_db_each(db, state, ls_row, out, msg, sizeof msg);
    if (n < 0) {
        fprintf(err, "bgserve: %s\n", msg);
        return 1;
    }
    return 0;
}

/* ---- show ----------------------------------------------------------------------- */

static void show_rec(void *arg, const journal_rec *r)
{
    FILE *out = arg;
    char t[40];
    fprintf(out, "id:           %" PRIu64 "\n", r->id);
    fprintf(out, "name:         %s\n", r->name);
    fprintf(out, "state:        %s\n", r->state);
    fprintf(out, "attempts:     %u of %u\n", r->attempts, r->max_attempts);
    iso(t, sizeof t, r->not_before_us);
    fprintf(out, "not before:   %s\n", t);
    iso(t, sizeof t, r->created_us);
    fprintf(out, "created:      %s\n", t);
    iso(t, sizeof t, r->started_us);
    fprintf(out, "started:      %s\n", t);
    iso(t, sizeof t, r->finished_us);
    fprintf(out, "finished:     %s\n", t);
    fprintf(out, "request id:   %s\n", r->request_id ? r->request_id : "-");
    fprintf(out, "last error:   %s\n", r->last_error ? r->last_error : "-");
    fprintf(out, "result:       %s\n", r->result ? r->result : "-");
    const unsigned char *p = r->payload;
    int text = 1;
    for (size_t i = 0; i < r->payload_len; i++)
        if ((p[i] < 0x20 && p[i] != '\n' && p[i] != '\t') || p[i] >= 0x7f)
            text = 0;
    fprintf(out, "payload:      %zu bytes%s\n", r->payload_len,
            r->payload_len == 0 ? "" : text ? ", text:" : ", hex:");
    if (r->payload_len > 0 && text) {
        fwrite(p, 1, r->payload_len, out);
        fputc('\n', out);
    } else if (r->payload_len > 0) {
        for (size_t i = 0; i < r->payload_len; i++)
            fprintf(out, "%02x%s", p[i], (i % 32 == 31 || i + 1 == r->payload_len) ? "\n" : "");
    }
}

/* ---- the subcommand --------------------------------------------------------------- */

int journal_cmd_main(int argc, char **argv, FILE *out, FILE *err)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return help(out);
    if (argc < 2)
        return usage(err, "missing FILE (the journal a server wrote with --journal FILE)", NULL);
    if (argv[1][0] == '-')
        return usage(err, "unknown option", argv[1]);
    if (argc < 3)
        return usage(err, "missing command (ls, show, retry or purge)", NULL);
    const char *path = argv[1], *cmd = argv[2];
    int rest = argc - 3;
    char **rargv = argv + 3;

    uint64_t id = 0, days = 7;
    if (strcmp(cmd, "show") == 0 || strcmp(cmd, "retry") == 0) {
        if (rest < 1)
            return usage(err, "missing ID after", cmd);
        if (rest > 1)
            return usage(err, "unexpected argument", rargv[1]);
        id = parse_id(rargv[0]);
        if (id == 0)
            return usage(err, "ID must be a task id (a positive number), not", rargv[0]);
    } else if (strcmp(cmd, "purge") == 0) {
        for (int i = 0; i < rest; i++) {
            if (strcmp(rargv[i], "--older") != 0)
                return usage(err, "unexpected argument to purge", rargv[i]);
            if (i + 1 >= rest)
                return usage(err, "--older needs DAYS", NULL);
            const char *d = rargv[++i];
            char *end;
            unsigned long long v = strtoull(d, &end, 10);
            if (*d < '0' || *d > '9' || *end != '\0' || v > 36500)
                return usage(err, "--older DAYS must be a whole number of days (0..36500), "
                             "not", d);
            days = v;
        }
    } else if (strcmp(cmd, "ls") != 0) {
        return usage(err, "unknown command (ls, show, retry or purge)", cmd);
    }

    char msg[2048];
    journal_db *db = NULL;
    if (journal_db_open(path, &db, msg, sizeof msg) != 0) {
        fprintf(err, "bgserve: %s\n", msg);
        return 1;
    }
    int rc = 0;
    if (strcmp(cmd, "ls") == 0) {
        rc = cmd_ls(db, rest, rargv, out, err);
    } else if (strcmp(cmd, "show") == 0) {
        if (journal_db_get(db, id, show_rec, out, msg, sizeof msg) != 0) {
            fprintf(err, "bgserve: %s\n", msg);
            rc = 1;
        }
    } else if (strcmp(cmd, "retry") == 0) {
        if (journal_db_retry(db, id, msg, sizeof msg) != 0) {
            fprintf(err, "bgserve: %s\n", msg);
            rc = 1;
        } else {
            fprintf(out, "task %" PRIu64 " queued again; a server with --journal %s runs it "
                    "at its next start\n", id, path);
        }
    } else {
        uint64_t removed = 0;
        uint64_t before = util_wall_us() - days * 86400ull * 1000000ull;
        if (journal_db_purge(db, before, &removed, msg, sizeof msg) != 0) {
            fprintf(err, "bgserve: %s\n", msg);
            rc = 1;
        } else {
            fprintf(out, "purged %" PRIu64 " finished task%s older than %" PRIu64 " day%s\n",
                    removed, removed == 1 ? "" : "s", days, days == 1 ? "" : "s");
        }
    }
    fflush(out);
    journal_db_close(db);
    return rc;
}
