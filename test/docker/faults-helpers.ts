/**
 * Kill -9 trials of `spawngate serve` for any backend (issue 7, item 8): the backend-agnostic part
 * of test/docker/faults.test.ts and test/kubernetes/faults.test.ts, built on the process-backend
 * harness (test/redis/faults/harness.ts: serve processes, Redis inspector, bounded waits, cleanup).
 *
 * One trial: a `serve` (this backend, Redis store with a key prefix of its own, lease 4 s, an owner
 * of its own, sweeper on) gets 2-3 spawns; at a chosen instant it is frozen (SIGSTOP, so the
 * instant is exact) and killed (SIGKILL). What the kill left is taken stock of — leases in Redis,
 * objects on the engine, which spawns had answered 201 — and every spawn is put in the stage it had
 * reached (where the backend can tell, once the engine has answered every call the dead serve had
 * in flight: {@link FaultTarget.settle}). Then a survivor of the same owner group (an in-process
 * gate, or a second serve) waits (bounded poll) for the dead instance's leases to lapse on Redis'
 * clock, sweeps once, and the trial asserts that no object of that owner and no slot is left —
 * also none that the test's own cleanup finds afterwards.
 *
 * The backend-specific part — config, what the engine holds for an owner, what the backend lists,
 * engine events to freeze on, and a forced removal for cleanup — is a {@link FaultTarget}. This
 * file lives next to the Docker suite; the Kubernetes suite imports it from here.
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
  /**
   * Spawn ids of this trial, as far as known (every lease in Redis at the kill, every 201): for
   * objects an engine may make without the owner label (e.g. a volume it creates by name).
   */
  readonly spawnIds: Set<string>;
}

export interface FaultTarget {
  /** `suite` of the FAULTS line. */
  suite: string;
  /** The configured backend name (`agents.executionBackends.<name>`). */
  backendName: string;
  agentId: string;
  /** Per-trial set-up before the config is written (e.g. an engine proxy); registers its undo with `cleanup`. */
  prepare?(env: TrialEnv, cleanup: Cleanup): Promise<void>;
  /**
   * After the kill: waits (bounded) until the engine has carried out every call the dead serve had
   * sent, and answers how many there were. Without it, a call still running at the engine (a
   * container create copying the image) can make an object after the census and the sweep.
   */
  settle?(env: TrialEnv, killedAt: number): Promise<{ inflightAtKill: number; settleMs: number }>;
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
  /** Test cleanup only: removes every object of this owner, bypassing spawngate; answers what it removed. */
  forceRemove(env: TrialEnv): Promise<string[]>;
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
  /** Engine calls the dead serve had sent and the engine had not answered yet (null: not observable on this backend). */
  engineCallsInFlightAtKill: number | null;
  /** How long after the kill the engine answered the last of them. */
  engineSettleMs: number | null;
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
  // Filled in as the trial goes, so a failed trial still reports how far it got and what it found.
  const r: Partial<TrialResult> = { n, mode: modeName(mode), survivor: survivorKind };
  // Objects the cleanup still found after a passing trial: made after the final census (say, an
  // engine call the dead serve had sent that completed late), so no sweep saw them.
  let late: string[] = [];
  try {
    const owner = `sgf-${target.suite.slice(0, 6)}-${n}-${randomBytes(3).toString('hex')}`;
    const prefix = `spawngate-test:faults:${target.suite}:${n}:${randomBytes(4).toString('hex')}:`;
    // Registered first, so they run last: keys, then folders.
    cleanup.add(`delete keys ${prefix}*`, () => deleteKeys(ctx.raw, prefix));
    const workDir = mkdtempSync(join(tmpdir(), 'sgf-w-'));
    cleanup.add(`remove ${workDir}`, () => rmSync(workDir, { recursive: true, force: true }));
    const stateDir = mkdtempSync(join(tmpdir(), 'sgf-'));
    cleanup.add(`remove ${stateDir}`, () => rmSync(stateDir, { recursive: true, force: true }));
    const env: TrialEnv = { n, owner, workDir, stateDir, spawnIds: new Set() };
    cleanup.add(`force-remove the objects of ${owner}`, async () => {
      late = await target.forceRemove(env);
    });
    await target.prepare?.(env, cleanup);

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
    r.fired = fired;
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
    Object.assign(r, { killAfterMs: killedAt - t0, trigger });

    // Polled from the kill on, alongside everything below: the dead instance's leases lapse on Redis' clock.
    const lapsed = waitFor(async () => (await inspector.active()).length === 0, "the killed serve's leases to lapse", 20 * LEASE_MS, 50).then(() => Date.now() - killedAt);
    lapsed.catch(() => undefined); // awaited below; a failure in between must not make it an unhandled rejection
    const leases = await leaseSpawnIds(ctx.raw, prefix);
    const settled = await within(Promise.all(answers), 'the answers after the kill', 60_000);
    const unexpected = settled.filter((a) => 'status' in a && a.status !== 201);
    expect(unexpected, `answers other than 201 / connection reset; serve stderr:\n${serve.stderr()}`).toEqual([]);
    const ready = new Set(settled.flatMap((a) => ('status' in a && a.status === 201 && a.spawnId && a.at <= killedAt ? [a.spawnId] : [])));
    for (const id of [...leases, ...ready]) env.spawnIds.add(id);
    const engine = target.settle ? await target.settle(env, killedAt) : null;

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
    Object.assign(r, {
      stages,
      objectsAtKill: countBy(objects, (o) => o.kind),
      unlistedAtKill,
      leasesAtKill: leases.length,
      engineCallsInFlightAtKill: engine?.inflightAtKill ?? null,
      engineSettleMs: engine?.settleMs ?? null,
    });

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
    Object.assign(r, { startupSweepRemoved, sweepRemoved: swept.removed.length, leaseLapseMs });
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
    Object.assign(r, { leftRightAfterSweep: rightAfter.length, recoverMs: Date.now() - killedAt, objectsLeft: left.length, slotsLeft: slots.active + slots.slots });
    if (left.length) {
      throw new Error(`objects of ${owner} left after the lease lapsed and one sweep: ${describeObjects(left)}; ${atKill}; not listed by the backend at kill: ${JSON.stringify(unlistedAtKill)}`);
    }
    expect({ active: slots.active, slots: slots.slots }, `slots left; ${atKill}`).toEqual({ active: 0, slots: 0 });
  } catch (err) {
    failure = err;
  } finally {
    try {
      await cleanup.run();
    } catch (err) {
      // A failed cleanup must fail the trial, but not hide the trial's own failure.
      failure ??= err;
    }
  }
  if (failure === null) r.lateObjects = late.length;
  if (failure === null && late.length > 0) failure = new Error(`object(s) of the owner appeared after the sweep and the final census (removed by the test's cleanup): ${JSON.stringify(late)}`);
  if (failure !== null) throw new TrialFailure(failure, r);
  return r as TrialResult;
}

/** A failed trial: its error, and the figures it had gathered so far. */
export class TrialFailure extends Error {
  constructor(
    readonly error: unknown,
    readonly partial: Partial<TrialResult>,
  ) {
    super(error instanceof Error ? error.message : String(error), { cause: error });
    this.stack = error instanceof Error ? error.stack : this.stack;
  }
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
  failures: { n: number; mode: string; error: string; partial: Partial<TrialResult> }[];
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
      const partial = err instanceof TrialFailure ? err.partial : { n, mode: modeName(mode) };
      failures.push({ n, mode: modeName(mode), error: (err as Error).stack ?? String(err), partial });
    }
  };
  let next = 0;
  await Promise.all(
    Array.from({ length: plan.parallel }, async () => {
      for (let n = next++; n < plan.modes.length; n = next++) await one(n, plan.modes[n]!);
    }),
  );
  // Every trial's figures, failed ones as far as they got: where the kills landed does not depend on the verdict.
  const all = (): Partial<TrialResult>[] => [...results, ...failures.map((f) => f.partial)].sort((a, b) => (a.n ?? 0) - (b.n ?? 0));
  const hit = (stage: Stage) => all().some((r) => (r.stages?.[stage] ?? 0) > 0);
  let extra = 0;
  for (const stage of ['reserved', 'created', 'ready'] as const) {
    const aim = stage === 'reserved' ? plan.aim.beforeCreate : stage === 'created' ? plan.aim.createdNotReady : plan.aim.ready;
    while (!hit(stage) && extra < plan.maxExtraTrials) await one(plan.modes.length + extra++, aim);
  }
  const trials = all();
  const sum = (f: (r: Partial<TrialResult>) => number | null | undefined) => trials.reduce((a, r) => a + (f(r) ?? 0), 0);
  const count = (f: (r: Partial<TrialResult>) => boolean) => trials.filter(f).length;
  const values = (f: (r: Partial<TrialResult>) => number | null | undefined) => trials.flatMap((r) => (typeof f(r) === 'number' ? [f(r) as number] : []));
  const objectsAtKill: Record<string, number> = {};
  for (const r of trials) for (const [k, v] of Object.entries(r.objectsAtKill ?? {})) objectsAtKill[k] = (objectsAtKill[k] ?? 0) + v;
  const failed = new Set(failures.map((f) => f.n));
  report(target.suite, {
    trials: plan.modes.length + extra,
    extraTrials: extra,
    passed: results.length,
    failed: failures.length,
    spawns: sum((r) => r.fired),
    stageAtKill: {
      spawns: Object.fromEntries(STAGES.map((st) => [st, sum((r) => r.stages?.[st])])),
      trialsWith: Object.fromEntries(STAGES.map((st) => [st, count((r) => (r.stages?.[st] ?? 0) > 0)])),
      byTrial: trials.map((r) => ({
        n: r.n,
        mode: r.mode,
        passed: !failed.has(r.n ?? -1),
        trigger: r.trigger,
        killAfterMs: r.killAfterMs,
        stages: Object.fromEntries(STAGES.filter((st) => (r.stages?.[st] ?? 0) > 0).map((st) => [st, r.stages?.[st]])),
      })),
    },
    objectsAtKill,
    unlistedAtKill: trials.flatMap((r) => r.unlistedAtKill ?? []),
    leasesAtKill: sum((r) => r.leasesAtKill),
    ...(trials.some((r) => typeof r.engineCallsInFlightAtKill === 'number')
      ? {
          engineCallsInFlightAtKill: sum((r) => r.engineCallsInFlightAtKill),
          trialsWithEngineCallsInFlightAtKill: count((r) => (r.engineCallsInFlightAtKill ?? 0) > 0),
          engineSettleMs: stats(values((r) => r.engineSettleMs)),
        }
      : {}),
    survivors: { serve: count((r) => r.survivor === 'serve'), inProcess: count((r) => r.survivor === 'in-process') },
    startupSweepRemoved: sum((r) => r.startupSweepRemoved),
    sweepRemoved: sum((r) => r.sweepRemoved),
    leftRightAfterSweep: sum((r) => r.leftRightAfterSweep),
    objectsLeft: sum((r) => r.objectsLeft),
    trialsWithObjectsLeft: count((r) => (r.objectsLeft ?? 0) > 0),
    lateObjects: sum((r) => r.lateObjects),
    slotsLeft: sum((r) => r.slotsLeft),
    killAfterMs: stats(values((r) => r.killAfterMs)),
    leaseLapseMs: stats(values((r) => r.leaseLapseMs)),
    // Of the trials that recovered: a failed one's figure is its bounded wait running out.
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
  const stages = [...results.map((r) => r.stages), ...failures.flatMap((f) => (f.partial.stages ? [f.partial.stages] : []))];
  expect(stages.some((st) => st.reserved > 0), 'a kill between the lease and the first engine object').toBe(true);
  expect(stages.some((st) => st.created > 0), 'a kill between create and ready').toBe(true);
  expect(stages.some((st) => st.ready > 0), 'a kill after ready').toBe(true);
  expect(results.every((r) => r.objectsLeft === 0 && r.slotsLeft === 0)).toBe(true);
}
