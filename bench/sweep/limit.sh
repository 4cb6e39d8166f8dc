#!/usr/bin/env bash
# bench/sweep/limit.sh: the 144-head path-patching sweep to ln_final, the
# engine's execution against the analytic limit (see limit.py).
#   bench/sweep/limit.sh [BUILD_DIR] [TOKENS] [THREADS] [REPEATS]
set -euo pipefail
. "$(dirname "$0")/../common.sh"
model=$(bench_model)
echo "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
/usr/bin/python3 "$root/bench/sweep/limit.py" "$build/npp" "$model" "${2:-32}" "${3:-1}" "${4:-7}"
