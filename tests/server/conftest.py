"""Fixtures for black-box tests of the real nppd binary on loopback.

Environment (set by ctest): NPPD (the binary), NPP (the CLI), MODEL (a tiny
generated model), SLOW_MODEL (a bigger one whose jobs take long enough to
cancel or interrupt), LONG_MODEL (1024 positions, for batches of long
inputs), OPENAPI (api/openapi.yaml). NPPD_LEGACY=1 runs the tests on an
older nppd without the flags it lacks (to see which tests it fails)."""
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import jsonschema
import pytest
import yaml

NPPD = os.environ["NPPD"]
NPP = os.environ["NPP"]
MODEL = os.environ["MODEL"]
SLOW_MODEL = os.environ.get("SLOW_MODEL", MODEL)
LONG_MODEL = os.environ.get("LONG_MODEL", SLOW_MODEL)  # 1024 positions
OPENAPI = yaml.safe_load(open(os.environ["OPENAPI"]))
TOKENS = {"alice": "alice-secret-token-0001", "bob": "bob-secret-token-0002"}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# Flags an older nppd lacks: NPPD_LEGACY=1 leaves them out, so that the
# tests run on it and show what it does instead.
_NEW_FLAGS = {"--memory-mb", "--max-job-mb", "--max-result-mb", "--results-disk-mb",
              "--plan-seconds", "--chunk-mb", "--planners", "--header-timeout",
              "--max-connections", "--state-dir", "--keep-mb", "--max-job-seconds", "--gflops",
              "--user-workers", "--user-memory-mb"}


def legacy_args(args):
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in _NEW_FLAGS:
            skip = True
        else:
            out.append(a)
    return out


class Server:
    """A running nppd; stderr (the request log) is captured in a file."""

    def __init__(self, *args, auth=True, models=None, env=None, state_dir=None, tokens=None,
                 admins=(), listen_port=None):
        self.port = listen_port or free_port()
        self.tmp = tempfile.TemporaryDirectory()
        self.log_path = os.path.join(self.tmp.name, "nppd.log")
        # each server its own job store, unless a test restarts one on the same
        self.state_dir = state_dir or os.path.join(self.tmp.name, "state")
        cmd = [NPPD, "--state-dir", self.state_dir]
        if os.environ.get("NPPD_LEGACY"):  # checking that tests fail on an older nppd
            cmd = [NPPD]
            args = legacy_args(args)
        if not (env and "NPP_LISTEN" in env):
            cmd += ["--listen", "127.0.0.1:%d" % self.port]
        for name, d in ({} if env and "NPP_MODEL" in env else models or {"tiny": MODEL}).items():
            cmd += ["--model", "%s=%s" % (name, d)]
        if auth:
            tf = os.path.join(self.tmp.name, "tokens")
            with open(tf, "w") as f:
                f.write("# test tokens\n")
                for name, tok in (tokens or TOKENS).items():
                    f.write("%s %s%s\n" % (name, tok, " admin" if name in admins else ""))
            cmd += ["--token-file", tf]
        cmd += list(args)
        self.log = open(self.log_path, "w")
        if env and "NPP_LISTEN" in env:
            self.port = int(env["NPP_LISTEN"].rsplit(":", 1)[1])
        self.proc = subprocess.Popen(cmd, stderr=self.log, stdout=subprocess.DEVNULL,
                                     env=dict(os.environ, **(env or {})))
        self.token = TOKENS["alice"] if auth else None
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                st, _, _ = self.request("GET", "/readyz")
                if st == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("nppd exited: " + open(self.log_path).read())
            time.sleep(0.05)
        raise RuntimeError("nppd did not become ready")

    def conn(self, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, token="default", headers=None, conn=None,
                timeout=60):
        h = dict(headers or {})
        tok = self.token if token == "default" else token
        if tok:
            h["Authorization"] = "Bearer " + tok
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        c = conn or self.conn(timeout)
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        ctype = r.getheader("Content-Type", "")
        parsed = json.loads(data) if ctype.startswith("application/json") else data
        return r.status, dict(r.getheaders()), parsed

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def log_lines(self):
        return open(self.log_path).read().splitlines()


def _stopped(s):
    code = s.stop()
    # Under ASan a leak makes the exit status non-zero: every test checks it.
    assert code == 0, "nppd exited %s:\n%s" % (code, "\n".join(s.log_lines()[-30:]))


@pytest.fixture(scope="module")
def server():
    """An nppd with the default flags, shared by the tests of a module (a
    start costs ~1 s of libtorch's initialisers, 4 s under TSan). A test
    that reads the log, counts what the cache holds or measures memory
    takes fresh_server instead."""
    s = Server()
    yield s
    _stopped(s)


@pytest.fixture
def fresh_server():
    """An nppd of the test's own, started for it and stopped after it."""
    s = Server()
    yield s
    _stopped(s)


@pytest.fixture
def make_server():
    started = []

    def make(*args, **kw):
        s = Server(*args, **kw)
        started.append(s)
        return s
    yield make
    for s in started:
        code = s.stop()
        if getattr(s, "killed", False):  # the test killed it on purpose
            continue
        assert code == 0, "nppd exited %s:\n%s" % (code, "\n".join(s.log_lines()[-30:]))


# ---- validation against the OpenAPI document ----------------------------------------

def _response_schema(path_template, method, status, ctype="application/json"):
    op = OPENAPI["paths"][path_template][method.lower()]
    resp = op["responses"][str(status)]
    if "$ref" in resp:
        resp = OPENAPI["components"]["responses"][resp["$ref"].split("/")[-1]]
    return resp["content"][ctype]["schema"]


def validate(path_template, method, status, body):
    """Fails unless (status, body) is an answer the OpenAPI document allows."""
    assert str(status) in OPENAPI["paths"][path_template][method.lower()]["responses"], \
        "status %s not documented for %s %s" % (status, method, path_template)
    schema = _response_schema(path_template, method, status)
    resolver = jsonschema.RefResolver.from_schema(OPENAPI)
    jsonschema.Draft202012Validator(schema, resolver=resolver).validate(body)


def job_doc(**kw):
    d = {"inputs": ["The capital of Spain is", "The capital of Italy is"],
         "branch": [{"match": "**/a1", "split": True}],
         "which": [{"match": "**/a1/**", "input": 1}],
         "outputs": {"top_k": 3}}
    d.update(kw)
    return d


def slow_job(n=0):
    """A job that takes a while on SLOW_MODEL: many inputs, long texts,
    baselines for each (a different n gives different values: no cache)."""
    ids = [[(7 * i + 13 * t + 1000 * n) % 50000 + 1 for t in range(200)] for i in range(6)]
    return {"inputs": ids, "preset": {"type": "path_patch", "senders": ["a0.head1"],
                                      "receivers": ["a1.head2.k", "ln_final"]},
            "outputs": {"top_k": 1, "baselines": True}}


def long_job(seed=0):
    """A job on LONG_MODEL that runs for seconds (160 x 1000 tokens, about
    500 GFLOP: ~6 s on a 2-core VM; ids under 10,000 keep the body under the
    default 1 MiB), for tests that need one running while they act; they
    cancel it."""
    return {"inputs": [[[(97 * b + 31 * t + seed) % 9000 + 10 for t in range(1000)]
                        for b in range(160)]], "outputs": {"top_k": 1}}


def wait_state(srv, job_id, states, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st, _, body = srv.request("GET", "/v1/jobs/" + job_id)
        assert st == 200
        if body["state"] in states:
            return body
        time.sleep(0.02)
    raise AssertionError("job %s never reached %s" % (job_id, states))


def in_thread(fn, *args):
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    return t, out
