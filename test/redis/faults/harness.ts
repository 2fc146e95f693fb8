/**
 * Shared machinery of the fault-injection suite (issue 7, item 8): real `spawngate serve`
 * processes, real redis-servers, real process-backend workers. Everything here is bounded (polls
 * with a deadline, loops with a count) and everything a test makes is registered with a
 * `Cleanup`, which a test runs in `finally`, so a failing assertion still leaves no worker, no
 * process, no state dir and no Redis key behind.
 */
import type { ChildProcess } from 'node:child_process';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import type { SpawnRequestInput } from '../../../src/admission/request.js';
import { createRedisStore, redisKeys } from '../../../src/admission/store/redis.js';
import type { ReservationStore } from '../../../src/admission/store/types.js';
import { createProcessBackend } from '../../../src/backends/process/index.js';
import { LABELS } from '../../../src/backends/types.js';
import type { ListedWorker } from '../../../src/backends/types.js';
import { silentLogger } from '../../../src/log.js';
import { call } from '../../server/helpers.js';
import type { Reply, Target } from '../../server/helpers.js';
import { deleteKeys } from '../server.js';

/** `spawngate serve` from the sources (see serve-bin.ts): dist/ may be older than src/. */
export const SERVE_BIN = fileURLToPath(new URL('./serve-bin.ts', import.meta.url));

/**
 * Short, so that "after one lease period" is seconds, yet four heartbeats long: on a loaded 2-core
 * machine (several serves, their workers and agents starting at once) a live serve's event loop can
 * miss a beat, and a 2 s lease then lapsed under a serve that was alive (seen once in 30 trials).
 */
export const LEASE_SECONDS = 4;
export const RENEW_SECONDS = 1;
export const LEASE_MS = LEASE_SECONDS * 1000;
export const BACKEND = 'local';
export const PROFILE = 'small';
export const PROFILE_SLOT = `profile/${BACKEND}/${PROFILE}`;

// ─── bounded waiting ─────────────────────────────────────────────────────────────────────────

/**
 * Polls `probe` until it answers something other than null/undefined/false, at most `timeoutMs`.
 * Resolves with that value and how long it took; a probe that throws counts as "not yet".
 */
export async function waitFor<T>(
  probe: () => Promise<T | null | undefined | false> | T | null | undefined | false,
  what: string,
  timeoutMs: number,
  intervalMs = 50,
): Promise<{ value: T; ms: number }> {
  const started = Date.now();
  let last: unknown = null;
  // Bounded by the deadline; at least one probe even with timeoutMs 0.
  for (let attempt = 0; ; attempt++) {
    try {
      const value = await probe();
      if (value !== null && value !== undefined && value !== false) return { value, ms: Date.now() - started };
      last = value;
    } catch (err) {
      last = err;
    }
    if (Date.now() - started >= timeoutMs) break;
    await sleep(intervalMs);
  }
  const detail = last instanceof Error ? `: ${last.message}` : last === null || last === undefined ? '' : `: last answer ${JSON.stringify(last)}`;
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
}

/** Awaits an event (a promise) with a bound: rejects after `timeoutMs`, and at once if the promise rejects. */
export async function within<T>(event: Promise<T>, what: string, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([event, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** One `FAULTS {...}` line per test: the figures the closing note of issue 7 collects. */
export function report(suite: string, figures: Record<string, unknown>): void {
  console.log(`FAULTS ${JSON.stringify({ suite, ...figures })}`);
}

export function stats(values: readonly number[]): { n: number; min: number; median: number; p90: number; max: number } | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  return { n: sorted.length, min: sorted[0]!, median: at(0.5), p90: at(0.9), max: sorted.at(-1)! };
}

export function randomInt(minInclusive: number, maxInclusive: number): number {
  return minInclusive + Math.floor(Math.random() * (maxInclusive - minInclusive + 1));
}

// ─── cleanup ─────────────────────────────────────────────────────────────────────────────────

/** Undo steps, run last-registered first; every step runs even when an earlier one throws. */
export class Cleanup {
  private readonly steps: { what: string; run: () => unknown }[] = [];

  add(what: string, run: () => unknown): void {
    this.steps.push({ what, run });
  }

  async run(): Promise<void> {
    const errors: string[] = [];
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step.run();
      } catch (err) {
        errors.push(`${step.what}: ${(err as Error).message}`);
      }
    }
    if (errors.length) throw new Error(`cleanup failed:\n  ${errors.join('\n  ')}`);
  }
}

// ─── sandboxes: one owner, one key prefix, one state dir ─────────────────────────────────────

export interface SandboxOptions {
  label: string;
  owner: string;
  redisUrl: string;
  /** maxConcurrent.profile of the one profile; default none (the policy's own caps apply). */
  profileCap?: number;
  /** The periodic sweeper of gates built from this config (on by default, as in production). */
  sweepIntervalSeconds?: number;
  /** Shared V8/TypeScript compile cache for serve, workers and agents (start-up CPU on a 2-core box). */
  compileCache?: string;
}

export interface Sandbox {
  readonly label: string;
  readonly owner: string;
  /** Every Redis key of this sandbox starts with it. */
  readonly prefix: string;
  readonly redisUrl: string;
  /** The process backend's state dir (short: worker sockets live under it). */
  readonly stateDir: string;
  /** Config file, serve logs: never under stateDir, so stateDir holds workers only. */
  readonly workDir: string;
  readonly config: Record<string, unknown>;
  readonly configFile: string;
}

export function createSandbox(options: SandboxOptions, cleanup: Cleanup): Sandbox {
  const workDir = mkdtempSync(join(tmpdir(), 'sgf-w-'));
  cleanup.add(`remove ${workDir}`, () => rmSync(workDir, { recursive: true, force: true }));
  // Short, because a worker's unix socket is <stateDir>/<uuid>/w.sock (max 107 bytes).
  const stateDir = mkdtempSync(join(tmpdir(), 'sgf-'));
  const prefix = `spawngate-test:faults:${options.label}:${randomUUID().slice(0, 8)}:`;
  const profile: Record<string, unknown> = {
    ttlSeconds: 600,
    timeoutSeconds: 180,
    ...(options.profileCap === undefined ? {} : { maxConcurrent: { profile: options.profileCap } }),
    ...(options.compileCache ? { env: { NODE_COMPILE_CACHE: options.compileCache } } : {}),
  };
  const config = {
    agents: {
      executionBackends: { [BACKEND]: { type: 'process', stateDir, defaultProfile: PROFILE, profiles: { [PROFILE]: profile } } },
      execution: { default: { backend: BACKEND, profile: PROFILE } },
    },
    spawngate: {
      owner: options.owner,
      leaseSeconds: LEASE_SECONDS,
      renewSeconds: RENEW_SECONDS,
      sweepIntervalSeconds: options.sweepIntervalSeconds ?? 60,
      store: { type: 'redis', url: options.redisUrl, keyPrefix: prefix },
    },
  };
  const configFile = join(workDir, 'spawngate.json');
  writeFileSync(configFile, JSON.stringify(config, null, 2));
  return { label: options.label, owner: options.owner, prefix, redisUrl: options.redisUrl, stateDir, workDir, config, configFile };
}

/** The cleanup of a sandbox's traces in Redis and on disk; registered by the tests that own the Redis client. */
export function cleanupSandbox(box: Sandbox, cleanup: Cleanup, raw: Redis | null): void {
  cleanup.add(`remove state dir ${box.stateDir}`, () => rmSync(box.stateDir, { recursive: true, force: true }));
  cleanup.add(`stop workers under ${box.stateDir}`, () => reapWorkers(box.stateDir));
  if (raw) cleanup.add(`delete keys ${box.prefix}*`, () => deleteKeys(raw, box.prefix));
}

let requestSeq = 0;

/** An echo spawn on an interactive channel (no rate buckets) with its own user and channel, so only the profile/total caps bind. */
export function echoRequest(tag: string): SpawnRequestInput {
  const n = requestSeq++;
  return {
    agentId: 'echo',
    task: `fault injection ${tag} #${n}`,
    caller: {
      sessionKey: `agent:main:faults:${randomUUID()}`,
      depth: 0,
      channel: { id: `faults-${tag}-c${n}`, kind: 'cli', interactive: true },
      user: { id: `faults-${tag}-u${n}`, roles: [] },
    },
  };
}

// ─── Redis ───────────────────────────────────────────────────────────────────────────────────

export function openInspector(box: Sandbox, url = box.redisUrl, extra: { commandTimeoutMs?: number } = {}): Promise<ReservationStore> {
  return createRedisStore({ url, keyPrefix: box.prefix, logger: silentLogger, ...extra });
}

export interface SlotCensus {
  /** Reservations whose lease has not lapsed (store.active(); lapsed ones are freed by that call). */
  active: number;
  /** Sum of every slot counter under the prefix (counts() of each, read straight from Redis). */
  slots: number;
  profile: number;
}

export async function slotCensus(store: ReservationStore, raw: Redis, prefix: string): Promise<SlotCensus> {
  const active = (await store.active()).length;
  const counterPrefix = redisKeys(prefix).counterPrefix;
  let slots = 0;
  let cursor = '0';
  // Bounded: SCAN comes back to cursor 0 after one pass.
  do {
    const [next, found] = await raw.scan(cursor, 'MATCH', `${counterPrefix}*`, 'COUNT', 1000);
    cursor = next;
    if (found.length) {
      const counts = await store.counts(found.map((k) => k.slice(counterPrefix.length)));
      for (const v of counts.values()) slots += v;
    }
  } while (cursor !== '0');
  const profile = (await store.counts([PROFILE_SLOT])).get(PROFILE_SLOT) ?? 0;
  return { active, slots, profile };
}

/** A loopback port nothing listens on right now. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (!address || typeof address === 'string') throw new Error('no port');
  return address.port;
}

export interface PrivateRedis {
  readonly port: number;
  readonly url: string;
  readonly pid: number;
  /** Kill -9 (data gone: no persistence). */
  kill(): Promise<void>;
  /** A fresh, empty server on the same port. */
  restart(): Promise<void>;
  stop(): Promise<void>;
  stall(): void;
  resume(): void;
}

/** A throwaway redis-server of the test's own (no persistence), as startServer in redis-store.test.ts. */
export async function startPrivateRedis(cleanup: Cleanup): Promise<PrivateRedis> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'sgf-redis-'));
  cleanup.add(`remove ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  let child: ChildProcess;
  let exited: Promise<void>;
  const launch = async () => {
    child = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
    exited = new Promise((resolve) => child.once('exit', () => resolve()));
    const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on('error', () => undefined);
    try {
      await waitFor(
        async () => {
          if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}`);
          if (probe.status !== 'ready') await probe.connect().catch(() => undefined);
          return (await probe.ping()) === 'PONG';
        },
        `redis-server on port ${port}`,
        20_000,
      );
    } finally {
      probe.disconnect();
    }
  };
  const kill = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGKILL');
    await exited;
  };
  await launch();
  cleanup.add(`stop redis-server :${port}`, async () => {
    try {
      process.kill(child.pid!, 'SIGCONT');
    } catch {
      // already gone
    }
    await kill();
  });
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get pid() {
      return child.pid ?? -1;
    },
    kill,
    async restart() {
      await kill();
      await launch();
    },
    stop: kill,
    stall: () => void process.kill(child.pid!, 'SIGSTOP'),
    resume: () => void process.kill(child.pid!, 'SIGCONT'),
  };
}

// ─── spawngate serve ─────────────────────────────────────────────────────────────────────────

export interface ServeProcess {
  readonly pid: number;
  readonly target: Target;
  readonly token: string;
  stderr(): string;
  alive(): boolean;
  /** SIGKILL, resolved once the process is gone. */
  kill9(): Promise<void>;
  /** SIGTERM (graceful: closes its workers), SIGKILL if it has not exited within `graceMs`. */
  stop(graceMs?: number): Promise<void>;
  /** SIGSTOP: freezes the process at this instant (kill9 still ends it). */
  freeze(): void;
  post(path: string, body?: unknown): Promise<Reply>;
  request(method: string, path: string, body?: unknown): Promise<Reply>;
}

export async function startServe(box: Sandbox, cleanup: Cleanup, options: { label?: string; compileCache?: string; timeoutMs?: number } = {}): Promise<ServeProcess> {
  const token = randomBytes(18).toString('base64url');
  const child = spawn(process.execPath, [SERVE_BIN, 'serve', '--config', box.configFile, '--port', '0', '--host', '127.0.0.1'], {
    env: {
      ...process.env,
      SPAWNGATE_API_TOKEN: token,
      SPAWNGATE_LOG_LEVEL: 'warn',
      ...(options.compileCache ? { NODE_COMPILE_CACHE: options.compileCache } : {}),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const isAlive = () => child.exitCode === null && child.signalCode === null;
  const kill9 = async () => {
    if (!isAlive()) return;
    try {
      // A frozen (SIGSTOP) process dies of SIGKILL all the same.
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
    await exited;
  };
  cleanup.add(`kill serve ${options.label ?? ''} pid ${child.pid}`, kill9);
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-16_384);
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const timeoutMs = options.timeoutMs ?? 90_000;
  let timer: NodeJS.Timeout | undefined;
  const first = await Promise.race([
    lines.next(),
    exited.then(() => null),
    new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs))),
  ]).finally(() => clearTimeout(timer));
  if (first === null || first === 'timeout' || first.done) {
    await kill9();
    throw new Error(`serve ${options.label ?? ''} did not print its listening line (${first === 'timeout' ? `timeout ${timeoutMs} ms` : 'exited'}):\n${stderr}`);
  }
  const listening = JSON.parse(first.value) as { event: string; url: string; pid: number };
  if (listening.event !== 'listening') throw new Error(`unexpected first line from serve: ${first.value}`);
  // Keep draining stdout (the "stopped" line) so the child never blocks on a full pipe.
  void (async () => {
    for (let next = await lines.next(); !next.done; next = await lines.next());
  })().catch(() => undefined);
  const target: Target = { url: listening.url };
  const request = (method: string, path: string, body?: unknown) => call(target, method, path, { token, ...(body === undefined ? {} : { body }) });
  return {
    pid: child.pid!,
    target,
    token,
    stderr: () => stderr,
    alive: isAlive,
    kill9,
    async stop(graceMs = 30_000) {
      if (!isAlive()) return;
      child.kill('SIGTERM');
      let t: NodeJS.Timeout | undefined;
      const done = await Promise.race([exited.then(() => true), new Promise<boolean>((resolve) => (t = setTimeout(() => resolve(false), graceMs)))]).finally(() => clearTimeout(t));
      if (!done) await kill9();
    },
    freeze: () => void process.kill(child.pid!, 'SIGSTOP'),
    post: (path, body) => request('POST', path, body),
    request,
  };
}

// ─── workers: the process backend's state dirs and live processes ────────────────────────────

interface ProcEntry {
  pid: number;
  pgid: number;
  state: string;
  environ: string[] | null;
}

async function readProc(pid: number): Promise<ProcEntry | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    let environ: string[] | null = null;
    try {
      environ = (await readFile(`/proc/${pid}/environ`, 'latin1')).split('\0');
    } catch {
      environ = null;
    }
    return { pid, state: rest[0] ?? '?', pgid: Number(rest[2]), environ };
  } catch {
    return null;
  }
}

export interface WorkerCensus {
  /** Entries of the state dir: one per worker the backend knows, plus `.creating-*` staging dirs. */
  dirs: string[];
  /** Live (non-zombie) processes of workers under this state dir: the workers and their agents. */
  pids: number[];
  /** Process groups of those workers (each worker leads its own). */
  groups: number[];
  /** Spawn ids carried by live worker processes (SPAWNGATE_SPAWN_ID). */
  spawnIds: string[];
}

/**
 * Every worker of a state dir, from both sides: what is on disk, and what runs. A worker is found
 * by its environment (HOME is its workspace under the state dir, SPAWNGATE_SPAWN_ID its id), which
 * it has from exec on — also when the gateway died before it could record the pid — and its agent
 * by sharing its process group.
 */
export async function workerCensus(stateDir: string): Promise<WorkerCensus> {
  let dirs: string[] = [];
  try {
    dirs = await readdir(stateDir);
  } catch {
    dirs = [];
  }
  const all = (await Promise.all((await readdir('/proc')).filter((e) => /^\d+$/.test(e)).map((e) => readProc(Number(e))))).filter(
    (p): p is ProcEntry => p !== null && p.state !== 'Z' && p.pid !== process.pid,
  );
  const home = `HOME=${stateDir}/`;
  const roots = all.filter((p) => p.environ?.some((v) => v.startsWith(home)));
  const groups = new Set(roots.map((p) => p.pgid));
  const members = all.filter((p) => groups.has(p.pgid) || roots.includes(p));
  const spawnIds = new Set<string>();
  for (const p of roots) {
    const id = p.environ?.find((v) => v.startsWith('SPAWNGATE_SPAWN_ID='));
    if (id) spawnIds.add(id.slice('SPAWNGATE_SPAWN_ID='.length));
  }
  return { dirs, pids: members.map((p) => p.pid), groups: [...groups], spawnIds: [...spawnIds] };
}

/** Hard stop of everything under a state dir (test cleanup only): SIGKILL to each worker's group, bounded wait. */
export async function reapWorkers(stateDir: string): Promise<void> {
  for (let round = 0; round < 50; round++) {
    const census = await workerCensus(stateDir);
    if (census.pids.length === 0) return;
    for (const group of census.groups) {
      try {
        process.kill(-group, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    for (const pid of census.pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    await sleep(100);
  }
  throw new Error(`workers under ${stateDir} survived 50 rounds of SIGKILL`);
}

/** What the process backend itself lists for this owner (a fresh backend object, as after a restart). */
export async function backendListing(box: Sandbox): Promise<ListedWorker[]> {
  const backend = createProcessBackend({ name: BACKEND, stateDir: box.stateDir });
  try {
    return await backend.list({ [LABELS.owner]: box.owner });
  } finally {
    await backend.close?.();
  }
}

/** Staging folders of the process backend (`.creating-<spawnId>`): made, filled with the intent, renamed. */
export const STAGING_PREFIX = '.creating-';

/**
 * Workers gone: no state dir entry and no live process. Agents exit a moment after their worker, so
 * this is a bounded poll. Staging folders (`.creating-*`) count like any other.
 */
export async function expectNoWorkers(stateDir: string, options: { timeoutMs?: number } = {}): Promise<WorkerCensus> {
  const counted = (c: WorkerCensus) => c.dirs;
  const { value } = await waitFor(
    async () => {
      const c = await workerCensus(stateDir);
      return counted(c).length === 0 && c.pids.length === 0 ? c : null;
    },
    `0 workers under ${stateDir}`,
    options.timeoutMs ?? 15_000,
    100,
  ).catch(async (err: unknown) => {
    const c = await workerCensus(stateDir);
    throw new Error(`${(err as Error).message}; left: ${JSON.stringify(c)}`);
  });
  return value;
}
