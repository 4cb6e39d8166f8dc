#!/usr/bin/python3
"""bench/attrib: EAP scores of every edge of a model, 8 prompt pairs of 16
tokens, as one npp job ("attribution": {"method": "eap"}) and as a PyTorch
autograd baseline written the way EAP-IG's code computes them (TransformerLens
with use_split_qkv_input: every head's query, key and value input is its own
copy of the residual stream, hooked; a corrupted forward pass for the
senders' outputs, a clean forward and backward for the receivers'
gradients, then one einsum of deltas and gradients).

    eap.py NPP MODEL [THREADS] [STEPS] [ROUNDS]

Prints the times, the ratio, and the largest difference between the two
score sets relative to the largest score (must be <= 1e-4). npp's time is
the whole job's: its exec_ms (the executor: the corrupted run's senders)
plus its attribution_ms (the clean pass with gradients, which also gives
the job's own output, the backward pass and the scores), against the
exec_ms of a plain job of the same batch. This VM's speed drifts by
+-15% within a minute, so the plain job and the attribution job run
ROUNDS times (default 5), each a fresh process, one after the other; the
ratio printed is the median of the rounds' ratios (each round's two runs
are neighbours in time), beside the median times, and the ratio of the
fastest attribution to the fastest plain job (the drift only ever slows a
run down, so the fastest of each is the closest to its cost). Then the
same job again in the same process (--repeat 2, the warm run): the
corrupted run's senders come from the shared cache."""
import json
import math
import os
import statistics
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
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 1
rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 5


def baseline(cfg, W):
    L, H, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    D, eps = C // H, cfg.get("layer_norm_epsilon", 1e-5)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    cols = W["lm_head.weight"][[TARGET, BASELINE]]

    def run(emb, grads):
        """Senders' outputs, and with grads (a dict) every receiver input
        retained for its gradient; returns (senders, metric)."""
        send = {"emb": emb}
        x = emb
        for l in range(L):
            p = "h.%d." % l
            Wq = W[p + "attn.c_attn.weight"].view(C, 3, H, D)
            bq = W[p + "attn.c_attn.bias"].view(3, H, D)
            xi = x.unsqueeze(2).expand(B, T, 3 * H, C)  # split q/k/v inputs
            if grads is not None:
                xi = xi.clone()
                xi.retain_grad()
                grads["qkv%d" % l] = xi
            h = F.layer_norm(xi, (C,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
            h = h.view(B, T, 3, H, C)
            q, k, v = (torch.einsum("bthc,chd->bhtd", h[:, :, i], Wq[:, i]) +
                       bq[i].unsqueeze(1) for i in range(3))
            s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
            z = s.masked_fill(mask, float("-inf")).softmax(-1) @ v  # (B, H, T, D)
            Wo = W[p + "attn.c_proj.weight"].view(H, D, C)
            heads = torch.einsum("bhtd,hdc->bthc", z, Wo)
            send["a%d" % l] = heads
            x = x + heads.sum(2) + W[p + "attn.c_proj.bias"]
            mi = x
            if grads is not None:
                mi = x.clone()
                mi.retain_grad()
                grads["mlp%d" % l] = mi
            h = F.layer_norm(mi, (C,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
            u = F.gelu(h @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"], approximate="tanh")
            m = u @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
            send["f%d" % l] = m
            x = x + m
        xf = x
        if grads is not None:
            xf = x.clone()
            xf.retain_grad()
            grads["final"] = xf
        hf = F.layer_norm(xf[:, -1], (C,), W["ln_f.weight"], W["ln_f.bias"], eps)
        lg = hf @ cols.t()
        return send, (lg[:, 0] - lg[:, 1]).mean()

    def emb(ids):
        return W["wte.weight"][ids] + W["wpe.weight"][:T]

    t0 = time.perf_counter()
    with torch.no_grad():
        s_cor, _ = run(emb(torch.tensor(corrupt)), None)
    e_clean, e_cor = emb(torch.tensor(clean)), emb(torch.tensor(corrupt))
    acc, s_clean = {}, None
    for kk in range(steps, 0, -1):
        g = {}
        e = (e_cor + kk / steps * (e_clean - e_cor)).detach().requires_grad_()
        s, M = run(e, g)
        if s_clean is None:
            s_clean = {n: t.detach() for n, t in s.items()}
        M.backward()
        for n, t in g.items():
            acc[n] = acc.get(n, 0) + t.grad / steps
    # deltas (B, T, S, C) in stream order and gradients (B, T, R, C)
    delta = [(s_cor["emb"] - s_clean["emb"]).unsqueeze(2)]
    for l in range(L):
        delta += [s_cor["a%d" % l] - s_clean["a%d" % l],
                  (s_cor["f%d" % l] - s_clean["f%d" % l]).unsqueeze(2)]
    delta = torch.cat(delta, 2)
    scores = {}
    names = ["emb"]
    for l in range(L):
        names += ["a%d.head%d" % (l, h) for h in range(H)] + ["f%d.head" % l]
    for l in range(L):
        up = 1 + l * (H + 1)
        gq = acc["qkv%d" % l].view(B, T, 3, H, C)
        sc = torch.einsum("btsc,btkhc->skh", delta[:, :, :up], gq)
        for si in range(up):
            for h in range(H):
                for ki, comp in enumerate("qkv"):
                    scores[(names[si], "a%d.head%d.%s" % (l, h, comp))] = float(sc[si, ki, h])
        sm = torch.einsum("btsc,btc->s", delta[:, :, :up + H], acc["mlp%d" % l])
        for si in range(up + H):
            scores[(names[si], "f%d.head" % l)] = float(sm[si])
    sf = torch.einsum("btsc,btc->s", delta, acc["final"])
    for si, n in enumerate(names):
        scores[(n, "ln_final")] = float(sf[si])
    return time.perf_counter() - t0, scores


def npp_run(job, *extra):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    p = subprocess.run([npp, "run", "--model", model, "--threads", str(threads), "--compact",
                        *extra, f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if p.returncode:
        sys.exit("npp run failed: " + p.stderr)
    return json.loads(p.stdout)


def main():
    torch.set_num_threads(threads)
    cfg, W = gpt2_ref.load(model, torch.float32)
    metric = {"type": "logit_diff", "target": TARGET, "baseline": BASELINE}
    att = {"method": "eap"} if steps == 1 else {"method": "eap-ig", "steps": steps}
    job = {"inputs": [clean, corrupt], "metric": metric, "outputs": {"top_k": 0}, "attribution": att}
    plains, npps = [], []
    for _ in range(rounds):
        plain = npp_run({"inputs": [clean], "metric": metric, "outputs": {"top_k": 0}})
        res = npp_run(job)
        plains.append(plain["stats"]["exec_ms"] / 1e3)
        npps.append((res["stats"]["attribution_ms"] + res["stats"]["exec_ms"]) / 1e3)
    warm = npp_run(job, "--repeat", "2")
    t_plain, t_npp = statistics.median(plains), statistics.median(npps)
    ratio = statistics.median(n / p for n, p in zip(npps, plains))
    t_warm = (warm["stats"]["attribution_ms"] + warm["stats"]["exec_ms"]) / 1e3
    t_ref, ref = baseline(cfg, W)
    got = {(u, v): s for u, v, s in res["attribution"]["edges"]}
    big = max(abs(s) for s in ref.values())
    diff = max(abs(got[e] - ref[e]) for e in ref) / big
    print("EAP%s of %d edges, %d x %d tokens, %d thread(s)"
          % ("" if steps == 1 else "-IG (%d steps)" % steps, len(got), B, T, threads))
    print("npp plain forward (the same batch)    %8.3f s   median of %s" %
          (t_plain, " ".join("%.3f" % t for t in plains)))
    print("npp attribution                       %8.3f s   median of %s" %
          (t_npp, " ".join("%.3f" % t for t in npps)))
    print("                                                 %.1f plain forwards (median of %s)" %
          (ratio, " ".join("%.1f" % (n / p) for n, p in zip(npps, plains))))
    print("                                                 %.1f plain forwards (fastest of each, "
          "%.3f / %.3f s)" % (min(npps) / min(plains), min(npps), min(plains)))
    print("npp, again (warm cache: %3d values)   %8.3f s   %.1f plain forwards" %
          (warm["stats"]["values_cached"], t_warm, t_warm / t_plain))
    print("PyTorch autograd (split q/k/v inputs) %8.3f s   npp / PyTorch %.2f" %
          (t_ref, t_npp / t_ref))
    print("max score difference %.1e of the largest (must be <= 1e-4)" % diff)
    wgot = {(u, v): s for u, v, s in warm["attribution"]["edges"]}
    wdiff = max(abs(wgot[e] - got[e]) for e in got) / big
    print("warm run's scores differ by %.1e of the largest (must be <= 1e-6)" % wdiff)
    if len(got) != len(ref) or diff > 1e-4 or wdiff > 1e-6:
        sys.exit(1)


if __name__ == "__main__":
    main()
