#!/usr/bin/env bash
# Time from a shard map change to every proxy serving it (issue 15's target: p99 under 100 ms
# with 3 proxies on loopback): a meta etcd, three shard etcds and PROXIES proxies following the
# meta store, then tools/map_propagation.cc writes ROUNDS map versions one after the other and
# times each until every proxy's registration reports it. Data on tmpfs; everything started
# here is stopped by pid on exit. Prints the tool's JSON line.
# Environment: ROUNDS (200), PROXIES (3).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-bench.sh
ROUNDS=${ROUNDS:-200}
PROXIES=${PROXIES:-3}
TOOL=$ROOT_DIR/build/tools/esp-map-propagation
bench_require_build
[[ -x $TOOL ]] || { echo "build first: scripts/build.sh" >&2; exit 1; }
bench_init /dev/shm/esp-bench-map.XXXXXX

start_etcd meta; wait_ready "${ADDR[meta]}"
for s in 0 1 2; do start_etcd "shard$s"; wait_ready "${ADDR[shard$s]}"; done
write_config "$WORK/layout.yaml" "s0,,i,${ADDR[shard0]}" "s1,i,s,${ADDR[shard1]}" "s2,s,,${ADDR[shard2]}"
"$PROXY" map init --config "$WORK/layout.yaml" --meta-endpoints "${ADDR[meta]}" >/dev/null
for p in $(seq "$PROXIES"); do
  port=$(free_port)
  "$PROXY" --meta-endpoints "${ADDR[meta]}" --listen-addr "127.0.0.1:$port" --log-level warn >"$WORK/proxy$p.log" 2>&1 &
  started "proxy$p" "$port"
  wait_ready "${ADDR[proxy$p]}"
done
# Every proxy registered before the first round.
for _ in $(seq 100); do
  n=$("$PROXY" map show -w json --meta-endpoints "${ADDR[meta]}" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["proxies"]))')
  [[ $n -ge $PROXIES ]] && break
  sleep 0.1
done
"$TOOL" --meta-endpoints "${ADDR[meta]}" --rounds "$ROUNDS" --proxies "$PROXIES"
