#!/usr/bin/env bash
# Starts a throwaway PostgreSQL 15 in a temporary directory, on a private unix socket and a free
# loopback port, as the postgres user (PostgreSQL refuses to run as root), and stops it and
# deletes everything on exit, failure or Ctrl-C.
#
#   scripts/pg-throwaway.sh                 print the URL and wait until Ctrl-C
#   scripts/pg-throwaway.sh -- CMD ARGS...  run CMD with ROWGUARD_TEST_PG set to the URL; exit with its code
#   scripts/pg-throwaway.sh --durable -- CMD  the same with PostgreSQL's default durability (benchmarks)
#
# Settings: fsync=off, synchronous_commit=off and full_page_writes=off (a throwaway test server:
# durability is not what is tested here; --durable keeps PostgreSQL's defaults for all three),
# max_connections=300, max_prepared_transactions=50.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
if [[ ! -x "$PG_BIN/initdb" ]]; then
  echo "pg-throwaway: $PG_BIN/initdb not found; install postgresql-15 (scripts/install-deps.sh)" >&2
  exit 1
fi

durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
if [[ "${1:-}" == "--durable" ]]; then durability=""; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi

as_postgres() {
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

dir=$(mktemp -d /tmp/rowguard-pg.XXXXXX)
chmod 700 "$dir"
[[ "$(id -u)" == 0 ]] && chown postgres:postgres "$dir"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
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

started=0
for attempt in 1 2 3 4 5 6 7 8; do
  port=$(( 20000 + (RANDOM * 7 + $$ + attempt * 977) % 40000 ))
  if as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-k $dir -p $port -c listen_addresses=127.0.0.1 $durability \
          -c max_connections=300 -c max_prepared_transactions=50" start >/dev/null 2>&1; then
    started=1
    break
  fi
done
if [[ "$started" != 1 ]]; then
  echo "pg-throwaway: PostgreSQL did not start; server log:" >&2
  cat "$dir/server.log" >&2 || true
  exit 1
fi

as_postgres "$PG_BIN/createdb" -h "$dir" -p "$port" -U postgres rowguard_test
url="postgresql://postgres@127.0.0.1:$port/rowguard_test"
export ROWGUARD_TEST_PG="$url"
export ROWGUARD_TEST_PG_SOCKET="$dir"
echo "pg-throwaway: PostgreSQL 15 running at $url (socket dir $dir)" >&2

if [[ $# -gt 0 ]]; then
  set +e
  "$@"
  rc=$?
  set -e
  exit "$rc"
fi
echo "$url"
echo "pg-throwaway: press Ctrl-C to stop it" >&2
while true; do sleep 3600; done
