/**
 * Idempotency keys in Redis: the store contract on an injected clock, and two gateways (two gates,
 * each with its own backend) sharing one Redis, as replicas behind a load balancer do. A retry that
 * lands on the other replica gets the spawn the first one made; concurrent requests with one key
 * on both replicas make one worker in all.
 */
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createRedisStore } from '../../src/admission/store/redis.js';
import type { ReservationStore } from '../../src/admission/store/types.js';
import type { Spawngate } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';
import { createFakeBackend, type FakeBackend } from '../../src/testing.js';
import { idempotencyStoreContract } from '../admission/idempotency-contract.js';
import { caller } from '../telemetry/gate.js';
import { deleteKeys, ensureRedis, rawClient, uniquePrefix } from './server.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const runPrefix = uniquePrefix('idempotency');
// A config's keyPrefix is at most 63 characters: the replicas' prefixes are shorter than runPrefix.
const replicaRun = `spawngate-test:idem:${randomUUID().slice(0, 8)}:`;
let replicaTests = 0;
let url = '';
const gates: Spawngate[] = [];

beforeAll(async () => {
  url = await ensureRedis();
});

afterEach(async () => {
  for (const g of gates.splice(0)) {
    for (const w of await g.list()) await g.close(w.spawnId).catch(() => undefined);
    await g.shutdown();
  }
});

afterAll(async () => {
  const client = await rawClient();
  try {
    await deleteKeys(client, runPrefix);
    await deleteKeys(client, replicaRun);
  } finally {
    await client.quit();
  }
});

idempotencyStoreContract('redis', async () => {
  let t = 1_000_000;
  const store: ReservationStore = await createRedisStore({ url, keyPrefix: `${runPrefix}${randomUUID()}:`, now: () => t });
  if (!store.idempotency) throw new Error('the Redis store keeps no idempotency keys');
  return { store: store.idempotency, advance: (ms: number) => void (t += ms), close: () => store.close() };
});

/** One replica: a gate on the shared Redis (one key prefix per test) with a backend of its own. */
async function replica(prefix: string, fake: FakeBackend): Promise<Spawngate> {
  const g = await createSpawngate({
    config: {
      agents: {
        executionBackends: { fake: { type: 'process', defaultProfile: 'p', profiles: { p: { egress: 'open', ttlSeconds: 600, timeoutSeconds: 120 } } } },
        execution: { default: { backend: 'fake', profile: 'p' } },
        acp: { fixture: { command: [process.execPath, fixture] } },
      },
      spawngate: { store: { type: 'redis', url, keyPrefix: prefix } },
    },
    resolveBackend: () => Promise.resolve(fake),
    owner: `idem-${randomUUID().slice(0, 8)}`,
    sweepIntervalMs: 0,
    decisionLog: false,
  });
  gates.push(g);
  return g;
}

describe('idempotent spawns across replicas sharing Redis', () => {
  const theCaller = caller({ user: `idem-${randomUUID().slice(0, 8)}` });
  const request = (key: string) => ({ agentId: 'echo', task: 'one worker please', caller: theCaller, idempotencyKey: key });

  it('a retry on the other replica gets the first spawn (same id and decision) and makes no worker there', async () => {
    const prefix = `${replicaRun}${replicaTests++}:`;
    const [fa, fb] = [createFakeBackend(), createFakeBackend()];
    const [a, b] = [await replica(prefix, fa), await replica(prefix, fb)];
    const first = await a.spawn(request('lost-reply'));
    const retry = await b.spawn(request('lost-reply'));
    expect(retry).toMatchObject({ spawnId: first.spawnId, decisionId: first.decisionId, nativeId: first.nativeId, replayed: true });
    expect(retry.decision).toEqual(first.decision);
    expect([fa.workers.size, fb.workers.size]).toEqual([1, 0]);
    // Only the replica that runs a worker holds its token: turns go there.
    await expect((async () => {
      for await (const _ of retry.turn('hi')) void _;
    })()).rejects.toMatchObject({ code: 'SPAWN_NOT_FOUND' });
    // A different request under the key is refused on either replica.
    await expect(b.spawn({ ...request('lost-reply'), task: 'another' })).rejects.toMatchObject({ code: 'IDEMPOTENCY_KEY_REUSED' });
  });

  it('concurrent requests with one key on both replicas make one worker in all', async () => {
    const prefix = `${replicaRun}${replicaTests++}:`;
    const [fa, fb] = [createFakeBackend(), createFakeBackend()];
    const [a, b] = [await replica(prefix, fa), await replica(prefix, fb)];
    const handles = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? a : b).spawn(request('storm'))));
    expect(new Set(handles.map((h) => h.spawnId)).size).toBe(1);
    expect(fa.workers.size + fb.workers.size).toBe(1);
    expect(handles.filter((h) => h.replayed !== true)).toHaveLength(1);
  });
});
