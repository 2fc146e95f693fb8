/**
 * Golden manifests of the kubernetes backend (test/kubernetes/golden/*.json), built from the
 * example config's profiles. The comparison needs no server; every golden object is then also sent
 * to the real kube-apiserver with dryRun=All into a namespace that enforces PodSecurity
 * "restricted", and must be admitted. Regenerate after an intended change with
 * `UPDATE_GOLDEN=1 npx vitest run test/kubernetes/manifests.test.ts` and review the diff.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { V1NetworkPolicy, V1Pod, V1Secret } from '@kubernetes/client-node';
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AllowDecision, Egress } from '../../src/admission/types.js';
import { toBackendError } from '../../src/backends/kubernetes/client.js';
import type { KubernetesProxyOptions, ManifestOptions } from '../../src/backends/kubernetes/index.js';
import { buildTokenSecret, buildWorkerManifests, createKubernetesBackend, defaultProxy } from '../../src/backends/kubernetes/index.js';
import type { WorkerSpec } from '../../src/backends/types.js';
import { findBackend, findProfile, loadConfigFile } from '../../src/config/index.js';
import type { SpawngateConfig } from '../../src/config/index.js';
import { BackendError } from '../../src/errors.js';
import { buildWorkerSpec } from '../../src/sessions/spec.js';
import { admin, CONTROL_PLANE_START_TIMEOUT_MS, deleteNamespace, restrictedNamespace, workerSpec, type Admin } from './cluster.js';

const example = fileURLToPath(new URL('../../examples/spawngate.example.yaml', import.meta.url));
const goldenDir = new URL('./golden/', import.meta.url);
const NAMESPACE = 'openclaw-agents';

interface Case {
  profile: string;
  egress?: Egress;
  proxy?: KubernetesProxyOptions;
  agentCommand?: readonly string[] | null;
}

const cases: Record<string, Case> = {
  small: { profile: 'small', agentCommand: ['claude-code-acp'] },
  'large-build': { profile: 'large-build', agentCommand: ['codex-acp'] },
  // GPU, runtimeClassName, nodeSelector, tolerations, a secret reference and a PVC workspace.
  gpu: { profile: 'gpu', agentCommand: ['codex-acp'] },
  'egress-none': { profile: 'small', egress: 'none', agentCommand: null },
  'egress-open': { profile: 'small', egress: 'open', agentCommand: null },
  'egress-proxy-cidr': { profile: 'small', egress: 'proxy', proxy: { url: 'http://10.20.0.5:3128', port: 3128, to: { cidr: '10.20.0.5/32' }, dns: false }, agentCommand: null },
};

let config: SpawngateConfig;

function specFor(c: Case): WorkerSpec {
  const backend = findBackend(config, 'k8s');
  const profile = findProfile(config, 'k8s', c.profile);
  if (!backend || !profile) throw new Error(`example config has no k8s/${c.profile}`);
  const decision: AllowDecision = {
    allow: true,
    backend: 'k8s',
    profile: c.profile,
    egress: c.egress ?? profile.egress ?? 'none',
    ttlSeconds: profile.ttlSeconds ?? 3600,
    limits: { concurrency: [], rate: [] },
    reasons: [],
  };
  return buildWorkerSpec({
    spawnId: '0b6a3c1e-7d2f-4e8a-9c41-5f0e2d7a9b13',
    owner: 'gateway-1',
    instanceId: 'gateway-1-4242-0a1b2c3d',
    decision,
    backend,
    profile,
    agentId: c.agentCommand?.[0]?.startsWith('codex') ? 'codex' : 'claude',
    agent: { command: c.agentCommand ?? null, env: {}, model: null },
    token: 'golden-token-not-a-secret',
    now: new Date('2026-01-01T00:00:00Z'),
    traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
  });
}

function optionsFor(c: Case, namespace = NAMESPACE): ManifestOptions {
  return { backendName: 'k8s', namespace, defaultImage: 'spawngate-worker:0.1.0', workerPort: 8080, proxy: c.proxy ?? defaultProxy(namespace) };
}

interface Golden {
  pod: V1Pod;
  secret: V1Secret;
  networkPolicy: V1NetworkPolicy | null;
}

function render(c: Case, namespace = NAMESPACE): Golden {
  const spec = specFor(c);
  const options = optionsFor(c, namespace);
  const manifests = buildWorkerManifests(spec, options);
  return { pod: manifests.pod, secret: buildTokenSecret(spec, options, { name: manifests.podName, uid: '00000000-0000-0000-0000-00000000a11d' }), networkPolicy: manifests.networkPolicy };
}

beforeAll(async () => {
  config = await loadConfigFile(example);
});

describe('golden manifests', () => {
  for (const [name, c] of Object.entries(cases)) {
    it(`${name} matches golden/${name}.json`, () => {
      const file = new URL(`${name}.json`, goldenDir);
      const actual = `${JSON.stringify(render(c), null, 2)}\n`;
      if (process.env['UPDATE_GOLDEN'] === '1') writeFileSync(file, actual);
      expect(existsSync(file), `golden/${name}.json is missing; run with UPDATE_GOLDEN=1`).toBe(true);
      expect(actual).toBe(readFileSync(file, 'utf8'));
    });
  }

  it('carries the hardening, the worker env contract and the labels on every object', () => {
    const g = render(cases['small'] as Case);
    const pod = g.pod.spec;
    const container = pod?.containers[0];
    expect(pod).toMatchObject({
      restartPolicy: 'Never',
      activeDeadlineSeconds: 3600,
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      securityContext: { runAsNonRoot: true, runAsUser: 10001, seccompProfile: { type: 'RuntimeDefault' } },
    });
    expect(container?.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
    expect(container?.volumeMounts).toContainEqual({ name: 'tmp', mountPath: '/tmp' });
    const env = Object.fromEntries((container?.env ?? []).map((e) => [e.name, e]));
    expect(env['SPAWNGATE_WORKER_TOKEN']?.valueFrom?.secretKeyRef).toMatchObject({ name: g.secret.metadata?.name, key: 'token' });
    expect(env['ANTHROPIC_API_KEY']?.valueFrom?.secretKeyRef).toMatchObject({ name: 'agent-credentials', key: 'anthropic-api-key' });
    expect(env['SPAWNGATE_LISTEN']?.value).toBe('0.0.0.0:8080');
    expect(env['SPAWNGATE_AGENT_COMMAND']?.value).toBe('["claude-code-acp"]');
    expect(env['HTTPS_PROXY']?.value).toBe('http://spawngate-egress-proxy.openclaw-agents.svc:3128');
    expect(JSON.stringify(g.pod)).not.toContain('golden-token-not-a-secret');
    for (const object of [g.pod, g.secret, g.networkPolicy]) {
      expect(object?.metadata?.labels).toMatchObject({
        'spawngate.io/spawn-id': '0b6a3c1e-7d2f-4e8a-9c41-5f0e2d7a9b13',
        'spawngate.io/owner': 'gateway-1',
        'spawngate.io/profile': 'small',
        'spawngate.io/backend': 'k8s',
        'spawngate.io/expires-at': String(Date.parse('2026-01-01T00:00:00Z') / 1000 + 3600),
      });
    }
    const none = render(cases['egress-none'] as Case);
    expect(none.networkPolicy?.spec).toMatchObject({ policyTypes: ['Ingress', 'Egress'], egress: [], ingress: [{ ports: [{ protocol: 'TCP', port: 8080 }] }] });
    expect(Object.keys(Object.fromEntries((none.pod.spec?.containers[0]?.env ?? []).map((e) => [e.name, e])))).not.toContain('SPAWNGATE_AGENT_COMMAND');
    expect(render(cases['egress-open'] as Case).networkPolicy).toBeNull();
  });

  it('refuses hostPath workspaces and volume workspaces without a claim, naming the field', () => {
    const base = workerSpec();
    const thrown = (spec: WorkerSpec): unknown => {
      try {
        buildWorkerManifests(spec, optionsFor({ profile: 'small' }));
      } catch (err) {
        return err;
      }
      return null;
    };
    expect(thrown({ ...base, workspace: { strategy: 'hostPath', path: '/srv/x' } })).toMatchObject({
      code: 'BACKEND_FAILED',
      details: { field: 'workspace.strategy', reason: 'HostPathRefused' },
    });
    expect(thrown({ ...base, workspace: { strategy: 'volume', claimName: null, sizeLimit: null } })).toMatchObject({ code: 'BACKEND_FAILED', details: { field: 'workspace.claimName' } });
  });
});

describe('golden manifests on the API server (dryRun=All, PodSecurity restricted)', () => {
  let a: Admin;
  let namespace: string;
  let networking: k8s.NetworkingV1Api;
  let node: k8s.NodeV1Api;
  const dryRun = 'All';

  beforeAll(async () => {
    a = await admin();
    networking = a.kc.makeApiClient(k8s.NetworkingV1Api);
    node = a.kc.makeApiClient(k8s.NodeV1Api);
    namespace = await restrictedNamespace(a, 'sg-golden');
    // The gpu profile names runtimeClassName nvidia; a cluster with GPUs has this RuntimeClass.
    await node.createRuntimeClass({ body: { metadata: { name: 'nvidia' }, handler: 'nvidia' } }).catch((err: unknown) => {
      if ((err as { code?: number }).code !== 409) throw err;
    });
  }, CONTROL_PLANE_START_TIMEOUT_MS);

  afterAll(async () => {
    if (a && namespace) await deleteNamespace(a, namespace);
  });

  for (const [name, c] of Object.entries(cases)) {
    it(`${name}: pod, secret and network policy are admitted`, async () => {
      const g = render(c, namespace);
      const pod = await a.core.createNamespacedPod({ namespace, body: g.pod, dryRun });
      expect(pod.metadata?.name).toBe(g.pod.metadata?.name);
      expect(pod.spec?.securityContext?.runAsNonRoot).toBe(true);
      await a.core.createNamespacedSecret({ namespace, body: g.secret, dryRun });
      if (g.networkPolicy) await networking.createNamespacedNetworkPolicy({ namespace, body: g.networkPolicy, dryRun });
      // dryRun persisted nothing
      expect((await a.core.listNamespacedPod({ namespace })).items).toHaveLength(0);
    });
  }

  it('a non-hardened variant of the same pod is refused by PodSecurity', async () => {
    const g = render(cases['small'] as Case, namespace);
    const container = g.pod.spec?.containers[0];
    if (!container) throw new Error('no container');
    container.securityContext = { ...container.securityContext, allowPrivilegeEscalation: true, capabilities: {} };
    let refused: unknown = null;
    try {
      await a.core.createNamespacedPod({ namespace, body: g.pod, dryRun });
    } catch (err) {
      refused = err;
    }
    expect((refused as { code?: number } | null)?.code).toBe(403);
    const mapped = toBackendError(refused, { verb: 'create', resource: 'pods', namespace });
    expect(mapped).toBeInstanceOf(BackendError);
    expect(mapped.details).toMatchObject({ statusCode: 403, reason: 'PodSecurityViolation' });
    expect(mapped.message).toContain('allowPrivilegeEscalation');
  });

  it('validate() turns an invalid profile into a BackendError naming the field from the API causes', async () => {
    const backend = createKubernetesBackend({ name: 'k8s', namespace, kubeconfig: a.plane.adminKubeconfig });
    try {
      const spec = workerSpec({
        resources: { requests: { cpu: null, memory: '4Gi', ephemeralStorage: null }, limits: { cpu: null, memory: '2Gi', ephemeralStorage: null }, gpu: 0 },
      });
      const failure = await backend.validate(spec).then(
        () => null,
        (err: unknown) => err,
      );
      expect(failure).toBeInstanceOf(BackendError);
      const err = failure as BackendError;
      expect(err.code).toBe('BACKEND_FAILED');
      expect(err.details).toMatchObject({ statusCode: 422, reason: 'Invalid', field: 'spec.containers[0].resources.requests' });
      expect(err.message).toContain('spec.containers[0].resources.requests');
      expect(err.message).not.toContain('HTTP-Code');
      expect(err.stack ?? '').not.toContain('Headers:');
      // validate() creates nothing
      expect((await a.core.listNamespacedPod({ namespace })).items).toHaveLength(0);
    } finally {
      await backend.close?.();
    }
  });

  it('validate() refuses a profile whose secret reference does not resolve', async () => {
    const backend = createKubernetesBackend({ name: 'k8s', namespace, kubeconfig: a.plane.adminKubeconfig });
    try {
      const spec = workerSpec({ secretEnv: [{ name: 'API_KEY', secretRef: { name: 'agent-credentials', key: 'api-key' } }] });
      await expect(backend.validate(spec)).rejects.toMatchObject({ code: 'BACKEND_FAILED', details: { field: 'env.API_KEY', reason: 'SecretNotFound' } });
      await a.core.createNamespacedSecret({ namespace, body: { metadata: { name: 'agent-credentials' }, stringData: { other: 'x' } } });
      await expect(backend.validate(spec)).rejects.toMatchObject({ details: { field: 'env.API_KEY', reason: 'SecretKeyNotFound' } });
      await a.core.replaceNamespacedSecret({ name: 'agent-credentials', namespace, body: { metadata: { name: 'agent-credentials' }, stringData: { 'api-key': 'x' } } });
      await expect(backend.validate(spec)).resolves.toBeUndefined();
    } finally {
      await backend.close?.();
    }
  });
});
