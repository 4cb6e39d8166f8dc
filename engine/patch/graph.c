/* graph.c - symbol numbering of graph names; see graph.h. Layout: 0 is
 * ln_final, 1 is emb, then one block per layer:
 *   a, f, a.head, head0..H-1, (q, k, v) x H, apos0..T-1, f.head, fpos0..T-1 */
#include "patch/graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int block(const graph_dims *g)
{
    return 4 * g->H + 2 * g->T + 4;
}

void graph_dims_init(graph_dims *g, int L, int H, int T)
{
    g->L = L, g->H = H, g->T = T;
    g->nsym = 2 + L * block(g);
}

int graph_sym(const graph_dims *g, gkind k, int layer, int idx)
{
    if (k == G_LN_FINAL)
        return 0;
    if (k == G_EMB)
        return 1;
    int b = 2 + layer * block(g), H = g->H, T = g->T;
    switch (k) {
    case G_A: return b;
    case G_F: return b + 1;
    case G_AHEAD: return b + 2;
    case G_HEAD: return b + 3 + idx;
    case G_Q: return b + 3 + H + 3 * idx;
    case G_K: return b + 3 + H + 3 * idx + 1;
    case G_V: return b + 3 + H + 3 * idx + 2;
    case G_APOS: return b + 3 + 4 * H + idx;
    case G_FHEAD: return b + 3 + 4 * H + T;
    case G_FPOS: return b + 4 + 4 * H + T + idx;
    default: return -1;
    }
}

gnode graph_node(const graph_dims *g, int sym)
{
    if (sym == 0)
        return (gnode){G_LN_FINAL, -1, -1};
    if (sym == 1)
        return (gnode){G_EMB, -1, -1};
    int H = g->H, T = g->T, r = (sym - 2) % block(g), layer = (sym - 2) / block(g);
    if (r == 0)
        return (gnode){G_A, layer, -1};
    if (r == 1)
        return (gnode){G_F, layer, -1};
    if (r == 2)
        return (gnode){G_AHEAD, layer, -1};
    r -= 3;
    if (r < H)
        return (gnode){G_HEAD, layer, r};
    r -= H;
    if (r < 3 * H)
        return (gnode){r % 3 == 0 ? G_Q : r % 3 == 1 ? G_K : G_V, layer, r / 3};
    r -= 3 * H;
    if (r < T)
        return (gnode){G_APOS, layer, r};
    r -= T;
    if (r == 0)
        return (gnode){G_FHEAD, layer, -1};
    return (gnode){G_FPOS, layer, r - 1};
}

void graph_name(const graph_dims *g, int sym, char *buf, size_t n)
{
    gnode d = graph_node(g, sym);
    static const char qkv[] = "qkv";
    switch (d.kind) {
    case G_LN_FINAL: snprintf(buf, n, "ln_final"); break;
    case G_EMB: snprintf(buf, n, "emb"); break;
    case G_A: snprintf(buf, n, "a%d", d.layer); break;
    case G_F: snprintf(buf, n, "f%d", d.layer); break;
    case G_AHEAD: snprintf(buf, n, "a%d.head", d.layer); break;
    case G_HEAD: snprintf(buf, n, "a%d.head%d", d.layer, d.idx); break;
    case G_Q:
    case G_K:
    case G_V: snprintf(buf, n, "a%d.head%d.%c", d.layer, d.idx, qkv[d.kind - G_Q]); break;
    case G_APOS: snprintf(buf, n, "a%d.head.pos%d", d.layer, d.idx); break;
    case G_FHEAD: snprintf(buf, n, "f%d.head", d.layer); break;
    case G_FPOS: snprintf(buf, n, "f%d.head.pos%d", d.layer, d.idx); break;
    }
}

/* Reads a canonical decimal number (no sign, no leading zero) at *s. */
static int number(const char **s)
{
    const char *p = *s;
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
        return -1;
    long v = 0;
    while (*p >= '0' && *p <= '9' && v < 1000000)
        v = v * 10 + (*p++ - '0');
    if (v >= 1000000)
        return -1;
    *s = p;
    return (int)v;
}

int graph_parse(const graph_dims *g, const char *name)
{
    if (!strcmp(name, "ln_final"))
        return 0;
    if (!strcmp(name, "emb"))
        return 1;
    const char *p = name + 1;
    int layer;
    if ((name[0] != 'a' && name[0] != 'f') || (layer = number(&p)) < 0 || layer >= g->L)
        return -1;
    int is_a = name[0] == 'a';
    if (!*p)
        return graph_sym(g, is_a ? G_A : G_F, layer, -1);
    if (strncmp(p, ".head", 5))
        return -1;
    p += 5;
    if (!*p)
        return graph_sym(g, is_a ? G_AHEAD : G_FHEAD, layer, -1);
    if (!strncmp(p, ".pos", 4)) {
        p += 4;
        int pos = number(&p);
        if (pos < 0 || pos >= g->T || *p)
            return -1;
        return graph_sym(g, is_a ? G_APOS : G_FPOS, layer, pos);
    }
    int h = number(&p);
    if (!is_a || h < 0 || h >= g->H)
        return -1;
    if (!*p)
        return graph_sym(g, G_HEAD, layer, h);
    if (p[0] == '.' && (p[1] == 'q' || p[1] == 'k' || p[1] == 'v') && p[2] == 0)
        return graph_sym(g, p[1] == 'q' ? G_Q : p[1] == 'k' ? G_K : G_V, layer, h);
    return -1;
}

int graph_stream_index(const graph_dims *g, gkind kind, int layer)
{
    switch (kind) {
    case G_EMB: return 0;
    case G_LN_FINAL: return 2 * g->L + 1;
    case G_F:
    case G_FHEAD:
    case G_FPOS: return 2 * layer + 2;
    default: return 2 * layer + 1; /* a{i} and everything inside its attention */
    }
}

int graph_resid_sym(const graph_dims *g, int j)
{
    if (j == 0)
        return graph_sym(g, G_EMB, -1, -1);
    return graph_sym(g, j % 2 ? G_A : G_F, (j - 1) / 2, -1);
}

/* Levenshtein distance of two short strings (99 when either is long). */
static int edit_distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    if (n > 40 || m > 40)
        return 99;
    int row[41];
    for (size_t j = 0; j <= m; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= n; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= m; j++) {
            int up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[m];
}

int graph_closest(const graph_dims *g, const char *name, char *buf, size_t n)
{
    int best = 99, pos = strstr(name, "pos") != NULL;
    char cand[48];
    for (int s = 0; s < g->nsym; s++) {
        gnode nd = graph_node(g, s);
        /* positions are thousands: only the first 16 of each, and only for a
         * name that has "pos" (a 48-layer, 1,024-position model then costs
         * about 6,500 comparisons of at most 40 x 40) */
        if ((nd.kind == G_APOS || nd.kind == G_FPOS) && (!pos || nd.idx >= 16))
            continue;
        graph_name(g, s, cand, sizeof cand);
        int d = edit_distance(name, cand);
        if (d < best) {
            best = d;
            snprintf(buf, n, "%s", cand);
        }
    }
    return best <= (strlen(name) > 6 ? 3 : 2);
}
