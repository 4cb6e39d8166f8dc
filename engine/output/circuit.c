/* circuit.c - see circuit.h. Written by hand, like heatmap.c. */
#include "output/circuit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "output/svgtext.h"
#include "patch/edges.h"

#define ROW     96 /* one attention row or MLP row */
#define BOXW    64
#define BOXH    26
#define GAP     14
#define MARGIN  40
#define DEFAULT 30 /* an attribution's edges drawn */

typedef struct {
    int u, v; /* symbols */
    double score;
    int order; /* the receiver's place in the residual stream */
} cedge;

typedef struct {
    graph_dims g;
    int width, height, scored;
    double vmax;
} layout;

/* Centre of a node's box: emb at the bottom, layer i's heads then its MLP
 * above, ln_final at the top. */
static void place(const layout *lo, int sym, double *x, double *y)
{
    gnode d = graph_node(&lo->g, sym);
    int rows = 2 * lo->g.L + 2; /* emb, (attention, MLP) x L, ln_final */
    int row = d.kind == G_EMB        ? 0
              : d.kind == G_LN_FINAL ? rows - 1
              : d.kind == G_FHEAD    ? 2 + 2 * d.layer
                                     : 1 + 2 * d.layer;
    *y = MARGIN + 30 + (rows - 1 - row) * ROW + BOXH / 2.0;
    if (d.kind == G_HEAD || d.kind == G_Q || d.kind == G_K || d.kind == G_V)
        *x = MARGIN + d.idx * (BOXW + GAP) + BOXW / 2.0;
    else if (d.kind == G_FHEAD)
        *x = MARGIN + lo->g.H * (BOXW + GAP) + BOXW / 2.0;
    else
        *x = lo->width / 2.0;
}

/* Where an edge into receiver v ends: a head's q/k/v port on the bottom of
 * its box, or the bottom middle of an MLP or ln_final. */
static void port(const layout *lo, int v, double *x, double *y)
{
    gnode d = graph_node(&lo->g, v);
    place(lo, v, x, y);
    *y += BOXH / 2.0;
    if (d.kind == G_Q || d.kind == G_K || d.kind == G_V)
        *x += (d.kind - G_K) * (BOXW / 3.0);
}

/* The symbol of the node box a receiver belongs to (a head for q/k/v). */
static int box_of(const graph_dims *g, int v)
{
    gnode d = graph_node(g, v);
    return d.kind == G_Q || d.kind == G_K || d.kind == G_V ? graph_sym(g, G_HEAD, d.layer, d.idx)
                                                           : v;
}

static int by_receiver_desc(const void *x, const void *y)
{
    const cedge *a = x, *b = y;
    return b->order - a->order;
}

/* Keeps the edges through which a sender reaches ln_final (in place);
 * returns how many. Edges are taken top down, so a sender is known to
 * reach ln_final before the edges into its own inputs are looked at. */
static int prune(const graph_dims *g, cedge *es, int n, unsigned char *live)
{
    for (int i = 0; i < n; i++) {
        gnode d = graph_node(g, es[i].v);
        es[i].order = graph_stream_index(g, d.kind, d.layer);
    }
    qsort(es, (size_t)n, sizeof *es, by_receiver_desc);
    memset(live, 0, (size_t)g->nsym);
    live[graph_sym(g, G_LN_FINAL, -1, -1)] = 1;
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (!live[box_of(g, es[i].v)])
            continue;
        live[es[i].u] = 1;
        es[k++] = es[i];
    }
    return k;
}

static void node_box(svgbuf *b, const layout *lo, int sym, int used)
{
    char name[48];
    double x, y;
    graph_name(&lo->g, sym, name, sizeof name);
    place(lo, sym, &x, &y);
    svg_put(b,
            "<g class=\"node%s\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" rx=\"4\" "
            "fill=\"%s\" stroke=\"%s\"/><text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" "
            "text-anchor=\"middle\" fill=\"%s\">%s</text>",
            used ? " used" : "", x - BOXW / 2.0, y - BOXH / 2.0, BOXW, BOXH,
            used ? "#fff8e7" : "#fafafa", used ? "#333" : "#ddd", x, y + 4, used ? "#111" : "#bbb",
            name);
    if (graph_node(&lo->g, sym).kind == G_HEAD && used)
        for (int c = 0; c < 3; c++)
            svg_put(b,
                    "<text x=\"%.1f\" y=\"%.1f\" font-size=\"8\" text-anchor=\"middle\" "
                    "fill=\"#666\">%c</text>",
                    x + (c - 1) * (BOXW / 3.0), y + BOXH / 2.0 + 9, "qkv"[c]);
    svg_put(b, "</g>\n");
}

static void draw_edge(svgbuf *b, const layout *lo, const cedge *ed)
{
    char un[48], vn[48], col[16];
    double x1, y1, x2, y2;
    place(lo, ed->u, &x1, &y1);
    y1 -= BOXH / 2.0;
    port(lo, ed->v, &x2, &y2);
    double a = lo->scored && lo->vmax > 0 ? fabs(ed->score) / lo->vmax : 0.5;
    if (lo->scored) /* never white: at least a third of the scale */
        svg_colour((ed->score < 0 ? -1 : 1) * (0.35 + 0.65 * a), 1, col, sizeof col);
    else
        snprintf(col, sizeof col, "#555555");
    graph_name(&lo->g, ed->u, un, sizeof un);
    graph_name(&lo->g, ed->v, vn, sizeof vn);
    double bend = fabs(y1 - y2) / 2.5 + 10;
    svg_put(b,
            "<path class=\"edge\" d=\"M%.1f,%.1f C%.1f,%.1f %.1f,%.1f %.1f,%.1f\" fill=\"none\" "
            "stroke=\"%s\" stroke-width=\"%.2f\" stroke-opacity=\"0.85\" data-score=\"%.6g\">"
            "<title>",
            x1, y1, x1, y1 - bend, x2, y2 + bend, x2, y2, col, 1 + 5 * a, ed->score);
    svg_text(b, un);
    svg_put(b, " -&gt; ");
    svg_text(b, vn);
    if (lo->scored)
        svg_put(b, ": %.4g", ed->score);
    svg_put(b, "</title></path>\n");
}

/* The faithfulness curve (discover): n across, faithfulness up. */
static void draw_curve(svgbuf *b, const json_t *curve, double top, int width)
{
    int n = (int)json_array_size(curve), w = width - 2 * MARGIN, h = 140;
    double lo = 0, hi = 1;
    for (int i = 0; i < n; i++) {
        double f =
            json_number_value(json_object_get(json_array_get(curve, (size_t)i), "faithfulness"));
        lo = f < lo ? f : lo, hi = f > hi ? f : hi;
    }
    double y0 = top + 30;
    svg_put(b,
            "<g class=\"curve\"><text x=\"%d\" y=\"%.1f\" font-size=\"12\" font-weight=\"bold\">"
            "faithfulness of the top n edges (1: the clean run, 0: the corrupted)</text>\n",
            MARGIN, top + 14);
    for (double t = 0; t <= 1; t += 1) {
        double y = y0 + h - (t - lo) / (hi - lo) * h;
        svg_put(b,
                "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#bbb\" "
                "stroke-dasharray=\"4,3\"/><text x=\"%d\" y=\"%.1f\" font-size=\"10\" "
                "text-anchor=\"end\">%g</text>\n",
                MARGIN, y, MARGIN + w, y, MARGIN - 4, y + 3, t);
    }
    svg_put(b, "<polyline fill=\"none\" stroke=\"#b2182b\" stroke-width=\"2\" points=\"");
    for (int i = 0; i < n; i++) {
        json_t *pt = json_array_get(curve, (size_t)i);
        double f = json_number_value(json_object_get(pt, "faithfulness"));
        svg_put(b, "%.1f,%.1f ", MARGIN + (n > 1 ? i * (double)w / (n - 1) : w / 2.0),
                y0 + h - (f - lo) / (hi - lo) * h);
    }
    svg_put(b, "\"/>\n");
    for (int i = 0; i < n; i++) {
        json_t *pt = json_array_get(curve, (size_t)i);
        double f = json_number_value(json_object_get(pt, "faithfulness"));
        double x = MARGIN + (n > 1 ? i * (double)w / (n - 1) : w / 2.0),
               y = y0 + h - (f - lo) / (hi - lo) * h;
        svg_put(b,
                "<circle class=\"point\" cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#b2182b\" "
                "data-n=\"%lld\" data-faithfulness=\"%.6g\"><title>top %lld: %.4f</title></circle>"
                "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\">%lld</text>\n",
                x, y, (long long)json_integer_value(json_object_get(pt, "n")), f,
                (long long)json_integer_value(json_object_get(pt, "n")), f, x, y0 + h + 14,
                (long long)json_integer_value(json_object_get(pt, "n")));
    }
    svg_put(b, "</g>\n");
}

/* The edges to draw and the title, from the result; -1 when none. */
static int pick(const json_t *res, const graph_dims *g, cedge **out, int *scored, char *title,
                size_t tn)
{
    json_t *disc = json_object_get(res, "discover"), *at = json_object_get(res, "attribution");
    json_t *list = NULL;
    long want = 0;
    *scored = 1;
    if (at && json_object_get(at, "edges")) {
        list = json_object_get(at, "edges");
        want = DEFAULT;
        snprintf(title, tn, "the %s top edges", json_string_value(json_object_get(at, "method")));
        json_t *curve = json_object_get(disc, "curve");
        for (size_t i = 0; disc && i < json_array_size(curve); i++) {
            json_t *pt = json_array_get(curve, i);
            want = (long)json_integer_value(json_object_get(pt, "edges"));
            double f = json_number_value(json_object_get(pt, "faithfulness"));
            snprintf(title, tn, "the top %ld edges by %s (faithfulness %.3f)", want,
                     json_string_value(json_object_get(at, "method")), f);
            if (f >= 0.9)
                break;
        }
    } else {
        json_t *wh = json_object_get(json_object_get(res, "rules"), "which");
        list = json_object_get(json_array_get(wh, 0), "edges");
        if (!list)
            return -1;
        want = (long)json_array_size(list);
        *scored = 0;
        snprintf(title, tn, "the circuit (%ld edges)", want);
    }
    size_t n = json_array_size(list) < (size_t)want ? json_array_size(list) : (size_t)want;
    cedge *es = calloc(n + 1, sizeof *es);
    if (!es)
        return -2;
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *ed = json_array_get(list, i);
        int u = graph_parse(g, json_string_value(json_array_get(ed, 0)) ?: ""),
            v = graph_parse(g, json_string_value(json_array_get(ed, 1)) ?: "");
        if (u < 0 || v < 0)
            continue;
        es[k++] = (cedge){u, v, *scored ? json_number_value(json_array_get(ed, 2)) : 0, 0};
    }
    *out = es;
    return k;
}

int circuit_svg(const json_t *res, int L, int H, char **out, size_t *len, npp_err *e)
{
    layout lo = {.width = 0};
    graph_dims_init(&lo.g, L, H, 1);
    char title[160];
    cedge *es = NULL;
    *out = NULL;
    int n = pick(res, &lo.g, &es, &lo.scored, title, sizeof title);
    if (n == -1)
        return npp_fail(e, NPP_EINVAL, "circuit",
                        "no circuit: the job is not an attribution, discover or circuit job");
    unsigned char *live = malloc((size_t)lo.g.nsym);
    if (n < 0 || !live) {
        free(es), free(live);
        return npp_fail(e, NPP_ENOMEM, "circuit", "out of memory");
    }
    n = prune(&lo.g, es, n, live);
    for (int i = 0; i < n; i++)
        lo.vmax = fabs(es[i].score) > lo.vmax ? fabs(es[i].score) : lo.vmax;
    json_t *curve = json_object_get(json_object_get(res, "discover"), "curve");
    int graph_h = MARGIN + 30 + (2 * L + 1) * ROW + BOXH + 30;
    lo.width = 2 * MARGIN + (H + 1) * (BOXW + GAP);
    lo.width = lo.width < 680 ? 680 : lo.width;
    lo.height = graph_h + (json_array_size(curve) ? 210 : 0) + 20;
    svgbuf b = {0};
    svg_put(&b,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" "
            "width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\">\n"
            "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n",
            lo.width, lo.height, lo.width, lo.height, lo.width, lo.height);
    svg_put(&b, "<text x=\"%d\" y=\"%d\" font-size=\"13\" font-weight=\"bold\">", MARGIN, 22);
    svg_text(&b, title);
    svg_put(&b, ", %d connected to ln_final</text>\n", n);
    if (lo.scored)
        svg_put(&b,
                "<text x=\"%d\" y=\"%d\" font-size=\"11\" fill=\"#444\">red: patching the "
                "edge from the corrupted run raises the metric (the estimate), blue: lowers "
                "it; width: |score|</text>\n",
                MARGIN, 40);
    for (int s = 0; s < lo.g.nsym; s++) {
        gnode d = graph_node(&lo.g, s);
        if (d.kind == G_EMB || d.kind == G_LN_FINAL || d.kind == G_HEAD || d.kind == G_FHEAD)
            node_box(&b, &lo, s, live[s]);
    }
    for (int i = 0; i < n; i++)
        draw_edge(&b, &lo, &es[i]);
    if (json_array_size(curve))
        draw_curve(&b, curve, graph_h, lo.width);
    svg_put(&b, "</svg>\n");
    free(es), free(live);
    if (b.failed) {
        free(b.s);
        return npp_fail(e, NPP_ENOMEM, "circuit", "out of memory");
    }
    *out = b.s, *len = b.n;
    return 0;
}
