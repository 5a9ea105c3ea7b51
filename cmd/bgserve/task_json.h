/*
 * task_json.h - a task's record as the status monitor writes it (GET
 * /_bgserve/tasks/ID), from any source: the engine's record in memory
 * (introspect.c), a row of the journal (journal_json.c) or a record in
 * Redis (tasks_broker.c).  Both fill one
 * view and one writer prints it, so the two answers keep the same keys
 * in the same order.  Owns no state; any thread.
 */
#ifndef BGSERVE_TASK_JSON_H
#define BGSERVE_TASK_JSON_H

#include "json.h"

#include <stddef.h>
#include <stdint.h>

typedef enum task_json_source {
    TASK_JSON_MEMORY = 0,  /* the engine's record: delivered, mode, generation, result */
    TASK_JSON_JOURNAL = 1, /* a journal row: not_before and "source":"journal" */
    TASK_JSON_BROKER = 2   /* a record in Redis (another process's task):
                            * the result, "worker" and "source":"redis" */
} task_json_source;

/* What the writer prints.  Strings are borrowed for the call; NULL
 * prints null.  Times are wall clock in µs; 0 prints null. */
typedef struct task_json_view {
    task_json_source source;
    uint64_t id;
    const char *name;
    const char *state;
    uint32_t attempts, max_attempts;
    uint64_t created_us, started_us, finished_us;
    const char *error;
    const char *request_id;
    size_t payload_len;
    int adhoc;
    /* TASK_JSON_MEMORY only. */
    int delivered;             /* -1: not known */
    const char *mode;          /* "sequential" or "concurrent" */
    uint64_t generation;
    int has_result;
    uint32_t result_status;
    const char *result_type;
    const char *result;        /* result_len bytes; NULL: empty */
    size_t result_len;
    /* TASK_JSON_JOURNAL only. */
    uint64_t not_before_us;
    /* TASK_JSON_BROKER only: the worker that ran it last (NULL: none). */
    const char *worker;
} task_json_view;

/* The record as one JSON object (a value: at the top, after a key or in
 * an array). */
void task_json_write(json *j, const task_json_view *v);

#endif
