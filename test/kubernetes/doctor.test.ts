/**
 * `spawngate doctor` against the real kube-apiserver: real SelfSubjectAccessReviews for real
 * ServiceAccounts, real dry runs of the configured profiles.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { V1PolicyRule } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KUBERNETES_PERMISSIONS, roleRuleFor } from '../../src/backends/kubernetes/permissions.js';
import type { DoctorReport } from '../../src/cli/commands/doctor.js';
import { cli } from '../cli/helpers.js';
import { admin, CONTROL_PLANE_START_TIMEOUT_MS, deleteNamespace, restrictedNamespace, serviceAccountKubeconfig, type Admin } from './cluster.js';

let a: Admin;
let namespace: string;
const dir = mkdtempSync(join(tmpdir(), 'sg-doctor-'));

function writeConfig(file: string, backend: Record<string, unknown>): string {
  const path = join(dir, file);
  writeFileSync(
    path,
    JSON.stringify({
      agents: {
        executionBackends: {
          cluster: {
            type: 'kubernetes',
            ...backend,
            profiles: {
              small: { image: 'spawngate-worker:test', egress: 'none', resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } } },
              build: { image: 'spawngate-worker:test', egress: 'proxy', workspace: { strategy: 'ephemeral', sizeLimit: '1Gi' }, resources: { limits: { cpu: '2', memory: '2Gi' } } },
            },
          },
        },
        execution: { default: { backend: 'cluster', profile: 'small' } },
      },
    }),
  );
  return path;
}

function rulesFor(permissions: typeof KUBERNETES_PERMISSIONS): V1PolicyRule[] {
  return permissions.map((p) => ({ apiGroups: [p.group], resources: [p.subresource ? `${p.resource}/${p.subresource}` : p.resource], verbs: [p.verb] }));
}

beforeAll(async () => {
  a = await admin();
  namespace = await restrictedNamespace(a, 'sg-doctor');
}, CONTROL_PLANE_START_TIMEOUT_MS);

afterAll(async () => {
  if (a && namespace) await deleteNamespace(a, namespace);
});

describe('spawngate doctor', () => {
  it('passes with the admin kubeconfig: every permission, every profile dry run, the bundle', async () => {
    const config = writeConfig('admin.json', { namespace, kubeconfig: a.plane.adminKubeconfig });
    const table = await cli(['doctor', '--config', config]);
    expect(table.stderr).toBe('');
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^CHECK\s+RESULT\s+FIX \/ DETAIL/);
    expect(table.stdout).toContain('all checks passed');

    const json = await cli(['doctor', '--config', config, '--json']);
    expect(json.code).toBe(0);
    const report = JSON.parse(json.stdout) as DoctorReport;
    expect(report.ok).toBe(true);
    const names = report.checks.map((c) => c.check);
    expect(names).toEqual(
      expect.arrayContaining([
        'policy bundle',
        'cluster: credentials',
        'cluster: API server reachable',
        `cluster: namespace ${namespace}`,
        'cluster: can get pods/log',
        'cluster: can watch pods',
        'cluster: can create networkpolicies.networking.k8s.io',
        'cluster: profile small (dry run)',
        'cluster: profile build (dry run)',
      ]),
    );
    expect(report.checks.filter((c) => c.check.startsWith('cluster: can '))).toHaveLength(KUBERNETES_PERMISSIONS.length);
    expect(report.checks.every((c) => c.result === 'ok')).toBe(true);
  });

  it('passes as the spawngate ServiceAccount of deploy/rbac.yaml, which cannot read namespaces', async () => {
    const config = writeConfig('spawngate.json', { namespace: a.plane.namespace, kubeconfig: a.plane.spawngateKubeconfig });
    const run = await cli(['doctor', '--config', config, '--json']);
    const report = JSON.parse(run.stdout) as DoctorReport;
    expect(report.checks.filter((c) => c.result !== 'ok')).toEqual([]);
    expect(run.code).toBe(0);
  });

  it('fails, naming the verb and the Role rule to add, for an account whose Role lacks one permission', async () => {
    const missing = KUBERNETES_PERMISSIONS.find((p) => p.resource === 'pods' && p.subresource === 'log');
    if (!missing) throw new Error('pods/log is not in KUBERNETES_PERMISSIONS');
    const kubeconfig = await serviceAccountKubeconfig(a, namespace, 'limited', rulesFor(KUBERNETES_PERMISSIONS.filter((p) => p !== missing)), dir);
    const config = writeConfig('limited.json', { namespace, kubeconfig });

    const table = await cli(['doctor', '--config', config]);
    expect(table.code).toBe(1);
    const row = table.stdout.split('\n').find((l) => l.startsWith('cluster: can get pods/log'));
    expect(row).toMatch(/FAIL/);
    expect(row).toContain(roleRuleFor(missing));
    expect(table.stdout).toContain('1 check(s) failed');

    const report = JSON.parse((await cli(['doctor', '--config', config, '--json'])).stdout) as DoctorReport;
    expect(report.ok).toBe(false);
    expect(report.checks.filter((c) => c.result === 'fail')).toEqual([
      expect.objectContaining({ check: 'cluster: can get pods/log', fix: expect.stringContaining('resources: ["pods/log"], verbs: ["get"]') as string }),
    ]);
    // The dry runs still pass: the account may create pods.
    expect(report.checks.find((c) => c.check === 'cluster: profile small (dry run)')?.result).toBe('ok');
  });

  it('names a missing namespace, and a profile the API server refuses', async () => {
    const config = writeConfig('nowhere.json', { namespace: 'sg-doctor-nowhere', kubeconfig: a.plane.adminKubeconfig });
    const report = JSON.parse((await cli(['doctor', '--config', config, '--json'])).stdout) as DoctorReport;
    expect(report.checks.find((c) => c.check === 'cluster: namespace sg-doctor-nowhere')).toMatchObject({ result: 'fail', detail: 'namespace sg-doctor-nowhere does not exist' });
    expect(report.checks.find((c) => c.check === 'cluster: profile small (dry run)')).toMatchObject({ result: 'fail', fix: expect.stringContaining('create namespace sg-doctor-nowhere') as string });

    const bad = join(dir, 'bad-profile.json');
    writeFileSync(
      bad,
      JSON.stringify({
        agents: {
          executionBackends: {
            cluster: {
              type: 'kubernetes',
              namespace,
              kubeconfig: a.plane.adminKubeconfig,
              // Valid config, but this cluster has no such RuntimeClass: only the API server can tell.
              profiles: { sandboxed: { image: 'spawngate-worker:test', runtimeClassName: 'gvisor-not-installed' } },
            },
          },
        },
      }),
    );
    const rejected = JSON.parse((await cli(['doctor', '--config', bad, '--json'])).stdout) as DoctorReport;
    expect(rejected.checks.find((c) => c.check === 'cluster: profile sandboxed (dry run)')).toMatchObject({
      result: 'fail',
      detail: expect.stringContaining('RuntimeClass "gvisor-not-installed" not found') as string,
      fix: expect.stringContaining('change profile sandboxed') as string,
    });
  });

  it('fails when the API server cannot be reached, and skips nothing it could check', async () => {
    const kubeconfig = join(dir, 'offline.kubeconfig');
    writeFileSync(
      kubeconfig,
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'c', cluster: { server: 'https://127.0.0.1:9', 'insecure-skip-tls-verify': true } }],
        users: [{ name: 'u', user: { token: 'x' } }],
        contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
        'current-context': 'x',
      }),
    );
    const run = await cli(['doctor', '--config', writeConfig('offline.json', { namespace, kubeconfig }), '--json']);
    expect(run.code).toBe(1);
    const report = JSON.parse(run.stdout) as DoctorReport;
    expect(report.checks.find((c) => c.check === 'policy bundle')?.result).toBe('ok');
    expect(report.checks.find((c) => c.check === 'cluster: API server reachable')).toMatchObject({ result: 'fail', fix: expect.stringContaining('https://127.0.0.1:9') as string });
  });

  it('exits 2 on usage errors', async () => {
    expect((await cli(['doctor', '--no-such-flag'])).code).toBe(2);
    expect((await cli(['doctor', 'extra'])).code).toBe(2);
    expect((await cli(['doctor', '--config', join(dir, 'does-not-exist.yaml')])).code).toBe(2);
  });
});
