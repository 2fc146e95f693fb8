/**
 * Shared by the Kubernetes test files: the real control plane (scripts/k8s-up.sh, reused when it
 * already runs), admin clients, throwaway namespaces that enforce PodSecurity "restricted", and a
 * WorkerSpec builder. A plane that cannot be built or started fails the tests; nothing skips.
 */
import { testWorkerSpec } from '../helpers/worker-spec.js';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as k8s from '@kubernetes/client-node';
import type { WorkerSpec } from '../../src/backends/types.js';
import { LABELS } from '../../src/backends/types.js';
import { startCluster, startControlPlane, type ControlPlane, type TestNode } from '../k8s-infra/global-setup.js';
import { CONTRACT_IMAGE, ensureNodeImage, fixtureInImage } from './node-images.js';

export { CONTROL_PLANE_START_TIMEOUT_MS } from '../k8s-infra/global-setup.js';

export interface Admin {
  plane: ControlPlane;
  kc: k8s.KubeConfig;
  core: k8s.CoreV1Api;
  rbac: k8s.RbacAuthorizationV1Api;
  networking: k8s.NetworkingV1Api;
}

/** Starts (or reuses) the plane. It is never stopped here: other test files may be using it. */
export async function admin(): Promise<Admin> {
  const plane = await startControlPlane();
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(plane.adminKubeconfig);
  return { plane, kc, core: kc.makeApiClient(k8s.CoreV1Api), rbac: kc.makeApiClient(k8s.RbacAuthorizationV1Api), networking: kc.makeApiClient(k8s.NetworkingV1Api) };
}

/**
 * The plane with its real node up (kubelet, containerd, CNI and the NetworkPolicy enforcer) and
 * the contract image in the node's containerd, for files whose pods must really run.
 */
export async function adminOnNode(): Promise<Admin & { node: TestNode }> {
  const cluster = await startCluster();
  await ensureNodeImage(cluster.node);
  return { ...(await admin()), node: cluster.node };
}

/** Polls `check` until it returns a value other than undefined; bounded. */
export async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(150);
  }
}

/** A fresh namespace enforcing PodSecurity "restricted"; pods are admitted once its default ServiceAccount exists. */
export async function restrictedNamespace(a: Admin, prefix: string): Promise<string> {
  const name = `${prefix}-${randomBytes(3).toString('hex')}`;
  await a.core.createNamespace({
    body: {
      metadata: {
        name,
        labels: { 'pod-security.kubernetes.io/enforce': 'restricted', 'pod-security.kubernetes.io/enforce-version': 'latest', 'spawngate.io/test': 'true' },
      },
    },
  });
  await eventually(`ServiceAccount default in ${name}`, () =>
    a.core.readNamespacedServiceAccount({ name: 'default', namespace: name }).then(
      () => true,
      () => undefined,
    ),
  );
  return name;
}

export async function deleteNamespace(a: Admin, name: string): Promise<void> {
  await a.core.deleteNamespace({ name }).catch(() => undefined);
}

/**
 * A ServiceAccount in `namespace` bound to a Role with exactly `rules`, and a kubeconfig file
 * holding a fresh token of it (TokenRequest), written under `dir`.
 */
export async function serviceAccountKubeconfig(a: Admin, namespace: string, saName: string, rules: k8s.V1PolicyRule[], dir: string): Promise<string> {
  await a.core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: saName } } });
  await a.rbac.createNamespacedRole({ namespace, body: { metadata: { name: saName }, rules } });
  await a.rbac.createNamespacedRoleBinding({
    namespace,
    body: { metadata: { name: saName }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: saName }, subjects: [{ kind: 'ServiceAccount', name: saName, namespace }] },
  });
  const request = await a.core.createNamespacedServiceAccountToken({ name: saName, namespace, body: { spec: { audiences: [], expirationSeconds: 3600 } } });
  const token = request.status?.token;
  if (!token) throw new Error('TokenRequest returned no token');
  const cluster = a.kc.getCurrentCluster();
  if (!cluster) throw new Error('admin kubeconfig has no cluster');
  const ca = cluster.caData ?? (cluster.caFile ? (await import('node:fs')).readFileSync(cluster.caFile).toString('base64') : undefined);
  const file = join(dir, `${saName}.kubeconfig`);
  const config = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'test', cluster: { server: cluster.server, ...(ca ? { 'certificate-authority-data': ca } : {}) } }],
    users: [{ name: saName, user: { token } }],
    contexts: [{ name: saName, context: { cluster: 'test', user: saName, namespace } }],
    'current-context': saName,
  };
  await writeFile(file, JSON.stringify(config), { mode: 0o600 });
  return file;
}

/** Objects of one spawn still in the namespace, by kind, as seen by the admin. */
export async function leftovers(a: Admin, namespace: string, spawnId: string): Promise<string[]> {
  const labelSelector = `${LABELS.spawnId}=${spawnId}`;
  const [pods, secrets, policies] = await Promise.all([
    a.core.listNamespacedPod({ namespace, labelSelector }),
    a.core.listNamespacedSecret({ namespace, labelSelector }),
    a.networking.listNamespacedNetworkPolicy({ namespace, labelSelector }),
  ]);
  return [
    ...pods.items.map((o) => `pod/${o.metadata?.name}`),
    ...secrets.items.map((o) => `secret/${o.metadata?.name}`),
    ...policies.items.map((o) => `networkpolicy/${o.metadata?.name}`),
  ];
}

/** The ACP fixture agent, where the contract image carries it. */
export const FIXTURE_COMMAND: readonly string[] = ['/usr/local/bin/node', fixtureInImage];
export { CONTRACT_IMAGE };

export function workerSpec(overrides: Partial<WorkerSpec> = {}): WorkerSpec {
  return testWorkerSpec(
    {
      owner: 'k8s-test',
      backendName: 'k8s-test',
      agentId: 'fixture',
      agentCommand: FIXTURE_COMMAND,
      image: CONTRACT_IMAGE,
      resources: { requests: { cpu: '100m', memory: '128Mi', ephemeralStorage: null }, limits: { cpu: null, memory: '512Mi', ephemeralStorage: null }, gpu: 0 },
      workspace: { strategy: 'ephemeral', sizeLimit: '1Gi' },
    },
    overrides,
  );
}
