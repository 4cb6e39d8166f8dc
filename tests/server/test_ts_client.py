"""A TypeScript client generated from api/openapi.yaml (npm openapi-typescript)
and called through openapi-fetch submits the first job, waits for it and
reads its metric from a live nppd: what a user of another language does."""
import json
import os
import shutil
import subprocess
import tempfile

API = os.path.join(os.path.dirname(__file__), "..", "api")
SPEC = os.path.join(os.path.dirname(__file__), "..", "..", "api", "openapi.yaml")


def test_generated_typescript_client_runs_the_first_job(make_server):
    server = make_server(auth=False)
    bin_ = os.path.join(API, "node_modules", ".bin")
    with tempfile.TemporaryDirectory() as d:
        for f in ("client.ts", "tsconfig.json", "package.json"):
            shutil.copy(os.path.join(API, "ts-client", f), d)
        os.symlink(os.path.abspath(os.path.join(API, "node_modules")), os.path.join(d, "node_modules"))
        subprocess.run([os.path.join(bin_, "openapi-typescript"), SPEC, "-o",
                        os.path.join(d, "schema.d.ts")], check=True, capture_output=True)
        p = subprocess.run([os.path.join(bin_, "tsc"), "-p", os.path.join(d, "tsconfig.json")],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr  # the generated types fit the client
        env = dict(os.environ, NPPD_URL="http://127.0.0.1:%d" % server.port)
        p = subprocess.run(["node", os.path.join(d, "build", "client.js")], capture_output=True,
                           text=True, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert out["state"] == "done" and out["type"] == "logit_diff"
        assert isinstance(out["metric"], float)
