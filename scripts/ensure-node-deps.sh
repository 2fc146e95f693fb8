#!/usr/bin/env bash
# Makes the test node's runtime parts available, idempotently (scripts/k8s-node-up.sh runs them):
#   containerd + runc   Debian's packages, apt-get installed when missing (never started here:
#                       k8s-node-up.sh runs a private containerd, not the system's service)
#   CNI plugins         Debian's containernetworking-plugins, only downloaded and unpacked into
#                       .tools/cni/<version>/ (bridge, host-local, loopback, portmap); not installed
#
# stdout: shell assignments for the caller to eval (logs go to stderr):
#   CONTAINERD=…  RUNC=…  CTR=…  CNI_BIN_DIR=…
#
# Env: SPAWNGATE_TOOLS_DIR (default <repo>/.tools).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir=${SPAWNGATE_TOOLS_DIR:-$repo/.tools}

log() { printf '[ensure-node-deps] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(uname -s) == Linux ]] || die "a Kubernetes node needs Linux"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script knows Debian's packages only"

mkdir -p "$tools_dir/cni"
# Test workers and CI's pre-step may call this at once: one installs, the others wait.
exec 9>"$tools_dir/cni/.ensure.lock"
flock -w 900 9 || die "could not take $tools_dir/cni/.ensure.lock"

export DEBIAN_FRONTEND=noninteractive
cleanup=()
# shellcheck disable=SC2317 # called by the EXIT trap
on_exit() { if ((${#cleanup[@]})); then rm -rf "${cleanup[@]}"; fi; }
trap on_exit EXIT
lists_updated=0
# A fresh machine has no package lists; an old one may list versions the mirror dropped.
apt_update_once() {
  ((lists_updated)) && return 0
  apt-get update -qq
  lists_updated=1
}

if ! command -v containerd >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 || ! command -v ctr >/dev/null 2>&1; then
  [[ $(id -u) == 0 ]] || die "containerd/runc are not installed and this is not root: apt-get install containerd runc"
  log "installing containerd and runc with apt-get"
  # policy-rc.d 101: the package must not start the system's containerd service; the node runs
  # its own private one.
  policy_rc=/usr/sbin/policy-rc.d
  if [[ ! -e $policy_rc ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy_rc"
    chmod +x "$policy_rc"
    cleanup+=("$policy_rc")
  fi
  if ! apt-get install -y -qq --no-install-recommends containerd runc >/dev/null 2>&1; then
    apt_update_once
    apt-get install -y -qq --no-install-recommends containerd runc >/dev/null
  fi
  log "installed $(dpkg-query -W -f='${Package} ${Version} ' containerd runc 2>/dev/null)"
fi

# The candidate version names the cache dir, so a new Debian point release lands beside the old one.
cni_version() {
  apt-cache policy containernetworking-plugins 2>/dev/null | awk '/Candidate:/ { print $2 }'
}
version=$(cni_version)
if [[ -z $version || $version == "(none)" ]]; then
  apt_update_once
  version=$(cni_version)
fi
[[ -n $version && $version != "(none)" ]] || die "apt knows no containernetworking-plugins package"
cni_dir=$tools_dir/cni/${version//[^A-Za-z0-9.+~-]/_}
cni_bin=$cni_dir/usr/lib/cni

if [[ ! -x $cni_bin/bridge || ! -x $cni_bin/host-local || ! -x $cni_bin/loopback ]]; then
  log "downloading containernetworking-plugins $version (unpacked into $cni_dir, not installed)"
  work=$(mktemp -d "$tools_dir/cni/.download.XXXXXX")
  cleanup+=("$work")
  if ! (cd "$work" && apt-get download -qq "containernetworking-plugins=$version" >/dev/null 2>&1); then
    apt_update_once
    (cd "$work" && apt-get download -qq "containernetworking-plugins=$version" >/dev/null)
  fi
  rm -rf "$cni_dir"
  dpkg-deb -x "$work"/containernetworking-plugins_*.deb "$work/root"
  mv "$work/root" "$cni_dir"
  [[ -x $cni_bin/bridge ]] || die "the package has no $cni_bin/bridge"
fi

printf 'CONTAINERD=%q\n' "$(command -v containerd)"
printf 'RUNC=%q\n' "$(command -v runc)"
printf 'CTR=%q\n' "$(command -v ctr)"
printf 'CNI_BIN_DIR=%q\n' "$cni_bin"
