#!/usr/bin/python3
"""Estimated peak memory and result size of job shapes against what
`npp run --memory-report` measures: the peak RSS while the job runs (the
kernel's high-water mark, reset after the model is loaded) minus the RSS
before it, with no cache (--cache-mb 0), so the job's own memory is what
is measured; the result size is the bytes it prints (compact JSON, as
nppd stores it).

    measure.py --npp BUILD/npp --model DIR [--only NAME] [--json OUT]

Prints one row per shape: estimate, measured, ratio (estimate / measured;
the goal is 1 <= ratio <= 2), and the estimated and actual result size."""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def shapes(L, H):
    """(name, job) pairs: batch, tokens, sweep size and outputs vary."""
    ids = lambda B, T, seed=0: [[(97 * b + 31 * t + seed) % 50000 + 10 for t in range(T)]
                                for b in range(B)]
    two = lambda B, T: [ids(B, T), ids(B, T, 7)]
    heads = ["a%d.head%d" % (l, h) for l in range(L) for h in range(H)]
    return [
        ("plain B=1 T=1024, top-5", {"inputs": [ids(1, 1024)], "outputs": {"top_k": 5}}),
        ("plain B=64 T=256, top-5 (chunked)", {"inputs": [ids(64, 256)], "outputs": {"top_k": 5}}),
        ("plain B=4 T=256, logits at 64 positions",
         {"inputs": [ids(4, 256)], "outputs": {"top_k": 0, "logits": True,
                                                "positions": list(range(0, 256, 4))}}),
        ("plain B=16 T=256, hidden states",
         {"inputs": [ids(16, 256)], "outputs": {"top_k": 0, "hidden_states": True}}),
        ("2 inputs B=4 T=512, attention of 2 layers",
         {"inputs": two(4, 512), "outputs": {"top_k": 1, "attention": [0, 1]}}),
        ("activation patch a1.head, B=8 T=256, baselines, logit diff",
         {"inputs": two(8, 256), "preset": {"type": "activation_patch", "node": "a1.head"},
          "metric": {"type": "logit_diff", "target": 11, "baseline": 12},
          "outputs": {"top_k": 3, "baselines": True}}),
        ("KL, B=8 T=256, path patch a0.head0 -> ln_final",
         {"inputs": two(8, 256), "metric": {"type": "kl"},
          "preset": {"type": "path_patch", "senders": ["a0.head0"], "receivers": ["ln_final"]},
          "outputs": {"top_k": 2}}),
        ("sweep of %d heads -> logits, B=2 T=128" % len(heads),
         {"inputs": two(2, 128), "metric": {"type": "logit_diff", "target": 11, "baseline": 12},
          "outputs": {"top_k": 1},
          "sweep": [{"name": s, "preset": {"type": "path_patch", "senders": [s],
                                           "receivers": ["ln_final"]}} for s in heads]}),
        ("full split a/f + heads + q/k/v, B=8 T=128, trace",
         {"inputs": two(8, 128), "outputs": {"top_k": 2, "trace": True},
          "branch": [{"match": "**/{a,f}[0-9]", "split": True},  # 6 layers: one digit
                     {"match": "**/a[0-9].head", "split": "heads"},
                     {"match": "**/a[0-9].head[0-9]*", "split": True}],
          "which": [{"match": "**/a1.head2.k/**", "input": 1}]}),
        ("positions split f0.head, B=4 T=64, logits at all positions",
         {"inputs": two(4, 64), "outputs": {"top_k": 0, "logits": True, "positions": "all"},
          "branch": [{"match": "**/f0", "split": True}, {"match": "**/f0.head", "split": "positions"}],
          "which": [{"match": "**/f0.head.pos{3,9}/**", "input": 1}]}),
    ]


def measure(npp, model, job):
    """(peak bytes over the RSS before the job, the estimate, stdout bytes)
    of `npp run --cache-mb 0 --memory-report` of job."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        with tempfile.TemporaryFile() as out:
            p = subprocess.run([npp, "run", "--cache-mb", "0", "--memory-report", "--compact",
                                "--model", model, f.name], stdout=out, stderr=subprocess.PIPE,
                               text=True)
            if p.returncode:
                raise RuntimeError(p.stderr)
            size = out.seek(0, 2)
        rep = json.loads(p.stderr.strip().splitlines()[-1])["memory"]
        return rep["rss_peak_bytes"] - rep["rss_before_bytes"], rep, size
    finally:
        os.unlink(f.name)


def estimate(npp, model, job):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        p = subprocess.run([npp, "plan", "--model", model, f.name], capture_output=True,
                           text=True)
        if p.returncode:
            raise RuntimeError(p.stderr)
        return json.loads(p.stdout.splitlines()[0])["estimate"]
    finally:
        os.unlink(f.name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--only")
    ap.add_argument("--json")
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    print("model %s: %d layers, %d heads, %d wide" %
          (a.model, cfg["n_layer"], cfg["n_head"], cfg["n_embd"]))
    print("| job | estimate (MiB) | measured (MiB) | ratio | result est. / actual (MiB) | driver |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows, ok = [], True
    for name, job in shapes(cfg["n_layer"], cfg["n_head"]):
        if a.only and a.only not in name:
            continue
        est = estimate(a.npp, a.model, job)
        meas, _, size = measure(a.npp, a.model, job)
        ratio = est["peak_bytes"] / meas if meas > 0 else float("inf")
        good = 1.0 <= ratio <= 2.0 and est["result_bytes"] >= size
        ok &= good
        rows.append({"job": name, "estimate": est, "measured_bytes": meas, "result_bytes": size})
        print("| %s | %.1f | %.1f | %.2f%s | %.2f / %.2f | %s |" %
              (name, est["peak_bytes"] / 2**20, meas / 2**20, ratio, "" if good else " (!)",
               est["result_bytes"] / 2**20, size / 2**20, est["peak_field"]), flush=True)
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
