#!/usr/bin/python3
"""Compares `npp forward` logits with the independent reference.

    check_forward.py --npp BUILD/npp --model DIR [--text T | --ids 1,2] [--tol 1e-4]
                     [--dtype f32] [--device cpu]

Tokenizes with `npp tokenize --json` when --text is given (the tokenizer has
its own tests), runs both sides, and fails unless max |C - ref| <= tol over
every position and every vocabulary entry."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--text")
    ap.add_argument("--ids")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.text is not None:
        out = subprocess.run([a.npp, "tokenize", "--model", a.model, "--json", a.text],
                             check=True, capture_output=True, text=True).stdout
        ids = json.loads(out)
    else:
        ids = [int(x) for x in a.ids.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "logits.npy")
        subprocess.run([a.npp, "forward", "--model", a.model, "--device", a.device, "--dtype",
                        a.dtype, "--ids", ",".join(map(str, ids)), "--logits-out", path,
                        "--top-k", "1"], check=True, stdout=subprocess.DEVNULL)
        got = np.load(path)
    cfg, W = gpt2_ref.load(a.model, torch.float64)
    with torch.inference_mode():
        _, ref = gpt2_ref.forward(cfg, W, torch.tensor([ids]))
    ref = ref[0].numpy()
    if got.shape != ref.shape:
        print("FAIL: shape %s, reference %s" % (got.shape, ref.shape))
        return 1
    err = float(np.max(np.abs(got.astype(np.float64) - ref)))
    scale = float(np.max(np.abs(ref)))
    same_top = bool((got.argmax(-1) == ref.argmax(-1)).all())
    print("model %s: %d tokens, max |logit| %.3f, max abs error %.3g (tol %.3g), argmax equal: %s"
          % (os.path.basename(a.model.rstrip("/")), len(ids), scale, err, a.tol, same_top))
    if not err <= a.tol:
        print("FAIL: logits differ from the reference by more than the tolerance")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
