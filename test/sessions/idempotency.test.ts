/**
 * Idempotent spawns through a real gate (memory store, the fake backend's real workers) and the
 * HTTP API: a retried request gets the spawn the first one made, a concurrent retry waits for it,
 * a different request under a used key is refused, and an attempt that made nothing (denied,
 * failed) leaves the key free. The store-level rules (claims lapse, windows end) are checked on
 * an injected clock, for the memory store here and for Redis in test/redis/idempotency.test.ts.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { createMemoryIdempotency } from '../../src/admission/store/memory.js';
import { createServer, type RunningServer } from '../../src/server/index.js';
import type { Spawngate } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';
import { createFakeBackend, type FakeBackend } from '../../src/testing.js';
import { call } from '../server/helpers.js';
import { caller, collect } from '../telemetry/gate.js';
import { idempotencyStoreContract } from '../admission/idempotency-contract.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const gates: Spawngate[] = [];
const servers: RunningServer[] = [];

afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
  for (const g of gates.splice(0)) {
    // Workers of the fake backend live in this process: close them, not just the gate.
    for (const w of await g.list()) await g.close(w.spawnId).catch(() => undefined);
    await g.shutdown();
  }
});

async function gateWith(fake: FakeBackend, idempotency?: { windowSeconds?: number; waitSeconds?: number }): Promise<Spawngate> {
  const g = await createSpawngate({
    config: {
      agents: {
        executionBackends: { fake: { type: 'process', defaultProfile: 'p', profiles: { p: { egress: 'open', ttlSeconds: 600, timeoutSeconds: 120, maxConcurrent: { profile: 1 } } } } },
        execution: { default: { backend: 'fake', profile: 'p' } },
        acp: { fixture: { command: [process.execPath, fixture] } },
      },
      ...(idempotency ? { spawngate: { idempotency } } : {}),
    },
    resolveBackend: () => Promise.resolve(fake),
    owner: 'idem-test',
    sweepIntervalMs: 0,
    decisionLog: false,
  });
  gates.push(g);
  return g;
}

// One caller per user for the whole file: a retry is the same request, session key included.
const callers = new Map<string, ReturnType<typeof caller>>();
const callerOf = (user: string) => callers.get(user) ?? callers.set(user, caller({ user })).get(user)!;
const request = (extra: Record<string, unknown> = {}, user = 'alice') => ({ agentId: 'echo', task: 'do it', caller: callerOf(user), ...extra });

describe('idempotent spawn through a gate', () => {
  it('a retry with the same key returns the same spawn (same id, same decision) and starts no second worker', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    const first = await g.spawn(request({ idempotencyKey: 'k-1' }));
    expect(first.replayed).toBeUndefined();
    // A retry carries a new trace context: it is still the same request.
    const again = await g.spawn(request({ idempotencyKey: 'k-1', traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' }));
    expect(again.replayed).toBe(true);
    expect(again.spawnId).toBe(first.spawnId);
    expect(again.decisionId).toBe(first.decisionId);
    expect(again.decision).toEqual(first.decision);
    expect(fake.workers.size).toBe(1);
    // The replayed handle drives the same live worker.
    expect((await collect(again.turn('still me'))).at(-1)).toMatchObject({ type: 'turn.completed' });
    expect((await g.store.active()).map((r) => r.spawnId)).toEqual([first.spawnId]);
  });

  it('concurrent requests with one key make one worker, and every caller gets it', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    const handles = await Promise.all(Array.from({ length: 8 }, () => g.spawn(request({ idempotencyKey: 'burst' }))));
    expect(new Set(handles.map((h) => h.spawnId)).size).toBe(1);
    expect(handles.filter((h) => h.replayed !== true)).toHaveLength(1);
    expect(fake.workers.size).toBe(1);
  });

  it('refuses a different request under a used key with IDEMPOTENCY_KEY_REUSED, creating nothing', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    const first = await g.spawn(request({ idempotencyKey: 'k-2' }));
    const err = await g.spawn(request({ idempotencyKey: 'k-2', task: 'something else' })).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'IDEMPOTENCY_KEY_REUSED', retryable: false, details: { idempotencyKey: 'k-2', spawnId: first.spawnId } });
    expect(fake.workers.size).toBe(1);
  });

  it('scopes keys by user: another user\'s same key is another spawn', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    const mine = await g.spawn(request({ idempotencyKey: 'shared' }, 'alice'));
    await mine.close();
    const theirs = await g.spawn(request({ idempotencyKey: 'shared' }, 'bob'));
    expect(theirs.spawnId).not.toBe(mine.spawnId);
    expect(theirs.replayed).toBeUndefined();
  });

  it('a denied attempt binds nothing: once the cap frees up, the same request with the same key spawns', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    const holder = await g.spawn(request({}, 'carol'));
    await expect(g.spawn(request({ idempotencyKey: 'k-3' }))).rejects.toMatchObject({ code: 'ADMISSION_DENIED' });
    await holder.close();
    const h = await g.spawn(request({ idempotencyKey: 'k-3' }));
    expect(h.replayed).toBeUndefined();
    expect(fake.workers.size).toBe(1);
  });

  it('a failed attempt binds nothing: the retry spawns', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    fake.failNextCreate();
    await expect(g.spawn(request({ idempotencyKey: 'k-4' }))).rejects.toMatchObject({ code: 'BACKEND_FAILED' });
    const h = await g.spawn(request({ idempotencyKey: 'k-4' }));
    expect(h.replayed).toBeUndefined();
    expect(fake.workers.size).toBe(1);
  });

  it('after close, a retry within the window still answers with the spawn the key made (it does not start another)', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    const first = await g.spawn(request({ idempotencyKey: 'k-5' }));
    await first.close();
    const again = await g.spawn(request({ idempotencyKey: 'k-5' }));
    expect(again).toMatchObject({ spawnId: first.spawnId, replayed: true });
    expect((await again.status()).tracking).toBe('closed');
    expect(fake.workers.size).toBe(0);
  });

  it('rejects a bad key with the request path', async () => {
    const g = await gateWith(createFakeBackend());
    await expect(g.spawn(request({ idempotencyKey: '' }))).rejects.toMatchObject({ code: 'REQUEST_INVALID', issues: [{ path: 'idempotencyKey', message: 'must not be empty' }] });
    await expect(g.spawn(request({ idempotencyKey: 'a\u0000b' }))).rejects.toMatchObject({ code: 'REQUEST_INVALID', issues: [{ path: 'idempotencyKey', message: 'must not contain control characters' }] });
    await expect(g.spawn(request({ idempotencyKey: 'x'.repeat(257) }))).rejects.toMatchObject({ code: 'REQUEST_INVALID' });
  });
});

describe('Idempotency-Key over HTTP', () => {
  it('answers a retry with the first spawn, marked idempotent-replayed; a reused key is a 422; header and body must agree', async () => {
    const fake = createFakeBackend();
    const g = await gateWith(fake);
    const token = randomBytes(24).toString('base64url');
    const server = await createServer({ gate: g, token, listen: { port: 0, host: '127.0.0.1' } });
    servers.push(server);
    const key = `"${randomUUID()}"`;
    const body = request();
    const first = await call(server.address, 'POST', '/v1/spawns', { token, body, headers: { 'idempotency-key': key } });
    expect(first.status, first.text).toBe(201);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    const retry = await call(server.address, 'POST', '/v1/spawns', { token, body, headers: { 'idempotency-key': key } });
    expect(retry.status, retry.text).toBe(201);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    const a = first.json as Record<string, unknown>;
    const b = retry.json as Record<string, unknown>;
    expect(b['spawnId']).toBe(a['spawnId']);
    expect(b['decisionId']).toBe(a['decisionId']);
    expect(b['decision']).toEqual(a['decision']);
    expect(fake.workers.size).toBe(1);

    const reused = await call(server.address, 'POST', '/v1/spawns', { token, body: { ...body, task: 'another task' }, headers: { 'idempotency-key': key } });
    expect(reused.status, reused.text).toBe(422);
    expect(reused.json).toMatchObject({ error: { code: 'IDEMPOTENCY_KEY_REUSED' } });

    const both = await call(server.address, 'POST', '/v1/spawns', { token, body: { ...body, idempotencyKey: 'body-key' }, headers: { 'idempotency-key': 'header-key' } });
    expect(both.status, both.text).toBe(400);
    expect(both.json).toMatchObject({ error: { code: 'REQUEST_INVALID', issues: [{ path: 'headers.idempotency-key' }] } });
    const empty = await call(server.address, 'POST', '/v1/spawns', { token, body, headers: { 'idempotency-key': '""' } });
    expect(empty.status, empty.text).toBe(400);
    expect(fake.workers.size).toBe(1);
  });
});

describe('a keyed spawn whose caller disconnects', () => {
  it('goes on (the retry is who learns its id): the worker starts once and the retry gets it', async () => {
    const fake = createFakeBackend();
    let entered!: () => void;
    const createEntered = new Promise<void>((resolve) => (entered = resolve));
    let proceed!: () => void;
    const mayCreate = new Promise<void>((resolve) => (proceed = resolve));
    // The backend's create is held until the first caller is gone.
    const slow: FakeBackend = Object.assign(Object.create(fake) as FakeBackend, {
      async create(spec: Parameters<FakeBackend['create']>[0]) {
        entered();
        await mayCreate;
        return fake.create(spec);
      },
    });
    const g = await gateWith(slow);
    const token = randomBytes(24).toString('base64url');
    const server = await createServer({ gate: g, token, listen: { port: 0, host: '127.0.0.1' } });
    servers.push(server);
    const body = request({ idempotencyKey: 'left-early' });
    const payload = JSON.stringify(body);
    const { request: httpRequest } = await import('node:http');
    const url = new URL((server.address as { url: string }).url);
    const req = httpRequest({ hostname: url.hostname, port: url.port, method: 'POST', path: '/v1/spawns', agent: false, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } });
    req.on('error', () => undefined);
    req.end(payload);
    await createEntered;
    req.destroy();
    proceed();
    const retry = await call(server.address, 'POST', '/v1/spawns', { token, body });
    expect(retry.status, retry.text).toBe(201);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(fake.workers.size).toBe(1);
    const status = await call(server.address, 'GET', `/v1/spawns/${(retry.json as { spawnId: string }).spawnId}`, { token });
    expect(status.json).toMatchObject({ tracking: 'live' });
  });
});

it('the memory store keeps at most maxKeys keys, forgetting the oldest completed ones first', async () => {
  const store = createMemoryIdempotency(() => 0, 3);
  for (const k of ['a', 'b']) {
    await store.claim(k, 'fp', `s-${k}`, 10_000);
    await store.complete(k, `s-${k}`, '{}', 60_000);
  }
  await store.claim('pending', 'fp', 's-p', 10_000);
  expect(await store.claim('c', 'fp', 's-c', 10_000)).toEqual({ state: 'claimed' });
  // "a", the oldest completed key, went to make room for "c"; a pending claim is never forgotten.
  expect(await store.claim('a', 'fp', 's-a2', 10_000)).toEqual({ state: 'claimed' });
  expect(await store.claim('pending', 'fp', 's-x', 10_000)).toEqual({ state: 'pending', spawnId: 's-p' });
});

idempotencyStoreContract('memory', () => {
  let t = 1_000_000;
  return Promise.resolve({ store: createMemoryIdempotency(() => t), advance: (ms: number) => void (t += ms), close: () => Promise.resolve() });
});
