/**
 * Waiting for a slot over HTTP, on real workers (process backend, fixture ACP agent, shipped
 * bundle): `Prefer: wait=N` holds the spawn until a slot frees, `GET /v1/queue` shows where it
 * stands, and a caller that hangs up leaves no waiter behind.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Spawngate } from '../../src/spawngate.js';
import { call, eventually, processBackend, spawnRequest, type Reply, type Target, serveGate, type Served } from './helpers.js';

type Json = Record<string, unknown>;

// Typed `unknown` so object literals holding them stay free of `any`.
const anyString: unknown = expect.any(String);

const token = randomBytes(24).toString('base64url');

describe('waiting for a slot over HTTP', () => {
  const backend = processBackend();
  let served: Served;
  let gate: Spawngate;
  let target: Target;
  // One worker at a time on the default profile.
  const base = structuredClone(backend.config) as { agents: { executionBackends: { local: { profiles: Record<string, Json> } } } };
  base.agents.executionBackends.local.profiles['small'] = { ...base.agents.executionBackends.local.profiles['small'], maxConcurrent: { profile: 1 } };
  const config = base;

  beforeAll(async () => {
    served = await serveGate(config, { token, owner: `wait-${randomUUID().slice(0, 8)}` });
    ({ gate, target } = served);
  });

  afterAll(async () => {
    await served?.close();
    backend.remove();
  });

  const queue = async (): Promise<Json[]> => ((await call(target, 'GET', '/v1/queue', { token })).json as { waiting: Json[] }).waiting;

  it('Prefer: wait=N holds a spawn in the queue until the slot frees; /v1/queue shows it; a caller that hangs up leaves nothing', async () => {
    const first = await call(target, 'POST', '/v1/spawns', { token, body: spawnRequest('echo first') });
    expect(first.status, first.text).toBe(201);

    // Without a wait the full cap is a 403 at once.
    const refused = await call(target, 'POST', '/v1/spawns', { token, body: spawnRequest('echo refused') });
    expect(refused.status).toBe(403);
    expect(refused.json).toMatchObject({ error: { reasons: [{ code: 'concurrency_limit_profile' }] } });

    const waiting: Promise<Reply> = call(target, 'POST', '/v1/spawns', { token, body: { ...spawnRequest('echo second'), label: 'second' }, headers: { prefer: 'respond-async, wait=60' } });
    await eventually(async () => (await queue()).length === 1, 10_000, 'the waiting spawn in /v1/queue');
    expect(await queue()).toEqual([{ position: 1, priority: 10, user: 'server-test-user', since: anyString, spawnId: anyString, sessionKey: anyString, agent: 'fixture', label: 'second' }]);

    // A caller that hangs up while it waits: its ticket goes with it.
    const body = JSON.stringify({ ...spawnRequest('echo gone'), waitSeconds: 60, label: 'gone' });
    const url = new URL((target as { url: string }).url);
    const gone = httpRequest({ hostname: url.hostname, port: url.port, method: 'POST', path: '/v1/spawns', agent: false, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } });
    gone.on('error', () => undefined);
    gone.end(body);
    await eventually(async () => (await queue()).length === 2, 10_000, 'the second waiter');
    expect((await queue()).map((w) => w['label'])).toEqual(['second', 'gone']);
    gone.destroy();
    await eventually(async () => (await queue()).length === 1, 10_000, 'the hung-up waiter to leave the queue');

    expect((await call(target, 'DELETE', `/v1/spawns/${(first.json as Json)['spawnId'] as string}`, { token })).status).toBe(204);
    const second = await waiting;
    expect(second.status, second.text).toBe(201);
    expect(await queue()).toEqual([]);
    expect((await call(target, 'DELETE', `/v1/spawns/${(second.json as Json)['spawnId'] as string}`, { token })).status).toBe(204);
    expect(await gate.store.active()).toEqual([]);
  });
});
