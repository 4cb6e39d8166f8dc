/* plan.c - the planner; see plan.h. Residual nodes are numbered as the
 * stream runs (graph.h: j = 0 emb, 2i+1 a{i}, 2i+2 f{i}); node_resid(prefix,
 * j) is the value of residual node j reached from a path whose state is
 * prefix. */
#include "compute/plan.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/sha256.h"
#include "compute/ops.h"

const char *plan_op_name(plan_op op)
{
    return op_info(op)->name;
}

void plan_init(plan *p, const model *m, int n_inputs, int B, int T, const int64_t *ids,
               size_t max_values)
{
    memset(p, 0, sizeof *p);
    p->m = m;
    graph_dims_init(&p->g, m->cfg.n_layer, m->cfg.n_head, T);
    p->n_inputs = n_inputs, p->B = B, p->T = T, p->ids = ids;
    p->max_values = max_values;
    p->max_nodes = PLAN_MAX_NODES;
    p->max_bytes = PLAN_MAX_BYTES;
    p->root_node = -1;
}

size_t plan_bytes(const plan *p)
{
    return (size_t)p->capv * sizeof *p->v + (size_t)p->capn * sizeof *p->nodes +
           p->cappool * sizeof *p->pool + (p->vcap + p->ncap + p->scap) * sizeof(int32_t) +
           p->capstates * sizeof *p->states;
}

void plan_free(plan *p)
{
    free(p->v);
    free(p->nodes);
    free(p->pool);
    free(p->vslots);
    free(p->nslots);
    free(p->states);
    free(p->sslots);
    free(p->scratch);
    memset(p, 0, sizeof *p);
}

/* ---- storage ------------------------------------------------------------- */

/* Whether planning may take extra bytes more (else the error is set):
 * checked before every allocation grows, so the bound holds. */
static int room(plan *p, size_t extra);

static int32_t *pool_take(plan *p, size_t n)
{
    if (p->npool + n > p->cappool) {
        size_t c = p->cappool ? p->cappool : 1024;
        while (c < p->npool + n)
            c *= 2;
        if (!room(p, (c - p->cappool) * sizeof *p->pool))
            return NULL;
        int32_t *np = realloc(p->pool, c * sizeof *np);
        if (!np)
            return NULL;
        /* Re-point stored arrays into the moved pool. */
        for (int32_t i = 0; i < p->nv; i++)
            if (p->v[i].in)
                p->v[i].in = np + (p->v[i].in - p->pool);
        for (int32_t i = 0; i < p->nn; i++)
            if (p->nodes[i].kids)
                p->nodes[i].kids = np + (p->nodes[i].kids - p->pool);
        p->pool = np, p->cappool = c;
    }
    int32_t *r = p->pool + p->npool;
    p->npool += n;
    return r;
}

/* Room for one more element in arr (n used of *cap): doubles it within the
 * plan's byte budget. Returns the array (moved or not), or NULL with the
 * error set. */
static void *grow(plan *p, void *arr, int32_t n, int32_t *cap, size_t elem)
{
    if (n < *cap)
        return arr;
    int32_t c = *cap ? 2 * *cap : 256;
    if (!room(p, (size_t)(c - *cap) * elem))
        return NULL;
    void *a = realloc(arr, (size_t)c * elem);
    if (!a)
        return npp_fail(p->err, NPP_ENOMEM, "", "out of memory planning"), NULL;
    *cap = c;
    return a;
}

static uint64_t hash_bytes(const void *d, size_t n, uint64_t h)
{
    const unsigned char *s = d;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static int grow_table(plan *p, int32_t **slots, size_t *cap, size_t used)
{
    if (*slots && used * 2 < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 1024;
    if (!room(p, c * sizeof **slots)) /* the new table, while the old one lives */
        return -2;
    int32_t *ns = malloc(c * sizeof *ns);
    if (!ns)
        return -1;
    memset(ns, 0xff, c * sizeof *ns);
    free(*slots);
    *slots = ns, *cap = c;
    return 1; /* caller rehashes */
}

static uint64_t vhash(const uint8_t *key)
{
    uint64_t h;
    memcpy(&h, key, 8); /* a SHA-256 prefix is as good as any hash */
    return h;
}

static void vtable_insert(plan *p, int32_t idx)
{
    size_t m = p->vcap - 1, i = vhash(p->v[idx].key) & m;
    while (p->vslots[i] >= 0)
        i = (i + 1) & m;
    p->vslots[i] = idx;
}

static uint64_t nhash(int sym, int32_t state)
{
    uint64_t k = (uint64_t)(uint32_t)sym << 32 | (uint32_t)state;
    return hash_bytes(&k, sizeof k, 1469598103934665603ull);
}

static void ntable_insert(plan *p, int32_t idx)
{
    size_t m = p->ncap - 1, i = nhash(p->nodes[idx].sym, p->nodes[idx].state) & m;
    while (p->nslots[i] >= 0)
        i = (i + 1) & m;
    p->nslots[i] = idx;
}

static uint64_t shash(const plan *p, const uint64_t *st)
{
    return hash_bytes(st, (size_t)p->words * 8, 1469598103934665603ull);
}

static void stable_insert(plan *p, int32_t idx)
{
    size_t m = p->scap - 1, i = shash(p, p->states + (size_t)idx * p->words) & m;
    while (p->sslots[i] >= 0)
        i = (i + 1) & m;
    p->sslots[i] = idx;
}

/* Indexes entry idx, the n-th, in a table that grow_table may have to
 * enlarge (then every entry is indexed again). -1 when out of memory. */
static int index_new(plan *p, int32_t **slots, size_t *cap, int32_t idx, int32_t n,
                     void (*insert)(plan *, int32_t))
{
    int g = grow_table(p, slots, cap, (size_t)n);
    if (g < 0)
        return npp_fail(p->err, NPP_ENOMEM, "", "out of memory planning"), -1;
    for (int32_t i = g > 0 ? 0 : idx; i < (g > 0 ? n : idx + 1); i++)
        insert(p, i);
    return 0;
}

/* Planning's own bounds: memory, and (checked every 1024 new entries) the
 * deadline and the cancel flag. */
static int room(plan *p, size_t extra)
{
    size_t b = plan_bytes(p);
    if (b + extra <= p->max_bytes)
        return 1;
    npp_fail(p->err, NPP_ELIMIT, "limits",
             "planning needs more than %zu MiB (it holds %zu MiB); split fewer nodes or use "
             "fewer or simpler rules",
             p->max_bytes >> 20, b >> 20);
    return 0;
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int check_time(plan *p)
{
    if (++p->ticks % 1024)
        return 0;
    if (p->cancel && __atomic_load_n(p->cancel, __ATOMIC_RELAXED))
        return npp_fail(p->err, NPP_ECANCELED, "", "the job was cancelled while it was planned");
    if (p->deadline_ms > 0 && mono_ms() > p->deadline_ms)
        return npp_fail(p->err, NPP_ELIMIT, "limits",
                        "planning took longer than the server's limit of %.0f s; split fewer "
                        "nodes, or use fewer variants or simpler rules",
                        p->plan_seconds);
    return 0;
}

/* ---- values ---------------------------------------------------------------- */

/* Planning goes on past max_values (so the refusal can say how big the
 * plan is) up to this bound on planning memory. */
static size_t plan_hard_max(const plan *p)
{
    return p->max_values * 4 > 1000000 ? p->max_values * 4 : 1000000;
}

static int32_t too_many(plan *p)
{
    npp_fail(p->err, NPP_ELIMIT, "limits.max_values",
             "the plan needs more than %zu values, over the limit of %zu; split fewer nodes or "
             "use fewer inputs",
             plan_hard_max(p), p->max_values);
    return -1;
}

/* Refuses a finished plan over the limit, with its size. */
static int check_size(plan *p)
{
    if ((size_t)p->nv <= p->max_values)
        return 0;
    return npp_fail(p->err, NPP_ELIMIT, "limits.max_values",
                    "the plan needs %d values, over the limit of %zu; split fewer nodes or use "
                    "fewer inputs",
                    p->nv, p->max_values);
}

/* Finds or adds the value with this key; in/nin are copied. */
static int32_t intern(plan *p, const uint8_t key[32], plan_op op, int layer, int aux, int rank,
                      const int32_t *in, int nin)
{
    if (p->vcap) {
        size_t m = p->vcap - 1;
        for (size_t i = vhash(key) & m; p->vslots[i] >= 0; i = (i + 1) & m)
            if (!memcmp(p->v[p->vslots[i]].key, key, 32))
                return p->vslots[i];
    }
    if ((size_t)p->nv >= plan_hard_max(p))
        return too_many(p);
    if (check_time(p))
        return -1;
    plan_value *nv = grow(p, p->v, p->nv, &p->capv, sizeof *p->v);
    if (!nv)
        return -1;
    p->v = nv;
    int32_t *copy = nin ? pool_take(p, (size_t)nin) : NULL;
    if (nin && !copy)
        return npp_fail(p->err, NPP_ENOMEM, "", "out of memory planning"), -1;
    if (nin)
        memcpy(copy, in, (size_t)nin * sizeof *in);
    int32_t idx = p->nv++;
    plan_value *v = &p->v[idx];
    *v = (plan_value){op, layer, aux, rank, nin, copy, {0}};
    memcpy(v->key, key, 32);
    return index_new(p, &p->vslots, &p->vcap, idx, p->nv, vtable_insert) ? -1 : idx;
}

static void put_u32(sha256_ctx *c, uint32_t x)
{
    unsigned char b[4] = {(unsigned char)x, (unsigned char)(x >> 8), (unsigned char)(x >> 16),
                          (unsigned char)(x >> 24)};
    sha256_update(c, b, 4);
}

/* A value of op on inputs in[0..nin): its key hashes the op, the layer,
 * the inputs' keys and, for the newer ops, aux (HEAD: the head) or extra
 * bytes (an edit's key, the lengths a mean runs over). */
static int32_t val_op_x(plan *p, plan_op op, int layer, int aux, const void *extra, size_t nextra,
                        const int32_t *in, int nin)
{
    if (op == OP_MIX) { /* a mix of one value is that value */
        int same = 1;
        for (int i = 1; i < nin && same; i++)
            same = in[i] == in[0];
        if (same)
            return in[0];
    }
    sha256_ctx c;
    uint8_t key[32];
    int rank = 0;
    sha256_init(&c);
    put_u32(&c, 0x6e707001u); /* key format version */
    put_u32(&c, (uint32_t)op);
    put_u32(&c, (uint32_t)layer);
    put_u32(&c, (uint32_t)nin);
    for (int i = 0; i < nin; i++) {
        sha256_update(&c, p->v[in[i]].key, 32);
        if (p->v[in[i]].rank > rank)
            rank = p->v[in[i]].rank;
    }
    if (op == OP_HEAD)
        put_u32(&c, (uint32_t)aux);
    if (nextra)
        sha256_update(&c, extra, nextra);
    sha256_final(&c, key);
    int below = rank;
    rank = op_info(op)->rank(p, layer, rank); /* every input's rank is below (ops.c) */
    if (nin && rank <= below) /* a batched op's fixed rank, reached by a chain of light ops */
        return npp_fail(p->err, NPP_ELIMIT, "intervene",
                        "too many interventions between two layers' attention and MLP (their "
                        "chain of values passes the next one's place in the order)"),
               -1;
    return intern(p, key, op, layer, aux, rank, in, nin);
}

static int32_t val_op(plan *p, plan_op op, int layer, const int32_t *in, int nin)
{
    return val_op_x(p, op, layer, 0, NULL, 0, in, nin);
}

static int32_t val_emb(plan *p, int k)
{
    sha256_ctx c;
    uint8_t key[32];
    size_t n = (size_t)p->B * (size_t)p->T;
    const int64_t *ids = p->ids + (size_t)k * n;
    sha256_init(&c);
    put_u32(&c, 0x6e707001u);
    put_u32(&c, OP_EMB);
    sha256_update(&c, p->m->fingerprint, 32);
    if (p->salt)
        sha256_update(&c, p->salt, 32);
    put_u32(&c, (uint32_t)p->B);
    put_u32(&c, (uint32_t)p->T);
    for (size_t i = 0; i < n; i++)
        put_u32(&c, (uint32_t)ids[i]);
    sha256_final(&c, key);
    return intern(p, key, OP_EMB, k, 0, 0, NULL, 0);
}

static int32_t val_attn_shared(plan *p, int layer, int32_t x);

/* The source at least half of src[0..n) are (of two such, the first
 * seen), else src[0]: only such a source can make an ADELTA (val_attn:
 * half of the heads reading it alone is half of the slots). Linear in n:
 * two candidates (Misra-Gries) end up holding every source of more than
 * n/3 of the slots, then each is counted. */
static int32_t majority(const int32_t *src, int n)
{
    int32_t cand[2] = {src[0], src[0]};
    int cnt[2] = {0, 0};
    for (int i = 0; i < n; i++) {
        if (cnt[0] && src[i] == cand[0])
            cnt[0]++;
        else if (cnt[1] && src[i] == cand[1])
            cnt[1]++;
        else if (!cnt[0])
            cand[0] = src[i], cnt[0] = 1;
        else if (!cnt[1])
            cand[1] = src[i], cnt[1] = 1;
        else
            cnt[0]--, cnt[1]--;
    }
    int32_t best = src[0];
    int most = 0, first = n;
    for (int c = 0; c < 2; c++) {
        int k = 0, at = n;
        for (int i = 0; i < n; i++)
            if (src[i] == cand[c]) {
                k++;
                at = at < i ? at : i;
            }
        if (2 * k >= n && (k > most || (k == most && at < first)))
            best = cand[c], most = k, first = at;
    }
    return best;
}

/* The attention of layer i given, per head, its q/k/v inputs. When at
 * most half of the heads read anything but the sources most read (s), it
 * is an ADELTA: attn(s) plus, for each of those heads, (z_h from its own
 * sources - z_h from s) W_O[h], so a patched head costs two heads'
 * attention and one W_O[h] product instead of the layer's attention (the
 * path-patching sweep's case: one head from another input). A function of
 * the sources alone, so every job plans the same value the same way. */
static int32_t val_attn(plan *p, int layer, const int32_t *src3h)
{
    int H = p->g.H, n = 3 * H, d = 0;
    int32_t s = majority(src3h, n), in[3 * MODEL_MAX_HEADS + 2];
    for (int h = 0; h < H; h++)
        d += src3h[3 * h] != s || src3h[3 * h + 1] != s || src3h[3 * h + 2] != s;
    if (d == 0 || 2 * d > H)
        return val_op(p, OP_ATTN, layer, src3h, n);
    memcpy(in, src3h, (size_t)n * sizeof *in);
    if ((in[n] = val_attn_shared(p, layer, s)) < 0)
        return -1;
    in[n + 1] = s;
    return val_op_x(p, OP_ADELTA, layer, d, NULL, 0, in, n + 2);
}

static int32_t val_attn_shared(plan *p, int layer, int32_t x)
{
    int n = 3 * p->g.H;
    int32_t *src = malloc((size_t)n * sizeof *src);
    if (!src)
        return npp_fail(p->err, NPP_ENOMEM, "", "out of memory planning"), -1;
    for (int i = 0; i < n; i++)
        src[i] = x;
    int32_t r = val_op(p, OP_ATTN, layer, src, n);
    free(src);
    return r;
}

/* Residual after sublayer j (odd: attention, even: MLP) on input x. */
static int32_t val_block_step(plan *p, int j, int32_t x)
{
    int32_t sub =
        (j % 2) ? val_attn_shared(p, (j - 1) / 2, x) : val_op(p, OP_MLP, (j - 2) / 2, &x, 1);
    if (sub < 0)
        return -1;
    int32_t in[2] = {x, sub};
    return val_op(p, OP_ADD, -1, in, 2);
}

/* ---- interventions ---------------------------------------------------------------- */

static const uint64_t *state_at(const plan *p, int32_t id);

/* Residual j of input k's plain run. */
static int32_t plain_resid(plan *p, int k, int j)
{
    int32_t x = val_emb(p, k);
    for (int i = 1; i <= j && x >= 0; i++)
        x = val_block_step(p, i, x);
    return x;
}

static int32_t val_head(plan *p, int layer, int h, const int32_t src[3])
{
    return val_op_x(p, OP_HEAD, layer, h, NULL, 0, src, 3);
}

/* The value at node (kind, layer, head) of input k's plain run. */
static int32_t plain_node(plan *p, int k, gkind kind, int layer, int h)
{
    switch (kind) {
    case G_EMB: return val_emb(p, k);
    case G_A: return plain_resid(p, k, 2 * layer + 1);
    case G_F: return plain_resid(p, k, 2 * layer + 2);
    case G_FHEAD: {
        int32_t x = plain_resid(p, k, 2 * layer + 1);
        return x < 0 ? -1 : val_op(p, OP_MLP, layer, &x, 1);
    }
    case G_AHEAD:
    case G_HEAD: {
        int32_t x = plain_resid(p, k, 2 * layer), src[3] = {x, x, x};
        return x < 0            ? -1
               : kind == G_HEAD ? val_head(p, layer, h, src)
                                : val_attn_shared(p, layer, x);
    }
    default: return npp_fail(p->err, NPP_EINVAL, "", "internal: no plain value here"), -1;
    }
}

/* The batch mean of x per position (over the examples that have it): the
 * lengths are part of its key. */
static int32_t val_mean(plan *p, int32_t x)
{
    if (x < 0)
        return -1;
    uint32_t lens[256], n = 0;
    sha256_ctx c;
    uint8_t h[32];
    sha256_init(&c);
    for (int b = 0; b < p->B; b++) {
        lens[n++] = (uint32_t)(p->len ? p->len[b] : p->T);
        if (n == 256 || b == p->B - 1) {
            sha256_update(&c, lens, n * sizeof *lens);
            n = 0;
        }
    }
    sha256_final(&c, h);
    return val_op_x(p, OP_MEAN, -1, 0, h, sizeof h, &x, 1);
}

/* Value x at node (kind, layer, head h) after edit ed. At a head, x is the
 * attention output and src the head's q, k, v sources: the head's share
 * is what changes. */
static int32_t val_edit(plan *p, int32_t x, int ed, gkind kind, int layer, int h,
                        const int32_t *src)
{
    const edit *d = &p->edits->e[ed];
    int32_t in[3] = {x, -1, -1};
    int nin = 1, mode = EDIT_SET;
    if (x < 0)
        return -1;
    if (kind == G_HEAD && d->kind != EDIT_STEER) {
        mode = EDIT_HEAD;
        if ((in[nin++] = val_head(p, layer, h, src)) < 0)
            return -1;
    }
    if (d->kind == EDIT_MEAN || d->kind == EDIT_PATCH) {
        int32_t r = plain_node(p, d->input, kind, layer, h);
        if (d->kind == EDIT_MEAN)
            r = val_mean(p, r);
        if (r < 0)
            return -1;
        int all = 1;
        for (int t = 0; t < p->T; t++)
            all &= d->mask[t];
        if (all && mode == EDIT_SET)
            return r; /* replaced everywhere: that value itself */
        in[nin++] = r;
    }
    return val_op_x(p, OP_EDIT, mode, ed, d->key, sizeof d->key, in, nin);
}

/* The edit the intervene rules choose at the node reached with state st
 * (-1: none); *rule gets the deciding rule. */
static int edit_at(plan *p, int32_t st, int *rule)
{
    *rule = -1;
    return p->edits && p->edits->n ? rules_intervene(p->rules, state_at(p, st), rule) : -1;
}

int32_t plan_plain(plan *p, int k, npp_err *e)
{
    p->err = e;
    int32_t x = val_emb(p, k);
    for (int j = 1; j <= 2 * p->g.L && x >= 0; j++)
        x = val_block_step(p, j, x);
    x = x < 0 ? -1 : val_op(p, OP_LNF, -1, &x, 1);
    return x < 0 || check_size(p) ? -1 : x;
}

int plan_plain_senders(plan *p, int k, int32_t *out, npp_err *e)
{
    p->err = e;
    int n = 0;
    int32_t x = val_emb(p, k);
    out[n++] = x;
    for (int i = 0; i < p->g.L && x >= 0; i++) {
        int32_t z = val_op(p, OP_Z, i, &x, 1), x2, f;
        out[n++] = z;
        x2 = z < 0 ? -1 : val_block_step(p, 2 * i + 1, x);
        f = x2 < 0 ? -1 : val_op(p, OP_MLP, i, &x2, 1);
        out[n++] = f;
        x = f < 0 ? -1 : val_block_step(p, 2 * i + 2, x2);
    }
    return x < 0 || check_size(p) ? -1 : n;
}

/* ---- walk states ------------------------------------------------------------- */

/* The walk state after a path prefix is interned: a node names it by index,
 * so a node costs the same whatever the rules, and equal states are one. */
static int32_t state_intern(plan *p, const uint64_t *st)
{
    if (p->scap) {
        size_t m = p->scap - 1;
        for (size_t i = shash(p, st) & m; p->sslots[i] >= 0; i = (i + 1) & m)
            if (!memcmp(p->states + (size_t)p->sslots[i] * p->words, st, (size_t)p->words * 8))
                return p->sslots[i];
    }
    size_t w = p->words ? (size_t)p->words : 1; /* a rule set with no globs has one state */
    size_t need = ((size_t)p->nstates + 1) * w;
    if (need > p->capstates) {
        size_t c = p->capstates ? 2 * p->capstates : 64 * w;
        while (c < need)
            c *= 2;
        if (!room(p, (c - p->capstates) * sizeof *p->states))
            return -1;
        uint64_t *ns = realloc(p->states, c * sizeof *ns);
        if (!ns)
            return npp_fail(p->err, NPP_ENOMEM, "", "out of memory planning"), -1;
        p->states = ns, p->capstates = c;
    }
    int32_t idx = p->nstates++;
    memcpy(p->states + (size_t)idx * p->words, st, (size_t)p->words * 8);
    return index_new(p, &p->sslots, &p->scap, idx, p->nstates, stable_insert) ? -1 : idx;
}

static const uint64_t *state_at(const plan *p, int32_t id)
{
    return p->states + (size_t)id * p->words;
}

/* The state after one more name. */
static int32_t step(plan *p, int32_t from, int sym)
{
    rules_step(p->rules, state_at(p, from), sym, p->scratch);
    return state_intern(p, p->scratch);
}

/* ---- the walk ----------------------------------------------------------------- */

/* Looks up (sym, parent state) in the memo; -1 if absent. The key is the
 * state *before* the node: a split residual node's skip branch continues
 * from it, so the state after the node would not tell two paths apart. */
static int32_t memo_find(plan *p, int sym, int32_t st)
{
    if (!p->ncap)
        return -1;
    size_t m = p->ncap - 1;
    for (size_t i = nhash(sym, st) & m; p->nslots[i] >= 0; i = (i + 1) & m) {
        int32_t n = p->nslots[i];
        if (p->nodes[n].sym == sym && p->nodes[n].state == st)
            return n;
    }
    return -1;
}

/* Adds a node (after its children, so indices are topological). */
static int32_t node_add(plan *p, int sym, int32_t st, int32_t value, const int32_t *kids, int nkids,
                        int decision, int rule)
{
    if ((size_t)p->nn >= p->max_nodes)
        return npp_fail(p->err, NPP_ELIMIT, "branch",
                        "the path tree has more than %zu distinct nodes; split fewer nodes",
                        p->max_nodes),
               -1;
    if (check_time(p))
        return -1;
    plan_node *nn = grow(p, p->nodes, p->nn, &p->capn, sizeof *p->nodes);
    if (!nn)
        return -1;
    p->nodes = nn;
    int32_t *kc = nkids ? pool_take(p, (size_t)nkids) : NULL;
    if (nkids && !kc)
        return npp_fail(p->err, NPP_ENOMEM, "", "out of memory planning"), -1;
    uint32_t reads = 0;
    for (int i = 0; i < nkids; i++) {
        kc[i] = kids[i];
        reads |= p->nodes[kids[i]].reads;
    }
    if (sym == graph_sym(&p->g, G_EMB, -1, -1))
        reads = 1u << decision;
    int32_t idx = p->nn++;
    p->nodes[idx] = (plan_node){sym, value, nkids, kc, reads, decision, rule, st, -1, -1};
    return index_new(p, &p->nslots, &p->ncap, idx, p->nn, ntable_insert) ? -1 : idx;
}

static int32_t node_resid(plan *p, int32_t prefix, int j);

/* A node whose value is the residual j reached through it: q/k/v and
 * position nodes. */
static int32_t node_input(plan *p, int32_t parent, int sym, int j)
{
    int32_t st = step(p, parent, sym), n;
    if (st < 0)
        return -1;
    if ((n = memo_find(p, sym, parent)) >= 0)
        return n;
    int32_t kid = node_resid(p, st, j);
    return kid < 0 ? -1 : node_add(p, sym, parent, p->nodes[kid].value, &kid, 1, SPLIT_NO, -1);
}

/* Head h of attention layer i (j = 2i+1); fills its q, k, v sources. */
static int32_t node_head(plan *p, int32_t parent, int j, int h, int32_t src[3])
{
    int i = (j - 1) / 2, sym = graph_sym(&p->g, G_HEAD, i, h), rule;
    int32_t n, kids[3], st = step(p, parent, sym);
    if (st < 0)
        return -1;
    int split = rules_branch(p->rules, state_at(p, st), &rule) != SPLIT_NO;
    if ((n = memo_find(p, sym, parent)) >= 0) {
        for (int c = 0; c < 3; c++)
            src[c] = split ? p->nodes[p->nodes[n].kids[c]].value : p->nodes[n].value;
        return n;
    }
    int erule, ed = edit_at(p, st, &erule); /* on this head's share of the output */
    if (split) {
        for (int c = 0; c < 3; c++) {
            kids[c] = node_input(p, st, graph_sym(&p->g, (gkind)(G_Q + c), i, h), j - 1);
            if (kids[c] < 0)
                return -1;
            src[c] = p->nodes[kids[c]].value;
        }
        n = node_add(p, sym, parent, -1, kids, 3, SPLIT_YES, rule);
    } else {
        if ((kids[0] = node_resid(p, st, j - 1)) < 0)
            return -1;
        src[0] = src[1] = src[2] = p->nodes[kids[0]].value;
        n = node_add(p, sym, parent, src[0], kids, 1, SPLIT_NO, rule);
    }
    if (n >= 0)
        p->nodes[n].edit = ed, p->nodes[n].erule = erule;
    return n;
}

/* The sublayer of residual node j (a{i}.head or f{i}.head), reached from
 * the split node's state. */
static int32_t node_sub(plan *p, int32_t parent, int j)
{
    int attn = j % 2, i = attn ? (j - 1) / 2 : (j - 2) / 2, H = p->g.H, T = p->g.T, rule;
    int sym = graph_sym(&p->g, attn ? G_AHEAD : G_FHEAD, i, -1);
    int32_t n = -1, value = -1, nk = 0, st = step(p, parent, sym);
    int32_t *kids = malloc((size_t)(H > T ? H : T) * sizeof *kids + 8);
    int32_t *src = malloc((size_t)(3 * H > T ? 3 * H : T) * sizeof *src + 8);
    if (!kids || !src) {
        npp_fail(p->err, NPP_ENOMEM, "", "out of memory planning");
        goto done;
    }
    if (st < 0 || (n = memo_find(p, sym, parent)) >= 0)
        goto done;
    int d = rules_branch(p->rules, state_at(p, st), &rule);
    /* a{i}.head: true or "heads" splits heads; f{i}.head: true or
     * "positions" splits positions (the only way an MLP splits). */
    if (attn && (d == SPLIT_YES || d == SPLIT_HEADS)) {
        d = SPLIT_HEADS;
        for (int h = 0; h < H; h++)
            if ((kids[nk++] = node_head(p, st, j, h, &src[3 * h])) < 0)
                goto done;
        value = val_attn(p, i, src);
        for (int h = 0; h < H && value >= 0; h++)
            if (p->nodes[kids[h]].edit >= 0)
                value = val_edit(p, value, p->nodes[kids[h]].edit, G_HEAD, i, h, &src[3 * h]);
    } else if (d == SPLIT_POSITIONS || (!attn && d == SPLIT_YES)) {
        d = SPLIT_POSITIONS;
        for (int t = 0; t < T; t++) {
            kids[nk] = node_input(p, st, graph_sym(&p->g, attn ? G_APOS : G_FPOS, i, t), j - 1);
            if (kids[nk] < 0)
                goto done;
            src[t] = p->nodes[kids[nk++]].value;
        }
        int32_t mix = val_op(p, OP_MIX, -1, src, T);
        value = mix < 0 ? -1 : attn ? val_attn_shared(p, i, mix) : val_op(p, OP_MLP, i, &mix, 1);
    } else {
        d = SPLIT_NO;
        if ((kids[nk++] = node_resid(p, st, j - 1)) < 0)
            goto done;
        int32_t x = p->nodes[kids[0]].value;
        value = attn ? val_attn_shared(p, i, x) : val_op(p, OP_MLP, i, &x, 1);
    }
    int erule, ed = value >= 0 ? edit_at(p, st, &erule) : -1;
    if (ed >= 0)
        value = val_edit(p, value, ed, attn ? G_AHEAD : G_FHEAD, i, -1, NULL);
    if (value >= 0 && (n = node_add(p, sym, parent, value, kids, nk, d, rule)) >= 0)
        p->nodes[n].edit = ed, p->nodes[n].erule = ed >= 0 ? erule : -1;
done:
    free(kids);
    free(src);
    return n;
}

/* The residual node j's value after the edit the rules choose at it. */
static int32_t resid_edit(plan *p, int32_t st, int j, int32_t value, int *ed, int *erule)
{
    *ed = value < 0 ? -1 : edit_at(p, st, erule);
    if (*ed < 0)
        return value;
    gkind kind = j == 0 ? G_EMB : j % 2 ? G_A : G_F;
    return val_edit(p, value, *ed, kind, j == 0 ? -1 : (j - 1) / 2, -1, NULL);
}

static int32_t resid_add(plan *p, int sym, int32_t prefix, int32_t st, int j, int32_t value,
                         const int32_t *kids, int nkids, int decision, int rule)
{
    int ed, erule;
    if ((value = resid_edit(p, st, j, value, &ed, &erule)) < 0)
        return -1;
    int32_t n = node_add(p, sym, prefix, value, kids, nkids, decision, rule);
    if (n >= 0)
        p->nodes[n].edit = ed, p->nodes[n].erule = ed >= 0 ? erule : -1;
    return n;
}

static int32_t node_resid(plan *p, int32_t prefix, int j)
{
    int sym = graph_resid_sym(&p->g, j), rule;
    int32_t n, kids[2], value, st = step(p, prefix, sym);
    if (st < 0)
        return -1;
    if ((n = memo_find(p, sym, prefix)) >= 0)
        return n;
    if (j == 0) {
        int k = rules_which(p->rules, state_at(p, st), &rule);
        if ((value = val_emb(p, k)) < 0)
            return -1;
        return resid_add(p, sym, prefix, st, j, value, NULL, 0, k, rule);
    }
    if (rules_branch(p->rules, state_at(p, st), &rule) != SPLIT_NO) {
        /* The skip branch continues with the path without this node. */
        if ((kids[0] = node_resid(p, prefix, j - 1)) < 0 || (kids[1] = node_sub(p, st, j)) < 0)
            return -1;
        int32_t in[2] = {p->nodes[kids[0]].value, p->nodes[kids[1]].value};
        if ((value = val_op(p, OP_ADD, -1, in, 2)) < 0)
            return -1;
        return resid_add(p, sym, prefix, st, j, value, kids, 2, SPLIT_YES, rule);
    }
    /* Residual and sublayer read one input, through this node. */
    if ((kids[0] = node_resid(p, st, j - 1)) < 0)
        return -1;
    if ((value = val_block_step(p, j, p->nodes[kids[0]].value)) < 0)
        return -1;
    return resid_add(p, sym, prefix, st, j, value, kids, 1, SPLIT_NO, rule);
}

int plan_patched(plan *p, const ruleset *r, int32_t *root, npp_err *e)
{
    p->err = e;
    p->rules = r;
    p->words = rules_state_words(r);
    *root = -1;
    if (p->plan_seconds > 0 && p->deadline_ms <= 0)
        p->deadline_ms = mono_ms() + p->plan_seconds * 1e3;
    free(p->scratch);
    if (!(p->scratch = malloc((size_t)p->words * 8 + 8)))
        return npp_fail(e, NPP_ENOMEM, "", "out of memory planning");
    int sym = graph_sym(&p->g, G_LN_FINAL, -1, -1);
    rules_start(r, p->scratch);
    int32_t st0 = state_intern(p, p->scratch), st = st0 < 0 ? -1 : step(p, st0, sym);
    int32_t kid = st < 0 ? -1 : node_resid(p, st, 2 * p->g.L);
    if (kid < 0)
        return e && e->code ? e->code : NPP_ELIMIT;
    int32_t x = p->nodes[kid].value, v = val_op(p, OP_LNF, -1, &x, 1);
    if (v < 0 || (p->root_node = node_add(p, sym, st0, v, &kid, 1, SPLIT_NO, -1)) < 0)
        return e && e->code ? e->code : NPP_ELIMIT;
    int rc = check_size(p);
    if (!rc)
        *root = v;
    return rc;
}

/* v with its EDIT wrappers taken off (the value an edit changed). */
static int32_t unwrap_edits(const plan *p, int32_t v)
{
    while (v >= 0 && p->v[v].op == OP_EDIT)
        v = p->v[v].in[0];
    return v;
}

int32_t plan_trunk_attn(const plan *p, int layer)
{
    if (p->root_node < 0 || layer < 0 || layer >= p->g.L)
        return -1;
    int32_t n = p->nodes[p->root_node].kids[0]; /* residual 2L */
    for (int j = 2 * p->g.L; j >= 1 && n >= 0; j--) {
        const plan_node *nd = &p->nodes[n];
        int split = nd->decision == SPLIT_YES && nd->nkids == 2;
        if (j == 2 * layer + 1) {
            int32_t v = split ? unwrap_edits(p, p->nodes[nd->kids[1]].value) /* a{i}.head */
                              : unwrap_edits(p, nd->value);                  /* x + attn(x) */
            if (v >= 0 && !split && p->v[v].op == OP_ADD)
                v = unwrap_edits(p, p->v[v].in[1]);
            return v >= 0 && (p->v[v].op == OP_ATTN || p->v[v].op == OP_ADELTA) ? v : -1;
        }
        n = nd->nkids ? nd->kids[0] : -1; /* the skip branch, or the one below */
    }
    return -1;
}

int plan_merge(plan *p, const plan *src, int32_t src_root, int32_t *root, npp_err *e)
{
    p->err = e;
    *root = -1;
    int32_t *map = malloc(((size_t)src->nv + 1) * sizeof *map), *in = NULL;
    int nin_cap = 0, rc = 0;
    if (!map)
        return npp_fail(e, NPP_ENOMEM, "", "out of memory planning");
    /* values are stored after their inputs, so one pass in order suffices */
    for (int32_t i = 0; i < src->nv && !rc; i++) {
        const plan_value *v = &src->v[i];
        if (v->nin > nin_cap) {
            int32_t *n = realloc(in, (size_t)v->nin * sizeof *n);
            if (!n) {
                rc = npp_fail(e, NPP_ENOMEM, "", "out of memory planning");
                break;
            }
            in = n, nin_cap = v->nin;
        }
        for (int k = 0; k < v->nin; k++)
            in[k] = map[v->in[k]];
        if ((map[i] = intern(p, v->key, v->op, v->layer, v->aux, v->rank, in, v->nin)) < 0)
            rc = e && e->code ? e->code : NPP_ENOMEM;
    }
    if (!rc && !(rc = check_size(p)))
        *root = map[src_root];
    free(map);
    free(in);
    return rc;
}

int plan_check_rules(const plan *p, const ruleset *r, npp_err *e)
{
    int nb = rules_count(r, RULES_BRANCH), nw = rules_count(r, RULES_WHICH),
        ni = rules_count(r, RULES_INTERVENE), emb = graph_sym(&p->g, G_EMB, -1, -1);
    uint8_t *used = calloc((size_t)(nb + nw + ni) + 1, 1);
    if (!used)
        return npp_fail(e, NPP_ENOMEM, "", "out of memory");
    for (int32_t i = 0; i < p->nn; i++) {
        const plan_node *n = &p->nodes[i];
        if (n->rule >= 0)
            used[n->sym == emb ? nb + n->rule : n->rule] = 1;
        if (n->erule >= 0)
            used[nb + nw + n->erule] = 1;
    }
    int rc = 0;
    for (int k = 0; k < nb + nw + ni && !rc; k++) {
        int kind = k < nb ? RULES_BRANCH : k < nb + nw ? RULES_WHICH : RULES_INTERVENE;
        int idx = k < nb ? k : k < nb + nw ? k - nb : k - nb - nw;
        if (used[k] || rules_optional(r, kind, idx))
            continue;
        /* the plain path of this model, to show what names a path holds */
        char path[96];
        int L = p->g.L;
        if (L == 1)
            snprintf(path, sizeof path, "ln_final/f0/a0/emb");
        else
            snprintf(path, sizeof path, "ln_final/f%d/a%d/%sf0/a0/emb", L - 1, L - 1,
                     L > 2 ? ".../" : "");
        const char *f = rules_field(r, kind, idx);
        const char *what = kind == RULES_BRANCH ? "node where the path tree can branch"
                           : kind == RULES_WHICH
                               ? "path"
                               : "node that takes an intervention (emb, a{i}, f{i}, a{i}.head "
                                 "under a split a{i}, a{i}.head{h} under a heads split, "
                                 "f{i}.head under a split f{i})";
        rc = npp_fail(e, NPP_EINVAL, f,
                      "%s: this rule decides nothing in this job: its pattern matches no %s, "
                      "or earlier rules decide everything it matches. A path names every node "
                      "from ln_final down to emb (unsplit, %s), so a pattern for a node "
                      "below the top needs a leading **/ (see docs/jobs.md). Add "
                      "\"optional\": true to keep a rule that may decide nothing",
                      f, what, path);
    }
    free(used);
    return rc;
}
