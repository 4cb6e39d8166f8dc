"""Black-box tests of nppd: every endpoint, every error status with its body,
responses valid against api/openapi.yaml, shared cache, cancellation,
disconnects, limits and graceful shutdown (a user's share of the workers
and its turn: test_shared.py)."""
import copy
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import (LONG_MODEL, MODEL, NPP, SLOW_MODEL, TOKENS, free_port, in_thread, job_doc,
                      long_job, slow_job, validate, wait_state)

SANITIZED = "ASAN_OPTIONS" in os.environ or "TSAN_OPTIONS" in os.environ
# Under ThreadSanitizer (the nppd start alone takes ~4 s) the tests of what
# one thread does by itself are skipped: the other tests cover the hand-offs.
TSAN = "TSAN_OPTIONS" in os.environ


# ---- health, docs, auth ------------------------------------------------------------------

def test_health_ready_openapi(server):
    st, _, body = server.request("GET", "/healthz", token=None)
    assert st == 200 and body == {"status": "ok"}
    validate("/healthz", "GET", st, body)
    st, _, body = server.request("GET", "/readyz", token=None)
    assert st == 200 and body["status"] == "ready"
    validate("/readyz", "GET", st, body)
    st, h, body = server.request("GET", "/openapi.yaml", token=None)
    assert st == 200 and b"openapi: 3.1.0" in body and h["Content-Type"] == "application/yaml"


def test_auth(server):
    st, h, body = server.request("GET", "/v1/models", token=None)
    assert st == 401 and body["error"]["code"] == "unauthorized"
    assert h["WWW-Authenticate"].startswith("Bearer")
    validate("/v1/models", "GET", st, body)
    st, _, body = server.request("GET", "/v1/models", token="wrong-token")
    assert st == 403 and body["error"]["code"] == "forbidden"
    assert body["error"]["field"] == "Authorization"
    validate("/v1/models", "GET", st, body)
    st, _, body = server.request("GET", "/metrics", token=None)
    assert st == 401
    for tok in TOKENS.values():
        assert server.request("GET", "/v1/models", token=tok)[0] == 200


def test_models_and_tokenize(server):
    st, _, body = server.request("GET", "/v1/models")
    assert st == 200
    validate("/v1/models", "GET", st, body)
    m = body["models"][0]
    assert m["name"] == "tiny" and m["device"] == "cpu" and m["dtype"] == "f32"
    assert m["config"]["n_layer"] == 2 and m["memory"]["weights_bytes"] > 0
    st, _, body = server.request("POST", "/v1/tokenize", {"text": "Hello world, it's me"})
    assert st == 200
    validate("/v1/tokenize", "POST", st, body)
    want = json.loads(subprocess.run([NPP, "tokenize", "--model", MODEL, "--json",
                                      "Hello world, it's me"], capture_output=True,
                                     text=True, check=True).stdout)
    assert body["ids"] == want and "".join(body["tokens"]) == "Hello world, it's me"
    st, _, body = server.request("POST", "/v1/tokenize", {"text": 5})
    assert st == 422 and body["error"]["field"] == "text"
    validate("/v1/tokenize", "POST", st, body)
    st, _, body = server.request("POST", "/v1/tokenize", {"text": "x", "model": "gpt9"})
    assert st == 404 and body["error"]["code"] == "unknown_model"
    validate("/v1/tokenize", "POST", st, body)
    st, _, body = server.request("POST", "/v1/tokenize", {"text": "x", "txet": "y"})
    assert st == 422 and body["error"]["field"] == "txet" and "unknown field" in body["error"]["message"]


# ---- jobs ----------------------------------------------------------------------------------

def test_job_lifecycle(server):
    st, h, body = server.request("POST", "/v1/jobs", job_doc())
    assert st == 202 and h["Location"] == "/v1/jobs/" + body["id"]
    validate("/v1/jobs", "POST", st, body)
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    done = wait_state(server, body["id"], {"done"})
    validate("/v1/jobs/{id}", "GET", 200, done)
    res = done["result"]
    assert res["rules"]["which"] == [{"match": "**/a1/**", "input": 1}]
    assert len(res["outputs"]["top_k"][0][0]["tokens"]) == 3
    assert done["progress"]["done"] == done["progress"]["total"]
    # the result equals the in-process CLI's
    with open(server.tmp.name + "/job.json", "w") as f:
        json.dump(job_doc(), f)
    cli = json.loads(subprocess.run([NPP, "run", "--model", MODEL, server.tmp.name + "/job.json"],
                                    capture_output=True, text=True, check=True).stdout)
    assert cli["outputs"]["top_k"] == res["outputs"]["top_k"]
    # ?wait answers with the result
    st, h, body = server.request("POST", "/v1/jobs?wait=30", job_doc(outputs={"top_k": 1}))
    assert st == 200 and body["state"] == "done" and "result" in body
    validate("/v1/jobs", "POST", st, body)
    # the graph
    st, h, svg = server.request("GET", "/v1/jobs/%s/graph.svg" % body["id"])
    assert st == 200 and h["Content-Type"] == "image/svg+xml"
    assert any(e.text == "a1.head" for e in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text"))
    st, _, err = server.request("GET", "/v1/jobs/%s/graph.svg?variant=1" % body["id"])
    assert st == 400 and err["error"]["field"] == "variant" and "not a sweep" in err["error"]["message"]
    validate("/v1/jobs/{id}/graph.svg", "GET", st, err)
    # events of a finished job: one final event, then the stream ends
    st, h, raw = server.request("GET", "/v1/jobs/%s/events" % body["id"])
    assert st == 200 and h["Content-Type"] == "text/event-stream"
    events = re.findall(rb"event: (\w+)\ndata: (.*)\n\n", raw)
    assert [e for e, _ in events] == [b"done"]
    validate("/v1/jobs/{id}", "GET", 200, json.loads(events[0][1]))


def test_sweep(server):
    """A sweep through the service: one result per variant, each equal to
    the variant run as a job of its own; each variant's path tree."""
    variants = [{"name": "a0.head%d" % h,
                 "preset": {"type": "path_patch", "senders": ["a0.head%d" % h],
                            "receivers": ["a1.head2.k"]}} for h in range(4)]
    base = job_doc(outputs={"top_k": 2}, metric={"type": "logprob", "token": " Madrid"})
    del base["branch"], base["which"]
    st, _, body = server.request("POST", "/v1/jobs?wait=60", dict(base, sweep=variants))
    assert st == 200 and body["state"] == "done", body
    validate("/v1/jobs", "POST", st, body)
    res = body["result"]
    assert [v["name"] for v in res["sweep"]] == [v["name"] for v in variants]
    assert "rules" not in res and "outputs" not in res
    for v, w in zip(res["sweep"], variants):
        st, _, alone = server.request("POST", "/v1/jobs?wait=60", dict(base, preset=w["preset"]))
        assert st == 200
        assert v["metric"] == alone["result"]["metric"] and v["rules"] == alone["result"]["rules"]
        assert alone["result"]["stats"]["values_computed"] == 0  # the sweep computed them all
    svgs = []
    for i in range(4):
        st, h, svg = server.request("GET", "/v1/jobs/%s/graph.svg?variant=%d" % (body["id"], i))
        assert st == 200 and h["Content-Type"] == "image/svg+xml"
        svgs.append(svg)
    assert len(set(svgs)) == 4  # a different sender in each tree
    for bad in ("4", "-1", "x", ""):
        st, _, err = server.request("GET", "/v1/jobs/%s/graph.svg?variant=%s" % (body["id"], bad))
        assert st == 400 and err["error"]["field"] == "variant" and "0..3" in err["error"]["message"]
    st, _, err = server.request("POST", "/v1/jobs", dict(job_doc(), sweep=variants))
    assert st == 422 and err["error"]["field"] == "sweep"
    validate("/v1/jobs", "POST", st, err)


def test_rows_read_are_their_own_cache_entries(fresh_server):
    """A job that reads its runs' last position only computes the top of
    the model there (stats.tail_from); those values are cached apart from
    the whole ones, so a later job asking for hidden states on the same
    inputs computes the top again, whole, and both agree."""
    base = job_doc(metric={"type": "logprob", "token": " Madrid"}, outputs={"top_k": 0})
    st, _, a = fresh_server.request("POST", "/v1/jobs?wait=60", base)
    assert st == 200 and a["state"] == "done", a
    T = a["result"]["tokens"]
    assert a["result"]["stats"]["tail_from"] == T - 1
    whole = dict(base, outputs={"top_k": 0, "hidden_states": True})
    st, _, b = fresh_server.request("POST", "/v1/jobs?wait=60", whole)
    assert st == 200 and b["state"] == "done", b
    sb = b["result"]["stats"]
    assert sb["tail_from"] == 0
    # the patched run's last layer and ln_f, whole: an attention, its sum,
    # an MLP, its sum and ln_f at least
    assert sb["values_computed"] >= 5 and sb["values_cached"] > 0, sb
    hs = b["result"]["outputs"]["hidden_states"]
    assert hs["shape"] == [1, T, 64], hs["shape"]
    assert b["result"]["metric"]["mean"] == pytest.approx(a["result"]["metric"]["mean"],
                                                          rel=1e-5, abs=1e-5)
    st, _, c = fresh_server.request("POST", "/v1/jobs?wait=60", base)  # the first job again
    assert st == 200 and c["result"]["stats"]["values_computed"] == 0
    assert c["result"]["stats"]["tail_from"] == T - 1  # its rows, from the cache
    assert c["result"]["metric"] == a["result"]["metric"]


def test_discover_and_its_circuit(make_server):
    """A discover job through the service: GET circuit.svg draws its circuit
    (the edges connected to ln_final, each with its score) and the
    faithfulness curve; a circuit job's own edges; a plain job has none."""
    srv = make_server(models={"m": MODEL})
    base = {"inputs": ["The capital of Spain is", "The capital of Italy is"],
            "metric": {"type": "logit_diff", "target": " Madrid", "baseline": " Rome"},
            "outputs": {"top_k": 0}}
    st, _, body = srv.request("POST", "/v1/jobs?wait=60", dict(
        base, discover={"method": "eap-ig", "steps": 3, "top_n": [3, 10, 110], "verify": 2}))
    assert st == 200 and body["state"] == "done", body
    validate("/v1/jobs", "POST", st, body)
    d = body["result"]["discover"]
    assert [p["n"] for p in d["curve"]] == [3, 10, 110] and len(d["verify"]) == 2
    assert abs(d["curve"][-1]["faithfulness"] - 1) < 1e-5  # every edge: the clean run
    st, h, svg = srv.request("GET", "/v1/jobs/%s/circuit.svg" % body["id"])
    assert st == 200 and h["Content-Type"] == "image/svg+xml"
    root = ET.fromstring(svg)
    edges = [e for e in root.iter() if e.get("class") == "edge"]
    points = [e for e in root.iter() if e.get("class") == "point"]
    scores = {tuple(e[:2]): e[2] for e in body["result"]["attribution"]["edges"]}
    assert edges and len(points) == 3
    for e in edges:  # every edge drawn is one of the scored ones, with its score
        u, v = e.find("{http://www.w3.org/2000/svg}title").text.split(":")[0].split(" -> ")
        assert abs(float(e.get("data-score")) - scores[(u, v)]) <= 1e-5 * abs(scores[(u, v)])
    assert any(e.find("{http://www.w3.org/2000/svg}title").text.split(" -> ")[1].startswith(
        "ln_final") for e in edges)
    # a circuit job: its own edges, unscored
    st, _, c = srv.request("POST", "/v1/jobs?wait=60", dict(
        base, circuit={"edges": [["a0.head1", "a1.head2.k"], ["a1.head2", "ln_final"],
                                 ["emb", "a0.head3.q"]]}))
    st, _, svg = srv.request("GET", "/v1/jobs/%s/circuit.svg" % c["id"])
    drawn = [e for e in ET.fromstring(svg).iter() if e.get("class") == "edge"]
    assert st == 200 and len(drawn) == 2  # emb -> a0.head3.q does not reach ln_final
    st, _, plain = srv.request("POST", "/v1/jobs?wait=60", base)
    st, _, err = srv.request("GET", "/v1/jobs/%s/circuit.svg" % plain["id"])
    assert st == 404 and err["error"]["code"] == "no_circuit", err
    validate("/v1/jobs/{id}/circuit.svg", "GET", st, err)


def test_grid_and_its_heatmap(make_server):
    """A grid job through the service: its result's grid equals the cells
    run one by one, GET heatmap.svg draws it (one rect per cell, its value),
    and every other case answers with a reason."""
    srv = make_server(models={"m": MODEL, "slow": SLOW_MODEL})
    base = {"inputs": ["The capital of Spain is", "The capital of Italy is"],
            "metric": {"type": "logit_diff", "target": " Madrid", "baseline": " Rome",
                       "normalize": True}, "outputs": {"top_k": 1}}
    grid = {"node": "a{layer}.head{head}", "layer": "all", "head": [0, 2, 3],
            "preset": {"type": "activation_patch"}}
    st, _, body = srv.request("POST", "/v1/jobs?wait=60", dict(base, grid=grid))
    assert st == 200 and body["state"] == "done", body
    validate("/v1/jobs", "POST", st, body)
    g = body["result"]["grid"]
    assert g["shape"] == [2, 3] and g["names"][1][1] == "a1.head2" and g["normalized"]
    st, _, one = srv.request("POST", "/v1/jobs?wait=60",
                             dict(base, preset={"type": "activation_patch", "node": "a1.head2"}))
    assert abs(one["result"]["metric"]["normalized"] - g["values"][1][1]) < 1e-6
    st, h, svg = srv.request("GET", "/v1/jobs/%s/heatmap.svg" % body["id"])
    assert st == 200 and h["Content-Type"] == "image/svg+xml"
    cells = [e for e in ET.fromstring(svg).iter() if e.get("class") == "cell"]
    assert len(cells) == 6
    got = {(int(c.get("data-row")), int(c.get("data-col"))): float(c.get("data-value")) for c in cells}
    assert all(abs(got[(r, c)] - g["values"][r][c]) < 1e-6 for r in range(2) for c in range(3))
    # not a grid; not done yet; a grid too big for one job
    # names with markup, control characters and U+FFFF: still well-formed XML (U+FFFD)
    odd = dict(base, grid={"node": "x\u0001\uffff<&{layer}", "layer": "all",
                           "preset": {"type": "activation_patch", "node": "a{layer}"}})
    st, _, body = srv.request("POST", "/v1/jobs?wait=60", odd)
    assert st == 200 and body["state"] == "done", body
    st, _, svg = srv.request("GET", "/v1/jobs/%s/heatmap.svg" % body["id"])
    assert st == 200 and "x\ufffd\ufffd<&1" in "".join(ET.fromstring(svg).itertext()), svg[:400]
    st, _, err = srv.request("GET", "/v1/jobs/%s/heatmap.svg" % one["id"])
    assert st == 404 and err["error"]["code"] == "no_heatmap", err
    validate("/v1/jobs/{id}/heatmap.svg", "GET", st, err)
    slow = slow_job(7)
    slow["model"] = "slow"
    st, _, running = srv.request("POST", "/v1/jobs", slow)
    st, _, err = srv.request("GET", "/v1/jobs/%s/heatmap.svg" % running["id"])
    assert st == 409 and err["error"]["code"] == "not_done", err
    validate("/v1/jobs/{id}/heatmap.svg", "GET", st, err)
    srv.request("DELETE", "/v1/jobs/" + running["id"])
    big = {"model": "slow", "inputs": [list(range(1, 34)), list(range(2, 35))],
           "metric": {"type": "logit", "token": 5},
           "grid": {"layer": "all", "head": "all", "pos": "all",
                    "preset": {"type": "activation_patch", "node": "a{layer}.head{head}",
                               "positions": ["{pos}"]}}}
    st, _, err = srv.request("POST", "/v1/jobs", big)
    assert st == 422 and err["error"]["field"] == "grid" and "over 1024 cells" in err["error"]["message"]


def test_events_stream_progress(make_server):
    srv = make_server(models={"slow": SLOW_MODEL})
    st, _, body = srv.request("POST", "/v1/jobs", slow_job(1))
    assert st == 202
    st, _, raw = srv.request("GET", "/v1/jobs/%s/events" % body["id"], timeout=300)
    events = re.findall(rb"event: (\w+)\ndata: (.*)\n\n", raw)
    names = [e for e, _ in events]
    assert names[-1] == b"done" and names.count(b"progress") >= 2, names
    prog = [json.loads(d) for e, d in events if e == b"progress"]
    dones = [p["done"] for p in prog]
    assert dones == sorted(dones) and prog[-1]["total"] > 0


def test_events_of_a_queued_job(make_server):
    """A stream opened while the job waits sends its state once (not in a
    loop) with what it waits for, again when that changes (the jobs ahead
    of it cancelled), and the final event when the job is cancelled in the
    queue."""
    srv = make_server("--workers", "1", models={"slow": LONG_MODEL}, auth=False)
    ahead = [srv.request("POST", "/v1/jobs", long_job())[2]["id"]]  # runs until cancelled
    ahead += [srv.request("POST", "/v1/jobs", slow_job(60 + i))[2]["id"] for i in range(3)]
    queued = srv.request("POST", "/v1/jobs", slow_job(69))[2]["id"]
    wait_state(srv, ahead[0], {"running"})
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"GET /v1/jobs/%s/events HTTP/1.1\r\nHost: x\r\n\r\n" % queued.encode())

    def read(until, seconds):
        s.settimeout(0.1)
        raw, t0 = b"", time.time()
        while time.time() - t0 < seconds and not until(raw):
            try:
                chunk = s.recv(65536)
                assert chunk, "the stream ended: %r" % raw[-300:]
                raw += chunk
            except socket.timeout:
                pass
        return raw

    def progress(raw):
        return [json.loads(d) for e, d in re.findall(rb"event: (\w+)\r?\ndata: (.*)\n", raw)
                if e == b"progress"]

    raw = read(lambda raw: False, 0.5)
    assert [p.get("waiting_for") for p in progress(raw)] == ["earlier_jobs"], raw[:600]
    assert progress(raw)[0]["state"] == "queued"
    for j in ahead[1:]:  # the queued ones ahead: it is next, and waits for the busy worker
        assert srv.request("DELETE", "/v1/jobs/" + j)[2]["state"] == "cancelled"
    raw = read(lambda raw: False, 1.0)
    assert [p.get("waiting_for") for p in progress(raw)] == ["worker"], raw[:600]
    assert srv.request("DELETE", "/v1/jobs/" + queued)[2]["state"] == "cancelled"
    raw = read(lambda raw: b"event: cancelled" in raw, 10)
    assert b"event: cancelled" in raw and not progress(raw), raw[-300:]
    s.close()
    assert srv.request("GET", "/v1/jobs/" + ahead[0])[2]["state"] == "running"
    srv.request("DELETE", "/v1/jobs/" + ahead[0])


def test_overlapping_jobs_share_values_safely(make_server):
    """Jobs that share some values and not others, many at once, with no
    cache to keep what they share and some cancelled: a job computing a
    value another abandoned must not use an input it already released."""
    srv = make_server("--workers", "3", "--cache-mb", "0", models={"slow": SLOW_MODEL},
                      auth=False)

    def doc(k):
        ids = [[(7 * i + 13 * t) % 50000 + 1 for t in range(120)] for i in range(4)]
        layer = 1 + (k // 8) % 3
        receivers = (["a%d.head%d.%s" % (layer, k * 3 % 8, "qkv"[k % 3]), "ln_final"] if k % 2
                     else ["a%d.head%d" % (layer, k * 5 % 8)])
        return {"model": "slow", "inputs": ids, "outputs": {"top_k": 1},
                "preset": {"type": "path_patch", "senders": ["a0.head%d" % (k % 8)],
                           "receivers": receivers}}

    def cancel_soon(k):
        jid = srv.request("POST", "/v1/jobs", doc(k))[2]["id"]
        time.sleep(0.05 * (k % 5))
        srv.request("DELETE", "/v1/jobs/" + jid)

    for rnd in range(2):
        threads = [in_thread(cancel_soon, k) if k % 4 == 0 else
                   in_thread(srv.request, "POST", "/v1/jobs?wait=300", doc(k)) for k in range(12)]
        for k, (t, out) in enumerate(threads):
            t.join()
            assert "error" not in out, out["error"]
            if k % 4:
                st, _, body = out["value"]
                assert st == 200 and body["state"] == "done", body
    assert srv.proc.poll() is None and srv.request("GET", "/healthz")[0] == 200


def test_job_errors(server):
    # 400: malformed JSON, duplicate keys, bad wait
    st, _, body = server.request("POST", "/v1/jobs", "{not json")
    assert st == 400 and body["error"]["code"] == "invalid_json" and body["error"]["field"] == "body"
    validate("/v1/jobs", "POST", st, body)
    st, _, body = server.request("POST", "/v1/jobs", '{"inputs": ["a"], "inputs": ["b"]}')
    assert st == 400 and "duplicate" in body["error"]["message"]
    for bad in ("abc", "0x10", "1e3", "-1", "3601"):  # plain decimal seconds, 0..3600
        st, _, body = server.request("POST", "/v1/jobs?wait=" + bad, job_doc())
        assert st == 400 and body["error"]["field"] == "wait", (bad, body)
    # 422: the engine's refusal with its field
    st, _, body = server.request("POST", "/v1/jobs", job_doc(which=[{"match": "**/a99/**", "input": 1}]))
    assert st == 422 and body["error"]["field"] == "which[0].match"
    assert "'a99' matches no node" in body["error"]["message"]
    validate("/v1/jobs", "POST", st, body)
    st, _, body = server.request("POST", "/v1/jobs", job_doc(inputs=["a b", "c"]))
    assert st == 422 and body["error"]["field"] == "inputs[1]"
    st, _, body = server.request("POST", "/v1/jobs", job_doc(limits={"max_values": 3}))
    assert st == 422 and body["error"]["code"] == "plan_too_large" and "needs" in body["error"]["message"]
    # 404: unknown job, unknown path, unknown model
    st, _, body = server.request("GET", "/v1/jobs/0123456789abcdef0123456789abcdef")
    assert st == 404 and body["error"]["code"] == "not_found"
    validate("/v1/jobs/{id}", "GET", st, body)
    assert server.request("GET", "/v2/nothing")[0] == 404
    st, _, body = server.request("POST", "/v1/jobs", job_doc(model="gpt9"))
    assert st == 404 and body["error"]["field"] == "model"
    # 405
    st, h, body = server.request("PUT", "/v1/jobs")
    assert st == 405 and h["Allow"] == "GET, POST"
    validate("/v1/jobs", "POST", st, body)


@pytest.mark.skipif(TSAN, reason="the HTTP thread alone: no thread hand-off")
def test_body_limit(make_server):
    srv = make_server("--max-body-kb", "2")
    big = job_doc(comment="x" * 5000)
    st, _, body = srv.request("POST", "/v1/jobs", big)
    assert st == 413 and body["error"]["code"] == "payload_too_large"
    validate("/v1/jobs", "POST", st, body)
    # without Content-Length (chunked): refused after reading
    c = srv.conn()
    c.putrequest("POST", "/v1/jobs")
    c.putheader("Authorization", "Bearer " + srv.token)
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    data = json.dumps(big).encode()
    c.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
    r = c.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "payload_too_large"


def test_identical_jobs_computed_once(fresh_server):
    doc = job_doc(inputs=[[11, 22, 33, 44, 55, 66], [11, 22, 77, 44, 55, 66]],
                  outputs={"top_k": 2})
    t1, o1 = in_thread(fresh_server.request, "POST", "/v1/jobs?wait=60", doc, TOKENS["alice"])
    t2, o2 = in_thread(fresh_server.request, "POST", "/v1/jobs?wait=60", doc, TOKENS["bob"])
    t1.join()
    t2.join()
    assert o1["value"][0] == 200 and o2["value"][0] == 200, (o1, o2)
    s = sorted([o1["value"][2]["result"]["stats"], o2["value"][2]["result"]["stats"]],
               key=lambda s: s["values_computed"])
    assert s[0]["values_computed"] == 0, s           # the second computed nothing
    assert s[1]["values_computed"] == s[1]["values_needed"] > 0
    assert s[0]["values_cached"] + s[0]["values_waited"] > 0
    assert o1["value"][2]["result"]["outputs"] == o2["value"][2]["result"]["outputs"]
    # /metrics agrees: misses = values computed; hits >= what the second took
    st, _, text = fresh_server.request("GET", "/metrics")
    text = text.decode()
    misses = int(re.search(r'npp_cache_misses_total\{model="tiny"\} (\d+)', text).group(1))
    hits = int(re.search(r'npp_cache_hits_total\{model="tiny"\} (\d+)', text).group(1))
    assert misses == s[1]["values_computed"] and hits >= s[0]["values_cached"] + s[0]["values_waited"]
    assert 'npp_jobs_finished_total{state="done"} 2' in text
    assert re.search(r"npp_job_duration_seconds_count 2", text)
    assert re.search(r'npp_cache_bytes\{model="tiny"\} [1-9]', text)
    st, _, models = fresh_server.request("GET", "/v1/models")
    assert models["models"][0]["cache"]["misses"] == misses


def test_cancel_running(make_server):
    srv = make_server(models={"slow": SLOW_MODEL}, auth=False)
    st, _, body = srv.request("POST", "/v1/jobs", slow_job(2))
    jid = body["id"]
    running = wait_state(srv, jid, {"running", "done"})
    assert running["state"] == "running", "the slow job finished before it could be cancelled"
    st, _, body = srv.request("DELETE", "/v1/jobs/" + jid)
    assert st == 200
    validate("/v1/jobs/{id}", "DELETE", st, body)
    end = wait_state(srv, jid, {"cancelled", "done", "failed"})
    assert end["state"] == "cancelled" and end["error"]["code"] == "cancelled"
    assert end["progress"]["done"] < end["progress"]["total"]
    validate("/v1/jobs/{id}", "GET", 200, end)
    # a queued job is cancelled at once
    a = srv.request("POST", "/v1/jobs", slow_job(3))[2]["id"]
    b = srv.request("POST", "/v1/jobs", slow_job(4))[2]["id"]
    c = srv.request("POST", "/v1/jobs", slow_job(5))[2]["id"]
    st, _, body = srv.request("DELETE", "/v1/jobs/" + c)
    assert body["state"] == "cancelled"
    for j in (a, b):
        srv.request("DELETE", "/v1/jobs/" + j)
    assert srv.request("GET", "/healthz")[0] == 200


def test_attribution_progress_and_cancel(make_server):
    """An attribution job counts its gradient passes in its progress (after
    the plan's values) and stops within a second of a cancel."""
    srv = make_server(models={"long": LONG_MODEL}, auth=False)
    ids = [[(97 * b + 31 * t) % 50000 + 10 for t in range(1000)] for b in range(4)]
    job = {"inputs": [ids, [row[::-1] for row in ids]], "outputs": {"top_k": 0},
           "metric": {"type": "logit", "token": 5},
           "attribution": {"method": "eap-ig", "steps": 8}}  # about 17 s here
    st, _, body = srv.request("POST", "/v1/jobs", job)
    assert st == 202, body
    jid, seen = body["id"], None
    units = 1 + 2 * 2 * 8  # the corrupted run, then each layer forward and backward, 8 steps
    deadline = time.time() + 120
    while time.time() < deadline:  # until the gradient passes are under way
        b = srv.request("GET", "/v1/jobs/" + jid)[2]
        p = b.get("progress") or {}
        if b["state"] != "running" or p.get("done", 0) >= p.get("total", 0) - units + 2 > 0:
            seen = b
            break
        time.sleep(0.05)
    assert seen and seen["state"] == "running", seen
    total = seen["progress"]["total"]
    assert total > units and seen["progress"]["done"] < total
    t0 = time.time()
    st, _, body = srv.request("DELETE", "/v1/jobs/" + jid)
    assert st == 200
    end = wait_state(srv, jid, {"cancelled", "done", "failed"})
    limit = 15 if SANITIZED else 1.5  # a layer's backward pass, under a sanitizer or not
    assert end["state"] == "cancelled" and time.time() - t0 < limit, (end, time.time() - t0)
    assert end["progress"]["done"] < total


def test_client_disconnects_mid_job(make_server):
    srv = make_server(models={"slow": SLOW_MODEL}, auth=False)
    s = socket.create_connection(("127.0.0.1", srv.port))
    body = json.dumps(slow_job(6)).encode()
    s.sendall(b"POST /v1/jobs?wait=60 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    time.sleep(0.5)
    s.close()  # gone while its job runs
    # the server stays healthy and the job still finishes
    assert srv.request("GET", "/healthz")[0] == 200
    deadline = time.time() + 120
    while time.time() < deadline:
        st, _, text = srv.request("GET", "/metrics")
        if b'npp_jobs_finished_total{state="done"} 1' in text:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the abandoned job never finished")
    assert srv.request("POST", "/v1/jobs?wait=30", job_doc())[0] == 200
    # an SSE client that goes away mid-stream
    jid = srv.request("POST", "/v1/jobs", slow_job(7))[2]["id"]
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"GET /v1/jobs/%s/events HTTP/1.1\r\nHost: x\r\n\r\n" % jid.encode())
    s.recv(100)
    s.close()
    wait_state(srv, jid, {"done"})
    assert srv.request("GET", "/healthz")[0] == 200


def test_queue_full_and_inflight_cap(make_server):
    srv = make_server("--workers", "1", "--queue-max", "2", "--max-inflight", "4",
                      models={"slow": SLOW_MODEL})
    ids = [srv.request("POST", "/v1/jobs", slow_job(50 + i))[2]["id"] for i in range(3)]
    wait_state(srv, ids[0], {"running", "done"})
    st, h, body = srv.request("POST", "/v1/jobs", slow_job(60))
    assert st == 429 and body["error"]["code"] == "queue_full" and int(h["Retry-After"]) >= 1
    validate("/v1/jobs", "POST", st, body)
    for j in ids:
        srv.request("DELETE", "/v1/jobs/" + j)
    srv2 = make_server("--workers", "1", "--max-inflight", "2", models={"slow": SLOW_MODEL})
    a = [srv2.request("POST", "/v1/jobs", slow_job(70 + i))[0] for i in range(2)]
    st, h, body = srv2.request("POST", "/v1/jobs", slow_job(72))
    assert a == [202, 202] and st == 429 and body["error"]["code"] == "too_many_jobs"
    # another token is not capped by alice's jobs
    assert srv2.request("POST", "/v1/jobs", job_doc(), token=TOKENS["bob"])[0] == 202


def test_result_ttl(make_server):
    srv = make_server("--result-ttl", "1")
    st, _, body = srv.request("POST", "/v1/jobs?wait=30", job_doc())
    assert st == 200
    time.sleep(1.5)
    st, _, body2 = srv.request("GET", "/v1/jobs/" + body["id"])
    assert st == 404 and "results are kept 1 s" in body2["error"]["message"]


def test_request_log_one_json_line_each(fresh_server):
    for _ in range(3):
        fresh_server.request("GET", "/healthz")
    fresh_server.request("GET", "/v1/jobs/nope")
    # The line is written when libmicrohttpd reports the request complete,
    # which can come just after the client has read the response.
    deadline = time.time() + 5
    while True:
        lines = [json.loads(line) for line in fresh_server.log_lines()
                 if line.startswith('{"method"')]
        if (lines and lines[-1]["path"] == "/v1/jobs/nope") or time.time() > deadline:
            break
        time.sleep(0.02)
    assert [l["path"] for l in lines[-4:]] == ["/healthz"] * 3 + ["/v1/jobs/nope"]
    assert lines[-1]["status"] == 404 and lines[-1]["user"] == "alice"


def test_slowloris_and_connection_limits(make_server):
    srv = make_server("--conn-timeout", "1", "--max-conn-per-ip", "3", auth=False)
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    s.settimeout(5)
    t0 = time.time()
    assert s.recv(100) == b""  # closed by the server after the timeout
    assert time.time() - t0 < 4
    s.close()
    socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
    extra = socket.create_connection(("127.0.0.1", srv.port))
    extra.settimeout(5)
    try:
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = extra.recv(100)
    except (ConnectionResetError, BrokenPipeError):
        got = b""
    assert got == b"", "a 4th connection from one address was served"
    for s in socks + [extra]:
        s.close()
    # headers are bounded
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.settimeout(5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n")
    try:
        got = s.recv(100)
    except ConnectionResetError:
        got = b""
    assert not got.startswith(b"HTTP/1.1 200"), got
    s.close()
    # The server notices closed sockets on its next poll (later under ASan);
    # until then they still count against the per-address limit. Once it has,
    # it must serve again.
    deadline = time.time() + 10
    while True:
        try:
            st = srv.request("GET", "/healthz", timeout=5)[0]
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    assert st == 200


def test_sigterm_drains(make_server):
    # a job that runs for seconds, so that nppd is still draining when the
    # requests below arrive (it exits as soon as nothing runs)
    srv = make_server("--drain-seconds", "2", models={"long": LONG_MODEL})
    keep = srv.conn()
    assert srv.request("GET", "/healthz", conn=keep)[0] == 200  # a kept-alive connection
    jid = srv.request("POST", "/v1/jobs", long_job(80))[2]["id"]
    wait_state(srv, jid, {"running"})
    waiter, out = in_thread(srv.request, "POST", "/v1/jobs?wait=120", job_doc(), "default")
    queued = srv.request("POST", "/v1/jobs", long_job(81))[2]["id"]
    t0 = time.time()
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    st, h, body = srv.request("POST", "/v1/jobs", job_doc(), conn=keep)
    assert st == 503 and body["error"]["code"] == "draining" and "Retry-After" in h
    validate("/v1/jobs", "POST", st, body)
    st, _, body = srv.request("GET", "/readyz", conn=keep)
    assert st == 503 and body["status"] == "draining"
    code = srv.proc.wait(30)
    took = time.time() - t0
    assert code == 0 and took < 2 + (6 if TSAN else 3), took  # TSan: a chunk takes seconds
    waiter.join(10)
    assert "value" in out, out  # the long-polling client got an answer
    lines = "\n".join(srv.log_lines())
    assert '"event": "drain"' in lines and '"event": "stopped", "exit": 0' in lines
    del queued


@pytest.mark.skipif(TSAN, reason="flags read at start-up: no thread hand-off")
def test_environment_and_two_models(make_server):
    """Every flag also works as an NPP_* variable; several models stay resident."""
    port = free_port()
    srv = make_server(auth=False, env={"NPP_LISTEN": "127.0.0.1:%d" % port,
                                       "NPP_MODEL": "tiny=%s,slow=%s" % (MODEL, SLOW_MODEL),
                                       "NPP_WORKERS": "1", "NPP_CACHE_MB": "64"})
    st, _, body = srv.request("GET", "/v1/models")
    assert [m["name"] for m in body["models"]] == ["tiny", "slow"]
    assert body["models"][0]["memory"]["cache_max_bytes"] == 64 << 20
    assert body["models"][1]["config"]["n_embd"] == 256
    st, _, a = srv.request("POST", "/v1/jobs?wait=60", job_doc())               # the first: tiny
    st2, _, b = srv.request("POST", "/v1/jobs?wait=60", job_doc(model="slow"))
    assert st == st2 == 200 and a["model"] == "tiny" and b["model"] == "slow"
    assert a["result"]["outputs"] != b["result"]["outputs"]
    assert 'npp_workers 1' in srv.request("GET", "/metrics")[2].decode()


@pytest.mark.skipif(TSAN, reason="a result's JSON text: no thread hand-off")
def test_nan_results_stay_valid_json(make_server, tmp_path):
    """A model whose logits are NaN: the answer is still strict JSON, with
    non-finite numbers as the documented strings."""
    import shutil
    import struct as st_
    bad = tmp_path / "nan-model"
    shutil.copytree(MODEL, bad)
    raw = bytearray((bad / "model.safetensors").read_bytes())
    (n,) = st_.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8:8 + n])
    off = 8 + n + hdr["ln_f.bias"]["data_offsets"][0]
    raw[off:off + 4] = st_.pack("<f", float("nan"))
    (bad / "model.safetensors").write_bytes(bytes(raw))
    srv = make_server(models={"nan": str(bad)})
    conn = srv.conn()
    conn.request("POST", "/v1/jobs?wait=60", body=json.dumps(job_doc(
        metric={"type": "logprob", "token": " Madrid"})), headers={"Authorization": "Bearer " + srv.token})
    text = conn.getresponse().read().decode()

    def no_constants(name):
        raise AssertionError("bare %s in the JSON" % name)
    body = json.loads(text, parse_constant=no_constants)
    assert body["state"] == "done"
    assert body["result"]["metric"]["mean"] == "NaN"
    assert body["result"]["outputs"]["top_k"][0][0]["tokens"][0]["logprob"] == "NaN"
    validate("/v1/jobs", "POST", 200, body)


# ---- malformed and mutated jobs ----------------------------------------------------------

CASES = os.path.join(os.path.dirname(__file__), "..", "jobs", "cases.json")


def test_every_malformed_job_case(server):
    """The malformed jobs of tests/jobs/cases.json, through the service:
    each is refused with its field and message (and, under ASan, the server
    must still exit cleanly: a refusal may not leak)."""
    for c in json.load(open(CASES)):
        text = json.dumps(c["job"]).replace('"RANGE129"', json.dumps(list(range(129))))
        st, _, body = server.request("POST", "/v1/jobs", text)
        assert st in (404, 422), (c["name"], st, body)
        assert body["error"]["field"] == c["field"], (c["name"], body)
        assert c["message"] in body["error"]["message"], (c["name"], body)
        validate("/v1/jobs", "POST", st, body)


def _mutate(rng, v, atoms, depth=0):
    """A random structural change of a JSON value: a subtree replaced by an
    atom, keys dropped or added, list items dropped or repeated."""
    if rng.random() < 0.15 or depth > 6:
        return copy.deepcopy(rng.choice(atoms))
    if isinstance(v, dict):
        v = dict(v)
        if v and rng.random() < 0.3:
            del v[rng.choice(sorted(v))]
        if rng.random() < 0.2:
            key = rng.choice(["match", "split", "input", "type", "from", "into", "token", "tokens",
                              "nodes", "positions", "senders", "receivers", "top_k", "hidden",
                              "any", "all", "not", "limits", "max_values", "metric", "outputs",
                              "sweep", "name"])
            v[key] = copy.deepcopy(rng.choice(atoms))
        return {k: _mutate(rng, x, atoms, depth + 1) if rng.random() < 0.4 else x
                for k, x in v.items()}
    if isinstance(v, list):
        v = list(v)
        if v and rng.random() < 0.2:
            v.pop(rng.randrange(len(v)))
        if v and rng.random() < 0.2:
            v.append(copy.deepcopy(rng.choice(v)))
        return [_mutate(rng, x, atoms, depth + 1) if rng.random() < 0.4 else x for x in v]
    return copy.deepcopy(rng.choice(atoms)) if rng.random() < 0.5 else v


def test_mutated_jobs(server):
    """400 seeded mutations of valid and malformed jobs: every answer is
    documented JSON (a finished job or a refusal naming a field), and the
    server stays up and exits cleanly (no leak under ASan)."""
    rng = random.Random(2026)
    examples = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples")
    seeds = [c["job"] for c in json.load(open(CASES))]
    seeds += [json.load(open(os.path.join(examples, f))) for f in sorted(os.listdir(examples))]
    seeds.append(job_doc())
    seeds.append({"inputs": ["a b c", "d e f"], "metric": {"type": "kl"},
                  "sweep": [{"name": "x", "preset": {"type": "path_patch", "senders": ["a0.head1"],
                                                     "receivers": ["a1.head0.v"]}},
                            {"branch": [{"match": "**/a1", "split": True}],
                             "which": [{"match": "**/a1/**", "input": 1}]}, {}]})
    seeds.append({"inputs": [["a b", "c d"], ["e f", "g h"]],
                  "preset": {"type": "activation_patch", "nodes": ["a0.head1", "f1"],
                             "positions": [0, 1]},
                  "metric": {"type": "logit_diff", "tokens": [[" a", " b"], [" c", " d"]]},
                  "outputs": {"logits": True, "hidden": ["a0", "f1"], "svg": True,
                              "format": "npy", "top_k": 2, "baselines": True}})
    atoms = [None, True, False, 0, 1, -1, 2, 7, 2**31, 2**63 - 1, -2**63, 1e308, -0.0, 0.5, "",
             "a", "**", "**/a0", "a0.head0", "a1.head9", "f0", "emb", "ln_final", "{a0,f0}/**",
             "a0.head*.q", "[", "\u0000x", "x" * 3000, "logit", "kl", "path_patch",
             "activation_patch", "npy", [], {}, [0], [[1, 2]], {"match": "**"}, {"any": []},
             {"not": {"match": "a0"}}, "NaN"]
    seen = {}
    for i in range(400):
        body = json.dumps(_mutate(rng, rng.choice(seeds), atoms))
        if rng.random() < 0.05:
            body = body[:rng.randrange(len(body) + 1)]  # cut short
        st, _, out = server.request("POST", "/v1/jobs?wait=60", body)
        seen[st] = seen.get(st, 0) + 1
        assert st in (200, 400, 404, 422), (st, out, body[:300])
        validate("/v1/jobs", "POST", st, out)
        if st == 200:
            assert out["state"] == "done", (out, body[:300])
        else:
            assert out["error"]["field"] and out["error"]["message"], out
    assert seen.get(200, 0) > 20 and seen.get(422, 0) > 100, seen  # both kinds were exercised
    assert server.request("GET", "/healthz")[0] == 200
