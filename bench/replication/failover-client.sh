#!/usr/bin/env bash
# docs/scaling.md (a): after the primary is killed, a client retries a deposit through the
# multi-host URL every 20 ms while the standby is promoted; prints when the first one succeeds.
#   scripts/pg-replicated.sh -- bench/replication/failover-client.sh
set -u
R=${ROWGUARD_CLI:-$(cd "$(dirname "$0")/../.." && pwd)/build/tools/rowguard/rowguard}
now_ms() { date +%s%3N; }
$R --db "$ROWGUARD_TEST_PG_MULTI" migrate >/dev/null
$R --db "$ROWGUARD_TEST_PG_MULTI" account open a >/dev/null
$ROWGUARD_PG_FAILOVER kill-primary
t0=$(now_ms)
( n=0
  while ! $R --db "$ROWGUARD_TEST_PG_MULTI" --connect-timeout 2s deposit a 1 --key after-kill >/dev/null 2>&1; do
    n=$((n + 1)); sleep 0.02
  done
  echo "client: first write through the multi-host URL $(( $(now_ms) - t0 )) ms after the kill, $n failed tries" ) &
echo "helper: $($ROWGUARD_PG_FAILOVER promote)"
wait
