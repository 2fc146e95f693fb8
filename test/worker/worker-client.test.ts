/**
 * The client against misbehaving peers: a plain node:http server on loopback that speaks a broken
 * version of the contract (the reference worker never does, so it cannot exercise these paths).
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createWorkerClient, parseWorkerEvent, waitForHealthy } from '../../src/protocol/client.js';
import { WorkerProtocolError } from '../../src/errors.js';
import { collect, errorOf } from './helpers.js';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

const servers: Server[] = [];

async function serve(handler: Handler, port = 0): Promise<string> {
  const server = createServer(handler);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});

function line(fields: Record<string, unknown>): string {
  return `${JSON.stringify({ turnId: 't', time: new Date().toISOString(), ...fields })}\n`;
}

function ndjson(res: ServerResponse, body: string): void {
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  res.end(body);
}


describe('worker client', () => {
  it('sends the bearer token and traceparent on every request', async () => {
    const seen: { auth?: string; trace?: string }[] = [];
    const baseUrl = await serve((req, res) => {
      seen.push({ auth: req.headers.authorization, trace: req.headers.traceparent as string | undefined });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: 'ok', agentId: 'a', version: '1', protocolVersion: 1 }));
    });
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const client = createWorkerClient({ baseUrl, token: 'tok', traceparent });
    await client.healthz();
    expect(seen).toEqual([{ auth: 'Bearer tok', trace: traceparent }]);
  });

  it('fails with WORKER_PROTOCOL on a malformed NDJSON line', async () => {
    const baseUrl = await serve((_req, res) => ndjson(res, `${line({ type: 'turn.started', seq: 0, agentId: 'a' })}{not json\n`));
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    expect((await errorOf(collect(client.turn('hi')))).code).toBe('WORKER_PROTOCOL');
  });

  it('fails with WORKER_PROTOCOL when an event lacks its required fields', async () => {
    const baseUrl = await serve((_req, res) => ndjson(res, line({ type: 'agent.message.delta', seq: 0 })));
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    expect((await errorOf(collect(client.turn('hi')))).code).toBe('WORKER_PROTOCOL');
  });

  it('refuses a line longer than maxLineBytes', async () => {
    const baseUrl = await serve((_req, res) => ndjson(res, line({ type: 'agent.message.delta', seq: 0, text: 'x'.repeat(10_000) })));
    const client = createWorkerClient({ baseUrl, token: 'tok', maxLineBytes: 1024 });
    const err = await errorOf(collect(client.turn('hi')));
    expect(err.code).toBe('WORKER_PROTOCOL');
    expect(err.message).toContain('exceeds 1024 bytes');
  });

  it('fails when the stream ends without a terminal event', async () => {
    const baseUrl = await serve((_req, res) => ndjson(res, line({ type: 'turn.started', seq: 0, agentId: 'a' })));
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    const seen: string[] = [];
    const err = await errorOf(
      (async () => {
        for await (const e of client.turn('hi')) seen.push(e.type);
      })(),
    );
    expect(seen).toEqual(['turn.started']);
    expect(err.details).toMatchObject({ lastSeq: 0 });
  });

  it('fails on out-of-sequence events', async () => {
    const baseUrl = await serve((_req, res) =>
      ndjson(res, line({ type: 'turn.started', seq: 0, agentId: 'a' }) + line({ type: 'turn.completed', seq: 2, stopReason: 'end_turn' })),
    );
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    expect((await errorOf(collect(client.turn('hi')))).code).toBe('WORKER_PROTOCOL');
  });

  it('skips event types it does not know, keeping seq accounting', async () => {
    const baseUrl = await serve((_req, res) =>
      ndjson(
        res,
        line({ type: 'turn.started', seq: 0, agentId: 'a' }) +
          line({ type: 'agent.mood', seq: 1, mood: 'curious' }) +
          line({ type: 'turn.completed', seq: 2, stopReason: 'end_turn' }),
      ),
    );
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    expect((await collect(client.turn('hi'))).map((e) => e.type)).toEqual(['turn.started', 'turn.completed']);
    expect(parseWorkerEvent(JSON.stringify({ type: 'agent.mood', turnId: 't', seq: 1, time: 'x' }))).toBeNull();
  });

  it('assembles lines split across chunks and multi-byte characters', async () => {
    const baseUrl = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      const body = Buffer.from(
        line({ type: 'turn.started', seq: 0, agentId: 'a' }) +
          line({ type: 'agent.message.delta', seq: 1, text: 'héllo ✓' }) +
          line({ type: 'turn.completed', seq: 2, stopReason: 'end_turn' }),
      );
      // Three bytes at a time, so the UTF-8 sequences are cut in the middle.
      let offset = 0;
      const writeNext = (): void => {
        if (offset >= body.length) {
          res.end();
          return;
        }
        res.write(body.subarray(offset, offset + 3));
        offset += 3;
        setImmediate(writeNext);
      };
      writeNext();
    });
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    const events = await collect(client.turn('hi'));
    expect(events[1]).toMatchObject({ type: 'agent.message.delta', text: 'héllo ✓' });
  });

  it('rejects a /turn answer that is not NDJSON', async () => {
    const baseUrl = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html></html>');
    });
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    expect((await errorOf(collect(client.turn('hi')))).code).toBe('WORKER_PROTOCOL');
  });

  it('maps a refused connection to a retryable BACKEND_UNAVAILABLE', async () => {
    const baseUrl = await serve((_req, res) => res.end());
    servers[0]?.close();
    await new Promise((resolve) => setImmediate(resolve));
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    const err = await errorOf(client.status());
    expect(err.code).toBe('BACKEND_UNAVAILABLE');
    expect(err.retryable).toBe(true);
  });

  it('bounds a call that never gets an answer with TIMEOUT', async () => {
    const baseUrl = await serve(() => {
      // never answers
    });
    const client = createWorkerClient({ baseUrl, token: 'tok', requestTimeoutMs: 200 });
    const err = await errorOf(client.status());
    expect(err.code).toBe('TIMEOUT');
  });

  it('rejects with the abort reason when the caller aborts', async () => {
    const baseUrl = await serve(() => {
      // never answers
    });
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    const controller = new AbortController();
    const pending = client.status({ signal: controller.signal });
    controller.abort(new Error('caller gave up'));
    await expect(pending).rejects.toThrow('caller gave up');
  });

  it('needs exactly one of baseUrl and socketPath', () => {
    expect(() => createWorkerClient({ token: 't' })).toThrow(WorkerProtocolError);
    expect(() => createWorkerClient({ token: 't', baseUrl: 'http://127.0.0.1:1', socketPath: '/tmp/x.sock' })).toThrow(WorkerProtocolError);
  });
});

describe('waitForHealthy', () => {
  it('retries 503 starting until the worker answers 200', async () => {
    let calls = 0;
    const baseUrl = await serve((_req, res) => {
      calls++;
      res.writeHead(calls < 3 ? 503 : 200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: calls < 3 ? 'starting' : 'ok', agentId: 'a', version: '1', protocolVersion: 1, reason: 'warming up' }));
    });
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    const health = await waitForHealthy(client, { timeoutMs: 10_000, intervalMs: 10 });
    expect(health.status).toBe('ok');
    expect(calls).toBe(3);
  });

  it('gives up with TIMEOUT, keeping the last failure as cause', async () => {
    const baseUrl = await serve((_req, res) => {
      res.writeHead(503, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ status: 'starting', agentId: 'a', version: '1', protocolVersion: 1, reason: 'never ready' }));
    });
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    const err = await errorOf(waitForHealthy(client, { timeoutMs: 300, intervalMs: 20 }));
    expect(err.code).toBe('TIMEOUT');
    expect((err.cause as WorkerProtocolError).code).toBe('BACKEND_UNAVAILABLE');
  });

  it('does not retry a wrong token', async () => {
    let calls = 0;
    const baseUrl = await serve((_req, res) => {
      calls++;
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'unauthorized', message: 'no' } }));
    });
    const client = createWorkerClient({ baseUrl, token: 'tok' });
    expect((await errorOf(waitForHealthy(client, { timeoutMs: 5000 }))).code).toBe('WORKER_UNAUTHORIZED');
    expect(calls).toBe(1);
  });

  it('keeps retrying a refused connection until a server appears', async () => {
    // Reserve a free port, release it, and only start listening on it after the first attempts failed.
    const probe = await serve((_req, res) => res.end());
    const port = Number(new URL(probe).port);
    const first = servers.pop();
    await new Promise((resolve) => first?.close(resolve));
    const client = createWorkerClient({ baseUrl: `http://127.0.0.1:${port}`, token: 'tok' });
    let attempts = 0;
    const counting = {
      ...client,
      healthz: async (...args: Parameters<typeof client.healthz>) => {
        attempts++;
        if (attempts === 3) {
          await serve((_req, res) => {
            res.writeHead(200, { 'content-type': 'application/json' });
            res.end(JSON.stringify({ status: 'ok', agentId: 'a', version: '1', protocolVersion: 1 }));
          }, port);
        }
        return client.healthz(...args);
      },
    };
    const health = await waitForHealthy(counting, { timeoutMs: 10_000, intervalMs: 10 });
    expect(health.status).toBe('ok');
    expect(attempts).toBe(3);
  });
});
