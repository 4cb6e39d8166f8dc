"""What the reference checks share: running `npp`, reading a result's
tensors, and counting checks.

run() sends a job to one `npp run --jsonl -` process per model and set of
options, kept for the whole check (each job still runs as its own
`npp run` would: the same result, a fresh cache), because every Debian
libtorch process spends ~1 s starting (2.5 s under ASan); options that
write files or stderr reports run a process of their own. summary() checks
that those processes exit cleanly (under ASan, a leak fails it there).

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
OWN_PROCESS = {"--svg", "--heatmap", "--circuit", "--npy-dir", "--memory-report"}
STREAMS = {}  # (model, options) -> [Popen, stderr file, whether a job failed]


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
    """`npp run` of a job document on the model; the result JSON, or
    RuntimeError with npp's error."""
    if OWN_PROCESS.intersection(extra):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(job, f)
        try:
            return json.loads(npp("run", "--model", MODEL, f.name, *extra))
        finally:
            os.unlink(f.name)
    key = (MODEL, extra)
    if key not in STREAMS:
        err = tempfile.TemporaryFile("w+")
        p = subprocess.Popen([NPP, "run", "--model", MODEL, "--jsonl", "-", *extra], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=err, text=True)
        STREAMS[key] = [p, err, False]
    s = STREAMS[key]
    try:
        s[0].stdin.write(json.dumps(job) + "\n")
        s[0].stdin.flush()
        line = s[0].stdout.readline()
    except BrokenPipeError:
        line = ""
    if not line:
        s[1].seek(0)
        raise RuntimeError("npp run --jsonl ended: " + s[1].read()[-4000:])
    res = json.loads(line)
    if list(res) == ["error"]:
        s[2] = True
        raise RuntimeError("npp: error in '%s': %s" % (res["error"]["field"], res["error"]["message"]))
    return res


def close_streams():
    """Ends the run() processes: each must exit 0 (1 if one of its jobs
    was refused), else a failed check with its stderr's end."""
    for (model, extra), (p, err, refused) in STREAMS.items():
        p.stdin.close()
        rc = p.wait()
        err.seek(0)
        check("npp run --jsonl %s exits cleanly" % " ".join((os.path.basename(model),) + extra),
              rc == (1 if refused else 0), "exit %d %s" % (rc, err.read()[-2000:].strip()))
    STREAMS.clear()


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
    close_streams()
    n_ok = sum(RESULTS)
    print("%d passed, %d failed" % (n_ok, len(RESULTS) - n_ok))
    return 0 if all(RESULTS) else 1
