/* preset.c - the presets: common experiments compiled into branch/which
 * rules (the job's result shows the rules they became). One row of the
 * table and one function per preset; see preset.h. */
#include "patch/preset.h"

#include "patch/edges.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patch/job_internal.h"

/* ---- presets ------------------------------------------------------------------ */

typedef struct {
    gkind kind;
    int layer, idx, comp; /* comp: 0 q, 1 k, 2 v, -1 none */
    char name[48];
} pnode;

/* Parses a preset node name into kind, layer, index and q/k/v component. */
static int preset_node(const graph_dims *g, json_t *v, const char *field, pnode *n, npp_err *e)
{
    if (!json_is_string(v))
        return npp_fail(e, NPP_EINVAL, field, "%s: a node name such as \"a1.head3\"", field);
    int s = graph_parse(g, json_string_value(v));
    if (s < 0) {
        char near[48], hint[80] = "";
        if (graph_closest(g, json_string_value(v), near, sizeof near))
            snprintf(hint, sizeof hint, "; did you mean \"%s\"?", near);
        return npp_fail(
            e, NPP_EINVAL, field,
            "%s: \"%s\" is not a node of this model (%d layers, %d heads; node "
            "names: ln_final, emb, a{i}, f{i}, a{i}.head, a{i}.head{h}, a{i}.head{h}.q|k|v, "
            "f{i}.head)%s",
            field, json_string_value(v), g->L, g->H, hint);
    }
    gnode d = graph_node(g, s);
    n->kind = d.kind, n->layer = d.layer, n->idx = d.idx, n->comp = -1;
    if (d.kind == G_Q || d.kind == G_K || d.kind == G_V)
        n->comp = d.kind - G_Q;
    snprintf(n->name, sizeof n->name, "%s", json_string_value(v));
    return 0;
}

static json_t *rule_match(const char *pat, const char *key, json_t *val)
{
    return json_pack("{s:s,s:o}", "match", pat, key, val);
}

/* The preset's input field key ("from", "into") into *out, dflt when absent. */
static int preset_input(json_t *p, const char *key, int n_inputs, int dflt, int *out, npp_err *e)
{
    json_t *v = json_object_get(p, key);
    char f[32];
    *out = dflt;
    if (!v)
        return 0;
    snprintf(f, sizeof f, "preset.%s", key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= n_inputs)
        return npp_fail(e, NPP_EINVAL, f, "%s: an input index in 0..%d", f, n_inputs - 1);
    *out = (int)json_integer_value(v);
    return 0;
}

static int preset_from_into(json_t *p, int n_inputs, int *from, int *into, npp_err *e)
{
    if (preset_input(p, "from", n_inputs, 1, from, e) ||
        preset_input(p, "into", n_inputs, 0, into, e))
        return NPP_EINVAL;
    if (*from >= n_inputs)
        return npp_fail(e, NPP_EINVAL, "preset.from",
                        "preset.from: defaults to input 1, but the job has one input");
    return 0;
}

/* The intervene pattern for node n's value on every path (appending the
 * splits that make the node a path element) into pat; -1 if the node takes
 * no intervention (q/k/v inputs, ln_final). */
static int edit_target(const pnode *n, json_t *br, char *pat, size_t np)
{
    int L = n->layer;
    switch (n->kind) {
    case G_EMB: snprintf(pat, np, "**/emb"); return 0;
    case G_A:
    case G_F: snprintf(pat, np, "**/%c%d", n->kind == G_A ? 'a' : 'f', L); return 0;
    case G_AHEAD:
    case G_FHEAD: {
        char c = n->kind == G_AHEAD ? 'a' : 'f', sp[32];
        snprintf(sp, sizeof sp, "**/%c%d", c, L);
        json_array_append_new(br, rule_match(sp, "split", json_true()));
        snprintf(pat, np, "**/%c%d/%c%d.head", c, L, c, L);
        return 0;
    }
    case G_HEAD: {
        char sp[48];
        snprintf(sp, sizeof sp, "**/a%d", L);
        json_array_append_new(br, rule_match(sp, "split", json_true()));
        snprintf(sp, sizeof sp, "**/a%d/a%d.head", L, L);
        json_array_append_new(br, rule_match(sp, "split", json_string("heads")));
        snprintf(pat, np, "**/a%d.head/a%d.head%d", L, L, n->idx);
        return 0;
    }
    default: return -1;
    }
}

#define EDIT_NODES "emb, a{i}, f{i}, a{i}.head, a{i}.head{h} or f{i}.head"

/* The intervene rule {"match": pattern of node, key: value, ...} with the
 * preset's optional fields copied under their rule names. */
static int edit_rule(const job *j, json_t *p, const char *kind, json_t *br, json_t *iv,
                     const char *key, json_t *val, const char *const *copy, npp_err *e)
{
    pnode n;
    char pat[96];
    if (preset_node(&j->g, json_object_get(p, "node"), "preset.node", &n, e)) {
        json_decref(val);
        return NPP_EINVAL;
    }
    if (edit_target(&n, br, pat, sizeof pat)) {
        json_decref(val);
        return npp_fail(e, NPP_EINVAL, "preset.node",
                        "preset.node: \"%s\" cannot be %s; use " EDIT_NODES, n.name, kind);
    }
    json_t *r = rule_match(pat, key, val);
    for (int i = 0; copy[i]; i += 2)
        if (json_object_get(p, copy[i]))
            json_object_set(r, copy[i + 1], json_object_get(p, copy[i]));
    json_array_append_new(iv, r);
    return 0;
}

/* Activation patching of one node: the node's value (attention or MLP
 * output, a head's output, one of its q/k/v inputs, or the embedding) is
 * computed from input `from`, everything else from `into`, and everything
 * downstream recomputes. positions (attention and MLP only): only the
 * sublayer's input at those positions comes from `from`. */
static int preset_activation(const job *j, json_t *p, json_t *br, json_t *wh, json_t *iv,
                             npp_err *e)
{
    static const char *const known[] = {"type", "node", "from", "into", "positions", NULL};
    pnode n;
    int from, into;
    char pat[160];
    if (job_check_keys(p, "preset", known, e) ||
        preset_node(&j->g, json_object_get(p, "node"), "preset.node", &n, e) ||
        preset_from_into(p, j->n_inputs, &from, &into, e))
        return NPP_EINVAL;
    json_t *pos = json_object_get(p, "positions");
    int L = n.layer;
    if (n.kind == G_A || n.kind == G_F || (n.kind == G_HEAD && pos)) {
        /* the residual stream at a{i} / f{i}, or one head's output, at the
         * positions: input `from`'s value there, everything downstream
         * recomputes */
        static const char *const copy[] = {"positions", "positions", NULL};
        if (into)
            json_array_append_new(wh, rule_match("**", "input", json_integer(into)));
        return edit_rule(j, p, "patched", br, iv, "patch", json_integer(from), copy, e);
    }
    if (pos && n.kind != G_AHEAD && n.kind != G_FHEAD)
        return npp_fail(e, NPP_EINVAL, "preset.positions",
                        "preset.positions: only for a{i} and f{i} (the residual stream), "
                        "a{i}.head{h} (the head's output), a{i}.head (the attention's input at "
                        "those positions) and f{i}.head (the MLP at those positions)");
    json_t *pm = NULL;
    switch (n.kind) {
    case G_EMB: snprintf(pat, sizeof pat, "**/emb"); break;
    case G_AHEAD:
    case G_FHEAD: {
        char c = n.kind == G_AHEAD ? 'a' : 'f';
        snprintf(pat, sizeof pat, "**/%c%d", c, L);
        json_array_append_new(br, rule_match(pat, "split", json_true()));
        if (!pos) {
            snprintf(pat, sizeof pat, "**/%c%d/%c%d.head/**", c, L, c, L);
            break;
        }
        if (!json_is_array(pos) || !json_array_size(pos))
            return npp_fail(e, NPP_EINVAL, "preset.positions",
                            "preset.positions: a non-empty list of positions");
        snprintf(pat, sizeof pat, "**/%c%d/%c%d.head", c, L, c, L);
        json_array_append_new(br, rule_match(pat, "split", json_string("positions")));
        pm = json_array();
        for (size_t i = 0; i < json_array_size(pos); i++) {
            int t;
            char f[48];
            snprintf(f, sizeof f, "preset.positions[%zu]", i);
            if (job_position(j, json_array_get(pos, i), f, &t, e)) {
                json_decref(pm);
                return NPP_EINVAL;
            }
            snprintf(pat, sizeof pat, "**/%c%d.head/%c%d.head.pos%d/**", c, L, c, L, t);
            json_array_append_new(pm, json_string(pat));
        }
        break;
    }
    case G_HEAD:
    case G_Q:
    case G_K:
    case G_V:
        snprintf(pat, sizeof pat, "**/a%d", L);
        json_array_append_new(br, rule_match(pat, "split", json_true()));
        snprintf(pat, sizeof pat, "**/a%d/a%d.head", L, L);
        json_array_append_new(br, rule_match(pat, "split", json_string("heads")));
        if (n.comp < 0) {
            snprintf(pat, sizeof pat, "**/a%d.head/a%d.head%d/**", L, L, n.idx);
        } else {
            snprintf(pat, sizeof pat, "**/a%d.head/a%d.head%d", L, L, n.idx);
            json_array_append_new(br, rule_match(pat, "split", json_true()));
            snprintf(pat, sizeof pat, "**/a%d.head%d/a%d.head%d.%c/**", L, n.idx, L, n.idx,
                     "qkv"[n.comp]);
        }
        break;
    default:
        return npp_fail(e, NPP_EINVAL, "preset.node",
                        "preset.node: \"%s\" cannot be patched; use emb, a{i}, f{i}, a{i}.head, "
                        "a{i}.head{h}, a{i}.head{h}.q|k|v or f{i}.head",
                        n.name);
    }
    if (pm)
        json_array_append_new(wh, json_pack("{s:o,s:i}", "any", pm, "input", from));
    else
        json_array_append_new(wh, rule_match(pat, "input", json_integer(from)));
    if (into)
        json_array_append_new(wh, rule_match("**", "input", json_integer(into)));
    return 0;
}

/* Path from a residual node down to a sender's output. */
static int sender_path(const pnode *s, char *buf, size_t n)
{
    switch (s->kind) {
    case G_EMB: return snprintf(buf, n, "emb"), 0;
    case G_AHEAD: return snprintf(buf, n, "a%d/a%d.head", s->layer, s->layer), 0;
    case G_HEAD:
        return snprintf(buf, n, "a%d/a%d.head/a%d.head%d", s->layer, s->layer, s->layer, s->idx), 0;
    case G_FHEAD: return snprintf(buf, n, "f%d/f%d.head", s->layer, s->layer), 0;
    default: return -1;
    }
}

/* Path patching (Wang et al. 2022), direct paths only: each receiver's
 * input is the clean residual with the senders' outputs taken from input
 * `from`, reaching it through the residual stream alone (every a{i}, f{i}
 * split); everything else reads `into`, and everything downstream of the
 * receivers recomputes. */
static int preset_path(const job *j, json_t *p, json_t *br, json_t *wh, json_t *iv, npp_err *e)
{
    static const char *const known[] = {"type", "senders", "receivers", "from", "into", NULL};
    (void)iv;
    int from, into;
    char f[64], pat[256], sp[96];
    const graph_dims *g = &j->g;
    json_t *snd = json_object_get(p, "senders"), *rcv = json_object_get(p, "receivers");
    if (job_check_keys(p, "preset", known, e) || preset_from_into(p, j->n_inputs, &from, &into, e))
        return NPP_EINVAL;
    if (!json_is_array(snd) || !json_array_size(snd))
        return npp_fail(e, NPP_EINVAL, "preset.senders",
                        "preset.senders: a non-empty list of "
                        "nodes (a{i}.head{h}, a{i}.head, f{i}.head or emb)");
    if (!json_is_array(rcv) || !json_array_size(rcv))
        return npp_fail(e, NPP_EINVAL, "preset.receivers",
                        "preset.receivers: a non-empty list of "
                        "nodes (ln_final, a{i}.head{h}[.q|.k|.v], a{i}.head or f{i}.head)");
    /* Split every residual node so that direct paths exist. */
    char *all = malloc((size_t)g->L * 16 + 16);
    if (!all)
        return npp_fail(e, NPP_ENOMEM, "preset", "out of memory");
    int w = sprintf(all, "**/{");
    for (int i = 0; i < g->L; i++)
        w += sprintf(all + w, "%sa%d,f%d", i ? "," : "", i, i);
    sprintf(all + w, "}");
    json_array_append_new(br, rule_match(all, "split", json_true()));
    free(all);
    json_t *heads = json_array(); /* "split": "heads" at these layers */
    int *heads_done = calloc((size_t)g->L, sizeof *heads_done);
    pnode *S = calloc(json_array_size(snd), sizeof *S);
    pnode *Rs = calloc(json_array_size(rcv), sizeof *Rs);
    int rc = 0;
    if (!heads_done || !S || !Rs) {
        rc = npp_fail(e, NPP_ENOMEM, "preset", "out of memory");
        goto done;
    }
    for (size_t s = 0; s < json_array_size(snd); s++) {
        snprintf(f, sizeof f, "preset.senders[%zu]", s);
        if ((rc = preset_node(g, json_array_get(snd, s), f, &S[s], e)))
            goto done;
        if (sender_path(&S[s], sp, sizeof sp)) {
            rc = npp_fail(e, NPP_EINVAL, f,
                          "%s: \"%s\" cannot send; use a{i}.head{h}, "
                          "a{i}.head, f{i}.head or emb",
                          f, S[s].name);
            goto done;
        }
        for (size_t k = 0; k < s; k++)
            if (S[k].kind == S[s].kind && S[k].layer == S[s].layer && S[k].idx == S[s].idx &&
                S[k].comp == S[s].comp) {
                rc = npp_fail(e, NPP_EINVAL, f, "%s: \"%s\" is preset.senders[%zu] again", f,
                              S[s].name, k);
                goto done;
            }
        if (S[s].kind == G_HEAD && !heads_done[S[s].layer]++) {
            snprintf(pat, sizeof pat, "**/a%d/a%d.head", S[s].layer, S[s].layer);
            json_array_append_new(heads, json_string(pat));
        }
    }
    for (size_t r = 0; r < json_array_size(rcv); r++) {
        pnode R;
        char rp[128];
        snprintf(f, sizeof f, "preset.receivers[%zu]", r);
        if ((rc = preset_node(g, json_array_get(rcv, r), f, &R, e)))
            goto done;
        Rs[r] = R;
        for (size_t k = 0; k < r; k++) {
            const pnode K = Rs[k];
            if (K.kind == R.kind && K.layer == R.layer && K.idx == R.idx && K.comp == R.comp) {
                rc = npp_fail(e, NPP_EINVAL, f, "%s: \"%s\" is preset.receivers[%zu] again", f,
                              R.name, k);
                goto done;
            }
        }
        int order = graph_stream_index(g, R.kind, R.layer);
        switch (R.kind) {
        case G_LN_FINAL: snprintf(rp, sizeof rp, "ln_final"); break;
        case G_AHEAD: snprintf(rp, sizeof rp, "**/a%d/a%d.head", R.layer, R.layer); break;
        case G_FHEAD: snprintf(rp, sizeof rp, "**/f%d/f%d.head", R.layer, R.layer); break;
        case G_HEAD:
        case G_Q:
        case G_K:
        case G_V:
            if (!heads_done[R.layer]++) {
                snprintf(pat, sizeof pat, "**/a%d/a%d.head", R.layer, R.layer);
                json_array_append_new(heads, json_string(pat));
            }
            if (R.comp < 0) {
                snprintf(rp, sizeof rp, "**/a%d.head/a%d.head%d", R.layer, R.layer, R.idx);
            } else {
                snprintf(pat, sizeof pat, "**/a%d.head/a%d.head%d", R.layer, R.layer, R.idx);
                json_array_append_new(br, rule_match(pat, "split", json_true()));
                snprintf(rp, sizeof rp, "**/a%d.head%d/a%d.head%d.%c", R.layer, R.idx, R.layer,
                         R.idx, "qkv"[R.comp]);
            }
            break;
        default:
            rc = npp_fail(e, NPP_EINVAL, f,
                          "%s: \"%s\" cannot receive; use ln_final, "
                          "a{i}.head{h}[.q|.k|.v], a{i}.head or f{i}.head",
                          f, R.name);
            goto done;
        }
        for (size_t s = 0; s < json_array_size(snd); s++) {
            if (graph_stream_index(g, S[s].kind, S[s].layer) >= order) {
                rc = npp_fail(e, NPP_EINVAL, "preset.senders",
                              "preset: sender \"%s\" is not upstream of receiver \"%s\"", S[s].name,
                              R.name);
                goto done;
            }
            sender_path(&S[s], sp, sizeof sp);
            snprintf(pat, sizeof pat, "%s/%s/**", rp, sp);
            if (S[s].kind == G_EMB)
                snprintf(pat, sizeof pat, "%s/emb", rp);
            json_array_append_new(wh, rule_match(pat, "input", json_integer(from)));
        }
    }
    if (json_array_size(heads))
        json_array_append_new(br, json_pack("{s:O,s:s}", "any", heads, "split", "heads"));
    if (into)
        json_array_append_new(wh, rule_match("**", "input", json_integer(into)));
done:
    json_decref(heads);
    free(heads_done);
    free(S);
    free(Rs);
    return rc;
}

/* The run reads input `into` (default 0) everywhere. */
static int preset_into(const job *j, json_t *p, json_t *wh, int *into, npp_err *e)
{
    if (preset_input(p, "into", j->n_inputs, 0, into, e))
        return NPP_EINVAL;
    if (*into)
        json_array_append_new(wh, rule_match("**", "input", json_integer(*into)));
    return 0;
}

/* Ablation of one node's value on every path: zero, or the mean over
 * input `of`'s batch (default `into`) of its plain-run value there. */
static int preset_ablate(const job *j, json_t *p, json_t *br, json_t *wh, json_t *iv, npp_err *e)
{
    static const char *const known[] = {"type", "node", "value", "of", "into", "positions", NULL};
    static const char *const copy[] = {"positions", "positions", "of", "of", NULL};
    int into;
    json_t *v = json_object_get(p, "value");
    const char *val = v ? (json_is_string(v) ? json_string_value(v) : "") : "zero";
    if (job_check_keys(p, "preset", known, e) || preset_into(j, p, wh, &into, e))
        return NPP_EINVAL;
    if (strcmp(val, "zero") && strcmp(val, "mean"))
        return npp_fail(e, NPP_EINVAL, "preset.value", "preset.value: \"zero\" or \"mean\"");
    if (json_object_get(p, "of") && strcmp(val, "mean"))
        return npp_fail(e, NPP_EINVAL, "preset.of", "preset.of: only with \"value\": \"mean\"");
    int rc = edit_rule(j, p, "ablated", br, iv, "ablate", json_string(val), copy, e);
    if (!rc && !strcmp(val, "mean") && !json_object_get(p, "of"))
        json_object_set_new(json_array_get(iv, json_array_size(iv) - 1), "of", json_integer(into));
    return rc;
}

/* Steering: scale x vector added to one node's value on every path. */
static int preset_steer(const job *j, json_t *p, json_t *br, json_t *wh, json_t *iv, npp_err *e)
{
    static const char *const known[] = {"type", "node",      "vector", "scale",
                                        "into", "positions", NULL};
    static const char *const copy[] = {"positions", "positions", "scale", "scale", NULL};
    int into;
    json_t *v = json_object_get(p, "vector");
    if (job_check_keys(p, "preset", known, e) || preset_into(j, p, wh, &into, e))
        return NPP_EINVAL;
    if (!v)
        return npp_fail(
            e, NPP_EINVAL, "preset.vector",
            "preset.vector: missing (%d numbers, or {\"base64\": ..., \"shape\": [%d]})",
            j->edits.C, j->edits.C);
    return edit_rule(j, p, "steered", br, iv, "steer", json_incref(v), copy, e);
}

/* ---- circuits ---------------------------------------------------------------- */

int preset_circuit(const job *j, json_t *c, json_t **br, json_t **wh, npp_err *e)
{
    static const char *const known[] = {"edges", "comment", NULL};
    const graph_dims *g = &j->g;
    edge_set es;
    *br = *wh = NULL;
    if (!json_is_object(c))
        return npp_fail(e, NPP_EINVAL, "circuit",
                        "circuit: an object {\"edges\": [[sender, receiver], ...]}");
    if (job_check_keys(c, "circuit", known, e))
        return NPP_EINVAL;
    if (j->n_inputs < 2)
        return npp_fail(e, NPP_EINVAL, "inputs",
                        "inputs: a circuit needs two (input 0 runs the circuit's edges, input 1 "
                        "every other edge)");
    json_t *list = json_object_get(c, "edges");
    if (!list)
        return npp_fail(e, NPP_EINVAL, "circuit.edges",
                        "circuit.edges: missing (a list of [sender, receiver], may be empty)");
    if (edges_parse(g, list, "circuit.edges", &es, e))
        return NPP_EINVAL;
    edges_free(&es);
    /* the full split: every residual node, every attention into heads,
     * every head into q, k, v */
    char *all = malloc((size_t)g->L * 16 + 16);
    if (!all || !(*br = json_array()) || !(*wh = json_array())) {
        free(all);
        return npp_fail(e, NPP_ENOMEM, "circuit", "out of memory");
    }
    int w = sprintf(all, "**/{");
    for (int i = 0; i < g->L; i++)
        w += sprintf(all + w, "%sa%d,f%d", i ? "," : "", i, i);
    sprintf(all + w, "}");
    json_array_append_new(*br, rule_match(all, "split", json_true()));
    free(all);
    json_array_append_new(*br, rule_match("**/a*.head", "split", json_string("heads")));
    json_array_append_new(*br, rule_match("**/a*.head/a*.head*", "split", json_true()));
    /* optional: with every edge listed, no path leaves the circuit */
    json_array_append_new(
        *wh, json_pack("{s:O,s:b,s:i,s:b}", "edges", list, "not", 1, "input", 1, "optional", 1));
    return 0;
}

/* ---- the table -------------------------------------------------------------- */

static const preset_def PRESETS[] = {
    {"activation_patch", preset_activation,
     "one node's value from input `from`, all else from `into`; downstream recomputes"},
    {"path_patch", preset_path,
     "direct paths from senders to receivers read `from` (Wang et al. 2022), all else `into`"},
    {"ablate", preset_ablate, "one node's value zeroed or replaced by a batch mean, on every path"},
    {"steer", preset_steer, "scale x vector added to one node's value, on every path"},
};

#define NPRESETS (int)(sizeof PRESETS / sizeof PRESETS[0])

const preset_def *preset_find(const char *name)
{
    for (int i = 0; name && i < NPRESETS; i++)
        if (!strcmp(PRESETS[i].name, name))
            return &PRESETS[i];
    return NULL;
}

int preset_compile(const job *j, json_t *p, json_t **br, json_t **wh, json_t **iv, npp_err *e)
{
    *br = *wh = *iv = NULL;
    if (!json_is_object(p))
        return npp_fail(e, NPP_EINVAL, "preset", "preset: must be an object with a \"type\"");
    json_t *t = json_object_get(p, "type");
    const char *ty = json_is_string(t) ? json_string_value(t) : "";
    const preset_def *d = preset_find(ty);
    if (!d) {
        char names[256];
        size_t w = 0;
        names[0] = 0;
        for (int i = 0; i < NPRESETS && w < sizeof names; i++)
            w += (size_t)snprintf(names + w, sizeof names - w, "%s%s", i ? ", " : "",
                                  PRESETS[i].name);
        return npp_fail(e, NPP_EINVAL, "preset.type", "preset.type: \"%s\" is not a preset (%s)",
                        ty, names);
    }
    *br = json_array(), *wh = json_array(), *iv = json_array();
    return d->compile(j, p, *br, *wh, *iv, e);
}
