/**
 * `spawngate serve` against callers that misbehave: refusals that never read the body and still
 * reach a client busy uploading, bodies held to application/json and strict UTF-8 JSON, and slow
 * clients cut by the header and request timeouts. A real server on 127.0.0.1 in front of a real gate.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type RunningServer } from '../../src/server/index.js';
import { createSpawngate, type Spawngate } from '../../src/spawngate.js';
import { memoryLogger } from '../helpers/logger.js';
import { FIFTY_MB, headOnly, rawUpload, trickle, upload, uploadFromAnotherProcess, type Answer } from './abuse.js';
import { call, openStream, processBackend, readAll, spawnRequest } from './helpers.js';

type Json = Record<string, unknown>;

/** Gigabytes through loopback on two busy cores: a bound far above the few seconds they take. */
const UPLOAD_TIMEOUT_MS = 180_000;

const token = randomBytes(24).toString('base64url');
const bearer = { authorization: `Bearer ${token}` };
const json = { 'content-type': 'application/json' };
const errorOf = (reply: { json: unknown }): Json => ((reply.json as Json | undefined)?.['error'] ?? {}) as Json;

describe('HTTP hardening of spawngate serve', () => {
  const backend = processBackend();
  const logger = memoryLogger();
  let gate: Spawngate;
  let server: RunningServer;
  let url: string;

  beforeAll(async () => {
    gate = await createSpawngate({ config: backend.config, owner: `hard-${randomUUID().slice(0, 8)}`, sweepIntervalMs: 0, decisionLog: false, watchBundle: false, logger });
    server = await createServer({ gate, token, listen: { port: 0, host: '127.0.0.1' } });
    url = (server.address as { url: string }).url;
  });

  afterAll(async () => {
    await server?.close();
    await gate?.sweep({ orphans: true }).catch(() => undefined);
    await gate?.shutdown();
    backend.remove();
  });

  it('decides every refusal from the head alone: a 10 MB body announced and never sent is not waited for', async () => {
    const id = randomUUID();
    const anonymous: [string, string][] = [
      ['POST', '/v1/admit'],
      ['POST', '/v1/spawns'],
      ['GET', '/v1/spawns'],
      ['POST', '/v1/sweep'],
      ['GET', `/v1/spawns/${id}`],
      ['DELETE', `/v1/spawns/${id}`],
      ['POST', `/v1/spawns/${id}/turns`],
      ['POST', `/v1/spawns/${id}/cancel`],
      ['GET', `/v1/spawns/${id}/logs`],
      ['GET', `/v1/spawns/${id}/workspace`],
      ['PUT', '/v1/spawns'],
      ['POST', '/v1/no-such-route'],
      ['PATCH', '/nowhere'],
    ];
    for (const [method, path] of anonymous) {
      const reply = await headOnly(url, method, path, json, 10 * 1024 * 1024);
      expect(reply.status, `${method} ${path}`).toBe(401);
      expect(errorOf(reply)['code']).toBe('UNAUTHORIZED');
      expect(reply.headers['connection']).toBe('close');
      // The connection goes (after the lingering close) instead of draining 10 MB that never come.
      await reply.closed;
    }
    const authorized: [string, string, number, string][] = [
      ['POST', '/v1/no-such-route', 404, 'ROUTE_NOT_FOUND'],
      ['PUT', '/v1/spawns', 405, 'METHOD_NOT_ALLOWED'],
      ['POST', '/healthz', 405, 'METHOD_NOT_ALLOWED'],
      ['POST', '/v1/admit', 413, 'PAYLOAD_TOO_LARGE'],
      ['POST', `/v1/spawns/${id}/turns`, 413, 'PAYLOAD_TOO_LARGE'],
    ];
    for (const [method, path, status, code] of authorized) {
      const reply = await headOnly(url, method, path, { ...bearer, ...json }, 10 * 1024 * 1024);
      expect(reply.status, `${method} ${path}`).toBe(status);
      expect(errorOf(reply)['code']).toBe(code);
      expect(reply.headers['connection']).toBe('close');
      await reply.closed;
    }
    // One byte over the limit is enough, and is refused before a byte of it is read.
    const over = await headOnly(url, 'POST', '/v1/admit', { ...bearer, ...json }, 1024 * 1024 + 1);
    expect(over.status).toBe(413);
    expect(errorOf(over)).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', limit: 1024 * 1024 });
    const plain = await headOnly(url, 'POST', '/v1/admit', { ...bearer, 'content-type': 'text/plain' }, 100);
    expect(plain.status).toBe(415);
    // The routes anyone may call take no body and never read one; they answer as usual, then close.
    const probe = await headOnly(url, 'GET', '/healthz', json, 1024 * 1024);
    expect(probe.status).toBe(200);
    expect(probe.headers['connection']).toBe('close');
    await Promise.all([over.closed, plain.closed, probe.closed]);
  });

  it('answers Expect: 100-continue with the refusal itself, and with 100 only when it will read the body', async () => {
    const refused = await headOnly(url, 'POST', '/v1/spawns', { ...json, expect: '100-continue' }, 10 * 1024 * 1024);
    expect(refused.status).toBe(401);
    const tooLarge = await headOnly(url, 'POST', '/v1/spawns', { ...bearer, ...json, expect: '100-continue' }, 10 * 1024 * 1024);
    expect(tooLarge.status).toBe(413);
    await Promise.all([refused.closed, tooLarge.closed]);

    const payload = JSON.stringify(spawnRequest('echo hi'));
    const { hostname, port } = new URL(url);
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(
        { hostname, port, method: 'POST', path: '/v1/admit', agent: false, headers: { ...bearer, ...json, expect: '100-continue', 'content-length': Buffer.byteLength(payload) } },
        (res) => {
          res.resume();
          res.once('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.once('error', reject);
      // The body goes only after the server said 100.
      req.once('continue', () => req.end(payload));
      req.flushHeaders();
    });
    expect(status).toBe(200);
  });

  it('keeps the connection of a refused request that has no body', async () => {
    // A raw HTTP/1.1 request (keep-alive by default; node:http's client with agent: false asks for close).
    const reply = await headOnly(url, 'GET', '/v1/spawns', {}, 0);
    expect(reply.status).toBe(401);
    expect(reply.headers['connection']).toBe('keep-alive');
  });

  it('delivers 401, 415 and 413 to every one of 20 concurrent 50 MB uploads through node:http', async () => {
    const cases = [
      { headers: json, status: 401, code: 'UNAUTHORIZED' },
      { headers: { ...bearer, 'content-type': 'text/plain' }, status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
      { headers: { ...bearer, ...json }, status: 413, code: 'PAYLOAD_TOO_LARGE' },
    ];
    for (const { headers, status, code } of cases) {
      const answers = await Promise.allSettled(Array.from({ length: 20 }, () => upload(url, 'POST', '/v1/spawns', headers, FIFTY_MB)));
      const statuses = answers.map((a) => (a.status === 'fulfilled' ? a.value.status : `lost: ${(a.reason as Error).message}`));
      expect(statuses, code).toEqual(Array.from({ length: 20 }, () => status));
      for (const a of answers) if (a.status === 'fulfilled') expect(errorOf(a.value)['code']).toBe(code);
    }
  }, UPLOAD_TIMEOUT_MS);

  it('delivers 401, 413 and 415 to 20 node:http clients in another process, concurrent and one after another', async () => {
    // In a process of its own the client's writes race the server's close as a real caller's do:
    // without the lingering close most of these end in EPIPE with no response.
    for (const drain of [false, true]) {
      const anonymous = await uploadFromAnotherProcess({ url, path: '/v1/spawns', headers: json, count: 20, drain });
      expect(anonymous, `drain ${drain}`).toEqual(Array.from({ length: 20 }, () => 401));
      const tooLarge = await uploadFromAnotherProcess({ url, path: '/v1/spawns', headers: { ...bearer, ...json }, count: 20, drain });
      expect(tooLarge, `drain ${drain}`).toEqual(Array.from({ length: 20 }, () => 413));
    }
    const oneByOne = await uploadFromAnotherProcess({ url, path: '/v1/admit', headers: { ...bearer, 'content-type': 'text/plain' }, count: 20, sequential: true, drain: true });
    expect(oneByOne).toEqual(Array.from({ length: 20 }, () => 415));
  }, UPLOAD_TIMEOUT_MS);

  it('delivers the refusal to 20 piped 50 MB uploads', async () => {
    for (const [headers, status] of [
      [json, 401],
      [{ ...bearer, ...json }, 413],
    ] as const) {
      const answers = await Promise.allSettled(Array.from({ length: 20 }, () => upload(url, 'POST', '/v1/spawns', headers, FIFTY_MB, { piped: true })));
      const statuses = answers.map((a) => (a.status === 'fulfilled' ? a.value.status : `lost: ${(a.reason as Error).message}`));
      expect(statuses).toEqual(Array.from({ length: 20 }, () => status));
    }
  }, UPLOAD_TIMEOUT_MS);

  it('delivers 413 to 20 chunked 50 MB uploads, cut as soon as they pass the limit', async () => {
    const answers = await Promise.allSettled(Array.from({ length: 20 }, () => upload(url, 'POST', '/v1/admit', { ...bearer, ...json }, FIFTY_MB, { chunked: true })));
    const statuses = answers.map((a) => (a.status === 'fulfilled' ? a.value.status : `lost: ${(a.reason as Error).message}`));
    expect(statuses).toEqual(Array.from({ length: 20 }, () => 413));
  }, UPLOAD_TIMEOUT_MS);

  it('delivers the refusal to 20 raw clients that write all of 50 MB before they read', async () => {
    const { host } = new URL(url);
    const head = (extra: string) => `POST /v1/spawns HTTP/1.1\r\nhost: ${host}\r\ncontent-length: ${FIFTY_MB.length}\r\n${extra}\r\n`;
    for (const [extra, status] of [
      ['content-type: application/json\r\n', 401],
      [`authorization: Bearer ${token}\r\ncontent-type: text/plain\r\n`, 415],
      [`authorization: Bearer ${token}\r\ncontent-type: application/json\r\n`, 413],
    ] as const) {
      const answers = await Promise.all(Array.from({ length: 20 }, () => rawUpload(url, head(extra), FIFTY_MB)));
      expect(
        answers.map((a) => a.status),
        answers.find((a) => a.status !== status)?.text.slice(0, 200),
      ).toEqual(Array.from({ length: 20 }, () => status));
    }
    // One after another too: each alone on the server.
    for (let i = 0; i < 20; i++) {
      const answer = await rawUpload(url, head(`authorization: Bearer ${token}\r\ncontent-type: application/json\r\n`), FIFTY_MB);
      expect(answer.status, `upload ${i}`).toBe(413);
    }
  }, UPLOAD_TIMEOUT_MS);

  it('takes only application/json bodies (charset utf-8 at most), and no content type without a body', async () => {
    const admit = spawnRequest('echo hi');
    for (const contentType of ['text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=latin1', 'application/jsonx', 'text/json']) {
      const reply = await call({ url }, 'POST', '/v1/admit', { token, body: admit, headers: { 'content-type': contentType } });
      expect(reply.status, contentType).toBe(415);
      expect(errorOf(reply)).toMatchObject({ code: 'UNSUPPORTED_MEDIA_TYPE' });
      expect(errorOf(reply)['message']).toContain(contentType);
    }
    const none = await call({ url }, 'POST', '/v1/admit', { token, body: admit, headers: { 'content-type': undefined } });
    expect(none.status).toBe(415);
    expect(errorOf(none)['message']).toContain('(none)');
    for (const contentType of ['application/json', 'Application/JSON; Charset=UTF-8', 'application/json;charset="utf-8"']) {
      const reply = await call({ url }, 'POST', '/v1/admit', { token, body: admit, headers: { 'content-type': contentType } });
      expect(reply.status, contentType).toBe(200);
    }
    // Routes that take no body need no content type when none is sent.
    const id = randomUUID();
    expect((await call({ url }, 'POST', `/v1/spawns/${id}/cancel`, { token })).status).toBe(404);
    expect((await call({ url }, 'DELETE', `/v1/spawns/${id}`, { token })).status).toBe(404);
    expect((await call({ url }, 'POST', '/v1/sweep', { token, headers: { 'content-length': '0' } })).status).toBe(200);
    // A route that needs a body says so, as a 400 rather than a 415.
    const empty = await call({ url }, 'POST', '/v1/admit', { token, headers: { 'content-length': '0' } });
    expect(empty.status).toBe(400);
    expect(errorOf(empty)).toMatchObject({ code: 'REQUEST_INVALID', message: expect.stringContaining('no body') as unknown });
  });

  it('reads bodies as strict UTF-8 JSON and says where they go wrong', async () => {
    const send = (raw: Buffer | string): Promise<Answer> => upload(url, 'POST', '/v1/admit', { ...bearer, ...json }, Buffer.from(raw));

    const badUtf8 = Buffer.concat([Buffer.from('{"task": "caf'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]);
    const utf8 = await send(badUtf8);
    expect(utf8.status).toBe(400);
    expect(errorOf(utf8)).toMatchObject({ code: 'REQUEST_INVALID' });
    expect(errorOf(utf8)['message']).toContain('invalid UTF-8 at byte offset 13');
    expect(errorOf(utf8)['body']).toEqual({ offset: 13 });

    const duplicate = await send('{\n  "agentId": "fixture",\n  "agentId": "other"\n}');
    expect(duplicate.status).toBe(400);
    expect(errorOf(duplicate)['message']).toMatch(/duplicate key "agentId" at line 3 column 3 \(byte offset 28\)/);
    expect(errorOf(duplicate)['body']).toEqual({ offset: 28, line: 3, column: 3 });
    const nested = await send('{"caller": {"user": {"id": "a", "roles": [], "id": "b"}}}');
    expect(nested.status).toBe(400);
    expect(errorOf(nested)['issues']).toEqual([{ path: 'caller.user.id', message: expect.stringContaining('duplicate key "id"') as unknown }]);

    const surrogate = await send('{"task": "\\ud800"}');
    expect(surrogate.status).toBe(400);
    expect(errorOf(surrogate)['message']).toContain('lone surrogate');

    const deep = await send(`${'['.repeat(5000)}${']'.repeat(5000)}`);
    expect(deep.status).toBe(400);
    expect(errorOf(deep)['message']).toContain('nesting deeper than');

    const trailing = await send('{} {}');
    expect(trailing.status).toBe(400);

    // A BOM is not JSON (RFC 8259 says a sender must not add one).
    const bom = await send(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(spawnRequest('x')))]));
    expect(bom.status).toBe(400);

    // A character split across chunks is still one character.
    const split = Buffer.from(JSON.stringify(spawnRequest('naïve café ☕')));
    const chunked = await call({ url }, 'POST', '/v1/admit', { token, raw: split.toString('utf8'), headers: { ...json, 'content-length': undefined, 'transfer-encoding': 'chunked' } });
    expect(chunked.status).toBe(200);
  });

  it('answers any body with a spawngate error below 500', async () => {
    const bodies = [
      'null',
      '[]',
      '1',
      '"text"',
      'true',
      '{}',
      '{"agentId": null}',
      '{"agentId": "fixture", "caller": []}',
      '{"agentId": "fixture", "task": {}}',
      '{"__proto__": {"agentId": "fixture"}}',
      '{"constructor": {"prototype": 1}}',
      `{"agentId": "${'x'.repeat(100_000)}"}`,
      JSON.stringify({ ...spawnRequest('x'), caller: null }),
      JSON.stringify({ ...spawnRequest('x'), caller: { depth: -1 } }),
      JSON.stringify({ ...spawnRequest('x'), traceparent: 7 }),
      JSON.stringify({ ...spawnRequest('x'), agentId: 'no-such-agent', profile: { a: 1 } }),
    ];
    const paths = ['/v1/admit', '/v1/spawns', `/v1/spawns/${randomUUID()}/turns`, '/v1/sweep', `/v1/spawns/${randomUUID()}/cancel`];
    for (const path of paths) {
      for (const raw of bodies) {
        const reply = await call({ url }, 'POST', path, { token, raw, headers: json });
        expect(reply.status, `${path} ${raw.slice(0, 60)}`).toBeLessThan(500);
        if (reply.status >= 400) {
          expect(errorOf(reply)['code'], `${path} ${raw.slice(0, 60)}`).not.toBe('INTERNAL');
          expect(typeof errorOf(reply)['message']).toBe('string');
        }
      }
    }
    const nulls = await call({ url }, 'POST', '/v1/spawns', { token, raw: 'null', headers: json });
    expect(nulls.status).toBe(400);
    expect(errorOf(nulls)).toMatchObject({ code: 'REQUEST_INVALID', message: expect.stringContaining('must be a JSON object, found null') as unknown });
  });

  describe('with small timeouts', () => {
    let slow: RunningServer;
    let slowUrl: string;

    beforeAll(async () => {
      slow = await createServer({ gate, token, listen: { port: 0, host: '127.0.0.1' }, headersTimeoutMs: 300, requestTimeoutMs: 600, keepAliveTimeoutMs: 300 });
      slowUrl = (slow.address as { url: string }).url;
    });

    afterAll(async () => {
      await slow?.close();
    });

    it('cuts a client that trickles its headers, with a 408', async () => {
      const { received, cutWhileSending } = await trickle(slowUrl, `GET /v1/spawns HTTP/1.1\r\nhost: x\r\nx-slow: ${'a'.repeat(2000)}\r\n\r\n`, 20);
      expect(cutWhileSending).toBe(true);
      expect(received).toMatch(/^HTTP\/1\.1 408 /);
    });

    it('cuts a client that trickles its body, with a 408', async () => {
      const head = `POST /v1/admit HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${token}\r\ncontent-type: application/json\r\ncontent-length: 2000\r\n\r\n`;
      // The head in one go (the trickle starts after it), so it is the body that is slow.
      const { received, cutWhileSending } = await trickle(slowUrl, `${head}${' '.repeat(2000)}`, 2);
      expect(cutWhileSending).toBe(true);
      expect(received).toMatch(/^HTTP\/1\.1 408 /);
    });

    it('closes a connection that never sends a byte, and an idle keep-alive one', async () => {
      const silent = await trickle(slowUrl, ' '.repeat(1000), 60_000);
      expect(silent.cutWhileSending).toBe(true);
      const { hostname, port } = new URL(slowUrl);
      const socket = connect({ host: hostname, port: Number(port) });
      let received = '';
      socket.on('data', (c: Buffer) => (received += c.toString()));
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.write(`GET /healthz HTTP/1.1\r\nhost: ${hostname}\r\n\r\n`);
      await closed;
      expect(received).toMatch(/^HTTP\/1\.1 (200|503) /);
    });

    it('does not cut a turn that streams for longer than the request timeout', async () => {
      const created = await call({ url: slowUrl }, 'POST', '/v1/spawns', { token, body: spawnRequest('stream slowly') });
      expect(created.status, created.text).toBe(201);
      const id = (created.json as Json)['spawnId'] as string;
      try {
        // 30 chunks 50 ms apart: 1.5 s, well past the 600 ms request timeout.
        const stream = await openStream({ url: slowUrl }, `/v1/spawns/${id}/turns`, { message: 'slow 30' }, token);
        const events = await readAll(stream);
        expect(events.filter((e) => e['type'] === 'agent.message.delta')).toHaveLength(30);
        expect(events.at(-1)).toMatchObject({ type: 'turn.completed' });
      } finally {
        await gate.close(id);
      }
    });
  });

  it('refuses timeouts that cannot work', async () => {
    await expect(createServer({ gate, token, listen: { port: 0 }, headersTimeoutMs: 0 })).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [{ path: 'headersTimeoutMs' }] });
    await expect(createServer({ gate, token, listen: { port: 0 }, headersTimeoutMs: 5000, requestTimeoutMs: 1000 })).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [{ path: 'headersTimeoutMs' }] });
  });
});
