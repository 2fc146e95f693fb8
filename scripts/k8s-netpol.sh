#!/usr/bin/env bash
# Starts or stops the test node's NetworkPolicy enforcer: kube-router with only its firewall
# (--run-firewall; no routing, no service proxy), watching the API as the node's identity would.
#
#   scripts/k8s-netpol.sh start <state-dir> <kubeconfig> <node-name>
#   scripts/k8s-netpol.sh stop  <state-dir>
#
# start is idempotent (a running enforcer of the current binary is kept) and returns once the
# firewall's chains are in place. stop signals only the recorded pid, then has kube-router remove
# every iptables chain and ipset it made (--cleanup-config), so nothing of it stays on the host.
# Called by k8s-node-up.sh / k8s-node-down.sh; state under <state-dir>/netpol.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[k8s-netpol] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cmd=${1:-}
state=${2:-}
[[ $cmd == start || $cmd == stop ]] && [[ -n $state ]] || die "usage: k8s-netpol.sh start <state-dir> <kubeconfig> <node> | stop <state-dir>"
dir=$state/netpol
pidfile=$dir/kube-router.pid

# The pid of the running enforcer, if the recorded one still is kube-router.
running_pid() {
  local pid exe
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe=${exe% (deleted)}
  [[ $(basename "$exe") == kube-router ]] || return 1
  printf '%s\n' "$pid"
}

# The firewall is in force once its FORWARD hook chain exists and is jumped to.
# Captured, then matched: grep -q on a pipe exits at the first match and, under pipefail, the
# writer's SIGPIPE would turn a match into a failure.
chains_ready() {
  local rules
  rules=$(iptables -w 5 -S FORWARD 2>/dev/null) || return 1
  grep -q -- '-j KUBE-ROUTER-FORWARD' <<<"$rules"
}

# kube-router's chains, and every rule in or jumping to one of them.
OWN='KUBE-(ROUTER-[A-Z]+|NWPLCY-[A-Z0-9]+|POD-FW-[A-Z0-9]+)'

remove_firewall() {
  local saved kept
  saved=$(iptables-save -t filter 2>/dev/null)
  grep -Eq -- "$OWN" <<<"$saved" || return 0
  # One atomic iptables-restore of the filter table without kube-router's lines keeps every
  # other rule of the host as it was.
  kept=$(grep -Ev -- "^:$OWN |^-A $OWN |-j $OWN( |\$)" <<<"$saved")
  iptables-restore -w 5 <<<"$kept" || die "iptables-restore of the filter table without kube-router's chains failed"
  local set
  for set in $(ipset list -n 2>/dev/null); do
    case $set in KUBE-SRC-* | KUBE-DST-* | KUBE-NWPLCY-* | kube-router-*) ipset destroy "$set" 2>/dev/null || log "ipset $set is still in use";; esac
  done
  saved=$(iptables-save -t filter 2>/dev/null)
  if grep -Eq -- "$OWN" <<<"$saved"; then
    die "kube-router's iptables chains are still on the host after removal"
  fi
  log "removed kube-router's iptables chains and ipsets"
}

stop() {
  local pid i
  if pid=$(running_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
      running_pid >/dev/null || break
      sleep 0.1
    done
    if running_pid >/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      log "kube-router (pid $pid) ignored SIGTERM; killed"
    else
      log "stopped kube-router (pid $pid)"
    fi
  fi
  rm -f "$pidfile"
  # Also after a kill -9 of everything: the chains and sets outlive the process. kube-router's own
  # --cleanup-config cannot be used: in v2.1.0 it cleans from an empty controller (a no-op) and
  # then panics in the service proxy's cleanup.
  remove_firewall
}

if [[ $cmd == stop ]]; then
  stop
  exit 0
fi

kubeconfig=${3:-}
node=${4:-}
[[ -n $kubeconfig && -n $node ]] || die "usage: k8s-netpol.sh start <state-dir> <kubeconfig> <node>"
[[ $(id -u) == 0 ]] || die "the NetworkPolicy enforcer changes iptables: it needs root"
bin=$(bash "$repo/scripts/ensure-netpol.sh")
mkdir -p "$dir"

if pid=$(running_pid) && [[ $(readlink "/proc/$pid/exe") == "$bin" ]] && chains_ready; then
  log "reusing kube-router (pid $pid)"
  exit 0
fi
stop

# The bridge's traffic must pass iptables, or pod-to-pod packets on one node bypass the firewall.
[[ $(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null) == 1 ]] ||
  die "net.bridge.bridge-nf-call-iptables is not 1: pod traffic on the bridge would bypass NetworkPolicy"

# --health-port=0 and --metrics-port=0: nothing listens on the node for it.
# --iptables-sync-period=15s: rules follow API events; the periodic full sync (5 min by default)
# bounds how long a missed event could leave them stale on a node whose pods come and go in seconds.
setsid "$bin" \
  --kubeconfig="$kubeconfig" \
  --hostname-override="$node" \
  --run-firewall=true \
  --run-router=false \
  --run-service-proxy=false \
  --enable-ipv6=false \
  --enable-pod-egress=false \
  --service-cluster-ip-range=10.96.0.0/24 \
  --health-port=0 \
  --iptables-sync-period=15s \
  --metrics-port=0 \
  --v=1 \
  >"$dir/kube-router.log" 2>&1 </dev/null 8>&- 9>&- &
child=$!
printf '%s\n' "$child" >"$pidfile"
# Until the fork has exec'd, the pid is still a bash (its exe is not kube-router), and running_pid
# below would call it gone: on a cold start (a fresh machine, the binary not in the page cache yet)
# that took longer than the first poll. Bounded (5 s), as daemon_start in lib/daemons.sh.
for ((i = 0; i < 500; i++)); do
  running_pid >/dev/null && break
  kill -0 "$child" 2>/dev/null || break
  sleep 0.01
done
log "started kube-router (pid $child)"

for ((i = 0; i < 600; i++)); do
  chains_ready && { log "NetworkPolicy enforced on $node"; exit 0; }
  running_pid >/dev/null || { tail -n 30 "$dir/kube-router.log" >&2; die "kube-router exited during startup; log: $dir/kube-router.log"; }
  sleep 0.1
done
tail -n 30 "$dir/kube-router.log" >&2
die "kube-router did not install its firewall chains within 60s; log: $dir/kube-router.log"
