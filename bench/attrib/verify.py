#!/usr/bin/python3
"""bench/attrib/verify.py: the exact effect of the top K edges (EAP's, on
the GPT-2-small-shaped model, 8 prompt pairs of 16 tokens, logit
difference), each edge patched alone from the corrupted run:

  npp      one sweep job of K `path_patch` variants (sender -> receiver),
           what `discover`'s `verify` runs: the plans merged, each value
           computed once; --cache-mb 0 and the last of 2 runs (warm), so the
           plain runs are computed too. The time is its exec_ms, the median
           of 3 such processes (each ~20 s; a baseline runs for a minute or
           more, which evens out the machine's swings of ~10% in itself).
  hooks    PyTorch, lean edge patching with hooks: the clean and corrupted
           forward passes once for the senders' outputs, then per edge one
           full forward pass with (u(corrupt) - u(clean)) added to receiver
           v's own input (one head's query, key or value input: only that
           head's columns recomputed; an MLP's input; or the final
           residual), and only the metric's two logits at the last
           position.
  TL hooks the same forward passes as TransformerLens runs them with
           EAP-IG's evaluation settings (see hooks_tl): a copy of the
           residual per head for each query, key and value input, per-head
           results, the logits at every position.
  EAP-IG   each edge as EAP-IG's get_scores_exact scores it (hooks_eapig):
           one evaluate_graph call per edge, on the graph of every edge
           but that one: the corrupted forward pass recording every
           sender's output into the (batch, pos, sender, width) difference
           matrix, then the clean one subtracting its own and rebuilding the
           receiver's layer's inputs from the matrix with the edge mask;
           and again with the corrupted pass once, its matrix copied per
           edge (K patched passes with EAP-IG's hooks).

Prints the times and their ratio (the goal: npp at least 5x faster), the
ratio's ceiling for these edges (an exact engine recomputes, per edge, only
what is downstream of its receiver: see downstream(); and only at the
positions after those where clean and corrupted prompts agree, which are
the same in every patched run; and the last layer's c_proj and MLP only at
the metric's position, the only one read), and checks that the K effects agree within
1e-4 (relative to the largest).
    verify.py NPP MODEL [THREADS] [K]
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
from prompts import B, T, BASELINE, TARGET, clean, corrupt  # noqa: E402

npp, model = sys.argv[1], sys.argv[2]
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
K = int(sys.argv[4]) if len(sys.argv) > 4 else 200
METRIC = {"type": "logit_diff", "target": TARGET, "baseline": BASELINE}


def npp_run(job, *extra):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    p = subprocess.run([npp, "run", "--model", model, "--threads", str(threads), "--compact",
                        "--max-values", "200000", *extra, f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if p.returncode:
        sys.exit("npp run failed: " + p.stderr)
    return json.loads(p.stdout)


def embed(W, ids, send):
    """The token and position embeddings (the sender `emb`, into send)."""
    x = W["wte.weight"][ids] + W["wpe.weight"][:T]
    if send is not None:
        send["emb"] = x
    return x


def mlp(W, p, x, eps):
    """Block p's MLP on its residual input x (ln_2 first)."""
    u = F.layer_norm(x, (x.shape[-1],), W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
    u = F.gelu(u @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"], approximate="tanh")
    return u @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]


def ln_tl(x, w, b, eps):
    """LayerNorm as TransformerLens's LayerNorm computes it (fold_ln off,
    as EAP-IG loads its models): centre, scale, then weight and bias, each
    a separate tensor operation."""
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    x = x / scale
    return x * w + b


def gelu_new(x):
    """GPT-2's GELU as TransformerLens's utils.gelu_new computes it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def mlp_tl(W, p, x, eps):
    """Block p's MLP as TransformerLens's block and MLP run it: ln_2
    (ln_tl), c_fc as a fused addmm, gelu_new, c_proj as a fused addmm."""
    u = ln_tl(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
    u = gelu_new(torch.addmm(W[p + "mlp.c_fc.bias"], u.reshape(-1, u.shape[-1]), W[p + "mlp.c_fc.weight"]))
    return torch.addmm(W[p + "mlp.c_proj.bias"], u, W[p + "mlp.c_proj.weight"]).view(x.shape)


def timed_effects(forward, edges):
    """Seconds and each edge's effect: the clean and corrupted forward
    passes once for the senders' outputs, then one patched pass per edge."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        s_clean, s_cor = {}, {}
        m_clean = forward(torch.tensor(clean), send=s_clean)
        forward(torch.tensor(corrupt), send=s_cor)
        effects = [forward(torch.tensor(clean), (v, s_cor[u] - s_clean[u])) - m_clean for u, v in edges]
    return time.perf_counter() - t0, effects


def hooks(cfg, W, edges):
    """The metric with each edge patched, by hooked forward passes."""
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    D, eps = C // H, cfg.get("layer_norm_epsilon", 1e-5)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    cols = W["lm_head.weight"][[TARGET, BASELINE]]

    def forward(ids, patch=None, send=None):
        """patch: (receiver, delta) added to that receiver's input; send: a
        dict that gets every sender's output."""
        recv, delta = patch if patch else (None, None)
        x = embed(W, ids, send)
        for l in range(L):
            p = "h.%d." % l
            Wa, ba = W[p + "attn.c_attn.weight"], W[p + "attn.c_attn.bias"]
            ln1 = (W[p + "ln_1.weight"], W[p + "ln_1.bias"])
            qkv = F.layer_norm(x, (C,), *ln1, eps) @ Wa + ba  # (B, T, 3C)
            if recv and recv.startswith("a%d.head" % l):  # one head's q, k or v input
                h, c = recv[len("a%d.head" % l):].split(".")
                col = "qkv".index(c) * C + int(h) * D
                hp = F.layer_norm(x + delta, (C,), *ln1, eps)
                qkv = qkv.clone()
                qkv[..., col:col + D] = hp @ Wa[:, col:col + D] + ba[col:col + D]
            q, k, v = qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
            z = s.masked_fill(mask, -math.inf).softmax(-1) @ v  # (B, H, T, D)
            Wo = W[p + "attn.c_proj.weight"]
            if send is not None:
                heads = torch.einsum("bhtd,hdc->bthc", z, Wo.view(H, D, C))
                for h in range(H):
                    send["a%d.head%d" % (l, h)] = heads[:, :, h]
            x = x + z.transpose(1, 2).reshape(B, T, C) @ Wo + W[p + "attn.c_proj.bias"]
            mi = x + delta if recv == "f%d.head" % l else x
            m = mlp(W, p, mi, eps)
            if send is not None:
                send["f%d.head" % l] = m
            x = x + m
        if recv == "ln_final":
            x = x + delta
        hf = F.layer_norm(x[:, -1], (C,), W["ln_f.weight"], W["ln_f.bias"], eps)
        lg = hf @ cols.t()
        return float((lg[:, 0] - lg[:, 1]).mean())

    return timed_effects(forward, edges)


def hooks_tl_forward(cfg, W):
    """A forward pass as TransformerLens runs it with the settings EAP-IG's
    evaluation sets (fold_ln off, use_split_qkv_input, use_attn_result,
    use_hook_mlp_in): every head's query, key and value
    input is its own copy of the residual stream (batch, pos, head, width),
    layer-normed per copy; each head's result is made in the residual
    basis and summed; the forward pass ends with the logits at every
    position, which the metric then reads at the last. Its arithmetic is
    TransformerLens's: LayerNorm (ln_tl) and gelu_new (mlp_tl) op by op,
    the causal mask by torch.where, the pattern's NaNs zeroed, the logits
    by addmm with b_U. A patch adds (u(corrupt) - u(clean)) at the hook
    of receiver v's input."""
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    D, eps = C // H, cfg.get("layer_norm_epsilon", 1e-5)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    ignore = torch.tensor(-math.inf)
    per_head = []  # W_Q, W_K, W_V (H, C, D), their biases (H, D), W_O (H, D, C)
    for l in range(L):
        Wa, ba = W["h.%d.attn.c_attn.weight" % l], W["h.%d.attn.c_attn.bias" % l]
        per_head.append([Wa[:, i * C:(i + 1) * C].reshape(C, H, D).permute(1, 0, 2).contiguous()
                         for i in range(3)] +
                        [ba[i * C:(i + 1) * C].reshape(H, D) for i in range(3)] +
                        [W["h.%d.attn.c_proj.weight" % l].reshape(H, D, C)])
    W_U = W["lm_head.weight"].t().contiguous()  # (C, V)
    b_U = torch.zeros(W_U.shape[1])

    def forward(ids, patch=None, send=None, eap=None):
        """eap: EAP-IG's hooks, (diff, sign, mask): every sender's output
        is added to the difference matrix diff (batch, pos, sender, width)
        times sign; with a mask (senders x receivers, 1 for an edge that
        carries the corrupted value), the inputs of the receivers' layer
        get the masked sum of the differences."""
        recv, delta = patch if patch else (None, None)
        diff, sign, emask = eap if eap else (None, 0, None)
        x = embed(W, ids, send)
        if diff is not None:
            diff[:, :, 0] += sign * x
        for l in range(L):
            p = "h.%d." % l
            ln1 = (W[p + "ln_1.weight"], W[p + "ln_1.bias"])
            WQ, WK, WV, bQ, bK, bV, WO = per_head[l]
            attn_in = x.unsqueeze(2).expand(B, T, H, C)
            ins = [attn_in.clone(), attn_in.clone(), attn_in.clone()]  # hook_{q,k,v}_input
            if recv and recv.startswith("a%d.head" % l):
                h, c = recv[len("a%d.head" % l):].split(".")
                ins["qkv".index(c)][:, :, int(h)] += delta
            first = 1 + l * (H + 1)  # the senders before layer l
            if emask is not None and emask[:first, l * (3 * H + 1):l * (3 * H + 1) + 3 * H].any():
                for i in range(3):  # the whole layer's q, k and v inputs
                    cols = emask[:first, l * (3 * H + 1) + i * H:l * (3 * H + 1) + (i + 1) * H]
                    ins[i] += torch.einsum("bpsc,sh->bphc", diff[:, :, :first], cols)
            q, k, v = (torch.einsum("bphm,hmd->bphd", ln_tl(i, *ln1, eps), Wm) + bm
                       for i, Wm, bm in zip(ins, (WQ, WK, WV), (bQ, bK, bV)))
            s = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) / math.sqrt(D)
            pattern = torch.where(causal, s, ignore).softmax(-1)
            pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
            z = (pattern @ v.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # (b, q, h, d)
            result = torch.einsum("bphd,hdm->bphm", z, WO)  # hook_result
            if send is not None:
                for h in range(H):
                    send["a%d.head%d" % (l, h)] = result[:, :, h]
            if diff is not None:
                diff[:, :, first:first + H] += sign * result
            x = x + (result.sum(2) + W[p + "attn.c_proj.bias"])
            mi = x.clone()  # hook_mlp_in
            if recv == "f%d.head" % l:
                mi += delta
            col = l * (3 * H + 1) + 3 * H
            if emask is not None and emask[:first + H, col].any():
                mi += torch.einsum("bpsc,s->bpc", diff[:, :, :first + H], emask[:first + H, col])
            m = mlp_tl(W, p, mi, eps)
            if send is not None:
                send["f%d.head" % l] = m
            if diff is not None:
                diff[:, :, first + H] += sign * m
            x = x + m
        if recv == "ln_final":
            x = x + delta
        if emask is not None and emask[:, -1].any():
            x = x + torch.einsum("bpsc,s->bpc", diff, emask[:, -1])
        hf = ln_tl(x, W["ln_f.weight"], W["ln_f.bias"], eps)
        logits = torch.addmm(b_U, hf.reshape(-1, C), W_U).view(B, T, -1)
        return float((logits[:, -1, TARGET] - logits[:, -1, BASELINE]).mean())

    return forward


def hooks_tl(cfg, W, edges):
    """hooks_tl_forward's passes, one per edge, (u(corrupt) - u(clean))
    added at the hook of receiver v's input."""
    return timed_effects(hooks_tl_forward(cfg, W), edges)


def sender_index(cfg, u):
    """u's row in EAP-IG's difference matrix: the input, then per layer its
    heads and its MLP."""
    H = cfg["n_head"]
    if u == "emb":
        return 0
    layer = int(u[1:u.index(".")])
    return 1 + layer * (H + 1) + (int(u[u.index(".head") + 5:]) if u.startswith("a") else H)


def receiver_index(cfg, v):
    """v's column: per layer its heads' q inputs, k inputs, v inputs, then
    its MLP; the logits last."""
    L, H = cfg["n_layer"], cfg["n_head"]
    if v == "ln_final":
        return L * (3 * H + 1)
    layer = int(v[1:v.index(".")])
    if v.startswith("f"):
        return layer * (3 * H + 1) + 3 * H
    h, c = v[len("a%d.head" % layer):].split(".")
    return layer * (3 * H + 1) + "qkv".index(c) * H + int(h)


def hooks_eapig(cfg, W, edges, corrupt_once=False):
    """Each edge's effect as EAP-IG's get_scores_exact gets it: the plain
    clean run once (evaluate_baseline), then per edge one evaluate_graph on
    the graph without that edge (skip_clean): a fresh difference matrix,
    the corrupted forward pass adding every sender's output into it, the
    clean one subtracting its own and adding, at the inputs of the
    removed edge's receiver's layer, the differences the mask selects.
    corrupt_once: the corrupted pass once, its matrix copied for each edge
    (what a user of EAP-IG's hooks could do: one patched pass per edge)."""
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    forward = hooks_tl_forward(cfg, W)
    nf, nb = 1 + L * (H + 1), L * (3 * H + 1) + 1
    t0 = time.perf_counter()
    with torch.inference_mode():
        m_clean = forward(torch.tensor(clean))
        if corrupt_once:
            recorded = torch.zeros(B, T, nf, C)
            forward(torch.tensor(corrupt), eap=(recorded, 1, None))
        effects = []
        for u, v in edges:
            emask = torch.zeros(nf, nb)
            emask[sender_index(cfg, u), receiver_index(cfg, v)] = 1
            if corrupt_once:
                diff = recorded.clone()
            else:
                diff = torch.zeros(B, T, nf, C)
                forward(torch.tensor(corrupt), eap=(diff, 1, None))
            effects.append(forward(torch.tensor(clean), eap=(diff, -1, emask)) - m_clean)
    return time.perf_counter() - t0, effects


def downstream(cfg, v, t0=0, t1=None):
    """The multiply-adds per example (the blocks' matrix products; the
    metric's two logits are free) that patching receiver v must recompute:
    one head's query, key or value and its share of c_proj, or the MLP, then
    every later layer; nothing for ln_final. Every row from t0 on (the
    positions before t0 are the same in every patched run); from t1 on (the
    metric's position) the last layer's c_proj and MLP, which nothing reads
    at earlier rows (its c_attn at every row: the keys and values)."""
    L, H, C, I = cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg.get("n_inner") or 4 * cfg["n_embd"]
    t1 = t0 if t1 is None else t1
    if v == "ln_final":
        return 0.0
    layer = int(v[1:v.index(".")])

    def rows(top):
        return T - (t1 if top else t0)
    work = 2 * C * I * rows(layer == L - 1)  # this layer's MLP
    if v.startswith("a"):  # one head's q, k or v and its share of c_proj
        work += C * C / H * rows(False) + C * C / H * rows(layer == L - 1)
    for l in range(layer + 1, L):
        work += 3 * C * C * rows(False) + (C * C + 2 * C * I) * rows(l == L - 1)
    return work


def forward_work(cfg):
    """A forward pass's multiply-adds per example, as downstream() counts."""
    L, C, I = cfg["n_layer"], cfg["n_embd"], cfg.get("n_inner") or 4 * cfg["n_embd"]
    return L * (4 * C * C + 2 * C * I) * T


def main():
    torch.set_num_threads(threads)
    cfg, W = gpt2_ref.load(model, torch.float32)
    att = npp_run({"inputs": [clean, corrupt], "metric": METRIC, "outputs": {"top_k": 0},
                   "attribution": {"method": "eap", "top": K}})
    edges = [(u, v) for u, v, _ in att["attribution"]["edges"]]
    job = {"inputs": [clean, corrupt], "metric": METRIC, "outputs": {"top_k": 0, "baselines": True},
           "sweep": [{"name": "%s -> %s" % e, "preset": {"type": "path_patch", "senders": [e[0]],
                                                          "receivers": [e[1]]}} for e in edges]}
    runs = [npp_run(job, "--cache-mb", "0", "--repeat", "2") for _ in range(3)]
    t_runs = [r["stats"]["exec_ms"] / 1e3 for r in runs]
    t_npp, res = sorted(t_runs)[1], runs[0]
    m_clean = res["baselines"][0]["metric"]["mean"]
    got = [v["metric"]["mean"] - m_clean for v in res["sweep"]]
    t_ref, want = hooks(cfg, W, edges)
    t_tl, want_tl = hooks_tl(cfg, W, edges)
    t_eg, want_eg = hooks_eapig(cfg, W, edges)
    t_eg1, want_eg1 = hooks_eapig(cfg, W, edges, corrupt_once=True)
    big = max(abs(x) for x in want)
    diff = max(abs(a - b) for a, b in zip(got, want)) / max(big, 1e-12)
    diff_tl = max(abs(a - b) for a, b in zip(want_tl, want)) / max(big, 1e-12)
    diff_eg = max(abs(a - b) for a, b in zip(want_eg + want_eg1, want + want)) / max(big, 1e-12)
    print("exact effects of EAP's top %d edges, %d x %d tokens, %d thread(s)" % (len(edges), B, T, threads))
    print("npp sweep job (%6d values)        %8.3f s   (median of %s)"
          % (res["stats"]["values_computed"], t_npp, ", ".join("%.3f" % t for t in t_runs)))
    print("hooked forwards (%d + 2)           %8.3f s   hooks / npp %.2f (goal: at least 5)"
          % (len(edges), t_ref, t_ref / t_npp))
    print("  as TransformerLens runs them       %8.3f s   TL hooks / npp %.2f"
          % (t_tl, t_tl / t_npp))
    print("EAP-IG's get_scores_exact (%d x 2 + 1) %7.3f s   EAP-IG / npp %.2f"
          % (len(edges), t_eg, t_eg / t_npp))
    print("  its hooks, the corrupted pass once (%d + 2) %7.3f s   EAP-IG hooks / npp %.2f"
          % (len(edges), t_eg1, t_eg1 / t_npp))
    fw = forward_work(cfg)  # in forwards, after the two plain runs:
    t0 = min(next((t for t in range(T) if a[t] != b[t]), T) for a, b in zip(clean, corrupt))
    work = sum(downstream(cfg, v) for _, v in edges) / fw
    work_t0 = sum(downstream(cfg, v, t0) for _, v in edges) / fw
    work_t1 = sum(downstream(cfg, v, t0, T - 1) for _, v in edges) / fw
    print("ceiling for these edges: hooks / exact recomputation of what each edge changes %.2f,"
          % ((len(edges) + 2) / (2 + work)))
    print("  at the positions after the %d the prompts share %.2f (npp: %d shared)"
          % (t0, (len(edges) + 2) / (2 + work_t0), res["stats"]["shared_positions"]))
    print("  and the last layer's c_proj and MLP at the metric's position only %.2f (npp: from %d)"
          % ((len(edges) + 2) / (2 + work_t1), res["stats"]["tail_from"]))
    print("max effect difference %.1e of the largest (must be <= 1e-4; TL hooks against hooks %.1e,"
          " EAP-IG's %.1e)" % (diff, diff_tl, diff_eg))
    if max(diff, diff_tl, diff_eg) > 1e-4:
        sys.exit(1)


if __name__ == "__main__":
    main()
