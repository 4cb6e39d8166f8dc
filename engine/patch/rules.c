/* rules.c - parsing and evaluating rule lists; see rules.h. */
#include "patch/rules.h"

#include "patch/edges.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { M_GLOB, M_ANY, M_ALL, M_EDGES } mkind;

typedef struct matcher {
    mkind kind;
    int negate;
    int glob; /* index into ruleset.globs (M_GLOB), or ruleset.esets (M_EDGES) */
    struct matcher *kids;
    int nkids;
} matcher;

typedef struct {
    matcher m;
    int value;
    int optional; /* "optional": true: may decide no path */
    char *field;  /* "which[0].match" (or "which[0]" for any/all), for errors */
} rule;

struct ruleset {
    glob **globs;
    int *base; /* first state word of each glob */
    int nglobs, capglobs, nwords;
    edge_set *esets; /* "edges" matchers, each one state word */
    int *eword;
    int nesets;
    rule *list[3]; /* RULES_WHICH, RULES_BRANCH, RULES_INTERVENE */
    int n[3];
};

static int add_glob(ruleset *r, const char *pat, glob_ctx *g, const char *field, npp_err *e)
{
    char msg[512];
    glob *gl;
    if (glob_compile(pat, g, &gl, msg, sizeof msg))
        return npp_fail(e, NPP_EINVAL, field, "%s: %s", field, msg);
    if (r->nwords + glob_nalts(gl) > RULES_MAX_ALTS) {
        glob_free(gl);
        return npp_fail(e, NPP_EINVAL, field,
                        "%s: the rules have more than %d pattern alternatives in all (after "
                        "expanding {...}); every alternative is state the planner carries at "
                        "every node, so use fewer or simpler patterns",
                        field, RULES_MAX_ALTS);
    }
    if (r->nglobs == r->capglobs) {
        int c = r->capglobs ? 2 * r->capglobs : 16;
        glob **gs = realloc(r->globs, (size_t)c * sizeof *gs);
        int *b = gs ? realloc(r->base, (size_t)c * sizeof *b) : NULL;
        if (gs)
            r->globs = gs;
        if (!gs || !b) {
            glob_free(gl);
            return npp_fail(e, NPP_ENOMEM, field, "out of memory");
        }
        r->base = b, r->capglobs = c;
    }
    r->globs[r->nglobs] = gl;
    r->base[r->nglobs] = r->nwords;
    r->nwords += glob_nalts(gl);
    return r->nglobs++;
}

/* An "edges" matcher: its set and its state word. */
static int add_edges(ruleset *r, json_t *list, glob_ctx *g, const char *field, npp_err *e)
{
    if (r->nwords + 1 > RULES_MAX_ALTS)
        return npp_fail(e, NPP_EINVAL, field,
                        "%s: the rules have more than %d pattern alternatives", field,
                        RULES_MAX_ALTS);
    edge_set *es = realloc(r->esets, (size_t)(r->nesets + 1) * sizeof *es);
    if (es)
        r->esets = es;
    int *ew = es ? realloc(r->eword, (size_t)(r->nesets + 1) * sizeof *ew) : NULL;
    if (!es || !ew)
        return npp_fail(e, NPP_ENOMEM, field, "out of memory");
    r->eword = ew;
    if (edges_parse(glob_ctx_dims(g), list, field, &r->esets[r->nesets], e))
        return -1;
    r->eword[r->nesets] = r->nwords++;
    return r->nesets++;
}

static int parse_matcher(ruleset *r, json_t *j, glob_ctx *g, const char *field, matcher *m,
                         npp_err *e)
{
    char f[160];
    memset(m, 0, sizeof *m);
    if (json_is_string(j)) {
        m->kind = M_GLOB;
        m->glob = add_glob(r, json_string_value(j), g, field, e);
        return m->glob < 0 ? -1 : 0;
    }
    if (!json_is_object(j))
        return npp_fail(e, NPP_EINVAL, field,
                        "%s: expected a glob string or an object with "
                        "\"match\", \"any\" or \"all\"",
                        field);
    json_t *jm = json_object_get(j, "match"), *jany = json_object_get(j, "any"),
           *jall = json_object_get(j, "all"), *jnot = json_object_get(j, "not"),
           *jed = json_object_get(j, "edges");
    if (!!jm + !!jany + !!jall + !!jed != 1)
        return npp_fail(e, NPP_EINVAL, field,
                        "%s: give exactly one of \"match\", \"any\", \"all\", \"edges\"", field);
    if (jnot && !json_is_boolean(jnot))
        return npp_fail(e, NPP_EINVAL, field, "%s.not: must be true or false", field);
    m->negate = jnot && json_is_true(jnot);
    if (jed) {
        snprintf(f, sizeof f, "%s.edges", field);
        m->kind = M_EDGES;
        m->glob = add_edges(r, jed, g, f, e);
        return m->glob < 0 ? -1 : 0;
    }
    if (jm) {
        snprintf(f, sizeof f, "%s.match", field);
        if (!json_is_string(jm))
            return npp_fail(e, NPP_EINVAL, f, "%s: must be a glob string", f);
        m->kind = M_GLOB;
        m->glob = add_glob(r, json_string_value(jm), g, f, e);
        return m->glob < 0 ? -1 : 0;
    }
    json_t *arr = jany ? jany : jall;
    const char *name = jany ? "any" : "all";
    m->kind = jany ? M_ANY : M_ALL;
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return npp_fail(e, NPP_EINVAL, field, "%s.%s: must be a non-empty array", field, name);
    m->nkids = (int)json_array_size(arr);
    if (!(m->kids = calloc((size_t)m->nkids, sizeof *m->kids)))
        return npp_fail(e, NPP_ENOMEM, field, "out of memory");
    for (int i = 0; i < m->nkids; i++) {
        snprintf(f, sizeof f, "%s.%s[%d]", field, name, i);
        if (parse_matcher(r, json_array_get(arr, (size_t)i), g, f, &m->kids[i], e))
            return -1;
    }
    return 0;
}

static void matcher_free(matcher *m)
{
    for (int i = 0; i < m->nkids; i++)
        matcher_free(&m->kids[i]);
    free(m->kids);
}

static int parse_value(json_t *j, int is_branch, int n_inputs, const char *field, int *out,
                       npp_err *e)
{
    char f[160];
    if (is_branch) {
        json_t *v = json_object_get(j, "split");
        snprintf(f, sizeof f, "%s.split", field);
        if (!v)
            return npp_fail(e, NPP_EINVAL, f,
                            "%s: missing (true, false, \"heads\" or "
                            "\"positions\")",
                            f);
        if (json_is_boolean(v))
            *out = json_is_true(v) ? SPLIT_YES : SPLIT_NO;
        else if (json_is_string(v) && !strcmp(json_string_value(v), "heads"))
            *out = SPLIT_HEADS;
        else if (json_is_string(v) && !strcmp(json_string_value(v), "positions"))
            *out = SPLIT_POSITIONS;
        else
            return npp_fail(e, NPP_EINVAL, f,
                            "%s: must be true, false, \"heads\" or "
                            "\"positions\"",
                            f);
        return 0;
    }
    json_t *v = json_object_get(j, "input");
    snprintf(f, sizeof f, "%s.input", field);
    if (!v)
        return npp_fail(e, NPP_EINVAL, f, "%s: missing (the index of an input)", f);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= n_inputs)
        return npp_fail(e, NPP_EINVAL, f, "%s: must be an input index in 0..%d", f, n_inputs - 1);
    *out = (int)json_integer_value(v);
    return 0;
}

static int parse_list(ruleset *r, json_t *list, int kind, glob_ctx *g, int n_inputs,
                      const rules_edits *ed, npp_err *e)
{
    static const char *const names[] = {"which", "branch", "intervene"};
    const char *name = names[kind];
    rule **out = &r->list[kind];
    int *n = &r->n[kind];
    char f[64];
    if (!list || json_is_null(list))
        return 0;
    if (!json_is_array(list))
        return npp_fail(e, NPP_EINVAL, name, "%s: must be an array of rules", name);
    *n = 0;
    if (!(*out = calloc(json_array_size(list) + 1, sizeof **out)))
        return npp_fail(e, NPP_ENOMEM, name, "out of memory");
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *j = json_array_get(list, i);
        snprintf(f, sizeof f, "%s[%zu]", name, i);
        if (!json_is_object(j))
            return npp_fail(e, NPP_EINVAL, f, "%s: a rule must be an object", f);
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v)
        {
            static const char *known[] = {"match", "any",     "all",     "edges",
                                          "not",   "comment", "optional"};
            int ok = 0;
            for (size_t q = 0; q < sizeof known / sizeof known[0]; q++)
                ok |= !strcmp(k, known[q]);
            ok |= kind == RULES_BRANCH && !strcmp(k, "split");
            ok |= kind == RULES_WHICH && !strcmp(k, "input");
            for (int q = 0; kind == RULES_INTERVENE && ed->keys[q]; q++)
                ok |= !strcmp(k, ed->keys[q]);
            if (!ok && kind != RULES_INTERVENE && (!strcmp(k, "split") || !strcmp(k, "input")))
                return npp_fail(e, NPP_EINVAL, f, "%s: \"%s\" belongs in a %s rule", f, k,
                                !strcmp(k, "split") ? "branch" : "which");
            if (!ok)
                return npp_fail(e, NPP_EINVAL, f, "%s: unknown key \"%s\"%s", f, k,
                                kind == RULES_INTERVENE &&
                                        (!strcmp(k, "split") || !strcmp(k, "input"))
                                    ? " (an intervene rule says \"ablate\", \"patch\" or \"steer\")"
                                    : "");
        }
        rule *ru = &(*out)[(*n)++];
        json_t *opt = json_object_get(j, "optional");
        if (opt && !json_is_boolean(opt)) {
            char of[80];
            snprintf(of, sizeof of, "%s.optional", f);
            return npp_fail(e, NPP_EINVAL, of, "%s: must be true or false", of);
        }
        ru->optional = opt && json_is_true(opt);
        char rf[80];
        snprintf(rf, sizeof rf, json_object_get(j, "match") ? "%s.match" : "%s", f);
        if (!(ru->field = strdup(rf)))
            return npp_fail(e, NPP_ENOMEM, f, "out of memory");
        if (parse_matcher(r, j, g, f, &ru->m, e))
            return -1;
        if (kind == RULES_INTERVENE) {
            if (!ed || (ru->value = ed->parse(ed->ud, j, f, e)) < 0)
                return ed ? -1
                          : npp_fail(e, NPP_EINVAL, f, "%s: interventions are not taken here", f);
        } else if (parse_value(j, kind == RULES_BRANCH, n_inputs, f, &ru->value, e)) {
            return -1;
        }
    }
    return 0;
}

int rules_parse(json_t *branch, json_t *which, json_t *intervene, glob_ctx *g, int n_inputs,
                const rules_edits *ed, ruleset **out, npp_err *e)
{
    ruleset *r = calloc(1, sizeof *r);
    *out = NULL;
    if (!r)
        return npp_fail(e, NPP_ENOMEM, "branch", "out of memory");
    if (parse_list(r, branch, RULES_BRANCH, g, n_inputs, ed, e) ||
        parse_list(r, which, RULES_WHICH, g, n_inputs, ed, e) ||
        parse_list(r, intervene, RULES_INTERVENE, g, n_inputs, ed, e)) {
        rules_free(r);
        return e && e->code ? e->code : NPP_EINVAL;
    }
    *out = r;
    return 0;
}

void rules_free(ruleset *r)
{
    if (!r)
        return;
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < r->n[k]; i++) {
            matcher_free(&r->list[k][i].m);
            free(r->list[k][i].field);
        }
        free(r->list[k]);
    }
    for (int i = 0; i < r->nglobs; i++)
        glob_free(r->globs[i]);
    free(r->globs);
    free(r->base);
    for (int i = 0; i < r->nesets; i++)
        edges_free(&r->esets[i]);
    free(r->esets);
    free(r->eword);
    free(r);
}

int rules_state_words(const ruleset *r)
{
    return r->nwords;
}

void rules_start(const ruleset *r, uint64_t *s)
{
    for (int g = 0; g < r->nglobs; g++)
        for (int a = 0; a < glob_nalts(r->globs[g]); a++)
            s[r->base[g] + a] = glob_start(r->globs[g], a);
    for (int i = 0; i < r->nesets; i++)
        s[r->eword[i]] = edges_start(&r->esets[i]);
}

void rules_step(const ruleset *r, const uint64_t *in, int sym, uint64_t *out)
{
    for (int g = 0; g < r->nglobs; g++)
        for (int a = 0; a < glob_nalts(r->globs[g]); a++)
            out[r->base[g] + a] = glob_step(r->globs[g], a, in[r->base[g] + a], sym);
    for (int i = 0; i < r->nesets; i++)
        out[r->eword[i]] = edges_step(&r->esets[i], in[r->eword[i]], sym);
}

static int glob_matches(const ruleset *r, int g, const uint64_t *s)
{
    for (int a = 0; a < glob_nalts(r->globs[g]); a++)
        if (glob_accepts(r->globs[g], a, s[r->base[g] + a]))
            return 1;
    return 0;
}

static int eval(const ruleset *r, const matcher *m, const uint64_t *s)
{
    int v;
    if (m->kind == M_GLOB) {
        v = glob_matches(r, m->glob, s);
    } else if (m->kind == M_EDGES) {
        v = s[r->eword[m->glob]] != EDGES_OUT;
    } else {
        v = m->kind == M_ALL;
        for (int i = 0; i < m->nkids; i++) {
            int k = eval(r, &m->kids[i], s);
            if (m->kind == M_ANY && k) {
                v = 1;
                break;
            }
            if (m->kind == M_ALL && !k) {
                v = 0;
                break;
            }
        }
    }
    return v != m->negate;
}

static int first(const ruleset *r, int kind, const uint64_t *s, int *idx, int dflt)
{
    for (int i = 0; i < r->n[kind]; i++) {
        if (eval(r, &r->list[kind][i].m, s)) {
            if (idx)
                *idx = i;
            return r->list[kind][i].value;
        }
    }
    if (idx)
        *idx = -1;
    return dflt;
}

int rules_branch(const ruleset *r, const uint64_t *s, int *idx)
{
    return first(r, RULES_BRANCH, s, idx, SPLIT_NO);
}

int rules_which(const ruleset *r, const uint64_t *s, int *idx)
{
    return first(r, RULES_WHICH, s, idx, 0);
}

int rules_intervene(const ruleset *r, const uint64_t *s, int *idx)
{
    return first(r, RULES_INTERVENE, s, idx, -1);
}

int rules_count(const ruleset *r, int kind)
{
    return r->n[kind];
}

int rules_optional(const ruleset *r, int kind, int idx)
{
    return r->list[kind][idx].optional;
}

const char *rules_field(const ruleset *r, int kind, int idx)
{
    return r->list[kind][idx].field;
}
