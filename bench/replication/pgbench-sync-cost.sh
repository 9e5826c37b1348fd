#!/usr/bin/env bash
# docs/scaling.md (b): pgbench simple-update, 2 clients, 20 s, durable settings (fsync on):
# primary alone (scripts/pg-throwaway.sh --durable), sync standby (synchronous_commit=on),
# sync remote_apply, async standby. ROUNDS (default 1) interleaves the four to spread the noise.
#   bench/replication/pgbench-sync-cost.sh
set -u
cd "$(dirname "$0")/../.."
one=$(mktemp); trap 'rm -f "$one"' EXIT
cat >"$one" <<'INNER'
url=${ROWGUARD_TEST_PG_PRIMARY:-$ROWGUARD_TEST_PG}
pgbench -i -s 1 -q "$url" >/dev/null 2>&1
pgbench -b simple-update -M prepared -c 2 -j 2 -T 20 "$url" 2>/dev/null | grep -E 'latency average|^tps'
INNER
for round in $(seq 1 "${ROUNDS:-1}"); do
  echo "== round $round primary alone (load $(cut -d' ' -f1 /proc/loadavg))"; scripts/pg-throwaway.sh --durable -- bash "$one" 2>/dev/null
  echo "== round $round sync on (load $(cut -d' ' -f1 /proc/loadavg))"; scripts/pg-replicated.sh -- bash "$one" 2>/dev/null
  echo "== round $round sync remote_apply (load $(cut -d' ' -f1 /proc/loadavg))"; scripts/pg-replicated.sh --remote-apply -- bash "$one" 2>/dev/null
  echo "== round $round async (load $(cut -d' ' -f1 /proc/loadavg))"; scripts/pg-replicated.sh --async -- bash "$one" 2>/dev/null
done
