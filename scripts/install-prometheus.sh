#!/usr/bin/env bash
# Build Prometheus 3 from its module source on the Go module proxy, once, into a cache outside the repository.
# Usage: scripts/install-prometheus.sh VERSION    (called by `make prometheus3`; VERSION is PROMETHEUS3_VERSION in
# tokenlat_cli/verify/prometheus.py, which looks for the binary at the same place)
#
# VERSION is the Go module version: Prometheus 3.X.Y is published as github.com/prometheus/prometheus v0.3XX.Y
# (v0.316.0 is 3.16.0); the binary reports the release version.
#
# Build tags: the release build (.promu.yml) uses netgo,builtinassets. builtinassets compiles the React UI into
# the binary from web/ui/static, which the release pipeline builds with npm and which is not in the module zip,
# so the build would fail. Without the tag the UI is read from a static/ directory at run time and its pages answer
# 500 ("Error opening React index.html"), while everything verify uses is plain Go handlers that work the same: the
# remote-write receiver (/api/v1/write), /api/v1/query, /api/v1/labels and /-/ready. About 7 minutes on 2 cores with
# a cold Go build cache (a 100 MB binary); the log is printed only when it fails.
set -euo pipefail
version=${1:?usage: install-prometheus.sh VERSION}
if [[ ! $version =~ ^v0\.([3-9])([0-9][0-9])\.([0-9]+)$ ]]; then
  echo "install-prometheus.sh: $version is not a Prometheus 3+ module version (v0.3XX.Y)" >&2
  exit 2
fi
release="${BASH_REMATCH[1]}.$((10#${BASH_REMATCH[2]})).${BASH_REMATCH[3]}"
exec "$(dirname "$0")/build-go-binary.sh" prometheus github.com/prometheus/prometheus "$version" "$release" \
  ./cmd/prometheus netgo
