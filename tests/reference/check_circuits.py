#!/usr/bin/python3
"""Circuit evaluation ("circuit": {"edges": [...]}) against GPT-2 written
edge by edge in PyTorch (edges_ref.py), on models of several layer and
head counts:

1. identities: every edge listed is input 0's plain run, none is input 1's,
   all but (u, v) is `path_patch` u -> v (from input 1);
2. a random half of the edges equals the reference's circuit run, within
   1e-5, and differs from both plain runs (so the check can fail);
3. `normalize` is the faithfulness: 1 with every edge, 0 with none;
4. the reference itself: with every edge it is the plain forward pass.

    check_circuits.py --npp BUILD/npp --model DIR [--model DIR ...]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edges_ref  # noqa: E402
import gpt2_ref  # noqa: E402
import harness  # noqa: E402
from harness import check, run, tensor  # noqa: E402

TOL = 1e-5


def hidden(res):
    return tensor(res["outputs"]["hidden_states"])


def check_model(model):
    harness.setup(harness.NPP, model)
    cfg, W, name, edges, rng, clean, corrupt = edges_ref.setup(model)
    base = {"inputs": [clean, corrupt], "outputs": {"hidden_states": True, "top_k": 0}}
    t_clean, t_corrupt = torch.tensor(clean), torch.tensor(corrupt)
    ref_clean = edges_ref.run(cfg, W, t_clean)
    ref_corrupt = edges_ref.run(cfg, W, t_corrupt)
    plain, _ = gpt2_ref.forward(cfg, W, t_clean)
    d = float((ref_clean["_hidden"] - plain).abs().max())
    check("%s: reference edge by edge = plain forward" % name, d < 1e-9, "%.1e" % d)

    h0 = hidden(run(dict(base)))
    h1 = hidden(run(dict(base, which=[{"match": "**", "input": 1}])))
    allc = run(dict(base, circuit={"edges": [list(e) for e in edges]}))
    d = np.abs(hidden(allc) - h0).max()
    check("%s: all %d edges = input 0's plain run" % (name, len(edges)), d < TOL, "%.1e" % d)
    none = run(dict(base, circuit={"edges": []}))
    d = np.abs(hidden(none) - h1).max()
    check("%s: no edges = input 1's plain run" % name, d < TOL, "%.1e" % d)

    # all but (u, v) = path_patch u -> v, for edges of every kind
    picks = [e for e in edges if e[0] == "emb"][:1] + \
        [e for e in edges if e[1].endswith(".k") and e[0].startswith("a")][:1] + \
        [e for e in edges if e[0].startswith("f") and e[1] != "ln_final"][:1] + \
        [e for e in edges if e[1] == "ln_final" and ".head" in e[0]][-1:] + \
        [e for e in edges if e[1].endswith(".v")][-1:]
    for u, v in picks:
        rest = [list(e) for e in edges if e != (u, v)]
        a = hidden(run(dict(base, circuit={"edges": rest})))
        pp = hidden(run(dict(base, preset={"type": "path_patch", "senders": [u],
                                           "receivers": [v], "from": 1, "into": 0})))
        d = np.abs(a - pp).max()
        check("%s: all but (%s, %s) = path_patch" % (name, u, v), d < TOL,
              "%.1e (moves %.2g)" % (d, np.abs(a - h0).max()))

    half = [e for e in edges if rng.random() < 0.5]
    res = run(dict(base, circuit={"edges": [list(e) for e in half]},
                   metric={"type": "logit_diff", "target": 11, "baseline": 12, "normalize": True}))
    ref = edges_ref.run(cfg, W, t_clean, set(half), ref_corrupt)["_hidden"].numpy()
    h = hidden(res)
    d = np.abs(h - ref).max()
    moved = min(np.abs(h - h0).max(), np.abs(h - h1).max())
    check("%s: %d random edges = the reference circuit run" % (name, len(half)),
          d < TOL and moved > 100 * TOL, "%.1e (%.2g from either plain run)" % (d, moved))
    cols = W["lm_head.weight"][[11, 12]].numpy()

    def ld(hs):  # the metric: mean logit difference at the last position
        lg = hs[:, -1] @ cols.T
        return float((lg[:, 0] - lg[:, 1]).mean())
    want = (ld(ref) - ld(ref_corrupt["_hidden"].numpy())) / \
        (ld(ref_clean["_hidden"].numpy()) - ld(ref_corrupt["_hidden"].numpy()))
    got = res["metric"]["normalized"]
    check("%s: the half circuit's faithfulness = the reference's" % name,
          abs(got - want) < 1e-4 * max(1, abs(want)), "%.6f vs %.6f" % (got, want))
    for label, es, want in (("every edge", edges, 1.0), ("no edge", [], 0.0)):
        r = run(dict(base, circuit={"edges": [list(e) for e in es]},
                     metric={"type": "logit_diff", "target": 11, "baseline": 12,
                             "normalize": True}))
        got = r["metric"]["normalized"]
        check("%s: faithfulness with %s = %g" % (name, label, want), abs(got - want) < 1e-4,
              "%.6f" % got)
    return allc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--model", action="append", required=True)
    a = ap.parse_args()
    harness.setup(a.npp, a.model[0])
    for model in a.model:
        check_model(model)
    sys.exit(harness.summary())


if __name__ == "__main__":
    main()
