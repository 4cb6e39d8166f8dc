/* result.h - the result document of a job whose runs were computed, and
 * the estimate of what building it holds (kept beside the builder, which
 * it mirrors step by step).
 *
 * Result JSON (see docs/jobs.md for every field):
 *   {"model", "batch", "tokens", "inputs": [[[ids]]], "rules": {...},
 *    "outputs": {"positions", "top_k", "token_logprobs", "logits",
 *                "hidden_states", "attention"},
 *    "metric": {"type", "position", "per_example", "mean"},
 *    [a sweep, instead of rules/outputs/metric: "sweep": [{"variant", "name",
 *     "rules", "outputs", "metric"}], and "attention" at the top],
 *    "baselines": [...], "stats": {...}, "trace": [...]}
 * Tensors are {"dtype": "float32", "shape": [...], "data": base64 of
 * little-endian float32} or, with npy_dir, {"npy": "file.npy", ...}.
 * Non-finite numbers are the strings "NaN", "Infinity", "-Infinity". */
#ifndef NPP_RESULT_H
#define NPP_RESULT_H

#include <jansson.h>

#include "model/model.h"
#include "patch/job.h"

typedef struct {
    const model *m;
    const job *j;
    const char *npy_dir;        /* write tensors as .npy files there (else base64) */
    const char *model_name;     /* shown in the result (else the model's folder) */
    const volatile int *cancel; /* checked between runs and attention layers */
    /* a job's (not a sweep's) patched run's attention probabilities (B, H,
     * T, T) at each outputs.attention layer, NULL where none (borrowed) */
    shim_tensor *const *patched_probs;
} result_opts;

/* hs: the roots' final hidden states (B, T, C), in the order run.h lists
 * them: one per patched run, [the reference], [one per input's baseline].
 * stats and trace are added as they are (borrowed). *out is new. */
int result_build(const result_opts *o, shim_tensor *const *hs, int nroots, json_t *stats,
                 json_t *trace, json_t **out, npp_err *e);

typedef struct {
    size_t peak_bytes;                      /* held while the result is built, besides the roots */
    size_t text_bytes;                      /* the document as compact JSON */
    size_t largest_bytes;                   /* the largest single part of peak_bytes */
    const char *largest_field, *text_field; /* the job fields behind them (static) */
} result_size;

/* What result_build will hold and write for job j (value_bytes: one
 * (B, T, C) value; nvalues: the plan's values, for the trace). */
void result_estimate(const model *m, const job *j, size_t value_bytes, size_t nvalues,
                     result_size *out);

/* The logits of several runs (a sweep's variants, the baselines) at
 * outputs.positions come from one product of up to this many rows: one of
 * fewer rows costs about as much, as it reads and packs the whole
 * unembedding (a 144-head sweep's top-k, 2 rows a run, on GPT-2 small's
 * shape, one thread: 2.9 s one run at a time; with the log-softmax and the
 * top-k scans, 0.49 s in products of 32 rows, 0.40 s of 64, 0.39 s of 128). */
#define RESULT_LOGITS_ROWS 64

/* Encodes n floats as base64 of little-endian float32 (new string). */
char *result_base64_f32(const float *x, size_t n);
/* json_real, or a string for NaN and infinities (new reference). */
json_t *result_json_num(double x);

#endif
