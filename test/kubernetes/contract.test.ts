/**
 * The backend contract suite on the real kube-apiserver, as the restricted `spawngate`
 * ServiceAccount of deploy/rbac.yaml, with the test node agent running the pods as local processes.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll } from 'vitest';
import { describeBackendContract } from '../contract/backend-contract.js';
import { NODE_AGENT_LABEL, startNodeAgent, type NodeAgent } from '../k8s-node-agent/node-agent.js';
import { admin, CONTROL_PLANE_START_TIMEOUT_MS, FIXTURE_COMMAND } from './cluster.js';

// Known before the plane is up, because the suite is declared at collection time: k8s-up.sh writes
// the ServiceAccount kubeconfig to a fixed place in its state dir.
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const stateDir = process.env['SPAWNGATE_K8S_STATE_DIR'] ?? join(repoRoot, '.cache', 'k8s');
const namespace = process.env['SPAWNGATE_K8S_NAMESPACE'] ?? 'spawngate-test';
const nodeName = `sg-contract-${randomBytes(3).toString('hex')}`;
let agent: NodeAgent | undefined;

beforeAll(async () => {
  const a = await admin();
  if (a.plane.namespace !== namespace) throw new Error(`k8s-up.sh uses namespace ${a.plane.namespace}, expected ${namespace}`);
  agent = await startNodeAgent({ kubeconfig: a.plane.adminKubeconfig, nodeName });
}, CONTROL_PLANE_START_TIMEOUT_MS);

afterAll(async () => {
  await agent?.stop();
}, 60_000);

// Only pods that carry these land on this file's node agent.
const placement = {
  nodeSelector: { [NODE_AGENT_LABEL]: nodeName },
  tolerations: [{ key: NODE_AGENT_LABEL, operator: 'Equal' as const, value: nodeName, effect: 'NoSchedule' as const }],
};

describeBackendContract({
  name: 'k8s',
  backend: { type: 'kubernetes', namespace, kubeconfig: join(stateDir, 'spawngate.kubeconfig') },
  fixtureCommand: FIXTURE_COMMAND as string[],
  profileBase: {
    image: 'spawngate-worker:contract',
    ...placement,
    resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } },
    egress: 'none',
  },
  // The same pod shape when the suite drives the Backend directly.
  workerSpec: {
    image: 'spawngate-worker:contract',
    ...placement,
    resources: { requests: { cpu: '100m', memory: '128Mi', ephemeralStorage: null }, limits: { cpu: null, memory: '512Mi', ephemeralStorage: null }, gpu: 0 },
  },
  egressModes: ['none', 'open'],
});
