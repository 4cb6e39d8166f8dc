#!/usr/bin/env bash
# bench/forward: `npp forward` vs PyTorch eager (bench/forward/torch_eager.py)
# on a GPT-2-small-shaped random model (12 layers, 12 heads, 768 wide, 1024
# positions), 32 tokens, same thread count, same libtorch and BLAS.
# Both time only the forward pass (all 32 positions' logits), median of R
# runs after one warm-up.
#   bench/forward/run.sh [BUILD_DIR] [THREADS] [REPEAT]
set -euo pipefail
. "$(dirname "$0")/../common.sh"
threads=${2:-2}
repeat=${3:-30}
model=$(bench_model)
# 32 token ids (a fixed text, tokenised by npp)
text="When Mary and John went to the store, John gave a drink to Mary. Then the quick brown fox jumped over the lazy dog again and again, said the"
ids=$("$build/npp" tokenize --model "$model" --json "$text" | tr -d '[] \n')
n=$(echo "$ids" | tr ',' '\n' | wc -l)
echo "bench/forward: $n tokens, $threads threads, $repeat runs, $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
c_out=$("$build/npp" forward --model "$model" --ids "$ids" --threads "$threads" --repeat "$repeat" --top-k 1 2>&1 >/dev/null)
py_out=$(/usr/bin/python3 "$root/bench/forward/torch_eager.py" --model "$model" --ids "$ids" --threads "$threads" --repeat "$repeat")
echo "npp:   $c_out"
echo "torch: $(echo "$py_out" | head -1)"
c_ms=$(echo "$c_out" | sed -n 's/.*median \([0-9.]*\) ms.*/\1/p')
py_ms=$(echo "$py_out" | sed -n 's/.*median \([0-9.]*\) ms.*/\1/p' | head -1)
c_min=$(echo "$c_out" | sed -n 's/.*(min \([0-9.]*\)).*/\1/p')
py_min=$(echo "$py_out" | sed -n 's/.*(min \([0-9.]*\)).*/\1/p' | head -1)
# On a shared VM the median moves by +-15% from run to run; the minimum
# (the run least disturbed) is the steadier comparison of the two.
awk -v c="$c_ms" -v p="$py_ms" -v cm="$c_min" -v pm="$py_min" \
  'BEGIN { printf "ratio npp/torch = %.3f by median, %.3f by minimum (goal <= 1.10)\n", c / p, cm / pm }'
