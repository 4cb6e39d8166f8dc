/* exec.c - see exec.h.
 *
 * Deadlock freedom with the shared cache: values are computed in rank
 * order, and every input's rank is below its consumer's (plan.c). A job
 * waits for another job's value only while computing rank r, for an input
 * of rank < r, when all of its own claims below r are fulfilled. The job it
 * waits for, by the same rule, never waits on anything of rank >= that
 * input's, so it can always finish it. Ranks depend only on a value's
 * content, so every job agrees on them. */
#include "exec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpt2.h"

enum { S_UNKNOWN, S_READY, S_MINE, S_THEIRS };

typedef struct {
    const plan *p;
    cache *c;
    const exec_opts *o;
    exec_stats *s;
    npp_err *e;
    unsigned char *state;
    shim_tensor **h; /* per value, owned */
    int32_t *users;  /* consumers still to run, per value */
    long done, total;
} ex;

static int cancelled(const ex *x)
{
    /* set by another thread (the service's scheduler) */
    return x->o && x->o->cancel && __atomic_load_n(x->o->cancel, __ATOMIC_RELAXED);
}

static void trace(ex *x, int32_t v, const char *event)
{
    if (!x->o || !x->o->trace)
        return;
    const plan_value *pv = &x->p->v[v];
    char hex[17];
    for (int i = 0; i < 8; i++)
        snprintf(hex + 2 * i, 3, "%02x", pv->key[i]);
    json_array_append_new(x->o->trace,
                          json_pack("{s:s,s:s,s:i,s:s}", "key", hex, "op", plan_op_name(pv->op),
                                    "layer", pv->op == OP_EMB ? -1 : pv->layer, "event", event));
}

static int fail_shim(ex *x, const shim_status *st)
{
    return npp_fail(x->e, st->code == SHIM_ENOMEM ? NPP_ENOMEM : NPP_ETORCH, "", "%s", st->msg);
}

/* ---- resolution: what the cache has, what this job must compute ----------- */

static int resolve(ex *x, const int32_t *roots, int n)
{
    size_t sp = 0, cap = (size_t)n + 64;
    int32_t *stack = malloc(cap * sizeof *stack);
    if (!stack)
        return npp_fail(x->e, NPP_ENOMEM, "", "out of memory");
    for (int i = 0; i < n; i++)
        stack[sp++] = roots[i];
    while (sp) {
        int32_t v = stack[--sp];
        const plan_value *pv = &x->p->v[v];
        if (x->state[v] != S_UNKNOWN)
            continue;
        x->s->needed++;
        switch (cache_get_or_claim(x->c, pv->key, &x->h[v])) {
        case CACHE_HIT:
            x->state[v] = S_READY;
            x->s->cached++;
            trace(x, v, "hit");
            break;
        case CACHE_INFLIGHT: x->state[v] = S_THEIRS; break;
        case CACHE_CLAIMED:
            x->state[v] = S_MINE;
            x->total++;
            if (sp + (size_t)pv->nin > cap) {
                cap = 2 * (sp + (size_t)pv->nin);
                int32_t *ns = realloc(stack, cap * sizeof *ns);
                if (!ns) {
                    free(stack);
                    return npp_fail(x->e, NPP_ENOMEM, "", "out of memory");
                }
                stack = ns;
            }
            for (int k = 0; k < pv->nin; k++)
                if (x->state[pv->in[k]] == S_UNKNOWN)
                    stack[sp++] = pv->in[k];
            break;
        }
    }
    free(stack);
    return 0;
}

/* ---- the operations, batched ------------------------------------------------ */

static shim_tensor *run_mix(ex *x, const plan_value *pv, shim_status *st)
{
    /* Row t comes from input t; runs of one source become one slice. */
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

/* Stacks the tensors of values vs[0..n) on the batch dimension. */
static shim_tensor *stack(ex *x, const int32_t *vs, int n, shim_status *st)
{
    shim_tensor **ts = malloc((size_t)n * sizeof *ts);
    if (!ts) {
        st->code = SHIM_ENOMEM;
        snprintf(st->msg, sizeof st->msg, "out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++)
        ts[i] = x->h[vs[i]];
    shim_tensor *r =
        n == 1 ? shim_narrow(ts[0], 0, 0, shim_dim(ts[0], 0), st) : shim_cat(ts, n, 0, st);
    free(ts);
    return r;
}

/* Splits y (n*B, ...) into the values' handles. Each gets its own storage
 * (a slice would pin the whole batch in the cache, whose byte count would
 * then understate what it holds). */
static void unstack(ex *x, const int32_t *vs, int n, shim_tensor *y, shim_status *st)
{
    int64_t B = x->p->B;
    if (n == 1) {
        x->h[vs[0]] = shim_narrow(y, 0, 0, B, st); /* the whole of y: nothing to pin */
        return;
    }
    for (int i = 0; i < n && !st->code; i++) {
        shim_tensor *slice = shim_narrow(y, 0, (int64_t)i * B, B, st);
        x->h[vs[i]] = shim_clone(slice, st);
        shim_free(slice);
    }
}

static void run_mlp(ex *x, const int32_t *vs, int n, shim_status *st)
{
    int32_t *in = malloc((size_t)n * sizeof *in);
    if (!in) {
        st->code = SHIM_ENOMEM;
        return;
    }
    for (int i = 0; i < n; i++)
        in[i] = x->p->v[vs[i]].in[0];
    shim_tensor *X = stack(x, in, n, st);                            /* (n*B, T, C) */
    shim_tensor *Y = gpt2_mlp(x->p->m, x->p->v[vs[0]].layer, X, st); /* (n*B, T, C) */
    unstack(x, vs, n, Y, st);
    shim_free(X);
    shim_free(Y);
    free(in);
}

/* Attention of one layer for n values, each with its own per-head q, k,
 * v sources: project every distinct source once (ln_1 + c_attn), then
 * gather each value's heads and run one attention and one c_proj. */
static void run_attn(ex *x, const int32_t *vs, int n, shim_status *st)
{
    const model *m = x->p->m;
    const model_block *b = &m->blocks[x->p->v[vs[0]].layer];
    int H = m->cfg.n_head, layer = x->p->v[vs[0]].layer;
    int64_t C = m->cfg.n_embd, D = C / H, B = x->p->B;
    int32_t *srcs = calloc((size_t)n * 3 * H, sizeof *srcs), ns = 0;
    int32_t *slot = calloc((size_t)n * 3 * H, sizeof *slot);
    shim_tensor **q = calloc((size_t)3 * n, sizeof *q),
                **pieces = calloc((size_t)H, sizeof *pieces);
    shim_tensor *X = NULL, *Hn = NULL, *QKV = NULL, *Q = NULL, *K = NULL, *V = NULL, *Z = NULL,
                *Y = NULL;
    if (!srcs || !slot || !q || !pieces) {
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
    X = stack(x, srcs, ns, st); /* (ns*B, T, C) */
    Hn = shim_layernorm(X, b->ln_1_w, b->ln_1_b, m->cfg.ln_eps, st);
    QKV = shim_linear(Hn, b->attn_w, b->attn_b, st); /* (ns*B, T, 3C) */
    for (int i = 0; i < n && !st->code; i++) {
        for (int c = 0; c < 3; c++) { /* c: q, k, v */
            const int32_t *sl = &slot[i * 3 * H];
            int same = 1;
            for (int h = 1; h < H; h++)
                same &= sl[3 * h + c] == sl[c];
            if (same) {
                shim_tensor *rows = shim_narrow(QKV, 0, (int64_t)sl[c] * B, B, st);
                q[3 * i + c] = shim_narrow(rows, 2, c * C, C, st); /* (B, T, C) */
                shim_free(rows);
                continue;
            }
            for (int h = 0; h < H; h++) {
                shim_tensor *rows = shim_narrow(QKV, 0, (int64_t)sl[3 * h + c] * B, B, st);
                pieces[h] = shim_narrow(rows, 2, c * C + h * D, D, st); /* (B, T, D) */
                shim_free(rows);
            }
            q[3 * i + c] = shim_cat(pieces, H, 2, st); /* (B, T, C) */
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
            shim_tensor *t = n == 1 ? shim_narrow(qs[0], 0, 0, B, st) : shim_cat(qs, n, 0, st);
            *(c == 0 ? &Q : c == 1 ? &K : &V) = t; /* (n*B, T, C) */
        }
        free(qs);
    }
    Z = shim_attention(Q, K, V, H, gpt2_attn_scale(m, layer), NULL, st); /* (n*B, T, C) */
    Y = shim_linear(Z, b->proj_w, b->proj_b, st);
    unstack(x, vs, n, Y, st);
done:
    for (int i = 0; q && i < 3 * n; i++)
        shim_free(q[i]);
    shim_free(X);
    shim_free(Hn);
    shim_free(QKV);
    shim_free(Q);
    shim_free(K);
    shim_free(V);
    shim_free(Z);
    shim_free(Y);
    free(srcs);
    free(slot);
    free(q);
    free(pieces);
}

static void run_one(ex *x, int32_t v, shim_status *st)
{
    const plan_value *pv = &x->p->v[v];
    const plan *p = x->p;
    switch (pv->op) {
    case OP_EMB:
        x->h[v] = gpt2_embed(p->m, p->ids + (size_t)pv->layer * p->B * p->T, p->B, p->T, st);
        break;
    case OP_ADD: x->h[v] = shim_add(x->h[pv->in[0]], x->h[pv->in[1]], st); break;
    case OP_MIX: x->h[v] = run_mix(x, pv, st); break;
    case OP_LNF: x->h[v] = gpt2_ln_f(p->m, x->h[pv->in[0]], st); break;
    case OP_MLP: run_mlp(x, &v, 1, st); break;
    case OP_ATTN: run_attn(x, &v, 1, st); break;
    }
}

/* ---- scheduling ------------------------------------------------------------ */

static int ensure(ex *x, int32_t v);

/* Computes v now (alone): a value another job abandoned to us. */
static int compute_now(ex *x, int32_t v)
{
    const plan_value *pv = &x->p->v[v];
    for (int k = 0; k < pv->nin; k++) {
        int rc = ensure(x, pv->in[k]);
        if (rc) {
            cache_abandon(x->c, pv->key);
            return rc;
        }
    }
    shim_status st = {0};
    run_one(x, v, &st);
    if (st.code) {
        cache_abandon(x->c, pv->key);
        return fail_shim(x, &st);
    }
    cache_fulfil(x->c, pv->key, x->h[v]);
    x->state[v] = S_READY;
    x->s->computed++;
    trace(x, v, "computed");
    return 0;
}

/* Makes v ready: waits for another job, or computes it if abandoned. */
static int ensure(ex *x, int32_t v)
{
    for (;;) {
        switch (x->state[v]) {
        case S_READY:
            if (x->h[v])
                return 0;
            /* release_inputs() freed it: only this job's own consumers are
             * counted, but a value another job abandoned to us (compute_now)
             * needs it again; take it from the cache or compute it anew */
            x->state[v] = S_UNKNOWN;
            continue;
        case S_UNKNOWN:
            switch (cache_get_or_claim(x->c, x->p->v[v].key, &x->h[v])) {
            case CACHE_HIT:
                x->state[v] = S_READY;
                x->s->cached++;
                trace(x, v, "hit");
                return 0;
            case CACHE_INFLIGHT: x->state[v] = S_THEIRS; continue;
            case CACHE_CLAIMED: return compute_now(x, v);
            }
            break;
        case S_THEIRS: {
            int r = cache_wait(x->c, x->p->v[v].key, &x->h[v], x->o ? x->o->cancel : NULL);
            if (r < 0)
                return npp_fail(x->e, NPP_ECANCELED, "", "the job was cancelled");
            if (r == CACHE_HIT) {
                x->state[v] = S_READY;
                x->s->waited++;
                trace(x, v, "waited");
                return 0;
            }
            return compute_now(x, v);
        }
        default: /* S_MINE of lower rank: computed before us by construction */
            return npp_fail(x->e, NPP_EINVAL, "", "internal: value scheduled out of order");
        }
    }
}

static int by_rank(const void *a, const void *b, void *plan_)
{
    const plan *p = plan_;
    const plan_value *x = &p->v[*(const int32_t *)a], *y = &p->v[*(const int32_t *)b];
    if (x->rank != y->rank)
        return x->rank < y->rank ? -1 : 1;
    if (x->op != y->op)
        return x->op < y->op ? -1 : 1;
    return *(const int32_t *)a < *(const int32_t *)b ? -1 : 1;
}

static void release_inputs(ex *x, const int32_t *vs, int n)
{
    for (int i = 0; i < n; i++) {
        const plan_value *pv = &x->p->v[vs[i]];
        for (int k = 0; k < pv->nin; k++) {
            int32_t u = pv->in[k];
            if (k && pv->in[k - 1] == u)
                continue;
            if (x->users[u] > 0 && --x->users[u] == 0) {
                shim_free(x->h[u]);
                x->h[u] = NULL;
            }
        }
    }
}

static int run_group(ex *x, const int32_t *vs, int n)
{
    for (int i = 0; i < n; i++)
        for (int k = 0; k < x->p->v[vs[i]].nin; k++) {
            int rc = ensure(x, x->p->v[vs[i]].in[k]);
            if (rc)
                return rc;
        }
    shim_status st = {0};
    plan_op op = x->p->v[vs[0]].op;
    if (op == OP_ATTN) {
        run_attn(x, vs, n, &st);
        x->s->batches++;
    } else if (op == OP_MLP) {
        run_mlp(x, vs, n, &st);
        x->s->batches++;
    } else {
        for (int i = 0; i < n; i++)
            run_one(x, vs[i], &st);
    }
    if (st.code)
        return fail_shim(x, &st);
    for (int i = 0; i < n; i++) {
        cache_fulfil(x->c, x->p->v[vs[i]].key, x->h[vs[i]]);
        x->state[vs[i]] = S_READY;
        x->s->computed++;
        trace(x, vs[i], "computed");
    }
    release_inputs(x, vs, n);
    x->done += n;
    if (x->o && x->o->progress)
        x->o->progress(x->o->ud, x->done, x->total);
    return 0;
}

/* Users of each value among the values this job computes (inputs counted
 * once per consumer), plus one per root so roots are never released. */
static void count_users(ex *x, const int32_t *mine, long nm, const int32_t *roots, int n)
{
    for (long i = 0; i < nm; i++) {
        const plan_value *pv = &x->p->v[mine[i]];
        for (int k = 0; k < pv->nin; k++)
            if (!k || pv->in[k - 1] != pv->in[k])
                x->users[pv->in[k]]++;
    }
    for (int i = 0; i < n; i++)
        x->users[roots[i]] += 1 << 20;
}

int exec_run(const plan *p, cache *c, const int32_t *roots, int n, shim_tensor **out,
             const exec_opts *o, exec_stats *s, npp_err *e)
{
    ex x = {p, c, o, s, e, NULL, NULL, NULL, 0, 0};
    int32_t *mine = NULL;
    long nm = 0, i = 0;
    int rc = 0;
    memset(s, 0, sizeof *s);
    s->planned = p->nv;
    x.state = calloc((size_t)p->nv + 1, 1);
    x.h = calloc((size_t)p->nv + 1, sizeof *x.h);
    x.users = calloc((size_t)p->nv + 1, sizeof *x.users);
    mine = malloc(((size_t)p->nv + 1) * sizeof *mine);
    if (!x.state || !x.h || !x.users || !mine) {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory");
        goto done;
    }
    if ((rc = resolve(&x, roots, n)))
        goto done;
    for (int32_t v = 0; v < p->nv; v++)
        if (x.state[v] == S_MINE)
            mine[nm++] = v;
    qsort_r(mine, (size_t)nm, sizeof *mine, by_rank, (void *)p);
    count_users(&x, mine, nm, roots, n);
    if (o && o->progress)
        o->progress(o->ud, 0, x.total);
    /* Groups: runs of one rank and op (every attention or MLP of a layer). */
    while (i < nm) {
        long j = i;
        while (j < nm && p->v[mine[j]].rank == p->v[mine[i]].rank &&
               p->v[mine[j]].op == p->v[mine[i]].op)
            j++;
        if (cancelled(&x)) {
            rc = npp_fail(e, NPP_ECANCELED, "", "the job was cancelled");
            goto done;
        }
        if ((rc = run_group(&x, mine + i, (int)(j - i))))
            goto done;
        i = j;
    }
    for (int r = 0; r < n; r++) {
        if ((rc = ensure(&x, roots[r])))
            goto done;
    }
    for (int r = 0; r < n; r++) {
        shim_status st = {0};
        out[r] = shim_narrow(x.h[roots[r]], 0, 0, p->B, &st); /* a new handle */
        if (st.code) {
            for (int q = 0; q < r; q++)
                shim_free(out[q]);
            rc = fail_shim(&x, &st);
            goto done;
        }
    }
done:
    /* Claims never computed are given back so that waiters can proceed. */
    for (long k = 0; x.state && k < nm; k++)
        if (x.state[mine[k]] == S_MINE)
            cache_abandon(c, p->v[mine[k]].key);
    for (int32_t v = 0; x.h && v < p->nv; v++)
        shim_free(x.h[v]);
    free(x.state);
    free(x.h);
    free(x.users);
    free(mine);
    return rc;
}
