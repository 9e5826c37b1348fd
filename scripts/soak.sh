#!/usr/bin/env bash
# The long mode of the fault suite (not run in CI): the bank, lock and cache workloads for
# --minutes each (default 5) on every PostgreSQL backend while sessions are killed at random, then
# while the server is restarted every few seconds. Each run prints what it did (transfers
# acknowledged, retries, lock holds, cache reads, errors by kind) and fails on any broken invariant.
#   scripts/soak.sh                 5 minutes per run (about 25 minutes in all)
#   scripts/soak.sh --minutes 1
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=5
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    *) echo "soak: unknown option $1 (expected --minutes N)" >&2; exit 2 ;;
  esac
done
[[ -x build/tests/rowguard_tests ]] || scripts/build.sh
export ROWGUARD_FAULT_SECONDS=$((minutes * 60))
tests=build/tests/rowguard_tests
status=0
for backend in postgres soci-postgresql pgbouncer; do
  echo "== soak: sessions killed at random, $backend, $minutes min"
  scripts/pg-throwaway.sh --pgbouncer -- "$tests" "faults: sessions killed at random*" --backend "$backend" \
    --warn NoTests || status=1
done
for backend in postgres pgbouncer; do
  echo "== soak: server restarted every few seconds, $backend, $minutes min"
  scripts/pg-throwaway.sh --pgbouncer -- "$tests" "[restart]" --backend "$backend" --warn NoTests || status=1
done
exit "$status"
