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

# Prints the pid of a running <component> (etcd, kube-apiserver, …) or fails.
component_pid() { # <component>
  local file="$pids/$1.pid" pid exe
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  # A binary rebuilt while its process runs shows up as "<path> (deleted)".
  exe=${exe% (deleted)}
  [[ $(basename "$exe") == "$1" ]] || return 1
  printf '%s\n' "$pid"
}

# Stops the components in reverse start order; bounded: TERM, up to 20s, then KILL.
stop_all() {
  local c pid i
  for c in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    if pid=$(component_pid "$c"); then
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 200; i++)); do
        component_pid "$c" >/dev/null || break
        sleep 0.1
      done
      if component_pid "$c" >/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        printf '[k8s-down] %s (pid %s) ignored SIGTERM; killed\n' "$c" "$pid" >&2
      else
        printf '[k8s-down] stopped %s (pid %s)\n' "$c" "$pid" >&2
      fi
    fi
    rm -f "$pids/$c.pid"
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
