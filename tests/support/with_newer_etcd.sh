#!/usr/bin/env bash
# Runs a test binary with the etcd fetched by scripts/fetch-newer-etcd.sh first on PATH, so the
# fixtures start that etcd for every shard; exit 77 (ctest: skipped) when there is none.
dir=$1
shift
if [ ! -x "$dir/etcd" ]; then
  echo "no etcd in $dir (scripts/fetch-newer-etcd.sh could not fetch one): skipped"
  exit 77
fi
echo "shards run $("$dir/etcd" --version | head -1)"
PATH="$dir:$PATH" exec "$@"
