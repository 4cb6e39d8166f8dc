#!/usr/bin/env bash
# bench/time: the compute time nppd estimates for a job before it runs (the
# estimate --max-job-seconds refuses by) against the time its worker took,
# on the GPT-2-small-shaped model; see measure.py.
#   bench/time/run.sh [BUILD_DIR] [THREADS]
set -euo pipefail
. "$(dirname "$0")/../common.sh"
model=$(bench_model)
echo "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
/usr/bin/python3 "$root/bench/time/measure.py" "$build/nppd" "$model" "${2:-1}"
