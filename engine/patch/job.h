// job.h - the job document (JSON) the CLI runs and the service accepts.
//
//   {
//     "inputs":  ["The capital of Spain is", "The capital of Italy is"],
//     "branch":  [{"match": "**/a1", "split": true}],
//     "which":   [{"match": "**/a1/**", "input": 1}],
//     "outputs": {"positions": [-1], "top_k": 5, "logits": false,
//                 "hidden_states": false, "token_logprobs": [" Madrid"],
//                 "attention": [0, 1], "baselines": true, "trace": false},
//     "metric":  {"type": "logit_diff", "target": " Madrid", "baseline": " Rome"},
//     "limits":  {"max_values": 50000, "max_seconds": 60}
//   }
//
// inputs: 1..32 items; each a text, a list of token ids, or a batch (a list
// of texts or of id lists). All inputs have one batch size; examples may
// differ in length, but example b has one length in every input (shorter
// ones are right-padded, which causal attention makes exact). Instead of branch/which, "preset"
// compiles the common experiments into rules (see job.c and docs): activation_patch (node, from,
// into, positions) and path_patch (senders, receivers, from, into). metric types: logit_diff
// (target, baseline), logit, logprob, prob (token), kl (from the unpatched run of input 0);
// "position" defaults to the last. A token is a text of one token or an id, or a list of them, one
// per example of the batch. A sweep runs many variants of one experiment in one job: "sweep":
// [{"name": "a0.head1", "preset": {...}}, ...] (1..JOB_MAX_VARIANTS variants, each a preset or
// branch/which, none at the top). The variants share the inputs, outputs and metric; their plans
// are merged, so a value any two need is computed once. Errors name the field: "inputs[1]",
// "branch[0].match", "preset.node", "sweep[3].preset.senders[0]".
#ifndef NPP_JOB_H
#define NPP_JOB_H

#include <jansson.h>
#include <stdint.h>

#include "base/err.h"
#include "model/model.h"
#include "patch/edit.h"
#include "patch/metric.h"
#include "patch/rules.h"

#define JOB_MAX_INPUTS   32
#define JOB_MAX_VARIANTS 1024
#define JOB_MAX_SECONDS  2592000 /* limits.max_seconds at most (30 days) */

/* One variant of a sweep: its own rules over the job's inputs. */
typedef struct {
    json_t *name; /* string or NULL (new ref) */
    ruleset *rules;
    json_t *compiled; /* as in job */
    int written;      /* as in job */
    int norm[2];      /* as in job */
} job_variant;

/* A grid: a sweep over up to three axes (layer, head, pos), one variant
 * per cell, row-major. */
#define GRID_MAX_AXES 3

/* "attribution": gradient scores of every edge (compute/attrib.h). */
enum { ATTRIB_EAP = 0, ATTRIB_EAP_IG = 1 };
#define ATTRIB_MAX_STEPS    64
#define DISCOVER_MAX_SIZES  16   /* discover.top_n entries */
#define DISCOVER_MAX_VERIFY 1024 /* discover.verify: edges patched one by one */
typedef struct {
    int method; /* ATTRIB_* */
    int steps;  /* points between the corrupted and the clean input (1 for eap) */
    int nodes;  /* "level": "nodes": one score per sender */
    long top;   /* the highest this many in the result (0: all) */
    /* "discover": then the top `verify` edges patched exactly one by one, and
     * the circuit of the top n edges evaluated for each n of top_n */
    int discover, verify, nsizes;
    long top_n[DISCOVER_MAX_SIZES];
} job_attrib;
typedef struct {
    int naxes;
    const char *axis[GRID_MAX_AXES]; /* "layer", "head", "pos" */
    int n[GRID_MAX_AXES];            /* cells along each axis */
    int *ticks[GRID_MAX_AXES];       /* the axis' values */
} job_grid;

/* One activation to return: a graph node's value (kind G_EMB, G_A, G_F,
 * G_AHEAD, G_HEAD or G_FHEAD), or kind -1 for a{layer}.pattern. */
typedef struct {
    char name[32];
    int kind, layer, idx;
} job_act;

typedef struct {
    int n_inputs, B, T;
    int64_t *ids; /* n_inputs x B x T, example b right-padded with token 0 */
    int *len;     /* B: example b's length (the same in every input); T the longest */
    int uneven;   /* some example is shorter than T */
    graph_dims g;
    ruleset *rules;
    json_t *compiled; /* {"branch": [...], "which": [...], "intervene"?} as run (new ref) */
    edit_table edits; /* every intervene rule's edit (all variants') */
    int written;      /* the rules are the user's branch/which (not a preset's) */
    int norm[2];      /* normalize: the inputs whose metric is 0 and 1 */
    /* a sweep: nvar variants, each with its own rules (then rules and
     * compiled are NULL); 0 for a plain job */
    int nvar;
    job_variant *var;
    job_grid *grid;     /* a sweep made by "grid" (NULL otherwise) */
    job_attrib *attrib; /* "attribution" or "discover" (NULL otherwise) */
    /* outputs */
    int npos;
    int *positions; /* B x npos, resolved per example (0..T-1; len[b] and up
                     * are padding rows) */
    int top_k;
    int want_logits, want_hidden, want_trace, want_baselines;
    int ntoklp;
    int64_t *toklp; /* token ids for token_logprobs */
    int nattn;
    int *attn_layers;
    int nact; /* outputs.activations: nodes of input act_input's plain run */
    int act_input;
    job_act *act;
    /* metric */
    const metric_def *metric;             /* NULL: none */
    int normalize;                        /* metric.normalize */
    int64_t *m_tokens[METRIC_MAX_TOKENS]; /* per token field, one per example (B) */
    int *m_pos;                           /* B: resolved position per example */
    size_t max_values;
    double max_seconds; /* limits.max_seconds: the job's own bound on its compute (0: none) */
    json_t *warnings;   /* [{"field", "message"}]: what ran, but may not be meant */
    json_t *doc_inputs, *doc_metric; /* the document's, as written (discover's second job) */
} job;

typedef struct {
    size_t max_values; /* ceiling for limits.max_values (and its default) */
} job_limits;

/* Parses doc against model m. *out is new (job_free). */
int job_parse(const model *m, json_t *doc, const job_limits *lim, job **out, npp_err *e);
void job_free(job *j);
/* Puts "sweep[i]." before the field e names (and before its message, which
 * starts with that field); returns rc. For errors found in variant i. */
int job_in_variant(npp_err *e, int i, int rc);

#endif
