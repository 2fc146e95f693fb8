/** Shared setup for the telemetry and sessions tests: a process-backend gate in its own state dir. */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Registry } from 'prom-client';
import { createSpawngate, type Spawngate, type SpawngateOptions } from '../../src/spawngate.js';
import type { WorkerEvent } from '../../src/protocol/events.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));

export interface TestBackend {
  stateDir: string;
  config: Record<string, unknown>;
  /** Worker folders the process backend still has on disk. */
  leftovers(): string[];
  remove(): void;
}

/**
 * One process backend `local` with profiles: `default` (egress none, like the embedded config),
 * `capped` (maxConcurrent.profile), `restricted` (an agent nobody is), `broken` (the fixture agent
 * fails to initialize), and the fixture ACP agent as agent `fixture`.
 */
export function processBackend(options: { cap?: number } = {}): TestBackend {
  // Short: unix socket paths max out at 107 bytes and the socket lives under stateDir/<uuid>/.
  const stateDir = mkdtempSync(join(tmpdir(), 'sg-tel-'));
  const base = { egress: 'none', ttlSeconds: 600, timeoutSeconds: 120 };
  const config = {
    agents: {
      executionBackends: {
        local: {
          type: 'process',
          stateDir,
          defaultProfile: 'default',
          profiles: {
            default: base,
            // Open egress: the worker may reach the gateway's collector on loopback and export its spans.
            traced: { ...base, egress: 'open' },
            capped: { ...base, maxConcurrent: { profile: options.cap ?? 3 } },
            restricted: { ...base, allowedAgents: ['nobody'] },
            // The fixture agent fails ACP initialize, so the worker never turns healthy.
            broken: { ...base, env: { ACP_FIXTURE_FAIL_INIT: '1' } },
          },
        },
      },
      execution: { default: { backend: 'local', profile: 'default' } },
      acp: { fixture: { command: [process.execPath, fixture] } },
    },
  };
  return {
    stateDir,
    config,
    leftovers: () => readdirSync(stateDir),
    remove: () => rmSync(stateDir, { recursive: true, force: true }),
  };
}

export function openGate(backend: TestBackend, options: Partial<SpawngateOptions> = {}): Promise<Spawngate> {
  return createSpawngate({ config: backend.config, owner: `tel-${randomUUID().slice(0, 8)}`, sweepIntervalMs: 0, decisionLog: false, ...options });
}

export function caller(overrides: { user?: string; channel?: { id: string; kind: string } } = {}) {
  return {
    sessionKey: `agent:main:test:${randomUUID()}`,
    depth: 0,
    channel: overrides.channel ?? { id: 'tel-channel', kind: 'cli' },
    user: { id: overrides.user ?? 'tel-user', roles: [] },
  };
}

export async function collect(events: AsyncIterable<WorkerEvent>): Promise<WorkerEvent[]> {
  const out: WorkerEvent[] = [];
  for await (const e of events) out.push(e);
  return out;
}

/**
 * The value of one series: a counter or gauge sample whose labels include `labels`, or for a
 * histogram its `_count`/`_sum` (pass the suffixed name). Summed over every matching sample.
 */
export async function sample(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const exact = registry.getSingleMetric(name);
  const metric = exact ?? registry.getSingleMetric(name.replace(/_(count|sum|bucket)$/, ''));
  if (!metric) throw new Error(`metric ${name} is not registered`);
  const { values } = await metric.get();
  return values
    .filter((v) => exact !== undefined || (v as { metricName?: string }).metricName === name)
    .filter((v) => Object.entries(labels).every(([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want))
    .reduce((sum, v) => sum + v.value, 0);
}
