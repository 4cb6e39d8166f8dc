#!/usr/bin/python3
"""bench/sweep/limit.py: the 144-head path-patching sweep to ln_final
(each head a{l}.head{h} from input 1, every other path from input 0,
metric: logit difference at the last position) against its analytic
limit, in-process and warm, one thread by default.

  engine  `npp run` of the sweep job (one job, 144 variants), --repeat R
          with no cache (--cache-mb 0), so every run computes everything;
          the time is the last run's exec_ms (warm), the smaller of two
          processes';
  limit   PyTorch: the clean and corrupted inputs' forward pass once (one
          batch of 2), keeping each head's z; then each head's direct
          effect is a residual difference, (z_h(corrupt) - z_h(clean)) W_O[h],
          added to the clean run's final residual at the metric position,
          ln_f and the two logits' columns. Nothing can do less. The time
          is the smallest of R runs.

Prints both, their ratio (the goal: at most 1.5), the engine's own time
for the two plain forward passes (a job of input 0 with input 1's
baseline) and the sweep's ratio to it, and the largest
difference between the two sets of 144 metrics (must be under 1e-3 of the
largest |metric|).
    limit.py NPP MODEL_DIR [TOKENS] [THREADS] [REPEATS]
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../tests/reference"))
import gpt2_ref  # noqa: E402

npp, model = sys.argv[1], sys.argv[2]
T = int(sys.argv[3]) if len(sys.argv) > 3 else 32
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
R = int(sys.argv[5]) if len(sys.argv) > 5 else 7
inputs = [list(range(1000, 1000 + T)), list(range(2000, 2000 + T))]
TARGET, BASELINE = 1100, 1200
torch.set_num_threads(threads)
cfg, W = gpt2_ref.load(model, torch.float32)
L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
D, eps = C // H, cfg.get("layer_norm_epsilon", 1e-5)
scale = math.sqrt(D) if cfg.get("scale_attn_weights", True) else 1.0
heads = ["a%d.head%d" % (l, h) for l in range(L) for h in range(H)]


def limit():
    """The 144 metrics, as the analytic limit computes them."""
    ids = torch.tensor(inputs)
    x = W["wte.weight"][ids] + W["wpe.weight"][:T].unsqueeze(0)  # (2, T, C)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    zs = []
    for l in range(L):
        p = "h.%d." % l
        h = F.layer_norm(x, (C,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
        qkv = torch.addmm(W[p + "attn.c_attn.bias"], h.reshape(-1, C), W[p + "attn.c_attn.weight"])
        q, k, v = qkv.reshape(2, T, 3, H, D).permute(2, 0, 3, 1, 4)  # (2, H, T, D) each
        s = (q @ k.transpose(-1, -2)).div_(scale).masked_fill_(mask, -math.inf)
        z = torch.softmax(s, dim=-1) @ v  # (2, H, T, D)
        zs.append(z[:, :, -1])  # the metric position's z: (2, H, D)
        a = torch.addmm(W[p + "attn.c_proj.bias"], z.transpose(1, 2).reshape(-1, C), W[p + "attn.c_proj.weight"])
        x = x + a.reshape(2, T, C)
        h = F.layer_norm(x, (C,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
        u = F.gelu(torch.addmm(W[p + "mlp.c_fc.bias"], h.reshape(-1, C), W[p + "mlp.c_fc.weight"]), approximate="tanh")
        x = x + torch.addmm(W[p + "mlp.c_proj.bias"], u, W[p + "mlp.c_proj.weight"]).reshape(2, T, C)
    # each head's direct effect at the last position: (L*H, C)
    dz = torch.stack([z[1] - z[0] for z in zs])  # (L, H, D)
    wo = torch.stack([W["h.%d.attn.c_proj.weight" % l].reshape(H, D, C) for l in range(L)])  # (L, H, D, C)
    delta = torch.einsum("lhd,lhdc->lhc", dz, wo).reshape(L * H, C)
    final = x[0, -1] + delta  # (L*H, C)
    hf = F.layer_norm(final, (C,), W["ln_f.weight"], W["ln_f.bias"], eps)
    cols = W["lm_head.weight"][[TARGET, BASELINE]]  # (2, C)
    lg = hf @ cols.T
    return (lg[:, 0] - lg[:, 1]).tolist()


with torch.inference_mode():
    limit()  # warm
    best = math.inf
    for _ in range(R):
        t0 = time.perf_counter()
        want = limit()
        best = min(best, time.perf_counter() - t0)

job = {"inputs": inputs, "metric": {"type": "logit_diff", "target": TARGET, "baseline": BASELINE},
       "sweep": [{"name": s, "preset": {"type": "path_patch", "senders": [s], "receivers": ["ln_final"]}}
                 for s in heads]}


def npp_run(doc):
    """The job's execution time (the last of R runs, warm; the smaller of
    two processes) and its result."""
    best, r = math.inf, None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "job.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        for _ in range(2):
            out = subprocess.run([npp, "run", "--model", model, path, "--threads", str(threads),
                                  "--max-values", "200000", "--cache-mb", "0", "--repeat", str(R),
                                  "--compact"], check=True, capture_output=True, text=True)
            r = json.loads(out.stdout)
            best = min(best, r["stats"]["exec_ms"] / 1000)
    return best, r


engine, r = npp_run(job)
# the engine's own two forward passes (the job's plain run and input 1's baseline)
forwards, _ = npp_run({"inputs": inputs, "metric": job["metric"], "outputs": {"baselines": True}})
got = [v["metric"]["mean"] for v in r["sweep"]]
diff = max(abs(a - b) for a, b in zip(got, want))
scale = max(abs(x) for x in want)
print("bench/sweep/limit: 144 heads -> ln_final, 2 inputs x %d tokens, %d thread(s)" % (T, threads))
print("engine %.3f s (the sweep job's execution, %d values)" % (engine, r["stats"]["values_computed"]))
print("limit  %.3f s (2 forward passes, then 144 residual differences)" % best)
print("ratio  %.2fx the limit (goal: at most 1.5x)" % (engine / best))
print("the engine's own 2 forward passes %.3f s: the sweep is %.2fx them" % (forwards, engine / forwards))
print("largest metric difference %.2e (of |metric| up to %.2f)" % (diff, scale))
sys.exit(0 if diff <= 1e-3 * max(1.0, scale) else 1)
