#!/usr/bin/python3
"""Malformed jobs: each case in cases.json must make `npp run` fail with
exit 1 and an error naming the expected field, with the expected words in
its message (and never crash).

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
passed = failed = 0
for c in cases:
    # "RANGE129" stands for a list of 129 token ids (over a 128-position model).
    text = json.dumps(c["job"]).replace('"RANGE129"', json.dumps(list(range(129))))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(text)
    p = subprocess.run([npp, "run", "--model", model, f.name], capture_output=True, text=True)
    os.unlink(f.name)
    m = re.match(r"npp: error in '([^']*)': (.*)", p.stderr.strip())
    ok = p.returncode == 1 and m and m.group(1) == c["field"] and c["message"] in m.group(2)
    print("%s %-40s %s" % ("ok  " if ok else "FAIL", c["name"], p.stderr.strip()))
    if not ok:
        print("     expected exit 1, field %r, message containing %r (exit %d)"
              % (c["field"], c["message"], p.returncode))
    passed += bool(ok)
    failed += not ok
# Duplicate keys in the job document itself.
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    f.write('{"inputs": ["a"], "inputs": ["b"]}')
p = subprocess.run([npp, "run", "--model", model, f.name], capture_output=True, text=True)
os.unlink(f.name)
ok = p.returncode == 1 and "duplicate object key" in p.stderr
print("%s %-40s %s" % ("ok  " if ok else "FAIL", "duplicate keys in the job", p.stderr.strip()))
passed += ok
failed += not ok
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
