/**
 * Fault injection on the Kubernetes backend (issue 7, item 8): kill -9 of `spawngate serve`
 * (kubernetes backend on the real test cluster — kube-apiserver, scheduler, one real node with
 * kubelet and containerd —, Redis store) at chosen and random instants while 2-3 spawns are on
 * their way, then a survivor of the same owner group. After the dead instance's leases lapsed and
 * one sweep, nothing of that owner may be left: no Pod, no Secret, no NetworkPolicy with its owner
 * label, and no slot in Redis.
 *
 * Workers run with egress none, so create() makes three objects in this order: the NetworkPolicy,
 * the Pod, then its token Secret (owned by the pod). The kill instants (see
 * test/docker/faults-helpers.ts): the first lease (nothing made yet), the first NetworkPolicy
 * (create under way), the first Pod added, the first Pod running (both between create and ready), a
 * random instant, and a moment after the first 201.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import type { V1Pod } from '@kubernetes/client-node';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { createKubernetesBackend } from '../../src/backends/kubernetes/index.js';
import { LABELS } from '../../src/backends/types.js';
import type { EngineObject, FaultTarget, KillMode, SuiteContext, TrialEnv } from '../docker/faults-helpers.js';
import { expectSuite, runSuite } from '../docker/faults-helpers.js';
import { ensureRedis, rawClient } from '../redis/server.js';
import { adminOnNode, CONTRACT_IMAGE, CONTROL_PLANE_START_TIMEOUT_MS, deleteNamespace, FIXTURE_COMMAND, restrictedNamespace, type Admin } from './cluster.js';

const BACKEND = 'cluster';

let a: Admin;
let namespace = '';
let ctx: SuiteContext;
let raw: Redis | undefined;
let cache = '';

const selector = (env: TrialEnv) => `${LABELS.owner}=${env.owner}`;

function isNotFound(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === 404;
}

function podState(pod: V1Pod): string {
  const phase = pod.status?.phase ?? 'Pending';
  const node = pod.spec?.nodeName ? `, on ${pod.spec.nodeName}` : ', unbound';
  return `${phase}${node}${pod.metadata?.deletionTimestamp ? ', terminating' : ''}`;
}

const target: FaultTarget = {
  suite: 'k8s-kill-serve',
  backendName: BACKEND,
  agentId: 'fixture',
  agentsExtra: { acp: { fixture: { command: [...FIXTURE_COMMAND] } } },
  backendConfig: () => ({
    type: 'kubernetes',
    namespace,
    kubeconfig: a.plane.adminKubeconfig,
    defaultProfile: 'small',
    profiles: {
      small: {
        image: CONTRACT_IMAGE,
        egress: 'none',
        ttlSeconds: 600,
        timeoutSeconds: 180,
        resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } },
      },
    },
  }),

  async census(env) {
    const labelSelector = selector(env);
    const [pods, secrets, policies] = await Promise.all([
      a.core.listNamespacedPod({ namespace, labelSelector }),
      a.core.listNamespacedSecret({ namespace, labelSelector }),
      a.networking.listNamespacedNetworkPolicy({ namespace, labelSelector }),
    ]);
    const spawnIdOf = (o: { metadata?: { labels?: Record<string, string> } }) => o.metadata?.labels?.[LABELS.spawnId] ?? null;
    const objects: EngineObject[] = [
      ...pods.items.map((p) => ({ kind: 'pod', name: p.metadata?.name ?? '?', spawnId: spawnIdOf(p), primary: true, state: podState(p) })),
      ...secrets.items.map((s) => ({ kind: 'secret', name: s.metadata?.name ?? '?', spawnId: spawnIdOf(s), primary: false, state: null })),
      ...policies.items.map((p) => ({ kind: 'networkpolicy', name: p.metadata?.name ?? '?', spawnId: spawnIdOf(p), primary: false, state: null })),
    ];
    return objects;
  },

  async listed(env) {
    const backend = createKubernetesBackend({ name: BACKEND, namespace, kubeconfig: a.plane.adminKubeconfig });
    try {
      return (await backend.list({ [LABELS.owner]: env.owner })).map((w) => w.ref.spawnId);
    } finally {
      await backend.close?.();
    }
  },

  async watch(env, event, onFirst) {
    const paths: Record<string, string> = {
      networkpolicy: `/apis/networking.k8s.io/v1/namespaces/${namespace}/networkpolicies`,
      pod: `/api/v1/namespaces/${namespace}/pods`,
      'pod-running': `/api/v1/namespaces/${namespace}/pods`,
    };
    const path = paths[event];
    if (!path) throw new Error(`unknown kubernetes event ${event}`);
    let done = false;
    const controller = await new k8s.Watch(a.kc).watch(
      path,
      { labelSelector: selector(env) },
      (type: string, object: V1Pod) => {
        if (done || (type !== 'ADDED' && type !== 'MODIFIED')) return;
        if (event === 'pod-running' && object.status?.phase !== 'Running') return;
        done = true;
        onFirst(`${event} ${object.metadata?.name ?? ''}`);
      },
      () => undefined,
    );
    return () => controller.abort();
  },

  async forceRemove(env) {
    const objects = await target.census(env);
    for (const o of objects) {
      const remove =
        o.kind === 'pod'
          ? () => a.core.deleteNamespacedPod({ name: o.name, namespace, gracePeriodSeconds: 0 })
          : o.kind === 'secret'
            ? () => a.core.deleteNamespacedSecret({ name: o.name, namespace })
            : () => a.networking.deleteNamespacedNetworkPolicy({ name: o.name, namespace });
      await remove().catch((err: unknown) => {
        if (!isNotFound(err)) throw err;
      });
    }
    return objects.map((o) => `${o.kind}/${o.name}${o.state ? ` (${o.state})` : ''}`);
  },
};

const TRIALS: readonly KillMode[] = [
  { kind: 'lease' },
  { kind: 'event', event: 'pod' },
  { kind: 'ready', jitterMs: 300 },
  { kind: 'event', event: 'networkpolicy' },
  { kind: 'random', maxMs: 4_000 },
  { kind: 'event', event: 'pod-running' },
  { kind: 'random', maxMs: 4_000 },
  { kind: 'random', maxMs: 4_000 },
];

beforeAll(async () => {
  a = await adminOnNode();
  namespace = await restrictedNamespace(a, 'sg-faults');
  const redisUrl = await ensureRedis();
  raw = await rawClient();
  cache = mkdtempSync(join(tmpdir(), 'sgf-cc-'));
  ctx = { redisUrl, raw, compileCache: cache };
}, CONTROL_PLANE_START_TIMEOUT_MS);

afterAll(async () => {
  if (a && namespace) await deleteNamespace(a, namespace);
  await raw?.quit();
  if (cache) rmSync(cache, { recursive: true, force: true });
}, 120_000);

describe('fault injection: kill -9 of serve during spawns (Kubernetes backend, Redis)', () => {
  it(`${TRIALS.length} trials: after one lease period and one sweep, 0 Pods, Secrets, NetworkPolicies and slots`, { timeout: 480_000 }, async () => {
    const outcome = await runSuite(target, ctx, {
      modes: TRIALS,
      parallel: 2,
      serveSurvivors: [4],
      maxExtraTrials: 2,
      aim: { beforeCreate: { kind: 'lease' }, createdNotReady: { kind: 'event', event: 'pod' }, ready: { kind: 'ready', jitterMs: 300 } },
    });
    expectSuite(outcome, TRIALS.length);
  });
});
