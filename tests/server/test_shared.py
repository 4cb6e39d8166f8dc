"""A shared server no single user can break, starve or spy on: one test per
way a user could (ownership, workers and turns, memory, planning,
cancellation, the token file; durability and connections are in
test_durable.py), each asserting the behaviour, not only the status."""
import os
import re
import subprocess
import time

import pytest

from conftest import (LONG_MODEL, MODEL, NPPD, SLOW_MODEL, TOKENS, free_port, in_thread, job_doc,
                      legacy_args, long_job, slow_job, validate, wait_state)

ADMIN = {"carol": "carol-admin-token-0003"}
# Under AddressSanitizer freed memory sits in quarantine: RSS says nothing
# about what the server holds, so those assertions are left to the normal
# build (everything else is asserted in both).
SANITIZED = "ASAN_OPTIONS" in os.environ or "TSAN_OPTIONS" in os.environ
# ThreadSanitizer checks nppd's thread hand-offs; the tests of what a single
# thread parses or computes (the token file, cache keys, a lock file) leave
# it out: each nppd start costs ~4 s there.
TSAN = "TSAN_OPTIONS" in os.environ
# Under a sanitizer compute is 5-20x slower and RSS says nothing, so the
# jobs that only need to be big run the same paths (queueing, admission,
# chunks) with a quarter of the batch.
BIG_B = 8 if SANITIZED else 32


def rss(pid):
    """Resident memory of a process, bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def big_ids(B, T, seed=0):
    return [[(97 * b + 31 * t + seed) % 50000 + 10 for t in range(T)] for b in range(B)]


def not_found_like_unknown(st, body):
    return st == 404 and body["error"]["code"] == "not_found" and \
        body["error"]["field"] == "id" and "unknown job" in body["error"]["message"]


# ---- ownership ---------------------------------------------------------------------------

def test_jobs_are_private_to_their_token(make_server):
    srv = make_server(models={"slow": SLOW_MODEL})
    alice, bob = TOKENS["alice"], TOKENS["bob"]
    st, _, body = srv.request("POST", "/v1/jobs", slow_job(40), alice)
    assert st == 202
    jid = body["id"]
    # bob sees exactly what he would see for a job that does not exist
    st_u, _, unknown = srv.request("GET", "/v1/jobs/%032x" % 7, token=bob)
    assert not_found_like_unknown(st_u, unknown)
    for path in ("/v1/jobs/" + jid, "/v1/jobs/%s/graph.svg" % jid, "/v1/jobs/%s/heatmap.svg" % jid,
                 "/v1/jobs/%s/events" % jid):
        st, _, body = srv.request("GET", path, token=bob)
        assert not_found_like_unknown(st, body), (path, st, body)
        assert body["error"]["message"] == unknown["error"]["message"].replace("%032x" % 7, jid)
    st, _, body = srv.request("DELETE", "/v1/jobs/" + jid, token=bob)
    assert not_found_like_unknown(st, body)
    validate("/v1/jobs/{id}", "DELETE", st, body)
    st, _, body = srv.request("GET", "/v1/jobs/" + jid, token=alice)
    assert st == 200 and body["state"] in ("queued", "running")  # bob's DELETE did nothing
    # each sees their own list
    st, _, mine = srv.request("GET", "/v1/jobs", token=bob)
    assert st == 200 and mine["jobs"] == [] and mine["all"] is False
    validate("/v1/jobs", "GET", st, mine)
    st, _, mine = srv.request("GET", "/v1/jobs", token=alice)
    assert [j["id"] for j in mine["jobs"]] == [jid] and mine["jobs"][0]["user"] == "alice"
    assert srv.request("GET", "/v1/jobs/" + jid, token=alice)[2]["user"] == "alice"
    assert mine["jobs"][0]["estimate"]["peak_bytes"] > 0
    assert srv.request("DELETE", "/v1/jobs/" + jid, token=alice)[0] == 200


@pytest.mark.skipif(TSAN, reason="cache keys: no thread hand-off")
@pytest.mark.parametrize("private", [False, True])
def test_private_cache_keeps_each_users_values_to_itself(make_server, private):
    """By default a job finds the values anyone computed (its stats show
    it); with --private-cache only its own user's: bob's copy of alice's
    job computes everything, alice's repeat finds hers."""
    srv = make_server("--cache-mb", "64", *(["--private-cache"] if private else []))
    job = job_doc(inputs=["the private prompt", "the public prompt"])

    def stats(token):
        st, _, body = srv.request("POST", "/v1/jobs?wait=60", job, token=token)
        assert st == 200 and body["state"] == "done", body
        return body["result"]["stats"]
    first = stats(TOKENS["alice"])
    assert first["values_cached"] == 0 and first["values_computed"] > 0, first
    bob, again = stats(TOKENS["bob"]), stats(TOKENS["alice"])
    assert again["values_computed"] == 0 and again["values_cached"] > 0, again
    if private:
        assert bob["values_cached"] == 0 and bob["values_computed"] == first["values_computed"], bob
    else:
        assert bob["values_computed"] == 0 and bob["values_cached"] > 0, bob


def test_admin_lists_and_cancels_every_job(make_server):
    srv = make_server(models={"slow": SLOW_MODEL}, tokens=dict(TOKENS, **ADMIN),
                      admins={"carol"})
    a = srv.request("POST", "/v1/jobs", slow_job(41), TOKENS["alice"])[2]["id"]
    b = srv.request("POST", "/v1/jobs", slow_job(42), TOKENS["bob"])[2]["id"]
    # the model's folder on the server: for the admin only
    models = {t: srv.request("GET", "/v1/models", token=t)[2]["models"][0]
              for t in (TOKENS["alice"], ADMIN["carol"])}
    assert "path" not in models[TOKENS["alice"]] and models[ADMIN["carol"]]["path"] == SLOW_MODEL
    validate("/v1/models", "GET", 200, {**srv.request("GET", "/v1/models")[2]})
    st, _, body = srv.request("GET", "/v1/jobs", token=ADMIN["carol"])
    assert st == 200 and body["all"] is True
    assert {(j["id"], j["user"]) for j in body["jobs"]} == {(a, "alice"), (b, "bob")}
    assert srv.request("GET", "/v1/jobs/" + b, token=ADMIN["carol"])[0] == 200
    assert srv.request("DELETE", "/v1/jobs/" + b, token=ADMIN["carol"])[0] == 200
    deadline = time.time() + 30
    while time.time() < deadline:
        body = srv.request("GET", "/v1/jobs/" + b, token=TOKENS["bob"])[2]
        if body["state"] == "cancelled":
            break
        time.sleep(0.05)
    assert body["state"] == "cancelled", body
    assert srv.request("DELETE", "/v1/jobs/" + a, token=ADMIN["carol"])[0] == 200


@pytest.mark.skipif(TSAN, reason="the token file's parser: no thread hand-off (and fuzz_tokens)")
@pytest.mark.parametrize("text, line, words", [
    ("alice token-0001-abcdefgh\nbob token-0001-abcdefgh\n", 2, "the same token as alice's"),
    ("alice token-0001-abcdefgh\nalice token-0002-abcdefgh\n", 2, "the name 'alice' is given twice"),
    ("# c\n\nalice token-0001-abcdefgh admin extra\n", 3, "4 fields"),
    ("alice\n", 1, "1 field;"),
    ("alice token-0001-abcdefgh root\n", 1, "the third field must be 'admin'"),
    ("alice token-0001-abcdefgh\nbob x1\n", 2, "the token is shorter than 16 characters"),
    ("# only comments\n", 0, "no tokens in it"),
])
def test_token_file_errors_name_the_line(tmp_path, text, line, words):
    tf = tmp_path / "tokens"
    tf.write_text(text)
    args = ["--state-dir", str(tmp_path / "s")]
    args = legacy_args(args) if os.environ.get("NPPD_LEGACY") else args
    p = subprocess.run([NPPD, "--token-file", str(tf), "--model", "m=" + MODEL, "--listen",
                        "127.0.0.1:%d" % free_port(), *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert words in p.stderr and (not line or ("line %d:" % line) in p.stderr), p.stderr


# ---- workers and turns ------------------------------------------------------------------

def running_snapshots(srv, token, ids, until):
    """The caller's running jobs among ids in each job list (one snapshot
    under the server's lock) until until() holds."""
    seen = []
    deadline = time.time() + 300
    while not until() and time.time() < deadline:
        jobs = srv.request("GET", "/v1/jobs", token=token)[2]["jobs"]
        seen.append(sorted(j["id"] for j in jobs if j["id"] in ids and j["state"] == "running"))
        time.sleep(0.01)
    return seen


def test_one_user_never_holds_every_worker(make_server):
    """With a token file, one user's jobs hold at most --user-workers
    workers (by default one less than --workers): a second user's job
    starts at once on the worker kept free, while the first user's next
    jobs wait and say why."""
    srv = make_server("--workers", "2", models={"slow": SLOW_MODEL})
    limits = srv.request("GET", "/v1/models")[2]["limits"]
    assert (limits["workers"], limits["user_workers"]) == (2, 1), limits
    alice = [srv.request("POST", "/v1/jobs", slow_job(80 + i), token=TOKENS["alice"])[2]["id"]
             for i in range(4)]
    wait_state(srv, alice[0], {"running"})
    listed = {j["id"]: j for j in srv.request("GET", "/v1/jobs", token=TOKENS["alice"])[2]["jobs"]}
    assert [listed[j].get("waiting_for") for j in alice] == [None] + ["user_workers"] * 3, listed
    single = srv.request("GET", "/v1/jobs/" + alice[3], token=TOKENS["alice"])[2]
    assert single["state"] == "queued" and single["waiting_for"] == "user_workers", single
    text = srv.request("GET", "/metrics")[2].decode()
    assert 'npp_jobs_waiting{reason="user_workers"} 3' in text and "npp_user_workers 1" in text
    assert 'npp_jobs_waiting{reason="worker"} 0' in text
    # the idle worker is bob's at once, while alice's later jobs still wait
    bob = srv.request("POST", "/v1/jobs", slow_job(90), token=TOKENS["bob"])[2]["id"]
    deadline = time.time() + 60
    while srv.request("GET", "/v1/jobs/" + bob, token=TOKENS["bob"])[2]["state"] == "queued":
        assert time.time() < deadline, "bob's job never started"
        time.sleep(0.01)
    states = [srv.request("GET", "/v1/jobs/" + j)[2]["state"] for j in alice]
    assert states[2:] == ["queued", "queued"], states  # two more of alice's job times away
    # and alice never had two jobs running at once, from first to last
    seen = running_snapshots(srv, TOKENS["alice"], alice,
                             lambda: srv.request("GET", "/v1/jobs/" + alice[3])[2]["state"] == "done")
    assert len(seen) > 10 and max(len(s) for s in seen) == 1, seen
    assert "waiting_for" not in srv.request("GET", "/v1/jobs/" + alice[3])[2]
    assert srv.request("GET", "/v1/jobs/" + bob, token=TOKENS["bob"])[2]["state"] == "done"


def test_without_several_tokens_one_user_may_use_every_worker(make_server):
    """Without a token file, or with a single token, the cap is every
    worker (--user-workers defaults to --workers), so one user's jobs run
    two at a time; behind the busy workers a job waits for a 'worker', the
    next one for its 'earlier_jobs'."""
    solo = make_server("--workers", "2", tokens={"solo": "solo-token-0000000001"})
    limits = solo.request("GET", "/v1/models", token="solo-token-0000000001")[2]["limits"]
    assert (limits["workers"], limits["user_workers"]) == (2, 2), limits
    srv = make_server("--workers", "2", models={"slow": SLOW_MODEL}, auth=False)
    limits = srv.request("GET", "/v1/models")[2]["limits"]
    assert (limits["workers"], limits["user_workers"]) == (2, 2), limits
    longer = [dict(slow_job(100 + i), inputs=slow_job(100 + i)["inputs"] * 2) for i in range(4)]
    jobs = [srv.request("POST", "/v1/jobs", d)[2]["id"] for d in longer]
    deadline = time.time() + 60
    while True:  # the first two running, the others queued behind them
        listed = {j["id"]: j for j in srv.request("GET", "/v1/jobs")[2]["jobs"]}
        if [listed[j]["state"] for j in jobs] == ["running", "running", "queued", "queued"]:
            break
        assert time.time() < deadline, listed
        time.sleep(0.005)
    assert [listed[j].get("waiting_for") for j in jobs] == \
        [None, None, "worker", "earlier_jobs"], listed
    seen = running_snapshots(srv, None, jobs,
                             lambda: srv.request("GET", "/v1/jobs/" + jobs[3])[2]["state"] == "done")
    assert max(len(s) for s in seen) == 2, seen


def test_fairness(make_server):
    """One user floods the queue; another's single job waits at most about
    one job's time (round-robin across users, one worker)."""
    srv = make_server("--workers", "1", models={"slow": SLOW_MODEL})
    t0 = time.time()
    single = srv.request("POST", "/v1/jobs?wait=300", slow_job(20), token=TOKENS["bob"])
    one_job = time.time() - t0
    assert single[0] == 200
    flood = [srv.request("POST", "/v1/jobs", slow_job(30 + i), token=TOKENS["alice"])[2]["id"]
             for i in range(8)]
    time.sleep(0.05)
    t0 = time.time()
    st, _, body = srv.request("POST", "/v1/jobs?wait=300", slow_job(40), token=TOKENS["bob"])
    waited = time.time() - t0
    assert st == 200 and body["state"] == "done"
    # bob's job ran right after alice's running one: at most ~2 job times, not 9
    assert waited < 2.5 * one_job + 1.0, (waited, one_job)
    states = [srv.request("GET", "/v1/jobs/" + j)[2]["state"] for j in flood]
    # the same, by order rather than by clock: only the job that was running
    # when bob asked finished before his
    assert states.count("done") <= 1, states
    assert states.count("queued") >= 6, states  # alice's flood was still waiting
    for j in flood:
        srv.request("DELETE", "/v1/jobs/" + j)


# ---- memory ----------------------------------------------------------------------------------

def test_repeated_positions_refused_fast_and_memory_stays(fresh_server):
    before = rss(fresh_server.proc.pid)
    t0 = time.time()
    st, _, body = fresh_server.request("POST", "/v1/jobs",
                                 {"inputs": ["a b"], "outputs": {"positions": [0] * 20000}})
    took = time.time() - t0
    assert st == 422 and body["error"]["field"] == "outputs.positions[1]", body
    assert "already listed" in body["error"]["message"]
    validate("/v1/jobs", "POST", st, body)
    assert took < 2, took
    time.sleep(0.5)
    assert SANITIZED or rss(fresh_server.proc.pid) < before + (64 << 20)


@pytest.mark.skipif(bool(os.environ.get("NPPD_LEGACY")), reason="an older nppd has no --keep-mb")
def test_kept_memory_fits_beside_the_limits(make_server, tmp_path):
    """What workers keep between jobs (--keep-mb) is reserved out of
    --memory-mb: by default it gives way to an explicit --max-job-mb (so
    settings that started before it still start, keeping nothing), and an
    explicit one that does not fit is refused at start-up, named."""
    limits = ["--memory-mb", "2048", "--cache-mb", "1024", "--max-job-mb", "1024"]
    srv = make_server(*limits)
    st, _, body = srv.request("GET", "/v1/models")
    assert st == 200 and body["limits"]["keep_mb"] == 0, body["limits"]
    assert body["limits"]["max_job_mb"] == 1024, body["limits"]
    p = subprocess.run([NPPD, "--model", "m=" + MODEL, *limits, "--keep-mb", "64", "--listen",
                        "127.0.0.1:%d" % free_port(), "--state-dir", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "kept memory (2 x --keep-mb 64)" in p.stderr, p.stderr
    srv = make_server("--memory-mb", "2048", "--cache-mb", "1024")
    body = srv.request("GET", "/v1/models")[2]
    # the default: an eighth of --memory-mb over the 2 workers, the rest for a job
    assert body["limits"]["keep_mb"] == 128 and body["limits"]["max_job_mb"] == 768, body


def test_big_batch_refused_with_the_field_and_both_numbers(make_server):
    """One input holding a batch of 64 x 1024 tokens, over --max-job-mb."""
    srv = make_server("--max-job-mb", "128", models={"long": LONG_MODEL})
    st, _, body = srv.request("POST", "/v1/jobs", {"inputs": [big_ids(64, 1024)],
                                                    "outputs": {"top_k": 1}})
    assert st == 422 and body["error"]["code"] == "job_too_large", body
    assert body["error"]["field"] == "inputs"
    assert "MiB at its peak" in body["error"]["message"] and "--max-job-mb of 128 MiB" in \
        body["error"]["message"]
    validate("/v1/jobs", "POST", st, body)
    # a result over its own limit: logits at every position
    st, _, body = srv.request("POST", "/v1/jobs", {"inputs": [big_ids(2, 400)],
                                                    "outputs": {"logits": True, "positions": "all"}})
    assert st == 422 and body["error"]["code"] in ("result_too_large", "job_too_large"), body
    assert body["error"]["field"] == "outputs.logits"


def test_job_over_its_time_refused_by_its_field_before_it_runs(make_server):
    """--max-job-seconds: a job's compute is estimated from its plan (GFLOP)
    at the server's rate (--gflops here, so that the refusal does not depend
    on this machine) and refused before it runs, naming the field behind it."""
    srv = make_server("--max-job-seconds", "2", "--gflops", "0.5", models={"long": LONG_MODEL})
    st, _, models = srv.request("GET", "/v1/models")
    validate("/v1/models", "GET", st, models)
    assert models["limits"]["max_job_seconds"] == 2 and models["models"][0]["gflop_per_s"] == 0.5
    st, _, body = srv.request("POST", "/v1/jobs", {"inputs": [big_ids(8, 512)],
                                                    "outputs": {"top_k": 1}})
    assert st == 422 and body["error"]["code"] == "job_too_long", body
    validate("/v1/jobs", "POST", st, body)
    msg = body["error"]["message"]
    assert body["error"]["field"] == "inputs" and "--max-job-seconds of 2 s" in msg, msg
    secs, gflop, text = re.search(r"about ([0-9.e+-]+) s \(([0-9.e+-]+) GFLOP of compute .* and "
                                  r"([0-9.e+-]+) s to write its", msg).groups()
    # 8 x 512 tokens, 2 layers 256 wide: the first layer's 12 x 256^2 multiply-adds a
    # token and its attention (8 x 512^2 x 256 x 2), the second's c_attn (the rest of
    # it only at the last position, the one read); a flop is half a multiply-add
    least = 2 * (4096 * 15 * 256 ** 2 + 8 * 512 ** 2 * 256 * 2) / 1e9
    assert least <= float(gflop) < 1.3 * least, (least, msg)
    assert abs(float(secs) - float(gflop) / 0.5 - float(text)) < 0.01 * float(secs), msg
    assert 0 < float(text) < 0.01 * float(secs), msg  # a small result: 8 x top-1
    # an attribution: its passes and every edge's score, named by its field
    ids = big_ids(4, 256)
    job = {"inputs": [ids, [row[::-1] for row in ids]], "outputs": {"top_k": 0},
           "metric": {"type": "logit", "token": 5}, "attribution": {"method": "eap-ig", "steps": 8}}
    st, _, body = srv.request("POST", "/v1/jobs", job)
    assert st == 422 and body["error"]["code"] == "job_too_long", body
    assert body["error"]["field"] == "attribution", body
    # a small job runs, and shows what it was estimated at
    st, _, body = srv.request("POST", "/v1/jobs?wait=60", {"inputs": [big_ids(1, 16)]})
    assert st == 200 and body["state"] == "done", body
    assert 0 < body["estimate"]["seconds"] < 2, body["estimate"]
    validate("/v1/jobs", "POST", st, body)
    # unless it sets a lower limit of its own
    st, _, body = srv.request("POST", "/v1/jobs", {"inputs": [big_ids(1, 16)],
                                                    "limits": {"max_seconds": 1e-6}})
    assert st == 422 and body["error"]["code"] == "job_too_long", body
    assert "over its limits.max_seconds of 1e-06 s" in body["error"]["message"], body


def test_job_past_its_time_is_stopped_and_says_why(make_server):
    """A job whose estimate fit (an absurd --gflops here) but still runs at
    --max-job-seconds, or at its own lower limits.max_seconds, is stopped as
    a DELETE stops it: failed, code limit, and the next job runs."""
    srv = make_server("--max-job-seconds", "1", "--gflops", "1e6", "--workers", "1",
                      models={"long": LONG_MODEL})
    for own, says in ((None, "this server's --max-job-seconds of 1 s"),
                      (0.5, "its limits.max_seconds of 0.5 s")):
        job = {"inputs": [big_ids(64, 1024)], "outputs": {"top_k": 1}}
        if own:
            job["limits"] = {"max_seconds": own}
        st, _, body = srv.request("POST", "/v1/jobs", job)
        assert st == 202, body
        body = wait_state(srv, body["id"], {"done", "failed", "cancelled"})
        assert body["state"] == "failed" and body["error"]["code"] == "limit", body
        assert says in body["error"]["message"], body
        # the field behind most of the estimate: at 10^6 GFLOP/s, its result's text
        assert body["error"]["field"] == "outputs.top_k" and body["run_seconds"] < 10, body
    st, _, body = srv.request("POST", "/v1/jobs?wait=60", {"inputs": [big_ids(1, 16)]})
    assert st == 200 and body["state"] == "done", body


def test_attribution_over_the_budget_refused_by_its_field(make_server):
    """A gradient job is estimated before it runs like any other: on the
    long model (2 layers, 8 heads, 256 wide) 16 x 1000-token pairs need the
    autograd tape, the deltas and the gradients, over 128 MiB."""
    srv = make_server("--max-job-mb", "128", models={"long": LONG_MODEL})
    ids = big_ids(16, 1000)
    job = {"inputs": [ids, [row[::-1] for row in ids]], "outputs": {"top_k": 0},
           "metric": {"type": "logit", "token": 5}, "attribution": {"method": "eap"}}
    st, _, body = srv.request("POST", "/v1/jobs", job)
    assert st == 422 and body["error"]["code"] == "job_too_large", body
    assert body["error"]["field"] == "attribution", body
    validate("/v1/jobs", "POST", st, body)
    # a discover job whose checks (not its attribution) are over: named discover
    small = {"inputs": [[ids[0][:200]], [ids[0][:200][::-1]]], "outputs": {"top_k": 0},
             "metric": {"type": "logit", "token": 5}}
    st, _, body = srv.request("POST", "/v1/jobs", dict(small, discover={"verify": 1000, "top_n": [10]}))
    assert st == 422 and body["error"]["code"] == "job_too_large", body
    assert body["error"]["field"] == "discover", body
    job["attribution"] = {"method": "eap-ig", "steps": 2}
    job["inputs"] = [[ids[0][:200]], [ids[0][:200][::-1]]]  # one short pair fits: it runs
    st, _, body = srv.request("POST", "/v1/jobs?wait=60", job)
    assert st == 200 and body["state"] == "done", body
    att = body["result"]["attribution"]
    L, H = 2, 8  # every edge: layer i's q/k/v, its MLP, ln_final
    edges = sum(3 * H * (1 + i * (H + 1)) + 1 + (i + 1) * H + i for i in range(L)) + 1 + L * (H + 1)
    assert att["method"] == "eap-ig" and att["steps"] == 2 and att["count"] == edges == 310
    assert len(att["edges"]) == att["count"] and body["result"]["stats"]["attribution_ms"] > 0
    validate("/v1/jobs", "POST", st, body)


def test_big_batch_runs_within_its_estimate(make_server):
    chunks = ("--chunk-mb", "16") if SANITIZED else ()  # still many chunks
    srv = make_server("--cache-mb", "0", *chunks, models={"long": LONG_MODEL})
    time.sleep(0.3)
    before = rss(srv.proc.pid)
    st, _, body = srv.request("POST", "/v1/jobs", {"inputs": [big_ids(BIG_B, 1024)],
                                                    "outputs": {"top_k": 1}})
    assert st == 202, body
    est = body["estimate"]["peak_bytes"]
    peak = 0
    while True:
        peak = max(peak, rss(srv.proc.pid))
        st, _, body = srv.request("GET", "/v1/jobs/" + body["id"])
        if body["state"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.02)
    assert body["state"] == "done", body
    assert SANITIZED or peak - before <= est + (32 << 20), ((peak - before) >> 20, est >> 20)


def test_jobs_wait_for_memory_in_fair_order(make_server):
    """Two jobs whose estimates do not fit --memory-mb together: the second
    waits in the queue (not refused) and starts when the first ends."""
    probe = make_server("--cache-mb", "0", models={"slow": SLOW_MODEL})
    job = {"inputs": [big_ids(BIG_B, 256)], "outputs": {"top_k": 1}}
    est = probe.request("POST", "/v1/jobs?wait=600", job)[2]["estimate"]["peak_bytes"]
    mb = (est >> 20) * 3 // 2 + 1  # room for one, not two
    srv = make_server("--cache-mb", "0", "--workers", "2", "--user-workers", "2",
                      "--memory-mb", str(mb), models={"slow": SLOW_MODEL})
    a = srv.request("POST", "/v1/jobs", dict(job, inputs=[big_ids(BIG_B, 256, 1)]))[2]["id"]
    b = srv.request("POST", "/v1/jobs", dict(job, inputs=[big_ids(BIG_B, 256, 2)]))[2]["id"]
    wait_state(srv, a, {"running"})
    time.sleep(0.5)
    sb = srv.request("GET", "/v1/jobs/" + b)[2]
    sa = srv.request("GET", "/v1/jobs/" + a)[2]
    if sa["state"] == "running":
        # a worker is idle, but memory is not
        assert sb["state"] == "queued" and sb["waiting_for"] == "memory", sb
    assert wait_state(srv, b, {"done"}, timeout=600)["state"] == "done"
    st, _, text = srv.request("GET", "/metrics")
    assert "npp_memory_budget_bytes %d" % (mb << 20) in text.decode()


def test_a_job_held_for_memory_is_not_overtaken_and_its_cancel_frees_the_turn(make_server):
    """Bob's big job, whose turn it is, waits for memory beside alice's
    running one; alice's small job, which would fit, waits behind it (it
    does not overtake: 'memory'); when bob cancels his, alice's starts at
    once, while her first still runs."""
    big = long_job()
    small = {"inputs": [big_ids(1, 16, 5)], "outputs": {"top_k": 1}}
    probe = make_server("--cache-mb", "0", models={"long": LONG_MODEL})
    est = {}
    for name, j in (("big", big), ("small", small)):
        body = probe.request("POST", "/v1/jobs", j)[2]
        est[name] = body["estimate"]["peak_bytes"]
        probe.request("DELETE", "/v1/jobs/" + body["id"])
    mb = (est["big"] + 4 * est["small"] + (64 << 20)) >> 20  # a big and a small, not two big
    assert est["big"] + est["big"] > mb << 20, (est, mb)
    srv = make_server("--cache-mb", "0", "--keep-mb", "0", "--workers", "3", "--user-workers", "2",
                      "--memory-mb", str(mb), models={"long": LONG_MODEL})
    alice, bob = TOKENS["alice"], TOKENS["bob"]
    a1 = srv.request("POST", "/v1/jobs", big, token=alice)[2]["id"]
    wait_state(srv, a1, {"running"})
    b1 = srv.request("POST", "/v1/jobs", long_job(1), token=bob)[2]["id"]
    a2 = srv.request("POST", "/v1/jobs", small, token=alice)[2]["id"]
    time.sleep(0.3)
    got = [srv.request("GET", "/v1/jobs/" + j, token=t)[2] for j, t in ((b1, bob), (a2, alice))]
    assert [(g["state"], g.get("waiting_for")) for g in got] == [("queued", "memory")] * 2, got
    assert srv.request("DELETE", "/v1/jobs/" + b1, token=bob)[2]["state"] == "cancelled"
    t0 = time.time()
    body = wait_state(srv, a2, {"running", "done"}, timeout=60)
    took = time.time() - t0
    assert took < (3.0 if SANITIZED else 1.0), "alice's small job started %.2f s after the cancel" % took
    assert srv.request("GET", "/v1/jobs/" + a1, token=alice)[2]["state"] == "running"
    srv.request("DELETE", "/v1/jobs/" + a1, token=alice)


def test_a_user_back_under_its_share_does_not_overtake_a_job_held_for_memory(make_server):
    """Alice's second job waits for her share of the workers; bob's, whose
    turn it then is, waits for memory beside her first. When her first
    ends, bob's starts, not her second (which would fit as well)."""
    probe = make_server("--cache-mb", "0", models={"long": LONG_MODEL})
    body = probe.request("POST", "/v1/jobs", long_job())[2]
    probe.request("DELETE", "/v1/jobs/" + body["id"])
    mb = (body["estimate"]["peak_bytes"] * 3 // 2) >> 20  # room for one, not two
    srv = make_server("--cache-mb", "0", "--keep-mb", "0", "--workers", "2",
                      "--memory-mb", str(mb), models={"long": LONG_MODEL})
    alice, bob = TOKENS["alice"], TOKENS["bob"]
    a1 = srv.request("POST", "/v1/jobs", long_job(1), token=alice)[2]["id"]
    wait_state(srv, a1, {"running"})
    a2 = srv.request("POST", "/v1/jobs", long_job(2), token=alice)[2]["id"]
    b1 = srv.request("POST", "/v1/jobs", long_job(3), token=bob)[2]["id"]
    time.sleep(0.3)
    got = [srv.request("GET", "/v1/jobs/" + j, token=t)[2] for j, t in ((a2, alice), (b1, bob))]
    assert [(g["state"], g.get("waiting_for")) for g in got] == \
        [("queued", "user_workers"), ("queued", "memory")], got
    srv.request("DELETE", "/v1/jobs/" + a1, token=alice)
    deadline = time.time() + 60
    while srv.request("GET", "/v1/jobs/" + b1, token=bob)[2]["state"] == "queued":
        assert time.time() < deadline, "bob's job never started"
        time.sleep(0.01)
    got = srv.request("GET", "/v1/jobs/" + a2, token=alice)[2]
    assert (got["state"], got.get("waiting_for")) == ("queued", "memory"), got
    for j, t in ((b1, bob), (a2, alice)):
        srv.request("DELETE", "/v1/jobs/" + j, token=t)


def test_one_users_memory_is_bounded_by_user_memory_mb(make_server):
    """--user-memory-mb: a job estimated over it is refused naming it; one
    user's running jobs hold at most that much (by their estimates), so
    the user's next job waits ('user_memory') while another user's starts
    at once on a free worker."""
    probe = make_server("--cache-mb", "0", models={"slow": SLOW_MODEL})
    job = {"inputs": [big_ids(BIG_B, 256)], "outputs": {"top_k": 1}}
    est = probe.request("POST", "/v1/jobs", job)[2]["estimate"]["peak_bytes"]
    mb = (est >> 20) * 3 // 2 + 1  # one such job per user, not two
    srv = make_server("--cache-mb", "0", "--workers", "3", "--user-workers", "3",
                      "--user-memory-mb", str(mb), models={"slow": SLOW_MODEL})
    assert srv.request("GET", "/v1/models")[2]["limits"]["user_memory_mb"] == mb
    st, _, body = srv.request("POST", "/v1/jobs", dict(job, inputs=[big_ids(4 * BIG_B, 256, 9)]))
    assert st == 422 and body["error"]["code"] == "job_too_large", body
    assert "--user-memory-mb of %d MiB" % mb in body["error"]["message"], body
    # alice's first job runs (most of a second), her second waits
    a = srv.request("POST", "/v1/jobs", dict(job, inputs=[big_ids(BIG_B, 256, 1)]))[2]["id"]
    b = srv.request("POST", "/v1/jobs", dict(job, inputs=[big_ids(BIG_B, 256, 2)]))[2]["id"]
    wait_state(srv, a, {"running"})
    st, _, sb = srv.request("GET", "/v1/jobs/" + b)
    validate("/v1/jobs/{id}", "GET", st, sb)
    assert sb["state"] == "queued" and sb["waiting_for"] == "user_memory", sb
    assert 'npp_jobs_waiting{reason="user_memory"} 1' in srv.request("GET", "/metrics")[2].decode()
    # bob's job starts at once on a free worker, while alice's first still runs
    bob = TOKENS["bob"]
    c = srv.request("POST", "/v1/jobs", dict(job, inputs=[big_ids(BIG_B, 256, 3)]), token=bob)[2]
    deadline = time.time() + 60
    while srv.request("GET", "/v1/jobs/" + c["id"], token=bob)[2]["state"] == "queued":
        assert time.time() < deadline, "bob's job never started"
        time.sleep(0.01)
    assert srv.request("GET", "/v1/jobs/" + a)[2]["state"] == "running"
    assert srv.request("GET", "/v1/jobs/" + b)[2]["state"] == "queued"
    assert wait_state(srv, b, {"done"}, timeout=600)["state"] == "done"


# ---- planning off the HTTP thread ------------------------------------------------------------

def test_health_answers_while_the_biggest_plan_runs(make_server):
    srv = make_server("--plan-seconds", "6", models={"slow": SLOW_MODEL})
    done = srv.request("POST", "/v1/jobs?wait=60", job_doc())[2]["id"]
    # a full split whose rule tracks which of ~900 nodes each path passed:
    # states that never repeat, until planning reaches its memory bound
    split = [{"match": "**/{a,f}[0-9]", "split": True},
             {"match": "**/a[0-9].head", "split": "heads"},
             {"match": "**/a[0-9].head[0-9]", "split": True},
             {"match": "**/f[0-9].head", "split": "positions"}]
    alts = ["**/a%d.head%d.%s/**" % (l, h, c) for l in range(4) for h in range(8) for c in "qkv"]
    alts += ["**/f%d.head.pos%d/**" % (l, p) for l in range(4) for p in range(200)]
    t, out = in_thread(srv.request, "POST", "/v1/jobs",
                       {"inputs": [big_ids(1, 250), big_ids(1, 250, 3)], "branch": split,
                        "which": [{"any": alts, "input": 1}]})
    time.sleep(0.5)
    worst = 0.0
    n = 0
    while t.is_alive() and n < 200:
        for path in ("/healthz", "/v1/jobs/" + done):
            t0 = time.time()
            st = srv.request("GET", path)[0]
            worst = max(worst, time.time() - t0)
            assert st == 200
        n += 1
        time.sleep(0.02)
    t.join(60)
    st, _, body = out["value"]
    assert st == 422 and body["error"]["code"] == "plan_too_large", body
    assert n >= 20, "the plan ended too soon to measure (%d rounds)" % n
    print("while planning: %d rounds, slowest answer %.1f ms" % (n, worst * 1e3))
    # planning on the HTTP thread stalls every answer for the whole plan (seconds);
    # a loaded 2-core machine under TSan answers in tens of milliseconds
    assert worst < 1.0, "a request took %.0f ms while a plan ran" % (worst * 1e3)


# ---- cancellation -------------------------------------------------------------------------

def test_delete_inside_a_huge_batch_takes_effect_within_a_second(make_server):
    """64 x 1024 tokens in one input: every batched call is cut in chunks,
    so a DELETE stops it within a second, and its memory goes back but for
    what the worker keeps for its next job (--keep-mb)."""
    srv = make_server("--cache-mb", "0", "--keep-mb", "32", models={"long": LONG_MODEL})
    st, _, models = srv.request("GET", "/v1/models")
    validate("/v1/models", "GET", st, models)
    assert models["limits"]["keep_mb"] == 32, models["limits"]
    time.sleep(0.3)
    before = rss(srv.proc.pid)
    st, _, body = srv.request("POST", "/v1/jobs", {"inputs": [big_ids(64, 1024)],
                                                    "outputs": {"top_k": 1}})
    jid = body["id"]
    wait_state(srv, jid, {"running"})
    time.sleep(2)  # well inside its first batched calls
    t0 = time.time()
    assert srv.request("DELETE", "/v1/jobs/" + jid)[0] == 200
    body = wait_state(srv, jid, {"cancelled", "done", "failed"})
    took = time.time() - t0
    # a sanitizer makes every chunk several times slower
    assert body["state"] == "cancelled" and took < (3.0 if SANITIZED else 1.0), (body["state"], took)
    time.sleep(0.5)
    assert SANITIZED or rss(srv.proc.pid) < before + (32 << 20) + (48 << 20), \
        (rss(srv.proc.pid) - before) >> 20


def test_delete_while_a_big_result_is_built_or_written_takes_effect_within_a_second(make_server):
    """A job whose execution is over (progress done) spends seconds turning
    ~270 MB of attention and hidden states into text and writing it to its
    file; a DELETE at any moment of that (20 to 90% of the time it takes)
    still ends it within a second."""
    srv = make_server("--cache-mb", "0", "--workers", "1", models={"slow": SLOW_MODEL})

    B = 2 if SANITIZED else 8  # 70 MB under a sanitizer (its text is as slow there)

    def submit(k):
        job = {"inputs": [big_ids(B, 256, 2 * k), big_ids(B, 256, 2 * k + 1)],
               "outputs": {"hidden_states": True, "attention": [0, 1, 2, 3]}}
        st, _, body = srv.request("POST", "/v1/jobs", job)
        assert st == 202 and body["estimate"]["result_bytes"] > B * (25 << 20), body
        deadline = time.time() + 120
        while True:  # executed: what is left is its result (GET while it runs: no result)
            got = srv.request("GET", "/v1/jobs/" + body["id"])[2]
            if got["state"] == "running" and got["progress"]["done"] == got["progress"]["total"]:
                return body["id"], time.time()
            assert got["state"] in ("queued", "running") and time.time() < deadline, got["state"]
            time.sleep(0.01)

    def state(jid):  # from the list: a done job's GET would send its whole result
        return next(j for j in srv.request("GET", "/v1/jobs")[2]["jobs"] if j["id"] == jid)["state"]
    jid, t0 = submit(0)
    while state(jid) == "running":
        time.sleep(0.01)
    result_s = time.time() - t0
    assert state(jid) == "done" and result_s > 0.5, result_s
    late = []
    for k, frac in enumerate((0.2, 0.5, 0.75, 0.9), 1):
        jid, t0 = submit(k)
        time.sleep(max(0.0, t0 + frac * result_s - time.time()))
        t1 = time.time()
        if srv.request("DELETE", "/v1/jobs/" + jid)[2]["state"] != "running":
            continue  # it ended first
        while (final := state(jid)) == "running":
            time.sleep(0.01)
        took = time.time() - t1
        if final != "cancelled" or took > (3.0 if SANITIZED else 1.0):
            late.append((frac, final, took))
    assert not late, (result_s, late)
