"""docker/nginx.conf in front of two nppd replicas on loopback (no Docker):
job ids route to their owner, affinity keys meet a warm cache, event streams
and ?wait pass unbuffered, each replica's /metrics is reachable, slow
senders are nginx's problem, and a replica going down costs new work
nothing but a retry."""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import MODEL, Server, free_port, job_doc

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CONF = os.path.join(os.path.dirname(__file__), "..", "..", "docker", "nginx.conf")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "clients", "python"))

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")


def request(port, method, path, body=None, headers=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    ctype = r.getheader("Content-Type", "")
    return r.status, json.loads(data) if ctype.startswith("application/json") else data


@pytest.fixture
def lab():
    """nginx on a free port in front of replicas r1 and r2."""
    tmp = tempfile.TemporaryDirectory()
    p1, p2, p0 = free_port(), free_port(), free_port()
    r1 = Server("--replica", "r1", auth=False, models={"tiny": MODEL}, listen_port=p1)
    r2 = Server("--replica", "r2", auth=False, models={"tiny": MODEL}, listen_port=p2)
    conf = open(CONF).read().replace("127.0.0.1:8081", "127.0.0.1:%d" % p1)
    conf = conf.replace("127.0.0.1:8082", "127.0.0.1:%d" % p2).replace("listen 8080;", "listen 127.0.0.1:%d;" % p0)
    path = os.path.join(tmp.name, "nginx.conf")
    open(path, "w").write(conf)
    ngx = subprocess.Popen([NGINX, "-c", path, "-p", tmp.name, "-g", "daemon off;"],
                           stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if request(p0, "GET", "/healthz")[0] == 200:
                break
        except OSError:
            time.sleep(0.05)
    yield {"port": p0, "r1": r1, "r2": r2}
    ngx.send_signal(signal.SIGQUIT)
    ngx.wait(10)
    for r in (r1, r2):
        if r.proc.poll() is None:
            assert r.stop() == 0
    tmp.cleanup()


def test_ids_route_to_their_replica_and_affinity_meets_a_warm_cache(lab):
    port = lab["port"]
    job = job_doc(inputs=["The capital of Spain is", "The capital of Italy is"])
    st, a = request(port, "POST", "/v1/jobs?wait=60", job, {"X-Npp-Affinity": "spain"})
    assert st == 200 and re.fullmatch(r"r[12]-[0-9a-f]{32}", a["id"]), a
    st, b = request(port, "POST", "/v1/jobs?wait=60", job, {"X-Npp-Affinity": "spain"})
    assert st == 200 and b["id"].split("-")[0] == a["id"].split("-")[0]
    assert b["result"]["stats"]["values_computed"] == 0  # the same replica's cache
    # every replica's jobs answer through nginx, at their owner
    owners = set()
    for k in range(12):
        st, j = request(port, "POST", "/v1/jobs", job_doc(inputs=[[11 + k, 12, 13], [14, 15, 16]]))
        assert st == 202
        owners.add(j["id"].split("-")[0])
        for _ in range(200):
            st, got = request(port, "GET", "/v1/jobs/" + j["id"])
            assert st == 200 and got["id"] == j["id"]
            if got["state"] == "done":
                break
            time.sleep(0.02)
        assert got["state"] == "done"
    assert owners == {"r1", "r2"}, owners  # least-connections spread them
    st, err = request(port, "GET", "/v1/jobs/r9-%032x" % 1)
    assert st == 404
    # an event stream, unbuffered, to its end
    st, raw = request(port, "GET", "/v1/jobs/%s/events" % a["id"])
    assert st == 200 and b"event: done" in raw
    # each replica's own endpoints
    for r in ("r1", "r2"):
        st, text = request(port, "GET", "/replicas/%s/metrics" % r)
        assert st == 200 and b"npp_jobs_finished_total" in text
        st, lst = request(port, "GET", "/replicas/%s/v1/jobs" % r)
        assert st == 200 and all(j["id"].startswith(r + "-") for j in lst["jobs"])


def test_a_replica_down_costs_new_work_a_retry(lab):
    import npp
    port = lab["port"]
    lab["r2"].proc.send_signal(signal.SIGKILL)
    lab["r2"].proc.wait()
    lab["r2"].killed = True
    c = npp.connect("http://127.0.0.1:%d" % port)
    m = c.model()
    for k in range(6):  # whatever the affinity, nginx retries the live replica
        res = m.run([[21 + k, 22, 23], [24, 25, 26]], outputs={"top_k": 1})
        assert res.top_k()


def test_slow_senders_meet_nginx_not_nppd(lab):
    port = lab["port"]
    socks = []
    for k in range(40):
        for _ in range(50):
            try:
                s = socket.socket()
                s.bind(("127.0.0.%d" % (2 + k), 0))
                s.settimeout(2)
                s.connect(("127.0.0.1", port))
                s.sendall(b"G")
                socks.append(s)
            except OSError:
                pass
    try:
        time.sleep(1)
        for _ in range(3):
            t0 = time.time()
            st, _ = request(port, "GET", "/healthz", timeout=5)
            assert st == 200 and time.time() - t0 < 2
    finally:
        for s in socks:
            s.close()
    assert len(socks) >= 1900
