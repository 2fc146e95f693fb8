#!/usr/bin/env bash
# Builds the OPA CLI pinned in tools/opa/go.mod into .tools/opa/<version>/opa and prints that
# path as the last line of stdout. A no-op when the binary is already there and reports the
# pinned version, so a pin change in go.mod triggers exactly one rebuild.
#
# Built with -tags opa_wasm: without it `opa eval -b` cannot evaluate a WASM bundle
# ("engine not found"), and spawngate's bundles carry only policy.wasm.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
modfile="$root/tools/opa/go.mod"

fail() {
  echo "ensure-opa: $*" >&2
  exit 1
}

[[ -f "$modfile" ]] || fail "missing $modfile"
# Accepts both `require github.com/open-policy-agent/opa vX` and the form inside a require block.
# Every match is captured, then the first kept: piping sed into head under pipefail can kill sed with
# SIGPIPE (exit 141) and end this script silently.
matches="$(sed -nE 's#^[[:space:]]*(require[[:space:]]+)?github\.com/open-policy-agent/opa[[:space:]]+(v[0-9][^[:space:]]*).*#\2#p' "$modfile")"
version="${matches%%$'\n'*}"
[[ -n "$version" ]] || fail "no github.com/open-policy-agent/opa requirement in $modfile"

dir="$root/.tools/opa/$version"
bin="$dir/opa"

usable() {
  local out
  out="$("$1" version 2>/dev/null)" || return 1
  grep -qx "Version: ${version#v}" <<<"$out" && grep -qx "WebAssembly: available" <<<"$out"
}

if [[ -x "$bin" ]] && usable "$bin"; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null 2>&1 || fail "go is not on PATH; install Go (see tools/opa/go.mod for the version) or set OPA_BIN to an OPA $version binary"

mkdir -p "$dir"
# Several test workers may call this at once: serialize the build, then look again.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$dir/.lock"
  flock 9
  if [[ -x "$bin" ]] && usable "$bin"; then
    echo "$bin"
    exit 0
  fi
fi

tmp="$(mktemp "$dir/opa.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
echo "ensure-opa: building OPA $version into $bin (a few minutes the first time)" >&2
if ! (cd "$root/tools/opa" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -tags opa_wasm -o "$tmp" github.com/open-policy-agent/opa); then
  fail "go build of github.com/open-policy-agent/opa@$version failed (go's error is above)"
fi
chmod 755 "$tmp"
usable "$tmp" || fail "the freshly built binary does not report Version ${version#v} with WebAssembly available: $("$tmp" version 2>&1 | tr '\n' ' ')"
mv -f "$tmp" "$bin"
trap - EXIT
echo "$bin"
