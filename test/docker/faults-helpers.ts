/**
 * Kill -9 trials of `spawngate serve` for any backend (issue 7, item 8): the backend-agnostic part
 * of test/docker/faults.test.ts and test/kubernetes/faults.test.ts, built on the process-backend
 * harness (test/redis/faults/harness.ts: serve processes, Redis inspector, bounded waits, cleanup).
 *
 * One trial: a `serve` (this backend, Redis store with a key prefix of its own, lease 2 s, an owner
 * of its own, sweeper on) gets 2-3 spawns; at a chosen instant it is frozen (SIGSTOP, so the
 * instant is exact) and killed (SIGKILL). What the kill left is taken stock of — leases in Redis,
 * objects on the engine, which spawns had answered 201 — and every spawn is put in the stage it had
 * reached. Then a survivor of the same owner group (an in-process gate, or a second serve) waits
 * (bounded poll) for the dead instance's leases to lapse on Redis' clock, sweeps once, and the
 * trial asserts that no object of that owner and no slot is left.
 *
 * The backend-specific part — config, what the engine holds for an owner, what the backend lists,
 * engine events to freeze on, and a forced removal for cleanup — is a {@link FaultTarget}.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { expect } from 'vitest';
import type { SpawnRequestInput } from '../../src/admission/request.js';
import { redisKeys } from '../../src/admission/store/redis.js';
import { createSpawngate } from '../../src/spawngate.js';
import { memoryLogger } from '../helpers/logger.js';
import type { Sandbox, ServeProcess } from '../redis/faults/harness.js';
import { Cleanup, LEASE_MS, LEASE_SECONDS, openInspector, randomInt, RENEW_SECONDS, report, slotCensus, startServe, stats, waitFor, within } from '../redis/faults/harness.js';
import { deleteKeys } from '../redis/server.js';

// ─── what a backend supplies ─────────────────────────────────────────────────────────────────

/** One object on the engine that belongs to a worker (container, volume, socket folder, pod, Secret, …). */
export interface EngineObject {
  kind: string;
  name: string;
  spawnId: string | null;
  /** The worker itself (container, pod); the others are what is made before or beside it. */
  primary: boolean;
  state: string | null;
}

/** What one trial owns: its owner label value, and folders that no other trial shares. */
export interface TrialEnv {
  readonly n: number;
  readonly owner: string;
  /** Config file and logs. */
  readonly workDir: string;
  /** Short (socket paths live under it), empty at the start; the backend may use it as its stateDir. */
  readonly stateDir: string;
}

export interface FaultTarget {
  /** `suite` of the FAULTS line. */
  suite: string;
  /** The configured backend name (`agents.executionBackends.<name>`). */
  backendName: string;
  agentId: string;
  /** `agents.executionBackends[backendName]` for this trial (one profile, the default). */
  backendConfig(env: TrialEnv): Record<string, unknown>;
  /** Extra `agents` keys (e.g. `acp`). */
  agentsExtra?: Record<string, unknown>;
  /** Every object of this owner on the engine, whatever made it (a census from outside spawngate). */
  census(env: TrialEnv): Promise<EngineObject[]>;
  /** Spawn ids the backend itself lists for this owner (a fresh backend object, as after a restart). */
  listed(env: TrialEnv): Promise<string[]>;
  /** Starts watching for the first `event` of this owner; `onFirst` is called once. Resolves once the watch is in place, with its stop. */
  watch(env: TrialEnv, event: string, onFirst: (what: string) => void): Promise<() => void>;
  /** Test cleanup only: removes every object of this owner, bypassing spawngate; answers how many there were. */
  forceRemove(env: TrialEnv): Promise<number>;
}

/**
 * When the serve is killed:
 *   lease  — the moment the first lease appears in Redis (admitted and reserved, nothing created yet);
 *   event  — the first engine event named (e.g. a container or pod created): between create and ready;
 *   ready  — a random 0..jitterMs after the first spawn answered 201;
 *   random — a random 0..maxMs after the first request.
 */
export type KillMode = { kind: 'lease' } | { kind: 'event'; event: string } | { kind: 'ready'; jitterMs: number } | { kind: 'random'; maxMs: number };

export function modeName(mode: KillMode): string {
  return mode.kind === 'event' ? `event:${mode.event}` : mode.kind;
}

/**
 * The stage a spawn had reached at the kill:
 *   unreserved — no lease yet (admission still running);
 *   reserved   — lease taken, nothing on the engine yet (before create);
 *   creating   — some of its objects exist, not the worker itself (e.g. socket folder, volume, NetworkPolicy);
 *   created    — the worker exists (container, pod), no 201 yet (between create and ready);
 *   ready      — answered 201 before the kill.
 */
export type Stage = 'unreserved' | 'reserved' | 'creating' | 'created' | 'ready';
const STAGES: readonly Stage[] = ['unreserved', 'reserved', 'creating', 'created', 'ready'];

export interface TrialResult {
  n: number;
  mode: string;
  survivor: 'serve' | 'in-process';
  fired: number;
  killAfterMs: number;
  trigger: string;
  stages: Record<Stage, number>;
  /** Objects on the engine once the answers had settled after the kill, by kind. */
  objectsAtKill: Record<string, number>;
  /** Of those, objects of spawns the backend did not list (nothing a sweep could find). */
  unlistedAtKill: string[];
  leasesAtKill: number;
  startupSweepRemoved: number | null;
  sweepRemoved: number;
  leaseLapseMs: number;
  /** Objects still there right after the one sweep returned (before the bounded poll for 0). */
  leftRightAfterSweep: number;
  recoverMs: number;
  objectsLeft: number;
  /** Objects the test's cleanup still found after the trial passed (made after the final census). */
  lateObjects: number;
  slotsLeft: number;
}

export interface SuiteContext {
  redisUrl: string;
  raw: Redis;
  /** Shared V8 compile cache for serve (start-up CPU on a 2-core box). */
  compileCache: string;
}

type Answer = { status: number; spawnId: string | null; at: number; code: string | null; message: string | null } | { error: string; at: number };

interface SweepView {
  removed: { spawnId: string; deleted: boolean; error?: string }[];
  errors: unknown[];
}

// ─── one trial ───────────────────────────────────────────────────────────────────────────────

let requestSeq = 0;

/** A spawn on an interactive channel (no rate buckets) with its own user and channel, so only the profile/total caps bind. */
export function spawnRequest(agentId: string, tag: string): SpawnRequestInput {
  const n = requestSeq++;
  return {
    agentId,
    task: `fault injection ${tag} #${n}`,
    caller: {
      sessionKey: `agent:main:faults:${tag}:${n}`,
      depth: 0,
      channel: { id: `faults-${tag}-c${n}`, kind: 'cli', interactive: true },
      user: { id: `faults-${tag}-u${n}`, roles: [] },
    },
  };
}

/** Spawn ids of every reservation record in Redis, read behind the store's back (no lapsed lease is freed by reading). */
async function leaseSpawnIds(raw: Redis, prefix: string): Promise<string[]> {
  const keys = redisKeys(prefix);
  const ids = await raw.zrange(keys.index, 0, -1);
  const spawnIds: string[] = [];
  for (const id of ids) {
    const spawnId = await raw.hget(keys.record(id), 'spawnId');
    if (spawnId) spawnIds.push(spawnId);
  }
  return spawnIds;
}

function countBy<T>(items: readonly T[], key: (t: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const item of items) out[key(item)] = (out[key(item)] ?? 0) + 1;
  return out;
}

function describeObjects(objects: readonly EngineObject[]): string {
  return JSON.stringify(objects.map((o) => `${o.kind}/${o.name}${o.state ? ` (${o.state})` : ''}`));
}

export async function runTrial(target: FaultTarget, ctx: SuiteContext, n: number, mode: KillMode, survivorKind: 'serve' | 'in-process'): Promise<TrialResult> {
  const cleanup = new Cleanup();
  let failure: unknown = null;
  let result: TrialResult | null = null;
  // Objects the cleanup still found after a passing trial: made after the final census (say, an
  // engine call the dead serve had sent that completed late), so no sweep saw them.
  let late = 0;
  try {
    const owner = `sgf-${target.suite.slice(0, 6)}-${n}-${randomBytes(3).toString('hex')}`;
    const prefix = `spawngate-test:faults:${target.suite}:${n}:${randomBytes(4).toString('hex')}:`;
    // Registered first, so they run last: keys, then folders.
    cleanup.add(`delete keys ${prefix}*`, () => deleteKeys(ctx.raw, prefix));
    const workDir = mkdtempSync(join(tmpdir(), 'sgf-w-'));
    cleanup.add(`remove ${workDir}`, () => rmSync(workDir, { recursive: true, force: true }));
    const stateDir = mkdtempSync(join(tmpdir(), 'sgf-'));
    cleanup.add(`remove ${stateDir}`, () => rmSync(stateDir, { recursive: true, force: true }));
    const env: TrialEnv = { n, owner, workDir, stateDir };
    cleanup.add(`force-remove the objects of ${owner}`, async () => {
      late = await target.forceRemove(env);
    });

    const config = {
      agents: {
        executionBackends: { [target.backendName]: target.backendConfig(env) },
        execution: { default: { backend: target.backendName } },
        ...target.agentsExtra,
      },
      spawngate: {
        owner,
        leaseSeconds: LEASE_SECONDS,
        renewSeconds: RENEW_SECONDS,
        // On, as in production; long enough that the explicit sweep below is the one that counts.
        sweepIntervalSeconds: 300,
        store: { type: 'redis', url: ctx.redisUrl, keyPrefix: prefix },
      },
    };
    const configFile = join(workDir, 'spawngate.json');
    writeFileSync(configFile, JSON.stringify(config, null, 2));
    const box: Sandbox = { label: `${target.suite}-${n}`, owner, prefix, redisUrl: ctx.redisUrl, stateDir, workDir, config, configFile };

    const inspector = await openInspector(box);
    cleanup.add('close inspector', () => inspector.close());
    const serve = await startServe(box, cleanup, { label: `${target.suite}-${n}`, compileCache: ctx.compileCache });

    // The trigger is armed before the first request, so no instant is missed.
    let trigger = '';
    let frozenAt: number | null = null;
    const freeze = (what: string) => {
      if (frozenAt !== null) return;
      frozenAt = Date.now();
      trigger = what;
      try {
        serve.freeze();
      } catch {
        // exited already: the answers tell why
      }
    };
    let fire: () => void = () => undefined;
    const fired$ = new Promise<void>((resolve) => (fire = resolve));
    let stopWatch: () => void = () => undefined;
    if (mode.kind === 'event') stopWatch = await target.watch(env, mode.event, (what) => (freeze(what), fire()));
    cleanup.add('stop the engine watch', () => stopWatch());

    const fired = randomInt(2, 3);
    const t0 = Date.now();
    const answers: Promise<Answer>[] = Array.from({ length: fired }, () =>
      serve.post('/v1/spawns', spawnRequest(target.agentId, `${target.suite}${n}`)).then(
        (r): Answer => {
          const body = r.json as { spawnId?: string; error?: { code?: string; message?: string } } | undefined;
          return { status: r.status, spawnId: body?.spawnId ?? null, at: Date.now(), code: body?.error?.code ?? null, message: body?.error?.message ?? null };
        },
        (err: unknown): Answer => ({ error: (err as Error).message, at: Date.now() }),
      ),
    );
    const allSettled = Promise.all(answers).then((all) => {
      throw new Error(`every spawn answered before the kill instant (${modeName(mode)}): ${JSON.stringify(all)}; serve stderr:\n${serve.stderr()}`);
    });
    allSettled.catch(() => undefined);

    if (mode.kind === 'lease') {
      const index = redisKeys(prefix).index;
      // A tight poll: the window between reserve and the first engine call is tens of ms.
      let watching = true;
      const seen = waitFor(async () => (!watching || (await ctx.raw.zcard(index)) > 0 ? true : null), 'the first lease in Redis', 180_000, 5).then(() => freeze('lease'));
      await Promise.race([seen, allSettled]).finally(() => (watching = false));
    } else if (mode.kind === 'event') {
      await within(Promise.race([fired$, allSettled]), `the first ${mode.event} of ${owner}`, 180_000);
    } else if (mode.kind === 'ready') {
      const firstReady = Promise.any(answers.map((a) => a.then((x) => ('status' in x && x.status === 201 ? x : Promise.reject(new Error(JSON.stringify(x)))))));
      await within(firstReady, 'the first spawn to answer 201', 180_000).catch((err: unknown) => {
        const why = err instanceof AggregateError ? err.errors.map((e) => (e as Error).message).join('; ') : (err as Error).message;
        throw new Error(`no spawn answered 201 (${why}); serve stderr:\n${serve.stderr()}`);
      });
      // The fault's instant is the point of the trial, not a stand-in for an event.
      await sleep(randomInt(0, mode.jitterMs));
      freeze('ready');
    } else {
      await sleep(randomInt(0, mode.maxMs));
      freeze('random');
    }
    stopWatch();
    const killedAt = Date.now();
    await serve.kill9();

    // Polled from the kill on, alongside everything below: the dead instance's leases lapse on Redis' clock.
    const lapsed = waitFor(async () => (await inspector.active()).length === 0, "the killed serve's leases to lapse", 20 * LEASE_MS, 50).then(() => Date.now() - killedAt);
    lapsed.catch(() => undefined); // awaited below; a failure in between must not make it an unhandled rejection
    const leases = await leaseSpawnIds(ctx.raw, prefix);
    const settled = await within(Promise.all(answers), 'the answers after the kill', 60_000);
    const unexpected = settled.filter((a) => 'status' in a && a.status !== 201);
    expect(unexpected, `answers other than 201 / connection reset; serve stderr:\n${serve.stderr()}`).toEqual([]);
    const ready = new Set(settled.flatMap((a) => ('status' in a && a.status === 201 && a.spawnId && a.at <= killedAt ? [a.spawnId] : [])));

    // What the kill left, before any survivor touches it.
    const objects = await target.census(env);
    const listed = new Set(await target.listed(env));
    const ids = new Set<string>([...leases, ...ready, ...objects.flatMap((o) => (o.spawnId ? [o.spawnId] : []))]);
    const stages: Record<Stage, number> = { unreserved: Math.max(0, fired - ids.size), reserved: 0, creating: 0, created: 0, ready: 0 };
    for (const id of ids) {
      const mine = objects.filter((o) => o.spawnId === id);
      stages[ready.has(id) ? 'ready' : mine.some((o) => o.primary) ? 'created' : mine.length > 0 ? 'creating' : 'reserved']++;
    }
    const unlistedAtKill = objects.filter((o) => o.spawnId === null || !listed.has(o.spawnId)).map((o) => `${o.kind}/${o.name}`);

    // The survivor: same owner group, Redis and backend. Its start-up reconciliation runs while the
    // dead instance's leases may still count; they lapse on Redis' clock within one lease.
    let sweep: () => Promise<SweepView>;
    let startupSweepRemoved: number | null = null;
    if (survivorKind === 'serve') {
      const survivor: ServeProcess = await startServe(box, cleanup, { label: `${target.suite}-${n}-survivor`, compileCache: ctx.compileCache });
      cleanup.add('stop survivor', () => survivor.stop());
      sweep = async () => {
        const r = await survivor.post('/v1/sweep', {});
        expect(r.status, r.text).toBe(200);
        return r.json as SweepView;
      };
    } else {
      const logger = memoryLogger();
      const gate = await createSpawngate({ config, logger, watchBundle: false });
      cleanup.add('shut the survivor gate down', () => gate.shutdown());
      const startup = logger.lines.find((l) => l.msg === 'reconciled before the first spawn');
      startupSweepRemoved = Array.isArray(startup?.fields?.['removed']) ? startup.fields['removed'].length : 0;
      sweep = () => gate.sweep({ orphans: true });
    }
    const leaseLapseMs = await lapsed;
    const swept = await sweep();
    const atKill = `stages at kill ${JSON.stringify(stages)}, objects at kill ${describeObjects(objects)}`;
    const notDeleted = swept.removed.filter((r) => !r.deleted);
    if (swept.errors.length || notDeleted.length) {
      throw new Error(`the sweep failed: errors ${JSON.stringify(swept.errors)}, not deleted ${JSON.stringify(notDeleted)}; ${atKill}; now ${describeObjects(await target.census(env))}`);
    }

    const rightAfter = await target.census(env);
    const left = await waitFor(async () => ((await target.census(env)).length === 0 ? true : null), `no object of ${owner} on the engine`, 30_000, 200)
      .then(() => [] as EngineObject[])
      .catch(async () => target.census(env));
    const slots = await slotCensus(inspector, ctx.raw, prefix);
    const recoverMs = Date.now() - killedAt;
    if (left.length) {
      throw new Error(`objects of ${owner} left after the lease lapsed and one sweep: ${describeObjects(left)}; ${atKill}; not listed by the backend at kill: ${JSON.stringify(unlistedAtKill)}`);
    }
    expect({ active: slots.active, slots: slots.slots }, `slots left; ${atKill}`).toEqual({ active: 0, slots: 0 });
    result = {
      n,
      mode: modeName(mode),
      survivor: survivorKind,
      fired,
      killAfterMs: killedAt - t0,
      trigger,
      stages,
      objectsAtKill: countBy(objects, (o) => o.kind),
      unlistedAtKill,
      leasesAtKill: leases.length,
      startupSweepRemoved,
      sweepRemoved: swept.removed.length,
      leaseLapseMs,
      leftRightAfterSweep: rightAfter.length,
      recoverMs,
      objectsLeft: left.length,
      lateObjects: 0,
      slotsLeft: slots.active + slots.slots,
    };
  } catch (err) {
    failure = err;
    throw err;
  } finally {
    try {
      await cleanup.run();
    } catch (err) {
      // A failed cleanup must fail the trial, but not hide the trial's own failure.
      if (failure === null) throw err;
    }
  }
  if (!result) throw new Error(`trial ${n} returned no result`);
  result.lateObjects = late;
  if (late > 0) throw new Error(`trial ${n}: ${late} object(s) of the owner appeared after the sweep and the final census (removed by the test's cleanup)`);
  return result;
}

// ─── a suite of trials ───────────────────────────────────────────────────────────────────────

export interface SuitePlan {
  /** One kill mode per trial. */
  modes: readonly KillMode[];
  /** Trials at once. */
  parallel: number;
  /** Trial numbers whose survivor is a second serve (the others: an in-process gate). */
  serveSurvivors: readonly number[];
  /** When a stage (before create / between create and ready / after ready) was hit by no trial: at most this many more, aimed at it. */
  maxExtraTrials: number;
  /** The mode that aims at each stage. */
  aim: { beforeCreate: KillMode; createdNotReady: KillMode; ready: KillMode };
}

export interface SuiteOutcome {
  results: TrialResult[];
  failures: { n: number; mode: string; error: string }[];
}

/** Runs the plan's trials, `parallel` at a time; every trial runs even when others fail. Then one FAULTS line. */
export async function runSuite(target: FaultTarget, ctx: SuiteContext, plan: SuitePlan): Promise<SuiteOutcome> {
  const started = Date.now();
  const results: TrialResult[] = [];
  const failures: SuiteOutcome['failures'] = [];
  const one = async (n: number, mode: KillMode) => {
    try {
      results.push(await runTrial(target, ctx, n, mode, plan.serveSurvivors.includes(n) ? 'serve' : 'in-process'));
    } catch (err) {
      failures.push({ n, mode: modeName(mode), error: (err as Error).stack ?? String(err) });
    }
  };
  let next = 0;
  await Promise.all(
    Array.from({ length: plan.parallel }, async () => {
      for (let n = next++; n < plan.modes.length; n = next++) await one(n, plan.modes[n]!);
    }),
  );
  const hit = {
    beforeCreate: () => results.some((r) => r.stages.reserved > 0),
    createdNotReady: () => results.some((r) => r.stages.created > 0),
    ready: () => results.some((r) => r.stages.ready > 0),
  };
  let extra = 0;
  for (const stage of ['beforeCreate', 'createdNotReady', 'ready'] as const) {
    while (!hit[stage]() && extra < plan.maxExtraTrials) await one(plan.modes.length + extra++, plan.aim[stage]);
  }
  const sum = (f: (r: TrialResult) => number) => results.reduce((a, r) => a + f(r), 0);
  const count = (f: (r: TrialResult) => boolean) => results.filter(f).length;
  const stagesHit = Object.fromEntries(STAGES.map((s) => [s, sum((r) => r.stages[s])]));
  const objectsAtKill: Record<string, number> = {};
  for (const r of results) for (const [k, v] of Object.entries(r.objectsAtKill)) objectsAtKill[k] = (objectsAtKill[k] ?? 0) + v;
  report(target.suite, {
    trials: plan.modes.length + extra,
    extraTrials: extra,
    passed: results.length,
    failed: failures.length,
    spawns: sum((r) => r.fired),
    stageAtKill: {
      spawns: stagesHit,
      trialsWith: Object.fromEntries(STAGES.map((s) => [s, count((r) => r.stages[s] > 0)])),
      byTrial: results
        .sort((a, b) => a.n - b.n)
        .map((r) => ({ n: r.n, mode: r.mode, trigger: r.trigger, killAfterMs: r.killAfterMs, stages: Object.fromEntries(STAGES.filter((s) => r.stages[s] > 0).map((s) => [s, r.stages[s]])) })),
    },
    objectsAtKill,
    unlistedAtKill: results.flatMap((r) => r.unlistedAtKill),
    leasesAtKill: sum((r) => r.leasesAtKill),
    survivors: { serve: count((r) => r.survivor === 'serve'), inProcess: count((r) => r.survivor === 'in-process') },
    startupSweepRemoved: sum((r) => r.startupSweepRemoved ?? 0),
    sweepRemoved: sum((r) => r.sweepRemoved),
    leftRightAfterSweep: sum((r) => r.leftRightAfterSweep),
    objectsLeft: sum((r) => r.objectsLeft),
    lateObjects: sum((r) => r.lateObjects),
    slotsLeft: sum((r) => r.slotsLeft),
    killAfterMs: stats(results.map((r) => r.killAfterMs)),
    leaseLapseMs: stats(results.map((r) => r.leaseLapseMs)),
    timeToRecoverMs: stats(results.map((r) => r.recoverMs)),
    leaseMs: LEASE_MS,
    wallMs: Date.now() - started,
    failures: failures.map((f) => ({ n: f.n, mode: f.mode, error: f.error.split('\n').slice(0, 3).join(' | ') })),
  });
  return { results, failures };
}

/** The suite's verdict: every trial passed, and kills landed before create, between create and ready, and after ready. */
export function expectSuite(outcome: SuiteOutcome, minTrials: number): void {
  const { results, failures } = outcome;
  expect(failures.map((f) => `trial ${f.n} (${f.mode}): ${f.error}`)).toEqual([]);
  expect(results.length).toBeGreaterThanOrEqual(minTrials);
  expect(results.some((r) => r.stages.reserved > 0), 'a kill between the lease and the first engine object').toBe(true);
  expect(results.some((r) => r.stages.created > 0), 'a kill between create and ready').toBe(true);
  expect(results.some((r) => r.stages.ready > 0), 'a kill after ready').toBe(true);
  expect(results.every((r) => r.objectsLeft === 0 && r.slotsLeft === 0)).toBe(true);
}
