#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) in build-fuzz/ and runs
# each for SECONDS (default 30) from its seed corpus in fuzz/corpus/. New
# inputs go to a scratch copy, not the repo; a crash leaves its input in
# build-fuzz/crashes/ and the script fails.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
secs=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(glob tokens safetensors config tokenizer job)
dir=build-fuzz
CC=clang CXX=clang++ cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNPP_FUZZ=ON -DNPP_WERROR=ON >/dev/null
cmake --build "$dir" -j"$(nproc)" >/dev/null
model="$dir/fuzz-model"
[ -f "$model/model.safetensors" ] ||
  "$dir/npp" make-model --out "$model" --layers 2 --heads 4 --embd 32 --positions 16 --seed 3 \
    --vocab-dir "$root/vocab" >/dev/null
export NPP_FUZZ_MODEL=$model NPP_FUZZ_VOCAB=$root/vocab
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions=$root/tests/lsan.supp
mkdir -p "$dir/crashes"
# One target per core at a time (each libFuzzer run is one process).
fuzz_one() {
  local t=$1 work
  work=$(mktemp -d)
  local dict=()
  [ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
  if "$dir/fuzz/fuzz_$t" "$work" "fuzz/corpus/$t" "${dict[@]}" -max_total_time="$secs" -timeout=20 \
      -rss_limit_mb=4096 -max_len=65536 -artifact_prefix="$dir/crashes/$t-" \
      -print_final_stats=1 >"$dir/fuzz-$t.log" 2>&1; then
    echo "fuzz $t: ok, $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$dir/fuzz-$t.log" | grep -o '[0-9]*$') runs in ${secs} s"
    rm -rf "$work"
  else
    echo "fuzz $t: FAILED (see $dir/fuzz-$t.log; inputs in $dir/crashes/)"
    tail -30 "$dir/fuzz-$t.log"
    rm -rf "$work"
    return 1
  fi
}
failed=0
pids=()
for t in "${targets[@]}"; do
  fuzz_one "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$(nproc)" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do
  wait "$p" || failed=1
done
exit $failed
