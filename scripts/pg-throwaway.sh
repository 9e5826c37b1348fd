#!/usr/bin/env bash
# Starts a throwaway PostgreSQL 15 in a temporary directory, on a private unix socket and a free
# loopback port, as the postgres user (PostgreSQL refuses to run as root), and stops it and
# deletes everything on exit, failure or Ctrl-C.
#
#   scripts/pg-throwaway.sh                 print the URL and wait until Ctrl-C
#   scripts/pg-throwaway.sh -- CMD ARGS...  run CMD with ROWGUARD_TEST_PG set to the URL; exit with its code
#   scripts/pg-throwaway.sh --durable -- CMD  the same with PostgreSQL's default durability (benchmarks)
#   scripts/pg-throwaway.sh --pgbouncer -- CMD  also start PgBouncer in transaction pooling mode in
#                                           front of it: ROWGUARD_TEST_PGBOUNCER is its URL
#
# Exported to CMD: ROWGUARD_TEST_PG (URL), ROWGUARD_TEST_PG_SOCKET (socket dir), ROWGUARD_TEST_PGDATA
# and ROWGUARD_TEST_PG_BIN (for tests that restart the server), ROWGUARD_TEST_PGBOUNCER (--pgbouncer).
#
# Settings: fsync=off, synchronous_commit=off and full_page_writes=off (a throwaway test server:
# durability is not what is tested here; --durable keeps PostgreSQL's defaults for all three),
# max_connections=300, max_prepared_transactions=50.
set -euo pipefail

source "$(dirname "$0")/pg-lib.sh"
pg_require pg-throwaway initdb pg_ctl createdb

durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
pgbouncer=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --durable) durability=""; shift ;;
    --pgbouncer) pgbouncer=1; shift ;;
    --) shift; break ;;
    *) echo "pg-throwaway: unknown option $1 (expected --durable, --pgbouncer, -- CMD)" >&2; exit 2 ;;
  esac
done

dir=$(pg_private_dir rowguard-pg)

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -f "$dir/pgbouncer.pid" ]]; then
    kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
  fi
  if [[ -f "$dir/data/postmaster.pid" ]]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_postgres "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
  { cat "$dir/initdb.log" >&2; exit 1; }

if ! pg_start "$dir/data" "$dir/server.log" "$dir" "$durability"; then
  echo "pg-throwaway: PostgreSQL did not start; server log:" >&2
  cat "$dir/server.log" >&2 || true
  exit 1
fi
port=$pg_port

as_postgres "$PG_BIN/createdb" -h "$dir" -p "$port" -U postgres rowguard_test
url="postgresql://postgres@127.0.0.1:$port/rowguard_test"
export ROWGUARD_TEST_PG="$url"
export ROWGUARD_TEST_PG_SOCKET="$dir"
export ROWGUARD_TEST_PGDATA="$dir/data"
export ROWGUARD_TEST_PG_BIN="$PG_BIN"
echo "pg-throwaway: PostgreSQL 15 running at $url (socket dir $dir)" >&2

if [[ "$pgbouncer" == 1 ]]; then
  command -v pgbouncer >/dev/null || { echo "pg-throwaway: pgbouncer not found (scripts/install-deps.sh)" >&2; exit 1; }
  # Transaction pooling: a server connection is the client's only for one transaction, so session
  # state (named prepared statements, LISTEN, session advisory locks) does not survive between them.
  echo '"postgres" ""' >"$dir/userlist.txt"
  started=0
  for attempt in 1 2 3 4 5 6 7 8; do
    bport=$(( 20000 + (RANDOM * 11 + $$ + attempt * 1231) % 40000 ))
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
rowguard_test = host=127.0.0.1 port=$port dbname=rowguard_test user=postgres
; any other database of the server (the two-phase commit tests make a second one)
* = host=127.0.0.1 port=$port user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 40
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
    [[ "$(id -u)" == 0 ]] && chown postgres:postgres "$dir/pgbouncer.ini" "$dir/userlist.txt"
    rm -f "$dir/pgbouncer.pid"
    if as_postgres pgbouncer -d "$dir/pgbouncer.ini" >>"$dir/pgbouncer.out" 2>&1; then
      for _ in $(seq 1 50); do
        if "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$bport" -U postgres -d rowguard_test -c 'SELECT 1' >/dev/null 2>&1; then
          started=1
          break
        fi
        sleep 0.1
      done
    fi
    [[ "$started" == 1 ]] && break
    if [[ -f "$dir/pgbouncer.pid" ]]; then kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true; fi
  done
  if [[ "$started" != 1 ]]; then
    echo "pg-throwaway: PgBouncer did not start; its log:" >&2
    cat "$dir/pgbouncer.out" "$dir/pgbouncer.log" >&2 2>/dev/null || true
    exit 1
  fi
  export ROWGUARD_TEST_PGBOUNCER="postgresql://postgres@127.0.0.1:$bport/rowguard_test?rowguard_pooling=transaction"
  echo "pg-throwaway: PgBouncer (transaction pooling) at $ROWGUARD_TEST_PGBOUNCER" >&2
fi

if [[ $# -gt 0 ]]; then
  set +e
  "$@"
  rc=$?
  set -e
  exit "$rc"
fi
echo "$url"
if [[ "$pgbouncer" == 1 ]]; then echo "$ROWGUARD_TEST_PGBOUNCER"; fi
echo "pg-throwaway: press Ctrl-C to stop it" >&2
# wait, not a foreground sleep: bash runs the TERM trap only once the foreground command ends.
while true; do sleep 3600 & wait $!; done
