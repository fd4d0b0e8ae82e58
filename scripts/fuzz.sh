#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) into ./build-fuzz and runs each for a
# bounded time over its seed corpus (tests/fuzz/corpus/<fuzzer>). Extra arguments go to ctest.
#   ESP_FUZZ_SECONDS=300 scripts/fuzz.sh      # a longer local run
set -euo pipefail
cd "$(dirname "$0")/.."
"$(pwd)/scripts/install-deps.sh"
launcher=()
if command -v ccache >/dev/null; then
  export CCACHE_BASEDIR="$(pwd)" CCACHE_NOHASHDIR=1
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
cmake -S . -B build-fuzz -G Ninja -DESP_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DESP_FUZZ_SECONDS="${ESP_FUZZ_SECONDS:-25}" "${launcher[@]}" >/dev/null
ninja -C build-fuzz -j"$(nproc)"
cd build-fuzz
ctest -L fuzz --output-on-failure "$@"
