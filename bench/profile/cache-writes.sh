#!/usr/bin/env bash
# The cache's writes on PostgreSQL as the library sends them, before and after schema step 010,
# timed with pgbench straight to the server (named prepared statements) and through a
# transaction-pooling PgBouncer (unnamed statements): bench/RESULTS.md, "Issue 23: cache store and
# invalidate as functions".
#
#   scripts/pg-throwaway.sh --pgbouncer -- bench/profile/cache-writes.sh [SECONDS [ROUNDS [CLIENTS]]]
#
# Defaults: 2 s rounds, 3 rounds, clients "1 4". The variants of one row run alternately, round by
# round, so a load peak of a shared machine falls on both. Prints transactions/s per round and the
# medians. Needs pgbench and a built build/tools/rowguard/rowguard (it migrates the database).
#   invalidate  the statement (before) | SELECT * FROM rowguard_cache_invalidate($1, NULL) (after)
#   store       a miss's read, then BEGIN, the write gate, the statement, COMMIT (before) | the read,
#               then SELECT * FROM rowguard_cache_store(...) (after)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-2}"
rounds="${2:-3}"
clients="${3:-1 4}"
: "${ROWGUARD_TEST_PG:?run under scripts/pg-throwaway.sh --pgbouncer}"
: "${ROWGUARD_TEST_PGBOUNCER:?run under scripts/pg-throwaway.sh --pgbouncer}"
direct="$ROWGUARD_TEST_PG"
pooled="${ROWGUARD_TEST_PGBOUNCER%%\?*}"
work="$(mktemp -d /tmp/rowguard-cache-writes.XXXXXX)"
trap 'rm -rf "$work"' EXIT

build/tools/rowguard/rowguard --db "$direct" migrate >/dev/null
psql -q -X -v ON_ERROR_STOP=1 "$direct" >/dev/null <<'SQL'
INSERT INTO rowguard_cache (key, value, expires_at, generation, size_bytes, created_at, updated_at)
SELECT CAST(g AS text), decode(repeat('76', 100), 'hex'), now() + interval '1 day', 1, 100, now(), now()
  FROM generate_series(1, 1000) g
ON CONFLICT (key) DO NOTHING;
SQL

now_ms="CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS bigint)"
value="'\\x$(printf '76%.0s' $(seq 100))'"
read="SELECT COALESCE(c.generation, 0) AS g, n.now_ms AS t FROM (SELECT $now_ms AS now_ms) n LEFT JOIN rowguard_cache c ON c.key = CAST(:k AS text) \\gset"
cat >"$work/invalidate-before.sql" <<SQL
\\set k random(1, 1000)
INSERT INTO rowguard_cache AS c (key, expires_at, generation, size_bytes, created_at, updated_at) SELECT CAST(:k AS text), clock_timestamp(), ($now_ms * 1000), 0, clock_timestamp(), clock_timestamp() WHERE 1 = 1 ON CONFLICT (key) DO UPDATE SET value = NULL, expires_at = excluded.expires_at, generation = c.generation + 1, size_bytes = 0, updated_at = excluded.updated_at;
SQL
cat >"$work/invalidate-after.sql" <<SQL
\\set k random(1, 1000)
SELECT * FROM rowguard_cache_invalidate(:k, NULL);
SQL
cat >"$work/store-before.sql" <<SQL
\\set k random(1, 1000)
$read
BEGIN;
SELECT 1 FROM (SELECT pg_advisory_xact_lock_shared(hashtextextended('rowguard_cache', 0))) AS named_lock;
INSERT INTO rowguard_cache AS c (key, value, expires_at, generation, size_bytes, load_ms, created_at, updated_at) SELECT CAST(:k AS text), CAST($value AS bytea), (clock_timestamp() + CAST(60000 AS bigint) * INTERVAL '1 millisecond'), ($now_ms * 1000), 100, 5, clock_timestamp(), clock_timestamp() WHERE CAST(:t AS bigint) > $now_ms - CAST(3600000 AS bigint) AND NOT EXISTS (SELECT 1 FROM rowguard_cache_prefixes p WHERE p.invalidated_at >= (TIMESTAMPTZ 'epoch' + CAST(:t AS bigint) * INTERVAL '1 millisecond') AND substr(CAST(:k AS text), 1, length(p.prefix)) = p.prefix) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at, size_bytes = excluded.size_bytes, load_ms = excluded.load_ms, updated_at = excluded.updated_at WHERE c.generation = :g AND CAST(floor(EXTRACT(EPOCH FROM c.updated_at) * 1000) AS bigint) <= CAST(:t AS bigint) RETURNING generation;
COMMIT;
SQL
cat >"$work/store-after.sql" <<SQL
\\set k random(1, 1000)
$read
SELECT * FROM rowguard_cache_store(CAST(:k AS text), $value, 100, 60000, :g, 5, :t, 3600000);
SQL

tps() {  # $1 url, $2 mode, $3 clients, $4 script
  pgbench -n -M "$2" -c "$3" -j "$3" -T "$seconds" -f "$4" "$1" 2>&1 | awk '/^tps/ {printf "%d", $3}'
}
median() { tr ' ' '\n' | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
printf '%-11s %-9s %7s  %-24s %-24s %s\n' op via clients before after "median ratio"
for op in invalidate store; do
  for via in direct pgbouncer; do
    url="$direct" mode=prepared
    if [[ "$via" == pgbouncer ]]; then url="$pooled" mode=extended; fi
    for c in $clients; do
      before="" after=""
      for ((r = 0; r < rounds; r++)); do
        before+="$(tps "$url" "$mode" "$c" "$work/$op-before.sql") "
        after+="$(tps "$url" "$mode" "$c" "$work/$op-after.sql") "
      done
      mb="$(echo $before | median)" ma="$(echo $after | median)"
      printf '%-11s %-9s %7s  %-24s %-24s %.2fx\n' "$op" "$via" "$c" "$before" "$after" \
        "$(awk -v a="$ma" -v b="$mb" 'BEGIN {print a / b}')"
    done
  done
done
