/* ops.h - the operations a plan is made of, as one table: each row names
 * the op, says where it runs in the executor's order (its rank), and
 * computes it. Light ops run one value at a time; batched ones (attention,
 * MLP) run every value of one layer in one call, cut into chunks whose
 * temporaries stay within a byte budget (cost() is the bound the chunks are
 * cut by). The planner (plan.c) reads names and ranks, the executor
 * (exec.c) the rest; adding an op is one row and its functions here. */
#ifndef NPP_OPS_H
#define NPP_OPS_H

#include "compute/plan.h"
#include "shim.h"

/* The q/k/v projections (ln_1 and c_attn, (B, T, 3C)) an attention call
 * made of its sources, kept for the heads' shares, attention deltas and
 * heads' outputs (plan.h, OP_HEAD, OP_ADELTA, OP_Z) of the same layer that the executor runs
 * before the next attention or MLP group: a head then slices its columns
 * instead of projecting its sources again. Only whole-batch calls are
 * kept, up to budget bytes; a head whose source is not here projects it
 * itself, the same computation. */
typedef struct {
    int layer, n, cap;
    size_t bytes, budget;
    int32_t *src;      /* source value indices */
    shim_tensor **qkv; /* their projections (views of one call's output) */
} op_memo;

void op_memo_clear(op_memo *m);

/* The shared prefix's rows (op_env.t0) of one attention or MLP group, as
 * its first chunk on examples [b0, b0+bn) computed them: every later chunk
 * on the same examples takes them from here instead of computing them
 * again (they are the same for every value of the group). An attention
 * keeps its shared rows' projection (bn, t0, 3C) in t[0] and their output
 * (bn, t0 - f, C) in t[1] (NULL when its values start at t0 or later); an
 * MLP its output (bn, t0 - f, C) in t[0]. The executor clears it when the
 * group ends; it holds at most 4 values' bytes (exec_estimate counts so). */
typedef struct {
    plan_op op;
    int layer;
    int64_t b0, bn, f;
    shim_tensor *t[2];
} op_prefix;

void op_prefix_clear(op_prefix *m);

/* What an op reads: the plan and the tensors of the values computed so far
 * (indexed like p->v; the executor's, borrowed), where attention calls
 * keep their projections (NULL: nowhere), and the shared prefix: positions
 * [0, t0) where every value of an attention or MLP group equals every
 * other (exec.c, shared_rows; 0: none). A call on two or more values then
 * computes those rows once, from the first value's input (or takes them
 * from the group's op_prefix), and the rest for each value (an attention:
 * its queries there, and its keys and values at every position, the
 * shared rows' from that one projection). And the
 * rows each value is computed at (exec.h, exec_opts.tail): value v's
 * tensor holds rows [from[v], T) (NULL: every value all rows); the values
 * of one batched call have the same. Only residual sums, MLPs, ln_f and
 * attentions (their queries) are computed at some rows; the rest whole. */
typedef struct {
    const plan *p;
    shim_tensor **h;
    op_memo *memo;
    int64_t t0;
    const int64_t *from;
    op_prefix *prefix; /* NULL: each call computes its shared rows */
} op_env;

typedef struct {
    const char *name;
    int batched; /* every value of a layer in one call, in chunks */
    /* execution order: every input must have a smaller rank; batched ops
     * have one fixed rank per layer, so a layer's values form one group */
    int (*rank)(const plan *p, int layer, int max_input_rank);
    /* a light op: computes value v (its inputs are in env->h) */
    shim_tensor *(*run)(const op_env *env, int32_t v, shim_status *st);
    /* a batched op: values vs[0..n) (one layer), examples [b0, b0+bn):
     * out[i] gets value i's rows */
    void (*run_batch)(const op_env *env, const int32_t *vs, int n, int64_t b0, int64_t bn,
                      shim_tensor **out, shim_status *st);
    /* a batched op: bound on the temporaries of one call on n values of ns
     * distinct inputs, b examples each, in bytes */
    size_t (*cost)(const plan *p, int ns, int n, int64_t b);
    /* a light op: temporaries it holds besides its output, in values */
    int temps;
    /* a light op whose temporaries depend on the value (else NULL): a bound
     * in bytes, vb the bytes of one (B, T, C) value; replaces temps */
    size_t (*temp_bytes)(const plan *p, int32_t v, size_t vb);
} op_def;

const op_def *op_info(plan_op op);

/* The shared rows a batched call of op on n values computes once (op_env's
 * t0 for an attention or MLP call on two or more values; else 0). */
int64_t op_shared_rows(const op_env *x, plan_op op, int n);

/* The attention probabilities (B, H, T, T) of attention value v, computed
 * again from its sources' tensors h[v's inputs] (h indexed like p->v). */
shim_tensor *op_attn_probs(const plan *p, shim_tensor **h, int32_t v, shim_status *st);

#endif
