#!/usr/bin/python3
"""Path-patching results of `npp run` against hook computations on the
independent reference (gpt2_ref.py), batch size 2, two inputs.

    check_patching.py --npp BUILD/npp --model DIR

Each case runs a job, decodes the final hidden states (after ln_f) and
compares them with the same experiment done by hooks in PyTorch (float64):
exact identities where the engine must reproduce a plain run bit for bit,
1e-5 for activation patching, 1e-4 for path patching (Wang et al. 2022).

The cases run twice: on random token ids, then on inputs that agree on
their first 3 positions (as a prompt and its corruption often do), where
the engine computes those rows once per layer call (stats.shared_positions)
and every other row per value; the hooks compute everything."""
import argparse
import base64
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_ref  # noqa: E402
import harness  # noqa: E402

A = None  # argparse namespace
CFG = W = None
IDS = None  # (2 inputs, B=2, T) token ids
RESULTS = []
LABEL = ""  # the run's prefix to every check's name


def run_job(job, extra=()):
    """`npp run` of a job (harness.run: one process for the whole check)."""
    return harness.run(job, *extra)


def hidden(res):
    t = res["outputs"]["hidden_states"]
    a = np.frombuffer(base64.b64decode(t["data"]), dtype="<f4").reshape(t["shape"])
    return a.astype(np.float64)


def job(**kw):
    # with the plain runs as outputs too (in the second run), each layer's
    # attention and MLP are calls on several values
    j = {"inputs": [IDS[0].tolist(), IDS[1].tolist()],
         "outputs": {"hidden_states": True, "top_k": 0, "baselines": bool(LABEL)}}
    j.update(kw)
    return j


def ref(hooks=None, k=0):
    with torch.inference_mode():
        h, _ = gpt2_ref.forward(CFG, W, torch.tensor(IDS[k]), hooks)
    return h.numpy()


BASE = None  # hidden states of the unpatched run of input 0


def check(name, got, want, tol):
    name = LABEL + name
    err = float(np.max(np.abs(got - want)))
    ok = err <= tol if tol > 0 else err == 0.0
    if BASE is not None and not name[len(LABEL):].startswith(("split", "every")):
        # A patch that changed nothing would pass vacuously: demand an effect.
        moved = float(np.max(np.abs(want - BASE)))
        if moved < 100 * max(tol, 1e-6):
            print("FAIL %s: the patch barely changes the output (%.3g); the test is too weak"
                  % (name, moved))
            ok = False
    RESULTS.append(ok)
    print("%s %-55s max abs error %.3g (%s)" % ("ok  " if ok else "FAIL", name, err,
                                               "exact" if tol == 0 else "tol %.0e" % tol))


def capture(k):
    """Per-layer residual stream before attention, z and attention output
    of input k's plain run (reference)."""
    cap = {"resid": {}, "z": {}, "qkv": {}, "mlp": {}}

    def z_hook(l, z):
        cap["z"][l] = z.clone()
        return z

    def qkv_hook(l, q, kk, v):
        cap["qkv"][l] = (q.clone(), kk.clone(), v.clone())
        return q, kk, v

    def mlp_hook(l, m):
        cap["mlp"][l] = m.clone()
        return m

    ref({"z": z_hook, "qkv": qkv_hook, "mlp_out": mlp_hook}, k)
    return cap


def head_contrib(l, h, z):
    """Head h's share of attention output l (no bias): z_h @ W_O[rows of h]."""
    D = CFG["n_embd"] // CFG["n_head"]
    Wo = W["h.%d.attn.c_proj.weight" % l]
    return z[:, h] @ Wo[h * D:(h + 1) * D]


def cases(shared):
    """Every case on IDS; shared: the positions both inputs agree on (the
    position cases then patch positions after them)."""
    global BASE
    BASE = None
    L, H = CFG["n_layer"], CFG["n_head"]
    clean, corrupt = capture(0), capture(1)
    h0, h1 = ref(k=0), ref(k=1)

    # ---- identities -----------------------------------------------------------------
    base = hidden(run_job(job()))
    check("every path reads input 0 = plain forward of input 0", base, h0, 1e-5)
    BASE = h0
    check("every path reads input 1 = plain forward of input 1",
          hidden(run_job(job(which=[{"match": "**", "input": 1}]))), h1, 1e-5)
    split_all = job(branch=[{"match": "**", "split": True}])
    res = run_job(split_all)
    check("split everything, no input changed = no split", hidden(res), base, 0)
    full = job(branch=[{"match": "**/{a,f}[0-9]", "split": True},
                       {"match": "**/a[0-9].head", "split": "heads"},
                       {"match": "**/a[0-9].head[0-9]", "split": True}])
    check("split a/f, heads and q/k/v, same input = no split", hidden(run_job(full)), base, 0)
    pos = job(branch=[{"match": "**/{a,f}[0-9]", "split": True},
                      {"match": "**/{a,f}[0-9].head", "split": "positions"}])
    check("split a/f and positions, same input = no split", hidden(run_job(pos)), base, 0)

    # ---- the original example: attention layer 1 from input 1 -------------------------
    orig = job(branch=[{"match": "**/a1", "split": True}],
               which=[{"match": "**/a1/**", "input": 1}])
    c1 = {}

    def keep_attn(l, a):
        if l == 1:
            c1["a"] = a.clone()
        return a
    ref({"attn_out": keep_attn}, 1)
    want = ref({"attn_out": lambda l, a: c1["a"] if l == 1 else a})
    check("original example (a1 reads input 1) = hook on attn 1 output",
          hidden(run_job(orig)), want, 1e-5)

    # ---- activation patching ------------------------------------------------------------
    l, h = 1, 2
    pre = {"type": "activation_patch", "from": 1, "into": 0}

    def z_patch(l_, z):
        if l_ == l:
            z = z.clone()
            z[:, h] = corrupt["z"][l][:, h]
        return z
    check("head a1.head2 = hook on its z", hidden(run_job(job(preset=dict(pre, node="a1.head2")))),
          ref({"z": z_patch}), 1e-5)
    for ci, comp in enumerate("qkv"):
        def qkv_patch(l_, q, k, v, ci=ci):
            if l_ != l:
                return q, k, v
            t = [q.clone(), k.clone(), v.clone()]
            t[ci][:, h] = corrupt["qkv"][l][ci][:, h]
            return tuple(t)
        check("%s-only a1.head2.%s = hook on its %s" % (comp, comp, comp),
              hidden(run_job(job(preset=dict(pre, node="a1.head2.%s" % comp)))),
              ref({"qkv": qkv_patch}), 1e-5)

    # attention positions: the attention of layer 1 reads input 1's residual at 1 and 3
    def attn_pos_hook(positions):
        def resid_before(k):
            x = W["wte.weight"][torch.tensor(IDS[k])] + W["wpe.weight"][:IDS.shape[2]]
            for l_ in range(l):
                a, _, _ = gpt2_ref.attention(CFG, W, l_, x, x, x)
                x = x + a
                x = x + gpt2_ref.mlp(CFG, W, l_, x)
            return x
        with torch.inference_mode():
            xc, xk = resid_before(0), resid_before(1)
            mixed = xc.clone()
            mixed[:, positions] = xk[:, positions]
            a_mixed, _, _ = gpt2_ref.attention(CFG, W, l, mixed, mixed, mixed)
        return {"attn_out": lambda l_, a: a_mixed if l_ == l else a}
    ap_ = [1 + shared, 3 + shared]
    check("attention positions a1.head @ %s = hook on its input rows" % ap_,
          hidden(run_job(job(preset=dict(pre, node="a1.head", positions=ap_)))),
          ref(attn_pos_hook(ap_)), 1e-5)

    mp = 2 + shared

    def mlp_pos(l_, m):
        if l_ == 0:
            m = m.clone()
            m[:, mp] = corrupt["mlp"][0][:, mp]
        return m
    check("MLP positions f0.head @ [%d] = hook on its output row" % mp,
          hidden(run_job(job(preset=dict(pre, node="f0.head", positions=[mp])))),
          ref({"mlp_out": mlp_pos}), 1e-5)

    # ---- path patching (Wang et al. 2022): direct paths only ------------------------------
    s_l, s_h = 0, 1
    delta = head_contrib(s_l, s_h, corrupt["z"][s_l]) - head_contrib(s_l, s_h, clean["z"][s_l])

    # sender -> logits: the final residual gets the sender's corrupt contribution instead
    # of its clean one; nothing else changes.
    with torch.inference_mode():
        eps = CFG.get("layer_norm_epsilon", 1e-5)
        xr = W["wte.weight"][torch.tensor(IDS[0])] + W["wpe.weight"][:IDS.shape[2]]
        for l_ in range(L):
            a, _, _ = gpt2_ref.attention(CFG, W, l_, xr, xr, xr)
            xr = xr + a
            xr = xr + gpt2_ref.mlp(CFG, W, l_, xr)
        want = gpt2_ref.layer_norm(xr + delta, W["ln_f.weight"], W["ln_f.bias"], eps).numpy()
    pp = {"type": "path_patch", "senders": ["a0.head1"], "from": 1, "into": 0}
    check("path patch a0.head1 -> logits = Wang et al. by hand",
          hidden(run_job(job(preset=dict(pp, receivers=["ln_final"])))), want, 1e-4)

    # sender -> receiver head's q / k / v: that input alone sees the corrupt sender
    r_l, r_h = 1, 2
    for ci, comp in enumerate("qkv"):
        def recv(l_, q, k, v, ci=ci):
            if l_ != r_l:
                return q, k, v
            C, D = CFG["n_embd"], CFG["n_embd"] // H
            p_ = "h.%d." % l_
            xr = W["wte.weight"][torch.tensor(IDS[0])] + W["wpe.weight"][:IDS.shape[2]]
            for l2 in range(l_):
                a, _, _ = gpt2_ref.attention(CFG, W, l2, xr, xr, xr)
                xr = xr + a
                xr = xr + gpt2_ref.mlp(CFG, W, l2, xr)
            hin = gpt2_ref.layer_norm(xr + delta, W[p_ + "ln_1.weight"], W[p_ + "ln_1.bias"],
                                      CFG.get("layer_norm_epsilon", 1e-5))
            Wa, ba = W[p_ + "attn.c_attn.weight"], W[p_ + "attn.c_attn.bias"]
            col = ci * C + r_h * D
            new = hin @ Wa[:, col:col + D] + ba[col:col + D]  # (B, T, D)
            t = [q.clone(), k.clone(), v.clone()]
            t[ci][:, r_h] = new
            return tuple(t)
        res = run_job(job(preset=dict(pp, receivers=["a1.head2.%s" % comp])))
        check("path patch a0.head1 -> a1.head2.%s = Wang et al. by hook" % comp, hidden(res),
              ref({"qkv": recv}), 1e-4)
        # the shared rows computed once where there are some (and only then)
        ok = res["stats"]["shared_positions"] == shared
        RESULTS.append(ok)
        print("%s %-55s %d" % ("ok  " if ok else "FAIL", LABEL + "stats.shared_positions",
                               res["stats"]["shared_positions"]))


def main():
    global A, CFG, W, IDS, LABEL
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--model", required=True)
    A = ap.parse_args()
    harness.setup(A.npp, A.model)
    CFG, W = gpt2_ref.load(A.model, torch.float64)
    assert CFG["n_layer"] >= 2 and CFG["n_head"] >= 3, "needs a model with 2+ layers and 3+ heads"
    rng = np.random.default_rng(7)
    IDS = rng.integers(0, 50000, size=(2, 2, 7))  # 2 inputs, batch 2, 7 tokens
    assert (IDS[0, :, 0] != IDS[1, :, 0]).any()
    cases(0)
    IDS[1, :, :3] = IDS[0, :, :3]  # the inputs agree on positions 0-2
    LABEL = "shared prefix: "
    cases(3)

    harness.close_streams()  # its check: the npp process exited cleanly
    RESULTS.extend(harness.RESULTS)
    n_ok = sum(RESULTS)
    print("%d passed, %d failed" % (n_ok, len(RESULTS) - n_ok))
    return 0 if all(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
