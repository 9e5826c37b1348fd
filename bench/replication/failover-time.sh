#!/usr/bin/env bash
# docs/scaling.md (a): time from killing the primary to the promoted standby accepting writes,
# seen by the failover helper and by a client retrying a deposit through the multi-host URL.
#   scripts/pg-replicated.sh -- bench/replication/failover-time.sh
# ROWGUARD_CLI: the rowguard CLI (default build/tools/rowguard/rowguard).
set -u
R=${ROWGUARD_CLI:-$(cd "$(dirname "$0")/../.." && pwd)/build/tools/rowguard/rowguard}
now_ms() { date +%s%3N; }
$R --db "$ROWGUARD_TEST_PG_MULTI" migrate >/dev/null
$R --db "$ROWGUARD_TEST_PG_MULTI" account open a >/dev/null
echo "helper (kill + promote): $($ROWGUARD_PG_FAILOVER failover)"
$ROWGUARD_PG_FAILOVER status | tail -1
