#!/usr/bin/env bash
# Soak of range moves (issue 16), outside CI: build/tests/esp-soak-moves (tools/soak_moves.cc)
# starts a meta etcd, three shard etcds and two proxies, then runs MOVES moves (split then move
# back, alternating targets) while clients write, read, compare-and-swap and watch through both
# proxies, and checks the history after every batch. Prints a line per batch and a REPORT line;
# exits non-zero on any violation or failed move. Everything it starts it stops itself.
# Environment: MOVES (200), MOVES_PER_BATCH (10), GAP_MS (300), TIMEOUT (seconds, 3 * MOVES + 300).
set -euo pipefail
cd "$(dirname "$0")/.."
MOVES=${MOVES:-200}
MOVES_PER_BATCH=${MOVES_PER_BATCH:-10}
GAP_MS=${GAP_MS:-300}
TIMEOUT=${TIMEOUT:-$((3 * MOVES + 300))}
SOAK=build/tests/esp-soak-moves
[[ -x $SOAK ]] || { echo "build first: scripts/build.sh" >&2; exit 1; }
exec timeout --signal=TERM --kill-after=30 "$TIMEOUT" "$SOAK" --moves="$MOVES" --moves-per-batch="$MOVES_PER_BATCH" \
  --gap-ms="$GAP_MS"
