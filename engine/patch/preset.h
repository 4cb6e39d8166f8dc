/* preset.h - presets: the common experiments, written as one object
 * ({"type": NAME, ...}) and compiled into the branch/which/intervene rules they
 * stand for, as one table. Adding a preset is one row and one function in
 * preset.c (and its section in docs/jobs.md). */
#ifndef NPP_PRESET_H
#define NPP_PRESET_H

#include <jansson.h>

#include "base/err.h"
#include "patch/job.h"

typedef struct {
    const char *name;
    /* Appends the rules to branch, which and intervene (arrays); errors
     * name the field ("preset.node", ...). */
    int (*compile)(const job *j, json_t *p, json_t *branch, json_t *which, json_t *intervene,
                   npp_err *e);
    const char *doc;
} preset_def;

const preset_def *preset_find(const char *name);
/* Compiles the preset object p for job j (its inputs, dims): *br, *wh and
 * *iv are new arrays (also on failure, or NULL). */
int preset_compile(const job *j, json_t *p, json_t **br, json_t **wh, json_t **iv, npp_err *e);

/* A circuit ({"edges": [[u, v], ...]}, docs/jobs.md): the full split, and
 * every path that uses an edge outside the list reads input 1 (the
 * corrupted run), the others input 0. Errors name the edge
 * ("circuit.edges[3]"). *br and *wh are new arrays (or NULL). */
int preset_circuit(const job *j, json_t *c, json_t **br, json_t **wh, npp_err *e);

#endif
