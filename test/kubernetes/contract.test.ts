/**
 * The backend contract suite on the real test cluster (kube-apiserver, scheduler, one real node
 * with kubelet, containerd and kube-router), as the restricted `spawngate` ServiceAccount of
 * deploy/rbac.yaml.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll } from 'vitest';
import { describeBackendContract } from '../contract/backend-contract.js';
import { adminOnNode, CONTRACT_IMAGE, CONTROL_PLANE_START_TIMEOUT_MS, FIXTURE_COMMAND } from './cluster.js';

// Known before the plane is up, because the suite is declared at collection time: k8s-up.sh writes
// the ServiceAccount kubeconfig to a fixed place in its state dir.
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const stateDir = process.env['SPAWNGATE_K8S_STATE_DIR'] ?? join(repoRoot, '.cache', 'k8s');
const namespace = process.env['SPAWNGATE_K8S_NAMESPACE'] ?? 'spawngate-test';

beforeAll(async () => {
  const a = await adminOnNode();
  if (a.plane.namespace !== namespace) throw new Error(`k8s-up.sh uses namespace ${a.plane.namespace}, expected ${namespace}`);
}, CONTROL_PLANE_START_TIMEOUT_MS);

describeBackendContract({
  name: 'k8s',
  backend: { type: 'kubernetes', namespace, kubeconfig: join(stateDir, 'spawngate.kubeconfig') },
  fixtureCommand: FIXTURE_COMMAND as string[],
  profileBase: {
    image: CONTRACT_IMAGE,
    resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } },
    egress: 'none',
  },
  // The same pod shape when the suite drives the Backend directly.
  workerSpec: {
    image: CONTRACT_IMAGE,
    resources: { requests: { cpu: '100m', memory: '128Mi', ephemeralStorage: null }, limits: { cpu: null, memory: '512Mi', ephemeralStorage: null }, gpu: 0 },
  },
  egressModes: ['none', 'open'],
});
