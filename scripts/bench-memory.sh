#!/usr/bin/env bash
# Memory: idle RSS, and RSS growth while N client watches are open or N leases are kept alive,
# for our proxy, etcd grpc-proxy, nghttpx (byte pass-through) and etcd itself.
#
# Every measurement starts a fresh process (freed memory stays in the allocator, so a second
# measurement in the same process would hide its growth), waits until it answers, reads VmRSS
# ("idle"), then runs `esp-bench --mode hold-watches|hold-leases --hold N --rss-pid PID`, which
# reads VmRSS again once all N watches are created (a key each; one stream per watch, or
# WATCHES_PER_STREAM per stream as clientv3 multiplexes a client's watches) or all N leases
# have had a keep-alive answered (streams still open), and checks every answer (each watch must
# then deliver its key's put exactly once). Growth per 1,000 is reported at N = 1,000 (includes
# warm-up: threads, channels, first arenas) and as the slope between N = 1,000 and N = HOLD_BIG.
# The proxies sit in front of one etcd on tmpfs. tools/memory_report.py writes the table into OUT.
#
# `ours` runs with the proxy's defaults (our HTTP/2 layers on both sides); PROXY_ARGS adds flags,
# e.g. PROXY_ARGS="--data-plane=grpc --upstream-transport=grpc" for gRPC C++ on both sides.
#
# Environment: HOLD_BIG (5000), WATCHES_PER_STREAM (100), OUT (docs/BENCHMARKS.md), PROXY_ARGS
# (none). Everything started here is stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$(pwd)
HOLD_BIG=${HOLD_BIG:-5000}
WATCHES_PER_STREAM=${WATCHES_PER_STREAM:-100}
PROXY_ARGS=${PROXY_ARGS:-}
OUT=${OUT:-docs/BENCHMARKS.md}
BENCH=$ROOT_DIR/build/tools/esp-bench
PROXY=$ROOT_DIR/build/etcd-sharding-proxy
[[ -x $BENCH && -x $PROXY ]] || { echo "build first: scripts/build.sh" >&2; exit 1; }
command -v nghttpx >/dev/null || { echo "nghttpx missing: run scripts/bench.sh once (installs it)" >&2; exit 1; }
NGHTTPX_FLAGS="--single-process --workers=1 --no-via --no-ocsp --no-server-push --frontend-http2-max-concurrent-streams=100000 --frontend-http2-read-timeout=0 --backend-read-timeout=0 --backend-write-timeout=0 --stream-write-timeout=0 --conf=/dev/null"

WORK=$(mktemp -d /dev/shm/esp-memory.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_ready() {  # address
  for _ in $(seq 200); do
    ETCDCTL_API=3 etcdctl --endpoints "$1" --command-timeout=1s get probe >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2; exit 1
}
# Starts an etcd named $1 in the background; sets STARTED_PID and STARTED_ADDR.
start_etcd() {
  local cport pport
  cport=$(free_port); pport=$(free_port)
  etcd --name "$1" --data-dir "$WORK/$1" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$1=http://127.0.0.1:$pport" --log-level error >"$WORK/$1.log" 2>&1 &
  STARTED_PID=$!; STARTED_ADDR=127.0.0.1:$cport
  PIDS+=("$STARTED_PID")
}
start_target() {  # target name, run number
  local port
  port=$(free_port)
  case $1 in
    ours)
      # shellcheck disable=SC2086
      "$PROXY" --config "$WORK/ours.yaml" --listen-addr "127.0.0.1:$port" --log-level warn $PROXY_ARGS \
        >"$WORK/ours.$2.log" 2>&1 & ;;
    grpc-proxy)
      etcd grpc-proxy start --endpoints="$BACKEND" --listen-addr="127.0.0.1:$port" \
        --data-dir "$WORK/grpc-proxy.$2" >"$WORK/grpc-proxy.$2.log" 2>&1 & ;;
    nghttpx)
      # shellcheck disable=SC2086
      nghttpx --frontend="127.0.0.1,$port;no-tls" --backend="127.0.0.1,${BACKEND##*:};;proto=h2" $NGHTTPX_FLAGS \
        --errorlog-file="$WORK/nghttpx.$2.log" >/dev/null 2>&1 & ;;
    etcd)
      start_etcd "etcd-$2"; return ;;
  esac
  STARTED_PID=$!; STARTED_ADDR=127.0.0.1:$port
  PIDS+=("$STARTED_PID")
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

start_etcd backend
BACKEND=$STARTED_ADDR
wait_ready "$BACKEND"
printf 'shards:\n  - {name: only, start: "", end: "", address: %s}\n' "$BACKEND" >"$WORK/ours.yaml"

RESULTS=$WORK/memory.tsv
: >"$RESULTS"
run=0
for target in ours grpc-proxy nghttpx etcd; do
  for what in watches watches-shared leases; do
    for n in 1000 "$HOLD_BIG"; do
      run=$((run + 1))
      start_target "$target" "$run"
      pid=$STARTED_PID
      wait_ready "$STARTED_ADDR"
      idle=$(rss_kb "$pid")
      mode=hold-$what; extra=""
      [[ $what == watches-shared ]] && { mode=hold-watches; extra="--watches-per-stream $WATCHES_PER_STREAM"; }
      # shellcheck disable=SC2086
      out=$(timeout 120 "$BENCH" --endpoints "$STARTED_ADDR" --mode "$mode" $extra --hold "$n" --rss-pid "$pid" \
        --key-prefix "mem$run/" --conns 4 --inflight 50 --timeout 30 --json 2>&1 | tail -1) || true
      printf '%s\t%s\t%s\t%s\t%s\n' "$target" "$what" "$n" "$idle" "$out" >>"$RESULTS"
      echo "$target hold-$what $n: idle $idle kB: $out" >&2
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done
  done
done

python3 "$ROOT_DIR/tools/memory_report.py" --results "$RESULTS" --out "$OUT" \
  --meta "date=$(date -u +%Y-%m-%dT%H:%MZ)" \
  --meta "command=HOLD_BIG=$HOLD_BIG WATCHES_PER_STREAM=$WATCHES_PER_STREAM PROXY_ARGS='$PROXY_ARGS' scripts/bench-memory.sh" \
  --meta "ours_flags=${PROXY_ARGS:-(defaults: --data-plane=h2 --upstream-transport=h2)}" \
  --meta "watches_per_stream=$WATCHES_PER_STREAM" \
  --meta "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "wrote $OUT" >&2
