#!/usr/bin/env python3
"""A bounded load client for nppd (standard library only): C concurrent
clients, each on its own keep-alive connection, POST a job with ?wait and
read the answer, for D seconds. Prints jobs/s and latency percentiles.

    client.py --url http://127.0.0.1:8080 [--clients 32] [--seconds 20]
              [--mode cached|uncached] [--tokens 7] [--token TOKEN]

cached: every client sends the same job (all values come from the cache);
uncached: every request has its own token ids (everything is computed)."""
import argparse
import http.client
import json
import threading
import time
import urllib.parse


def job(mode, cid, n, tokens):
    if mode == "cached":
        a = [464 + t for t in range(tokens)]
    else:
        base = (cid * 100003 + n * 7919) % 45000 + 1
        a = [base + t for t in range(tokens)]
    b = list(a)
    b[0] = (b[0] + 9) % 50000
    return {"inputs": [a, b], "preset": {"type": "activation_patch", "node": "a1.head"},
            "outputs": {"top_k": 3}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--mode", choices=["cached", "uncached"], default="cached")
    ap.add_argument("--tokens", type=int, default=7)
    ap.add_argument("--token")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    lat, errors = [], []
    lock = threading.Lock()
    stop_at = time.time() + a.seconds
    headers = {"Content-Type": "application/json"}
    if a.token:
        headers["Authorization"] = "Bearer " + a.token

    def client(cid):
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        n = 0
        while time.time() < stop_at:
            body = json.dumps(job(a.mode, cid, n, a.tokens))
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/jobs?wait=60", body=body, headers=headers)
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException) as e:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
                r = e
            dt = time.perf_counter() - t0
            with lock:
                (lat if ok else errors).append(dt if ok else str(getattr(r, "status", r)))
            n += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - t0
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1e3 if lat else float("nan")
    print("%s: %d jobs in %.1f s = %.1f jobs/s; latency p50 %.1f ms, p99 %.1f ms; errors %d%s"
          % (a.mode, len(lat), took, len(lat) / took, pct(50), pct(99), len(errors),
             (" (e.g. %s)" % errors[0]) if errors else ""))


if __name__ == "__main__":
    main()
