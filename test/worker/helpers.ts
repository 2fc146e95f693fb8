import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { createWorkerClient } from '../../src/protocol/client.js';
import type { WorkerClient } from '../../src/protocol/client.js';
import { WorkerProtocolError } from '../../src/errors.js';
import { startWorker } from '../../src/worker/worker.js';
import type { RunningWorker, StartWorkerOptions } from '../../src/worker/worker.js';
import type { WorkerEvent } from '../../src/protocol/events.js';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
export const fixtureAgent = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
export const workerBin = join(repoRoot, 'src/worker/bin.ts');
/** The worker as the process backend and the image start it once built (scripts/bundle-worker.mjs, run by `npm run build`). */
export const workerBundle = join(repoRoot, 'dist/worker/bundle/worker.js');

export type Transport = 'tcp' | 'unix';

export function newToken(): string {
  return randomBytes(24).toString('base64url');
}

export function tempDir(): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), 'spawngate-worker-'));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

export interface TestWorker {
  worker: RunningWorker;
  client: WorkerClient;
  token: string;
  clientWith(token: string): WorkerClient;
  close(): Promise<void>;
}

/** A real worker in this process, driving the fixture agent (or another command) over stdio. */
export async function startTestWorker(
  transport: Transport,
  overrides: Partial<StartWorkerOptions> = {},
): Promise<TestWorker> {
  const token = newToken();
  const dir = tempDir();
  const worker = await startWorker({
    agentCommand: process.execPath,
    agentArgs: [fixtureAgent],
    agentId: 'fixture',
    token,
    listen: transport === 'unix' ? { socketPath: join(dir.path, 'worker.sock') } : { port: 0 },
    exitOnAgentExit: false,
    cancelGraceMs: 500,
    killGraceMs: 1000,
    ...overrides,
  });
  const clientWith = (t: string): WorkerClient =>
    'url' in worker.address ? createWorkerClient({ baseUrl: worker.address.url, token: t }) : createWorkerClient({ socketPath: worker.address.socketPath, token: t });
  return {
    worker,
    client: clientWith(token),
    token,
    clientWith,
    close: async () => {
      await worker.close();
      dir.remove();
    },
  };
}

export async function collect(events: AsyncIterable<WorkerEvent>): Promise<WorkerEvent[]> {
  const out: WorkerEvent[] = [];
  for await (const event of events) out.push(event);
  return out;
}

export function types(events: WorkerEvent[]): string[] {
  return events.map((e) => e.type);
}

export function messageText(events: WorkerEvent[]): string {
  return events.map((e) => (e.type === 'agent.message.delta' ? e.text : '')).join('');
}

/**
 * Polls `check` until it returns a value other than undefined; bounded by `timeoutMs`, whose default
 * leaves a loaded 2-core machine room: the bound is there to end a broken test, not to measure speed.
 */
export async function eventually<T>(check: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = null;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  throw new Error(`condition not met within ${timeoutMs} ms${lastError instanceof Error ? `: ${lastError.message}` : ''}`);
}

/** Alive and not a zombie (a reparented child may linger unreaped in containers without an init). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export interface WorkerChild {
  child: ChildProcess;
  stdoutLines: string[];
  stderr: () => string;
  /** The parsed `{"event":"listening"}` line. */
  listening: Promise<{ event: string; url?: string; socketPath?: string; agentId: string; pid: number }>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** `node src/worker/bin.ts` as a separate process, the way backends start it; `before`: a wrapper that execs it (e.g. the prelaunch script). */
export function spawnWorkerBin(env: Record<string, string>, script: string = workerBin, before: readonly string[] = []): WorkerChild {
  const base: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('SPAWNGATE_')) base[k] = v;
  const [cmd = process.execPath, ...args] = [...before, process.execPath, script];
  const child = spawn(cmd, args, { cwd: repoRoot, env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const stdoutLines: string[] = [];
  let stderr = '';
  let buffered = '';
  let resolveListening!: (value: Awaited<WorkerChild['listening']>) => void;
  let rejectListening!: (err: Error) => void;
  const listening = new Promise<Awaited<WorkerChild['listening']>>((resolve, reject) => {
    resolveListening = resolve;
    rejectListening = reject;
  });
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    buffered += chunk;
    let i: number;
    while ((i = buffered.indexOf('\n')) !== -1) {
      const line = buffered.slice(0, i);
      buffered = buffered.slice(i + 1);
      stdoutLines.push(line);
      const parsed = JSON.parse(line) as Awaited<WorkerChild['listening']>;
      if (parsed.event === 'listening') resolveListening(parsed);
    }
  });
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      rejectListening(new Error(`worker exited (code ${code}, signal ${signal}) before listening: ${stderr}`));
      resolve({ code, signal });
    });
  });
  // Unhandled if the test never looks at it (e.g. a worker that is expected to fail).
  listening.catch(() => undefined);
  return { child, stdoutLines, stderr: () => stderr, listening, exited };
}

/** Resolves with the value, or rejects when it takes longer than `ms` (so a broken worker fails the test instead of hanging it). */
export async function bounded<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The WorkerProtocolError a call rejects with (fails the test if it resolves or rejects with anything else). */
export async function errorOf(promise: Promise<unknown>): Promise<WorkerProtocolError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(WorkerProtocolError);
    return err as WorkerProtocolError;
  }
  throw new Error('expected the call to fail');
}
