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
source scripts/lib-bench.sh
HOLD_BIG=${HOLD_BIG:-5000}
WATCHES_PER_STREAM=${WATCHES_PER_STREAM:-100}
PROXY_ARGS=${PROXY_ARGS:-}
OUT=${OUT:-docs/BENCHMARKS.md}
bench_require_build
command -v nghttpx >/dev/null || { echo "nghttpx missing: run scripts/bench.sh once (installs it)" >&2; exit 1; }
bench_init /dev/shm/esp-memory.XXXXXX

# Starts target $1 for run $2 as the process named "$1.$2" (STARTED_PID, STARTED_ADDR).
start_target() {  # target name, run number
  # shellcheck disable=SC2086
  case $1 in
    ours) start_ours "ours.$2" "$WORK/ours.yaml" $PROXY_ARGS ;;
    grpc-proxy) start_grpc_proxy "grpc-proxy.$2" "$BACKEND" ;;
    nghttpx) start_nghttpx "nghttpx.$2" "$BACKEND" ;;
    etcd) start_etcd "etcd.$2" ;;
  esac
}

start_etcd backend
BACKEND=$STARTED_ADDR
wait_ready "$BACKEND"
write_config "$WORK/ours.yaml" "only,,,$BACKEND"

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
      bench_stop "$target.$run"
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
