#!/usr/bin/env bash
# Fetches what scripts/k8s-storage-tests.sh builds Kubernetes' storage tests from, offline, from
# Debian's archive only: the Go sources of k8s.io/apiserver (golang-k8s-apiserver-dev, which ships
# pkg/storage/etcd3 and pkg/storage/cacher with their _test.go files), the Go libraries those
# tests import, and a Go toolchain new enough (golang-1.NN-go and -src, the one Debian's golang-go
# depends on). Nothing is installed: as scripts/fetch-newer-etcd.sh does, apt reads unstable's
# (else testing's) index into a private directory (signatures checked against the system's
# Debian archive keyring) and downloads the .debs, which dpkg-deb unpacks under the cache.
#
# Only the packages the build needs are unpacked: Debian's Depends of golang-k8s-apiserver-dev
# reach ~310 -dev packages (2.3 GB unpacked); `go list` over the tests' imports (GOPATH mode)
# names the ~80 that hold an imported Go package, and they are unpacked one import layer at a
# time until nothing is missing. testdata/ directories are left out.
#
# Into ${ESP_K8S_CACHE:-${ESP_CACHE:-$HOME/.cache/etcd-sharding-proxy}/k8s} (outside the repo):
#   root/usr/lib/go-1.NN        the Go toolchain (GOROOT)
#   root/usr/share/gocode       GOPATH
#   packages.txt                the Debian packages unpacked, with versions (the build's key)
# Idempotent (a complete cache is kept; ESP_K8S_REFRESH=1 fetches anew). Exits 0 when it cannot,
# saying why (the Kubernetes storage tests are then skipped).
set -uo pipefail
cache=${ESP_K8S_CACHE:-${ESP_CACHE:-$HOME/.cache/etcd-sharding-proxy}/k8s}
# The Go packages whose tests are built; their imports decide what is unpacked.
targets=(k8s.io/apiserver/pkg/storage/etcd3 k8s.io/apiserver/pkg/storage/cacher)
if [ -f "$cache/packages.txt" ] && [ "${ESP_K8S_REFRESH:-0}" != 1 ]; then
  exit 0
fi
say() { echo "fetch-k8s-storage: $*" >&2; }
give_up() { say "$* - the Kubernetes storage tests will be skipped"; exit 0; }
for tool in apt-get apt-cache dpkg-deb tar; do
  command -v "$tool" >/dev/null || give_up "no $tool"
done
mkdir -p "$(dirname "$cache")" || give_up "cannot create $(dirname "$cache")"
work=$(mktemp -d "$(dirname "$cache")/.k8s-fetch.XXXXXX") || give_up "no temporary directory"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root"

for suite in sid testing; do
  echo "deb http://deb.debian.org/debian $suite main" >"$work/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1
            -o APT::Sandbox::User=root -qq)
  rm -rf "$work/lists"/*_Packages* "$work/lists"/*Release* 2>/dev/null
  apt-get "${apt_opts[@]}" update >/dev/null 2>&1 || { say "no $suite index"; continue; }
  apiserver=$(apt-cache "${apt_opts[@]}" show golang-k8s-apiserver-dev 2>/dev/null |
              sed -n 's/^Version: //p' | head -1)
  [ -n "$apiserver" ] || { say "$suite has no golang-k8s-apiserver-dev"; continue; }
  # The toolchain Debian's golang-go points at (golang-1.NN-go, which needs golang-1.NN-src).
  go_pkg=$(apt-cache "${apt_opts[@]}" depends golang-go 2>/dev/null |
           sed -n 's/^ *Depends: \(golang-1\.[0-9]*-go\)$/\1/p' | head -1)
  [ -n "$go_pkg" ] || { say "$suite: cannot tell golang-go's toolchain"; continue; }
  go_src=${go_pkg%-go}-src
  # Debian's dependency closure of the apiserver sources: the candidates (Go -dev packages only).
  apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances --no-pre-depends golang-k8s-apiserver-dev 2>/dev/null |
    grep -E '^golang-.*-dev$' | sort -u >"$work/closure.txt"
  (cd "$work/debs" && apt-get "${apt_opts[@]}" download "$go_pkg" "$go_src" \
     $(cat "$work/closure.txt") >/dev/null 2>&1) || { say "$suite: download failed"; continue; }
  chosen=$suite
  break
done
[ -n "${chosen:-}" ] || give_up "could not fetch golang-k8s-apiserver-dev and a Go toolchain from Debian"
fetched=$(du -sm "$work/debs" | cut -f1)
say "Debian $chosen: golang-k8s-apiserver-dev $apiserver, $go_pkg, $(wc -l <"$work/closure.txt") -dev packages in the closure (${fetched} MB) in $(( $(date +%s) - start )) s"

unpacked=()
unpack() {  # deb file
  dpkg-deb --fsys-tarfile "$1" | tar -x -C "$work/root" --exclude='*/testdata' --exclude='*/testdata/*' \
    --exclude='./usr/share/doc/*' || return 1
  unpacked+=("$1")
}
for p in "$go_pkg" "$go_src" golang-k8s-apiserver-dev; do
  unpack "$(ls "$work/debs/${p}_"*.deb | head -1)" || give_up "cannot unpack $p"
done
go_version=${go_pkg#golang-}; go_version=${go_version%-go}
goroot="$work/root/usr/lib/go-$go_version"
[ -x "$goroot/bin/go" ] || give_up "no toolchain in $go_pkg"
# Which package holds which Go import path: every directory holding .go files, and every
# symlink, under /usr/share/gocode/src of each candidate.
for deb in "$work/debs"/golang-*-dev_*.deb; do
  dpkg-deb -c "$deb" | awk -v deb="$deb" '
    { p = $6; sub(/^\.\/usr\/share\/gocode\/src\//, "", p); if (p == $6) next }
    $1 ~ /^l/ { print p, deb; next }
    p ~ /\.go$/ { sub(/\/[^\/]*$/, "", p); print p, deb }' | sort -u
done >"$work/index.txt"

export GOROOT="$goroot" GOPATH="$work/root/usr/share/gocode" GO111MODULE=off GOPROXY=off \
       GOFLAGS= GOTOOLCHAIN=local GOTELEMETRY=off GOCACHE="$work/gocache" GOMAXPROCS=1
gobin="$goroot/bin/go"
for round in $(seq 1 40); do
  # Import paths that resolve nowhere yet ("cannot find package").
  missing=$(cd "$work" && "$gobin" list -e -deps -test -f '{{if .Error}}{{.ImportPath}}{{end}}' \
            "${targets[@]}" 2>/dev/null | grep -v '^$' | grep -v '\.test$' | grep -v ' \[' | sort -u)
  [ -n "$missing" ] || break
  new=()
  for path in $missing; do
    # GOPATH mode's minimal module compatibility: a/b/v3/c is found at a/b/c.
    found=""
    for cand in "$path" "$(echo "$path" | sed -E 's#/v[0-9]+(/|$)#\1#')"; do
      p=$cand
      while [ -n "$p" ] && [ -z "$found" ]; do
        found=$(awk -v p="$p" '$1 == p { print $2; exit }' "$work/index.txt")
        [ "$p" = "${p%/*}" ] && break
        p=${p%/*}
      done
      [ -n "$found" ] && break
    done
    if [ -z "$found" ]; then
      say "no Debian package in the closure provides Go package $path"
      continue
    fi
    case " ${unpacked[*]} ${new[*]} " in *" $found "*) ;; *) new+=("$found") ;; esac
  done
  [ ${#new[@]} -gt 0 ] || give_up "the build would miss Go packages: $(echo $missing | head -c 400)"
  for deb in "${new[@]}"; do unpack "$deb" || give_up "cannot unpack $deb"; done
done
[ -z "$missing" ] || give_up "imports still missing after 40 rounds"
for deb in "${unpacked[@]}"; do
  dpkg-deb --show --showformat="\${Package} \${Version} $chosen\n" "$deb"
done | sort >"$work/packages.txt"

rm -rf "$cache"
mkdir -p "$cache"
mv "$work/root" "$cache/root" && mv "$work/packages.txt" "$cache/packages.txt" ||
  give_up "cannot move the sources into $cache"
say "unpacked $(wc -l <"$cache/packages.txt") packages ($(du -sm "$cache/root" | cut -f1) MB) into $cache in $(( $(date +%s) - start )) s"
exit 0
