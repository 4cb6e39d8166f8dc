#!/usr/bin/env bash
# bench/soak: 10 minutes of mixed traffic from 16 clients against nppd with
# 2 workers (see soak.py for the mix and what it checks).
#   bench/soak/run.sh [BUILD_DIR] [MINUTES] [CLIENTS]
set -euo pipefail
. "$(dirname "$0")/../common.sh"
model=$build/tests/models/medium
[ -f "$model/model.safetensors" ] ||
  "$build/npp" make-model --out "$model" --layers 4 --heads 8 --embd 256 --positions 256 --seed 9 \
    --init-std 0.05 >&2
echo "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
/usr/bin/python3 "$root/bench/soak/soak.py" "$build/nppd" "$model" "${2:-10}" "${3:-16}" 2
