#!/usr/bin/env bash
# Starts the local default: three single-member etcd shards and a single-member meta etcd on
# loopback (data under .local/), writes the shard map of examples/config.yaml into the meta store
# if it holds none yet, and runs the proxy on 127.0.0.1:2379 following that map. Ctrl-C stops all.
# Then try `build/etcd-sharding-proxy map show --meta-endpoints 127.0.0.1:42379`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
root="$(pwd)/.local"
mkdir -p "$root"
meta=127.0.0.1:42379
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
start_etcd() {  # name client-port peer-port
  etcd --name "$1" --data-dir "$root/$1" \
    --listen-client-urls "http://127.0.0.1:$2" --advertise-client-urls "http://127.0.0.1:$2" \
    --listen-peer-urls "http://127.0.0.1:$3" --initial-advertise-peer-urls "http://127.0.0.1:$3" \
    --initial-cluster "$1=http://127.0.0.1:$3" --log-level error >"$root/$1.log" 2>&1 &
  pids+=($!)
}
for i in 1 2 3; do start_etcd "shard$i" "${i}2379" "${i}2380"; done
start_etcd meta 42379 42380
for address in 127.0.0.1:12379 127.0.0.1:22379 127.0.0.1:32379 "$meta"; do
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$address" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
done
# The first run writes the map; later runs keep the one the meta store has (map add-shard, ...).
if ! build/etcd-sharding-proxy map show --meta-endpoints "$meta" >/dev/null 2>&1; then
  build/etcd-sharding-proxy map init --config examples/config.yaml --meta-endpoints "$meta"
fi
echo "etcd shards and the meta store up (logs in $root); proxy on 127.0.0.1:2379. Try:"
echo "  ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:2379 put a 1"
echo "  build/etcd-sharding-proxy map show --meta-endpoints $meta"
build/etcd-sharding-proxy --meta-endpoints "$meta" --listen-addr 127.0.0.1:2379 "$@" &
pids+=($!)
wait "${pids[-1]}"
