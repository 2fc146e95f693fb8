/**
 * The HTTP decision-log sink against a real HTTP server on loopback: batches POSTed as OPA's
 * decision log service takes them (a gzipped JSON array), headers from secrets or env variables
 * only, admission never held up by a slow collector (the oldest lines go, counted), bounded
 * retries against a collector that fails or is gone, and a flush of what is left on shutdown.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import type { DecisionLogEntry } from '../../src/admission/decision-log.js';
import { httpDecisionLog } from '../../src/admission/decision-log-http.js';
import { createAdmission, SHIPPED_BUNDLE, type Admission } from '../../src/admission/gate.js';
import { parseConfig } from '../../src/config/index.js';
import { ConfigError } from '../../src/errors.js';
import { memoryLogger } from '../helpers/logger.js';

interface Received {
  headers: IncomingMessage['headers'];
  lines: DecisionLogEntry[];
}

/** A collector: records each POST, answers it with `answer` (which may hold it). */
async function collector(answer: (req: IncomingMessage, res: ServerResponse, n: number) => void = (_q, res) => res.writeHead(204).end()) {
  const received: Received[] = [];
  const waiters: { count: number; resolve: () => void }[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const body = req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw;
      received.push({ headers: req.headers, lines: JSON.parse(body.toString('utf8')) as DecisionLogEntry[] });
      for (const w of waiters.filter((x) => received.length >= x.count)) w.resolve();
      answer(req, res, received.length);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/logs`;
  return {
    url,
    received,
    /** Resolves once `count` POSTs have arrived. */
    requests: (count: number) => (received.length >= count ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ count, resolve }))),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

type Collector = Awaited<ReturnType<typeof collector>>;
const collectors: Collector[] = [];
const gates: Admission[] = [];
afterEach(async () => {
  for (const g of gates.splice(0)) await g.close();
  for (const c of collectors.splice(0)) await c.close();
});

async function started(answer?: Parameters<typeof collector>[0]): Promise<Collector> {
  const c = await collector(answer);
  collectors.push(c);
  return c;
}

const entry = (id: string): DecisionLogEntry => ({
  labels: { id: 'gw', version: '0' },
  decision_id: id,
  path: 'spawngate/admission/decision',
  input: {},
  result: { allow: true },
  timestamp: '2026-01-01T00:00:00Z',
  metrics: { timer_rego_query_eval_ns: 1 },
  stage: 'policy',
  catalog_revision: 'c',
});

async function value(registry: Registry, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const metric = registry.getSingleMetric(name);
  const values = (await metric?.get())?.values ?? [];
  return values.find((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))?.value;
}

const config = (decisionLog: unknown) => ({
  agents: { executionBackends: { local: { type: 'process', defaultProfile: 'p', profiles: { p: {} } } }, execution: { default: { backend: 'local', profile: 'p' } } },
  spawngate: { decisionLog },
});
const request = (i: number) => ({ agentId: 'echo', task: `task ${i}`, caller: { sessionKey: 'k', depth: 0, channel: { id: 'c', kind: 'telegram' }, user: { id: `u${i}`, roles: [] } } });

describe('HTTP decision log sink', () => {
  it('POSTs gzipped JSON arrays of OPA events with headers from env and secretRef, and flushes on shutdown', async () => {
    const c = await started();
    const env = { LOG_AUTH: 'Bearer from-env', SPAWNGATE_SECRET_DLOG_TENANT: 'tenant-7' };
    Object.assign(process.env, env);
    let g: Admission;
    try {
      g = await createAdmission({
        config: config({ url: c.url, headers: { authorization: { env: 'LOG_AUTH' }, 'x-tenant': { secretRef: { name: 'dlog', key: 'tenant' } } }, maxBatchEntries: 2, flushIntervalMs: 3_600_000 }),
        bundle: SHIPPED_BUNDLE,
        watchBundle: false,
        logger: memoryLogger(),
      });
    } finally {
      for (const name of Object.keys(env)) delete process.env[name];
    }
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await g.admit(request(i))).decisionId);
    await c.requests(2);
    // Two full batches went at once; the fifth line waits for the interval, here an hour: close sends it.
    expect(c.received.map((r) => r.lines.length)).toEqual([2, 2]);
    await g.close();
    expect(c.received.flatMap((r) => r.lines.map((l) => l.decision_id))).toEqual(ids);
    for (const r of c.received) {
      expect(r.headers).toMatchObject({ 'content-type': 'application/json', 'content-encoding': 'gzip', authorization: 'Bearer from-env', 'x-tenant': 'tenant-7' });
    }
    expect(c.received[0]!.lines[0]).toMatchObject({ path: 'spawngate/admission/decision', bundles: { spawngate: { revision: expect.any(String) as unknown } }, stage: 'policy' });
    expect(await value(g.metrics.registry, 'spawngate_decision_log_sent_total', { sink: 'http' })).toBe(5);
    expect(await value(g.metrics.registry, 'spawngate_decision_log_dropped_total', { sink: 'http', reason: 'buffer_full' })).toBe(0);
  });

  it('never holds admission up: a collector that does not answer costs the oldest lines, each counted', async () => {
    const held: ServerResponse[] = [];
    const c = await started((_req, res, n) => (n === 1 ? held.push(res) : res.writeHead(200).end()));
    const g = await createAdmission({
      config: config({ url: c.url, maxBatchEntries: 2, maxBufferedEntries: 5, flushIntervalMs: 3_600_000, timeoutMs: 600_000 }),
      bundle: SHIPPED_BUNDLE,
      watchBundle: false,
      logger: memoryLogger(),
    });
    gates.push(g);
    const ids: string[] = [];
    // Lines 1 and 2 leave as the first batch; the collector keeps that request open throughout.
    for (let i = 0; i < 20; i++) ids.push((await g.admit(request(i))).decisionId);
    await c.requests(1);
    expect(held).toHaveLength(1);
    expect(held[0]!.writableEnded).toBe(false);
    const registry = g.metrics.registry;
    // 18 lines queued behind it into a buffer of 5: lines 3 to 15 were dropped, oldest first.
    expect(await value(registry, 'spawngate_decision_log_dropped_total', { sink: 'http', reason: 'buffer_full' })).toBe(13);
    expect(await value(registry, 'spawngate_decision_log_buffered_entries', { sink: 'http' })).toBe(5);
    expect(await value(registry, 'spawngate_decision_log_sent_total', { sink: 'http' })).toBe(0);
    held[0]!.writeHead(204).end();
    await g.close();
    expect(c.received.flatMap((r) => r.lines.map((l) => l.decision_id))).toEqual([...ids.slice(0, 2), ...ids.slice(15)]);
    expect(await value(registry, 'spawngate_decision_log_sent_total', { sink: 'http' })).toBe(7);
    expect(await value(registry, 'spawngate_decision_log_buffered_entries', { sink: 'http' })).toBe(0);
  });

  it('retries a failing collector a bounded number of times, then drops the batch and counts it', async () => {
    const c = await started((_req, res) => res.writeHead(503).end());
    const registry = new Registry();
    const errors: Error[] = [];
    const sink = httpDecisionLog({ url: c.url, maxAttempts: 3, retryBaseMs: 1, flushIntervalMs: 3_600_000, gzip: false, registry, onError: (e) => errors.push(e) });
    sink.write(entry('a'));
    sink.write(entry('b'));
    await sink.flush();
    expect(c.received.map((r) => r.lines.map((l) => l.decision_id))).toEqual([['a', 'b'], ['a', 'b'], ['a', 'b']]);
    expect(c.received[0]!.headers['content-encoding']).toBeUndefined();
    expect(errors.map((e) => e.message)).toEqual(Array(3).fill(expect.stringContaining('answered HTTP 503')));
    expect(await value(registry, 'spawngate_decision_log_send_errors_total', { sink: 'http' })).toBe(3);
    expect(await value(registry, 'spawngate_decision_log_dropped_total', { sink: 'http', reason: 'send_failed' })).toBe(2);
    await sink.close();
  });

  it('against a collector that is gone (connection refused) and one that never answers (timeout), gives up within its attempts', async () => {
    const gone = await collector();
    await gone.close();
    const registry = new Registry();
    const errors: Error[] = [];
    const refused = httpDecisionLog({ url: gone.url, maxAttempts: 2, retryBaseMs: 1, flushIntervalMs: 3_600_000, registry, onError: (e) => errors.push(e) });
    refused.write(entry('x'));
    await refused.flush();
    expect(errors.map((e) => (e as NodeJS.ErrnoException).code)).toEqual(['ECONNREFUSED', 'ECONNREFUSED']);
    await refused.close();

    const silent = await started(() => undefined);
    const timeouts: Error[] = [];
    const slow = httpDecisionLog({ url: silent.url, maxAttempts: 2, retryBaseMs: 1, timeoutMs: 50, flushIntervalMs: 3_600_000, registry, onError: (e) => timeouts.push(e) });
    slow.write(entry('y'));
    await slow.flush();
    expect(timeouts.map((e) => e.message)).toEqual(Array(2).fill(expect.stringContaining('timed out after 50 ms')));
    expect(silent.received).toHaveLength(2);
    expect(await value(registry, 'spawngate_decision_log_dropped_total', { sink: 'http', reason: 'send_failed' })).toBe(2);
    await slow.close();
  });

  it('on shutdown with the collector failing, stops waiting at once: one last attempt, the rest counted as shutdown drops', async () => {
    const c = await started((_req, res) => res.writeHead(500).end());
    const registry = new Registry();
    // A retry delay of an hour: close() must cut it short rather than sit it out.
    let failed!: () => void;
    const firstFailure = new Promise<void>((resolve) => (failed = resolve));
    const sink = httpDecisionLog({ url: c.url, maxAttempts: 10, retryBaseMs: 3_600_000, flushIntervalMs: 3_600_000, maxBatchEntries: 2, registry, onError: () => failed() });
    for (const id of ['a', 'b', 'c', 'd', 'e']) sink.write(entry(id));
    // The first attempt has failed and the sink sits in its retry delay.
    await firstFailure;
    await sink.close();
    // a+b failed, waited, were tried once more on close and dropped; c, d, e never left.
    expect(c.received.map((r) => r.lines.map((l) => l.decision_id))).toEqual([['a', 'b'], ['a', 'b']]);
    expect(await value(registry, 'spawngate_decision_log_dropped_total', { sink: 'http', reason: 'shutdown' })).toBe(5);
    sink.write(entry('late'));
    expect(await value(registry, 'spawngate_decision_log_dropped_total', { sink: 'http', reason: 'shutdown' })).toBe(6);
    expect(c.received).toHaveLength(2);
  });
});

describe('spawngate.decisionLog as an HTTP sink in the config', () => {
  const base = { agents: { executionBackends: { local: { type: 'process' } } } };
  const issues = (decisionLog: unknown): string[] => {
    try {
      parseConfig({ ...base, spawngate: { decisionLog } });
      return [];
    } catch (err) {
      return (err as ConfigError).issues.map((i) => `${i.path}: ${i.message}`);
    }
  };

  it('takes a URL and header sources; refuses literal header values and credentials in the URL', () => {
    expect(issues({ url: 'https://logs.example.com/v1/logs', headers: { authorization: { env: 'DLOG_AUTH' } }, maxBufferedEntries: 100, gzip: false })).toEqual([]);
    expect(issues('/var/log/spawngate/decisions.jsonl')).toEqual([]);
    expect(issues({ url: 'https://logs.example.com', headers: { authorization: 'Bearer abc' } })).toEqual([
      'spawngate.decisionLog: headers.authorization: must be { secretRef: { name, key } } or { env: NAME }: header values are never written in the config',
    ]);
    expect(issues({ url: 'https://user:pw@logs.example.com' })).toEqual(['spawngate.decisionLog.url: credentials in the URL are not allowed; send them in a header from a secretRef or an env variable']);
    expect(issues({ url: 'ftp://logs.example.com' })).toEqual(['spawngate.decisionLog.url: must be an http:// or https:// URL']);
    expect(issues({ url: 'https://logs.example.com', maxBufferedEntries: 0 })).toEqual([expect.stringMatching(/^spawngate\.decisionLog\.maxBufferedEntries: /)]);
    expect(issues(42)).toEqual(['spawngate.decisionLog: must be a file path, "stdout", "off", or an HTTP sink { url, headers?, ... }']);
  });

  it('fails at start when a header\'s variable is not set, naming where it looked and no value', async () => {
    const err = await createAdmission({ config: config({ url: 'http://127.0.0.1:9/logs', headers: { authorization: { secretRef: { name: 'dlog', key: 'token' } } } }), bundle: SHIPPED_BUNDLE, watchBundle: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).message).toBe('decision log header authorization has no value: set $SPAWNGATE_SECRET_DLOG_TOKEN');
  });
});
