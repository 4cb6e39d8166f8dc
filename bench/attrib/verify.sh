#!/usr/bin/env bash
# bench/attrib/verify.sh: the exact effects of EAP's top K edges, one npp
# sweep of path_patch variants against one hooked PyTorch forward pass per
# edge; see verify.py.
#   bench/attrib/verify.sh [BUILD_DIR] [THREADS] [K]
set -euo pipefail
. "$(dirname "$0")/../common.sh"
model=$(bench_model)
echo "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
/usr/bin/python3 "$root/bench/attrib/verify.py" "$build/npp" "$model" "${2:-1}" "${3:-200}"
