#!/usr/bin/env bash
# README command 2: install what is missing, build, start a throwaway PostgreSQL and run the whole
# suite through ctest (every backend, PostgreSQL also through a transaction-pooling PgBouncer;
# PostgreSQL tests fail, never skip, without their server).
# Builds use the presets of CMakePresets.json (dev, asan, tsan). It also builds the suite with
# ASan+UBSan and with TSan and runs them first: the whole suite under
# ASan+UBSan, the thread and process tests under TSan (scripts/run-suites.sh).
# Extra arguments go to ctest, e.g. scripts/test.sh -L postgres; ROWGUARD_SANITIZERS=0 skips the
# sanitizer builds (a quicker local run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
if [[ "${ROWGUARD_SANITIZERS:-1}" == 1 ]]; then
  scripts/build.sh --preset asan rowguard_tests rowguard_cli
  scripts/build.sh --preset tsan rowguard_tests rowguard_cli
fi
# ctest's own summary stays the last thing printed (CI reads its closing lines).
exec scripts/pg-throwaway.sh --pgbouncer -- scripts/run-suites.sh "$@"
