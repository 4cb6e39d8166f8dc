/* gpt2.c - GPT-2's forward pass; see gpt2.h. Numerics follow
 * HuggingFace's GPT2Model: scores divided (not multiplied) by the scale,
 * softmax in float32, Conv1D weights applied as x @ W + b. */
#include "model/gpt2.h"

#include <math.h>

shim_tensor *gpt2_embed(const model *m, const int64_t *ids, int64_t B, int64_t T, shim_status *st)
{
    return shim_embed(m->wte, m->wpe, ids, B, T, st); /* (B, T, C) */
}

double gpt2_attn_scale(const model *m, int layer)
{
    double s = m->cfg.scale_attn_weights ? sqrt((double)(m->cfg.n_embd / m->cfg.n_head)) : 1.0;
    return m->cfg.scale_by_layer ? s * (layer + 1) : s;
}

shim_tensor *gpt2_attn_qkv(const model *m, int layer, const shim_tensor *x, shim_status *st)
{
    const model_block *b = &m->blocks[layer];
    shim_tensor *h = shim_layernorm(x, b->ln_1_w, b->ln_1_b, m->cfg.ln_eps, st); /* (N, T, C) */
    shim_tensor *qkv = shim_linear(h, b->attn_w, b->attn_b, st);                 /* (N, T, 3C) */
    shim_free(h);
    return qkv;
}

shim_tensor *gpt2_attn_out(const model *m, int layer, const shim_tensor *q, const shim_tensor *k,
                           const shim_tensor *v, shim_tensor **probs, shim_status *st)
{
    const model_block *b = &m->blocks[layer];
    shim_tensor *z = shim_attention(q, k, v, m->cfg.n_head, gpt2_attn_scale(m, layer), probs,
                                    st);                       /* (N, T, C) */
    shim_tensor *y = shim_linear(z, b->proj_w, b->proj_b, st); /* (N, T, C) */
    shim_free(z);
    return y;
}

shim_tensor *gpt2_attn(const model *m, int layer, const shim_tensor *x, shim_tensor **probs,
                       shim_status *st)
{
    int64_t C = m->cfg.n_embd;
    shim_tensor *qkv = gpt2_attn_qkv(m, layer, x, st); /* (B, T, 3C) */
    shim_tensor *q = shim_narrow(qkv, 2, 0, C, st);    /* (B, T, C) views */
    shim_tensor *k = shim_narrow(qkv, 2, C, C, st);
    shim_tensor *v = shim_narrow(qkv, 2, 2 * C, C, st);
    shim_tensor *y = gpt2_attn_out(m, layer, q, k, v, probs, st); /* (B, T, C) */
    shim_free(qkv);
    shim_free(q);
    shim_free(k);
    shim_free(v);
    return y;
}

/* Each temporary is freed as soon as the next step has it, and GELU runs in
 * place: one (B, T, I) tensor is alive at a time (ops.c's mlp_cost). */
shim_tensor *gpt2_mlp(const model *m, int layer, const shim_tensor *x, shim_status *st)
{
    const model_block *b = &m->blocks[layer];
    shim_tensor *h = shim_layernorm(x, b->ln_2_w, b->ln_2_b, m->cfg.ln_eps, st); /* (B, T, C) */
    shim_tensor *u = shim_linear(h, b->fc_w, b->fc_b, st);                       /* (B, T, I) */
    shim_free(h);
    if (u && shim_grad_enabled()) { /* backward needs GELU's input */
        shim_tensor *g = shim_gelu(u, m->cfg.gelu_tanh, st);
        shim_free(u);
        u = g;
    } else if (u) {
        shim_gelu_(u, m->cfg.gelu_tanh, st);
    }
    shim_tensor *y = shim_linear(u, b->mproj_w, b->mproj_b, st); /* (B, T, C) */
    shim_free(u);
    return y;
}

shim_tensor *gpt2_ln_f(const model *m, const shim_tensor *x, shim_status *st)
{
    return shim_layernorm(x, m->ln_f_w, m->ln_f_b, m->cfg.ln_eps, st);
}

shim_tensor *gpt2_unembed(const model *m, const shim_tensor *h, shim_status *st)
{
    return shim_matmul_nt(h, m->lm_head, st); /* (N, V) */
}

/* x += sublayer(x), replacing the handle. */
static void residual_add(shim_tensor **x, shim_tensor *y, shim_status *st)
{
    shim_tensor *s = shim_add(*x, y, st);
    shim_free(y);
    if (s) {
        shim_free(*x);
        *x = s;
    }
}

int gpt2_forward(const model *m, const int64_t *ids, int64_t B, int64_t T, shim_tensor **hidden,
                 shim_tensor **logits, npp_err *e)
{
    if (hidden)
        *hidden = NULL;
    if (logits)
        *logits = NULL;
    if (B <= 0 || T <= 0)
        return npp_fail(e, NPP_EINVAL, "tokens", "no tokens to run");
    if (T > m->cfg.n_positions)
        return npp_fail(e, NPP_EINVAL, "tokens", "%lld tokens, but the model's context is %d",
                        (long long)T, m->cfg.n_positions);
    for (int64_t i = 0; i < B * T; i++)
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab_size)
            return npp_fail(e, NPP_EINVAL, "tokens",
                            "token id %lld at index %lld is outside the vocabulary (0..%d)",
                            (long long)ids[i], (long long)i, m->cfg.vocab_size - 1);
    shim_status st = {0};
    shim_tensor *x = gpt2_embed(m, ids, B, T, &st); /* (B, T, C) */
    for (int l = 0; l < m->cfg.n_layer && !st.code; l++) {
        residual_add(&x, gpt2_attn(m, l, x, NULL, &st), &st);
        residual_add(&x, gpt2_mlp(m, l, x, &st), &st);
    }
    shim_tensor *h = gpt2_ln_f(m, x, &st); /* (B, T, C) */
    shim_free(x);
    if (logits && !st.code) {
        int64_t flat[2] = {B * T, m->cfg.n_embd};
        shim_tensor *h2 = shim_reshape(h, flat, 2, &st); /* (B*T, C) */
        *logits = gpt2_unembed(m, h2, &st);              /* (B*T, V) */
        shim_free(h2);
    }
    if (st.code) {
        shim_free(h);
        if (logits) {
            shim_free(*logits);
            *logits = NULL;
        }
        return npp_fail_shim(e, &st);
    }
    if (hidden)
        *hidden = h;
    else
        shim_free(h);
    return 0;
}
