#!/usr/bin/python3
"""Independent GPT-2 reference: reads a HuggingFace GPT-2 folder (its own
safetensors parser, no code shared with the C side) and runs the forward
pass with PyTorch. Run with Debian's /usr/bin/python3 (python3-torch).

    gpt2_ref.py --model DIR --ids 1,2,3 [--logits-out FILE.npy]
                [--dtype float64|float32] [--threads N] [--repeat N]

Also importable: load(dir) -> (cfg, weights); forward(cfg, W, ids) where ids
is a (B, T) LongTensor; returns (hidden after ln_f, logits). `hooks` lets
tests replace intermediate values (see forward()).
"""
import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

import numpy as np
import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt = DTYPES[info["dtype"]]
        t = torch.frombuffer(bytearray(raw[base + b:base + e]), dtype=dt)
        out[name] = t.reshape(info["shape"])
    return out


def load(model_dir, dtype=torch.float64):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg.setdefault("n_inner", None)
    raw = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    W = {}
    for name, t in raw.items():
        if name.startswith("transformer."):
            name = name[len("transformer."):]
        if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
            continue
        # f16/bf16 files are widened exactly as the C side does (to f32),
        # then to the reference's working precision.
        W[name] = t.to(torch.float32).to(dtype)
    if "lm_head.weight" not in W:
        W["lm_head.weight"] = W["wte.weight"]
    return cfg, W


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def attention(cfg, W, l, q_in, k_in, v_in, hooks=None):
    """Attention sublayer of block l. q_in/k_in/v_in: residual streams
    (B, T, C) feeding the query, key and value (equal in a plain run).
    Returns (output (B, T, C), per-head z (B, H, T, D), probs (B, H, T, T))."""
    C, H = cfg["n_embd"], cfg["n_head"]
    D = C // H
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    p = "h.%d." % l
    Wa, ba = W[p + "attn.c_attn.weight"], W[p + "attn.c_attn.bias"]

    def proj(x, i):  # (B, T, C) -> (B, H, T, D)
        h = layer_norm(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
        y = h @ Wa[:, i * C:(i + 1) * C] + ba[i * C:(i + 1) * C]
        B, T, _ = y.shape
        return y.reshape(B, T, H, D).transpose(1, 2)

    q, k, v = proj(q_in, 0), proj(k_in, 1), proj(v_in, 2)
    if hooks and "qkv" in hooks:
        q, k, v = hooks["qkv"](l, q, k, v)
    T = q.shape[2]
    scale = math.sqrt(D) if cfg.get("scale_attn_weights", True) else 1.0
    if cfg.get("scale_attn_by_inverse_layer_idx", False):
        scale *= l + 1
    s = (q @ k.transpose(-1, -2)) / scale
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    probs = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)
    z = probs @ v  # (B, H, T, D)
    if hooks and "z" in hooks:
        z = hooks["z"](l, z)
    B = z.shape[0]
    merged = z.transpose(1, 2).reshape(B, T, C)
    out = merged @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
    return out, z, probs


def mlp(cfg, W, l, x):
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    p = "h.%d." % l
    h = layer_norm(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
    act = cfg.get("activation_function", "gelu_new")
    u = h @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"]
    g = gelu_new(u) if act in ("gelu_new", "gelu_pytorch_tanh") else torch.nn.functional.gelu(u)
    return g @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]


def forward(cfg, W, ids, hooks=None):
    """ids: (B, T) LongTensor. hooks: optional dict of callables
    "attn_out"(l, out) and "mlp_out"(l, out) returning replacements,
    "qkv" and "z" (see attention). Returns (hidden (B,T,C), logits (B,T,V))."""
    B, T = ids.shape
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    x = W["wte.weight"][ids] + W["wpe.weight"][:T].unsqueeze(0)
    for l in range(cfg["n_layer"]):
        a, _, _ = attention(cfg, W, l, x, x, x, hooks)
        if hooks and "attn_out" in hooks:
            a = hooks["attn_out"](l, a)
        x = x + a
        m = mlp(cfg, W, l, x)
        if hooks and "mlp_out" in hooks:
            m = hooks["mlp_out"](l, m)
        x = x + m
    h = layer_norm(x, W["ln_f.weight"], W["ln_f.bias"], eps)
    return h, h @ W["lm_head.weight"].T


def write_npy(path, arr):
    np.save(path, np.ascontiguousarray(arr, dtype=np.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--logits-out")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=0,
                    help="time N forward passes and print the median ms to stderr")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    cfg, W = load(a.model, dtype)
    ids = torch.tensor([[int(x) for x in a.ids.split(",")]], dtype=torch.long)
    with torch.inference_mode():
        _, logits = forward(cfg, W, ids)
        if a.repeat:
            times = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                forward(cfg, W, ids)
                times.append((time.perf_counter() - t0) * 1e3)
            times.sort()
            print("reference forward: %d tokens, %d threads, median %.3f ms over %d runs (min %.3f)"
                  % (ids.shape[1], torch.get_num_threads(), statistics.median(times), a.repeat,
                     times[0]), file=sys.stderr)
    if a.logits_out:
        write_npy(a.logits_out, logits[0].numpy())
    top = torch.topk(logits[0, -1], 5)
    print(json.dumps({"top_ids": top.indices.tolist()}))


if __name__ == "__main__":
    main()
