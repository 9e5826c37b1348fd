#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (cmake --preset fuzz: clang 14, ASan+UBSan, each against only
# the parsers it tests) and runs each for a bounded time; a crash fails the run and leaves its input
# in build-fuzz/fuzz/.
#   scripts/fuzz.sh                 each target for 20 s (what ctest runs)
#   scripts/fuzz.sh --seconds 600   the long mode, by hand
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=20
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    *) echo "fuzz: unknown option $1 (expected --seconds N)" >&2; exit 2 ;;
  esac
done
command -v clang++-14 >/dev/null || { echo "fuzz: clang++-14 not found (scripts/install-deps.sh)" >&2; exit 1; }
# The targets are CMake targets of the fuzz preset (fuzz/CMakeLists.txt), built into build-fuzz/.
scripts/build.sh --preset fuzz >/dev/null
out=build-fuzz/fuzz
status=0
for target in url_fuzz args_fuzz; do
  mkdir -p "$out/corpus-$target"
  cp -n fuzz/seeds/"${target%_fuzz}"/* "$out/corpus-$target/" 2>/dev/null || true
  echo "== $target for $seconds s"
  (cd "$out" && "./$target" -max_total_time="$seconds" -max_len=512 -print_final_stats=1 "corpus-$target") ||
    status=1
done
exit "$status"
