#!/usr/bin/python3
"""The everyday experiments against per-example runs and hooks on the
independent reference (gpt2_ref.py).

    check_experiments.py --npp BUILD/npp --model DIR

Uneven prompts: a batch whose examples differ in length (right-padded
inside the engine) gives, for every output and metric, what each example
gives run alone, within 1e-5 (another batch shape may round differently in
the last bits); padding rows are zeros; "last" and negative positions are
per example. Each experiment must also move the output, so that no check
passes vacuously."""
import argparse
import base64
import os
import sys
import tempfile
import xml.etree.ElementTree as ET

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_ref  # noqa: E402
import harness  # noqa: E402
from harness import check, run, tensor  # noqa: E402

CFG = W = None
TMP = tempfile.mkdtemp(prefix="npp-experiments-")


def close(a, b, tol=1e-5):
    """Max error relative to max(1, |b|): within tol?"""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False, "shapes %s and %s" % (a.shape, b.shape)
    err = float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b)))) if a.size else 0.0
    return err <= tol, "max error %.3g (tol %.0e)" % (err, tol)


def ref_hidden(ids):
    with torch.inference_mode():
        h, _ = gpt2_ref.forward(CFG, W, torch.tensor([ids]))
    return h[0].numpy()


def uneven(rng):
    lens = [7, 4, 6]
    ex = [[rng.integers(0, 50000, n).tolist() for n in lens] for _ in range(2)]
    for b in range(3):  # inputs 0 and 1 differ in one token of each example
        ex[1][b][:] = ex[0][b]
        ex[1][b][1] = (ex[0][b][1] + 1234) % 50000
    preset = {"type": "path_patch", "senders": ["a0.head1"], "receivers": ["a1.head0.v", "a1.head2.q"],
              "from": 1, "into": 0}
    outputs = {"positions": "all", "logits": True, "hidden_states": True, "top_k": 3,
               "token_logprobs": [11, 500], "attention": [0, 1], "baselines": True}
    metrics = [{"type": "logit_diff", "target": 11, "baseline": 500},
               {"type": "kl", "position": -2}]
    for metric in metrics:
        res = run({"inputs": ex, "preset": preset, "outputs": outputs, "metric": metric})
        name = metric["type"]
        check("%s: lengths echoed, inputs echoed without padding" % name,
              res["lengths"] == lens and res["tokens"] == 7 and
              [len(x) for x in res["inputs"][0]] == lens and res["inputs"][1] == ex[1])
        o = res["outputs"]
        hs, lg = tensor(o["hidden_states"]), tensor(o["logits"])
        check("%s: [B, T_max, ...] tensors" % name,
              hs.shape[:2] == (3, 7) and lg.shape[:2] == (3, 7), str((hs.shape, lg.shape)))
        check("%s: padding rows are zeros" % name,
              all(not hs[b, n:].any() and not lg[b, n:].any() for b, n in enumerate(lens)))
        check("%s: metric position -2 is per example" % name,
              name != "kl" or res["metric"]["position"] == [n - 2 for n in lens],
              str(res["metric"]["position"]))
        for b, n in enumerate(lens):
            one = run({"inputs": [ex[0][b], ex[1][b]], "preset": preset, "outputs": outputs,
                       "metric": metric})
            oo = one["outputs"]
            ok1, d1 = close(hs[b, :n], tensor(oo["hidden_states"])[0])
            ok2, d2 = close(lg[b, :n], tensor(oo["logits"])[0])
            check("%s: example %d (%d tokens): hidden states and logits = alone" % (name, b, n),
                  ok1 and ok2, d1 + "; " + d2)
            tk = [[t["id"] for t in row["tokens"]] for row in o["top_k"][b]]
            tk1 = [[t["id"] for t in row["tokens"]] for row in oo["top_k"][0]]
            tl = o["token_logprobs"]["values"][b]
            ok3, d3 = close(tl[:n], oo["token_logprobs"]["values"][0])
            check("%s: example %d: top-k ids and token log-probs = alone; padding rows null"
                  % (name, b), tk == tk1 and ok3 and all(r is None for r in tl[n:]), d3)
            ok4, d4 = close(res["metric"]["per_example"][b], one["metric"]["per_example"][0])
            oks = [close(bl["metric"]["per_example"][b], bo["metric"]["per_example"][0])[0]
                   for bl, bo in zip(res["baselines"], one["baselines"])]
            check("%s: example %d: metric and baselines' metrics = alone" % (name, b),
                  ok4 and all(oks), d4)
            att = {(a.get("input", a.get("run")), a["layer"]): tensor(a["probs"])
                   for a in o["attention"]}
            okA = len(att) == 3 * 2  # two inputs and the patched run, two layers
            for a in oo["attention"]:
                p = att[(a.get("input", a.get("run")), a["layer"])]
                okA &= close(p[b, :, :n, :n], tensor(a["probs"])[0])[0]
                okA &= not p[b, :, n:].any()
            check("%s: example %d: attention (plain and patched runs) = alone, padding queries zero"
                  % (name, b), okA)
        if name == "kl":
            continue
        plain = run({"inputs": ex[:1], "outputs": {"hidden_states": True, "top_k": 0}})
        ph = tensor(plain["outputs"]["hidden_states"])
        for b, n in enumerate(lens):
            ok, d = close(ph[b, :n], ref_hidden(ex[0][b]))
            check("plain uneven run, example %d = reference forward alone" % b, ok, d)
        ok, d = close(hs, ph)
        check("the path patch moves the output (not vacuous)", not ok, d)
    last = run({"inputs": ex, "preset": preset, "outputs": {"top_k": 1}})
    check("\"last\" is each example's last token",
          last["outputs"]["positions"] == [[n - 1] for n in lens] and
          [row[0]["position"] for row in last["outputs"]["top_k"]] == [n - 1 for n in lens],
          str(last["outputs"]["positions"]))
    neg = run({"inputs": ex, "preset": preset, "outputs": {"top_k": 1, "positions": [0, -1]}})
    check("negative positions count from each example's end",
          neg["outputs"]["positions"] == [[0, n - 1] for n in lens])
    even = run({"inputs": [[x[:4] for x in ex[0]]], "outputs": {"top_k": 1, "positions": [-1]}})
    check("an even batch keeps one list of positions", even["outputs"]["positions"] == [3])


def reference_activations(ids):
    """Every activation of the plain run of ids (B, T) on the reference."""
    L, H = CFG["n_layer"], CFG["n_head"]
    C = CFG["n_embd"]
    D = C // H
    got = {}
    with torch.inference_mode():
        x = W["wte.weight"][torch.tensor(ids)] + W["wpe.weight"][:len(ids[0])]
        got["emb"] = x.clone()
        for l in range(L):
            a, z, probs = gpt2_ref.attention(CFG, W, l, x, x, x)
            got["a%d.head" % l], got["a%d.pattern" % l] = a, probs
            Wo = W["h.%d.attn.c_proj.weight" % l]
            for h in range(H):
                got["a%d.head%d" % (l, h)] = z[:, h] @ Wo[h * D:(h + 1) * D]
            x = x + a
            got["a%d" % l] = x.clone()
            m = gpt2_ref.mlp(CFG, W, l, x)
            got["f%d.head" % l] = m
            x = x + m
            got["f%d" % l] = x.clone()
    return {k: v.numpy() for k, v in got.items()}


def activations(rng):
    L, H = CFG["n_layer"], CFG["n_head"]
    ids = rng.integers(0, 50000, size=(2, 6)).tolist()
    other = rng.integers(0, 50000, size=(2, 6)).tolist()
    want = reference_activations(other)
    names = ["emb"] + ["a%d%s" % (l, s) for l in range(L) for s in ("", ".head", ".pattern")]
    names += ["f%d%s" % (l, s) for l in range(L) for s in ("", ".head")]
    names += ["a%d.head%d" % (l, h) for l in range(L) for h in range(H)]
    res = run({"inputs": [ids, other], "outputs": {"top_k": 0,
               "activations": {"nodes": names, "input": 1}}})
    acts = res["outputs"]["activations"]
    check("activations: input 1, every node asked for, in order",
          acts["input"] == 1 and list(acts["nodes"]) == names)
    for n in names:
        ok, d = close(tensor(acts["nodes"][n]), want[n])
        check("activation %s of input 1 = reference" % n, ok, d)
    s = sum(tensor(acts["nodes"]["a0.head%d" % h]) for h in range(H))
    bias = W["h.0.attn.c_proj.bias"].numpy()
    ok, d = close(s + bias, want["a0.head"])
    check("heads' shares plus the bias = the attention output", ok, d)
    # uneven: the padding rows zero, each example as alone
    ex = [ids[0], ids[1][:4]]
    res = run({"inputs": [ex], "outputs": {"top_k": 0, "activations": {"nodes": ["a1", "a1.pattern", "f0.head"]}}})
    nodes = res["outputs"]["activations"]["nodes"]
    for b, seq in enumerate(ex):
        w = reference_activations([seq])
        n = len(seq)
        ok1, d1 = close(tensor(nodes["a1"])[b, :n], w["a1"][0])
        ok2, d2 = close(tensor(nodes["a1.pattern"])[b, :, :n, :n], w["a1.pattern"][0])
        pad = not tensor(nodes["a1"])[b, n:].any() and not tensor(nodes["a1.pattern"])[b, :, n:].any()
        check("uneven activations, example %d = alone, padding zero" % b, ok1 and ok2 and pad,
              d1 + "; " + d2)
    sw = run({"inputs": [ids, other], "outputs": {"top_k": 0, "activations": {"nodes": ["f1"]}},
              "sweep": [{"preset": {"type": "activation_patch", "node": "a0.head"}}]})
    ok, d = close(tensor(sw["activations"]["nodes"]["f1"]), reference_activations(ids)["f1"])
    check("a sweep's activations sit at the top (input 0 by default)", ok, d)


def ref_run(ids, resid=None, attn_out=None, mlp_out=None, z=None):
    """The reference forward of ids (B, T) with hooks: resid(name, x) at
    emb, a{i}, f{i}; attn_out(l, a), mlp_out(l, m), z(l, z) (per-head z
    (B, H, T, D) before c_proj). Returns the hidden states after ln_f."""
    eps = CFG.get("layer_norm_epsilon", 1e-5)
    zh = {"z": z} if z else None
    with torch.inference_mode():
        ids = torch.tensor(ids)
        x = W["wte.weight"][ids] + W["wpe.weight"][:ids.shape[1]]
        x = resid("emb", x) if resid else x
        for l in range(CFG["n_layer"]):
            a, _, _ = gpt2_ref.attention(CFG, W, l, x, x, x, zh)
            a = attn_out(l, a) if attn_out else a
            x = x + a
            x = resid("a%d" % l, x) if resid else x
            m = gpt2_ref.mlp(CFG, W, l, x)
            m = mlp_out(l, m) if mlp_out else m
            x = x + m
            x = resid("f%d" % l, x) if resid else x
        return gpt2_ref.layer_norm(x, W["ln_f.weight"], W["ln_f.bias"], eps).numpy()


def interventions(rng):
    L, C = CFG["n_layer"], CFG["n_embd"]
    T = 6
    ids = rng.integers(0, 50000, size=(2, 3, T)).tolist()  # 2 inputs, batch 3
    base = ref_run(ids[0])
    acts = [reference_activations(ids[k]) for k in range(2)]

    def z_of(k, l):
        with torch.inference_mode():
            x = torch.tensor(acts[k]["f%d" % (l - 1)] if l else acts[k]["emb"])
            return gpt2_ref.attention(CFG, W, l, x, x, x)[1]

    def engine(preset=None, **rules):
        job = {"inputs": ids, "outputs": {"hidden_states": True, "top_k": 0}}
        if preset:
            job["preset"] = preset
        job.update(rules)
        return tensor(run(job)["outputs"]["hidden_states"])

    def case(name, got, want, tol=1e-5):
        ok, d = close(got, want, tol)
        moved = float(np.max(np.abs(want - base)))
        check(name, ok and moved > 100 * tol, d + "; moves the output by %.3g" % moved)

    l, h = 1, 2
    vec = rng.standard_normal(C).tolist()

    def set_z(value, positions=slice(None)):
        def hook(l_, z):
            if l_ == l:
                z = z.clone()
                z[:, h, positions] = value if isinstance(value, float) else value[:, h, positions]
            return z
        return hook
    case("ablate zero a1.head2 = hook zeroing its z",
         engine({"type": "ablate", "node": "a1.head2"}), ref_run(ids[0], z=set_z(0.0)))
    zm = z_of(1, l).mean(0, keepdim=True)
    case("ablate mean a1.head2 of input 1 = hook: z = input 1's batch mean",
         engine({"type": "ablate", "node": "a1.head2", "value": "mean", "of": 1}),
         ref_run(ids[0], z=set_z(zm.expand(3, -1, -1, -1))))
    z1 = z_of(1, l)
    case("activation_patch a1.head2 @ [2, 4] = hook: its z there from input 1",
         engine({"type": "activation_patch", "node": "a1.head2", "positions": [2, 4]}),
         ref_run(ids[0], z=set_z(z1, [2, 4])))

    def zero_rows(target, rows):
        def hook(l_, a):
            if l_ == target:
                a = a.clone()
                a[:, rows] = 0
            return a
        return hook
    case("ablate zero a0.head @ [1, 3] = hook on attn_out",
         engine({"type": "ablate", "node": "a0.head", "positions": [1, 3]}),
         ref_run(ids[0], attn_out=zero_rows(0, [1, 3])))
    m0 = torch.tensor(acts[0]["f0.head"]).mean(0, keepdim=True)
    case("ablate mean f0.head = hook: mlp_out = its batch mean",
         engine({"type": "ablate", "node": "f0.head", "value": "mean"}),
         ref_run(ids[0], mlp_out=lambda l_, m: m0.expand(3, -1, -1) if l_ == 0 else m))

    def resid_hook(target, fn):
        return lambda name, x: fn(x.clone()) if name == target else x

    def rows(x, r, v):
        x[:, r] = v
        return x
    case("ablate zero a1 (residual) @ [2]",
         engine({"type": "ablate", "node": "a1", "positions": [2]}),
         ref_run(ids[0], resid=resid_hook("a1", lambda x: rows(x, [2], 0.0))))
    a0_1 = torch.tensor(acts[1]["a0"])
    case("activation_patch a0 (residual) @ [1, 3] from input 1 = hook on resid_mid",
         engine({"type": "activation_patch", "node": "a0", "positions": [1, 3]}),
         ref_run(ids[0], resid=resid_hook("a0", lambda x: rows(x, [1, 3], a0_1[:, [1, 3]]))))
    f0_1 = torch.tensor(acts[1]["f0"])
    case("activation_patch f0 (every position) from input 1",
         engine({"type": "activation_patch", "node": "f0"}),
         ref_run(ids[0], resid=resid_hook("f0", lambda x: f0_1.clone())))
    v = torch.tensor(vec, dtype=torch.float64)

    def add_rows(x, r, d):
        x[:, r] += d
        return x
    case("steer f0 @ [0, 4] by 3 x vector",
         engine({"type": "steer", "node": "f0", "vector": vec, "scale": 3, "positions": [0, 4]}),
         ref_run(ids[0], resid=resid_hook("f0", lambda x: add_rows(x, [0, 4], 3 * v))))
    b64 = base64.b64encode(np.array(vec, "<f4").tobytes()).decode()
    v32 = torch.tensor(np.array(vec, "<f4").astype(np.float64))
    case("steer emb (base64 vector) on every position",
         engine({"type": "steer", "node": "emb", "vector": {"base64": b64, "shape": [C]}}),
         ref_run(ids[0], resid=resid_hook("emb", lambda x: x + v32)))
    case("steer a1.head0 (a head: the attention output moves)",
         engine({"type": "steer", "node": "a1.head0", "vector": vec, "scale": -2}),
         ref_run(ids[0], attn_out=lambda l_, a: a - 2 * v if l_ == 1 else a))
    # path-specific: f0's MLP ablated only where attention 1 reads it
    with torch.inference_mode():
        x_a0 = torch.tensor(acts[0]["a0"])
        x_f0 = torch.tensor(acts[0]["f0"])
        a1o, _, _ = gpt2_ref.attention(CFG, W, 1, x_a0, x_a0, x_a0)
        x = x_f0 + a1o
        for ll in range(1, L):
            if ll > 1:
                x = x + gpt2_ref.attention(CFG, W, ll, x, x, x)[0]
            x = x + gpt2_ref.mlp(CFG, W, ll, x)
        want = gpt2_ref.layer_norm(x, W["ln_f.weight"], W["ln_f.bias"], 1e-5).numpy()
    got = engine(branch=[{"match": "**/{a1,f0}", "split": True}],
                 intervene=[{"match": "**/a1.head/**/f0/f0.head", "ablate": "zero"}])
    case("rule form: f0.head zeroed only on paths through a1.head", got, want)
    # an uneven batch: the mean at each position over the examples that have it
    ex = [ids[0][0], ids[0][1][:4], ids[0][2][:5]]
    res = run({"inputs": [ex], "outputs": {"hidden_states": True, "top_k": 0},
               "preset": {"type": "ablate", "node": "f0.head", "value": "mean"}})
    got = tensor(res["outputs"]["hidden_states"])
    ms = [torch.tensor(reference_activations([e])["f0.head"][0]) for e in ex]
    mean = torch.stack([sum(m[t] for m in ms if t < len(m)) / sum(t < len(m) for m in ms)
                        for t in range(T)])
    ok = True
    for b, e in enumerate(ex):
        want = ref_run([e], mlp_out=lambda l_, m: mean[:len(e)].unsqueeze(0) if l_ == 0 else m)
        ok &= close(got[b, :len(e)], want[0])[0]
    check("uneven batch: mean ablation averages each position over the examples that have it",
          ok)


def grids(rng):
    L, H = CFG["n_layer"], CFG["n_head"]
    T = 5
    ids = rng.integers(0, 50000, size=(2, 2, T)).tolist()
    metric = {"type": "logit_diff", "target": 11, "baseline": 500, "normalize": True}
    out = {"top_k": 3}
    heat = os.path.join(TMP, "grid.svg")
    res = run({"inputs": ids, "metric": metric, "outputs": out,
               "grid": {"node": "a{layer}.head{head}", "layer": "all", "head": "all",
                        "preset": {"type": "activation_patch", "from": 1, "into": 0}}},
              "--heatmap", heat)
    g = res["grid"]
    check("layer x head grid: axes, shape, names",
          g["axes"] == ["layer", "head"] and g["shape"] == [L, H] and
          g["names"][1][2] == "a1.head2" and g["ticks"]["head"] == list(range(H)), str(g["shape"]))
    plain = [run({"inputs": [ids[k]], "metric": dict(metric, normalize=False),
                  "outputs": {"top_k": 0}})["metric"]["mean"] for k in range(2)]
    ok_all, worst = True, 0.0
    for l in range(L):
        for h in range(H):
            one = run({"inputs": ids, "metric": metric, "outputs": out,
                       "preset": {"type": "activation_patch", "node": "a%d.head%d" % (l, h)}})
            v = res["sweep"][l * H + h]
            want = (one["metric"]["mean"] - plain[0]) / (plain[1] - plain[0])
            ok1, _ = close(g["values"][l][h], one["metric"]["normalized"])
            ok2, _ = close(one["metric"]["normalized"], want)
            ok3 = [[t["id"] for t in r["tokens"]] for r in v["outputs"]["top_k"][0]] == \
                [[t["id"] for t in r["tokens"]] for r in one["outputs"]["top_k"][0]]
            worst = max(worst, abs(v["metric"]["mean"] - one["metric"]["mean"]))
            ok_all &= ok1 and ok2 and ok3
    check("every cell = its variant run as a single job (normalized within 1e-5, same top-k)",
          ok_all, "max |metric difference| %.3g" % worst)
    spread = np.ptp(np.array(g["values"], dtype=float))
    check("the cells differ (the grid is not vacuous)", spread > 1e-3, "range %.3g" % spread)
    svg = ET.parse(heat).getroot()
    cells = [e for e in svg.iter() if e.get("class") == "cell"]
    vals = {(int(c.get("data-row")), int(c.get("data-col"))): float(c.get("data-value"))
            for c in cells}
    check("--heatmap: one cell per grid cell, each with its value",
          len(cells) == L * H and all(abs(vals[(l, h)] - g["values"][l][h]) <=
                                      1e-6 * max(1, abs(g["values"][l][h]))
                                      for l in range(L) for h in range(H)))
    # layer x position: the residual stream at each position from input 1
    res = run({"inputs": ids, "metric": dict(metric, normalize=False), "outputs": {"top_k": 0},
               "grid": {"layer": "all", "pos": [0, 2, 4],
                        "preset": {"type": "activation_patch", "node": "a{layer}",
                                   "positions": ["{pos}"]}}})
    g = res["grid"]
    ok = g["shape"] == [L, 3] and g["names"][0][1] == "layer 0, pos 2"
    for l in range(L):
        for i, t in enumerate([0, 2, 4]):
            one = run({"inputs": ids, "metric": dict(metric, normalize=False),
                       "outputs": {"top_k": 0},
                       "preset": {"type": "activation_patch", "node": "a%d" % l, "positions": [t]}})
            ok &= close(g["values"][l][i], one["metric"]["mean"])[0]
    check("layer x position residual grid = single jobs", ok)
    last = g["values"][L - 1]  # after the last attention only per-position work remains
    check("the last a{i}: earlier positions leave the metric as clean, the last moves it",
          close(last[0], plain[0])[0] and close(last[1], plain[0])[0] and
          not close(last[2], plain[0])[0], str(last))


def patched_attention(rng):
    """outputs.attention also for the patched run: its trunk's attention."""
    C = CFG["n_embd"]
    ids = rng.integers(0, 50000, size=(2, 2, 6)).tolist()
    res = run({"inputs": ids, "preset": {"type": "activation_patch", "node": "a1.head2"},
               "outputs": {"top_k": 0, "attention": [0, 1]}})
    att = {(a.get("input", a.get("run")), a["layer"]): tensor(a["probs"])
           for a in res["outputs"]["attention"]}
    want = [reference_activations(ids[k]) for k in range(2)]
    p1 = att[("patched", 1)]
    ok1, d1 = close(p1[:, 2], want[1]["a1.pattern"][:, 2])
    ok2, d2 = close(np.delete(p1, 2, axis=1), np.delete(want[0]["a1.pattern"], 2, axis=1))
    ok3, d3 = close(att[("patched", 0)], want[0]["a0.pattern"])
    moved = float(np.max(np.abs(p1[:, 2] - want[0]["a1.pattern"][:, 2])))
    check("patched attention: a1.head2's pattern from input 1, the rest input 0's",
          ok1 and ok2 and ok3 and moved > 1e-3, "%s; %s; %s; moved %.3g" % (d1, d2, d3, moved))
    vec = rng.standard_normal(C).tolist()
    res = run({"inputs": ids[:1], "preset": {"type": "steer", "node": "emb", "vector": vec},
               "outputs": {"top_k": 0, "attention": [0]}})
    got = tensor([a for a in res["outputs"]["attention"] if a.get("run") == "patched"][0]["probs"])
    with torch.inference_mode():
        x = W["wte.weight"][torch.tensor(ids[0])] + W["wpe.weight"][:6] + torch.tensor(vec, dtype=torch.float64)
        _, _, probs = gpt2_ref.attention(CFG, W, 0, x, x, x)
    ok, d = close(got, probs.numpy())
    check("patched attention after steering emb = the reference's", ok and
          float(np.max(np.abs(got - want[0]["a0.pattern"]))) > 1e-3, d)


def main():
    global CFG, W
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    harness.setup(a.npp, a.model)
    CFG, W = gpt2_ref.load(a.model, torch.float64)
    assert CFG["n_layer"] >= 2 and CFG["n_head"] >= 3, "needs 2+ layers and 3+ heads"
    rng = np.random.default_rng(11)
    uneven(rng)
    activations(rng)
    interventions(rng)
    grids(rng)
    patched_attention(rng)
    sys.exit(harness.summary())


if __name__ == "__main__":
    main()
