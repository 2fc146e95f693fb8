#!/usr/bin/env bash
# Stops the test control plane that scripts/k8s-up.sh started, by the pids it
# recorded in the state dir. Only those processes are signalled, and only if
# they still are the binary that was started (a recycled pid is left alone).
#
# It first stops the test node (scripts/k8s-node-down.sh), if one runs.
#
#   scripts/k8s-down.sh          stop; keep the state dir (certs, logs) for a look
#   scripts/k8s-down.sh --purge  stop and delete the state dir (and the node's)
#
# Env: SPAWNGATE_K8S_STATE_DIR (default <repo>/.cache/k8s), as for k8s-up.sh.
# k8s-up.sh sources this file with --lib for component_pid and stop_all.

_k8s_down_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${state:=${SPAWNGATE_K8S_STATE_DIR:-$_k8s_down_repo/.cache/k8s}}"
: "${pids:=$state/pids}"

# shellcheck source=scripts/lib/daemons.sh
source "$_k8s_down_repo/scripts/lib/daemons.sh"

# Prints the pid of a running <component> (etcd, kube-apiserver, …) or fails.
component_pid() { # <component>
  daemon_pid "$pids" "$1"
}

# Stops the components in reverse start order.
stop_all() {
  local c
  for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    daemon_stop "$pids" "$c" k8s-down
  done
  rm -f "$state/env"
}

if [[ ${1:-} == --lib ]]; then
  return 0
fi

set -euo pipefail
# The node first: its kubelet and pods would otherwise keep running against a plane that is gone.
if [[ ${1:-} == --purge ]]; then
  bash "$_k8s_down_repo/scripts/k8s-node-down.sh" --purge
else
  bash "$_k8s_down_repo/scripts/k8s-node-down.sh"
fi
if [[ -d $state ]]; then
  exec 9>"$state/lock"
  # A k8s-up in progress finishes first, so its processes are recorded before we stop them.
  flock -w "${SPAWNGATE_K8S_LOCK_TIMEOUT:-3600}" 9 || {
    echo "[k8s-down] error: $state/lock is held by a k8s-up for too long" >&2
    exit 1
  }
  stop_all
fi
if [[ ${1:-} == --purge ]]; then
  rm -rf "$state"
  echo "[k8s-down] removed $state" >&2
fi
