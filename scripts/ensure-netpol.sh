#!/usr/bin/env bash
# The test node's NetworkPolicy enforcer: kube-router in firewall mode only (iptables + ipset, no
# routing, no service proxy), built from the Go module proxy once per pin (tools/kube-router) into
# .tools/kube-router/<version>/kube-router, and the ipset tool it drives (Debian package).
# Prints the binary's path on its last line; logs go to stderr.
# Env: SPAWNGATE_TOOLS_DIR (default <repo>/.tools).
#
# Why kube-router and not kube-network-policies (SIG Network's enforcer, also on the proxy): this
# kernel has no nft "queue" expression (CONFIG_NFT_QUEUE unset), which kube-network-policies needs;
# kube-router's iptables/ipset dataplane uses only what the kernel has (xt_set, conntrack, REJECT).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir=${SPAWNGATE_TOOLS_DIR:-$repo/.tools}
mod=$repo/tools/kube-router

log() { printf '[ensure-netpol] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ! command -v go >/dev/null 2>&1; then
  [[ -x /usr/local/go/bin/go ]] || die "go toolchain not found (expected on PATH or at /usr/local/go/bin/go)"
  PATH=/usr/local/go/bin:$PATH
fi

if ! command -v ipset >/dev/null 2>&1; then
  [[ $(id -u) == 0 ]] || die "ipset is missing and only root can install it (apt-get install ipset)"
  log "installing ipset (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq ipset >&2 || { apt-get update -qq >&2 && apt-get install -y -qq ipset >&2; } || die "apt-get install ipset failed"
fi
command -v iptables-restore >/dev/null 2>&1 || die "iptables-restore is missing (apt-get install iptables)"

version=$(cd "$mod" && go list -m -f '{{.Version}}' github.com/cloudnativelabs/kube-router/v2)
out=$tools_dir/kube-router/$version/kube-router
want=$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -d' ' -f1)

mkdir -p "$tools_dir/kube-router"
# One Go build at a time: it shares the build cache and two cores with the Kubernetes builds.
exec 8>"$tools_dir/.k8s-bins.lock"
flock -w "${SPAWNGATE_K8S_LOCK_TIMEOUT:-3600}" 8 || die "timed out waiting for $tools_dir/.k8s-bins.lock"

if [[ ! -x $out || ! -f $out.pin || $(<"$out.pin") != "$want" ]]; then
  mkdir -p "$(dirname "$out")"
  log "building kube-router $version (a few minutes the first time; niced)"
  start=$SECONDS
  trap 'rm -f "$out.tmp"' EXIT
  (cd "$mod" && CGO_ENABLED=0 nice -n 19 go build -trimpath \
    -ldflags="-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$version" \
    -o "$out.tmp" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router)
  mv -f "$out.tmp" "$out"
  trap - EXIT
  printf '%s\n' "$want" >"$out.pin"
  log "built kube-router in $((SECONDS - start))s"
fi
printf '%s\n' "$out"
