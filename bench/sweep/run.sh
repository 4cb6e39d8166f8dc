#!/usr/bin/env bash
# bench/sweep: a 144-variant path-patching sweep as one job, as 144 jobs on
# a shared cache, and as 144 jobs without one (see sweep.py).
#   bench/sweep/run.sh [BUILD_DIR] [TOKENS] [THREADS]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
model=$build/bench/gpt2-small-shape
[ -f "$model/model.safetensors" ] ||
  "$build/npp" make-model --out "$model" --layers 12 --heads 12 --embd 768 --positions 1024 --seed 6
echo "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
/usr/bin/python3 "$root/bench/sweep/sweep.py" "$build/nppd" "$model" "${2:-32}" "${3:-1}"
