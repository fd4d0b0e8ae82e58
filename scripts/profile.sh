#!/usr/bin/env bash
# Profile of the proxy's hot path with valgrind --tool=callgrind (hardware counters are not
# available on the benchmark VM, so `perf record` is not used): one etcd on tmpfs, the proxy under
# callgrind in front of it, counters zeroed after start-up, then one dump per workload.
# Output: $OUT_DIR/callgrind.<workload>.* and $OUT_DIR/<workload>.{inclusive,self}.txt
# Environment: REQUESTS (2000 per workload), OUT_DIR (/tmp/esp-profile), PROXY_ARGS (e.g. --data-plane=h2).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-2000}
OUT_DIR=${OUT_DIR:-/tmp/esp-profile}
BENCH=build/tools/esp-bench
PROXY=${PROXY:-build/etcd-sharding-proxy}
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d /dev/shm/esp-profile.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

cport=$(free_port); pport=$(free_port); lport=$(free_port)
etcd --name p --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$cport" \
  --advertise-client-urls "http://127.0.0.1:$cport" --listen-peer-urls "http://127.0.0.1:$pport" \
  --initial-advertise-peer-urls "http://127.0.0.1:$pport" --initial-cluster "p=http://127.0.0.1:$pport" \
  --log-level error >"$WORK/etcd.log" 2>&1 &
pids+=($!)
printf 'shards:\n  - {start: "", end: "", address: 127.0.0.1:%s}\n' "$cport" >"$WORK/config.yaml"
rm -f "$OUT_DIR"/callgrind.*
valgrind --tool=callgrind --callgrind-out-file="$OUT_DIR/callgrind.%p" \
  "$PROXY" --config "$WORK/config.yaml" --listen-addr "127.0.0.1:$lport" --log-level warn ${PROXY_ARGS:-} >"$WORK/proxy.log" 2>&1 &
vpid=$!
pids+=($vpid)
for _ in $(seq 300); do
  ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$lport" --command-timeout=2s get probe >/dev/null 2>&1 && break
  sleep 0.2
done
"$BENCH" --endpoints "127.0.0.1:$lport" --mode preload --key-space 1000 --json
callgrind_control -z "$vpid" >/dev/null
for w in put get; do
  "$BENCH" --endpoints "127.0.0.1:$lport" --mode "$w" --no-preload --total "$REQUESTS" --inflight 10 --conns 2 --timeout 30 --json
  callgrind_control -d "$w" "$vpid" >/dev/null
  f=$(ls -t "$OUT_DIR"/callgrind.$vpid.* | sed -n 1p)
  mv "$f" "$OUT_DIR/callgrind.$w"
  callgrind_annotate --inclusive=yes "$OUT_DIR/callgrind.$w" >"$OUT_DIR/$w.inclusive.txt"
  callgrind_annotate "$OUT_DIR/callgrind.$w" >"$OUT_DIR/$w.self.txt"
  callgrind_control -z "$vpid" >/dev/null
done
echo "profiles in $OUT_DIR" >&2
