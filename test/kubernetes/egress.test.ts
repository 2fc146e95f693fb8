/**
 * Egress on the real test node, enforced: spawngate's Kubernetes backend turns egress none and
 * proxy into NetworkPolicies, and kube-router's firewall (started with the node by
 * scripts/k8s-node-up.sh) enforces them. Each worker runs the ACP fixture agent, whose
 * `connect <host> <port>` makes a real TCP connection from inside the pod, to two pods of this
 * file — a "target" (an allowed test server) and a "proxy" — and to a listener on the node's
 * bridge address. Control: egress open reaches all of them, so a refusal elsewhere is the policy.
 */
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { V1Pod } from '@kubernetes/client-node';
import { createKubernetesBackend } from '../../src/backends/kubernetes/index.js';
import type { Backend, WorkerRef, WorkerSpec } from '../../src/backends/types.js';
import { createWorkerClient } from '../../src/protocol/client.js';
import { waitForWorker } from '../../src/sessions/readiness.js';
import { startCluster, type Cluster } from '../k8s-infra/global-setup.js';
import { say } from '../helpers/turns.js';
import { admin, CONTROL_PLANE_START_TIMEOUT_MS, deleteNamespace, eventually, leftovers, restrictedNamespace, workerSpec, type Admin } from './cluster.js';
import { CONTRACT_IMAGE, ensureNodeImage, fixtureInImage } from './node-images.js';

const run = promisify(execFile);
const SERVER_PORT = 8081;
const PROXY_PORT = 3128;
const PROXY_LABEL = { 'app.kubernetes.io/name': 'sg-test-egress-proxy' };

let a: Admin;
let cluster: Cluster;
let namespace: string;
let backend: Backend;
const refs: WorkerRef[] = [];
let target = '';
let proxy = '';
/** The node's own address on the pod bridge, where the host listens for this file. */
let bridgeAddress = '';
let hostListener: Server | undefined;

/** A pod that answers TCP on each port with its name, hardened for PodSecurity "restricted". */
function serverPod(name: string, labels: Record<string, string>, ports: number[]): V1Pod {
  // Probes (the kubelet's, the agent's) close at once: a reset must not end the server.
  const script = `for (const p of ${JSON.stringify(ports)}) require('node:net').createServer((s) => { s.on('error', () => {}); s.end('${name}\\n'); }).listen(p, '0.0.0.0');`;
  return {
    metadata: { name, labels: { 'spawngate.io/test': 'egress', ...labels } },
    spec: {
      restartPolicy: 'Never',
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: 1,
      securityContext: { runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [
        {
          name: 'server',
          image: CONTRACT_IMAGE,
          imagePullPolicy: 'IfNotPresent',
          command: ['/usr/local/bin/node', '-e', script],
          ports: ports.map((containerPort) => ({ containerPort })),
          readinessProbe: { tcpSocket: { port: ports[0] ?? SERVER_PORT }, periodSeconds: 1 },
          resources: { limits: { cpu: '200m', memory: '96Mi' }, requests: { cpu: '20m', memory: '96Mi' } },
          securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ['ALL'] } },
        },
      ],
    },
  };
}

async function readyPodIp(name: string): Promise<string> {
  return eventually(
    `pod ${name} Ready`,
    async () => {
      const pod = await a.core.readNamespacedPod({ name, namespace });
      const ready = pod.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True');
      return ready && pod.status?.podIP ? pod.status.podIP : undefined;
    },
    120_000,
  );
}

beforeAll(async () => {
  cluster = await startCluster();
  a = await admin();
  await ensureNodeImage(cluster.node);
  namespace = await restrictedNamespace(a, 'sg-egress');
  await a.core.createNamespacedPod({ namespace, body: serverPod('target', { role: 'target' }, [SERVER_PORT]) });
  // The proxy pod listens on two ports: the policy allows only the proxy port.
  await a.core.createNamespacedPod({ namespace, body: serverPod('proxy', { ...PROXY_LABEL }, [PROXY_PORT, SERVER_PORT]) });
  [target, proxy] = await Promise.all([readyPodIp('target'), readyPodIp('proxy')]);
  // The bridge's address: the pods' default gateway, i.e. the node itself as its pods see it.
  bridgeAddress = cluster.node.podCidr.replace(/\.0\/24$/, '.1');
  hostListener = createServer((s) => {
    // The probe closes at once; a reset then is expected, not an error of the test.
    s.on('error', () => undefined);
    s.end('node\n');
  });
  await new Promise<void>((resolve, reject) => {
    hostListener?.once('error', reject);
    hostListener?.listen(0, bridgeAddress, resolve);
  });
  backend = createKubernetesBackend({
    name: 'k8s-egress',
    namespace,
    kubeconfig: a.plane.adminKubeconfig,
    image: CONTRACT_IMAGE,
    proxy: { url: `http://${proxy}:${PROXY_PORT}`, port: PROXY_PORT, to: { podSelector: PROXY_LABEL }, dns: false },
  });
}, CONTROL_PLANE_START_TIMEOUT_MS);

afterAll(async () => {
  for (const ref of refs) await backend?.delete(ref).catch(() => undefined);
  await backend?.close?.();
  hostListener?.close();
  if (a && namespace) await deleteNamespace(a, namespace);
}, 120_000);

function spec(egress: WorkerSpec['egress']): WorkerSpec {
  return workerSpec({ egress, image: CONTRACT_IMAGE, agentId: 'fixture', agentCommand: ['/usr/local/bin/node', fixtureInImage] });
}

/**
 * Resolves once kube-router has programmed `policy` for the pod at `podIp`: NetworkPolicy is
 * applied asynchronously after a pod starts (on any cluster), and a probe made before that would
 * test the race, not the policy. Programmed means: the firewall sends the pod's traffic through a
 * chain that runs the policy, and every ipset the policy's rules match sources on holds the pod.
 */
async function enforced(podIp: string, policy: string): Promise<void> {
  await eventually(
    `kube-router to enforce ${policy} on ${podIp}`,
    async () => {
      const rules = (await run('iptables-save', ['-t', 'filter'])).stdout.split('\n');
      const chains = new Set(rules.filter((r) => r.includes(`run through nw policy ${policy}"`)).map((r) => r.split(' ')[1]));
      const routed = rules.some((r) => r.startsWith('-A KUBE-ROUTER-FORWARD ') && r.includes(` -s ${podIp}/32 `) && chains.has(r.split(' -j ')[1]?.trim()));
      if (!routed) return undefined;
      const policyChains = new Set(rules.filter((r) => chains.has(r.split(' ')[1]) && r.includes('-j KUBE-NWPLCY-')).map((r) => r.split(' -j ')[1]?.trim()));
      const sets = new Set(rules.filter((r) => policyChains.has(r.split(' ')[1])).flatMap((r) => [...r.matchAll(/--match-set (\S+) src/g)].map((m) => m[1])));
      for (const set of sets) {
        if (!set || !(await run('ipset', ['list', set])).stdout.split('\n').some((l) => l.startsWith(`${podIp} `))) return undefined;
      }
      return true;
    },
    60_000,
  );
}

/** What each destination answers from inside a worker of `egress`. */
async function reach(egress: WorkerSpec['egress']): Promise<Record<string, string>> {
  const s = spec(egress);
  const ref = await backend.create(s);
  refs.push(ref);
  const endpoint = await waitForWorker({ backend, ref, token: s.token, timeoutMs: 120_000 });
  if (egress !== 'open') await enforced(new URL(endpoint.baseUrl ?? '').hostname, `spawngate-${s.spawnId}-egress`);
  const client = createWorkerClient({ ...endpoint, token: s.token });
  const port = (hostListener?.address() as { port: number }).port;
  const outcome: Record<string, string> = {};
  for (const [name, host, p] of [
    ['target', target, SERVER_PORT],
    ['proxy', proxy, PROXY_PORT],
    ['proxy:other-port', proxy, SERVER_PORT],
    ['node', bridgeAddress, port],
  ] as const) {
    outcome[name] = await say(client, `connect ${host} ${p}`);
  }

  await backend.delete(ref);
  expect(await leftovers(a, namespace, s.spawnId)).toEqual([]);
  return outcome;
}

describe('egress on a real node, enforced by NetworkPolicy (kube-router)', () => {
  it('open reaches every destination (the control)', async () => {
    expect(await reach('open')).toEqual({ target: 'connect ok', proxy: 'connect ok', 'proxy:other-port': 'connect ok', node: 'connect ok' });
  }, 240_000);

  it('none cannot open any connection: not to a pod, not to the proxy, not to the node', async () => {
    const outcome = await reach('none');
    for (const [name, result] of Object.entries(outcome)) expect(result, name).toMatch(/^connect failed: /);
  }, 240_000);

  it('proxy reaches the proxy port of the proxy pods only', async () => {
    const outcome = await reach('proxy');
    expect(outcome.proxy).toBe('connect ok');
    for (const name of ['target', 'proxy:other-port', 'node']) expect(outcome[name], name).toMatch(/^connect failed: /);
  }, 240_000);
});

