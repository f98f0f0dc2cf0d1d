#!/usr/bin/env bash
# Build the tokenlat Collector distribution with ocb, only when the manifest, the release or the builder changed.
# Usage: collector/build.sh    (called by `make collector`; PYTHON names an interpreter with PyYAML, default python3)
# The release is read from collector/VERSION, the one place it is pinned; the manifest is checked against it
# (tokenlat_cli/manifest.py) before anything is built. The build log goes to collector/_build/build.log and is
# printed only when the build fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
ocb_version=$(tr -d '[:space:]' <"$here/VERSION")
build="$here/_build"
binary="$build/tokenlat-otelcol"
stamp="$build/.manifest.sha256"
gobin=$(go env GOPATH)/bin
builder="$gobin/builder"
# Stripped: no symbol table (-s) and no DWARF (-w). ocb at this release strips by default, but says so only in its
# source; naming the flags here keeps the release binary stripped if a later ocb changes its default.
ldflags="-s -w"

size() {
  local bytes
  bytes=$(stat -c %s "$binary")
  awk -v b="$bytes" 'BEGIN { printf "%.1f MiB (%d bytes)", b / 1048576, b }'
}

if ! (cd "$repo" && "${PYTHON:-python3}" -m tokenlat_cli.manifest); then
  echo "collector/builder-config.yaml disagrees with collector/VERSION ($ocb_version): fix the lines above" >&2
  exit 1
fi

if ! "$builder" version 2>&1 | grep -q "$ocb_version"; then
  echo "installing ocb $ocb_version (go install go.opentelemetry.io/collector/cmd/builder@$ocb_version)"
  GOFLAGS=-mod=mod go install "go.opentelemetry.io/collector/cmd/builder@$ocb_version"
fi

want=$( (cat "$here/builder-config.yaml"; echo "$ocb_version $ldflags") | sha256sum | cut -d' ' -f1)
if [[ -x "$binary" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "tokenlat-otelcol $ocb_version is up to date ($binary, stripped, $(size))"
  exit 0
fi

mkdir -p "$build"
echo "building tokenlat-otelcol with ocb $ocb_version (a few minutes on a cold Go cache; log: $build/build.log)"
start=$(date +%s)
if ! (cd "$here" && "$builder" --config builder-config.yaml --ldflags="$ldflags") >"$build/build.log" 2>&1; then
  echo "ocb build failed; last lines of $build/build.log:" >&2
  tail -n 40 "$build/build.log" >&2
  exit 1
fi
echo "$want" >"$stamp"
echo "built $binary in $(( $(date +%s) - start ))s: stripped (-ldflags='$ldflags'), $(size)"
