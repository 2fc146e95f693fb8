#!/usr/bin/env bash
# Builds the test cluster's binaries from the Go module proxy, once per pin:
#   kube-apiserver, kube-controller-manager, kube-scheduler,
#   kubelet                                                  (tools/k8s, k8s.io/kubernetes)
#   etcd                                                     (tools/etcd, go.etcd.io/etcd/server/v3)
#   pause (the node's pod sandbox process; no dependencies)  (tools/pause)
# into .tools/k8s/<k8s-version>/, .tools/etcd/<etcd-version>/ and .tools/pause/.
# A binary is rebuilt only when its pin (go.mod + go.sum of its tools module) changes
# (for pause: its go.mod and source).
#
# stdout: shell assignments for the caller to eval (logs go to stderr):
#   KUBE_APISERVER=…  KUBE_CONTROLLER_MANAGER=…  KUBE_SCHEDULER=…  KUBELET=…  ETCD=…  PAUSE=…
#   K8S_VERSION=…  ETCD_VERSION=…
#
# Env: SPAWNGATE_TOOLS_DIR (default <repo>/.tools) — where the binaries are cached.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir=${SPAWNGATE_TOOLS_DIR:-$repo/.tools}

log() { printf '[ensure-k8s-bins] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ! command -v go >/dev/null 2>&1; then
  [[ -x /usr/local/go/bin/go ]] || die "go toolchain not found (expected on PATH or at /usr/local/go/bin/go)"
  PATH=/usr/local/go/bin:$PATH
fi

# The version a tools module requires, read from its go.mod so the pin lives in one place.
module_version() { # <module-dir> <module-path>
  (cd "$1" && go list -m -f '{{.Version}}' "$2")
}

pin_hash() { # <module-dir>
  # pause has no go.sum (no dependencies); its source is the pin.
  local files=("$1/go.mod")
  if [[ -f $1/go.sum ]]; then files+=("$1/go.sum"); else files+=("$1"/*.go); fi
  cat "${files[@]}" | sha256sum | cut -d' ' -f1
}

# Builds <pkg> from <module-dir> into <out> unless <out> exists with a matching stamp.
build_one() { # <module-dir> <pkg> <out> <ldflags>
  local mod=$1 pkg=$2 out=$3 ldflags=$4
  local stamp="$out.pin" want
  want=$(pin_hash "$mod")
  if [[ -x $out && -f $stamp && $(<"$stamp") == "$want" ]]; then
    return 0
  fi
  mkdir -p "$(dirname "$out")"
  log "building $(basename "$out") from $pkg (slow the first time; niced)"
  local start=$SECONDS
  # Static binaries like upstream's release builds (CGO_ENABLED=0); niced and one
  # at a time because the machine's two cores are shared.
  # shellcheck disable=SC2064 # expanded now on purpose: $out is local
  trap "rm -f $(printf %q "$out.tmp")" EXIT
  (cd "$mod" && CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags="-s -w $ldflags" -o "$out.tmp" "$pkg")
  mv -f "$out.tmp" "$out"
  trap - EXIT
  printf '%s\n' "$want" >"$stamp"
  log "built $(basename "$out") in $((SECONDS - start))s"
}

mkdir -p "$tools_dir"
# Concurrent callers (CI's pre-build and a test's k8s-up) wait for one build.
exec 8>"$tools_dir/.k8s-bins.lock"
flock -w "${SPAWNGATE_K8S_LOCK_TIMEOUT:-3600}" 8 || die "timed out waiting for $tools_dir/.k8s-bins.lock"

k8s_mod=$repo/tools/k8s
etcd_mod=$repo/tools/etcd
k8s_version=$(module_version "$k8s_mod" k8s.io/kubernetes)
etcd_version=$(module_version "$etcd_mod" go.etcd.io/etcd/server/v3)
[[ $k8s_version =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || die "unexpected k8s.io/kubernetes version '$k8s_version'"
k8s_major=${BASH_REMATCH[1]}
k8s_minor=${BASH_REMATCH[2]}

# Without these the binaries report v0.0.0-master, which clients and the
# apiserver's own version checks treat as an unknown release.
k8s_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=$k8s_major -X $p.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $p.gitTreeState=clean"
done

k8s_bin=$tools_dir/k8s/$k8s_version
etcd_bin=$tools_dir/etcd/$etcd_version

build_one "$etcd_mod" go.etcd.io/etcd/server/v3 "$etcd_bin/etcd" \
  "-X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
  build_one "$k8s_mod" "k8s.io/kubernetes/cmd/$cmd" "$k8s_bin/$cmd" "$k8s_ldflags"
done

build_one "$repo/tools/pause" . "$tools_dir/pause/pause" ""

printf 'K8S_VERSION=%q\n' "$k8s_version"
printf 'ETCD_VERSION=%q\n' "$etcd_version"
printf 'KUBE_APISERVER=%q\n' "$k8s_bin/kube-apiserver"
printf 'KUBE_CONTROLLER_MANAGER=%q\n' "$k8s_bin/kube-controller-manager"
printf 'KUBE_SCHEDULER=%q\n' "$k8s_bin/kube-scheduler"
printf 'KUBELET=%q\n' "$k8s_bin/kubelet"
printf 'ETCD=%q\n' "$etcd_bin/etcd"
printf 'PAUSE=%q\n' "$tools_dir/pause/pause"
