# Sourced by the bench scripts: sets root and build (from $1) and
# bench_model, which makes the benchmarks' GPT-2-small-shaped random model
# (12 layers, 12 heads, 768 wide, 1024 positions) once and prints its folder.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}
bench_model() {
  local model=$build/bench/gpt2-small-shape
  [ -f "$model/model.safetensors" ] ||
    "$build/npp" make-model --out "$model" --layers 12 --heads 12 --embd 768 --positions 1024 \
      --seed 6 >&2
  echo "$model"
}
