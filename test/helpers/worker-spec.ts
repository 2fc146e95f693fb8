import { randomBytes, randomUUID } from 'node:crypto';
import type { WorkerSpec } from '../../src/backends/types.js';
import { LABELS } from '../../src/backends/types.js';

/**
 * A complete WorkerSpec for backend tests that drive a backend directly (without the lifecycle):
 * neutral defaults, a fresh spawn id, token and labels, then the backend's `defaults`, then the
 * test's `overrides`.
 */
export function testWorkerSpec(defaults: Partial<WorkerSpec>, overrides: Partial<WorkerSpec> = {}): WorkerSpec {
  const spawnId = overrides.spawnId ?? defaults.spawnId ?? randomUUID();
  const owner = overrides.owner ?? defaults.owner ?? 'spawngate-test';
  const expiresAt = overrides.expiresAt ?? defaults.expiresAt ?? new Date(Date.now() + 600_000);
  return {
    spawnId,
    owner,
    backendName: 'test',
    profileName: 'test',
    agentId: 'echo',
    agentCommand: null,
    image: null,
    command: null,
    args: null,
    env: { GREETING: 'hello' },
    secretEnv: [],
    resources: { requests: { cpu: null, memory: null, ephemeralStorage: null }, limits: { cpu: null, memory: null, ephemeralStorage: null }, gpu: 0 },
    pidsLimit: null,
    runtimeClassName: null,
    nodeSelector: {},
    tolerations: [],
    egress: 'none',
    egressAllow: [],
    workspace: { strategy: 'none' },
    token: randomBytes(24).toString('base64url'),
    timeoutSeconds: 120,
    expiresAt,
    labels: { [LABELS.spawnId]: spawnId, [LABELS.owner]: owner, [LABELS.expiresAt]: String(Math.floor(expiresAt.getTime() / 1000)) },
    traceparent: null,
    ...defaults,
    ...overrides,
  };
}
