/* model.c - loads a HuggingFace GPT-2 folder onto a device; see model.h.
 * The safetensors file is validated by st.c; this file checks names and
 * shapes against config.json and hands each tensor to the shim. */
#include "model/model.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/sha256.h"
#include "io/st.h"
#include "model/gpt2.h"

enum { G_WTE, G_WPE, G_LNF_W, G_LNF_B, G_LM_HEAD, N_GLOBAL };
static const char *GLOBAL_NAMES[N_GLOBAL] = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias",
                                             "lm_head.weight"};
enum { N_PART = 12 };
static const char *PART_NAMES[N_PART] = {
    "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
    "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias",
};

/* ---- config.json ----------------------------------------------------- */

static int get_int(json_t *root, const char *key, int def, int lo, int hi, int *out,
                   const char *path, npp_err *e)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (def < 0)
            return npp_fail(e, NPP_EFORMAT, path, "%s: missing \"%s\"", path, key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return npp_fail(e, NPP_EFORMAT, path, "%s: \"%s\" must be an integer in [%d, %d]", path,
                        key, lo, hi);
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_bool(json_t *root, const char *key, int def, int *out, const char *path, npp_err *e)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return npp_fail(e, NPP_EFORMAT, path, "%s: \"%s\" must be true or false", path, key);
    *out = json_is_true(v);
    return 0;
}

int model_config_load(const char *path, model_config *c, npp_err *e)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    int rc = 0;
    memset(c, 0, sizeof *c);
    if (!root)
        return npp_fail(e, NPP_EFORMAT, path, "%s: not valid JSON: %s (line %d)", path, je.text,
                        je.line);
    if (!json_is_object(root)) {
        rc = npp_fail(e, NPP_EFORMAT, path, "%s: not a JSON object", path);
        goto fail;
    }
    json_t *mt = json_object_get(root, "model_type");
    if (mt && (!json_is_string(mt) || strcmp(json_string_value(mt), "gpt2") != 0)) {
        rc = npp_fail(e, NPP_EFORMAT, path, "%s: model_type is not \"gpt2\"", path);
        goto fail;
    }
    int npos_ctx = 0, reorder = 0, cross = 0;
    if ((rc = get_int(root, "n_layer", -1, 1, MODEL_MAX_LAYERS, &c->n_layer, path, e)) ||
        (rc = get_int(root, "n_head", -1, 1, MODEL_MAX_HEADS, &c->n_head, path, e)) ||
        (rc = get_int(root, "n_embd", -1, 1, 65536, &c->n_embd, path, e)) ||
        (rc = get_int(root, "vocab_size", -1, 1, 1 << 22, &c->vocab_size, path, e)) ||
        (rc = get_int(root, "n_ctx", 0, 0, 1 << 20, &npos_ctx, path, e)) ||
        (rc = get_int(root, "n_positions", npos_ctx ? npos_ctx : -1, 1, 1 << 20, &c->n_positions,
                      path, e)) ||
        (rc = get_int(root, "n_inner", 0, 1, 1 << 20, &c->n_inner, path, e)) ||
        (rc = get_bool(root, "scale_attn_weights", 1, &c->scale_attn_weights, path, e)) ||
        (rc = get_bool(root, "scale_attn_by_inverse_layer_idx", 0, &c->scale_by_layer, path, e)) ||
        (rc = get_bool(root, "reorder_and_upcast_attn", 0, &reorder, path, e)) ||
        (rc = get_bool(root, "add_cross_attention", 0, &cross, path, e)))
        goto fail;
    if (cross) {
        rc = npp_fail(e, NPP_EFORMAT, path, "%s: add_cross_attention is not supported", path);
        goto fail;
    }
    if (reorder) { /* GPT-2 checkpoints have false: it changes how the scores are rounded */
        rc = npp_fail(e, NPP_EFORMAT, path,
                      "%s: reorder_and_upcast_attn true is not supported (the scores' matmul "
                      "runs in the compute dtype)",
                      path);
        goto fail;
    }
    if (c->n_embd % c->n_head) {
        rc = npp_fail(e, NPP_EFORMAT, path, "%s: n_embd %d is not a multiple of n_head %d", path,
                      c->n_embd, c->n_head);
        goto fail;
    }
    if (!c->n_inner)
        c->n_inner = 4 * c->n_embd;
    json_t *eps = json_object_get(root, "layer_norm_epsilon");
    c->ln_eps = 1e-5;
    if (eps && !json_is_null(eps)) {
        if (!json_is_number(eps) || json_number_value(eps) <= 0 || json_number_value(eps) > 1) {
            rc = npp_fail(e, NPP_EFORMAT, path, "%s: layer_norm_epsilon must be in (0, 1]", path);
            goto fail;
        }
        c->ln_eps = json_number_value(eps);
    }
    json_t *act = json_object_get(root, "activation_function");
    const char *a = act && json_is_string(act) ? json_string_value(act) : "gelu_new";
    if (act && !json_is_string(act) && !json_is_null(act)) {
        rc = npp_fail(e, NPP_EFORMAT, path, "%s: activation_function must be a string", path);
        goto fail;
    }
    if (!strcmp(a, "gelu_new") || !strcmp(a, "gelu_pytorch_tanh")) {
        c->gelu_tanh = 1;
    } else if (!strcmp(a, "gelu")) {
        c->gelu_tanh = 0;
    } else {
        rc = npp_fail(e, NPP_EFORMAT, path,
                      "%s: activation_function \"%s\" is not supported (gelu_new, "
                      "gelu_pytorch_tanh or gelu)",
                      path, a);
        goto fail;
    }
fail:
    json_decref(root);
    return rc;
}

/* ---- tensors ----------------------------------------------------------- */

static void expected_shape(const model_config *c, int slot, int64_t sh[2], int *nd)
{
    int64_t C = c->n_embd, I = c->n_inner;
    *nd = 1;
    if (slot < N_GLOBAL) {
        switch (slot) {
        case G_WTE:
        case G_LM_HEAD: sh[0] = c->vocab_size, sh[1] = C, *nd = 2; return;
        case G_WPE: sh[0] = c->n_positions, sh[1] = C, *nd = 2; return;
        default: sh[0] = C; return;
        }
    }
    switch ((slot - N_GLOBAL) % N_PART) {
    case 2: sh[0] = C, sh[1] = 3 * C, *nd = 2; return;
    case 3: sh[0] = 3 * C; return;
    case 4: sh[0] = C, sh[1] = C, *nd = 2; return;
    case 8: sh[0] = C, sh[1] = I, *nd = 2; return;
    case 9: sh[0] = I; return;
    case 10: sh[0] = I, sh[1] = C, *nd = 2; return;
    default: sh[0] = C; return;
    }
}

/* Canonical slot of a tensor name (prefix already stripped); -1 for a
 * buffer to skip, -2 for a name that does not belong. */
static int slot_of(const model_config *c, const char *name)
{
    for (int g = 0; g < N_GLOBAL; g++)
        if (!strcmp(name, GLOBAL_NAMES[g]))
            return g;
    int layer, off = 0;
    if (sscanf(name, "h.%d.%n", &layer, &off) != 1 || off == 0 || layer < 0 || layer >= c->n_layer)
        return -2;
    char canon[32];
    snprintf(canon, sizeof canon, "h.%d.", layer);
    if (strncmp(name, canon, strlen(canon)) != 0) /* refuse "h.01." and "h. 1." */
        return -2;
    const char *part = name + off;
    if (!strcmp(part, "attn.bias") || !strcmp(part, "attn.masked_bias"))
        return -1;
    for (int p = 0; p < N_PART; p++)
        if (!strcmp(part, PART_NAMES[p]))
            return N_GLOBAL + layer * N_PART + p;
    return -2;
}

static shim_tensor **slot_ptr(model *m, int slot)
{
    switch (slot) {
    case G_WTE: return &m->wte;
    case G_WPE: return &m->wpe;
    case G_LNF_W: return &m->ln_f_w;
    case G_LNF_B: return &m->ln_f_b;
    case G_LM_HEAD: return &m->lm_head;
    }
    model_block *b = &m->blocks[(slot - N_GLOBAL) / N_PART];
    shim_tensor **parts[N_PART] = {&b->ln_1_w, &b->ln_1_b, &b->attn_w,  &b->attn_b,
                                   &b->proj_w, &b->proj_b, &b->ln_2_w,  &b->ln_2_b,
                                   &b->fc_w,   &b->fc_b,   &b->mproj_w, &b->mproj_b};
    return parts[(slot - N_GLOBAL) % N_PART];
}

static int load_tensor(model *m, const st_tensor *t, int slot, const char *file, npp_err *e)
{
    int64_t sh[2];
    int nd;
    expected_shape(&m->cfg, slot, sh, &nd);
    int ok = t->ndim == nd;
    for (int i = 0; ok && i < nd; i++)
        ok = t->shape[i] == sh[i];
    if (!ok) {
        char got[96] = "", want[64];
        for (int i = 0, n = 0; i < t->ndim && n < 80; i++)
            n += snprintf(got + n, sizeof got - (size_t)n, "%s%lld", i ? ", " : "",
                          (long long)t->shape[i]);
        if (nd == 2)
            snprintf(want, sizeof want, "%lld, %lld", (long long)sh[0], (long long)sh[1]);
        else
            snprintf(want, sizeof want, "%lld", (long long)sh[0]);
        return npp_fail(e, NPP_EFORMAT, file,
                        "%s: tensor '%s': shape [%s] but config.json implies [%s]", file, t->name,
                        got, want);
    }
    shim_dtype src;
    switch (t->dtype) {
    case ST_F32: src = SHIM_F32; break;
    case ST_F16: src = SHIM_F16; break;
    case ST_BF16: src = SHIM_BF16; break;
    default:
        return npp_fail(e, NPP_EFORMAT, file,
                        "%s: tensor '%s': dtype %s is not supported (F32, F16 or BF16)", file,
                        t->name, st_dtype_name(t->dtype));
    }
    shim_status st = {0};
    shim_tensor *x = shim_from_host(t->data, src, t->shape, t->ndim, m->device, m->dtype, &st);
    if (!x)
        return npp_fail(e, npp_shim_code(st.code), file, "%s: tensor '%s': %s", file, t->name,
                        st.msg);
    *slot_ptr(m, slot) = x;
    m->param_bytes += shim_nbytes(x);
    return 0;
}

/* The model's name in content keys: config.json, the tensor index (names,
 * dtypes, shapes, offsets) and the compute dtype. The weights' bytes are
 * not hashed (too slow for large models); caches belong to one loaded model,
 * so this only has to tell models apart within one process. */
static void fingerprint(model *m, const st_file *f)
{
    sha256_ctx c;
    size_t hl;
    const void *hdr = st_header(f, &hl);
    char path[4096], buf[4096];
    snprintf(path, sizeof path, "%s/config.json", m->dir);
    sha256_init(&c);
    FILE *fp = fopen(path, "rb");
    size_t n;
    while (fp && (n = fread(buf, 1, sizeof buf, fp)) > 0)
        sha256_update(&c, buf, n);
    if (fp)
        fclose(fp);
    sha256_update(&c, hdr, hl);
    sha256_update(&c, shim_dtype_name(m->dtype), strlen(shim_dtype_name(m->dtype)));
    sha256_final(&c, m->fingerprint);
}

static int load_weights(model *m, const char *path, npp_err *e)
{
    const char *file = "model.safetensors";
    st_file *f = NULL;
    int nslots = N_GLOBAL + m->cfg.n_layer * N_PART, rc;
    const char **seen = calloc((size_t)nslots, sizeof *seen);
    if (!seen)
        return npp_fail(e, NPP_ENOMEM, file, "out of memory");
    if ((rc = st_open(path, file, &f, e)))
        goto fail;
    fingerprint(m, f);
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        const char *name = t->name;
        if (!strncmp(name, "transformer.", 12))
            name += 12;
        int slot = slot_of(&m->cfg, name);
        if (slot == -1)
            continue;
        if (slot == -2) {
            rc = npp_fail(e, NPP_EFORMAT, file,
                          "%s: tensor '%s' is not part of a %d-layer GPT-2 (unexpected name)", file,
                          t->name, m->cfg.n_layer);
            goto fail;
        }
        if (seen[slot]) {
            rc = npp_fail(e, NPP_EFORMAT, file, "%s: tensor '%s' duplicates '%s'", file, t->name,
                          seen[slot]);
            goto fail;
        }
        seen[slot] = t->name;
        if ((rc = load_tensor(m, t, slot, file, e)))
            goto fail;
    }
    for (int s = 0; s < nslots; s++) {
        if (seen[s] || s == G_LM_HEAD)
            continue;
        char name[64];
        if (s < N_GLOBAL)
            snprintf(name, sizeof name, "%s", GLOBAL_NAMES[s]);
        else
            snprintf(name, sizeof name, "h.%d.%s", (s - N_GLOBAL) / N_PART,
                     PART_NAMES[(s - N_GLOBAL) % N_PART]);
        rc = npp_fail(e, NPP_EFORMAT, file, "%s: tensor '%s' is missing", file, name);
        goto fail;
    }
fail:
    free(seen);
    st_close(f);
    return rc;
}

/* ---- the folder ------------------------------------------------------- */

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int exists(const char *p)
{
    struct stat sb;
    return p && stat(p, &sb) == 0;
}

/* dir/a if it exists, else dir/b. New string or NULL (out of memory). */
static char *pick(const char *dir, const char *a, const char *b)
{
    char *p = join(dir, a);
    if (!p || exists(p))
        return p;
    free(p);
    return join(dir, b);
}

int model_tok_load(const char *dir, tok **out, npp_err *e)
{
    char *vp = pick(dir, "vocab.json", "encoder.json");
    char *mp = pick(dir, "merges.txt", "vocab.bpe");
    int rc;
    *out = NULL;
    if (!vp || !mp)
        rc = npp_fail(e, NPP_ENOMEM, dir, "out of memory");
    else if (!exists(vp) || !exists(mp))
        rc = npp_fail(e, NPP_EIO, dir,
                      "%s: the tokenizer files vocab.json and merges.txt are missing", dir);
    else
        rc = tok_load(vp, mp, out, e);
    free(vp);
    free(mp);
    return rc;
}

static int load_tokenizer(model *m, npp_err *e)
{
    int rc = model_tok_load(m->dir, &m->tok, e);
    if (!rc && tok_vocab_size(m->tok) > m->cfg.vocab_size)
        rc = npp_fail(e, NPP_EFORMAT, "vocab.json",
                      "vocab.json: %d tokens but config.json's vocab_size is %d",
                      tok_vocab_size(m->tok), m->cfg.vocab_size);
    /* the byte-level form is at least as long as the token's bytes */
    for (int32_t id = 0; !rc && id < tok_vocab_size(m->tok); id++) {
        const char *t = tok_token(m->tok, id);
        size_t n = t ? strlen(t) : 0;
        m->max_token_bytes = n > m->max_token_bytes ? n : m->max_token_bytes;
    }
    return rc;
}

/* One token through the whole model, so that a device or dtype the
 * linked libtorch cannot run (f16 on some CPUs) fails here, at load, with
 * a clear message rather than inside the first job. */
static int smoke_test(model *m, npp_err *e)
{
    int64_t id = 0;
    shim_tensor *logits = NULL;
    npp_err inner = {0};
    int rc = gpt2_forward(m, &id, 1, 1, NULL, &logits, &inner);
    shim_free(logits);
    if (rc) {
        char dev[16];
        shim_device_name(m->device, dev, sizeof dev);
        return npp_fail(e, rc, "dtype", "the model loaded but cannot run on %s in %s: %s", dev,
                        shim_dtype_name(m->dtype), inner.message);
    }
    return 0;
}

int model_load(const char *dir, const model_opts *opts, model **out, npp_err *e)
{
    static const model_opts defaults = {"cpu", "f32"};
    int rc;
    char *cfg_path = NULL, *st_path = NULL;
    shim_status st = {0};
    *out = NULL;
    if (!opts)
        opts = &defaults;
    model *m = calloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(dir)))
        return free(m), npp_fail(e, NPP_ENOMEM, dir, "out of memory");
    if (shim_device_parse(opts->device ? opts->device : "cpu", &m->device, &st)) {
        rc = npp_fail(e, npp_shim_code(st.code), "device", "%s", st.msg);
        goto fail;
    }
    if (shim_dtype_parse(opts->dtype ? opts->dtype : "f32", &m->dtype, &st)) {
        rc = npp_fail(e, NPP_EINVAL, "dtype", "%s", st.msg);
        goto fail;
    }
    if (!(cfg_path = join(dir, "config.json")) || !(st_path = join(dir, "model.safetensors"))) {
        rc = npp_fail(e, NPP_ENOMEM, dir, "out of memory");
        goto fail;
    }
    if (!exists(cfg_path)) {
        rc = npp_fail(e, NPP_EIO, dir, "%s: no config.json (expected a HuggingFace GPT-2 folder)",
                      dir);
        goto fail;
    }
    if ((rc = model_config_load(cfg_path, &m->cfg, e)))
        goto fail;
    if (!(m->blocks = calloc((size_t)m->cfg.n_layer, sizeof *m->blocks))) {
        rc = npp_fail(e, NPP_ENOMEM, dir, "out of memory");
        goto fail;
    }
    if ((rc = load_weights(m, st_path, e)) || (rc = load_tokenizer(m, e)))
        goto fail;
    if (!m->lm_head)
        m->lm_head = m->wte; /* tied, as in GPT2LMHeadModel */
    if ((rc = smoke_test(m, e)))
        goto fail;
    free(cfg_path);
    free(st_path);
    *out = m;
    return 0;
fail:
    free(cfg_path);
    free(st_path);
    model_free(m);
    return rc;
}

void model_free(model *m)
{
    if (!m)
        return;
    if (m->lm_head != m->wte)
        shim_free(m->lm_head);
    shim_free(m->wte);
    shim_free(m->wpe);
    shim_free(m->ln_f_w);
    shim_free(m->ln_f_b);
    for (int i = 0; m->blocks && i < m->cfg.n_layer; i++)
        for (int p = 0; p < N_PART; p++)
            shim_free(*slot_ptr(m, N_GLOBAL + i * N_PART + p));
    free(m->blocks);
    tok_free(m->tok);
    free(m->dir);
    free(m);
}
