#!/usr/bin/env bash
# README command 2: install what is missing, build, start a throwaway PostgreSQL and run the whole
# suite through ctest (every backend, PostgreSQL also through a transaction-pooling PgBouncer;
# PostgreSQL tests fail, never skip, without their server).
# Builds use the presets of CMakePresets.json (dev, asan, tsan, minimal). It also builds the suite
# with ASan+UBSan and with TSan and runs them first (the suite under ASan+UBSan, the thread and
# process tests under TSan, one backend per driver: scripts/run-suites.sh), then the minimal
# build's (SQLite only, no CLI).
# Extra arguments go to ctest, e.g. scripts/test.sh -L postgres; ROWGUARD_SANITIZERS=0 skips the
# sanitizer builds (a quicker local run).
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase's wall time, so a CI log says where the budget (45 min) went.
started=$SECONDS
phase() { echo "== test.sh: $1 done at $((SECONDS - started)) s"; }
scripts/install-deps.sh
phase "install-deps"
# Every source file as .clang-format writes it (clang-format-14 -i FILE fixes one), and clang-tidy
# over src/ and tools/ (.clang-tidy): any finding fails the command.
find src include tools tests bench examples fuzz -name '*.cpp' -o -name '*.hpp' | xargs clang-format-14 --dry-run -Werror
phase "clang-format"
scripts/tidy.sh
phase "clang-tidy"
scripts/build.sh
phase "dev build"
if [[ "${ROWGUARD_SANITIZERS:-1}" == 1 ]]; then
  scripts/build.sh --preset asan rowguard_tests rowguard_cli
  phase "asan build"
  scripts/build.sh --preset tsan rowguard_tests rowguard_cli
  phase "tsan build"
  # SQLite only, without the CLI: the library and the tests build and pass without PostgreSQL and SOCI.
  scripts/build.sh --preset minimal
  phase "minimal build"
fi
# ctest's own summary stays the last thing printed (CI reads its closing lines).
exec scripts/pg-throwaway.sh --pgbouncer -- scripts/run-suites.sh "$@"
