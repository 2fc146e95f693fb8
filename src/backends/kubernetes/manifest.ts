/**
 * WorkerSpec → the Kubernetes objects of one worker. Pure: no client, no I/O, so golden tests run
 * without a server and validate() dry-runs exactly what create() sends.
 *
 * One worker is up to three objects in the backend's namespace, all carrying the spawn's labels:
 *   NetworkPolicy  spawngate-<key>-egress   egress none/proxy only; selects the pod by spawn id
 *   Pod            spawngate-<key>          the reference worker (or the profile's command)
 *   Secret         spawngate-<key>-token    the bearer token, read by the pod through secretKeyRef;
 *                                           owned by the Pod (ownerReferences), so it needs the Pod's uid
 * See docs/kubernetes.md for the order they are created in and why.
 */
import { createHash } from 'node:crypto';
import type { V1EnvVar, V1NetworkPolicy, V1NetworkPolicyEgressRule, V1NetworkPolicyPeer, V1Pod, V1PodSecurityContext, V1Secret, V1SecurityContext, V1Volume, V1VolumeMount } from '@kubernetes/client-node';
import { BackendError } from '../../errors.js';
import type { WorkerSpec } from '../types.js';
import { LABELS } from '../types.js';

export const WORKER_CONTAINER = 'worker';
export const WORKER_UID = 10001;
export const DEFAULT_WORKER_PORT = 8080;
export const WORKSPACE_MOUNT = '/workspace';
/** The worker's (and agent's) HOME: an emptyDir of its own, never the workspace. */
export const HOME_MOUNT = '/home/spawngate';
export const TOKEN_KEY = 'token';
/** Seconds between SIGTERM and SIGKILL when a worker pod is deleted; the worker stops in well under one. */
export const TERMINATION_GRACE_SECONDS = 10;
export const ANNOTATIONS = {
  expiresAt: 'spawngate.io/expires-at',
  agent: 'spawngate.io/agent',
  owner: 'spawngate.io/owner',
  /** none | proxy | open: running() refuses a none/proxy worker whose NetworkPolicy is missing. */
  egress: 'spawngate.io/egress',
} as const;
export const MANAGED_BY = { 'app.kubernetes.io/managed-by': 'spawngate', 'app.kubernetes.io/component': 'worker' } as const;

/**
 * Where egress "proxy" may go. The NetworkPolicy allows TCP to `to` on `port` only (plus DNS to
 * kube-dns unless `dns: false`), and the worker gets HTTP(S)_PROXY = `url`.
 */
export interface KubernetesProxyOptions {
  url: string;
  port: number;
  /** Proxy pods by label, in `namespace` (default: the workers' own), or a CIDR (e.g. an egress gateway outside the cluster). */
  to: { podSelector: Readonly<Record<string, string>>; namespace?: string } | { cidr: string };
  /** Allow DNS (UDP/TCP 53) to kube-dns so the proxy's name resolves; default true. */
  dns?: boolean;
  noProxy?: string;
}

export const DEFAULT_PROXY_NAME = 'spawngate-egress-proxy';

/** The convention when nothing is configured: a proxy Service/pods named spawngate-egress-proxy next to the workers, port 3128. */
export function defaultProxy(namespace: string): KubernetesProxyOptions {
  return {
    url: `http://${DEFAULT_PROXY_NAME}.${namespace}.svc:3128`,
    port: 3128,
    to: { podSelector: { 'app.kubernetes.io/name': DEFAULT_PROXY_NAME } },
    dns: true,
  };
}

export interface ManifestOptions {
  backendName: string;
  namespace: string;
  /** Image when the profile names none. */
  defaultImage: string;
  workerPort: number;
  proxy: KubernetesProxyOptions;
}

export interface WorkerManifests {
  podName: string;
  secretName: string;
  /** null for egress "open". */
  networkPolicy: V1NetworkPolicy | null;
  pod: V1Pod;
  labels: Record<string, string>;
}

export function manifestError(spec: WorkerSpec, field: string, message: string, reason = 'InvalidSpec'): BackendError {
  return new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: ${message}`, { details: { field, reason } });
}

/** DNS-1123 label form of a spawn id; ids that are not one already get a hash suffix so two never collide. */
export function spawnKey(spawnId: string): string {
  if (/^[a-z0-9](?:[-a-z0-9]{0,40}[a-z0-9])?$/.test(spawnId)) return spawnId;
  const cleaned = spawnId
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 28)
    .replace(/-+$/, '');
  const hash = createHash('sha256').update(spawnId).digest('hex').slice(0, 12);
  return cleaned ? `${cleaned}-${hash}` : hash;
}

export function podNameOf(spawnId: string): string {
  return `spawngate-${spawnKey(spawnId)}`;
}

export function secretNameOf(spawnId: string): string {
  return `${podNameOf(spawnId)}-token`;
}

export function networkPolicyNameOf(spawnId: string): string {
  return `${podNameOf(spawnId)}-egress`;
}

/** A Kubernetes label value (≤ 63 of [A-Za-z0-9._-], alphanumeric at both ends) for the defaults below; the lifecycle's own labels already are. */
function labelSafe(value: string): string {
  const cleaned = value.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 63);
  return cleaned.replace(/^[^A-Za-z0-9]+/, '').replace(/[^A-Za-z0-9]+$/, '') || 'x';
}

/** Labels every object of the worker carries: what list() and the sweeper select on. */
export function workerLabels(spec: WorkerSpec, options: Pick<ManifestOptions, 'backendName'>): Record<string, string> {
  return {
    ...MANAGED_BY,
    [LABELS.owner]: labelSafe(spec.owner),
    [LABELS.profile]: labelSafe(spec.profileName),
    [LABELS.agent]: labelSafe(spec.agentId),
    [LABELS.expiresAt]: String(Math.floor(spec.expiresAt.getTime() / 1000)),
    ...spec.labels,
    // list() filters on these two, so they must be this spawn and this backend whatever the spec carried.
    [LABELS.spawnId]: spec.spawnId,
    [LABELS.backend]: options.backendName,
  };
}

function annotations(spec: WorkerSpec): Record<string, string> {
  return { [ANNOTATIONS.expiresAt]: spec.expiresAt.toISOString(), [ANNOTATIONS.agent]: spec.agentId, [ANNOTATIONS.owner]: spec.owner, [ANNOTATIONS.egress]: spec.egress };
}

function proxyEnv(proxy: KubernetesProxyOptions): Record<string, string> {
  const noProxy = proxy.noProxy ?? 'localhost,127.0.0.1,::1';
  return { HTTP_PROXY: proxy.url, HTTPS_PROXY: proxy.url, http_proxy: proxy.url, https_proxy: proxy.url, NO_PROXY: noProxy, no_proxy: noProxy };
}

function checkSpec(spec: WorkerSpec, options: ManifestOptions): void {
  if (!spec.spawnId) throw manifestError(spec, 'spawnId', 'spawn id is empty');
  if (!Number.isInteger(spec.resources.gpu) || spec.resources.gpu < 0) throw manifestError(spec, 'resources.gpu', 'gpu must be a non-negative integer');
  if (!Number.isInteger(spec.timeoutSeconds) || spec.timeoutSeconds < 1) throw manifestError(spec, 'timeoutSeconds', 'timeoutSeconds must be a positive integer');
  if (!Number.isInteger(options.workerPort) || options.workerPort < 1 || options.workerPort > 65535) {
    throw new BackendError('BACKEND_FAILED', `kubernetes backend ${options.backendName}: workerPort ${options.workerPort} is not a TCP port`, { details: { field: 'workerPort' } });
  }
  if (spec.workspace.strategy === 'hostPath') {
    throw manifestError(
      spec,
      'workspace.strategy',
      `workspace strategy "hostPath" is refused on kubernetes backend ${options.backendName}: it would hand the worker a node's filesystem, and PodSecurity "restricted" forbids it; use "ephemeral" or "volume" (an existing PersistentVolumeClaim)`,
      'HostPathRefused',
    );
  }
  if (spec.workspace.strategy === 'volume' && !spec.workspace.claimName) {
    throw manifestError(spec, 'workspace.claimName', 'workspace strategy "volume" needs claimName: an existing PersistentVolumeClaim in the namespace (use "ephemeral" for a fresh emptyDir per worker)');
  }
}

function workerEnv(spec: WorkerSpec, options: ManifestOptions): V1EnvVar[] {
  // Later entries win; the worker contract comes last so a profile cannot override it.
  const env = new Map<string, V1EnvVar>();
  const put = (entry: V1EnvVar) => {
    env.delete(entry.name);
    env.set(entry.name, entry);
  };
  put({ name: 'HOME', value: HOME_MOUNT });
  for (const [name, value] of Object.entries(spec.env)) put({ name, value });
  if (spec.egress === 'proxy') for (const [name, value] of Object.entries(proxyEnv(options.proxy))) put({ name, value });
  for (const ref of spec.secretEnv) put({ name: ref.name, valueFrom: { secretKeyRef: { name: ref.secretRef.name, key: ref.secretRef.key, optional: false } } });
  if (spec.traceparent) put({ name: 'TRACEPARENT', value: spec.traceparent });
  put({ name: 'SPAWNGATE_WORKER_TOKEN', valueFrom: { secretKeyRef: { name: secretNameOf(spec.spawnId), key: TOKEN_KEY, optional: false } } });
  put({ name: 'SPAWNGATE_AGENT_ID', value: spec.agentId });
  if (spec.agentCommand && spec.agentCommand.length > 0) put({ name: 'SPAWNGATE_AGENT_COMMAND', value: JSON.stringify(spec.agentCommand) });
  else env.delete('SPAWNGATE_AGENT_COMMAND');
  put({ name: 'SPAWNGATE_LISTEN', value: `0.0.0.0:${options.workerPort}` });
  put({ name: 'SPAWNGATE_SPAWN_ID', value: spec.spawnId });
  return [...env.values()];
}

function quantities(list: WorkerSpec['resources']['requests']): Record<string, string> {
  const out: Record<string, string> = {};
  if (list.cpu) out['cpu'] = list.cpu;
  if (list.memory) out['memory'] = list.memory;
  if (list.ephemeralStorage) out['ephemeral-storage'] = list.ephemeralStorage;
  return out;
}

/** The worker pod's securityContext: PodSecurity "restricted" and the image's own uid. A fresh object per call. */
export function hardenedPodSecurityContext(): V1PodSecurityContext {
  return { runAsNonRoot: true, runAsUser: WORKER_UID, runAsGroup: WORKER_UID, fsGroup: WORKER_UID, seccompProfile: { type: 'RuntimeDefault' } };
}

/** The worker container's securityContext: no privilege, no capability, a read-only root filesystem. A fresh object per call. */
export function hardenedContainerSecurityContext(): V1SecurityContext {
  return { allowPrivilegeEscalation: false, privileged: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ['ALL'] } };
}

export function buildPodManifest(spec: WorkerSpec, options: ManifestOptions): V1Pod {
  checkSpec(spec, options);
  const labels = workerLabels(spec, options);
  const requests = quantities(spec.resources.requests);
  const limits = quantities(spec.resources.limits);
  if (spec.resources.gpu > 0) limits['nvidia.com/gpu'] = String(spec.resources.gpu);

  const volumes: V1Volume[] = [{ name: 'tmp', emptyDir: {} }];
  const mounts: V1VolumeMount[] = [{ name: 'tmp', mountPath: '/tmp' }];
  const workspace = spec.workspace;
  // HOME apart from the workspace: an agent's dotfiles and caches are not the work.
  volumes.push({ name: 'home', emptyDir: {} });
  mounts.push({ name: 'home', mountPath: HOME_MOUNT });
  if (workspace.strategy === 'ephemeral' || workspace.strategy === 'git') {
    // git: the worker clones into this fresh emptyDir before the agent starts.
    volumes.push({ name: 'workspace', emptyDir: workspace.sizeLimit ? { sizeLimit: workspace.sizeLimit } : {} });
  } else if (workspace.strategy === 'volume' && workspace.claimName) {
    // A claim's size is the claim's; sizeLimit only applies to emptyDir.
    volumes.push({ name: 'workspace', persistentVolumeClaim: { claimName: workspace.claimName } });
  }
  const hasWorkspace = volumes.some((v) => v.name === 'workspace');
  if (hasWorkspace) mounts.push({ name: 'workspace', mountPath: WORKSPACE_MOUNT });

  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: podNameOf(spec.spawnId), namespace: options.namespace, labels, annotations: annotations(spec) },
    spec: {
      restartPolicy: 'Never',
      activeDeadlineSeconds: spec.timeoutSeconds,
      terminationGracePeriodSeconds: TERMINATION_GRACE_SECONDS,
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      ...(spec.runtimeClassName ? { runtimeClassName: spec.runtimeClassName } : {}),
      ...(Object.keys(spec.nodeSelector).length > 0 ? { nodeSelector: { ...spec.nodeSelector } } : {}),
      ...(spec.tolerations.length > 0 ? { tolerations: spec.tolerations.map((t) => ({ ...t })) } : {}),
      securityContext: hardenedPodSecurityContext(),
      containers: [
        {
          name: WORKER_CONTAINER,
          image: spec.image ?? options.defaultImage,
          imagePullPolicy: 'IfNotPresent',
          ...(spec.command ? { command: [...spec.command] } : {}),
          ...(spec.args ? { args: [...spec.args] } : {}),
          ...(hasWorkspace ? { workingDir: WORKSPACE_MOUNT } : {}),
          ports: [{ name: 'worker', containerPort: options.workerPort, protocol: 'TCP' }],
          env: workerEnv(spec, options),
          resources: { ...(Object.keys(requests).length > 0 ? { requests } : {}), ...(Object.keys(limits).length > 0 ? { limits } : {}) },
          // An httpGet probe would need the bearer token; "accepts TCP" is what the kubelet can check,
          // and the gateway's own /healthz call (with the token) decides readiness for spawngate.
          // running() waits for Ready: a short period keeps that wait close to the worker's own start.
          readinessProbe: { tcpSocket: { port: options.workerPort }, periodSeconds: 1, failureThreshold: 3 },
          securityContext: hardenedContainerSecurityContext(),
          volumeMounts: mounts,
        },
      ],
      volumes,
    },
  };
}

/** The token Secret; `owner` is the created Pod (its uid exists only after create), null for a dry run. */
export function buildTokenSecret(spec: WorkerSpec, options: ManifestOptions, owner: { name: string; uid: string } | null): V1Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: secretNameOf(spec.spawnId),
      namespace: options.namespace,
      labels: workerLabels(spec, options),
      annotations: annotations(spec),
      ...(owner ? { ownerReferences: [{ apiVersion: 'v1', kind: 'Pod', name: owner.name, uid: owner.uid }] } : {}),
    },
    type: 'Opaque',
    immutable: true,
    data: { [TOKEN_KEY]: Buffer.from(spec.token, 'utf8').toString('base64') },
  };
}

function proxyPeers(proxy: KubernetesProxyOptions): V1NetworkPolicyPeer[] {
  if ('cidr' in proxy.to) return [{ ipBlock: { cidr: proxy.to.cidr } }];
  return [
    {
      podSelector: { matchLabels: { ...proxy.to.podSelector } },
      ...(proxy.to.namespace ? { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': proxy.to.namespace } } } : {}),
    },
  ];
}

/** Deny-all egress (none) or egress to the proxy only (proxy); ingress only on the worker port. null for "open". */
export function buildNetworkPolicy(spec: WorkerSpec, options: ManifestOptions): V1NetworkPolicy | null {
  if (spec.egress === 'open') return null;
  const egress: V1NetworkPolicyEgressRule[] = [];
  if (spec.egress === 'proxy') {
    egress.push({ to: proxyPeers(options.proxy), ports: [{ protocol: 'TCP', port: options.proxy.port }] });
    if (options.proxy.dns !== false) {
      egress.push({
        to: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'kube-system' } }, podSelector: { matchLabels: { 'k8s-app': 'kube-dns' } } }],
        ports: [
          { protocol: 'UDP', port: 53 },
          { protocol: 'TCP', port: 53 },
        ],
      });
    }
  }
  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: networkPolicyNameOf(spec.spawnId), namespace: options.namespace, labels: workerLabels(spec, options), annotations: annotations(spec) },
    spec: {
      podSelector: { matchLabels: { [LABELS.spawnId]: spec.spawnId } },
      policyTypes: ['Ingress', 'Egress'],
      // No `from`: any source, but only this port (the gateway may be anywhere in the cluster).
      ingress: [{ ports: [{ protocol: 'TCP', port: options.workerPort }] }],
      // An empty list under policyTypes Egress denies every packet out of the pod.
      egress,
    },
  };
}

export function buildWorkerManifests(spec: WorkerSpec, options: ManifestOptions): WorkerManifests {
  const pod = buildPodManifest(spec, options);
  return {
    podName: podNameOf(spec.spawnId),
    secretName: secretNameOf(spec.spawnId),
    networkPolicy: buildNetworkPolicy(spec, options),
    pod,
    labels: workerLabels(spec, options),
  };
}
