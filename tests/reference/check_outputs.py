#!/usr/bin/python3
"""Outputs, metrics, cache behaviour and the SVG of `npp run`, checked
against the independent reference and against each other.

    check_outputs.py --npp BUILD/npp --model DIR
"""
import argparse
import json
import os
import sys
import tempfile
import xml.etree.ElementTree as ET

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_ref  # noqa: E402
import harness  # noqa: E402
from harness import check, npp, run, tensor  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--model", required=True)
    A = ap.parse_args()
    harness.setup(A.npp, A.model)
    cfg, W = gpt2_ref.load(A.model, torch.float64)
    texts = [["When Mary and John went to the store, John gave a drink to",
              "When Tom and Anna went to the park, Anna gave a ball to"],
             ["When Mary and John went to the store, Mary gave a drink to",
              "When Tom and Anna went to the park, Tom gave a ball to"]]
    patch = {"type": "activation_patch", "node": "a1.head", "from": 1, "into": 0}
    job = {"inputs": texts, "preset": patch,
           "outputs": {"positions": [-1, 3], "top_k": 5, "logits": True, "hidden_states": True,
                       "token_logprobs": [" Mary", 1757], "baselines": True, "trace": True},
           "metric": {"type": "logit_diff", "target": " Mary", "baseline": " John"}}
    res = run(job)
    T = res["tokens"]
    ids = torch.tensor(res["inputs"][0])  # (B, T)
    # reference: input 0 plain run
    with torch.inference_mode():
        _, lg0 = gpt2_ref.forward(cfg, W, ids)
    lp0 = torch.log_softmax(lg0, -1).numpy()

    # logits at positions [-1, 3] vs hidden states x lm_head (internal consistency)
    L = tensor(res["outputs"]["logits"])  # (B, 2, V)
    H = tensor(res["outputs"]["hidden_states"])  # (B, T, C)
    wte = W["wte.weight"].numpy()
    check("logits shape is [batch, positions, vocab]", L.shape == (2, 2, cfg["vocab_size"]),
          str(L.shape))
    err = np.max(np.abs(L - H[:, [T - 1, 3]] @ wte.T))
    check("logits = hidden states x wte at the positions", err < 1e-4, "max err %.3g" % err)
    # token_logprobs and top_k are log-softmax of those logits
    lsm = L - np.log(np.exp(L - L.max(-1, keepdims=True)).sum(-1, keepdims=True)) - L.max(-1, keepdims=True)
    tl = np.array(res["outputs"]["token_logprobs"]["values"])  # (B, P, 2)
    mary = res["outputs"]["token_logprobs"]["tokens"][0]["id"]
    err = max(np.max(np.abs(tl[..., 0] - lsm[..., mary])), np.max(np.abs(tl[..., 1] - lsm[..., 1757])))
    check("token_logprobs = log-softmax of the logits", err < 1e-4, "max err %.3g" % err)
    tk = res["outputs"]["top_k"]
    best = np.argsort(-lsm[1, 0])[:5]
    check("top_k ids and order match the logits", [t["id"] for t in tk[1][0]["tokens"]] == best.tolist())
    # metric: logit difference from the two token columns only, vs the full logits
    md = res["metric"]
    john = json.loads(npp("tokenize", "--model", A.model, "--json", " John"))[0]
    want = L[:, 0, mary] - L[:, 0, john]
    err = np.max(np.abs(np.array(md["per_example"]) - want))
    check("logit_diff (two columns) = full-logit difference", err < 1e-4, "max err %.3g" % err)
    check("metric mean is the mean of the examples",
          abs(md["mean"] - float(np.mean(md["per_example"]))) < 1e-9)
    # baselines: input 0's plain run vs the reference
    b0 = res["baselines"][0]
    want = lp0[:, -1, mary] - lp0[:, -1, john]
    err = np.max(np.abs(np.array(b0["metric"]["per_example"]) - want))
    check("baseline metric of input 0 = reference", err < 1e-4, "max err %.3g" % err)
    check("baseline top_k of input 0 = reference argmax",
          [b0["top_k"][b][0]["tokens"][0]["id"] for b in range(2)] == lp0[:, -1].argmax(-1).tolist())
    # trace
    ev = {t["event"] for t in res["trace"]}
    check("trace lists computed values", "computed" in ev and len(res["trace"]) == res["stats"]["values_needed"])

    # KL: zero for the unpatched run; matches the reference for the patched one
    kl0 = run({"inputs": texts, "metric": {"type": "kl"}, "outputs": {"top_k": 0}})
    check("KL of the unpatched run is 0", max(abs(x) for x in kl0["metric"]["per_example"]) < 1e-6,
          str(kl0["metric"]["per_example"]))
    klp = run({"inputs": texts, "preset": patch, "metric": {"type": "kl"},
               "outputs": {"top_k": 0, "logits": True, "positions": [-1]}})
    Lp = tensor(klp["outputs"]["logits"])[:, 0]
    lpp = Lp - np.log(np.exp(Lp - Lp.max(-1, keepdims=True)).sum(-1, keepdims=True)) - Lp.max(-1, keepdims=True)
    want = (np.exp(lp0[:, -1]) * (lp0[:, -1] - lpp)).sum(-1)
    err = np.max(np.abs(np.array(klp["metric"]["per_example"]) - want))
    check("KL(clean || patched) = reference", err < 1e-4 and want.min() > 1e-6, "max err %.3g" % err)
    # per-example tokens and the raw logit: example b's own token at the position
    r = run({"inputs": texts, "metric": {"type": "logit", "token": [" Mary", " Anna"]},
             "outputs": {"top_k": 0, "logits": True, "positions": [-1]}})
    Lr = tensor(r["outputs"]["logits"])[:, 0]
    anna = json.loads(npp("tokenize", "--model", A.model, "--json", " Anna"))[0]
    want = np.array([Lr[0, mary], Lr[1, anna]])
    err = np.max(np.abs(np.array(r["metric"]["per_example"]) - want))
    check("logit metric with one token per example = those logits", err < 1e-4, "max err %.3g" % err)
    for ty in ("logprob", "prob"):
        r = run({"inputs": texts, "metric": {"type": ty, "token": " Mary"}, "outputs": {"top_k": 0}})
        want = lp0[:, -1, mary] if ty == "logprob" else np.exp(lp0[:, -1, mary])
        err = np.max(np.abs(np.array(r["metric"]["per_example"]) - want))
        check("%s metric = reference" % ty, err < 1e-5, "max err %.3g" % err)
    r = run({"inputs": texts, "metric": {"type": "prob_diff", "target": " Mary", "baseline": [" John", " Anna"]},
             "outputs": {"top_k": 0}})
    want = np.exp(lp0[:, -1, mary]) - np.exp(lp0[np.arange(2), -1, [john, anna]])
    err = np.max(np.abs(np.array(r["metric"]["per_example"]) - want))
    check("prob_diff metric (per-example baselines) = reference", err < 1e-5 and
          r["metric"]["type"] == "prob_diff", "max err %.3g" % err)

    # the top of the model at the rows read: with hidden states asked for every
    # row is computed; without, the last layer and ln_f only from the first
    # position an output or the metric reads, with the same logits and metric
    check("hidden states asked for: every position computed (tail_from 0)",
          res["stats"]["tail_from"] == 0, json.dumps(res["stats"]))
    top = run(dict(job, outputs={"positions": [-1, 3], "top_k": 5, "logits": True,
                                 "baselines": True}))
    check("logits at positions [-1, 3]: the top computed from position 3",
          top["stats"]["tail_from"] == 3, json.dumps(top["stats"]))
    err = max(np.max(np.abs(tensor(top["outputs"]["logits"]) - L)),
              np.max(np.abs(np.array(top["metric"]["per_example"]) - np.array(md["per_example"]))),
              np.max(np.abs(np.array(top["baselines"][0]["metric"]["per_example"]) -
                            np.array(b0["metric"]["per_example"]))))
    check("the same logits, metric and baselines as every position's", err < 1e-5,
          "max err %.3g" % err)
    last = run({"inputs": texts, "preset": patch, "metric": job["metric"], "outputs": {"top_k": 0}})
    err = np.max(np.abs(np.array(last["metric"]["per_example"]) - np.array(md["per_example"])))
    check("metric alone: the top computed at the last position only, the same metric",
          last["stats"]["tail_from"] == T - 1 and err < 1e-5,
          "tail_from %d of %d, max err %.3g" % (last["stats"]["tail_from"], T, err))
    uneven = [[texts[0][0], texts[0][1] + " the"], [texts[1][0], texts[1][1] + " the"]]
    r = run({"inputs": uneven, "metric": {"type": "logprob", "token": " Mary"}, "outputs": {"top_k": 0}})
    ids1 = torch.tensor(r["inputs"][0][1])
    with torch.inference_mode():
        _, lg1 = gpt2_ref.forward(cfg, W, ids1[None, :r["lengths"][1]])
    want = [lp0[0, -1, mary], float(torch.log_softmax(lg1[0, -1], -1)[mary])]
    err = np.max(np.abs(np.array(r["metric"]["per_example"]) - np.array(want)))
    check("uneven prompts: the top from the shorter one's last position, metric = reference",
          r["stats"]["tail_from"] == T - 1 and err < 1e-5,
          "tail_from %d, max err %.3g" % (r["stats"]["tail_from"], err))

    # cache: a repeated job computes nothing; a cache too small changes nothing but speed
    small = dict(job, outputs={"hidden_states": True, "top_k": 0})
    r2 = run(small, "--repeat", "2")
    s = r2["stats"]
    check("repeated job computes 0 values (all from cache)",
          s["values_computed"] == 0 and s["values_cached"] > 0, json.dumps(s))
    r0 = run(small, "--cache-mb", "0", "--repeat", "2")
    check("cache of 0 MB: the repeat recomputes", r0["stats"]["values_computed"] > 0,
          "computed %d" % r0["stats"]["values_computed"])
    same = np.array_equal(tensor(r0["outputs"]["hidden_states"]), tensor(r2["outputs"]["hidden_states"]))
    check("cache too small gives identical results", same)

    # npy files and the SVG
    with tempfile.TemporaryDirectory() as d:
        svg = os.path.join(d, "g.svg")
        r = run(dict(job, outputs={"hidden_states": True, "top_k": 0}), "--npy-dir", d, "--svg", svg)
        t = r["outputs"]["hidden_states"]
        check("--npy-dir writes .npy with the tensor's shape",
              list(np.load(t["npy"]).shape) == t["shape"] and "data" not in t)
        root = ET.parse(svg).getroot()
        texts_in = [e.text for e in root.iter("{http://www.w3.org/2000/svg}text")]
        nodes = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"]
        check("SVG parses, one box per path node (+ legend)",
              len(nodes) == r["stats"]["path_nodes"] + 3 and "ln_final" in texts_in
              and "a1.head" in texts_in, "%d boxes, %d path nodes" % (len(nodes), r["stats"]["path_nodes"]))

    return harness.summary()


if __name__ == "__main__":
    sys.exit(main())
