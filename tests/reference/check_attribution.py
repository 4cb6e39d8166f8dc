#!/usr/bin/python3
"""Edge attribution ("attribution": {"method": "eap" | "eap-ig"}) against
PyTorch autograd on GPT-2 written edge by edge (edges_ref.py: every
receiver's input is its own tensor, so its .grad is dM/dx_v by
definition), on models of several layer and head counts:

1. EAP and EAP-IG (3 steps) scores of every edge equal the reference's
   within 1e-4 of the largest score; logit_diff, logprob (over the whole
   vocabulary) and kl (EAP-IG: the gradient of KL vanishes at the clean run);
2. an uneven batch (examples of 5 and 3 tokens) equals the reference's
   per-example scores averaged; so do prompts corrupted late (the engine
   keeps only the positions from the first corrupted one to the metric's),
   not at all, and at the first position; and jobs whose outputs read
   every position (the last layer then runs at all of them, not only from
   the first position the metric and the outputs read);
3. node scores are the sums of their edges'; the list is sorted by |score|
   and cut to "top"; "count" is the number of edges of the model;
4. discover: its exact effects equal single path_patch jobs within 1e-5
   (relative) beside the scores, its faithfulness curve single circuit jobs
   of the top n edges;
5. the corrupted run's sender outputs are values of the job's plan: run
   twice in one process (--repeat 2), the second run takes all of them from
   the shared cache, computes no value (the clean run is the gradient
   pass's), and gives the
   same scores (within 1e-6 of the largest);
6. with the model computing in bfloat16 (--dtype bf16 on the CPU), the
   scores follow the float32 run's: relative L2 error at most 0.25,
   correlation at least 0.97, the float32 top 5 within bfloat16's top 10.
   Not a bound on each score: bf16 keeps 8 bits of mantissa and a delta is
   a difference of two bf16 runs, so an edge whose sender barely changes
   moves by tens of percent, and how much depends on the CPU's bf16
   kernels (the largest error, relative to the largest score, was 4.8% on
   the medium model on one 2-core EPYC and 19% on another; relative L2
   0.045, 0.025, 0.141 and correlation 0.999, 0.9998, 0.990 on the second).

    check_attribution.py --npp BUILD/npp --model DIR [--model DIR ...]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edges_ref  # noqa: E402
import harness  # noqa: E402
from harness import check, run  # noqa: E402

TOL = 1e-4  # relative to the largest score


def metric_fn(W, spec, pos):
    """M(hidden) as the job defines it: the batch mean at each example's
    metric position."""
    WU = W["lm_head.weight"]

    def m(h):
        rows = torch.stack([h[b, p] for b, p in enumerate(pos)])
        lg = rows @ WU.T
        lp = torch.log_softmax(lg, -1)
        if spec["type"] == "logit_diff":
            return (lg[:, spec["target"]] - lg[:, spec["baseline"]]).mean()
        if spec["type"] == "logprob":
            return lp[:, spec["token"]].mean()
        raise ValueError(spec["type"])
    return m


def ref_scores(cfg, W, clean, corrupt, spec, steps, pos, kl_ref=None):
    """{(u, v): score} by autograd on the edge-by-edge model."""
    _, _, edges = edges_ref.edge_list(cfg)
    c, x = torch.tensor(clean), torch.tensor(corrupt)
    with torch.no_grad():
        rc, rx = edges_ref.run(cfg, W, c), edges_ref.run(cfg, W, x)
    ec, ex = edges_ref.embed(W, c), edges_ref.embed(W, x)
    grads = {}
    for k in range(1, steps + 1):
        e = (ex + (k / steps) * (ec - ex)).detach().requires_grad_()
        taps = {}
        out = edges_ref.run(cfg, W, c, emb=e, taps=taps)
        if spec["type"] == "kl":
            rows = torch.stack([out["_hidden"][b, p] for b, p in enumerate(pos)])
            lp = torch.log_softmax(rows @ W["lm_head.weight"].T, -1)
            M = (kl_ref.exp() * (kl_ref - lp)).sum(-1).mean()
        else:
            M = metric_fn(W, spec, pos)(out["_hidden"])
        M.backward()
        for v, t in taps.items():
            grads[v] = grads.get(v, 0) + t.grad / steps
    return {(u, v): float(((rx[u] - rc[u]) * grads[v]).sum()) for u, v in edges}


def compare(name, got, want, edges):
    big = max(abs(s) for s in want.values())
    d = max(abs(got[e] - want[e]) for e in edges)
    check(name, d <= TOL * big and big > 0, "max |diff| %.2e, largest score %.3g" % (d, big))


def engine_scores(res):
    return {(u, v): s for u, v, s in res["attribution"]["edges"]}


def check_model(model):
    harness.setup(harness.NPP, model)
    cfg, W, name, edges, _, clean, corrupt = edges_ref.setup(model)
    pos = [len(clean[0]) - 1] * len(clean)
    base = {"inputs": [clean, corrupt], "outputs": {"top_k": 0}}
    specs = [({"type": "logit_diff", "target": 11, "baseline": 12}, "eap", 1),
             ({"type": "logit_diff", "target": 11, "baseline": 12}, "eap-ig", 3),
             ({"type": "logprob", "token": 17}, "eap", 1)]
    for spec, method, steps in specs:
        att = {"method": method} if method == "eap" else {"method": method, "steps": steps}
        res = run(dict(base, metric=spec, attribution=att))
        got = engine_scores(res)
        check("%s: %s %s lists every edge once" % (name, method, spec["type"]),
              len(got) == len(edges) == res["attribution"]["count"] and set(got) == set(edges),
              "%d edges" % len(got))
        compare("%s: %s (%d step%s) %s scores = autograd" % (name, method, steps,
                                                               "s" if steps > 1 else "",
                                                               spec["type"]),
                got, ref_scores(cfg, W, clean, corrupt, spec, steps, pos), edges)
    # kl: zero gradient at the clean run, so EAP-IG only
    c = torch.tensor(clean)
    with torch.no_grad():
        h = edges_ref.run(cfg, W, c)["_hidden"]
        ref_lp = torch.log_softmax(torch.stack([h[b, p] for b, p in enumerate(pos)]) @
                                   W["lm_head.weight"].T, -1)
    res = run(dict(base, metric={"type": "kl"}, attribution={"method": "eap-ig", "steps": 2}))
    compare("%s: eap-ig (2 steps) kl scores = autograd" % name, engine_scores(res),
            ref_scores(cfg, W, clean, corrupt, {"type": "kl"}, 2, pos, kl_ref=ref_lp), edges)

    # an uneven batch: the mean of the examples' own scores
    spec = {"type": "logit_diff", "target": 11, "baseline": 12}
    ex = [clean[0][:5], clean[1][:3]]
    ey = [corrupt[0][:5], corrupt[1][:3]]
    res = run({"inputs": [ex, ey], "metric": spec, "attribution": {"method": "eap-ig",
                                                                    "steps": 2},
               "outputs": {"top_k": 0}})
    per = [ref_scores(cfg, W, [ex[b]], [ey[b]], spec, 2, [len(ex[b]) - 1]) for b in range(2)]
    compare("%s: uneven batch (5 and 3 tokens) = the examples' mean" % name, engine_scores(res),
            {e: (per[0][e] + per[1][e]) / 2 for e in edges}, edges)

    # the last layer runs at the positions the outputs and the metric read
    # (here the last); with an output at position 0, or the hidden states,
    # at every position: the same scores either way
    pos0 = [dict(base, outputs={"top_k": 0, "positions": [0, len(clean[0]) - 1]}),
            dict(base, outputs={"top_k": 0, "hidden_states": True})]
    want = ref_scores(cfg, W, clean, corrupt, spec, 2, pos)
    for job, what in zip(pos0, ["an output at position 0", "the hidden states"]):
        res = run(dict(job, metric=spec, attribution={"method": "eap-ig", "steps": 2}))
        compare("%s: with %s (every position computed) = autograd" % (name, what),
                engine_scores(res), want, edges)
        check("%s: with %s, no position left out" % (name, what),
              res["stats"]["tail_from"] == 0, str(res["stats"]["tail_from"]))

    # the positions that can score: corrupted late in example 0 (only its
    # last two positions can), not at all in example 1 (none can: its
    # scores are 0), at the start of the others (all can)
    late = [row[:] for row in clean]
    late[0][-2] = clean[0][-2] + 1
    for b in range(2, len(late)):
        late[b][0] = clean[b][0] + 1
    spec = {"type": "logit_diff", "target": 11, "baseline": 12}
    res = run({"inputs": [clean, late], "metric": spec, "attribution": {"method": "eap"},
               "outputs": {"top_k": 0}})
    compare("%s: corrupted late, not at all, at the start (the rows kept) = autograd" % name,
            engine_scores(res), ref_scores(cfg, W, clean, late, spec, 1, pos), edges)

    # discover: its exact effects are single path_patch jobs, its curve single circuit jobs
    res = run(dict(base, metric=spec, discover={"method": "eap-ig", "steps": 2,
                                                "top_n": [1, 3, 10], "verify": 4, "top": 12}))
    d, scores = res["discover"], res["attribution"]["edges"]
    clean_m = res["metric"]["mean"]
    worst = 0
    for k, row in enumerate(d["verify"]):
        u, v = row["edge"]
        one = run(dict(base, metric=spec, preset={"type": "path_patch", "senders": [u],
                                                  "receivers": [v], "from": 1, "into": 0}))
        want = one["metric"]["mean"] - clean_m
        worst = max(worst, abs(row["exact"] - want) / max(abs(want), 1e-6))
        worst = max(worst, 0 if [u, v, row["estimate"]] == scores[k] else 1)
    check("%s: discover's %d exact effects = path_patch jobs (rel. 1e-5), beside the scores"
          % (name, len(d["verify"])), len(d["verify"]) == 4 and worst <= 1e-5, "%.1e" % worst)
    worst = 0
    for row in d["curve"]:
        one = run(dict(base, metric=dict(spec, normalize=True),
                       circuit={"edges": [e[:2] for e in scores[:row["n"]]]}))
        worst = max(worst, abs(one["metric"]["normalized"] - row["faithfulness"]))
    check("%s: discover's faithfulness curve = circuit jobs of the top n edges" % name,
          [r["n"] for r in d["curve"]] == [1, 3, 10] and worst <= 1e-5 and len(scores) == 12,
          "%.1e" % worst)

    # nodes, order, top
    att = {"method": "eap"}
    full = run(dict(base, metric=spec, attribution=att))["attribution"]["edges"]
    mags = [abs(s) for _, _, s in full]
    check("%s: edges sorted by |score|" % name, mags == sorted(mags, reverse=True))
    top = run(dict(base, metric=spec, attribution=dict(att, top=5)))["attribution"]
    check("%s: top 5 = the first 5, count still every edge" % name,
          top["edges"] == full[:5] and top["count"] == len(edges))
    nodes = run(dict(base, metric=spec, attribution=dict(att, level="nodes")))["attribution"]
    sums = {}
    for u, _, s in full:
        sums[u] = sums.get(u, 0) + s
    d = max(abs(s - sums[u]) for u, s in nodes["nodes"])
    check("%s: node scores = the sums of their edges" % name,
          d <= 1e-6 * max(map(abs, sums.values())) and len(nodes["nodes"]) == len(sums),
          "%.1e" % d)

    # the corrupted senders from the shared cache: emb, then each layer's
    # heads' outputs (one value) and MLP output
    S = 1 + 2 * cfg["n_layer"]
    cold = run(dict(base, metric=spec, attribution=att))
    warm = run(dict(base, metric=spec, attribution=att), "--repeat", "2")
    ws, cs = warm["stats"], cold["stats"]
    big = max(abs(s) for _, _, s in full)
    d = max(abs(a[2] - b[2]) for a, b in zip(sorted(warm["attribution"]["edges"]), sorted(full)))
    check("%s: again in one process, the %d values of the corrupted senders from the cache, "
          "same scores" % (name, S),
          cs["values_computed"] >= S and ws["values_computed"] == 0 and ws["values_cached"] >= S and
          d <= 1e-6 * big, "cold: %d computed; warm: %d cached, %d computed; %.1e" %
          (cs["values_computed"], ws["values_cached"], ws["values_computed"], d))

    # bfloat16 compute
    bf = run(dict(base, metric=spec, attribution=att), "--dtype", "bf16")["attribution"]["edges"]
    want = {(u, v): s for u, v, s in full}
    x = np.array([want[(u, v)] for u, v, _ in bf])
    y = np.array([s for _, _, s in bf])
    rel = float(np.linalg.norm(y - x) / np.linalg.norm(x))
    corr = float(np.corrcoef(x, y)[0, 1])
    top_bf = [(u, v) for u, v, _ in bf[:10]]  # bf and full: sorted by |score|
    top_in = sum((u, v) in top_bf for u, v, _ in full[:5])
    check("%s: EAP in bfloat16 follows float32 (relative L2 <= 0.25, correlation >= 0.97, "
          "the top 5 in its top 10)" % name,
          len(bf) == len(full) and rel <= 0.25 and corr >= 0.97 and top_in == 5,
          "relative L2 %.3f, correlation %.4f, %d of the top 5, largest error %.1f%% of the "
          "largest score" % (rel, corr, top_in, 100 * float(np.max(np.abs(y - x))) / big))


def check_pieces(model):
    """A large job's layers run in pieces (CHUNK_ROWS rows of the MLP, a few
    examples of c_attn and the attention, so that a cancel stops within a
    piece; the scores' products CHUNK_ROWS scoring rows at a time): 9 x 256
    tokens on a 256-wide model, corrupted from position 10, are 2,304 rows
    (2,214 scoring) and 9 examples, two pieces each, against the same
    examples in jobs of one piece (8 examples, 2,048 rows; 1 example),
    whose batch-mean scores combine as (8 s8 + s1) / 9."""
    harness.setup(harness.NPP, model)
    T = 256
    ids = [[(61 * b + 17 * t) % 4000 + 20 for t in range(T)] for b in range(9)]
    bad = [row[:10] + [(x + 5) % 4000 + 20 for x in row[10:]] for row in ids]  # 2,214 rows score
    job = {"outputs": {"top_k": 0}, "metric": {"type": "logit_diff", "target": 11, "baseline": 12},
           "attribution": {"method": "eap-ig", "steps": 2}}
    s9 = engine_scores(run(dict(job, inputs=[ids, bad])))
    s8 = engine_scores(run(dict(job, inputs=[ids[:8], bad[:8]])))
    s1 = engine_scores(run(dict(job, inputs=[ids[8:], bad[8:]])))
    want = {e: (8 * s8[e] + s1[e]) / 9 for e in s9}
    compare("%s: a job in pieces (9 x 256 tokens) = its examples in one-piece jobs" %
            os.path.basename(model), s9, want, list(s9))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--model", action="append", required=True)
    a = ap.parse_args()
    harness.setup(a.npp, a.model[0])
    torch.manual_seed(0)
    np.random.seed(0)
    for model in a.model:
        check_model(model)
    check_pieces(a.model[-1])  # the largest
    sys.exit(harness.summary())


if __name__ == "__main__":
    main()
