/* gpt2.h - GPT-2's forward pass over a loaded model, written as the model
 * reads: embed, then per block attention and MLP sublayers added to the
 * residual stream, then ln_f and the unembedding.
 *
 * The sublayer functions are exposed because the path-patching executor
 * calls them on residual streams assembled from different inputs.
 * Tensors returned are new (shim_free); arguments are borrowed. On error
 * the functions return NULL and leave the reason in st (sticky, see
 * shim.h). */
#ifndef NPP_GPT2_H
#define NPP_GPT2_H

#include "base/err.h"
#include "model/model.h"

/* Token + position embedding of ids (B*T, row-major) -> (B, T, C). */
shim_tensor *gpt2_embed(const model *m, const int64_t *ids, int64_t B, int64_t T, shim_status *st);
/* Attention sublayer of block `layer` on residual x (B, T, C):
 * ln_1 -> causal attention -> c_proj. probs (optional) gets (B, H, T, T). */
shim_tensor *gpt2_attn(const model *m, int layer, const shim_tensor *x, shim_tensor **probs,
                       shim_status *st);
/* The attention sublayer's two halves, shared with the path-patching
 * executor (which feeds each head's query, key and value from its own
 * source): ln_1 then c_attn, x (N, T, C) -> (N, T, 3C) with q | k | v side
 * by side; and the attention core then c_proj, q, k, v (N, T, C) ->
 * (N, T, C), probs as in gpt2_attn. gpt2_attn is the one after the other. */
shim_tensor *gpt2_attn_qkv(const model *m, int layer, const shim_tensor *x, shim_status *st);
shim_tensor *gpt2_attn_out(const model *m, int layer, const shim_tensor *q, const shim_tensor *k,
                           const shim_tensor *v, shim_tensor **probs, shim_status *st);
/* MLP sublayer of block `layer` on residual x (B, T, C): ln_2 -> fc ->
 * gelu -> proj. */
shim_tensor *gpt2_mlp(const model *m, int layer, const shim_tensor *x, shim_status *st);
/* Divisor of attention scores in block `layer` (sqrt(head dim), etc.). */
double gpt2_attn_scale(const model *m, int layer);
/* ln_f of x (..., C). */
shim_tensor *gpt2_ln_f(const model *m, const shim_tensor *x, shim_status *st);
/* Logits of final hidden states h (N, C) -> (N, V). */
shim_tensor *gpt2_unembed(const model *m, const shim_tensor *h, shim_status *st);

/* The plain forward pass of ids (B, T). *hidden (if not NULL) gets the
 * states after ln_f (B, T, C); *logits (if not NULL) gets (B*T, V).
 * Checks ids against the vocabulary and T against n_positions. */
int gpt2_forward(const model *m, const int64_t *ids, int64_t B, int64_t T, shim_tensor **hidden,
                 shim_tensor **logits, npp_err *e);

#endif
