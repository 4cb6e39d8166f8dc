"""What the tutorial checks share (check_experiments_doc.py,
check_circuits_doc.py): the page's jobs, running one on the default model,
and counting checks."""
import json
import os
import re
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../..")
MODEL = os.path.join(ROOT, "models/induction")
RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append(bool(ok))
    print("%s %-70s %s" % ("ok  " if ok else "FAIL", name, detail))


def summary():
    """Prints the count; the exit status (0 when every check passed)."""
    n = sum(RESULTS)
    print("%d passed, %d failed" % (n, len(RESULTS) - n))
    return 0 if all(RESULTS) else 1


def page_jobs(doc):
    """{name: job text} of every ```json block after a `<!-- job: NAME -->` line."""
    return dict(re.findall(r"<!-- job: ([\w-]+) -->\n```json\n(.*?)\n```", open(doc).read(), re.S))


def run(npp, job, *extra):
    """`npp run` of a job on the default model (extra: more flags); its result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    try:
        p = subprocess.run([npp, "run", "--model", MODEL, f.name, *extra], capture_output=True,
                           text=True)
    finally:
        os.unlink(f.name)
    if p.returncode:
        raise RuntimeError(p.stderr)
    return json.loads(p.stdout)
