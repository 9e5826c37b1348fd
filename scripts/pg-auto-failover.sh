#!/usr/bin/env bash
# Starts a throwaway pg_auto_failover formation (Debian's postgresql-15-auto-failover): a monitor
# and two data nodes on loopback, each run by its own pg_autoctl keeper, in a temporary directory
# as the postgres user; stops everything and deletes it on exit. Forming takes about 100 s here
# (docs/scaling.md) or less; the monitor then promotes the secondary on its own when the primary dies.
# Needs root (runuser) and the package (not installed by scripts/install-deps.sh: only this script
# and hand-run measurements use it):
#   apt-get install -y postgresql-15-auto-failover
#
#   scripts/pg-auto-failover.sh [--tuned] -- CMD ARGS...   run CMD with the variables below
#   --tuned   shorter monitor timers (health check every 1 s, unhealthy after 5 s, demote timeout
#             10 s) instead of pg_auto_failover's defaults: failover in about 16 s instead of 50 s
#
# Exported to CMD:
#   ROWGUARD_TEST_PG, ROWGUARD_TEST_PG_MULTI  the formation's URI (both nodes,
#                             target_session_attrs=read-write), with user postgres
#   ROWGUARD_PG_FAILOVER      a helper: `failover` SIGKILLs the current primary's keeper, stops its
#                             postgres with -m immediate (a crash), waits until the URI takes a
#                             write again and prints "kill_to_writable_ms N"; `state` prints
#                             `pg_autoctl show state`
#
# The suite's failover workloads run through it by hand (not in CI: forming alone takes minutes):
#   scripts/pg-auto-failover.sh --tuned -- build/tests/rowguard_tests "[.failover-sync]" --backend postgres
set -euo pipefail
source "$(dirname "$0")/pg-lib.sh"
pg_require pg-auto-failover pg_ctl psql

tuned=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tuned) tuned=1; shift ;;
    --) shift; break ;;
    *) echo "pg-auto-failover: unknown option $1 (expected --tuned, -- CMD)" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "pg-auto-failover: nothing to run (-- CMD ARGS...)" >&2; exit 2; }
[[ "$(id -u)" == 0 ]] || { echo "pg-auto-failover: needs root (runuser)" >&2; exit 2; }
command -v pg_autoctl >/dev/null ||
  { echo "pg-auto-failover: pg_autoctl not found: apt-get install -y postgresql-15-auto-failover" >&2; exit 1; }

dir=$(pg_private_dir rowguard-paf)
# pg_autoctl keeps its state under XDG directories: private to this formation.
autoctl() {
  runuser -u postgres -- env XDG_CONFIG_HOME="$dir/config" XDG_DATA_HOME="$dir/share" XDG_RUNTIME_DIR="$dir/run" \
    pg_autoctl "$@"
}
cleanup() {
  local rc=$? pid n
  trap - EXIT INT TERM
  # Every step may find its target gone already (the failover killed a node): none may stop the rest.
  for pid in "$dir"/*.pgid; do kill -TERM -- "-$(cat "$pid")" 2>/dev/null || true; done
  sleep 2
  for n in node1 node2 monitor; do
    if [[ -f "$dir/$n/postmaster.pid" ]]; then
      as_postgres "$PG_BIN/pg_ctl" -D "$dir/$n" -m immediate stop >/dev/null 2>&1 || true
    fi
  done
  for pid in "$dir"/*.pgid; do kill -KILL -- "-$(cat "$pid")" 2>/dev/null || true; done
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# keeper NAME ARGS...: runs `pg_autoctl create ... --run` in its own process group (so a kill
# takes the keeper and everything it started), logging to $dir/NAME.log.
keeper() {
  local name=$1
  shift
  setsid runuser -u postgres -- env XDG_CONFIG_HOME="$dir/config" XDG_DATA_HOME="$dir/share" \
    XDG_RUNTIME_DIR="$dir/run" pg_autoctl create "$@" --pgdata "$dir/$name" --hostname 127.0.0.1 --auth trust \
    --no-ssl --pgctl "$PG_BIN/pg_ctl" --run >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pgid"
  disown  # its kill by the failover helper is expected: no "Killed" report from this shell
}
# Free ports: three consecutive ones from a random base.
base=$(( 20000 + (RANDOM * 7 + $$) % 40000 ))
mp=$base; p1=$((base + 1)); p2=$((base + 2))

keeper monitor monitor --pgport "$mp"
for _ in $(seq 1 600); do
  "$PG_BIN/psql" -X -At "postgres://autoctl_node@127.0.0.1:$mp/pg_auto_failover" -c 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.1
done
monitor="postgres://autoctl_node@127.0.0.1:$mp/pg_auto_failover?sslmode=disable"
if [[ "$tuned" == 1 ]]; then
  # As the postgres user through a unix socket (where pg_autoctl's HBA trusts it): the socket
  # directory depends on the build, so try the usual ones.
  tuned_via=""
  for host in /tmp /var/run/postgresql; do
    if as_postgres "$PG_BIN/psql" -X -q -h "$host" -p "$mp" -d pg_auto_failover \
        -c "ALTER SYSTEM SET pgautofailover.health_check_period = 1000" \
        -c "ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 500" \
        -c "ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 5000" \
        -c "ALTER SYSTEM SET pgautofailover.primary_demote_timeout = 10000" -c "SELECT pg_reload_conf()" \
        >/dev/null 2>&1; then
      tuned_via=$host
      break
    fi
  done
  [[ -n "$tuned_via" ]] || { echo "pg-auto-failover: could not reach the monitor to tune it" >&2; exit 1; }
fi
keeper node1 postgres --pgport "$p1" --monitor "$monitor" --dbname rowguard_test
sleep 5  # node1 registers first, so it starts as the primary
keeper node2 postgres --pgport "$p2" --monitor "$monitor" --dbname rowguard_test
echo "pg-auto-failover: forming (monitor :$mp, nodes :$p1 :$p2); this can take 100 s" >&2
formed=0
for _ in $(seq 1 300); do
  state=$(autoctl show state --pgdata "$dir/monitor" 2>/dev/null || true)
  if [[ $(grep -c 'primary.*| *primary' <<<"$state") == 1 && $(grep -c 'secondary.*| *secondary' <<<"$state") == 1 ]]; then
    formed=1
    break
  fi
  sleep 1
done
if [[ "$formed" != 1 ]]; then
  echo "pg-auto-failover: the formation did not form in 300 s:" >&2
  echo "$state" >&2
  tail -n 20 "$dir"/*.log >&2
  exit 1
fi
uri=$(autoctl show uri --formation default --pgdata "$dir/monitor")
uri=${uri/postgres:\/\//postgresql://postgres@}  # the formation URI names no user
echo "pg-auto-failover: formed at $uri" >&2

cat >"$dir/failover" <<EOF
#!/usr/bin/env bash
# Breaks the formation started by scripts/pg-auto-failover.sh (see its header).
set -euo pipefail
PG_BIN='$PG_BIN'; dir='$dir'; uri='$uri'; p1=$p1; p2=$p2
EOF
cat >>"$dir/failover" <<'EOF'
now_ms() { date +%s%3N; }
autoctl() {
  runuser -u postgres -- env XDG_CONFIG_HOME="$dir/config" XDG_DATA_HOME="$dir/share" XDG_RUNTIME_DIR="$dir/run" \
    pg_autoctl "$@"
}
is_primary() { [[ "$("$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$1" -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" == f ]]; }
case "${1:-}" in
  failover)
    if is_primary "$p1"; then node=node1; elif is_primary "$p2"; then node=node2; else echo "no primary" >&2; exit 1; fi
    t0=$(now_ms)
    kill -KILL -- "-$(cat "$dir/$node.pgid")"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/$node" -m immediate stop >/dev/null 2>&1 || true
    for _ in $(seq 1 1800); do
      if "$PG_BIN/psql" -X -q -At "$uri&connect_timeout=2" -c 'SELECT pg_current_xact_id()' >/dev/null 2>&1; then
        echo "killed $node; kill_to_writable_ms $(( $(now_ms) - t0 ))"
        exit 0
      fi
      sleep 0.1
    done
    echo "no writable node 180 s after killing $node" >&2
    autoctl show state --pgdata "$dir/monitor" >&2
    exit 1 ;;
  state) autoctl show state --pgdata "$dir/monitor" ;;
  *) echo "usage: $0 failover|state" >&2; exit 2 ;;
esac
EOF
chmod 755 "$dir/failover"

export ROWGUARD_TEST_PG="$uri" ROWGUARD_TEST_PG_MULTI="$uri" ROWGUARD_PG_FAILOVER="$dir/failover"
set +e
"$@"
rc=$?
exit "$rc"
