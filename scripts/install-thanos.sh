#!/usr/bin/env bash
# Build Thanos from its module source on the Go module proxy, once, into a cache outside the repository.
# Usage: scripts/install-thanos.sh VERSION    (called by `make thanos`; VERSION is THANOS_VERSION in
# tokenlat_cli/verify/thanos.py, which looks for the binary at the same place)
#
# `go install github.com/thanos-io/thanos/cmd/thanos@VERSION` is refused: Thanos's go.mod has replace
# directives. So the module is downloaded into the Go module cache and built there with `go build`, which
# honours them (scripts/build-go-binary.sh), with the build tags of Thanos's own release build (.promu.yml):
# without `slicelabels`, Prometheus 3's labels are strings, Thanos's zero-copy label casts read garbage and
# Receive panics on the first gRPC Info call from Query. About 2.5 minutes on 2 cores with a cold Go build
# cache; the log is printed only when it fails.
set -euo pipefail
version=${1:?usage: install-thanos.sh VERSION}
exec "$(dirname "$0")/build-go-binary.sh" thanos github.com/thanos-io/thanos "$version" "${version#v}" \
  ./cmd/thanos netgo,slicelabels
