#!/usr/bin/env bash
# Quick start, step 1: install dependencies, fetch the GPT-2 vocabulary,
# build, prepare the default model, and serve it with nppd on
# 127.0.0.1:8080 (Ctrl-C stops it gracefully). Extra arguments go to nppd,
# e.g. scripts/setup.sh --listen 127.0.0.1:9000 --model gpt2=/path/to/gpt2
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-deps.sh
scripts/fetch-npm.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
model=build/models/default
if [ ! -f "$model/model.safetensors" ]; then
  # Until a trained default ships under models/, a small random GPT-2.
  build/npp make-model --out "$model" --layers 2 --heads 4 --embd 64 --positions 256 --seed 0
fi
echo "setup: a first job, in-process: build/npp run --model $model docs/examples/first-job.json"
build/npp run --model "$model" docs/examples/first-job.json > build/first-job.json
sed -n '/"metric"/,/}/p' build/first-job.json
echo "setup: serving $model with nppd; try: clients/curl/first-job.sh   (Ctrl-C stops)"
exec build/nppd --model default="$model" "$@"
