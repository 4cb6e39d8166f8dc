/* exec.h - the executor: computes the values of a plan that the cache
 * lacks, in rank order (layer order), batching every attention (or MLP)
 * of one layer into one tensor call stacked on the batch dimension.
 *
 *     exec_opts o = {.cancel = &job->cancel};
 *     shim_tensor *h;
 *     exec_stats s;
 *     if (exec_run(&plan, cache, &root, 1, &h, &o, &s, &err)) ...
 *
 * Values found in the cache are not recomputed (nor are their inputs);
 * values another job is computing are waited for. The executor keeps its
 * own handles, so a cache too small for the job changes nothing but
 * speed. Cancellation is checked between batches and while waiting. */
#ifndef NPP_EXEC_H
#define NPP_EXEC_H

#include <jansson.h>

#include "compute/cache.h"
#include "compute/plan.h"

typedef struct {
    const volatile int *cancel; /* non-zero: stop at the next chunk (NPP_ECANCELED) */
    void (*progress)(void *ud, long done, long total);
    void *ud;
    json_t *trace;      /* if not NULL, an array that gets one object per value touched */
    size_t chunk_bytes; /* bound on one tensor call's temporaries (0: none); see below */
    /* Roots whose rows before tail_from nobody reads (tail[i] for root i; NULL or
     * tail_from 0: none), such as final hidden states read only for the logits at the
     * metric's and outputs' positions. Every value whose consumers all read only rows
     * [tail_from, T), through ops that work row by row (residual sums, MLPs, ln_f) or an
     * attention's queries, is computed at those rows alone: on a plain run, the last
     * layer's MLP, c_proj, queries' attention and ln_f at the rows asked for instead of
     * every row. Such a value is its own entry in the cache (its key and the rows), and
     * out[i] of such a root holds rows [tail_from, T) only: (B, T - tail_from, C). */
    int64_t tail_from;
    const unsigned char *tail;
} exec_opts;

typedef struct {
    long planned;  /* values in the plan */
    long needed;   /* values the roots depend on, down to cache hits */
    long computed; /* computed by this job */
    long cached;   /* taken from the cache */
    long waited;   /* computed by another job while this one waited */
    long batches;  /* tensor calls for attention and MLP */
    long shared;   /* the shared prefix (ops.h, op_env): leading positions every input has in
                    * common, which each attention or MLP call computed once (0: none) */
    long tail;     /* of the values needed, those at rows [tail_from, T) only (exec_opts.tail),
                    * computed or from the cache */
} exec_stats;

/* Computes roots[0..n); out[i] gets a new handle of root i's tensor. */
int exec_run(const plan *p, cache *c, const int32_t *roots, int n, shim_tensor **out,
             const exec_opts *o, exec_stats *s, npp_err *e);

/* ---- bounds ----------------------------------------------------------------
 * Every attention or MLP call runs on a chunk of its layer's values whose
 * temporaries fit chunk_bytes (a value too big alone is split along the
 * batch, down to one example), so a cancel takes effect within one chunk
 * and a call's memory is bounded. exec_estimate simulates the same schedule
 * (as if the cache held nothing) and gives the peak of what the job holds:
 * the live values under the release order, plus the largest chunk's
 * temporaries and outputs. Values the cache keeps are the cache's bytes,
 * counted there. */
typedef struct {
    size_t value_bytes; /* one (B, T, C) value */
    size_t peak_bytes;  /* the executor's high-water mark */
    size_t end_bytes;   /* held when exec_run returns: the roots */
    long chunks;        /* tensor calls for attention and MLP */
    double work;        /* the compute, in multiply-adds (EXEC_ELT_WORK an elementwise step) */
} exec_estimate_t;

/* Elementwise steps (sums, layer norms, softmax, GELU) are bound by memory
 * rather than by arithmetic: in a work count each weighs this many
 * multiply-adds. */
#define EXEC_ELT_WORK 4.0
/* A matrix product of fewer rows costs about as much as one of this many:
 * it reads all of its weights either way (measured: the logits of 2 rows
 * took the time of 16). A batched call of fewer rows counts as this many. */
#define EXEC_MIN_ROWS    16

#define EXEC_CHUNK_BYTES (32u << 20) /* the default chunk budget */

/* tail_from, tail: as in exec_opts (the values computed at some rows hold
 * only those). */
int exec_estimate(const plan *p, const int32_t *roots, int n, size_t chunk_bytes, int64_t tail_from,
                  const unsigned char *tail, exec_estimate_t *out, npp_err *e);

/* One chunk of a group: values [i0, i1) of it, examples [b0, b1). */
typedef struct {
    int i0, i1;
    int64_t b0, b1;
    size_t cost; /* the bound on its temporaries, in bytes */
} exec_chunk;

/* The chunks of the group vs[0..n) (values of one op and layer): *out is
 * new (free). -1 when out of memory. Exposed for tests. */
int exec_chunks(const plan *p, const int32_t *vs, int n, size_t budget, exec_chunk **out,
                int *nout);

#endif
