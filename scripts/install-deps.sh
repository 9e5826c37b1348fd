#!/usr/bin/env bash
# Installs every Debian 12 package rowguard needs to build, test and run its demo, if missing.
# Run as root (or with sudo). Only Debian's package registry is needed.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libsqlite3-dev libpqxx-dev libpq-dev libsoci-dev libboost-dev libfmt-dev
  catch2 libcli11-dev nlohmann-json3-dev libcpp-httplib-dev
  postgresql-15 postgresql-client-15 pgbouncer
  libhiredis-dev redis-server
  clang-14 libclang-rt-14-dev clang-tidy-14 clang-format-14  # fuzzing; scripts/tidy.sh; .clang-format
  chromium  # the status page test loads `rowguard serve`'s page in headless Chromium
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
# The Debian package starts a cluster on port 5432 when installed; rowguard never uses it
# (tests start their own throwaway server), so leave it alone.
