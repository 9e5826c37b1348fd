#!/usr/bin/env bash
# The long mode of the fault and interleaving suites (not run in CI).
#
# Faults: the bank, lock and cache workloads for --minutes each (default 5) on every PostgreSQL
# backend while sessions are killed at random, then while the server is restarted every few
# seconds. Each run prints what it did (transfers acknowledged, retries, lock holds, cache reads,
# errors by kind) and fails on any broken invariant.
#
# Interleavings: the model test with --model-steps steps (default 50000; 2000 in CI) and every
# `[interleave]` test (maintenance beside the payments, lease, cache, saga and two-phase workloads,
# tests/system/interleave_test.cpp) for --interleave-seconds each (default 30; 3 in CI), on all six
# backends. Every run draws a fresh seed and prints it with any failure; rerun one with
# ROWGUARD_SEED=N (the same random choices; thread timing still differs).
#
#   scripts/soak.sh                            both parts: faults 5 min per run, interleavings 30 s
#   scripts/soak.sh --minutes 1
#   scripts/soak.sh --only interleave --interleave-seconds 120 --model-steps 200000
#   scripts/soak.sh --only faults
# Environment read by the tests: ROWGUARD_FAULT_SECONDS, ROWGUARD_INTERLEAVE_SECONDS,
# ROWGUARD_MODEL_STEPS (set here from the options), ROWGUARD_SEED (pass it through to rerun a seed),
# ROWGUARD_INTERLEAVE_SKIP and ROWGUARD_MODEL_SKIP_OPS (triage: leave maintenance operations out).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=5
interleave_seconds=30
model_steps=50000
only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --interleave-seconds) interleave_seconds="$2"; shift 2 ;;
    --model-steps) model_steps="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    *) echo "soak: unknown option $1 (expected --minutes N, --interleave-seconds N, --model-steps N," \
            "--only faults|interleave)" >&2
       exit 2 ;;
  esac
done
case "$only" in ""|faults|interleave) ;; *) echo "soak: --only takes faults or interleave" >&2; exit 2 ;; esac
[[ -x build/tests/rowguard_tests ]] || scripts/build.sh
tests=build/tests/rowguard_tests
status=0
if [[ "$only" != interleave ]]; then
  export ROWGUARD_FAULT_SECONDS=$((minutes * 60))
  for backend in postgres soci-postgresql pgbouncer; do
    echo "== soak: sessions killed at random, $backend, $minutes min"
    scripts/pg-throwaway.sh --pgbouncer -- "$tests" "faults: sessions killed at random*" --backend "$backend" \
      --warn NoTests || status=1
  done
  for backend in postgres pgbouncer; do
    echo "== soak: server restarted every few seconds, $backend, $minutes min"
    scripts/pg-throwaway.sh --pgbouncer -- "$tests" "[restart]" --backend "$backend" --warn NoTests || status=1
  done
fi
if [[ "$only" != faults ]]; then
  export ROWGUARD_INTERLEAVE_SECONDS="$interleave_seconds" ROWGUARD_MODEL_STEPS="$model_steps"
  for backend in sqlite-file sqlite-memory soci-sqlite3 postgres soci-postgresql pgbouncer; do
    # The two-phase test is [pg]: PostgreSQL backends only.
    case "$backend" in
      postgres|soci-postgresql|pgbouncer) spec="[interleave],model:*" ;;
      *) spec="[interleave]~[pg],model:*" ;;
    esac
    echo "== soak: maintenance beside the workloads, $backend, ${interleave_seconds} s each, model $model_steps steps"
    scripts/pg-throwaway.sh --pgbouncer -- "$tests" "$spec" --backend "$backend" --warn NoTests || status=1
  done
fi
exit "$status"
