/**
 * Fault injection: kill -9 of `spawngate serve` (process backend, Redis store) at random instants
 * while spawns are on their way, then a survivor of the same owner group. After one lease period
 * and one sweep, nothing may be left: no worker (state dir or live process) and no slot.
 *
 * Each trial has its own owner, key prefix and state dir, so trials run a few at a time. The kill
 * instant is chosen three ways, so every stage of a spawn gets hit:
 *   random  — a random delay of 0..1500 ms after the first request (the brief's recipe);
 *   intent  — the moment the first worker's intent appears in the state dir (serve frozen with
 *             SIGSTOP right there, then killed), i.e. between the intent write and the pid write;
 *   ready   — a random 0..300 ms after the first spawn answered 201.
 */
import type { FSWatcher } from 'node:fs';
import { mkdtempSync, rmSync, watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSpawngate } from '../../../src/spawngate.js';
import { memoryLogger } from '../../helpers/logger.js';
import { ensureRedis, rawClient } from '../server.js';
import {
  backendListing,
  Cleanup,
  cleanupSandbox,
  createSandbox,
  echoRequest,
  expectNoWorkers,
  LEASE_MS,
  openInspector,
  randomInt,
  report,
  slotCensus,
  STAGING_PREFIX,
  startServe,
  stats,
  waitFor,
  within,
  workerCensus,
} from './harness.js';

const TRIALS = 30;
/** Trials at once: each is mostly waiting (process start-up, the lease), and the box has 2 cores. */
const PARALLEL = 4;

type Mode = 'random' | 'intent' | 'ready';
type Answer = { status: number; spawnId: string | null; at: number; code: string | null } | { error: string; at: number };

interface TrialResult {
  n: number;
  mode: Mode;
  survivor: 'serve' | 'in-process';
  fired: number;
  answered: number;
  killAfterMs: number;
  /** What the kill left, as found on disk and in /proc before anyone cleaned up. */
  atKill: { dirs: number; staging: number; intentOnly: number; intentWithoutChild: number; recorded: number; livePids: number; liveSpawnIds: number; listed: number };
  sweepRemoved: number;
  leaseLapseMs: number;
  recoverMs: number;
  workersLeft: number;
  /** `.creating-*` folders left after the sweep (the known bug above); 0 once it is fixed. */
  stagingLeft: number;
  slotsLeft: number;
}

let url = '';
let raw: Redis;
let cache = '';

beforeAll(async () => {
  url = await ensureRedis();
  raw = await rawClient();
  cache = mkdtempSync(join(tmpdir(), 'sgf-cc-'));
});

afterAll(async () => {
  await raw?.quit();
  if (cache) rmSync(cache, { recursive: true, force: true });
});

interface StateFileView {
  pid: number | null;
  creating?: boolean;
}

async function runTrial(n: number, forcedMode?: Mode): Promise<TrialResult> {
  const mode: Mode = forcedMode ?? (n % 4 === 2 ? 'intent' : n % 4 === 3 ? 'ready' : 'random');
  const survivorKind = n % 5 === 0 ? 'serve' : 'in-process';
  const cleanup = new Cleanup();
  let failure: unknown = null;
  try {
    const box = createSandbox({ label: `kill-${n}`, owner: `faults-${n}`, redisUrl: url, compileCache: cache }, cleanup);
    cleanupSandbox(box, cleanup, raw);
    const inspector = await openInspector(box);
    cleanup.add('close inspector', () => inspector.close());
    const serve = await startServe(box, cleanup, { label: `kill-${n}`, compileCache: cache });

    let watcher: FSWatcher | null = null;
    let onIntent: () => void = () => undefined;
    const intentSeen = new Promise<void>((resolve) => (onIntent = resolve));
    if (mode === 'intent') {
      let frozen = false;
      // The spawn's folder appears under its own name only once its intent is inside (staging rename).
      watcher = watch(box.stateDir, (_event, name) => {
        if (frozen || !name || name.startsWith(STAGING_PREFIX)) return;
        frozen = true;
        serve.freeze();
        onIntent();
      });
      const w = watcher;
      cleanup.add('close watcher', () => w.close());
    }

    const fired = randomInt(3, 6);
    const t0 = Date.now();
    const answers: Promise<Answer>[] = Array.from({ length: fired }, () =>
      serve.post('/v1/spawns', echoRequest(`kill${n}`)).then(
        (r): Answer => {
          const body = r.json as { spawnId?: string; error?: { code?: string } } | undefined;
          return { status: r.status, spawnId: body?.spawnId ?? null, at: Date.now(), code: body?.error?.code ?? null };
        },
        (err: unknown): Answer => ({ error: (err as Error).message, at: Date.now() }),
      ),
    );

    if (mode === 'random') {
      // The fault's instant is the point of the trial, not a stand-in for an event.
      await sleep(randomInt(0, 1500));
    } else if (mode === 'intent') {
      await within(intentSeen, 'the first worker intent in the state dir', 120_000);
    } else {
      const firstReady = Promise.any(answers.map((a) => a.then((x) => ('status' in x && x.status === 201 ? x : Promise.reject(new Error(JSON.stringify(x)))))));
      await within(firstReady, 'the first spawn to answer 201', 120_000).catch((err: unknown) => {
        const why = err instanceof AggregateError ? err.errors.map((e) => (e as Error).message).join('; ') : (err as Error).message;
        throw new Error(`no spawn answered 201 (${why}); serve stderr:\n${serve.stderr()}`);
      });
      await sleep(randomInt(0, 300));
    }
    const killedAt = Date.now();
    await serve.kill9();
    watcher?.close();
    // Polled from the kill on, alongside everything below: the dead instance's leases lapse on Redis' clock.
    const lapsed = waitFor(async () => (await inspector.active()).length === 0, "the killed serve's leases to lapse", 20 * LEASE_MS, 50).then(() => Date.now() - killedAt);
    lapsed.catch(() => undefined); // awaited below; a failure in between must not make it an unhandled rejection
    const settled = await Promise.all(answers);
    const answered = settled.filter((a) => 'status' in a && a.status === 201 && a.at <= killedAt);
    // Anything but 201 before the kill or a reset connection is a bug of its own.
    const unexpected = settled.filter((a) => 'status' in a && a.status !== 201);
    expect(unexpected, `answers other than 201 / connection reset: ${serve.stderr()}`).toEqual([]);

    // What the kill left, before any survivor touches it.
    const census = await workerCensus(box.stateDir);
    const listed = await backendListing(box);
    const listedIds = new Set(listed.map((w) => w.ref.spawnId));
    const staging = census.dirs.filter((d) => d.startsWith(STAGING_PREFIX));
    const spawnDirs = census.dirs.filter((d) => !d.startsWith(STAGING_PREFIX));
    let intentOnly = 0;
    let intentWithoutChild = 0;
    let recorded = 0;
    for (const dir of spawnDirs) {
      const state = JSON.parse(await readFile(join(box.stateDir, dir, 'state.json'), 'utf8')) as StateFileView;
      if (state.pid === null) {
        intentOnly++;
        if (!census.spawnIds.includes(dir)) intentWithoutChild++;
      } else recorded++;
    }
    // Intent before creation (issue 7, item 4): whatever the kill left, the backend lists it.
    const stagedWithIntent: string[] = [];
    for (const dir of staging) {
      // A kill in the middle of writing the intent leaves an empty or cut file: that is no intent (and no process).
      const intact = await readFile(join(box.stateDir, dir, 'state.json'), 'utf8').then(
        (text) => {
          try {
            JSON.parse(text);
            return true;
          } catch {
            return false;
          }
        },
        () => false,
      );
      if (intact) stagedWithIntent.push(dir.slice(STAGING_PREFIX.length));
    }
    expect([...spawnDirs, ...stagedWithIntent].sort(), 'every spawn folder with an intent is listed by the process backend').toEqual([...listedIds].sort());
    expect(census.spawnIds.filter((id) => !listedIds.has(id)), 'live worker processes the backend cannot list').toEqual([]);
    const atKill = {
      dirs: census.dirs.length,
      staging: staging.length,
      intentOnly,
      intentWithoutChild,
      recorded,
      livePids: census.pids.length,
      liveSpawnIds: census.spawnIds.length,
      listed: listed.length,
    };

    // The survivor: same owner group, Redis and state dir. Its start-up reconciliation runs while
    // the dead instance's leases may still count; they lapse on Redis' clock within one lease.
    let sweep: () => Promise<{ removed: unknown[] }>;
    if (survivorKind === 'serve') {
      const survivor = await startServe(box, cleanup, { label: `kill-${n}-survivor`, compileCache: cache });
      cleanup.add('stop survivor', () => survivor.stop());
      sweep = async () => {
        const r = await survivor.post('/v1/sweep', {});
        expect(r.status, r.text).toBe(200);
        return r.json as { removed: unknown[] };
      };
    } else {
      const gate = await createSpawngate({ config: box.config, logger: memoryLogger(), watchBundle: false });
      cleanup.add('shut the survivor gate down', () => gate.shutdown());
      sweep = () => gate.sweep({ orphans: true });
    }
    const leaseLapseMs = await lapsed;
    const swept = await sweep();
    // Staging folders of spawns killed before their rename are listed and swept like any intent.
    const left = await expectNoWorkers(box.stateDir);
    const stagingLeft = left.dirs.filter((d) => d.startsWith(STAGING_PREFIX)).length;
    const slots = await slotCensus(inspector, raw, box.prefix);
    expect(slots).toEqual({ active: 0, slots: 0, profile: 0 });
    return {
      n,
      mode,
      survivor: survivorKind,
      fired,
      answered: answered.length,
      killAfterMs: killedAt - t0,
      atKill,
      sweepRemoved: swept.removed.length,
      leaseLapseMs,
      recoverMs: Date.now() - killedAt,
      workersLeft: left.dirs.length - stagingLeft + left.pids.length,
      stagingLeft,
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
}

/** Runs `count` trials, `parallel` at a time; every trial runs even when others fail. */
async function pool<T>(count: number, parallel: number, task: (n: number) => Promise<T>): Promise<{ results: T[]; failures: { n: number; error: string }[] }> {
  const results: T[] = [];
  const failures: { n: number; error: string }[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      for (let n = next++; n < count; n = next++) {
        try {
          results.push(await task(n));
        } catch (err) {
          failures.push({ n, error: (err as Error).stack ?? String(err) });
        }
      }
    }),
  );
  return { results, failures };
}

describe('fault injection: kill -9 of serve during spawns (process backend, Redis)', () => {
  it(`${TRIALS} trials: after one lease period and one sweep, 0 workers and 0 slots`, { timeout: 600_000 }, async () => {
    const started = Date.now();
    const { results, failures } = await pool(TRIALS, PARALLEL, (n) => runTrial(n));
    // The case item 4 of the issue is about — a kill after the intent was written and before the
    // child exists — must have been hit; the intent-mode trials nearly always hit it, and if the
    // load of the box made all of them miss, a few more (bounded) are run for it.
    const hitIntentBeforeChild = () => results.some((r) => r.atKill.intentWithoutChild > 0);
    let extraTrials = 0;
    for (let n = TRIALS; !hitIntentBeforeChild() && extraTrials < 6; n++, extraTrials++) {
      try {
        results.push(await runTrial(n, 'intent'));
      } catch (err) {
        failures.push({ n, error: (err as Error).stack ?? String(err) });
      }
    }
    const sum = (f: (r: TrialResult) => number) => results.reduce((a, r) => a + f(r), 0);
    const count = (f: (r: TrialResult) => boolean) => results.filter(f).length;
    report('kill-serve', {
      trials: TRIALS + extraTrials,
      extraIntentTrials: extraTrials,
      passed: results.length,
      failed: failures.length,
      spawns: sum((r) => r.fired),
      answered201BeforeKill: sum((r) => r.answered),
      kills: {
        byMode: { random: count((r) => r.mode === 'random'), intent: count((r) => r.mode === 'intent'), ready: count((r) => r.mode === 'ready') },
        beforeAnyIntent: count((r) => r.atKill.dirs === 0),
        withIntentOnly: count((r) => r.atKill.intentOnly > 0),
        withIntentBeforeChild: count((r) => r.atKill.intentWithoutChild > 0),
        withIntentBeforeChildByMode: {
          random: count((r) => r.mode === 'random' && r.atKill.intentWithoutChild > 0),
          intent: count((r) => r.mode === 'intent' && r.atKill.intentWithoutChild > 0),
          ready: count((r) => r.mode === 'ready' && r.atKill.intentWithoutChild > 0),
        },
        withCreatedNotReady: count((r) => r.atKill.recorded > r.answered),
        afterReady: count((r) => r.answered > 0),
      },
      leftAtKill: { workerDirs: sum((r) => r.atKill.dirs), stagingDirs: sum((r) => r.atKill.staging), intentOnly: sum((r) => r.atKill.intentOnly), livePids: sum((r) => r.atKill.livePids), listedByBackend: sum((r) => r.atKill.listed) },
      survivors: { serve: count((r) => r.survivor === 'serve'), inProcess: count((r) => r.survivor === 'in-process') },
      sweepRemoved: sum((r) => r.sweepRemoved),
      workersLeft: sum((r) => r.workersLeft),
      stagingDirsLeft: sum((r) => r.stagingLeft),
      trialsWithStagingDirsLeft: count((r) => r.stagingLeft > 0),
      slotsLeft: sum((r) => r.slotsLeft),
      killAfterMs: stats(results.map((r) => r.killAfterMs)),
      leaseLapseMs: stats(results.map((r) => r.leaseLapseMs)),
      timeToRecoverMs: stats(results.map((r) => r.recoverMs)),
      leaseMs: LEASE_MS,
      wallMs: Date.now() - started,
      failures: failures.map((f) => ({ n: f.n, error: f.error.split('\n')[0] })),
    });
    expect(failures.map((f) => `trial ${f.n}: ${f.error}`)).toEqual([]);
    expect(results.length).toBeGreaterThanOrEqual(TRIALS);
    // The kills landed at every stage of a spawn: with the intent written and no child yet (the
    // backend listed it all the same: asserted in each trial), with the child created but not
    // ready, and after ready.
    expect(hitIntentBeforeChild()).toBe(true);
    expect(count((r) => r.atKill.recorded > r.answered)).toBeGreaterThan(0);
    expect(count((r) => r.answered > 0)).toBeGreaterThan(0);
    expect(results.every((r) => r.workersLeft === 0 && r.slotsLeft === 0)).toBe(true);
  });
});
