#!/usr/bin/python3
"""What scripts/docker-test.sh checks against nginx and two nppd replicas
(docker/compose.yaml) on this machine:

  1. a first job through nginx gives what `npp run` gives in-process;
  2. the identical job again (same affinity key) computes 0 values;
  3. 200 jobs from 8 clients while replica r2 is killed (SIGKILL) and
     started again: every accepted job reaches a final state on its
     owner, and clients see no 5xx but the documented 502/503 they retry.

    docker-check.py NPP MODEL_DIR [NGINX_URL] [CONTAINER_TO_KILL]"""
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
import npp  # noqa: E402

npp_bin, model_dir = sys.argv[1], sys.argv[2]
url = sys.argv[3] if len(sys.argv) > 3 else "http://127.0.0.1:8080"
victim = sys.argv[4] if len(sys.argv) > 4 else None
ok = True


def report(name, good, detail=""):
    global ok
    ok &= bool(good)
    print("%s %-58s %s" % ("ok  " if good else "FAIL", name, detail), flush=True)


c = npp.connect(url)
m = c.model()
first = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                                    "examples", "first-job.json")))
kw = {k: first[k] for k in ("preset", "branch", "which", "outputs", "metric") if k in first}
res = m.run(first["inputs"], **kw)
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(first, f)
local = json.loads(subprocess.run([npp_bin, "run", "--model", model_dir, f.name],
                                  capture_output=True, text=True, check=True).stdout)
os.unlink(f.name)
diff = abs(res.raw["metric"]["mean"] - local["metric"]["mean"])
report("first job through nginx = npp run", diff <= 1e-5 * max(1, abs(local["metric"]["mean"])),
       "metric %.6f vs %.6f (job %s)" % (res.raw["metric"]["mean"], local["metric"]["mean"], res.id))
again = m.run(first["inputs"], **kw)
report("the identical job again computes 0 values (affinity)",
       again.raw["stats"]["values_computed"] == 0 and again.id.split("-")[0] == res.id.split("-")[0],
       "replicas %s, %s; computed %d" % (res.id.split("-")[0], again.id.split("-")[0],
                                         again.raw["stats"]["values_computed"]))

accepted, errors, lock, waits = [], [], threading.Lock(), [0]


def client(k):
    rng = random.Random(k)
    for i in range(25):
        ids = [[rng.randrange(10, 50000) for _ in range(12)] for _ in range(2)]
        # one user: over its in-flight cap (429 too_many_jobs) it waits for
        # its earlier jobs, as a polite client does
        for attempt in range(240):
            try:
                j = m.submit(ids, preset={"type": "path_patch", "senders": ["a0.head%d" % (i % 4)],
                                          "receivers": ["a1.head%d.k" % (i % 4)]},
                             outputs={"top_k": 1})
                with lock:
                    accepted.append(j.id)
                break
            except npp.NppError as e:
                if e.status == 429 and attempt < 239:
                    with lock:
                        waits[0] += 1
                    time.sleep(0.25)
                    continue
                with lock:
                    errors.append((e.status, e.code))
                break


t0 = time.time()
threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
for t in threads:
    t.start()
if victim:
    # docker kill is SIGKILL (no drain); a killed container counts as stopped
    # by hand, so its restart policy leaves it down: it is started again.
    time.sleep(1.5)
    subprocess.run(["docker", "kill", victim], capture_output=True)
    print("     killed %s at %.1f s" % (victim, time.time() - t0), flush=True)
    time.sleep(5)
    subprocess.run(["docker", "start", victim], capture_output=True)
    print("     started it again at %.1f s" % (time.time() - t0), flush=True)
for t in threads:
    t.join()
final, states = 0, {}
deadline = time.time() + 600
pending = list(accepted)
while pending and time.time() < deadline:
    nxt = []
    for jid in pending:
        try:
            st = c.job(jid).status()["state"]
        except npp.NppError as e:
            st = "error %d" % e.status
        if st in ("done", "failed", "cancelled"):
            states[st] = states.get(st, 0) + 1
        else:
            nxt.append(jid)
    pending = nxt
    if pending:
        time.sleep(1)
by = {}
for jid in accepted:
    by[jid.split("-")[0]] = by.get(jid.split("-")[0], 0) + 1
undocumented = [e for e in errors if e[0] >= 500 and e[0] not in (502, 503)]
report("200 jobs from 8 clients, a replica killed: all accepted jobs final",
       not pending and len(accepted) + len(errors) == 200 and states.get("done", 0) == len(accepted),
       "accepted %d (%s), final %s, still pending %d, refused %d, 429 waits %d, in %.0f s"
       % (len(accepted), by, states, len(pending), len(errors), waits[0], time.time() - t0))
report("no client saw a 5xx but a documented, retried 502/503", not undocumented,
       "errors after retries: %s" % errors[:5])
sys.exit(0 if ok else 1)
