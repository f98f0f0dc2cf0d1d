#!/usr/bin/env bash
# Build Thanos from its module source on the Go module proxy, once, into a cache outside the repository.
# Usage: scripts/install-thanos.sh VERSION    (called by `make thanos`; VERSION is THANOS_VERSION in
# tokenlat_cli/verify/thanos.py, which looks for the binary at the same place)
#
# `go install github.com/thanos-io/thanos/cmd/thanos@VERSION` is refused: Thanos's go.mod has replace
# directives. So the module is downloaded into the Go module cache and built there with `go build`, which
# honours them, with the build tags of Thanos's own release build (.promu.yml): without `slicelabels`,
# Prometheus 3's labels are strings, Thanos's zero-copy label casts read garbage and Receive panics on the first
# gRPC Info call from Query. About 2.5 minutes on 2 cores with a cold Go build cache; the log is printed only
# when it fails.
set -euo pipefail
version=${1:?usage: install-thanos.sh VERSION}
tags=netgo,slicelabels
dest_dir="${XDG_CACHE_HOME:-$HOME/.cache}/tokenlat/thanos-$version"
binary="$dest_dir/thanos"

# `thanos --version` reports the version and the build tags; a binary built without them is rebuilt.
if [[ -x "$binary" ]] && info=$("$binary" --version 2>&1) &&
  grep -q "version ${version#v} " <<<"$info" && grep -q "tags: *$tags\$" <<<"$info"; then
  echo "thanos $version is installed ($binary)"
  exit 0
fi

mkdir -p "$dest_dir"
log="$dest_dir/build.log"
echo "downloading the Thanos $version module (go mod download github.com/thanos-io/thanos@$version)"
src=$(cd "$dest_dir" && go mod download -json "github.com/thanos-io/thanos@$version" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [[ -z "$src" || ! -d "$src/cmd/thanos" ]]; then
  echo "go mod download gave no source directory for github.com/thanos-io/thanos@$version" >&2
  exit 1
fi

echo "building thanos $version from $src (several minutes on a cold Go cache; log: $log)"
start=$(date +%s)
if ! (cd "$src" && GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -tags "$tags" \
  -ldflags "-s -w -X github.com/prometheus/common/version.Version=${version#v}" \
  -o "$binary.tmp" ./cmd/thanos) >"$log" 2>&1; then
  echo "thanos build failed; last lines of $log:" >&2
  tail -n 40 "$log" >&2
  rm -f "$binary.tmp"
  exit 1
fi
mv "$binary.tmp" "$binary"
echo "built $binary in $(($(date +%s) - start))s"
