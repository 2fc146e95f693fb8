/**
 * A real OpenTelemetry Collector for tests (tools/otelcol, built by scripts/ensure-otelcol.sh): OTLP
 * gRPC and HTTP receivers on free loopback ports, a batch processor, and an otlp_http exporter that
 * sends JSON to test/telemetry/otlp-sink.ts, where the test reads the spans. So what a test asserts
 * has crossed the collector's real decoding, batching and re-encoding, over the protocol the
 * process under test chose.
 *
 * OTELCOL_BIN names the binary (scripts/test.sh exports it); without it the script is run here,
 * which builds the collector once (minutes when cold). Under CI=true a collector that cannot be had
 * fails the suite: nothing is skipped.
 */
import { execFile, spawn } from 'node:child_process';
import type { ChildProcessByStdio } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect } from 'vitest';
import { call, openStream, readAll } from '../server/helpers.js';
import { bounded } from '../worker/helpers.js';
import { startOtlpSink } from './otlp-sink.js';
import type { OtlpSink, SinkSpan } from './otlp-sink.js';

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

/** A cold build is minutes of Go on two shared cores. */
export const COLLECTOR_BUILD_MS = 30 * 60_000;
const READY_MS = 30_000;
const STOP_MS = 15_000;

export interface Collector {
  /** OTLP/gRPC receiver, as OTEL_EXPORTER_OTLP_ENDPOINT takes it: http://127.0.0.1:<port>. */
  grpcEndpoint: string;
  /** OTLP/HTTP receiver base URL (traces at `${httpEndpoint}/v1/traces`). */
  httpEndpoint: string;
  /** Where the collector exports to; its `spans` are what went through the collector. */
  sink: OtlpSink;
  /** The collector's own log lines (stderr), for failure messages. */
  log: string[];
  /**
   * SIGTERM and wait for the exit: the collector's shutdown drains the batch processor and the
   * exporter, so once this resolves every span it accepted is in `sink.spans`. Idempotent.
   */
  stop(): Promise<void>;
  /** stop(), then the sink and the config folder. */
  close(): Promise<void>;
}

let binary: Promise<string> | null = null;

/** The collector binary: OTELCOL_BIN, else scripts/ensure-otelcol.sh's (built on first use). */
export function collectorBinary(): Promise<string> {
  binary ??= (async () => {
    const given = process.env['OTELCOL_BIN'];
    if (given) return given;
    try {
      const { stdout } = await run('bash', [join(repoRoot, 'scripts/ensure-otelcol.sh')], { timeout: COLLECTOR_BUILD_MS, maxBuffer: 16 * 1024 * 1024 });
      const path = stdout.trim().split('\n').at(-1);
      if (!path) throw new Error('scripts/ensure-otelcol.sh printed no path');
      return path;
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`no OpenTelemetry Collector for the trace tests (CI=${process.env['CI'] ?? 'unset'}): ${e.stderr?.slice(-4000) || e.message}`, { cause: err });
    }
  })();
  return binary;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function config(grpcPort: number, httpPort: number, sinkUrl: string): string {
  // JSON is YAML: the collector's file provider reads it as is.
  return JSON.stringify({
    receivers: { otlp: { protocols: { grpc: { endpoint: `127.0.0.1:${grpcPort}` }, http: { endpoint: `127.0.0.1:${httpPort}` } } } },
    // Short batches: the tests read spans soon after they were sent; stop() drains the rest.
    processors: { batch: { timeout: '100ms' } },
    exporters: {
      otlp_http: { endpoint: sinkUrl, encoding: 'json', compression: 'none', retry_on_failure: { enabled: false } },
    },
    service: {
      // No metrics endpoint of its own (default :8888), so collectors of parallel test files do not collide.
      telemetry: { metrics: { level: 'none' }, logs: { level: 'info', encoding: 'console' } },
      pipelines: { traces: { receivers: ['otlp'], processors: ['batch'], exporters: ['otlp_http'] } },
    },
  });
}

interface Attempt {
  child: ChildProcessByStdio<null, Readable, Readable>;
  log: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts the collector and resolves once it logged that every pipeline runs; rejects if it exits first. */
async function launch(bin: string, configFile: string): Promise<Attempt> {
  const child = spawn(bin, ['--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the collector was not ready within ${READY_MS} ms:\n${log.join('\n')}`)), READY_MS);
    const onLine = (line: string): void => {
      log.push(line);
      if (line.includes('Everything is ready')) {
        clearTimeout(timer);
        resolve();
      }
    };
    createInterface({ input: child.stderr }).on('line', onLine);
    createInterface({ input: child.stdout }).on('line', onLine);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`the collector exited (${code ?? signal}) before it was ready:\n${log.join('\n')}`));
    });
  });
  try {
    await ready;
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    throw Object.assign(err as Error, { log });
  }
  return { child, log, exited };
}

/** A collector exporting to a fresh sink; close() it in afterAll. */
export async function startCollector(): Promise<Collector> {
  const bin = await collectorBinary();
  const sink = await startOtlpSink();
  const dir = mkdtempSync(join(tmpdir(), 'sg-otelcol-'));
  const configFile = join(dir, 'config.json');
  let attempt: Attempt | null = null;
  let ports = { grpc: 0, http: 0 };
  try {
    // A free port can be taken by someone else between our probe and the collector's bind: try again then.
    for (let i = 0; i < 3 && !attempt; i++) {
      ports = { grpc: await freePort(), http: await freePort() };
      writeFileSync(configFile, config(ports.grpc, ports.http, sink.url));
      try {
        attempt = await launch(bin, configFile);
      } catch (err) {
        const log = ((err as { log?: string[] }).log ?? []).join('\n');
        if (i === 2 || !/address already in use/i.test(log)) throw err;
      }
    }
  } catch (err) {
    await sink.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const running = attempt as Attempt;
  // "Everything is ready" comes after every receiver started; both ports must answer by now.
  for (const port of [ports.grpc, ports.http]) {
    if (!(await accepts(port))) throw new Error(`the collector said it was ready but 127.0.0.1:${port} refuses connections:\n${running.log.join('\n')}`);
  }
  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      if (running.child.exitCode === null && running.child.signalCode === null) running.child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const gone = await Promise.race([running.exited.then(() => true), new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), STOP_MS)))]);
      clearTimeout(timer);
      if (!gone) {
        running.child.kill('SIGKILL');
        await running.exited;
        throw new Error(`the collector did not stop within ${STOP_MS} ms of SIGTERM:\n${running.log.join('\n')}`);
      }
    })());
  return {
    grpcEndpoint: `http://127.0.0.1:${ports.grpc}`,
    httpEndpoint: `http://127.0.0.1:${ports.http}`,
    sink,
    log: running.log,
    stop,
    close: async () => {
      try {
        await stop();
      } finally {
        await sink.close();
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

// ---- the span tree of a spawn, as the collector delivered it -----------------------------------

/** OTLP span kinds. */
export const KIND = { internal: 1, server: 2, client: 3 } as const;

export function spansOf(spans: readonly SinkSpan[], traceId: string): SinkSpan[] {
  return spans.filter((s) => s.traceId === traceId);
}

export interface SpawnTree {
  spawn: SinkSpan;
  /** The API's `POST /v1/spawns` SERVER span the spawn runs under. */
  request: SinkSpan;
  admission: SinkSpan;
  reservation: SinkSpan;
  create: SinkSpan;
  ready: SinkSpan;
  turns: { turn: SinkSpan; client: SinkSpan; server: SinkSpan; toolCalls: SinkSpan[] }[];
  close: SinkSpan;
  worker: { start: SinkSpan; handshake: SinkSpan };
}

export interface TraceTree {
  spawns: SinkSpan[];
  bySpawn(spawnId: string): SpawnTree;
}

/**
 * Checks one trace of `spawngate serve` spawns and returns its parts. Asserted here for every spawn:
 * no span hangs off a parent outside the trace; gateway spans carry serve's resource and worker spans
 * the worker's (process.pid differs); `spawngate.spawn` runs under a SERVER span of the API that
 * continues the caller's span; admission, reservation, create, ready, turns and close are its
 * INTERNAL children (health probes make no span); each turn has exactly one CLIENT `POST /turn` and
 * the worker's SERVER span below
 * it; the worker's start span hangs off the spawn (its TRACEPARENT) with the handshake below.
 */
export function checkTrace(spans: readonly SinkSpan[], expected: { callerSpanId: string; servePid: number; serveUrl: string }): TraceTree {
  const names = () => JSON.stringify(spans.map((s) => `${s.name}<${s.parentSpanId}`));
  const ids = new Set(spans.map((s) => s.spanId));
  expect(ids.size, 'span ids are unique').toBe(spans.length);
  for (const s of spans) expect(s.parentSpanId === expected.callerSpanId || ids.has(s.parentSpanId ?? ''), `${s.name} has its parent in the trace: ${names()}`).toBe(true);
  const childrenOf = (parent: SinkSpan, name?: string) => spans.filter((s) => s.parentSpanId === parent.spanId && (name === undefined || s.name === name));
  const one = (parent: SinkSpan, name: string): SinkSpan => {
    const found = childrenOf(parent, name);
    expect(found, `exactly one ${name} under ${parent.name}: ${names()}`).toHaveLength(1);
    return found[0] as SinkSpan;
  };
  const port = Number(new URL(expected.serveUrl).port);
  const gateway = spans.filter((s) => s.resource['spawngate.role'] === 'server');
  const worker = spans.filter((s) => s.resource['spawngate.role'] === 'worker');
  expect(gateway.length + worker.length, `every span comes from serve or a worker: ${names()}`).toBe(spans.length);
  for (const s of gateway) expect(s.resource, s.name).toMatchObject({ 'service.name': 'spawngate', 'process.pid': expected.servePid });
  for (const s of worker) {
    expect(s.resource['service.name'], s.name).toBe('spawngate-worker');
    expect(s.resource['process.pid'], `${s.name} reports the worker's own pid`).not.toBe(expected.servePid);
  }

  const spawns = spans.filter((s) => s.name === 'spawngate.spawn');
  expect(spawns.length, names()).toBeGreaterThan(0);
  const trees = new Map<string, SpawnTree>();
  for (const spawn of spawns) {
    expect(spawn.kind).toBe(KIND.internal);
    const request = spans.find((s) => s.spanId === spawn.parentSpanId);
    expect(request, `the spawn's parent is in the trace: ${names()}`).toBeDefined();
    const req = request as SinkSpan;
    expect({ name: req.name, kind: req.kind, parent: req.parentSpanId }).toEqual({ name: 'POST /v1/spawns', kind: KIND.server, parent: expected.callerSpanId });
    expect(req.attributes).toMatchObject({
      'http.request.method': 'POST',
      'http.route': '/v1/spawns',
      'url.path': '/v1/spawns',
      'http.response.status_code': 201,
      'server.address': '127.0.0.1',
      'server.port': port,
    });
    expect(req.status.code ?? 0, 'a 201 is not an error').not.toBe(2);

    const lifecycle = childrenOf(spawn).filter((s) => s.resource['spawngate.role'] === 'server');
    for (const s of lifecycle) expect(s.kind, s.name).toBe(KIND.internal);
    expect(lifecycle.map((s) => s.name).filter((n) => n !== 'spawngate.turn').sort()).toEqual(
      ['spawngate.admission.evaluate', 'spawngate.reservation', 'spawngate.backend.create', 'spawngate.backend.ready', 'spawngate.close'].sort(),
    );
    const ready = one(spawn, 'spawngate.backend.ready');
    // Health probes are not traced: a worker still starting answers each with a 503.
    expect(spans.filter((s) => s.name.includes('/healthz')), names()).toEqual([]);

    const turns = childrenOf(spawn, 'spawngate.turn').map((turn) => {
      expect(turn.kind).toBe(KIND.internal);
      const client = one(turn, 'POST /turn');
      expect(client.kind).toBe(KIND.client);
      expect(client.resource['spawngate.role']).toBe('server');
      const server = one(client, 'spawngate.worker.turn');
      expect(server.kind).toBe(KIND.server);
      expect(server.attributes).toMatchObject({ 'http.request.method': 'POST', 'url.path': '/turn', 'http.response.status_code': 200 });
      const toolCalls = childrenOf(server, 'spawngate.worker.tool_call');
      return { turn, client, server, toolCalls };
    });

    const start = one(spawn, 'spawngate.worker.start');
    expect(start.resource['spawngate.role']).toBe('worker');
    const handshake = one(start, 'spawngate.worker.acp.handshake');
    for (const s of [start, handshake, ...turns.flatMap((t) => [t.server, ...t.toolCalls])]) {
      expect(s.resource, `${s.name} is the worker's`).toMatchObject({ 'spawngate.role': 'worker', 'spawngate.spawn_id': spawn.attributes['spawngate.spawn_id'] });
      expect(s.resource['process.pid']).toBe(start.resource['process.pid']);
    }
    trees.set(String(spawn.attributes['spawngate.spawn_id']), {
      spawn,
      request: req,
      admission: one(spawn, 'spawngate.admission.evaluate'),
      reservation: one(spawn, 'spawngate.reservation'),
      create: one(spawn, 'spawngate.backend.create'),
      ready,
      turns,
      close: one(spawn, 'spawngate.close'),
      worker: { start, handshake },
    });
  }
  return {
    spawns,
    bySpawn(spawnId) {
      const tree = trees.get(spawnId);
      expect(tree, `a spawn span for ${spawnId}`).toBeDefined();
      return tree as SpawnTree;
    },
  };
}

// ---- spawngate serve, exporting to a collector ---------------------------------------------------

const bin = fileURLToPath(new URL('../../bin/spawngate.js', import.meta.url));

interface Serve {
  child: ChildProcessByStdio<null, Readable, Readable>;
  stderr: string[];
  url: Promise<string>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** The installed bin (dist/), as an operator runs it, on a free loopback port. */
function startServe(configFile: string, env: NodeJS.ProcessEnv): Serve {
  const child = spawn(process.execPath, [bin, 'serve', '--config', configFile, '--port', '0', '--host', '127.0.0.1'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const stderr: string[] = [];
  createInterface({ input: child.stderr }).on('line', (line) => stderr.push(line));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const url = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      const event = JSON.parse(line) as { event?: string; url?: string };
      if (event.event === 'listening' && event.url) resolve(event.url);
    });
    void exited.then(({ code, signal }) => reject(new Error(`serve exited (${code ?? signal}) before listening:\n${stderr.join('\n')}`)));
  });
  return { child, stderr, url, exited };
}

export interface Spawned {
  spawnId: string;
  nativeId: string;
}

export interface ScenarioResult {
  /** Every span of the caller's trace, as the collector delivered them. */
  spans: SinkSpan[];
  callerSpanId: string;
  servePid: number;
  serveUrl: string;
  /** Spawned, two turns, closed by DELETE. */
  closed: Spawned;
  /** Spawned and left open: the SIGTERM drain of serve closes it. */
  drained: Spawned;
}

/**
 * What a gateway does, against `spawngate serve` exporting over OTLP/gRPC to `collector`: two spawns
 * of the echo agent under one caller span (traceparent header), two turns on the first, DELETE of
 * the first, SIGTERM of serve for the second. `whileRunning` sees both workers before anything is
 * closed. serve holds its batches for ten minutes, so only its shutdown's flush can deliver them;
 * the collector is stopped (drained) before the spans are read.
 */
export async function runTraceScenario(options: {
  collector: Collector;
  config: Record<string, unknown>;
  dir: string;
  waitMs: number;
  /** The agent both spawns run (default echo) and the two turns' messages. */
  agentId?: string;
  messages?: readonly [string, string];
  whileRunning?: (workers: Spawned[]) => Promise<void>;
  gone: (worker: Spawned) => Promise<void>;
}): Promise<ScenarioResult> {
  const { collector, waitMs } = options;
  const token = randomBytes(24).toString('base64url');
  const configFile = join(options.dir, `spawngate-${randomUUID().slice(0, 8)}.json`);
  writeFileSync(configFile, JSON.stringify(options.config));
  const serve = startServe(configFile, {
    SPAWNGATE_API_TOKEN: token,
    SPAWNGATE_LOG_LEVEL: 'warn',
    OTEL_EXPORTER_OTLP_ENDPOINT: collector.grpcEndpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
    OTEL_SERVICE_NAME: '',
    OTEL_RESOURCE_ATTRIBUTES: '',
    OTEL_BSP_SCHEDULE_DELAY: '600000',
  });
  const traceId = randomBytes(16).toString('hex');
  const callerSpanId = randomBytes(8).toString('hex');
  const headers = { traceparent: `00-${traceId}-${callerSpanId}-01` };
  try {
    const serveUrl = await bounded(serve.url, waitMs, 'the listening line of serve');
    const target = { url: serveUrl };
    const spawnOne = async (task: string): Promise<Spawned> => {
      const caller = { sessionKey: `agent:main:otelcol:${randomUUID()}`, depth: 0, channel: { id: 'otelcol', kind: 'cli', interactive: true }, user: { id: 'sre', roles: [] } };
      const created = await call(target, 'POST', '/v1/spawns', { token, headers, body: { agentId: options.agentId ?? 'echo', task, caller } });
      expect(created.status, `${created.text}\n${serve.stderr.join('\n')}`).toBe(201);
      const body = created.json as Spawned;
      return { spawnId: body.spawnId, nativeId: body.nativeId };
    };
    const closed = await spawnOne('first');
    const drained = await spawnOne('second');
    await options.whileRunning?.([closed, drained]);
    for (const message of options.messages ?? ['hello', 'again']) {
      const events = await readAll(await openStream(target, `/v1/spawns/${closed.spawnId}/turns`, { message }, token));
      expect(events.at(-1)).toMatchObject({ type: 'turn.completed' });
      expect(events.at(-1)?.['traceparent']).toMatch(new RegExp(`^00-${traceId}-`));
    }
    expect((await call(target, 'DELETE', `/v1/spawns/${closed.spawnId}`, { token, headers })).status).toBe(204);

    serve.child.kill('SIGTERM');
    expect(await bounded(serve.exited, waitMs, 'the exit of serve')).toEqual({ code: 0, signal: null });
    for (const worker of [closed, drained]) await options.gone(worker);
    // The collector's own shutdown drains its batch and its exporter: after this, the sink has it all.
    await collector.stop();
    expect(collector.sink.rejected).toBe(0);
    return { spans: spansOf(collector.sink.spans, traceId), callerSpanId, servePid: serve.child.pid as number, serveUrl, closed, drained };
  } finally {
    if (serve.child.exitCode === null && serve.child.signalCode === null) serve.child.kill('SIGKILL');
  }
}
