#!/usr/bin/env bash
# Fetches the newest etcd server Debian has (the etcd-server package of Debian unstable, falling
# back to testing), unpacked under build/newer-etcd/usr/bin, for the `newer_etcd_*` test runs: the
# proxy must work with etcd 3.5 to 3.7 as well as with the release's own 3.4. Nothing is
# installed: apt reads unstable's index into a private directory (signatures checked against the
# system's Debian archive keyring) and downloads the .deb, which dpkg-deb unpacks. Idempotent;
# exits 0 without it (the newer_etcd tests then report themselves skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
dest=${1:-build/newer-etcd}
[ -x "$dest/usr/bin/etcd" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
for suite in sid testing; do
  echo "deb http://deb.debian.org/debian $suite main" >"$work/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1
            -o APT::Sandbox::User=root -qq)
  apt-get "${apt_opts[@]}" update >/dev/null 2>&1 || continue
  (cd "$work" && apt-get "${apt_opts[@]}" download etcd-server >/dev/null 2>&1) || continue
  deb=$(ls "$work"/etcd-server_*.deb 2>/dev/null | head -1)
  [ -n "$deb" ] || continue
  mkdir -p "$dest"
  dpkg-deb -x "$deb" "$dest" || continue
  echo "newer etcd for tests: $("$dest/usr/bin/etcd" --version | head -1) (Debian $suite, $(basename "$deb"))" >&2
  exit 0
done
echo "could not fetch a newer etcd-server from Debian: the newer_etcd tests will be skipped" >&2
exit 0
