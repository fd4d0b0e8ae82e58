#!/usr/bin/env bash
# Builds everything and runs every test (unit, integration against real etcd, differential, fault).
# Installs what it needs first (Debian packages, as root or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cd build
ctest --output-on-failure --timeout 900 "$@"
cd ..
# libFuzzer targets (clang, ASan+UBSan) for a bounded time each; ESP_SKIP_FUZZ=1 skips them.
[ "${ESP_SKIP_FUZZ:-0}" = 1 ] || scripts/fuzz.sh
