#!/usr/bin/env bash
# clang-tidy 14 over the library (src/) and the CLI (tools/), with the checks of .clang-tidy; any
# finding fails (WarningsAsErrors). scripts/test.sh runs it (about 1 min 40 s on 2 cores).
# It reads the unity sources (ROWGUARD_UNITY_BUILD: each layer, and the CLI's commands, as one or two
# translation units), so the headers of CLI11, nlohmann-json and cpp-httplib are parsed twice, not
# once per file; findings are still reported at their line in src/ or tools/ (HeaderFilterRegex).
# It configures build-tidy/ (no build: the compile commands, the layers' include roots and
# rowguard/config.hpp are all it needs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -gt 0 ]]; then
  echo "tidy: unknown option $1 (it takes none)" >&2
  exit 2
fi
command -v run-clang-tidy-14 >/dev/null || { echo "tidy: run-clang-tidy-14 not found (scripts/install-deps.sh)" >&2; exit 1; }
cmake -S . -B build-tidy -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DROWGUARD_BUILD_TESTS=OFF -DROWGUARD_BUILD_BENCH=OFF \
  -DROWGUARD_UNITY_BUILD=ON >/dev/null
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
# The unity sources #include .cpp files by design, so bugprone-suspicious-include is off.
run-clang-tidy-14 -p build-tidy -j"$(nproc)" -quiet -checks=-bugprone-suspicious-include \
  "$PWD/(src|tools)/.*\.cpp$|$PWD/build-tidy/(src|tools)/.*/unity_[0-9]+_cxx\.cxx$" >"$out" 2>&1 || status=$?
grep -v -E "^[0-9]+ warnings? (and [0-9]+ errors? )?generated|^Suppressed [0-9]+ warnings|^Use -header-filter|^clang-tidy-14 |^Enabled checks|^ +[a-z]" "$out" || true
if [[ "$status" != 0 ]]; then
  echo "tidy: findings above (checks in .clang-tidy)" >&2
  exit 1
fi
echo "tidy: no findings in src/ and tools/"
