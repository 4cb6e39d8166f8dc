#!/usr/bin/python3
"""Finds the induction circuit of a model with this project's engine alone
(`npp run`), on held-out repeated sequences, and prints every number the
tutorial (docs/induction.md) and the model card quote.

    tools/induction_circuit.py --npp build/npp --model models/induction [--check]

1. plain predictions: top-1 accuracy (full vocabulary) on the first and the
   repeated occurrence of a random run of the model's training words;
2. attention patterns (engine output): previous-token score of each layer-0
   head, induction score of each layer-1 head;
3. activation patching of every head: clean = filler + run + run (last token
   dropped; the answer is the run's last word), corrupt = the same second
   half after a different first run; the share of the clean-minus-corrupt
   logit of the answer that patching the head (from corrupt into clean)
   removes;
4. path patching from the previous-token head to the induction head's key,
   query and value inputs (Wang et al.), same metric.

--check exits 1 unless the circuit is there: repeated-half accuracy >= 0.9
and first-half accuracy < 0.2; the key path removes over 70% of the logit
difference and the query and value paths under 20% each.
Standard library only; the engine does the compute."""
import argparse
import base64
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

THRESHOLDS = {"acc_second_min": 0.9, "acc_first_max": 0.2, "k_min": 0.7, "qv_max": 0.2}


def npp_run(npp, model, job):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        p = subprocess.run([npp, "run", "--model", model, f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if p.returncode:
        sys.exit("npp run failed: " + p.stderr)
    return json.loads(p.stdout)


def tensor(t):
    raw = base64.b64decode(t["data"])
    flat = struct.unpack("<%df" % (len(raw) // 4), raw)
    return flat, t["shape"]


def make_sets(tokens, seed, n, filler, run):
    """n held-out examples: (filler, R, R2) with R2 a different run."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        f = [rng.choice(tokens) for _ in range(filler)]
        r = rng.sample(tokens, run)
        r2 = rng.sample([t for t in tokens if t not in r], run)
        out.append((f, r, r2))
    return out


def accuracy(npp, model, ex, filler, run):
    seqs = [f + r + r for f, r, _ in ex]
    res = npp_run(npp, model, {"inputs": [seqs], "outputs": {"positions": "all", "top_k": 1,
                                                            "attention": [0, 1]}})
    first = second = n1 = n2 = 0
    for b, (f, r, _) in enumerate(ex):
        top = [p["tokens"][0]["id"] for p in res["outputs"]["top_k"][b]]
        for i in range(run - 1):  # predicting r[i+1] after r[i]
            first += top[filler + i] == r[i + 1]
            second += top[filler + run + i] == r[i + 1]
            n1 += 1
            n2 += 1
    return first / n1, second / n2, res["outputs"]["attention"]


def head_scores(attn, filler, run):
    """prev-token score per layer-0 head, induction score per layer-1 head."""
    scores = {}
    for a in attn:
        if "input" not in a:  # the patched run's: here the same plain run
            continue
        flat, (B, H, T, _) = tensor(a["probs"])
        at = lambda b, h, i, j: flat[((b * H + h) * T + i) * T + j]  # noqa: E731
        for h in range(H):
            if a["layer"] == 0:
                s = sum(at(b, h, t, t - 1) for b in range(B) for t in range(1, T)) / (B * (T - 1))
                scores["a0.head%d" % h] = ("previous-token", s)
            elif a["layer"] == 1:
                s = sum(at(b, h, filler + run + i, filler + i + 1) for b in range(B)
                        for i in range(run - 1)) / (B * (run - 1))
                scores["a1.head%d" % h] = ("induction", s)
    return scores


def patch_jobs(ex):
    clean = [f + r + r[:-1] for f, r, _ in ex]
    corrupt = [f + r2 + r[:-1] for f, r, r2 in ex]
    answers = [r[-1] for _, r, _ in ex]
    return clean, corrupt, answers


def fraction(npp, model, clean, corrupt, answers, preset):
    res = npp_run(npp, model, {"inputs": [clean, corrupt], "preset": preset,
                               "outputs": {"top_k": 0, "baselines": True},
                               "metric": {"type": "logit", "token": answers}})
    c = res["baselines"][0]["metric"]["mean"]
    k = res["baselines"][1]["metric"]["mean"]
    p = res["metric"]["mean"]
    return (c - p) / (c - k), c, k, p


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npp", default="build/npp")
    ap.add_argument("--model", default="models/induction")
    ap.add_argument("--seed", type=int, default=2026, help="held-out data seed (training used others)")
    ap.add_argument("--n", type=int, default=32, help="examples per batch")
    ap.add_argument("--filler", type=int, default=9)
    ap.add_argument("--run", type=int, default=13)
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--check", action="store_true", help="exit 1 unless the circuit is there")
    a = ap.parse_args()
    tokens = [t["id"] for t in json.load(open(os.path.join(a.model, "induction_tokens.json")))["tokens"]]
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    ex = make_sets(tokens, a.seed, a.n, a.filler, a.run)
    out = {"seed": a.seed, "examples": a.n, "filler": a.filler, "run": a.run}

    acc1, acc2, attn = accuracy(a.npp, a.model, ex, a.filler, a.run)
    out["acc_first"], out["acc_second"] = acc1, acc2
    print("held-out sequences: %d x (%d filler + %d-word run + the run again), seed %d"
          % (a.n, a.filler, a.run, a.seed))
    print("top-1 accuracy (full vocabulary): first occurrence %.3f, repeated occurrence %.3f\n"
          % (acc1, acc2))

    scores = head_scores(attn, a.filler, a.run)
    out["attention_scores"] = {k: v[1] for k, v in scores.items()}
    clean, corrupt, answers = patch_jobs(ex)
    print("| head | attention score | activation patching: share of the logit difference removed |")
    print("| --- | --- | --- |")
    shares = {}
    for layer in range(cfg["n_layer"]):
        for h in range(cfg["n_head"]):
            node = "a%d.head%d" % (layer, h)
            fr, c, k, _ = fraction(a.npp, a.model, clean, corrupt, answers,
                                   {"type": "activation_patch", "node": node, "from": 1, "into": 0})
            shares[node] = fr
            kind, s = scores.get(node, ("", float("nan")))
            print("| %s | %s %.3f | %.3f |" % (node, kind, s, fr))
    out["activation_patching"] = shares
    out["logit_clean"], out["logit_corrupt"] = c, k
    print("\nanswer's logit: clean %.3f, corrupt %.3f (difference %.3f)" % (c, k, c - k))

    prev = max((n for n in scores if n.startswith("a0.")), key=lambda n: scores[n][1])
    ind = max((n for n in scores if n.startswith("a1.")), key=lambda n: scores[n][1])
    out["previous_token_head"], out["induction_head"] = prev, ind
    print("\nprevious-token head %s, induction head %s; path patching %s -> %s:" % (prev, ind, prev, ind))
    paths = {}
    for comp in "kqv":
        fr, _, _, p = fraction(a.npp, a.model, clean, corrupt, answers,
                               {"type": "path_patch", "senders": [prev], "receivers": ["%s.%s" % (ind, comp)],
                                "from": 1, "into": 0})
        paths[comp] = fr
        print("  into the %s input (%s.%s): removes %.3f of the logit difference (patched logit %.3f)"
              % ({"k": "key", "q": "query", "v": "value"}[comp], ind, comp, fr, p))
    out["path_patching"] = paths
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)
    if a.check:
        t = THRESHOLDS
        ok = {"repeated-half accuracy >= %.2f" % t["acc_second_min"]: acc2 >= t["acc_second_min"],
              "first-half accuracy < %.2f" % t["acc_first_max"]: acc1 < t["acc_first_max"],
              "key path removes > %.2f" % t["k_min"]: paths["k"] > t["k_min"],
              "query path removes < %.2f" % t["qv_max"]: paths["q"] < t["qv_max"],
              "value path removes < %.2f" % t["qv_max"]: paths["v"] < t["qv_max"]}
        print()
        for name, good in ok.items():
            print("%s %s" % ("ok  " if good else "FAIL", name))
        print("%d passed, %d failed" % (sum(ok.values()), len(ok) - sum(ok.values())))
        return 0 if all(ok.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
