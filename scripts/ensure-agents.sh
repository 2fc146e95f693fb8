#!/usr/bin/env bash
# Installs the real ACP agents the agent suite drives (against test/fixtures/mock-model.ts) into
# .tools/agents/<id>/ (ignored, cached), pinned, idempotently. Usage:
#
#   scripts/ensure-agents.sh [id ...]      ids: qwen-code codex-acp opencode gemini-cli claude-code-acp
#                                          (default: all of them)
#
# Progress goes to stderr; stdout gets one line per agent, `<id>\t<ACP argv as JSON>`, the argv a
# worker's SPAWNGATE_AGENT_COMMAND needs. An agent whose stamp names its pinned package@version is
# not reinstalled, so a pin change here triggers exactly one install.
#
# Pinned: these CLIs change their flags, config files, side calls and wire dialects from release to
# release, and the environment each needs to reach a mock model offline is worked out per version.
set -euo pipefail

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="${SPAWNGATE_AGENTS_DIR:-$root_dir/.tools/agents}"

# id | package@version | bin under node_modules/.bin | ACP-mode arguments
# qwen-code's default approval mode "auto" asks the model itself (a classifier call) whether a tool
# may run; "default" asks the ACP client instead, which is what a worker answers deterministically.
agents=(
  'qwen-code|@qwen-code/qwen-code@0.24.4|qwen|--acp --approval-mode default'
  'codex-acp|@zed-industries/codex-acp@0.16.0|codex-acp|'
  'opencode|opencode-ai@1.18.33|opencode|acp'
  'gemini-cli|@google/gemini-cli@0.61.0|gemini|--acp'
  'claude-code-acp|@zed-industries/claude-code-acp@0.16.2|claude-code-acp|'
)

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

# A JSON array of strings, for argv that contain nothing that needs escaping beyond quotes.
json_argv() {
  local out='' arg
  for arg in "$@"; do out+="${out:+,}\"${arg//\"/\\\"}\""; done
  printf '[%s]' "$out"
}

ensure() {
  local id="$1" spec pkgver bin args dir stamp entry scratch
  spec="$(spec_of "$id")" || fail "unknown agent id '$id' (known: ${agents[*]%%|*})"
  IFS='|' read -r _ pkgver bin args <<<"$spec"
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

  # codex-acp's bin is a node launcher that runs the platform package's native binary as a child:
  # the binary itself spares a node process and a signal hop.
  if [ "$id" = codex-acp ]; then
    local native
    for native in "$dir"/node_modules/@zed-industries/codex-acp-*/bin/codex-acp; do
      if [ -x "$native" ]; then entry="$native"; fi
    done
  fi

  # shellcheck disable=SC2086 # args is a space-separated word list by construction
  printf '%s\t%s\n' "$id" "$(json_argv "$entry" $args)"
}

if [ "$#" -eq 0 ]; then
  set -- "${agents[@]%%|*}"
fi
for id in "$@"; do
  ensure "$id"
done
