#!/usr/bin/env bash
# docs/scaling.md (d): with an asynchronous standby, an acknowledged transfer is lost and a fencing
# token is issued twice. Needs --async:
#   scripts/pg-replicated.sh --async -- bench/replication/async-loss.sh
set -u
R=${ROWGUARD_CLI:-$(cd "$(dirname "$0")/../.." && pwd)/build/tools/rowguard/rowguard}
M=$ROWGUARD_TEST_PG_MULTI
F=$ROWGUARD_PG_FAILOVER
run() { echo "\$ rowguard $*"; $R --db "$M" "$@"; echo "  (exit $?)"; }
run migrate
run account open alice
run account open bob
run deposit alice 10000 --key dep-1
run lock acquire payouts --ttl 10m --owner node-a
run lock release payouts --owner node-a --token 1
$F caught-up && echo "--- standby has replayed everything so far"
$F detach-standby && echo "--- standby's WAL receiver cut (it lags from here on; async: the primary does not wait)"
run transfer alice bob 700 --key tr-lost
run lock acquire payouts --ttl 10m --owner node-a
run lock list
echo "--- failover: $($F failover)"
echo "--- on the new primary"
run ledger show --key tr-lost
run account list
run lock list
run lock acquire payouts --ttl 10m --owner node-b
run ledger check
