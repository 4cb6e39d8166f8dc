#!/usr/bin/python3
"""bench/time/measure.py: nppd's estimate of each job's compute time
(`estimate.seconds` in the job's status: its plan's work in GFLOP, as if
nothing were cached, at the rate nppd measured for the model at start-up)
against the job's `run_seconds` (a worker's time on it: planning again,
executing, building and storing the result), one worker, --cache-mb 0,
jobs one at a time, on 10 job shapes.

    measure.py NPPD MODEL [THREADS]
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

nppd, model = sys.argv[1], sys.argv[2]
threads = sys.argv[3] if len(sys.argv) > 3 else "1"
LD = {"type": "logit_diff", "target": 100, "baseline": 200}


def ids(B, T, seed):
    return [[(seed * 977 + b * 131 + t * 7919 + 13) % 50000 + 1 for t in range(T)] for b in range(B)]


def pair(B, T):
    return [ids(B, T, 5), ids(B, T, 6)]


HEADS = ["a%d.head%d" % (l, h) for l in range(12) for h in range(12)]
JOBS = [
    ("plain B=8 T=16, top-5", {"inputs": [ids(8, 16, 1)]}),
    ("plain B=4 T=512, top-1", {"inputs": [ids(4, 512, 2)], "outputs": {"top_k": 1}}),
    ("plain B=32 T=128, top-5 at 16 positions", {
        "inputs": [ids(32, 128, 3)], "outputs": {"positions": list(range(0, 128, 8))}}),
    ("split a5, B=4 T=64, top-3", {"inputs": pair(4, 64),
                                   "branch": [{"match": "**/a5", "split": True}],
                                   "which": [{"match": "**/a5/**", "input": 1}],
                                   "outputs": {"top_k": 3}}),
    ("144-head sweep -> ln_final, B=2 T=32, top-5", {
        "inputs": pair(2, 32), "metric": LD,
        "sweep": [{"preset": {"type": "path_patch", "senders": [h], "receivers": ["ln_final"]}}
                  for h in HEADS]}),
    ("144-head sweep -> ln_final, B=2 T=32, no top-k", {
        "inputs": pair(2, 32), "metric": LD, "outputs": {"top_k": 0},
        "sweep": [{"preset": {"type": "path_patch", "senders": [h], "receivers": ["ln_final"]}}
                  for h in HEADS]}),
    ("KL path patch a0.head0 -> ln_final, B=8 T=64", {
        "inputs": pair(8, 64), "metric": {"type": "kl"},
        "preset": {"type": "path_patch", "senders": ["a0.head0"], "receivers": ["ln_final"]}}),
    ("EAP, B=8 T=16", {"inputs": pair(8, 16), "metric": LD, "outputs": {"top_k": 0},
                       "attribution": {"method": "eap"}}),
    ("EAP-IG 5 steps, B=8 T=16", {"inputs": pair(8, 16), "metric": LD, "outputs": {"top_k": 0},
                                  "attribution": {"method": "eap-ig", "steps": 5}}),
    ("discover top 10/100/1000, verify 20, B=8 T=16", {
        "inputs": pair(8, 16), "metric": LD, "outputs": {"top_k": 0},
        "discover": {"method": "eap", "top_n": [10, 100, 1000], "verify": 20}}),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def call(base, method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        sys.exit("%s %s: %s" % (method, path, e.read().decode()))


state = tempfile.mkdtemp()
port = free_port()
base = "http://127.0.0.1:%d" % port
proc = subprocess.Popen([nppd, "--model", "m=" + model, "--listen", "127.0.0.1:%d" % port,
                         "--state-dir", state, "--workers", "1", "--threads", threads,
                         "--cache-mb", "0", "--max-job-seconds", "0", "--max-values", "200000"],
                        stderr=subprocess.DEVNULL)
try:
    for _ in range(600):
        try:
            models = call(base, "GET", "/v1/models")
            if models["models"][0]["loaded"]:
                break
        except OSError:
            pass
        time.sleep(0.1)
    rate = models["models"][0]["gflop_per_s"]
    print("rate measured at start-up: %.1f GFLOP/s (%s thread(s))" % (rate, threads))
    print("| job | estimate (s) | run (s) | estimate / run |")
    print("| --- | --- | --- | --- |")
    for name, job in JOBS:
        st = call(base, "POST", "/v1/jobs?wait=600", job)
        if st["state"] != "done":
            sys.exit("%s: %s" % (name, st.get("error")))
        est, run = st["estimate"]["seconds"], st["run_seconds"]
        print("| %s | %.2f | %.2f | %.2f |" % (name, est, run, est / run))
finally:
    proc.terminate()
    proc.wait()
    shutil.rmtree(state, ignore_errors=True)
