#!/usr/bin/env bash
# Copies a Docker image into the test node's private containerd (namespace k8s.io), where the
# kubelet finds it: `docker save | ctr images import`, since no registry is reachable here. The
# image is stored under containerd's full form of its Docker name (docker.io/library/<name>:<tag>
# for a short name, which is what the kubelet asks for) and under each extra name given.
# A no-op when the same Docker image id was imported before and every name is present.
#
# Usage: k8s-node-image.sh <docker-tag> [<extra containerd name>…]
# stdout: one line, "<docker-tag> <docker image id> imported|present".
# Env: SPAWNGATE_K8S_NODE_STATE_DIR (default <repo>/.cache/k8s-node): the node of scripts/k8s-node-up.sh.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
node_state=${SPAWNGATE_K8S_NODE_STATE_DIR:-$repo/.cache/k8s-node}

log() { printf '[k8s-node-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

(($# >= 1)) || die "usage: k8s-node-image.sh <docker-tag> [<extra containerd name>…]"
tag=$1
shift
[[ -S $node_state/containerd/containerd.sock ]] || die "no test node containerd at $node_state/containerd/containerd.sock: run scripts/k8s-node-up.sh first"
snapshotter_file=$node_state/containerd/snapshotter
[[ -f $snapshotter_file ]] || die "$snapshotter_file is missing: the node's containerd was not set up by scripts/k8s-node-up.sh"

# shellcheck source=scripts/k8s-node-down.sh
source "$repo/scripts/k8s-node-down.sh" --lib # node_ctr

id=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null) || die "Docker has no image $tag (build it first)"
# containerd names images fully, as Docker's reference parser does: a first component with a dot,
# a colon or "localhost" is a registry; otherwise docker.io, and library/ for a one-part name.
first=${tag%%/*}
if [[ $tag == */* && ( $first == *.* || $first == *:* || $first == localhost ) ]]; then
  ref=$tag
elif [[ $tag == */* ]]; then
  ref=docker.io/$tag
else
  ref=docker.io/library/$tag
fi
[[ ${ref##*/} == *[:@]* ]] || ref=$ref:latest

present() { # <ref>
  [[ -n $(node_ctr images ls -q "name==$1" 2>/dev/null) ]]
}

# Tests import while a node-up may still be tagging: one import at a time per node.
exec 7>"$node_state/containerd/image-import.lock"
flock -w 900 7 || die "another import holds $node_state/containerd/image-import.lock"

stamp=$node_state/containerd/image-${tag//[^A-Za-z0-9_.-]/_}.id
all_present=1
for name in "$ref" "$@"; do present "$name" || all_present=0; done
if [[ -f $stamp && $(<"$stamp") == "$id" ]] && ((all_present)); then
  printf '%s %s present\n' "$tag" "$id"
  exit 0
fi

start=$SECONDS
# ctr unpacks with its own default snapshotter unless told: use the one the CRI plugin uses.
docker save "$tag" | node_ctr images import --snapshotter "$(<"$snapshotter_file")" - >/dev/null
for name in "$@"; do node_ctr images tag --force "$ref" "$name" >/dev/null; done
printf '%s\n' "$id" >"$stamp"
log "imported $tag ($id) as $ref${*:+ and $*} in $((SECONDS - start))s"
printf '%s %s imported\n' "$tag" "$id"
