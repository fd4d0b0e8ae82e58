#!/usr/bin/env bash
# Installs everything the build, the tests and the local demo need, from Debian's packages.
# Runs as root (or through sudo); skips apt when every package is already installed.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libyaml-cpp-dev libspdlog-dev libcli11-dev libssl-dev libgtest-dev libgmock-dev
  prometheus-cpp-dev libnghttp2-dev libmicrohttpd-dev nlohmann-json3-dev libjemalloc-dev
  etcd-server etcd-client openssl procps curl python3-etcd3 python3-etcd3gw libhttp-parser-dev
  clang libclang-rt-14-dev
)
# The Node interop test's runtime: Debian's nodejs and npm, unless a node with npm is already there
# (a NodeSource nodejs bundles npm and conflicts with Debian's npm package).
command -v npm >/dev/null || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Node etcd3 client, pinned by its package-lock.json (npm registry); nothing to fetch once
# installed. Not fatal: without it the Node interop test reports itself skipped.
node_dir="$(dirname "$0")/../tests/interop/node"
if [ ! -d "$node_dir/node_modules/etcd3" ]; then
  npm ci --prefix "$node_dir" --no-audit --no-fund >&2 || echo "npm ci failed: node_interop_test will be skipped" >&2
fi
# The newest etcd server Debian has (3.5 today), for the newer_etcd_* test runs; not fatal.
"$(dirname "$0")/fetch-newer-etcd.sh"
