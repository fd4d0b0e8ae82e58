#!/usr/bin/env bash
# CPU per request of the proxy's two client-facing data planes, side by side: one etcd, and two
# proxies in front of it (--data-plane=grpc and --data-plane=h2). Interleaved rounds; proxy and
# etcd CPU (utime+stime from /proc/PID/stat) around each run; prints medians. Everything started
# here is stopped by pid on exit.
# Environment: ROUNDS (5), DURATION (3 s), CONNS (4), INFLIGHT (50), WORKLOADS ("put get-ser get-lin";
# also range20, txn, watch: per delivered event, 10 watchers; lease-keepalive: per answered renewal),
# VARIANT_FLAG (--data-plane; --upstream-transport compares the two transports towards etcd instead).
# PROXY_A and PROXY_B (two binaries, e.g. before/after a change): compares the two builds with
# their default flags instead; they appear as the targets "grpc" (A) and "h2" (B) in the table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-3}
CONNS=${CONNS:-4}
INFLIGHT=${INFLIGHT:-50}
WORKLOADS=${WORKLOADS:-"put get-ser get-lin"}
VARIANT_FLAG=${VARIANT_FLAG:---data-plane}
BENCH=build/tools/esp-bench
PROXY=build/etcd-sharding-proxy
WORK=$(mktemp -d /dev/shm/esp-dp.XXXXXX)
declare -A PID=() ADDR=()
cleanup() {
  for n in "${!PID[@]}"; do kill "${PID[$n]}" 2>/dev/null || true; done
  for n in "${!PID[@]}"; do wait "${PID[$n]}" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12+$13}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

cport=$(free_port); pport=$(free_port)
etcd --name e --data-dir "$WORK/e" --listen-client-urls "http://127.0.0.1:$cport" \
  --advertise-client-urls "http://127.0.0.1:$cport" --listen-peer-urls "http://127.0.0.1:$pport" \
  --initial-advertise-peer-urls "http://127.0.0.1:$pport" --initial-cluster "e=http://127.0.0.1:$pport" \
  --log-level error >"$WORK/etcd.log" 2>&1 &
PID[etcd]=$!; ADDR[direct]=127.0.0.1:$cport
printf 'shards:\n  - {name: only, start: "", end: "", address: %s}\n' "${ADDR[direct]}" >"$WORK/p.yaml"
for plane in grpc h2; do
  port=$(free_port)
  if [[ -n ${PROXY_A:-} ]]; then
    binary=$PROXY_A; [[ $plane == h2 ]] && binary=$PROXY_B
    "$binary" --config "$WORK/p.yaml" --listen-addr "127.0.0.1:$port" --log-level warn >"$WORK/$plane.log" 2>&1 &
  else
    "$PROXY" --config "$WORK/p.yaml" --listen-addr "127.0.0.1:$port" "$VARIANT_FLAG" "$plane" --log-level warn \
      >"$WORK/$plane.log" 2>&1 &
  fi
  PID[$plane]=$!; ADDR[$plane]=127.0.0.1:$port
done
for t in direct grpc h2; do
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints "${ADDR[$t]}" --command-timeout=1s put probe x >/dev/null 2>&1 && break
    sleep 0.1
  done
done
"$BENCH" --endpoints "${ADDR[direct]}" --mode preload --json >/dev/null
args_for() {
  case $1 in
    put) echo "--mode put" ;;
    get-ser) echo "--mode get --consistency s --no-preload" ;;
    get-lin) echo "--mode get --consistency l --no-preload" ;;
    range20) echo "--mode range --range-keys 20 --no-preload" ;;
    txn) echo "--mode txn --no-preload" ;;
    watch) echo "--mode watch --key-prefix watch/ --watchers 10" ;;
    lease-keepalive) echo "--mode lease-keepalive --timeout 3" ;;
    *) echo "bench-data-plane: unknown workload $1" >&2; exit 2 ;;
  esac
}
RESULTS=$WORK/results
for round in $(seq "$ROUNDS"); do
  for w in $WORKLOADS; do
    targets=(direct grpc h2)
    # Rotate the order each round so that no target always runs first (warm caches, page cache).
    for i in 0 1 2; do
      t=${targets[$(((i + round) % 3))]}
      e0=$(cpu_ticks "${PID[etcd]}"); p0=0
      [[ $t != direct ]] && p0=$(cpu_ticks "${PID[$t]}")
      out=$("$BENCH" --endpoints "${ADDR[$t]}" $(args_for "$w") --conns "$CONNS" --inflight "$INFLIGHT" \
        --duration "$DURATION" --json)
      e1=$(cpu_ticks "${PID[etcd]}"); p1=0
      [[ $t != direct ]] && p1=$(cpu_ticks "${PID[$t]}")
      ok=$(sed 's/.*"ok":\([0-9]*\).*/\1/' <<<"$out")
      # Watch: CPU per delivered event, as bench.sh counts it.
      [[ $w == watch ]] && ok=$(sed 's/.*"events":\([0-9]*\).*/\1/' <<<"$out")
      tput=$(sed 's/.*"throughput":\([0-9.]*\).*/\1/' <<<"$out")
      p99=$(sed 's/.*"p99_us":\([0-9.]*\).*/\1/' <<<"$out")
      echo "$w $t $ok $tput $p99 $(((p1 - p0) * TICK_US)) $(((e1 - e0) * TICK_US))" >>"$RESULTS"
    done
  done
done
python3 - "$RESULTS" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    w, t, ok, tput, p99, pcpu, ecpu = line.split()
    ok = max(int(ok), 1)
    rows[(w, t)].append((float(tput), float(p99), int(pcpu) / ok, int(ecpu) / ok))
print(f"{'workload':8} {'target':6} {'req/s':>9} {'p99 us':>8} {'proxy us/req':>13} {'etcd us/req':>12}  (medians of {len(next(iter(rows.values())))} rounds)")
for (w, t), v in rows.items():
    med = [statistics.median(x) for x in zip(*v)]
    print(f"{w:8} {t:6} {med[0]:9.0f} {med[1]:8.0f} {med[2]:13.1f} {med[3]:12.1f}")
PY
