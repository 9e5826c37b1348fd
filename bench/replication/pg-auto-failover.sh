#!/usr/bin/env bash
# docs/scaling.md: a pg_auto_failover formation (monitor + primary + secondary, Debian's
# postgresql-15-auto-failover) on loopback ports 46100-46102, as postgres, in a temp dir; kills the
# primary's keeper and postgres and measures until a deposit through the formation URI succeeds.
# Run as root (it uses runuser). PAF_TUNED=1 shortens the monitor's health-check timers first.
#   bench/replication/pg-auto-failover.sh
set -u
B=/usr/lib/postgresql/15/bin
d=$(mktemp -d /tmp/rowguard-paf.XXXXXX); chown postgres:postgres "$d"; chmod 700 "$d"
export XDG_CONFIG_HOME=$d/config XDG_DATA_HOME=$d/share XDG_RUNTIME_DIR=$d/run PG_AUTOCTL_DEBUG=
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done
  sleep 2
  for n in node1 node2 monitor; do [[ -f $d/$n/postmaster.pid ]] && runuser -u postgres -- $B/pg_ctl -D $d/$n -m immediate stop >/dev/null 2>&1; done
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done
  mkdir -p "${PAF_LOGS:-/tmp/rowguard-paf-logs}"; cp $d/*.log "${PAF_LOGS:-/tmp/rowguard-paf-logs}/" 2>/dev/null; echo "logs kept in ${PAF_LOGS:-/tmp/rowguard-paf-logs}"
  rm -rf "$d"
}
trap cleanup EXIT
P() { runuser -u postgres -- env XDG_CONFIG_HOME=$XDG_CONFIG_HOME XDG_DATA_HOME=$XDG_DATA_HOME XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR "$@"; }
now_ms() { date +%s%3N; }
MP=46100; N1=46101; N2=46102
setsid runuser -u postgres -- env XDG_CONFIG_HOME=$XDG_CONFIG_HOME XDG_DATA_HOME=$XDG_DATA_HOME XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR pg_autoctl create monitor --pgdata $d/monitor --pgport $MP --hostname 127.0.0.1 --auth trust --no-ssl --pgctl $B/pg_ctl --run >$d/monitor.log 2>&1 &
pids+=($!)
for i in $(seq 1 600); do psql -X -At "postgres://autoctl_node@127.0.0.1:$MP/pg_auto_failover" -c 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
MON="postgres://autoctl_node@127.0.0.1:$MP/pg_auto_failover?sslmode=disable"
echo "monitor up at $(date -u +%T)"
if [[ -n "${PAF_TUNED:-}" ]]; then
  for h in /var/run/postgresql /tmp 127.0.0.1; do
    if runuser -u postgres -- psql -X -q -h $h -p $MP -d pg_auto_failover -c "ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 5000" \
        -c "ALTER SYSTEM SET pgautofailover.primary_demote_timeout = 10000" -c "ALTER SYSTEM SET pgautofailover.health_check_period = 1000" \
        -c "ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 500" -c "SELECT pg_reload_conf()" >/dev/null; then echo "tuned via $h"; break; fi
  done
  runuser -u postgres -- psql -X -At -h /var/run/postgresql -p $MP -d pg_auto_failover -c "SELECT name, setting, unit FROM pg_settings WHERE name LIKE 'pgautofailover.%'" 2>&1
fi
setsid runuser -u postgres -- env XDG_CONFIG_HOME=$XDG_CONFIG_HOME XDG_DATA_HOME=$XDG_DATA_HOME XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR pg_autoctl create postgres --pgdata $d/node1 --pgport $N1 --hostname 127.0.0.1 --auth trust --no-ssl --pgctl $B/pg_ctl --monitor "$MON" --dbname rowguard_test --run >$d/node1.log 2>&1 &
pids+=($!); n1pid=$!
sleep 5
setsid runuser -u postgres -- env XDG_CONFIG_HOME=$XDG_CONFIG_HOME XDG_DATA_HOME=$XDG_DATA_HOME XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR pg_autoctl create postgres --pgdata $d/node2 --pgport $N2 --hostname 127.0.0.1 --auth trust --no-ssl --pgctl $B/pg_ctl --monitor "$MON" --dbname rowguard_test --run >$d/node2.log 2>&1 &
pids+=($!)
t0=$(now_ms)
for i in $(seq 1 180); do
  st=$(P pg_autoctl show state --pgdata $d/monitor 2>/dev/null)
  if [[ $(grep -c 'primary.*primary' <<<"$st") == 1 && $(grep -c 'secondary.*secondary' <<<"$st") == 1 ]]; then break; fi
  sleep 1
done
echo "$st"
echo "formation ready after $(( $(now_ms) - t0 )) ms from node2 create"
URI=$(P pg_autoctl show uri --formation default --pgdata $d/monitor 2>/dev/null)
URI=${URI/postgres:\/\//postgres://postgres@}; echo "formation uri: $URI"
P pg_autoctl get formation settings --pgdata $d/monitor 2>&1 | head -20
R=${ROWGUARD_CLI:-$(cd "$(dirname "$0")/../.." && pwd)/build/tools/rowguard/rowguard}
$R --db "$URI" migrate; $R --db "$URI" account open alice; $R --db "$URI" deposit alice 100 --key paf-1
$R --db "$URI" lock acquire payouts --ttl 10m --owner node-a
date -u +"%T.%N kill"; echo "--- killing node1 (its pg_autoctl keeper SIGKILLed, its postgres stopped -m immediate)"
t0=$(now_ms)
kill -KILL -- -$n1pid; P $B/pg_ctl -D $d/node1 -m immediate stop >/dev/null 2>&1
ok=0
for i in $(seq 1 1200); do
  if $R --db "$URI" --connect-timeout 2s deposit alice 1 --key "paf-after-$i" >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.1
done
echo "kill_to_first_write_ms $(( $(now_ms) - t0 )) (ok=$ok)"
P pg_autoctl show state --pgdata $d/monitor 2>&1
P pg_autoctl show events --pgdata $d/monitor --count 12 2>&1 | cut -c1-160
$R --db "$URI" ledger show --key paf-1; $R --db "$URI" lock list; $R --db "$URI" ledger check
