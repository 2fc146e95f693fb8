#!/usr/bin/env bash
# Stops the test node that scripts/k8s-node-up.sh started and removes what it put on the host:
#   - the kubelet, then every container and sandbox of the private containerd (namespace k8s.io),
#     then containerd itself (only the pids recorded in the state dir, and only if they still are
#     the binary that was started: a recycled pid is left alone)
#   - mounts under the state dir, the bridge sgnode0 and any veth left on it
#   - files the kubelet and containerd write outside any configured dir: /var/log/containers and
#     /var/log/pods entries, /var/lib/kubelet/device-plugins/kubelet.sock, /var/lib/cni/results
#     entries of our network, empty /run/containerd/{s,fifo,runc} dirs they made
#   - the kubepods and k8s.io cgroups (cgroup v1: in every controller; and the unified hierarchy)
# The Node object is left in the API: the control plane is k8s-down.sh's business.
#
#   scripts/k8s-node-down.sh          stop and clean; keep the state dir (certs, logs, images)
#   scripts/k8s-node-down.sh --purge  also delete the state dir (next node-up re-imports images)
#
# Env: SPAWNGATE_K8S_NODE_STATE_DIR (default <repo>/.cache/k8s-node), as for k8s-node-up.sh.
# k8s-node-up.sh sources this file with --lib for node_component_pid and stop_node.

_k8s_node_down_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${node_state:=${SPAWNGATE_K8S_NODE_STATE_DIR:-$_k8s_node_down_repo/.cache/k8s-node}}"
node_bridge=sgnode0
node_network=spawngate-node

# Host dirs that may appear while the node runs (see remove_host_files).
node_host_dirs=(/run/containerd /run/containerd/s /run/containerd/fifo /run/containerd/runc
  /var/log/containers /var/log/pods /var/lib/kubelet /var/lib/kubelet/device-plugins
  /var/lib/cni /var/lib/cni/results /var/run/netns)

node_log() { printf '[k8s-node-down] %s\n' "$*" >&2; }

# shellcheck source=scripts/lib/daemons.sh
source "$_k8s_node_down_repo/scripts/lib/daemons.sh"

# Prints the pid of a running node <component> (containerd, kubelet) or fails.
node_component_pid() { # <component>
  daemon_pid "$node_state/pids" "$1"
}

stop_node_component() { # <component>
  daemon_stop "$node_state/pids" "$1" k8s-node-down
}

node_ctr() {
  ctr --address "$node_state/containerd/containerd.sock" --namespace k8s.io "$@"
}

# Kills and deletes every task and container of our containerd, so no shim or pod process is
# left once containerd stops (a shim outlives containerd by design).
remove_node_containers() {
  local ids id i
  node_component_pid containerd >/dev/null || return 0
  ids=$(node_ctr tasks ls -q 2>/dev/null) || ids=""
  for id in $ids; do
    node_ctr tasks kill --signal SIGKILL "$id" >/dev/null 2>&1 || true
  done
  # The CRI plugin deletes a task itself once it sees it exit; what is still listed after a
  # bounded wait is deleted here.
  for ((i = 0; i < 50; i++)); do
    ids=$(node_ctr tasks ls -q 2>/dev/null) || ids=""
    [[ -n $ids ]] || break
    sleep 0.1
  done
  for id in $ids; do
    node_ctr tasks delete --force "$id" >/dev/null 2>&1 || true
  done
  ids=$(node_ctr containers ls -q 2>/dev/null) || ids=""
  for id in $ids; do
    node_ctr containers delete "$id" >/dev/null 2>&1 || true
  done
}

# Shims of our containerd whose containerd is gone (a crash): they carry our state dir's
# address on their command line.
kill_orphan_shims() {
  local pid args
  for pid in $(pgrep -x containerd-shim 2>/dev/null; pgrep -f '^/usr/bin/containerd-shim-runc-v2 ' 2>/dev/null); do
    args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    if [[ $args == *"-address $node_state/containerd/containerd.sock"* ]]; then
      kill -KILL "$pid" 2>/dev/null || true
      node_log "killed orphan shim $pid"
    fi
  done
}

unmount_under() { # <dir>
  local dir=$1 mnt i
  [[ -d $dir ]] || return 0
  dir=$(cd "$dir" && pwd -P)
  # Deepest first; bounded: nested mounts need a few passes.
  for ((i = 0; i < 5; i++)); do
    local found=0
    while read -r mnt; do
      [[ $mnt == "$dir" || $mnt == "$dir"/* ]] || continue
      found=1
      umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    done < <(awk '{print $2}' /proc/mounts | sort -r)
    ((found)) || return 0
  done
}

# Pod processes whose shim is gone (containerd crashed, an orphan shim was killed) are only
# found through their cgroups; kubepods is our kubelet's alone on this host.
kill_pod_processes() {
  local procs pid i
  for ((i = 0; i < 50; i++)); do
    procs=$(cat /sys/fs/cgroup/pids/kubepods/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/cgroup.procs \
      /sys/fs/cgroup/pids/kubepods/*/*/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/*/*/cgroup.procs 2>/dev/null) || true
    [[ -n $procs ]] || return 0
    for pid in $procs; do
      kill -KILL "$pid" 2>/dev/null || true
    done
    sleep 0.1
  done
  node_log "warning: pod processes left in the kubepods cgroup: $procs"
}

remove_cgroups() {
  local root dir
  for root in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    for dir in "$root"kubepods "$root"k8s.io; do
      [[ -d $dir ]] || continue
      # Leaves first: a cgroup dir can only be removed once it has no children.
      find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d $dir ]] && node_log "warning: could not remove $dir (processes left in it?)"
    done
  done
}

remove_host_files() {
  local f
  # /var/log/containers holds symlinks into the pods' log dirs; ours point into our state dir
  # or to /var/log/pods entries of pods of this node.
  if [[ -d /var/log/containers ]]; then
    for f in /var/log/containers/*.log; do
      [[ -L $f ]] || continue
      case $(readlink "$f") in "$node_state"/* | /var/log/pods/*) rm -f "$f" ;; esac
    done
    fi
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  if [[ -d /var/lib/cni/results ]]; then
    rm -f /var/lib/cni/results/"$node_network"-* /var/lib/cni/results/cni-loopback-*
  fi
  # Dirs k8s-node-up.sh saw missing before it started anything: removed when empty (deepest
  # first), so another containerd's or kubelet's entries stay.
  if [[ -f $node_state/host-dirs-made ]]; then
    while read -r f; do
      rmdir "$f" 2>/dev/null || true
    done < <(sort -r "$node_state/host-dirs-made")
    rm -f "$node_state/host-dirs-made"
  fi
}

remove_network() {
  local link
  if ip link show "$node_bridge" >/dev/null 2>&1; then
    for link in $(ip -o link show master "$node_bridge" 2>/dev/null | awk -F': ' '{print $2}'); do
      ip link delete "${link%@*}" 2>/dev/null || true
    done
    ip link delete "$node_bridge" 2>/dev/null || true
    node_log "deleted bridge $node_bridge"
  fi
}

# Stops the node and removes its traces; bounded and safe to repeat.
stop_node() {
  # The enforcer first: its iptables chains name the pods about to go.
  bash "$_k8s_node_down_repo/scripts/k8s-netpol.sh" stop "$node_state"
  stop_node_component kubelet
  remove_node_containers
  stop_node_component containerd
  kill_orphan_shims
  kill_pod_processes
  unmount_under "$node_state"
  remove_network
  remove_host_files
  remove_cgroups
  rm -f "$node_state/env"
}

if [[ ${1:-} == --lib ]]; then
  return 0
fi

set -euo pipefail
if [[ -d $node_state ]]; then
  exec 9>"$node_state/lock"
  # A k8s-node-up in progress finishes first, so its processes are recorded before we stop them.
  flock -w "${SPAWNGATE_K8S_LOCK_TIMEOUT:-3600}" 9 || {
    node_log "error: $node_state/lock is held by a k8s-node-up for too long"
    exit 1
  }
  stop_node
fi
if [[ ${1:-} == --purge ]]; then
  unmount_under "$node_state"
  rm -rf "$node_state"
  node_log "removed $node_state"
fi
