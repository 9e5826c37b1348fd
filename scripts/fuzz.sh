#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ with clang 14 (ASan+UBSan) against only the parsers they
# test, and runs each for a bounded time; a crash fails the run and leaves its input in build-fuzz/.
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
CXX=${CXX_FUZZ:-clang++-14}
command -v "$CXX" >/dev/null || { echo "fuzz: $CXX not found (scripts/install-deps.sh)" >&2; exit 1; }
out=build-fuzz
mkdir -p "$out"
flags=(-std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -Isrc -Iinclude -Itools/rowguard)
# url_fuzz asks libpq how it reads the strings it makes (the library under test never links libpq here).
"$CXX" "${flags[@]}" -I/usr/include/postgresql fuzz/url_fuzz.cpp src/backend/url.cpp src/base/error.cpp -lfmt -lpq \
  -o "$out/url_fuzz"
"$CXX" "${flags[@]}" fuzz/args_fuzz.cpp tools/rowguard/args.cpp src/base/error.cpp -lfmt -o "$out/args_fuzz"
status=0
for target in url_fuzz args_fuzz; do
  mkdir -p "$out/corpus-$target"
  cp -n fuzz/seeds/"${target%_fuzz}"/* "$out/corpus-$target/" 2>/dev/null || true
  echo "== $target for $seconds s"
  (cd "$out" && "./$target" -max_total_time="$seconds" -max_len=512 -print_final_stats=1 "corpus-$target") ||
    status=1
done
exit "$status"
