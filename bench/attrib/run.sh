#!/usr/bin/env bash
# bench/attrib: EAP (or EAP-IG) scores of every edge of the GPT-2-small-shaped
# model, 8 prompt pairs of 16 tokens, as one npp job and as PyTorch autograd
# the way EAP-IG's code computes them; see eap.py.
#   bench/attrib/run.sh [BUILD_DIR] [THREADS] [STEPS] [ROUNDS]
set -euo pipefail
. "$(dirname "$0")/../common.sh"
model=$(bench_model)
echo "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
/usr/bin/python3 "$root/bench/attrib/eap.py" "$build/npp" "$model" "${2:-1}" "${3:-1}" "${4:-5}"
