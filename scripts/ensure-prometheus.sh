#!/usr/bin/env bash
# Makes Prometheus and promtool available (Debian's package), idempotently, and prints the
# prometheus binary's path as the last line of stdout (promtool sits beside it).
# The tests start their own Prometheus on a free loopback port with a throw-away TSDB; this script
# never starts or configures the system's prometheus service.
set -euo pipefail

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state_dir="$root_dir/.cache/prometheus"
say() { printf 'ensure-prometheus: %s\n' "$*" >&2; }

mkdir -p "$state_dir"
# Test workers may call this at once: one installs, the others wait.
exec 9>"$state_dir/ensure.lock"
if command -v flock >/dev/null 2>&1 && ! flock -w 900 9; then
  say "could not take $state_dir/ensure.lock"
  exit 1
fi

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    say "prometheus is not installed and this is not root: install Debian's prometheus package (it brings promtool) first"
    exit 1
  fi
  say "installing prometheus with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d 101: the package must not start its own service (tests bring their own servers).
  policy_rc=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy_rc" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy_rc"
    chmod +x "$policy_rc"
    own_policy=1
  fi
  trap '[ "$own_policy" = 1 ] && rm -f "$policy_rc"' EXIT
  # A fresh machine has no package lists: without them apt-get cannot find the package at all.
  if ! apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
  say "installed $(dpkg-query -W -f='${Package} ${Version}' prometheus 2>/dev/null)"
fi

version="$(prometheus --version 2>&1)"
say "${version%%$'\n'*}"
command -v prometheus
