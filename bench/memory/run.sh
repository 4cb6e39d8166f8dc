#!/usr/bin/env bash
# bench/memory: the memory estimate nppd admits jobs by, against the peak
# RSS each job reaches, on 10 job shapes (see measure.py).
#   bench/memory/run.sh [BUILD_DIR]
set -euo pipefail
. "$(dirname "$0")/../common.sh"
model=$build/bench/six-layers
[ -f "$model/model.safetensors" ] ||
  "$build/npp" make-model --out "$model" --layers 6 --heads 12 --embd 768 --positions 1024 \
    --seed 11 >&2
echo "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
/usr/bin/python3 "$root/bench/memory/measure.py" --npp "$build/npp" --model "$model"
