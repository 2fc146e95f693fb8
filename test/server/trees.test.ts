/**
 * Spawn-tree budgets through the HTTP API, on real workers (process backend, fixture ACP agent,
 * shipped bundle with `policyData.trees`): the spawn answer shows the tree's counts, a spawn past
 * the tree's worker-seconds is refused with nothing created, and closing a worker gives its tree
 * back the TTL it did not run.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Spawngate } from '../../src/spawngate.js';
import { call, processBackend, spawnRequest, type Target, serveGate, type Served } from './helpers.js';

type Json = Record<string, unknown>;

const token = randomBytes(24).toString('base64url');

describe('spawn-tree budgets over HTTP', () => {
  const backend = processBackend();
  let served: Served;
  let gate: Spawngate;
  let target: Target;
  const root = `agent:main:tree-root:${randomUUID()}`;
  // Each spawn holds the profile's TTL (600 s) until it ends; the tree may hold 1,000 worker-seconds.
  const config = { ...backend.config, spawngate: { policyData: { trees: { maxWorkerSeconds: 1000, windowSeconds: 3600 } } } };

  beforeAll(async () => {
    served = await serveGate(config, { token, owner: `trees-${randomUUID().slice(0, 8)}` });
    ({ gate, target } = served);
  });

  afterAll(async () => {
    await served?.close();
    backend.remove();
  });

  const child = (name: string) => {
    const request = spawnRequest(`echo ${name}`);
    const caller = request['caller'] as Json;
    return { ...request, caller: { ...caller, sessionKey: `agent:main:subagent:${name}`, parentSessionKey: root, rootSessionKey: root, depth: 1 } };
  };

  it('answers with the tree, refuses a spawn past its worker-seconds, and refunds what a closed worker did not run', async () => {
    const first = await call(target, 'POST', '/v1/spawns', { token, body: { ...spawnRequest('echo first'), caller: { ...(spawnRequest('x')['caller'] as Json), sessionKey: root } } });
    expect(first.status, first.text).toBe(201);
    const firstBody = first.json as Json;
    expect(firstBody['decision']).toMatchObject({ limits: { tree: { root, maxSpawns: null, maxWorkerSeconds: 1000, windowSeconds: 3600 } } });
    expect(firstBody['tree']).toEqual({ root, spawns: 1, workerSeconds: 600 });

    // A child of the root asks for another 600 s: 1,200 would exceed the tree's 1,000.
    const refused = await call(target, 'POST', '/v1/spawns', { token, body: child('b') });
    expect(refused.status).toBe(403);
    expect(refused.json).toMatchObject({
      error: { code: 'ADMISSION_DENIED', reasons: [{ code: 'tree_worker_seconds_exhausted', message: `the spawn tree of session ${root} has used or holds 600 of its 1000 worker-seconds; this spawn's TTL needs 600 more` }] },
    });
    expect(await gate.list()).toHaveLength(1);

    // Closed, the first worker keeps only what it ran: the child fits now.
    expect((await call(target, 'DELETE', `/v1/spawns/${firstBody['spawnId'] as string}`, { token })).status).toBe(204);
    const second = await call(target, 'POST', '/v1/spawns', { token, body: child('b') });
    expect(second.status, second.text).toBe(201);
    const tree = (second.json as Json)['tree'] as { spawns: number; workerSeconds: number };
    expect(tree.spawns).toBe(2);
    // 600 held by the child, plus the seconds the first worker ran (at least one, rounded up).
    expect(tree.workerSeconds).toBeGreaterThan(600);
    expect(tree.workerSeconds).toBeLessThan(1000);
    expect((await call(target, 'DELETE', `/v1/spawns/${(second.json as Json)['spawnId'] as string}`, { token })).status).toBe(204);
    expect(await gate.store.active()).toEqual([]);
  });
});
