/**
 * Waiting for a slot instead of a deny (request waitSeconds, decision.wait): the gate on the
 * memory store with the shipped bundle. Every wait ends on an event (a release, an abort) or on the
 * injected clock passing the deadline, never on a timer the test waits out.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { memoryDecisionLog } from '../../src/admission/decision-log.js';
import { createAdmission, SHIPPED_BUNDLE, type Admission, type ReserveResult } from '../../src/admission/gate.js';
import type { SpawnRequestInput } from '../../src/admission/request.js';
import { createMetrics } from '../../src/telemetry/metrics.js';

const gates: Admission[] = [];
afterAll(async () => {
  for (const g of gates) await g.close();
});

// One worker at a time on the profile: every other spawn meets a full cap.
const config = {
  agents: { executionBackends: { l: { type: 'process', defaultProfile: 'one', profiles: { one: { maxConcurrent: { profile: 1 } } } } } },
};

async function gate(extra: Parameters<typeof createAdmission>[0] = {}) {
  const log = memoryDecisionLog();
  const metrics = createMetrics();
  let now = Date.parse('2026-12-03T12:00:00Z');
  const g = await createAdmission({ config, bundle: SHIPPED_BUNDLE, watchBundle: false, decisionLog: log, metrics, clock: () => new Date(now), ...extra });
  gates.push(g);
  return { g, log, metrics, advance: (ms: number) => (now += ms) };
}

const request = (user: string, waitSeconds?: number, roles: string[] = []): SpawnRequestInput => ({
  agentId: 'echo',
  task: 't',
  ...(waitSeconds === undefined ? {} : { waitSeconds }),
  caller: { sessionKey: `agent:main:${user}`, channel: { id: `chan-${user}`, kind: 'telegram' }, user: { id: user, roles } },
});

/** Resolves once `positions` has seen `n` reports. */
async function reported(positions: number[], n: number): Promise<void> {
  for (let i = 0; i < 1000 && positions.length < n; i++) await new Promise((r) => setTimeout(r, 5));
  expect(positions.length).toBeGreaterThanOrEqual(n);
}

const metric = async (g: Admission, name: string): Promise<string[]> => (await g.metrics.registry.metrics()).split('\n').filter((l) => l.startsWith(name));

describe('waiting for a concurrency slot', () => {
  it('a waiter takes the slot the moment it frees, before any later request; waiters are served by priority, then in turns', async () => {
    const { g, log } = await gate();
    const holder = await g.reserve(request('holder'));
    expect(holder.allowed).toBe(true);

    // Without waitSeconds the full cap denies at once, as it always did.
    expect((await g.reserve(request('impatient'))).decision.reasons[0]?.code).toBe('concurrency_limit_profile');

    const positions: Record<string, number[]> = { a1: [], a2: [], b: [], admin: [] };
    const wait = (name: string, user: string, roles: string[] = []) => g.reserve(request(user, 60, roles), { onQueued: (p) => positions[name]?.push(p) });
    const a1 = wait('a1', 'alice');
    await reported(positions.a1 as number[], 1);
    const a2 = wait('a2', 'alice');
    await reported(positions.a2 as number[], 1);
    const b = wait('b', 'bob');
    await reported(positions.b as number[], 1);
    // bob's first spawn takes its turn before alice's second; the admin (priority 20) goes first of all.
    const admin = wait('admin', 'root', ['admin']);
    await reported(positions.admin as number[], 1);
    expect(positions).toEqual({ a1: [1], a2: [2], b: [2], admin: [1] });
    expect((await g.store.queue?.list())?.map((w) => w.user)).toEqual(['root', 'alice', 'bob', 'alice']);

    // A dry run sees the same full cap, and queues nothing.
    expect((await g.admit(request('carol', 60))).decision.reasons[0]?.code).toBe('concurrency_limit_profile');
    expect(await g.store.queue?.list()).toHaveLength(4);

    // Each release hands the slot to exactly one waiter: the next in the queue's order.
    const pending = new Map<string, Promise<ReserveResult>>([['admin', admin], ['a1', a1], ['b', b], ['a2', a2]]);
    const order: string[] = [];
    let current = holder;
    while (pending.size > 0) {
      if (!current.allowed) throw new Error('expected a held slot');
      await current.reservation.release();
      const [name, result] = await Promise.race([...pending].map(([n, p]) => p.then((r) => [n, r] as const)));
      pending.delete(name);
      order.push(name);
      current = result;
    }
    expect(order).toEqual(['admin', 'a1', 'b', 'a2']);
    if (current.allowed) await current.reservation.release();
    expect(await g.store.queue?.list()).toEqual([]);
    // One decision line per spawn, whatever the number of looks a wait took.
    type Logged = { request?: { waitSeconds?: number }; caller?: { user?: { id?: string } } } | undefined;
    const waited = log.entries.filter((e) => (e.input as Logged)?.request?.waitSeconds === 60 && (e.input as Logged)?.caller?.user?.id !== 'carol');
    expect(waited).toHaveLength(4);
  });

  it('gives up at the decision\'s wait on the injected clock, and leaves nothing queued', async () => {
    const { g, advance } = await gate();
    const holder = await g.reserve(request('holder'));
    const positions: number[] = [];
    const waiting = g.reserve(request('late', 30), { onQueued: (p) => positions.push(p) });
    await reported(positions, 1);
    advance(30_000);
    const result = await waiting;
    expect(result).toMatchObject({ allowed: false, decision: { wait: { maxSeconds: 30, priority: 10 }, reasons: [{ code: 'concurrency_limit_profile' }] } });
    expect(result.decision.reasons[0]?.message).toMatch(/no slot freed within the 30s this spawn could wait$/);
    expect(await g.store.queue?.list()).toEqual([]);
    expect(await metric(g, 'spawngate_spawn_wait_seconds_count{backend="l",profile="one",outcome="timed_out"}')).toEqual(['spawngate_spawn_wait_seconds_count{backend="l",profile="one",outcome="timed_out"} 1']);
    if (holder.allowed) await holder.reservation.release();
  });

  it('a cancelled wait rejects with the signal\'s reason and leaves no ticket, slot or gauge behind', async () => {
    const { g } = await gate();
    const holder = await g.reserve(request('holder'));
    const controller = new AbortController();
    const positions: number[] = [];
    const waiting = g.reserve(request('gone', 30), { signal: controller.signal, onQueued: (p) => positions.push(p) });
    await reported(positions, 1);
    expect(await metric(g, 'spawngate_spawns_waiting{backend="l",profile="one"}')).toEqual(['spawngate_spawns_waiting{backend="l",profile="one"} 1']);
    controller.abort(new Error('caller left'));
    await expect(waiting).rejects.toThrow('caller left');
    expect(await g.store.queue?.list()).toEqual([]);
    expect(await metric(g, 'spawngate_spawns_waiting{backend="l",profile="one"}')).toEqual(['spawngate_spawns_waiting{backend="l",profile="one"} 0']);
    // The slot the cancelled spawn waited for is the next request's.
    if (holder.allowed) await holder.reservation.release();
    expect((await g.reserve(request('next'))).allowed).toBe(true);
  });

  it('never waits on a deny that no freed slot could change', async () => {
    const { g } = await gate();
    const denied = await g.reserve({ ...request('x', 30), agentId: 'nobody-knows-me' });
    expect(denied.allowed).toBe(false);
    expect(denied.decision.reasons[0]?.code).toBe('agent_unknown');
    expect(await g.store.queue?.list()).toEqual([]);
  });
});
