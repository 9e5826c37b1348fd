#!/usr/bin/env bash
# Runs the test suites of the four builds against the servers scripts/pg-throwaway.sh started
# (scripts/test.sh calls it): the ASan+UBSan build's suite, the TSan build's thread and
# process tests (ctest labels ending in "threads": Catch tests tagged [threads], see
# tests/CMakeLists.txt), the minimal build's (SQLite only, no CLI), then the plain build's,
# last, so ctest's own summary is what CI reads at the end. Arguments go to every ctest run.
# ROWGUARD_SANITIZERS=0 runs the plain build only, its whole suite.
# Every behaviour test runs once on every backend, in one build or another:
# - ASan+UBSan runs the whole suite on one backend per driver: sqlite-file (sqlite3), postgres
#   (libpqxx) and soci-postgresql (SOCI), plus the unit and fault tests; it leaves SOCI's thread
#   tests to TSan (the package tests exist only in the plain build).
# - TSan runs the thread and process tests on those backends, SOCI's included.
# - The sanitizers run the "cli:" tests (rowguard processes run one after another, about 100 ms
#   each under ASan and 180 ms under TSan, against 36 ms in the plain build) on sqlite-file and
#   unit only: the CLI's code, its own threads included (lock run's heartbeat, serve), is the same
#   on every backend, and the drivers' code is what the library's tests check under both. The
#   plain build runs the "cli:" tests of postgres and soci-postgresql.
# - The plain build (optimised, what users ship) runs what the sanitizers skipped: sqlite-memory
#   (the sqlite3 driver again), pgbouncer (libpqxx again; the pooling is the server's),
#   soci-sqlite3 (SOCI and the SQLite engine again), the failover runs (a primary and standby of
#   their own each), the package, bench and fuzz tests; not again what ASan or TSan already ran on
#   sqlite-file, postgres and soci-postgresql.
# Measured in CI: 2026-12-04 with sqlite-memory, pgbouncer and failover under ASan, the whole
# command took 56 min (ASan 1,073 tests in 1,121 s, TSan 539 in 539 s); without them 51 min (ASan
# 740 tests in 851 s). 2026-12-05: 49 min with the plain build running the whole suite again
# (1,290 tests in 667 s, of which 432 s*proc were the ASan run's backends). The budget is 45 min.
# Later on 2026-12-05, about 49 min again (ASan and TSan done at 2,337 s, of which the "cli:" tests
# of postgres and soci-postgresql were 179 s*proc under ASan and 278 under TSan, and the unit
# ones 69 under TSan; the plain build ran SOCI's thread tests again, 221 s*proc).
# With this split, from a fresh clone at f454f09 on a quiet 2-core machine: 43 min 42 s (ASan 628
# tests in 551 s, TSan 331 in 428 s, the plain build's cli: tests 36 in 45 s, its suite 703 in 362 s).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
started=$SECONDS
if [[ "${ROWGUARD_SANITIZERS:-1}" == 1 ]]; then
  skipped='^(pgbouncer|sqlite-memory|soci-sqlite3|failover)'
  plain_cli='(postgres|soci-postgresql):cli: '
  echo "== ASan+UBSan: the whole suite on one backend per driver"
  LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    ctest --test-dir build-asan --output-on-failure -j"$jobs" -E "^(fuzz:|$plain_cli)" \
      -LE "$skipped|^soci-postgresql-threads" "$@"
  echo "== ASan+UBSan done in $((SECONDS - started)) s"; started=$SECONDS
  echo "== TSan: the tests with threads or processes, on one backend per driver"
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
    ctest --test-dir build-tsan --output-on-failure -j"$jobs" -L 'threads$' -LE "$skipped" \
      -E "^($plain_cli|unit:cli: )" "$@"
  echo "== TSan done in $((SECONDS - started)) s"; started=$SECONDS
  echo "== the minimal build (SQLite only, no CLI)"
  ctest --test-dir build-minimal --output-on-failure -j"$jobs" -E "^fuzz:" "$@"
  echo "== minimal done in $((SECONDS - started)) s"
fi
if [[ "${ROWGUARD_SANITIZERS:-1}" == 1 ]]; then
  echo "== the plain build: the \"cli:\" tests of postgres and soci-postgresql"
  ctest --test-dir build --output-on-failure -j"$jobs" -R "^$plain_cli" "$@"
  echo "== the suite"
  exec ctest --test-dir build --output-on-failure -j"$jobs" \
    -LE '^(postgres|postgres-threads|soci-postgresql|soci-postgresql-threads|sqlite-file|sqlite-file-threads)$' "$@"
fi
echo "== the suite"
exec ctest --test-dir build --output-on-failure -j"$jobs" "$@"
