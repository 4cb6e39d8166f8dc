/* result.c - the result document of a computed job: each patched run's
 * outputs (top-k, logits, token log-probs, hidden states) and metric, the
 * plain runs' attention and the baselines, stats and trace; and, kept
 * beside the code it mirrors, the estimate of what building it holds and
 * how long its text is. Logits are computed only at the requested
 * positions, and only for the token columns a metric needs when nothing
 * asks for the full vocabulary. */
#include "output/result.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/npy.h"
#include "model/gpt2.h"

json_t *result_json_num(double x)
{
    if (isnan(x))
        return json_string("NaN");
    if (isinf(x))
        return json_string(x > 0 ? "Infinity" : "-Infinity");
    return json_real(x == 0 ? 0.0 : x); /* no -0.0 (an empty circuit's faithfulness) */
}

char *result_base64_f32(const float *x, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *b = (const unsigned char *)x; /* little-endian host (checked at build) */
    size_t len = n * 4, o = 0;
    char *s = malloc((len + 2) / 3 * 4 + 1);
    if (!s)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)b[i + 1] << 8;
        if (i + 2 < len)
            v |= b[i + 2];
        s[o++] = tab[v >> 18 & 63];
        s[o++] = tab[v >> 12 & 63];
        s[o++] = i + 1 < len ? tab[v >> 6 & 63] : '=';
        s[o++] = i + 2 < len ? tab[v & 63] : '=';
    }
    s[o] = 0;
    return s;
}

typedef struct {
    const model *m;
    const job *j;
    const result_opts *o;
    npp_err *e;
    /* the runs whose logits at outputs.positions are made together
     * (logits_for): runs[at, at + count) are in buf, (count, B, np, V) */
    shim_tensor *const *runs;
    int nruns, at, count;
    float *buf;
} ctx;

/* Building outputs checks the cancel flag between patched runs, between
 * the layers of an attention output, and before each tensor's text. */
static int cancelled(const ctx *c)
{
    if (!c->o->cancel || !__atomic_load_n(c->o->cancel, __ATOMIC_RELAXED))
        return 0;
    npp_fail(c->e, NPP_ECANCELED, "", "the job was cancelled");
    return 1;
}

/* A tensor for the result: base64 or an .npy file. */
static json_t *tensor_json(ctx *c, const char *name, const float *x, const int64_t *shape, int nd)
{
    if (cancelled(c)) /* a tensor's text can take a few tenths of a second */
        return NULL;
    size_t n = 1;
    json_t *sh = json_array();
    for (int i = 0; i < nd; i++) {
        n *= (size_t)shape[i];
        json_array_append_new(sh, json_integer(shape[i]));
    }
    if (c->o->npy_dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.npy", c->o->npy_dir, name);
        if (npy_write_f32(path, x, shape, nd, c->e)) {
            json_decref(sh);
            return NULL;
        }
        return json_pack("{s:s,s:o,s:s}", "dtype", "float32", "shape", sh, "npy", path);
    }
    char *b64 = result_base64_f32(x, n);
    if (!b64) {
        json_decref(sh);
        npp_fail(c->e, NPP_ENOMEM, "", "out of memory");
        return NULL;
    }
    json_t *r = json_pack("{s:s,s:o,s:s}", "dtype", "float32", "shape", sh, "data", b64);
    free(b64);
    return r;
}

static json_t *token_json(const model *m, int64_t id)
{
    int32_t i = (int32_t)id;
    char *s = NULL;
    size_t len;
    json_t *j = NULL;
    if (!tok_decode(m->tok, &i, 1, &s, &len, NULL))
        j = json_stringn(s, len);
    free(s);
    return j ? j : json_null();
}

/* The metric's tokens as resolved: {"target": {"id": 1327, "text": " hard"},
 * ...}, a list of them (one per example) where the examples differ. */
static json_t *resolved_json(const model *m, int64_t id)
{
    return json_pack("{s:I,s:o}", "id", (json_int_t)id, "text", token_json(m, id));
}

static json_t *metric_tokens_json(const model *m, const job *j)
{
    json_t *o = json_object();
    for (int k = 0; k < metric_ntokens(j->metric); k++) {
        const int64_t *t = j->m_tokens[k];
        int same = 1;
        for (int b = 1; b < j->B; b++)
            same &= t[b] == t[0];
        json_t *v = same ? resolved_json(m, t[0]) : json_array();
        for (int b = 0; !same && b < j->B; b++)
            json_array_append_new(v, resolved_json(m, t[b]));
        json_object_set_new(o, j->metric->keys[k], v);
    }
    return o;
}

/* The error of a failed step; one already recorded (a .npy file that
 * could not be written) stays. */
static int shim_err(ctx *c, const shim_status *st)
{
    if (c->e && c->e->code)
        return c->e->code;
    return npp_fail_shim(c->e, st);
}

/* Rows of hidden at each example's positions pos[b * np + i] -> (B*np,
 * C), row b * np + i. hidden holds the job's last T' of T positions (B,
 * T', C): every position when T' = T, else only the rows from the first
 * any output or the metric reads (exec.h, exec_opts.tail). */
static shim_tensor *rows_at(const ctx *c, const shim_tensor *hidden, const int *pos, int np,
                            shim_status *st)
{
    int64_t B = shim_dim(hidden, 0), T = shim_dim(hidden, 1), C = c->m->cfg.n_embd;
    int64_t from = c->j->T - T;
    int64_t *idx = malloc((size_t)(B * np) * sizeof *idx), shape[2] = {B * T, C};
    if (!idx) {
        st->code = SHIM_ENOMEM;
        return NULL;
    }
    for (int64_t b = 0; b < B; b++)
        for (int i = 0; i < np; i++)
            idx[b * np + i] = b * T + pos[b * np + i] - from;
    shim_tensor *flat = shim_reshape(hidden, shape, 2, st);
    shim_tensor *r = shim_take_rows(flat, idx, B * np, st);
    shim_free(flat);
    free(idx);
    return r;
}

/* Is row i of example b (a position at or past its length) padding? */
static int padding(const job *j, int64_t b, int i)
{
    return j->positions[b * j->npos + i] >= j->len[b];
}

/* Do the examples' positions pos[b * np + i] differ? */
static int per_example(const job *j, const int *pos, int np)
{
    for (int b = 1; b < j->B; b++)
        if (memcmp(pos, pos + (size_t)b * np, (size_t)np * sizeof *pos))
            return 1;
    return 0;
}

/* The resolved positions: one list when every example has the same, else
 * a list per example. */
static json_t *positions_json(const job *j, const int *pos, int np)
{
    json_t *all = json_array();
    int each = per_example(j, pos, np);
    for (int b = 0; b < (each ? j->B : 1); b++) {
        json_t *a = json_array();
        for (int i = 0; i < np; i++)
            json_array_append_new(a, json_integer(pos[b * np + i]));
        if (!each)
            return json_decref(all), a;
        json_array_append_new(all, a);
    }
    return all;
}

/* A (B, T, C) value or (B, H, T, T) attention probabilities as a result
 * tensor (host copy, then base64 or .npy), rows past each example's length
 * (for probabilities: padding queries) zeroed. */
static json_t *padded_tensor_json(ctx *c, const shim_tensor *t, const char *name, shim_status *st)
{
    const job *j = c->j;
    int nd = shim_ndim(t);
    int64_t shape[4] = {0};
    size_t n = 1;
    for (int d = 0; d < nd && d < 4; d++)
        shape[d] = shim_dim(t, d), n *= (size_t)shape[d];
    size_t row = (size_t)shape[nd - 1], per_b = n / (size_t)j->B;           /* floats per example */
    size_t groups = nd == 4 ? (size_t)shape[1] : 1, group = per_b / groups; /* heads */
    float *h = malloc(n * sizeof *h);
    json_t *r = NULL;
    if (h && !shim_to_host_f32(t, h, n, st)) {
        for (int b = 0; j->uneven && b < j->B; b++)
            for (size_t g = 0; g < groups; g++) /* rows len[b].. of each (T, row) block */
                memset(h + b * per_b + g * group + (size_t)j->len[b] * row, 0,
                       (size_t)(j->T - j->len[b]) * row * sizeof *h);
        r = tensor_json(c, name, h, shape, nd);
    }
    free(h);
    if (!r && !st->code)
        st->code = SHIM_ENOMEM;
    return r;
}

/* Full-vocabulary logits (B*np, V) on the host, as float. */
static float *logits_at(ctx *c, const shim_tensor *hidden, const int *pos, int np)
{
    shim_status st = {0};
    int64_t B = shim_dim(hidden, 0), V = c->m->cfg.vocab_size;
    shim_tensor *rows = rows_at(c, hidden, pos, np, &st);
    shim_tensor *lg = gpt2_unembed(c->m, rows, &st); /* (B*np, V) */
    float *h = st.code ? NULL : malloc((size_t)(B * np * V) * sizeof *h);
    if (h && shim_to_host_f32(lg, h, (size_t)(B * np * V), &st)) {
        free(h);
        h = NULL;
    }
    shim_free(rows);
    shim_free(lg);
    if (!h)
        shim_err(c, st.code ? &st : &(shim_status){SHIM_ENOMEM, "out of memory"});
    return h;
}

/* Like logits_at at outputs.positions; for c->runs[k], made with the next
 * runs' in one product of up to RESULT_LOGITS_ROWS rows, and then its rows
 * in c->buf (*owned 0: the caller may change them, not free them). */
static float *logits_for(ctx *c, const shim_tensor *hidden, int *owned)
{
    *owned = 1;
    const job *j = c->j;
    int64_t rows = (int64_t)j->B * j->npos, V = c->m->cfg.vocab_size;
    int k = 0;
    while (k < c->nruns && c->runs[k] != hidden)
        k++;
    if (k == c->nruns || rows >= RESULT_LOGITS_ROWS / 2) /* one at a time */
        return logits_at(c, hidden, j->positions, j->npos);
    if (k < c->at || k >= c->at + c->count) {
        int n = (int)(RESULT_LOGITS_ROWS / rows);
        n = n < c->nruns - k ? n : c->nruns - k;
        shim_status st = {0};
        shim_tensor **part = calloc((size_t)n, sizeof *part), *all = NULL, *lg = NULL;
        c->count = 0;
        if (!c->buf) /* one for every group: its pages faulted in once */
            c->buf = malloc((size_t)(RESULT_LOGITS_ROWS * V) * sizeof *c->buf);
        if (!part || !c->buf) {
            st.code = SHIM_ENOMEM;
            snprintf(st.msg, sizeof st.msg, "out of memory");
        }
        for (int i = 0; !st.code && i < n; i++)
            part[i] = rows_at(c, c->runs[k + i], j->positions, j->npos, &st);
        if (!st.code)
            all = shim_cat(part, n, 0, &st);
        if (!st.code)
            lg = gpt2_unembed(c->m, all, &st); /* (n * rows, V) */
        if (!st.code)
            shim_to_host_f32(lg, c->buf, (size_t)(n * rows * V), &st);
        for (int i = 0; part && i < n; i++)
            shim_free(part[i]);
        free(part);
        shim_free(all);
        shim_free(lg);
        if (st.code) {
            shim_err(c, &st);
            return NULL;
        }
        c->at = k, c->count = n;
    }
    *owned = 0;
    return c->buf + (size_t)(k - c->at) * (size_t)(rows * V);
}

static json_t *top_k_json(const model *m, const float *lp, size_t V, int k)
{
    json_t *arr = json_array();
    int *best = malloc((size_t)k * sizeof *best);
    int nb = 0;
    if (!best)
        return arr;
    for (size_t i = 0; i < V; i++) { /* insertion into a sorted top-k */
        if (nb == k && !(lp[i] > lp[best[nb - 1]]))
            continue;
        int p = nb < k ? nb++ : nb - 1;
        while (p > 0 && lp[i] > lp[best[p - 1]]) {
            best[p] = best[p - 1];
            p--;
        }
        best[p] = (int)i;
    }
    for (int i = 0; i < nb; i++)
        json_array_append_new(arr, json_pack("{s:i,s:o,s:o}", "id", best[i], "token",
                                             token_json(m, best[i]), "logprob",
                                             result_json_num(lp[best[i]])));
    free(best);
    return arr;
}

/* The metric of one run, per example (patch/metric.h evaluates it); ref
 * is the reference run's hidden state (input 0's plain run) when the metric
 * needs it. Returns {"per_example", "mean"}. */
static json_t *metric_json(ctx *c, const shim_tensor *hidden, const shim_tensor *ref)
{
    const job *j = c->j;
    const metric_def *md = j->metric;
    int64_t B = j->B, V = c->m->cfg.vocab_size, nt = metric_ntokens(md);
    double *val = calloc((size_t)B, sizeof *val);
    float *lg = NULL, *rl = NULL, *h = NULL;
    json_t *r = NULL;
    if (!val)
        return npp_fail(c->e, NPP_ENOMEM, "", "out of memory"), NULL;
    if (!md->full_vocab) {
        /* Only the needed columns: example b's row times its own tokens. */
        shim_status st = {0};
        int64_t *cols = malloc((size_t)(nt * B + 1) * sizeof *cols);
        h = malloc((size_t)(B * nt * B + 1) * sizeof *h);
        shim_tensor *rows = rows_at(c, hidden, j->m_pos, 1, &st), *w = NULL, *l2 = NULL;
        if (!cols || !h) {
            st.code = SHIM_ENOMEM;
            snprintf(st.msg, sizeof st.msg, "out of memory");
        }
        for (int64_t b = 0; cols && b < B; b++)
            for (int64_t k = 0; k < nt; k++)
                cols[nt * b + k] = j->m_tokens[k][b];
        if (!st.code)
            w = shim_take_rows(c->m->lm_head, cols, nt * B, &st); /* (nt*B, C) */
        l2 = shim_matmul_nt(rows, w, &st);                        /* (B, nt*B) */
        if (!st.code && !shim_to_host_f32(l2, h, (size_t)(B * nt * B), &st))
            for (int64_t b = 0; b < B; b++) {
                metric_in in = {.logits = h + b * nt * B + nt * b, /* its own columns */
                                .vocab = V,
                                .tokens = cols + nt * b};
                val[b] = md->eval(&in);
            }
        free(cols);
        shim_free(rows);
        shim_free(w);
        shim_free(l2);
        if (st.code) {
            shim_err(c, &st);
            goto done;
        }
    } else {
        if (!(lg = logits_at(c, hidden, j->m_pos, 1)))
            goto done;
        metric_log_softmax(lg, (size_t)B, (size_t)V);
        if (md->needs_ref) {
            if (!(rl = logits_at(c, ref, j->m_pos, 1)))
                goto done;
            metric_log_softmax(rl, (size_t)B, (size_t)V);
        }
        for (int64_t b = 0; b < B; b++) {
            int64_t toks[METRIC_MAX_TOKENS];
            for (int64_t k = 0; k < nt; k++)
                toks[k] = j->m_tokens[k][b];
            metric_in in = {
                .logprobs = lg + b * V, .ref = rl ? rl + b * V : NULL, .vocab = V, .tokens = toks};
            val[b] = md->eval(&in);
        }
    }
    json_t *pe = json_array();
    double mean = 0;
    for (int64_t b = 0; b < B; b++) {
        json_array_append_new(pe, result_json_num(val[b]));
        mean += val[b] / (double)B;
    }
    r = json_pack("{s:o,s:o}", "per_example", pe, "mean", result_json_num(mean));
done:
    free(val);
    free(lg);
    free(rl);
    free(h);
    return r;
}

/* outputs{} of one run (hidden (B, T, C)); tag names .npy files. */
static json_t *outputs_json(ctx *c, const shim_tensor *hidden, const char *tag, int full)
{
    const job *j = c->j;
    int64_t B = j->B, V = c->m->cfg.vocab_size, np = j->npos;
    json_t *o = json_object();
    float *lp = NULL;
    char name[64];
    int owned = 1;
    json_object_set_new(o, "positions", positions_json(j, j->positions, j->npos));
    int need = j->top_k > 0 || (full && (j->want_logits || j->ntoklp));
    if (need) {
        float *raw = logits_for(c, hidden, &owned);
        if (!raw)
            goto fail;
        if (full && j->want_logits) {
            int64_t shape[3] = {B, np, V};
            for (int64_t b = 0; b < B; b++) /* padding rows are zeros */
                for (int64_t p = 0; p < np; p++)
                    if (padding(j, b, (int)p))
                        memset(raw + (b * np + p) * V, 0, (size_t)V * sizeof *raw);
            snprintf(name, sizeof name, "%s_logits", tag);
            json_t *t = tensor_json(c, name, raw, shape, 3);
            if (!t) {
                if (owned)
                    free(raw);
                goto fail;
            }
            json_object_set_new(o, "logits", t);
        }
        metric_log_softmax(raw, (size_t)(B * np), (size_t)V);
        lp = raw;
    }
    if (j->top_k > 0) {
        json_t *tk = json_array();
        for (int64_t b = 0; b < B; b++) {
            json_t *ex = json_array();
            for (int64_t p = 0; p < np; p++)
                if (!padding(j, b, (int)p)) /* a shorter example has fewer rows */
                    json_array_append_new(
                        ex,
                        json_pack("{s:i,s:o}", "position", j->positions[b * np + p], "tokens",
                                  top_k_json(c->m, lp + (b * np + p) * V, (size_t)V, j->top_k)));
            json_array_append_new(tk, ex);
        }
        json_object_set_new(o, "top_k", tk);
    }
    if (full && j->ntoklp) {
        json_t *toks = json_array(), *vals = json_array();
        for (int t = 0; t < j->ntoklp; t++)
            json_array_append_new(toks, json_pack("{s:I,s:o}", "id", (json_int_t)j->toklp[t],
                                                  "token", token_json(c->m, j->toklp[t])));
        for (int64_t b = 0; b < B; b++) {
            json_t *ex = json_array();
            for (int64_t p = 0; p < np; p++) {
                json_t *row = padding(j, b, (int)p) ? json_null() : json_array();
                for (int t = 0; !json_is_null(row) && t < j->ntoklp; t++)
                    json_array_append_new(row, result_json_num(lp[(b * np + p) * V + j->toklp[t]]));
                json_array_append_new(ex, row);
            }
            json_array_append_new(vals, ex);
        }
        json_object_set_new(o, "token_logprobs",
                            json_pack("{s:o,s:o}", "tokens", toks, "values", vals));
    }
    if (full && j->want_hidden) {
        shim_status st = {0};
        snprintf(name, sizeof name, "%s_hidden_states", tag);
        json_t *t = padded_tensor_json(c, hidden, name, &st);
        if (!t) {
            shim_err(c, &st);
            goto fail;
        }
        json_object_set_new(o, "hidden_states", t);
    }
    if (owned)
        free(lp);
    return o;
fail:
    if (owned)
        free(lp);
    json_decref(o);
    return NULL;
}

/* Attention patterns of each input's plain run at the requested layers,
 * then (a job, not a sweep) the patched run's. */
static json_t *attention_json(ctx *c)
{
    const job *j = c->j;
    const model *m = c->m;
    json_t *arr = json_array();
    for (int k = 0; k < j->n_inputs; k++) {
        shim_status st = {0};
        const int64_t *ids = j->ids + (size_t)k * j->B * j->T;
        shim_tensor *x = gpt2_embed(m, ids, j->B, j->T, &st);
        for (int l = 0; l < m->cfg.n_layer && !st.code; l++) {
            if (cancelled(c)) {
                shim_free(x);
                json_decref(arr);
                return NULL;
            }
            int want = 0;
            for (int i = 0; i < j->nattn; i++)
                want |= j->attn_layers[i] == l;
            shim_tensor *probs = NULL;
            shim_tensor *a = gpt2_attn(m, l, x, want ? &probs : NULL, &st);
            shim_tensor *x2 = shim_add(x, a, &st);
            shim_tensor *f = gpt2_mlp(m, l, x2, &st);
            shim_tensor *x3 = shim_add(x2, f, &st);
            shim_free(a);
            shim_free(x2);
            shim_free(f);
            shim_free(x);
            x = x3;
            if (probs && !st.code) {
                char name[64];
                snprintf(name, sizeof name, "attention_input%d_layer%d", k, l);
                json_t *t = padded_tensor_json(c, probs, name, &st);
                if (t)
                    json_array_append_new(
                        arr, json_pack("{s:i,s:i,s:o}", "input", k, "layer", l, "probs", t));
            }
            shim_free(probs);
        }
        shim_free(x);
        if (st.code) {
            json_decref(arr);
            shim_err(c, &st);
            return NULL;
        }
    }
    for (int i = 0; c->o->patched_probs && i < j->nattn; i++) {
        shim_status st = {0};
        char name[64];
        if (!c->o->patched_probs[i])
            continue;
        snprintf(name, sizeof name, "attention_patched_layer%d", j->attn_layers[i]);
        json_t *t = padded_tensor_json(c, c->o->patched_probs[i], name, &st);
        if (!t) {
            json_decref(arr);
            shim_err(c, &st);
            return NULL;
        }
        json_array_append_new(arr, json_pack("{s:s,s:i,s:o}", "run", "patched", "layer",
                                             j->attn_layers[i], "probs", t));
    }
    return arr;
}

/* The index of activation (kind, layer, idx) in j->act, or -1. */
static int act_index(const job *j, int kind, int layer, int idx)
{
    for (int i = 0; i < j->nact; i++)
        if (j->act[i].kind == kind && j->act[i].layer == layer && j->act[i].idx == idx)
            return i;
    return -1;
}

/* Puts tensor t ([B, T, ...], rows past each example's length zeroed) into
 * nodes under activation i's name. */
static int put_act(ctx *c, json_t *nodes, int i, const shim_tensor *t, shim_status *st)
{
    const job *j = c->j;
    char name[96];
    if (i < 0 || st->code)
        return st->code;
    snprintf(name, sizeof name, "activation_input%d_%s", j->act_input, j->act[i].name);
    json_t *tj = padded_tensor_json(c, t, name, st);
    if (tj)
        json_object_set_new(nodes, j->act[i].name, tj);
    return st->code;
}

/* The attention sublayer of block l on x, keeping what the activations
 * ask for: head h's share z_h W_O[h] (no bias) and the probabilities. */
static shim_tensor *attn_with_heads(ctx *c, json_t *nodes, int l, const shim_tensor *x,
                                    shim_status *st)
{
    const model *m = c->m;
    const model_block *blk = &m->blocks[l];
    int64_t C = m->cfg.n_embd, H = m->cfg.n_head, D = C / H;
    int ip = act_index(c->j, -1, l, -1), heads = 0;
    for (int h = 0; h < H; h++)
        heads |= act_index(c->j, G_HEAD, l, h) >= 0;
    if (!heads) {
        shim_tensor *probs = NULL;
        shim_tensor *a = gpt2_attn(m, l, x, ip >= 0 ? &probs : NULL, st);
        put_act(c, nodes, ip, probs, st);
        shim_free(probs);
        return a;
    }
    shim_tensor *qkv = gpt2_attn_qkv(m, l, x, st), *probs = NULL;
    shim_tensor *q = shim_narrow(qkv, 2, 0, C, st), *k = shim_narrow(qkv, 2, C, C, st);
    shim_tensor *v = shim_narrow(qkv, 2, 2 * C, C, st);
    shim_tensor *z = shim_attention(q, k, v, (int)H, gpt2_attn_scale(m, l), ip >= 0 ? &probs : NULL,
                                    st); /* (B, T, C) */
    shim_tensor *a = shim_linear(z, blk->proj_w, blk->proj_b, st);
    put_act(c, nodes, ip, probs, st);
    for (int h = 0; h < H && !st->code; h++) {
        int i = act_index(c->j, G_HEAD, l, h);
        if (i < 0)
            continue;
        shim_tensor *zh = shim_narrow(z, 2, h * D, D, st);
        shim_tensor *wh = shim_narrow(blk->proj_w, 0, h * D, D, st);
        shim_tensor *oh = shim_linear(zh, wh, NULL, st); /* (B, T, C) */
        put_act(c, nodes, i, oh, st);
        shim_free(zh);
        shim_free(wh);
        shim_free(oh);
    }
    shim_free(probs);
    shim_free(qkv);
    shim_free(q);
    shim_free(k);
    shim_free(v);
    shim_free(z);
    if (st->code) {
        shim_free(a);
        return NULL;
    }
    return a;
}

/* outputs.activations: {"input": K, "nodes": {name: tensor}} from one plain
 * forward pass of input K, in the order asked. */
static json_t *activations_json(ctx *c)
{
    const job *j = c->j;
    const model *m = c->m;
    shim_status st = {0};
    json_t *nodes = json_object();
    for (int i = 0; i < j->nact; i++) /* the order asked */
        json_object_set_new(nodes, j->act[i].name, json_null());
    int last = 0; /* the last layer anything is asked of */
    for (int i = 0; i < j->nact; i++)
        last = j->act[i].layer > last ? j->act[i].layer : last;
    shim_tensor *x = gpt2_embed(m, j->ids + (size_t)j->act_input * j->B * j->T, j->B, j->T, &st);
    put_act(c, nodes, act_index(j, G_EMB, -1, -1), x, &st);
    for (int l = 0; l <= last && !st.code; l++) {
        if (cancelled(c)) {
            shim_free(x);
            json_decref(nodes);
            return NULL;
        }
        shim_tensor *a = attn_with_heads(c, nodes, l, x, &st);
        put_act(c, nodes, act_index(j, G_AHEAD, l, -1), a, &st);
        shim_tensor *x2 = shim_add(x, a, &st);
        put_act(c, nodes, act_index(j, G_A, l, -1), x2, &st);
        shim_tensor *f = gpt2_mlp(m, l, x2, &st);
        put_act(c, nodes, act_index(j, G_FHEAD, l, -1), f, &st);
        shim_tensor *x3 = shim_add(x2, f, &st);
        put_act(c, nodes, act_index(j, G_F, l, -1), x3, &st);
        shim_free(a);
        shim_free(x2);
        shim_free(f);
        shim_free(x);
        x = x3;
    }
    shim_free(x);
    if (st.code) {
        json_decref(nodes);
        shim_err(c, &st);
        return NULL;
    }
    return json_pack("{s:i,s:o}", "input", j->act_input, "nodes", nodes);
}

static json_t *inputs_json(const job *j)
{
    json_t *a = json_array();
    for (int k = 0; k < j->n_inputs; k++) {
        json_t *batch = json_array();
        for (int b = 0; b < j->B; b++) {
            json_t *ids = json_array();
            for (int t = 0; t < j->len[b]; t++)
                json_array_append_new(ids, json_integer(j->ids[((size_t)k * j->B + b) * j->T + t]));
            json_array_append_new(batch, ids);
        }
        json_array_append_new(a, batch);
    }
    return a;
}

/* The rules, outputs and metric of one patched run (the job's, or one
 * variant's): {"rules", "outputs", "metric"}. */
static json_t *patched_json(ctx *c, json_t *rules, const shim_tensor *h, const shim_tensor *kl_ref,
                            const char *tag, const int *norm, const double *plain)
{
    const job *j = c->j;
    json_t *o = outputs_json(c, h, tag, 1);
    if (!o)
        return NULL;
    json_t *res = json_pack("{s:O,s:o}", "rules", rules, "outputs", o);
    if (res && j->metric) {
        json_t *mt = metric_json(c, h, kl_ref);
        if (!mt) {
            json_decref(res);
            return NULL;
        }
        json_object_set_new(mt, "type", json_string(j->metric->name));
        json_t *mp = json_array(); /* one position, or one per example */
        for (int b = 0; b < (per_example(j, j->m_pos, 1) ? j->B : 1); b++)
            json_array_append_new(mp, json_integer(j->m_pos[b]));
        json_object_set_new(mt, "position",
                            json_array_size(mp) > 1 ? json_incref(mp)
                                                    : json_incref(json_array_get(mp, 0)));
        json_decref(mp);
        json_object_set_new(mt, "tokens", metric_tokens_json(c->m, j));
        if (plain) { /* 0: the run's own input unpatched, 1: the source's behaviour */
            double zero = plain[norm[0]], one = plain[norm[1]];
            double v = json_real_value(json_object_get(mt, "mean"));
            json_t *mean = json_object_get(mt, "mean");
            if (json_is_integer(mean))
                v = (double)json_integer_value(mean);
            json_object_set_new(mt, "normalized",
                                fabs(one - zero) > 1e-12 && json_is_number(mean)
                                    ? result_json_num((v - zero) / (one - zero))
                                    : json_null());
            json_object_set_new(mt, "normalized_by",
                                json_pack("{s:i,s:i}", "zero", norm[0], "one", norm[1]));
        }
        json_object_set_new(res, "metric", mt);
    }
    return res;
}

/* Nested lists of shape n[0..na) from the flat row-major vals[*at...]. */
static json_t *nest(json_t *flat, const int *n, int na, size_t *at)
{
    json_t *a = json_array();
    for (int i = 0; i < n[0]; i++)
        json_array_append_new(a, na == 1 ? json_incref(json_array_get(flat, (*at)++))
                                         : nest(flat, n + 1, na - 1, at));
    return a;
}

/* "grid": the axes, their values, and per cell the metric (normalized when
 * asked) and the variant's name, nested by axis. */
static json_t *grid_json(const job *j, json_t *sweep)
{
    const job_grid *g = j->grid;
    json_t *axes = json_array(), *shape = json_array(), *ticks = json_object();
    json_t *vals = json_array(), *names = json_array();
    for (int a = 0; a < g->naxes; a++) {
        json_t *t = json_array();
        for (int i = 0; i < g->n[a]; i++)
            json_array_append_new(t, json_integer(g->ticks[a][i]));
        json_array_append_new(axes, json_string(g->axis[a]));
        json_array_append_new(shape, json_integer(g->n[a]));
        json_object_set_new(ticks, g->axis[a], t);
    }
    for (size_t i = 0; i < json_array_size(sweep); i++) {
        json_t *v = json_array_get(sweep, i), *mt = json_object_get(v, "metric");
        json_array_append(vals, json_object_get(mt, j->normalize ? "normalized" : "mean"));
        json_array_append(names, json_object_get(v, "name"));
    }
    size_t a0 = 0, a1 = 0;
    json_t *r = json_pack("{s:o,s:o,s:o,s:o,s:o,s:b,s:s}", "axes", axes, "shape", shape, "ticks",
                          ticks, "values", nest(vals, g->n, g->naxes, &a0), "names",
                          nest(names, g->n, g->naxes, &a1), "normalized", j->normalize, "metric",
                          j->metric->name);
    json_decref(vals);
    json_decref(names);
    return r;
}

/* The runs whose logits logits_for makes together from now on. */
static void runs_batch(ctx *c, shim_tensor *const *runs, int n)
{
    free(c->buf);
    c->buf = NULL;
    c->runs = runs, c->nruns = n, c->at = c->count = 0;
}

int result_build(const result_opts *o, shim_tensor *const *hs, int nroots, json_t *stats,
                 json_t *trace, json_t **out, npp_err *e)
{
    ctx cc = {o->m, o->j, o, e, NULL, 0, 0, 0, NULL}, *c = &cc;
    const job *j = c->j;
    int npatched = j->nvar ? j->nvar : 1;
    const shim_tensor *kl_ref = j->metric && j->metric->needs_ref ? hs[npatched] : NULL;
    json_t *res = json_object();
    json_object_set_new(res, "model", json_string(o->model_name ? o->model_name : o->m->dir));
    json_object_set_new(res, "batch", json_integer(j->B));
    json_object_set_new(res, "tokens", json_integer(j->T));
    json_t *lens = json_array();
    for (int b = 0; b < j->B; b++)
        json_array_append_new(lens, json_integer(j->len[b]));
    json_object_set_new(res, "lengths", lens);
    json_object_set_new(res, "inputs", inputs_json(j));
    if (json_array_size(j->warnings))
        json_object_set(res, "warnings", j->warnings);
    double plain[JOB_MAX_INPUTS] = {0}; /* each input's unpatched metric mean */
    for (int k = 0; j->normalize && k < j->n_inputs; k++) {
        json_t *mt = metric_json(c, hs[nroots - j->n_inputs + k], kl_ref);
        if (!mt)
            goto fail;
        plain[k] = json_number_value(json_object_get(mt, "mean"));
        json_decref(mt);
    }
    const double *pl = j->normalize ? plain : NULL;
    if (!j->nvar) {
        json_t *p = patched_json(c, j->compiled, hs[0], kl_ref, "patched", j->norm, pl);
        if (!p)
            goto fail;
        json_object_update(res, p);
        json_decref(p);
    } else {
        json_t *sw = json_array();
        json_object_set_new(res, "sweep", sw);
        runs_batch(c, hs, j->nvar);
        for (int i = 0; i < j->nvar; i++) {
            char tag[32];
            if (cancelled(c))
                goto fail;
            snprintf(tag, sizeof tag, "variant%d", i);
            json_t *p = patched_json(c, j->var[i].compiled, hs[i], kl_ref, tag, j->var[i].norm, pl);
            if (!p)
                goto fail;
            json_object_set_new(p, "variant", json_integer(i));
            if (j->var[i].name)
                json_object_set(p, "name", j->var[i].name);
            json_array_append_new(sw, p);
        }
        runs_batch(c, NULL, 0); /* the buffer goes before attention and activations */
        if (j->grid)
            json_object_set_new(res, "grid", grid_json(j, sw));
    }
    if (j->nattn) {
        json_t *a = attention_json(c);
        if (!a)
            goto fail;
        /* a plain job's outputs hold it; a sweep's are per variant, so it
         * sits at the top, as the baselines do */
        json_object_set_new(j->nvar ? res : json_object_get(res, "outputs"), "attention", a);
    }
    if (j->nact) {
        json_t *a = activations_json(c);
        if (!a)
            goto fail;
        json_object_set_new(j->nvar ? res : json_object_get(res, "outputs"), "activations", a);
    }
    if (j->want_baselines) {
        json_t *bl = json_array();
        json_object_set_new(res, "baselines", bl);
        runs_batch(c, hs + nroots - j->n_inputs, j->n_inputs);
        for (int k = 0; k < j->n_inputs; k++) {
            char tag[32];
            if (cancelled(c))
                goto fail;
            snprintf(tag, sizeof tag, "input%d", k);
            const shim_tensor *h = hs[nroots - j->n_inputs + k];
            json_t *b = json_pack("{s:i}", "input", k);
            json_array_append_new(bl, b);
            if (j->top_k) {
                json_t *ob = outputs_json(c, h, tag, 0);
                if (!ob)
                    goto fail;
                json_object_set_new(b, "top_k", json_incref(json_object_get(ob, "top_k")));
                json_decref(ob);
            }
            if (j->metric) {
                json_t *mt = metric_json(c, h, kl_ref);
                if (!mt)
                    goto fail;
                json_object_set_new(b, "metric", mt);
            }
        }
        runs_batch(c, NULL, 0);
    }
    json_object_set_new(res, "stats", json_incref(stats));
    if (trace)
        json_object_set_new(res, "trace", json_incref(trace));
    free(c->buf);
    *out = res;
    return 0;
fail:
    free(c->buf);
    json_decref(res);
    return c->e && c->e->code ? c->e->code : NPP_ENOMEM;
}

/* ---- the estimate ------------------------------------------------------------ */

#define JSON_NUM_MEM  64  /* a number in jansson's memory, with its array slot */
#define JSON_OBJ_MEM  320 /* a small object (a few keys) in jansson's memory */
#define JSON_NUM_TEXT 26  /* a number as text: "-1.2345678901234567e-123," */

static size_t b64_len(size_t bytes)
{
    return (bytes + 2) / 3 * 4;
}

/* The largest of several contributions, and the field it comes from. */
typedef struct {
    size_t bytes;
    const char *field;
} part;

static void take(part *best, size_t bytes, const char *field)
{
    if (bytes > best->bytes)
        best->bytes = bytes, best->field = field;
}

/* The result tree grows while outputs are built: kept is what it holds,
 * peak the high-water mark of kept plus what the step in progress holds. */
typedef struct {
    size_t kept, peak, text; /* text: the document's length */
} sim;

static void step_holds(sim *s, size_t transient)
{
    if (s->kept + transient > s->peak)
        s->peak = s->kept + transient;
}

/* Building one run's outputs as outputs_json and metric_json do, step by
 * step; full: a patched run (else a baseline). mem/res get the run's
 * largest part in memory and in the document. */
static void estimate_run(const model *m, const job *j, int full, sim *s, part *mem, part *res)
{
    size_t B = (size_t)j->B, np = (size_t)j->npos, V = (size_t)m->cfg.vocab_size;
    size_t C = (size_t)m->cfg.n_embd, T = (size_t)j->T, e = shim_dtype_size(m->dtype);
    size_t tok_text = 6 * m->max_token_bytes + 2; /* escaped, quoted */
    size_t raw = 0;                               /* the logits on the host, while kept */
    s->kept += B * np * JSON_NUM_MEM, s->text += B * np * 8; /* positions, per example at most */
    if (j->top_k > 0 || (full && (j->want_logits || j->ntoklp))) {
        raw = B * np * V * 4;
        /* rows, logits, their host copy: one run's, or RESULT_LOGITS_ROWS
         * of several runs' (their copy counted in kept: logits_rows) */
        size_t rows = B * np < RESULT_LOGITS_ROWS / 2 ? RESULT_LOGITS_ROWS : B * np;
        step_holds(s, rows * (C + V) * e + raw);
        if (full && j->want_logits) { /* base64, and jansson's copy of it */
            size_t b = b64_len(raw);
            step_holds(s, raw + 2 * b);
            s->kept += b, s->text += b + 64;
            take(mem, b, "outputs.logits");
            take(res, b, "outputs.logits");
        }
    }
    if (j->top_k) {
        size_t rows = B * np, per = JSON_OBJ_MEM + 2 * JSON_NUM_MEM + 64 + tok_text;
        size_t km = rows * (JSON_OBJ_MEM + (size_t)j->top_k * per);
        size_t kt = rows * (32 + (size_t)j->top_k * (44 + tok_text));
        s->kept += km, s->text += kt;
        step_holds(s, raw);
        take(mem, km, "outputs.top_k");
        take(res, kt, "outputs.top_k");
    }
    if (full && j->ntoklp) {
        size_t n = B * np * (size_t)j->ntoklp;
        s->kept += n * JSON_NUM_MEM + (size_t)j->ntoklp * (JSON_OBJ_MEM + tok_text);
        s->text += n * JSON_NUM_TEXT + (size_t)j->ntoklp * (24 + tok_text);
        step_holds(s, raw);
        take(mem, n * JSON_NUM_MEM, "outputs.token_logprobs");
        take(res, n * JSON_NUM_TEXT, "outputs.token_logprobs");
    }
    if (full && j->want_hidden) { /* host copy, base64, jansson's copy */
        size_t h = B * T * C * 4, b = b64_len(h);
        step_holds(s, raw + h + 2 * b);
        s->kept += b, s->text += b + 64;
        take(mem, b, "outputs.hidden_states");
        take(res, b, "outputs.hidden_states");
    }
    if (j->metric) {
        int full_v = j->metric->full_vocab;
        step_holds(s, full_v ? (j->metric->needs_ref ? 2 : 1) * B * (V * (e + 4) + C * e)
                             : 4 * B * (C + B) * e);
        s->kept += B * JSON_NUM_MEM + JSON_OBJ_MEM, s->text += B * JSON_NUM_TEXT + 96;
        if (full) { /* the tokens it resolved: one per field and example at most */
            size_t n = (size_t)metric_ntokens(j->metric) * B;
            s->kept += n * (JSON_OBJ_MEM + JSON_NUM_MEM + tok_text);
            s->text += n * (JSON_NUM_TEXT + tok_text + 24);
        }
    }
}

/* The host copy of several runs' logits that logits_for keeps while the
 * runs' outputs are built. */
static size_t logits_rows(const model *m, const job *j)
{
    int any = j->top_k > 0 || j->want_logits || j->ntoklp;
    return any && (size_t)j->B * (size_t)j->npos < RESULT_LOGITS_ROWS / 2
               ? RESULT_LOGITS_ROWS * (size_t)m->cfg.vocab_size * 4
               : 0;
}

static size_t json_text_len(const json_t *j)
{
    return j ? json_dumpb(j, NULL, 0, JSON_COMPACT) : 0;
}

void result_estimate(const model *m, const job *j, size_t value_bytes, size_t nvalues,
                     result_size *out)
{
    part mem = {0, NULL}, res = {0, NULL};
    /* the patched runs one after another, then attention, baselines and
     * the trace; what each keeps stays in the result tree */
    sim s = {0, 0, 1024};
    int npatched = j->nvar ? j->nvar : 1;
    if (j->nattn && !j->nvar) /* the patched run's probabilities, computed before, held */
        s.kept = (size_t)j->nattn * (size_t)j->B * (size_t)m->cfg.n_head * (size_t)j->T *
                 (size_t)j->T * 4;       /* float32 */
    part pm = {0, NULL}, pr = {0, NULL}; /* one variant's largest parts */
    size_t batch = logits_rows(m, j);
    s.kept += batch;
    for (int i = 0; i < npatched; i++) {
        estimate_run(m, j, 1, &s, i ? &(part){0, NULL} : &pm, i ? &(part){0, NULL} : &pr);
        s.text += json_text_len(j->nvar ? j->var[i].compiled : j->compiled) + 64;
    }
    s.kept -= batch;
    take(&mem, pm.bytes * (size_t)npatched, pm.field);
    take(&res, pr.bytes * (size_t)npatched, pr.field);
    size_t B = (size_t)j->B, T = (size_t)j->T, H = (size_t)m->cfg.n_head, vb = value_bytes;
    if (j->nattn) {
        int layers = 0;
        for (int l = 0; l < m->cfg.n_layer; l++)
            for (int a = 0; a < j->nattn; a++)
                if (j->attn_layers[a] == l) {
                    layers++;
                    break;
                }
        /* each input's plain forward, its attention unchunked: residuals,
         * the sublayers' temporaries (a dozen (B, T, C)), the scores and
         * probabilities, then the probabilities' host copy and text */
        /* each input's plain run, and a job's patched run (its probabilities
         * computed again from the trunk's sources, which the job keeps) */
        size_t probs = B * H * T * T * 4, b = b64_len(probs);
        size_t each = ((size_t)j->n_inputs + (j->nvar ? 0 : 1)) * layers;
        for (size_t k = 0; k < each; k++) {
            step_holds(&s, 16 * vb + 2 * probs + 2 * b);
            s.kept += b, s.text += b + 96;
        }
        take(&mem, each * b, "outputs.attention");
        take(&res, each * b, "outputs.attention");
    }
    if (j->nact) { /* one plain forward; each node's host copy, base64 and its copy */
        size_t all = 0;
        for (int i = 0; i < j->nact; i++) {
            size_t bytes = (j->act[i].kind < 0 ? B * H * T * T : B * T * (size_t)m->cfg.n_embd) * 4,
                   b = b64_len(bytes);
            step_holds(&s, 16 * vb + 2 * bytes + 2 * b);
            s.kept += b, s.text += b + 128, all += b;
        }
        take(&mem, all, "outputs.activations");
        take(&res, all, "outputs.activations");
    }
    s.kept += j->want_baselines ? batch : 0;
    for (int i = 0; j->want_baselines && i < j->n_inputs; i++) {
        estimate_run(m, j, 0, &s, &mem, &res);
        s.text += 32;
    }
    s.kept -= j->want_baselines ? batch : 0;
    if (j->want_trace) {
        s.kept += nvalues * (JSON_OBJ_MEM + 4 * JSON_NUM_MEM), s.text += nvalues * 72;
        take(&mem, nvalues * (JSON_OBJ_MEM + 4 * JSON_NUM_MEM), "outputs.trace");
        take(&res, nvalues * 72, "outputs.trace");
    }
    step_holds(&s, 0);
    s.text += (size_t)j->n_inputs * B * (T * 7 + 4); /* the inputs, echoed */
    s.text += B * 8;                                 /* lengths */
    if (j->grid) /* each cell's value and name, twice (the sweep has them too) */
        s.kept += (size_t)j->nvar * 2 * JSON_NUM_MEM, s.text += (size_t)j->nvar * 96;
    s.text += json_text_len(j->warnings); /* held by the job already */
    out->peak_bytes = s.peak;
    out->text_bytes = s.text;
    out->largest_bytes = mem.bytes;
    out->largest_field = mem.field ? mem.field : "outputs";
    out->text_field = res.field ? res.field : "outputs";
}
