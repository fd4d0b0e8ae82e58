#!/usr/bin/env bash
# What a range move costs (issue 16; docs/BENCHMARKS.md, "Range moves"): a meta etcd, three shard
# etcds (s0 ["", i), s1 [i, s), s2 [s, "")) and proxies following the meta store, all on tmpfs and
# loopback; tools/move_bench.cc moves [m, n) back and forth between s1 and s2 with `reshard move`.
#   1. pause, 1 proxy:  PAUSE_KEYS keys in the range, one continuous writer through the proxy,
#                       MOVES moves;
#   2. pause, 3 proxies: three fresh proxies, one writer through each, MOVES moves;
#   3. copy:            COPY_KEYS keys of 100 bytes loaded into the range directly on its shard,
#                       no writer, COPY_MOVES moves (keys/s, MB/s, CPU of the source etcd and of
#                       the mover);
#   4. copyw (not in the default PHASES): the same with one continuous writer through a proxy:
#                       the write pause of a large move.
# After each pause phase the proxies' etcd_proxy_move_* metrics are saved. Everything started here
# is stopped by pid on exit. Results: $OUT_DIR/{pause-1,pause-3,copy}.json (the tool's JSON),
# $OUT_DIR/metrics-*.txt, movers' logs; a summary on stdout.
# Environment: MOVES (20), PAUSE_KEYS (1000), COPY_KEYS (100000), COPY_MOVES (4), OUT_DIR
# (/tmp/esp-bench-move), PHASES ("pause1 pause3 copy").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-bench.sh
MOVES=${MOVES:-20}
PAUSE_KEYS=${PAUSE_KEYS:-1000}
COPY_KEYS=${COPY_KEYS:-100000}
COPY_MOVES=${COPY_MOVES:-4}
OUT_DIR=${OUT_DIR:-/tmp/esp-bench-move}
PHASES=${PHASES:-"pause1 pause3 copy"}
TOOL=$ROOT_DIR/build/tools/esp-move-bench
[[ -x $PROXY && -x $TOOL ]] || { echo "build first: scripts/build.sh" >&2; exit 1; }
mkdir -p "$OUT_DIR"
bench_init /dev/shm/esp-bench-move.XXXXXX

start_etcd meta; wait_ready "${ADDR[meta]}"
for s in 0 1 2; do start_etcd "shard$s"; wait_ready "${ADDR[shard$s]}"; done
write_config "$WORK/layout.yaml" "s0,,i,${ADDR[shard0]}" "s1,i,s,${ADDR[shard1]}" "s2,s,,${ADDR[shard2]}"
"$PROXY" map init --config "$WORK/layout.yaml" --meta-endpoints "${ADDR[meta]}" >/dev/null
PIDS="s0=${PID[shard0]},s1=${PID[shard1]},s2=${PID[shard2]}"

registered() {
  "$PROXY" map show -w json --meta-endpoints "${ADDR[meta]}" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["proxies"]))'
}
wait_registered() {  # count
  for _ in $(seq 200); do
    [[ $(registered) -eq $1 ]] && return 0
    sleep 0.1
  done
  echo "expected $1 registered proxies, have $(registered)" >&2; exit 1
}
# Proxy NAME following the meta store, with its metrics on a port of its own (METRICS[NAME]).
declare -A METRICS=()
start_proxy() {  # name
  local port mport
  port=$(free_port); mport=$(free_port)
  "$PROXY" --meta-endpoints "${ADDR[meta]}" --listen-addr "127.0.0.1:$port" --listen-metrics-addr "127.0.0.1:$mport" \
    --log-level warn >"$WORK/$1.log" 2>&1 &
  started "$1" "$port"
  METRICS[$1]=127.0.0.1:$mport
  wait_ready "${ADDR[$1]}"
}
save_metrics() {  # phase name...
  local phase=$1 name
  shift
  for name in "$@"; do
    curl -s "http://${METRICS[$name]}/metrics" | grep '^etcd_proxy_move_' >"$OUT_DIR/metrics-$phase-$name.txt" || true
    echo "  $name: $(tr '\n' ' ' <"$OUT_DIR/metrics-$phase-$name.txt")"
  done
}
run_tool() {  # output-name tool-args...
  local out=$1
  shift
  mkdir -p "$OUT_DIR/logs-$out"
  echo "== $out: $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  "$TOOL" --meta-endpoints "${ADDR[meta]}" --binary "$PROXY" --shards s1,s2 --pid "$PIDS" \
    --log-dir "$OUT_DIR/logs-$out" "$@" >"$OUT_DIR/$out.json" || { echo "$out failed (see $OUT_DIR/logs-$out)" >&2; }
}

for phase in $PHASES; do
  case $phase in
    pause1)
      start_proxy p1; wait_registered 1
      run_tool pause-1 --proxies "${ADDR[p1]}" --moves "$MOVES" --load-keys "$PAUSE_KEYS"
      echo "metrics after pause-1:"; save_metrics pause-1 p1
      bench_stop p1; wait_registered 0
      ;;
    pause3)
      for p in q1 q2 q3; do start_proxy $p; done
      wait_registered 3
      run_tool pause-3 --proxies "${ADDR[q1]},${ADDR[q2]},${ADDR[q3]}" --moves "$MOVES" --load-keys "$PAUSE_KEYS"
      echo "metrics after pause-3:"; save_metrics pause-3 q1 q2 q3
      for p in q1 q2 q3; do bench_stop $p; done
      wait_registered 0
      ;;
    copy)
      start_proxy c1; wait_registered 1
      run_tool copy --moves "$COPY_MOVES" --load-keys "$COPY_KEYS"
      bench_stop c1; wait_registered 0
      ;;
    copyw)
      start_proxy c2; wait_registered 1
      run_tool copy-writer --proxies "${ADDR[c2]}" --moves "$COPY_MOVES" --load-keys "$COPY_KEYS"
      echo "metrics after copy-writer:"; save_metrics copy-writer c2
      bench_stop c2; wait_registered 0
      ;;
  esac
done

python3 - "$OUT_DIR" $PHASES <<'PY'
import json, sys, os
out = sys.argv[1]
names = {"pause1": "pause-1", "pause3": "pause-3", "copy": "copy", "copyw": "copy-writer"}
for phase in sys.argv[2:]:
    path = os.path.join(out, names[phase] + ".json")
    try:
        j = json.load(open(path))
    except Exception as e:
        print(f"{phase}: no result ({e})"); continue
    f = lambda k: "" if not j.get(k) else "p50 %.1f / p99 %.1f / max %.1f" % (j[k]["p50"], j[k]["p99"], j[k]["max"])
    print(f"{names[phase]}: {j['moves']} moves, {j['proxies']} proxies, {j['writers']} writers, put errors {j['put_errors']}")
    for k in ["pause_ms", "cutover_gap_ms", "max_put_latency_ms", "wall_ms", "last_ack_to_fence_ms", "tail_after_fence_ms",
              "fenced_to_map_switch_ms", "map_switch_to_all_proxies_ms", "map_switch_to_resumed_put_ms", "copy_s",
              "copy_keys_per_s", "copy_mb_per_s", "move_keys_per_s", "move_mb_per_s", "mover_cpu_s", "source_cpu_s",
              "source_cpu_copy_s", "target_cpu_s"]:
        if j.get(k): print(f"  {k:30s} {f(k)}")
PY
