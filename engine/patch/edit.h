/* edit.h - interventions: what an `intervene` rule does to the value at a
 * node of the paths it matches (docs/jobs.md, "intervene").
 *
 *   {"match": "**\/a1.head/a1.head2", "ablate": "zero", "positions": [4]}
 *   {"match": "**\/f0", "ablate": "mean", "of": 1}
 *   {"match": "**\/a3", "patch": 1, "positions": [2, 5]}
 *   {"match": "**\/a0.head", "steer": [C floats] | {"base64": ..., "shape": [C]},
 *    "scale": 4.0}
 *
 * zero: the value is 0 at the positions; mean: the mean over input K's
 * batch of its plain run's value at this node (per position, over the
 * examples that have it); patch: input K's plain-run value at this node;
 * steer: the value plus scale x vector. At a head (a{i}.head{h}) the head's
 * share of the attention output is what changes. Positions count from the
 * start; default every position.
 *
 * A job keeps one table of edits, shared by every variant of a sweep; plan
 * values refer to them by index, and their content keys hash each edit's
 * key (below), never the index. */
#ifndef NPP_EDIT_H
#define NPP_EDIT_H

#include <jansson.h>
#include <stdint.h>

#include "base/err.h"

typedef enum { EDIT_ZERO, EDIT_MEAN, EDIT_PATCH, EDIT_STEER } edit_kind;

typedef struct {
    edit_kind kind;
    int input;     /* MEAN: of input K; PATCH: from input K */
    float scale;   /* STEER */
    float *vec;    /* STEER: C floats */
    uint8_t *mask; /* T: 1 where the edit applies */
    uint8_t key[32];
} edit;

typedef struct {
    edit *e;
    int n, cap;
    int T, C, n_inputs;
} edit_table;

/* The keys an intervene rule may have besides its matcher. */
extern const char *const EDIT_KEYS[];

void edit_table_init(edit_table *t, int T, int C, int n_inputs);
void edit_table_free(edit_table *t);
/* Parses the edit of one rule (its field names it in errors) into t;
 * returns its index, or -1 with e set. uneven: the examples differ in
 * length (a negative position would have no one meaning). */
int edit_parse(edit_table *t, json_t *rule, const char *field, int uneven, npp_err *e);

#endif
