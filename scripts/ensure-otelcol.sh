#!/usr/bin/env bash
# Builds the test OpenTelemetry Collector (tools/otelcol: otlp receiver, batch processor, otlphttp
# and debug exporters, all of the collector release pinned in tools/otelcol/go.mod) from the Go
# module proxy into .tools/otelcol/<version>/otelcol and prints that path as the last line of
# stdout. A no-op when the binary is there and was built from the current go.mod, go.sum and
# main.go, so a pin or component change triggers exactly one rebuild.
#
# Go's own caches (GOCACHE, GOMODCACHE) stay where go puts them, as for ensure-opa.sh and
# ensure-k8s-bins.sh: CI runs in a fresh clone, so a cache inside the repo would be cold on
# every CI run, while the user's cache turns a rebuild into a link step.
#
# Env: SPAWNGATE_TOOLS_DIR (default <repo>/.tools) — where the binary is cached.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$root/tools/otelcol"
tools_dir="${SPAWNGATE_TOOLS_DIR:-$root/.tools}"

fail() {
  echo "ensure-otelcol: $*" >&2
  exit 1
}

[[ -f "$mod/go.mod" && -f "$mod/go.sum" && -f "$mod/main.go" ]] || fail "missing $mod/{go.mod,go.sum,main.go}"
if ! command -v go >/dev/null 2>&1; then
  [[ -x /usr/local/go/bin/go ]] || fail "go is not on PATH; install Go (see tools/otelcol/go.mod for the version) or set OTELCOL_BIN to a collector with the otlp receiver and otlphttp exporter"
  PATH=/usr/local/go/bin:$PATH
fi

# Every match is captured, then the first kept: piping sed into head under pipefail can kill sed
# with SIGPIPE (exit 141) and end this script silently.
matches="$(sed -nE 's#^[[:space:]]*(require[[:space:]]+)?go\.opentelemetry\.io/collector/otelcol[[:space:]]+(v[0-9][^[:space:]]*).*#\2#p' "$mod/go.mod")"
version="${matches%%$'\n'*}"
[[ -n "$version" ]] || fail "no go.opentelemetry.io/collector/otelcol requirement in $mod/go.mod"

dir="$tools_dir/otelcol/$version"
bin="$dir/otelcol"
stamp="$bin.pin"
want="$(cat "$mod/go.mod" "$mod/go.sum" "$mod/main.go" | sha256sum | cut -d' ' -f1)"

usable() { # <binary>
  local out
  out="$("$1" --version 2>/dev/null)" || return 1
  [[ "$out" == *" version ${version#v}"* ]]
}
current() {
  [[ -x "$bin" && -f "$stamp" && "$(<"$stamp")" == "$want" ]] && usable "$bin"
}

if current; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir"
# Several test workers (or CI's pre-build and a test's own call) may get here at once: serialize
# the build, then look again.
exec 9>"$dir/.lock"
flock -w "${SPAWNGATE_OTELCOL_LOCK_TIMEOUT:-1800}" 9 || fail "timed out waiting for $dir/.lock"
if current; then
  echo "$bin"
  exit 0
fi

tmp="$(mktemp "$dir/otelcol.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
echo "ensure-otelcol: building the collector $version into $bin (a few minutes the first time; niced)" >&2
start=$SECONDS
# Static like upstream's release builds; niced because the machine's cores are shared.
if ! (cd "$mod" && CGO_ENABLED=0 nice -n 19 go build -trimpath -buildvcs=false \
  -ldflags="-s -w -X main.version=${version#v}" -o "$tmp" .); then
  fail "go build of tools/otelcol ($version) failed (go's error is above)"
fi
chmod 755 "$tmp"
usable "$tmp" || fail "the freshly built binary does not report version ${version#v}: $("$tmp" --version 2>&1 | tr '\n' ' ')"
mv -f "$tmp" "$bin"
trap - EXIT
printf '%s\n' "$want" >"$stamp"
echo "ensure-otelcol: built in $((SECONDS - start))s" >&2
echo "$bin"
