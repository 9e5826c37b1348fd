#!/usr/bin/env bash
# clang-tidy 14 over the library (src/), with the checks of .clang-tidy; any finding fails
# (WarningsAsErrors). scripts/test.sh runs it (1 min 40 s on 2 cores). --all adds the CLI (tools/),
# whose third-party headers (CLI11, nlohmann-json, cpp-httplib) make it 4 min more.
# It configures build-tidy/ (no build: the compile commands, the layers' include roots and
# rowguard/config.hpp are all it needs).
set -euo pipefail
cd "$(dirname "$0")/.."
folders="src"
if [[ "${1:-}" == "--all" ]]; then
  folders="src|tools"
elif [[ $# -gt 0 ]]; then
  echo "tidy: unknown option $1 (expected --all)" >&2
  exit 2
fi
command -v run-clang-tidy-14 >/dev/null || { echo "tidy: run-clang-tidy-14 not found (scripts/install-deps.sh)" >&2; exit 1; }
cmake -S . -B build-tidy -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DROWGUARD_BUILD_TESTS=OFF -DROWGUARD_BUILD_BENCH=OFF \
  -DROWGUARD_UNITY_BUILD=OFF >/dev/null
# -quiet keeps the findings only; the generated schema data file (string literals) is not in src/.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
run-clang-tidy-14 -p build-tidy -j"$(nproc)" -quiet "$PWD/($folders)/.*\.cpp$" >"$out" 2>&1 || status=$?
grep -v -E "^[0-9]+ warnings? (and [0-9]+ errors? )?generated|^Suppressed [0-9]+ warnings|^Use -header-filter|^clang-tidy-14 |^Enabled checks|^ +[a-z]" "$out" || true
if [[ "$status" != 0 ]]; then
  echo "tidy: findings above (checks in .clang-tidy)" >&2
  exit 1
fi
echo "tidy: no findings in ${folders/|/ and }"
