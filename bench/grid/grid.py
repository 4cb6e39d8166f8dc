#!/usr/bin/python3
"""bench/grid: a layer x head activation-patching grid, two ways, on the
same threads:

  npp    one job: "grid": {"node": "a{layer}.head{head}", "layer": "all",
         "head": "all", "preset": {"type": "activation_patch"}} with a
         normalized logit difference; its time is the job's plan_ms +
         exec_ms (the model is loaded before), the grid's extra work (the
         two plain runs the normalization needs) included;
  hooks  PyTorch, float32, no autograd: one forward pass of the corrupted
         input caching every head's z, the clean and corrupted plain runs,
         then one full forward pass per head with that head's z replaced
         (TransformerLens's get_act_patch_attn_head_out_all_pos does the
         same with run_with_hooks).

Each: clean and corrupted inputs, a batch of 2 prompts of TOKENS tokens.
Prints both times, their ratio, and the largest difference between the
two grids (they must agree within 1e-4).
    grid.py NPP MODEL_DIR [TOKENS] [THREADS]
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../tests/reference"))
import gpt2_ref  # noqa: E402  (its safetensors reader)

npp, model = sys.argv[1], sys.argv[2]
T = int(sys.argv[3]) if len(sys.argv) > 3 else 32
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
B = 2
clean = [[(37 * b + 11 * t) % 40000 + 1000 for t in range(T)] for b in range(B)]
corrupt = [row[:] for row in clean]
for row in corrupt:
    row[T // 2] = (row[T // 2] + 777) % 40000 + 1000
TARGET, BASELINE = 1100, 1200


def forward(cfg, W, ids, patch=None, keep=None):
    """Final hidden states at the last position (B, C). patch: (l, h, z)
    puts z (B, T, D) as head h's z in layer l; keep: a dict that gets every
    layer's z (B, H, T, D)."""
    C, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    D, eps = C // H, cfg.get("layer_norm_epsilon", 1e-5)
    x = F.embedding(ids, W["wte.weight"]) + W["wpe.weight"][:T]
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    for l in range(L):
        p = "h.%d." % l
        h = F.layer_norm(x, (C,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
        qkv = torch.addmm(W[p + "attn.c_attn.bias"], h.view(-1, C), W[p + "attn.c_attn.weight"])
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.view(B, T, 3 * C).split(C, 2))
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D)
        z = torch.matmul(s.masked_fill(mask, float("-inf")).softmax(-1), v)  # (B, H, T, D)
        if keep is not None:
            keep[l] = z
        if patch is not None and patch[0] == l:
            z = z.clone()
            z[:, patch[1]] = patch[2]
        a = z.transpose(1, 2).reshape(B * T, C)
        x = x + torch.addmm(W[p + "attn.c_proj.bias"], a, W[p + "attn.c_proj.weight"]).view(B, T, C)
        h = F.layer_norm(x, (C,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
        u = F.gelu(torch.addmm(W[p + "mlp.c_fc.bias"], h.view(-1, C), W[p + "mlp.c_fc.weight"]),
                   approximate="tanh")
        x = x + torch.addmm(W[p + "mlp.c_proj.bias"], u, W[p + "mlp.c_proj.weight"]).view(B, T, C)
    return F.layer_norm(x[:, -1], (C,), W["ln_f.weight"], W["ln_f.bias"], eps)


def logit_diff(W, h):
    cols = W["lm_head.weight"][[TARGET, BASELINE]]  # the two columns, as npp computes them
    lg = h @ cols.t()
    return float((lg[:, 0] - lg[:, 1]).mean())


def hooks(cfg, W):
    L, H = cfg["n_layer"], cfg["n_head"]
    with torch.inference_mode():
        t0 = time.perf_counter()
        cz = {}  # run_with_cache of the clean input: the patch sources
        m_clean = logit_diff(W, forward(cfg, W, torch.tensor(clean), keep=cz))
        m_corrupt = logit_diff(W, forward(cfg, W, torch.tensor(corrupt)))
        grid = np.zeros((L, H))
        ids = torch.tensor(corrupt)
        for l in range(L):
            for h in range(H):
                m = logit_diff(W, forward(cfg, W, ids, patch=(l, h, cz[l][:, h])))
                grid[l, h] = (m - m_corrupt) / (m_clean - m_corrupt)
        return time.perf_counter() - t0, grid


def main():
    torch.set_num_threads(threads)
    cfg, W = gpt2_ref.load(model, torch.float32)
    job = {"inputs": [corrupt, clean],
           "metric": {"type": "logit_diff", "target": TARGET, "baseline": BASELINE,
                      "normalize": True},
           "outputs": {"top_k": 0},
           "grid": {"node": "a{layer}.head{head}", "layer": "all", "head": "all",
                    "preset": {"type": "activation_patch", "from": 1, "into": 0}}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    runs = []
    for chunk in ("32", "16"):  # the default; one call's temporaries in a CPU's caches
        p = subprocess.run([npp, "run", "--model", model, "--threads", str(threads),
                            "--max-values", "1000000", "--chunk-mb", chunk, "--compact", f.name],
                           capture_output=True, text=True)
        if p.returncode:
            sys.exit("npp run failed: " + p.stderr)
        runs.append((chunk, json.loads(p.stdout)))
    os.unlink(f.name)
    t_hooks, g_hooks = hooks(cfg, W)
    print("grid %dx%d, clean and corrupted inputs of %d x %d tokens, %d thread(s)"
          % (cfg["n_layer"], cfg["n_head"], B, T, threads))
    print("hooks (146 forwards)             %8.2f s" % t_hooks)
    worst = 0.0
    for chunk, res in runs:
        t = (res["stats"]["plan_ms"] + res["stats"]["exec_ms"]) / 1e3
        g = np.array(res["grid"]["values"], dtype=float)
        worst = max(worst, float(np.max(np.abs(g - g_hooks) / np.maximum(1, np.abs(g_hooks)))))
        print("npp grid job, --chunk-mb %-3s     %8.2f s   ratio %.2f   (%d values, %d calls)"
              % (chunk, t, t / t_hooks, res["stats"]["values_computed"], res["stats"]["batches"]))
    print("max relative grid difference %.2g (must be <= 1e-4)" % worst)
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
