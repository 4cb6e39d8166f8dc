#!/usr/bin/env bash
# Quick start, step 2: builds and runs every test, in four builds:
#   build/        the Release build (-O3, what setup.sh and the images
#                 build): every test (ctest)
#   build-fuzz/   clang, libFuzzer + ASan + UBSan (RelWithDebInfo): each fuzz
#                 target for 20 s (one per core at a time) from its seed corpus (scripts/fuzz.sh;
#                 NPP_FUZZ_SECONDS=300 scripts/test.sh for longer runs)
#   build-tsan/   ThreadSanitizer (RelWithDebInfo): nppd's tests (its thread
#                 hand-offs)
#   build-asan/   AddressSanitizer + UndefinedBehaviorSanitizer
#                 (RelWithDebInfo): the tests but 'heavy' and 'memory' ones
#                 and those that would only repeat others (see below;
#                 NPP_FULL_SANITIZE=1 runs them all)
# Every build treats warnings as errors (gcc 12; clang for the fuzz one).
# Stops at the first failing stage, so the last lines printed are the
# summary of the stage that decided the exit status (ctest's line when all
# pass).
#   scripts/test.sh            every stage
#   scripts/test.sh --quick    the normal build only
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/fetch-npm.sh >/dev/null
jobs=$(nproc)
werror=-DNPP_WERROR=ON # the project's own builds treat warnings as errors
run_suite() {
  local dir=$1 type=$2; shift 2
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" "$werror" "$@" >/dev/null
  cmake --build "$dir" -j"$jobs"
  cmake --build "$dir" --target format-check
  (cd "$dir" && ctest --output-on-failure -j"$jobs" "${CTEST_ARGS[@]}")
}
CTEST_ARGS=()
run_suite build Release
[ "${1:-}" = "--quick" ] && exit 0

secs=${NPP_FUZZ_SECONDS:-20}
echo "== fuzzing (libFuzzer, ASan + UBSan), $secs s per target; ${SECONDS} s so far =="
scripts/fuzz.sh "$secs"

# Every process that links Debian's libtorch spends ~1 s in its static
# initialisers (2.5 s under ASan, 3 s under TSan; ld.so and the operator
# registry), and the tests start many (an nppd per server test or module;
# the reference checks keep one `npp run --jsonl` per model): so by default
# the sanitizer stages leave out the tests that only repeat, under a
# sanitizer, what others already run there (listed below).
# NPP_FULL_SANITIZE=1 runs every server ctest under TSan (within them, the
# tests of what one thread does alone stay skipped) and every test but
# 'heavy' and 'memory' under ASan (about 10 minutes more on 2 cores).
full=${NPP_FULL_SANITIZE:-0}
echo "== ThreadSanitizer: the server tests; ${SECONDS} s so far =="
export TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1"
# nppd's own thread hand-offs are in server_api, server_shared and
# server_durable; the clients' and nginx's tests send it ordinary jobs
CTEST_ARGS=(-R "^server_(api|shared|durable)$") # and the model fixtures they require
[ "$full" = 1 ] && CTEST_ARGS=(-R "^server_")
run_suite build-tsan RelWithDebInfo -DNPP_TSAN=ON
unset TSAN_OPTIONS

echo "== sanitizer build (ASan + UBSan); ${SECONDS} s so far =="
# The 'heavy' tests repeat numerics on a 12-layer model through code paths
# the tiny models already cover; under ASan they would only cost time.
# The 'memory' ones measure RSS, which ASan's shadow memory inflates.
# Left out by default: loader_errors (the safetensors and
# config.json fuzz targets run the loader's parsers under ASan), sweep_vs_jobs
# (sweeps run through nppd in server_api and server_clients), forward_vs_
# reference_* (the forward pass runs in every other test), server_nginx and
# induction_model_circuit (ordinary jobs through other front ends).
CTEST_ARGS=(-LE "heavy|memory"
  -E "^(loader_errors|sweep_vs_jobs|forward_vs_reference_.*|server_nginx|induction_model_circuit)$")
[ "$full" = 1 ] && CTEST_ARGS=(-LE "heavy|memory")
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
export LSAN_OPTIONS=suppressions=$root/tests/lsan.supp
run_suite build-asan RelWithDebInfo -DNPP_SANITIZE=ON
