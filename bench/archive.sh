#!/usr/bin/env bash
# Archive of N old transfers (default 100000), plain tables vs monthly partitions, on a throwaway
# PostgreSQL (run it through scripts/pg-throwaway.sh [--durable] -- bench/archive.sh [N]).
# Workload: 100 accounts, N transfers of 1 cent in a ring (2 entries each) spread over the 90 days
# before the run, written by bulk SQL (the library is not what is measured here); then
# `rowguard ledger archive` with a cutoff 30 days back (two thirds of the rows move), timed, and
# `rowguard ledger check` after it, timed too. The partitioned run converts the tables with
# schema/postgres/partitioning.sql after loading (its time is reported as well).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
cli=${ROWGUARD_CLI:-build/tools/rowguard/rowguard}
url=${ROWGUARD_TEST_PG:?run through scripts/pg-throwaway.sh}
ms() { date +%s%3N; }

run() {
  local prefix=$1 partitioned=$2
  "$cli" --db "$url" --prefix "$prefix" migrate >/dev/null
  psql -q -v ON_ERROR_STOP=1 "$url" <<SQL
INSERT INTO ${prefix}accounts (id, currency, balance, min_balance, created_at, updated_at)
  SELECT 'acc' || g, 'EUR', 0, -1000000, now(), now() FROM generate_series(0, 99) g;
INSERT INTO ${prefix}transfers (id, idempotency_key, kind, from_account, to_account, amount, currency, outcome, created_at)
  SELECT g, 'k' || g, 'transfer', 'acc' || (g % 100), 'acc' || ((g + 1) % 100), 1, 'EUR', 'ok',
         now() - interval '90 days' + g * (interval '90 days' / $n) FROM generate_series(1, $n) g;
SELECT setval('${prefix}transfers_id_seq', $n) AS last_id \gset
INSERT INTO ${prefix}entries (transfer_id, account_id, amount, created_at)
  SELECT t.id, x.account, x.amount, t.created_at FROM ${prefix}transfers t,
         LATERAL (VALUES (t.from_account, -1), (t.to_account, 1)) x(account, amount);
ANALYZE;
SQL
  if [[ $partitioned == 1 ]]; then
    local t0; t0=$(ms)
    "$cli" --prefix "$prefix" schema --dialect postgres --partitioning | psql -q -1 -v ON_ERROR_STOP=1 "$url" >/dev/null
    echo "  partitioning.sql on $n transfers: $(( $(ms) - t0 )) ms"
  fi
  local cutoff t0 t1
  cutoff="@$(( $(date +%s%3N) - 30 * 86400000 ))"
  t0=$(ms)
  "$cli" --db "$url" --prefix "$prefix" ledger archive --before "$cutoff"
  t1=$(ms)
  echo "  archive: $(( t1 - t0 )) ms"
  t0=$(ms)
  "$cli" --db "$url" --prefix "$prefix" ledger check | head -1
  echo "  check after: $(( $(ms) - t0 )) ms"
}

echo "plain tables:"
run bench_plain_ 0
echo "monthly partitions:"
run bench_part_ 1
