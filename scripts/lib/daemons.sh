# shellcheck shell=bash
# The daemons of the test cluster (k8s-up.sh / k8s-down.sh: etcd and the control plane;
# k8s-node-up.sh / k8s-node-down.sh: containerd and the kubelet), recorded the same way:
# <pids>/<name>.pid and <logs>/<name>.log. Sourced, never run. daemon_start and daemon_wait log
# and fail through the caller's `log` and `die`.

# Prints the pid of the running daemon <name>, or fails. Only a process that still is the binary
# that was started counts (a recycled pid is someone else's).
daemon_pid() { # <pids-dir> <name>
  local file="$1/$2.pid" pid exe
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  # A binary rebuilt while its process runs shows up as "<path> (deleted)".
  exe=${exe% (deleted)}
  [[ $(basename "$exe") == "$2" ]] || return 1
  printf '%s\n' "$pid"
}

# Stops the daemon <name>; bounded: TERM, up to 20 s, then KILL. Reports on stderr as [<tag>].
daemon_stop() { # <pids-dir> <name> <tag>
  local pids=$1 name=$2 tag=$3 pid i
  if pid=$(daemon_pid "$pids" "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
      daemon_pid "$pids" "$name" >/dev/null || break
      sleep 0.1
    done
    if daemon_pid "$pids" "$name" >/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      printf '[%s] %s (pid %s) ignored SIGTERM; killed\n' "$tag" "$name" "$pid" >&2
    else
      printf '[%s] stopped %s (pid %s)\n' "$tag" "$name" "$pid" >&2
    fi
  fi
  rm -f "$pids/$name.pid"
}

# Starts <binary> as the daemon <name>. setsid: it outlives the shell and the test runner that
# started it, until a *-down.sh stops it by the pid recorded here. 9>&-: the caller's lock (fd 9)
# must not be inherited, or the lock lives as long as the daemon.
daemon_start() { # <pids-dir> <logs-dir> <name> <binary> <args…>
  local pids=$1 logs=$2 name=$3 bin=$4
  shift 4
  setsid "$bin" "$@" >"$logs/$name.log" 2>&1 </dev/null 9>&- &
  local pid=$! i
  printf '%s\n' "$pid" >"$pids/$name.pid"
  # Until the fork has exec'd, the pid is still a bash: a daemon_pid right away would call the
  # daemon gone. Bounded (5 s); a daemon that dies at once is daemon_wait's to report, with its log.
  for ((i = 0; i < 500; i++)); do
    daemon_pid "$pids" "$name" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  log "started $name (pid $pid)"
}

# Polls <cmd…> every <interval> seconds until it succeeds; fails (die) when the daemon <name>
# exits first or after <timeout> seconds, with the tail of its log.
daemon_wait() { # <pids-dir> <logs-dir> <timeout> <interval> <name> <what> <cmd…>
  local pids=$1 logs=$2 timeout=$3 interval=$4 name=$5 what=$6
  local deadline=$((SECONDS + timeout))
  shift 6
  until "$@"; do
    if ! daemon_pid "$pids" "$name" >/dev/null; then
      tail -n 30 "$logs/$name.log" >&2 || true
      die "$name exited while waiting for $what; log: $logs/$name.log"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$logs/$name.log" >&2 || true
      die "$what not reached after ${timeout}s; log: $logs/$name.log"
    fi
    sleep "$interval"
  done
}
