# Shared by scripts/pg-throwaway.sh and scripts/pg-replicated.sh: sourced, not run. Finds
# PostgreSQL 15, runs its tools as the postgres user (PostgreSQL refuses to run as root), makes a
# private directory and starts a server on a free loopback port.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

# pg_require SCRIPT TOOL...: exits unless every TOOL is in $PG_BIN.
pg_require() {
  local script=$1 tool
  shift
  for tool in "$@"; do
    if [[ ! -x "$PG_BIN/$tool" ]]; then
      echo "$script: $PG_BIN/$tool not found; install postgresql-15 (scripts/install-deps.sh)" >&2
      exit 1
    fi
  done
}

as_postgres() {
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_private_dir PREFIX: prints a new directory under /tmp that only the postgres user can enter.
pg_private_dir() {
  local d
  d=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 700 "$d"
  if [[ "$(id -u)" == 0 ]]; then chown postgres:postgres "$d"; fi
  echo "$d"
}

# pg_start DATADIR LOG SOCKET_DIR SERVER_OPTIONS: starts the server on the first free port of a few
# random ones (on 127.0.0.1 and a unix socket in SOCKET_DIR); sets pg_port and pg_options, which
# restart the same server later. Returns 1 when it would not start.
pg_start() {
  local data=$1 log=$2 socket_dir=$3 extra=$4 attempt port opts
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$(( 20000 + (RANDOM * 7 + $$ + attempt * 977) % 40000 ))
    opts="-k $socket_dir -p $port -c listen_addresses=127.0.0.1 -c max_connections=300 \
-c max_prepared_transactions=50 $extra"
    if as_postgres "$PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 -o "$opts" start >/dev/null 2>&1; then
      pg_port=$port
      pg_options=$opts
      return 0
    fi
    grep -q 'could not bind\|already in use' "$log" 2>/dev/null || return 1
  done
  return 1
}
