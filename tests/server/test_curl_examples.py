"""Every curl example in clients/curl, run against a live nppd with a token."""
import json
import os
import subprocess

from conftest import wait_state

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../clients/curl")


def sh(server, name, *args):
    env = dict(os.environ, NPP_URL="http://127.0.0.1:%d" % server.port, NPP_TOKEN=server.token)
    p = subprocess.run(["bash", os.path.join(HERE, name), *args], env=env, capture_output=True,
                       text=True, timeout=120, cwd=server.tmp.name)
    assert p.returncode == 0, (name, p.stdout, p.stderr)
    return p.stdout


def test_every_endpoint_example(server):
    assert json.loads(sh(server, "healthz.sh")) == {"status": "ok"}
    assert json.loads(sh(server, "readyz.sh"))["status"] == "ready"
    assert sh(server, "openapi.sh").startswith("openapi: 3.1.0")
    assert "npp_queue_depth" in sh(server, "metrics.sh")
    assert json.loads(sh(server, "models.sh"))["models"][0]["name"] == "tiny"
    assert json.loads(sh(server, "tokenize.sh", "Hello world"))["ids"] == [15496, 995]
    job = json.loads(sh(server, "submit-job.sh"))
    assert job["state"] in ("queued", "running", "done")
    wait_state(server, job["id"], {"done"})
    assert json.loads(sh(server, "job-status.sh", job["id"]))["result"]["metric"]["type"] == "logit"
    assert "event: done" in sh(server, "events.sh", job["id"])
    assert "wrote" in sh(server, "graph.sh", job["id"], "g.svg")
    assert open(os.path.join(server.tmp.name, "g.svg")).read().lstrip().startswith("<?xml")
    assert json.loads(sh(server, "cancel-job.sh", job["id"]))["state"] == "done"
    out = sh(server, "heatmap.sh")
    assert "wrote heatmap.svg" in out
    assert open(os.path.join(server.tmp.name, "heatmap.svg")).read().count('class="cell"') == 8
    out = sh(server, "first-job.sh")
    assert "POST /v1/jobs -> 200" in out and "graph.svg -> 200" in out


def test_examples_without_a_token(make_server):
    srv = make_server(auth=False)
    srv.token = None
    env = dict(os.environ, NPP_URL="http://127.0.0.1:%d" % srv.port)
    env.pop("NPP_TOKEN", None)
    for name in ("healthz.sh", "models.sh", "first-job.sh"):
        p = subprocess.run(["bash", os.path.join(HERE, name)], env=env, capture_output=True,
                           text=True, timeout=120, cwd=srv.tmp.name)
        assert p.returncode == 0, (name, p.stdout, p.stderr)
