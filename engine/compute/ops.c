/* ops.c - the plan's operations (see ops.h): embedding, residual sum,
 * per-position mix, attention, MLP and ln_f, each as the executor calls
 * it, with the ranks that order them and the bounds chunks are cut by. */
#include "compute/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gpt2.h"

/* ---- light ops ---------------------------------------------------------------- */

static shim_tensor *run_emb(const op_env *x, int32_t v, shim_status *st)
{
    const plan *p = x->p;
    return gpt2_embed(p->m, p->ids + (size_t)p->v[v].layer * p->B * p->T, p->B, p->T, st);
}

/* The first row of value v's tensor (op_env.from). */
static int64_t from_of(const op_env *x, int32_t v)
{
    return x->from ? x->from[v] : 0;
}

/* Examples [b0, b0+bn), positions [t, t+tn) of h: a view. */
static shim_tensor *rows(const shim_tensor *h, int64_t b0, int64_t bn, int64_t t, int64_t tn,
                         shim_status *st)
{
    shim_tensor *b = shim_narrow(h, 0, b0, bn, st), *r = shim_narrow(b, 1, t, tn, st);
    shim_free(b);
    return r;
}

/* The same of value u's tensor, which holds rows [from_of(u), T). */
static shim_tensor *value_rows(const op_env *x, int32_t u, int64_t b0, int64_t bn, int64_t t,
                               int64_t tn, shim_status *st)
{
    return rows(x->h[u], b0, bn, t - from_of(x, u), tn, st);
}

/* Input u of value v at v's rows, every example: (B, T - from_of(v), C). */
static shim_tensor *input_rows(const op_env *x, int32_t v, int32_t u, shim_status *st)
{
    int64_t f = from_of(x, v);
    return value_rows(x, u, 0, x->p->B, f, x->p->T - f, st);
}

static shim_tensor *run_add(const op_env *x, int32_t v, shim_status *st)
{
    const plan_value *pv = &x->p->v[v];
    shim_tensor *a = input_rows(x, v, pv->in[0], st), *b = input_rows(x, v, pv->in[1], st);
    shim_tensor *r = shim_add(a, b, st);
    shim_free(a), shim_free(b);
    return r;
}

static shim_tensor *run_lnf(const op_env *x, int32_t v, shim_status *st)
{
    shim_tensor *a = input_rows(x, v, x->p->v[v].in[0], st);
    shim_tensor *r = gpt2_ln_f(x->p->m, a, st);
    shim_free(a);
    return r;
}

/* A per-position mix: row t comes from input t; runs of one source become
 * one slice. */
static shim_tensor *run_mix(const op_env *x, int32_t v, shim_status *st)
{
    const plan_value *pv = &x->p->v[v];
    shim_tensor **parts = calloc((size_t)pv->nin, sizeof *parts);
    int np = 0;
    if (!parts) {
        st->code = SHIM_ENOMEM;
        snprintf(st->msg, sizeof st->msg, "out of memory");
        return NULL;
    }
    for (int t = 0; t < pv->nin;) {
        int u = t;
        while (u + 1 < pv->nin && pv->in[u + 1] == pv->in[t])
            u++;
        parts[np++] = shim_narrow(x->h[pv->in[t]], 1, t, u - t + 1, st);
        t = u + 1;
    }
    shim_tensor *r = shim_cat(parts, np, 1, st);
    for (int i = 0; i < np; i++)
        shim_free(parts[i]);
    free(parts);
    return r;
}

static shim_tensor *no_memory(shim_status *st)
{
    st->code = SHIM_ENOMEM;
    snprintf(st->msg, sizeof st->msg, "out of memory");
    return NULL;
}

/* An intervention (patch/edit.h) at its positions: EDIT_SET replaces the
 * rows (zeros, or in[1]'s) or adds scale x vec; EDIT_HEAD takes the head's
 * share in[1] out of the attention output and puts in[2] (if any) in. */
static shim_tensor *run_edit(const op_env *x, int32_t v, shim_status *st)
{
    const plan *p = x->p;
    const plan_value *pv = &p->v[v];
    const edit *d = &p->edits->e[pv->aux];
    int64_t *pos = malloc((size_t)p->T * sizeof *pos), n = 0;
    if (!pos)
        return no_memory(st);
    for (int t = 0; t < p->T; t++)
        if (d->mask[t])
            pos[n++] = t;
    shim_tensor *X = x->h[pv->in[0]], *r;
    shim_tensor *in1 = pv->nin > 1 ? x->h[pv->in[1]] : NULL,
                *in2 = pv->nin > 2 ? x->h[pv->in[2]] : NULL;
    if (pv->layer == EDIT_HEAD)
        r = shim_edit_positions(X, in1, in2, pos, n, NULL, 0, 0, st);
    else if (d->kind == EDIT_STEER)
        r = shim_edit_positions(X, NULL, NULL, pos, n, d->vec, d->scale, 0, st);
    else
        r = shim_edit_positions(X, NULL, in1, pos, n, NULL, 0, 1, st);
    free(pos);
    return r;
}

/* The batch mean at each position over the examples that have it. */
static shim_tensor *run_mean(const op_env *x, int32_t v, shim_status *st)
{
    const plan *p = x->p;
    size_t B = (size_t)p->B, T = (size_t)p->T;
    float *w = calloc(B * T, sizeof *w);
    if (!w)
        return no_memory(st);
    for (size_t t = 0; t < T; t++) {
        int n = 0;
        for (size_t b = 0; b < B; b++)
            n += !p->len || (size_t)p->len[b] > t;
        for (size_t b = 0; b < B && n; b++)
            w[b * T + t] = !p->len || (size_t)p->len[b] > t ? 1.0f / (float)n : 0.0f;
    }
    shim_tensor *r = shim_batch_mean(x->h[p->v[v].in[0]], w, st);
    free(w);
    return r;
}

/* ---- batched ops, and the bounds of one call -------------------------------------- */

/* What one attention (or MLP) call on n values of ns distinct sources,
 * b examples each, holds at most besides its inputs, in bytes: an upper
 * bound on the temporaries alive at once at each step of run_attn (and
 * shim_attention) or run_mlp (and gpt2_mlp), which free each as soon as
 * the next step has it. Chunks are formed so that this stays within the
 * executor's budget; the estimate (exec_estimate) uses the same numbers. */
static size_t attn_cost(const plan *p, int ns, int n, int64_t b)
{
    const model_config *c = &p->m->cfg;
    size_t e = shim_dtype_size(p->m->dtype), T = (size_t)p->T, N = (size_t)n, S = (size_t)ns;
    size_t a = e * (size_t)b * T * (size_t)c->n_embd;      /* one value's (b, T, C) */
    size_t sc = 4 * (size_t)b * (size_t)c->n_head * T * T; /* its float32 scores */
    size_t se = e < 4 ? sc / 4 * e : 0;                    /* the probabilities cast back */
    size_t step[5] = {
        /* the stacked sources, ln_1, then c_attn (3C); with a shared prefix,
         * c_attn's rows after it, its rows in front and both together */
        6 * S * a,
        (3 * S + 6 * N) * a,          /* c_attn, each value's q/k/v gathered and batched */
        (3 * S + 5 * N) * a + N * sc, /* q.k: the batch, matmul's copies of q and k, scores */
        (3 * S + 3 * N) * a + N * (2 * sc + se), /* scores and probabilities */
        (3 * S + 6 * N) * a + N * (sc + se),     /* p.v: v's copy, the heads, z */
    };
    size_t worst = 4 * N * a; /* c_proj and each value's own storage */
    for (int i = 0; i < 5; i++)
        worst = step[i] > worst ? step[i] : worst;
    return worst;
}

/* run_z on n values: at most what an attention call on their n sources
 * holds (run_z computes one at a time, so this is generous). */
static size_t z_cost(const plan *p, int ns, int n, int64_t b)
{
    (void)ns; /* one input per value */
    return attn_cost(p, n, n, b);
}

static size_t mlp_cost(const plan *p, int ns, int n, int64_t b)
{
    (void)ns; /* one input per value */
    const model_config *c = &p->m->cfg;
    size_t e = shim_dtype_size(p->m->dtype), rows = (size_t)n * (size_t)b * (size_t)p->T;
    size_t C = (size_t)c->n_embd, I = (size_t)c->n_inner;
    size_t stack = n > 1 ? C : 0; /* the stacked inputs, when several */
    /* ln_2 and c_fc, then c_fc (GELU in place) and c_proj; then each
     * value's own storage */
    size_t inner = C + I;
    return e * rows * (stack + (inner > 2 * C ? inner : 2 * C));
}

/* Examples [b0, b0+bn), positions [t, T) of the tensors of values
 * vs[0..n), stacked on the batch dimension: (n*bn, T-t, C); a view when
 * n == 1. */
static shim_tensor *stack(const op_env *x, const int32_t *vs, int n, int64_t b0, int64_t bn,
                          int64_t t, shim_status *st)
{
    int64_t tn = x->p->T - t;
    if (n == 1)
        return value_rows(x, vs[0], b0, bn, t, tn, st);
    shim_tensor **ts = calloc((size_t)n, sizeof *ts);
    if (!ts) {
        st->code = SHIM_ENOMEM;
        snprintf(st->msg, sizeof st->msg, "out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++)
        ts[i] = value_rows(x, vs[i], b0, bn, t, tn, st);
    shim_tensor *r = shim_cat(ts, n, 0, st);
    for (int i = 0; i < n; i++)
        shim_free(ts[i]);
    free(ts);
    return r;
}

/* Splits y (n*bn, T-t, C) into out[0..n), each (bn, T-f, C) with the
 * shared rows pre (bn, t-f, C) in front when there are some (pre NULL:
 * t = f): f is the values' first row (op_env.from), t the first computed
 * per value.
 * Each gets its own storage (a slice would pin the whole batch in the
 * cache, whose byte count would then understate what it holds); a single
 * one without shared rows is y itself. */
static void unstack(shim_tensor *y, const shim_tensor *pre, int n, int64_t bn, shim_tensor **out,
                    shim_status *st)
{
    if (n == 1 && !pre) {
        out[0] = shim_narrow(y, 0, 0, bn, st); /* the whole of y: nothing to pin */
        return;
    }
    for (int i = 0; i < n && !st->code; i++) {
        shim_tensor *slice = shim_narrow(y, 0, (int64_t)i * bn, bn, st);
        if (pre) {
            shim_tensor *parts[2] = {(shim_tensor *)pre, slice};
            out[i] = shim_cat(parts, 2, 1, st);
        } else {
            out[i] = shim_clone(slice, st);
        }
        shim_free(slice);
    }
}

int64_t op_shared_rows(const op_env *x, plan_op op, int n)
{
    return (op == OP_ATTN || op == OP_MLP) && n > 1 && x->t0 > 0 && x->t0 < x->p->T ? x->t0 : 0;
}

void op_prefix_clear(op_prefix *m)
{
    shim_free(m->t[0]);
    shim_free(m->t[1]);
    memset(m, 0, sizeof *m);
}

/* The group's shared rows t[i] for op at layer, examples [b0, b0+bn), rows
 * from f: a new handle on what an earlier chunk kept, or NULL. */
static shim_tensor *prefix_get(const op_env *x, plan_op op, int layer, int64_t b0, int64_t bn,
                               int64_t f, int i, shim_status *st)
{
    const op_prefix *m = x->prefix;
    if (!m || !m->t[0] || m->op != op || m->layer != layer || m->b0 != b0 || m->bn != bn ||
        m->f != f || !m->t[i])
        return NULL;
    return shim_narrow(m->t[i], 0, 0, bn, st);
}

/* Keeps t0_ and t1 (either may be NULL) as the group's shared rows for
 * later chunks on the same examples, in place of what it kept before. */
static void prefix_put(const op_env *x, plan_op op, int layer, int64_t b0, int64_t bn, int64_t f,
                       const shim_tensor *t0_, const shim_tensor *t1, shim_status *st)
{
    op_prefix *m = x->prefix;
    if (!m || st->code)
        return;
    op_prefix_clear(m);
    m->op = op, m->layer = layer, m->b0 = b0, m->bn = bn, m->f = f;
    m->t[0] = t0_ ? shim_narrow(t0_, 0, 0, bn, st) : NULL;
    m->t[1] = t1 ? shim_narrow(t1, 0, 0, bn, st) : NULL;
}

/* MLP of one layer for values vs[0..n), examples [b0, b0+bn): out[i] gets
 * value i's rows (those from from_of(vs[i]), the same for all). */
static void run_mlp(const op_env *x, const int32_t *vs, int n, int64_t b0, int64_t bn,
                    shim_tensor **out, shim_status *st)
{
    int32_t *in = calloc((size_t)n, sizeof *in);
    if (!in) {
        st->code = SHIM_ENOMEM;
        snprintf(st->msg, sizeof st->msg, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++)
        in[i] = x->p->v[vs[i]].in[0];
    const model *m = x->p->m;
    int layer = x->p->v[vs[0]].layer;
    int64_t f = from_of(x, vs[0]), t0 = op_shared_rows(x, OP_MLP, n), t = t0 > f ? t0 : f;
    shim_tensor *X = stack(x, in, n, b0, bn, t, st); /* (n*bn, T-t, C) */
    shim_tensor *Y = gpt2_mlp(m, layer, X, st);      /* (n*bn, T-t, C) */
    shim_free(X);
    shim_tensor *P = NULL; /* the shared rows it needs, once: (bn, t-f, C) */
    if (t > f && !(P = prefix_get(x, OP_MLP, layer, b0, bn, f, 0, st))) {
        X = value_rows(x, in[0], b0, bn, f, t - f, st);
        P = gpt2_mlp(m, layer, X, st);
        shim_free(X);
        prefix_put(x, OP_MLP, layer, b0, bn, f, P, NULL, st);
    }
    unstack(Y, P, n, bn, out, st);
    shim_free(Y);
    shim_free(P);
    free(in);
}

void op_memo_clear(op_memo *m)
{
    for (int i = 0; i < m->n; i++)
        shim_free(m->qkv[i]);
    m->n = 0;
    m->bytes = 0;
}

/* Keeps the projections QKV (ns*bn, T, 3C) of srcs[0..ns) in x's memo,
 * when it has room. */
static void memo_keep(const op_env *x, int layer, const int32_t *srcs, int ns, shim_tensor *QKV,
                      int64_t bn, shim_status *st)
{
    op_memo *m = x->memo;
    size_t bytes = (size_t)ns * 3 * (size_t)bn * (size_t)x->p->T * (size_t)x->p->m->cfg.n_embd *
                   shim_dtype_size(x->p->m->dtype);
    if (!m || bn != x->p->B || (m->n && m->layer != layer) || m->bytes + bytes > m->budget)
        return;
    if (m->n + ns > m->cap) {
        int cap = 2 * (m->n + ns);
        int32_t *src = realloc(m->src, (size_t)cap * sizeof *src);
        if (src)
            m->src = src;
        shim_tensor **q = realloc(m->qkv, (size_t)cap * sizeof *q);
        if (q)
            m->qkv = q;
        if (!src || !q)
            return; /* not kept: the heads project their sources */
        m->cap = cap;
    }
    m->layer = layer;
    m->bytes += bytes;
    for (int j = 0; j < ns && !st->code; j++) {
        m->src[m->n] = srcs[j];
        m->qkv[m->n++] = shim_narrow(QKV, 0, (int64_t)j * bn, bn, st);
    }
}

/* Source v's projection at this layer from the memo (a new view), or NULL. */
static shim_tensor *memo_find(const op_env *x, int layer, int32_t v, int64_t b0, int64_t bn,
                              shim_status *st)
{
    const op_memo *m = x->memo;
    for (int i = 0; m && m->layer == layer && i < m->n; i++)
        if (m->src[i] == v)
            return shim_narrow(m->qkv[i], 0, b0, bn, st);
    return NULL;
}

/* Attention of one layer for values vs[0..n), each with its own per-head
 * q, k, v sources, rows [b0, b0+bn): project every distinct source once
 * (gpt2_attn_qkv), then gather each value's heads and run one attention
 * and c_proj (gpt2_attn_out); out[i] gets value i's rows. */
static void attn_call(const op_env *x, const int32_t *vs, int n, int64_t b0, int64_t bn,
                      shim_tensor **out, shim_tensor **probs, shim_status *st)
{
    const model *m = x->p->m;
    int H = m->cfg.n_head, layer = x->p->v[vs[0]].layer;
    int64_t C = m->cfg.n_embd, D = C / H;
    int32_t *srcs = calloc((size_t)n * 3 * H, sizeof *srcs), ns = 0;
    int32_t *slot = calloc((size_t)n * 3 * H, sizeof *slot);
    shim_tensor **q = calloc((size_t)3 * n, sizeof *q),
                **pieces = calloc((size_t)H, sizeof *pieces),
                **pieces_p = calloc((size_t)n * 3 * H, sizeof *pieces_p);
    shim_tensor *X = NULL, *QKV = NULL, *Q = NULL, *K = NULL, *V = NULL, *Y = NULL, *P = NULL;
    shim_tensor *Yp = NULL; /* the shared rows' output, when an earlier chunk kept it */
    int kept = 0;           /* P (and Yp) from the group's prefix memo */
    /* probs: one value, every row. Projections from t0 per source (the
     * shared rows' once); queries, and so the output, from t per value */
    int64_t T = x->p->T, t0 = probs ? 0 : op_shared_rows(x, OP_ATTN, n),
            f = probs ? 0 : from_of(x, vs[0]), t = t0 > f ? t0 : f;
    if (!srcs || !slot || !q || !pieces || !pieces_p) {
        st->code = SHIM_ENOMEM;
        snprintf(st->msg, sizeof st->msg, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) { /* distinct sources, in first-seen order */
        const plan_value *pv = &x->p->v[vs[i]];
        for (int k = 0; k < 3 * H; k++) {
            int j = 0;
            while (j < ns && srcs[j] != pv->in[k])
                j++;
            if (j == ns)
                srcs[ns++] = pv->in[k];
            slot[i * 3 * H + k] = j;
        }
    }
    X = stack(x, srcs, ns, b0, bn, t0, st); /* (ns*bn, T-t0, C) */
    QKV = gpt2_attn_qkv(m, layer, X, st);   /* (ns*bn, T-t0, 3C) */
    shim_free(X);
    X = NULL;
    if (t0) { /* the shared rows' projection, once, in front of every source's */
        if ((P = prefix_get(x, OP_ATTN, layer, b0, bn, f, 0, st))) {
            kept = 1;
            Yp = prefix_get(x, OP_ATTN, layer, b0, bn, f, 1, st);
        } else {
            X = value_rows(x, srcs[0], b0, bn, 0, t0, st);
            P = gpt2_attn_qkv(m, layer, X, st); /* (bn, t0, 3C) */
            shim_free(X);
            X = NULL;
        }
        for (int j = 0; j < ns && !st->code; j++)
            pieces_p[j] = P;
        shim_tensor *front = shim_cat(pieces_p, ns, 0, st), *parts[2] = {front, QKV};
        shim_tensor *full = shim_cat(parts, 2, 1, st); /* (ns*bn, T, 3C) */
        shim_free(front);
        shim_free(QKV);
        QKV = full;
    }
    if (b0 == 0)
        memo_keep(x, layer, srcs, ns, QKV, bn, st);
    for (int i = 0; i < n && !st->code; i++) {
        for (int c = 0; c < 3; c++) { /* c: q, k, v */
            const int32_t *sl = &slot[i * 3 * H];
            int same = 1;
            for (int h = 1; h < H; h++)
                same &= sl[3 * h + c] == sl[c];
            /* queries at the rows computed per value; keys, values at all */
            int64_t r0 = c == 0 ? t : 0;
            if (same) {
                shim_tensor *r = rows(QKV, (int64_t)sl[c] * bn, bn, r0, T - r0, st);
                q[3 * i + c] = shim_narrow(r, 2, c * C, C, st); /* (bn, T-r0, C) */
                shim_free(r);
                continue;
            }
            for (int h = 0; h < H; h++) {
                shim_tensor *r = rows(QKV, (int64_t)sl[3 * h + c] * bn, bn, r0, T - r0, st);
                pieces[h] = shim_narrow(r, 2, c * C + h * D, D, st); /* (bn, T-r0, D) */
                shim_free(r);
            }
            q[3 * i + c] = shim_cat(pieces, H, 2, st); /* (bn, T-r0, C) */
            for (int h = 0; h < H; h++) {
                shim_free(pieces[h]);
                pieces[h] = NULL;
            }
        }
    }
    if (!st->code) {
        shim_tensor **qs = malloc((size_t)3 * n * sizeof *qs);
        if (!qs) {
            st->code = SHIM_ENOMEM;
            goto done;
        }
        for (int c = 0; c < 3; c++) {
            for (int i = 0; i < n; i++)
                qs[i] = q[3 * i + c];
            shim_tensor *t = n == 1 ? shim_narrow(qs[0], 0, 0, bn, st) : shim_cat(qs, n, 0, st);
            *(c == 0 ? &Q : c == 1 ? &K : &V) = t; /* (n*bn, T, C) */
        }
        free(qs);
    }
    for (int i = 0; q && i < 3 * n; i++) {
        shim_free(q[i]);
        q[i] = NULL;
    }
    Y = gpt2_attn_out(m, layer, Q, K, V, probs, st); /* (n*bn, T-t, C) */
    shim_free(QKV), shim_free(Q), shim_free(K), shim_free(V);
    QKV = Q = K = V = NULL;
    if (t > f && Yp) { /* an earlier chunk of the group computed it */
        shim_free(P);
        P = Yp;
        Yp = NULL;
    } else if (t > f) { /* the shared rows' output, once: their attention sees only them */
        for (int c = 0; c < 3; c++) /* queries from f; keys and values from 0 */
            q[c] = shim_narrow(P, 1, c ? 0 : f, c ? t0 : t0 - f, st);
        for (int c = 0; c < 3; c++) {
            shim_tensor *qc = shim_narrow(q[c], 2, c * C, C, st); /* (bn, ., C) */
            shim_free(q[c]);
            q[c] = qc;
        }
        Yp = gpt2_attn_out(m, layer, q[0], q[1], q[2], NULL, st); /* (bn, t0-f, C) */
        for (int c = 0; c < 3; c++) {
            shim_free(q[c]);
            q[c] = NULL;
        }
        prefix_put(x, OP_ATTN, layer, b0, bn, f, P, Yp, st);
        shim_free(P);
        P = Yp;
        Yp = NULL;
    } else {
        if (t0 && !kept)
            prefix_put(x, OP_ATTN, layer, b0, bn, f, P, NULL, st);
        shim_free(P); /* the shared rows' projection only served the keys and values */
        P = NULL;
    }
    unstack(Y, P, n, bn, out, st);
done:
    for (int i = 0; q && i < 3 * n; i++)
        shim_free(q[i]);
    shim_free(X);
    shim_free(QKV);
    shim_free(Q);
    shim_free(K);
    shim_free(V);
    shim_free(Y);
    shim_free(P);
    shim_free(Yp);
    free(srcs);
    free(slot);
    free(q);
    free(pieces);
    free(pieces_p);
}

/* Source u's q/k/v projection at this layer, rows [b0, b0+bn): the memo's
 * (when the layer's attention call just projected it) or a new one. */
static shim_tensor *project(const op_env *x, int layer, int32_t u, int64_t b0, int64_t bn,
                            shim_status *st)
{
    shim_tensor *qkv = memo_find(x, layer, u, b0, bn, st);
    if (qkv || st->code)
        return qkv;
    shim_tensor *rows = shim_narrow(x->h[u], 0, b0, bn, st);
    qkv = gpt2_attn_qkv(x->p->m, layer, rows, st); /* (bn, T, 3C) */
    shim_free(rows);
    return qkv;
}

/* Head h's attention output z_h (bn, T, D) at this layer from its q, k, v
 * sources src[0..3), rows [b0, b0+bn), projected as the attention
 * projects them. */
static shim_tensor *head_z(const op_env *x, int layer, int h, const int32_t *src, int64_t b0,
                           int64_t bn, shim_status *st)
{
    const model *m = x->p->m;
    int64_t C = m->cfg.n_embd, D = C / m->cfg.n_head;
    shim_tensor *qkv[3] = {NULL, NULL, NULL}, *part[3] = {NULL, NULL, NULL};
    for (int c = 0; c < 3 && !st->code; c++) {
        int k = c; /* the first of the run of equal sources ending at c */
        while (k > 0 && src[k - 1] == src[c])
            k--;
        if (k == c)
            qkv[c] = project(x, layer, src[c], b0, bn, st);
        if (qkv[k])
            part[c] = shim_narrow(qkv[k], 2, c * C + h * D, D, st); /* (bn, T, D) */
    }
    shim_tensor *z = st->code ? NULL
                              : shim_attention(part[0], part[1], part[2], 1,
                                               gpt2_attn_scale(m, layer), NULL, st);
    for (int c = 0; c < 3; c++) {
        shim_free(part[c]);
        shim_free(qkv[c]);
    }
    return z;
}

/* One head's share of the attention output for values vs[0..n) of one
 * layer, rows [b0, b0+bn): z_h W_O[h] (no bias). */
static void run_head(const op_env *x, const int32_t *vs, int n, int64_t b0, int64_t bn,
                     shim_tensor **out, shim_status *st)
{
    const model *m = x->p->m;
    int layer = x->p->v[vs[0]].layer;
    int64_t D = m->cfg.n_embd / m->cfg.n_head;
    const model_block *blk = &m->blocks[layer];
    for (int i = 0; i < n && !st->code; i++) {
        const plan_value *pv = &x->p->v[vs[i]];
        shim_tensor *z = head_z(x, layer, pv->aux, pv->in, b0, bn, st);
        shim_tensor *wh = shim_narrow(blk->proj_w, 0, pv->aux * D, D, st);
        out[i] = shim_linear(z, wh, NULL, st); /* (bn, T, C) */
        shim_free(z);
        shim_free(wh);
    }
}

/* Every head's output z (bn, T, C) for values vs[0..n) of one layer, each
 * all heads reading its one input (plan.h, OP_Z), rows [b0, b0+bn): the
 * layer's attention before c_proj, from the projection that attention
 * call kept where it did. */
static void run_z(const op_env *x, const int32_t *vs, int n, int64_t b0, int64_t bn,
                  shim_tensor **out, shim_status *st)
{
    const model *m = x->p->m;
    int layer = x->p->v[vs[0]].layer;
    int64_t C = m->cfg.n_embd;
    for (int i = 0; i < n && !st->code; i++) {
        shim_tensor *qkv = project(x, layer, x->p->v[vs[i]].in[0], b0, bn, st), *part[3] = {0};
        for (int c = 0; c < 3 && qkv; c++)
            part[c] = shim_narrow(qkv, 2, c * C, C, st); /* (bn, T, C) */
        out[i] = st->code ? NULL
                          : shim_attention(part[0], part[1], part[2], m->cfg.n_head,
                                           gpt2_attn_scale(m, layer), NULL, st);
        for (int c = 0; c < 3; c++)
            shim_free(part[c]);
        shim_free(qkv);
    }
}

/* An attention whose heads read different sources (plan.h, OP_ADELTA):
 * the plain attention of s plus, for each head h that reads others,
 * (z_h(own) - z_h(s)) W_O[h]. */
static shim_tensor *run_adelta(const op_env *x, int32_t v, shim_status *st)
{
    const plan_value *pv = &x->p->v[v];
    const model *m = x->p->m;
    int H = m->cfg.n_head, layer = pv->layer;
    int64_t B = x->p->B, D = m->cfg.n_embd / H;
    int32_t s = pv->in[3 * H + 1], plain[3] = {s, s, s};
    shim_tensor *acc = NULL;
    for (int h = 0; h < H && !st->code; h++) {
        const int32_t *own = &pv->in[3 * h];
        if (own[0] == s && own[1] == s && own[2] == s)
            continue;
        shim_tensor *zn = head_z(x, layer, h, own, 0, B, st),
                    *zo = head_z(x, layer, h, plain, 0, B, st);
        shim_tensor *dz = zn && zo ? shim_axpby(1.0, zn, -1.0, zo, st) : NULL;
        shim_free(zn);
        shim_free(zo);
        shim_tensor *wh = shim_narrow(m->blocks[layer].proj_w, 0, h * D, D, st);
        shim_tensor *d = dz ? shim_linear(dz, wh, NULL, st) : NULL; /* (B, T, C) */
        shim_free(dz);
        shim_free(wh);
        if (acc && d) {
            shim_tensor *sum = shim_add(acc, d, st);
            shim_free(acc);
            shim_free(d);
            acc = sum;
        } else if (d) {
            acc = d;
        }
    }
    shim_tensor *r = acc && !st->code ? shim_add(x->h[pv->in[3 * H]], acc, st) : NULL;
    shim_free(acc);
    return r;
}

/* What run_adelta holds besides its output, as if no projection were in
 * the memo: per head it computes, the running sum (one value) while head_z
 * projects each run of equal sources (three values each), and one head's
 * attention: its scores and probabilities (float32, B x T x T each), the
 * mask, copies of its q and k, its z and the z's of both calls (1/H of a
 * value each); after, the sum, the head's change and the new sum (three
 * values). */
static size_t adelta_temp_bytes(const plan *p, int32_t v, size_t vb)
{
    const plan_value *pv = &p->v[v];
    int H = p->g.H;
    int32_t s = pv->in[3 * H + 1];
    size_t TT = (size_t)p->T * (size_t)p->T, worst = 3 * vb;
    size_t attn = 2 * 4 * (size_t)p->B * TT + TT + 6 * (vb / (size_t)H + 1);
    for (int h = 0; h < H; h++) {
        const int32_t *own = &pv->in[3 * h];
        if (own[0] == s && own[1] == s && own[2] == s)
            continue;
        size_t runs = 1 + (own[1] != own[0]) + (own[2] != own[1]); /* head_z's projections */
        size_t b = vb + 3 * runs * vb + attn;
        worst = b > worst ? b : worst;
    }
    return worst;
}

static void run_attn(const op_env *x, const int32_t *vs, int n, int64_t b0, int64_t bn,
                     shim_tensor **out, shim_status *st)
{
    attn_call(x, vs, n, b0, bn, out, NULL, st);
}

shim_tensor *op_attn_probs(const plan *p, shim_tensor **h, int32_t v, shim_status *st)
{
    op_env env = {p, h, NULL, 0, NULL, NULL};
    shim_tensor *out = NULL, *probs = NULL;
    attn_call(&env, &v, 1, 0, p->B, &out, &probs, st);
    shim_free(out);
    if (st->code) {
        shim_free(probs);
        return NULL;
    }
    return probs;
}

/* ---- ranks ---------------------------------------------------------------------- */

/* Ranks: light ops run right after their inputs; each layer's attention
 * (and MLP, and heads' shares) at one fixed rank, so they batch; ln_f
 * last. A layer spans RANKS_PER_LAYER: the light ops between two batched
 * ones (edits one after another for each intervened head, residual sums,
 * means, mixes) need one or two per intervened head, so models of up to
 * ~200 heads fit; the planner refuses a chain that would reach the next
 * batched op's rank (plan.c, val_op_x). */
#define RANKS_PER_LAYER 512
static int after_inputs(const plan *p, int layer, int max_input_rank)
{
    (void)p, (void)layer;
    return max_input_rank + 1;
}

static int attn_rank(const plan *p, int layer, int max_input_rank)
{
    (void)p, (void)max_input_rank;
    return RANKS_PER_LAYER * layer + 4;
}

/* Right after the layer's attention group, whose projections it reads. */
static int z_rank(const plan *p, int layer, int max_input_rank)
{
    (void)p, (void)max_input_rank;
    return RANKS_PER_LAYER * layer + 5;
}

static int mlp_rank(const plan *p, int layer, int max_input_rank)
{
    (void)p, (void)max_input_rank;
    return RANKS_PER_LAYER * layer + RANKS_PER_LAYER / 2 + 4;
}

static int lnf_rank(const plan *p, int layer, int max_input_rank)
{
    (void)layer, (void)max_input_rank;
    return RANKS_PER_LAYER * p->g.L + 20;
}

/* ---- the table -------------------------------------------------------------------- */

static const op_def OPS[] = {
    [OP_EMB] = {"emb", 0, after_inputs, run_emb, NULL, NULL, 0, NULL},
    [OP_ADD] = {"add", 0, after_inputs, run_add, NULL, NULL, 0, NULL},
    [OP_MIX] = {"mix", 0, after_inputs, run_mix, NULL, NULL, 0, NULL},
    [OP_ATTN] = {"attn", 1, attn_rank, NULL, run_attn, attn_cost, 0, NULL},
    [OP_MLP] = {"mlp", 1, mlp_rank, NULL, run_mlp, mlp_cost, 0, NULL},
    [OP_LNF] = {"ln_f", 0, lnf_rank, run_lnf, NULL, NULL, 0, NULL},
    [OP_HEAD] = {"head", 1, attn_rank, NULL, run_head, attn_cost, 0, NULL},
    /* edit: the rows, their change; mean: the weighted copy */
    [OP_EDIT] = {"edit", 0, after_inputs, run_edit, NULL, NULL, 2, NULL},
    [OP_MEAN] = {"mean", 0, after_inputs, run_mean, NULL, NULL, 1, NULL},
    [OP_ADELTA] = {"attn_delta", 0, after_inputs, run_adelta, NULL, NULL, 0, adelta_temp_bytes},
    [OP_Z] = {"attn_z", 1, z_rank, NULL, run_z, z_cost, 0, NULL},
};

const op_def *op_info(plan_op op)
{
    return &OPS[op];
}
