#!/usr/bin/env bash
# README command 2: install what is missing, build, start a throwaway PostgreSQL and run the whole
# suite through ctest (every backend, PostgreSQL also through a transaction-pooling PgBouncer;
# PostgreSQL tests fail, never skip, without their server).
# Extra arguments go to ctest, e.g. scripts/test.sh -L postgres. ROWGUARD_SANITIZERS=1 also builds
# and runs the ASan+UBSan build (whole suite) and the TSan build (thread and process tests) first
# (scripts/run-suites.sh); not in CI yet: the two builds alone take longer than CI allows here.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
if [[ "${ROWGUARD_SANITIZERS:-0}" == 1 ]]; then
  ROWGUARD_BUILD_DIR=build-asan ROWGUARD_CMAKE_ARGS="-DROWGUARD_SANITIZE=ON -DROWGUARD_BUILD_BENCH=OFF" \
    scripts/build.sh rowguard_tests rowguard_cli
  ROWGUARD_BUILD_DIR=build-tsan ROWGUARD_CMAKE_ARGS="-DROWGUARD_TSAN=ON -DROWGUARD_BUILD_BENCH=OFF" \
    scripts/build.sh rowguard_tests rowguard_cli
fi
# ctest's own summary stays the last thing printed (CI reads its closing lines).
exec scripts/pg-throwaway.sh --pgbouncer -- scripts/run-suites.sh "$@"
