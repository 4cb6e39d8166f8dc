#!/usr/bin/python3
"""The executor's bounds: chunked execution gives what unchunked execution
gives, and the memory estimate (what nppd admits a job by) is an upper
bound on what the job holds.

    check_bounds.py --npp BUILD/npp --model DIR   (a model of 128+ positions)

1. With --chunk-mb 1 every attention and MLP call is cut into chunks (a
   value too big for one chunk is split along the batch); the hidden states
   equal the unchunked run's within 1e-5 (another batch shape may round
   differently in the last bits) and the top-k tokens are the same. The
   same for a sweep of head patches (each an `attn_delta`: the patched
   heads' change added to the plain attention): at 1 MB, the memo (one
   chunk's budget) cannot keep an attention call's projections for the
   heads (2.4 MB a source here), so every patched head projects its own
   sources (checked by hand: 14 such projections instead of 2). And for
   a sweep on inputs that share their first 48 positions, whose rows there
   a group computes in its first chunk and keeps for the rest: at the
   default budget and at 12 MB it equals a 1 MB run, which computes every
   row per value.
2. For a few job shapes (attribution's gradients among them), `npp run
   --memory-report` measures the peak RSS
   during the job over the RSS before it; the estimate must be at least
   that, and not absurdly more (at most 3x).
3. `npp plan --seconds` gives each job's compute time at the rate of a
   small timed run: its GFLOP over that rate, a small job's below a big
   one's, and the field behind most of it; `npp run` stops a job at its
   limits.max_seconds."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, run, tensor  # noqa: E402


def ids(B, T, seed=0):
    return [[(97 * b + 31 * t + seed) % 50000 + 10 for t in range(T)] for b in range(B)]


def memory(job):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        p = subprocess.run([harness.NPP, "run", "--cache-mb", "0", "--memory-report", "--compact",
                            "--model", harness.MODEL, f.name], capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(p.stderr)
        m = json.loads(p.stderr.strip().splitlines()[-1])["memory"]
        return m["rss_peak_bytes"] - m["rss_before_bytes"], m["estimate_peak_bytes"]
    finally:
        os.unlink(f.name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    harness.setup(a.npp, a.model)

    job = {"inputs": [ids(6, 128), ids(6, 128, 5)],
           "preset": {"type": "path_patch", "senders": ["a0.head1"], "receivers": ["a1.head2.k"]},
           "outputs": {"hidden_states": True, "top_k": 3, "baselines": True}}
    whole = run(job)
    cut = run(job, "--chunk-mb", "1")
    check("--chunk-mb 1 cuts the calls into more chunks",
          cut["stats"]["batches"] > 2 * whole["stats"]["batches"],
          "%d calls, %d unchunked" % (cut["stats"]["batches"], whole["stats"]["batches"]))
    a_, b_ = tensor(cut["outputs"]["hidden_states"]), tensor(whole["outputs"]["hidden_states"])
    err = float(np.max(np.abs(a_ - b_)))
    check("chunked hidden states = unchunked within 1e-5", err <= 1e-5 and
          float(np.max(np.abs(b_))) > 0.1, "max abs diff %.3g" % err)
    check("chunked top-k tokens = unchunked",
          [[t["id"] for p in e for t in p["tokens"]] for e in cut["outputs"]["top_k"]] ==
          [[t["id"] for p in e for t in p["tokens"]] for e in whole["outputs"]["top_k"]])

    sweep = {"inputs": [ids(6, 128), ids(6, 128, 5)], "metric": {"type": "logit_diff", "target": 5,
                                                                 "baseline": 6},
             "outputs": {"top_k": 0, "baselines": True},
             "sweep": [{"name": "%s -> %s" % (u, v), "preset": {"type": "path_patch", "senders": [u],
                                                                "receivers": [v]}}
                       for u, v in [("a0.head0", "ln_final"), ("a0.head1", "a1.head2.v"),
                                    ("a0.head3", "a1.head0.q"), ("a1.head1", "ln_final")]]}
    whole, cut = run(sweep), run(sweep, "--chunk-mb", "1")
    check("--chunk-mb 1 cuts the sweep's calls into more chunks",
          cut["stats"]["batches"] > 2 * whole["stats"]["batches"],
          "%d calls, %d unchunked" % (cut["stats"]["batches"], whole["stats"]["batches"]))
    mw = np.array([v["metric"]["per_example"] for v in whole["sweep"]])
    mc = np.array([v["metric"]["per_example"] for v in cut["sweep"]])
    plain = np.array(whole["baselines"][0]["metric"]["per_example"])  # the clean run
    err = float(np.max(np.abs(mc - mw)))
    check("chunked head-patch sweep = unchunked within 1e-5, every patch moving the metric",
          err <= 1e-5 and float(np.min(np.max(np.abs(mw - plain), axis=1))) > 1e-4,
          "max abs diff %.3g, smallest effect %.3g" % (err, float(np.min(np.max(np.abs(mw - plain), axis=1)))))

    # path patches on inputs that agree on their first 48 positions: an
    # attention or MLP call on two or more values computes those rows once,
    # and a group cut into several such chunks computes them in its first
    # (here at the default budget: attention groups in layers 2 and 3; at
    # 12 MB: MLP groups in layers 1 and 2); at 1 MB every call has one
    # value and computes every row itself
    shared = 48
    sweep["inputs"][1] = [a[:shared] + b[shared:] for a, b in zip(sweep["inputs"][0], ids(6, 128, 5))]
    sweep["sweep"] += [{"name": "%s -> %s" % (u, v), "preset": {"type": "path_patch", "senders": [u],
                                                                "receivers": [v]}}
                       for u, v in [("a0.head2", "a2.head1.k"), ("f0.head", "a1.head5.q"),
                                    ("a0.head4", "f1.head"), ("emb", "a2.head3.v")]]
    runs = [run(sweep), run(sweep, "--chunk-mb", "12"), run(sweep, "--chunk-mb", "1")]
    check("shared prefix: stats.shared_positions 48 at the default budget and 12 MB, 0 at 1 MB",
          [r["stats"]["shared_positions"] for r in runs] == [shared, shared, 0],
          str([r["stats"]["shared_positions"] for r in runs]))
    m = [np.array([v["metric"]["per_example"] for v in r["sweep"]]) for r in runs]
    plain = np.array(runs[0]["baselines"][0]["metric"]["per_example"])
    err = max(float(np.max(np.abs(x - m[2]))) for x in m[:2])
    check("shared prefix: the sweep at each budget = every row per value within 1e-5, every patch "
          "moving the metric", err <= 1e-5 and float(np.min(np.max(np.abs(m[2] - plain), axis=1))) > 1e-4,
          "max abs diff %.3g, smallest effect %.3g" % (err, float(np.min(np.max(np.abs(m[2] - plain), axis=1)))))

    shapes = [
        ("batch 32 x 128 tokens", {"inputs": [ids(32, 128)], "outputs": {"top_k": 5}}),
        ("logits at all 128 positions, batch 2",
         {"inputs": [ids(2, 128)], "outputs": {"top_k": 0, "logits": True, "positions": "all"}}),
        ("attention of 2 layers, 2 inputs, batch 4",
         {"inputs": [ids(4, 128), ids(4, 128, 3)], "outputs": {"top_k": 1, "attention": [0, 1]}}),
        ("EAP attribution, batch 4 x 128, log-prob (the autograd tape)",
         {"inputs": [ids(4, 128), ids(4, 128, 3)], "outputs": {"top_k": 0},
          "metric": {"type": "logprob", "token": 5}, "attribution": {"method": "eap"}}),
        ("sweep of 32 head patches, batch 2, top-5 (16 variants' logits in one product)",
         {"inputs": [ids(2, 128), ids(2, 128, 3)], "outputs": {"top_k": 5, "baselines": True},
          "sweep": [{"preset": {"type": "path_patch", "senders": ["a%d.head%d" % (l, h)],
                                "receivers": ["ln_final"]}} for l in range(4) for h in range(8)]}),
        ("EAP-IG attribution, 3 steps, batch 2 x 128",
         {"inputs": [ids(2, 128), ids(2, 128, 3)], "outputs": {"top_k": 0},
          "metric": {"type": "logit_diff", "target": 5, "baseline": 6},
          "attribution": {"method": "eap-ig", "steps": 3}}),
        ("sweep of 8 path patches on inputs sharing 48 of 128 positions, batch 6", sweep),
    ]
    for name, j in shapes:
        used, est = memory(j)
        check("estimate >= measured peak, <= 3x: " + name, used <= est <= 3 * max(used, 1 << 20),
              "estimate %.1f MiB, measured %.1f MiB" % (est / 2**20, used / 2**20))
    discover_second_job()
    plan_seconds(shapes)
    try:
        run({"inputs": [ids(64, 256)], "outputs": {"top_k": 1}, "limits": {"max_seconds": 0.05}})
        stopped = "it ran to the end"
    except RuntimeError as e:
        stopped = str(e)
    check("npp run stops a job at its limits.max_seconds (64 x 256 tokens, 0.05 s)",
          "limits.max_seconds: the job ran for longer than its limit of 0.05 s" in stopped, stopped[-200:])
    sys.exit(harness.summary())


def plan_seconds(shapes):
    """npp plan --seconds: the time nppd would estimate (the plan's work at
    the rate of a small timed run, and 20 ns a byte of its result's text),
    consistent with the GFLOP and result bytes it prints, and growing with
    the job."""
    files = []
    for i, (_, j) in enumerate(shapes[:2] + [("small", {"inputs": [ids(1, 16)]})]):
        with tempfile.NamedTemporaryFile("w", suffix="-%d.json" % i, delete=False) as f:
            json.dump(j, f)
        files.append(f.name)
    try:
        out = harness.npp("plan", "--seconds", "--threads", "1", "--model", harness.MODEL, *files)
        est = [json.loads(line)["estimate"] for line in out.splitlines()[:3]]
        check("npp plan --seconds: seconds = gflop / gflop_per_s + 2e-8 x result_bytes, the big "
              "jobs longer than a small one",
              all(e["gflop_per_s"] > 0 and abs(e["text_seconds"] - 2e-8 * e["result_bytes"]) <=
                  1e-5 * e["text_seconds"] and
                  abs((e["seconds"] - e["text_seconds"]) * e["gflop_per_s"] - e["gflop"]) <=
                  1e-3 * e["gflop"] + 1e-3 for e in est) and
              est[2]["seconds"] < min(est[0]["seconds"], est[1]["seconds"]) and
              [e["gflop_field"] for e in est] == ["inputs", "outputs.positions", "outputs.positions"],
              json.dumps(est))
    finally:
        for f in files:
            os.unlink(f)


def discover_second_job():
    """A discover job's circuits are planned after its attribution, which
    ranks the edges; its estimate must already hold them (a stand-in plan),
    or it fails after computing the attribution. 12 layers of 12 heads
    (32,491 edges), circuits of all of them and of half: the ranked second
    job needed 42 MiB where plain runs and edge lists estimated 25."""
    tmp = tempfile.mkdtemp()
    harness.npp("make-model", "--out", tmp, "--layers", "12", "--heads", "12", "--embd", "96",
                "--positions", "64", "--seed", "3")
    model, harness.MODEL = harness.MODEL, tmp
    try:
        job = {"inputs": [ids(2, 32), ids(2, 32, 7)], "outputs": {"top_k": 0},
               "metric": {"type": "logit_diff", "target": 5, "baseline": 6},
               "discover": {"method": "eap", "top_n": [32491, 16384]}}
        used, est = memory(job)
        check("discover: the circuits fit the estimate made before the attribution",
              used <= est, "estimate %.1f MiB, measured %.1f MiB" % (est / 2**20, used / 2**20))
    except RuntimeError as e:
        check("discover: the circuits fit the estimate made before the attribution", False,
              str(e)[-300:])
    finally:
        harness.MODEL = model


if __name__ == "__main__":
    main()
