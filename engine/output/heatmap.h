/* heatmap.h - a grid result (result.h: "grid") drawn as an SVG heatmap:
 * the first axis down, the second across (a one-axis grid is one row),
 * each cell coloured on a diverging scale symmetric about 0 (blue below,
 * red above), with tick labels, axis titles, a colour legend and a tooltip
 * per cell ("a3.head7: 0.4213"). Cells carry data-row, data-col and
 * data-value attributes for scripts. */
#ifndef NPP_HEATMAP_H
#define NPP_HEATMAP_H

#include <jansson.h>
#include <stddef.h>

#include "base/err.h"

/* *out: a new NUL-terminated SVG document of *len bytes. NPP_EINVAL for a
 * grid of three axes or a malformed grid object. */
int heatmap_svg(const json_t *grid, char **out, size_t *len, npp_err *e);

#endif
