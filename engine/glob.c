/* glob.c - brace expansion, name matching and the per-alternative NFA
 * over parts; see glob.h. */
#include "glob.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int nparts;
    int star2[GLOB_MAX_PARTS];     /* part i is ** */
    uint8_t *bits[GLOB_MAX_PARTS]; /* part i: bitmap over symbols (NULL for **) */
} alt;

struct glob {
    int nalts;
    alt *alts;
};

/* ---- name matching ------------------------------------------------------- */

/* Matches a [...] class at *pp against c; advances *pp past ']'. -1 if the
 * class is not closed. */
static int match_class(const char **pp, char c)
{
    const char *p = *pp + 1;
    int neg = 0, hit = 0;
    if (*p == '!' || *p == '^')
        neg = 1, p++;
    int first = 1;
    while (*p && (*p != ']' || first)) {
        char lo = *p;
        if (lo == '\\' && p[1])
            lo = *++p;
        char hi = lo;
        if (p[1] == '-' && p[2] && p[2] != ']') {
            hi = p[2] == '\\' && p[3] ? p[3] : p[2];
            p += p[2] == '\\' ? 3 : 2;
        }
        if (c >= lo && c <= hi)
            hit = 1;
        p++;
        first = 0;
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

/* Expands the first top-level {...} of s, recursively. */
static int expand(const char *s, strlist *out, char *err, size_t errn)
{
    const char *open = NULL;
    int depth = 0;
    for (const char *p = s; *p; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            continue;
        }
        if (*p == '{' && depth++ == 0)
            open = p;
        else if (*p == '}' && depth > 0 && --depth == 0) {
            /* split open+1 .. p at top-level commas */
            size_t pre = (size_t)(open - s), sl = strlen(p + 1);
            const char *a = open + 1;
            int d = 0;
            for (const char *q = a;; q++) {
                if (*q == '\\' && q[1]) {
                    q++;
                    continue;
                }
                if (*q == '{')
                    d++;
                else if (*q == '}' && d > 0)
                    d--;
                else if ((*q == ',' && d == 0) || q == p) {
                    size_t al = (size_t)(q - a);
                    char *n = malloc(pre + al + sl + 1);
                    if (!n)
                        return snprintf(err, errn, "out of memory"), -1;
                    memcpy(n, s, pre);
                    memcpy(n + pre, a, al);
                    memcpy(n + pre + al, p + 1, sl + 1);
                    int rc = expand(n, out, err, errn);
                    free(n);
                    if (rc)
                        return rc;
                    if (q == p)
                        break;
                    a = q + 1;
                }
            }
            return 0;
        }
    }
    if (depth)
        return snprintf(err, errn, "unbalanced '{' in pattern"), -1;
    if (out->n >= GLOB_MAX_ALTS)
        return snprintf(err, errn, "more than %d alternatives after expanding {...}",
                        GLOB_MAX_ALTS),
               -1;
    char *c = strdup(s);
    if (!c || push(out, c))
        return snprintf(err, errn, "out of memory"), -1;
    return 0;
}

/* ---- compilation ------------------------------------------------------------ */

static void describe(const graph_dims *g, char *buf, size_t n)
{
    snprintf(buf, n,
             "the model has %d layers (0..%d) and %d heads (0..%d); the input has %d "
             "positions (0..%d)",
             g->L, g->L - 1, g->H, g->H - 1, g->T, g->T - 1);
}

static int compile_part(const char *part, const graph_dims *g, uint8_t **bits, char *err,
                        size_t errn)
{
    char dims[160];
    size_t nb = ((size_t)g->nsym + 7) / 8;
    uint8_t *b = calloc(nb, 1);
    if (!b)
        return snprintf(err, errn, "out of memory"), -1;
    int any = 0;
    if (!has_meta(part)) {
        int s = graph_parse(g, part);
        if (s >= 0)
            b[s / 8] |= (uint8_t)(1u << (s % 8)), any = 1;
    } else {
        char name[64];
        for (int s = 0; s < g->nsym; s++) {
            graph_name(g, s, name, sizeof name);
            if (glob_name_match(part, name))
                b[s / 8] |= (uint8_t)(1u << (s % 8)), any = 1;
        }
    }
    if (!any) {
        free(b);
        describe(g, dims, sizeof dims);
        return snprintf(err, errn, "'%s' matches no node of this model (%s)", part, dims), -1;
    }
    *bits = b;
    return 0;
}

static int compile_alt(const char *s, const graph_dims *g, alt *a, char *err, size_t errn)
{
    memset(a, 0, sizeof *a);
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
        if (a->nparts == GLOB_MAX_PARTS)
            return snprintf(err, errn, "pattern has more than %d names", GLOB_MAX_PARTS), -1;
        char part[256];
        if (len >= sizeof part)
            return snprintf(err, errn, "name too long in pattern"), -1;
        memcpy(part, p, len);
        part[len] = 0;
        int i = a->nparts++;
        if (!strcmp(part, "**"))
            a->star2[i] = 1;
        else if (compile_part(part, g, &a->bits[i], err, errn))
            return -1;
        if (!slash)
            break;
        p = slash + 1;
    }
    return 0;
}

int glob_compile(const char *pattern, const graph_dims *g, glob **out, char *err, size_t errn)
{
    strlist l = {0};
    *out = NULL;
    if (!*pattern)
        return snprintf(err, errn, "empty pattern"), -1;
    glob *gl = calloc(1, sizeof *gl);
    if (!gl || expand(pattern, &l, err, errn))
        goto fail;
    gl->alts = calloc((size_t)l.n, sizeof *gl->alts);
    if (!gl->alts) {
        snprintf(err, errn, "out of memory");
        goto fail;
    }
    for (int i = 0; i < l.n; i++) {
        gl->nalts++;
        if (compile_alt(l.v[i], g, &gl->alts[i], err, errn))
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
    for (int i = 0; i < gl->nalts; i++)
        for (int p = 0; p < gl->alts[i].nparts; p++)
            free(gl->alts[i].bits[p]);
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
        if ((m >> i & 1) && a->star2[i])
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
        if (a->star2[i])
            next |= 1ull << i;
        else if (a->bits[i][sym / 8] >> (sym % 8) & 1)
            next |= 1ull << (i + 1);
    }
    return closure(a, next);
}

int glob_accepts(const glob *gl, int ai, uint64_t m)
{
    return (int)(m >> gl->alts[ai].nparts & 1);
}
