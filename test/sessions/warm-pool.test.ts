/**
 * Warm pools on the real process backend, behind the shipped policy: a pool fills to its min
 * with workers admitted as the pool's own spawns, a fitting spawn claims one (its id, its token,
 * its labels and deadline), the pool refills, a spawn that does not fit starts cold, an empty pool
 * grows toward its max, an idle worker is retired, a policy that refuses the pool leaves it empty
 * with the reason, and shutdown deletes every warm worker.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { LABELS } from '../../src/backends/types.js';
import { createWorkerClient } from '../../src/protocol/client.js';
import { createServer } from '../../src/server/index.js';
import { DECISION_ID_LABEL } from '../../src/sessions/spec.js';
import { DEFAULT_PROBE_INTERVAL_MS } from '../../src/sessions/warm-pool.js';
import type { Spawngate } from '../../src/spawngate.js';
import { createMetrics } from '../../src/telemetry/metrics.js';
import { testGate } from '../helpers/gate.js';
import { call } from '../server/helpers.js';
import { caller, collect } from '../telemetry/gate.js';

const stateDir = mkdtempSync(join(tmpdir(), 'spawngate-warm-'));
const gates: Spawngate[] = [];

afterEach(async () => {
  vi.useRealTimers();
  for (const g of gates.splice(0)) await g.shutdown();
});
afterAll(() => rmSync(stateDir, { recursive: true, force: true }));

interface PoolSettings {
  min: number;
  max?: number;
  maxIdleSeconds?: number;
}

function configWith(pool: PoolSettings, extra: { accept?: Record<string, unknown>; policyData?: Record<string, unknown>; profile?: Record<string, unknown> } = {}) {
  return {
    agents: {
      executionBackends: {
        local: {
          type: 'process',
          stateDir,
          defaultProfile: 'warm',
          profiles: {
            warm: { egress: 'open', ttlSeconds: 600, timeoutSeconds: 900, warmPool: { agents: ['echo'], ...pool }, ...(extra.accept ? { accept: extra.accept } : {}), ...extra.profile },
            cold: { egress: 'open', ttlSeconds: 600 },
          },
        },
      },
      execution: { default: { backend: 'local', profile: 'warm' } },
    },
    ...(extra.policyData ? { spawngate: { policyData: extra.policyData } } : {}),
  };
}

async function gateWith(pool: PoolSettings, extra: Parameters<typeof configWith>[1] = {}) {
  const metrics = createMetrics();
  const g = await testGate('warm', configWith(pool, extra), { warmPools: true, metrics });
  gates.push(g);
  return { g, metrics };
}

const request = (extra: Record<string, unknown> = {}) => ({ agentId: 'echo', task: 'hello', caller: caller(), ...extra });

function stateOf(spawnId: string): { labels: Record<string, string>; token: string; deadlineAt: string } {
  return JSON.parse(readFileSync(join(stateDir, spawnId, 'state.json'), 'utf8')) as { labels: Record<string, string>; token: string; deadlineAt: string };
}

async function warmIds(g: Spawngate): Promise<string[]> {
  const listed = await g.list();
  const warm = listed.filter((w) => !w.tracked);
  // Every untracked worker of this gate is a warm one, and says so.
  expect(warm.every((w) => w.warm === true)).toBe(true);
  return warm.map((w) => w.spawnId);
}

async function counter(metrics: ReturnType<typeof createMetrics>, name: string, labels: Record<string, string>): Promise<number> {
  const metric = await metrics.registry.getSingleMetric(name)?.get();
  const found = metric?.values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val));
  return found?.value ?? 0;
}

describe('warm pools on the process backend', () => {
  it('fills to min, hands a fitting spawn a warm worker under its own token and labels, and refills', async () => {
    const { g, metrics } = await gateWith({ min: 2 });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    expect(g.warmPools()).toEqual([expect.objectContaining({ backend: 'local', profile: 'warm', agentId: 'echo', idle: 2, starting: 0, target: 2, lastError: null })]);
    const before = await warmIds(g);
    expect(before).toHaveLength(2);
    // The pool's workers were admitted as the pool's spawns: its token is on the state, its caller in the decision label.
    const poolToken = stateOf(before[0]!).token;

    const progress: string[] = [];
    const handle = await g.spawn(request(), { onProgress: (p) => progress.push(p.stage) });
    expect(handle.warm).toBe(true);
    expect(before).toContain(handle.spawnId);
    expect(progress).toEqual(['admission', 'admitted', 'created', 'ready']);
    const events = await collect(handle.turn('ping'));
    expect(events.at(-1)).toMatchObject({ type: 'turn.completed' });
    expect(events.map((e) => ('text' in e ? e.text : '')).join('')).toBe('echo: ping');

    // The pool's token opens nothing any more; the spawn's own labels and deadline are on the backend.
    const stale = createWorkerClient({ ...handle.endpoint, token: poolToken });
    await expect(stale.status()).rejects.toMatchObject({ code: 'WORKER_UNAUTHORIZED' });
    await expect.poll(() => stateOf(handle.spawnId).labels[DECISION_ID_LABEL]).toBe(handle.decisionId);
    const state = stateOf(handle.spawnId);
    expect(state.labels[LABELS.expiresAt]).toBe(String(Math.floor(handle.expiresAt.getTime() / 1000)));
    expect(state.token).not.toBe(poolToken);
    expect(new Date(state.deadlineAt).getTime()).toBeLessThanOrEqual(Date.now() + 900_000);
    expect((await g.status(handle.spawnId)).backendStatus).toMatchObject({ phase: 'running', ready: true });

    // A replacement comes up in the background.
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    expect(g.warmPools()[0]).toMatchObject({ idle: 2, starting: 0 });
    expect(await counter(metrics, 'spawngate_warm_claims_total', { outcome: 'claimed' })).toBe(1);
    expect(await counter(metrics, 'spawngate_warm_workers', { state: 'idle' })).toBe(2);

    await handle.close();
    expect((await g.list()).map((w) => w.spawnId)).not.toContain(handle.spawnId);
  });

  it('a spawn with session wishes the worker could not take, or of another profile, starts cold', async () => {
    const { g, metrics } = await gateWith({ min: 1 }, { accept: { env: ['FOO'] } });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    const withEnv = await g.spawn(request({ env: { FOO: 'bar' } }));
    expect(withEnv.warm).toBeUndefined();
    expect(await counter(metrics, 'spawngate_warm_claims_total', { outcome: 'unfit' })).toBe(1);
    const other = await g.spawn(request({ execution: { profile: 'cold' } }));
    expect(other.warm).toBeUndefined();
    // Neither took the warm worker.
    expect(g.warmPools()[0]).toMatchObject({ idle: 1 });
    const warm = await g.spawn(request());
    expect(warm.warm).toBe(true);
  });

  it('an empty pool grows toward max when spawns find it empty', async () => {
    const { g, metrics } = await gateWith({ min: 1, max: 3 });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    const first = await g.spawn(request());
    expect(first.warm).toBe(true);
    // The replacement has not come up yet: this one finds the pool empty and starts cold.
    const second = await g.spawn(request());
    if (second.warm) {
      // The replacement won the race on a fast machine; the pool is still at min.
      expect(g.warmPools()[0]?.target).toBe(1);
    } else {
      expect(await counter(metrics, 'spawngate_warm_claims_total', { outcome: 'empty' })).toBe(1);
      expect(g.warmPools()[0]?.target).toBe(2);
      expect(await g.warmPoolsSettled(60_000)).toBe(true);
      expect(g.warmPools()[0]).toMatchObject({ idle: 2 });
    }
  });

  it('a denied spawn gives its warm worker back; a policy that refuses the pool leaves it empty with the reason', async () => {
    const { g } = await gateWith({ min: 1 }, { policyData: { concurrency: { user: 1 } } });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    const who = caller({ user: 'bounded' });
    const one = await g.spawn({ agentId: 'echo', task: 'a', caller: who });
    expect(one.warm).toBe(true);
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    const ready = await warmIds(g);
    await expect(g.spawn({ agentId: 'echo', task: 'b', caller: { ...who, sessionKey: `${who.sessionKey}-2` } })).rejects.toMatchObject({ code: 'ADMISSION_DENIED' });
    // The warm worker the denied spawn had taken is back, the same one.
    expect(g.warmPools()[0]).toMatchObject({ idle: 1 });
    expect(await warmIds(g)).toEqual(ready);

    const refused = await gateWith({ min: 1 }, { policyData: { agents: { deny: ['echo'] } } });
    expect(await refused.g.warmPoolsSettled(60_000)).toBe(true);
    expect(refused.g.warmPools()[0]).toMatchObject({ idle: 0, starting: 0 });
    expect(refused.g.warmPools()[0]?.lastError).toMatch(/the policy denied the pool's spawn \(agent_not_allowed\)/);
  });

  it('a spawn waiting for a slot holds no warm worker: a spawn that may run meanwhile claims it', async () => {
    const { g } = await gateWith({ min: 2, max: 2 }, { policyData: { concurrency: { user: 1 }, queue: { maxWaitSeconds: 60, maxWaitNonInteractiveSeconds: 60 } } });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    expect(g.warmPools()[0]).toMatchObject({ idle: 2 });
    // Two spawns of one user at once, with a cap of one: both read the usage before either
    // reserved, so the policy allows both, each takes a warm worker, and the store refuses one.
    const who = caller({ user: 'waits' });
    // Read the moment the refused one is queued: the pool refills only 100 ms after a claim, and
    // the refusal comes before the other spawn has even claimed its worker.
    let idleWhenQueued = -1;
    let queued!: () => void;
    const isQueued = new Promise<void>((resolve) => (queued = resolve));
    const onProgress = (p: { stage: string }) => {
      if (p.stage !== 'queued') return;
      idleWhenQueued = g.warmPools()[0]?.idle ?? -1;
      queued();
    };
    const both = ['a', 'b'].map((task) => g.spawn({ agentId: 'echo', task, caller: { ...who, sessionKey: `${who.sessionKey}-${task}` }, waitSeconds: 60 }, { onProgress }));
    const first = await Promise.race(both);
    expect(first.warm).toBe(true);
    await isQueued;
    // The refused one waits without the worker it had taken: that one is idle in the pool again.
    expect(idleWhenQueued).toBe(1);
    // Another user may run now, and claims a warm worker.
    const other = await g.spawn({ agentId: 'echo', task: 'c', caller: caller({ user: 'runs' }) });
    expect(other.warm).toBe(true);
    // The slot frees, and the waiting spawn runs (warm or cold: whatever the pool has by then).
    await first.close();
    const [x, y] = await Promise.all(both);
    const second = x === first ? y : x;
    expect(second?.spawnId).not.toBe(first.spawnId);
    await second?.close();
    await other.close();
  });

  it('a warm worker takes no slot of the caps users share; the spawn that claims it counts it', async () => {
    const { g } = await gateWith({ min: 2 }, { profile: { maxConcurrent: { profile: 1 } } });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    // Two warm workers on a profile capped at one: the first spawn is still allowed, and warm.
    const first = await g.spawn(request());
    expect(first.warm).toBe(true);
    await expect(g.spawn(request())).rejects.toMatchObject({ code: 'ADMISSION_DENIED', details: { reasons: [expect.objectContaining({ code: 'concurrency_limit_profile' })] } });
    await first.close();

    // Counted against the shared caps (pools.sharedCaps): the pool fills up to the cap and no further.
    const shared = await gateWith({ min: 2 }, { profile: { maxConcurrent: { profile: 1 } }, policyData: { pools: { sharedCaps: true } } });
    expect(await shared.g.warmPoolsSettled(60_000)).toBe(true);
    expect(shared.g.warmPools()[0]).toMatchObject({ idle: 1, lastError: expect.stringContaining('concurrency_limit_profile') as unknown });
  });

  it('each warm worker is a session of its own: a fan-out cap of one does not keep a pool of two from filling', async () => {
    const { g } = await gateWith({ min: 2 }, { policyData: { trees: { maxChildren: 1 } } });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    expect(g.warmPools()[0]).toMatchObject({ idle: 2, lastError: null });
  });

  it('a retry with the same idempotency key gets the warm spawn the first request claimed', async () => {
    const { g } = await gateWith({ min: 1 });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    const body = request({ idempotencyKey: 'warm-once' });
    const first = await g.spawn(body);
    expect(first.warm).toBe(true);
    const retry = await g.spawn(body);
    expect(retry).toMatchObject({ spawnId: first.spawnId, decisionId: first.decisionId, replayed: true });
  });

  it('a worker idle for maxIdleSeconds is closed and replaced (timers driven by the test)', async () => {
    // Only timers are fake, and they run at wall-clock pace: the test jumps over the idle minute.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'], shouldAdvanceTime: true });
    const { g } = await gateWith({ min: 1, maxIdleSeconds: 60 });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    const [first] = await warmIds(g);
    await vi.advanceTimersByTimeAsync(61_000);
    await vi.waitFor(async () => expect(await warmIds(g)).not.toContain(first), { timeout: 30_000, interval: 100 });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    const after = await warmIds(g);
    expect(after).toHaveLength(1);
    expect(after).not.toContain(first);
    expect(existsSync(join(stateDir, first!))).toBe(false);
  });

  it('a warm worker that dies behind the pool\'s back fails its next health probe and is replaced (timers driven by the test)', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'], shouldAdvanceTime: true });
    const { g } = await gateWith({ min: 1 });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    const [dead] = (await g.list()).filter((w) => !w.tracked);
    process.kill(Number(dead!.nativeId), 'SIGKILL');
    await vi.advanceTimersByTimeAsync(DEFAULT_PROBE_INTERVAL_MS + 1000);
    await vi.waitFor(async () => expect(await warmIds(g)).not.toContain(dead!.spawnId), { timeout: 30_000, interval: 100 });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    const after = await warmIds(g);
    expect(after).toHaveLength(1);
    expect(existsSync(join(stateDir, dead!.spawnId))).toBe(false);
    // The replacement is what the next spawn gets, warm.
    const handle = await g.spawn(request());
    expect(handle.warm).toBe(true);
    expect(handle.spawnId).toBe(after[0]);
    const events = await collect(handle.turn('after the probe'));
    expect(events.map((e) => ('text' in e ? e.text : '')).join('')).toBe('echo: after the probe');
    await handle.close();
  });

  it('the HTTP API says which spawn was warm, and lists the pools', async () => {
    const { g } = await gateWith({ min: 1 });
    const token = 'warm-api-token-0123456789abcdef';
    const server = await createServer({ gate: g, token, listen: { port: 0, host: '127.0.0.1' } });
    try {
      expect(await g.warmPoolsSettled(60_000)).toBe(true);
      const pools = await call(server.address, 'GET', '/v1/warm-pools', { token });
      expect(pools.status).toBe(200);
      expect(pools.json).toEqual({ pools: [{ backend: 'local', profile: 'warm', agentId: 'echo', idle: 1, starting: 0, target: 1, min: 1, max: 1, lastError: null }] });
      const spawned = await call(server.address, 'POST', '/v1/spawns', { token, body: request() });
      expect(spawned.status).toBe(201);
      expect(spawned.json).toMatchObject({ warm: true, backend: 'local', profile: 'warm' });
      const cold = await call(server.address, 'POST', '/v1/spawns', { token, body: request({ execution: { profile: 'cold' } }) });
      expect(cold.status).toBe(201);
      expect(cold.json).not.toHaveProperty('warm');
    } finally {
      await server.close();
    }
  });

  it('shutdown deletes every warm worker; none is left on the backend', async () => {
    const { g } = await gateWith({ min: 2 });
    expect(await g.warmPoolsSettled(60_000)).toBe(true);
    const ids = await warmIds(g);
    expect(ids).toHaveLength(2);
    gates.splice(gates.indexOf(g), 1);
    await g.shutdown();
    const after = await testGate('warm-after', configWith({ min: 0 }));
    try {
      const left = (await after.list({ allOwners: true })).map((w) => w.spawnId);
      for (const id of ids) expect(left).not.toContain(id);
    } finally {
      await after.shutdown();
    }
  });

  it('warm workers of a gateway that died are orphans to the next one: its sweep removes them', async () => {
    const owner = `warm-crash-${Date.now().toString(36)}`;
    const dead = await testGate('unused', configWith({ min: 2 }), { warmPools: true, owner });
    expect(await dead.warmPoolsSettled(60_000)).toBe(true);
    const ids = await warmIds(dead);
    expect(ids).toHaveLength(2);
    // A new gateway process of the same owner: its store holds no lease of the dead one's workers.
    const next = await testGate('unused', configWith({ min: 0 }), { owner });
    try {
      const report = await next.sweep({ orphans: true });
      expect(report.removed.filter((e) => ids.includes(e.spawnId)).map((e) => [e.reason, e.deleted])).toEqual([
        ['orphaned', true],
        ['orphaned', true],
      ]);
      expect(await next.list()).toEqual([]);
    } finally {
      await next.shutdown();
      await dead.shutdown();
    }
  });
});
