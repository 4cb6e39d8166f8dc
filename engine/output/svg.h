/* svg.h - the path tree of a planned job as an SVG picture (Graphviz).
 *
 * One box per path element (a node of the plan's memo, so shared sub-trees
 * are drawn once), edges from a node to what it reads, each box filled with
 * the colour of the input it reads (grey when the paths below it read
 * several), split nodes drawn bold. Graphviz's cgraph is not thread-safe:
 * rendering is serialised by a process-wide mutex. */
#ifndef NPP_SVG_H
#define NPP_SVG_H

#include <stddef.h>

#include "compute/plan.h"
#include "patch/job.h"

/* *out is new (free()), NUL-terminated. */
int svg_render(const plan *p, const job *j, char **out, size_t *len, npp_err *e);
int svg_write_file(const plan *p, const job *j, const char *path, npp_err *e);

#endif
