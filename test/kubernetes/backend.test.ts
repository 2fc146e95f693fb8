/**
 * The kubernetes backend against the real test cluster — kube-apiserver, scheduler, and one real
 * node (kubelet, containerd, runc, bridge CNI, kube-router enforcing NetworkPolicy): failure
 * reasons as the kubelet reports them, API errors, and cleanup down to the last Secret and
 * NetworkPolicy.
 */
import { mkdtempSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKubernetesBackend, KUBERNETES_PERMISSIONS } from '../../src/backends/kubernetes/index.js';
import type { Backend, WorkerRef, WorkerSpec } from '../../src/backends/types.js';
import { LABELS } from '../../src/backends/types.js';
import { createWorkerClient } from '../../src/protocol/client.js';
import { BackendError } from '../../src/errors.js';
import { waitForWorker } from '../../src/sessions/readiness.js';
import { DECISION_ID_LABEL } from '../../src/sessions/spec.js';
import { createSpawngate } from '../../src/spawngate.js';
import type { TestNode } from '../k8s-infra/global-setup.js';
import {
  adminOnNode,
  CONTRACT_IMAGE,
  CONTROL_PLANE_START_TIMEOUT_MS,
  deleteNamespace,
  eventually,
  FIXTURE_COMMAND,
  leftovers,
  restrictedNamespace,
  serviceAccountKubeconfig,
  workerSpec,
  type Admin,
} from './cluster.js';

let a: Admin;
let node: TestNode;
let namespace: string;
let backend: Backend;
const refs: WorkerRef[] = [];

beforeAll(async () => {
  const onNode = await adminOnNode();
  a = onNode;
  node = onNode.node;
  namespace = await restrictedNamespace(a, 'sg-backend');
  // A short grace keeps the Unschedulable test quick; the default (10 s) is for real clusters.
  backend = createKubernetesBackend({ name: 'k8s-test', namespace, kubeconfig: a.plane.adminKubeconfig, unschedulableGraceMs: 2_000 });
}, CONTROL_PLANE_START_TIMEOUT_MS);

afterAll(async () => {
  for (const ref of refs) await backend?.delete(ref).catch(() => undefined);
  await backend?.close?.();
  if (a && namespace) await deleteNamespace(a, namespace);
}, 120_000);

function spec(overrides: Partial<WorkerSpec> = {}): WorkerSpec {
  return workerSpec(overrides);
}

async function created(s: WorkerSpec): Promise<WorkerRef> {
  const ref = await backend.create(s);
  refs.push(ref);
  return ref;
}

/** A gate's config with one small egress-none profile on this file's namespace, running the fixture agent. */
function gateConfig(profile: string, extra: Record<string, unknown>) {
  return {
    agents: {
      executionBackends: {
        cluster: {
          type: 'kubernetes',
          namespace,
          kubeconfig: a.plane.adminKubeconfig,
          profiles: {
            [profile]: { image: CONTRACT_IMAGE, egress: 'none', ttlSeconds: 600, resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } }, ...extra },
          },
        },
      },
      execution: { default: { backend: 'cluster', profile } },
      acp: { fixture: { command: [...FIXTURE_COMMAND] } },
    },
  };
}

async function failureOf(promise: Promise<unknown>): Promise<BackendError> {
  const outcome = await promise.then(
    () => null,
    (err: unknown) => err,
  );
  expect(outcome).toBeInstanceOf(BackendError);
  const err = outcome as BackendError;
  // The API's answer, in our words: never client-node's dump of the HTTP exchange.
  expect(err.message).not.toMatch(/HTTP-Code|Headers:|\n\s+at /);
  return err;
}

describe('kubernetes backend: a worker from create to delete', () => {
  it('creates pod, owned token secret and egress policy; the worker answers on podIP:port with its token; delete leaves nothing', async () => {
    const s = spec({ egress: 'none' });
    await backend.validate(s);
    const ref = await created(s);
    expect(ref.nativeId).toBe(`${namespace}/spawngate-${s.spawnId}`);
    const endpoint = await backend.running(ref, { timeoutMs: 60_000 });
    expect(await waitForWorker({ backend, ref, token: s.token, timeoutMs: 60_000 })).toEqual(endpoint);
    // The pod's own IP on the node's bridge.
    expect(endpoint.baseUrl).toMatch(new RegExp(`^http://${node.podCidr.replace(/\.0\/24$/, '').replaceAll('.', '\\.')}\\.\\d+:8080$`));

    const pod = await a.core.readNamespacedPod({ namespace, name: `spawngate-${s.spawnId}` });
    const secret = await a.core.readNamespacedSecret({ namespace, name: `spawngate-${s.spawnId}-token` });
    const policy = await a.networking.readNamespacedNetworkPolicy({ namespace, name: `spawngate-${s.spawnId}-egress` });
    expect(secret.metadata?.ownerReferences).toEqual([expect.objectContaining({ kind: 'Pod', name: pod.metadata?.name, uid: pod.metadata?.uid })]);
    expect(policy.spec?.podSelector?.matchLabels).toEqual({ [LABELS.spawnId]: s.spawnId });
    for (const object of [pod, secret, policy]) expect(object.metadata?.labels?.[LABELS.spawnId]).toBe(s.spawnId);

    const worker = createWorkerClient({ ...endpoint, token: s.token });
    expect(await worker.healthz()).toMatchObject({ status: 'ok', agentId: 'fixture' });
    await expect(createWorkerClient({ ...endpoint, token: 'wrong' }).healthz()).rejects.toMatchObject({ code: 'WORKER_UNAUTHORIZED' });

    // The worker answers before the kubelet's next readiness probe marks the pod Ready.
    const status = await eventually('the pod Ready', async () => {
      const st = await backend.status(ref);
      return st.ready ? st : undefined;
    });
    expect(status).toMatchObject({ nativeId: ref.nativeId, phase: 'running', ready: true, reason: null, exitCode: null });
    expect(status.attributes).toMatchObject({ 'k8s.namespace.name': namespace, 'k8s.pod.name': `spawngate-${s.spawnId}`, 'k8s.node.name': node.name });
    const logs = await backend.logs(ref, { tail: 3 });
    expect(logs.length).toBeGreaterThan(0);
    expect(logs.length).toBeLessThanOrEqual(3);

    const listed = await backend.list({ [LABELS.spawnId]: s.spawnId });
    expect(listed).toEqual([
      expect.objectContaining({ ref: { spawnId: s.spawnId, backendName: 'k8s-test', nativeId: ref.nativeId }, phase: 'running', expiresAt: new Date(Math.floor(s.expiresAt.getTime() / 1000) * 1000) }),
    ]);

    await backend.delete(ref);
    expect(await leftovers(a, namespace, s.spawnId)).toEqual([]);
    expect(await backend.status(ref)).toMatchObject({ phase: 'gone', reason: 'NotFound' });
    await backend.delete(ref); // idempotent
  }, 90_000);

  it('egress open makes no NetworkPolicy', async () => {
    const s = spec({ egress: 'open' });
    const ref = await created(s);
    await waitForWorker({ backend, ref, token: s.token, timeoutMs: 60_000 });
    expect(await leftovers(a, namespace, s.spawnId)).toEqual([`pod/spawngate-${s.spawnId}`, `secret/spawngate-${s.spawnId}-token`]);
    await backend.delete(ref);
    expect(await leftovers(a, namespace, s.spawnId)).toEqual([]);
  }, 90_000);
});

describe('kubernetes backend: failure reasons', () => {
  it('an image that cannot be pulled fails running() at once with ImagePullBackOff', async () => {
    const s = spec({ image: 'spawngate-worker:missing' });
    const ref = await created(s);
    const err = await failureOf(backend.running(ref, { timeoutMs: 60_000 }));
    expect(err.code).toBe('BACKEND_FAILED');
    // The kubelet's first failed pull is ErrImagePull, every later one ImagePullBackOff; running() fails on either.
    expect((err.details as { reason?: string }).reason).toMatch(/^(ErrImagePull|ImagePullBackOff)$/);
    expect(err.message).toContain('spawngate-worker:missing');
    const status = await eventually('the kubelet to back off', async () => {
      const st = await backend.status(ref);
      return st.reason === 'ImagePullBackOff' ? st : undefined;
    });
    expect(status).toMatchObject({ phase: 'starting', ready: false, reason: 'ImagePullBackOff' });
    await backend.delete(ref);
    expect(await leftovers(a, namespace, s.spawnId)).toEqual([]);
  }, 90_000);

  it('a nodeSelector no node matches fails running() with Unschedulable and the scheduler\'s message', async () => {
    const s = spec({ nodeSelector: { 'kubernetes.io/hostname': 'no-such-node' } });
    const ref = await created(s);
    const started = Date.now();
    const err = await failureOf(backend.running(ref, { timeoutMs: 60_000 }));
    // Not on the scheduler's first verdict: a node may still appear within the grace period.
    expect(Date.now() - started).toBeGreaterThanOrEqual(2_000);
    expect(err.details).toMatchObject({ reason: 'Unschedulable', phase: 'Pending' });
    expect(err.message).toMatch(/node\(s\) didn't match Pod's node affinity\/selector/);
    expect(await backend.status(ref)).toMatchObject({ phase: 'pending', reason: 'Unschedulable' });
    await backend.delete(ref);
    expect(await leftovers(a, namespace, s.spawnId)).toEqual([]);
  }, 90_000);

  it('a worker over its memory limit is OOMKilled (exit 137)', async () => {
    const s = spec({ resources: { requests: { cpu: null, memory: '16Mi', ephemeralStorage: null }, limits: { cpu: null, memory: '16Mi', ephemeralStorage: null }, gpu: 0 } });
    const ref = await created(s);
    // Whether the kill lands before or after the first /healthz answer is a race; the outcome is not.
    await waitForWorker({ backend, ref, token: s.token, timeoutMs: 60_000 }).catch(() => undefined);
    const status = await eventually('the OOM kill', async () => {
      const st = await backend.status(ref);
      return st.phase === 'failed' ? st : undefined;
    });
    expect(status).toMatchObject({ phase: 'failed', ready: false, reason: 'OOMKilled', exitCode: 137 });
    await backend.delete(ref);
  }, 90_000);

  it('activeDeadlineSeconds (= timeoutSeconds) ends the pod with DeadlineExceeded', async () => {
    const s = spec({ timeoutSeconds: 3 });
    const ref = await created(s);
    await waitForWorker({ backend, ref, token: s.token, timeoutMs: 3_000 }).catch(() => undefined);
    const status = await eventually('the deadline', async () => {
      const st = await backend.status(ref);
      return st.phase === 'failed' ? st : undefined;
    });
    expect(status).toMatchObject({ phase: 'failed', reason: 'DeadlineExceeded', ready: false });
    await backend.delete(ref);
    expect(await leftovers(a, namespace, s.spawnId)).toEqual([]);
  }, 90_000);

  it('running() gives up at its bound with a TIMEOUT that says what the pod is waiting for', async () => {
    // create() without validate(): the referenced secret does not exist, so the container never starts.
    const s = spec({ secretEnv: [{ name: 'API_KEY', secretRef: { name: 'no-such-secret', key: 'k' } }] });
    const ref = await created(s);
    const err = await failureOf(backend.running(ref, { timeoutMs: 3_000 }));
    expect(err).toMatchObject({ code: 'TIMEOUT', retryable: true, details: { reason: 'CreateContainerConfigError' } });
    expect(err.message).toContain('secret "no-such-secret" not found');
    await backend.delete(ref);
    expect(await leftovers(a, namespace, s.spawnId)).toEqual([]);
  }, 90_000);

  it('a wrong token is refused by the worker, not waited out', async () => {
    const s = spec();
    const ref = await created(s);
    await expect(waitForWorker({ backend, ref, token: 'not-the-token', timeoutMs: 60_000 })).rejects.toMatchObject({ code: 'WORKER_UNAUTHORIZED' });
    await backend.delete(ref);
  }, 90_000);
});

describe('kubernetes backend: API errors', () => {
  it('a missing permission is a BackendError naming the account, the verb and the namespace, with the API reason', async () => {
    // The restricted account of deploy/rbac.yaml may only act in its own namespace.
    const restricted = createKubernetesBackend({ name: 'k8s-test', namespace, kubeconfig: a.plane.spawngateKubeconfig });
    try {
      const err = await failureOf(restricted.validate(spec()));
      expect(err.code).toBe('BACKEND_FAILED');
      expect(err.details).toMatchObject({ statusCode: 403, reason: 'Forbidden' });
      expect(err.message).toMatch(new RegExp(`^forbidden: system:serviceaccount:${a.plane.namespace}:spawngate cannot create (pods|networkpolicies) in namespace ${namespace}`));
      const listing = await failureOf(restricted.list({}));
      expect(listing.details).toMatchObject({ statusCode: 403, reason: 'Forbidden' });
    } finally {
      await restricted.close?.();
    }
  });

  it('an account that may not watch pods gets that refusal from running(), not a time-out', async () => {
    const rules = KUBERNETES_PERMISSIONS.filter((p) => p.verb !== 'watch').map((p) => ({
      apiGroups: [p.group],
      resources: [p.subresource ? `${p.resource}/${p.subresource}` : p.resource],
      verbs: [p.verb],
    }));
    const kubeconfig = await serviceAccountKubeconfig(a, namespace, 'no-watch', rules, mkdtempSync(join(tmpdir(), 'sg-kc-')));
    const blind = createKubernetesBackend({ name: 'k8s-test', namespace, kubeconfig });
    try {
      const s = spec();
      const ref = await blind.create(s);
      refs.push(ref);
      const err = await failureOf(blind.running(ref, { timeoutMs: 60_000 }));
      expect(err.details).toMatchObject({ statusCode: 403, action: 'watch pods' });
      // client-node's watch keeps only the HTTP status, not the Status body that would name the account.
      expect(err.message).toBe(`forbidden: the service account cannot watch pods in namespace ${namespace}`);
      await blind.delete(ref).catch(() => undefined);
    } finally {
      await blind.close?.();
    }
  });

  it('a namespace that does not exist is named as such', async () => {
    const nowhere = createKubernetesBackend({ name: 'k8s-test', namespace: 'sg-does-not-exist', kubeconfig: a.plane.adminKubeconfig });
    try {
      const err = await failureOf(nowhere.validate(spec()));
      expect(err.message).toBe('namespace sg-does-not-exist does not exist');
      expect(err.details).toMatchObject({ statusCode: 404, reason: 'NamespaceNotFound' });
      const s = spec();
      await failureOf(nowhere.create(s));
    } finally {
      await nowhere.close?.();
    }
  });

  it('an unreachable API server is BACKEND_UNAVAILABLE and retryable', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sg-kc-'));
    const file = join(dir, 'kubeconfig');
    const { writeFileSync } = await import('node:fs');
    // A port that was free a moment ago: nothing listens there.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    writeFileSync(
      file,
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'c', cluster: { server: `https://127.0.0.1:${port}`, 'insecure-skip-tls-verify': true } }],
        users: [{ name: 'u', user: { token: 'x' } }],
        contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
        'current-context': 'x',
      }),
    );
    const offline = createKubernetesBackend({ name: 'k8s-test', namespace, kubeconfig: file });
    const err = await failureOf(offline.list({}));
    expect(err).toMatchObject({ code: 'BACKEND_UNAVAILABLE', retryable: true, details: { statusCode: null, reason: 'ECONNREFUSED' } });
    const missing = createKubernetesBackend({ name: 'k8s-test', namespace, kubeconfig: join(dir, 'nope') });
    await expect(missing.list({})).rejects.toMatchObject({ code: 'BACKEND_UNAVAILABLE', details: { reason: 'KubeconfigUnreadable' } });
  });
});

describe('kubernetes backend: sweeping', () => {
  it('closing leaves nothing; after the gateway is dropped mid-flight, one sweep removes every Pod, Secret and NetworkPolicy of its spawns', async () => {
    const owner = `sweep-${Date.now().toString(36)}`;
    const config = gateConfig('small', {});
    const request = { agentId: 'fixture', task: 'echo hi', caller: { sessionKey: 'agent:main:k8s', depth: 0, channel: { id: 'c', kind: 'cli', interactive: true }, user: { id: 'u', roles: [] } } };
    const first = await createSpawngate({ config, owner, sweepIntervalMs: 0, decisionLog: false });
    const closed = await first.spawn(request);
    expect(await leftovers(a, namespace, closed.spawnId)).toHaveLength(3);
    await closed.close();
    expect(await leftovers(a, namespace, closed.spawnId)).toEqual([]);
    const handle = await first.spawn(request);
    expect(await leftovers(a, namespace, handle.spawnId)).toHaveLength(3);
    await first.shutdown({ keepWorkers: true });

    // A second, older spawn whose pod was deleted by hand: only its Secret and NetworkPolicy remain.
    const orphan = spec({ owner, egress: 'proxy', labels: { [LABELS.owner]: owner } });
    const cluster = createKubernetesBackend({ name: 'cluster', namespace, kubeconfig: a.plane.adminKubeconfig });
    const orphanRef = await cluster.create(orphan);
    await a.core.deleteNamespacedPod({ namespace, name: `spawngate-${orphan.spawnId}`, gracePeriodSeconds: 0 });
    await eventually('the orphan pod to be gone', async () => ((await leftovers(a, namespace, orphan.spawnId)).some((o) => o.startsWith('pod/')) ? undefined : true));
    // The garbage collector may or may not have removed the pod-owned Secret yet; the NetworkPolicy has no owner.
    expect(await leftovers(a, namespace, orphan.spawnId)).toContain(`networkpolicy/spawngate-${orphan.spawnId}-egress`);
    expect(await cluster.list({ [LABELS.spawnId]: orphan.spawnId })).toEqual([expect.objectContaining({ ref: { ...orphanRef, backendName: 'cluster' }, phase: 'gone' })]);
    await cluster.close?.();

    const second = await createSpawngate({ config, owner, sweepIntervalMs: 0, decisionLog: false });
    try {
      const listed = (await second.list()).map((w) => w.spawnId).sort();
      expect(listed).toEqual([handle.spawnId, orphan.spawnId].sort());
      const report = await second.sweep();
      expect(report.errors).toEqual([]);
      expect(report.removed.every((e) => e.deleted)).toBe(true);
      expect(await leftovers(a, namespace, handle.spawnId)).toEqual([]);
      expect(await leftovers(a, namespace, orphan.spawnId)).toEqual([]);
      expect(await second.list()).toEqual([]);
    } finally {
      await second.shutdown();
    }
  }, 120_000);
});

describe('kubernetes backend: warm pool', () => {
  it('a spawn claims a warm pod: the pod takes its labels and a shorter activeDeadlineSeconds, and the pool leaves nothing behind', async () => {
    const owner = `warm-${Date.now().toString(36)}`;
    const config = gateConfig('warm', { timeoutSeconds: 900, warmPool: { agents: ['fixture'], min: 1, maxIdleSeconds: 600 } });
    const gate = await createSpawngate({ config, owner, sweepIntervalMs: 0, decisionLog: false, warmPools: true });
    let warmId: string | null = null;
    try {
      expect(await gate.warmPoolsSettled(90_000)).toBe(true);
      expect(gate.warmPools()[0]).toMatchObject({ idle: 1, lastError: null });
      const [warm] = await gate.list();
      warmId = warm?.spawnId ?? null;
      const podName = `spawngate-${warmId}`;
      const before = await a.core.readNamespacedPod({ namespace, name: podName });
      // The warm pod's own life: maxIdleSeconds plus the longest run of the profile.
      expect(before.spec?.activeDeadlineSeconds).toBe(600 + 900);

      const handle = await gate.spawn({ agentId: 'fixture', task: 'echo hi', caller: { sessionKey: 'agent:main:k8s-warm', depth: 0, channel: { id: 'c', kind: 'cli', interactive: true }, user: { id: 'u', roles: [] } } });
      expect(handle.warm).toBe(true);
      expect(handle.spawnId).toBe(warmId);
      const events = [];
      for await (const e of handle.turn('echo warm')) events.push(e);
      expect(events.at(-1)).toMatchObject({ type: 'turn.completed' });

      const after = await eventually('the claimed labels on the pod', async () => {
        const pod = await a.core.readNamespacedPod({ namespace, name: podName });
        return pod.metadata?.labels?.[DECISION_ID_LABEL] === handle.decisionId ? pod : undefined;
      });
      expect(after.metadata?.labels?.[LABELS.expiresAt]).toBe(String(Math.floor(handle.expiresAt.getTime() / 1000)));
      expect(after.spec?.activeDeadlineSeconds).toBeLessThan(600 + 900);
      expect(after.spec?.activeDeadlineSeconds).toBeGreaterThanOrEqual(900);

      // A replacement comes up; closing and shutting down leave nothing of either.
      expect(await gate.warmPoolsSettled(90_000)).toBe(true);
      const replacement = (await gate.list()).find((w) => !w.tracked)?.spawnId;
      expect(replacement).toBeDefined();
      await handle.close();
      expect(await leftovers(a, namespace, handle.spawnId)).toEqual([]);
      await gate.shutdown();
      expect(await leftovers(a, namespace, replacement ?? '')).toEqual([]);
    } finally {
      await gate.shutdown().catch(() => undefined);
    }
  }, 240_000);
});
