/* run.c - a job end to end; see run.h: parse and plan (patch/, compute/),
 * estimate (compute/exec_estimate for the executor, output/result for the
 * outputs), execute (compute/exec), and build the result (output/result). */
#include "run/run.h"

#include "compute/attrib.h"
#include "compute/ops.h"
#include "patch/edges.h"

#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void run_malloc_setup(void)
{
    mallopt(M_MMAP_THRESHOLD, 256 << 10);
    mallopt(M_TRIM_THRESHOLD, 4 << 20);
}

long run_path_nodes(const run_output *r)
{
    long n = r->plan.nn;
    for (int i = 0; i < r->nvplans; i++)
        n += r->vplans[i].nn;
    return n;
}

#define JOB_OVERHEAD (4u << 20) /* the job's structures, code and allocator slack */
/* The log-softmax and top-k scan of one logit, in multiply-adds (an exp
 * and a few passes over memory). */
#define WORK_LOGIT 64
/* A product with the unembedding costs about this many rows' more than its
 * rows: it reads and packs the whole (V, C) matrix whatever its rows
 * (GPT-2 small's shape, one thread: 31 ms for 16 rows, 42 for 32, 67 for
 * 64, 114 for 128; at 87 GFLOP/s their multiply-adds alone would take 14,
 * 28, 57 and 114 ms). */
#define LOGITS_PACK_ROWS 16

/* discover's second job: (verify + sizes + 2) runs of at most plain_bytes
 * each, and its document, whose circuits list up to every edge per size
 * (about 256 bytes of JSON objects an edge). */
static size_t discover_bytes(const job *j, size_t plain_bytes)
{
    const job_attrib *at = j->attrib;
    size_t edges = (size_t)edges_count(&j->g), listed = 0;
    for (int i = 0; i < at->nsizes; i++)
        listed += (size_t)at->top_n[i] < edges ? (size_t)at->top_n[i] : edges;
    return (size_t)(at->verify + at->nsizes + 2) * plain_bytes +
           256 * (listed + (size_t)at->verify);
}

static json_t *discover_doc(const job *j, json_t *edges);

/* discover's second job planned (not run) with stand-in edges: every edge
 * of the model in a fixed pseudo-random order, as the attribution's
 * ranking is not known before it runs. Its circuits' plans and values
 * depend on how many edges they hold and how their sources mix far more
 * than on which edges they are: its estimated peak into *bytes, its work
 * into *work. */
static int discover_standin_bytes(const model *m, const job *j, const run_opts *o, size_t *bytes,
                                  double *work, npp_err *e)
{
    const graph_dims *g = &j->g;
    long n = edges_count(g), k = 0;
    int S = edges_nsenders(g), R = edges_nreceivers(g);
    json_t *edges = json_array(), **name = calloc((size_t)(S + R), sizeof *name);
    int *order = malloc((size_t)n * 2 * sizeof *order);
    int rc = 0;
    char buf[48];
    for (int i = 0; name && i < S + R; i++) {
        graph_name(g, i < S ? edges_sender_sym(g, i) : edges_receiver_sym(g, i - S), buf,
                   sizeof buf);
        name[i] = json_string(buf);
    }
    for (int s = 0; order && s < S; s++)
        for (int r = 0; r < R; r++)
            if (edges_upstream(g, edges_sender_sym(g, s), edges_receiver_sym(g, r)))
                order[2 * k] = s, order[2 * k + 1] = r, k++;
    /* a fixed shuffle (Fisher-Yates with a 64-bit LCG) */
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (long i = k - 1; order && i > 0; i--) {
        x = x * 6364136223846793005u + 1442695040888963407u;
        long q = (long)((x >> 33) % (uint64_t)(i + 1));
        int s = order[2 * i], r = order[2 * i + 1];
        order[2 * i] = order[2 * q], order[2 * i + 1] = order[2 * q + 1];
        order[2 * q] = s, order[2 * q + 1] = r;
    }
    /* the list as far as the second job reads it: the verified edges and
     * the largest circuit */
    long want = j->attrib->top_n[j->attrib->nsizes - 1];
    want = want > j->attrib->verify ? want : j->attrib->verify;
    for (long i = 0; edges && name && order && i < k && i < want; i++)
        json_array_append_new(edges,
                              json_pack("[O,O]", name[order[2 * i]], name[S + order[2 * i + 1]]));
    for (int i = 0; name && i < S + R; i++)
        json_decref(name[i]);
    json_t *doc = edges && name && order ? discover_doc(j, edges) : NULL;
    free(name), free(order);
    json_decref(edges);
    if (!doc)
        return npp_fail(e, NPP_ENOMEM, "discover", "out of memory");
    run_output *r2 = NULL;
    npp_err e2 = {0};
    if (!(rc = run_prepare(m, doc, o, &r2, &e2)))
        *bytes = r2->est.peak_bytes, *work = r2->est.work;
    else /* what the user asked for, by its name: not the second job's sweep */
        npp_fail(e, rc, "discover", "discover: checking %d edges and %d circuits: %s",
                 j->attrib->verify, j->attrib->nsizes, e2.message);
    run_output_free(r2);
    json_decref(doc);
    return rc;
}

/* The roots the executor computes, into xr (at most r->nroots), with
 * their indices in r->roots into at (when not NULL): all but those an
 * attribution's clean pass gives (r->clean_v). Returns their count. */
static int exec_roots(const run_output *r, int32_t *xr, int *at)
{
    int n = 0;
    for (int k = 0; k < r->nroots; k++)
        if (r->roots[k] != r->clean_v) {
            if (at)
                at[n] = k;
            xr[n++] = r->roots[k];
        }
    return n;
}

/* Which of the executor's nx roots (exec_roots' at) are read at some
 * positions only (exec_opts.tail): the runs' final hidden states, and for
 * an attribution the corrupted run's last MLP output, whose one receiver
 * is ln_final (attrib_opts.tail_from). */
static void tail_roots(const run_output *r, const int *at, int nx, unsigned char *tail)
{
    int last = r->job->attrib ? r->sroot0 + PLAN_SENDER_VALUES(r->plan.g.L) - 1 : -1;
    for (int k = 0; k < nx; k++)
        tail[k] = at[k] < r->nmain || at[k] == last;
}

/* The first position any output or the metric reads of a run's final
 * hidden state (the logits at outputs.positions and the metric's), so
 * that the executor computes the top of the model from there on
 * (exec_opts.tail); 0 (every position) when hidden states are asked for. */
static int64_t tail_from(const job *j)
{
    int64_t f = j->T;
    if (j->want_hidden)
        return 0;
    for (int b = 0; b < j->B; b++) {
        for (int i = 0; i < j->npos; i++)
            f = j->positions[b * j->npos + i] < f ? j->positions[b * j->npos + i] : f;
        if (j->metric)
            f = j->m_pos[b] < f ? j->m_pos[b] : f;
    }
    return f < j->T ? f : 0;
}

/* The circuit picture nppd keeps beside an attribution, discover or
 * circuit job's result (output/circuit.h), at most: the node boxes, and
 * about 320 bytes an edge drawn (an attribution's top 30, a discover
 * job's largest circuit, a circuit's listed edges, each once). */
static size_t picture_bytes(const job *j)
{
    size_t n = 0, all = (size_t)edges_count(&j->g);
    json_t *which = json_object_get(j->compiled, "which");
    if (j->attrib)
        n = j->attrib->discover ? (size_t)j->attrib->top_n[j->attrib->nsizes - 1] : 30;
    else if (json_array_size(which) == 1 && json_object_get(json_array_get(which, 0), "edges"))
        n = json_array_size(json_object_get(json_array_get(which, 0), "edges"));
    else
        return 0;
    return 8192 + (size_t)edges_nsenders(&j->g) * 640 + (n < all ? n : all) * 320;
}

/* The work of the logits the result takes, over the vocabulary: the
 * products with the unembedding, each costing LOGITS_PACK_ROWS rows' more
 * than its rows, and each row's log-softmax and top-k scan (WORK_LOGIT a
 * logit):
 * the patched runs' and the baselines' at outputs.positions (several
 * runs' in one product, output/result.h), and the metric's where it reads
 * the whole vocabulary (one product per run). */
static double logits_work(const model *m, const run_output *r)
{
    const job *j = r->job;
    double per = (double)j->B * j->npos, products = 0, rows = 0;
    if (j->top_k > 0 || j->want_logits || j->ntoklp) {
        int n = per < RESULT_LOGITS_ROWS / 2 ? (int)(RESULT_LOGITS_ROWS / per) : 1;
        int runs = j->nvar ? j->nvar : 1, bases = j->want_baselines && j->top_k ? j->n_inputs : 0;
        int np = (runs + n - 1) / n + (bases + n - 1) / n; /* the products */
        products += per * (runs + bases) + (double)np * LOGITS_PACK_ROWS;
        rows += per * (runs + bases);
    }
    if (j->metric && j->metric->full_vocab) {
        products += r->nmain * ((double)j->B + LOGITS_PACK_ROWS);
        rows += r->nmain * (double)j->B;
    }
    return (double)m->cfg.vocab_size * (products * m->cfg.n_embd + rows * WORK_LOGIT);
}

/* Fills r->est from the plans (run_prepare, after planning). */
static int estimate(const model *m, run_output *r, const run_opts *o, npp_err *e)
{
    const job *j = r->job;
    run_estimate *est = &r->est;
    exec_estimate_t ex;
    result_size rs;
    size_t chunk = o->chunk_bytes ? o->chunk_bytes : EXEC_CHUNK_BYTES;
    int32_t *xr = malloc(((size_t)r->nroots + 1) * sizeof *xr);
    int *xat = malloc(((size_t)r->nroots + 1) * sizeof *xat), rc;
    unsigned char *tail = malloc((size_t)r->nroots + 1);
    if (!xr || !xat || !tail) {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory");
    } else {
        int nx = exec_roots(r, xr, xat);
        tail_roots(r, xat, nx, tail);
        rc = exec_estimate(&r->plan, xr, nx, chunk, tail_from(j), tail, &ex, e);
    }
    free(xr), free(xat), free(tail);
    if (rc)
        return rc;
    double logits = logits_work(m, r), attrib_w = j->attrib ? attrib_work(m, j) : 0, second_w = 0;
    est->plan_bytes = plan_bytes(&r->plan) + JOB_OVERHEAD +
                      (size_t)j->n_inputs * (size_t)j->B * (size_t)j->T * sizeof *j->ids;
    for (int i = 0; i < r->nvplans; i++)
        est->plan_bytes += plan_bytes(&r->vplans[i]);
    est->exec_bytes = ex.peak_bytes;
    est->chunks = ex.chunks;
    result_estimate(m, j, ex.value_bytes, (size_t)r->plan.nv, &rs);
    est->output_bytes = ex.end_bytes + rs.peak_bytes;
    /* 5% for what the allocator rounds up and cannot hand back at once */
    size_t work = est->exec_bytes > est->output_bytes ? est->exec_bytes : est->output_bytes;
    size_t attrib = 0;
    const char *attrib_f = "attribution"; /* or discover's second job, if that is larger */
    if (j->attrib) { /* after the result is built: the result, the scores and their text */
        est->result_bytes = rs.text_bytes + attrib_text_bytes(m, j);
        /* the roots (the corrupted senders among them) are held when it starts */
        attrib = attrib_bytes(m, j) + ex.end_bytes + rs.peak_bytes + 2 * attrib_text_bytes(m, j);
        /* discover's second job (discover_bytes; it is planned after the
         * attribution and refused if it needs more) */
        size_t second =
            j->attrib->discover ? discover_bytes(j, ex.peak_bytes) + est->plan_bytes : 0;
        if (j->attrib->discover) { /* or what it plans to with stand-in edges, and a quarter */
            size_t standin = 0;
            if ((rc = discover_standin_bytes(m, j, o, &standin, &second_w, e)))
                return rc;
            standin += standin / 4 + est->plan_bytes;
            /* twice: the real ranking's circuits can cost more than
             * random edges' (bench/time's discover job: 484 GFLOP planned
             * from its ranking, 278 from the stand-in) */
            second_w *= 2;
            second = standin > second ? standin : second;
        }
        if (second > attrib)
            attrib = second, attrib_f = "discover";
        work = attrib > work ? attrib : work;
    }
    est->work_bytes = work;
    est->peak_bytes = est->plan_bytes + work + work / 20;
    if (!j->attrib)
        est->result_bytes = rs.text_bytes;
    est->result_bytes += picture_bytes(j);
    /* the field behind the largest part of the peak */
    const char *f = j->nvar > 1 ? "sweep" : "inputs";
    size_t big = ex.peak_bytes;
    if (est->plan_bytes > big)
        big = est->plan_bytes, f = j->nvar ? "sweep" : "branch";
    if (rs.largest_bytes > big)
        big = rs.largest_bytes, f = rs.largest_field;
    if (attrib > big)
        f = attrib_f;
    est->peak_field = f;
    est->result_field = rs.text_field;
    est->work = ex.work + logits + attrib_w + second_w;
    f = j->nvar > 1 ? "sweep" : "inputs";
    if (logits > ex.work) /* the outputs' logits, or else a metric's over the vocabulary */
        f = j->top_k > 0 || j->want_logits || j->ntoklp ? "outputs.positions" : "metric";
    if (attrib_w > ex.work && attrib_w > logits)
        f = "attribution";
    if (second_w > est->work / 2)
        f = "discover";
    est->work_field = f;
    return 0;
}

double run_seconds(const run_estimate *est, double rate, const char **field)
{
    double work = est->work / rate, text = (double)est->result_bytes * RUN_TEXT_SECONDS_PER_BYTE;
    if (field)
        *field = text > work ? est->result_field : est->work_field;
    return work + text;
}

/* For outputs.attention of a plain job: the patched run's attention at each
 * layer asked for, and its sources kept as roots (so that its probabilities
 * can be computed again once the job ran). */
static int keep_attention_sources(run_output *r, npp_err *e)
{
    const job *j = r->job;
    int H3 = 3 * r->plan.g.H;
    int32_t *roots = realloc(r->roots, ((size_t)r->nroots + (size_t)j->nattn * H3) * sizeof *roots);
    if (roots)
        r->roots = roots;
    if (!roots || !(r->pattn = malloc((size_t)j->nattn * sizeof *r->pattn)))
        return npp_fail(e, NPP_ENOMEM, "", "out of memory");
    for (int i = 0; i < j->nattn; i++) {
        int32_t a = r->pattn[i] = plan_trunk_attn(&r->plan, j->attn_layers[i]);
        for (int k = 0; a >= 0 && k < r->plan.v[a].nin; k++) {
            int32_t s = r->plan.v[a].in[k], seen = 0;
            for (int q = r->nmain; q < r->nroots && !seen; q++)
                seen = r->roots[q] == s;
            if (!seen)
                r->roots[r->nroots++] = s;
        }
    }
    return 0;
}

/* For an attribution: the outputs of every sender in the corrupted run
 * (input 1's plain run) as roots from r->sroot0 on, so that they come from
 * the shared cache where another job left them (attrib_opts.senders). */
static int keep_senders(run_output *r, npp_err *e)
{
    int S = PLAN_SENDER_VALUES(r->plan.g.L);
    int32_t *roots = realloc(r->roots, ((size_t)r->nroots + (size_t)S) * sizeof *roots);
    if (!roots)
        return npp_fail(e, NPP_ENOMEM, "", "out of memory");
    r->roots = roots;
    r->sroot0 = r->nroots;
    if (plan_plain_senders(&r->plan, 1, r->roots + r->nroots, e) != S)
        return e && e->code ? e->code : NPP_ENOMEM;
    r->nroots += S;
    /* the attribution's first pass is input 0's plain run with gradients:
     * its final hidden states are that run's output (not computed twice) */
    if ((r->clean_v = plan_plain(&r->plan, 0, e)) < 0)
        return e && e->code ? e->code : NPP_ENOMEM;
    return 0;
}

/* The patched run's attention probabilities at each outputs.attention
 * layer (NULL where there is none), from the kept sources hs[nmain..). */
static shim_tensor **patched_probs(const run_output *r, shim_tensor *const *hs, npp_err *e)
{
    const job *j = r->job;
    shim_tensor **h = calloc((size_t)r->plan.nv + 1, sizeof *h);
    shim_tensor **probs = calloc((size_t)j->nattn + 1, sizeof *probs);
    shim_status st = {0};
    if (!h || !probs) {
        free(h);
        free(probs);
        return npp_fail(e, NPP_ENOMEM, "", "out of memory"), NULL;
    }
    for (int q = r->nmain; q < r->nroots; q++)
        h[r->roots[q]] = hs[q];
    for (int i = 0; i < j->nattn && !st.code; i++)
        if (r->pattn[i] >= 0)
            probs[i] = op_attn_probs(&r->plan, h, r->pattn[i], &st);
    free(h);
    if (st.code) {
        for (int i = 0; i < j->nattn; i++)
            shim_free(probs[i]);
        free(probs);
        return npp_fail_shim(e, &st), NULL;
    }
    return probs;
}

int run_prepare(const model *m, json_t *doc, const run_opts *o, run_output **out, npp_err *e)
{
    int rc;
    job_limits lim = {o->max_values};
    *out = NULL;
    run_output *r = calloc(1, sizeof *r);
    if (!r)
        return npp_fail(e, NPP_ENOMEM, "", "out of memory");
    double t0 = now_ms();
    if ((rc = job_parse(m, doc, &lim, &r->job, e)))
        goto fail;
    job *j = r->job;
    int npatched = j->nvar ? j->nvar : 1;
    /* the job's bounds on planning, shared by its variants */
    size_t max_bytes = o->max_plan_bytes ? o->max_plan_bytes : PLAN_MAX_BYTES, used_bytes = 0;
    size_t used_nodes = 0;
    double deadline = o->plan_seconds > 0 ? t0 + o->plan_seconds * 1e3 : 0;
    plan_init(&r->plan, m, j->n_inputs, j->B, j->T, j->ids, j->max_values);
    r->plan.salt = o->cache_salt;
    r->plan.len = j->len, r->plan.edits = &j->edits;
    r->plan.max_bytes = max_bytes, r->plan.cancel = o->cancel;
    r->plan.plan_seconds = o->plan_seconds, r->plan.deadline_ms = deadline;
    r->clean_v = -1;
    r->roots = malloc((size_t)(npatched + 1 + j->n_inputs) * sizeof *r->roots);
    r->vplans = j->nvar ? calloc((size_t)j->nvar, sizeof *r->vplans) : NULL;
    if (!r->roots || (j->nvar && !r->vplans)) {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory");
        goto fail;
    }
    if (!j->nvar && ((rc = plan_patched(&r->plan, j->rules, &r->roots[r->nroots++], e)) ||
                     (j->written && (rc = plan_check_rules(&r->plan, j->rules, e)))))
        goto fail;
    /* a sweep: each variant planned alone (its path tree), then merged */
    for (int i = 0; i < j->nvar; i++) {
        int32_t root;
        plan *vp = &r->vplans[i];
        plan_init(vp, m, j->n_inputs, j->B, j->T, j->ids, j->max_values);
        vp->salt = o->cache_salt;
        vp->len = j->len, vp->edits = &j->edits;
        r->nvplans++;
        used_bytes += i ? plan_bytes(&r->vplans[i - 1]) : 0;
        used_nodes += i ? (size_t)r->vplans[i - 1].nn : 0;
        if (used_nodes >= PLAN_MAX_NODES || used_bytes >= max_bytes) {
            rc = npp_fail(e, NPP_ELIMIT, "sweep",
                          "sweep[%d]: the variants before it already plan %zu path nodes and "
                          "%zu MiB; the limits are %d nodes and %zu MiB for a job",
                          i, used_nodes, used_bytes >> 20, PLAN_MAX_NODES, max_bytes >> 20);
            goto fail;
        }
        vp->max_nodes = PLAN_MAX_NODES - used_nodes;
        vp->max_bytes = max_bytes - used_bytes;
        vp->cancel = o->cancel, vp->plan_seconds = o->plan_seconds, vp->deadline_ms = deadline;
        if ((rc = plan_patched(vp, j->var[i].rules, &root, e)))
            goto fail;
        if (j->var[i].written && (rc = plan_check_rules(vp, j->var[i].rules, e))) {
            job_in_variant(e, i, rc);
            goto fail;
        }
        if ((rc = plan_merge(&r->plan, vp, root, &r->roots[r->nroots++], e)))
            goto fail;
    }
    if (j->metric && j->metric->needs_ref &&
        (r->roots[r->nroots++] = plan_plain(&r->plan, 0, e)) < 0)
        goto fail_rc;
    for (int k = 0; (j->want_baselines || j->normalize) && k < j->n_inputs; k++)
        if ((r->roots[r->nroots++] = plan_plain(&r->plan, k, e)) < 0)
            goto fail_rc;
    r->nmain = r->nroots;
    if (!j->nvar && j->nattn && (rc = keep_attention_sources(r, e)))
        goto fail;
    if (j->attrib && (rc = keep_senders(r, e)))
        goto fail;
    if ((rc = estimate(m, r, o, e)))
        goto fail;
    r->plan_ms = now_ms() - t0;
    *out = r;
    return 0;
fail_rc:
    rc = e && e->code ? e->code : NPP_ENOMEM;
fail:
    run_output_free(r);
    return rc;
}

static json_t *stats_json(const run_output *r, double exec_ms)
{
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:f}", "values_planned",
                     (json_int_t)r->stats.planned, "values_needed", (json_int_t)r->stats.needed,
                     "values_computed", (json_int_t)r->stats.computed, "values_cached",
                     (json_int_t)r->stats.cached, "values_waited", (json_int_t)r->stats.waited,
                     "batches", (json_int_t)r->stats.batches, "shared_positions",
                     (json_int_t)r->stats.shared, "tail_from",
                     (json_int_t)(r->stats.tail ? tail_from(r->job) : 0), "path_nodes",
                     (json_int_t)run_path_nodes(r), "plan_ms", r->plan_ms, "exec_ms", exec_ms,
                     "estimate_gflop", 2e-9 * r->est.work);
}

/* An attribution job's progress: the plan's values, then the attribution's
 * units (attrib_units), as one count. */
typedef struct {
    const run_opts *o;
    long extra;
} progress_plus;

static void progress_with_attrib(void *ud, long done, long total)
{
    const progress_plus *p = ud;
    p->o->progress(p->o->ud, done, total + p->extra);
}

/* discover's second job counts after the first: extra is what the first
 * counted. */
static void progress_after(void *ud, long done, long total)
{
    const progress_plus *p = ud;
    p->o->progress(p->o->ud, p->extra + done, p->extra + total);
}

/* discover's second job: the top edges patched exactly one by one
 * (path_patch from input 1) and the circuit of the top n edges for each n,
 * as one sweep on the same cache; its plan may not need more than the job
 * was admitted with. */
static json_t *discover_doc(const job *j, json_t *edges)
{
    const job_attrib *at = j->attrib;
    json_t *metric = json_deep_copy(j->doc_metric), *sweep = json_array();
    json_object_set_new(metric, "normalize", json_true());
    for (size_t k = 0; k < (size_t)at->verify && k < json_array_size(edges); k++) {
        json_t *ed = json_array_get(edges, k);
        const char *u = json_string_value(json_array_get(ed, 0)),
                   *v = json_string_value(json_array_get(ed, 1));
        char name[96];
        snprintf(name, sizeof name, "%s -> %s", u, v);
        json_array_append_new(sweep, json_pack("{s:s,s:{s:s,s:[s],s:[s],s:i,s:i}}", "name", name,
                                               "preset", "type", "path_patch", "senders", u,
                                               "receivers", v, "from", 1, "into", 0));
    }
    for (int i = 0; i < at->nsizes; i++) {
        json_t *list = json_array();
        for (size_t k = 0; k < (size_t)at->top_n[i] && k < json_array_size(edges); k++) {
            json_t *ed = json_array_get(edges, k);
            json_array_append_new(list,
                                  json_pack("[O,O]", json_array_get(ed, 0), json_array_get(ed, 1)));
        }
        char name[48];
        snprintf(name, sizeof name, "top %ld", at->top_n[i]);
        json_array_append_new(sweep,
                              json_pack("{s:s,s:{s:o}}", "name", name, "circuit", "edges", list));
    }
    return json_pack("{s:O,s:o,s:{s:i,s:b},s:o,s:{s:I}}", "inputs", j->doc_inputs, "metric", metric,
                     "outputs", "top_k", 0, "baselines", 1, "sweep", sweep, "limits", "max_values",
                     (json_int_t)j->max_values); /* the job's own */
}

/* Runs discover's second job and puts "discover" in r's result: "verify"
 * (each edge's estimate beside its exact effect, M(patched) - M(clean)) and
 * "curve" (faithfulness of the top n edges' circuit). at: the attribution,
 * every edge, sorted; cut to the job's "top" here. */
static int discover(const model *m, run_output *r, const run_opts *o, json_t *at, npp_err *e)
{
    const job *j = r->job;
    const job_attrib *ja = j->attrib;
    json_t *edges = json_object_get(at, "edges");
    json_t *doc = discover_doc(j, edges);
    run_output *r2 = NULL;
    run_opts o2 = *o;
    progress_plus pp = {o, r->stats.computed + attrib_units(m, j)};
    o2.npy_dir = NULL;
    if (o->progress)
        o2.progress = progress_after, o2.ud = &pp;
    if (!doc)
        return npp_fail(e, NPP_ENOMEM, "discover", "out of memory");
    double t0 = now_ms();
    int rc = run_prepare(m, doc, &o2, &r2, e);
    json_decref(doc);
    if (!rc && r2->est.peak_bytes > r->est.peak_bytes) {
        rc = npp_fail(e, NPP_ELIMIT, "discover",
                      "discover: checking %d edges and %d circuits needs about %.1f MiB, more "
                      "than the %.1f MiB the job was admitted with; ask for fewer (verify, "
                      "top_n)",
                      ja->verify, ja->nsizes, r2->est.peak_bytes / 1048576.0,
                      r->est.peak_bytes / 1048576.0);
    }
    if (!rc)
        rc = run_execute(m, r2, &o2, e);
    if (rc) {
        run_output_free(r2);
        return rc;
    }
    json_t *sw = json_object_get(r2->result, "sweep"), *verify = json_array(),
           *curve = json_array();
    double clean = json_real_value(json_object_get(json_object_get(r->result, "metric"), "mean"));
    size_t nv = json_array_size(sw) - (size_t)ja->nsizes;
    for (size_t k = 0; k < nv; k++) {
        json_t *ed = json_array_get(edges, k);
        json_t *mt = json_object_get(json_array_get(sw, k), "metric");
        double exact = json_real_value(json_object_get(mt, "mean")) - clean;
        json_array_append_new(verify, json_pack("{s:[O,O],s:O,s:f}", "edge", json_array_get(ed, 0),
                                                json_array_get(ed, 1), "estimate",
                                                json_array_get(ed, 2), "exact", exact));
    }
    for (int i = 0; i < ja->nsizes; i++) {
        json_t *mt = json_object_get(json_array_get(sw, nv + (size_t)i), "metric");
        long n = ja->top_n[i] < (long)json_array_size(edges) ? ja->top_n[i]
                                                             : (long)json_array_size(edges);
        json_array_append_new(curve, json_pack("{s:i,s:I,s:O,s:O}", "n", (int)ja->top_n[i], "edges",
                                               (json_int_t)n, "faithfulness",
                                               json_object_get(mt, "normalized"), "metric",
                                               json_object_get(mt, "mean")));
    }
    json_t *bl =
        json_object_get(json_array_get(json_object_get(r2->result, "baselines"), 1), "metric");
    json_t *d =
        json_pack("{s:f,s:O*,s:o,s:o,s:f}", "clean", clean, "corrupt", json_object_get(bl, "mean"),
                  "verify", verify, "curve", curve, "ms", now_ms() - t0);
    run_output_free(r2);
    if (!d)
        return npp_fail(e, NPP_ENOMEM, "discover", "out of memory");
    if (ja->top && (size_t)ja->top < json_array_size(edges)) /* the list as the job asked */
        while (json_array_size(edges) > (size_t)ja->top)
            json_array_remove(edges, json_array_size(edges) - 1);
    json_object_set_new(r->result, "discover", d);
    return 0;
}

int run_execute(const model *m, run_output *r, const run_opts *o, npp_err *e)
{
    int rc, nx = 0;
    /* While the job computes, freed tensor blocks come back for its next
     * tensors instead of being faulted in anew (a third of a sweep's time
     * on a VM where a page fault costs ~6 us), within what the job was
     * estimated to hold, so the estimate bounds it with them
     * (shim_block_cache). Not while the result is built: its host copies
     * are not tensors, so the cache would not see them. A job run inside
     * another (discover's second) sets its own budget, then the outer's
     * comes back. A sixteenth of the estimate stays free for what the heap
     * keeps of small allocations, which the cache does not count. */
    size_t prev_blocks = shim_block_cache(r->est.work_bytes - r->est.work_bytes / 16);
    int blocks_on = 1;
    json_t *trace = r->job->want_trace ? json_array() : NULL, *at = NULL;
    shim_tensor **hs = calloc((size_t)r->nroots, sizeof *hs), **xh = NULL, *clean = NULL;
    int32_t *xr = malloc(((size_t)r->nroots + 1) * sizeof *xr);
    int *xat = malloc(((size_t)r->nroots + 1) * sizeof *xat);
    unsigned char *tail = malloc((size_t)r->nroots + 1);
    if (!hs || !xr || !xat || !tail) {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory");
        goto done;
    }
    nx = exec_roots(r, xr, xat);
    tail_roots(r, xat, nx, tail);
    if (!(xh = calloc((size_t)nx + 1, sizeof *xh))) {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory");
        goto done;
    }
    double t1 = now_ms();
    const job *j = r->job;
    progress_plus pp = {o, j->attrib ? attrib_units(m, j) : 0};
    int wrap = j->attrib && o->progress;
    exec_opts eo = {.cancel = o->cancel,
                    .progress = wrap ? progress_with_attrib : o->progress,
                    .ud = wrap ? (void *)&pp : o->ud,
                    .trace = trace,
                    .chunk_bytes = o->chunk_bytes ? o->chunk_bytes : EXEC_CHUNK_BYTES,
                    .tail_from = tail_from(j),
                    .tail = tail};
    if ((rc = exec_run(&r->plan, o->cache, xr, nx, xh, &eo, &r->stats, e)))
        goto done;
    for (int k = 0; k < nx; k++)
        hs[xat[k]] = xh[k], xh[k] = NULL;
    json_t *stats = stats_json(r, now_ms() - t1);
    if (j->attrib) {
        /* before the result: its clean pass gives input 0's plain run */
        double t2 = now_ms();
        long done = r->stats.computed; /* what the executor counted */
        attrib_opts ao = {.cancel = o->cancel,
                          .progress = o->progress,
                          .ud = o->ud,
                          .done0 = done,
                          .total = done + pp.extra,
                          .all = j->attrib->discover,
                          .senders = hs + r->sroot0,
                          .clean_out = r->clean_v >= 0 ? &clean : NULL,
                          .tail_from = tail_from(j)};
        rc = attrib_run(m, j, &ao, &at, e);
        for (int k = 0; !rc && k < r->nroots; k++)
            if (r->roots[k] == r->clean_v) {
                shim_status st = {0};
                if (!(hs[k] = shim_detach(clean, &st)))
                    rc = npp_fail_shim(e, &st);
            }
        json_object_set_new(stats, "attribution_ms", json_real(now_ms() - t2));
    }
    /* what the thread keeps for its next job (shim_block_keep) stays
     * beside the result, within the estimate: at most what the work
     * leaves over the result's tensors and text */
    size_t res = r->est.output_bytes + r->est.result_bytes;
    shim_block_trim(r->est.work_bytes > res ? r->est.work_bytes - res : 0);
    shim_block_cache(prev_blocks);
    blocks_on = 0;
    if (!rc) {
        shim_tensor **probs = r->pattn ? patched_probs(r, hs, e) : NULL;
        result_opts ro = {m, r->job, o->npy_dir, o->model_name, o->cancel, probs};
        rc = r->pattn && !probs ? (e && e->code ? e->code : NPP_ENOMEM)
                                : result_build(&ro, hs, r->nmain, stats, trace, &r->result, e);
        for (int i = 0; probs && i < r->job->nattn; i++)
            shim_free(probs[i]);
        free(probs);
    }
    json_decref(stats);
    if (!rc && at) {
        json_object_set_new(r->result, "attribution", at);
        at = NULL;
        if (j->attrib->discover)
            rc = discover(m, r, o, json_object_get(r->result, "attribution"), e);
    }
done:
    for (int i = 0; hs && i < r->nroots; i++)
        shim_free(hs[i]);
    for (int i = 0; xh && i < nx; i++)
        shim_free(xh[i]);
    shim_free(clean);
    free(hs), free(xh), free(xr), free(xat), free(tail);
    json_decref(trace);
    json_decref(at);
    if (blocks_on)
        shim_block_cache(prev_blocks);
    return rc;
}

int run_job(const model *m, json_t *doc, const run_opts *o, run_output **out, npp_err *e)
{
    int rc = run_prepare(m, doc, o, out, e);
    if (!rc && (rc = run_execute(m, *out, o, e))) {
        run_output_free(*out);
        *out = NULL;
    }
    return rc;
}

const plan *run_tree(const run_output *r, int variant)
{
    return r->nvplans ? &r->vplans[variant] : &r->plan;
}

void run_output_free(run_output *r)
{
    if (!r)
        return;
    json_decref(r->result);
    plan_free(&r->plan);
    for (int i = 0; i < r->nvplans; i++)
        plan_free(&r->vplans[i]);
    free(r->vplans);
    free(r->roots);
    free(r->pattn);
    job_free(r->job);
    free(r);
}

/* A plain job of B examples of T tokens on m, planned. */
static int calibration_job(const model *m, int B, int T, json_t **doc, run_output **r, npp_err *e)
{
    json_t *batch = json_array();
    for (int b = 0; b < B; b++) {
        json_t *ids = json_array();
        for (int t = 0; t < T; t++)
            json_array_append_new(ids, json_integer((t * 7919 + b * 131 + 13) % m->cfg.vocab_size));
        json_array_append_new(batch, ids);
    }
    *doc = json_pack("{s:[o],s:{s:i}}", "inputs", batch, "outputs", "top_k", 1);
    run_opts o = {0};
    return *doc ? run_prepare(m, *doc, &o, r, e) : npp_fail(e, NPP_ENOMEM, "", "out of memory");
}

/* The largest calibration run, in multiply-adds: about 0.1 s on one core. */
#define RATE_WORK 4e9

int run_measure_rate(const model *m, double *work_per_s, npp_err *e)
{
    cache *c = cache_new(0);
    if (!c)
        return npp_fail(e, NPP_ENOMEM, "", "out of memory");
    run_opts o = {.cache = c};
    /* 4 x 256 tokens (or the model's context), fewer examples, then fewer
     * tokens, until its work is at most RATE_WORK; run once to warm up
     * (the tensor library's start-up, the first faults), then three times,
     * timed: the median */
    int B = 4, T = m->cfg.n_positions < 256 ? m->cfg.n_positions : 256, rc = 0;
    double w = 0, s = 0, times[4] = {0};
    for (int pass = 0; pass < 4 && !rc; pass++) {
        json_t *doc = NULL;
        run_output *r = NULL;
        while (!(rc = calibration_job(m, B, T, &doc, &r, e)) && r->est.work > RATE_WORK && T > 8) {
            run_output_free(r), json_decref(doc);
            r = NULL, doc = NULL;
            if (B > 1)
                B /= 2;
            else
                T /= 2;
        }
        double t0 = now_ms();
        if (!rc && !(rc = run_execute(m, r, &o, e)))
            w = r->est.work, times[pass] = (now_ms() - t0) / 1e3;
        run_output_free(r);
        json_decref(doc);
    }
    cache_free(c);
    s = times[1] + times[2] + times[3] - fmax(times[1], fmax(times[2], times[3])) -
        fmin(times[1], fmin(times[2], times[3]));
    if (!rc)
        *work_per_s = w / (s > 1e-6 ? s : 1e-6);
    return rc;
}
