# shellcheck shell=bash
# Shared by scripts/bench.sh, bench-scaleout.sh and bench-memory.sh (sourced after `cd` to the
# repository root): free loopback ports, starting etcd / etcd grpc-proxy / nghttpx / our proxy in
# the background, waiting until they answer, reading RSS and CPU ticks from /proc, and stopping
# everything started here by pid on exit. Every process started here is recorded as PID[name]
# and ADDR[name] (127.0.0.1:port); the last one also as STARTED_PID and STARTED_ADDR.

ROOT_DIR=$(pwd)
BENCH=$ROOT_DIR/build/tools/esp-bench
PROXY=$ROOT_DIR/build/etcd-sharding-proxy
# nghttpx as a byte pass-through: one worker thread, one process; no access log; long-lived watch
# and keep-alive streams must not be cut by nghttpx's idle timeouts; streams per client
# connection as many as gRPC opens.
NGHTTPX_FLAGS="--single-process --workers=1 --no-via --no-ocsp --no-server-push --frontend-http2-max-concurrent-streams=100000 --frontend-http2-read-timeout=0 --backend-read-timeout=0 --backend-write-timeout=0 --stream-write-timeout=0 --conf=/dev/null"
# shellcheck disable=SC2034  # ADDR is read by the scripts that source this
declare -A PID=() ADDR=()

bench_require_build() {
  [[ -x $BENCH && -x $PROXY ]] || { echo "build first: scripts/build.sh" >&2; exit 1; }
}

# Makes WORK from the mktemp template $1 and stops everything started here on exit.
bench_init() {
  WORK=$(mktemp -d "$1")
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}
bench_cleanup() {
  local name
  for name in "${!PID[@]}"; do kill "${PID[$name]}" 2>/dev/null || true; done
  for name in "${!PID[@]}"; do wait "${PID[$name]}" 2>/dev/null || true; done
  rm -rf "$WORK"
}
# Stops one process started here (and forgets it, so that the exit trap leaves its pid alone).
bench_stop() {  # name
  kill "${PID[$1]}" 2>/dev/null || true
  wait "${PID[$1]}" 2>/dev/null || true
  unset 'PID[$1]'
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Records the process just put in the background as $1 listening on port $2.
started() {  # name port
  STARTED_PID=$!; STARTED_ADDR=127.0.0.1:$2
  PID[$1]=$STARTED_PID
  # shellcheck disable=SC2034  # ADDR is read by the scripts that source this
  ADDR[$1]=$STARTED_ADDR
}

# A single-member etcd with its data in $WORK/NAME; further arguments are extra etcd flags.
start_etcd() {  # name [etcd flags...]
  local name=$1 cport pport
  shift
  cport=$(free_port); pport=$(free_port)
  etcd "$@" --name "$name" --data-dir "$WORK/$name" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$name=http://127.0.0.1:$pport" --log-level error >"$WORK/$name.log" 2>&1 &
  started "$name" "$cport"
}
# Our proxy with config file $2; further arguments are extra proxy flags.
start_ours() {  # name config [proxy flags...]
  local name=$1 config=$2 port
  shift 2
  port=$(free_port)
  "$PROXY" --config "$config" --listen-addr "127.0.0.1:$port" --log-level warn "$@" >"$WORK/$name.log" 2>&1 &
  started "$name" "$port"
}
start_grpc_proxy() {  # name backend-address
  local port
  port=$(free_port)
  etcd grpc-proxy start --endpoints="$2" --listen-addr="127.0.0.1:$port" \
    --data-dir "$WORK/$1.data" >"$WORK/$1.log" 2>&1 &
  started "$1" "$port"
}
# nghttpx, h2c on both sides, in front of backend $2; further arguments are extra nghttpx flags.
start_nghttpx() {  # name backend-address [nghttpx flags...]
  local name=$1 backend=$2 port
  shift 2
  port=$(free_port)
  # shellcheck disable=SC2086
  nghttpx --frontend="127.0.0.1,$port;no-tls" --backend="127.0.0.1,${backend##*:};;proto=h2" $NGHTTPX_FLAGS \
    --errorlog-file="$WORK/$name.log" "$@" >/dev/null 2>&1 &
  started "$name" "$port"
}

# Our proxy's config file: one shard per further argument "name,start,end,address" (an empty
# start or end: open).
write_config() {  # file shard...
  local file=$1 spec name start end address
  shift
  {
    echo "shards:"
    for spec in "$@"; do
      IFS=, read -r name start end address <<<"$spec"
      echo "  - {name: $name, start: \"$start\", end: \"$end\", address: $address}"
    done
  } >"$file"
}

wait_ready() {  # address
  for _ in $(seq 200); do
    ETCDCTL_API=3 etcdctl --endpoints "$1" --command-timeout=1s get probe >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2; exit 1
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
# CPU ticks (utime+stime+cutime+cstime: every thread, and reaped children) of one process.
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12+$13+$14+$15}' "/proc/$1/stat"; }
# The same summed over processes started here, by name.
sum_ticks() { local t=0 n; for n in "$@"; do t=$((t + $(cpu_ticks "${PID[$n]}"))); done; echo $t; }
# Of those, the ticks spent in the kernel (stime+cstime): socket reads and writes, and the loopback
# TCP work and wake-ups they cause, which any proxy pays per request whatever its own code costs.
sys_ticks() { awk '{sub(/^.*\) /, ""); print $13+$15}' "/proc/${PID[$1]}/stat"; }
