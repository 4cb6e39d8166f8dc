"""GPT-2 written edge by edge, independently of npp, for circuits.

Senders: emb, a{i}.head{h} (z_h W_O[h], the c_proj bias excluded) and
f{i}.head (the MLP's output). Receivers: a{i}.head{h}.q|k|v, f{i}.head and
ln_final. Every receiver's input is the sum of its upstream senders'
outputs plus the attention c_proj biases upstream of it (constants: they
are no sender's). A circuit run takes, for each edge (u, v), u's output of
this run when (u, v) is in the circuit and u's output on the corrupted
input's plain run otherwise.

    senders, receivers, edges = edge_list(cfg)
    plain = run(cfg, W, ids)                        # every sender's output
    h = run(cfg, W, ids, circuit=set(E), other=run(cfg, W, ids_corrupt))["hidden"]
"""
import os
import random

import torch

import gpt2_ref


def stream_index(name, L):
    """Position in the residual stream: emb 0, layer i's attention 2i+1,
    its MLP 2i+2, ln_final 2L+1."""
    if name == "emb":
        return 0
    if name == "ln_final":
        return 2 * L + 1
    layer = int(name[1:].split(".")[0])
    return 2 * layer + (1 if name[0] == "a" else 2)


def edge_list(cfg):
    L, H = cfg["n_layer"], cfg["n_head"]
    senders = ["emb"]
    receivers = []
    for i in range(L):
        senders += ["a%d.head%d" % (i, h) for h in range(H)] + ["f%d.head" % i]
        receivers += ["a%d.head%d.%s" % (i, h, c) for h in range(H) for c in "qkv"]
        receivers.append("f%d.head" % i)
    receivers.append("ln_final")
    edges = [(u, v) for v in receivers for u in senders
             if stream_index(u, L) < stream_index(v, L)]
    return senders, receivers, edges


def embed(W, ids):
    return W["wte.weight"][ids] + W["wpe.weight"][:ids.shape[1]].unsqueeze(0)


def run(cfg, W, ids, circuit=None, other=None, emb=None, taps=None):
    """Sender outputs (name -> (B, T, C)) and final hidden states ("_hidden")
    of a run on ids (B, T). With circuit (a set of edges) and other (another
    run's dict), edges outside the circuit carry other's sender outputs.
    emb replaces the input embedding; taps (a dict) gets every receiver's
    own input, its gradient retained (for autograd)."""
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    D = C // H
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    B, T = ids.shape
    out = {"emb": embed(W, ids) if emb is None else emb}

    def recv(v):
        x = 0
        for i in range(L):  # the c_proj biases upstream of v
            if 2 * i + 1 < stream_index(v, L):
                x = x + W["h.%d.attn.c_proj.bias" % i]
        for u in list(out):
            if stream_index(u, L) < stream_index(v, L) and u in out and not u.startswith("_"):
                inside = circuit is None or (u, v) in circuit
                x = x + (out[u] if inside else other[u])
        if taps is not None:
            x.retain_grad()
            taps[v] = x
        return x

    for i in range(L):
        p = "h.%d." % i
        Wa, ba = W[p + "attn.c_attn.weight"], W[p + "attn.c_attn.bias"]
        Wo = W[p + "attn.c_proj.weight"]
        new = {}
        for h in range(H):
            qkv = []
            for c in range(3):
                x = gpt2_ref.layer_norm(recv("a%d.head%d.%s" % (i, h, "qkv"[c])),
                                        W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
                cols = slice(c * C + h * D, c * C + (h + 1) * D)
                qkv.append(x @ Wa[:, cols] + ba[cols])
            q, k, v = qkv
            scale = D ** 0.5 if cfg.get("scale_attn_weights", True) else 1.0
            if cfg.get("scale_attn_by_inverse_layer_idx", False):
                scale *= i + 1
            s = (q @ k.transpose(-1, -2)) / scale
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
            z = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1) @ v
            new["a%d.head%d" % (i, h)] = z @ Wo[h * D:(h + 1) * D]
        out.update(new)  # layer i's heads feed its MLP, not each other
        out["f%d.head" % i] = gpt2_ref.mlp(cfg, W, i, recv("f%d.head" % i))
    out["_hidden"] = gpt2_ref.layer_norm(recv("ln_final"), W["ln_f.weight"], W["ln_f.bias"], eps)
    return out


def setup(model, B=2, T=6):
    """What the circuit and attribution checks start from: (cfg, W, name,
    edges, rng, clean, corrupt) for a model folder: a batch of B x T
    token ids and a corrupted copy (positions 1 and 3 changed)."""
    cfg, W = gpt2_ref.load(model)
    name = os.path.basename(model.rstrip("/"))
    edges = edge_list(cfg)[2]
    rng = random.Random(len(edges))
    clean = [[rng.randrange(100, 1000) for _ in range(T)] for _ in range(B)]
    corrupt = [row[:] for row in clean]
    for row in corrupt:
        row[1], row[3] = row[3] + 7, row[1] + 11
    return cfg, W, name, edges, rng, clean, corrupt
