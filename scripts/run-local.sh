#!/usr/bin/env bash
# Starts the local default: three single-member etcd shards on loopback (data under .local/) and
# the proxy on 127.0.0.1:2379 in front of them, using examples/config.yaml. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
root="$(pwd)/.local"
mkdir -p "$root"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
for i in 1 2 3; do
  client="127.0.0.1:${i}2379"
  peer="127.0.0.1:${i}2380"
  etcd --name "shard$i" --data-dir "$root/shard$i" \
    --listen-client-urls "http://$client" --advertise-client-urls "http://$client" \
    --listen-peer-urls "http://$peer" --initial-advertise-peer-urls "http://$peer" \
    --initial-cluster "shard$i=http://$peer" --log-level error >"$root/shard$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:${i}2379" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
done
echo "etcd shards up (logs in $root); proxy on 127.0.0.1:2379. Try:"
echo "  ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:2379 put a 1"
build/etcd-sharding-proxy --config examples/config.yaml --listen-addr 127.0.0.1:2379 "$@" &
pids+=($!)
wait "${pids[-1]}"
