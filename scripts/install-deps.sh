#!/usr/bin/env bash
# Installs everything the build, the tests and the local demo need, from Debian's packages.
# Runs as root (or through sudo); skips apt when every package is already installed.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libyaml-cpp-dev libspdlog-dev libcli11-dev libssl-dev libgtest-dev libgmock-dev
  prometheus-cpp-dev libnghttp2-dev libmicrohttpd-dev nlohmann-json3-dev
  etcd-server etcd-client openssl procps curl python3-etcd3
  clang libclang-rt-14-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}" >&2
sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
