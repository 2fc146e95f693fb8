#!/usr/bin/env bash
# Installs the real ACP agents the agent suite drives (against test/fixtures/mock-model.ts) into
# .tools/agents/<id>/ (ignored, cached), pinned, idempotently. Usage:
#
#   scripts/ensure-agents.sh [id ...]      ids as in src/agents/catalog.ts (default: all of them)
#
# Progress goes to stderr; stdout gets one line per agent, `<id>\t<ACP argv as JSON>`, the argv a
# worker's SPAWNGATE_AGENT_COMMAND needs. An agent whose stamp names its pinned package@version is
# not reinstalled, so a pin change in the catalog triggers exactly one install. The folder layout is
# src/cli/agent-install.ts's, so either one's install serves the other.
set -euo pipefail

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="${SPAWNGATE_AGENTS_DIR:-$root_dir/.tools/agents}"

say() { printf 'ensure-agents: %s\n' "$*" >&2; }
fail() {
  say "$*"
  exit 1
}

# The project's own node (Node 24, a devDependency) when it is installed: the node on PATH may be
# too old for these CLIs (qwen-code wants >= 22). That package ships no npm, so npm comes from PATH
# but runs on this node, and so do the packages' install scripts.
if [ -x "$root_dir/node_modules/node/bin/node" ]; then
  export PATH="$root_dir/node_modules/node/bin:$PATH"
fi
command -v node >/dev/null 2>&1 || fail "node is not on PATH"
command -v npm >/dev/null 2>&1 || fail "npm is not on PATH"

# The pins and entry points live in src/agents/catalog.ts, which `spawngate image build --agent`
# installs from too; node (>= 22.6) reads it as it is. One line per agent: id|package@version|bin.
catalog="$root_dir/src/agents/catalog.ts"
catalog_lines="$(node --input-type=module -e 'const m = await import(process.argv[1]); for (const a of m.AGENT_PACKAGES) console.log(`${a.id}|${a.package}@${a.version}|${a.bin}`);' "$catalog")" ||
  fail "could not read the agent pins from $catalog (node $(node --version) must strip TypeScript types: 22.6 or newer)"
mapfile -t agents <<<"$catalog_lines"

spec_of() {
  local id="$1" line
  for line in "${agents[@]}"; do
    if [ "${line%%|*}" = "$id" ]; then
      printf '%s\n' "$line"
      return 0
    fi
  done
  return 1
}

ensure() {
  local id="$1" spec pkgver bin dir stamp entry scratch
  spec="$(spec_of "$id")" || fail "unknown agent id '$id' (known: ${agents[*]%%|*})"
  IFS='|' read -r _ pkgver bin <<<"$spec"
  dir="$base/$id"
  stamp="$dir/.spawngate-installed"
  entry="$dir/node_modules/.bin/$bin"

  mkdir -p "$dir"
  # Several test workers may ask at once: one installs, the others wait and then see the stamp.
  exec 9>"$dir/.lock"
  if command -v flock >/dev/null 2>&1 && ! flock -w 900 9; then
    fail "could not take $dir/.lock"
  fi

  if [ "$(cat "$stamp" 2>/dev/null || true)" = "$pkgver" ] && [ -x "$entry" ]; then
    say "$id: $pkgver already installed in $dir"
  else
    say "$id: installing $pkgver into $dir with npm $(npm --version) on node $(node --version) (a minute or more cold)"
    rm -f "$stamp"
    printf '{"name":"spawngate-agent-%s","private":true}\n' "$id" >"$dir/package.json"
    # Install scripts stay on: codex-acp and opencode pick their native binary per platform. The
    # opencode one runs `opencode --version`, which makes its XDG folders and a temp folder: they go
    # to a scratch folder instead of the user's HOME and /tmp.
    scratch="$dir/.install-scratch"
    mkdir -p "$scratch/tmp"
    XDG_CONFIG_HOME="$scratch/config" XDG_DATA_HOME="$scratch/data" XDG_CACHE_HOME="$scratch/cache" \
      XDG_STATE_HOME="$scratch/state" TMPDIR="$scratch/tmp" \
      npm install --prefix "$dir" --no-audit --no-fund --save-exact --loglevel=error "$pkgver" >&2 ||
      fail "$id: npm install $pkgver failed (npm's error is above)"
    rm -rf "$scratch"
    [ -x "$entry" ] || fail "$id: $pkgver installed no $entry"
    printf '%s\n' "$pkgver" >"$stamp"
    say "$id: installed $pkgver ($(du -sh "$dir" | cut -f1))"
  fi
  exec 9>&-

  # The argv the catalog gives (codex-acp's native binary rather than its node launcher).
  printf '%s\t%s\n' "$id" "$(node --input-type=module -e 'const m = await import(process.argv[1]); console.log(JSON.stringify(m.agentArgv(m.agentPackage(process.argv[2]), process.argv[3])));' "$catalog" "$id" "$dir")"
}

if [ "$#" -eq 0 ]; then
  set -- "${agents[@]%%|*}"
fi
for id in "$@"; do
  ensure "$id"
done
