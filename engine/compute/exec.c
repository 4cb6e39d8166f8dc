/* exec.c - see exec.h.
 *
 * Deadlock freedom with the shared cache: values are computed in rank
 * order, and every input's rank is below its consumer's (plan.c). A job
 * waits for another job's value only while computing rank r, for an input
 * of rank < r, when all of its own claims below r are fulfilled. The job it
 * waits for, by the same rule, never waits on anything of rank >= that
 * input's, so it can always finish it. Ranks depend only on a value's
 * content, so every job agrees on them. */
#include "compute/exec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sha256.h"
#include "compute/ops.h"

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
    op_memo memo;  /* the last attention call's projections (ops.h) */
    op_prefix pre; /* the running group's shared rows (ops.h) */
    int64_t t0;    /* the shared prefix (shared_rows) */
    int64_t *from; /* per value: the first row computed (plan_tails; 0: all) */
    uint8_t *tkey; /* per value computed at rows [from, T): its cache key, 32 bytes */
} ex;

/* The key value v is cached under: a value computed at some rows only is
 * not the whole value, so it has its own (plan_tails). */
static const uint8_t *key_of(const ex *x, int32_t v)
{
    return x->from[v] ? x->tkey + (size_t)v * 32 : x->p->v[v].key;
}

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
        snprintf(hex + 2 * i, 3, "%02x", key_of(x, v)[i]);
    json_array_append_new(x->o->trace,
                          json_pack("{s:s,s:s,s:i,s:s}", "key", hex, "op", plan_op_name(pv->op),
                                    "layer", pv->op == OP_EMB ? -1 : pv->layer, "event", event));
}

static int fail_shim(ex *x, const shim_status *st)
{
    return npp_fail_shim(x->e, st);
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
        x->s->tail += x->from[v] > 0;
        switch (cache_get_or_claim(x->c, key_of(x, v), &x->h[v])) {
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

/* ---- chunks: every batched call bounded in bytes ---------------------------- */

/* A set of value indices (the distinct sources of a chunk). */
typedef struct {
    int32_t *slot;
    size_t cap, n;
} vset;

static int vset_add(vset *s, int32_t v)
{
    size_t m = s->cap - 1;
    for (size_t i = ((uint32_t)v * 2654435761u) & m;; i = (i + 1) & m) {
        if (s->slot[i] == v)
            return 0;
        if (s->slot[i] < 0) {
            s->slot[i] = v;
            s->n++;
            return 1;
        }
    }
}

static void vset_clear(vset *s)
{
    memset(s->slot, 0xff, s->cap * sizeof *s->slot);
    s->n = 0;
}

/* Splits the group vs[0..n) (one op, one layer) into chunks: runs of
 * values at the full batch while their cost fits budget; a value over the
 * budget alone is split along the batch (down to one example). *out is
 * new; *nout chunks. budget 0: no limit. */
int exec_chunks(const plan *p, const int32_t *vs, int n, size_t budget, exec_chunk **out, int *nout)
{
    const op_def *op = op_info(p->v[vs[0]].op);
    /* attention and heads' shares read several sources per value */
    int attn = p->v[vs[0]].op == OP_ATTN || p->v[vs[0]].op == OP_HEAD;
    int nin = attn ? p->v[vs[0]].nin : 1, cap = 16, nc = 0;
    exec_chunk *c = malloc((size_t)cap * sizeof *c);
    vset set = {NULL, 1, 0};
    while (set.cap < 4 * (size_t)nin * (size_t)n + 4)
        set.cap *= 2;
    set.slot = attn ? malloc(set.cap * sizeof *set.slot) : NULL;
    if (!c || (attn && !set.slot)) {
        free(c);
        free(set.slot);
        return -1;
    }
    for (int i = 0; i < n;) {
        int j = i;
        if (attn)
            vset_clear(&set);
        /* grow the run while it fits (the first value always joins) */
        while (j < n) {
            size_t before = set.n;
            for (int k = 0; attn && k < nin; k++)
                vset_add(&set, p->v[vs[j]].in[k]);
            size_t cost = op->cost(p, (int)set.n, j - i + 1, p->B);
            if (j > i && budget && cost > budget) {
                set.n = before; /* the set is rebuilt for the next run anyway */
                break;
            }
            j++;
        }
        size_t one = op->cost(p, (int)set.n, 1, 1);
        int64_t bb = p->B; /* examples per chunk */
        if (j == i + 1 && budget && one * (size_t)p->B > budget)
            bb = (int64_t)(budget / one) > 0 ? (int64_t)(budget / one) : 1;
        for (int64_t b0 = 0; b0 < p->B; b0 += bb) {
            if (nc == cap) {
                exec_chunk *g = realloc(c, (size_t)(cap *= 2) * sizeof *g);
                if (!g) {
                    free(c);
                    free(set.slot);
                    return -1;
                }
                c = g;
            }
            int64_t b1 = b0 + bb < p->B ? b0 + bb : p->B;
            size_t cost = op->cost(p, (int)set.n, j - i, b1 - b0);
            c[nc++] = (exec_chunk){i, j, b0, b1, cost};
        }
        i = j;
    }
    free(set.slot);
    *out = c;
    *nout = nc;
    return 0;
}

/* ---- computing, in chunks ------------------------------------------------- */

static int run_chunked(ex *x, const int32_t *vs, int n, shim_status *st);

/* Computes values vs[0..n) (one op; one layer for the heavy ones) whose
 * inputs are ready: heavy ops batched in chunks, light ones one by one. */
static int compute(ex *x, const int32_t *vs, int n, shim_status *st)
{
    const op_def *op = op_info(x->p->v[vs[0]].op);
    int nt = 0;
    for (int i = 0; i < n; i++)
        nt += x->from[vs[i]] > 0;
    if (op->batched && nt > 0 && nt < n) { /* one call's values have the same rows */
        int32_t *part = malloc((size_t)n * sizeof *part);
        if (!part)
            return npp_fail(x->e, NPP_ENOMEM, "", "out of memory");
        for (int i = 0, f = 0, t = n - nt; i < n; i++)
            part[x->from[vs[i]] ? t++ : f++] = vs[i];
        int rc = run_chunked(x, part, n - nt, st);
        if (!rc && !st->code)
            rc = run_chunked(x, part + n - nt, nt, st);
        free(part);
        return rc;
    }
    if (op->batched)
        return run_chunked(x, vs, n, st);
    op_env env = {x->p, x->h, &x->memo, x->t0, x->from, NULL};
    for (int i = 0; i < n; i++)
        x->h[vs[i]] = op->run(&env, vs[i], st);
    return 0;
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
            cache_abandon(x->c, key_of(x, v));
            return rc;
        }
    }
    shim_status st = {0};
    int rc = compute(x, &v, 1, &st);
    if (rc || st.code) {
        cache_abandon(x->c, key_of(x, v));
        return rc ? rc : fail_shim(x, &st);
    }
    cache_fulfil(x->c, key_of(x, v), x->h[v]);
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
            switch (cache_get_or_claim(x->c, key_of(x, v), &x->h[v])) {
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
            int r = cache_wait(x->c, key_of(x, v), &x->h[v], x->o ? x->o->cancel : NULL);
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

/* The memo's room: one chunk's budget (32 MiB with none). */
static size_t exec_memo_budget(size_t chunk_bytes)
{
    return chunk_bytes ? chunk_bytes : (size_t)32 << 20;
}

/* The memo lives from an attention group until the next attention or
 * MLP group: the heads' shares, attention deltas and heads' outputs of
 * that layer run in between. */
static int memo_ends(plan_op op)
{
    return op == OP_ATTN || op == OP_MLP;
}

/* A bound on the memo an attention group vs[0..n) keeps: 3 values per
 * distinct source it projects, at most budget. */
static int memo_bound(const plan *p, const int32_t *vs, long n, size_t vb, size_t budget,
                      size_t *bound, npp_err *e)
{
    unsigned char *seen = calloc((size_t)p->nv + 1, 1);
    size_t ns = 0;
    if (!seen)
        return npp_fail(e, NPP_ENOMEM, "", "out of memory");
    for (long i = 0; i < n; i++)
        for (int k = 0; k < 3 * p->g.H; k++) {
            int32_t u = p->v[vs[i]].in[k];
            ns += !seen[u];
            seen[u] = 1;
        }
    free(seen);
    *bound = ns * 3 * vb < budget ? ns * 3 * vb : budget;
    return 0;
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

/* Runs the chunks of an attention or MLP group; checks the cancel flag
 * before each, so a cancel takes effect within one chunk's time. */
static int run_chunked(ex *x, const int32_t *vs, int n, shim_status *st)
{
    exec_chunk *ch;
    int nch;
    const op_def *op = op_info(x->p->v[vs[0]].op);
    op_env env = {x->p, x->h, &x->memo, x->t0, x->from, &x->pre};
    if (exec_chunks(x->p, vs, n, x->o ? x->o->chunk_bytes : 0, &ch, &nch))
        return npp_fail(x->e, NPP_ENOMEM, "", "out of memory");
    shim_tensor **out = calloc((size_t)n, sizeof *out), **parts = NULL;
    int nparts = 0, rc = 0;
    if (!out) {
        free(ch);
        return npp_fail(x->e, NPP_ENOMEM, "", "out of memory");
    }
    for (int k = 0; k < nch && !st->code; k++) {
        const exec_chunk *c = &ch[k];
        int64_t bn = c->b1 - c->b0;
        if (k > 0 && cancelled(x)) {
            rc = npp_fail(x->e, NPP_ECANCELED, "", "the job was cancelled");
            break;
        }
        op->run_batch(&env, vs + c->i0, c->i1 - c->i0, c->b0, bn, out + c->i0, st);
        x->s->batches++;
        if (op_shared_rows(&env, x->p->v[vs[0]].op, c->i1 - c->i0))
            x->s->shared = (long)x->t0;
        if (bn == x->p->B || st->code)
            continue;
        /* one value split along the batch: gather its parts */
        if (!parts && !(parts = calloc((size_t)(x->p->B / bn + 2), sizeof *parts))) {
            rc = npp_fail(x->e, NPP_ENOMEM, "", "out of memory");
            break;
        }
        parts[nparts++] = out[c->i0];
        out[c->i0] = NULL;
        if (c->b1 == x->p->B) {
            out[c->i0] = shim_cat(parts, nparts, 0, st); /* (B, T, C) */
            while (nparts)
                shim_free(parts[--nparts]);
        }
    }
    while (nparts)
        shim_free(parts[--nparts]);
    free(parts);
    op_prefix_clear(&x->pre); /* the group's shared rows end with it */
    for (int i = 0; i < n; i++) {
        if (!rc && !st->code)
            x->h[vs[i]] = out[i];
        else
            shim_free(out[i]);
    }
    free(out);
    free(ch);
    return rc;
}

static int run_group(ex *x, const int32_t *vs, int n)
{
    for (int i = 0; i < n; i++)
        for (int k = 0; k < x->p->v[vs[i]].nin; k++) {
            int rc = ensure(x, x->p->v[vs[i]].in[k]);
            if (rc)
                return rc;
        }
    /* a batched group in one call; light values one at a time, each
     * releasing its inputs before the next is made, so that the next
     * output reuses their blocks instead of new memory */
    int step = op_info(x->p->v[vs[0]].op)->batched ? n : 1;
    for (int i0 = 0; i0 < n; i0 += step) {
        shim_status st = {0};
        int rc = compute(x, vs + i0, step, &st);
        if (rc)
            return rc;
        if (st.code)
            return fail_shim(x, &st);
        for (int i = i0; i < i0 + step; i++) {
            cache_fulfil(x->c, key_of(x, vs[i]), x->h[vs[i]]);
            x->state[vs[i]] = S_READY;
            x->s->computed++;
            trace(x, vs[i], "computed");
        }
        release_inputs(x, vs + i0, step);
    }
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

/* The shared prefix of a plan (ops.h, op_env): the positions before the
 * first where two inputs' token ids differ, in any example. Every value is
 * the model's function at its node of the inputs each of its paths reads
 * (embeddings, residual sums, per-position mixes, attention, MLP, heads'
 * shares, ln_f), and every such function is causal: row t depends on rows
 * <= t of the embeddings only. So at those positions all inputs' values at
 * one node are equal, and a layer's attention (or MLP) values are all the
 * same there. Interventions (edits) and batch means break that (an edit
 * at a shared position, a mean over examples), so a plan with either has
 * none. At least the last position is always computed per value. */
static int64_t shared_rows(const plan *p)
{
    for (int32_t v = 0; v < p->nv; v++)
        if (p->v[v].op == OP_EDIT || p->v[v].op == OP_MEAN)
            return 0;
    int64_t t0 = p->T - 1;
    for (int k = 1; k < p->n_inputs; k++)
        for (int64_t b = 0; b < p->B; b++) {
            const int64_t *a = p->ids + (size_t)b * p->T,
                          *z = p->ids + ((size_t)k * p->B + (size_t)b) * p->T;
            for (int64_t t = 0; t < t0; t++)
                if (a[t] != z[t]) {
                    t0 = t;
                    break;
                }
        }
    return t0;
}

/* Which rows each value is computed at (exec_opts.tail): from[v] gets the
 * first (0: all). Walking from the consumers down (an input's index is
 * below its consumer's, as the planner makes them), a value is needed at
 * rows [tail_from, T) only when every consumer needs only those rows of
 * it: a tail root; a residual sum, MLP or ln_f computed at those rows (row
 * by row, each reads the same rows of its inputs); an attention reads its
 * sources whole (the keys and values at every row) but computes its own
 * output at the rows its consumers need. Every other op is computed whole
 * and reads its inputs whole. Returns how many values are computed at
 * those rows alone, or -1 when out of memory. */
static long rows_needed(const plan *p, const int32_t *roots, int n, int64_t tail_from,
                        const unsigned char *tail, int64_t *from)
{
    if (!tail || tail_from <= 0 || tail_from >= p->T)
        return 0;
    unsigned char *need = calloc((size_t)p->nv + 1, 1); /* 0 none, 1 the tail, 2 whole */
    long tails = 0;
    if (!need)
        return -1;
    for (int i = 0; i < n; i++) {
        unsigned char d = tail[i] ? 1 : 2;
        need[roots[i]] = need[roots[i]] > d ? need[roots[i]] : d;
    }
    for (int32_t v = p->nv - 1; v >= 0; v--) {
        const plan_value *pv = &p->v[v];
        if (!need[v])
            continue;
        int rows = pv->op == OP_ADD || pv->op == OP_MLP || pv->op == OP_LNF;
        if (need[v] == 1 && !rows && pv->op != OP_ATTN)
            need[v] = 2;
        for (int k = 0; k < pv->nin; k++) {
            int32_t u = pv->in[k];
            unsigned char d = need[v] == 1 && rows ? 1 : 2;
            if (u >= v) { /* not the planner's order: compute everything whole */
                free(need);
                return 0;
            }
            need[u] = need[u] > d ? need[u] : d;
        }
    }
    for (int32_t v = 0; v < p->nv; v++)
        if (need[v] == 1)
            from[v] = tail_from, tails++;
    free(need);
    return tails;
}

/* The rows each value is computed at (rows_needed) and, for those computed
 * at some rows alone, their cache keys: SHA-256(key, "tail", tail_from), so
 * the cache never hands such a value to a job that reads other rows. */
static int plan_tails(ex *x, const int32_t *roots, int n)
{
    const plan *p = x->p;
    const exec_opts *o = x->o;
    long tails = o ? rows_needed(p, roots, n, o->tail_from, o->tail, x->from) : 0;
    if (tails > 0 && !(x->tkey = malloc((size_t)p->nv * 32)))
        tails = -1;
    if (tails < 0)
        return npp_fail(x->e, NPP_ENOMEM, "", "out of memory");
    for (int32_t v = 0; tails && v < p->nv; v++) {
        if (!x->from[v])
            continue;
        sha256_ctx c;
        unsigned char f[8];
        for (int i = 0; i < 8; i++)
            f[i] = (unsigned char)((uint64_t)o->tail_from >> (8 * i));
        sha256_init(&c);
        sha256_update(&c, p->v[v].key, 32);
        sha256_update(&c, "tail", 4);
        sha256_update(&c, f, sizeof f);
        sha256_final(&c, x->tkey + (size_t)v * 32);
    }
    return 0;
}

int exec_run(const plan *p, cache *c, const int32_t *roots, int n, shim_tensor **out,
             const exec_opts *o, exec_stats *s, npp_err *e)
{
    ex x = {p, c, o, s, e, NULL, NULL, NULL, 0, 0, {0}, {0}, shared_rows(p), NULL, NULL};
    x.memo.budget = exec_memo_budget(o ? o->chunk_bytes : 0);
    int32_t *mine = NULL;
    long nm = 0, i = 0;
    int rc = 0;
    memset(s, 0, sizeof *s);
    s->planned = p->nv;
    x.state = calloc((size_t)p->nv + 1, 1);
    x.h = calloc((size_t)p->nv + 1, sizeof *x.h);
    x.users = calloc((size_t)p->nv + 1, sizeof *x.users);
    x.from = calloc((size_t)p->nv + 1, sizeof *x.from);
    mine = malloc(((size_t)p->nv + 1) * sizeof *mine);
    if (!x.state || !x.h || !x.users || !x.from || !mine) {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory");
        goto done;
    }
    if ((rc = plan_tails(&x, roots, n)) || (rc = resolve(&x, roots, n)))
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
        if (memo_ends(p->v[mine[i]].op))
            op_memo_clear(&x.memo);
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
    op_memo_clear(&x.memo);
    free(x.memo.src);
    free(x.memo.qkv);
    /* Claims never computed are given back so that waiters can proceed. */
    for (long k = 0; x.state && k < nm; k++)
        if (x.state[mine[k]] == S_MINE)
            cache_abandon(c, key_of(&x, mine[k]));
    for (int32_t v = 0; x.h && v < p->nv; v++)
        shim_free(x.h[v]);
    free(x.state);
    free(x.h);
    free(x.users);
    free(x.from);
    free(x.tkey);
    free(mine);
    return rc;
}

/* ---- the estimate -------------------------------------------------------------- */

/* The multiply-adds of value v at its rows [from[v], T): an attention's or
 * head's scores, softmax and weighted sum, its share of c_proj, and ln_1
 * and c_attn once for each source not yet projected in its layer (proj[u]
 * == epoch: the memo has it; a bound, as the memo may have to project a
 * source again); an MLP's ln_2, c_fc, GELU and c_proj; the light ops'
 * elementwise steps. The shared prefix (op_env.t0) is counted per value. */
static double value_work(const plan *p, int32_t v, const int64_t *from, int32_t *proj,
                         int32_t epoch)
{
    const model_config *c = &p->m->cfg;
    const plan_value *pv = &p->v[v];
    double B = p->B, T = p->T, r = (double)(p->T - from[v]), C = c->n_embd, H = c->n_head;
    double D = C / H, I = c->n_inner, head = B * r * T * (2 * D + EXEC_ELT_WORK), w;
    int nsrc;
    switch (pv->op) {
    case OP_MLP: return B * r * (2 * C * I + EXEC_ELT_WORK * (2 * C + I));
    case OP_ATTN: nsrc = 3 * (int)H, w = H * head + B * r * C * C; break;
    case OP_HEAD: nsrc = 3, w = head + B * r * D * C; break;
    case OP_ADELTA: /* aux heads, each from its sources and from s */
        nsrc = 3 * (int)H, w = 2 * pv->aux * (head + B * r * D * C) + EXEC_ELT_WORK * B * r * C;
        break;
    case OP_Z: nsrc = 1, w = H * head; break;
    default: return EXEC_ELT_WORK * B * r * C;
    }
    for (int k = 0; k < nsrc; k++) {
        int32_t u = pv->in[k];
        if (proj[u] != epoch)
            proj[u] = epoch, w += B * T * (3 * C * C + EXEC_ELT_WORK * C);
    }
    return w;
}

/* Value v's bytes: a whole one's vb, or its rows [from[v], T)'s. */
static size_t rows_bytes(const plan *p, size_t vb, const int64_t *from, int32_t v)
{
    return vb / (size_t)p->T * (size_t)(p->T - from[v]);
}

int exec_estimate(const plan *p, const int32_t *roots, int n, size_t chunk_bytes, int64_t tail_from,
                  const unsigned char *tail, exec_estimate_t *out, npp_err *e)
{
    memset(out, 0, sizeof *out);
    size_t vb =
        (size_t)p->B * (size_t)p->T * (size_t)p->m->cfg.n_embd * shim_dtype_size(p->m->dtype);
    out->value_bytes = vb;
    unsigned char *seen = calloc((size_t)p->nv + 1, 1);
    int32_t *mine = malloc(((size_t)p->nv + 1) * sizeof *mine);
    int32_t *users = calloc((size_t)p->nv + 1, sizeof *users);
    int64_t *from = calloc((size_t)p->nv + 1, sizeof *from);
    int32_t *proj = calloc((size_t)p->nv + 1, sizeof *proj), epoch = 1;
    long nm = 0;
    int rc = 0;
    if (!seen || !mine || !users || !from || !proj ||
        rows_needed(p, roots, n, tail_from, tail, from) < 0) {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory");
        goto done;
    }
    /* every value the roots depend on, as if the cache held none */
    for (int r = 0; r < n; r++)
        if (!seen[roots[r]])
            seen[roots[r]] = 1, mine[nm++] = roots[r];
    for (long k = 0; k < nm; k++) {
        const plan_value *pv = &p->v[mine[k]];
        for (int i = 0; i < pv->nin; i++)
            if (!seen[pv->in[i]])
                seen[pv->in[i]] = 1, mine[nm++] = pv->in[i];
    }
    qsort_r(mine, (size_t)nm, sizeof *mine, by_rank, (void *)p);
    ex x = {p, NULL, NULL, NULL, e, NULL, NULL, users, 0, 0, {0}, {0}, 0, from, NULL};
    count_users(&x, mine, nm, roots, n);
    size_t live = 0, peak = 0, memo = 0; /* memo: what the last attention call keeps */
    size_t row = vb / (size_t)p->T, t0 = (size_t)shared_rows(p);
    for (long i = 0; i < nm;) {
        long j = i;
        while (j < nm && p->v[mine[j]].rank == p->v[mine[i]].rank &&
               p->v[mine[j]].op == p->v[mine[i]].op)
            j++;
        if (memo_ends(p->v[mine[i]].op))
            memo = 0, epoch++; /* cleared, as exec_run clears it */
        double work = 0, rows = 0;
        for (long k = i; k < j; k++) {
            work += value_work(p, mine[k], from, proj, epoch);
            rows += (double)p->B * (double)(p->T - from[mine[k]]);
        }
        if (op_info(p->v[mine[i]].op)->batched && rows < EXEC_MIN_ROWS)
            work *= EXEC_MIN_ROWS / rows;
        out->work += work;
        if (p->v[mine[i]].op == OP_ATTN) {
            /* at most every distinct source's projection (3 values each),
             * and never more than its budget */
            if ((rc = memo_bound(p, mine + i, j - i, vb, exec_memo_budget(chunk_bytes), &memo, e)))
                goto done;
        }
        /* light ops, one at a time: their outputs, and one's temporaries */
        const op_def *od = op_info(p->v[mine[i]].op);
        size_t outs = 0, temps = (size_t)od->temps * vb;
        for (long k = i; k < j; k++)
            outs += rows_bytes(p, vb, from, mine[k]);
        for (long k = i; od->temp_bytes && k < j; k++) {
            size_t t = od->temp_bytes(p, mine[k], vb);
            temps = t > temps ? t : temps;
        }
        size_t holds = outs + temps;
        if (op_info(p->v[mine[i]].op)->batched) {
            exec_chunk *ch;
            int nch;
            if (exec_chunks(p, mine + i, (int)(j - i), chunk_bytes, &ch, &nch)) {
                rc = npp_fail(e, NPP_ENOMEM, "", "out of memory");
                goto done;
            }
            /* as run_chunked goes: the outputs done so far, plus a chunk's
             * cost (which counts its own outputs); a value split along the
             * batch holds its parts so far, then the parts and their cat */
            size_t made = 0, part = 0;
            holds = 0;
            for (int k = 0; k < nch; k++) {
                size_t h = made + part + ch[k].cost,
                       one = rows_bytes(p, vb, from, mine[i + ch[k].i0]);
                if (ch[k].b1 - ch[k].b0 < p->B) {
                    part += one * (size_t)(ch[k].b1 - ch[k].b0) / (size_t)p->B;
                    if (ch[k].b1 == p->B) {
                        h = h > made + 2 * one ? h : made + 2 * one;
                        made += one, part = 0;
                    }
                } else {
                    for (int q = ch[k].i0; q < ch[k].i1; q++)
                        made += rows_bytes(p, vb, from, mine[i + q]);
                }
                holds = h > holds ? h : holds;
            }
            /* the group's shared rows, kept across its chunks (op_prefix):
             * an attention's projection and output, an MLP's output */
            plan_op op = p->v[mine[i]].op;
            if (t0 && j - i > 1 && (op == OP_ATTN || op == OP_MLP))
                holds += (op == OP_ATTN ? 4 : 1) * row * t0;
            out->chunks += nch;
            free(ch);
        }
        if (live + holds + memo > peak)
            peak = live + holds + memo;
        live += outs;
        for (long k = i; k < j; k++) { /* release_inputs, as exec_run does */
            const plan_value *pv = &p->v[mine[k]];
            for (int q = 0; q < pv->nin; q++) {
                int32_t u = pv->in[q];
                if ((!q || pv->in[q - 1] != u) && users[u] > 0 && --users[u] == 0)
                    live -= rows_bytes(p, vb, from, u);
            }
        }
        i = j;
    }
    out->peak_bytes = peak;
    out->end_bytes = live;
done:
    free(seen);
    free(mine);
    free(users);
    free(from);
    free(proj);
    return rc;
}
