#!/usr/bin/env bash
# docs/scaling.md (f): a real network partition between a lease holder and PostgreSQL, with and
# without TCP timeouts in the URL. Runs in a private network namespace (unshare -n) whose loopback
# carries a throwaway PostgreSQL; nftables drops every packet to and from the server's port, so the
# holder's sockets stay open and nothing answers, as when a switch or a firewall drops the traffic
# (the test suite's fault proxy can only stall: its kernel still acknowledges). Needs root, and
# the nftables package (not installed by scripts/install-deps.sh: only this script uses it):
#   apt-get install -y nftables && bench/replication/partition-tcp.sh
# For each setting it runs `rowguard lock run part --ttl 6s -- sleep 60`, cuts the network once the
# lease is held, and reports when the CLI said the lease was lost and when it exited (its heartbeat's
# renewal is stuck on the dead connection until TCP gives up).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
R=${ROWGUARD_CLI:-$root/build/tools/rowguard/rowguard}

if [[ -z "${ROWGUARD_IN_NETNS:-}" ]]; then
  [[ "$(id -u)" == 0 ]] || { echo "partition-tcp: needs root (unshare -n, nft)" >&2; exit 2; }
  command -v nft >/dev/null || { echo "partition-tcp: apt-get install -y nftables" >&2; exit 2; }
  ROWGUARD_IN_NETNS=1 exec unshare -n "$0" "$@"
fi
if [[ -z "${ROWGUARD_TEST_PG:-}" ]]; then
  ip link set lo up
  exec "$root/scripts/pg-throwaway.sh" --durable -- "$0" "$@"
fi

url=$ROWGUARD_TEST_PG
port=${url##*:}
port=${port%%/*}
now_ms() { date +%s%3N; }
$R --db "$url" migrate >/dev/null

partition() { # on|off
  if [[ "$1" == on ]]; then
    nft add table inet partition
    nft add chain inet partition out '{ type filter hook output priority 0; }'
    nft add rule inet partition out tcp dport "$port" drop
    nft add rule inet partition out tcp sport "$port" drop
  else
    nft delete table inet partition
  fi
}

trial() { # LABEL URL [GLOBAL OPTIONS...]
  local label=$1 u=$2 log t0 lost_ms=- exit_ms=- pid i
  shift 2
  log=$(mktemp)
  $R --db "$u" "$@" lock run part --ttl 6s -- sleep 60 2>"$log" &
  pid=$!
  for i in $(seq 1 100); do
    $R --db "$url" lock list 2>/dev/null | grep -q '^part .*held' && break
    sleep 0.1
  done
  sleep 0.5
  t0=$(now_ms)
  partition on
  for i in $(seq 1 600); do  # at most 60 s
    if [[ "$lost_ms" == - ]] && grep -q 'lost while the command ran' "$log"; then lost_ms=$(( $(now_ms) - t0 )); fi
    if ! kill -0 "$pid" 2>/dev/null; then exit_ms=$(( $(now_ms) - t0 )); break; fi
    sleep 0.1
  done
  if [[ "$exit_ms" == - ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null && rc=0 || rc=$?
  partition off
  printf '%-48s lost reported after %6s ms, CLI exited after %6s ms (exit %s)\n' "$label" "$lost_ms" "$exit_ms" \
    "$([[ "$exit_ms" == - ]] && echo "killed at 60 s" || echo "$rc")"
  sed 's/^/    /' "$log" | head -5
  rm -f "$log"
  # The next trial needs the lock free: wait out this one's lease.
  sleep 7
}

echo "ttl 6 s (heartbeat every 2 s, local deadline 5.4 s after the last renewal was sent)"
trial "--network-timeout 0s (the system's TCP defaults)" "$url" --network-timeout 0s
trial "default (--network-timeout 30s)" "$url"
trial "--network-timeout 5s" "$url" --network-timeout 5s
trial "URL: keepalives 1/1/3, tcp_user_timeout=3000" \
  "$url?keepalives=1&keepalives_idle=1&keepalives_interval=1&keepalives_count=3&tcp_user_timeout=3000"
