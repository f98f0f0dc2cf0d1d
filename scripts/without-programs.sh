#!/usr/bin/env bash
# Run a command as on a machine with Python only: no Go, no built Collector, no Prometheus, promtool, Thanos,
# VictoriaMetrics, Chromium, nginx, Alertmanager or systemd-analyze. CI runs the unit tests this way (`pytest -m
# "not e2e"` must pass on such a machine), so a unit test that quietly needs a program fails there instead of
# passing on a developer's laptop.
#
# How: a private mount namespace (unshare, as root) in which each program on PATH is covered by /dev/null and Go's
# and the builds' directories by an empty one; the user cache (where `make thanos`/`make prometheus3` build) moves
# to an empty directory. Nothing outside this command's namespace changes.
set -euo pipefail

if [ "${1:-}" != "--inside" ]; then
  [ "$(id -u)" = 0 ] || { echo "without-programs.sh: needs root (a mount namespace)" >&2; exit 1; }
  exec unshare --mount --propagation private "$0" --inside "$@"
fi
shift

empty=$(mktemp -d)
cache=$(mktemp -d)
trap 'rm -rf "$empty" "$cache"' EXIT
for program in go gofmt builder ocb prometheus promtool victoria-metrics chromium nginx thanos tokenlat-otelcol \
    alertmanager prometheus-alertmanager amtool systemd-analyze; do
  while found=$(command -v "$program" 2>/dev/null) && [ -n "$found" ] && [ ! -c "$found" ]; do
    mount --bind /dev/null "$found"
    hash -r
  done
done
for dir in /usr/local/go "$HOME/go" "$(dirname "$0")/../collector/_build"; do
  [ -d "$dir" ] && mount --bind "$empty" "$dir"
done
export XDG_CACHE_HOME="$cache"
"$@"
