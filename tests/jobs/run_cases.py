#!/usr/bin/python3
"""Malformed jobs: each case in cases.json must be refused with an error
naming the expected field, with the expected words in its message (and
never crash).

All cases go through one `npp plan` call (every Debian libtorch process
spends ~1 s starting, and plan reports each refused job and goes on), with
a good job among them that must still be planned; then all through one
`npp run --jsonl -` (an error line per refused job, the good job's
result); a few through `npp run`, which must exit 1 with the same error on
stderr.

    run_cases.py NPP MODEL_DIR CASES.json
"""
import json
import os
import re
import subprocess
import sys
import tempfile

npp, model, cases_path = sys.argv[1:4]
cases = json.load(open(cases_path))
tmp = tempfile.mkdtemp(prefix="npp-cases-")
passed = failed = 0


def check(ok, name, detail):
    global passed, failed
    print("%s %-40s %s" % ("ok  " if ok else "FAIL", name, detail))
    passed += bool(ok)
    failed += not ok


def write(i, text):
    path = os.path.join(tmp, "case%03d.json" % i)
    with open(path, "w") as f:
        f.write(text)
    return path


# (name, file, field, message); "RANGE129" stands for a list of 129 token
# ids (over a 128-position model).
refused = [(c["name"], write(i, json.dumps(c["job"]).replace('"RANGE129"', json.dumps(list(range(129))))),
            c["field"], c["message"]) for i, c in enumerate(cases)]
# Duplicate keys in the job document itself.
dup = write(len(cases), '{"inputs": ["a"], "inputs": ["b"]}')
refused.append(("duplicate keys in the job", dup, dup, "duplicate object key"))  # the file's error
good = write(len(refused), json.dumps({"inputs": ["The cat sat"]}))
files = [f for _, f, _, _ in refused]
files.insert(len(files) // 2, good)

p = subprocess.run([npp, "plan", "--model", model] + files, capture_output=True, text=True)
lines = [json.loads(x) for x in p.stdout.splitlines()]
check(p.returncode == 1 and len(lines) == len(files) + 1, "npp plan: exit 1, a line per job",
      "exit %d, %d lines for %d jobs" % (p.returncode, len(lines), len(files)))
by_file = {x.get("job"): x for x in lines[:-1]}
for name, f, field, message in refused:
    err = by_file.get(f, {}).get("error", {})
    ok = err.get("field") == field and message in err.get("message", "")
    check(ok, name, json.dumps(err))
    if not ok:
        print("     expected field %r, message containing %r" % (field, message))
check(by_file.get(good, {}).get("values", 0) > 0, "the good job among them is planned", json.dumps(by_file.get(good)))
check(lines and lines[-1].get("refused") == len(refused), "the summary counts the refused jobs",
      json.dumps(lines[-1] if lines else None))
stderr = p.stderr.splitlines()
check(len(stderr) == len(refused) and all(s.startswith("npp: " + f + ": error in '") for s, (_, f, _, _) in zip(stderr, refused)),
      "one stderr line per refused job", "%d lines" % len(stderr))

# npp run --jsonl: the same refusals as lines, the good job's result among
# them, a blank line skipped, a line that is not JSON named by its number.
texts = [open(f).read() for f in files] + ["", "{not json"]
p = subprocess.run([npp, "run", "--model", model, "--jsonl", "-"], input="\n".join(texts) + "\n",
                   capture_output=True, text=True)
out = [json.loads(x) for x in p.stdout.splitlines()]
check(p.returncode == 1 and len(out) == len(files) + 1, "npp run --jsonl: exit 1, a line per job",
      "exit %d, %d lines for %d jobs" % (p.returncode, len(out), len(files) + 1))
want = [(field if f != dup else "line %d" % (files.index(f) + 1), message) for _, f, field, message in refused]
want.insert(files.index(good), None)
want.append(("line %d" % (len(texts)), "not valid JSON"))
bad = [i for i, (w, o) in enumerate(zip(want, out)) if
       (w is None and "outputs" not in o) or
       (w is not None and not (o.get("error", {}).get("field") == w[0] and w[1] in o["error"].get("message", "")))]
check(not bad and len(out) == len(want), "npp run --jsonl: each line's error or result",
      "wrong lines: %s" % [(i, out[i]) for i in bad[:3]])

# npp run: exit 1, `npp: error in 'FIELD': MESSAGE` on stderr.
for name, f, field, message in [refused[0], refused[len(refused) // 2], refused[-1]]:
    p = subprocess.run([npp, "run", "--model", model, f], capture_output=True, text=True)
    m = re.match(r"npp: error in '([^']*)': (.*)", p.stderr.strip())
    ok = p.returncode == 1 and m and m.group(1) == field and message in m.group(2)
    check(ok, "npp run: " + name, "exit %d: %s" % (p.returncode, p.stderr.strip()))

for f in os.listdir(tmp):
    os.unlink(os.path.join(tmp, f))
os.rmdir(tmp)
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
