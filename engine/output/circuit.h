/* circuit.h - a circuit drawn as SVG: the model's nodes placed by layer
 * (emb at the bottom, each layer's heads and its MLP above, ln_final at the
 * top), every head with its q, k and v inputs as three ports, the circuit's
 * edges as curves from the sender to the receiver's port, width by |score|
 * and colour by its sign (red: patching the edge from the corrupted run
 * raises the metric, blue: lowers it), a tooltip per edge. Only edges that
 * connect to ln_final through the circuit are drawn. A discover job's
 * faithfulness curve comes below, as a small plot.
 *
 * Which edges, from a result (result.h):
 *   "discover": the smallest n of its curve with faithfulness >= 0.9 (else
 *               the largest n), the attribution's top n;
 *   "attribution": its top 30;
 *   a "circuit" job: its edges (no scores: grey). */
#ifndef NPP_CIRCUIT_H
#define NPP_CIRCUIT_H

#include <jansson.h>
#include <stddef.h>

#include "base/err.h"

/* *out: a new SVG document of *len bytes for the result of a job on a
 * model of L layers and H heads; NPP_EINVAL when the result has no circuit
 * (not an attribution, discover or circuit job). */
int circuit_svg(const json_t *result, int L, int H, char **out, size_t *len, npp_err *e);

#endif
