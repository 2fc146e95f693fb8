// The test cluster's one real node (scripts/k8s-node-up.sh): a kubelet with a private containerd
// and a bridge CNI. Everything goes through the real API with the admin kubeconfig: the pods run
// the worker image in the PodSecurity "restricted" namespace, so they are hardened like
// spawngate's own workers. Fails, in CI and locally alike, when the node cannot be started; it is
// skipped only off CI on a machine that cannot run a node at all (not Linux, not root).
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { CoreV1Api, KubeConfig, type V1ContainerStateTerminated, type V1Pod } from '@kubernetes/client-node';
import {
  CONTROL_PLANE_START_TIMEOUT_MS,
  nodeUnsupportedReason,
  startCluster,
  stopControlPlane,
  stopNode,
  type Cluster,
} from './global-setup.js';
import { hardenedContainerSecurityContext, hardenedPodSecurityContext, WORKER_UID } from '../../src/backends/kubernetes/manifest.js';

const WAIT_TIMEOUT_MS = 120_000;
const PORT = 8080;
const unsupported = process.env.CI === 'true' ? null : nodeUnsupportedReason();

/** Polls until `check` returns a value; bounded by WAIT_TIMEOUT_MS. */
async function waitFor<T>(what: string, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + WAIT_TIMEOUT_MS;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${WAIT_TIMEOUT_MS} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

/** A pod of the worker image, hardened as spawngate's own workers (PodSecurity "restricted"), running `node -e <script>`. */
function workerPod(name: string, script: string, memoryLimit: string, extra: Partial<V1Pod['spec']> = {}): V1Pod {
  return {
    metadata: { name, labels: { 'spawngate.io/test': 'k8s-infra-node' } },
    spec: {
      restartPolicy: 'Never',
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: 2,
      securityContext: hardenedPodSecurityContext(),
      containers: [
        {
          name: 'worker',
          // Imported into the node's containerd by k8s-node-up.sh: there is no registry.
          image: 'spawngate-worker:test',
          imagePullPolicy: 'Never',
          command: ['/usr/local/bin/node', '-e', script],
          resources: { limits: { cpu: '500m', memory: memoryLimit }, requests: { cpu: '50m', memory: memoryLimit } },
          securityContext: hardenedContainerSecurityContext(),
        },
      ],
      ...extra,
    },
  };
}

const HEALTH_SERVER = `
const http = require('node:http');
http.createServer((req, res) => {
  res.writeHead(req.url === '/healthz' ? 200 : 404, { 'content-type': 'text/plain' });
  res.end(req.url === '/healthz' ? 'ok from ' + process.env.HOSTNAME : 'not found');
}).listen(${PORT}, '0.0.0.0', () => console.log('k8s-infra-node: listening on ${PORT} as uid ' + process.getuid()));
process.on('SIGTERM', () => process.exit(0));
`;

// Buffer.alloc fills the memory, so all 128 MiB become resident and the cgroup limit bites.
const MEMORY_HOG = `
console.log('k8s-infra-node: allocating 128 MiB');
const chunks = [];
for (let i = 0; i < 16; i++) chunks.push(Buffer.alloc(8 * 1024 * 1024, i + 1));
console.log('k8s-infra-node: allocated ' + chunks.length * 8 + ' MiB (the limit did not hold)');
`;

let cluster: Cluster;
/** False when globalSetup handed the cluster over: then its teardown decides what to stop. */
let ownCluster = false;
let admin: CoreV1Api;
let namespace: string;
const created: string[] = [];

async function createPod(pod: V1Pod): Promise<string> {
  const name = pod.metadata?.name;
  if (name === undefined) throw new Error('pod without a name');
  await admin.createNamespacedPod({ namespace, body: pod });
  created.push(name);
  return name;
}

async function readPod(name: string): Promise<V1Pod> {
  return admin.readNamespacedPod({ name, namespace });
}

describe.skipIf(unsupported !== null)(`test node${unsupported === null ? '' : ` (skipped: ${unsupported})`}`, () => {
  beforeAll(async () => {
    // The cluster globalSetup started, if it did; else (another project, a direct run) our own.
    const provided = inject('k8sCluster');
    ownCluster = provided === null || provided === undefined;
    cluster = provided ?? (await startCluster());
    namespace = cluster.namespace;
    const kc = new KubeConfig();
    kc.loadFromFile(cluster.adminKubeconfig);
    admin = kc.makeApiClient(CoreV1Api);
  }, CONTROL_PLANE_START_TIMEOUT_MS);

  afterAll(async () => {
    if (cluster === undefined) return;
    await Promise.all(
      created.map((name) =>
        admin.deleteNamespacedPod({ name, namespace, gracePeriodSeconds: 0 }).catch(() => undefined),
      ),
    );
    if (!ownCluster || process.env.SPAWNGATE_K8S_KEEP === '1') return;
    // Only what this file started is stopped; a reused plane or node belongs to someone else.
    if (!cluster.reused) await stopControlPlane();
    else if (!cluster.node.reused) await stopNode();
  }, 3 * 60_000);

  it('registers a Ready node with the address of the default route', async () => {
    const node = await admin.readNode({ name: cluster.node.name });
    const ready = node.status?.conditions?.find((c) => c.type === 'Ready');
    expect(ready?.status).toBe('True');
    expect(node.status?.addresses).toContainEqual({ type: 'InternalIP', address: cluster.node.ip });
    expect(node.status?.nodeInfo?.kubeletVersion).toBe(cluster.version);
    expect(node.status?.nodeInfo?.containerRuntimeVersion).toMatch(/^containerd:\/\//);
  });

  describe('a hardened worker-image pod serving /healthz', () => {
    let podName: string;
    let podIp: string;

    beforeAll(async () => {
      podName = await createPod(
        workerPod(uniqueName('healthz'), HEALTH_SERVER, '128Mi', {
          containers: [
            {
              ...workerPod('x', HEALTH_SERVER, '128Mi').spec!.containers[0]!,
              ports: [{ name: 'http', containerPort: PORT, protocol: 'TCP' }],
              readinessProbe: { httpGet: { path: '/healthz', port: PORT }, periodSeconds: 1, failureThreshold: 3 },
            },
          ],
        }),
      );
      const ready = await waitFor(`pod ${podName} Ready`, async () => {
        const pod = await readPod(podName);
        const waiting = pod.status?.containerStatuses?.[0]?.state?.waiting;
        // An image or runtime error never heals: fail with the kubelet's reason instead of a timeout.
        if (waiting?.reason !== undefined && /Err|Invalid|BackOff/.test(waiting.reason)) {
          throw new Error(`pod ${podName} cannot start: ${waiting.reason}: ${waiting.message ?? ''}`);
        }
        if (pod.status?.phase === 'Failed') throw new Error(`pod ${podName} failed: ${JSON.stringify(pod.status)}`);
        return pod.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ? pod : undefined;
      });
      podIp = ready.status?.podIP ?? '';
    }, WAIT_TIMEOUT_MS + 10_000);

    it('becomes Ready through the httpGet readiness probe, on the node, in the pod subnet', async () => {
      const pod = await readPod(podName);
      expect(pod.spec?.nodeName).toBe(cluster.node.name);
      const prefix = cluster.node.podCidr.replace(/\.0\/24$/, '.');
      expect(podIp.startsWith(prefix)).toBe(true);
    });

    it('serves its output through pods/log', async () => {
      const log = await admin.readNamespacedPodLog({ name: podName, namespace, container: 'worker' });
      expect(log).toContain(`k8s-infra-node: listening on ${PORT} as uid ${WORKER_UID}`);
    });

    it('answers on its pod IP from the host', async () => {
      const response = await fetch(`http://${podIp}:${PORT}/healthz`, { signal: AbortSignal.timeout(10_000) });
      expect(response.status).toBe(200);
      expect(await response.text()).toBe(`ok from ${podName}`);
    });
  });

  it('OOM-kills a container that allocates 128 MiB under a 32Mi limit (exit 137)', async () => {
    const name = await createPod(workerPod(uniqueName('oom'), MEMORY_HOG, '32Mi'));
    const terminated = await waitFor<V1ContainerStateTerminated>(`pod ${name} terminated`, async () => {
      const pod = await readPod(name);
      return pod.status?.containerStatuses?.[0]?.state?.terminated ?? undefined;
    });
    expect({ reason: terminated.reason, exitCode: terminated.exitCode }).toEqual({ reason: 'OOMKilled', exitCode: 137 });
    const pod = await waitFor(`pod ${name} phase Failed`, async () => {
      const current = await readPod(name);
      return current.status?.phase === 'Failed' ? current : undefined;
    });
    expect(pod.status?.phase).toBe('Failed');
    // Node itself fits in 32Mi: the kill came from the allocation, not from starting up.
    const log = await admin.readNamespacedPodLog({ name, namespace, container: 'worker' });
    expect(log).toContain('k8s-infra-node: allocating 128 MiB');
    expect(log).not.toContain('the limit did not hold');
  }, WAIT_TIMEOUT_MS + 10_000);
});
