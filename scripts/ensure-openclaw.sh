#!/usr/bin/env bash
# Installs the pinned OpenClaw gateway for the end-to-end suite into .tools/openclaw/ (ignored,
# cached), idempotently, and prints the path of its openclaw.mjs as the last line of stdout.
# Pinned: under an old Node a bare `npm install openclaw` resolves to a placeholder 0.0.1, and the
# plugin SDK subpaths the integration uses are not a stable API across versions.
set -euo pipefail

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${OPENCLAW_VERSION:-2026.9.6}"
dir="${SPAWNGATE_OPENCLAW_DIR:-$root_dir/.tools/openclaw}"
entry="$dir/node_modules/openclaw/openclaw.mjs"

say() { printf 'ensure-openclaw: %s\n' "$*" >&2; }

installed_version() {
  [ -f "$dir/node_modules/openclaw/package.json" ] || return 1
  node -e 'process.stdout.write(require(process.argv[1]).version)' "$dir/node_modules/openclaw/package.json"
}

mkdir -p "$dir"
exec 9>"$dir/.lock"
if command -v flock >/dev/null 2>&1 && ! flock -w 900 9; then
  say "could not take $dir/.lock"
  exit 1
fi

if [ "$(installed_version 2>/dev/null || true)" != "$version" ] || [ ! -f "$entry" ]; then
  say "installing openclaw@$version into $dir (npm registry; a few minutes cold)"
  printf '{"name":"spawngate-openclaw-e2e","private":true}\n' > "$dir/package.json"
  # --ignore-scripts: nothing of the gateway's install scripts is needed to run it on loopback.
  (cd "$dir" && npm install --no-audit --no-fund --ignore-scripts --no-save "openclaw@$version" >&2)
  got="$(installed_version)"
  if [ "$got" != "$version" ]; then
    say "npm installed openclaw $got, not $version"
    exit 1
  fi
fi
printf '%s\n' "$entry"
