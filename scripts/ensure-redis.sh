#!/usr/bin/env bash
# Makes a private Redis answer on 127.0.0.1:$REDIS_PORT (default 6390), idempotently, and prints its
# URL as the last line of stdout.
#   - something already answers PING there -> reuses it
#   - redis-server missing                -> apt-get installs it (root, no prompts)
#   - otherwise                           -> starts redis-server in the background
# The server keeps nothing on disk (no RDB, no AOF): it holds test reservations only. Its pid file
# and log live in .cache/redis/. It is never the system's redis service (that one listens on 6379).
set -euo pipefail

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state_dir="${SPAWNGATE_REDIS_STATE_DIR:-$root_dir/.cache/redis}"
port="${REDIS_PORT:-6390}"
wait_seconds="${SPAWNGATE_REDIS_WAIT_SECONDS:-30}"
pid_file="$state_dir/redis-$port.pid"
log_file="$state_dir/redis-$port.log"
url="redis://127.0.0.1:$port"

say() { printf 'ensure-redis: %s\n' "$*" >&2; }

case "$port" in ''|*[!0-9]*) say "REDIS_PORT must be a number, got '$port'"; exit 1;; esac

answers() {
  command -v redis-cli >/dev/null 2>&1 && [ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null)" = PONG ]
}

mkdir -p "$state_dir"
# Test workers may call this at once: one starts the server, the others wait for it.
exec 9>"$state_dir/ensure-$port.lock"
if command -v flock >/dev/null 2>&1 && ! flock -w "$((wait_seconds + 300))" 9; then
  say "could not take $state_dir/ensure-$port.lock"
  exit 1
fi

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    say "redis-server is not installed and this is not root: install redis-server (or redis-tools + a server) first"
    exit 1
  fi
  say "installing redis-server with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine has no package lists: without them apt-get cannot find the package at all.
  if ! apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  fi
  say "installed $(dpkg-query -W -f='${Package} ${Version}' redis-server 2>/dev/null || redis-server --version)"
fi

if answers; then
  say "redis already answers on 127.0.0.1:$port; nothing to do"
  echo "$url"
  exit 0
fi

if [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  say "redis-server (pid $(cat "$pid_file")) is running but not answering yet; waiting for it"
else
  say "starting redis-server on 127.0.0.1:$port (no persistence); log: $log_file"
  # --daemonize: the server must outlive this script and the test run that called it; the lock fd is
  # closed for it (9>&-) so the daemon does not hold the lock for its whole life.
  redis-server \
    --bind 127.0.0.1 \
    --port "$port" \
    --save '' \
    --appendonly no \
    --daemonize yes \
    --pidfile "$pid_file" \
    --logfile "$log_file" \
    --dir "$state_dir" \
    9>&- </dev/null
fi

deadline=$((SECONDS + wait_seconds))
until answers; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "redis did not answer PING on 127.0.0.1:$port within ${wait_seconds}s; last log lines:"
    tail -n 20 "$log_file" >&2 || true
    exit 1
  fi
  sleep 0.2
done
say "redis ready ($(redis-cli -h 127.0.0.1 -p "$port" INFO server | tr -d '\r' | sed -n 's/^redis_version:/version /p'))"
echo "$url"
