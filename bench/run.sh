#!/usr/bin/env bash
# The whole comparison in one go: installs what is missing, builds rowguard-bench, starts
# redis-server and a throwaway PostgreSQL with fsync=off (and PgBouncer in front of it), runs every workload (SQLite too), then
# again against a PostgreSQL with its default durability (fsync on). JSON goes to bench/out/.
#   bench/run.sh            the full run (about 25 minutes on 2 cores)
#   bench/run.sh --quick    a smoke run, under two minutes
#   bench/run.sh ARGS...    ARGS go to rowguard-bench (e.g. --seconds 3 --clients 1,4,16)
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target rowguard-bench
mkdir -p bench/out
bench/with-redis.sh -- scripts/pg-throwaway.sh --pgbouncer -- bash -c \
  'build/bench/rowguard-bench "$@" --processes --redis "$ROWGUARD_BENCH_REDIS" --label "fsync=off" --json bench/out/fsync-off.json' \
  _ "${args[@]}"
bench/with-redis.sh -- scripts/pg-throwaway.sh --durable --pgbouncer -- bash -c \
  'build/bench/rowguard-bench "$@" --backend postgres --redis "$ROWGUARD_BENCH_REDIS" --label "fsync=on (defaults)" \
     --json bench/out/fsync-on.json' _ "${args[@]}"
