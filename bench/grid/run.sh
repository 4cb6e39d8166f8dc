#!/usr/bin/env bash
# bench/grid: the 144-head activation-patching grid (a{l}.head{h} from the
# corrupted input, normalized logit difference) on the GPT-2-small-shaped
# model, as one grid job in npp and as 144 hooked forward passes in PyTorch
# (as TransformerLens's patching functions run them); see grid.py.
#   bench/grid/run.sh [BUILD_DIR] [TOKENS] [THREADS]
set -euo pipefail
. "$(dirname "$0")/../common.sh"
model=$(bench_model)
echo "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
/usr/bin/python3 "$root/bench/grid/grid.py" "$build/npp" "$model" "${2:-32}" "${3:-1}"
