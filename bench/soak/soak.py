#!/usr/bin/python3
"""bench/soak: mixed traffic from many clients against one nppd, for a
while, watching what a long-lived shared server must not do: answer 5xx,
lose an accepted job, grow in memory, leak file descriptors.

    soak.py NPPD MODEL_DIR [MINUTES] [CLIENTS] [WORKERS]

Each client loops over a mix: valid jobs (timed, ?wait), malformed ones,
jobs cancelled while queued or running, event streams dropped after the
first event, waits abandoned by closing the socket, and jobs with a large
result (logits at every position). Every minute it prints the requests so
far, nppd's RSS and open descriptors; at the end, the status histogram,
p50/p99 of the valid jobs, and whether every accepted job ended. Exits 1
if any answer was 5xx, any accepted job was lost, RSS over the last half
moved more than 10%, or the descriptors did not come back."""
import collections
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

nppd, model = sys.argv[1], sys.argv[2]
minutes = float(sys.argv[3]) if len(sys.argv) > 3 else 10
clients = int(sys.argv[4]) if len(sys.argv) > 4 else 16
workers = sys.argv[5] if len(sys.argv) > 5 else "2"

lock = threading.Lock()
status = collections.Counter()
latency = []
accepted = set()
stop = threading.Event()


def port_free():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def req(port, method, path, body=None, timeout=120, count=True):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=json.dumps(body) if isinstance(body, dict) else body)
        r = c.getresponse()
        data = r.read()
        with lock:
            status[r.status] += count
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, None
    finally:
        c.close()


def note(body):
    if isinstance(body, dict) and "id" in body:
        with lock:
            accepted.add(body["id"])


def ids(rng, n):
    return [rng.randrange(10, 50000) for _ in range(n)]


def client(port, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        kind = rng.choices(["valid", "malformed", "cancel", "sse", "abandon", "large"],
                           [40, 15, 15, 10, 10, 10])[0]
        T = rng.randrange(8, 48)
        job = {"inputs": [ids(rng, T), ids(rng, T)],
               "preset": {"type": "path_patch", "senders": ["a0.head%d" % rng.randrange(8)],
                          "receivers": ["a%d.head%d.q" % (rng.randrange(1, 4), rng.randrange(8))]},
               "outputs": {"top_k": 3}}
        try:
            if kind == "valid":
                t0 = time.time()
                st, body = req(port, "POST", "/v1/jobs?wait=120", job)
                note(body)
                if st == 200 and body.get("state") == "done":
                    with lock:
                        latency.append(time.time() - t0)
            elif kind == "malformed":
                bad = rng.choice([b"{", b"[]", json.dumps({"inputs": 5}).encode(),
                                  json.dumps(dict(job, branch=[{"match": "**/{a0", "split": True}])).encode(),
                                  json.dumps(dict(job, outputs={"positions": [0, 0]})).encode()])
                req(port, "POST", "/v1/jobs", bad)
            elif kind == "cancel":
                st, body = req(port, "POST", "/v1/jobs", dict(job, inputs=[ids(rng, 120)] * 2))
                note(body)
                if st == 202:
                    time.sleep(rng.random() * 0.5)
                    req(port, "DELETE", "/v1/jobs/" + body["id"])
            elif kind == "sse":
                st, body = req(port, "POST", "/v1/jobs", job)
                note(body)
                if st == 202:
                    s = socket.create_connection(("127.0.0.1", port), timeout=30)
                    s.sendall(("GET /v1/jobs/%s/events HTTP/1.1\r\nHost: x\r\n\r\n" % body["id"]).encode())
                    s.recv(256)
                    s.close()  # dropped mid-stream
                    with lock:
                        status["sse-dropped"] += 1
            elif kind == "abandon":
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                data = json.dumps(job).encode()
                s.sendall(b"POST /v1/jobs?wait=60 HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
                time.sleep(0.05)
                s.close()  # gone before the answer: the job runs anyway
                with lock:
                    status["wait-abandoned"] += 1
            else:
                st, body = req(port, "POST", "/v1/jobs?wait=120",
                               {"inputs": [ids(rng, 64)], "outputs": {"logits": True,
                                                                      "positions": "all", "top_k": 0}})
                note(body)
        except OSError:
            with lock:
                status["client-error"] += 1


def rss(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def main():
    port = port_free()
    state = tempfile.mkdtemp(prefix="soak-state-")
    proc = subprocess.Popen([nppd, "--model", "m=" + model, "--listen", "127.0.0.1:%d" % port,
                             "--workers", workers, "--state-dir", state, "--result-ttl", "3600",
                             "--memory-mb", "4096", "--cache-mb", "256",
                             "--results-disk-mb", "512", "--max-inflight", "64"],
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if req(port, "GET", "/readyz", count=False)[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    status.clear()
    fd0, samples = fds(proc.pid), []
    print("nppd --workers %s, %d clients, %.0f min; %d fds at start" % (workers, clients,
                                                                       minutes, fd0), flush=True)
    threads = [threading.Thread(target=client, args=(port, k)) for k in range(clients)]
    for t in threads:
        t.start()
    t0 = time.time()
    for m in range(1, int(minutes) + 1):
        while time.time() < t0 + 60 * m:
            time.sleep(1)
        samples.append(rss(proc.pid))
        with lock:
            n = sum(v for k, v in status.items() if isinstance(k, int))
        print("minute %2d: %6d requests, RSS %.1f MiB, %d fds" % (m, n, samples[-1] / 2**20,
                                                                  fds(proc.pid)), flush=True)
    stop.set()
    for t in threads:
        t.join()
    # every accepted job must end (wait for the queue to drain)
    lost, unfinished = [], list(accepted)
    deadline = time.time() + 300
    while unfinished and time.time() < deadline:
        nxt = []
        for jid in unfinished:
            st, body = req(port, "GET", "/v1/jobs/" + jid, count=False)
            if st == 404 and body and body["error"]["code"] == "not_found":
                lost.append(jid)  # results outlive the soak (TTL 1 h): this one is gone
            elif st == 200 and body["state"] in ("queued", "running"):
                nxt.append(jid)
        unfinished = nxt
        if unfinished:
            time.sleep(1)
    time.sleep(3)
    fd1 = fds(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    lat = sorted(latency)
    codes = {k: v for k, v in sorted(status.items(), key=str) if v}
    half = samples[len(samples) // 2:] or samples
    flat = max(half) <= 1.10 * min(half)
    five = sum(v for k, v in status.items() if isinstance(k, int) and k >= 500)
    print("statuses:", json.dumps(codes))
    print("valid jobs: %d, p50 %.0f ms, p99 %.0f ms" % (len(lat), 1e3 * lat[len(lat) // 2],
                                                        1e3 * lat[int(len(lat) * 0.99)]))
    print("accepted jobs: %d, still queued or running at the end: %d, lost: %d"
          % (len(accepted), len(unfinished), len(lost)))
    print("RSS over the last half: %.1f .. %.1f MiB (%s); fds %d at start, %d at the end"
          % (min(half) / 2**20, max(half) / 2**20, "flat" if flat else "NOT flat", fd0, fd1))
    ok = five == 0 and not unfinished and not lost and flat and fd1 <= fd0
    print("soak:", "ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
