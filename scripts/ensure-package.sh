#!/usr/bin/env bash
# Make sure a receiver verify needs is installed: use $ENV_VAR or COMMAND on PATH, else install the Debian package
# when we are root; otherwise say what to do.   Usage: scripts/ensure-package.sh COMMAND PACKAGE ENV_VAR
set -euo pipefail
command=$1 package=$2 env_var=$3
if [[ -n "${!env_var:-}" ]] || command -v "$command" >/dev/null; then
  exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  echo "installing $package (apt-get install $package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
  exit 0
fi
echo "$command is missing: install it (apt-get install $package) or set $env_var to its path" >&2
exit 1
