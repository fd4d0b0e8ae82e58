#!/usr/bin/env bash
# Builds everything and runs every test (unit, integration against real etcd, differential, fault).
# Installs what it needs first (Debian packages, as root or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cd build
ctest --output-on-failure --timeout 900 -j"${ESP_TEST_JOBS:-2}" "$@"
cd ..
# libFuzzer targets (clang, ASan+UBSan) for a bounded time each; ESP_SKIP_FUZZ=1 skips them.
# 15 s each by default here (CI's budget), two at a time (three targets: 30 s); `ESP_FUZZ_SECONDS=300 scripts/fuzz.sh`
# for a real fuzzing session.
[ "${ESP_SKIP_FUZZ:-0}" = 1 ] || ESP_FUZZ_SECONDS="${ESP_FUZZ_SECONDS:-15}" scripts/fuzz.sh -j2
