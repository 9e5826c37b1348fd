#!/usr/bin/env bash
# Runs the test suites of the four builds against the servers scripts/pg-throwaway.sh started
# (scripts/test.sh calls it): the ASan+UBSan build's suite, the TSan build's thread and
# process tests (ctest labels ending in "threads": Catch tests tagged [threads], see
# tests/CMakeLists.txt), the minimal build's (SQLite only, no CLI), then the plain build's whole
# suite, last, so ctest's own summary is what CI reads at the end. Arguments go to every ctest run.
# ROWGUARD_SANITIZERS=0 runs the plain build only.
# The sanitizer runs cover each driver once: sqlite-file (sqlite3), postgres (libpqxx) and
# soci-postgresql (SOCI), plus the unit and fault tests; ASan leaves SOCI's thread tests to TSan.
# They leave out sqlite-memory (the sqlite3 driver again), pgbouncer (libpqxx again; the pooling is
# the server's), soci-sqlite3 (SOCI and the SQLite engine again) and the failover runs (a primary
# and standby of their own each): the plain suite runs those.
# Measured 2026-12-04 in CI: with sqlite-memory, pgbouncer and failover the whole command took
# 56 min (ASan 1,073 tests in 1,121 s, TSan 539 in 539 s); without them 51 min (ASan 740 tests in
# 851 s, of which soci-sqlite3 154 s and SOCI's thread tests 193 s). The budget is 45 min.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
started=$SECONDS
if [[ "${ROWGUARD_SANITIZERS:-1}" == 1 ]]; then
  skipped='^(pgbouncer|sqlite-memory|soci-sqlite3|failover)'
  echo "== ASan+UBSan: the whole suite on one backend per driver"
  LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    ctest --test-dir build-asan --output-on-failure -j"$jobs" -E "^fuzz:" -LE "$skipped|^soci-postgresql-threads" "$@"
  echo "== ASan+UBSan done in $((SECONDS - started)) s"; started=$SECONDS
  echo "== TSan: the tests with threads or processes, on one backend per driver"
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
    ctest --test-dir build-tsan --output-on-failure -j"$jobs" -L 'threads$' -LE "$skipped" "$@"
  echo "== TSan done in $((SECONDS - started)) s"; started=$SECONDS
  echo "== the minimal build (SQLite only, no CLI)"
  ctest --test-dir build-minimal --output-on-failure -j"$jobs" -E "^fuzz:" "$@"
  echo "== minimal done in $((SECONDS - started)) s"
fi
echo "== the suite"
exec ctest --test-dir build --output-on-failure -j"$jobs" "$@"
