#!/usr/bin/python3
"""A sweep (one job, many variants, executed as the union of their plans)
gives each variant what the variant gives as a job of its own, and computes
each shared value once.

Batching variants together stacks them on the batch dimension of one
matrix product; BLAS (or a GPU library) does not promise the same bits for
a different batch shape, so numbers are compared within a relative 1e-5
(an absolute floor of 1e-5 for values near zero), and top-k lists must name
the same tokens in the same order.

    check_sweep.py --npp BUILD/npp --model DIR
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, npp, run, tensor  # noqa: E402

def alone(base, variant):
    """The variant as a job of its own."""
    job = dict(base)
    job.update({k: v for k, v in variant.items() if k != "name"})
    return job


RTOL = ATOL = 1e-5


def close(a, b):
    """Largest excess of |a - b| over the tolerance (<= 0: within it)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float((np.abs(a - b) - (ATOL + RTOL * np.abs(b))).max())


def top_k_ids(top_k):
    return [[[t["id"] for t in pos["tokens"]] for pos in ex] for ex in top_k]


def top_k_logprobs(top_k):
    return [t["logprob"] for ex in top_k for pos in ex for t in pos["tokens"]]


def same_outputs(got, ref):
    """Top-k names the same tokens; numbers within the tolerance."""
    if top_k_ids(got["top_k"]) != top_k_ids(ref["top_k"]):
        return False, float("inf")
    worst = close(top_k_logprobs(got["top_k"]), top_k_logprobs(ref["top_k"]))
    return True, worst


def compare(name, base, variants, *, baselines=False):
    sweep = run(dict(base, sweep=variants))
    check(name + ": one result per variant, in order, named",
          [v["variant"] for v in sweep["sweep"]] == list(range(len(variants))) and
          all(v.get("name") == w.get("name") for v, w in zip(sweep["sweep"], variants)))
    computed_alone = 0
    worst = -1.0  # largest excess over the tolerance, over every number compared
    differ = []
    for i, w in enumerate(variants):
        ref = run(alone(base, w))
        got = sweep["sweep"][i]
        computed_alone += ref["stats"]["values_computed"]
        same, excess = same_outputs(got["outputs"], ref["outputs"])
        same = same and got["rules"] == ref["rules"]
        worst = max(worst, excess,
                    close(got["metric"]["per_example"], ref["metric"]["per_example"]))
        if "logits" in ref["outputs"]:
            worst = max(worst, close(tensor(got["outputs"]["logits"]),
                                     tensor(ref["outputs"]["logits"])))
        if not same:
            differ.append(i)
        if baselines and i == 0:
            ok = len(sweep["baselines"]) == len(ref["baselines"])
            bw = -1.0
            for bs, br in zip(sweep["baselines"], ref["baselines"]):
                s_ok, ex = same_outputs(bs, br)
                ok = ok and s_ok and bs["input"] == br["input"]
                bw = max(bw, ex, close(bs["metric"]["per_example"], br["metric"]["per_example"]))
            check(name + ": baselines equal a job's own (same top-k tokens, rtol 1e-5)",
                  ok and bw <= 0, "excess over tolerance %g" % bw)
    check(name + ": every variant's rules and top-k tokens equal its own job's", not differ,
          "variants that differ: %s" % differ if differ else "")
    check(name + ": every variant's metric, logits and log-probs within rtol 1e-5 of its own "
          "job's", worst <= 0, "largest excess over the tolerance %g" % worst)
    st = sweep["stats"]
    check(name + ": shared values computed once",
          st["values_computed"] == st["values_planned"] and
          st["values_computed"] < computed_alone,
          "sweep computed %d values; the jobs alone %d" % (st["values_computed"],
                                                           computed_alone))
    return sweep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--model", required=True)
    A = ap.parse_args()
    harness.setup(A.npp, A.model)
    cfg = json.load(open(os.path.join(A.model, "config.json")))
    L, H = cfg["n_layer"], cfg["n_head"]
    inputs = [["When Mary and John went to the store, John gave a drink to",
               "When Tom and Anna went to the park, Anna gave a ball to"],
              ["When Mary and John went to the store, Mary gave a drink to",
               "When Tom and Anna went to the park, Tom gave a ball to"]]
    metric = {"type": "logit_diff", "target": [" Mary", " Tom"], "baseline": [" John", " Anna"]}

    # 1. The path-patching sweep of Wang et al.: every head of the first two
    # layers as the sender, into the last layer's queries; plus other kinds
    # of variant side by side.
    variants = [{"name": "a%d.head%d" % (l, h),
                 "preset": {"type": "path_patch", "senders": ["a%d.head%d" % (l, h)],
                            "receivers": ["a%d.head%d.q" % (L - 1, hh) for hh in range(H)]}}
                for l in range(2) for h in range(H)]
    variants += [{"name": "activation f1", "preset": {"type": "activation_patch", "node": "f1.head"}},
                 {"name": "rules", "branch": [{"match": "**/a1", "split": True}],
                  "which": [{"match": "**/a1/**", "input": 1}]},
                 {"name": "plain"}, {}]
    base = {"inputs": inputs, "metric": metric, "outputs": {"top_k": 3}}
    compare("path-patching sweep of %d variants" % len(variants), base, variants)

    # 2. The union is exactly what `npp plan` counts for the jobs one by one.
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, w in enumerate(variants):
            paths.append(os.path.join(d, "%d.json" % i))
            json.dump(alone(base, w), open(paths[-1], "w"))
        union = json.loads(npp("plan", "--model", A.model, *paths).splitlines()[-1])
        sweep = run(dict(base, sweep=variants))
        check("values planned = union of the jobs' plans (npp plan)",
              sweep["stats"]["values_planned"] == union["union_values"] < union["sum_values"],
              "%d planned; union %d, sum %d" % (sweep["stats"]["values_planned"],
                                                union["union_values"], union["sum_values"]))
        with open(os.path.join(d, "sweep.json"), "w") as f:
            json.dump(dict(base, sweep=variants), f)
        planned = json.loads(npp("plan", "--model", A.model, f.name).splitlines()[0])
        check("npp plan of the sweep job counts the same union", planned["values"] ==
              union["union_values"], "%d values, %d path nodes" % (planned["values"],
                                                                  planned["path_nodes"]))
        # 3. Each variant's path tree is the one its job alone draws.
        with open(os.path.join(d, "sweep.json"), "w") as f:
            json.dump(dict(base, sweep=variants[:3]), f)
        npp("run", "--model", A.model, f.name, "--svg", os.path.join(d, "s.svg"))
        same = True
        for i in range(3):
            npp("run", "--model", A.model, paths[i], "--svg", os.path.join(d, "alone.svg"))
            same &= open(os.path.join(d, "s-%d.svg" % i)).read() == \
                open(os.path.join(d, "alone.svg")).read()
        check("--svg writes each variant's path tree, as its job draws it", same)

    # 4. KL (against input 0's plain run), logits, baselines and the
    # attention of the plain runs, with a single example.
    base = {"inputs": ["The capital of Spain is Madrid, and of Italy", "The capital of France is Paris, and of Spain"],
            "metric": {"type": "kl"},
            "outputs": {"top_k": 2, "logits": True, "baselines": True, "attention": [0]}}
    variants = [{"name": "a0.head", "preset": {"type": "activation_patch", "node": "a0.head"}},
                {"name": "a%d.head1.v" % (L - 1),
                 "preset": {"type": "path_patch", "senders": ["a0.head0"],
                            "receivers": ["a%d.head1.v" % (L - 1)]}}]
    sweep = compare("KL sweep with logits and baselines", base, variants, baselines=True)
    check("attention of the plain runs at the top of a sweep",
          [a["layer"] for a in sweep.get("attention", [])] == [0, 0])

    sys.exit(harness.summary())


if __name__ == "__main__":
    main()
