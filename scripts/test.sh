#!/usr/bin/env bash
# Quick start, step 2: builds and runs every test, in four builds:
#   build/        the normal build: every test (ctest)
#   build-fuzz/   clang, libFuzzer + ASan + UBSan: each fuzz target for 30 s
#                 from its seed corpus (scripts/fuzz.sh)
#   build-tsan/   ThreadSanitizer: the server tests (nppd's thread hand-offs)
#   build-asan/   AddressSanitizer + UndefinedBehaviorSanitizer: every test
#                 but the 'heavy' and 'memory' ones
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
  local dir=$1; shift
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$werror" "$@" >/dev/null
  cmake --build "$dir" -j"$jobs"
  cmake --build "$dir" --target format-check
  (cd "$dir" && ctest --output-on-failure -j"$jobs" "${CTEST_ARGS[@]}")
}
CTEST_ARGS=()
run_suite build
[ "${1:-}" = "--quick" ] && exit 0

echo "== fuzzing (libFuzzer, ASan + UBSan), 30 s per target =="
scripts/fuzz.sh "${NPP_FUZZ_SECONDS:-30}"

echo "== ThreadSanitizer: the server tests =="
export TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1"
CTEST_ARGS=(-R server_api) # and the model fixtures it requires
run_suite build-tsan -DNPP_TSAN=ON
unset TSAN_OPTIONS

echo "== sanitizer build (ASan + UBSan) =="
# The 'heavy' tests repeat numerics on a 12-layer model through code paths
# the tiny models already cover; under ASan they would only cost time.
# The 'memory' ones measure RSS, which ASan's shadow memory inflates.
CTEST_ARGS=(-LE "heavy|memory")
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
export LSAN_OPTIONS=suppressions=$root/tests/lsan.supp
run_suite build-asan -DNPP_SANITIZE=ON
