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

#include "cache.h"
#include "plan.h"

typedef struct {
    const volatile int *cancel; /* non-zero: stop at the next batch (NPP_ECANCELED) */
    void (*progress)(void *ud, long done, long total);
    void *ud;
    json_t *trace; /* if not NULL, an array that gets one object per value touched */
} exec_opts;

typedef struct {
    long planned;  /* values in the plan */
    long needed;   /* values the roots depend on, down to cache hits */
    long computed; /* computed by this job */
    long cached;   /* taken from the cache */
    long waited;   /* computed by another job while this one waited */
    long batches;  /* tensor calls for attention and MLP */
} exec_stats;

/* Computes roots[0..n); out[i] gets a new handle of root i's tensor. */
int exec_run(const plan *p, cache *c, const int32_t *roots, int n, shim_tensor **out,
             const exec_opts *o, exec_stats *s, npp_err *e);

#endif
