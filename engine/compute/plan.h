/* plan.h - the planner: walks GPT-2's graph with the rules and builds the
 * DAG of values a job needs (DESIGN.md section 4).
 *
 * A value is one tensor the model would compute, named by a content key:
 * SHA-256 of the operation, its layer, and its inputs' keys (embeddings
 * hash the model fingerprint and the token ids). Equal keys mean equal
 * tensors, within a job and across jobs. Canonical forms make equal
 * computations share a key: an attention whose heads all read one input
 * is keyed like the unsplit attention; a per-position mix of one value is
 * that value. So splitting without changing inputs plans exactly the
 * values of the unsplit run.
 *
 * The walk memoises on (node, rule-automaton state before the node): all
 * decisions below a node depend on nothing else (the skip branch of a split
 * continues from that state), so planning stays polynomial where the
 * paths are exponential. The memo entries are also the path tree's nodes
 * (shared sub-trees once), which the SVG renderer draws.
 *
 *     plan p;
 *     plan_init(&p, m, n_inputs, B, T, ids, max_values);
 *     int32_t root;
 *     if (plan_patched(&p, rules, &root, &err)) ...   // NPP_ELIMIT if too big
 *     int32_t clean = plan_plain(&p, 0, &err);
 *     ... exec over p.v ...
 *     plan_free(&p);
 */
#ifndef NPP_PLAN_H
#define NPP_PLAN_H

#include <stdint.h>

#include "base/err.h"
#include "model/model.h"
#include "patch/edit.h"
#include "patch/graph.h"
#include "patch/rules.h"

/* HEAD: one head's share of an attention output (z_h W_O[h], no bias),
 * from its q, k, v sources; EDIT: an intervention (patch/edit.h) on a
 * value; MEAN: a value's mean over the batch, per position, broadcast;
 * ADELTA: an attention whose heads read different sources, as the plain
 * attention of the sources most heads read (s) plus, for each head h that
 * reads others, (z_h from its own sources - z_h from s) W_O[h] (so only
 * those heads are computed); Z: the attention's heads' outputs z (B, T, C,
 * head h in columns [hD, (h+1)D), before c_proj) of one residual at a
 * layer, all heads reading it (what an attribution takes for every head's
 * share at once: z_h W_O[h] is head h's). */
typedef enum {
    OP_EMB,
    OP_ADD,
    OP_MIX,
    OP_ATTN,
    OP_MLP,
    OP_LNF,
    OP_HEAD,
    OP_EDIT,
    OP_MEAN,
    OP_ADELTA,
    OP_Z
} plan_op;

/* How an EDIT value changes its first input x at the edit's positions. */
enum {
    EDIT_SET,  /* x = 0 (zero), x = in[1] (mean, patch), x += scale * vec (steer) */
    EDIT_HEAD, /* x is an attention output, in[1] one head's share of it:
                * x -= in[1] (zero), x += in[2] - in[1] (mean, patch) */
};

typedef struct {
    plan_op op;
    int layer;   /* ATTN / MLP / HEAD / ADELTA / Z layer; EMB: the input index; EDIT: EDIT_SET
                  * or EDIT_HEAD; else -1 */
    int aux;     /* HEAD: the head; EDIT: the edit's index in the plan's table; ADELTA: the
                  * number d of heads computed; else 0 */
    int rank;    /* execution order: every input has a smaller rank */
    int nin;     /* ADD 2; MIX T (one per position); ATTN 3H (q, k, v per head); HEAD 3;
                  * EDIT 1..3; MLP, LNF, MEAN, Z 1; ADELTA 3H + 2 (the sources as ATTN's, the
                  * plain attention, s) */
    int32_t *in; /* value indices (into the plan's pool) */
    uint8_t key[32];
} plan_value;

typedef struct {
    int sym;       /* graph symbol of this path element */
    int32_t value; /* the value at this node, -1 where none (a split head) */
    int nkids;
    int32_t *kids;  /* child nodes (into the plan's pool) */
    uint32_t reads; /* bit k: some path below reads input k */
    int decision;   /* branch decision here (SPLIT_*), or the input at emb */
    int rule;       /* index of the deciding rule, -1 for the default */
    int32_t state;  /* the walk state before this node (an interned state) */
    int edit;       /* the intervention on this node's value (its table index), or -1 */
    int erule;      /* the intervene rule that chose it, -1 for none */
} plan_node;

typedef struct plan {
    const model *m;
    graph_dims g;
    int n_inputs, B, T;
    const int64_t *ids;      /* n_inputs x B x T, borrowed */
    const int *len;          /* B example lengths (NULL: all T), borrowed */
    const edit_table *edits; /* the job's interventions (NULL: none), borrowed */
    size_t max_values;
    plan_value *v;
    int32_t nv;
    plan_node *nodes;
    int32_t nn;
    int32_t root_node; /* ln_final of the patched run, -1 before plan_patched */
    /* private */
    int32_t capv, capn;
    int32_t *pool;
    size_t npool, cappool;
    int32_t *vslots, *nslots, *sslots; /* hash tables: value by key, node by (sym,
                                        * state), state by its words */
    size_t vcap, ncap, scap;
    uint64_t *states; /* interned walk state i at states[i * words] */
    int32_t nstates;
    size_t capstates;
    uint64_t *scratch; /* one state, for rules_step */
    const ruleset *rules;
    int words;
    npp_err *err;
    unsigned long ticks;
    /* bounds (plan_init sets the defaults; a caller may lower them) */
    size_t max_nodes;           /* path-tree nodes: PLAN_MAX_NODES */
    size_t max_bytes;           /* planning memory: PLAN_MAX_BYTES */
    double plan_seconds;        /* > 0: fail with NPP_ELIMIT past this long (0: no limit) */
    double deadline_ms;         /* set from plan_seconds at the first plan_patched */
    const volatile int *cancel; /* non-zero: stop with NPP_ECANCELED */
    /* NULL, or 32 bytes hashed into the key of every input's embedding,
     * hence of every value: a cache whose values only plans with the same
     * salt find (nppd --private-cache: one per user) */
    const uint8_t *salt;
} plan;

#define PLAN_MAX_NODES 4000000      /* memo entries, a guard on planning time */
#define PLAN_MAX_BYTES (256u << 20) /* planning memory */

/* ids: n_inputs x B x T token ids (borrowed, must outlive the plan). */
void plan_init(plan *p, const model *m, int n_inputs, int B, int T, const int64_t *ids,
               size_t max_values);
void plan_free(plan *p);
/* Plans the patched run; *root gets its final hidden state value (LNF).
 * Fails with NPP_ELIMIT (and the size) over max_values values, max_nodes
 * path nodes, max_bytes of memory or plan_seconds; NPP_ECANCELED when
 * *cancel is set (checked every 1024 new nodes or values). */
int plan_patched(plan *p, const ruleset *r, int32_t *root, npp_err *e);
/* Plans the plain forward pass of input k; returns its LNF value or -1. */
int32_t plan_plain(plan *p, int k, npp_err *e);
/* What gives the outputs of every sender (patch/edges.h) in input k's
 * plain run, in stream order: emb, then for each layer its heads' outputs
 * z (Z; head h's share is z_h W_O[h]) and its MLP's output, into out
 * (PLAN_SENDER_VALUES(L) values); returns their number or -1. What
 * attribution takes from the executor (and so from the shared cache) for
 * the corrupted run. */
#define PLAN_SENDER_VALUES(L) (1 + 2 * (L))
int plan_plain_senders(plan *p, int k, int32_t *out, npp_err *e);

/* Adds src's values to p, equal keys becoming one value (a sweep's union);
 * *root gets the index in p of src's value src_root. src must have p's
 * inputs. Fails with NPP_ELIMIT when p grows over max_values values. */
int plan_merge(plan *p, const plan *src, int32_t src_root, int32_t *root, npp_err *e);

/* The attention value (OP_ATTN) of layer `layer` on the patched run's
 * trunk: the path from ln_final that takes the skip branch at every split
 * residual node (with no split, the only path). This is the attention a
 * single patched forward pass computes: for activation patching and
 * interventions, TransformerLens's patched run. -1 if none. */
int32_t plan_trunk_attn(const plan *p, int layer);

/* Memory the plan holds, in bytes. */
size_t plan_bytes(const plan *p);

/* Short name of an op ("attn", ...). */
const char *plan_op_name(plan_op op);

/* After plan_patched with rules r: every rule not marked "optional"
 * decided at least one node of the path tree (a which rule some emb, a
 * branch rule some node where the tree can branch); else NPP_EINVAL naming
 * the first that decided nothing (its field, e.g. "which[0].match"). Such a
 * rule is almost always a mistake: a pattern that matches no path, or one
 * that earlier rules shadow, and the job would quietly be the clean run. */
int plan_check_rules(const plan *p, const ruleset *r, npp_err *e);

#endif
