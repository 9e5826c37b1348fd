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
scripts/install-deps.sh
# Every source file as .clang-format writes it (clang-format-14 -i FILE fixes one), and clang-tidy
# over src/ and tools/ (.clang-tidy): any finding fails the command.
find src include tools tests bench examples fuzz -name '*.cpp' -o -name '*.hpp' | xargs clang-format-14 --dry-run -Werror
scripts/tidy.sh
scripts/build.sh
if [[ "${ROWGUARD_SANITIZERS:-1}" == 1 ]]; then
  scripts/build.sh --preset asan rowguard_tests rowguard_cli
  scripts/build.sh --preset tsan rowguard_tests rowguard_cli
  # SQLite only, without the CLI: the library and the tests build and pass without PostgreSQL and SOCI.
  scripts/build.sh --preset minimal
fi
# ctest's own summary stays the last thing printed (CI reads its closing lines).
exec scripts/pg-throwaway.sh --pgbouncer -- scripts/run-suites.sh "$@"
