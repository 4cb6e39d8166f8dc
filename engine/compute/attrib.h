/* attrib.h - edge attribution patching with gradients: EAP (Syed et al.
 * 2023) and EAP-IG (Hanna et al. 2024, the input variant), for every edge of
 * the model (patch/edges.h).
 *
 * score(u, v) = sum over batch, positions and width of
 *     (u(corrupt) - u(clean)) * dM/dx_v
 * where x_v is receiver v's own copy of its input and M the job's metric
 * (the batch mean). EAP takes the gradient on the clean run; EAP-IG averages
 * it over the runs whose input embedding is e_corrupt + (k/m)(e_clean -
 * e_corrupt), k = 1..m (m = 1 is EAP). A sender's score ("level": "nodes")
 * is the sum of its edges' scores: the same first-order estimate for
 * patching the sender everywhere.
 *
 * How: the corrupted run's senders are values of the plan (the executor
 * computes them, or the shared cache has them: each layer's heads as one
 * value, their outputs z before c_proj, so the head's change is taken
 * before its projection, (z(corrupt) - z(clean))_h W_O[h]); each step is a
 * forward pass with gradients (the clean step also gives the clean senders)
 * and one backward from dM/d(final hidden). dM/dx_v for a head's q, k or v
 * comes from the gradient on c_attn's output, through that head's columns
 * and ln_1's backward alone (shim_head_input_grads), so the per-head copies
 * never go through the model; then the scores of one layer's receivers are
 * one matrix product with the deltas of the senders upstream of them. */
#ifndef NPP_ATTRIB_H
#define NPP_ATTRIB_H

#include <jansson.h>
#include <stddef.h>

#include "base/err.h"
#include "model/model.h"
#include "patch/job.h"

/* Bytes an attribution job holds at its peak (besides the model). */
size_t attrib_bytes(const model *m, const job *j);
/* Bytes of the result's "attribution" text at most. */
size_t attrib_text_bytes(const model *m, const job *j);

typedef struct {
    const volatile int *cancel; /* checked between the pieces of each layer and the steps
                                 * of its backward pass */
    void (*progress)(void *ud, long done, long total); /* after each layer (may be NULL) */
    void *ud;
    long done0, total; /* progress runs from done0 to done0 + attrib_units */
    int all;           /* every edge in the result, whatever the job's "top" */
    /* the corrupted run's sender outputs (run.c has the executor compute
     * them, so they come from the shared cache where present):
     * PLAN_SENDER_VALUES(L) handles in plan_plain_senders' order (emb,
     * then each layer's heads' outputs z and MLP output), taken over: each
     * is freed, and set NULL, once used */
    shim_tensor **senders;
    /* where not NULL: gets the clean pass's final hidden states (B, T', C),
     * input 0's plain run (plan_plain's value) at its last T' positions
     * (tail_from), no gradient; the caller frees it */
    shim_tensor **clean_out;
    /* the first position the metric or any output reads (0: every one, or
     * the hidden states are asked for): the last layer runs from there on
     * (exec_opts.tail_from); the corrupted run's last MLP output may hold
     * those positions only */
    int64_t tail_from;
} attrib_opts;

/* The attribution's compute in multiply-adds (exec.h's work): per step a
 * forward pass with gradients, its backward (twice the forward), the
 * receivers' input gradients; then every edge's score. */
double attrib_work(const model *m, const job *j);

/* Progress units of the job's attribution: a forward and a backward pass
 * per layer and step. */
long attrib_units(const model *m, const job *j);

/* Runs the job's attribution; *out gets the result's "attribution" object:
 * {"method", "steps", "level", "metric", "edges": [[u, v, score], ...]}
 * sorted by |score| (or "nodes": [[u, score], ...]), "count" (edges or
 * nodes scored), cut to "top" when the job asks. */
int attrib_run(const model *m, const job *j, const attrib_opts *o, json_t **out, npp_err *e);

#endif
