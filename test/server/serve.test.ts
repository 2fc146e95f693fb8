/**
 * `spawngate serve` as an operator runs it (the installed bin, a real process): flags, the token
 * rule, draining on SIGTERM and SIGINT, SIGHUP reopening the decision log, and surviving the loss
 * of whoever reads its stdout and stderr. Every wait is for an event — a line it prints, a file
 * appearing, its exit — bounded so that a broken build fails instead of hanging.
 */
import { spawn } from 'node:child_process';
import type { ChildProcessByStdio } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { bounded } from '../worker/helpers.js';
import { call, eventually, openStream, processBackend, readAll, spawnRequest } from './helpers.js';
import { startOtlpSink } from '../telemetry/otlp-sink.js';
import type { Target } from './helpers.js';

// The installed bin (dist/, built by `npm test` before the suites), as an operator runs it.
const bin = fileURLToPath(new URL('../../bin/spawngate.js', import.meta.url));
// Starting serve, a worker and its agent is three Node start-ups: slow on a loaded 2-core machine.
const WAIT_MS = 60_000;

async function serveInProcess(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stderr: string }> {
  const err = new PassThrough();
  let stderr = '';
  err.on('data', (c: Buffer) => (stderr += c.toString()));
  const code = await main(['serve', ...args], { stdout: new PassThrough(), stderr: err, stdin: Readable.from(['']), env });
  return { code, stderr };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

interface ServeProcess {
  child: ChildProcessByStdio<null, Readable, Readable>;
  stdoutLines: string[];
  stderrLines: string[];
  exited: Promise<Exit>;
  /** Resolves with `check()`'s first value other than undefined, re-checked on every line and at exit. */
  until<T>(what: string, check: () => T | undefined): Promise<T>;
  /** The parsed listening line. */
  listening(): Promise<{ event: string; url: string; pid: number; bundleRevision: string | null }>;
}

/** `spawngate serve --port 0` on its own config file, with stdout and stderr read line by line. */
function startServe(config: Record<string, unknown>, env: NodeJS.ProcessEnv): ServeProcess {
  const configFile = join(backend.stateDir, `serve-${randomUUID()}.json`);
  writeFileSync(configFile, JSON.stringify(config));
  const child = spawn(process.execPath, [bin, 'serve', '--config', configFile, '--port', '0', '--host', '127.0.0.1'], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stdoutLines: string[] = [];
  const stderrLines: string[] = [];
  const checks = new Set<() => void>();
  const recheck = (): void => {
    for (const check of [...checks]) check();
  };
  const exited = new Promise<Exit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  // 'close' comes after the exit and the last line of both pipes: nothing can arrive any more.
  let closed = false;
  child.once('close', () => {
    closed = true;
    recheck();
  });
  createInterface({ input: child.stdout }).on('line', (line) => {
    stdoutLines.push(line);
    recheck();
  });
  createInterface({ input: child.stderr }).on('line', (line) => {
    stderrLines.push(line);
    recheck();
  });

  const until = <T,>(what: string, check: () => T | undefined): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const settle = (): void => {
        clearTimeout(timer);
        checks.delete(attempt);
      };
      const attempt = (): void => {
        const value = check();
        if (value !== undefined) {
          settle();
          resolve(value);
        } else if (closed) {
          settle();
          reject(new Error(`serve exited (${child.exitCode ?? child.signalCode}) before ${what}; stderr:\n${stderrLines.join('\n')}`));
        }
      };
      const timer = setTimeout(() => {
        settle();
        reject(new Error(`no ${what} within ${WAIT_MS} ms; stderr:\n${stderrLines.join('\n')}`));
      }, WAIT_MS);
      checks.add(attempt);
      attempt();
    });

  const event = (name: string) => (): Record<string, unknown> | undefined =>
    stdoutLines.map((l) => JSON.parse(l) as Record<string, unknown>).find((e) => e['event'] === name);
  return {
    child,
    stdoutLines,
    stderrLines,
    exited,
    until,
    listening: () => until('listening line', event('listening')) as ReturnType<ServeProcess['listening']>,
  };
}

function exitOf(serve: ServeProcess): Promise<Exit> {
  return bounded(serve.exited, WAIT_MS, 'the exit of serve');
}

function stop(serve: ServeProcess): void {
  if (serve.child.exitCode === null && serve.child.signalCode === null) serve.child.kill('SIGKILL');
}

const backend = processBackend();

/** The test backend under an owner of its own, so no other gateway's sweeper takes these workers for orphans. */
function serveConfig(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { ...backend.config, spawngate: { owner: `serve-test-${randomUUID().slice(0, 8)}`, ...extra } };
}

function newToken(): string {
  return randomBytes(24).toString('base64url');
}

async function spawnWorker(target: Target, token: string): Promise<{ spawnId: string; workerPid: number }> {
  const created = await call(target, 'POST', '/v1/spawns', { token, body: spawnRequest('serve test') });
  expect(created.status, created.text).toBe(201);
  const { spawnId, nativeId } = created.json as { spawnId: string; nativeId: string };
  const workerPid = Number(nativeId);
  expect(alive(workerPid)).toBe(true);
  return { spawnId, workerPid };
}

describe('spawngate serve', { timeout: 4 * WAIT_MS }, () => {
  afterAll(() => backend.remove());

  it('refuses bad flags and TCP without SPAWNGATE_API_TOKEN (exit 2) before starting anything', async () => {
    const noToken = await serveInProcess(['--port', '0'], {});
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toContain('SPAWNGATE_API_TOKEN');
    expect((await serveInProcess(['--port', '70000'], { SPAWNGATE_API_TOKEN: 't' })).code).toBe(2);
    expect((await serveInProcess(['--socket', join(backend.stateDir, 's.sock'), '--port', '1'], {})).code).toBe(2);
    expect((await serveInProcess(['--port', '0'], { SPAWNGATE_API_TOKEN: 't', SPAWNGATE_LOG_LEVEL: 'loud' })).code).toBe(2);
  });

  it.each(['SIGTERM', 'SIGINT'] as const)('prints a listening line, serves, and on %s ends open turns and closes its workers', async (signal) => {
    const token = newToken();
    const serve = startServe(serveConfig(), { SPAWNGATE_API_TOKEN: token, SPAWNGATE_LOG_LEVEL: 'warn' });
    try {
      const listening = await serve.listening();
      expect(listening).toMatchObject({ event: 'listening', url: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+$/) as unknown, pid: serve.child.pid });
      expect(listening.bundleRevision).toEqual(expect.any(String));
      const target = { url: listening.url };

      expect((await call(target, 'GET', '/healthz')).status).toBe(200);
      expect((await call(target, 'GET', '/v1/spawns')).status).toBe(401);
      const { spawnId, workerPid } = await spawnWorker(target, token);

      // Long enough never to finish by itself: only the shutdown can end it.
      const stream = await openStream(target, `/v1/spawns/${spawnId}/turns`, { message: 'slow 100000' }, token);
      for (let deltas = 0; deltas < 2; ) {
        const next = await stream.lines.next();
        if (next.done) throw new Error('turn ended early');
        if (next.value['type'] === 'agent.message.delta') deltas++;
      }
      serve.child.kill(signal);
      const rest = await readAll(stream);
      expect(rest.at(-1)).toMatchObject({ type: 'turn.cancelled' });
      expect(await exitOf(serve), serve.stderrLines.join('\n')).toEqual({ code: 0, signal: null });
      // Its pipes are drained once it exited, so the last line is there.
      const stopped = await serve.until('stopped line', () => serve.stdoutLines[1]);
      expect(JSON.parse(stopped)).toEqual({ event: 'stopped', signal });
      await eventually(() => Promise.resolve(!alive(workerPid)), WAIT_MS, 'the worker process to be gone');
    } finally {
      stop(serve);
    }
  });

  it('keeps serving after the reader of its stdout and stderr went away, and still closes its workers on SIGTERM', async () => {
    const token = newToken();
    // debug: every request writes a log line, so each one below is a write into a closed pipe.
    const serve = startServe(serveConfig(), { SPAWNGATE_API_TOKEN: token, SPAWNGATE_LOG_LEVEL: 'debug' });
    try {
      const target = { url: (await serve.listening()).url };
      // The reading ends of both pipes close, as when a supervisor or `| head` goes away: from now
      // on every write of serve's fails with EPIPE.
      serve.child.stdout.destroy();
      serve.child.stderr.destroy();

      expect((await call(target, 'GET', '/healthz')).status).toBe(200);
      const { workerPid } = await spawnWorker(target, token);
      // A request after those failed writes still gets an answer: serve is alive and serving.
      const listed = await call(target, 'GET', '/v1/spawns', { token });
      expect(listed.status, listed.text).toBe(200);
      expect((listed.json as { spawns: { nativeId: string }[] }).spawns.map((s) => s.nativeId)).toContain(String(workerPid));

      // Draining writes too (the "shutting down" log line, the stopped event): none of it may be fatal.
      serve.child.kill('SIGTERM');
      expect(await exitOf(serve)).toEqual({ code: 0, signal: null });
      await eventually(() => Promise.resolve(!alive(workerPid)), WAIT_MS, 'the worker process to be gone');
    } finally {
      stop(serve);
    }
  });

  it('on SIGHUP keeps running and reopens the decision log, so a rotated file is followed by a fresh one', async () => {
    const token = newToken();
    const decisions = join(backend.stateDir, `decisions-${randomUUID()}.log`);
    const lines = (path: string): string[] => (existsSync(path) ? readFileSync(path, 'utf8').split('\n').filter((l) => l !== '') : []);
    const decisionId = (line: string | undefined): unknown => (JSON.parse(line ?? '{}') as { decision_id?: unknown }).decision_id;
    const admit = async (target: Target): Promise<string> => {
      const reply = await call(target, 'POST', '/v1/admit', { token, body: spawnRequest('decision log test') });
      expect(reply.status, reply.text).toBe(200);
      return (reply.json as { decisionId: string }).decisionId;
    };
    const serve = startServe(serveConfig({ decisionLog: decisions }), { SPAWNGATE_API_TOKEN: token, SPAWNGATE_LOG_LEVEL: 'info' });
    try {
      const target = { url: (await serve.listening()).url };
      const first = await admit(target);
      await eventually(() => Promise.resolve(lines(decisions).length === 1), WAIT_MS, 'the first decision in the log');

      // What logrotate does: move the file away, then send SIGHUP.
      const rotated = `${decisions}.1`;
      renameSync(decisions, rotated);
      serve.child.kill('SIGHUP');
      await serve.until('the reopen log line', () => serve.stderrLines.find((l) => l.includes('reopened the decision log')));

      expect((await call(target, 'GET', '/healthz')).status).toBe(200);
      const second = await admit(target);
      await eventually(() => Promise.resolve(lines(decisions).length === 1), WAIT_MS, 'a fresh decision log at the configured path');
      expect(decisionId(lines(decisions)[0])).toBe(second);
      expect(lines(rotated).map(decisionId)).toEqual([first]);

      serve.child.kill('SIGTERM');
      expect(await exitOf(serve)).toEqual({ code: 0, signal: null });
    } finally {
      stop(serve);
    }
  });
  it('exports traces from the standard OTEL_* variables alone: the spawn under the caller, the worker\'s spans, and the close spans of the SIGTERM shutdown', async () => {
    const sink = await startOtlpSink();
    const token = newToken();
    // Open egress: the process worker reaches the collector on loopback and exports its own spans.
    const config = structuredClone(serveConfig()) as { agents: { executionBackends: { local: { profiles: { small: Record<string, unknown> } } } } };
    config.agents.executionBackends.local.profiles.small['egress'] = 'open';
    const serve = startServe(config, {
      SPAWNGATE_API_TOKEN: token,
      SPAWNGATE_LOG_LEVEL: 'warn',
      OTEL_EXPORTER_OTLP_ENDPOINT: sink.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_SERVICE_NAME: 'gateway-spawngate',
    });
    try {
      const target = { url: (await serve.listening()).url };
      const traceId = randomBytes(16).toString('hex');
      const callerSpan = randomBytes(8).toString('hex');
      const created = await call(target, 'POST', '/v1/spawns', { token, body: spawnRequest('traced'), headers: { traceparent: `00-${traceId}-${callerSpan}-01` } });
      expect(created.status, created.text).toBe(201);
      const { spawnId } = created.json as { spawnId: string };
      const turn = await readAll(await openStream(target, `/v1/spawns/${spawnId}/turns`, { message: 'tool' }, token));
      expect(turn.at(-1)).toMatchObject({ type: 'turn.completed' });
      // Not closed by the client: the shutdown closes it, and its close span must still be exported.
      serve.child.kill('SIGTERM');
      expect(await exitOf(serve)).toEqual({ code: 0, signal: null });
      const spans = sink.spans.filter((s) => s.traceId === traceId);
      const named = (name: string) => spans.filter((s) => s.name === name);
      const spawn = named('spawngate.spawn');
      expect(spawn, JSON.stringify(sink.spans.map((s) => s.name))).toHaveLength(1);
      // Under the API's SERVER span of the request, which continues the caller's span.
      const request = spans.find((s) => s.spanId === spawn[0]?.parentSpanId);
      expect({ name: request?.name, kind: request?.kind, parent: request?.parentSpanId }).toEqual({ name: 'POST /v1/spawns', kind: 2, parent: callerSpan });
      expect(spawn[0]?.resource).toMatchObject({ 'service.name': 'gateway-spawngate', 'spawngate.role': 'server', 'process.pid': serve.child.pid });
      for (const name of ['spawngate.admission.evaluate', 'spawngate.reservation', 'spawngate.backend.create', 'spawngate.backend.ready', 'spawngate.turn', 'spawngate.close']) {
        expect(named(name).map((s) => s.parentSpanId), name).toEqual([spawn[0]?.spanId]);
      }
      expect(named('spawngate.close')[0]?.attributes['spawngate.close_reason']).toBe('shutdown');
      // The worker's own spans, from its own process, in the same trace (flushed before it exited).
      await eventually(() => Promise.resolve(named('spawngate.worker.turn').length === 1), WAIT_MS, 'the worker\'s turn span');
      expect(named('POST /turn')[0]?.parentSpanId).toBe(named('spawngate.turn')[0]?.spanId);
      expect(named('spawngate.worker.turn')[0]?.parentSpanId).toBe(named('POST /turn')[0]?.spanId);
      expect(named('spawngate.worker.tool_call')[0]?.parentSpanId).toBe(named('spawngate.worker.turn')[0]?.spanId);
      expect(named('spawngate.worker.start')[0]?.resource).toMatchObject({ 'service.name': 'spawngate-worker', 'spawngate.spawn_id': spawnId });
      expect(sink.rejected).toBe(0);
    } finally {
      stop(serve);
      await sink.close();
    }
  });
});
