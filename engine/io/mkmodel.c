/* mkmodel.c - random HF GPT-2 checkpoints; see mkmodel.h. The random
 * stream is xoshiro256** seeded by splitmix64, so files are identical
 * across machines for a seed. */
#include "io/mkmodel.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/st.h"

typedef struct {
    uint64_t s[4];
} rng;

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t next_u64(rng *r)
{
    uint64_t *s = r->s, res = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3] << 45 | s[3] >> 19;
    return res;
}

/* Standard normal by Box-Muller (one value per call, deterministic). */
static double normal(rng *r)
{
    double u1 = ((double)(next_u64(r) >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    double u2 = (double)(next_u64(r) >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

uint16_t mkmodel_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
    int exp = (int)((x >> 23) & 0xff);
    if (exp == 0xff)
        return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    int e = exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (e <= 0) { /* subnormal or zero */
        if (e < -10)
            return (uint16_t)sign;
        mant |= 0x800000;
        int shift = 14 - e;
        uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | (uint32_t)e << 10 | mant >> 13, rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++; /* may carry into the exponent, which is still right */
    return (uint16_t)h;
}

uint16_t mkmodel_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

typedef struct {
    st_out_tensor *ts;
    void **bufs;
    char **names;
    size_t n, cap;
    st_dtype dtype;
    const char *prefix;
} tlist;

/* Adds a tensor of shape (d0[, d1]) filled with mean + std * N(0, 1). */
static int add(tlist *l, rng *r, const char *name, int64_t d0, int64_t d1, double mean, double std)
{
    if (l->n == l->cap) {
        size_t c = l->cap ? 2 * l->cap : 64;
        st_out_tensor *ts = realloc(l->ts, c * sizeof *ts);
        if (ts)
            l->ts = ts;
        void **b = realloc(l->bufs, c * sizeof *b);
        if (b)
            l->bufs = b;
        char **nm = realloc(l->names, c * sizeof *nm);
        if (nm)
            l->names = nm;
        if (!ts || !b || !nm)
            return -1;
        l->cap = c;
    }
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1), es = st_dtype_size(l->dtype);
    void *buf = malloc(n * es);
    char *nm = malloc(strlen(l->prefix) + strlen(name) + 1);
    if (!buf || !nm) {
        free(buf);
        free(nm);
        return -1;
    }
    sprintf(nm, "%s%s", l->prefix, name);
    for (size_t i = 0; i < n; i++) {
        float v = (float)(mean + std * normal(r));
        if (l->dtype == ST_F32)
            ((float *)buf)[i] = v;
        else if (l->dtype == ST_F16)
            ((uint16_t *)buf)[i] = mkmodel_f32_to_f16(v);
        else
            ((uint16_t *)buf)[i] = mkmodel_f32_to_bf16(v);
    }
    st_out_tensor *t = &l->ts[l->n];
    memset(t, 0, sizeof *t);
    t->name = nm;
    t->dtype = l->dtype;
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->data = buf;
    l->bufs[l->n] = buf;
    l->names[l->n] = nm;
    l->n++;
    return 0;
}

static void tlist_free(tlist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->bufs[i]);
        free(l->names[i]);
    }
    free(l->ts);
    free(l->bufs);
    free(l->names);
}

static int build_tensors(const mkmodel_opts *o, tlist *l)
{
    uint64_t sm = o->seed;
    rng r;
    for (int i = 0; i < 4; i++)
        r.s[i] = splitmix(&sm);
    double s = o->init_std > 0 ? o->init_std : 0.02;
    double sp = s / sqrt(2.0 * o->layers); /* GPT-2's scaled init of residual projections */
    int64_t C = o->embd, I = o->inner ? o->inner : 4 * o->embd, V = 50257;
    char nm[64];
#define ADD(name, d0, d1, mean, std)                                                               \
    if (add(l, &r, name, d0, d1, mean, std))                                                       \
        return -1;
    ADD("wte.weight", V, C, 0, s);
    ADD("wpe.weight", o->positions, C, 0, s);
    for (int i = 0; i < o->layers; i++) {
        const struct {
            const char *part;
            int64_t d0, d1;
            double mean, std;
        } parts[] = {
            {"ln_1.weight", C, 0, 1, 0.1},          {"ln_1.bias", C, 0, 0, 0.02},
            {"attn.c_attn.weight", C, 3 * C, 0, s}, {"attn.c_attn.bias", 3 * C, 0, 0, s},
            {"attn.c_proj.weight", C, C, 0, sp},    {"attn.c_proj.bias", C, 0, 0, s},
            {"ln_2.weight", C, 0, 1, 0.1},          {"ln_2.bias", C, 0, 0, 0.02},
            {"mlp.c_fc.weight", C, I, 0, s},        {"mlp.c_fc.bias", I, 0, 0, s},
            {"mlp.c_proj.weight", I, C, 0, sp},     {"mlp.c_proj.bias", C, 0, 0, s},
        };
        for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
            snprintf(nm, sizeof nm, "h.%d.%s", i, parts[p].part);
            ADD(nm, parts[p].d0, parts[p].d1, parts[p].mean, parts[p].std);
        }
    }
    ADD("ln_f.weight", C, 0, 1, 0.1);
    ADD("ln_f.bias", C, 0, 0, 0.02);
    if (o->untied) {
        const char *saved = l->prefix;
        l->prefix = ""; /* HF never prefixes lm_head */
        ADD("lm_head.weight", V, C, 0, s);
        l->prefix = saved;
    }
#undef ADD
    return 0;
}

static int write_config(const mkmodel_opts *o, const char *path, npp_err *e)
{
    const char *td = !strcmp(o->dtype, "f16")    ? "float16"
                     : !strcmp(o->dtype, "bf16") ? "bfloat16"
                                                 : "float32";
    json_t *c = json_object();
    json_object_set_new(c, "activation_function", json_string("gelu_new"));
    json_object_set_new(c, "architectures", json_pack("[s]", "GPT2LMHeadModel"));
    json_object_set_new(c, "attn_pdrop", json_real(0.1));
    json_object_set_new(c, "bos_token_id", json_integer(50256));
    json_object_set_new(c, "embd_pdrop", json_real(0.1));
    json_object_set_new(c, "eos_token_id", json_integer(50256));
    json_object_set_new(c, "initializer_range", json_real(0.02));
    json_object_set_new(c, "layer_norm_epsilon", json_real(1e-05));
    json_object_set_new(c, "model_type", json_string("gpt2"));
    json_object_set_new(c, "n_ctx", json_integer(o->positions));
    json_object_set_new(c, "n_embd", json_integer(o->embd));
    json_object_set_new(c, "n_head", json_integer(o->heads));
    json_object_set_new(c, "n_inner", o->inner ? json_integer(o->inner) : json_null());
    json_object_set_new(c, "n_layer", json_integer(o->layers));
    json_object_set_new(c, "n_positions", json_integer(o->positions));
    json_object_set_new(c, "reorder_and_upcast_attn", json_false());
    json_object_set_new(c, "resid_pdrop", json_real(0.1));
    json_object_set_new(c, "scale_attn_by_inverse_layer_idx", json_false());
    json_object_set_new(c, "scale_attn_weights", json_true());
    json_object_set_new(c, "summary_activation", json_null());
    json_object_set_new(c, "summary_first_dropout", json_real(0.1));
    json_object_set_new(c, "summary_proj_to_labels", json_true());
    json_object_set_new(c, "summary_type", json_string("cls_index"));
    json_object_set_new(c, "summary_use_proj", json_true());
    json_object_set_new(c, "tie_word_embeddings", o->untied ? json_false() : json_true());
    json_object_set_new(c, "torch_dtype", json_string(td));
    json_object_set_new(c, "use_cache", json_true());
    json_object_set_new(c, "vocab_size", json_integer(50257));
    int rc = json_dump_file(c, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(c);
    return rc ? npp_fail(e, NPP_EIO, path, "%s: write failed", path) : 0;
}

static int copy_file(const char *from, const char *to, npp_err *e)
{
    FILE *in = fopen(from, "rb"), *out = NULL;
    char buf[1 << 16];
    size_t n;
    int bad = 0;
    if (!in)
        return npp_fail(e, NPP_EIO, from, "%s: cannot open: %s", from, strerror(errno));
    if (!(out = fopen(to, "wb"))) {
        fclose(in);
        return npp_fail(e, NPP_EIO, to, "%s: cannot create: %s", to, strerror(errno));
    }
    while (!bad && (n = fread(buf, 1, sizeof buf, in)) > 0)
        bad = fwrite(buf, 1, n, out) != n;
    bad |= ferror(in);
    fclose(in);
    if (fclose(out) || bad)
        return npp_fail(e, NPP_EIO, to, "%s: copy failed", to);
    return 0;
}

/* dir/a if it exists, else dir/b, into buf. */
static void pick(char *buf, size_t n, const char *dir, const char *a, const char *b)
{
    struct stat sb;
    snprintf(buf, n, "%s/%s", dir, a);
    if (stat(buf, &sb))
        snprintf(buf, n, "%s/%s", dir, b);
}

/* mkdir -p; 0 on success (or if it exists). */
static int mkdir_p(const char *dir)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = 0;
        if (mkdir(p, 0755) && errno != EEXIST)
            return -1;
        *s = '/';
    }
    return mkdir(p, 0755) && errno != EEXIST ? -1 : 0;
}

int mkmodel_write(const mkmodel_opts *o, npp_err *e)
{
    char p[4096], src[4096];
    tlist l = {0};
    int rc = 0;
    const char *dt = o->dtype ? o->dtype : "f32";
    if (o->layers <= 0 || o->heads <= 0 || o->embd <= 0 || o->positions <= 0)
        return npp_fail(e, NPP_EINVAL, "shape", "layers, heads, embd and positions must be > 0");
    if (o->embd % o->heads)
        return npp_fail(e, NPP_EINVAL, "heads", "embd %d is not a multiple of heads %d", o->embd,
                        o->heads);
    if (!strcmp(dt, "f32"))
        l.dtype = ST_F32;
    else if (!strcmp(dt, "f16"))
        l.dtype = ST_F16;
    else if (!strcmp(dt, "bf16"))
        l.dtype = ST_BF16;
    else
        return npp_fail(e, NPP_EINVAL, "dtype", "dtype '%s' (expected f32, f16 or bf16)", dt);
    l.prefix = o->prefix ? o->prefix : "";
    if (mkdir_p(o->out_dir))
        return npp_fail(e, NPP_EIO, o->out_dir, "%s: cannot create: %s", o->out_dir,
                        strerror(errno));
    mkmodel_opts oo = *o;
    oo.dtype = dt;
    if (build_tensors(&oo, &l)) {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory building the weights");
        goto fail;
    }
    snprintf(p, sizeof p, "%s/model.safetensors", o->out_dir);
    if ((rc = st_write(p, l.ts, l.n, e)))
        goto fail;
    snprintf(p, sizeof p, "%s/config.json", o->out_dir);
    if ((rc = write_config(&oo, p, e)))
        goto fail;
    pick(src, sizeof src, o->vocab_dir, "encoder.json", "vocab.json");
    snprintf(p, sizeof p, "%s/vocab.json", o->out_dir);
    if ((rc = copy_file(src, p, e)))
        goto fail;
    pick(src, sizeof src, o->vocab_dir, "vocab.bpe", "merges.txt");
    snprintf(p, sizeof p, "%s/merges.txt", o->out_dir);
    rc = copy_file(src, p, e);
fail:
    tlist_free(&l);
    return rc;
}
