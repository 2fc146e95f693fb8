/**
 * The in-memory fake Backend shipped in `spawngate/testing`, driven through a real gate: what a
 * user's own tests get from it (turns, failures on demand), and the sessions layer's handling of
 * every failure it injects — one readiness strategy for all backends, failing fast with the reason.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Spawngate } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';
import { createFakeBackend, type FakeBackend } from '../../src/testing.js';
import { caller, collect } from '../telemetry/gate.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'sg-fake-'));
const gates: Spawngate[] = [];

afterEach(async () => {
  for (const g of gates.splice(0)) await g.shutdown();
});
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

async function gateWith(fake: FakeBackend, profile: Record<string, unknown> = {}): Promise<Spawngate> {
  const g = await createSpawngate({
    config: {
      agents: {
        // The config names a process backend; the resolver hands the lifecycle the fake instead.
        executionBackends: { fake: { type: 'process', defaultProfile: 'p', profiles: { p: { egress: 'open', ttlSeconds: 600, timeoutSeconds: 120, maxConcurrent: { profile: 1 }, ...profile } } } },
        execution: { default: { backend: 'fake', profile: 'p' } },
        acp: { fixture: { command: [process.execPath, fixture] } },
      },
    },
    resolveBackend: () => Promise.resolve(fake),
    owner: 'fake-test',
    sweepIntervalMs: 0,
    decisionLog: false,
  });
  gates.push(g);
  return g;
}

const request = (agentId = 'echo') => ({ agentId, task: 'x', caller: caller() });

describe('spawngate/testing fake backend through a gate', () => {
  it('runs a real worker: spawn, a turn, status, logs, close; nothing left', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    const h = await g.spawn(request());
    const events = await collect(h.turn('hello fake'));
    expect(events.at(-1)).toMatchObject({ type: 'turn.completed' });
    expect((await h.status()).backendStatus).toMatchObject({ phase: 'running', ready: true });
    expect((await h.logs()).length).toBeGreaterThan(0);
    await h.close();
    expect(fake.workers.size).toBe(0);
    expect(await g.store.active()).toEqual([]);
  });

  it('a worker that exits before it is ready fails the spawn with its reason and log tail; the slot comes back', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    fake.exitBeforeReady('OOMKilled', 137);
    const err = await g.spawn(request()).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'BACKEND_FAILED', details: { reason: 'OOMKilled', exitCode: 137 } });
    expect((err as Error).message).toContain('OOMKilled');
    expect((err as { details: { logTail: string[] } }).details.logTail.join('\n')).toContain('exited during start-up');
    expect(fake.workers.size).toBe(0);
    expect(await g.store.active()).toEqual([]);
    const h = await g.spawn(request());
    await h.close();
  });

  it('a create that fails creates nothing and releases the slot', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    fake.failNextCreate();
    await expect(g.spawn(request())).rejects.toMatchObject({ code: 'BACKEND_FAILED' });
    expect(fake.workers.size).toBe(0);
    expect(await g.store.active()).toEqual([]);
  });

  it('a worker deleted while it is starting (another gateway\'s sweeper, an operator) fails its spawn at once, not at timeoutSeconds', async () => {
    const fake = createFakeBackend();
    const gate = join(scratch, 'session-gate');
    const g = await gateWith(fake, { env: { ACP_FIXTURE_SESSION_GATE: gate } });
    const spawning = g.spawn(request('fixture')).catch((e: unknown) => e);
    await expect.poll(() => [...fake.workers.values()].some((w) => w.phase === 'running'), { timeout: 20_000 }).toBe(true);
    const [spawnId] = [...fake.workers.keys()];
    await fake.delete({ spawnId: spawnId!, backendName: 'fake', nativeId: '' });
    expect(await spawning).toMatchObject({ code: 'BACKEND_FAILED', details: { reason: 'NotFound' } });
    expect(await g.store.active()).toEqual([]);
    writeFileSync(gate, '');
  });

  it('a worker that dies mid-session is reaped after its failed turn, with the reason in status', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    const h = await g.spawn(request());
    await fake.kill(h.spawnId, 'OOMKilled', 137);
    await expect(collect(h.turn('are you there'))).rejects.toBeDefined();
    await expect.poll(async () => (await g.status(h.spawnId)).closeReason, { timeout: 20_000 }).toBe('failed');
    expect((await g.status(h.spawnId)).backendStatus).toMatchObject({ reason: 'OOMKilled', exitCode: 137 });
    expect(await g.store.active()).toEqual([]);
  });
});
