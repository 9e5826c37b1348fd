#!/usr/bin/env bash
# docs/scaling.md (c): leases, tokens and transfers through a kill + promotion of a synchronous standby.
#   scripts/pg-replicated.sh -- bench/replication/failover-cli.sh
set -u
R=${ROWGUARD_CLI:-$(cd "$(dirname "$0")/../.." && pwd)/build/tools/rowguard/rowguard}
M=$ROWGUARD_TEST_PG_MULTI
run() { echo "\$ rowguard $*"; $R --db "$M" "$@"; echo "  (exit $?)"; }
run migrate
run account open alice
run account open bob
run deposit alice 10000 --key dep-1
run transfer alice bob 2500 --key tr-1
run transfer alice bob 500 --key tr-2
run lock acquire payouts --ttl 10m --owner node-a
run lock acquire payouts --ttl 10m --owner node-b
run lock list
echo "--- failover: $($ROWGUARD_PG_FAILOVER failover)"
$ROWGUARD_PG_FAILOVER status
echo "--- on the new primary (multi-host URL now reaches the promoted standby)"
run lock list
run account list
run ledger transfers
run ledger check
echo "--- retry of an acknowledged transfer with its key: a replay, not a second transfer"
run transfer alice bob 500 --key tr-2
echo "--- node-a still holds the lease on the new primary: node-b is refused, node-a renews and releases"
run lock acquire payouts --ttl 10m --owner node-b
run lock renew payouts --owner node-a --token 1 --ttl 10m
run lock release payouts --owner node-a --token 1
echo "--- a new acquire gets a larger token than any issued before the failover"
run lock acquire payouts --ttl 10m --owner node-b
run lock list
