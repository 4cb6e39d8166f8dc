/* attrib.c - gradient attribution of every edge; see attrib.h.
 *
 * Senders are numbered in stream order here: emb 0, head h of layer i
 * 1 + i(H+1) + h, the MLP of layer i 1 + i(H+1) + H, so the senders
 * upstream of a receiver are a prefix: layer i's q/k/v get the first
 * 1 + i(H+1), its MLP the first 1 + i(H+1) + H, ln_final all. Receivers are
 * numbered as in patch/edges.h. The senders' deltas (corrupted minus clean
 * output) are the rows of one (S, B*T*C) float32 matrix, so the scores of
 * one layer's receivers are one product with a prefix of its rows. */
#include "compute/attrib.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/exec.h"
#include "compute/plan.h"
#include "model/gpt2.h"
#include "patch/edges.h"

typedef struct {
    const model *m;
    const job *j;
    int L, H, C, B, T, S, R, steps;
    int64_t *act, nact;  /* the rows (b*T + t) that can score (active_rows); act NULL: all */
    int64_t *rest;       /* the other B*T - nact rows */
    int64_t *order;      /* B*T: row r is row order[r] of the active rows, then the rest */
    int64_t t0;          /* the last layer runs at positions [t0, T) only (0: all), those the
                          * metric and the outputs read (attrib_opts.tail_from) */
    int64_t *tidx;       /* nact, when t0: each active row's row in a (B, T - t0, ...) tensor
                          * of the last layer's, or -1 before t0 */
    double *score;       /* S x R */
    shim_tensor *delta;  /* (S, nact*C) float32 */
    shim_tensor **zc;    /* L: the corrupted run's heads' outputs z at the active rows, until
                          * the clean pass makes the heads' rows of delta from them */
    shim_tensor *gbuf;   /* (3H + 1, n*C) float32: per-head input gradients at n <= CHUNK_ROWS
                          * active rows at a time (layer_scores) */
    shim_tensor **mrest; /* L, or NULL: each MLP's output at the rest rows, when all of them lie
                          * before their example's first corrupted token (taken from the
                          * corrupted run, which is the same there) */
    float *ref;          /* kl: the clean run's log-softmax at the metric positions (B x V) */
    const attrib_opts *o;
    long done; /* progress units so far */
    shim_status st;
    npp_err *e;
} actx;

static int srow(const actx *a, int layer, int h) /* h == H: the MLP */
{
    return 1 + layer * (a->H + 1) + h;
}

/* A cancel first: a backward pass it stopped fails in the shim too. */
static int failed(actx *a)
{
    if (a->o->cancel && __atomic_load_n(a->o->cancel, __ATOMIC_RELAXED)) /* another thread's */
        return npp_fail(a->e, NPP_ECANCELED, "", "the job was cancelled");
    if (a->st.code)
        return npp_fail_shim(a->e, &a->st);
    return 0;
}

/* Within a layer: a cancel stops the shim calls left in it (each returns
 * at once), and the layer's end reports it (failed). */
static void poll_cancel(actx *a)
{
    if (!a->st.code && a->o->cancel && __atomic_load_n(a->o->cancel, __ATOMIC_RELAXED)) {
        a->st.code = SHIM_ETORCH;
        snprintf(a->st.msg, sizeof a->st.msg, "cancelled");
    }
}

/* A large job's layer runs in pieces, a cancel checked between them (the
 * backward pass then stops between their steps too: shim_backward): MLPs
 * at most CHUNK_ROWS rows at a time; c_attn and the attention a few
 * examples at a time, at most CHUNK_ROWS rows and CHUNK_ATT multiply-adds
 * of scores. A piece is then a fraction of a second; the bench's jobs are
 * one piece. */
#define CHUNK_ROWS 2048
#define CHUNK_ATT  ((int64_t)1 << 31)

/* Examples per piece of c_attn and the attention. */
static int64_t chunk_examples(const actx *a)
{
    int64_t T = a->T, n = CHUNK_ROWS / T, att = CHUNK_ATT / (T * T * a->C);
    n = att < n ? att : n;
    return n < 1 ? 1 : n;
}

/* One op of layer i on x (and, for the attention, k and v): kind 0 the
 * MLP, 1 c_attn (ln_1 and the projection), 2 the attention of queries x
 * over k, v. */
static shim_tensor *layer_op(actx *a, int kind, int i, const shim_tensor *x, const shim_tensor *k,
                             const shim_tensor *v)
{
    return kind == 2   ? shim_attention(x, k, v, a->H, gpt2_attn_scale(a->m, i), NULL, &a->st)
           : kind == 1 ? gpt2_attn_qkv(a->m, i, x, &a->st)
                       : gpt2_mlp(a->m, i, x, &a->st);
}

/* layer_op in pieces along dim 0 (rows, or examples), per at a time, cat
 * together: x and (kind 2) k and v cut alike. */
static shim_tensor *in_pieces(actx *a, int kind, int i, const shim_tensor *x, const shim_tensor *k,
                              const shim_tensor *v, int64_t per)
{
    if (!x || a->st.code) /* after a failure or a cancel (poll_cancel) */
        return NULL;
    int64_t n = shim_dim(x, 0);
    if (n <= per)
        return layer_op(a, kind, i, x, k, v);
    int np = (int)((n + per - 1) / per);
    shim_tensor **parts = calloc((size_t)np, sizeof *parts), *y = NULL;
    if (!parts) {
        a->st.code = SHIM_ENOMEM;
        snprintf(a->st.msg, sizeof a->st.msg, "out of memory");
        return NULL;
    }
    for (int c = 0; c < np && !a->st.code; c++) {
        int64_t r0 = (int64_t)c * per, nr = n - r0 < per ? n - r0 : per;
        shim_tensor *xc = shim_narrow(x, 0, r0, nr, &a->st),
                    *kc = k ? shim_narrow(k, 0, r0, nr, &a->st) : NULL,
                    *vc = v ? shim_narrow(v, 0, r0, nr, &a->st) : NULL;
        parts[c] = layer_op(a, kind, i, xc, kc, vc);
        shim_free(xc), shim_free(kc), shim_free(vc);
        poll_cancel(a);
    }
    if (!a->st.code)
        y = shim_cat(parts, np, 0, &a->st);
    for (int c = 0; c < np; c++)
        shim_free(parts[c]);
    free(parts);
    return y;
}

/* One more progress unit done. */
static void step(actx *a)
{
    a->done++;
    if (a->o->progress)
        a->o->progress(a->o->ud, a->o->done0 + a->done, a->o->total);
}

/* The positions that can add to a score: in example b, from the first
 * where the clean and corrupted tokens differ to the metric's position.
 * Before the first difference both runs are the same (the attention is
 * causal), so every delta is 0 there; after the metric's position every
 * gradient is 0. Gradients at the positions before the first difference
 * only ever flow to earlier positions, so the scores need them nowhere
 * (layer_scores completes the residual's gradient at the active rows
 * alone). The deltas and the receivers' gradients keep the active rows
 * only: on the bench's prompts (corrupted at position 5 of 16) 11 of 16. */
static int active_rows(actx *a)
{
    const job *j = a->j;
    const int64_t *clean = j->ids, *corrupt = j->ids + (size_t)a->B * a->T;
    int64_t n = 0, *act = malloc((size_t)a->B * a->T * sizeof *act);
    if (!act)
        return npp_fail(a->e, NPP_ENOMEM, "attribution", "out of memory");
    for (int b = 0; b < a->B; b++) {
        int t = 0;
        size_t row = (size_t)b * a->T;
        while (t < j->m_pos[b] && clean[row + t] == corrupt[row + t])
            t++;
        for (; t <= j->m_pos[b]; t++)
            act[n++] = (int64_t)row + t;
    }
    a->act = act, a->nact = n;
    if (n == (int64_t)a->B * a->T) {
        free(act), a->act = NULL;
        return 0;
    }
    /* every row left out lies before its example's first difference (none
     * after a metric position): there each value of the clean pass is the
     * corrupted run's (every op is causal), so the MLPs' outputs at those
     * rows come from the corrupted senders instead of being computed again
     * (take_senders, mlp_active) */
    int prefix = 1;
    for (int b = 0; b < a->B; b++)
        prefix &= j->m_pos[b] == a->T - 1;
    if (prefix && !(a->mrest = calloc((size_t)a->L, sizeof *a->mrest)))
        return npp_fail(a->e, NPP_ENOMEM, "attribution", "out of memory");
    int64_t BT = (int64_t)a->B * a->T, nr = 0;
    a->rest = malloc((size_t)(BT - n) * sizeof *a->rest);
    a->order = malloc((size_t)BT * sizeof *a->order);
    if (!a->rest || !a->order)
        return npp_fail(a->e, NPP_ENOMEM, "attribution", "out of memory");
    for (int64_t r = 0, k = 0; r < BT; r++) {
        if (k < n && act[k] == r)
            a->order[r] = k++;
        else
            a->order[r] = n + nr, a->rest[nr++] = r;
    }
    return 0;
}

/* t (B, T, ...) at the active rows, (nact, ...) (a view when all are). */
static shim_tensor *active(actx *a, const shim_tensor *t)
{
    return shim_gather_rows(t, (int64_t)a->B * a->T, a->act, a->nact, &a->st);
}

/* The same for t (B, T - t0, ...), a value of the last layer at positions
 * t0 on: zeros at the active rows before t0. No gradient reaches the last
 * layer's values there (nothing reads them), so its senders' deltas and
 * its receivers' gradients are 0 there in the scores. */
static shim_tensor *active_tail(actx *a, const shim_tensor *t)
{
    return shim_gather_rows(t, (int64_t)a->B * (a->T - a->t0), a->tidx, a->nact, &a->st);
}

/* tidx for t0 (attrib_run, after active_rows). */
static int tail_rows(actx *a)
{
    if (!(a->tidx = malloc((size_t)a->nact * sizeof *a->tidx)))
        return npp_fail(a->e, NPP_ENOMEM, "attribution", "out of memory");
    int64_t Tn = a->T - a->t0;
    for (int64_t k = 0; k < a->nact; k++) {
        int64_t r = a->act ? a->act[k] : k, b = r / a->T, t = r % a->T;
        a->tidx[k] = t < a->t0 ? -1 : b * Tn + t - a->t0;
    }
    return 0;
}

/* A last-layer sender of the corrupted run at the active rows (active_tail):
 * t holds every position (B, T, C) or, computed at the tail alone (the
 * executor's exec_opts.tail), positions t0 on. */
static shim_tensor *sender_tail(actx *a, const shim_tensor *t)
{
    int64_t Tt = shim_dim(t, 1), Tn = a->T - a->t0;
    if (Tt != a->T && Tt != Tn) {
        if (!a->st.code) {
            a->st.code = SHIM_EINVAL;
            snprintf(a->st.msg, sizeof a->st.msg,
                     "attribution: a last-layer sender holds %lld positions, not %lld or %lld",
                     (long long)Tt, (long long)a->T, (long long)Tn);
        }
        return NULL;
    }
    shim_tensor *n = Tt == a->T ? shim_narrow(t, 1, a->t0, Tn, &a->st) : NULL;
    shim_tensor *r = active_tail(a, n ? n : t);
    shim_free(n);
    return r;
}

/* The corrupted run's sender outputs (o->senders, in plan_plain_senders'
 * order, freed as they are taken): emb's and the MLPs' become their rows
 * of delta; each layer's heads' outputs z are kept (zc) for the clean
 * pass, which writes the heads' rows as (z(corrupt) - z(clean))_h W_O[h]. */
static void take_senders(actx *a)
{
    shim_tensor **t = a->o->senders;
    for (int k = 0; k < PLAN_SENDER_VALUES(a->L); k++) {
        int layer = (k - 1) / 2, z = k && k % 2, tail = a->t0 && k && layer == a->L - 1;
        if (!t[k] && !a->st.code) {
            a->st.code = SHIM_EINVAL;
            snprintf(a->st.msg, sizeof a->st.msg, "attribution: sender value %d was not computed",
                     k);
        }
        shim_tensor *r = !t[k] ? NULL : tail ? sender_tail(a, t[k]) : active(a, t[k]);
        if (k && !z && !tail && a->mrest && t[k]) /* an MLP's output at the rest rows */
            a->mrest[layer] = shim_gather_rows(t[k], (int64_t)a->B * a->T, a->rest,
                                               (int64_t)a->B * a->T - a->nact, &a->st);
        if (z)
            a->zc[layer] = r, r = NULL;
        else if (r)
            shim_rows_set(a->delta, k ? srow(a, layer, a->H) : 0, r, &a->st);
        shim_free(r);
        shim_free(t[k]);
        t[k] = NULL;
    }
}

/* dM/dh for final hidden states h (B, T', C), the last T' positions: the
 * metric's gradient at each example's metric position, over the batch
 * mean. clean: this is the clean run (kl keeps its log-softmax as the
 * reference). */
static shim_tensor *metric_seed(actx *a, const shim_tensor *h, int clean)
{
    const model *m = a->m;
    const job *j = a->j;
    const metric_def *md = j->metric;
    shim_status *st = &a->st;
    int B = a->B, C = a->C, K = metric_ntokens(md);
    int64_t Th = shim_dim(h, 1), from = a->T - Th;
    int64_t V = m->cfg.vocab_size, flat[2] = {(int64_t)B * Th, C};
    int64_t *idx = malloc((size_t)(B * (K ? K : 1)) * sizeof *idx);
    float *seed = calloc((size_t)(B * Th * C), sizeof *seed),
          *rows = malloc((size_t)B * C * sizeof *rows);
    size_t nv = md->full_vocab ? (size_t)V : 1; /* the vocabulary, when the metric reads it */
    float *d = malloc((size_t)B * nv * sizeof *d), *lp = malloc(nv * sizeof *lp);
    shim_tensor *out = NULL, *hf = NULL, *hr = NULL;
    if (!idx || !seed || !rows || !d || !lp) {
        st->code = SHIM_ENOMEM;
        snprintf(st->msg, sizeof st->msg, "out of memory");
        goto done;
    }
    for (int b = 0; b < B; b++)
        idx[b] = (int64_t)b * Th + j->m_pos[b] - from;
    hf = shim_reshape(h, flat, 2, st);
    hr = shim_take_rows(hf, idx, B, st); /* (B, C) */
    if (!md->full_vocab) {
        /* a linear metric of its tokens' logits: sum_k d_k W_U[token k] */
        float *hv = malloc((size_t)B * C * sizeof *hv), *w = malloc((size_t)B * K * C * sizeof *w);
        if (hv && w && !shim_to_host_f32(hr, hv, (size_t)B * C, st)) {
            for (int b = 0; b < B; b++)
                for (int k = 0; k < K; k++)
                    idx[b * K + k] = j->m_tokens[k][b];
            shim_tensor *cols = shim_take_rows(m->lm_head, idx, (int64_t)B * K, st);
            if (cols && !shim_to_host_f32(cols, w, (size_t)B * K * C, st)) {
                for (int b = 0; b < B; b++) {
                    float lgk[METRIC_MAX_TOKENS], dk[METRIC_MAX_TOKENS];
                    int64_t toks[METRIC_MAX_TOKENS];
                    for (int k = 0; k < K; k++) {
                        double s = 0;
                        for (int c = 0; c < C; c++)
                            s += (double)hv[b * C + c] * w[(b * K + k) * C + c];
                        lgk[k] = (float)s, toks[k] = j->m_tokens[k][b];
                    }
                    metric_in in = {.logits = lgk, .tokens = toks, .vocab = V};
                    md->grad(&in, dk);
                    for (int c = 0; c < C; c++) {
                        double s = 0;
                        for (int k = 0; k < K; k++)
                            s += (double)dk[k] * w[(b * K + k) * C + c];
                        rows[b * C + c] = (float)s;
                    }
                }
            }
            shim_free(cols);
        } else if (!hv || !w) {
            st->code = SHIM_ENOMEM;
        }
        free(hv), free(w);
    } else {
        /* over the vocabulary: d (B, V) by the metric, then d @ W_U */
        shim_tensor *logits = shim_matmul_nt(hr, m->lm_head, st); /* (B, V) */
        float *all = malloc((size_t)B * (size_t)V * sizeof *all);
        if (clean && md->needs_ref && !a->ref)
            a->ref = malloc((size_t)B * (size_t)V * sizeof *a->ref);
        if (all && (!md->needs_ref || a->ref) &&
            !shim_to_host_f32(logits, all, (size_t)B * (size_t)V, st)) {
            for (int b = 0; b < B; b++) {
                int64_t toks[METRIC_MAX_TOKENS];
                for (int k = 0; k < K; k++)
                    toks[k] = j->m_tokens[k][b];
                memcpy(lp, all + (size_t)b * V, (size_t)V * sizeof *lp);
                metric_log_softmax(lp, 1, (size_t)V);
                if (clean && md->needs_ref)
                    memcpy(a->ref + (size_t)b * V, lp, (size_t)V * sizeof *lp);
                metric_in in = {.logprobs = lp,
                                .ref = md->needs_ref ? a->ref + (size_t)b * V : NULL,
                                .vocab = V,
                                .tokens = toks};
                md->grad(&in, d + (size_t)b * V);
            }
            int64_t shape[2] = {B, V};
            shim_tensor *dt = shim_from_host(d, SHIM_F32, shape, 2, m->device, m->dtype, st);
            shim_tensor *r = shim_linear(dt, m->lm_head, NULL, st); /* (B, C) */
            if (r)
                shim_to_host_f32(r, rows, (size_t)B * C, st);
            shim_free(dt), shim_free(r);
        } else if (!st->code) {
            st->code = SHIM_ENOMEM;
            snprintf(st->msg, sizeof st->msg, "out of memory");
        }
        free(all);
        shim_free(logits);
    }
    if (!st->code) {
        for (int b = 0; b < B; b++)
            for (int c = 0; c < C; c++)
                seed[((size_t)b * Th + j->m_pos[b] - from) * C + c] = rows[b * C + c] / (float)B;
        int64_t shape[3] = {B, Th, C};
        out = shim_from_host(seed, SHIM_F32, shape, 3, m->device, m->dtype, st);
    }
done:
    shim_free(hf), shim_free(hr);
    free(idx), free(seed), free(rows), free(d), free(lp);
    return out;
}

/* score[s][rcv[k]] += w * sum_n delta[s, off + n] G[k, n] for the senders
 * s < nup[k] (those upstream of receiver k), G (nr, N): one product with
 * the largest prefix of delta's rows. */
static void add_scores(actx *a, const int *nup, const shim_tensor *G, const int *rcv, int nr,
                       double w, int64_t off)
{
    int most = 0;
    for (int k = 0; k < nr; k++)
        most = nup[k] > most ? nup[k] : most;
    float *p = malloc((size_t)most * (size_t)nr * sizeof *p);
    if (!p) {
        a->st.code = SHIM_ENOMEM;
        return;
    }
    /* in column chunks of about 2^30 multiply-adds (a fraction of a second;
     * one chunk at the bench's sizes), a cancel checked between them */
    int64_t N = shim_dim(G, 1), cw = ((int64_t)1 << 30) / ((int64_t)most * nr);
    cw = cw < 4096 ? 4096 : cw;
    shim_tensor *D = shim_narrow(a->delta, 0, 0, most, &a->st);
    int64_t DN = D ? shim_dim(D, 1) : 0;
    for (int64_t c0 = 0; c0 < N && !a->st.code; c0 += cw) {
        int64_t n = N - c0 < cw ? N - c0 : cw;
        shim_tensor *Dc = n < DN ? shim_narrow(D, 1, off + c0, n, &a->st) : NULL,
                    *Gc = n < N ? shim_narrow(G, 1, c0, n, &a->st) : NULL;
        shim_tensor *P = shim_matmul_nt(Dc ? Dc : D, Gc ? Gc : G, &a->st); /* (most, nr) */
        if (P && !shim_to_host_f32(P, p, (size_t)most * nr, &a->st))
            for (int k = 0; k < nr; k++)
                for (int s = 0; s < nup[k]; s++)
                    a->score[(size_t)s * a->R + rcv[k]] += w * p[s * nr + k];
        shim_free(P), shim_free(Dc), shim_free(Gc);
        poll_cancel(a);
    }
    shim_free(D);
    free(p);
}

/* Layer i's scores from its taps' gradients, at weight w: its 3H q/k/v
 * receivers and its MLP's (mt, its tap at the active rows, or in the last
 * layer with t0 at its positions from t0 on: mlp_tail) in one product
 * (rcv, nup: 3H + 1 entries). gx (or NULL): the gradient on the layer's
 * input, which backward brought through the residual only (c_attn's
 * output is a leaf); the q/k/v rows add what reaches it through ln_1. */
static void layer_scores(actx *a, int i, shim_tensor *qkv, shim_tensor *mt, const shim_tensor *xin,
                         shim_tensor *gx, int *rcv, int *nup, double w)
{
    const model *m = a->m;
    shim_status *st = &a->st;
    int H = a->H;
    shim_tensor *g0 = shim_grad(qkv, st), *gm = shim_grad(mt, st);
    if (gm && a->t0 && i == a->L - 1) { /* to the active rows */
        shim_tensor *ga = active_tail(a, gm);
        shim_free(gm);
        gm = ga;
    }
    shim_tensor *g = g0 ? active(a, g0) : NULL;
    shim_tensor *x = active(a, xin);
    shim_free(g0);
    for (int c = 0; c < 3; c++)
        for (int h = 0; h < H; h++)
            rcv[c * H + h] = 1 + 3 * (i * H + h) + c, nup[c * H + h] = srow(a, i, 0);
    rcv[3 * H] = 1 + 3 * a->L * H + i, nup[3 * H] = srow(a, i, H);
    /* CHUNK_ROWS active rows at a time (gbuf holds one piece) */
    int64_t per = CHUNK_ROWS, *idx = NULL;
    if (!a->act && a->nact > per && !(idx = malloc((size_t)per * sizeof *idx))) {
        st->code = SHIM_ENOMEM;
        snprintf(st->msg, sizeof st->msg, "out of memory");
    }
    for (int64_t r0 = 0; g && gm && x && r0 < a->nact && !st->code; r0 += per) {
        int64_t n = a->nact - r0 < per ? a->nact - r0 : per;
        int whole = n == a->nact;
        shim_tensor *gc = whole ? NULL : shim_narrow(g, 0, r0, n, st),
                    *gmc = whole ? NULL : shim_narrow(gm, 0, r0, n, st),
                    *xc = whole ? NULL : shim_narrow(x, 0, r0, n, st);
        shim_tensor *G = shim_head_input_grads(gc ? gc : g, m->blocks[i].attn_w, xc ? xc : x,
                                               m->blocks[i].ln_1_w, m->cfg.ln_eps, H,
                                               gmc ? gmc : gm, a->gbuf, st);
        /* (3H + 1, n*C): row cH + h head h's q, k or v; the MLP */
        if (G)
            add_scores(a, nup, G, rcv, 3 * H + 1, w, r0 * a->C);
        for (int64_t k = 0; idx && k < n; k++)
            idx[k] = r0 + k;
        if (G && gx)
            shim_add_row_sum(gx, G, 3 * H, a->act ? a->act + r0 : idx, n, st);
        shim_free(G), shim_free(gc), shim_free(gmc), shim_free(xc);
        poll_cancel(a);
    }
    free(idx);
    shim_free(g), shim_free(gm), shim_free(x);
}

/* Layer i's MLP output (B, T, C) on x2 for the gradient pass: in the
 * graph at the active rows only, through *tap (the MLP's own copy of its
 * input there, (nact, C)), and outside it at the rest, whose gradients no
 * score needs (active_rows); so backward runs the MLP at the active rows
 * alone. Where every row left out comes before its example's first
 * corrupted token, the output there is the corrupted run's (mrest), not
 * computed again. The first pass also subtracts the clean MLP output from
 * its row of delta. */
static shim_tensor *mlp_active(actx *a, int i, const shim_tensor *x2, shim_tensor **tap, int first)
{
    const model *m = a->m;
    shim_status *st = &a->st;
    int64_t BT = (int64_t)a->B * a->T, flat[2] = {BT, a->C}, shape[3] = {a->B, a->T, a->C};
    shim_tensor *xf = shim_reshape(x2, flat, 2, st);
    shim_tensor *xa = a->act ? shim_take_rows(xf, a->act, a->nact, st) : NULL;
    *tap = shim_grad_tap(xa ? xa : xf, st);
    shim_tensor *ya = in_pieces(a, 0, i, *tap, NULL, NULL, CHUNK_ROWS), *y = NULL; /* (nact, C) */
    if (first && ya)
        shim_rows_add(a->delta, srow(a, i, a->H), -1.0, ya, st);
    if (a->act && ya) {
        shim_grad_mode(0);
        shim_tensor *xr = NULL, *yr = NULL; /* (BT - nact, C), no gradient */
        if (a->mrest && a->mrest[i])
            yr = shim_narrow(a->mrest[i], 0, 0, BT - a->nact, st); /* a new handle */
        else
            xr = shim_gather_rows(xf, BT, a->rest, BT - a->nact, st), yr = gpt2_mlp(m, i, xr, st);
        shim_grad_mode(1);
        shim_tensor *parts[2] = {ya, yr};
        shim_tensor *both = yr ? shim_cat(parts, 2, 0, st) : NULL;
        shim_tensor *yf = both ? shim_take_rows(both, a->order, BT, st) : NULL; /* row order */
        y = yf ? shim_reshape(yf, shape, 3, st) : NULL;
        shim_free(xr), shim_free(yr), shim_free(both), shim_free(yf);
    } else if (ya) {
        y = shim_reshape(ya, shape, 3, st);
    }
    shim_free(xf), shim_free(xa), shim_free(ya);
    return y;
}

/* The last layer's MLP output with t0, on x2 (B, T - t0, C), its
 * positions from t0 on: all in the graph through *tap (the MLP's own copy
 * of its input). The first pass also subtracts it from its row of delta. */
static shim_tensor *mlp_tail(actx *a, const shim_tensor *x2, shim_tensor **tap, int first)
{
    shim_status *st = &a->st;
    int i = a->L - 1;
    int64_t Tn = a->T - a->t0, flat[2] = {a->B * Tn, a->C}, shape[3] = {a->B, Tn, a->C};
    shim_tensor *xf = shim_reshape(x2, flat, 2, st);
    *tap = shim_grad_tap(xf, st);
    shim_free(xf);
    shim_tensor *ya = in_pieces(a, 0, i, *tap, NULL, NULL, CHUNK_ROWS),
                *y = ya ? shim_reshape(ya, shape, 3, st) : NULL;
    shim_tensor *r = first && ya ? active_tail(a, ya) : NULL;
    if (r)
        shim_rows_add(a->delta, srow(a, i, a->H), -1.0, r, st);
    shim_free(r), shim_free(ya);
    return y;
}

/* delta's row s -= the clean run's sender output t (B, T, C). */
static void rows_sub(actx *a, int s, const shim_tensor *t)
{
    shim_tensor *r = active(a, t);
    if (r)
        shim_rows_add(a->delta, s, -1.0, r, &a->st);
    shim_free(r);
}

/* One gradient pass on the input embedding e_corrupt + alpha (e_clean -
 * e_corrupt); the first (alpha 1, the clean run) also subtracts the clean
 * senders from delta. The graph is cut at every layer's input (a leaf of
 * its own), so backward runs one layer at a time: a cancel takes effect
 * within a layer's backward, and a layer's scores are taken (and its
 * tensors freed) as soon as its gradients are there. c_attn's output is a
 * leaf too (ln_1 and c_attn run outside the graph): the per-head input
 * gradients the scores need sum to what c_attn's and ln_1's backward
 * would give the residual, so backward skips that product. With t0 the
 * last layer computes its queries, and so everything after its keys and
 * values, at positions t0 on only: the final hidden states (and
 * clean_out) hold those (B, T - t0, C). */
static int grad_step(actx *a, double alpha, const shim_tensor *ec, const shim_tensor *ex, int first)
{
    const model *m = a->m;
    shim_status *st = &a->st;
    int L = a->L, H = a->H, rc = 0;
    int64_t C = a->C;
    shim_tensor **xin = calloc((size_t)L + 1, sizeof *xin), **out = calloc((size_t)L, sizeof *out),
                **qkv = calloc((size_t)L, sizeof *qkv), **mt = calloc((size_t)L, sizeof *mt);
    int *rcv = malloc((size_t)(3 * H + 1) * sizeof *rcv),
        *nup = malloc((size_t)(3 * H + 1) * sizeof *nup);
    shim_tensor *ft = NULL, *h = NULL, *seed = NULL, *g = NULL;
    double w = 1.0 / a->steps;
    if (!xin || !out || !qkv || !mt || !rcv || !nup) {
        rc = npp_fail(a->e, NPP_ENOMEM, "attribution", "out of memory");
        goto done;
    }
    shim_grad_mode(1);
    shim_tensor *e0 = alpha == 1.0 ? NULL : shim_axpby(alpha, ec, 1.0 - alpha, ex, st);
    xin[0] = shim_grad_leaf(e0 ? e0 : ec, st);
    shim_free(e0);
    if (first)
        rows_sub(a, 0, xin[0]);
    for (int i = 0; i < L && !(rc = failed(a)); i++) {
        int64_t t0 = i == L - 1 ? a->t0 : 0; /* the positions computed from the queries on */
        shim_tensor *x = xin[i];
        shim_tensor *xd = shim_detach(x, st);
        shim_tensor *q0 = in_pieces(a, 1, i, xd, NULL, NULL, chunk_examples(a));
        shim_free(xd);
        qkv[i] = shim_grad_leaf(q0, st);
        shim_free(q0);
        shim_tensor *qa = shim_narrow(qkv[i], 2, 0, C, st), *k = shim_narrow(qkv[i], 2, C, C, st),
                    *v = shim_narrow(qkv[i], 2, 2 * C, C, st);
        shim_tensor *q = t0 && qa ? shim_narrow(qa, 1, t0, a->T - t0, st) : NULL;
        shim_tensor *z = in_pieces(a, 2, i, q ? q : qa, k, v, chunk_examples(a));
        shim_free(qa), shim_free(q), shim_free(k), shim_free(v);
        shim_tensor *za = !first || !z ? NULL : t0 ? active_tail(a, z) : active(a, z);
        /* the heads' rows: their outputs' change, head by head (CHUNK_ROWS
         * rows at a time) */
        for (int64_t r0 = 0; za && r0 < a->nact && !st->code; r0 += CHUNK_ROWS) {
            int64_t n = a->nact - r0 < CHUNK_ROWS ? a->nact - r0 : CHUNK_ROWS;
            int whole = n == a->nact;
            shim_tensor *z1 = whole ? NULL : shim_narrow(a->zc[i], 0, r0, n, st),
                        *z0 = whole ? NULL : shim_narrow(za, 0, r0, n, st);
            shim_rows_head_deltas(a->delta, srow(a, i, 0), r0 * C, z1 ? z1 : a->zc[i], z0 ? z0 : za,
                                  m->blocks[i].proj_w, H, st);
            shim_free(z1), shim_free(z0);
            poll_cancel(a);
        }
        shim_free(za);
        if (first)
            shim_free(a->zc[i]), a->zc[i] = NULL;
        poll_cancel(a);
        shim_tensor *att = shim_linear(z, m->blocks[i].proj_w, m->blocks[i].proj_b, st);
        shim_free(z);
        shim_tensor *xt = t0 ? shim_narrow(x, 1, t0, a->T - t0, st) : NULL;
        shim_tensor *x2 = shim_add(xt ? xt : x, att, st);
        shim_free(xt), shim_free(att);
        poll_cancel(a);
        shim_tensor *y = t0 ? mlp_tail(a, x2, &mt[i], first) : mlp_active(a, i, x2, &mt[i], first);
        out[i] = shim_add(x2, y, st); /* the residual reads x2, not the tap */
        shim_free(x2), shim_free(y);
        xin[i + 1] = shim_grad_leaf(out[i], st);
        step(a);
    }
    if (rc || (rc = failed(a))) /* the last layer's step too */
        goto done;
    ft = shim_grad_tap(xin[L], st); /* ln_final's */
    h = gpt2_ln_f(m, ft, st);
    if (first && a->o->clean_out && h)
        *a->o->clean_out = shim_detach(h, st);
    shim_grad_mode(0);
    seed = h ? metric_seed(a, h, first) : NULL;
    if ((rc = failed(a)))
        goto done;
    shim_backward(h, seed, a->o->cancel, st);
    g = shim_grad(ft, st);
    shim_tensor *ga = !g ? NULL : a->t0 ? active_tail(a, g) : active(a, g);
    shim_tensor *gf = ga ? shim_flat_f32(ga, st) : NULL;
    shim_free(ga);
    rcv[0] = 0, nup[0] = a->S;
    if (gf)
        add_scores(a, nup, gf, rcv, 1, w, 0);
    shim_free(gf);
    for (int i = L - 1; i >= 0 && !(rc = failed(a)); i--) {
        shim_backward(out[i], g, a->o->cancel, st); /* layer i alone: its input is a leaf */
        shim_free(g);
        g = shim_grad(xin[i], st);
        if (!st->code)
            layer_scores(a, i, qkv[i], mt[i], xin[i], i ? g : NULL, rcv, nup, w);
        shim_free(out[i]), shim_free(qkv[i]), shim_free(mt[i]), shim_free(xin[i + 1]);
        out[i] = qkv[i] = mt[i] = xin[i + 1] = NULL;
        step(a);
    }
done:
    shim_grad_mode(0);
    for (int i = 0; xin && i <= L; i++)
        shim_free(xin[i]);
    for (int i = 0; out && i < L; i++)
        shim_free(out[i]), shim_free(qkv[i]), shim_free(mt[i]);
    shim_free(ft), shim_free(h), shim_free(seed), shim_free(g);
    free(xin), free(out), free(qkv), free(mt), free(rcv), free(nup);
    return rc;
}

/* ---- the result ------------------------------------------------------------ */

typedef struct {
    double score;
    int u, v; /* symbols; v -1 for a node score */
    int s, r; /* their sender and receiver numbers */
} scored;

static int by_magnitude(const void *x, const void *y)
{
    const scored *a = x, *b = y;
    double fa = fabs(a->score), fb = fabs(b->score);
    if (fa != fb)
        return fa < fb ? 1 : -1;
    return a->u != b->u ? a->u - b->u : a->v - b->v; /* ties in a fixed order */
}

static int sender_sym(const actx *a, int s)
{
    if (s == 0)
        return graph_sym(&a->j->g, G_EMB, -1, -1);
    int layer = (s - 1) / (a->H + 1), h = (s - 1) % (a->H + 1);
    return h == a->H ? graph_sym(&a->j->g, G_FHEAD, layer, -1)
                     : graph_sym(&a->j->g, G_HEAD, layer, h);
}

static json_t *result_json(const actx *a)
{
    const graph_dims *g = &a->j->g;
    const job_attrib *at = a->j->attrib;
    scored *list = malloc((size_t)a->S * (size_t)a->R * sizeof *list);
    if (!list)
        return NULL;
    size_t n = 0;
    for (int s = 0; s < a->S; s++) {
        int u = sender_sym(a, s);
        double node = 0;
        for (int r = 0; r < a->R; r++) {
            int v = edges_receiver_sym(g, r);
            if (!edges_upstream(g, u, v))
                continue;
            double sc = a->score[(size_t)s * a->R + r];
            if (at->nodes)
                node += sc;
            else
                list[n++] = (scored){sc, u, v, s, r};
        }
        if (at->nodes)
            list[n++] = (scored){node, u, -1, s, -1};
    }
    qsort(list, n, sizeof *list, by_magnitude);
    size_t keep = at->top && !a->o->all && (size_t)at->top < n ? (size_t)at->top : n;
    /* each name one string, shared by the rows that name it */
    json_t *arr = json_array(), **name = calloc((size_t)(a->S + a->R), sizeof *name);
    char buf[48];
    for (int k = 0; arr && name && k < a->S + a->R; k++) {
        graph_name(g, k < a->S ? sender_sym(a, k) : edges_receiver_sym(g, k - a->S), buf,
                   sizeof buf);
        if (!(name[k] = json_string(buf)))
            json_decref(arr), arr = NULL;
    }
    for (size_t i = 0; arr && name && i < keep; i++) {
        json_t *row = json_array();
        json_array_append(row, name[list[i].s]);
        if (list[i].v >= 0)
            json_array_append(row, name[a->S + list[i].r]);
        json_array_append_new(row, json_real(list[i].score));
        json_array_append_new(arr, row);
    }
    for (int k = 0; name && k < a->S + a->R; k++)
        json_decref(name[k]);
    if (!name)
        json_decref(arr), arr = NULL;
    free(name);
    free(list);
    static const char *const methods[] = {"eap", "eap-ig"};
    return arr ? json_pack("{s:s,s:i,s:s,s:s,s:I,s:o}", "method", methods[at->method], "steps",
                           at->steps, "level", at->nodes ? "nodes" : "edges", "metric",
                           a->j->metric->name, "count", (json_int_t)n,
                           at->nodes ? "nodes" : "edges", arr)
               : NULL;
}

/* ---- bounds ------------------------------------------------------------------- */

/* What the attribution holds at most. */
size_t attrib_bytes(const model *m, const job *j)
{
    const model_config *c = &m->cfg;
    size_t e = shim_dtype_size(m->dtype), L = (size_t)c->n_layer, H = (size_t)c->n_head;
    size_t BT = (size_t)j->B * (size_t)j->T, N = BT * (size_t)c->n_embd, I = (size_t)c->n_inner;
    size_t att = (size_t)j->B * H * (size_t)j->T * (size_t)j->T;
    size_t S = (size_t)edges_nsenders(&j->g), R = (size_t)edges_nreceivers(&j->g);
    size_t V = (size_t)c->vocab_size;
    /* what backward keeps per layer: c_attn's output (a leaf; ln_1 runs
     * outside the graph), the probabilities (float32), z, c_proj's output
     * and the residuals, ln_2, c_fc and GELU outputs; then the taps'
     * gradients */
    size_t tape = L * (e * (8 * N + 2 * BT * I) + 4 * att + e * 4 * N);
    size_t backward = e * (6 * N + 2 * BT * I) + 4 * 2 * att; /* one layer's gradients at once */
    /* shim_head_input_grads: 3H + 1 rows, the MLP's gradient; with 16-bit
     * weights, float32 copies of c_attn's weight and output gradient */
    size_t C = (size_t)c->n_embd, heads = 4 * (3 * H + 2) * N + (e < 4 ? 4 * 3 * (C * C + N) : 0);
    /* the deltas (at most every row active; the head outputs go straight
     * into their rows), the corrupted heads' outputs z kept until then, and
     * the MLPs' outputs at the rows left out (mrest) */
    size_t delta = 4 * S * N + 2 * e * L * N;
    size_t host = 8 * S * R + 4 * (size_t)j->B * V * 4 + 4 * N;
    return tape + backward + heads + delta + host;
}

size_t attrib_text_bytes(const model *m, const job *j)
{
    graph_dims g;
    graph_dims_init(&g, m->cfg.n_layer, m->cfg.n_head, j->T);
    size_t n = j->attrib->nodes ? (size_t)(1 + g.L * (g.H + 1)) : (size_t)edges_count(&g);
    if (j->attrib->top && (size_t)j->attrib->top < n)
        n = (size_t)j->attrib->top;
    return 256 + n * (2 * 24 + 32); /* two names of up to 22 characters, a %.17g score */
}

double attrib_work(const model *m, const job *j)
{
    const model_config *c = &m->cfg;
    double B = j->B, T = j->T, C = c->n_embd, H = c->n_head, I = c->n_inner, E = EXEC_ELT_WORK;
    double N = B * T;
    /* a layer: c_attn, c_proj, the MLP and their elementwise steps, the
     * heads' scores and sums; the logits at the metric's position */
    double layer = N * (4 * C * C + 2 * C * I + E * (8 * C + I)) + B * H * T * T * (2 * C / H + E);
    double fwd = c->n_layer * layer + B * (double)c->vocab_size * C;
    /* a head's q, k, v input gradients: c_attn's backward again, and a
     * layer norm's for each of 3H + 1 receivers */
    double grads = c->n_layer * N * (3 * C * C + E * (3 * H + 1) * C);
    return j->attrib->steps * (3 * fwd + grads) + (double)edges_count(&j->g) * N * C;
}

long attrib_units(const model *m, const job *j)
{
    return 2L * m->cfg.n_layer * j->attrib->steps;
}

int attrib_run(const model *m, const job *j, const attrib_opts *o, json_t **out, npp_err *e)
{
    actx a = {.m = m, .j = j, .o = o, .e = e};
    a.L = m->cfg.n_layer, a.H = m->cfg.n_head, a.C = m->cfg.n_embd, a.B = j->B, a.T = j->T;
    a.S = edges_nsenders(&j->g), a.R = edges_nreceivers(&j->g);
    a.steps = j->attrib->steps;
    int rc;
    *out = NULL;
    a.score = calloc((size_t)a.S * (size_t)a.R, sizeof *a.score);
    shim_tensor *ec = NULL, *ex = NULL;
    a.zc = calloc((size_t)a.L, sizeof *a.zc);
    if (!a.score || !a.zc) {
        rc = npp_fail(e, NPP_ENOMEM, "attribution", "out of memory");
        goto done;
    }
    const int64_t *clean = j->ids, *corrupt = j->ids + (size_t)j->B * j->T;
    if ((rc = active_rows(&a)))
        goto done;
    a.t0 = o->tail_from > 0 && o->tail_from < a.T ? o->tail_from : 0;
    if (a.t0 && (rc = tail_rows(&a)))
        goto done;
    a.delta = shim_empty_f32(a.S, a.nact * a.C, m->device, &a.st);
    a.gbuf = shim_empty_f32(3 * a.H + 1, (a.nact < CHUNK_ROWS ? a.nact : CHUNK_ROWS) * a.C,
                            m->device, &a.st);
    if (a.delta)
        take_senders(&a);
    ec = gpt2_embed(m, clean, a.B, a.T, &a.st);
    ex = gpt2_embed(m, corrupt, a.B, a.T, &a.st);
    if ((rc = failed(&a)))
        goto done;
    /* k = m first: alpha 1 is the clean run, which gives the clean senders */
    for (int k = a.steps; k >= 1 && !rc; k--)
        rc = grad_step(&a, (double)k / a.steps, ec, ex, k == a.steps);
    if (!rc && !(*out = result_json(&a)))
        rc = npp_fail(e, NPP_ENOMEM, "attribution", "out of memory");
done:
    shim_free(a.delta), shim_free(a.gbuf), shim_free(ec), shim_free(ex);
    for (int i = 0; a.zc && i < a.L; i++)
        shim_free(a.zc[i]);
    for (int i = 0; a.mrest && i < a.L; i++)
        shim_free(a.mrest[i]);
    free(a.zc), free(a.mrest);
    free(a.score), free(a.ref), free(a.act), free(a.rest), free(a.order), free(a.tidx);
    return rc;
}
