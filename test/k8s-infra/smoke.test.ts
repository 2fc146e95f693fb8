// Smoke test of the test control plane itself (scripts/k8s-up.sh): a real
// kube-apiserver with RBAC and PodSecurity, a scheduler and a controller-manager.
// It fails, in CI and locally alike, when the plane cannot be built or started.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ApiException,
  AuthorizationV1Api,
  CoreV1Api,
  KubeConfig,
  VersionApi,
  type V1Pod,
  type V1ResourceAttributes,
} from '@kubernetes/client-node';
import {
  CONTROL_PLANE_START_TIMEOUT_MS,
  startControlPlane,
  stopControlPlane,
  type ControlPlane,
} from './global-setup.js';

const WAIT_TIMEOUT_MS = 60_000;

interface ApiStatus {
  readonly code: number;
  readonly reason?: string;
  readonly message?: string;
}

/** The HTTP status and Kubernetes Status body of a failed call. */
function apiStatus(error: unknown): ApiStatus {
  if (!(error instanceof ApiException)) throw error;
  const code = (error as ApiException<unknown>).code;
  const body: unknown = (error as ApiException<unknown>).body;
  if (typeof body !== 'string') return { code };
  try {
    const parsed = JSON.parse(body) as { reason?: string; message?: string };
    return { code, reason: parsed.reason, message: parsed.message };
  } catch {
    return { code, message: body };
  }
}

async function rejection(promise: Promise<unknown>): Promise<ApiStatus> {
  try {
    await promise;
  } catch (error) {
    return apiStatus(error);
  }
  throw new Error('expected the API call to be refused, but it succeeded');
}

/** Polls until `check` returns true; bounded by WAIT_TIMEOUT_MS. */
async function waitFor(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + WAIT_TIMEOUT_MS;
  for (;;) {
    if (await check()) return;
    if (Date.now() >= deadline) throw new Error(`timed out after ${WAIT_TIMEOUT_MS} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

async function isGone(read: () => Promise<unknown>): Promise<boolean> {
  try {
    await read();
    return false;
  } catch (error) {
    if (apiStatus(error).code === 404) return true;
    throw error;
  }
}

/**
 * What spawngate's workers look like: passes PodSecurity `restricted`. The node selector matches
 * no node, so these pods stay Pending even with the test node up: they only exercise the API.
 */
function hardenedPod(name: string): V1Pod {
  return {
    metadata: { name, labels: { 'spawngate.io/spawn-id': name } },
    spec: {
      nodeSelector: { 'spawngate.io/no-such-node': 'true' },
      automountServiceAccountToken: false,
      securityContext: {
        runAsNonRoot: true,
        runAsUser: 65532,
        seccompProfile: { type: 'RuntimeDefault' },
      },
      containers: [
        {
          name: 'worker',
          image: 'spawngate-worker:smoke',
          securityContext: {
            allowPrivilegeEscalation: false,
            capabilities: { drop: ['ALL'] },
            readOnlyRootFilesystem: true,
          },
        },
      ],
    },
  };
}

function privilegedPod(name: string): V1Pod {
  return {
    metadata: { name },
    spec: {
      containers: [{ name: 'worker', image: 'spawngate-worker:smoke', securityContext: { privileged: true } }],
    },
  };
}

function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

let plane: ControlPlane;
let adminKc: KubeConfig;
let admin: CoreV1Api;
let spawngate: CoreV1Api;
const smokeNamespace = uniqueName('k8s-infra-smoke');

async function createRestrictedNamespace(name: string): Promise<void> {
  await admin.createNamespace({
    body: { metadata: { name, labels: { 'pod-security.kubernetes.io/enforce': 'restricted' } } },
  });
  // Pod admission needs the namespace's `default` ServiceAccount, which only the
  // controller-manager creates.
  await waitFor(`ServiceAccount default in ${name}`, async () =>
    !(await isGone(() => admin.readNamespacedServiceAccount({ name: 'default', namespace: name }))),
  );
}

beforeAll(async () => {
  plane = await startControlPlane();
  adminKc = new KubeConfig();
  adminKc.loadFromFile(plane.adminKubeconfig);
  admin = adminKc.makeApiClient(CoreV1Api);
  const spawngateKc = new KubeConfig();
  spawngateKc.loadFromFile(plane.spawngateKubeconfig);
  spawngate = spawngateKc.makeApiClient(CoreV1Api);
  await createRestrictedNamespace(smokeNamespace);
}, CONTROL_PLANE_START_TIMEOUT_MS + WAIT_TIMEOUT_MS);

afterAll(async () => {
  // Only a plane this file started is stopped; a reused one belongs to someone else.
  if (plane === undefined) return;
  if (plane.reused || process.env.SPAWNGATE_K8S_KEEP === '1') {
    await admin.deleteNamespace({ name: smokeNamespace }).catch(() => undefined);
    return;
  }
  await stopControlPlane();
}, 3 * 60_000);

describe('test control plane', () => {
  it('serves the pinned Kubernetes release', async () => {
    const info = await adminKc.makeApiClient(VersionApi).getCode();
    expect(info.gitVersion).toBe(plane.version);
    expect(plane.version).toMatch(/^v1\.\d+\.\d+$/);
  });

  it('refuses a privileged pod in a namespace that enforces PodSecurity restricted', async () => {
    const status = await rejection(
      admin.createNamespacedPod({ namespace: smokeNamespace, body: privilegedPod(uniqueName('privileged')) }),
    );
    expect(status.code).toBe(403);
    expect(status.message).toContain('violates PodSecurity "restricted');
    expect(status.message).toContain('privileged');
  });

  it('admits a hardened pod there, and the scheduler finds no node matching its selector', async () => {
    const name = uniqueName('hardened');
    const created = await admin.createNamespacedPod({ namespace: smokeNamespace, body: hardenedPod(name) });
    expect(created.metadata?.uid).toBeTruthy();
    await waitFor(`scheduler verdict on ${name}`, async () => {
      const pod = await admin.readNamespacedPod({ name, namespace: smokeNamespace });
      const scheduled = pod.status?.conditions?.find((c) => c.type === 'PodScheduled');
      return scheduled?.status === 'False' && scheduled.reason === 'Unschedulable';
    });
    await admin.deleteNamespacedPod({ name, namespace: smokeNamespace });
  });

  it('garbage-collects a Secret owned by a deleted pod', async () => {
    const podName = uniqueName('owner');
    const pod = await admin.createNamespacedPod({ namespace: smokeNamespace, body: hardenedPod(podName) });
    const uid = pod.metadata?.uid;
    if (uid === undefined) throw new Error('created pod has no uid');
    const secretName = uniqueName('worker-token');
    await admin.createNamespacedSecret({
      namespace: smokeNamespace,
      body: {
        metadata: {
          name: secretName,
          ownerReferences: [{ apiVersion: 'v1', kind: 'Pod', name: podName, uid }],
        },
        stringData: { token: 'not-a-real-token' },
      },
    });
    await admin.deleteNamespacedPod({ name: podName, namespace: smokeNamespace });
    await waitFor(`garbage collection of Secret ${secretName}`, () =>
      isGone(() => admin.readNamespacedSecret({ name: secretName, namespace: smokeNamespace })),
    );
  });

  it('finalizes a deleted namespace together with its pods', async () => {
    const namespace = uniqueName('k8s-infra-doomed');
    await createRestrictedNamespace(namespace);
    await admin.createNamespacedPod({ namespace, body: hardenedPod(uniqueName('doomed')) });
    await admin.deleteNamespace({ name: namespace });
    await waitFor(`deletion of namespace ${namespace}`, () => isGone(() => admin.readNamespace({ name: namespace })));
  });
});

describe('spawngate ServiceAccount (deploy/rbac.yaml)', () => {
  async function canI(attributes: V1ResourceAttributes): Promise<boolean> {
    const kc = new KubeConfig();
    kc.loadFromFile(plane.spawngateKubeconfig);
    const review = await kc.makeApiClient(AuthorizationV1Api).createSelfSubjectAccessReview({
      body: { spec: { resourceAttributes: attributes } },
    });
    return review.status?.allowed === true;
  }

  it('creates and deletes a hardened pod in its own namespace', async () => {
    const name = uniqueName('spawned');
    await spawngate.createNamespacedPod({ namespace: plane.namespace, body: hardenedPod(name) });
    const listed = await spawngate.listNamespacedPod({
      namespace: plane.namespace,
      labelSelector: `spawngate.io/spawn-id=${name}`,
    });
    expect(listed.items.map((p) => p.metadata?.name)).toEqual([name]);
    await spawngate.deleteNamespacedPod({ name, namespace: plane.namespace });
  });

  it('is forbidden to create pods in any other namespace', async () => {
    const status = await rejection(
      spawngate.createNamespacedPod({ namespace: smokeNamespace, body: hardenedPod(uniqueName('elsewhere')) }),
    );
    expect(status.code).toBe(403);
    expect(status.reason).toBe('Forbidden');
    expect(status.message).toContain(`system:serviceaccount:${plane.namespace}:spawngate`);
    expect(await canI({ namespace: smokeNamespace, verb: 'create', resource: 'pods' })).toBe(false);
  });

  it('holds exactly the verbs its Role grants', async () => {
    const ns = plane.namespace;
    expect(await canI({ namespace: ns, verb: 'create', resource: 'pods' })).toBe(true);
    expect(await canI({ namespace: ns, verb: 'watch', resource: 'pods' })).toBe(true);
    expect(await canI({ namespace: ns, verb: 'get', resource: 'pods', subresource: 'log' })).toBe(true);
    expect(await canI({ namespace: ns, verb: 'list', resource: 'secrets' })).toBe(true);
    expect(
      await canI({ namespace: ns, verb: 'create', group: 'networking.k8s.io', resource: 'networkpolicies' }),
    ).toBe(true);

    // Failure reasons come from pod status; events are not needed (least privilege).
    expect(await canI({ namespace: ns, verb: 'list', resource: 'events' })).toBe(false);
    expect(await canI({ namespace: ns, verb: 'update', resource: 'pods' })).toBe(false);
    expect(await canI({ namespace: ns, verb: 'create', resource: 'pods', subresource: 'exec' })).toBe(false);
    expect(await canI({ namespace: ns, verb: 'update', resource: 'secrets' })).toBe(false);
    expect(await canI({ namespace: ns, verb: 'create', resource: 'serviceaccounts', subresource: 'token' })).toBe(
      false,
    );
    expect(await canI({ verb: 'list', resource: 'namespaces' })).toBe(false);
    expect(await canI({ namespace: ns, verb: 'create', group: 'rbac.authorization.k8s.io', resource: 'roles' })).toBe(
      false,
    );
  });
});
