#!/usr/bin/env bash
# Configures and builds rowguard with a preset of CMakePresets.json (default dev, into build/):
# everything, or only the targets named.
#   scripts/build.sh                                  the dev preset, every target
#   scripts/build.sh --preset asan rowguard_tests     ASan+UBSan into build-asan/, one target
# ROWGUARD_CMAKE_ARGS adds cmake options to the configure step, e.g. ROWGUARD_CMAKE_ARGS="-DROWGUARD_BUILD_BENCH=OFF".
set -euo pipefail
cd "$(dirname "$0")/.."
preset=dev
if [[ "${1:-}" == "--preset" ]]; then
  preset="$2"
  shift 2
fi
# shellcheck disable=SC2086
cmake --preset "$preset" ${ROWGUARD_CMAKE_ARGS:-} >/dev/null
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build --preset "$preset" -j"$(nproc)" "${targets[@]}"
