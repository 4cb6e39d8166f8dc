"""What the reference checks share: running `npp`, reading a result's
tensors, and counting checks.

    harness.setup(args.npp, args.model)
    res = run(job, "--svg", "x.svg")      # `npp run` on the model
    check("name", ok, "detail")
    sys.exit(harness.summary())
"""
import base64
import json
import os
import subprocess
import tempfile

import numpy as np

NPP = MODEL = None
RESULTS = []


def setup(npp_path, model):
    global NPP, MODEL
    NPP, MODEL = npp_path, model


def npp(*args):
    """Runs `npp ARGS...`; its stdout, or RuntimeError with its stderr."""
    p = subprocess.run([NPP, *args], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr)
    return p.stdout


def run(job, *extra):
    """`npp run` of a job document on the model; the result JSON."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        return json.loads(npp("run", "--model", MODEL, f.name, *extra))
    finally:
        os.unlink(f.name)


def tensor(t):
    """A result tensor (base64 or .npy) as a float64 array."""
    if "npy" in t:
        return np.load(t["npy"]).astype(np.float64)
    return np.frombuffer(base64.b64decode(t["data"]), "<f4").reshape(t["shape"]).astype(np.float64)


def check(name, ok, detail=""):
    RESULTS.append(bool(ok))
    print("%s %-64s %s" % ("ok  " if ok else "FAIL", name, detail))


def summary():
    """Prints the count; the exit status (0 when every check passed)."""
    n_ok = sum(RESULTS)
    print("%d passed, %d failed" % (n_ok, len(RESULTS) - n_ok))
    return 0 if all(RESULTS) else 1
