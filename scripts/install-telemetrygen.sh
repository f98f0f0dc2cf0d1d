#!/usr/bin/env bash
# Install telemetrygen, the load generator of opentelemetry-collector-contrib, once, into a cache outside the
# repository: ${XDG_CACHE_HOME:-$HOME/.cache}/tokenlat/telemetrygen-VERSION/telemetrygen, where bench/telemetrygen.py
# looks for it (tokenlat_cli/binaries.py cached_build_path). Called by `make telemetrygen`; the gateway bench
# (`make bench-gateway`) and its end-to-end test drive the tokenlat Collector with it.
#
# VERSION is the Collector release pinned in collector/VERSION: contrib tags telemetrygen with the same v0.N.P as
# the components, so the generator is the one released with the Collector under test. Unlike Thanos and
# Prometheus (scripts/build-go-binary.sh), its go.mod has no replace directives and `go install MODULE@VERSION`
# works: about 20 s with a warm module cache. telemetrygen has no --version flag, so a cached binary is kept when
# `go version -m` shows it was built from that module at that version; anything else is reinstalled. The log is
# printed only when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(<collector/VERSION)
module=github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen
dest_dir="${XDG_CACHE_HOME:-$HOME/.cache}/tokenlat/telemetrygen-$version"
binary="$dest_dir/telemetrygen"

if [[ -x "$binary" ]] && go version -m "$binary" 2>/dev/null | grep -Eq "^[[:space:]]+path[[:space:]]+$module\$" &&
  go version -m "$binary" | grep -Eq "^[[:space:]]+mod[[:space:]]+$module[[:space:]]+$version[[:space:]]"; then
  echo "telemetrygen $version is installed ($binary)"
  exit 0
fi

mkdir -p "$dest_dir"
log="$dest_dir/install.log"
echo "installing telemetrygen $version (go install $module@$version; log: $log)"
start=$(date +%s)
# MODULE@VERSION builds outside any module; GOWORK=off keeps a go.work around the caller out of it.
if ! GOBIN="$dest_dir" GOWORK=off go install -trimpath -ldflags "-s -w" "$module@$version" \
  >"$log" 2>&1; then
  echo "telemetrygen install failed; last lines of $log:" >&2
  tail -n 40 "$log" >&2
  exit 1
fi
echo "installed $binary in $(($(date +%s) - start))s"
