#!/usr/bin/python3
"""bench/sweep: the 144-head path-patching sweep (each head a{l}.head{h} ->
logits, logit difference) on a GPT-2-small-shaped model, three ways, each
on a fresh nppd (1 worker):

  sweep     one job with 144 variants: their plans merged, each value
            computed once, every layer's attentions batched across variants;
  jobs      144 jobs one after another on one shared cache (values a job
            shares with earlier ones come from the cache);
  isolated  144 jobs with no cache (--cache-mb 0): every job recomputes
            everything, as re-running each patched forward pass would.

Prints wall time and values computed for each, and checks that the three
give the same 144 metrics.
    sweep.py NPPD MODEL_DIR [TOKENS] [THREADS]
"""
import http.client
import json
import socket
import subprocess
import sys
import time

nppd, model = sys.argv[1], sys.argv[2]
T = int(sys.argv[3]) if len(sys.argv) > 3 else 32
threads = sys.argv[4] if len(sys.argv) > 4 else "1"
inputs = [list(range(1000, 1000 + T)), list(range(2000, 2000 + T))]
metric = {"type": "logit_diff", "target": 1100, "baseline": 1200}
heads = ["a%d.head%d" % (l, h) for l in range(12) for h in range(12)]


def preset(s):
    return {"type": "path_patch", "senders": [s], "receivers": ["ln_final"]}


def serve(*extra):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.Popen([nppd, "--model", "m=" + model, "--listen", "127.0.0.1:%d" % port,
                          "--workers", "1", "--threads", threads, "--max-values", "200000",
                          *extra], stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        try:
            if post(port, "GET", "/readyz")[0] == 200:
                return p, port
        except OSError:
            pass
        time.sleep(0.1)
    p.kill()
    raise RuntimeError("nppd did not become ready")


def post(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    c.request(method, path, body=json.dumps(body) if body is not None else None)
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    return r.status, data


def job(port, doc):
    st, body = post(port, "POST", "/v1/jobs?wait=3600", doc)
    if st != 200 or body["state"] != "done":
        raise RuntimeError(json.dumps(body)[:500])
    return body["result"]


def run(mode):
    p, port = serve(*(["--cache-mb", "0"] if mode == "isolated" else []))
    try:
        t0 = time.time()
        if mode == "sweep":
            r = job(port, {"inputs": inputs, "metric": metric,
                           "sweep": [{"name": s, "preset": preset(s)} for s in heads]})
            metrics = [v["metric"]["mean"] for v in r["sweep"]]
            computed = r["stats"]["values_computed"]
        else:
            metrics, computed = [], 0
            for s in heads:
                r = job(port, {"inputs": inputs, "metric": metric, "preset": preset(s)})
                metrics.append(r["metric"]["mean"])
                computed += r["stats"]["values_computed"]
        return time.time() - t0, computed, metrics
    finally:
        p.terminate()
        p.wait()


print("bench/sweep: 144 heads -> logits, 2 inputs x %d tokens, 1 worker x %s thread(s)" % (T, threads))
res = {m: run(m) for m in ("sweep", "jobs", "isolated")}
for m, (t, n, _) in res.items():
    print("%-9s %8.2f s  %6d values computed  %.2fx the sweep's time" % (m, t, n, t / res["sweep"][0]))
same = res["sweep"][2] == res["jobs"][2] == res["isolated"][2]
print("same 144 metrics in all three:", same)
sys.exit(0 if same else 1)
