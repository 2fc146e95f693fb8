/**
 * The HTTP API on a real server (127.0.0.1, port 0) in front of a real gate: the process backend,
 * the reference worker and the fixture ACP agent, the shipped policy bundle.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { statSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type RunningServer } from '../../src/server/index.js';
import { createSpawngate, type Spawngate } from '../../src/spawngate.js';
import { memoryLogger } from '../helpers/logger.js';
import { call, eventually, openStream, processBackend, readAll, serveGate, spawnRequest, type OpenStream, type Served, type Reply, type Target } from './helpers.js';

type Json = Record<string, unknown>;

// Typed `unknown` so object literals holding them stay free of `any`.
const anyString: unknown = expect.any(String);

const token = randomBytes(24).toString('base64url');
const body = (reply: Reply): Json => reply.json as Json;

/** Reads events until `count` message deltas have arrived, so the turn is known to be mid-way. */
async function readDeltas(stream: OpenStream, count: number): Promise<Json[]> {
  const seen: Json[] = [];
  while (seen.filter((e) => e['type'] === 'agent.message.delta').length < count) {
    const next = await stream.lines.next();
    if (next.done) throw new Error(`stream ended after ${seen.length} events: ${JSON.stringify(seen)}`);
    seen.push(next.value);
  }
  return seen;
}

function decisionCount(metricsText: string, result: 'allow' | 'deny'): number {
  let total = 0;
  for (const line of metricsText.split('\n')) {
    const m = /^spawngate_decisions_total\{([^}]*)\} (\d+)$/.exec(line);
    if (m?.[1]?.includes(`result="${result}"`)) total += Number(m[2]);
  }
  return total;
}

describe('HTTP API', () => {
  const backend = processBackend();
  const logger = memoryLogger();
  let served: Served;
  let gate: Spawngate;
  let server: RunningServer;
  let target: Target;
  const auth = { token };

  beforeAll(async () => {
    served = await serveGate(backend.config, { token, owner: `srv-${randomUUID().slice(0, 8)}`, logger });
    ({ gate, server, target } = served);
  });

  afterAll(async () => {
    await served?.close();
    backend.remove();
  });

  it('refuses /v1 without the right token, and serves /healthz and /metrics without one', async () => {
    for (const [method, path] of [
      ['GET', '/v1/spawns'],
      ['POST', '/v1/admit'],
      ['POST', '/v1/spawns'],
      ['GET', '/v1/no-such-route'],
    ] as const) {
      const anonymous = await call(target, method, path, { body: spawnRequest('echo hi') });
      expect(anonymous.status, `${method} ${path}`).toBe(401);
      expect(anonymous.headers['www-authenticate']).toBe('Bearer');
      expect(body(anonymous)).toMatchObject({ error: { code: 'UNAUTHORIZED' } });
    }
    expect((await call(target, 'GET', '/v1/spawns', { token: `${token}x` })).status).toBe(401);
    expect((await call(target, 'GET', '/v1/spawns', { headers: { authorization: `Basic ${token}` } })).status).toBe(401);
    expect((await call(target, 'GET', '/v1/spawns', auth)).status).toBe(200);

    const health = await call(target, 'GET', '/healthz');
    expect(health.status).toBe(200);
    expect(body(health)).toEqual({ status: 'ok', bundleRevision: gate.policy.revision });
    expect(gate.policy.revision).toEqual(anyString);
    const metrics = await call(target, 'GET', '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.headers['content-type']).toBe(gate.metrics.registry.contentType);
  });

  it('admit is a dry run: allow and deny are both 200 decisions', async () => {
    const allowed = await call(target, 'POST', '/v1/admit', { ...auth, body: spawnRequest('echo admit') });
    expect(allowed.status).toBe(200);
    expect(body(allowed)).toMatchObject({
      decisionId: anyString,
      stage: 'policy',
      bundleRevision: gate.policy.revision,
      decision: { allow: true, backend: 'local', profile: 'small' },
    });
    const denied = await call(target, 'POST', '/v1/admit', { ...auth, body: spawnRequest('echo admit', { execution: { profile: 'restricted' } }) });
    expect(denied.status).toBe(200);
    expect(body(denied)).toMatchObject({ decision: { allow: false, reasons: [expect.objectContaining({ code: 'agent_not_allowed' })] } });
    expect(await gate.list({ allOwners: true })).toHaveLength(0);
    expect(await gate.store.active()).toHaveLength(0);
  });

  it('/metrics counts each decision in spawngate_decisions_total', async () => {
    const before = (await call(target, 'GET', '/metrics')).text;
    await call(target, 'POST', '/v1/admit', { ...auth, body: spawnRequest('echo count me', { execution: { profile: 'restricted' } }) });
    const after = (await call(target, 'GET', '/metrics')).text;
    expect(after).toMatch(/^spawngate_decisions_total\{[^}]*result="deny"[^}]*\} \d+$/m);
    expect(decisionCount(after, 'deny')).toBe(decisionCount(before, 'deny') + 1);
    expect(decisionCount(after, 'allow')).toBe(decisionCount(before, 'allow'));
  });

  it('spawn → streamed turn → status → logs → delete → gone', async () => {
    const created = await call(target, 'POST', '/v1/spawns', { ...auth, body: spawnRequest('echo hello over http') });
    expect(created.status, created.text).toBe(201);
    const spawn = body(created);
    expect(spawn).toMatchObject({
      spawnId: anyString,
      agentId: 'fixture',
      backend: 'local',
      profile: 'small',
      nativeId: anyString,
      decision: { allow: true, backend: 'local', profile: 'small' },
    });
    expect(new Date(spawn['expiresAt'] as string).getTime()).toBeGreaterThan(Date.now());
    const id = spawn['spawnId'] as string;
    expect(created.headers['location']).toBe(`/v1/spawns/${id}`);

    const stream = await openStream(target, `/v1/spawns/${id}/turns`, { message: 'echo hello over http', turnId: 'turn-1' }, token);
    expect(stream.res.statusCode).toBe(200);
    expect(stream.res.headers['content-type']).toMatch(/^application\/x-ndjson/);
    expect(stream.res.headers['x-turn-id']).toBe('turn-1');
    const events = await readAll(stream);
    expect(events[0]).toMatchObject({ type: 'turn.started', turnId: 'turn-1', seq: 0 });
    expect(events.at(-1)).toMatchObject({ type: 'turn.completed', stopReason: 'end_turn' });
    expect(events.map((e) => e['seq'])).toEqual(events.map((_, i) => i));
    expect(events.flatMap((e) => (e['type'] === 'agent.message.delta' ? [e['text']] : [])).join('')).toContain('hello over http');

    const status = await call(target, 'GET', `/v1/spawns/${id}`, auth);
    expect(status.status).toBe(200);
    expect(body(status)).toMatchObject({ spawnId: id, tracking: 'live', backendStatus: { phase: 'running', ready: true }, worker: { state: 'idle', turns: 1 } });

    const logs = await call(target, 'GET', `/v1/spawns/${id}/logs?tail=50`, auth);
    expect(logs.status).toBe(200);
    const lines = body(logs)['lines'] as string[];
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.length).toBeLessThanOrEqual(50);
    const badTail = await call(target, 'GET', `/v1/spawns/${id}/logs?tail=0`, auth);
    expect(badTail.status).toBe(400);
    expect(body(badTail)).toMatchObject({ error: { code: 'REQUEST_INVALID', issues: [{ path: 'query.tail' }] } });

    const listed = await call(target, 'GET', '/v1/spawns', auth);
    expect((body(listed)['spawns'] as Json[]).map((s) => s['spawnId'])).toContain(id);

    const deleted = await call(target, 'DELETE', `/v1/spawns/${id}`, auth);
    expect(deleted.status).toBe(204);
    expect(deleted.text).toBe('');

    const after = await call(target, 'GET', `/v1/spawns/${id}`, auth);
    expect(body(after)).toMatchObject({ spawnId: id, tracking: 'closed', closeReason: 'closed' });
    expect((body(await call(target, 'GET', '/v1/spawns?all=true', auth))['spawns'] as Json[]).map((s) => s['spawnId'])).not.toContain(id);
    const lateTurn = await call(target, 'POST', `/v1/spawns/${id}/turns`, { ...auth, body: { message: 'echo too late' } });
    expect(lateTurn.status).toBe(404);
    expect(body(lateTurn)).toMatchObject({ error: { code: 'SPAWN_NOT_FOUND' } });
    expect(await gate.store.active()).toHaveLength(0);
    // Closing twice is fine: the close already happened.
    expect((await call(target, 'DELETE', `/v1/spawns/${id}`, auth)).status).toBe(204);
  });

  it('a deny is 403 with the reasons, and nothing is created', async () => {
    const denied = await call(target, 'POST', '/v1/spawns', { ...auth, body: spawnRequest('echo nope', { execution: { profile: 'restricted' } }) });
    expect(denied.status).toBe(403);
    expect(body(denied)).toMatchObject({
      error: { code: 'ADMISSION_DENIED', retryable: false, message: anyString, decisionId: anyString, reasons: [expect.objectContaining({ code: 'agent_not_allowed', message: anyString })] },
    });
    expect(await gate.list({ allOwners: true })).toHaveLength(0);
    expect(await gate.store.active()).toHaveLength(0);
  });

  it('a client that leaves while its spawn waits for readiness takes the worker and its slots with it', async () => {
    const { url } = server.address as { url: string };
    const { hostname, port } = new URL(url);
    const payload = JSON.stringify(spawnRequest('echo never', { execution: { profile: 'stuck' } }));
    const req = httpRequest({
      hostname,
      port,
      method: 'POST',
      path: '/v1/spawns',
      agent: false,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
    });
    const failed = new Promise<unknown>((resolve) => req.once('error', resolve));
    req.end(payload);
    await eventually(async () => (await gate.list()).length === 1, 20_000, 'the stuck worker to exist');
    expect(await gate.store.active()).toHaveLength(1);
    req.destroy();
    await failed;
    await eventually(async () => (await gate.list({ allOwners: true })).length === 0, 20_000, 'the abandoned worker to be removed');
    expect(await gate.store.active()).toHaveLength(0);
  });

  it('a bad request is 400 naming the JSON path of each fault, and never shows a stack', async () => {
    const request = spawnRequest('echo bad');
    const bad = await call(target, 'POST', '/v1/spawns', {
      ...auth,
      body: { ...request, bogus: true, caller: { ...(request['caller'] as Json), user: { id: 5 } } },
    });
    expect(bad.status).toBe(400);
    const error = body(bad)['error'] as Json;
    expect(error['code']).toBe('REQUEST_INVALID');
    expect((error['issues'] as Json[]).map((i) => i['path']).sort()).toEqual(['bogus', 'caller.user.id']);
    expect(bad.text).not.toMatch(/\bat .*\.ts:\d+/);

    const admitBad = await call(target, 'POST', '/v1/admit', { ...auth, body: { ...request, execution: { backend: 7 } } });
    expect(admitBad.status).toBe(400);
    expect(body(admitBad)).toMatchObject({ error: { code: 'REQUEST_INVALID', issues: [expect.objectContaining({ path: 'execution.backend' })] } });

    // The JSON ends where agentId's value should be: the fault is named there.
    const notJson = await call(target, 'POST', '/v1/spawns', { ...auth, raw: '{"agentId": ' });
    expect(notJson.status).toBe(400);
    expect(body(notJson)).toMatchObject({ error: { code: 'REQUEST_INVALID', issues: [{ path: 'agentId' }], body: { line: 1, column: 13 } } });
    const garbage = await call(target, 'POST', '/v1/spawns', { ...auth, raw: 'not json' });
    expect(body(garbage)).toMatchObject({ error: { code: 'REQUEST_INVALID', issues: [{ path: '(root)' }] } });

    const badTurn = await call(target, 'POST', `/v1/spawns/${randomUUID()}/turns`, { ...auth, body: { turnId: 'not a valid id' } });
    expect(badTurn.status).toBe(400);
    expect((body(badTurn)['error'] as Json)['issues']).toEqual(
      expect.arrayContaining([expect.objectContaining({ path: 'message' }), expect.objectContaining({ path: 'turnId' })]),
    );
    expect(await gate.list({ allOwners: true })).toHaveLength(0);
  });

  it('cancel and a client that goes away both end the turn, and the worker stays usable', async () => {
    const created = await call(target, 'POST', '/v1/spawns', { ...auth, body: spawnRequest('cancel test') });
    expect(created.status, created.text).toBe(201);
    const id = body(created)['spawnId'] as string;
    const outcomes = async () => body(await call(target, 'GET', `/v1/spawns/${id}`, auth))['worker'] as Json;

    // POST /cancel: the open stream ends with turn.cancelled.
    const cancelled = await openStream(target, `/v1/spawns/${id}/turns`, { message: 'slow 400' }, token);
    await readDeltas(cancelled, 2);
    // One turn at a time: a second one is refused while this one streams.
    const busy = await call(target, 'POST', `/v1/spawns/${id}/turns`, { ...auth, body: { message: 'echo me too' } });
    expect(busy.status).toBe(409);
    expect(body(busy)).toMatchObject({ error: { code: 'WORKER_BUSY', retryable: true } });
    const cancel = await call(target, 'POST', `/v1/spawns/${id}/cancel`, auth);
    expect(cancel.status).toBe(202);
    expect(body(cancel)).toEqual({ spawnId: id });
    const rest = await readAll(cancelled);
    expect(rest.at(-1)).toMatchObject({ type: 'turn.cancelled', reason: 'client_cancel' });

    // The client drops the connection mid-turn: the worker cancels the turn on its own.
    const dropped = await openStream(target, `/v1/spawns/${id}/turns`, { message: 'slow 400' }, token);
    await readDeltas(dropped, 2);
    dropped.req.destroy();
    await eventually(
      async () => {
        const worker = await outcomes();
        return worker['state'] === 'idle' && (worker['outcomes'] as Json)['cancelled'] === 2;
      },
      20_000,
      'the dropped turn to be cancelled by the worker',
    );
    expect((body(await call(target, 'GET', `/v1/spawns/${id}/logs?tail=500`, auth))['lines'] as string[]).join('\n')).toContain('client_disconnect');

    const again = await readAll(await openStream(target, `/v1/spawns/${id}/turns`, { message: 'echo still here' }, token));
    expect(again.at(-1)).toMatchObject({ type: 'turn.completed' });
    expect((await outcomes())['outcomes']).toMatchObject({ completed: 1, cancelled: 2 });
    expect((await call(target, 'DELETE', `/v1/spawns/${id}`, auth)).status).toBe(204);
  });

  it('a worker that dies mid-turn ends the stream with a turn.failed line, not a cut-off', async () => {
    const created = await call(target, 'POST', '/v1/spawns', { ...auth, body: spawnRequest('kill test') });
    expect(created.status, created.text).toBe(201);
    const { spawnId: id, nativeId } = body(created) as { spawnId: string; nativeId: string };
    const stream = await openStream(target, `/v1/spawns/${id}/turns`, { message: 'slow 400' }, token);
    const seen = await readDeltas(stream, 2);
    process.kill(Number(nativeId), 'SIGKILL');
    const events = [...seen, ...(await readAll(stream))];
    expect(events.at(-1)).toMatchObject({ type: 'turn.failed', turnId: events[0]?.['turnId'], error: { code: 'stream_broken', spawngateCode: anyString, message: anyString } });
    expect(events.map((e) => e['seq'])).toEqual(events.map((_, i) => i));
    expect(logger.lines).toContainEqual(expect.objectContaining({ level: 'warn', msg: 'turn stream from the worker broke', fields: expect.objectContaining({ spawnId: id }) as unknown }));
    await eventually(async () => body(await call(target, 'GET', `/v1/spawns/${id}`, auth))['tracking'] === 'closed', 20_000, 'the dead worker to be reaped');
    expect(body(await call(target, 'GET', `/v1/spawns/${id}`, auth))).toMatchObject({ closeReason: 'failed' });
    expect(await gate.store.active()).toHaveLength(0);
  });

  it('close() ends an open turn stream with turn.cancelled, then refuses connections', async () => {
    const second = await createServer({ gate, token, listen: { port: 0 } });
    const created = await call(second.address, 'POST', '/v1/spawns', { ...auth, body: spawnRequest('shutdown test') });
    expect(created.status, created.text).toBe(201);
    const id = body(created)['spawnId'] as string;
    try {
      const stream = await openStream(second.address, `/v1/spawns/${id}/turns`, { message: 'slow 400' }, token);
      await readDeltas(stream, 2);
      const closed = second.close();
      const rest = await readAll(stream);
      expect(rest.at(-1)).toMatchObject({ type: 'turn.cancelled' });
      await closed;
      await expect(call(second.address, 'GET', '/healthz')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
      // The gate is the caller's: the worker is still there until it is closed.
      expect((await gate.status(id)).tracking).toBe('live');
    } finally {
      await second.close();
      await gate.close(id);
    }
  });

  it('413 for a body over 1 MiB, 404 for unknown routes and spawns, 405 for a wrong method', async () => {
    const { url } = server.address as { url: string };
    const declared = await new Promise<Reply>((resolve, reject) => {
      const { hostname, port } = new URL(url);
      const req = httpRequest(
        { hostname, port, method: 'POST', path: '/v1/spawns', agent: false, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': 2 * 1024 * 1024 } },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.once('end', () => {
            req.destroy();
            resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json: JSON.parse(text) });
          });
        },
      );
      req.once('error', reject);
      // Headers only: the server must refuse by the declared length, without waiting for the body.
      req.flushHeaders();
    });
    expect(declared.status).toBe(413);
    expect(body(declared)).toMatchObject({ error: { code: 'PAYLOAD_TOO_LARGE', limit: 1024 * 1024 } });

    const counted = await call(target, 'POST', '/v1/admit', { ...auth, raw: `"${'x'.repeat(1024 * 1024 + 10)}"`, headers: { 'content-length': undefined, 'transfer-encoding': 'chunked' } });
    expect(counted.status).toBe(413);

    const route = await call(target, 'GET', '/v1/nope', auth);
    expect(route.status).toBe(404);
    expect(body(route)).toMatchObject({ error: { code: 'ROUTE_NOT_FOUND' } });
    const spawn = await call(target, 'GET', `/v1/spawns/${randomUUID()}`, auth);
    expect(spawn.status).toBe(404);
    expect(body(spawn)).toMatchObject({ error: { code: 'SPAWN_NOT_FOUND' } });
    expect((await call(target, 'DELETE', `/v1/spawns/${encodeURIComponent('../etc')}`, auth)).status).toBe(404);

    const method = await call(target, 'PUT', '/v1/spawns', { ...auth, body: {} });
    expect(method.status).toBe(405);
    expect(method.headers['allow']).toBe('GET, POST');
    expect(body(method)).toMatchObject({ error: { code: 'METHOD_NOT_ALLOWED' } });
    expect((await call(target, 'GET', '/v1/admit', auth)).status).toBe(405);
    expect((await call(target, 'POST', '/healthz')).status).toBe(405);
  });

  it('sweep reports what it would remove; its body is checked', async () => {
    const dry = await call(target, 'POST', '/v1/sweep', { ...auth, body: { dryRun: true } });
    expect(dry.status).toBe(200);
    expect(body(dry)).toMatchObject({ dryRun: true, removed: [], errors: [] });
    expect((await call(target, 'POST', '/v1/sweep', auth)).status).toBe(200);
    const bad = await call(target, 'POST', '/v1/sweep', { ...auth, body: { dryRun: 'yes', force: true } });
    expect(bad.status).toBe(400);
    expect((body(bad)['error'] as Json)['issues']).toEqual(expect.arrayContaining([expect.objectContaining({ path: 'dryRun' }), expect.objectContaining({ path: 'force' })]));
  });
});

describe('HTTP API setup', () => {
  it('refuses TCP without a token', async () => {
    const backend = processBackend();
    const gate = await createSpawngate({ config: backend.config, sweepIntervalMs: 0, decisionLog: false, watchBundle: false });
    try {
      await expect(createServer({ gate, listen: { port: 0 } })).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [expect.objectContaining({ path: 'token' })] });
    } finally {
      await gate.shutdown();
      backend.remove();
    }
  });

  it('on a unix socket without a token: owner-only socket; /healthz is 503 while no policy bundle is loaded', async () => {
    const backend = processBackend();
    const { stateDir } = backend;
    const logger = memoryLogger();
    const gate = await createSpawngate({ config: backend.config, bundle: join(stateDir, 'missing-bundle.tar.gz'), sweepIntervalMs: 0, decisionLog: false, watchBundle: false, logger });
    const socketPath = join(stateDir, 'api.sock');
    const server = await createServer({ gate, listen: { socketPath } });
    try {
      expect(server.address).toEqual({ socketPath });
      expect(statSync(socketPath).mode & 0o777).toBe(0o600);
      const health = await call({ socketPath }, 'GET', '/healthz');
      expect(health.status).toBe(503);
      expect(body(health)).toMatchObject({ status: 'no_policy', bundleRevision: null, reason: anyString });
      // Fail closed: without a bundle, everything is denied.
      const admitted = await call({ socketPath }, 'POST', '/v1/admit', { body: spawnRequest('echo no policy') });
      expect(admitted.status).toBe(200);
      expect(body(admitted)).toMatchObject({ decision: { allow: false } });
      const denied = await call({ socketPath }, 'POST', '/v1/spawns', { body: spawnRequest('echo no policy') });
      expect(denied.status).toBe(403);
      expect(await gate.list({ allOwners: true })).toHaveLength(0);
    } finally {
      await server.close();
      await gate.shutdown();
      backend.remove();
    }
  });
});
