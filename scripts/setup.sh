#!/usr/bin/env bash
# Quick start, step 1: install dependencies, fetch the GPT-2 vocabulary,
# build, run a first job, and serve the default model (models/induction)
# with nppd on 127.0.0.1:8080 (Ctrl-C stops it gracefully). Extra arguments
# go to nppd, e.g. scripts/setup.sh --model gpt2=/path/to/gpt2
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-deps.sh
scripts/fetch-npm.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
model=models/induction   # the small GPT-2 with an induction circuit (models/induction/README.md)
echo "setup: a first job, in-process: build/npp run --model $model docs/examples/first-job.json"
build/npp run --model "$model" docs/examples/first-job.json > build/first-job.json
sed -n '/"metric"/,/}/p' build/first-job.json
echo "setup: serving $model with nppd on 127.0.0.1:8080 (Ctrl-C stops); web UI at http://127.0.0.1:8080/"
echo "setup: from another terminal: clients/curl/first-job.sh"
exec build/nppd "$@"
