/* mkmodel.h - writes a random GPT-2 checkpoint in exactly HuggingFace's
 * layout (config.json with GPT2Config's keys, model.safetensors with HF's
 * tensor names and Conv1D [in, out] weights, no lm_head: tied), plus the
 * real GPT-2 vocabulary copied from a folder holding encoder.json and
 * vocab.bpe (as vocab.json and merges.txt). The weights depend only on
 * the seed and the shape options, so tests can make the same model twice.
 *
 * Init: weights N(0, init_std) (c_proj layers N(0, init_std/sqrt(2L)) as
 * GPT-2 does), biases N(0, init_std), layer-norm gains 1 + N(0, 0.1) and
 * biases N(0, 0.02): all non-trivial, so a test sees every parameter. */
#ifndef NPP_MKMODEL_H
#define NPP_MKMODEL_H

#include <stdint.h>

#include "base/err.h"

typedef struct {
    const char *out_dir;   /* created if missing */
    const char *vocab_dir; /* holds encoder.json + vocab.bpe (or vocab.json + merges.txt) */
    int layers, heads, embd, positions; /* required, > 0 */
    int inner;                          /* 0: 4 x embd, written as "n_inner": null */
    uint64_t seed;
    const char *dtype;  /* "f32" (default), "f16" or "bf16" on disk */
    const char *prefix; /* tensor name prefix, "" (default) or "transformer." */
    double init_std;    /* 0: 0.02 */
    int untied;         /* write lm_head.weight as its own random tensor */
} mkmodel_opts;

int mkmodel_write(const mkmodel_opts *o, npp_err *e);

/* Round-to-nearest-even conversions used for F16 / BF16 files. */
uint16_t mkmodel_f32_to_f16(float f);
uint16_t mkmodel_f32_to_bf16(float f);

#endif
