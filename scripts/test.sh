#!/usr/bin/env bash
# Quick start, step 2: builds and runs every test, twice: a normal build
# (build/) and an AddressSanitizer + UndefinedBehaviorSanitizer build
# (build-asan/). Stops at the first failing suite, so the last line printed
# is the summary of the suite that decided the exit status.
#   scripts/test.sh            both builds
#   scripts/test.sh --quick    the normal build only
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/fetch-npm.sh >/dev/null
jobs=$(nproc)
run_suite() {
  local dir=$1; shift
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$dir" -j"$jobs"
  cmake --build "$dir" --target format-check
  (cd "$dir" && ctest --output-on-failure -j"$jobs" "${CTEST_ARGS[@]}")
}
CTEST_ARGS=()
run_suite build
if [ "${1:-}" != "--quick" ]; then
  echo "== sanitizer build (ASan + UBSan) =="
  # The 'heavy' tests repeat numerics on a 12-layer model through code paths
  # the tiny models already cover; under ASan they would only cost time.
  # The 'memory' ones measure RSS, which ASan's shadow memory inflates.
  CTEST_ARGS=(-LE "heavy|memory")
  export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
  export LSAN_OPTIONS=suppressions=$root/tests/lsan.supp
  run_suite build-asan -DNPP_SANITIZE=ON
fi
