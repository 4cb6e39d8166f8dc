#!/usr/bin/python3
"""Train a tiny GPT-2 (exact HuggingFace GPT-2 architecture) that contains an
induction circuit, and write it in HuggingFace layout (config.json +
model.safetensors, F16, tied lm_head, full 50257-token vocabulary).

The model learns to copy repeated runs of random single-token words
(" apple", " bet", ... from a word list, tokenised with GPT-2's byte-level
BPE):   [filler] w1 w2 ... wL [gap] w1 w2 ... wL ...   in mixed layouts
(run repeated to fill the sequence / a few repeats with gaps / several
run-run pairs), run lengths 4-30, so that only real induction works.

What makes it learn fast and gives ONE clean circuit (defaults):
  * loss only on the predictable (copied) positions (--loss copy),
    softmax restricted to the token subset (the saved model is still a normal
    full-vocabulary GPT-2; the eval uses the full vocabulary);
  * position embeddings start as a small sinusoid (--wpe-init sin), still
    ordinary learned HF wpe weights;
  * layer-0 MLP zeroed (--mlp0 off): the previous-token head then reaches the
    induction head only directly;
  * at --prune-at, all heads but the best previous-token head of layer 0 and
    the best induction head of layer 1 (chosen on a selection set, not the
    held-out test) are pruned (zero weights) and training goes on.
Pruned heads / MLP keep the exact HF tensor shapes; their weights are zero.

Only needs torch + numpy (Debian: /usr/bin/python3).  Deterministic for a
given --seed and --threads on CPU.

Examples
  train:  /usr/bin/python3 tools/train_induction.py --vocab-dir VOCAB --out OUT
  eval:   /usr/bin/python3 tools/train_induction.py --eval-only OUT [--show 2]

VOCAB must contain the GPT-2 encoder.json and vocab.bpe (or vocab.json and
merges.txt).  Besides config.json and model.safetensors, OUT receives
induction_tokens.json (the token subset used for training), eval.json (the
measured numbers: held-out top-1 on first/second occurrence, previous-token
and induction scores per head, path-patching fractions for the
prev-token -> induction head path into q / k / v), vocab.json + merges.txt
(copies of the tokenizer files), train_log.csv and loss_curve.svg (unless
--log/--svg name other files).
"""

import argparse
import json
import math
import os
import re
import shutil
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

GPT2_VOCAB = 50257
EOT = 50256


# --------------------------------------------------------------------------
# GPT-2 byte-level BPE (only what is needed for single words)
# --------------------------------------------------------------------------

def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class BPE:
    def __init__(self, vocab_dir):
        enc = None
        for name in ("encoder.json", "vocab.json"):
            p = os.path.join(vocab_dir, name)
            if os.path.exists(p):
                enc = p
                break
        mer = None
        for name in ("vocab.bpe", "merges.txt"):
            p = os.path.join(vocab_dir, name)
            if os.path.exists(p):
                mer = p
                break
        if enc is None or mer is None:
            raise SystemExit("vocab dir %s needs encoder.json/vocab.json and vocab.bpe/merges.txt" % vocab_dir)
        self.encoder_path, self.merges_path = enc, mer
        with open(enc, encoding="utf-8") as f:
            self.encoder = json.load(f)
        self.decoder = {v: k for k, v in self.encoder.items()}
        with open(mer, encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(l.split()) for l in lines if l and not l.startswith("#version")]
        merges = [m for m in merges if len(m) == 2]
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.b2u = bytes_to_unicode()
        self.u2b = {v: k for k, v in self.b2u.items()}

    def bpe(self, token):
        word = list(token)
        while len(word) > 1:
            pairs = [(word[i], word[i + 1]) for i in range(len(word) - 1)]
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    new.append(word[i] + word[i + 1])
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = new
        return word

    def encode_piece(self, text):
        """Encode one pre-tokenised piece (e.g. ' apple')."""
        u = "".join(self.b2u[b] for b in text.encode("utf-8"))
        return [self.encoder[t] for t in self.bpe(u)]

    def decode(self, ids):
        s = "".join(self.decoder[i] for i in ids)
        return bytes(self.u2b[c] for c in s).decode("utf-8", errors="replace")


def single_token_words(bpe, words_file, min_len=3, max_len=12):
    out, seen = [], set()
    with open(words_file, encoding="utf-8", errors="ignore") as f:
        for line in f:
            w = line.strip()
            if not (min_len <= len(w) <= max_len) or not re.fullmatch(r"[a-z]+", w):
                continue
            ids = bpe.encode_piece(" " + w)
            if len(ids) == 1 and ids[0] not in seen:
                seen.add(ids[0])
                out.append((w, ids[0]))
    return out


# --------------------------------------------------------------------------
# Model: exactly HF GPT-2 (pre-LN, learned positions, gelu_new, tied head)
# --------------------------------------------------------------------------

def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2(torch.nn.Module):
    """Parameters are named like HF GPT2Model (without 'transformer.').

    The token embedding is split: `sub_wte` holds the rows of the training
    subset (trained), `rest_wte` the full-vocabulary matrix at its init
    (frozen buffer); `full_wte()` scatters the subset rows into it.
    """

    def __init__(self, n_layer, n_head, n_embd, n_pos, sub_ids, gen, wpe_init="normal", eps=1e-5):
        super().__init__()
        self.n_layer, self.n_head, self.n_embd, self.n_pos, self.eps = n_layer, n_head, n_embd, n_pos, eps
        C = n_embd
        std = 0.02
        proj_std = 0.02 / math.sqrt(2 * n_layer)   # HF scales c_proj weights

        def normal(*shape, s=std):
            return torch.randn(*shape, generator=gen) * s

        rest = normal(GPT2_VOCAB, C)
        self.register_buffer("sub_ids", torch.tensor(sub_ids, dtype=torch.long))
        self.register_buffer("rest_wte", rest)
        self.sub_wte = torch.nn.Parameter(rest[self.sub_ids].clone())
        if wpe_init == "sin":
            pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
            i = torch.arange(C // 2, dtype=torch.float32)[None, :]
            freq = torch.exp(-math.log(1000.0) * i / (C // 2))
            w = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1)
            self.wpe = torch.nn.Parameter(w * 0.1 + normal(n_pos, C, s=0.005))
        else:
            self.wpe = torch.nn.Parameter(normal(n_pos, C))
        self.h = torch.nn.ModuleList()
        for _ in range(n_layer):
            blk = torch.nn.Module()
            blk.ln_1_weight = torch.nn.Parameter(torch.ones(C))
            blk.ln_1_bias = torch.nn.Parameter(torch.zeros(C))
            blk.c_attn_weight = torch.nn.Parameter(normal(C, 3 * C))
            blk.c_attn_bias = torch.nn.Parameter(torch.zeros(3 * C))
            blk.attn_c_proj_weight = torch.nn.Parameter(normal(C, C, s=proj_std))
            blk.attn_c_proj_bias = torch.nn.Parameter(torch.zeros(C))
            blk.ln_2_weight = torch.nn.Parameter(torch.ones(C))
            blk.ln_2_bias = torch.nn.Parameter(torch.zeros(C))
            blk.c_fc_weight = torch.nn.Parameter(normal(C, 4 * C))
            blk.c_fc_bias = torch.nn.Parameter(torch.zeros(4 * C))
            blk.mlp_c_proj_weight = torch.nn.Parameter(normal(4 * C, C, s=proj_std))
            blk.mlp_c_proj_bias = torch.nn.Parameter(torch.zeros(C))
            self.h.append(blk)
        self.ln_f_weight = torch.nn.Parameter(torch.ones(C))
        self.ln_f_bias = torch.nn.Parameter(torch.zeros(C))

    def prune_heads(self, keep):
        """keep[l]: list of heads of layer l that stay; the others get zero
        q/k/v weights and zero output-projection rows, and stay zero (their
        gradients are masked and apply_masks() runs after each optimizer step),
        so a pruned head contributes exactly nothing."""
        C, H = self.n_embd, self.n_head
        D = C // H
        if not hasattr(self, "_col"):
            self._col, self._row = [], []
            for blk in self.h:
                col = torch.ones(3 * C, device=blk.c_attn_weight.device)
                row = torch.ones(C, device=blk.c_attn_weight.device)
                self._col.append(col)
                self._row.append(row)
                blk.c_attn_weight.register_hook(lambda g, m=col: g * m[None, :])
                blk.c_attn_bias.register_hook(lambda g, m=col: g * m)
                blk.attn_c_proj_weight.register_hook(lambda g, m=row: g * m[:, None])
        for l in range(self.n_layer):
            self._col[l].fill_(1)
            self._row[l].fill_(1)
            for h in range(H):
                if h in keep[l]:
                    continue
                for part in range(3):
                    self._col[l][part * C + h * D: part * C + (h + 1) * D] = 0
                self._row[l][h * D:(h + 1) * D] = 0
        self.apply_masks()

    def prune_mlp(self, layer):
        """Zero the MLP of `layer` and keep it zero (it then adds exactly nothing)."""
        blk = self.h[layer]
        if not hasattr(self, "_mlp_off"):
            self._mlp_off = []
        if layer in self._mlp_off:
            return
        self._mlp_off.append(layer)
        for p in (blk.c_fc_weight, blk.c_fc_bias, blk.mlp_c_proj_weight, blk.mlp_c_proj_bias):
            p.register_hook(lambda g: torch.zeros_like(g))
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self):
        for l in getattr(self, "_mlp_off", []):
            blk = self.h[l]
            for p in (blk.c_fc_weight, blk.c_fc_bias, blk.mlp_c_proj_weight, blk.mlp_c_proj_bias):
                p.zero_()
        if not hasattr(self, "_col"):
            return
        for blk, col, row in zip(self.h, self._col, self._row):
            blk.c_attn_weight.mul_(col[None, :])
            blk.c_attn_bias.mul_(col)
            blk.attn_c_proj_weight.mul_(row[:, None])

    def full_wte(self):
        return self.rest_wte.index_copy(0, self.sub_ids, self.sub_wte)

    # ---- pieces -------------------------------------------------------
    def ln(self, x, w, b):
        return F.layer_norm(x, (self.n_embd,), w, b, self.eps)

    def qkv(self, blk, x_ln):
        B, T, C = x_ln.shape
        H, D = self.n_head, C // self.n_head
        y = x_ln @ blk.c_attn_weight + blk.c_attn_bias
        q, k, v = y.split(C, dim=2)
        f = lambda t: t.view(B, T, H, D).transpose(1, 2)   # B H T D
        return f(q), f(k), f(v)

    def attn_core(self, q, k, v):
        T = q.shape[2]
        D = q.shape[3]
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~mask, torch.finfo(s.dtype).min)
        p = torch.softmax(s, dim=-1)
        return p @ v, p          # z: B H T D

    def head_outputs(self, blk, z):
        """Per-head contribution to the residual stream (without bias): B T H C."""
        B, H, T, D = z.shape
        W = blk.attn_c_proj_weight.view(H, D, self.n_embd)
        return torch.einsum("bhtd,hdc->bthc", z, W)

    def mlp(self, blk, x):
        h = self.ln(x, blk.ln_2_weight, blk.ln_2_bias)
        return gelu_new(h @ blk.c_fc_weight + blk.c_fc_bias) @ blk.mlp_c_proj_weight + blk.mlp_c_proj_bias

    def embed(self, idx, wte):
        T = idx.shape[1]
        return wte[idx] + self.wpe[:T][None]

    def forward(self, idx, wte=None, want_attn=False):
        """idx: token ids in the index space of `wte` (sub ids if wte is sub_wte)."""
        if wte is None:
            wte = self.sub_wte
        x = self.embed(idx, wte)
        attns = []
        for blk in self.h:
            q, k, v = self.qkv(blk, self.ln(x, blk.ln_1_weight, blk.ln_1_bias))
            z, p = self.attn_core(q, k, v)
            if want_attn:
                attns.append(p)
            B, H, T, D = z.shape
            z = z.transpose(1, 2).reshape(B, T, H * D)
            x = x + z @ blk.attn_c_proj_weight + blk.attn_c_proj_bias
            x = x + self.mlp(blk, x)
        x = self.ln(x, self.ln_f_weight, self.ln_f_bias)
        logits = x @ wte.t()
        return (logits, attns) if want_attn else logits

    # ---- path patching (2-layer specific: sender in L0, receiver in L1) ----
    def run_layer0(self, x):
        blk = self.h[0]
        q, k, v = self.qkv(blk, self.ln(x, blk.ln_1_weight, blk.ln_1_bias))
        z, p = self.attn_core(q, k, v)
        heads = self.head_outputs(blk, z)          # B T H C
        x = x + heads.sum(2) + blk.attn_c_proj_bias
        x = x + self.mlp(blk, x)
        return x, heads

    def path_patch(self, idx_clean, idx_corrupt, senders, receiver, which, wte):
        """Logits of the clean run where the receiver head's `which` input
        (q/k/v, any subset) is computed from the clean layer-1 residual with the
        sender heads' clean outputs swapped for their corrupt outputs."""
        x_c, heads_c = self.run_layer0(self.embed(idx_clean, wte))
        _, heads_x = self.run_layer0(self.embed(idx_corrupt, wte))
        delta = (heads_x[:, :, senders, :] - heads_c[:, :, senders, :]).sum(2)
        blk = self.h[1]
        q, k, v = self.qkv(blk, self.ln(x_c, blk.ln_1_weight, blk.ln_1_bias))
        qp, kp, vp = self.qkv(blk, self.ln(x_c + delta, blk.ln_1_weight, blk.ln_1_bias))
        r = receiver
        if "q" in which:
            q = q.clone(); q[:, r] = qp[:, r]
        if "k" in which:
            k = k.clone(); k[:, r] = kp[:, r]
        if "v" in which:
            v = v.clone(); v[:, r] = vp[:, r]
        z, _ = self.attn_core(q, k, v)
        B, H, T, D = z.shape
        x = x_c + z.transpose(1, 2).reshape(B, T, H * D) @ blk.attn_c_proj_weight + blk.attn_c_proj_bias
        x = x + self.mlp(blk, x)
        x = self.ln(x, self.ln_f_weight, self.ln_f_bias)
        return x @ wte.t()

    # ---- HF export --------------------------------------------------------
    def hf_tensors(self):
        t = {"wte.weight": self.full_wte(), "wpe.weight": self.wpe}
        for i, b in enumerate(self.h):
            p = "h.%d." % i
            t[p + "ln_1.weight"] = b.ln_1_weight
            t[p + "ln_1.bias"] = b.ln_1_bias
            t[p + "attn.c_attn.weight"] = b.c_attn_weight
            t[p + "attn.c_attn.bias"] = b.c_attn_bias
            t[p + "attn.c_proj.weight"] = b.attn_c_proj_weight
            t[p + "attn.c_proj.bias"] = b.attn_c_proj_bias
            t[p + "ln_2.weight"] = b.ln_2_weight
            t[p + "ln_2.bias"] = b.ln_2_bias
            t[p + "mlp.c_fc.weight"] = b.c_fc_weight
            t[p + "mlp.c_fc.bias"] = b.c_fc_bias
            t[p + "mlp.c_proj.weight"] = b.mlp_c_proj_weight
            t[p + "mlp.c_proj.bias"] = b.mlp_c_proj_bias
        t["ln_f.weight"] = self.ln_f_weight
        t["ln_f.bias"] = self.ln_f_bias
        return {k: v.detach().float().cpu().contiguous() for k, v in t.items()}

    def load_hf_tensors(self, t):
        with torch.no_grad():
            self.rest_wte.copy_(t["wte.weight"])
            self.sub_wte.copy_(t["wte.weight"][self.sub_ids])
            self.wpe.copy_(t["wpe.weight"])
            for i, b in enumerate(self.h):
                p = "h.%d." % i
                b.ln_1_weight.copy_(t[p + "ln_1.weight"]); b.ln_1_bias.copy_(t[p + "ln_1.bias"])
                b.c_attn_weight.copy_(t[p + "attn.c_attn.weight"]); b.c_attn_bias.copy_(t[p + "attn.c_attn.bias"])
                b.attn_c_proj_weight.copy_(t[p + "attn.c_proj.weight"]); b.attn_c_proj_bias.copy_(t[p + "attn.c_proj.bias"])
                b.ln_2_weight.copy_(t[p + "ln_2.weight"]); b.ln_2_bias.copy_(t[p + "ln_2.bias"])
                b.c_fc_weight.copy_(t[p + "mlp.c_fc.weight"]); b.c_fc_bias.copy_(t[p + "mlp.c_fc.bias"])
                b.mlp_c_proj_weight.copy_(t[p + "mlp.c_proj.weight"]); b.mlp_c_proj_bias.copy_(t[p + "mlp.c_proj.bias"])
            self.ln_f_weight.copy_(t["ln_f.weight"]); self.ln_f_bias.copy_(t["ln_f.bias"])


# --------------------------------------------------------------------------
# safetensors (hand written)
# --------------------------------------------------------------------------

def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for name in tensors:
        a = tensors[name].to(torch.float16).numpy()
        b = a.astype("<f2").tobytes()
        header[name] = {"dtype": "F16", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    meta = {"format": "pt"}
    if metadata:
        meta.update({k: str(v) for k, v in metadata.items()})
    header = dict([("__metadata__", meta)] + list(header.items()))
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dt = {"F16": np.float16, "F32": np.float32, "BF16": None}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        a = np.frombuffer(data[s:e], dtype=np.dtype(dt[info["dtype"]]).newbyteorder("<"))
        out[name] = torch.from_numpy(a.astype(np.float32).reshape(info["shape"]))
    return out


def hf_config(a):
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.0,
        "bos_token_id": EOT,
        "embd_pdrop": 0.0,
        "eos_token_id": EOT,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": a.positions,
        "n_embd": a.embd,
        "n_head": a.heads,
        "n_inner": None,
        "n_layer": a.layers,
        "n_positions": a.positions,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.0,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.0,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": GPT2_VOCAB,
    }


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def make_train_batch(rng, B, T, K, min_run, max_run):
    """Sequences of sub-vocabulary indices in mixed layouts; returns
    (tokens [B,T] int64, predictable mask [B,T] bool for the target at t+1)."""
    toks = np.empty((B, T), dtype=np.int64)
    pred = np.zeros((B, T), dtype=bool)      # pred[b, t]: token t+1 is a copy
    for b in range(B):
        seq, mk = [], []
        mode = rng.randint(3)
        f0 = rng.randint(0, 21)
        seq += list(rng.randint(0, K, size=f0)); mk += [False] * f0
        while len(seq) < T:
            L = rng.randint(min_run, max_run + 1)
            run = list(rng.randint(0, K, size=L))
            seq += run; mk += [False] * L
            reps = 10 ** 6 if mode == 0 else (rng.randint(1, 4) if mode == 1 else 1)
            r = 0
            while r < reps and len(seq) < T:
                if mode == 1 and rng.rand() < 0.5:
                    g = rng.randint(1, 6)
                    seq += list(rng.randint(0, K, size=g)); mk += [False] * g
                seq += run; mk += [False] + [True] * (L - 1)
                r += 1
            if mode != 0:
                g = rng.randint(0, 11)
                seq += list(rng.randint(0, K, size=g)); mk += [False] * g
        toks[b] = seq[:T]
        m = np.array(mk[:T] + [False])       # mk[t]: token t is a predictable copy
        pred[b] = m[1:T + 1]
    return toks, pred


def make_eval_set(rng, N, K, min_run, max_run, max_filler, fixed=None):
    """filler + run + same run.  Returns list of (tokens, filler_len, run_len)."""
    out = []
    for _ in range(N):
        if fixed:
            f, L = fixed
        else:
            f = rng.randint(0, max_filler + 1)
            L = rng.randint(min_run, max_run + 1)
        run = list(rng.choice(K, size=L, replace=False))
        filler = list(rng.randint(0, K, size=f))
        corrupt = list(rng.choice([x for x in range(K) if x not in run], size=L, replace=False))
        out.append((filler + run + run, filler + corrupt + run, f, L))
    return out


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------

def group_by_len(items):
    g = {}
    for it in items:
        g.setdefault(len(it[0]), []).append(it)
    return g


@torch.no_grad()
def evaluate(model, eval_items, full_vocab=True, patching=False):
    model.eval()
    sub_ids = model.sub_ids
    wte = model.full_wte() if full_vocab else model.sub_wte
    H = model.n_head
    c1 = c2 = n1 = n2 = 0
    sub1 = sub2 = 0
    prev = torch.zeros(H)
    prev_n = 0
    ind = torch.zeros(H)
    ind_n = 0
    logit_clean = logit_corr = 0.0
    patch_items = []
    dev = sub_ids.device
    sub_cpu = sub_ids.cpu()
    for T, items in sorted(group_by_len(eval_items).items()):
        toks = torch.tensor([it[0] for it in items])
        ids = (sub_cpu[toks] if full_vocab else toks).to(dev)
        logits, attns = model(ids, wte=wte, want_attn=True)
        am = logits.argmax(-1).cpu()
        target = sub_cpu[toks] if full_vocab else toks
        am_sub = logits.index_select(-1, sub_ids).argmax(-1).cpu() if full_vocab else am
        attns = [x.cpu() for x in attns]
        for b, (_, _, f, L) in enumerate(items):
            for i in range(L - 1):
                p1, p2 = f + i, f + L + i
                c1 += int(am[b, p1] == target[b, p1 + 1]); n1 += 1
                c2 += int(am[b, p2] == target[b, p2 + 1]); n2 += 1
                sub1 += int(am_sub[b, p1] == toks[b, p1 + 1])
                sub2 += int(am_sub[b, p2] == toks[b, p2 + 1])
                ind += attns[1][b, :, p2, p1 + 1]; ind_n += 1
        a0 = attns[0]
        Tn = a0.shape[-1]
        prev += a0[:, :, torch.arange(1, Tn), torch.arange(0, Tn - 1)].sum((0, 2))
        prev_n += a0.shape[0] * (Tn - 1)
    res = {
        "acc_first": c1 / n1, "acc_second": c2 / n2,
        "acc_first_subset_argmax": sub1 / n1, "acc_second_subset_argmax": sub2 / n2,
        "prev_token_L0": [round(float(x), 4) for x in prev / prev_n],
        "induction_L1": [round(float(x), 4) for x in ind / ind_n],
    }
    model.train()
    return res


@torch.no_grad()
def path_patching(model, eval_items, senders, receiver):
    """Fraction of the clean-minus-corrupt correct-token logit (full vocab,
    second-occurrence positions) removed by patching senders -> receiver.{q,k,v}."""
    model.eval()
    sub_ids = model.sub_ids
    wte = model.full_wte()
    sums = {}
    for T, items in sorted(group_by_len(eval_items).items()):
        clean = sub_ids[torch.tensor([it[0] for it in items]).to(sub_ids.device)]
        corr = sub_ids[torch.tensor([it[1] for it in items]).to(sub_ids.device)]
        runs = {"clean": model(clean, wte=wte), "corrupt": model(corr, wte=wte)}
        for w in ("q", "k", "v", "qkv"):
            runs[w] = model.path_patch(clean, corr, senders, receiver, w, wte)
        # logit of the correct next token at every position: B x (T-1)
        runs = {k: v[:, :-1].gather(-1, clean[:, 1:, None])[..., 0].cpu() for k, v in runs.items()}
        for b, (_, _, f, L) in enumerate(items):
            pos = torch.arange(f + L, f + 2 * L - 1)
            for name, lg in runs.items():
                sums[name] = sums.get(name, 0.0) + float(lg[b, pos].sum())
            sums["n"] = sums.get("n", 0) + len(pos)
    n = sums.pop("n")
    m = {k: v / n for k, v in sums.items()}
    gap = m["clean"] - m["corrupt"]
    out = {"logit_clean": round(m["clean"], 4), "logit_corrupt": round(m["corrupt"], 4),
           "senders_L0": list(senders), "receiver_L1": receiver}
    for w in ("q", "k", "v", "qkv"):
        out["removed_" + w] = round((m["clean"] - m[w]) / gap, 4)
    model.train()
    return out


def active_heads(model, layer):
    """Heads whose output projection is not all zero (pruned heads are zero)."""
    blk = model.h[layer]
    H, D = model.n_head, model.n_embd // model.n_head
    w = blk.attn_c_proj_weight.detach().view(H, D, model.n_embd)
    return [h for h in range(H) if float(w[h].abs().sum()) > 0]


def show_example(model, item, out=sys.stdout):
    """Print where each active head attends on one held-out sequence."""
    clean, _, f, L = item
    x = model.sub_ids[torch.tensor([clean]).to(model.sub_ids.device)]
    with torch.no_grad():
        lg, att = model(x, wte=model.full_wte(), want_attn=True)
    print("example: filler %d, run %d (first copy at %d, second at %d)" % (f, L, f, f + L), file=out)
    for l in range(model.n_layer):
        for h in active_heads(model, l):
            a = att[l][0, h].cpu()
            am = a.argmax(-1)
            print("L%dH%d offset of argmax attention (t - argmax):" % (l, h),
                  " ".join(str(int(p - am[p])) for p in range(len(clean))), file=out)
            print("     max attention x10:", "".join(str(min(9, int(float(a[p].max()) * 10))) for p in range(len(clean))), file=out)
    pred = lg[0].argmax(-1).cpu()
    xs = x[0].cpu()
    print("second-half correct:", "".join(str(int(pred[p] == xs[p + 1])) for p in range(f + L, f + 2 * L - 1)), file=out)


def full_report(model, items, prev_thresh=0.4):
    r = evaluate(model, items, full_vocab=True)
    rs = evaluate(model, items, full_vocab=False)
    r["acc_first_subset_softmax"] = rs["acc_first"]
    r["acc_second_subset_softmax"] = rs["acc_second"]
    prev = r["prev_token_L0"]
    ind = r["induction_L1"]
    act0, act1 = active_heads(model, 0), active_heads(model, model.n_layer - 1)
    r["active_heads"] = [act0, act1]
    best_prev = max(act0, key=lambda h: prev[h])
    best_ind = max(act1, key=lambda h: ind[h])
    r["prev_token_head"] = [0, best_prev]
    r["induction_head"] = [1, best_ind]
    r["path_patching_best_prev_head"] = path_patching(model, items, [best_prev], best_ind)
    strong = [h for h in act0 if prev[h] >= prev_thresh]
    if len(strong) > 1:
        r["path_patching_all_prev_heads"] = path_patching(model, items, strong, best_ind)
    return r


# --------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------

def write_svg(path, rows, title):
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    if not steps:
        return
    W, Hh, m = 800, 420, 50
    smax = max(steps) or 1
    lmax = max(loss) * 1.05
    def xy(s, v, vmax):
        return (m + (W - 2 * m) * s / smax, Hh - m - (Hh - 2 * m) * v / vmax)
    pts = " ".join("%.1f,%.1f" % xy(s, l, lmax) for s, l in zip(steps, loss))
    acc = [(r["step"], r["acc_second"]) for r in rows if r.get("acc_second") not in (None, "")]
    acc1 = [(r["step"], r["acc_first"]) for r in rows if r.get("acc_first") not in (None, "")]
    pa = " ".join("%.1f,%.1f" % xy(s, float(a), 1.0) for s, a in acc)
    pa1 = " ".join("%.1f,%.1f" % xy(s, float(a), 1.0) for s, a in acc1)
    ticks = []
    for k in range(6):
        v = lmax * k / 5
        _, y = xy(0, v, lmax)
        ticks.append('<text x="%d" y="%.1f" font-size="11" text-anchor="end">%.2f</text>' % (m - 5, y + 4, v))
        ticks.append('<text x="%d" y="%.1f" font-size="11" fill="#c0392b">%.1f</text>' % (W - m + 5, y + 4, k / 5))
    for k in range(6):
        s = smax * k / 5
        x, _ = xy(s, 0, 1)
        ticks.append('<text x="%.1f" y="%d" font-size="11" text-anchor="middle">%d</text>' % (x, Hh - m + 16, s))
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d">' % (W, Hh),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="20" font-size="14" font-family="sans-serif">%s</text>' % (m, title),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (m, Hh - m, W - m, Hh - m),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (m, m, m, Hh - m),
           '<polyline fill="none" stroke="#2c3e50" stroke-width="1" points="%s"/>' % pts]
    if pa:
        svg.append('<polyline fill="none" stroke="#c0392b" stroke-width="2" points="%s"/>' % pa)
    if pa1:
        svg.append('<polyline fill="none" stroke="#e67e22" stroke-width="1.5" stroke-dasharray="4,3" points="%s"/>' % pa1)
    svg += ticks
    svg.append('<text x="%d" y="%d" font-size="12" font-family="sans-serif">step</text>' % (W // 2, Hh - 12))
    svg.append('<text x="%d" y="38" font-size="11" fill="#2c3e50">training loss (left axis)</text>' % (m + 10))
    svg.append('<text x="%d" y="52" font-size="11" fill="#c0392b">held-out top-1, repeated half (right axis)</text>' % (m + 10))
    svg.append('<text x="%d" y="66" font-size="11" fill="#e67e22">held-out top-1, first half (right axis)</text>' % (m + 10))
    svg.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output model folder (HF layout)")
    ap.add_argument("--vocab-dir", help="folder with GPT-2 encoder.json + vocab.bpe (or vocab.json + merges.txt)")
    ap.add_argument("--words", default="/usr/share/dict/american-english", help="word list, one per line")
    ap.add_argument("--subset", type=int, default=500, help="number of single-token words to train on")
    ap.add_argument("--steps", type=int, default=3500)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--embd", type=int, default=64)
    ap.add_argument("--positions", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=96, help="training sequence length (<= positions)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--min-run", type=int, default=4)
    ap.add_argument("--max-run", type=int, default=30)
    ap.add_argument("--loss", choices=["all", "copy"], default="copy",
                    help="'copy': loss only on predictable (copied) positions")
    ap.add_argument("--full-vocab-steps", type=int, default=0,
                    help="last N steps use the full-vocabulary softmax")
    ap.add_argument("--wpe-init", choices=["normal", "sin"], default="sin",
                    help="init of the (learned) position embeddings: HF normal(0.02), or a small "
                         "sinusoid (makes the previous-token head much easier to find)")
    ap.add_argument("--active-heads", default="",
                    help="comma list, number of active heads per layer from the start (e.g. '4,1'); "
                         "the rest are pruned (zero weights)")
    ap.add_argument("--prune-at", type=int, default=1500,
                    help="at this step keep only the --keep-l0 best previous-token heads of layer 0 and "
                         "the --keep-l1 best induction heads of layer 1 (measured on a selection set "
                         "drawn apart from the held-out test), prune the rest, and go on training; "
                         "this concentrates the circuit (otherwise it is spread over all heads)")
    ap.add_argument("--keep-l0", type=int, default=1)
    ap.add_argument("--mlp0", choices=["keep", "prune", "off"], default="off",
                    help="layer-0 MLP: keep; prune = zero it at --prune-at; off = zero from the start. "
                         "Without it the previous-token head reaches the induction head's key only "
                         "directly (path patching of that path then removes nearly all of the effect)")
    ap.add_argument("--keep-l1", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="torch device (cpu; cuda for quick sweeps, not bit-reproducible with cpu)")
    ap.add_argument("--log", help="CSV log (default OUT/train_log.csv)")
    ap.add_argument("--svg", help="loss curve SVG (default OUT/loss_curve.svg)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-n", type=int, default=200, help="held-out sequences per evaluation")
    ap.add_argument("--checkpoint-every", type=int, default=1000)
    ap.add_argument("--eval-only", metavar="DIR", help="load DIR (config.json + model.safetensors) and evaluate")
    ap.add_argument("--show", type=int, default=0, help="with --eval-only: print attention of N held-out examples")
    return ap.parse_args(argv)


def setup_torch(threads, seed, device="cpu"):
    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(seed)
    try:
        torch.use_deterministic_algorithms(True, warn_only=not device.startswith("cpu"))
    except Exception:
        pass


def subset_from_words(a, bpe):
    words = single_token_words(bpe, a.words)
    rng = np.random.RandomState(a.seed)
    order = rng.permutation(len(words))
    chosen = sorted((words[i] for i in order[:a.subset]), key=lambda w: w[1])
    return chosen


def eval_sets(K, seed, n):
    rng = np.random.RandomState(seed + 7_000_003)   # never used by the training stream
    return {
        "varied": make_eval_set(rng, n, K, 10, 20, 10),
        "fixed_9_13": make_eval_set(rng, max(n // 2, 20), K, 13, 13, 9, fixed=(9, 13)),
    }


def do_eval_only(a):
    d = a.eval_only
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(d, "induction_tokens.json")) as f:
        tj = json.load(f)
    ids = [t["id"] for t in tj["tokens"]]
    gen = torch.Generator().manual_seed(0)
    model = GPT2(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_positions"], ids, gen)
    model.load_hf_tensors(read_safetensors(os.path.join(d, "model.safetensors")))
    model.to(a.device)
    sets = eval_sets(len(ids), tj.get("seed", a.seed), a.eval_n)
    res = {name: full_report(model, items) for name, items in sets.items()}
    print(json.dumps(res, indent=1))
    if a.show:
        for it in sets["varied"][:a.show]:
            show_example(model, it)
    return res


def main(argv=None):
    a = parse_args(argv)
    setup_torch(a.threads, a.seed, a.device)
    if a.eval_only:
        do_eval_only(a)
        return
    if not a.out or not a.vocab_dir:
        raise SystemExit("--out and --vocab-dir are required for training")
    assert a.seq_len <= a.positions
    os.makedirs(a.out, exist_ok=True)
    log_path = a.log or os.path.join(a.out, "train_log.csv")
    svg_path = a.svg or os.path.join(a.out, "loss_curve.svg")

    bpe = BPE(a.vocab_dir)
    chosen = subset_from_words(a, bpe)
    K = len(chosen)
    sub_ids = [i for _, i in chosen]
    print("subset: %d single-token words, e.g. %s" % (K, ", ".join(w for w, _ in chosen[:8])), flush=True)

    gen = torch.Generator().manual_seed(a.seed)
    model = GPT2(a.layers, a.heads, a.embd, a.positions, sub_ids, gen, wpe_init=a.wpe_init).to(a.device)
    if a.active_heads:
        act = [int(x) for x in a.active_heads.split(",")]
        assert len(act) == a.layers
        model.prune_heads([list(range(n)) for n in act])
    if a.mlp0 == "off":
        model.prune_mlp(0)
    params = [p for p in model.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    nodecay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.98), eps=1e-8)

    def lr_at(s):
        if s < a.warmup:
            return a.lr * (s + 1) / a.warmup
        prog = (s - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))

    data_rng = np.random.RandomState(a.seed)
    sets = eval_sets(K, a.seed, a.eval_n)
    select_set = make_eval_set(np.random.RandomState(a.seed + 13_000_017), 100, K, 8, 24, 12)
    H = a.heads
    cols = (["step", "loss", "lr", "elapsed_s", "acc_first", "acc_second", "acc_first_subset", "acc_second_subset"]
            + ["prev_L0H%d" % h for h in range(H)] + ["ind_L1H%d" % h for h in range(H)])
    logf = open(log_path, "w")
    logf.write(",".join(cols) + "\n")
    rows = []
    t0 = time.time()
    ema = None
    for step in range(a.steps + 1):
        do_eval = (step % a.eval_every == 0) or step == a.steps
        row = None
        if do_eval:
            r = evaluate(model, sets["varied"], full_vocab=True)
            rsub = evaluate(model, sets["varied"], full_vocab=False)
            row = {"step": step, "loss": ema if ema is not None else float("nan"),
                   "acc_first": r["acc_first"], "acc_second": r["acc_second"],
                   "acc_first_subset": rsub["acc_first"], "acc_second_subset": rsub["acc_second"]}
            for h in range(H):
                row["prev_L0H%d" % h] = r["prev_token_L0"][h]
                row["ind_L1H%d" % h] = r["induction_L1"][h]
            print("step %5d loss %.4f  acc1 %.3f acc2 %.3f (subset %.3f)  prev %s  ind %s  %.0fs" % (
                step, row["loss"], r["acc_first"], r["acc_second"], rsub["acc_second"],
                r["prev_token_L0"], r["induction_L1"], time.time() - t0), flush=True)
        if step == a.steps:
            if row:
                row["lr"] = lr_at(step); row["elapsed_s"] = round(time.time() - t0, 1)
                rows.append(row)
                logf.write(",".join(str(row.get(c, "")) for c in cols) + "\n")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        if a.prune_at and step == a.prune_at:
            r = evaluate(model, select_set, full_vocab=False)
            p0 = sorted(active_heads(model, 0), key=lambda h: -r["prev_token_L0"][h])[:a.keep_l0]
            p1 = sorted(active_heads(model, a.layers - 1), key=lambda h: -r["induction_L1"][h])[:a.keep_l1]
            keep = [list(range(H))] * a.layers
            keep[0], keep[a.layers - 1] = sorted(p0), sorted(p1)
            model.prune_heads(keep)
            if a.mlp0 == "prune":
                model.prune_mlp(0)
            print("step %d: selection set prev %s ind %s -> keep heads %s" % (
                step, r["prev_token_L0"], r["induction_L1"], keep), flush=True)
        toks, pred = make_train_batch(data_rng, a.batch, a.seq_len, K, a.min_run, a.max_run)
        toks = torch.from_numpy(toks).to(a.device)
        full = step >= a.steps - a.full_vocab_steps
        if full:
            wte = model.full_wte()
            logits = model(model.sub_ids[toks], wte=wte)
            tgt = model.sub_ids[toks[:, 1:]]
        else:
            logits = model(toks)
            tgt = toks[:, 1:]
        lg = logits[:, :-1]
        if a.loss == "copy":
            m = torch.from_numpy(pred[:, :-1]).to(a.device)
            if not bool(m.any()):      # (only possible with tiny --seq-len/--batch)
                m = torch.ones_like(m)
            loss = F.cross_entropy(lg[m], tgt[m])
        else:
            loss = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        model.apply_masks()
        lv = float(loss)
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if row is None and step % 25 == 0:
            row = {"step": step, "loss": lv}
        if row is not None:
            row["loss"] = lv
            row["lr"] = lr_at(step)
            row["elapsed_s"] = round(time.time() - t0, 1)
            rows.append(row)
            logf.write(",".join(str(row.get(c, "")) for c in cols) + "\n")
            logf.flush()
        if a.checkpoint_every and step and step % a.checkpoint_every == 0:
            save(model, a, chosen, bpe, os.path.join(a.out, "checkpoint"), None)
            write_svg(svg_path, rows, "train_induction.py seed %d" % a.seed)
    logf.close()
    wall = time.time() - t0
    write_svg(svg_path, rows, "train_induction.py seed %d, %d steps" % (a.seed, a.steps))
    res = {name: full_report(model, items) for name, items in sets.items()}
    res["train_wall_s"] = round(wall, 1)
    res["args"] = vars(a)
    save(model, a, chosen, bpe, a.out, res)
    # the tokenizer files, under the names HF uses, for convenience of tests
    shutil.copyfile(bpe.encoder_path, os.path.join(a.out, "vocab.json"))
    shutil.copyfile(bpe.merges_path, os.path.join(a.out, "merges.txt"))
    # re-evaluate from the F16 file exactly as saved
    ea = parse_args(["--eval-only", a.out, "--seed", str(a.seed),
                     "--eval-n", str(a.eval_n), "--device", a.device])
    res_f16 = do_eval_only(ea)
    res["from_saved_f16"] = res_f16
    with open(os.path.join(a.out, "eval.json"), "w") as f:
        json.dump(res, f, indent=1)
    print("wrote %s (train %.0fs)" % (a.out, wall), flush=True)


def save(model, a, chosen, bpe, out, res):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(a), f, indent=2)
    write_safetensors(os.path.join(out, "model.safetensors"), model.hf_tensors(),
                      {"generator": "tools/train_induction.py", "seed": a.seed})
    tj = {"seed": a.seed, "note": "token subset (GPT-2 ids of ' word') used for training; "
          "held-out eval: filler 0-10 + run of 10-20 distinct subset tokens + the same run again, "
          "drawn from a generator seeded apart from the training stream",
          "tokens": [{"id": i, "text": " " + w} for w, i in chosen]}
    with open(os.path.join(out, "induction_tokens.json"), "w") as f:
        json.dump(tj, f, indent=0)
    if res is not None:
        with open(os.path.join(out, "eval.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
