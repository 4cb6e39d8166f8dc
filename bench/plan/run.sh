#!/usr/bin/env bash
# bench/plan: planning time (no compute) on a GPT-2-small-shaped model
# (12 layers, 12 heads), 32 tokens, two inputs:
#  - the full split: every a{i} and f{i}, every a{i}.head into heads, every
#    head into q/k/v, with one head's path reading input 1;
#  - a sweep of 144 path-patching jobs, one per head a{l}.head{h} -> logits.
# Baseline: the same walk without memoisation visits 2^24 residual paths
# before heads, so it is not measured; the goal is < 1 s for the full split.
#   bench/plan/run.sh [BUILD_DIR]
set -euo pipefail
. "$(dirname "$0")/../common.sh"
model=$(bench_model)
jobs=$(mktemp -d)
trap 'rm -rf "$jobs"' EXIT
/usr/bin/python3 - "$jobs" <<'PY'
import json, sys
d = sys.argv[1]
inputs = [list(range(1000, 1032)), list(range(2000, 2032))]
L = "{[0-9],1[01]}"
full = {"inputs": inputs,
        "branch": [{"match": "**/{a,f}" + L, "split": True},
                   {"match": "**/a" + L + ".head", "split": "heads"},
                   {"match": "**/a" + L + ".head" + L, "split": True}],
        "which": [{"match": "**/a9.head6/**", "input": 1}]}
json.dump(full, open(d + "/full.json", "w"))
for l in range(12):
    for h in range(12):
        json.dump({"inputs": inputs, "preset": {"type": "path_patch", "senders": ["a%d.head%d" % (l, h)],
                   "receivers": ["ln_final"]}}, open(d + "/sweep_%03d.json" % (12 * l + h), "w"))
PY
echo "bench/plan: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
echo "full split (12 layers, heads, q/k/v):"
"$build/npp" plan --model "$model" "$jobs/full.json" | head -1
echo "144-head path-patching sweep (head -> logits):"
"$build/npp" plan --model "$model" "$jobs"/sweep_*.json | tail -1
