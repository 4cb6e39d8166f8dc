"""Every Python snippet of docs/python.md runs as written, in order, in one
namespace, against nppd serving the default model (models/induction)."""
import os
import re
import subprocess
import sys

from conftest import Server

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../..")


def test_python_md_snippets_run(tmp_path):
    text = open(os.path.join(ROOT, "docs/python.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    srv = Server(auth=False, models={"induction": os.path.join(ROOT, "models/induction")})
    try:
        url = "http://127.0.0.1:%d" % srv.port
        code = "\n".join(blocks).replace("http://127.0.0.1:8080", url)
        p = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True,
                           text=True, timeout=300,
                           env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "clients/python")))
        assert p.returncode == 0, p.stderr[-3000:]
        assert os.path.getsize(tmp_path / "paths.svg") > 1000
        assert os.path.getsize(tmp_path / "heads.svg") > 1000
    finally:
        srv.stop()


def test_tools_run_as_documented():
    """The docs run tools/*.py as commands: each is executable, runs with
    Debian's python3 (the one with torch and numpy), and answers --help."""
    tools = sorted(f for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py"))
    assert tools
    for t in tools:
        path = os.path.join(ROOT, "tools", t)
        assert os.access(path, os.X_OK), t + " is not executable"
        assert open(path).readline().strip() == "#!/usr/bin/python3", t
        p = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and "usage:" in p.stdout, (t, p.stderr)
