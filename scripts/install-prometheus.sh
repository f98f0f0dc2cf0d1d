#!/usr/bin/env bash
# Build Prometheus 3 (prometheus and promtool) from its module source on the Go module proxy, once, into a cache
# outside the repository.
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
build="$(dirname "$0")/build-go-binary.sh"
"$build" prometheus github.com/prometheus/prometheus "$version" "$release" ./cmd/prometheus netgo
# promtool from the same module and release: `promtool test rules` runs the rule tests (tests/e2e/test_rules.py),
# and only a promtool of 2.5x or later reads native-histogram input series ({{schema:... count:...}}); Debian's is
# 2.42. It shares most packages, and so the Go build cache, with prometheus: a few more minutes the first time.
exec "$build" promtool github.com/prometheus/prometheus "$version" "$release" ./cmd/promtool netgo
