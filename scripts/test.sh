#!/usr/bin/env bash
# Quick start, step 2: builds and runs every test, in four builds:
#   build/        the Release build (-O3, what setup.sh and the images
#                 build): every test (ctest)
#   build-fuzz/   clang, libFuzzer + ASan + UBSan (RelWithDebInfo): each fuzz
#                 target for 10 s from its seed corpus (scripts/fuzz.sh;
#                 NPP_FUZZ_SECONDS=300 scripts/test.sh for longer runs)
#   build-tsan/   ThreadSanitizer (RelWithDebInfo): the server tests (nppd's
#                 thread hand-offs)
#   build-asan/   AddressSanitizer + UndefinedBehaviorSanitizer
#                 (RelWithDebInfo): every test but the 'heavy' and 'memory'
#                 ones
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

secs=${NPP_FUZZ_SECONDS:-10}
echo "== fuzzing (libFuzzer, ASan + UBSan), $secs s per target =="
scripts/fuzz.sh "$secs"

echo "== ThreadSanitizer: the server tests =="
export TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1"
CTEST_ARGS=(-R "^server_") # and the model fixtures they require
run_suite build-tsan RelWithDebInfo -DNPP_TSAN=ON
unset TSAN_OPTIONS

echo "== sanitizer build (ASan + UBSan) =="
# The 'heavy' tests repeat numerics on a 12-layer model through code paths
# the tiny models already cover; under ASan they would only cost time.
# The 'memory' ones measure RSS, which ASan's shadow memory inflates.
CTEST_ARGS=(-LE "heavy|memory")
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
export LSAN_OPTIONS=suppressions=$root/tests/lsan.supp
run_suite build-asan RelWithDebInfo -DNPP_SANITIZE=ON
