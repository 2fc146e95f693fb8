#!/usr/bin/env bash
# Brings up a real Kubernetes control plane on 127.0.0.1 for tests: etcd,
# kube-apiserver (RBAC, admission incl. PodSecurity, service-account tokens),
# kube-controller-manager and kube-scheduler, built by scripts/ensure-k8s-bins.sh.
# It has no node of its own: scripts/k8s-node-up.sh adds the one real node (a
# kubelet with a private containerd). The apiserver already holds the client
# certificate that node's kubelet accepts, so pods/log and pods/exec work.
#
# Idempotent: a healthy plane from an earlier run is reused. Either way the RBAC
# from deploy/rbac.yaml is re-applied and a fresh token is minted.
#
# stdout (also written to $STATE/env) — shell assignments:
#   ADMIN_KUBECONFIG, SPAWNGATE_KUBECONFIG, K8S_SERVER, K8S_NAMESPACE, K8S_VERSION, K8S_STATE_DIR
# plus, on stdout only, K8S_REUSED=0|1 (1 when an already running plane was reused).
#
# Env (defaults):
#   SPAWNGATE_K8S_STATE_DIR      <repo>/.cache/k8s
#   SPAWNGATE_K8S_APISERVER_PORT 16443
#   SPAWNGATE_K8S_ETCD_PORT      12379   (client)
#   SPAWNGATE_K8S_ETCD_PEER_PORT 12380
#   SPAWNGATE_K8S_NAMESPACE      spawngate-test
#   SPAWNGATE_K8S_READY_TIMEOUT  120     seconds to wait for each component
#   SPAWNGATE_K8S_LOCK_TIMEOUT   3600    seconds to wait for a concurrent k8s-up (a cold build is slow)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=${SPAWNGATE_K8S_STATE_DIR:-$repo/.cache/k8s}
apiserver_port=${SPAWNGATE_K8S_APISERVER_PORT:-16443}
etcd_port=${SPAWNGATE_K8S_ETCD_PORT:-12379}
etcd_peer_port=${SPAWNGATE_K8S_ETCD_PEER_PORT:-12380}
namespace=${SPAWNGATE_K8S_NAMESPACE:-spawngate-test}
ready_timeout=${SPAWNGATE_K8S_READY_TIMEOUT:-120}
lock_timeout=${SPAWNGATE_K8S_LOCK_TIMEOUT:-3600}
node=$repo/node_modules/.bin/node

log() { printf '[k8s-up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in openssl curl flock setsid; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
[[ -x $node ]] || die "$node not found: run npm ci first"

mkdir -p "$state"
state=$(cd "$state" && pwd)
pki=$state/pki
pids=$state/pids
logs=$state/logs
admin_kubeconfig=$state/admin.kubeconfig
spawngate_kubeconfig=$state/spawngate.kubeconfig

# One k8s-up at a time per state dir; a second caller waits and then reuses.
exec 9>"$state/lock"
flock -w "$lock_timeout" 9 || die "another k8s-up holds $state/lock for more than ${lock_timeout}s"

# shellcheck source=scripts/k8s-down.sh
source "$repo/scripts/k8s-down.sh" --lib

components=(etcd kube-apiserver kube-controller-manager kube-scheduler)

all_running() {
  local c
  for c in "${components[@]}"; do
    component_pid "$c" >/dev/null || return 1
  done
}

readyz() { # <server>
  curl -sf --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "$1/readyz" >/dev/null 2>&1
}

port_in_use() { # <port>
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Polls <cmd…> once a second until it succeeds, the component dies, or the timeout.
wait_for() { # <component> <cmd…>
  local component=$1
  shift
  daemon_wait "$pids" "$logs" "$ready_timeout" 1 "$component" "$component ready" "$@"
}

start() { # <component> <binary> <args…>
  daemon_start "$pids" "$logs" "$@"
}

gen_key() { # <path>
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null
}

# Signs a leaf certificate with the test CA. <ext> is an openssl extension section body.
gen_cert() { # <name> <subject> <ext>
  local name=$1 subject=$2 ext=$3
  gen_key "$pki/$name.key"
  openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# The apiserver's identity towards kubelets (pods/log, pods/exec, port-forward):
# the kubelet's webhook authorizer asks the apiserver, where system:masters may do all.
gen_kubelet_client_cert() {
  gen_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  chmod 600 "$pki/apiserver-kubelet-client.key"
}

gen_pki() {
  rm -rf "$pki"
  mkdir -p "$pki"
  chmod 700 "$pki"
  gen_key "$pki/ca.key"
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=spawngate-test-ca" -days 365 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/ca.crt" 2>/dev/null
  gen_cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  local client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  # The apiserver maps CN to the user name and O to groups.
  gen_cert admin "/O=system:masters/CN=spawngate-admin" "$client_ext"
  gen_cert kube-controller-manager "/CN=system:kube-controller-manager" "$client_ext"
  gen_cert kube-scheduler "/CN=system:kube-scheduler" "$client_ext"
  gen_kubelet_client_cert
  # Service-account token signing pair.
  gen_key "$pki/sa.key"
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 600 "$pki"/*.key
}

write_kubeconfig() { # <path> <user> <cert-name>
  local tmp="$1.tmp"
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: spawngate-test
    cluster:
      server: $server
      certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
  - name: $2
    user:
      client-certificate-data: $(base64 -w0 "$pki/$3.crt")
      client-key-data: $(base64 -w0 "$pki/$3.key")
contexts:
  - name: $2
    context:
      cluster: spawngate-test
      user: $2
current-context: $2
EOF
  chmod 600 "$tmp"
  mv -f "$tmp" "$1"
}

# A value from the env file of the running plane.
recorded() { # <name>
  # shellcheck source=/dev/null
  (source "$state/env" && printf '%s' "${!1}")
}

# Cheap when nothing changed; builds (slowly) when a pin in tools/ moved.
bins=$("$repo/scripts/ensure-k8s-bins.sh")
eval "$bins" # sets K8S_VERSION, ETCD, KUBE_APISERVER, KUBE_CONTROLLER_MANAGER, KUBE_SCHEDULER
declare -A binary=(
  [etcd]=$ETCD
  [kube-apiserver]=$KUBE_APISERVER
  [kube-controller-manager]=$KUBE_CONTROLLER_MANAGER
  [kube-scheduler]=$KUBE_SCHEDULER
)

# True when every component runs the binary the current pins produce; after a
# pin change (or a rebuild, where /proc shows "(deleted)") the plane is restarted.
running_current_binaries() {
  local c pid
  for c in "${components[@]}"; do
    pid=$(component_pid "$c") || return 1
    [[ $(readlink "/proc/$pid/exe") == "${binary[$c]}" ]] || return 1
  done
}

# A plane started by an older k8s-up.sh has no kubelet client certificate, so
# the node's pods/log and pods/exec would fail: such a plane is restarted.
apiserver_has_kubelet_client() {
  local pid args
  pid=$(component_pid kube-apiserver) || return 1
  args=$(tr '\0' '\n' <"/proc/$pid/cmdline") || return 1
  grep -qx -- "--kubelet-client-certificate=$pki/apiserver-kubelet-client.crt" <<<"$args"
}

reused=0
if [[ -f $state/env ]] && all_running && running_current_binaries && apiserver_has_kubelet_client \
  && readyz "$(recorded K8S_SERVER)"; then
  reused=1
  # The recorded ports win: the running plane is what the env file describes.
  server=$(recorded K8S_SERVER)
  k8s_version=$(recorded K8S_VERSION)
  log "reusing the control plane at $server"
else
  stop_all
  # A start that fails half way stops what it started rather than leave orphans.
  trap 'stop_all' EXIT
  # shellcheck disable=SC2153
  k8s_version=$K8S_VERSION
  server=https://127.0.0.1:$apiserver_port

  for port in "$apiserver_port" "$etcd_port" "$etcd_peer_port"; do
    if port_in_use "$port"; then
      die "127.0.0.1:$port is taken by another process; pick free ports with SPAWNGATE_K8S_{APISERVER,ETCD,ETCD_PEER}_PORT"
    fi
  done

  mkdir -p "$pids" "$logs"
  rm -f "$state/env"
  [[ -f $pki/ca.crt && -f $pki/sa.key && -f $pki/admin.key ]] || gen_pki
  [[ -f $pki/apiserver-kubelet-client.key ]] || gen_kubelet_client_cert
  # A fresh store each cold start: leftovers from an earlier run would leak into tests.
  rm -rf "$state/etcd"

  etcd_url=http://127.0.0.1:$etcd_port
  # Plain HTTP is acceptable only because etcd listens on loopback and holds test data.
  # --unsafe-no-fsync: the store is thrown away on the next cold start, and fsync
  # on a shared disk is the slowest part of every write.
  start etcd "${binary[etcd]}" \
    --name=spawngate-test \
    --data-dir="$state/etcd" \
    --listen-client-urls="$etcd_url" \
    --advertise-client-urls="$etcd_url" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="spawngate-test=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync \
    --log-level=warn
  wait_for etcd curl -sf --max-time 5 "$etcd_url/health" -o /dev/null

  start kube-apiserver "${binary[kube-apiserver]}" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$apiserver_port" \
    --etcd-servers="$etcd_url" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/24 \
    --endpoint-reconciler-type=none \
    --allow-privileged=true \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$pki/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --profiling=false
  # --endpoint-reconciler-type=none: the default reconciler would publish the
  # loopback advertise address as the `kubernetes` Service endpoint, which
  # Endpoints validation rejects, and log that failure forever.
  # --allow-privileged=true: as on a real cluster, so refusing privileged pods is
  # PodSecurity's job (the thing the tests check), not a global switch.
  # --kubelet-*: the node's kubelet (k8s-node-up.sh) serves a certificate signed
  # by the test CA for its InternalIP and accepts this client certificate.
  wait_for kube-apiserver readyz "$server"

  write_kubeconfig "$admin_kubeconfig" spawngate-admin admin
  write_kubeconfig "$state/kube-controller-manager.kubeconfig" system:kube-controller-manager kube-controller-manager
  write_kubeconfig "$state/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler

  # --secure-port=0 on both: nothing scrapes them, and it keeps 10257/10259 free.
  start kube-controller-manager "${binary[kube-controller-manager]}" \
    --kubeconfig="$state/kube-controller-manager.kubeconfig" \
    --secure-port=0 \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" \
    --cluster-signing-key-file="$pki/ca.key" \
    --flex-volume-plugin-dir="$state/flexvolume"
  # --flex-volume-plugin-dir: the default is under /usr/libexec, which the
  # controller-manager would otherwise create on the host.
  start kube-scheduler "${binary[kube-scheduler]}" \
    --kubeconfig="$state/kube-scheduler.kubeconfig" \
    --secure-port=0 \
    --leader-elect=false
fi

token_expires=$("$node" "$repo/tools/k8s/bootstrap.mjs" \
  --admin-kubeconfig "$admin_kubeconfig" \
  --manifest "$repo/deploy/rbac.yaml" \
  --namespace "$namespace" \
  --service-account spawngate \
  --out "$spawngate_kubeconfig")
log "spawngate token for $namespace valid until $token_expires"

# Pods are refused in a namespace until the controller-manager has created its
# `default` ServiceAccount, so a plane is only handed out once that happened.
default_sa_exists() {
  curl -sf --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "$server/api/v1/namespaces/$namespace/serviceaccounts/default" >/dev/null 2>&1
}
wait_for kube-controller-manager default_sa_exists
component_pid kube-scheduler >/dev/null || die "kube-scheduler is not running; log: $logs/kube-scheduler.log"

env_body=$(
  printf 'ADMIN_KUBECONFIG=%q\n' "$admin_kubeconfig"
  printf 'SPAWNGATE_KUBECONFIG=%q\n' "$spawngate_kubeconfig"
  printf 'K8S_SERVER=%q\n' "$server"
  printf 'K8S_NAMESPACE=%q\n' "$namespace"
  printf 'K8S_VERSION=%q\n' "$k8s_version"
  printf 'K8S_STATE_DIR=%q\n' "$state"
)
trap - EXIT
printf '%s\n' "$env_body" >"$state/env.tmp"
mv -f "$state/env.tmp" "$state/env"
printf '%s\nK8S_REUSED=%s\n' "$env_body" "$reused"
