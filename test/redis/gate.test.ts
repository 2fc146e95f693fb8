import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAdmission, SHIPPED_BUNDLE, type Admission } from '../../src/admission/gate.js';
import type { PolicyBundle } from '../../src/admission/engine.js';
import { readBundle } from '../../src/admission/bundle.js';
import { createRedisStore } from '../../src/admission/store/redis.js';
import { memoryLogger } from '../helpers/logger.js';
import { ensureRedis } from './server.js';

// The config cannot set a key prefix, so these gates use the default one; every name that becomes a
// key (backend, users, channels) is unique to this run, and the policy's global cap (total/*, the
// one key all runs would share) is lifted, so runs — even concurrent ones — cannot see each other.
const run = randomUUID().replaceAll('-', '').slice(0, 12);
const backend = `redis${run}`;
const profileKey = `${backend}/small`;

let url = '';
let bundle: PolicyBundle;
const gates: Admission[] = [];

beforeAll(async () => {
  url = await ensureRedis();
  const shipped = await readBundle(SHIPPED_BUNDLE);
  const data = structuredClone(shipped.data) as { spawngate: { admission: { config: { concurrency: { total: number | null } } } } };
  data.spawngate.admission.config.concurrency.total = null;
  bundle = { ...shipped, data, revision: 'redis-gate-test' };
});

afterAll(async () => {
  // Leave nothing behind in the shared test Redis: free what is still held, then close.
  for (const g of gates) {
    for (const r of await g.store.active().catch(() => [])) if (r.meta['backend'] === backend) await g.store.release(r.id).catch(() => false);
  }
  for (const g of gates) await g.close();
});

function config(storeUrl: string) {
  return {
    agents: {
      executionBackends: {
        [backend]: { type: 'process', defaultProfile: 'small', profiles: { small: { allowedAgents: ['echo'], maxConcurrent: { profile: 2, user: 1 } } } },
      },
      execution: { default: { backend, profile: 'small' } },
    },
    spawngate: { store: { type: 'redis', url: storeUrl } },
  };
}

async function gateway(storeUrl = `${url}/5`, extra: Parameters<typeof createAdmission>[0] = {}): Promise<Admission> {
  const g = await createAdmission({ config: config(storeUrl), bundle, watchBundle: false, decisionLog: false, logger: memoryLogger(), ...extra });
  gates.push(g);
  return g;
}

const spawn = (user: string, channel = `chan-${user}`) => ({
  agentId: 'echo',
  task: 't',
  caller: { sessionKey: `agent:main:${channel}`, depth: 0, channel: { id: `${run}-${channel}`, kind: 'telegram' }, user: { id: `${run}-${user}`, roles: [] } },
});

describe('admission gate on the Redis store (spawngate.store: redis)', () => {
  it('two gateways share usage, caps and releases through one Redis', async () => {
    const a = await gateway();
    const b = await gateway();
    expect([a.store.kind, b.store.kind]).toEqual(['redis', 'redis']);

    const first = await a.reserve(spawn('u1'));
    if (!first.allowed) throw new Error(`expected an allow, got ${JSON.stringify(first.decision.reasons)}`);
    // Gateway B sees A's worker in the policy's usage and is held to the per-user cap on the profile.
    const seen = await b.admit(spawn('u1', 'other'));
    expect(seen.input.usage.userProfiles[profileKey]).toBe(1);
    expect(seen.input.usage.profiles[profileKey]).toBe(1);
    expect(seen.decision.reasons[0]?.code).toBe('concurrency_limit_profile_user');

    const second = await b.reserve(spawn('u2'));
    expect(second.allowed).toBe(true);
    expect((await a.reserve(spawn('u3'))).decision.reasons[0]?.code).toBe('concurrency_limit_profile');

    // Released through A; B's release of the same id is the logged no-op, the slot is free once.
    expect(await first.reservation.release()).toBe(true);
    expect(await b.store.release(first.reservation.id)).toBe(false);
    expect((await b.store.counts([`profile/${profileKey}`])).get(`profile/${profileKey}`)).toBe(1);

    // 40 racing spawns through both gateways for the one slot left: exactly one wins.
    const racers = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).reserve(spawn(`racer${i}`))));
    const winners = racers.filter((r) => r.allowed);
    expect(winners).toHaveLength(1);
    expect(racers.filter((r) => !r.allowed).every((r) => r.decision.reasons[0]?.code === 'concurrency_limit_profile')).toBe(true);
    for (const r of [second, ...winners]) if (r.allowed) expect(await r.reservation.release()).toBe(true);
    expect((await a.store.counts([`profile/${profileKey}`])).get(`profile/${profileKey}`)).toBe(0);
  });

  it('holds one spawn tree to its budget across two gateways: 30 racing spawns in one tree, exactly its 5 spawns win', async () => {
    const data = structuredClone(bundle.data) as { spawngate: { admission: { config: Record<string, unknown> } } };
    data.spawngate.admission.config['trees'] = { maxChildren: null, maxSpawns: 5, maxWorkerSeconds: null, windowSeconds: 600 };
    const trees = { ...bundle, data, revision: 'redis-trees' };
    // A profile without caps of its own, so that the tree is the only limit the racers meet.
    const uncapped = { agents: { executionBackends: { [`${backend}t`]: { type: 'process', profiles: { open: { allowedAgents: ['echo'] } } } } }, spawngate: { store: { type: 'redis', url: `${url}/5` } } };
    const a = await gateway(undefined, { bundle: trees, config: uncapped });
    const b = await gateway(undefined, { bundle: trees, config: uncapped });
    const root = `agent:main:${run}-root`;
    // Children of the root and grandchildren that name it: one tree, whatever session asks.
    const inTree = (i: number) => ({
      ...spawn(`tree${i}`),
      caller: { ...spawn(`tree${i}`).caller, sessionKey: `agent:main:subagent:${run}-${i}`, parentSessionKey: i % 3 ? root : `agent:main:subagent:${run}-x`, rootSessionKey: root, depth: i % 3 ? 1 : 2 },
    });
    const racers = await Promise.all(Array.from({ length: 30 }, (_, i) => (i % 2 ? a : b).reserve(inTree(i))));
    const winners = racers.filter((r) => r.allowed);
    expect(winners).toHaveLength(5);
    expect(winners.map((r) => r.reservation?.record.tree?.spawns).sort()).toEqual([1, 2, 3, 4, 5]);
    expect(racers.filter((r) => !r.allowed).map((r) => r.decision.reasons[0]?.code)).toEqual(Array(25).fill('tree_spawns_exhausted'));
    for (const r of winners) if (r.allowed) expect(await r.reservation.release()).toBe(true);
    // Released, the tree still has no spawn left: they count over its life, on every gateway.
    expect((await a.admit(inTree(99))).decision.reasons[0]?.code).toBe('tree_spawns_exhausted');
  });

  it('hands a slot freed on one gateway to the spawn waiting on another, ahead of a newcomer; a cancelled wait leaves nothing', async () => {
    const one = { agents: { executionBackends: { [`${backend}w`]: { type: 'process', profiles: { one: { allowedAgents: ['echo'], maxConcurrent: { profile: 1 } } } } } }, spawngate: { store: { type: 'redis', url: `${url}/5` } } };
    const a = await gateway(undefined, { config: one });
    const b = await gateway(undefined, { config: one });
    const holder = await a.reserve(spawn('wait-holder'));
    if (!holder.allowed) throw new Error(`expected an allow, got ${JSON.stringify(holder.decision.reasons)}`);
    const positions: number[] = [];
    const waiting = b.reserve({ ...spawn('wait-b'), waitSeconds: 60 }, { onQueued: (p) => positions.push(p) });
    for (let i = 0; i < 1000 && positions.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(positions).toEqual([1]);
    const controller = new AbortController();
    const cancelled = a.reserve({ ...spawn('wait-c'), waitSeconds: 60 }, { signal: controller.signal, onQueued: (p) => positions.push(p) });
    for (let i = 0; i < 1000 && positions.length === 1; i++) await new Promise((r) => setTimeout(r, 5));
    expect(positions).toEqual([1, 2]);
    controller.abort(new Error('gone'));
    await expect(cancelled).rejects.toThrow('gone');
    expect((await a.store.queue?.list())?.map((w) => w.user)).toEqual([`${run}-wait-b`]);

    await holder.reservation.release();
    // Freed on A, the slot is B's waiter's: a newcomer on A is refused whether or not B has taken it yet.
    const newcomer = await a.reserve(spawn('wait-new'));
    expect(newcomer.decision.reasons[0]?.code).toBe('concurrency_limit_profile');
    const served = await waiting;
    expect(served.allowed).toBe(true);
    expect(await b.store.queue?.list()).toEqual([]);
    if (served.allowed) await served.reservation.release();
  });

  it('closes the store it created from config, and leaves a store passed in open', async () => {
    const own = await gateway();
    await own.close();
    await expect(own.store.counts(['user/x'])).rejects.toMatchObject({ code: 'RESERVATION_FAILED' });

    const passed = await createRedisStore({ url: `${url}/5` });
    try {
      const borrowing = await gateway(`${url}/5`, { store: passed });
      expect(borrowing.store).toBe(passed);
      await borrowing.close();
      expect((await passed.counts([`profile/${profileKey}`])).get(`profile/${profileKey}`)).toBe(0);
    } finally {
      await passed.close();
    }
  });

  it('with Redis down, admit and reserve fail with a retryable RESERVATION_FAILED — never an allow', async () => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    if (!address || typeof address === 'string') throw new Error('no port');

    const g = await gateway(`redis://127.0.0.1:${address.port}`);
    for (const call of [() => g.reserve(spawn('down')), () => g.admit(spawn('down'))]) {
      const outcome = await call().then(
        (value) => ({ resolved: value }),
        (err: unknown) => err,
      );
      expect(outcome).toMatchObject({ code: 'RESERVATION_FAILED', retryable: true });
    }
  });
});
