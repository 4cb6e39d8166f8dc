#!/usr/bin/env bash
# Quick start, step 1: install dependencies, fetch the GPT-2 vocabulary,
# build, prepare the default model, and run it.
#   scripts/setup.sh [TEXT]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-deps.sh
scripts/fetch-vocab.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
model=build/models/default
if [ ! -f "$model/model.safetensors" ]; then
  # Until a trained default ships under models/, a small random GPT-2.
  build/npp make-model --out "$model" --layers 2 --heads 4 --embd 64 --positions 256 --seed 0
fi
text=${1:-"The capital of Spain is Madrid, and the capital of Italy is"}
echo "setup: running  build/npp forward --model $model --top-k 5 \"$text\""
build/npp forward --model "$model" --top-k 5 "$text"
