/* heatmap.c - see heatmap.h. Written by hand (no Graphviz): a few hundred
 * rectangles and labels. */
#include "output/heatmap.h"

#include "output/svgtext.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Cell (r, c) of the grid's nested lists (a one-axis grid: row 0). */
static json_t *cell(const json_t *a, int naxes, int r, int c)
{
    return naxes == 1 ? json_array_get(a, (size_t)c)
                      : json_array_get(json_array_get(a, (size_t)r), (size_t)c);
}

int heatmap_svg(const json_t *grid, char **out, size_t *len, npp_err *e)
{
    json_t *axes = json_object_get(grid, "axes"), *ticks = json_object_get(grid, "ticks");
    json_t *vals = json_object_get(grid, "values"), *names = json_object_get(grid, "names");
    int na = (int)json_array_size(axes);
    *out = NULL;
    if (na < 1 || !json_is_object(ticks) || !json_is_array(vals))
        return npp_fail(e, NPP_EINVAL, "grid", "not a grid result");
    if (na > 2)
        return npp_fail(e, NPP_EINVAL, "grid",
                        "a heatmap draws one or two axes; this grid has %d (read its values "
                        "from the result)",
                        na);
    const char *ra = na == 2 ? json_string_value(json_array_get(axes, 0)) : "";
    const char *ca = json_string_value(json_array_get(axes, (size_t)(na - 1)));
    json_t *rt = na == 2 ? json_object_get(ticks, ra) : NULL, *ct = json_object_get(ticks, ca);
    int rows = na == 2 ? (int)json_array_size(rt) : 1, cols = (int)json_array_size(ct);
    if (rows < 1 || cols < 1)
        return npp_fail(e, NPP_EINVAL, "grid", "a grid without cells");
    double vmax = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            json_t *v = cell(vals, na, r, c);
            if (json_is_number(v) && fabs(json_number_value(v)) > vmax)
                vmax = fabs(json_number_value(v));
        }
    int cw = cols > 48 ? 12 : cols > 24 ? 18 : 32, ch = rows > 48 ? 12 : rows > 24 ? 18 : 26;
    int left = 76, top = 44, gw = cols * cw, gh = rows * ch, legend = 24;
    int W = left + gw + legend + 110, H = top + (gh > 120 ? gh : 120) + 56;
    W = W < 480 ? 480 : W; /* the title */
    const char *metric = json_string_value(json_object_get(grid, "metric"));
    int norm = json_is_true(json_object_get(grid, "normalized"));
    svgbuf b = {0};
    svg_put(&b,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d "
            "%d\" font-family=\"sans-serif\" font-size=\"11\">\n",
            W, H, W, H);
    svg_put(&b, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
    svg_put(&b, "<text x=\"%d\" y=\"18\" font-size=\"13\" font-weight=\"bold\">", left);
    svg_text(&b, metric ? metric : "metric");
    svg_put(&b, "%s per cell</text>\n", norm ? " (normalized: 0 no effect, 1 the source's)" : "");
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            json_t *v = cell(vals, na, r, c), *nm = names ? cell(names, na, r, c) : NULL;
            char fill[16] = "#cccccc";
            if (json_is_number(v))
                svg_colour(json_number_value(v), vmax, fill, sizeof fill);
            svg_put(&b,
                    "<rect class=\"cell\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" "
                    "stroke=\"#ffffff\" data-row=\"%d\" data-col=\"%d\" data-value=\"",
                    left + c * cw, top + r * ch, cw, ch, fill, r, c);
            if (json_is_number(v))
                svg_put(&b, "%.9g", json_number_value(v));
            svg_put(&b, "\"");
            if (json_is_string(nm)) {
                svg_put(&b, " data-name=\"");
                svg_text(&b, json_string_value(nm));
                svg_put(&b, "\"");
            }
            svg_put(&b, "><title>");
            svg_text(&b, json_is_string(nm) ? json_string_value(nm) : "");
            if (json_is_number(v))
                svg_put(&b, ": %.4g", json_number_value(v));
            else
                svg_put(&b, ": no value (the normalization's two baselines are equal)");
            svg_put(&b, "</title></rect>\n");
        }
    /* ticks: every one when they fit, else every k-th */
    int rstep = ch >= 12 && rows <= 48 ? 1 : (rows + 23) / 24,
        cstep = cols <= 48 ? 1 : (cols + 23) / 24;
    for (int r = 0; na == 2 && r < rows; r += rstep)
        svg_put(&b,
                "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" "
                "dominant-baseline=\"middle\">%lld</text>\n",
                left - 6, top + r * ch + ch / 2,
                (long long)json_integer_value(json_array_get(rt, (size_t)r)));
    for (int c = 0; c < cols; c += cstep)
        svg_put(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%lld</text>\n",
                left + c * cw + cw / 2, top + gh + 14,
                (long long)json_integer_value(json_array_get(ct, (size_t)c)));
    svg_put(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-weight=\"bold\">",
            left + gw / 2, top + gh + 34);
    svg_text(&b, ca);
    svg_put(&b, "</text>\n");
    if (na == 2) {
        svg_put(&b,
                "<text x=\"16\" y=\"%d\" text-anchor=\"middle\" font-weight=\"bold\" "
                "transform=\"rotate(-90 16 %d)\">",
                top + gh / 2, top + gh / 2);
        svg_text(&b, ra);
        svg_put(&b, "</text>\n");
    }
    /* the legend: a bar from -vmax (bottom) to +vmax (top) */
    int lx = left + gw + legend, lh = gh > 120 ? gh : 120, steps = 20;
    for (int i = 0; i < steps; i++) {
        char fill[16];
        svg_colour(vmax * (1 - 2.0 * (i + 0.5) / steps), vmax, fill, sizeof fill);
        svg_put(&b, "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"%d\" fill=\"%s\"/>\n", lx,
                top + i * lh / steps, lh / steps + 1, fill);
    }
    svg_put(&b,
            "<rect class=\"legend\" x=\"%d\" y=\"%d\" width=\"14\" height=\"%d\" fill=\"none\" "
            "stroke=\"#444444\"/>\n",
            lx, top, lh - lh % steps);
    svg_put(&b, "<text x=\"%d\" y=\"%d\" dominant-baseline=\"middle\">%+.3g</text>\n", lx + 18, top,
            vmax);
    svg_put(&b, "<text x=\"%d\" y=\"%d\" dominant-baseline=\"middle\">0</text>\n", lx + 18,
            top + (lh - lh % steps) / 2);
    svg_put(&b, "<text x=\"%d\" y=\"%d\" dominant-baseline=\"middle\">%+.3g</text>\n", lx + 18,
            top + lh - lh % steps, -vmax);
    svg_put(&b, "</svg>\n");
    if (b.failed) {
        free(b.s);
        return npp_fail(e, NPP_ENOMEM, "", "out of memory drawing the heatmap");
    }
    *out = b.s;
    *len = b.n;
    return 0;
}
