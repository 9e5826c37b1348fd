#!/usr/bin/env bash
# Starts a throwaway PostgreSQL 15 primary and a streaming-replication standby (pg_basebackup -R,
# a physical replication slot) in a temporary directory, on loopback, as the postgres user, and
# stops both and deletes everything on exit, failure or Ctrl-C. The standby is synchronous unless
# --async: the primary acknowledges a COMMIT only once the standby has flushed its WAL.
#
#   scripts/pg-replicated.sh                       print the URLs and wait until Ctrl-C
#   scripts/pg-replicated.sh -- CMD ARGS...        run CMD with the variables below; exit with its code
#   scripts/pg-replicated.sh --async -- CMD        asynchronous standby (a promotion can lose
#                                                  acknowledged writes: docs/scaling.md)
#   scripts/pg-replicated.sh --remote-apply -- CMD synchronous_commit=remote_apply: a COMMIT also
#                                                  waits until the standby has replayed it, so a read
#                                                  on the standby right after it sees the write
#   scripts/pg-replicated.sh --fast -- CMD         fsync=off and full_page_writes=off on both (tests
#                                                  that do not measure; the default keeps PostgreSQL's
#                                                  durability, since durability is what is tested)
#
# Exported to CMD:
#   ROWGUARD_TEST_PG_PRIMARY  postgresql://postgres@127.0.0.1:P1/rowguard_test
#   ROWGUARD_TEST_PG_STANDBY  postgresql://postgres@127.0.0.1:P2/rowguard_test (read-only until promoted)
#   ROWGUARD_TEST_PG_MULTI    postgresql://postgres@127.0.0.1:P1,127.0.0.1:P2/rowguard_test?target_session_attrs=read-write
#   ROWGUARD_TEST_PG          the primary's URL (so the existing suites run against the primary)
#   ROWGUARD_TEST_PG_SOCKET, ROWGUARD_TEST_PG_BIN, ROWGUARD_TEST_PG_PRIMARY_DATA, ROWGUARD_TEST_PG_STANDBY_DATA
#   ROWGUARD_PG_FAILOVER      a small script CMD calls to break things (run it without arguments for help):
#     kill-primary     pg_ctl stop -m immediate on the primary (a crash: no shutdown checkpoint)
#     promote          pg_ctl promote the standby and wait until it accepts writes; prints milliseconds
#     failover         kill-primary then promote; prints "kill_to_writable_ms N"
#     stop-standby     stop the standby (a sync primary's COMMITs then wait for it)
#     start-standby    start it again and wait until it streams
#     detach-standby   cut the standby's WAL receiver (primary_conninfo='' and reload): it stays up,
#                      readable and promotable, but receives nothing more (with --async the
#                      primary goes on acknowledging: the lag that a promotion loses; on a
#                      synchronous pair its COMMITs wait, as with stop-standby)
#     attach-standby   restore primary_conninfo and wait until it streams again
#     caught-up        wait until the standby has replayed everything the primary wrote so far
#     status           pg_stat_replication on the primary, pg_is_in_recovery() on both
#
# Synchronous mode: synchronous_standby_names='standby1' (the standby's cluster_name, which its WAL
# receiver sends as application_name) and synchronous_commit=on (the default: COMMIT waits for the
# standby's flush, not its replay). After a promotion the new primary has no standby of its own and
# runs unreplicated, as after a real failover until a new standby is attached.
set -euo pipefail

source "$(dirname "$0")/pg-lib.sh"
pg_require pg-replicated initdb pg_basebackup pg_ctl

mode=sync
sync_commit=on
durability=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --async) mode=async; shift ;;
    --remote-apply) sync_commit=remote_apply; shift ;;
    --fast) durability="-c fsync=off -c full_page_writes=off"; shift ;;
    --) shift; break ;;
    *) echo "pg-replicated: unknown option $1 (expected --async, --remote-apply, --fast, -- CMD)" >&2; exit 2 ;;
  esac
done
if [[ "$mode" == async && "$sync_commit" == remote_apply ]]; then
  echo "pg-replicated: --remote-apply needs a synchronous standby (drop --async)" >&2
  exit 2
fi

dir=$(pg_private_dir rowguard-pgrepl)

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for d in "$dir/standby" "$dir/primary"; do
    if [[ -f "$d/postmaster.pid" ]]; then
      as_postgres "$PG_BIN/pg_ctl" -D "$d" -m immediate -w -t 20 stop >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die_with_log() { # MESSAGE LOGFILE...
  echo "pg-replicated: $1" >&2
  shift
  for f in "$@"; do
    if [[ -f "$f" ]]; then echo "--- $f" >&2; tail -n 40 "$f" >&2; fi
  done
  exit 1
}

# start_server DATADIR LOG EXTRA_OPTS: sets $started_port and $started_opts.
start_server() {
  pg_start "$1" "$2" "$dir" "$durability $3" || return 1
  started_port=$pg_port
  started_opts=$pg_options
}

q() { # PORT SQL: one value, unaligned
  "$PG_BIN/psql" -X -q -At -h "$dir" -p "$1" -U postgres -d postgres -c "$2"
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds.
wait_for() {
  local what=$1 secs=$2 i
  shift 2
  for (( i = 0; i < secs * 10; i++ )); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "pg-replicated: timed out after ${secs}s waiting for $what" >&2
  return 1
}

as_postgres "$PG_BIN/initdb" -D "$dir/primary" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
  die_with_log "initdb failed" "$dir/initdb.log"
# initdb's pg_hba.conf already trusts replication connections from 127.0.0.1 and the unix socket.
start_server "$dir/primary" "$dir/primary.log" "-c cluster_name=primary -c wal_level=replica -c max_wal_senders=10 \
    -c max_replication_slots=10 -c wal_keep_size=64MB" ||
  die_with_log "the primary did not start" "$dir/primary.log"
p1=$started_port

as_postgres "$PG_BIN/createdb" -h "$dir" -p "$p1" -U postgres rowguard_test
# The slot keeps the primary's WAL until the standby has it, so a slow or stopped standby can
# always catch up (the price: a standby that never comes back fills the primary's disk).
q "$p1" "SELECT pg_create_physical_replication_slot('standby1')" >/dev/null

as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$p1" -U postgres -D "$dir/standby" -R -S standby1 \
    -X stream -c fast --no-sync >"$dir/basebackup.log" 2>&1 ||
  die_with_log "pg_basebackup failed" "$dir/basebackup.log" "$dir/primary.log"
# -R wrote standby.signal and primary_conninfo (host=127.0.0.1 port=P1) to postgresql.auto.conf.
# cluster_name becomes the WAL receiver's application_name, which synchronous_standby_names names.
start_server "$dir/standby" "$dir/standby.log" "-c cluster_name=standby1 -c hot_standby=on \
    -c hot_standby_feedback=on" ||
  die_with_log "the standby did not start" "$dir/standby.log"
p2=$started_port
standby_opts=$started_opts

streaming() { [[ "$(q "$p1" "SELECT state FROM pg_stat_replication WHERE application_name='standby1'")" == streaming ]]; }
wait_for "the standby to stream from the primary" 60 streaming ||
  die_with_log "no replication" "$dir/primary.log" "$dir/standby.log"

if [[ "$mode" == sync ]]; then
  q "$p1" "ALTER SYSTEM SET synchronous_standby_names = 'standby1'" >/dev/null
  q "$p1" "ALTER SYSTEM SET synchronous_commit = '$sync_commit'" >/dev/null
  q "$p1" "SELECT pg_reload_conf()" >/dev/null
  is_sync() { [[ "$(q "$p1" "SELECT sync_state FROM pg_stat_replication WHERE application_name='standby1'")" == sync ]]; }
  wait_for "the standby to become synchronous" 30 is_sync ||
    die_with_log "standby not synchronous" "$dir/primary.log" "$dir/standby.log"
fi
# Wait until the standby has replayed the createdb, so the standby URL works at once.
wait_for "rowguard_test on the standby" 30 \
  "$PG_BIN/psql" -X -q -h "$dir" -p "$p2" -U postgres -d rowguard_test -c 'SELECT 1' ||
  die_with_log "standby not readable" "$dir/standby.log"

# The failover helper: paths baked in, so CMD can call it from anywhere.
cat >"$dir/failover" <<EOF
#!/usr/bin/env bash
# Breaks the replicated pair started by scripts/pg-replicated.sh (see its header). Times in ms.
set -euo pipefail
PG_BIN='$PG_BIN'; dir='$dir'; p1=$p1; p2=$p2
standby_opts='$(echo $standby_opts)'
$(printf 'primary_conninfo=%q' "$(q "$p2" "SHOW primary_conninfo")")
EOF
cat >>"$dir/failover" <<'EOF'
as_postgres() { if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
q() { "$PG_BIN/psql" -X -q -At -h "$dir" -p "$1" -U postgres -d postgres -c "$2"; }
now_ms() { date +%s%3N; }
wait_for() { # DESCRIPTION SECONDS COMMAND...
  local what=$1 secs=$2 i; shift 2
  for (( i = 0; i < secs * 100; i++ )); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.01
  done
  echo "pg-replicated failover: timed out after ${secs}s waiting for $what" >&2; return 1
}
# A write that needs a read-write server: assigning a transaction id fails on a standby.
writable() { q "$p2" "SELECT pg_current_xact_id()"; }
streaming() { [[ "$(q "$p1" "SELECT state FROM pg_stat_replication WHERE application_name='standby1'")" == streaming ]]; }
kill_primary() {
  as_postgres "$PG_BIN/pg_ctl" -D "$dir/primary" -m immediate -w -t 20 stop >/dev/null
}
promote() {
  local t0; t0=$(now_ms)
  as_postgres "$PG_BIN/pg_ctl" -D "$dir/standby" -w -t 60 promote >/dev/null ||
    { tail -n 20 "$dir/standby.log" >&2; exit 1; }
  wait_for "the promoted standby to accept writes" 60 writable || { tail -n 20 "$dir/standby.log" >&2; exit 1; }
  echo $(( $(now_ms) - t0 ))
}
case "${1:-}" in
  kill-primary) kill_primary ;;
  promote) echo "promote_to_writable_ms $(promote)" ;;
  failover)
    t0=$(now_ms)
    kill_primary
    t1=$(now_ms)
    p=$(promote)
    echo "kill_ms $(( t1 - t0 )) promote_to_writable_ms $p kill_to_writable_ms $(( $(now_ms) - t0 ))" ;;
  stop-standby) as_postgres "$PG_BIN/pg_ctl" -D "$dir/standby" -m fast -w -t 30 stop >/dev/null ;;
  start-standby)
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/standby" -l "$dir/standby.log" -w -t 60 -o "$standby_opts" start >/dev/null
    wait_for "the standby to stream again" 60 streaming ;;
  detach-standby)
    q "$p2" "ALTER SYSTEM SET primary_conninfo = ''" >/dev/null
    q "$p2" "SELECT pg_reload_conf()" >/dev/null
    gone() { [[ -z "$(q "$p2" "SELECT pid FROM pg_stat_wal_receiver")" ]]; }
    wait_for "the standby's WAL receiver to stop" 30 gone ;;
  attach-standby)
    # pg_basebackup -R wrote the original into postgresql.auto.conf, which ALTER SYSTEM rewrites:
    # RESET would drop it, so the original value goes back.
    q "$p2" "ALTER SYSTEM SET primary_conninfo = '${primary_conninfo//\'/\'\'}'" >/dev/null
    q "$p2" "SELECT pg_reload_conf()" >/dev/null
    wait_for "the standby to stream again" 60 streaming ;;
  caught-up)
    target=$(q "$p1" "SELECT pg_current_wal_lsn()")
    replayed() { [[ "$(q "$p2" "SELECT pg_last_wal_replay_lsn() >= '$target'::pg_lsn")" == t ]]; }
    wait_for "the standby to replay up to $target" 60 replayed ;;
  status)
    q "$p1" "SELECT application_name, state, sync_state, sent_lsn, flush_lsn, replay_lsn FROM pg_stat_replication" 2>/dev/null ||
      echo "primary (port $p1): down"
    echo "primary in recovery: $(q "$p1" 'SELECT pg_is_in_recovery()' 2>/dev/null || echo down)"
    echo "standby in recovery: $(q "$p2" 'SELECT pg_is_in_recovery()' 2>/dev/null || echo down)" ;;
  *) echo "usage: $0 kill-primary|promote|failover|stop-standby|start-standby|detach-standby|attach-standby|caught-up|status" >&2; exit 2 ;;
esac
EOF
chmod 755 "$dir/failover"

export ROWGUARD_TEST_PG_PRIMARY="postgresql://postgres@127.0.0.1:$p1/rowguard_test"
export ROWGUARD_TEST_PG_STANDBY="postgresql://postgres@127.0.0.1:$p2/rowguard_test"
export ROWGUARD_TEST_PG_MULTI="postgresql://postgres@127.0.0.1:$p1,127.0.0.1:$p2/rowguard_test?target_session_attrs=read-write"
export ROWGUARD_TEST_PG="$ROWGUARD_TEST_PG_PRIMARY"
export ROWGUARD_TEST_PG_SOCKET="$dir"
export ROWGUARD_TEST_PG_BIN="$PG_BIN"
export ROWGUARD_TEST_PG_PRIMARY_DATA="$dir/primary"
export ROWGUARD_TEST_PG_STANDBY_DATA="$dir/standby"
export ROWGUARD_PG_FAILOVER="$dir/failover"
desc=$mode
[[ "$mode" == sync ]] && desc="sync, synchronous_commit=$sync_commit"
echo "pg-replicated: primary $ROWGUARD_TEST_PG_PRIMARY, standby $ROWGUARD_TEST_PG_STANDBY ($desc)" >&2

if [[ $# -gt 0 ]]; then
  set +e
  "$@"
  rc=$?
  set -e
  exit "$rc"
fi
echo "$ROWGUARD_TEST_PG_PRIMARY"
echo "$ROWGUARD_TEST_PG_STANDBY"
echo "$ROWGUARD_TEST_PG_MULTI"
echo "failover helper: $ROWGUARD_PG_FAILOVER" >&2
echo "pg-replicated: press Ctrl-C to stop it" >&2
# wait, not a foreground sleep: bash runs the TERM trap only once the foreground command ends.
while true; do sleep 3600 & wait $!; done
