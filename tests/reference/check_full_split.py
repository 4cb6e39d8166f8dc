#!/usr/bin/python3
"""The full split on a GPT-2-small-shaped model (12 layers, 12 heads): every
a{i}, f{i}, every a{i}.head into heads, every head into q/k/v, every MLP into
positions, no input changed. It must plan into exactly the plain run's
values (4L + 2: canonical keys) and give bit-identical hidden states; with
one head's path reading input 1 it must differ.

    check_full_split.py --npp BUILD/npp --model DIR
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def run(npp, model, job):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    p = subprocess.run([npp, "run", "--model", model, f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if p.returncode:
        raise RuntimeError(p.stderr)
    return json.loads(p.stdout)


def hidden(r):
    t = r["outputs"]["hidden_states"]
    return np.frombuffer(base64.b64decode(t["data"]), "<f4").reshape(t["shape"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npp", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    L = cfg["n_layer"]
    inputs = [list(range(1000, 1012)), list(range(2000, 2012))]
    outputs = {"hidden_states": True, "top_k": 0}
    split = [{"match": "**/{a,f}{[0-9],1[01]}", "split": True},
             {"match": "**/a{[0-9],1[01]}.head", "split": "heads"},
             {"match": "**/a{[0-9],1[01]}.head{[0-9],1[01]}", "split": True},
             {"match": "**/f{[0-9],1[01]}.head", "split": "positions"}]
    plain = run(a.npp, a.model, {"inputs": inputs, "outputs": outputs})
    full = run(a.npp, a.model, {"inputs": inputs, "branch": split, "outputs": outputs})
    one = run(a.npp, a.model, {"inputs": inputs, "branch": split, "outputs": outputs,
                               "which": [{"match": "**/a9.head6/**", "input": 1}]})
    results = [
        ("plain run plans 4L+2 values", plain["stats"]["values_planned"] == 4 * L + 2),
        ("full split plans exactly the plain run's values",
         full["stats"]["values_planned"] == 4 * L + 2),
        ("full split walks a path tree", full["stats"]["path_nodes"] > 20 * L),
        ("full split, same inputs: identical hidden states",
         np.array_equal(hidden(plain), hidden(full))),
        ("full split, a9.head6's paths read input 1: differs",
         float(np.max(np.abs(hidden(one) - hidden(plain)))) > 1e-4),
    ]
    for name, ok in results:
        print("%s %s" % ("ok  " if ok else "FAIL", name))
    print("full split: %s" % json.dumps(full["stats"]))
    n = sum(ok for _, ok in results)
    print("%d passed, %d failed" % (n, len(results) - n))
    return 0 if n == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
