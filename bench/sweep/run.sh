#!/usr/bin/env bash
# bench/sweep: a 144-variant path-patching sweep as one job, as 144 jobs on
# a shared cache, and as 144 jobs without one (see sweep.py).
#   bench/sweep/run.sh [BUILD_DIR] [TOKENS] [THREADS]
set -euo pipefail
. "$(dirname "$0")/../common.sh"
model=$(bench_model)
echo "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
/usr/bin/python3 "$root/bench/sweep/sweep.py" "$build/nppd" "$model" "${2:-32}" "${3:-1}"
