#!/usr/bin/env bash
# Starts Debian's redis-server on a free loopback port (no persistence: it is the cache and lock
# baseline as users run it), runs CMD with ROWGUARD_BENCH_REDIS=127.0.0.1:PORT, and stops it.
#   bench/with-redis.sh -- CMD ARGS...
set -euo pipefail
if [[ "${1:-}" == "--" ]]; then shift; fi
command -v redis-server >/dev/null || { echo "with-redis: install redis-server (scripts/install-deps.sh)" >&2; exit 1; }
dir=$(mktemp -d /tmp/rowguard-redis.XXXXXX)
pid=""
cleanup() {
  local rc=$?
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
for attempt in 1 2 3 4 5 6 7 8; do
  port=$(( 20000 + (RANDOM * 7 + $$ + attempt * 1231) % 40000 ))
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize no \
    >"$dir/redis.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 50); do
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then break 2; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=""
done
[[ -n "$pid" ]] || { echo "with-redis: redis-server did not start" >&2; cat "$dir/redis.log" >&2; exit 1; }
export ROWGUARD_BENCH_REDIS="127.0.0.1:$port"
echo "with-redis: redis-server $(redis-server --version | grep -o 'v=[0-9.]*') at $ROWGUARD_BENCH_REDIS" >&2
set +e
"$@"
exit $?
