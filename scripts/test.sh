#!/usr/bin/env bash
# README command 2: install what is missing, build, start a throwaway PostgreSQL and run the whole
# suite through ctest (every backend, PostgreSQL also through a transaction-pooling PgBouncer;
# PostgreSQL tests fail, never skip, without their server).
# Extra arguments go to ctest, e.g. scripts/test.sh -L postgres
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
# ctest's own summary stays the last thing printed (CI reads its closing lines).
exec scripts/pg-throwaway.sh --pgbouncer -- ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
