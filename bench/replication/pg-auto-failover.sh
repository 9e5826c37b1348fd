#!/usr/bin/env bash
# docs/scaling.md, pg_auto_failover: a deposit and a lease through the formation's URI, then the
# primary killed; measures until a deposit through the URI succeeds again, and checks that the
# deposit and the lease from before the kill survived.
#   scripts/pg-auto-failover.sh [--tuned] -- bench/replication/pg-auto-failover.sh
set -u
R=${ROWGUARD_CLI:-$(cd "$(dirname "$0")/../.." && pwd)/build/tools/rowguard/rowguard}
U=$ROWGUARD_TEST_PG_MULTI
now_ms() { date +%s%3N; }
$R --db "$U" migrate
$R --db "$U" account open alice
$R --db "$U" deposit alice 100 --key paf-1
$R --db "$U" lock acquire payouts --ttl 10m --owner node-a
t0=$(now_ms)
"$ROWGUARD_PG_FAILOVER" failover &
helper=$!
ok=0
for i in $(seq 1 1800); do
  if $R --db "$U" --connect-timeout 2s deposit alice 1 --key "paf-after-$i" >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.1
done
echo "kill_to_first_deposit_ms $(( $(now_ms) - t0 )) (ok=$ok)"
wait "$helper"
"$ROWGUARD_PG_FAILOVER" state
$R --db "$U" ledger show --key paf-1
$R --db "$U" lock list
$R --db "$U" ledger check
