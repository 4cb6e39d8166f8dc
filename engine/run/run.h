/* run.h - one job end to end, the engine's top layer: parse the document
 * and compile its rules (patch/), plan it and estimate its memory
 * (compute/, output/result), execute it against a cache (compute/exec), and
 * build the result document (output/result.h describes it). This is what
 * `npp run` does in-process and what the service's workers call.
 *
 *     run_opts o = {.cache = c};
 *     run_output *r;
 *     if (run_job(m, doc, &o, &r, &err)) { report err.field, err.message }
 *     print(r->result); ... svg_render(run_tree(r, 0), r->job, ...) ...
 *     run_output_free(r); */
#ifndef NPP_RUN_H
#define NPP_RUN_H

#include <jansson.h>

#include "compute/cache.h"
#include "compute/exec.h"
#include "compute/plan.h"
#include "model/model.h"
#include "output/result.h"
#include "patch/job.h"

typedef struct {
    cache *cache;               /* required by run_execute */
    const volatile int *cancel; /* optional: planning, execution and outputs stop */
    void (*progress)(void *ud, long done, long total);
    void *ud;
    size_t max_values;         /* ceiling for limits.max_values; 0: 50000 */
    const char *npy_dir;       /* write tensors as .npy files there */
    const char *model_name;    /* shown in the result */
    size_t chunk_bytes;        /* the executor's chunk budget (exec.h); 0: EXEC_CHUNK_BYTES */
    size_t max_plan_bytes;     /* planning memory; 0: PLAN_MAX_BYTES */
    double plan_seconds;       /* planning time; 0: no limit */
    const uint8_t *cache_salt; /* NULL, or 32 bytes: the plans' salt (plan.h) */
} run_opts;

/* What a job will hold and return, estimated from its plan before any
 * compute (run_prepare fills it). Upper bounds: the executor's schedule
 * simulated as if the cache held nothing (exec_estimate), then every
 * output built as run_execute builds it, one patched run after another. */
typedef struct {
    size_t plan_bytes;   /* the plans, the job's token ids and rules */
    size_t exec_bytes;   /* the executor's high-water mark */
    size_t output_bytes; /* while the result is built: roots, logits, host copies, JSON */
    size_t peak_bytes;   /* the job's high-water mark: plan + max(exec, outputs) */
    size_t result_bytes; /* the result document as compact JSON */
    /* the job's field that contributes most to each ("inputs", "sweep",
     * "outputs.logits", ...; static strings) */
    const char *peak_field, *result_field;
    long chunks; /* tensor calls for attention and MLP, at the chunk budget */
    /* the compute, in multiply-adds (an elementwise step weighs
     * EXEC_ELT_WORK), as if the cache held nothing: the executor's values,
     * the logits, an attribution's passes and discover's second job; and
     * the field behind most of it. A service turns it into seconds with
     * the rate it measured (run_measure_rate). */
    double work;
    const char *work_field;
    size_t work_bytes; /* the largest of exec_bytes, output_bytes and an attribution's: the
                        * job's block cache budget, less a sixteenth (run_execute) */
} run_estimate;

/* Building a result's text (base64 tensors, JSON numbers) and writing its
 * file, in seconds a byte of result_bytes: work on the CPU whatever the
 * device (measured 16-32 ns a byte on a 2-core AMD EPYC VM: 260 MB of
 * logits, attention or activations took 4.3-5.2 s, 195 MB of
 * token_logprobs 6.2 s). */
#define RUN_TEXT_SECONDS_PER_BYTE 2e-8
/* The seconds a job is estimated to take: its work at rate (multiply-adds
 * a second) and its result's text; *field (if not NULL) gets the job field
 * behind the larger part. */
double run_seconds(const run_estimate *est, double rate, const char **field);

typedef struct {
    json_t *result; /* new reference (after run_execute) */
    job *job;
    plan plan;    /* kept for the SVG (a sweep's: the union of its variants' values) */
    plan *vplans; /* a sweep: each variant's own plan (its path tree); nvplans */
    int nvplans;
    exec_stats stats;
    int32_t *roots; /* patched (one per variant in a sweep), [KL reference], [baselines],
                     * then the sources of the patched run's attentions (nmain before),
                     * then an attribution's corrupted senders (from sroot0) */
    int nroots, nmain, sroot0;
    int32_t clean_v; /* an attribution's: input 0's plain run, which the attribution's
                      * clean pass gives (the executor skips the roots that are it); -1 */
    int32_t *pattn;  /* a job's outputs.attention layers: the patched run's attention value
                      * on its trunk (plan_trunk_attn), -1 where none; NULL for a sweep */
    double plan_ms;
    run_estimate est;
} run_output;

int run_job(const model *m, json_t *doc, const run_opts *o, run_output **out, npp_err *e);

/* The same in two steps, so that a service can refuse a bad job before
 * queueing it: run_prepare parses and plans (cheap; any refusal is the
 * job's fault), run_execute computes and builds r->result. Each call's
 * opts may differ (the cache and the cancel flag are used by run_execute).
 * run_total gives the number of values the plan holds (progress total). */
int run_prepare(const model *m, json_t *doc, const run_opts *o, run_output **out, npp_err *e);
int run_execute(const model *m, run_output *r, const run_opts *o, npp_err *e);
void run_output_free(run_output *r);
/* The plan whose path tree to draw: the job's, or a sweep's variant
 * (0 <= variant < job->nvar). */
const plan *run_tree(const run_output *r, int variant);
/* The path tree's size in nodes (a sweep's: its variants' together). */
long run_path_nodes(const run_output *r);

/* Times a plain job on m (no cache, this thread's tensor threads) and
 * gives the rate: its estimated work (run_estimate.work) per second of
 * execution. The job is 4 x 256 tokens (or the model's context), with
 * fewer examples, then fewer tokens, until its work is at most 4e9
 * multiply-adds (about 0.1 s on one core: 1 x 32 tokens on GPT-2 small),
 * the median of three runs after a first that pays for the start-up. */
int run_measure_rate(const model *m, double *work_per_s, npp_err *e);

/* Makes freed tensor memory go back to the system at once (glibc: a fixed
 * mmap threshold of 256 KiB instead of the adaptive one), so that a
 * process's RSS follows what its jobs hold. Call once at start-up. */
void run_malloc_setup(void);

/* The freed tensor memory a thread keeps from one job for its next by
 * default, MiB (npp run --keep-mb, nppd's at most; shim_block_keep): all
 * that an EAP job of 8 x 16 tokens on GPT-2 small frees (with 128 MiB,
 * later ones of six such jobs took 856-883 ms, with 256 MiB 800-806 ms). */
#define RUN_KEEP_MB 256

#endif
