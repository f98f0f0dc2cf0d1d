#!/usr/bin/env bash
# Build a program from its module source on the Go module proxy, once, into a cache outside the repository:
# ${XDG_CACHE_HOME:-$HOME/.cache}/tokenlat/NAME-VERSION/NAME. Shared by install-thanos.sh and
# install-prometheus.sh, which say why their program is built this way and with which tags.
# Usage: scripts/build-go-binary.sh NAME MODULE VERSION RELEASE PACKAGE TAGS
#   MODULE@VERSION   what `go mod download` fetches
#   RELEASE          the version the program reports: stamped into github.com/prometheus/common/version.Version,
#                    which Thanos and Prometheus both print in `--version`
#   PACKAGE          the main package inside the module, ./cmd/NAME
#   TAGS             the build tags of the program's own release build (its .promu.yml)
#
# The module is built where `go mod download` unpacked it, with `go build`, because `go install MODULE@VERSION`
# refuses a go.mod with replace directives. GOWORK=off: a module's go.work names sibling modules that its zip
# does not contain, and go refuses to build at all. A binary whose `--version` reports RELEASE and TAGS is kept;
# anything else is rebuilt. The build log is printed only when the build fails.
set -euo pipefail
[[ $# -eq 6 ]] || { echo "usage: build-go-binary.sh NAME MODULE VERSION RELEASE PACKAGE TAGS" >&2; exit 2; }
name=$1 module=$2 version=$3 release=$4 package=$5 tags=$6
dest_dir="${XDG_CACHE_HOME:-$HOME/.cache}/tokenlat/$name-$version"
binary="$dest_dir/$name"

if [[ -x "$binary" ]] && info=$("$binary" --version 2>&1) &&
  grep -q "version $release " <<<"$info" && grep -q "tags: *$tags\$" <<<"$info"; then
  echo "$name $version is installed ($binary)"
  exit 0
fi

mkdir -p "$dest_dir"
log="$dest_dir/build.log"
echo "downloading the $name $version module (go mod download $module@$version)"
src=$(cd "$dest_dir" && go mod download -json "$module@$version" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [[ -z "$src" || ! -d "$src/$package" ]]; then
  echo "go mod download gave no source directory with $package for $module@$version" >&2
  exit 1
fi

echo "building $name $version ($release, tags $tags) from $src (minutes on a cold Go cache; log: $log)"
start=$(date +%s)
if ! (cd "$src" && GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -tags "$tags" \
  -ldflags "-s -w -X github.com/prometheus/common/version.Version=$release" \
  -o "$binary.tmp" "$package") >"$log" 2>&1; then
  echo "$name build failed; last lines of $log:" >&2
  tail -n 40 "$log" >&2
  rm -f "$binary.tmp"
  exit 1
fi
mv "$binary.tmp" "$binary"
echo "built $binary in $(($(date +%s) - start))s"
