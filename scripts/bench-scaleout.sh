#!/usr/bin/env bash
# Scale-out: write throughput with 1, 2 and 3 shards behind one proxy, each shard a single-member
# etcd whose data is on the real disk (DATA_ROOT, not tmpfs), so that every commit waits for its
# WAL fdatasync. Puts of VALUE_SIZE bytes go to keys spread uniformly over the whole key space
# (so/00000000 .. so/<KEY_SPACE-1>); the shard boundaries cut that key space into equal parts.
#
# Targets, interleaved over ROUNDS rounds (order rotated per round), each run DURATION seconds:
#   direct-1   etcd-a alone, no proxy (the single-etcd reference)
#   ours-1     the proxy with one shard (etcd-a)
#   ours-2     the proxy with two shards (etcd-a, etcd-b), split in the middle
#   ours-3     the proxy with three shards (etcd-a, etcd-b, etcd-c)
#   direct-3   no proxy: the client's connections spread round-robin over etcd-a, -b, -c (what the
#              three etcds can take on this machine; keys do not follow the shard boundaries here)
# at every in-flight level of INFLIGHTS (the same total load offered to 1, 2 or 3 shards).
# Around each run it reads every process's CPU ticks from /proc/PID/stat and the whole machine's
# busy time from /proc/stat (the machine is shared: its busy share says whether the run was
# CPU-starved rather than disk-bound). tools/scaleout_report.py writes the table into OUT between
# the scale-out markers.
#
# Environment: ROUNDS (3), DURATION (3), INFLIGHTS ("4 16 64"), CONNS (6), KEY_SPACE (30000),
# VALUE_SIZE (256), DATA_ROOT (/var/tmp), OUT (docs/BENCHMARKS.md), ETCD_FLAGS (extra etcd flags,
# e.g. "--backend-batch-limit=1": every applied put commits bbolt with an fsync, so each etcd is
# bound by its disk's sync rate instead of by CPU), LABEL (names the generated section, so runs
# with different ETCD_FLAGS keep separate tables; default "default").
# Everything started here is stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-bench.sh
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
INFLIGHTS=${INFLIGHTS:-"4 16 64"}
CONNS=${CONNS:-6}
KEY_SPACE=${KEY_SPACE:-30000}
VALUE_SIZE=${VALUE_SIZE:-256}
DATA_ROOT=${DATA_ROOT:-/var/tmp}
OUT=${OUT:-docs/BENCHMARKS.md}
ETCD_FLAGS=${ETCD_FLAGS:-}
LABEL=${LABEL:-default}
bench_require_build
if [[ $(stat -f -c %T "$DATA_ROOT") == tmpfs ]]; then
  echo "DATA_ROOT=$DATA_ROOT is tmpfs; the point is a real disk" >&2; exit 1
fi

bench_init "$DATA_ROOT/esp-scaleout.XXXXXX"
key() { printf 'so/%08d' "$1"; }

# shellcheck disable=SC2086
for n in etcd-a etcd-b etcd-c; do
  start_etcd "$n" $ETCD_FLAGS --auto-compaction-mode revision --auto-compaction-retention 100000
done
for n in etcd-a etcd-b etcd-c; do wait_ready "${ADDR[$n]}"; done

half=$(key $((KEY_SPACE / 2))); third=$(key $((KEY_SPACE / 3))); two_thirds=$(key $((2 * KEY_SPACE / 3)))
write_config "$WORK/ours-1.yaml" "a,,,${ADDR[etcd-a]}"
write_config "$WORK/ours-2.yaml" "a,,$half,${ADDR[etcd-a]}" "b,$half,,${ADDR[etcd-b]}"
write_config "$WORK/ours-3.yaml" "a,,$third,${ADDR[etcd-a]}" "b,$third,$two_thirds,${ADDR[etcd-b]}" \
  "c,$two_thirds,,${ADDR[etcd-c]}"
for p in ours-1 ours-2 ours-3; do start_ours "$p" "$WORK/$p.yaml"; done
for p in ours-1 ours-2 ours-3; do wait_ready "${ADDR[$p]}"; done

# Whole machine: busy and total jiffies (all CPUs) from the first line of /proc/stat.
machine() { awk '/^cpu / {t=0; for (i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat; }
etcds_for() { case $1 in direct-1|ours-1) echo etcd-a ;; ours-2) echo "etcd-a etcd-b" ;; *) echo "etcd-a etcd-b etcd-c" ;; esac; }
endpoint_for() {
  case $1 in
    direct-1) echo "${ADDR[etcd-a]}" ;;
    direct-3) echo "${ADDR[etcd-a]},${ADDR[etcd-b]},${ADDR[etcd-c]}" ;;
    *) echo "${ADDR[$1]}" ;;
  esac
}

TARGETS=(direct-1 direct-3 ours-1 ours-2 ours-3)
RESULTS=$WORK/results.tsv
: >"$RESULTS"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
  for inflight in $INFLIGHTS; do
    for i in "${!TARGETS[@]}"; do
      t=${TARGETS[$(((i + round) % ${#TARGETS[@]}))]}
      read -r -a es <<<"$(etcds_for "$t")"
      e0=$(sum_ticks "${es[@]}"); p0=0; [[ $t == ours-* ]] && p0=$(sum_ticks "$t")
      read -r mb0 mt0 <<<"$(machine)"
      out=$(timeout $((DURATION + 60)) "$BENCH" --endpoints "$(endpoint_for "$t")" --mode put --conns "$CONNS" \
        --inflight "$inflight" --duration "$DURATION" --key-space "$KEY_SPACE" --key-prefix so/ \
        --value-size "$VALUE_SIZE" --json 2>&1 | tail -1) || true
      read -r mb1 mt1 <<<"$(machine)"
      e1=$(sum_ticks "${es[@]}"); p1=0; [[ $t == ours-* ]] && p1=$(sum_ticks "$t")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$inflight" "$t" $((e1 - e0)) $((p1 - p0)) \
        "$(awk -v b=$((mb1 - mb0)) -v t=$((mt1 - mt0)) 'BEGIN {printf "%.3f", t ? b / t : 0}')" "$out" >>"$RESULTS"
      echo "round $round inflight $inflight $t: $out" >&2
    done
  done
done

# Fill of each shard after the run: how evenly the keys were spread.
SPREAD=""
for n in etcd-a etcd-b etcd-c; do
  c=$(ETCDCTL_API=3 etcdctl --endpoints "${ADDR[$n]}" get so/ --prefix --keys-only --limit 1 -w json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))')
  SPREAD="$SPREAD $n=$c"
done

python3 "$ROOT_DIR/tools/scaleout_report.py" --results "$RESULTS" --out "$OUT" --label "$LABEL" \
  --meta "etcd_flags=${ETCD_FLAGS:-(none)}" \
  --meta "date=$(date -u +%Y-%m-%dT%H:%MZ)" \
  --meta "load=1/5/15-min load average $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end" \
  --meta "disk=$(df --output=source,fstype "$DATA_ROOT" | tail -1 | tr -s ' ') under $DATA_ROOT" \
  --meta "fsync=$(python3 -c '
import os, time
fd = os.open(os.path.join("'"$WORK"'", "fsync-probe"), os.O_WRONLY | os.O_CREAT, 0o644)
t = time.time()
for _ in range(100):
    os.write(fd, b"x" * 4096); os.fdatasync(fd)
print(f"{(time.time() - t) * 10:.2f} ms per 4 KiB write + fdatasync, mean of 100")
')" \
  --meta "keys=$SPREAD (distinct so/ keys written to each etcd over the whole run)" \
  --meta "command=LABEL=$LABEL ETCD_FLAGS=\"$ETCD_FLAGS\" ROUNDS=$ROUNDS DURATION=$DURATION INFLIGHTS=\"$INFLIGHTS\" CONNS=$CONNS KEY_SPACE=$KEY_SPACE VALUE_SIZE=$VALUE_SIZE DATA_ROOT=$DATA_ROOT scripts/bench-scaleout.sh" \
  --meta "clk_tck=$(getconf CLK_TCK)" \
  --meta "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "wrote $OUT" >&2
