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
 *   "discover": the smallest n of its curve (in increasing n) with
 *               faithfulness >= 0.9 (else the largest n), the
 *               attribution's top n; a point without a faithfulness (null)
 *               is left out of the curve;
 *   "attribution": its top 30 (grey: a score of 0); at "level": "nodes",
 *               its top 30 senders, their boxes filled by score, no edges;
 *   a "circuit" job: its edges, each once (no scores: grey, no
 *               data-score). A sweep's or grid's circuits are not drawn. */
#ifndef NPP_CIRCUIT_H
#define NPP_CIRCUIT_H

#include <jansson.h>
#include <stddef.h>

#include "base/err.h"

/* *out: a new SVG document of *len bytes for the result of a job on a
 * model of L layers and H heads; NPP_EINVAL when the result has no circuit
 * (not an attribution, discover or circuit job, or a rules job whose
 * which rules are not a circuit's). */
int circuit_svg(const json_t *result, int L, int H, char **out, size_t *len, npp_err *e);

#endif
