#!/usr/bin/env bash
# Runs the test suites of the three builds against the servers scripts/pg-throwaway.sh started
# (scripts/test.sh calls it): the ASan+UBSan build's whole suite, the TSan build's thread and process
# tests (ctest labels ending in "threads": Catch tests tagged [threads], see tests/CMakeLists.txt), then the plain build's whole suite, last, so ctest's own
# summary is what CI reads at the end. Arguments go to every ctest run. ROWGUARD_SANITIZERS=0 runs
# the plain build only.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
if [[ "${ROWGUARD_SANITIZERS:-1}" == 1 ]]; then
  echo "== ASan+UBSan: the whole suite"
  LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    ctest --test-dir build-asan --output-on-failure -j"$jobs" -E "^fuzz:" "$@"
  echo "== TSan: the tests with threads or processes"
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
    ctest --test-dir build-tsan --output-on-failure -j"$jobs" -L 'threads$' "$@"
  echo "== the suite"
fi
exec ctest --test-dir build --output-on-failure -j"$jobs" "$@"
