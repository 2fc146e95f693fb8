/**
 * The reference worker's HTTP server against callers that misbehave: refusals decided from the head
 * and delivered to clients busy uploading, bodies held to application/json and strict UTF-8 JSON,
 * slow clients cut by the header and request timeouts (a parked /healthz?wait is not).
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FIFTY_MB, headOnly, rawUpload, trickle, upload, uploadFromAnotherProcess } from '../server/abuse.js';
import { startTestWorker, tempDir, type TestWorker } from './helpers.js';

type Json = Record<string, unknown>;

/** Gigabytes through loopback on two busy cores: a bound far above the few seconds they take. */
const UPLOAD_TIMEOUT_MS = 180_000;

const errorOf = (reply: { json: unknown }): Json => ((reply.json as Json | undefined)?.['error'] ?? {}) as Json;
const json = { 'content-type': 'application/json' };

describe('HTTP hardening of the worker', () => {
  let w: TestWorker;
  let url: string;
  let bearer: Record<string, string>;

  beforeAll(async () => {
    w = await startTestWorker('tcp');
    await w.worker.ready;
    url = (w.worker.address as { url: string }).url;
    bearer = { authorization: `Bearer ${w.token}` };
  });

  afterAll(async () => {
    await w?.close();
  });

  it('decides every refusal from the head alone: a 10 MB body announced and never sent is not waited for', async () => {
    for (const [method, path] of [
      ['GET', '/healthz'],
      ['POST', '/turn'],
      ['POST', '/cancel'],
      ['POST', '/permission'],
      ['GET', '/status'],
      ['GET', '/logs'],
      ['GET', '/workspace/diff'],
      ['GET', '/workspace/archive'],
      ['PUT', '/turn'],
      ['POST', '/nowhere'],
    ] as const) {
      const reply = await headOnly(url, method, path, json, 10 * 1024 * 1024);
      expect(reply.status, `${method} ${path}`).toBe(401);
      expect(errorOf(reply)['code']).toBe('unauthorized');
      expect(reply.headers['connection']).toBe('close');
      await reply.closed;
    }
    for (const [method, path, headers, status, code] of [
      ['POST', '/nowhere', json, 404, 'not_found'],
      ['PUT', '/turn', json, 405, 'method_not_allowed'],
      ['POST', '/turn', json, 413, 'payload_too_large'],
      ['POST', '/permission', json, 413, 'payload_too_large'],
      ['POST', '/cancel', json, 413, 'payload_too_large'],
      ['POST', '/turn', { 'content-type': 'text/plain' }, 415, 'unsupported_media_type'],
      ['POST', '/cancel', {}, 415, 'unsupported_media_type'],
    ] as const) {
      const reply = await headOnly(url, method, path, { ...bearer, ...headers }, 10 * 1024 * 1024);
      expect(reply.status, `${method} ${path}`).toBe(status);
      expect(errorOf(reply)['code']).toBe(code);
      expect(reply.headers['connection']).toBe('close');
      await reply.closed;
    }
  });

  it('delivers 401, 413 and 415 to 20 concurrent 50 MB uploads: node:http here and in another process, and raw clients', async () => {
    for (const [headers, status] of [
      [json, 401],
      [{ ...bearer, ...json }, 413],
      [{ ...bearer, 'content-type': 'text/html' }, 415],
    ] as const) {
      const answers = await Promise.allSettled(Array.from({ length: 20 }, () => upload(url, 'POST', '/turn', headers, FIFTY_MB, { piped: true })));
      const statuses = answers.map((a) => (a.status === 'fulfilled' ? a.value.status : `lost: ${(a.reason as Error).message}`));
      expect(statuses).toEqual(Array.from({ length: 20 }, () => status));
    }
    for (const [headers, status] of [
      [json, 401],
      [{ ...bearer, ...json }, 413],
    ] as const) {
      expect(await uploadFromAnotherProcess({ url, path: '/turn', headers, count: 20, drain: true })).toEqual(Array.from({ length: 20 }, () => status));
    }
    const { host } = new URL(url);
    const head = (extra: string) => `POST /turn HTTP/1.1\r\nhost: ${host}\r\ncontent-length: ${FIFTY_MB.length}\r\n${extra}\r\n`;
    for (const [extra, status] of [
      ['content-type: application/json\r\n', 401],
      [`authorization: Bearer ${w.token}\r\ncontent-type: application/json\r\n`, 413],
    ] as const) {
      const answers = await Promise.all(Array.from({ length: 20 }, () => rawUpload(url, head(extra), FIFTY_MB)));
      expect(
        answers.map((a) => a.status),
        answers.find((a) => a.status !== status)?.text.slice(0, 200),
      ).toEqual(Array.from({ length: 20 }, () => status));
    }
  }, UPLOAD_TIMEOUT_MS);

  it('reads bodies as strict UTF-8 JSON objects and says what is wrong', async () => {
    const send = async (path: string, raw: Buffer | string, headers: Record<string, string> = json): Promise<{ status: number; error: Json }> => {
      const reply = await upload(url, 'POST', path, { ...bearer, ...headers }, Buffer.from(raw));
      return { status: reply.status, error: errorOf(reply) };
    };
    const duplicate = await send('/turn', '{"message": "echo hi", "message": "rm -rf /"}');
    expect(duplicate).toMatchObject({ status: 400, error: { code: 'invalid_request', message: expect.stringContaining('duplicate key "message" at line 1 column 24') as unknown } });
    const utf8 = await send('/turn', Buffer.concat([Buffer.from('{"message": "'), Buffer.from([0xff]), Buffer.from('"}')]));
    expect(utf8).toMatchObject({ status: 400, error: { code: 'invalid_request', message: expect.stringContaining('invalid UTF-8 at byte offset 13') as unknown } });
    const surrogate = await send('/turn', '{"message": "\\udc00"}');
    expect(surrogate).toMatchObject({ status: 400, error: { message: expect.stringContaining('lone surrogate') as unknown } });
    for (const raw of ['null', '[]', '"echo hi"', '7']) {
      expect(await send('/turn', raw), raw).toMatchObject({ status: 400, error: { code: 'invalid_request', message: expect.stringContaining('must be a JSON object') as unknown } });
      expect(await send('/permission', raw), raw).toMatchObject({ status: 400, error: { code: 'invalid_request' } });
    }
    const noBody = await upload(url, 'POST', '/turn', bearer, Buffer.alloc(0));
    expect(noBody.status).toBe(400);
    expect(errorOf(noBody)['message']).toContain('found no body');
    // The gateway's client sends `{}` to /cancel; a bare POST (no body, no content type) is fine too.
    expect((await upload(url, 'POST', '/cancel', bearer, Buffer.alloc(0))).status).toBe(202);
    expect((await send('/cancel', '{}', { 'content-type': 'Application/JSON; charset=UTF-8' })).status).toBe(202);
    expect((await send('/cancel', '{"a": 1, "a": 2}')).status).toBe(400);
    // And the worker still works for a client that follows the rules.
    const events = [];
    for await (const event of w.client.turn('echo still here')) events.push(event);
    expect(events.at(-1)).toMatchObject({ type: 'turn.completed' });
  });

  describe('with small timeouts', () => {
    let slow: TestWorker;
    let slowUrl: string;
    const gateDir = tempDir();

    beforeAll(async () => {
      // Held in "starting" (the fixture's session/new waits for a file nobody creates): /healthz?wait parks.
      slow = await startTestWorker('tcp', {
        http: { headersTimeoutMs: 300, requestTimeoutMs: 600, keepAliveTimeoutMs: 300 },
        agentEnv: { ACP_FIXTURE_SESSION_GATE: join(gateDir.path, `never-${randomUUID()}`) },
      });
      slowUrl = (slow.worker.address as { url: string }).url;
    });

    afterAll(async () => {
      await slow?.close();
      gateDir.remove();
    });

    it('cuts a client that trickles its headers or its body, with a 408', async () => {
      const headers = await trickle(slowUrl, `GET /status HTTP/1.1\r\nhost: x\r\nx-slow: ${'a'.repeat(2000)}\r\n\r\n`, 20);
      expect(headers.cutWhileSending).toBe(true);
      expect(headers.received).toMatch(/^HTTP\/1\.1 408 /);
      const head = `POST /permission HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${slow.token}\r\ncontent-type: application/json\r\ncontent-length: 2000\r\n\r\n`;
      const body = await trickle(slowUrl, `${head}${' '.repeat(2000)}`, 2);
      expect(body.cutWhileSending).toBe(true);
      expect(body.received).toMatch(/^HTTP\/1\.1 408 /);
    });

    it('refuses a turn while starting without reading its body', async () => {
      const reply = await headOnly(slowUrl, 'POST', '/turn', { authorization: `Bearer ${slow.token}`, ...json }, 10 * 1024 * 1024);
      expect(reply.status).toBe(503);
      expect(errorOf(reply)['code']).toBe('not_ready');
      expect(reply.headers['connection']).toBe('close');
      await reply.closed;
    });

    it('lets a parked /healthz?wait answer long after the request timeout', async () => {
      // 1.5 s parked, with a 600 ms request timeout: the timeout is for receiving the request only.
      const health = await slow.client.healthz({ waitMs: 1500 }).catch((err: unknown) => err);
      expect(health).toMatchObject({ code: 'BACKEND_UNAVAILABLE', details: { httpStatus: 503, reason: expect.stringContaining('ACP session') as unknown } });
    });
  });

  it('refuses timeouts that cannot work', async () => {
    await expect(startTestWorker('tcp', { http: { headersTimeoutMs: 5000, requestTimeoutMs: 1000 } })).rejects.toMatchObject({ code: 'CONFIG_INVALID', issues: [{ path: 'http.headersTimeoutMs' }] });
  });
});
