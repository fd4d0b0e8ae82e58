#!/usr/bin/env bash
# Side-by-side benchmark: direct etcd vs `etcd grpc-proxy` vs nghttpx vs etcd-sharding-proxy,
# interleaved.
#
# Starts (on free 127.0.0.1 ports, data on tmpfs under /dev/shm):
#   etcd-1            one single-member etcd: the "direct" target and the backend of both proxies
#   grpc-proxy        `etcd grpc-proxy start` in front of etcd-1
#   nghttpx           nghttp2's reverse proxy in front of etcd-1, h2c on both sides: a byte
#                     pass-through on an event loop that parses and routes nothing (the yardstick
#                     of issue 4). Installed on demand (Debian nghttp2-proxy); not a CI dependency.
#   nghttpx-mt        the same with one worker per core (--workers=$(nproc)): the same thread count
#                     as ours-1, so the two can be compared like for like
#   ours-1            build/etcd-sharding-proxy with one shard (etcd-1) -> the ratio rows
#   ours-1-1loop      the same with --data-plane-threads=1: one event loop, as nghttpx runs here
#                     (--workers=1); on this 2-core box the client and etcd share the cores too
#   etcd-s1..s3       three single-member shards, and ours-3 in front of them -> spanning-range row
# Runs every workload against every target, ROUNDS times, rotating the target order each round;
# reads utime+stime+cutime+cstime of every process (and the proxy's kernel share, stime+cstime) from
# /proc/PID/stat around each run; then
# tools/bench_report.py writes the tables into docs/BENCHMARKS.md (between the GENERATED markers).
#
# Environment: ROUNDS (5), DURATION (seconds per run, 3), CONNS (4), INFLIGHT (50), KEY_SPACE (1000),
# VALUE_SIZE (256), WATCHERS (10), WATCH_INFLIGHT (10), OUT (docs/BENCHMARKS.md), WORKLOADS (all).
# Everything started here is stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-bench.sh
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-3}
CONNS=${CONNS:-4}
INFLIGHT=${INFLIGHT:-50}
KEY_SPACE=${KEY_SPACE:-1000}
VALUE_SIZE=${VALUE_SIZE:-256}
WATCHERS=${WATCHERS:-10}
WATCH_INFLIGHT=${WATCH_INFLIGHT:-10}
OUT=${OUT:-docs/BENCHMARKS.md}
WORKLOADS=${WORKLOADS:-"put get-lin get-ser range20 txn lease-grant lease-keepalive watch span-range20"}
bench_require_build
if ! command -v nghttpx >/dev/null; then
  echo "bench: installing nghttp2-proxy (nghttpx) for the pass-through target" >&2
  sudo_=(); [[ $(id -u) == 0 ]] || sudo_=(sudo)
  DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y nghttp2-proxy >&2
fi
bench_init /dev/shm/esp-bench.XXXXXX
COMPACTION=(--auto-compaction-mode revision --auto-compaction-retention 100000)

for n in etcd-1 etcd-s1 etcd-s2 etcd-s3; do start_etcd "$n" "${COMPACTION[@]}"; done
for n in etcd-1 etcd-s1 etcd-s2 etcd-s3; do wait_ready "${ADDR[$n]}"; done

start_grpc_proxy grpc-proxy "${ADDR[etcd-1]}"
start_nghttpx nghttpx "${ADDR[etcd-1]}" --pid-file="$WORK/nghttpx.pid"
start_nghttpx nghttpx-mt "${ADDR[etcd-1]}" --pid-file="$WORK/nghttpx-mt.pid" --workers="$(nproc)"

write_config "$WORK/ours-1.yaml" "only,,,${ADDR[etcd-1]}"
# The spanning row's 20 keys are span/00000000..span/00000019; the boundaries cut them 7/7/6.
write_config "$WORK/ours-3.yaml" "s1,,span/00000007,${ADDR[etcd-s1]}" \
  "s2,span/00000007,span/00000014,${ADDR[etcd-s2]}" "s3,span/00000014,,${ADDR[etcd-s3]}"
for p in ours-1 ours-3; do start_ours "$p" "$WORK/$p.yaml"; done
start_ours ours-1-1loop "$WORK/ours-1.yaml" --data-plane-threads=1
for n in grpc-proxy nghttpx nghttpx-mt ours-1 ours-1-1loop ours-3; do wait_ready "${ADDR[$n]}"; done

sleep 1
IDLE_RSS="ours-1=$(rss_kb "${PID[ours-1]}") ours-3=$(rss_kb "${PID[ours-3]}") grpc-proxy=$(rss_kb "${PID[grpc-proxy]}") nghttpx=$(rss_kb "${PID[nghttpx]}") nghttpx-mt=$(rss_kb "${PID[nghttpx-mt]}") etcd-1=$(rss_kb "${PID[etcd-1]}")"

# Preload: every key once, so that get/range/txn can check values.
"$BENCH" --endpoints "${ADDR[etcd-1]}" --mode preload --key-space "$KEY_SPACE" --value-size "$VALUE_SIZE" --json >/dev/null
"$BENCH" --endpoints "${ADDR[etcd-1]}" --mode preload --key-space 20 --key-prefix span/ --value-size "$VALUE_SIZE" --json >/dev/null
"$BENCH" --endpoints "${ADDR[ours-3]}" --mode preload --key-space 20 --key-prefix span/ --value-size "$VALUE_SIZE" --json >/dev/null

COMMON="--conns $CONNS --duration $DURATION --key-space $KEY_SPACE --value-size $VALUE_SIZE --json"
args_for() {  # workload -> esp-bench arguments
  case $1 in
    put) echo "--mode put --inflight $INFLIGHT" ;;
    get-lin) echo "--mode get --consistency l --no-preload --inflight $INFLIGHT" ;;
    get-ser) echo "--mode get --consistency s --no-preload --inflight $INFLIGHT" ;;
    range20) echo "--mode range --range-keys 20 --no-preload --inflight $INFLIGHT" ;;
    txn) echo "--mode txn --no-preload --inflight $INFLIGHT" ;;
    lease-grant) echo "--mode lease-grant --inflight $INFLIGHT" ;;
    lease-keepalive) echo "--mode lease-keepalive --inflight $INFLIGHT --timeout 3" ;;
    watch) echo "--mode watch --key-prefix watch/ --watchers $WATCHERS --inflight $WATCH_INFLIGHT" ;;
    span-range20) echo "--mode range --spanning --range-keys 20 --key-prefix span/ --no-preload --inflight $INFLIGHT" ;;
  esac
}

# Does our proxy answer watch and lease yet?
OURS_WATCH=0; OURS_LEASE=0
"$BENCH" --endpoints "${ADDR[ours-1]}" --mode lease-grant --total 5 --inflight 1 --conns 1 --timeout 3 --json >/dev/null 2>&1 && OURS_LEASE=1
timeout 20 "$BENCH" --endpoints "${ADDR[ours-1]}" --mode watch --key-prefix probe/ --watchers 1 --inflight 1 --total 5 --conns 1 --timeout 3 --json >/dev/null 2>&1 && OURS_WATCH=1

targets_for() {  # workload -> target names
  case $1 in
    span-range20) echo "direct ours-3" ;;
    watch) [[ $OURS_WATCH == 1 ]] && echo "direct grpc-proxy nghttpx nghttpx-mt ours-1 ours-1-1loop" || echo "direct grpc-proxy nghttpx" ;;
    lease-*) [[ $OURS_LEASE == 1 ]] && echo "direct grpc-proxy nghttpx nghttpx-mt ours-1 ours-1-1loop" || echo "direct grpc-proxy nghttpx" ;;
    *) echo "direct grpc-proxy nghttpx nghttpx-mt ours-1 ours-1-1loop" ;;
  esac
}
etcds_for() { [[ $1 == ours-3 ]] && echo "etcd-s1 etcd-s2 etcd-s3" || echo "etcd-1"; }
proxy_for() { case $1 in grpc-proxy|nghttpx|nghttpx-mt|ours-1|ours-1-1loop|ours-3) echo "$1" ;; *) echo "" ;; esac; }
endpoint_for() { [[ $1 == direct ]] && echo "${ADDR[etcd-1]}" || echo "${ADDR[$1]}"; }

RESULTS=$WORK/results.tsv
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$RESULTS"
echo "bench: $ROUNDS rounds x ${DURATION}s per run; ours answers watch=$OURS_WATCH lease=$OURS_LEASE" >&2
for round in $(seq 1 "$ROUNDS"); do
  for w in $WORKLOADS; do
    read -r -a ts <<<"$(targets_for "$w")"
    n=${#ts[@]}
    for i in $(seq 0 $((n - 1))); do
      t=${ts[$(((i + round) % n))]}
      read -r -a es <<<"$(etcds_for "$t")"
      px=$(proxy_for "$t")
      e0=$(sum_ticks "${es[@]}"); p0=0; k0=0; [[ -n $px ]] && { p0=$(sum_ticks "$px"); k0=$(sys_ticks "$px"); }
      # shellcheck disable=SC2046
      out=$(timeout $((DURATION + 60)) "$BENCH" --endpoints "$(endpoint_for "$t")" $COMMON $(args_for "$w") 2>&1 | tail -1) || true
      e1=$(sum_ticks "${es[@]}"); p1=0; k1=0; [[ -n $px ]] && { p1=$(sum_ticks "$px"); k1=$(sys_ticks "$px"); }
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$w" "$t" $((e1 - e0)) $((p1 - p0)) $((k1 - k0)) "$out" >>"$RESULTS"
      echo "round $round $w $t: $out" >&2
    done
  done
done

AFTER_RSS="ours-1=$(rss_kb "${PID[ours-1]}") (peak $(hwm_kb "${PID[ours-1]}")) ours-3=$(rss_kb "${PID[ours-3]}") (peak $(hwm_kb "${PID[ours-3]}")) grpc-proxy=$(rss_kb "${PID[grpc-proxy]}") (peak $(hwm_kb "${PID[grpc-proxy]}")) nghttpx=$(rss_kb "${PID[nghttpx]}") (peak $(hwm_kb "${PID[nghttpx]}"))"

cmds=$WORK/commands.txt
{
  echo "ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS INFLIGHT=$INFLIGHT KEY_SPACE=$KEY_SPACE VALUE_SIZE=$VALUE_SIZE WATCHERS=$WATCHERS WATCH_INFLIGHT=$WATCH_INFLIGHT scripts/bench.sh"
  echo "# backends"
  echo "etcd --name etcd-1 --data-dir /dev/shm/... --listen-client-urls http://127.0.0.1:PORT ... --log-level error --auto-compaction-mode revision --auto-compaction-retention 100000"
  echo "etcd grpc-proxy start --endpoints=127.0.0.1:ETCD1 --listen-addr=127.0.0.1:PORT"
  echo "nghttpx --frontend='127.0.0.1,PORT;no-tls' --backend='127.0.0.1,ETCD1PORT;;proto=h2' $NGHTTPX_FLAGS   # $(nghttpx --version | head -1)"
  echo "nghttpx ... the same flags ... --workers=$(nproc)   # nghttpx-mt"
  echo "build/etcd-sharding-proxy --config ours-1.yaml --listen-addr 127.0.0.1:PORT --log-level warn   # one shard: etcd-1"
  echo "build/etcd-sharding-proxy --config ours-1.yaml --listen-addr 127.0.0.1:PORT --log-level warn --data-plane-threads=1   # ours-1-1loop"
  echo "build/etcd-sharding-proxy --config ours-3.yaml --listen-addr 127.0.0.1:PORT --log-level warn   # 3 shards split at span/00000007, span/00000014"
  echo "# load (one per workload and target; --endpoints is the target)"
  for w in $WORKLOADS; do echo "esp-bench --endpoints TARGET $COMMON $(args_for "$w")   # $w"; done
} >"$cmds"

python3 "$ROOT_DIR/tools/bench_report.py" --results "$RESULTS" --out "$OUT" --commands "$cmds" \
  --meta "nproc=$(nproc)" \
  --meta "cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" \
  --meta "kernel=$(uname -sr)" \
  --meta "etcd=$(etcd --version | head -1)" \
  --meta "nghttpx=$(nghttpx --version | head -1)" \
  --meta "grpc=$(pkg-config --modversion grpc++ 2>/dev/null || echo unknown)" \
  --meta "compiler=$(${CXX:-c++} --version | head -1)" \
  --meta "build=$(grep -E '^CMAKE_BUILD_TYPE' build/CMakeCache.txt | cut -d= -f2)" \
  --meta "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --meta "date=$(date -u +%Y-%m-%dT%H:%MZ)" \
  --meta "load=1/5/15-min load average $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end (2 cores; others' builds and tests)" \
  --meta "clk_tck=$(getconf CLK_TCK)" \
  --meta "idle_rss_kb=$IDLE_RSS" \
  --meta "after_rss_kb=$AFTER_RSS" \
  --meta "ours_watch=$OURS_WATCH" --meta "ours_lease=$OURS_LEASE"
cp "$RESULTS" "${RESULTS_COPY:-/dev/null}" 2>/dev/null || true
echo "wrote $OUT" >&2
