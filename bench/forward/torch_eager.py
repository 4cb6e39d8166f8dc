#!/usr/bin/python3
"""Baseline for bench/forward: GPT-2 in PyTorch eager mode, written the way
HuggingFace's GPT2Model computes it (F.layer_norm, addmm for Conv1D, tanh
GELU, matmul attention), float32, no autograd. Same libtorch and BLAS as
npp when run with Debian's /usr/bin/python3.

    torch_eager.py --model DIR --ids 1,2,3 --threads N --repeat R
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../tests/reference"))
import gpt2_ref  # noqa: E402  (only its safetensors reader and config loading)


def forward(cfg, W, ids):
    C, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    D, eps = C // H, cfg.get("layer_norm_epsilon", 1e-5)
    B, T = ids.shape
    x = F.embedding(ids, W["wte.weight"]) + W["wpe.weight"][:T]
    mask = torch.ones(T, T, dtype=torch.bool, device=ids.device).triu(1)
    for l in range(L):
        p = "h.%d." % l
        h = F.layer_norm(x, (C,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
        qkv = torch.addmm(W[p + "attn.c_attn.bias"], h.view(-1, C), W[p + "attn.c_attn.weight"])
        q, k, v = qkv.view(B, T, 3 * C).split(C, dim=2)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D)
        a = torch.matmul(s.masked_fill(mask, float("-inf")).softmax(-1), v)
        a = a.transpose(1, 2).reshape(B * T, C)
        x = x + torch.addmm(W[p + "attn.c_proj.bias"], a, W[p + "attn.c_proj.weight"]).view(B, T, C)
        h = F.layer_norm(x, (C,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
        u = torch.addmm(W[p + "mlp.c_fc.bias"], h.view(-1, C), W[p + "mlp.c_fc.weight"])
        u = F.gelu(u, approximate="tanh")
        x = x + torch.addmm(W[p + "mlp.c_proj.bias"], u, W[p + "mlp.c_proj.weight"]).view(B, T, C)
    h = F.layer_norm(x, (C,), W["ln_f.weight"], W["ln_f.bias"], eps)
    return torch.matmul(h.view(B * T, C), W["lm_head.weight"].t())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg, W = gpt2_ref.load(a.model, torch.float32)
    W = {k: v.to(a.device, getattr(torch, a.dtype)) for k, v in W.items()}
    ids = torch.tensor([[int(x) for x in a.ids.split(",")]], device=a.device)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        ref = forward(cfg, W, ids)  # warm-up, like npp's first pass
        sync()
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            forward(cfg, W, ids)
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    print("torch eager: %d tokens, %d threads, %s %s, median %.3f ms over %d runs (min %.3f)"
          % (ids.shape[1], torch.get_num_threads(), a.device, a.dtype, statistics.median(times),
             a.repeat, times[0]))
    _, top = ref[-1].max(0)
    print("torch eager: argmax at last position %d" % top.item())


if __name__ == "__main__":
    main()
