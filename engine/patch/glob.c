/* glob.c - brace expansion, name matching and the per-alternative NFA
 * over parts; see glob.h. */
#include "patch/glob.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A bitmap over the symbols, shared by every part of one job that has the
 * same text (refcounted; a glob and its context may be freed in any order). */
typedef struct {
    int refs;
    uint8_t bits[];
} symset;

enum { P_STAR2, P_SYM, P_SET };

typedef struct {
    int kind;    /* P_STAR2: "**"; P_SYM: one name; P_SET: a wildcard name */
    int sym;     /* P_SYM */
    symset *set; /* P_SET (a reference) */
} part;

typedef struct {
    int nparts;
    part *parts;
} alt;

struct glob {
    int nalts;
    alt *alts;
};

/* Wildcard parts already compiled in this context, by text (open hashing). */
typedef struct {
    char *text;
    symset *set;
} cached;

struct glob_ctx {
    graph_dims g;
    size_t nbytes; /* of one symset's bitmap */
    cached *slots;
    size_t nslots, used;
    long name_tests, alts, parts; /* spent so far */
};

/* ---- name matching ------------------------------------------------------- */

/* One character of a class at *pp (an escape takes two); advances *pp.
 * 0 at the end of the pattern. */
static int class_char(const char **pp, char *c)
{
    const char *p = *pp;
    if (!*p)
        return 0;
    if (*p == '\\' && p[1])
        p++;
    *c = *p;
    *pp = p + 1;
    return 1;
}

/* Matches a [...] class at *pp against c; advances *pp past ']'. -1 if the
 * class is not closed. Never reads past the pattern's terminator. */
static int match_class(const char **pp, char c)
{
    const char *p = *pp + 1;
    int neg = 0, hit = 0;
    if (*p == '!' || *p == '^')
        neg = 1, p++;
    for (int first = 1; *p && (*p != ']' || first); first = 0) {
        char lo, hi;
        if (!class_char(&p, &lo))
            break;
        hi = lo;
        if (p[0] == '-' && p[1] && p[1] != ']') { /* a range lo-hi */
            const char *q = p + 1;
            if (!class_char(&q, &hi))
                break;
            p = q;
        }
        if (c >= lo && c <= hi)
            hit = 1;
    }
    if (*p != ']')
        return -1;
    *pp = p + 1;
    return hit != neg;
}

int glob_name_match(const char *p, const char *s)
{
    const char *star_p = NULL, *star_s = NULL;
    while (*s) {
        if (*p == '*') {
            while (*p == '*')
                p++;
            star_p = p, star_s = s;
            continue;
        }
        const char *q = p;
        int ok;
        if (*p == '?') {
            ok = 1, q = p + 1;
        } else if (*p == '[') {
            ok = match_class(&q, *s);
            if (ok < 0)
                ok = *s == '[', q = p + 1; /* unclosed: a literal '[' */
        } else if (*p == '\\' && p[1]) {
            ok = p[1] == *s, q = p + 2;
        } else {
            ok = *p && *p == *s, q = p + 1;
        }
        if (ok) {
            p = q, s++;
        } else if (star_p) {
            p = star_p, s = ++star_s;
        } else {
            return 0;
        }
    }
    while (*p == '*')
        p++;
    return *p == 0;
}

static int has_meta(const char *s)
{
    return strpbrk(s, "*?[\\") != NULL;
}

/* ---- brace expansion ------------------------------------------------------ */

typedef struct {
    char **v;
    int n, cap;
} strlist;

static int push(strlist *l, char *s)
{
    if (l->n == l->cap) {
        int c = l->cap ? 2 * l->cap : 8;
        char **v = realloc(l->v, (size_t)c * sizeof *v);
        if (!v)
            return free(s), -1;
        l->v = v, l->cap = c;
    }
    l->v[l->n++] = s;
    return 0;
}

static void strlist_free(strlist *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
}

/* Two passes, each linear in the pattern: parse it into sequences and
 * groups, counting the alternatives and their total length (saturating),
 * and refuse over the caps before anything is built; then write each
 * alternative out once. A group with one option is spliced into its
 * parent, so writing recurses only at real choices, and the count bounds
 * that recursion. */

#define BRACE_MAX_DEPTH 32          /* nesting of {...} */
#define BRACE_MAX_CHARS (256 << 10) /* characters of all alternatives together */

typedef struct bseq bseq;

typedef struct {
    const char *lit; /* a literal span (opts == NULL) */
    size_t len;
    bseq *opts; /* or a group of nopts >= 2 options */
    int nopts;
    size_t count, chars; /* this item's alternatives and their total length */
} bitem;

struct bseq {
    bitem *items;
    int n, cap;
    size_t count, chars; /* saturating at the caps + 1 */
};

static size_t sat_add(size_t a, size_t b, size_t cap)
{
    return a > cap || b > cap || a + b > cap ? cap + 1 : a + b;
}

static size_t sat_mul(size_t a, size_t b, size_t cap)
{
    if (a > cap || b > cap)
        return cap + 1;
    return a && b > cap / a ? cap + 1 : a * b;
}

static void bseq_free(bseq *q);

static void bitem_free(bitem *it)
{
    for (int k = 0; k < it->nopts; k++)
        bseq_free(&it->opts[k]);
    free(it->opts);
    it->opts = NULL, it->nopts = 0;
}

static void bseq_free(bseq *q)
{
    for (int i = 0; i < q->n; i++)
        bitem_free(&q->items[i]);
    free(q->items);
    q->items = NULL, q->n = q->cap = 0;
}

/* Appends it to q (q then holds q x it); on failure it is freed. */
static int bseq_add(bseq *q, bitem it)
{
    if (q->n == q->cap) {
        int c = q->cap ? 2 * q->cap : 8;
        bitem *v = realloc(q->items, (size_t)c * sizeof *v);
        if (!v) {
            bitem_free(&it);
            return -1;
        }
        q->items = v, q->cap = c;
    }
    q->chars = sat_add(sat_mul(q->chars, it.count, BRACE_MAX_CHARS),
                       sat_mul(it.chars, q->count, BRACE_MAX_CHARS), BRACE_MAX_CHARS);
    q->count = sat_mul(q->count, it.count, GLOB_MAX_ALTS);
    q->items[q->n++] = it;
    return 0;
}

typedef struct {
    const char *s;
    char *err;
    size_t errn;
} bparse;

static int parse_seq(bparse *b, int depth, bseq *q);

/* Parses the options of a group after its '{' into g. */
static int parse_group(bparse *b, int depth, bitem *g)
{
    int cap = 0;
    *g = (bitem){NULL, 0, NULL, 0, 0, 0};
    for (;;) {
        if (g->nopts == cap) {
            cap = cap ? 2 * cap : 4;
            bseq *o = realloc(g->opts, (size_t)cap * sizeof *o);
            if (!o)
                return snprintf(b->err, b->errn, "out of memory"), -1;
            g->opts = o;
        }
        bseq *o = &g->opts[g->nopts++];
        if (parse_seq(b, depth + 1, o))
            return -1;
        g->count = sat_add(g->count, o->count, GLOB_MAX_ALTS);
        g->chars = sat_add(g->chars, o->chars, BRACE_MAX_CHARS);
        if (*b->s == ',') {
            b->s++;
            continue;
        }
        if (*b->s != '}')
            return snprintf(b->err, b->errn, "unbalanced '{' in pattern"), -1;
        b->s++;
        return 0;
    }
}

/* Parses a sequence at b->s up to the end, or (inside a group, depth > 0)
 * up to a top-level ',' or '}'. q is valid (freeable) on failure too. */
static int parse_seq(bparse *b, int depth, bseq *q)
{
    *q = (bseq){NULL, 0, 0, 1, 0};
    const char *lit = b->s;
    for (;;) {
        const char *p = b->s;
        int end = !*p || (depth > 0 && (*p == ',' || *p == '}'));
        if ((end || *p == '{') && p > lit) {
            size_t n = (size_t)(p - lit);
            if (bseq_add(q, (bitem){lit, n, NULL, 0, 1, n}))
                return snprintf(b->err, b->errn, "out of memory"), -1;
        }
        if (end)
            return 0;
        if (*p == '\\' && p[1]) {
            b->s += 2;
            continue;
        }
        if (*p != '{') {
            b->s++;
            continue;
        }
        if (depth == BRACE_MAX_DEPTH)
            return snprintf(b->err, b->errn, "{...} nested more than %d deep", BRACE_MAX_DEPTH), -1;
        b->s++;
        bitem g;
        if (parse_group(b, depth, &g)) {
            bitem_free(&g);
            return -1;
        }
        if (g.nopts > 1) {
            if (bseq_add(q, g))
                return snprintf(b->err, b->errn, "out of memory"), -1;
        } else { /* no choice: splice the one option's items in */
            bseq *o = &g.opts[0];
            int i = 0;
            while (i < o->n && !bseq_add(q, o->items[i]))
                i++;
            int failed = i < o->n;
            for (i += failed; i < o->n; i++) /* bseq_add freed the one it refused */
                bitem_free(&o->items[i]);
            free(o->items);
            free(g.opts);
            if (failed)
                return snprintf(b->err, b->errn, "out of memory"), -1;
        }
        lit = b->s;
    }
}

typedef struct {
    char *buf; /* room for the total length: no alternative is longer */
    size_t len;
    strlist *out;
} bwrite;

typedef struct bcont {
    const bitem *it;
    int n;
    const struct bcont *next;
} bcont;

/* Writes every alternative of items it[0..n), each followed by the
 * continuation k. */
static int write_seq(bwrite *w, const bitem *it, int n, const bcont *k)
{
    for (;;) {
        if (n == 0) {
            if (k) {
                it = k->it, n = k->n, k = k->next;
                continue;
            }
            char *c = malloc(w->len + 1);
            if (!c)
                return -1;
            memcpy(c, w->buf, w->len);
            c[w->len] = 0;
            return push(w->out, c);
        }
        if (!it->opts) {
            memcpy(w->buf + w->len, it->lit, it->len);
            w->len += it->len;
            it++, n--;
            continue;
        }
        size_t mark = w->len;
        bcont rest = {it + 1, n - 1, k};
        for (int o = 0; o < it->nopts; o++) {
            w->len = mark;
            if (write_seq(w, it->opts[o].items, it->opts[o].n, &rest))
                return -1;
        }
        return 0;
    }
}

static int expand(const char *s, strlist *out, char *err, size_t errn)
{
    bparse b = {s, err, errn};
    bseq q;
    int rc = -1;
    if (parse_seq(&b, 0, &q)) {
        /* the message is set */
    } else if (q.count > GLOB_MAX_ALTS) {
        snprintf(err, errn, "more than %d alternatives after expanding {...}", GLOB_MAX_ALTS);
    } else if (q.chars > BRACE_MAX_CHARS) {
        snprintf(err, errn, "the alternatives after expanding {...} are over %d characters in all",
                 BRACE_MAX_CHARS);
    } else {
        bwrite w = {malloc(q.chars + 1), 0, out};
        if (w.buf && !write_seq(&w, q.items, q.n, NULL))
            rc = 0;
        else
            snprintf(err, errn, "out of memory");
        free(w.buf);
    }
    bseq_free(&q);
    return rc;
}

/* ---- compilation ------------------------------------------------------------ */

glob_ctx *glob_ctx_new(const graph_dims *g)
{
    glob_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->g = *g;
    c->nbytes = ((size_t)g->nsym + 7) / 8;
    return c;
}

static void symset_unref(symset *s)
{
    if (s && --s->refs == 0)
        free(s);
}

const graph_dims *glob_ctx_dims(const glob_ctx *c)
{
    return &c->g;
}

void glob_ctx_free(glob_ctx *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nslots; i++) {
        free(c->slots[i].text);
        symset_unref(c->slots[i].set);
    }
    free(c->slots);
    free(c);
}

static uint64_t text_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static cached *cache_slot(glob_ctx *c, const char *text)
{
    if (!c->nslots)
        return NULL;
    size_t m = c->nslots - 1;
    for (size_t i = text_hash(text) & m;; i = (i + 1) & m)
        if (!c->slots[i].text || !strcmp(c->slots[i].text, text))
            return &c->slots[i];
}

/* Remembers set (NULL: matches nothing) under text, taking a reference;
 * best effort (out of memory: not remembered). */
static void cache_put(glob_ctx *c, const char *text, symset *set)
{
    if (c->used * 2 >= c->nslots) {
        size_t n = c->nslots ? 2 * c->nslots : 64;
        cached *old = c->slots, *ns = calloc(n, sizeof *ns);
        size_t oldn = c->nslots;
        if (!ns)
            return;
        c->slots = ns, c->nslots = n;
        for (size_t i = 0; i < oldn; i++)
            if (old[i].text)
                *cache_slot(c, old[i].text) = old[i];
        free(old);
    }
    char *t = strdup(text);
    if (!t)
        return;
    cached *slot = cache_slot(c, text);
    slot->text = t;
    slot->set = set;
    if (set)
        set->refs++;
    c->used++;
}

static void describe(const graph_dims *g, char *buf, size_t n)
{
    snprintf(buf, n,
             "the model has %d layers (0..%d) and %d heads (0..%d); the input has %d "
             "positions (0..%d)",
             g->L, g->L - 1, g->H, g->H - 1, g->T, g->T - 1);
}

static int no_match(const glob_ctx *c, const char *text, char *err, size_t errn)
{
    char dims[160], near[48], hint[80] = "";
    describe(&c->g, dims, sizeof dims);
    if (!has_meta(text) && graph_closest(&c->g, text, near, sizeof near))
        snprintf(hint, sizeof hint, "; did you mean '%s'?", near);
    return snprintf(err, errn, "'%s' matches no node of this model (%s)%s", text, dims, hint), -1;
}

/* One name of a pattern: a symbol, or the set of symbols a wildcard name
 * matches (tested against every symbol once per job, then shared). */
static int compile_part(glob_ctx *c, const char *text, part *pt, char *err, size_t errn)
{
    if (!has_meta(text)) {
        pt->kind = P_SYM;
        pt->sym = graph_parse(&c->g, text);
        return pt->sym < 0 ? no_match(c, text, err, errn) : 0;
    }
    cached *hit = cache_slot(c, text);
    if (hit && hit->text) {
        if (!hit->set) /* matched nothing before */
            return no_match(c, text, err, errn);
        pt->kind = P_SET;
        pt->set = hit->set;
        pt->set->refs++;
        return 0;
    }
    if (c->name_tests + c->g.nsym > GLOB_MAX_NAME_TESTS)
        return snprintf(err, errn,
                        "the job's wildcard names are too many to match: each is tested "
                        "against the model's %d node names, and %ld tests are the limit; use "
                        "fewer distinct wildcard names (or {...} of plain names)",
                        c->g.nsym, (long)GLOB_MAX_NAME_TESTS),
               -1;
    c->name_tests += c->g.nsym;
    symset *set = calloc(1, sizeof *set + c->nbytes);
    if (!set)
        return snprintf(err, errn, "out of memory"), -1;
    set->refs = 1;
    int any = 0;
    char name[64];
    for (int sy = 0; sy < c->g.nsym; sy++) {
        graph_name(&c->g, sy, name, sizeof name);
        if (glob_name_match(text, name))
            set->bits[sy / 8] |= (uint8_t)(1u << (sy % 8)), any = 1;
    }
    if (!any) {
        symset_unref(set);
        cache_put(c, text, NULL); /* so a repeat fails without testing again */
        return no_match(c, text, err, errn);
    }
    cache_put(c, text, set);
    pt->kind = P_SET;
    pt->set = set;
    return 0;
}

static int compile_alt(glob_ctx *c, const char *s, alt *a, char *err, size_t errn)
{
    int n = 1;
    for (const char *q = s; *q; q++)
        n += *q == '/';
    if (n > GLOB_MAX_PARTS)
        return snprintf(err, errn, "pattern has more than %d names", GLOB_MAX_PARTS), -1;
    if (c->parts + n > GLOB_MAX_TOTAL_PARTS)
        return snprintf(err, errn,
                        "the job's patterns have more than %ld names in all (after expanding "
                        "{...})",
                        (long)GLOB_MAX_TOTAL_PARTS),
               -1;
    c->parts += n;
    if (!(a->parts = calloc((size_t)n, sizeof *a->parts)))
        return snprintf(err, errn, "out of memory"), -1;
    const char *p = s;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0)
            return snprintf(err, errn,
                            "empty name in pattern '%s' (leading, trailing or double "
                            "'/')",
                            s),
                   -1;
        char text[256];
        if (len >= sizeof text)
            return snprintf(err, errn, "name too long in pattern"), -1;
        memcpy(text, p, len);
        text[len] = 0;
        part *pt = &a->parts[a->nparts++];
        if (!strcmp(text, "**"))
            pt->kind = P_STAR2;
        else if (compile_part(c, text, pt, err, errn))
            return -1;
        if (!slash)
            break;
        p = slash + 1;
    }
    return 0;
}

int glob_compile(const char *pattern, glob_ctx *c, glob **out, char *err, size_t errn)
{
    strlist l = {0};
    *out = NULL;
    if (!*pattern)
        return snprintf(err, errn, "empty pattern"), -1;
    glob *gl = calloc(1, sizeof *gl);
    if (!gl || expand(pattern, &l, err, errn))
        goto fail;
    if (c->alts + l.n > GLOB_MAX_TOTAL_ALTS) {
        snprintf(err, errn,
                 "the job's patterns have more than %ld alternatives in all (after expanding "
                 "{...})",
                 (long)GLOB_MAX_TOTAL_ALTS);
        goto fail;
    }
    c->alts += l.n;
    gl->alts = calloc((size_t)l.n, sizeof *gl->alts);
    if (!gl->alts) {
        snprintf(err, errn, "out of memory");
        goto fail;
    }
    for (int i = 0; i < l.n; i++) {
        gl->nalts++;
        if (compile_alt(c, l.v[i], &gl->alts[i], err, errn))
            goto fail;
    }
    strlist_free(&l);
    *out = gl;
    return 0;
fail:
    strlist_free(&l);
    glob_free(gl);
    return -1;
}

void glob_free(glob *gl)
{
    if (!gl)
        return;
    for (int i = 0; i < gl->nalts; i++) {
        for (int p = 0; p < gl->alts[i].nparts; p++)
            if (gl->alts[i].parts[p].kind == P_SET)
                symset_unref(gl->alts[i].parts[p].set);
        free(gl->alts[i].parts);
    }
    free(gl->alts);
    free(gl);
}

int glob_nalts(const glob *gl)
{
    return gl->nalts;
}

/* Adds the parts reachable by skipping ** parts (which may match nothing). */
static uint64_t closure(const alt *a, uint64_t m)
{
    for (int i = 0; i < a->nparts; i++)
        if ((m >> i & 1) && a->parts[i].kind == P_STAR2)
            m |= 1ull << (i + 1);
    return m;
}

uint64_t glob_start(const glob *gl, int a)
{
    return closure(&gl->alts[a], 1);
}

uint64_t glob_step(const glob *gl, int ai, uint64_t m, int sym)
{
    const alt *a = &gl->alts[ai];
    uint64_t next = 0;
    for (int i = 0; i < a->nparts; i++) {
        if (!(m >> i & 1))
            continue;
        const part *pt = &a->parts[i];
        if (pt->kind == P_STAR2)
            next |= 1ull << i;
        else if (pt->kind == P_SYM ? pt->sym == sym : pt->set->bits[sym / 8] >> (sym % 8) & 1)
            next |= 1ull << (i + 1);
    }
    return closure(a, next);
}

int glob_accepts(const glob *gl, int ai, uint64_t m)
{
    return (int)(m >> gl->alts[ai].nparts & 1);
}
