/* job.c - parsing and validating a job document, and compiling presets
 * into rules; see job.h. Every refusal names its field. */
#include "patch/job.h"

#include "patch/edges.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tok.h"
#include "patch/job_internal.h"
#include "patch/preset.h"

/* ---- inputs --------------------------------------------------------------- */

static int all_of(json_t *a, int (*pred)(const json_t *))
{
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) if (!pred(v)) return 0;
    return 1;
}

static int is_int(const json_t *v)
{
    return json_is_integer(v);
}
static int is_str(const json_t *v)
{
    return json_is_string(v);
}
static int is_arr(const json_t *v)
{
    return json_is_array(v);
}

/* Token ids of one example (a text or an id list) into *ids (new). */
static int example_ids(const model *m, json_t *v, const char *field, int64_t **ids, int *n,
                       npp_err *e)
{
    if (json_is_string(v)) {
        int32_t *t;
        size_t k;
        npp_err te = {0};
        if (tok_encode(m->tok, json_string_value(v), json_string_length(v), &t, &k, &te))
            return npp_fail(e, te.code, field, "%s: %s", field, te.message);
        *ids = malloc((k ? k : 1) * sizeof **ids);
        for (size_t i = 0; *ids && i < k; i++)
            (*ids)[i] = t[i];
        free(t);
        *n = (int)k;
        return *ids ? 0 : npp_fail(e, NPP_ENOMEM, field, "out of memory");
    }
    size_t k = json_array_size(v);
    *ids = malloc((k ? k : 1) * sizeof **ids);
    if (!*ids)
        return npp_fail(e, NPP_ENOMEM, field, "out of memory");
    for (size_t i = 0; i < k; i++) {
        json_t *x = json_array_get(v, i);
        if (!json_is_integer(x) || json_integer_value(x) < 0 ||
            json_integer_value(x) >= m->cfg.vocab_size) {
            free(*ids);
            *ids = NULL;
            return npp_fail(e, NPP_EINVAL, field, "%s[%zu]: not a token id in 0..%d", field, i,
                            m->cfg.vocab_size - 1);
        }
        (*ids)[i] = json_integer_value(x);
    }
    *n = (int)k;
    return 0;
}

/* Every input's examples into j->ids, right-padded to the longest (T).
 * Example b may be shorter than others, but has one length in every input:
 * under causal attention no position reads a later one, so positions
 * before an example's length are exactly what it gives alone, whatever
 * the padding (token 0) computes. */
static int parse_inputs(const model *m, json_t *in, job *j, npp_err *e)
{
    char f[64];
    int rc = 0;
    if (!json_is_array(in) || json_array_size(in) == 0)
        return npp_fail(e, NPP_EINVAL, "inputs", "inputs: must be a non-empty array");
    if (json_array_size(in) > JOB_MAX_INPUTS)
        return npp_fail(e, NPP_EINVAL, "inputs", "inputs: %zu inputs, at most %d",
                        json_array_size(in), JOB_MAX_INPUTS);
    j->n_inputs = (int)json_array_size(in);
    int64_t **ex = NULL; /* n_inputs x B examples' ids, until copied */
    int batch0_is_list = 0;
    for (int i = 0; i < j->n_inputs && !rc; i++) {
        json_t *x = json_array_get(in, (size_t)i);
        json_t *examples;
        int batch = 0;
        snprintf(f, sizeof f, "inputs[%d]", i);
        if (json_is_string(x) || (json_is_array(x) && json_array_size(x) && all_of(x, is_int))) {
            examples = json_pack("[O]", x);
        } else if (json_is_array(x) && json_array_size(x) &&
                   (all_of(x, is_str) || all_of(x, is_arr))) {
            examples = json_incref(x);
            batch = 1;
        } else {
            rc = npp_fail(e, NPP_EINVAL, f,
                          "%s: expected a text, a list of token ids, or a "
                          "non-empty batch (a list of texts or of id lists)",
                          f);
            break;
        }
        int B = (int)json_array_size(examples);
        if (i == 0) {
            j->B = B;
            batch0_is_list = batch;
            ex = calloc((size_t)j->n_inputs * B, sizeof *ex);
            j->len = calloc((size_t)B, sizeof *j->len);
            if (!ex || !j->len)
                rc = npp_fail(e, NPP_ENOMEM, "inputs", "out of memory");
        } else if (B != j->B) {
            rc = npp_fail(e, NPP_EINVAL, f,
                          "%s: batch of %d but inputs[0] has %d (all inputs must have "
                          "the same batch size)",
                          f, B, j->B);
        }
        for (int b = 0; b < B && !rc; b++) {
            char fb[80], f0[80];
            int n = 0;
            int64_t **ids = &ex[(size_t)i * B + b];
            snprintf(fb, sizeof fb, batch ? "%s[%d]" : "%s", f, b);
            if (batch0_is_list)
                snprintf(f0, sizeof f0, "inputs[0][%d]", b);
            else
                snprintf(f0, sizeof f0, "inputs[0]");
            if ((rc = example_ids(m, json_array_get(examples, (size_t)b), fb, ids, &n, e)))
                break;
            if (n == 0)
                rc = npp_fail(e, NPP_EINVAL, fb, "%s: has no tokens", fb);
            else if (n > m->cfg.n_positions)
                rc = npp_fail(e, NPP_EINVAL, fb, "%s: %d tokens, over the model's context of %d",
                              fb, n, m->cfg.n_positions);
            else if (i == 0)
                j->len[b] = n, j->T = n > j->T ? n : j->T;
            else if (n != j->len[b])
                rc = npp_fail(e, NPP_EINVAL, fb,
                              "%s: %d tokens but %s has %d (example %d must have the same "
                              "length in every input; examples may differ from each other)",
                              fb, n, f0, j->len[b], b);
        }
        json_decref(examples);
    }
    if (!rc && !(j->ids = calloc((size_t)j->n_inputs * j->B * j->T, sizeof *j->ids)))
        rc = npp_fail(e, NPP_ENOMEM, "inputs", "out of memory");
    for (int b = 0; !rc && b < j->B; b++)
        j->uneven |= j->len[b] != j->T;
    for (int i = 0; ex && i < j->n_inputs; i++)
        for (int b = 0; b < j->B; b++) {
            int64_t *src = ex[(size_t)i * j->B + b];
            if (!rc) /* the padding stays token 0 */
                memcpy(j->ids + ((size_t)i * j->B + b) * j->T, src,
                       (size_t)j->len[b] * sizeof *src);
            free(src);
        }
    free(ex);
    return rc;
}

/* ---- small typed getters ----------------------------------------------------- */

/* A text whose space-prefixed form is also one token is most likely meant
 * with GPT-2's leading space (" hard", as the word is after another word):
 * the job runs as written, with a warning in the result. */
static void warn_space(const model *m, json_t *v, const char *field, int64_t id, json_t *warnings)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v), k;
    int32_t *t = NULL;
    if (!warnings || !n || s[0] == ' ' || n > 256 || json_array_size(warnings) >= 16)
        return; /* 16 say it: a batch of 1,000 same mistakes need not */
    char buf[260];
    buf[0] = ' ';
    memcpy(buf + 1, s, n);
    if (tok_encode(m->tok, buf, n + 1, &t, &k, NULL) == 0 && k == 1) {
        json_t *w = json_object();
        json_object_set_new(w, "field", json_string(field));
        json_object_set_new(w, "message",
                            json_sprintf("%s: \"%s\" is token %lld; \" %s\" (with GPT-2's leading "
                                         "space, as a word is after another word) is token %d. "
                                         "The job used %lld",
                                         field, s, (long long)id, s, t[0], (long long)id));
        json_array_append_new(warnings, w);
    }
    free(t);
}

static int get_token(const model *m, json_t *v, const char *field, int64_t *out, json_t *warnings,
                     npp_err *e)
{
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0 || json_integer_value(v) >= m->cfg.vocab_size)
            return npp_fail(e, NPP_EINVAL, field, "%s: token id outside 0..%d", field,
                            m->cfg.vocab_size - 1);
        *out = json_integer_value(v);
        return 0;
    }
    if (!json_is_string(v))
        return npp_fail(e, NPP_EINVAL, field, "%s: expected a token (a text or an id)", field);
    int32_t *t;
    size_t n;
    npp_err te = {0};
    if (tok_encode(m->tok, json_string_value(v), json_string_length(v), &t, &n, &te))
        return npp_fail(e, te.code, field, "%s: %s", field, te.message);
    int64_t id = n ? t[0] : -1;
    free(t);
    if (n != 1)
        return npp_fail(e, NPP_EINVAL, field,
                        "%s: \"%s\" is %zu tokens; give a text that is one token (mind the "
                        "leading space) or a token id",
                        field, json_string_value(v), n);
    *out = id;
    warn_space(m, v, field, id, warnings);
    return 0;
}

int job_position(const job *j, json_t *v, const char *field, int *out, npp_err *e)
{
    int T = j->T;
    if (j->uneven && json_is_integer(v) && json_integer_value(v) < 0)
        return npp_fail(e, NPP_EINVAL, field,
                        "%s: the examples have different lengths, so a position here counts "
                        "from the start: 0..%d",
                        field, T - 1);
    if (!json_is_integer(v) || json_integer_value(v) < -T || json_integer_value(v) >= T)
        return npp_fail(e, NPP_EINVAL, field,
                        "%s: a position in %d..%d (negative counts from the end)", field, -T,
                        T - 1);
    int p = (int)json_integer_value(v);
    *out = p < 0 ? p + T : p;
    return 0;
}

/* The shortest example's length. */
static int min_len(const job *j)
{
    int n = j->T;
    for (int b = 0; b < j->B; b++)
        n = j->len[b] < n ? j->len[b] : n;
    return n;
}

/* A position of each example: out[b * stride] for b in 0..nb-1. Negative
 * counts from each example's own end. hi: the largest allowed (T - 1 for
 * an output row, which may be padding in a shorter example; the shortest
 * length - 1 where every example needs a real token). */
static int example_position(const job *j, json_t *v, const char *field, int hi, int *out,
                            int stride, int nb, npp_err *e)
{
    int lo = -min_len(j);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        if (!j->uneven)
            return npp_fail(e, NPP_EINVAL, field,
                            "%s: a position in %d..%d (negative counts from the end)", field, lo,
                            hi);
        return npp_fail(e, NPP_EINVAL, field,
                        "%s: a position in %d..%d (negative counts from each example's end; "
                        "the shortest example has %d tokens, the longest %d)",
                        field, lo, hi, -lo, j->T);
    }
    int p = (int)json_integer_value(v);
    for (int b = 0; b < nb; b++)
        out[(size_t)b * stride] = p < 0 ? p + j->len[b] : p;
    return 0;
}

int job_check_keys(json_t *obj, const char *field, const char *const *known, npp_err *e)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        int ok = 0;
        for (int i = 0; known[i]; i++)
            ok |= !strcmp(k, known[i]);
        if (!ok)
            return npp_fail(e, NPP_EINVAL, field, "%s: unknown key \"%s\"", field, k);
    }
    return 0;
}

static int get_bool(json_t *obj, const char *key, const char *field, int *out, npp_err *e)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return npp_fail(e, NPP_EINVAL, field, "%s.%s: must be true or false", field, key);
    *out = json_is_true(v);
    return 0;
}

/* ---- outputs and metric ------------------------------------------------------- */

#define ACT_NAMES                                                                                  \
    "emb, a{i}, f{i} (the residual stream after block i's attention, after block i), "             \
    "a{i}.head (the attention output), a{i}.head{h} (head h's share of it, without the "           \
    "bias), f{i}.head (the MLP output), a{i}.pattern (the attention probabilities)"

/* outputs.activations: {"nodes": [names], "input": K}. */
static int parse_activations(const model *m, json_t *a, job *j, npp_err *e)
{
    static const char *const known[] = {"nodes", "input", NULL};
    char f[64];
    if (!json_is_object(a))
        return npp_fail(e, NPP_EINVAL, "outputs.activations",
                        "outputs.activations: an object {\"nodes\": [names], \"input\": K}");
    if (job_check_keys(a, "outputs.activations", known, e))
        return NPP_EINVAL;
    json_t *in = json_object_get(a, "input"), *nodes = json_object_get(a, "nodes");
    if (in && (!json_is_integer(in) || json_integer_value(in) < 0 ||
               json_integer_value(in) >= j->n_inputs))
        return npp_fail(e, NPP_EINVAL, "outputs.activations.input",
                        "outputs.activations.input: an input index in 0..%d", j->n_inputs - 1);
    j->act_input = in ? (int)json_integer_value(in) : 0;
    size_t most = 4 * (size_t)m->cfg.n_layer * (m->cfg.n_head + 4) + 1; /* every name once */
    if (!json_is_array(nodes) || !json_array_size(nodes) || json_array_size(nodes) > most)
        return npp_fail(e, NPP_EINVAL, "outputs.activations.nodes",
                        "outputs.activations.nodes: a non-empty list of node names (" ACT_NAMES
                        ")");
    j->nact = (int)json_array_size(nodes);
    if (!(j->act = calloc((size_t)j->nact, sizeof *j->act)))
        return npp_fail(e, NPP_ENOMEM, "outputs", "out of memory");
    for (int i = 0; i < j->nact; i++) {
        json_t *v = json_array_get(nodes, (size_t)i);
        job_act *ac = &j->act[i];
        const char *name = json_is_string(v) ? json_string_value(v) : "";
        int layer = -1;
        char canon[32] = "";
        snprintf(f, sizeof f, "outputs.activations.nodes[%d]", i);
        if (sscanf(name, "a%d.pattern", &layer) == 1)
            snprintf(canon, sizeof canon, "a%d.pattern", layer);
        if (canon[0] && !strcmp(canon, name) && layer >= 0 && layer < m->cfg.n_layer) {
            ac->kind = -1, ac->layer = layer, ac->idx = -1;
        } else {
            int sym = json_is_string(v) ? graph_parse(&j->g, name) : -1;
            gnode d = sym >= 0 ? graph_node(&j->g, sym) : (gnode){G_LN_FINAL, -1, -1};
            if (sym < 0 || !(d.kind == G_EMB || d.kind == G_A || d.kind == G_F ||
                             d.kind == G_AHEAD || d.kind == G_HEAD || d.kind == G_FHEAD)) {
                char near[48], hint[80] = "";
                if (sym < 0 && json_is_string(v) && graph_closest(&j->g, name, near, sizeof near))
                    snprintf(hint, sizeof hint, "; did you mean \"%s\"?", near);
                return npp_fail(e, NPP_EINVAL, f,
                                "%s: %s%s%s; activations are %s (%d layers, %d heads)%s", f,
                                json_is_string(v) ? "\"" : "not a name", name,
                                json_is_string(v) ? "\" is not one" : "", ACT_NAMES, m->cfg.n_layer,
                                m->cfg.n_head, hint);
            }
            ac->kind = (int)d.kind, ac->layer = d.layer, ac->idx = d.idx;
        }
        snprintf(ac->name, sizeof ac->name, "%s", name);
        for (int k = 0; k < i; k++)
            if (!strcmp(j->act[k].name, ac->name))
                return npp_fail(e, NPP_EINVAL, f,
                                "%s: \"%s\" is already listed at outputs.activations.nodes[%d]", f,
                                name, k);
    }
    return 0;
}

static int parse_outputs(const model *m, json_t *o, job *j, npp_err *e)
{
    static const char *const known[] = {"positions",      "top_k",     "logits",    "hidden_states",
                                        "token_logprobs", "attention", "baselines", "trace",
                                        "activations",    NULL};
    char f[64];
    j->top_k = 5;
    if (!o || json_is_null(o)) {
        o = NULL;
    } else if (!json_is_object(o)) {
        return npp_fail(e, NPP_EINVAL, "outputs", "outputs: must be an object");
    }
    if (o && job_check_keys(o, "outputs", known, e))
        return NPP_EINVAL;
    json_t *pos = o ? json_object_get(o, "positions") : NULL;
    int last = !pos || (json_is_string(pos) && !strcmp(json_string_value(pos), "last"));
    int all = json_is_string(pos) && !strcmp(json_string_value(pos), "all");
    if (!last && !all && !(json_is_array(pos) && json_array_size(pos) > 0))
        return npp_fail(e, NPP_EINVAL, "outputs.positions",
                        "outputs.positions: \"last\", \"all\" or a non-empty list of positions");
    j->npos = last ? 1 : all ? j->T : (int)json_array_size(pos);
    /* More positions than tokens repeat one in every example: example 0's
     * row finds it, without B x npos of memory and time. */
    int nb = j->npos > j->T ? 1 : j->B;
    if (!(j->positions = malloc((size_t)nb * j->npos * sizeof *j->positions)))
        return npp_fail(e, NPP_ENOMEM, "outputs", "out of memory");
    for (int b = 0; b < nb; b++)
        for (int i = 0; i < j->npos && !json_is_array(pos); i++)
            j->positions[b * j->npos + i] = last ? j->len[b] - 1 : i;
    if (json_is_array(pos)) {
        /* A repeated position would only repeat rows of the result (and
         * 20,000 of one position would make a large one): refused. */
        int *seen = calloc((size_t)j->T, sizeof *seen);
        if (!seen)
            return npp_fail(e, NPP_ENOMEM, "outputs", "out of memory");
        for (int i = 0; i < j->npos; i++) {
            snprintf(f, sizeof f, "outputs.positions[%d]", i);
            if (example_position(j, json_array_get(pos, (size_t)i), f, j->T - 1, j->positions + i,
                                 j->npos, nb, e)) {
                free(seen);
                return NPP_EINVAL;
            }
        }
        for (int b = 0; b < nb; b++) {
            const int *row = j->positions + b * j->npos;
            for (int i = 0; i < j->npos; i++) {
                if (seen[row[i]]) {
                    int first = seen[row[i]] - 1;
                    snprintf(f, sizeof f, "outputs.positions[%d]", i);
                    free(seen);
                    if (j->uneven)
                        return npp_fail(e, NPP_EINVAL, f,
                                        "%s: in example %d (%d tokens) this is position %d, "
                                        "already listed at outputs.positions[%d]; list each "
                                        "position once",
                                        f, b, j->len[b], row[i], first);
                    return npp_fail(e, NPP_EINVAL, f,
                                    "%s: position %d is already listed at "
                                    "outputs.positions[%d]; list each position once",
                                    f, row[i], first);
                }
                seen[row[i]] = i + 1;
            }
            for (int i = 0; i < j->npos; i++)
                seen[row[i]] = 0;
        }
        free(seen);
    }
    json_t *k = o ? json_object_get(o, "top_k") : NULL;
    if (k) {
        if (!json_is_integer(k) || json_integer_value(k) < 0 || json_integer_value(k) > 1000)
            return npp_fail(e, NPP_EINVAL, "outputs.top_k", "outputs.top_k: an integer in 0..1000");
        j->top_k = (int)json_integer_value(k);
    }
    if (o && (get_bool(o, "logits", "outputs", &j->want_logits, e) ||
              get_bool(o, "hidden_states", "outputs", &j->want_hidden, e) ||
              get_bool(o, "baselines", "outputs", &j->want_baselines, e) ||
              get_bool(o, "trace", "outputs", &j->want_trace, e)))
        return NPP_EINVAL;
    json_t *tl = o ? json_object_get(o, "token_logprobs") : NULL;
    if (tl) {
        if (!json_is_array(tl))
            return npp_fail(e, NPP_EINVAL, "outputs.token_logprobs",
                            "outputs.token_logprobs: a list of tokens (texts or ids)");
        j->ntoklp = (int)json_array_size(tl);
        if (!(j->toklp = malloc(((size_t)j->ntoklp + 1) * sizeof *j->toklp)))
            return npp_fail(e, NPP_ENOMEM, "outputs", "out of memory");
        for (int i = 0; i < j->ntoklp; i++) {
            snprintf(f, sizeof f, "outputs.token_logprobs[%d]", i);
            if (get_token(m, json_array_get(tl, (size_t)i), f, &j->toklp[i], j->warnings, e))
                return NPP_EINVAL;
        }
    }
    json_t *ac = o ? json_object_get(o, "activations") : NULL;
    if (ac && parse_activations(m, ac, j, e))
        return NPP_EINVAL;
    json_t *at = o ? json_object_get(o, "attention") : NULL;
    if (at) {
        if (!json_is_array(at))
            return npp_fail(e, NPP_EINVAL, "outputs.attention",
                            "outputs.attention: a list of layer indices");
        j->nattn = (int)json_array_size(at);
        if (!(j->attn_layers = malloc(((size_t)j->nattn + 1) * sizeof *j->attn_layers)))
            return npp_fail(e, NPP_ENOMEM, "outputs", "out of memory");
        for (int i = 0; i < j->nattn; i++) {
            json_t *l = json_array_get(at, (size_t)i);
            if (!json_is_integer(l) || json_integer_value(l) < 0 ||
                json_integer_value(l) >= m->cfg.n_layer)
                return npp_fail(e, NPP_EINVAL, "outputs.attention",
                                "outputs.attention[%d]: a layer in 0..%d", i, m->cfg.n_layer - 1);
            j->attn_layers[i] = (int)json_integer_value(l);
            for (int q = 0; q < i; q++)
                if (j->attn_layers[q] == j->attn_layers[i])
                    return npp_fail(e, NPP_EINVAL, "outputs.attention",
                                    "outputs.attention[%d]: layer %d is already listed", i,
                                    j->attn_layers[i]);
        }
    }
    return 0;
}

/* A metric token: one for the whole batch, or a list with one per example.
 * *out is new (B entries). */
static int get_tokens(const model *m, const job *j, json_t *v, const char *field, int64_t **out,
                      npp_err *e)
{
    char f[96];
    if (!(*out = malloc((size_t)j->B * sizeof **out)))
        return npp_fail(e, NPP_ENOMEM, field, "out of memory");
    if (!json_is_array(v)) {
        if (get_token(m, v, field, &(*out)[0], j->warnings, e))
            return NPP_EINVAL;
        for (int b = 1; b < j->B; b++)
            (*out)[b] = (*out)[0];
        return 0;
    }
    if ((int)json_array_size(v) != j->B)
        return npp_fail(e, NPP_EINVAL, field,
                        "%s: a list of %zu tokens, but the batch has %d examples", field,
                        json_array_size(v), j->B);
    for (int b = 0; b < j->B; b++) {
        snprintf(f, sizeof f, "%s[%d]", field, b);
        if (get_token(m, json_array_get(v, (size_t)b), f, &(*out)[b], j->warnings, e))
            return NPP_EINVAL;
    }
    return 0;
}

static int parse_metric(const model *m, json_t *mt, job *j, npp_err *e)
{
    static const char *const known[] = {"type",     "target",    "baseline", "token",
                                        "position", "normalize", NULL};
    char names[512], f[64];
    if (!mt || json_is_null(mt))
        return 0;
    if (!json_is_object(mt))
        return npp_fail(e, NPP_EINVAL, "metric", "metric: must be an object");
    if (job_check_keys(mt, "metric", known, e))
        return NPP_EINVAL;
    json_t *t = json_object_get(mt, "type");
    if (!(j->metric = metric_find(json_is_string(t) ? json_string_value(t) : NULL))) {
        metric_names(names, sizeof names);
        return npp_fail(e, NPP_EINVAL, "metric.type", "metric.type: one of %s", names);
    }
    if (!(j->m_pos = malloc((size_t)j->B * sizeof *j->m_pos)))
        return npp_fail(e, NPP_ENOMEM, "metric", "out of memory");
    for (int b = 0; b < j->B; b++)
        j->m_pos[b] = j->len[b] - 1;
    if (get_bool(mt, "normalize", "metric", &j->normalize, e))
        return NPP_EINVAL;
    if (j->normalize && j->n_inputs < 2)
        return npp_fail(e, NPP_EINVAL, "metric.normalize",
                        "metric.normalize: needs two inputs (0 is the patched run's input, 1 the "
                        "source's); the job has one");
    json_t *p = json_object_get(mt, "position");
    /* every example needs a real token there */
    if (p && example_position(j, p, "metric.position", min_len(j) - 1, j->m_pos, 1, j->B, e))
        return NPP_EINVAL;
    int n = metric_ntokens(j->metric);
    for (int k = 0; k < n; k++) /* every field first, so a missing one is named */
        if (!json_object_get(mt, j->metric->keys[k])) {
            snprintf(f, sizeof f, "metric.%s", j->metric->keys[k]);
            if (n == 2)
                return npp_fail(e, NPP_EINVAL, f, "metric: %s needs \"%s\" and \"%s\" tokens",
                                j->metric->name, j->metric->keys[0], j->metric->keys[1]);
            return npp_fail(e, NPP_EINVAL, f, "metric: %s needs \"%s\"", j->metric->name,
                            j->metric->keys[k]);
        }
    for (int k = 0; k < n; k++) {
        snprintf(f, sizeof f, "metric.%s", j->metric->keys[k]);
        if (get_tokens(m, j, json_object_get(mt, j->metric->keys[k]), f, &j->m_tokens[k], e))
            return NPP_EINVAL;
    }
    return 0;
}

/* ---- the document -------------------------------------------------------------- */

/* An intervene rule's edit, into the job's table (shared by variants). */
static int edit_cb(void *ud, json_t *rule, const char *field, npp_err *e)
{
    job *j = ud;
    return edit_parse(&j->edits, rule, field, j->uneven, e);
}

/* Replaces e's field and message (each cut to its buffer); returns rc. */
static int err_rename(npp_err *e, const char *field, const char *msg, int rc)
{
    snprintf(e->field, sizeof e->field, "%.*s", (int)sizeof e->field - 1, field);
    snprintf(e->message, sizeof e->message, "%.*s", (int)sizeof e->message - 1, msg);
    return rc;
}

/* An error in the rules a preset compiled, named as the preset's field:
 * "intervene[0].steer" -> "preset.vector"; a which or branch rule the user
 * never wrote (too many of them: many senders x receivers) -> "preset". */
static int preset_field(npp_err *e, int rc)
{
    static const char *const map[][2] = {{"intervene[0].steer", "preset.vector"},
                                         {"intervene[0].positions", "preset.positions"},
                                         {"intervene[0].scale", "preset.scale"},
                                         {"intervene[0].of", "preset.of"},
                                         {"intervene[0]", "preset"}};
    for (size_t i = 0; e && i < sizeof map / sizeof map[0]; i++) {
        size_t n = strlen(map[i][0]);
        if (strncmp(e->field, map[i][0], n))
            continue;
        char f[sizeof e->field + 32], m[sizeof e->message + 32]; /* cut to size below */
        snprintf(f, sizeof f, "%s%s", map[i][1], e->field + n);
        if (!strncmp(e->message, map[i][0], n))
            snprintf(m, sizeof m, "%s%s", map[i][1], e->message + n);
        else
            snprintf(m, sizeof m, "%s", e->message);
        return err_rename(e, f, m, rc);
    }
    if (e && (!strncmp(e->field, "which[", 6) || !strncmp(e->field, "branch[", 7))) {
        const char *colon = strstr(e->message, ": ");
        char m[sizeof e->message + 192];                /* cut to size below */
        if (strstr(e->message, "pattern alternatives")) /* path_patch: senders x receivers */
            snprintf(m, sizeof m,
                     "preset: it expands to a rule per sender and receiver, too many here "
                     "(use fewer senders or receivers; a{i}.head is all of a layer's heads): %s",
                     colon ? colon + 2 : e->message);
        else
            snprintf(m, sizeof m, "preset: a rule it expands to was refused: %s",
                     colon ? colon + 2 : e->message);
        return err_rename(e, "preset", m, rc);
    }
    return rc;
}

/* normalize's inputs for the rules of obj: a preset's `into` (0) and
 * `from` (its source: `of` for a mean ablation, else the other input);
 * 0 and 1 for written rules. */
static void norm_pair(const job *j, json_t *preset, int norm[2])
{
    json_t *f = json_object_get(preset, "from"), *i = json_object_get(preset, "into");
    json_t *of = json_object_get(preset, "of"), *t = json_object_get(preset, "type");
    int into = json_is_integer(i) ? (int)json_integer_value(i) : 0;
    int patch = json_is_string(t) && (!strcmp(json_string_value(t), "activation_patch") ||
                                      !strcmp(json_string_value(t), "path_patch"));
    norm[0] = preset ? into : 0;
    norm[1] = !preset               ? 1
              : patch               ? (json_is_integer(f) ? (int)json_integer_value(f) : 1)
              : json_is_integer(of) ? (int)json_integer_value(of)
                                    : (into ? 0 : 1);
    if (norm[1] >= j->n_inputs)
        norm[1] = j->n_inputs - 1;
}

/* The rules of obj (a job or a sweep variant): a preset, or
 * branch/which/intervene; their globs are compiled in gc, the job's
 * context. *written: 1 for rules the user wrote (checked to decide
 * something once planned); norm: normalize's inputs. */
static int compile_rules(job *j, glob_ctx *gc, json_t *obj, ruleset **rules, json_t **compiled,
                         int *written, int norm[2], npp_err *e)
{
    json_t *br = NULL, *wh = NULL, *iv = NULL;
    int rc;
    json_t *preset = json_object_get(obj, "preset"), *circuit = json_object_get(obj, "circuit");
    rules_edits ed = {EDIT_KEYS, edit_cb, j};
    norm_pair(j, preset, norm);
    if (circuit && (preset || json_object_get(obj, "branch") || json_object_get(obj, "which") ||
                    json_object_get(obj, "intervene")))
        return npp_fail(e, NPP_EINVAL, "circuit",
                        "circuit: give either a circuit, a preset or branch/which/intervene rules");
    if (preset && (json_object_get(obj, "branch") || json_object_get(obj, "which") ||
                   json_object_get(obj, "intervene")))
        return npp_fail(e, NPP_EINVAL, "preset",
                        "preset: give either a preset or branch/which/intervene rules");
    if (circuit) {
        norm[0] = 1, norm[1] = 0; /* faithfulness: 1 is the clean run, 0 the corrupted */
        if ((rc = preset_circuit(j, circuit, &br, &wh, e)))
            goto done;
    } else if (preset) {
        if ((rc = preset_compile(j, preset, &br, &wh, &iv, e)))
            goto done;
    } else {
        br = json_incref(json_object_get(obj, "branch"));
        wh = json_incref(json_object_get(obj, "which"));
        iv = json_incref(json_object_get(obj, "intervene"));
        *written = 1;
    }
    if ((rc = rules_parse(br, wh, iv, gc, j->n_inputs, &ed, rules, e))) {
        if (preset)
            preset_field(e, rc);
        goto done;
    }
    *compiled = json_pack("{s:o,s:o}", "branch", br ? json_incref(br) : json_array(), "which",
                          wh ? json_incref(wh) : json_array());
    if (*compiled && json_array_size(iv))
        json_object_set(*compiled, "intervene", iv);
    if (!*compiled)
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory");
done:
    json_decref(br);
    json_decref(wh);
    json_decref(iv);
    return rc;
}

int job_in_variant(npp_err *e, int i, int rc)
{
    if (!e)
        return rc;
    char f[sizeof e->field + 32], msg[sizeof e->message + 32]; /* cut to size below */
    size_t fl = strlen(e->field);
    const char *colon = strchr(e->message, ':');
    size_t nl = colon ? (size_t)(colon - e->message) : 0; /* "preset: ..." for "preset.x" */
    snprintf(f, sizeof f, "sweep[%d]%s%s", i, fl ? "." : "", e->field);
    if (nl && nl <= fl && !strncmp(e->message, e->field, nl))
        snprintf(msg, sizeof msg, "sweep[%d].%s", i, e->message);
    else
        snprintf(msg, sizeof msg, "sweep[%d]: %s", i, e->message);
    return err_rename(e, f, msg, rc);
}

static int parse_sweep(job *j, glob_ctx *gc, json_t *sw, npp_err *e)
{
    static const char *const known[] = {"name",      "preset",  "branch", "which",
                                        "intervene", "circuit", NULL};
    if (!json_is_array(sw) || json_array_size(sw) == 0 || json_array_size(sw) > JOB_MAX_VARIANTS)
        return npp_fail(e, NPP_EINVAL, "sweep", "sweep: must be an array of 1..%d variants",
                        JOB_MAX_VARIANTS);
    j->var = calloc(json_array_size(sw), sizeof *j->var);
    if (!j->var)
        return npp_fail(e, NPP_ENOMEM, "", "out of memory");
    for (size_t i = 0; i < json_array_size(sw); i++) {
        json_t *v = json_array_get(sw, i), *name;
        char f[48];
        snprintf(f, sizeof f, "sweep[%zu]", i);
        if (!json_is_object(v))
            return npp_fail(e, NPP_EINVAL, f,
                            "%s: must be an object with rules (\"preset\", or "
                            "\"branch\"/\"which\"/\"intervene\") "
                            "and an optional \"name\"",
                            f);
        if (job_check_keys(v, f, known, e))
            return NPP_EINVAL;
        if ((name = json_object_get(v, "name")) && !json_is_string(name)) {
            snprintf(f, sizeof f, "sweep[%zu].name", i);
            return npp_fail(e, NPP_EINVAL, f, "%s: must be a string", f);
        }
        job_variant *jv = &j->var[j->nvar++];
        jv->name = json_incref(name);
        int rc = compile_rules(j, gc, v, &jv->rules, &jv->compiled, &jv->written, jv->norm, e);
        if (rc)
            return job_in_variant(e, (int)i, rc);
    }
    return 0;
}

/* ---- grids -------------------------------------------------------------------- */

static const char *const GRID_AXES[GRID_MAX_AXES] = {"layer", "head", "pos"};

/* v with every "{layer}", "{head}", "{pos}" in its strings replaced by the
 * cell's values (a string that is only a placeholder becomes the number).
 * New reference. */
static json_t *grid_subst(json_t *v, const job_grid *g, const int *val)
{
    if (json_is_array(v)) {
        json_t *a = json_array();
        for (size_t i = 0; i < json_array_size(v); i++)
            json_array_append_new(a, grid_subst(json_array_get(v, i), g, val));
        return a;
    }
    if (json_is_object(v)) {
        json_t *o = json_object();
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) json_object_set_new(o, k, grid_subst(x, g, val));
        return o;
    }
    if (!json_is_string(v))
        return json_incref(v);
    const char *s = json_string_value(v);
    char ph[16], out[512];
    for (int a = 0; a < g->naxes; a++) {
        snprintf(ph, sizeof ph, "{%s}", g->axis[a]);
        if (!strcmp(s, ph))
            return json_integer(val[a]);
    }
    size_t w = 0;
    while (*s && w + 16 < sizeof out) {
        int hit = 0;
        for (int a = 0; a < g->naxes && !hit; a++) {
            size_t n = (size_t)snprintf(ph, sizeof ph, "{%s}", g->axis[a]);
            if (!strncmp(s, ph, n)) {
                w += (size_t)snprintf(out + w, sizeof out - w, "%d", val[a]);
                s += n, hit = 1;
            }
        }
        if (!hit)
            out[w++] = *s++;
    }
    out[w] = 0;
    return json_string(out);
}

/* Does a string in v contain needle? */
static int json_mentions(json_t *v, const char *needle)
{
    size_t i;
    const char *k;
    json_t *x;
    if (json_is_string(v))
        return strstr(json_string_value(v), needle) != NULL;
    if (json_is_array(v))
        json_array_foreach(v, i, x) if (json_mentions(x, needle)) return 1;
    if (json_is_object(v))
        json_object_foreach(v, k, x) if (json_mentions(x, needle)) return 1;
    return 0;
}

/* An error in one cell's preset, named as the grid's: "preset.node" ->
 * "grid.preset.node", with the cell. */
static int grid_cell_error(npp_err *e, const char *cell, int rc)
{
    if (!e)
        return rc;
    char f[sizeof e->field + 8], msg[sizeof e->message + 128]; /* cut to size below */
    snprintf(f, sizeof f, "grid.%s", e->field);
    snprintf(msg, sizeof msg, "grid.%s (in the cell %s)", e->message, cell);
    return err_rename(e, f, msg, rc);
}

/* "grid": a sweep with one variant per cell of up to three axes. */
static int parse_grid(job *j, glob_ctx *gc, json_t *gd, npp_err *e)
{
    static const char *const known[] = {"node", "layer", "head", "pos", "preset", NULL};
    char f[64];
    if (!json_is_object(gd))
        return npp_fail(e, NPP_EINVAL, "grid",
                        "grid: an object with \"preset\", axes \"layer\", \"head\", \"pos\" "
                        "(\"all\" or a list) and an optional \"node\" template");
    if (job_check_keys(gd, "grid", known, e))
        return NPP_EINVAL;
    json_t *node = json_object_get(gd, "node"), *preset = json_object_get(gd, "preset");
    if (node && !json_is_string(node))
        return npp_fail(e, NPP_EINVAL, "grid.node",
                        "grid.node: a node name template such as \"a{layer}.head{head}\"");
    if (!json_is_object(preset))
        return npp_fail(e, NPP_EINVAL, "grid.preset",
                        "grid.preset: the preset each cell runs (activation_patch, path_patch, "
                        "ablate, steer), with {layer}, {head}, {pos} where the cell's values go");
    job_grid *g = j->grid = calloc(1, sizeof *g);
    if (!g)
        return npp_fail(e, NPP_ENOMEM, "grid", "out of memory");
    const int limit[GRID_MAX_AXES] = {j->g.L, j->g.H, j->T};
    size_t cells = 1;
    for (int a = 0; a < GRID_MAX_AXES; a++) {
        json_t *v = json_object_get(gd, GRID_AXES[a]);
        char ph[16];
        if (!v)
            continue;
        snprintf(f, sizeof f, "grid.%s", GRID_AXES[a]);
        int k = g->naxes, all = json_is_string(v) && !strcmp(json_string_value(v), "all");
        int n = all ? limit[a] : json_is_array(v) ? (int)json_array_size(v) : 0;
        if (n == 0)
            return npp_fail(e, NPP_EINVAL, f, "%s: \"all\" or a non-empty list of %ss in 0..%d", f,
                            GRID_AXES[a], limit[a] - 1);
        if (!(g->ticks[k] = malloc((size_t)n * sizeof *g->ticks[k])))
            return npp_fail(e, NPP_ENOMEM, "grid", "out of memory");
        g->axis[k] = GRID_AXES[a], g->n[k] = n, g->naxes++;
        for (int i = 0; i < n; i++) {
            json_t *x = all ? NULL : json_array_get(v, (size_t)i);
            int t = all ? i : (int)json_integer_value(x);
            if (!all && (!json_is_integer(x) || json_integer_value(x) < 0 ||
                         json_integer_value(x) >= limit[a]))
                return npp_fail(e, NPP_EINVAL, f, "%s[%d]: a %s in 0..%d", f, i, GRID_AXES[a],
                                limit[a] - 1);
            for (int q = 0; q < i; q++)
                if (g->ticks[k][q] == t)
                    return npp_fail(e, NPP_EINVAL, f, "%s[%d]: %d is already listed", f, i, t);
            g->ticks[k][i] = t;
        }
        snprintf(ph, sizeof ph, "{%s}", GRID_AXES[a]);
        if (!json_mentions(preset, ph) && !(node && json_mentions(node, ph)))
            return npp_fail(e, NPP_EINVAL, f,
                            "%s: \"%s\" appears nowhere in grid.node or grid.preset, so every "
                            "cell along it would be the same",
                            f, ph);
        cells *= (size_t)n;
        if (cells > JOB_MAX_VARIANTS)
            return npp_fail(e, NPP_EINVAL, "grid", "grid: over %d cells (%zu so far)",
                            JOB_MAX_VARIANTS, cells);
    }
    if (!g->naxes)
        return npp_fail(e, NPP_EINVAL, "grid",
                        "grid: give at least one axis: \"layer\", \"head\" or \"pos\"");
    if (!(j->var = calloc(cells, sizeof *j->var)))
        return npp_fail(e, NPP_ENOMEM, "", "out of memory");
    for (size_t c = 0; c < cells; c++) {
        int val[GRID_MAX_AXES], rest = (int)c;
        char cell[96] = "";
        size_t w = 0;
        for (int a = g->naxes - 1; a >= 0; a--) {
            val[a] = g->ticks[a][rest % g->n[a]];
            rest /= g->n[a];
        }
        for (int a = 0; a < g->naxes; a++)
            w += (size_t)snprintf(cell + w, sizeof cell - w, "%s%s %d", a ? ", " : "", g->axis[a],
                                  val[a]);
        json_t *p = grid_subst(preset, g, val), *t = json_object_get(p, "type");
        const char *ty = json_is_string(t) ? json_string_value(t) : "";
        if (node && !json_object_get(p, "node") && strcmp(ty, "path_patch"))
            json_object_set_new(p, "node", grid_subst(node, g, val));
        job_variant *jv = &j->var[j->nvar++];
        jv->name = node ? grid_subst(node, g, val) : json_string(cell);
        json_t *obj = json_pack("{s:o}", "preset", p);
        int rc = compile_rules(j, gc, obj, &jv->rules, &jv->compiled, &jv->written, jv->norm, e);
        json_decref(obj);
        if (rc)
            return grid_cell_error(e, cell, rc);
    }
    return 0;
}

/* discover.top_n and discover.verify into at. */
static int parse_discover(json_t *a, job_attrib *at, npp_err *e)
{
    json_t *tn = json_object_get(a, "top_n"), *vf = json_object_get(a, "verify");
    at->discover = 1;
    at->top = 100; /* the attribution's list in the result, by default */
    if (!tn) {
        static const long dflt[] = {10, 20, 50, 100};
        at->nsizes = 4;
        memcpy(at->top_n, dflt, sizeof dflt);
    } else if (!json_is_array(tn) || !json_array_size(tn) ||
               json_array_size(tn) > DISCOVER_MAX_SIZES) {
        return npp_fail(e, NPP_EINVAL, "discover.top_n",
                        "discover.top_n: a list of 1..%d circuit sizes (edge counts), e.g. [10, "
                        "20, 50]",
                        DISCOVER_MAX_SIZES);
    }
    for (size_t i = 0; tn && i < json_array_size(tn); i++) {
        json_t *v = json_array_get(tn, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > EDGES_MAX) {
            char f[48];
            snprintf(f, sizeof f, "discover.top_n[%zu]", i);
            return npp_fail(e, NPP_EINVAL, f, "%s: an edge count in 0..%d", f, EDGES_MAX);
        }
        /* in increasing order, each size once: the curve runs left to right */
        long n = (long)json_integer_value(v);
        int k = at->nsizes;
        while (k > 0 && at->top_n[k - 1] > n)
            k--;
        if (k > 0 && at->top_n[k - 1] == n)
            continue;
        memmove(at->top_n + k + 1, at->top_n + k, (size_t)(at->nsizes - k) * sizeof *at->top_n);
        at->top_n[k] = n, at->nsizes++;
    }
    /* the result lists at least the edges of every circuit it evaluates */
    if (at->top_n[at->nsizes - 1] > at->top)
        at->top = at->top_n[at->nsizes - 1];
    if (vf && (!json_is_integer(vf) || json_integer_value(vf) < 0 ||
               json_integer_value(vf) > DISCOVER_MAX_VERIFY))
        return npp_fail(e, NPP_EINVAL, "discover.verify",
                        "discover.verify: how many of the highest edges to patch exactly, one by "
                        "one: 0..%d",
                        DISCOVER_MAX_VERIFY);
    at->verify = vf ? (int)json_integer_value(vf) : 0;
    return 0;
}

/* "attribution": {"method": "eap" | "eap-ig", "steps": m, "level": "edges" |
 * "nodes", "top": n}: scores the edges of input 0's plain run against input
 * 1; "discover" ({"method", "steps", "top_n", "verify", "top"}) the same,
 * then checks the top edges exactly (docs/jobs.md). */
static int parse_attribution(json_t *a, const char *name, job *j, npp_err *e)
{
    static const char *const known[] = {"method", "steps", "level", "top", "comment", NULL};
    static const char *const dknown[] = {"method", "steps",   "top", "top_n",
                                         "verify", "comment", NULL};
    int disc = !strcmp(name, "discover");
    char f[48];
    if (!json_is_object(a))
        return npp_fail(e, NPP_EINVAL, name,
                        "%s: an object {\"method\": \"eap\" or \"eap-ig\", ...}", name);
    if (job_check_keys(a, name, disc ? dknown : known, e))
        return NPP_EINVAL;
    if (!(j->attrib = calloc(1, sizeof *j->attrib)))
        return npp_fail(e, NPP_ENOMEM, name, "out of memory");
    job_attrib *at = j->attrib;
    json_t *me = json_object_get(a, "method"), *st = json_object_get(a, "steps"),
           *lv = json_object_get(a, "level"), *top = json_object_get(a, "top");
    const char *mn = me ? (json_is_string(me) ? json_string_value(me) : "") : "eap";
    if (!strcmp(mn, "eap"))
        at->method = ATTRIB_EAP;
    else if (!strcmp(mn, "eap-ig"))
        at->method = ATTRIB_EAP_IG;
    else
        return snprintf(f, sizeof f, "%s.method", name),
               npp_fail(e, NPP_EINVAL, f,
                        "%s: \"eap\" (one gradient, on the clean run) or \"eap-ig\" "
                        "(integrated over \"steps\" points from the corrupted input)",
                        f);
    at->steps = at->method == ATTRIB_EAP ? 1 : 5;
    snprintf(f, sizeof f, "%s.steps", name);
    if (st) {
        if (at->method == ATTRIB_EAP)
            return npp_fail(e, NPP_EINVAL, f, "%s: only with \"method\": \"eap-ig\"", f);
        if (!json_is_integer(st) || json_integer_value(st) < 1 ||
            json_integer_value(st) > ATTRIB_MAX_STEPS)
            return npp_fail(e, NPP_EINVAL, f,
                            "%s: an integer in 1..%d (each is a forward and a backward pass)", f,
                            ATTRIB_MAX_STEPS);
        at->steps = (int)json_integer_value(st);
    }
    const char *ln = lv ? (json_is_string(lv) ? json_string_value(lv) : "") : "edges";
    if (strcmp(ln, "edges") && strcmp(ln, "nodes"))
        return npp_fail(e, NPP_EINVAL, "attribution.level",
                        "attribution.level: \"edges\" (every edge) or \"nodes\" (every sender)");
    at->nodes = !strcmp(ln, "nodes");
    if (top && (!json_is_integer(top) || json_integer_value(top) < 1))
        return snprintf(f, sizeof f, "%s.top", name),
               npp_fail(e, NPP_EINVAL, f, "%s: a positive integer (the highest scores kept)", f);
    at->top = top ? (long)json_integer_value(top) : 0;
    if (disc && parse_discover(a, at, e))
        return NPP_EINVAL;
    if (disc && top) /* at least the largest circuit's edges */
        at->top = json_integer_value(top) > at->top_n[at->nsizes - 1]
                      ? (long)json_integer_value(top)
                      : at->top_n[at->nsizes - 1];
    if (disc && at->verify + at->nsizes > JOB_MAX_VARIANTS)
        return npp_fail(e, NPP_EINVAL, "discover.verify",
                        "discover.verify: %d edges and %d circuits are more than the %d checks "
                        "one job runs; ask for fewer",
                        at->verify, at->nsizes, JOB_MAX_VARIANTS);
    if (j->n_inputs != 2)
        return npp_fail(e, NPP_EINVAL, "inputs",
                        "inputs: %s takes two (input 0 clean, input 1 corrupted), not %d", name,
                        j->n_inputs);
    if (!j->metric)
        return npp_fail(e, NPP_EINVAL, "metric",
                        "metric: %s needs one (the scores are its gradient)", name);
    if (at->method == ATTRIB_EAP && j->metric->needs_ref && j->warnings) {
        /* kl from input 0's own run: its gradient there is 0 */
        char f2[48];
        snprintf(f2, sizeof f2, "%s.method", name);
        json_array_append_new(j->warnings,
                              json_pack("{s:s,s:s+}", "field", f2, "message", f2,
                                        ": the gradient of \"kl\" is 0 on the clean run, so "
                                        "every EAP score is 0; \"eap-ig\" integrates it"));
    }
    if (!j->written || j->nvar || json_array_size(json_object_get(j->compiled, "which")) ||
        json_array_size(json_object_get(j->compiled, "branch")) ||
        json_object_get(j->compiled, "intervene"))
        return npp_fail(e, NPP_EINVAL, name,
                        "%s: scores input 0's plain run; give no preset, rules, circuit, sweep "
                        "or grid with it",
                        name);
    return 0;
}

int job_parse(const model *m, json_t *doc, const job_limits *lim, job **out, npp_err *e)
{
    static const char *const known[] = {"inputs",  "branch",      "which",    "intervene", "preset",
                                        "circuit", "attribution", "discover", "outputs",   "metric",
                                        "limits",  "comment",     "sweep",    "grid",      NULL};
    int rc = NPP_EINVAL;
    *out = NULL;
    if (!json_is_object(doc))
        return npp_fail(e, NPP_EINVAL, "", "the job must be a JSON object");
    if (job_check_keys(doc, "job", known, e))
        return NPP_EINVAL;
    job *j = calloc(1, sizeof *j);
    if (!j)
        return npp_fail(e, NPP_ENOMEM, "", "out of memory");
    j->max_values = lim && lim->max_values ? lim->max_values : 50000;
    if (!(j->warnings = json_array())) {
        free(j);
        return npp_fail(e, NPP_ENOMEM, "", "out of memory");
    }
    j->doc_inputs = json_incref(json_object_get(doc, "inputs"));
    j->doc_metric = json_incref(json_object_get(doc, "metric"));
    if ((rc = parse_inputs(m, json_object_get(doc, "inputs"), j, e)))
        goto fail;
    graph_dims_init(&j->g, m->cfg.n_layer, m->cfg.n_head, j->T);
    edit_table_init(&j->edits, j->T, m->cfg.n_embd, j->n_inputs);
    json_t *sweep = json_object_get(doc, "sweep"), *grid = json_object_get(doc, "grid");
    if ((sweep || grid) && (json_object_get(doc, "preset") || json_object_get(doc, "branch") ||
                            json_object_get(doc, "which") || json_object_get(doc, "intervene") ||
                            json_object_get(doc, "circuit"))) {
        rc = npp_fail(e, NPP_EINVAL, sweep ? "sweep" : "grid",
                      sweep ? "sweep: give the rules (preset, or branch/which/intervene) in each "
                              "variant, not at the top of the job"
                            : "grid: give the rules as grid.preset, not at the top of the job");
        goto fail;
    }
    if (sweep && grid) {
        rc = npp_fail(e, NPP_EINVAL, "grid", "grid: a job is a sweep or a grid, not both");
        goto fail;
    }
    glob_ctx *gc = glob_ctx_new(&j->g);
    if (!gc) {
        rc = npp_fail(e, NPP_ENOMEM, "", "out of memory");
        goto fail;
    }
    rc = sweep  ? parse_sweep(j, gc, sweep, e)
         : grid ? parse_grid(j, gc, grid, e)
                : compile_rules(j, gc, doc, &j->rules, &j->compiled, &j->written, j->norm, e);
    glob_ctx_free(gc); /* the compiled globs keep what they share */
    if (rc)
        goto fail;
    json_t *lm = json_object_get(doc, "limits");
    if (lm) {
        json_t *mv = json_object_get(lm, "max_values"), *ms = json_object_get(lm, "max_seconds");
        static const char *const lk[] = {"max_values", "max_seconds", NULL};
        if (!json_is_object(lm) || job_check_keys(lm, "limits", lk, e)) {
            rc = npp_fail(e, NPP_EINVAL, "limits",
                          "limits: an object with \"max_values\" and \"max_seconds\"");
            goto fail;
        }
        if (ms && (!json_is_number(ms) || !(json_number_value(ms) > 0) ||
                   json_number_value(ms) > JOB_MAX_SECONDS)) {
            rc = npp_fail(e, NPP_EINVAL, "limits.max_seconds",
                          "limits.max_seconds: a number of seconds, more than 0 and at most %d",
                          JOB_MAX_SECONDS);
            goto fail;
        }
        if (ms)
            j->max_seconds = json_number_value(ms);
        if (mv && (!json_is_integer(mv) || json_integer_value(mv) < 1 ||
                   (size_t)json_integer_value(mv) > j->max_values)) {
            rc = npp_fail(e, NPP_EINVAL, "limits.max_values",
                          "limits.max_values: an integer in 1..%zu (the server's ceiling)",
                          j->max_values);
            goto fail;
        }
        if (mv)
            j->max_values = (size_t)json_integer_value(mv);
    }
    if ((rc = parse_outputs(m, json_object_get(doc, "outputs"), j, e)) ||
        (rc = parse_metric(m, json_object_get(doc, "metric"), j, e)))
        goto fail;
    if (j->grid && !j->metric) {
        rc = npp_fail(e, NPP_EINVAL, "metric",
                      "metric: a grid needs one (each cell's value is the metric's mean)");
        goto fail;
    }
    json_t *attr = json_object_get(doc, "attribution"), *disc = json_object_get(doc, "discover");
    if (attr && disc) {
        rc = npp_fail(e, NPP_EINVAL, "discover",
                      "discover: it runs the attribution itself; give one of the two");
        goto fail;
    }
    if ((attr || disc) &&
        (rc = parse_attribution(attr ? attr : disc, attr ? "attribution" : "discover", j, e)))
        goto fail;
    *out = j;
    return 0;
fail:
    job_free(j);
    return rc ? rc : NPP_EINVAL;
}

void job_free(job *j)
{
    if (!j)
        return;
    free(j->ids);
    rules_free(j->rules);
    json_decref(j->compiled);
    json_decref(j->warnings);
    json_decref(j->doc_inputs);
    json_decref(j->doc_metric);
    for (int i = 0; i < j->nvar; i++) {
        json_decref(j->var[i].name);
        rules_free(j->var[i].rules);
        json_decref(j->var[i].compiled);
    }
    free(j->var);
    for (int a = 0; j->grid && a < j->grid->naxes; a++)
        free(j->grid->ticks[a]);
    free(j->grid);
    free(j->attrib);
    free(j->positions);
    free(j->len);
    free(j->m_pos);
    free(j->toklp);
    free(j->attn_layers);
    free(j->act);
    edit_table_free(&j->edits);
    for (int k = 0; k < METRIC_MAX_TOKENS; k++)
        free(j->m_tokens[k]);
    free(j);
}
