"""A shared server's durability and connections: restarts (kill -9,
SIGTERM, a second nppd, an older store, a lowered limit), stored results
on a bounded disk, slow and tokenless senders, undecodable URLs, draining.
Split from test_shared.py (same helpers) so that ctest runs the two side
by side."""
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (LONG_MODEL, MODEL, NPPD, SLOW_MODEL, TOKENS, free_port, job_doc, long_job,
                      slow_job, validate, wait_state)
from test_shared import SANITIZED, TSAN, rss


# ---- durability ---------------------------------------------------------------------------------

def test_kill9_then_restart_answers_every_accepted_job(make_server, tmp_path):
    state = str(tmp_path / "state")
    srv = make_server("--workers", "1", models={"slow": SLOW_MODEL}, state_dir=state)
    finished = srv.request("POST", "/v1/jobs?wait=60", job_doc(inputs=["a b", "c d"]))[2]
    assert finished["state"] == "done"
    ids = [srv.request("POST", "/v1/jobs", slow_job(60 + k))[2]["id"] for k in range(3)]
    wait_state(srv, ids[0], {"running"})
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    srv.killed = True
    again = make_server("--workers", "1", models={"slow": SLOW_MODEL}, state_dir=state)
    st, _, body = again.request("GET", "/v1/jobs/" + finished["id"])
    assert st == 200 and body["state"] == "done" and body["result"] == finished["result"]
    p = body["progress"]
    assert p["done"] == p["total"] > 0, p  # finished: complete after the restart too
    for jid in ids:
        body = wait_state(again, jid, {"done", "failed", "cancelled"}, timeout=300)
        assert body["state"] == "done" and body["result"]["outputs"]["top_k"], body
        assert body["estimate"]["seconds"] > 0, body["estimate"]  # kept in the store
    assert '"event": "recovered", "queued": 3, "were_running": 1' in "\n".join(again.log_lines())


@pytest.mark.skipif(TSAN, reason="a lock file: no thread hand-off")
def test_a_second_nppd_on_the_same_state_dir_exits_without_touching_it(make_server, tmp_path):
    """The state folder is locked: a second nppd started on it exits 1 at
    once, naming the first one's pid, without recovering (requeueing) the
    job the first one is running, which still runs."""
    state = str(tmp_path / "state")
    srv = make_server("--workers", "1", models={"long": LONG_MODEL}, state_dir=state)
    jid = srv.request("POST", "/v1/jobs", dict(long_job(), outputs={"top_k": 0}))[2]["id"]
    wait_state(srv, jid, {"running"})
    p = subprocess.run([NPPD, "--model", "long=" + LONG_MODEL, "--state-dir", state,
                        "--listen", "127.0.0.1:%d" % free_port()],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "is in use by another nppd (pid %d)" % srv.proc.pid in p.stderr, p.stderr
    assert "recovered" not in p.stderr, p.stderr
    assert srv.request("GET", "/v1/jobs/" + jid)[2]["state"] == "running"
    srv.request("DELETE", "/v1/jobs/" + jid)


@pytest.mark.skipif(TSAN, reason="the store's upgrade at start-up: no thread hand-off")
def test_a_version_1_store_is_upgraded_and_its_jobs_run(make_server, tmp_path):
    """A store written before the time estimate (version 1: no
    est_seconds column) gets the column; its queued job runs."""
    import sqlite3
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(str(state / "jobs.sqlite"))
    db.executescript(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, owner TEXT NOT NULL,"
        " model TEXT NOT NULL, doc TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,"
        " started REAL, ended REAL, expires REAL, est_peak INTEGER NOT NULL,"
        " est_result INTEGER NOT NULL, total INTEGER NOT NULL, nvar INTEGER NOT NULL,"
        " result_bytes INTEGER NOT NULL DEFAULT 0, result_gone INTEGER NOT NULL DEFAULT 0,"
        " err_code INTEGER NOT NULL DEFAULT 0, err_field TEXT, err_message TEXT);"
        "CREATE INDEX jobs_seq ON jobs(seq); PRAGMA user_version=1;")
    jid = "0123456789abcdef0123456789abcdef"
    db.execute("INSERT INTO jobs (id, seq, owner, model, doc, state, created, est_peak, est_result,"
               " total, nvar) VALUES (?, 1, '127.0.0.1', 'slow', ?, 'queued', ?, 1048576, 4096,"
               " 10, 0)", (jid, json.dumps(job_doc(inputs=["a b", "c d"])), time.time()))
    db.commit()
    db.close()
    srv = make_server("--workers", "1", auth=False, models={"slow": SLOW_MODEL},
                      state_dir=str(state))
    body = wait_state(srv, jid, {"done", "failed", "cancelled"})
    assert body["state"] == "done" and "seconds" not in body["estimate"], body
    db = sqlite3.connect(str(state / "jobs.sqlite"))
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
    st, _, body = srv.request("POST", "/v1/jobs?wait=60", job_doc(inputs=["e f", "g h"]))
    assert st == 200 and body["estimate"]["seconds"] > 0, body


def test_sigterm_keeps_queued_jobs_for_the_next_start(make_server, tmp_path):
    state = str(tmp_path / "state")
    srv = make_server("--workers", "1", "--drain-seconds", "0", models={"slow": SLOW_MODEL},
                      state_dir=state)
    ids = [srv.request("POST", "/v1/jobs", slow_job(70 + k))[2]["id"] for k in range(2)]
    wait_state(srv, ids[0], {"running"})
    assert srv.stop() == 0
    again = make_server("--workers", "1", models={"slow": SLOW_MODEL}, state_dir=state)
    for jid in ids:
        assert wait_state(again, jid, {"done", "cancelled", "failed"}, timeout=300)["state"] == "done"


def test_recovered_jobs_over_a_lowered_time_limit_fail_without_running(make_server, tmp_path):
    """Jobs kept across a crash whose stored estimate is over the
    --max-job-seconds the server restarts with fail at once (code limit,
    saying why, no run time even for the one that was running at the
    crash) instead of taking a worker until the limit stops them; those
    under it run; the failures stay failed at the next start."""
    state = str(tmp_path / "state")
    rate = ("--gflops", "1")  # slow_job's ~10 GFLOP: about 10 s estimated
    srv = make_server("--workers", "1", *rate, models={"slow": SLOW_MODEL}, state_dir=state)
    ids = [srv.request("POST", "/v1/jobs", slow_job(110 + k))[2]["id"] for k in range(2)]
    small = srv.request("POST", "/v1/jobs", job_doc(inputs=["a b", "c d"]))[2]
    est = srv.request("GET", "/v1/jobs/" + ids[1])[2]["estimate"]["seconds"]
    assert est > 4 and small["estimate"]["seconds"] < 1, (est, small["estimate"])
    wait_state(srv, ids[0], {"running"})
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    srv.killed = True
    failed = {}
    for start in range(2):
        again = make_server("--workers", "1", "--max-job-seconds", "2", *rate,
                            models={"slow": SLOW_MODEL}, state_dir=state)
        # the start-up log counts the jobs failed now (none at the second)
        assert '"failed": %d,' % (2 - 2 * start) in next(
            line for line in again.log_lines() if '"event": "recovered"' in line)
        for jid in ids:
            body = wait_state(again, jid, {"done", "cancelled", "failed"})
            assert body["state"] == "failed" and body["error"]["code"] == "limit", body
            assert "run_seconds" not in body and "queue_seconds" not in body, body  # never ran
            msg = body["error"]["message"]
            assert "--max-job-seconds of 2 s" in msg and "lowered" in msg, msg
            assert "%.3g s" % body["estimate"]["seconds"] in msg, msg
            assert failed.setdefault(jid, body["error"]) == body["error"]  # the same after restart
        assert wait_state(again, small["id"], {"done", "cancelled", "failed"})["state"] == "done"
        assert again.stop() == 0


def test_recovered_jobs_of_a_model_no_longer_served_fail_saying_so(make_server, tmp_path):
    """Restarted without the model its kept jobs were for, nppd fails them
    at once (field model, saying why) and its start-up log counts them."""
    state = str(tmp_path / "state")
    srv = make_server("--workers", "1", models={"long": LONG_MODEL}, state_dir=state)
    ids = [srv.request("POST", "/v1/jobs", long_job(120 + k))[2]["id"] for k in range(2)]
    wait_state(srv, ids[0], {"running"})  # for seconds
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    srv.killed = True
    again = make_server(models={"tiny": MODEL}, state_dir=state)
    for jid in ids:
        body = wait_state(again, jid, {"done", "cancelled", "failed"})
        assert body["state"] == "failed" and body["error"]["field"] == "model", body
        assert "not served" in body["error"]["message"], body
    line = next(x for x in again.log_lines() if '"event": "recovered"' in x)
    assert '"failed": 2,' in line, line


def test_results_on_disk_are_bounded_oldest_first(make_server):
    """Past --results-disk-mb the oldest results of the user whose results
    take the most room go first: alice's many large results push out her
    own oldest, never bob's small one, which is older than all of them."""
    srv = make_server("--results-disk-mb", "1", "--max-result-mb", "1")
    bob = TOKENS["bob"]
    small = srv.request("POST", "/v1/jobs?wait=60", {"inputs": [[11, 12, 13]]}, token=bob)[2]["id"]
    job = lambda k: {"inputs": [[11 + k, 12, 13]], "outputs": {"logits": True, "top_k": 0}}
    ids = [srv.request("POST", "/v1/jobs?wait=60", job(k))[2]["id"] for k in range(8)]
    st, _, body = srv.request("GET", "/v1/jobs/" + ids[0])
    assert st == 404 and body["error"]["code"] == "result_removed", body
    assert "--results-disk-mb" in body["error"]["message"] and "oldest" in body["error"]["message"]
    validate("/v1/jobs/{id}", "GET", st, body)
    st, _, body = srv.request("GET", "/v1/jobs/" + ids[-1])
    assert st == 200 and "logits" in body["result"]["outputs"]
    st, _, body = srv.request("GET", "/v1/jobs/" + small, token=bob)
    assert st == 200 and body["result"]["outputs"]["top_k"], body
    disk = sum(os.path.getsize(os.path.join(srv.state_dir, "results", f))
               for f in os.listdir(os.path.join(srv.state_dir, "results")))
    assert disk <= 1 << 20


def test_a_result_just_stored_is_never_the_one_removed(make_server):
    """Bob's first result is larger than alice's two together: it is not
    removed the moment it is stored (it would be the largest holder's
    oldest); alice's go instead."""
    srv = make_server("--results-disk-mb", "1", "--max-result-mb", "1")
    small = lambda k: {"inputs": [[11 + k, 12, 13]], "outputs": {"logits": True, "top_k": 0}}
    alice = [srv.request("POST", "/v1/jobs?wait=60", small(k))[2] for k in range(2)]
    big = {"inputs": [[21, 22, 23]], "outputs": {"positions": "all", "logits": True, "top_k": 0}}
    st, _, bob = srv.request("POST", "/v1/jobs?wait=60", big, token=TOKENS["bob"])
    assert st == 200 and bob["result_bytes"] > sum(a["result_bytes"] for a in alice), bob
    st, _, body = srv.request("GET", "/v1/jobs/" + bob["id"], token=TOKENS["bob"])
    assert st == 200 and body["result"]["outputs"]["logits"], body
    assert [srv.request("GET", "/v1/jobs/" + a["id"])[2]["error"]["code"] for a in alice] == \
        ["result_removed"] * 2


def test_finished_results_leave_memory(make_server):
    srv = make_server("--cache-mb", "0")
    job = lambda k: {"inputs": [[11 + k % 500, 12, 13, 14]], "outputs": {"logits": True,
                                                                         "positions": "all"}}
    for k in range(5):  # warm up
        srv.request("POST", "/v1/jobs?wait=60", job(k))
    time.sleep(0.3)
    before = rss(srv.proc.pid)
    for k in range(5, 45):  # 40 results of 800 KB each stay stored
        assert srv.request("POST", "/v1/jobs?wait=60", job(k))[0] == 200
    time.sleep(0.3)
    assert SANITIZED or rss(srv.proc.pid) - before < (16 << 20), (rss(srv.proc.pid) - before) >> 20


# ---- connections and the HTTP layer -------------------------------------------------------------

def raw(port, data, timeout=5):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    s.close()
    return out


def test_undecodable_url_gets_a_json_400(server):
    for path in (b"/\xff", b"/v1/jobs/\xc3\x28", b"/%ff%fe"):
        out = raw(server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), out[:200]
        assert b"application/json" in head
        err = json.loads(body)["error"]
        assert err["code"] == "invalid_url" and err["field"] == "url"


def test_slow_senders_cannot_take_every_connection(make_server):
    srv = make_server(auth=False)
    addrs = ["127.0.0.%d" % (2 + k) for k in range(40)]
    socks, lock, stop = [], threading.Lock(), threading.Event()

    def open_some(addr, n):
        for _ in range(n):
            try:
                s = socket.socket()
                s.bind((addr, 0))
                s.settimeout(2)
                s.connect(("127.0.0.1", srv.port))
                s.sendall(b"G")
                with lock:
                    socks.append(s)
            except OSError:
                pass
    threads = [threading.Thread(target=open_some, args=(a, 50)) for a in addrs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def trickle():
        while not stop.wait(5):
            with lock:
                for s in list(socks):
                    try:
                        s.send(b"E")
                    except OSError:
                        pass
    tt = threading.Thread(target=trickle)
    tt.start()
    try:
        time.sleep(1)
        for _ in range(3):
            t0 = time.time()
            st = srv.request("GET", "/healthz", timeout=5)[0]
            took = time.time() - t0
            assert st == 200 and took < 2, took
            time.sleep(0.5)
        text = srv.request("GET", "/metrics")[2].decode()
        shut = int(re.search(r"npp_connections_shut_total (\d+)", text).group(1))
        assert len(socks) >= 1900 and shut >= len(socks) - 1024, (len(socks), shut)
    finally:
        stop.set()
        tt.join()
        for s in socks:
            s.close()


def test_a_body_is_read_only_with_a_token_and_within_its_deadline(make_server):
    """A request without a valid token, or to a route that takes no body, is
    answered at its head and the connection closed, its body never read (so
    nobody can hold connections with slow bodies but a token holder's POST);
    a token holder's POST body that trickles in is cut at --body-timeout, and
    the server serves on."""
    srv = make_server("--body-timeout", "2")
    head = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n%s\r\n{\"inputs\": [\""

    def first_answer(s):
        try:
            return s.recv(200)
        except (ConnectionResetError, socket.timeout):
            return b""
    # no token, a wrong one; an open route (no token needed) and a GET, neither of
    # which takes a body: all answered at once, whatever body they announce
    for req, status in ((head % b"", b"401"),
                        (head % b"Authorization: Bearer not-a-token\r\n", b"403"),
                        (head.replace(b"/v1/jobs", b"/healthz") % b"", b"405"),
                        (head.replace(b"POST /v1/jobs", b"GET /healthz") % b"", b"200"),
                        (head.replace(b"POST", b"GET") % (b"Authorization: Bearer %s\r\n"
                                                          % TOKENS["bob"].encode()), b"200")):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.settimeout(5)
        t0 = time.time()
        s.sendall(req)
        got = first_answer(s)
        assert got.startswith(b"HTTP/1.1 " + status) and b"Connection: close" in got, (req, got)
        while (got.count(b"\n") < 2 or not got.endswith(b"\n")) and time.time() - t0 < 5:
            got += first_answer(s)  # the rest of the answer
        assert first_answer(s) == b"", "the connection stayed open after the answer"
        assert time.time() - t0 < 2, time.time() - t0
        s.close()
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(head % (b"Authorization: Bearer %s\r\n" % TOKENS["bob"].encode()))
    s.settimeout(0.5)
    t0, got, closed = time.time(), b"", False
    while time.time() - t0 < 10 and not closed:
        try:
            s.send(b"a")
            chunk = s.recv(200)
            got += chunk
            closed = not chunk
        except socket.timeout:
            pass
        except OSError:
            closed = True
    took = time.time() - t0
    s.close()
    assert closed and not got.startswith(b"HTTP/1.1 2"), (closed, got)
    assert 1.5 < took < 5, took
    assert srv.request("GET", "/v1/jobs")[0] == 200


def test_503_while_draining(make_server):
    # a job that outlasts the requests below (about a second) by a margin:
    # 8 x 1000 tokens on the 1,024-position model, ~2 s (slow_job takes
    # 0.3 s on a fast machine, and nppd exits as soon as it ends)
    srv = make_server("--drain-seconds", "60", models={"slow": LONG_MODEL})
    ids = [[(7 * i + 13 * t + 90000) % 50000 + 1 for t in range(1000)] for i in range(8)]
    job = dict(slow_job(), inputs=ids)
    jid = srv.request("POST", "/v1/jobs", job)[2]["id"]
    wait_state(srv, jid, {"running"})
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    for _ in range(3):  # new connections, while the running job finishes
        st, h, body = srv.request("POST", "/v1/jobs", job_doc())
        assert st == 503 and body["error"]["code"] == "draining" and h["Retry-After"]
        st, _, body = srv.request("POST", "/v1/tokenize", {"text": "a"})
        assert st == 503 and body["error"]["code"] == "draining"
        st, _, body = srv.request("GET", "/v1/jobs/" + jid)
        assert st == 200
        time.sleep(0.2)
    assert srv.proc.wait(30) == 0
