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

enum { EDGES_SCORED, EDGES_PLAIN, NODES }; /* what a picture draws */

typedef struct {
    graph_dims g;
    int width, height, mode;
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

/* A sender's box; used: in the circuit (drawn dark), score: its node
 * score (NODES: filled on the colour scale, NaN: none). */
static void node_box(svgbuf *b, const layout *lo, int sym, int used, double score)
{
    char name[48], fill[16];
    double x, y;
    graph_name(&lo->g, sym, name, sizeof name);
    place(lo, sym, &x, &y);
    if (!isnan(score))
        svg_colour(score, lo->vmax > 0 ? lo->vmax : 1, fill, sizeof fill);
    else
        snprintf(fill, sizeof fill, "%s", used ? "#fff8e7" : "#fafafa");
    svg_put(b, "<g class=\"node%s\"", used ? " used" : "");
    if (!isnan(score))
        svg_put(b, " data-score=\"%.6g\"", score);
    svg_put(b,
            "><rect x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" rx=\"4\" "
            "fill=\"%s\" stroke=\"%s\"/><text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" "
            "text-anchor=\"middle\" fill=\"%s\">%s</text>",
            x - BOXW / 2.0, y - BOXH / 2.0, BOXW, BOXH, fill, used ? "#333" : "#ddd", x, y + 4,
            used ? "#111" : "#bbb", name);
    if (!isnan(score))
        svg_put(b, "<title>%s: %.4g</title>", name, score);
    if (graph_node(&lo->g, sym).kind == G_HEAD && used && lo->mode != NODES)
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
    int scored = lo->mode == EDGES_SCORED;
    double a = scored && lo->vmax > 0 ? fabs(ed->score) / lo->vmax : 0.5;
    if (scored && ed->score != 0) /* never white: at least a third of the scale */
        svg_colour((ed->score < 0 ? -1 : 1) * (0.35 + 0.65 * a), 1, col, sizeof col);
    else /* unscored, or a score of 0: neither raises nor lowers */
        snprintf(col, sizeof col, scored ? "#999999" : "#555555");
    graph_name(&lo->g, ed->u, un, sizeof un);
    graph_name(&lo->g, ed->v, vn, sizeof vn);
    double bend = fabs(y1 - y2) / 2.5 + 10;
    svg_put(b,
            "<path class=\"edge\" d=\"M%.1f,%.1f C%.1f,%.1f %.1f,%.1f %.1f,%.1f\" fill=\"none\" "
            "stroke=\"%s\" stroke-width=\"%.2f\" stroke-opacity=\"0.85\"",
            x1, y1, x1, y1 - bend, x2, y2 + bend, x2, y2, col, 1 + 5 * a);
    if (scored)
        svg_put(b, " data-score=\"%.6g\"", ed->score);
    svg_put(b, "><title>");
    svg_text(b, un);
    svg_put(b, " -&gt; ");
    svg_text(b, vn);
    if (scored)
        svg_put(b, ": %.4g", ed->score);
    svg_put(b, "</title></path>\n");
}

/* A curve point's faithfulness; NaN where it has none (null: the clean
 * and corrupted runs give the same metric, so nothing is normalised). */
static double faith(const json_t *pt)
{
    json_t *f = json_object_get(pt, "faithfulness");
    return json_is_number(f) ? json_number_value(f) : NAN;
}

/* The faithfulness curve (discover): n across (the curve is in increasing
 * n), faithfulness up; a point without one is left out, with "n/a" under
 * its n. */
static void draw_curve(svgbuf *b, const json_t *curve, double top, int width)
{
    int n = (int)json_array_size(curve), w = width - 2 * MARGIN, h = 140;
    double lo = 0, hi = 1;
    for (int i = 0; i < n; i++) {
        double f = faith(json_array_get(curve, (size_t)i));
        if (!isnan(f))
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
    int open = 0; /* a polyline is open: the line breaks at a point without a value */
    for (int i = 0; i < n; i++) {
        double f = faith(json_array_get(curve, (size_t)i));
        if (isnan(f)) {
            svg_put(b, open ? "\"/>\n" : "");
            open = 0;
            continue;
        }
        if (!open)
            svg_put(b, "<polyline fill=\"none\" stroke=\"#b2182b\" stroke-width=\"2\" points=\"");
        open = 1;
        svg_put(b, "%.1f,%.1f ", MARGIN + (n > 1 ? i * (double)w / (n - 1) : w / 2.0),
                y0 + h - (f - lo) / (hi - lo) * h);
    }
    svg_put(b, open ? "\"/>\n" : "");
    for (int i = 0; i < n; i++) {
        json_t *pt = json_array_get(curve, (size_t)i);
        double f = faith(pt), x = MARGIN + (n > 1 ? i * (double)w / (n - 1) : w / 2.0),
               y = y0 + h - (f - lo) / (hi - lo) * h;
        long long pn = (long long)json_integer_value(json_object_get(pt, "n"));
        if (!isnan(f))
            svg_put(b,
                    "<circle class=\"point\" cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#b2182b\" "
                    "data-n=\"%lld\" data-faithfulness=\"%.6g\"><title>top %lld: "
                    "%.4f</title></circle>",
                    x, y, pn, f, pn, f);
        svg_put(
            b,
            "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\">%lld%s</text>\n",
            x, y0 + h + 14, pn, isnan(f) ? " n/a" : "");
    }
    svg_put(b, "</g>\n");
}

static int by_edge(const void *x, const void *y)
{
    const cedge *a = x, *b = y;
    return a->u != b->u ? a->u - b->u : a->v - b->v;
}

/* A circuit job's rules: the full split and one which rule, every path
 * that leaves the listed edges reading input 1 (preset_circuit); its
 * edges, or NULL. */
static json_t *circuit_edges(const json_t *res)
{
    json_t *wh = json_object_get(json_object_get(res, "rules"), "which");
    json_t *w = json_array_get(wh, 0);
    if (json_array_size(wh) != 1 || !json_is_true(json_object_get(w, "not")) ||
        json_integer_value(json_object_get(w, "input")) != 1)
        return NULL;
    return json_object_get(w, "edges");
}

/* The edges (or NODES: senders, v -1) to draw and the title; -1 when the
 * result has none. */
static int pick(const json_t *res, const graph_dims *g, cedge **out, int *mode, char *title,
                size_t tn)
{
    json_t *disc = json_object_get(res, "discover"), *at = json_object_get(res, "attribution");
    json_t *list = NULL;
    const char *method = json_string_value(json_object_get(at, "method"));
    long want = DEFAULT;
    *mode = EDGES_SCORED;
    if (at && json_object_get(at, "edges")) {
        list = json_object_get(at, "edges");
        json_t *curve = json_object_get(disc, "curve");
        snprintf(title, tn, "the %s top edges", method ?: "");
        for (size_t i = 0; disc && i < json_array_size(curve); i++) {
            json_t *pt = json_array_get(curve, i);
            double f = faith(pt);
            want = (long)json_integer_value(json_object_get(pt, "edges"));
            if (isnan(f))
                snprintf(title, tn, "the top %ld edges by %s (faithfulness n/a)", want,
                         method ?: "");
            else
                snprintf(title, tn, "the top %ld edges by %s (faithfulness %.3f)", want,
                         method ?: "", f);
            if (f >= 0.9)
                break;
        }
    } else if (at && json_object_get(at, "nodes")) {
        list = json_object_get(at, "nodes");
        *mode = NODES;
        snprintf(title, tn, "the %s top nodes (a sender's score: the sum of its edges')",
                 method ?: "");
    } else {
        if (!(list = circuit_edges(res)))
            return -1;
        want = (long)json_array_size(list);
        *mode = EDGES_PLAIN;
    }
    size_t n = json_array_size(list) < (size_t)want ? json_array_size(list) : (size_t)want;
    cedge *es = calloc(n + 1, sizeof *es);
    if (!es)
        return -2;
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *ed = json_array_get(list, i);
        int u = graph_parse(g, json_string_value(json_array_get(ed, 0)) ?: ""),
            v = *mode == NODES ? -1
                               : graph_parse(g, json_string_value(json_array_get(ed, 1)) ?: "");
        if (u < 0 || (v < 0 && *mode != NODES))
            continue;
        json_t *sc = json_array_get(ed, *mode == NODES ? 1 : 2);
        es[k++] = (cedge){u, v, *mode == EDGES_PLAIN ? 0 : json_number_value(sc), 0};
    }
    if (*mode == EDGES_PLAIN) { /* each edge once (a circuit may list one twice) */
        qsort(es, (size_t)k, sizeof *es, by_edge);
        int m = 0;
        for (int i = 0; i < k; i++)
            if (!m || by_edge(&es[m - 1], &es[i]))
                es[m++] = es[i];
        k = m;
        snprintf(title, tn, "the circuit (%d edges)", k);
    } else if (*mode == NODES) {
        snprintf(title + strlen(title), tn - strlen(title), ": %d", k);
    }
    *out = es;
    return k;
}

int circuit_svg(const json_t *res, int L, int H, char **out, size_t *len, npp_err *e)
{
    layout lo = {.width = 0};
    graph_dims_init(&lo.g, L, H, 1);
    char title[200];
    cedge *es = NULL;
    *out = NULL;
    int n = pick(res, &lo.g, &es, &lo.mode, title, sizeof title);
    if (n == -1)
        return npp_fail(e, NPP_EINVAL, "circuit",
                        "no circuit: the job is not an attribution, discover or circuit job (a "
                        "sweep's or grid's circuits are not drawn)");
    unsigned char *live = malloc((size_t)lo.g.nsym);
    double *node = malloc((size_t)lo.g.nsym * sizeof *node);
    if (n < 0 || !live || !node) {
        free(es), free(live), free(node);
        return npp_fail(e, NPP_ENOMEM, "circuit", "out of memory");
    }
    for (int s = 0; s < lo.g.nsym; s++)
        node[s] = NAN;
    if (lo.mode == NODES) { /* no edges: the scored senders, filled by score */
        memset(live, 0, (size_t)lo.g.nsym);
        for (int i = 0; i < n; i++)
            live[es[i].u] = 1, node[es[i].u] = es[i].score;
    } else {
        n = prune(&lo.g, es, n, live);
    }
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
    if (lo.mode != NODES)
        svg_put(&b, ", %d connected to ln_final", n);
    svg_put(&b, "</text>\n");
    if (lo.mode != EDGES_PLAIN)
        svg_put(&b,
                "<text x=\"%d\" y=\"%d\" font-size=\"11\" fill=\"#444\">red: patching the "
                "%s from the corrupted run raises the metric (the estimate), blue: lowers "
                "it; %s</text>\n",
                MARGIN, 40, lo.mode == NODES ? "sender" : "edge",
                lo.mode == NODES ? "shade: |score|" : "width: |score|, grey: 0");
    for (int s = 0; s < lo.g.nsym; s++) {
        gnode d = graph_node(&lo.g, s);
        if (d.kind == G_EMB || d.kind == G_LN_FINAL || d.kind == G_HEAD || d.kind == G_FHEAD)
            node_box(&b, &lo, s, live[s], node[s]);
    }
    for (int i = 0; lo.mode != NODES && i < n; i++)
        draw_edge(&b, &lo, &es[i]);
    if (json_array_size(curve))
        draw_curve(&b, curve, graph_h, lo.width);
    svg_put(&b, "</svg>\n");
    free(es), free(live), free(node);
    if (b.failed) {
        free(b.s);
        return npp_fail(e, NPP_ENOMEM, "circuit", "out of memory");
    }
    *out = b.s, *len = b.n;
    return 0;
}
