#!/usr/bin/env bash
# Kubernetes' own storage tests (k8s.io/apiserver/pkg/storage/etcd3: the generic conformance suite
# storagetesting.RunTest*; k8s.io/apiserver/pkg/storage/cacher: the watch cache's tests) against
# an etcd endpoint given at run time: one plain etcd, or the proxy over three shards.
#
#   scripts/k8s-storage-tests.sh build              fetch (scripts/fetch-k8s-storage.sh) and build
#   scripts/k8s-storage-tests.sh run URL[,URL] [ARGS]  both test binaries against a running endpoint
#   scripts/k8s-storage-tests.sh plain|proxy|both   start fresh etcd (and proxy) on loopback, run, stop
#
# Kubernetes' sources are not in this repo: they come from Debian's golang-k8s-apiserver-dev (with
# its _test.go files) in the cache. The tests are compiled unchanged, in GOPATH mode with no module
# proxy, except that `go test -overlay` replaces one file, etcd3/testserver/test_server.go (the
# embedded etcd every test starts), with tests/k8s/overlay/testserver.go (a client of
# ETCD_ENDPOINTS). The binaries are cached under the cache dir, keyed by the Debian package
# versions and the overlay; GOCACHE too.
#
# Environment: ESP_K8S_CACHE (see fetch-k8s-storage.sh), ESP_K8S_ETCD (the etcd binary for
# plain/proxy; default build/newer-etcd/usr/bin/etcd, else etcd on PATH), ESP_K8S_PROXY (default
# build/etcd-sharding-proxy), ESP_K8S_LOGS (where logs go; default a new temporary directory),
# ESP_K8S_BIN_DIR (test binaries built elsewhere: no build).
# Exit status: 0 all passed, 1 a failure, 77 skipped (nothing could be fetched or built).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
cache=${ESP_K8S_CACHE:-${ESP_CACHE:-$HOME/.cache/etcd-sharding-proxy}/k8s}
export ESP_K8S_CACHE=$cache
targets=(etcd3:k8s.io/apiserver/pkg/storage/etcd3 cacher:k8s.io/apiserver/pkg/storage/cacher)
overlay_src=$repo/tests/k8s/overlay/testserver.go
# Tests that need an etcd of their own, fresh (revision near 1, never compacted), as upstream gives
# every test: they watch from resourceVersion 1, or expect RV 102 to be in the future. Each runs
# in its own process against a newly started cluster ("run" against a given endpoint skips them).
fresh_etcd3=(TestEtcdWatchSemantics TestEtcdWatchSemanticsWithConcurrentDecode
             TestTooLargeResourceVersionErrorForWatchList)
fresh_cacher=(TestWatchSemantics)
# Tests this harness cannot run as upstream does, on plain etcd as through the proxy (listed with
# the reason in docs/k8s-storage-tests.md): skipped in every mode.
# cacher TestLists: its 12 subtests each expect an etcd of their own, from revision 1.
unrunnable_etcd3=()
unrunnable_cacher=(TestLists)
say() { echo "k8s-storage-tests: $*" >&2; }

build() {  # prints the directory holding etcd3.test and cacher.test
  scripts/fetch-k8s-storage.sh
  [ -f "$cache/packages.txt" ] || { say "no Kubernetes sources (fetch failed): skipped"; return 77; }
  local goroot
  goroot=$(ls -d "$cache"/root/usr/lib/go-1.* 2>/dev/null | sort -V | tail -1)
  [ -x "$goroot/bin/go" ] || { say "no Go toolchain in $cache: skipped"; return 77; }
  local key
  key=$( (cat "$cache/packages.txt" "$overlay_src"; printf '%s\n' "${targets[@]}") | sha256sum | cut -c1-16)
  local out=$cache/bin/$key
  if [ -x "$out/etcd3.test" ] && [ -x "$out/cacher.test" ]; then echo "$out"; return 0; fi
  local gopath=$cache/root/usr/share/gocode
  local replaced=$gopath/src/k8s.io/apiserver/pkg/storage/etcd3/testserver/test_server.go
  [ -f "$replaced" ] || { say "$replaced is missing: skipped"; return 77; }
  mkdir -p "$out.tmp"
  printf '{"Replace": {"%s": "%s"}}\n' "$replaced" "$overlay_src" >"$out.tmp/overlay.json"
  local t
  for t in "${targets[@]}"; do
    local start=$(date +%s)
    # One core, lowest priority: the machine is shared with the C++ build and other tests.
    if ! (cd "$out.tmp" && GOROOT=$goroot GOPATH=$gopath GO111MODULE=off GOPROXY=off GOFLAGS= \
          GOTOOLCHAIN=local GOTELEMETRY=off GOCACHE=$cache/gocache GOMAXPROCS=1 \
          nice -n 19 "$goroot/bin/go" test -p 1 -overlay "$out.tmp/overlay.json" -c \
          -o "$out.tmp/${t%%:*}.test" "${t#*:}" >"$out.tmp/build-${t%%:*}.log" 2>&1); then
      say "building ${t#*:}'s tests failed:"; tail -30 "$out.tmp/build-${t%%:*}.log" >&2
      return 1
    fi
    say "built ${t#*:}'s tests in $(( $(date +%s) - start )) s"
  done
  rm -rf "$out" && mv "$out.tmp" "$out" && echo "$out"
}

# --- running ------------------------------------------------------------------------------------
logs=${ESP_K8S_LOGS:-$(mktemp -d /tmp/k8s-storage-tests.XXXXXX)}
mkdir -p "$logs"
pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  pids=()
}
trap stop_all EXIT
trap 'exit 143' INT TERM
free_port() {  # a loopback port nobody listens on, below the ephemeral range
  local p
  while :; do
    p=$(( 20000 + RANDOM % 12000 ))
    ss -Htln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
}
etcd_bin=${ESP_K8S_ETCD:-}
[ -n "$etcd_bin" ] || { [ -x build/newer-etcd/usr/bin/etcd ] && etcd_bin=$repo/build/newer-etcd/usr/bin/etcd; }
[ -n "$etcd_bin" ] || etcd_bin=$(command -v etcd)
proxy_bin=${ESP_K8S_PROXY:-$repo/build/etcd-sharding-proxy}
start_etcd() {  # name; sets $url to its client URL
  local name=$1 c p
  c=$(free_port); p=$(free_port)
  # The watch progress interval the tests that set one (TestProgressNotify, ...) give their etcd.
  "$etcd_bin" --name "$name" --data-dir "$run_dir/$name" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$name=http://127.0.0.1:$p" --experimental-watch-progress-notify-interval=1s \
    --unsafe-no-fsync --log-level error >"$run_dir/$name.log" 2>&1 &
  pids+=($!)
  url=http://127.0.0.1:$c
}
wait_up() {  # url
  local _
  for _ in $(seq 150); do
    ETCDCTL_API=3 etcdctl --endpoints "${1#http://}" --command-timeout=1s endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  say "$1 did not come up (logs in $run_dir)"; return 1
}
# Three shards, one range each, so that Kubernetes resource prefixes land on different clusters:
# The layout operators give Kubernetes (docs/kubernetes.md): events on one cluster, leases on
# another, everything else (the rest of /registry/, the etcd3 tests' /pods/, compact_rev_key, the
# tests' increaseRV key) on a third, which owns the three ranges around them. Every test's keys
# stay inside one shard.
start_cluster() {  # plain|proxy; sets $endpoint
  run_dir=$(mktemp -d "$logs/cluster.XXXXXX")
  if [ "$1" = plain ]; then
    start_etcd etcd; endpoint=$url; wait_up "$endpoint"; return
  fi
  local rest events leases
  start_etcd rest; rest=$url; start_etcd events; events=$url; start_etcd leases; leases=$url
  wait_up "$rest" && wait_up "$events" && wait_up "$leases" || return 1
  cat >"$run_dir/layout.yaml" <<EOF
shards:
  - {name: rest, start: "", end: "/registry/events/", address: ${rest#http://}}
  - {name: events, start: "/registry/events/", end: "/registry/events0", address: ${events#http://}}
  - {name: rest, start: "/registry/events0", end: "/registry/leases/", address: ${rest#http://}}
  - {name: leases, start: "/registry/leases/", end: "/registry/leases0", address: ${leases#http://}}
  - {name: rest, start: "/registry/leases0", end: "", address: ${rest#http://}}
EOF
  local port; port=$(free_port)
  # No compaction retention: a proxy younger than the retention compacts nothing (it has not seen
  # the shards' revisions that long ago), and every test here starts a proxy and compacts at
  # once; each test's keys are in one shard, whose own revision the test compacts at.
  "$proxy_bin" --config "$run_dir/layout.yaml" --listen-addr "127.0.0.1:$port" --log-level warn \
    --compaction-retention=0 ${ESP_K8S_PROXY_ARGS:-} >"$run_dir/proxy.log" 2>&1 &
  pids+=($!)
  endpoint=http://127.0.0.1:$port
  wait_up "$endpoint"
}
run_binary() {  # binary log endpoint args...
  local bin=$1 log=$2 ep=$3; shift 3
  # In the background, so that a signal to this script ends it (timeout passes SIGTERM on).
  (cd "$logs" && ETCD_ENDPOINTS=$ep GOMAXPROCS=1 exec nice -n 19 timeout 1500 "$bin" -test.v \
     -test.parallel=1 -test.timeout=1400s "$@" >"$log" 2>&1) &
  local pid=$!
  pids+=("$pid")
  wait "$pid"
}
# Top-level results of -test.v logs: "TestX PASS" lines.
results() { grep -aE '^--- (PASS|FAIL|SKIP): ' "$@" | awk '{sub(":", "", $2); print $3, $2}'; }
run_mode() {  # plain|proxy: everything but the fresh tests on one cluster, each fresh one alone
  local mode=$1 t name fresh fresh_list unrunnable_list
  for t in "${targets[@]}"; do
    name=${t%%:*}
    eval "fresh_list=(\"\${fresh_$name[@]}\")"
    eval "unrunnable_list=(\"\${unrunnable_$name[@]}\")"
    fresh=$(IFS='|'; echo "^(${fresh_list[*]}${unrunnable_list[*]:+|}${unrunnable_list[*]})\$")
    start_cluster "$mode" || return 1
    say "$mode: $name tests against $endpoint"
    run_binary "$bin_dir/$name.test" "$logs/$mode-$name.log" "$endpoint" -test.skip "$fresh"
    stop_all
    local f
    for f in "${fresh_list[@]}"; do
      start_cluster "$mode" || return 1
      run_binary "$bin_dir/$name.test" "$logs/$mode-$name-$f.log" "$endpoint" -test.run "^$f\$"
      stop_all
    done
    results "$logs/$mode-$name.log" "$logs/$mode-$name"-*.log 2>/dev/null |
      sed "s/^/$name /" >"$logs/$mode-$name.results"
  done
  cat "$logs/$mode"-*.results >"$logs/$mode.results"
  local pass fail skip
  pass=$(grep -c ' PASS$' "$logs/$mode.results"); fail=$(grep -c ' FAIL$' "$logs/$mode.results")
  skip=$(grep -c ' SKIP$' "$logs/$mode.results")
  grep ' FAIL$' "$logs/$mode.results" | sed "s/^/  $mode failed: /" >&2
  echo "$mode: $pass passed, $fail failed, $skip skipped"
  [ "$fail" = 0 ]
}

cmd=${1:-both}; shift 2>/dev/null
case "$cmd" in
  build) build; exit $? ;;
  run)
    [ $# -ge 1 ] || { say "usage: $0 run URL[,URL...] [test binary flags]"; exit 2; }
    ep=$1; shift
    bin_dir=${ESP_K8S_BIN_DIR:-$(build)} || exit $?
    rc=0
    for t in "${targets[@]}"; do
      run_binary "$bin_dir/${t%%:*}.test" "$logs/${t%%:*}.log" "$ep" "$@" || rc=1
    done
    results "$logs"/*.log | awk '{n[$2]++} END {printf "%d passed, %d failed, %d skipped\n", n["PASS"], n["FAIL"], n["SKIP"]}'
    say "logs in $logs"; exit $rc ;;
  plain|proxy|both)
    bin_dir=${ESP_K8S_BIN_DIR:-$(build)} || exit $?
    [ -x "$etcd_bin" ] || { say "no etcd binary: skipped"; exit 77; }
    say "etcd: $("$etcd_bin" --version | head -1); logs in $logs"
    rc=0
    modes=("$cmd"); [ "$cmd" = both ] && modes=(plain proxy)
    for m in "${modes[@]}"; do
      if [ "$m" = proxy ] && [ ! -x "$proxy_bin" ]; then say "no proxy binary at $proxy_bin (scripts/build.sh)"; exit 1; fi
      run_mode "$m" || rc=1
    done
    if [ "$cmd" = both ]; then
      # Every test that passes on plain etcd must pass through the proxy.
      comm -23 <(grep ' PASS$' "$logs/plain.results" | sort) <(grep ' PASS$' "$logs/proxy.results" | sort) |
        sed 's/^/  passes on plain etcd, not through the proxy: /' >&2
    fi
    exit $rc ;;
  *) say "usage: $0 build | run URL[,URL...] [flags] | plain | proxy | both"; exit 2 ;;
esac
