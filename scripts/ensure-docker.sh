#!/usr/bin/env bash
# Makes a Docker Engine answer on the default socket, idempotently.
#   - `docker info` already works      -> does nothing
#   - dockerd missing                  -> apt-get installs docker.io (root, no prompts)
#   - dockerd not running              -> starts it in the background (no systemd needed)
# The daemon runs with the vfs storage driver and without iptables because this project's machines
# (firecracker VMs, CI on the same kind) have neither overlayfs-on-overlayfs nor a usable netfilter
# setup; see docs/docker.md. Its log goes to .cache/docker/dockerd.log.
set -euo pipefail

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state_dir="${SPAWNGATE_DOCKER_STATE_DIR:-$root_dir/.cache/docker}"
log_file="$state_dir/dockerd.log"
wait_seconds="${SPAWNGATE_DOCKER_WAIT_SECONDS:-60}"

say() { printf 'ensure-docker: %s\n' "$*"; }

engine_answers() {
  command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

mkdir -p "$state_dir"
# Test files run in parallel workers and may all call this at once: one starts the daemon, the others wait.
exec 9>"$state_dir/ensure.lock"
if command -v flock >/dev/null 2>&1 && ! flock -w "$((wait_seconds + 30))" 9; then
  say "could not take $state_dir/ensure.lock" >&2
  exit 1
fi

if engine_answers; then
  say "engine already running (server $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')); nothing to do"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    say "dockerd is not installed and this is not root: install docker.io (or Docker Engine) first" >&2
    exit 1
  fi
  say "installing docker.io with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  say "installed $(dpkg-query -W -f='${Package} ${Version}' docker.io)"
fi

if [ "$(id -u)" != 0 ]; then
  say "the engine does not answer and only root can start dockerd here" >&2
  exit 1
fi

# The pid file may outlive its daemon: the pid can be reused by another program, or be a zombie
# (a killed daemon whose parent never reaps it: kill -0 succeeds but nothing will ever answer).
running_as() {
  local pid="$1" name="$2" state
  [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ] || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

pid_file=/var/run/docker.pid
containerd_pid_file=/var/run/docker/containerd/containerd.pid
if [ -s "$pid_file" ] && running_as "$(cat "$pid_file")" dockerd; then
  say "dockerd (pid $(cat "$pid_file")) is running but not answering yet; waiting for it"
else
  say "starting dockerd (vfs storage, no iptables); log: $log_file"
  # dockerd refuses to start over a pid file whose pid still exists, even as a zombie or another
  # program, and trusts its managed containerd's pid file the same way.
  rm -f "$pid_file"
  if [ -s "$containerd_pid_file" ] && ! running_as "$(cat "$containerd_pid_file")" containerd; then
    rm -f "$containerd_pid_file"
  fi
  # setsid: the daemon must outlive this script and the test process that called it. Every
  # descriptor past stderr is closed first: a lock open in this script (fd 9) or in whatever ran it
  # (`flock FILE cmd` leaves its lock open in cmd) would otherwise be held by the daemon for its
  # whole life, and the next taker of that lock would wait for it in vain.
  (
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid dockerd \
      --storage-driver=vfs \
      --iptables=false \
      --ip6tables=false \
      --pidfile="$pid_file"
  ) >>"$log_file" 2>&1 </dev/null &
fi

deadline=$((SECONDS + wait_seconds))
until engine_answers; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "engine did not answer within ${wait_seconds}s; last log lines:" >&2
    tail -n 20 "$log_file" >&2 || true
    exit 1
  fi
  sleep 1
done
say "engine ready (server $(docker version --format '{{.Server.Version}}'))"
