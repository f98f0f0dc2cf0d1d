#!/usr/bin/env bash
# Build the tokenlat Collector distribution with ocb, only when the manifest or the builder changed.
# Usage: collector/build.sh OCB_VERSION    (called by `make collector`)
# The build log goes to collector/_build/build.log and is printed only when the build fails.
set -euo pipefail
ocb_version=${1:?usage: build.sh OCB_VERSION}
here=$(cd "$(dirname "$0")" && pwd)
build="$here/_build"
binary="$build/tokenlat-otelcol"
stamp="$build/.manifest.sha256"
gobin=$(go env GOPATH)/bin
builder="$gobin/builder"

if ! "$builder" version 2>&1 | grep -q "$ocb_version"; then
  echo "installing ocb $ocb_version (go install go.opentelemetry.io/collector/cmd/builder@$ocb_version)"
  GOFLAGS=-mod=mod go install "go.opentelemetry.io/collector/cmd/builder@$ocb_version"
fi

want=$( (cat "$here/builder-config.yaml"; echo "$ocb_version") | sha256sum | cut -d' ' -f1)
if [[ -x "$binary" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "tokenlat-otelcol is up to date ($binary)"
  exit 0
fi

mkdir -p "$build"
echo "building tokenlat-otelcol with ocb $ocb_version (a few minutes on a cold Go cache; log: $build/build.log)"
start=$(date +%s)
if ! (cd "$here" && "$builder" --config builder-config.yaml) >"$build/build.log" 2>&1; then
  echo "ocb build failed; last lines of $build/build.log:" >&2
  tail -n 40 "$build/build.log" >&2
  exit 1
fi
echo "$want" >"$stamp"
echo "built $binary in $(( $(date +%s) - start ))s"
