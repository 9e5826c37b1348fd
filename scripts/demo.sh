#!/usr/bin/env bash
# README command 1: install what is missing, build, and run the demo on an embedded SQLite file.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh rowguard_cli
exec build/tools/rowguard/rowguard --db "${ROWGUARD_DB:-sqlite:rowguard-demo.db}" demo "$@"
