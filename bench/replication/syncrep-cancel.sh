#!/usr/bin/env bash
# docs/scaling.md (e): synchronous primary, standby stopped: a COMMIT waits; cancelling the wait
# commits locally with a WARNING. psql shows it; the rowguard CLI (today) reports plain success.
#   scripts/pg-replicated.sh -- bench/replication/syncrep-cancel.sh
set -u
R=${ROWGUARD_CLI:-$(cd "$(dirname "$0")/../.." && pwd)/build/tools/rowguard/rowguard}
M=$ROWGUARD_TEST_PG_MULTI
F=$ROWGUARD_PG_FAILOVER
P=$ROWGUARD_TEST_PG_PRIMARY
$R --db "$M" migrate >/dev/null; $R --db "$M" account open alice >/dev/null
$F stop-standby && echo "--- standby stopped"
echo "--- psql: INSERT on the primary (autocommit), cancelled after 2 s from another session"
psql -X "$P" -c "CREATE TABLE IF NOT EXISTS t(x int)" 2>&1 &
sleep 2
psql -X -At "$P" -c "SELECT pid, wait_event FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
psql -X -At "$P" -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'" >/dev/null
wait
echo "--- rowguard deposit through the CLI, cancelled the same way"
( $R --db "$M" deposit alice 300 --key e-1; echo "  (deposit exit $?)" ) &
sleep 2
psql -X -At "$P" -c "SELECT application_name, wait_event, left(query, 60) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
psql -X -At "$P" -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'" >/dev/null
wait
echo "--- visible locally on the primary (not yet on any standby):"
psql -X -At "$P" -c "SELECT to_regclass('t') IS NOT NULL AS table_t_exists"
$R --db "$P" ledger show --key e-1; echo "  (exit $?)"
echo "--- a retry with the same key is a replay (its commit still waits for the standby, so cancel again):"
( $R --db "$M" deposit alice 300 --key e-1; echo "  (retry exit $?)" ) &
sleep 2
psql -X -At "$P" -c "SELECT count(*) AS waiting FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
$F start-standby && echo "--- standby back: the waits are released"
wait
$R --db "$M" account show alice
