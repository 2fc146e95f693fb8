#!/usr/bin/env bash
# Adds one real node to the test control plane (scripts/k8s-up.sh, started here if needed):
#   - a PRIVATE containerd (own config, root, state and socket under the state dir; never the
#     system's or Docker's), with the CRI plugin set up for this VM (docs/k8s-testing.md)
#   - the pause image (tools/pause) and the worker image (scripts/build-image.sh) imported into it
#     under namespace k8s.io; pods use them with imagePullPolicy Never/IfNotPresent, no registry
#   - CNI: bridge sgnode0 (gateway, hairpin, no IP masquerade: no iptables rule on the host),
#     host-local IPAM on the pod subnet
#   - a kubelet (cgroupfs driver, cgroup v1 allowed, no iptables chains, webhook authn/authz)
#     registered as Node $SPAWNGATE_K8S_NODE_NAME with a certificate of the test CA
#   - NetworkPolicy enforced by kube-router's firewall (scripts/k8s-netpol.sh)
# and waits until the Node is Ready and the enforcer's chains are in place.
#
# Idempotent: a healthy node from an earlier run is reused (the kubelet is restarted when the
# control plane was restarted under it). Linux and root only: elsewhere it fails with a message.
# scripts/k8s-node-down.sh stops it and removes what it left on the host.
#
# stdout (also written to $STATE/env) — shell assignments: everything k8s-up.sh prints, plus
#   NODE_NAME, CONTAINERD_SOCK, NODE_IP, POD_CIDR, PAUSE_IMAGE, WORKER_IMAGE, K8S_NODE_STATE_DIR
# and, on stdout only, K8S_NODE_REUSED=0|1.
#
# Env (defaults):
#   SPAWNGATE_K8S_NODE_STATE_DIR     <repo>/.cache/k8s-node
#   SPAWNGATE_K8S_NODE_NAME          spawngate-node
#   SPAWNGATE_K8S_POD_CIDR           10.244.0.0/24
#   SPAWNGATE_K8S_KUBELET_PORT       10250
#   SPAWNGATE_K8S_NODE_READY_TIMEOUT 180    seconds for containerd, then for Node Ready
#   SPAWNGATE_K8S_WORKER_IMAGE       1      0 = do not build/import the worker image
#   SPAWNGATE_K8S_LOCK_TIMEOUT       3600
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
node_state=${SPAWNGATE_K8S_NODE_STATE_DIR:-$repo/.cache/k8s-node}
node_name=${SPAWNGATE_K8S_NODE_NAME:-spawngate-node}
pod_cidr=${SPAWNGATE_K8S_POD_CIDR:-10.244.0.0/24}
kubelet_port=${SPAWNGATE_K8S_KUBELET_PORT:-10250}
ready_timeout=${SPAWNGATE_K8S_NODE_READY_TIMEOUT:-180}
with_worker_image=${SPAWNGATE_K8S_WORKER_IMAGE:-1}
lock_timeout=${SPAWNGATE_K8S_LOCK_TIMEOUT:-3600}
node_bin=$repo/node_modules/.bin/node

log() { printf '[k8s-node-up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A kubelet needs Linux namespaces and cgroups, root to mount and to make the bridge.
[[ $(uname -s) == Linux ]] || die "the test node needs Linux (this is $(uname -s)); CI runs it on Linux as root"
[[ $(id -u) == 0 ]] || die "the test node needs root (cgroups, mounts, the bridge sgnode0); run as root or use the control plane alone (scripts/k8s-up.sh)"
for tool in openssl curl flock setsid ip awk; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
[[ -x $node_bin ]] || die "$node_bin not found: run npm ci first"
[[ $pod_cidr =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/24$ ]] || die "SPAWNGATE_K8S_POD_CIDR must be a /24 ending in .0, got '$pod_cidr'"
pod_gateway=${BASH_REMATCH[1]}.1

mkdir -p "$node_state"
node_state=$(cd "$node_state" && pwd -P)
pids=$node_state/pids
logs=$node_state/logs
pki=$node_state/pki
sock=$node_state/containerd/containerd.sock

exec 9>"$node_state/lock"
flock -w "$lock_timeout" 9 || die "another k8s-node-up holds $node_state/lock for more than ${lock_timeout}s"

# shellcheck source=scripts/k8s-node-down.sh
source "$repo/scripts/k8s-node-down.sh" --lib

# The control plane first: its CA signs our certificates, its apiserver is our server.
plane_out=$("$repo/scripts/k8s-up.sh")
eval "$plane_out" # ADMIN_KUBECONFIG, K8S_SERVER, K8S_STATE_DIR, K8S_REUSED, …
ca=$K8S_STATE_DIR/pki/ca.crt
ca_key=$K8S_STATE_DIR/pki/ca.key
admin_cert=$K8S_STATE_DIR/pki/admin.crt
admin_key=$K8S_STATE_DIR/pki/admin.key

eval "$("$repo/scripts/ensure-k8s-bins.sh")" # KUBELET, PAUSE
eval "$("$repo/scripts/ensure-node-deps.sh")" # CONTAINERD, RUNC, CTR, CNI_BIN_DIR

# The kubelet refuses a loopback node IP: the address of the default route's interface.
default_dev=$(ip -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
[[ -n $default_dev ]] || die "no IPv4 default route: the kubelet needs a non-loopback node IP"
node_ip=$(ip -4 -o addr show dev "$default_dev" scope global | awk '{ split($4, a, "/"); print a[1]; exit }')
[[ -n $node_ip ]] || die "interface $default_dev has no global IPv4 address"

api() { # <path> — GET on the apiserver as admin
  curl -sf --max-time 5 --cacert "$ca" --cert "$admin_cert" --key "$admin_key" "$K8S_SERVER$1"
}

# Ready, as last reported no earlier than <since> (epoch seconds): a Node object left by an
# earlier kubelet keeps saying Ready for a while after that kubelet is gone.
node_ready() { # [since]
  local body
  body=$(api "/api/v1/nodes/$node_name") || return 1
  "$node_bin" -e '
    const node = JSON.parse(process.argv[1]);
    const since = Number(process.argv[2]);
    const ready = (node.status?.conditions ?? []).find((c) => c.type === "Ready");
    const heartbeat = Date.parse(ready?.lastHeartbeatTime ?? "") / 1000;
    process.exit(ready?.status === "True" && heartbeat >= since ? 0 : 1);
  ' "$body" "${1:-0}"
}

# Polls <cmd…> every half second until it succeeds, <component> dies, or the timeout.
wait_for() { # <component> <what> <cmd…>
  local component=$1 what=$2
  shift 2
  daemon_wait "$pids" "$logs" "$ready_timeout" 0.5 "$component" "$what" "$@"
}

start() { # <component> <binary> <args…>
  daemon_start "$pids" "$logs" "$@"
}

containerd_answers() {
  node_ctr version >/dev/null 2>&1
}

runs_binary() { # <component> <binary>
  local pid
  pid=$(node_component_pid "$1") || return 1
  [[ $(readlink "/proc/$pid/exe") == "$2" ]]
}

# ---------------------------------------------------------------- certificates
gen_key() { # <path>
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null
  chmod 600 "$1"
}

sign() { # <name> <subject> <ext>
  gen_key "$pki/$1.key"
  openssl req -new -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$ca" -CAkey "$ca_key" -CAcreateserial -CAserial "$pki/ca.srl" \
    -days 365 -sha256 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
  rm -f "$pki/$1.csr" "$pki/$1.ext"
}

# Certificates are remade when the control plane got a new CA, or the name or IP changed.
certs_current() {
  [[ -f $pki/kubelet-client.crt && -f $pki/kubelet-serving.crt && -f $pki/identity ]] || return 1
  [[ $(<"$pki/identity") == "$node_name $node_ip" ]] || return 1
  openssl verify -CAfile "$ca" "$pki/kubelet-client.crt" "$pki/kubelet-serving.crt" >/dev/null 2>&1
}

gen_node_certs() {
  rm -rf "$pki"
  mkdir -p "$pki"
  chmod 700 "$pki"
  # The Node authorizer and NodeRestriction know a kubelet by exactly this subject.
  sign kubelet-client "/O=system:nodes/CN=system:node:$node_name" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  # The apiserver checks it against the test CA (--kubelet-certificate-authority) when it
  # connects to the InternalIP for pods/log and pods/exec.
  sign kubelet-serving "/CN=system:node:$node_name" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$node_ip,DNS:$node_name"
  printf '%s %s\n' "$node_name" "$node_ip" >"$pki/identity"
}

# ---------------------------------------------------------------- reuse
reused=0
if [[ -f $node_state/env && $K8S_REUSED == 1 ]] && certs_current \
  && runs_binary containerd "$CONTAINERD" && runs_binary kubelet "$KUBELET" && node_ready; then
  reused=1
  log "reusing node $node_name (kubelet pid $(node_component_pid kubelet))"
fi

if ((!reused)); then
  # Whatever is half up goes: a kubelet of an older plane would not re-register with a new one.
  stop_node
  trap 'stop_node' EXIT
  mkdir -p "$pids" "$logs" "$node_state/containerd" "$node_state/cni/net.d" "$node_state/kubelet"
  certs_current || gen_node_certs

  # The pod subnet must not shadow a route of the host (only our own bridge may carry it).
  overlap=$(ip -4 route show to match "$pod_gateway" | awk -v b="$node_bridge" '$1 != "default" && $0 !~ ("dev " b " ")')
  [[ -z $overlap ]] || die "pod subnet $pod_cidr overlaps a host route ($overlap); set SPAWNGATE_K8S_POD_CIDR"
  if (exec 3<>"/dev/tcp/$node_ip/$kubelet_port") 2>/dev/null; then
    die "$node_ip:$kubelet_port is taken by another process; set SPAWNGATE_K8S_KUBELET_PORT"
  fi

  # ------------------------------------------------------------ containerd
  snapshotter=overlayfs
  probe=$node_state/containerd/.overlay-probe
  mkdir -p "$probe"/{l,u,w,m}
  if ! mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
    snapshotter=native
    log "overlayfs does not mount under $node_state; using the native snapshotter (slower, more disk)"
  else
    umount "$probe/m"
  fi
  rm -rf "$probe"
  printf '%s\n' "$snapshotter" >"$node_state/containerd/snapshotter"

  # Host paths the kubelet and containerd 1.6 create whatever they are configured with; the ones
  # that do not exist yet are listed, so k8s-node-down.sh removes exactly those (when empty).
  for dir in "${node_host_dirs[@]}"; do
    [[ -e $dir ]] || grep -xF -- "$dir" "$node_state/host-dirs-made" >/dev/null 2>&1 \
      || printf '%s\n' "$dir" >>"$node_state/host-dirs-made"
  done
  cat >"$node_state/containerd/config.toml" <<EOF
# Written by scripts/k8s-node-up.sh; a private containerd for the test node only.
version = 2
root = "$node_state/containerd/root"
state = "$node_state/containerd/state"
plugin_dir = ""
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]
oom_score = 0

[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$node_state/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "PAUSE_IMAGE_PLACEHOLDER"
  # No process on this VM may lower an oom_score_adj (no CAP_SYS_RESOURCE): runc would fail
  # with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  enable_cdi = false
  # Pod network namespaces in our state dir instead of /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$snapshotter"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$RUNC"
        Root = "$node_state/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$node_state/cni/net.d"
    max_conf_num = 1
EOF

  # ------------------------------------------------------------ CNI
  # ipMasq false: pods reach the host and each other, nothing more, and no NAT rule is added to
  # the host's iptables. IPAM state lives in our dir, not /var/lib/cni/networks.
  cat >"$node_state/cni/net.d/10-$node_network.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$node_network",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$node_bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$pod_cidr", "gateway": "$pod_gateway" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$node_state/cni/ipam"
      }
    }
  ]
}
EOF

  # The bridge and its gateway address exist from the start, not only from the first pod's CNI
  # ADD: a host service for the pods (a test's model API, a proxy) can listen on the gateway
  # before any pod runs. The bridge plugin adopts an existing bridge that carries its gateway.
  if ! ip link show "$node_bridge" >/dev/null 2>&1; then
    ip link add "$node_bridge" type bridge
  fi
  gateway_cidr="$pod_gateway/${pod_cidr#*/}"
  if [[ " $(ip -o -4 addr show dev "$node_bridge" | awk '{print $4}' | tr '\n' ' ') " != *" $gateway_cidr "* ]]; then
    ip addr add "$gateway_cidr" dev "$node_bridge"
  fi
  ip link set "$node_bridge" up
fi

# ---------------------------------------------------------------- images
# The pause rootfs is built here as a docker-archive tar (no Docker needed): one layer with the
# static binary. Its name carries the binary's hash, so a new pause binary is a new image.
pause_sum=$(sha256sum "$PAUSE" | cut -c1-12)
pause_image=localhost/spawngate-pause:$pause_sum

if ((!reused)); then
  sed -i "s|PAUSE_IMAGE_PLACEHOLDER|$pause_image|" "$node_state/containerd/config.toml"
  start containerd "$CONTAINERD" --config "$node_state/containerd/config.toml"
  wait_for containerd "containerd's socket" containerd_answers
fi

# ctr unpacks with its own default (overlayfs) unless told: use the one the CRI plugin uses.
snapshotter=$(<"$node_state/containerd/snapshotter")

image_present() { # <ref>
  [[ -n $(node_ctr images ls -q "name==$1" 2>/dev/null) ]]
}

if ! image_present "$pause_image"; then
  start_import=$SECONDS
  work=$(mktemp -d "$node_state/pause-image.XXXXXX")
  mkdir -p "$work/rootfs"
  cp "$PAUSE" "$work/rootfs/pause"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer.tar" pause
  layer_sum=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  cat >"$work/config.json" <<EOF
{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer_sum"]},"history":[{"created_by":"scripts/k8s-node-up.sh"}]}
EOF
  config_sum=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  mv "$work/config.json" "$work/$config_sum.json"
  mkdir -p "$work/$layer_sum"
  mv "$work/layer.tar" "$work/$layer_sum/layer.tar"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' \
    "$config_sum" "$pause_image" "$layer_sum" >"$work/manifest.json"
  tar -C "$work" -cf "$work.tar" manifest.json "$config_sum.json" "$layer_sum"
  node_ctr images import --snapshotter "$snapshotter" "$work.tar" >/dev/null
  rm -rf "$work" "$work.tar"
  log "imported $pause_image in $((SECONDS - start_import))s"
fi

worker_image=""
if [[ $with_worker_image == 1 ]]; then
  # build-image.sh is a no-op when nothing changed; its last stdout line is {"tag":…,…}.
  # The lock: build-image.sh compiles dist/, which a developer's or a test's own build may be writing.
  # -o: the lock's descriptor stays out of build-image.sh, so a daemon it starts (dockerd) cannot
  # keep the lock after the build is done.
  build_out=$(flock -o -w 900 /tmp/spawngate-build.lock bash "$repo/scripts/build-image.sh")
  build_json=${build_out##*$'\n'}
  worker_tag=$("$node_bin" -e 'process.stdout.write(JSON.parse(process.argv[1]).tag ?? "")' "$build_json")
  [[ -n $worker_tag ]] || die "scripts/build-image.sh printed no tag: $build_json"
  # Also as spawngate-worker:test, the name the golden manifests and the node tests use.
  SPAWNGATE_K8S_NODE_STATE_DIR=$node_state bash "$repo/scripts/k8s-node-image.sh" "$worker_tag" docker.io/library/spawngate-worker:test >/dev/null
  worker_image=$worker_tag
fi

# ---------------------------------------------------------------- kubelet
if ((!reused)); then
  kubeconfig=$node_state/kubelet.kubeconfig
  cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: spawngate-test
    cluster:
      server: $K8S_SERVER
      certificate-authority: $ca
users:
  - name: system:node:$node_name
    user:
      client-certificate: $pki/kubelet-client.crt
      client-key: $pki/kubelet-client.key
contexts:
  - name: node
    context: { cluster: spawngate-test, user: "system:node:$node_name" }
current-context: node
EOF
  chmod 600 "$kubeconfig"

  cat >"$node_state/kubelet/config.yaml" <<EOF
# Written by scripts/k8s-node-up.sh. Why each unusual setting: docs/k8s-testing.md.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $kubelet_port
readOnlyPort: 0
healthzPort: 0
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $ca }
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$sock
cgroupDriver: cgroupfs
failCgroupV1: false
oomScoreAdj: 0
makeIPTablesUtilChains: false
volumePluginDir: $node_state/kubelet/volume-plugins
podLogsDir: $node_state/pod-logs
failSwapOn: false
registerNode: true
maxPods: 30
serializeImagePulls: false
# Imported images have no registry to come back from: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# A busy shared disk must not taint the node and evict test pods.
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
rotateCertificates: false
serverTLSBootstrap: false
EOF

  start kubelet "$KUBELET" \
    --config="$node_state/kubelet/config.yaml" \
    --kubeconfig="$kubeconfig" \
    --root-dir="$node_state/kubelet/root" \
    --hostname-override="$node_name" \
    --node-ip="$node_ip"
  start_ready=$SECONDS
  # Whole seconds on both sides (the API's timestamps have no fraction): one second of slack.
  wait_for kubelet "Node $node_name Ready" node_ready "$(($(date +%s) - 1))"
  log "node $node_name Ready $((SECONDS - start_ready))s after the kubelet started"
fi

# NetworkPolicy is enforced on this node, as on a real cluster (kube-router's firewall; a running
# one is kept). It watches the whole cluster's policies, pods and namespaces: the admin identity.
bash "$repo/scripts/k8s-netpol.sh" start "$node_state" "$ADMIN_KUBECONFIG" "$node_name"

env_body=$(
  printf '%s\n' "$plane_out" | grep -v '^K8S_REUSED='
  printf 'NODE_NAME=%q\n' "$node_name"
  printf 'NODE_IP=%q\n' "$node_ip"
  printf 'POD_CIDR=%q\n' "$pod_cidr"
  printf 'CONTAINERD_SOCK=%q\n' "$sock"
  printf 'PAUSE_IMAGE=%q\n' "$pause_image"
  printf 'WORKER_IMAGE=%q\n' "$worker_image"
  printf 'K8S_NODE_STATE_DIR=%q\n' "$node_state"
)
trap - EXIT
printf '%s\n' "$env_body" >"$node_state/env.tmp"
mv -f "$node_state/env.tmp" "$node_state/env"
printf '%s\nK8S_REUSED=%s\nK8S_NODE_REUSED=%s\n' "$env_body" "$K8S_REUSED" "$reused"
