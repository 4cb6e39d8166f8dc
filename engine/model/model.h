/* model.h - a GPT-2 checkpoint in HuggingFace's layout, resident on a
 * device: config.json + model.safetensors + vocab.json + merges.txt.
 *
 *     model_opts o = {.device = "cpu", .dtype = "f32"};
 *     model *m;
 *     if (model_load("path/to/gpt2", &o, &m, &err)) { print(err.message); }
 *     ... m->cfg.n_layer, m->blocks[i].attn_w, m->tok ...
 *     model_free(m);
 *
 * What the loader accepts: F32, F16 or BF16 tensors on disk (converted to
 * the requested dtype), names with or without a "transformer." prefix,
 * the attn.bias / attn.masked_bias buffers (skipped), lm_head.weight
 * (used if present, else tied to wte), n_inner (4 x n_embd when null).
 * Everything else is checked against the config and refused with an error
 * naming the file, the tensor and the problem. vocab.json / merges.txt may
 * also be named encoder.json / vocab.bpe (OpenAI's names).
 *
 * A loaded model is immutable; any number of threads may read it. */
#ifndef NPP_MODEL_H
#define NPP_MODEL_H

#include "base/err.h"
#include "model/tok.h"
#include "shim.h"

#define MODEL_MAX_LAYERS 256
#define MODEL_MAX_HEADS  256

typedef struct {
    int n_layer, n_head, n_embd, n_positions, vocab_size, n_inner;
    double ln_eps;
    int gelu_tanh;          /* 1 for gelu_new / gelu_pytorch_tanh, 0 for exact gelu */
    int scale_attn_weights; /* divide scores by sqrt(head dim) (default 1) */
    int scale_by_layer;     /* scale_attn_by_inverse_layer_idx (default 0) */
} model_config;

typedef struct {
    shim_tensor *ln_1_w, *ln_1_b;   /* (C) */
    shim_tensor *attn_w, *attn_b;   /* (C, 3C), (3C): q | k | v side by side */
    shim_tensor *proj_w, *proj_b;   /* (C, C), (C) */
    shim_tensor *ln_2_w, *ln_2_b;   /* (C) */
    shim_tensor *fc_w, *fc_b;       /* (C, I), (I) */
    shim_tensor *mproj_w, *mproj_b; /* (I, C), (C) */
} model_block;

typedef struct {
    char *dir;
    model_config cfg;
    shim_device device;
    shim_dtype dtype;
    shim_tensor *wte;             /* (V, C) */
    shim_tensor *wpe;             /* (P, C) */
    shim_tensor *ln_f_w, *ln_f_b; /* (C) */
    shim_tensor *lm_head;         /* (V, C); == wte (borrowed) when tied */
    model_block *blocks;          /* n_layer of them */
    tok *tok;
    size_t param_bytes;     /* device memory held by the weights */
    size_t max_token_bytes; /* the longest token, in bytes (bounds a result's size) */
    /* SHA-256 of config.json, the safetensors header and the compute dtype:
     * names this model in content keys (plan.h). */
    unsigned char fingerprint[32];
} model;

typedef struct {
    const char *device; /* "cpu" (default), "cuda", "cuda:N" */
    const char *dtype;  /* "f32" (default), "f16", "bf16" */
} model_opts;

/* Loads dir. *out is new; release with model_free. */
int model_load(const char *dir, const model_opts *opts, model **out, npp_err *e);
void model_free(model *m); /* NULL is fine */

/* Loads only the tokenizer of a model folder. *out is new (tok_free). */
int model_tok_load(const char *dir, tok **out, npp_err *e);

/* Parses config.json (path) into cfg. Exposed for tests and tools. */
int model_config_load(const char *path, model_config *cfg, npp_err *e);

#endif
