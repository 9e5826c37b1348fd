#!/usr/bin/env bash
# Configures and builds rowguard into build/ (or $ROWGUARD_BUILD_DIR): everything, or only the
# targets named (scripts/build.sh rowguard_cli). ROWGUARD_CMAKE_ARGS adds cmake options, e.g.
# ROWGUARD_BUILD_DIR=build-asan ROWGUARD_CMAKE_ARGS="-DROWGUARD_SANITIZE=ON".
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2086
dir=${ROWGUARD_BUILD_DIR:-build}
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${ROWGUARD_CMAKE_ARGS:-} >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$dir" -j"$(nproc)" "${targets[@]}"
