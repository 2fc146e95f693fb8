/**
 * Fault injection: the Redis under a gate fails. A private redis-server of the test's own (no
 * persistence, its own port), an in-process gate on it (process backend, leases of 4 s renewed
 * every second), live workers and reserve/admit/spawn traffic:
 *   (a) Redis killed           — every call rejects with a retryable RESERVATION_FAILED, never an allow;
 *   (b) restarted empty        — the next heartbeat finds the leases gone and closes the workers (lease_lost);
 *   (c) stalled (SIGSTOP)      — longer than the command timeout: RESERVATION_FAILED meanwhile; SIGCONT recovers;
 *   (d) connections reset      — CLIENT KILL TYPE normal while spawns and closes are in flight.
 * Afterwards: 0 workers, 0 slots. Allows are counted in every outage window and must be 0.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedisStore } from '../../../src/admission/store/redis.js';
import type { ReservationStore } from '../../../src/admission/store/types.js';
import { isSpawngateError } from '../../../src/errors.js';
import type { WorkerHandle } from '../../../src/sessions/lifecycle.js';
import type { Spawngate } from '../../../src/spawngate.js';
import { createSpawngate } from '../../../src/spawngate.js';
import { memoryLogger } from '../../helpers/logger.js';
import type { PrivateRedis, Sandbox } from './harness.js';
import { Cleanup, cleanupSandbox, createSandbox, echoRequest, expectNoWorkers, LEASE_MS, openInspector, randomInt, report, slotCensus, startPrivateRedis, waitFor } from './harness.js';

/** Well under the lease, so a stall can outlast it without outlasting the lease by much. */
const COMMAND_TIMEOUT_MS = 1000;

let cache = '';

beforeAll(() => {
  cache = mkdtempSync(join(tmpdir(), 'sgf-cc-'));
});

afterAll(() => {
  if (cache) rmSync(cache, { recursive: true, force: true });
});

/** memoryLogger with the time of each line (ms since the rig started), to put log lines next to the faults. */
function timedLogger(): ReturnType<typeof memoryLogger> {
  const inner = memoryLogger();
  const t0 = Date.now();
  const at =
    (level: 'debug' | 'info' | 'warn' | 'error') =>
    (msg: string, fields?: Record<string, unknown>): void =>
      inner[level](msg, { ...fields, t: Date.now() - t0 });
  return { lines: inner.lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

interface Rig {
  redis: PrivateRedis;
  box: Sandbox;
  gate: Spawngate;
  store: ReservationStore;
  inspector: ReservationStore;
  raw: Redis;
  logger: ReturnType<typeof memoryLogger>;
}

async function rig(label: string, cleanup: Cleanup): Promise<Rig> {
  const redis = await startPrivateRedis(cleanup);
  // A profile cap well above what the tests run, so the profile slot is counted (and checked) too.
  const box = createSandbox({ label, owner: `faults-${label}`, redisUrl: redis.url, compileCache: cache, profileCap: 16 }, cleanup);
  // Keys die with the private server; workers and state dirs are swept by the sandbox cleanup.
  cleanupSandbox(box, cleanup, null);
  const raw = new Redis(redis.url, { maxRetriesPerRequest: 1 });
  raw.on('error', () => undefined);
  cleanup.add('disconnect raw client', () => raw.disconnect());
  const logger = timedLogger();
  // The store is passed in (not built from the config) only to shorten its command timeout.
  const store = await createRedisStore({ url: redis.url, keyPrefix: box.prefix, logger, commandTimeoutMs: COMMAND_TIMEOUT_MS });
  cleanup.add('close the gate store', () => store.close());
  // Heartbeat on (the default); the periodic sweeper off, so the only sweeps are the test's.
  const gate = await createSpawngate({ config: box.config, store, logger, sweepIntervalMs: 0, watchBundle: false });
  cleanup.add('shut the gate down', () => gate.shutdown());
  cleanup.add('resume redis (a stalled one would hold up the shutdown)', () => {
    try {
      redis.resume();
    } catch {
      // not running
    }
  });
  const inspector = await openInspector(box, redis.url, { commandTimeoutMs: COMMAND_TIMEOUT_MS });
  cleanup.add('close inspector', () => inspector.close());
  return { redis, box, gate, store, inspector, raw, logger };
}

/** Outcomes of calls made while the store cannot be reached. */
interface Tally {
  calls: number;
  allows: number;
  reservationFailed: number;
  /** RESERVATION_FAILED whose cause was the command timeout (the stall case). */
  timeouts: number;
  /** Anything else: a deny, a non-retryable error, another code. Must stay empty. */
  unclear: string[];
}

const newTally = (): Tally => ({ calls: 0, allows: 0, reservationFailed: 0, timeouts: 0, unclear: [] });

type Kind = 'reserve' | 'admit' | 'spawn';

/** One call of `kind`; an allow is counted and undone at once (release, close). */
async function outageCall(gate: Spawngate, tally: Tally, kind: Kind, tag: string): Promise<void> {
  tally.calls++;
  try {
    if (kind === 'reserve') {
      const r = await gate.reserve(echoRequest(tag));
      if (r.allowed) {
        tally.allows++;
        await r.reservation.release().catch(() => false);
      } else tally.unclear.push(`reserve denied: ${JSON.stringify(r.decision.reasons)}`);
    } else if (kind === 'admit') {
      const r = await gate.admit(echoRequest(tag));
      if (r.decision.allow) tally.allows++;
      else tally.unclear.push(`admit denied: ${JSON.stringify(r.decision.reasons)}`);
    } else {
      const handle = await gate.spawn(echoRequest(tag));
      tally.allows++;
      await handle.close().catch(() => undefined);
    }
  } catch (err) {
    if (isSpawngateError(err) && err.code === 'RESERVATION_FAILED' && err.retryable) {
      tally.reservationFailed++;
      if (/timed? ?out/i.test(`${err.message} ${String((err.cause as Error | undefined)?.message)}`)) tally.timeouts++;
    } else tally.unclear.push(`${kind}: ${isSpawngateError(err) ? `${err.code} retryable=${err.retryable}` : ''} ${(err as Error).message}`);
  }
}

const isRetryableReservationFailure = (err: unknown) => isSpawngateError(err) && err.code === 'RESERVATION_FAILED' && err.retryable;

/** Retries `call` while it fails with a retryable RESERVATION_FAILED (the store reconnecting); any other failure is thrown. Bounded. */
async function onceReachable<T>(call: () => Promise<T>, what: string, timeoutMs = 30_000): Promise<{ value: T; ms: number }> {
  const started = Date.now();
  for (let attempt = 0; ; attempt++) {
    try {
      return { value: await call(), ms: Date.now() - started };
    } catch (err) {
      if (!isRetryableReservationFailure(err) || Date.now() - started > timeoutMs) throw new Error(`${what} failed after ${attempt + 1} attempts`, { cause: err });
      await sleep(100);
    }
  }
}

async function spawnWorkers(gate: Spawngate, n: number, tag: string): Promise<WorkerHandle[]> {
  return Promise.all(Array.from({ length: n }, () => gate.spawn(echoRequest(tag))));
}

async function finalCensus(r: Rig): Promise<{ workersLeft: number; slotsLeft: number }> {
  const left = await expectNoWorkers(r.box.stateDir);
  const { value: slots } = await onceReachable(() => slotCensus(r.inspector, r.raw, r.box.prefix), 'reading the slots');
  expect(slots).toEqual({ active: 0, slots: 0, profile: 0 });
  return { workersLeft: left.dirs.length + left.pids.length, slotsLeft: slots.active + slots.slots };
}

async function withCleanup(body: (cleanup: Cleanup) => Promise<void>): Promise<void> {
  const cleanup = new Cleanup();
  let failure: unknown = null;
  try {
    await body(cleanup);
  } catch (err) {
    failure = err;
    throw err;
  } finally {
    try {
      await cleanup.run();
    } catch (err) {
      if (failure === null) throw err;
    }
  }
}

describe('fault injection: Redis outages under a live gate (process backend)', () => {
  it('(a) Redis killed: only retryable RESERVATION_FAILED, no allow; (b) restarted empty: workers closed as lease_lost, 0 workers, 0 slots, spawns work again', { timeout: 180_000 }, () =>
    withCleanup(async (cleanup) => {
      const r = await rig('outage-kill', cleanup);
      const workers = await spawnWorkers(r.gate, 2, 'outage-kill');
      expect(await slotCensus(r.inspector, r.raw, r.box.prefix)).toMatchObject({ active: 2, profile: 2 });

      // (a) The outage window: sequential traffic of every kind, then a concurrent burst.
      await r.redis.kill();
      const down = newTally();
      const kinds: Kind[] = ['reserve', 'admit', 'spawn'];
      for (let i = 0; i < 24; i++) await outageCall(r.gate, down, kinds[i % kinds.length]!, 'outage-kill-down');
      await Promise.all(Array.from({ length: 12 }, (_, i) => outageCall(r.gate, down, kinds[i % kinds.length]!, 'outage-kill-burst')));
      expect(down.unclear).toEqual([]);
      expect(down.allows).toBe(0);
      expect(down.reservationFailed).toBe(down.calls);
      const liveThroughOutage = workers.filter((w) => r.gate.get(w.spawnId)).length;

      // (b) A fresh, empty Redis on the same port: the leases are gone with the old one.
      await r.redis.restart();
      const restartedAt = Date.now();
      const { ms: closedMs } = await waitFor(() => workers.every((w) => r.gate.get(w.spawnId) === undefined), 'the heartbeat to close the workers whose leases Redis lost', 30_000);
      const reasons = await Promise.all(workers.map(async (w) => (await r.gate.status(w.spawnId)).closeReason));
      expect(reasons).toEqual(['lease_lost', 'lease_lost']);
      const afterRestart = await finalCensus(r);
      const recoverMs = Date.now() - restartedAt;

      // New spawns are admitted and run again.
      const { value: fresh, ms: firstSpawnMs } = await onceReachable(() => r.gate.spawn(echoRequest('outage-kill-after')), 'a spawn after the restart');
      expect((await slotCensus(r.inspector, r.raw, r.box.prefix)).active).toBe(1);
      await fresh.close();
      const end = await finalCensus(r);

      report('redis-outage', {
        case: 'killed+restarted-empty',
        trials: 1,
        workersBefore: workers.length,
        callsWhileDown: down.calls,
        allowsWhileDown: down.allows,
        reservationFailedWhileDown: down.reservationFailed,
        otherOutcomesWhileDown: down.unclear.length,
        workersLiveThroughOutage: liveThroughOutage,
        workersClosedLeaseLost: reasons.filter((x) => x === 'lease_lost').length,
        leaseLostCloseAfterRestartMs: closedMs,
        timeToRecoverMs: recoverMs,
        firstSpawnAfterRestartMs: firstSpawnMs,
        leaseMs: LEASE_MS,
        spawns: workers.length + 1,
        workersLeftAfterRestart: afterRestart.workersLeft,
        slotsLeftAfterRestart: afterRestart.slotsLeft,
        workersLeft: end.workersLeft,
        slotsLeft: end.slotsLeft,
      });
    }),
  );

  it('(c) Redis stalled (SIGSTOP) past the command timeout: RESERVATION_FAILED meanwhile, no allow; SIGCONT recovers; 0 slots after closing', { timeout: 180_000 }, () =>
    withCleanup(async (cleanup) => {
      const r = await rig('outage-stall', cleanup);
      const workers = await spawnWorkers(r.gate, 2, 'outage-stall');

      r.redis.stall();
      const stalledAt = Date.now();
      const stalled = newTally();
      // A burst of every kind; each waits out the command timeout, so the stall lasts at least that long.
      await Promise.all((['reserve', 'admit', 'spawn', 'reserve', 'admit', 'reserve'] as Kind[]).map((k) => outageCall(r.gate, stalled, k, 'outage-stall')));
      // …and one more once the first round has timed out.
      await outageCall(r.gate, stalled, 'reserve', 'outage-stall-late');
      const stallMs = Date.now() - stalledAt;
      r.redis.resume();
      const resumedAt = Date.now();
      expect(stalled.unclear).toEqual([]);
      expect(stalled.allows).toBe(0);
      expect(stalled.reservationFailed).toBe(stalled.calls);
      expect(stalled.timeouts).toBeGreaterThan(0);

      const { ms: recoverMs } = await onceReachable(async () => {
        const res = await r.gate.reserve(echoRequest('outage-stall-after'));
        if (!res.allowed) throw new Error(`denied after the stall: ${JSON.stringify(res.decision.reasons)}`);
        await res.reservation.release();
      }, 'a reserve after SIGCONT');
      // A stall longer than the lease lets Redis' clock lapse the leases; the heartbeat then closes
      // the workers (lease_lost). Either way, within a heartbeat or two no worker may run without
      // a lease that counts it: each is live with its lease in the store, or closed.
      const { ms: consistentMs } = await waitFor(
        async () => {
          const leased = new Set((await r.inspector.active()).map((x) => x.spawnId));
          return workers.every((w) => (r.gate.get(w.spawnId) ? leased.has(w.spawnId) : true));
        },
        'every live worker to be counted by a live lease (or closed as lease_lost)',
        10 * LEASE_MS,
      );
      const liveAfterStall = workers.filter((w) => r.gate.get(w.spawnId)).length;
      const reasonsBeforeClose = await Promise.all(workers.map(async (w) => (await r.gate.status(w.spawnId)).closeReason));
      expect(reasonsBeforeClose.every((x) => x === null || x === 'lease_lost'), JSON.stringify(reasonsBeforeClose)).toBe(true);
      await Promise.all(workers.map((w) => w.close()));
      const reasons = await Promise.all(workers.map(async (w) => (await r.gate.status(w.spawnId)).closeReason));
      const end = await finalCensus(r);
      report('redis-outage', {
        case: 'stalled-sigstop',
        trials: 1,
        commandTimeoutMs: COMMAND_TIMEOUT_MS,
        stallMs,
        leaseMs: LEASE_MS,
        callsWhileStalled: stalled.calls,
        allowsWhileStalled: stalled.allows,
        reservationFailedWhileStalled: stalled.reservationFailed,
        timedOutWhileStalled: stalled.timeouts,
        timeToRecoverMs: recoverMs,
        sinceSigcontMs: Date.now() - resumedAt,
        workersLiveAfterStall: liveAfterStall,
        workersClosedLeaseLost: reasonsBeforeClose.filter((x) => x === 'lease_lost').length,
        consistentAfterSigcontMs: consistentMs,
        closeReasons: reasons,
        spawns: workers.length,
        workersLeft: end.workersLeft,
        slotsLeft: end.slotsLeft,
      });
    }),
  );

  it('(d) connections reset mid-traffic (CLIENT KILL TYPE normal): closes never fail but retryably; close all + one sweep leave 0 slots, 0 workers', { timeout: 180_000 }, () =>
    withCleanup(async (cleanup) => {
      const r = await rig('outage-reset', cleanup);
      const initial = await spawnWorkers(r.gate, 3, 'outage-reset');

      type Outcome = { op: string; ok: boolean; code: string | null; retryable: boolean | null; message: string | null; handle?: WorkerHandle };
      let pending = 0;
      const track = (op: string, p: Promise<WorkerHandle | undefined | void>): Promise<Outcome> => {
        pending++;
        return p
          .then(
            (v): Outcome => ({ op, ok: true, code: null, retryable: null, message: null, ...(v ? { handle: v } : {}) }),
            (err: unknown): Outcome => ({ op, ok: false, code: isSpawngateError(err) ? err.code : null, retryable: isSpawngateError(err) ? err.retryable : null, message: (err as Error).message }),
          )
          .finally(() => pending--);
      };
      const reserveAndRelease = async () => {
        const res = await r.gate.reserve(echoRequest('outage-reset-reserve'));
        if (res.allowed) await res.reservation.release();
      };
      const closesAndSpawns = [
        ...initial.map((w) => track('close', w.close())),
        ...Array.from({ length: 3 }, () => track('spawn', r.gate.spawn(echoRequest('outage-reset-new')))),
      ];
      // Reserve traffic for as long as the closes and spawns are in flight: 4 streams, bounded.
      let streaming = true;
      const reserves: Promise<Outcome>[] = [];
      const streams = Array.from({ length: 4 }, async () => {
        for (let i = 0; streaming && i < 200; i++) {
          const op = track('reserve', reserveAndRelease());
          reserves.push(op);
          await op;
          // Paced: during a reconnect every call fails at once, and the stream must not spin.
          await sleep(randomInt(5, 30));
        }
      });
      void Promise.all(closesAndSpawns).finally(() => (streaming = false));
      // Resets at random instants while anything is in flight (bounded).
      let kills = 0;
      let clientsKilled = 0;
      for (let i = 0; i < 200 && pending > 0; i++) {
        await sleep(randomInt(10, 80));
        clientsKilled += Number(await r.raw.client('KILL', 'TYPE', 'normal').catch(() => 0));
        kills++;
      }
      streaming = false;
      const resetsEndedAt = Date.now();
      const pendingAfterResets = pending;
      await Promise.all(streams);
      const outcomes = await Promise.all([...closesAndSpawns, ...reserves]);
      const closes = outcomes.filter((o) => o.op === 'close');
      // A close reports success, or at worst a clear retryable error.
      const brief = (list: Outcome[]) => JSON.stringify(list.map(({ handle: _h, ...o }) => o));
      const badCloses = closes.filter((o) => !o.ok && !(o.code === 'RESERVATION_FAILED' && o.retryable === true));
      expect(badCloses, `closes that failed other than retryably: ${brief(badCloses)}`).toEqual([]);
      const notRetryable = outcomes.filter((o) => !o.ok && o.retryable !== true);
      const leaseLog = r.logger.lines.filter((l) => l.msg.startsWith('lease renewal failed') || l.msg.startsWith('reservation lease lost'));
      // A spawn whose lease lapsed while it started fails with LEASE_LOST, which is retryable too.
      expect(notRetryable, `failures that are not retryable: ${brief(notRetryable)}; lease log: ${JSON.stringify(leaseLog)}`).toEqual([]);

      // Once the store answers again: close everything still running (retrying a retryable
      // failure), then one sweep.
      await waitFor(() => r.gate.store.active().then(() => true), 'the store to reconnect', 30_000);
      const spawned = outcomes.flatMap((o) => (o.handle ? [o.handle] : []));
      for (const w of [...initial, ...spawned]) await onceReachable(() => r.gate.close(w.spawnId), `closing ${w.spawnId}`);
      const sweep = await r.gate.sweep({ orphans: true });
      expect(sweep.errors).toEqual([]);
      const end = await finalCensus(r);
      const recoveredAt = Date.now();
      report('redis-outage', {
        case: 'connections-reset',
        trials: 1,
        clientKillRounds: kills,
        clientsKilled,
        ops: outcomes.length,
        closes: closes.length,
        closesFailed: closes.filter((o) => !o.ok).length,
        closeFailureCodes: closes.filter((o) => !o.ok).map((o) => o.code),
        spawnsOk: outcomes.filter((o) => o.op === 'spawn' && o.ok).length,
        spawnsFailedRetryable: outcomes.filter((o) => o.op === 'spawn' && !o.ok && o.retryable === true).length,
        spawnsFailedLeaseLost: outcomes.filter((o) => o.op === 'spawn' && o.code === 'LEASE_LOST').length,
        renewalFailuresLogged: leaseLog.filter((l) => l.msg.startsWith('lease renewal failed')).length,
        leasesLostLogged: leaseLog.filter((l) => l.msg.startsWith('reservation lease lost')).length,
        reserveRounds: reserves.length,
        reservesFailedRetryable: outcomes.filter((o) => o.op === 'reserve' && !o.ok).length,
        failureCodes: [...new Set(outcomes.filter((o) => !o.ok).map((o) => o.code))],
        storeFailuresLogged: r.logger.lines.filter((l) => l.level !== 'info' && l.level !== 'debug' && /redis|reservation|lease|release/i.test(l.msg)).length,
        releaseFailuresLogged: r.logger.lines.filter((l) => l.msg.startsWith('releasing the reservation failed')).length,
        sweepRemoved: sweep.removed.length,
        sweepReleasedLeases: sweep.releasedLeases.length,
        spawns: initial.length + 3,
        stillPendingAfterResets: pendingAfterResets,
        // From the last reset to the closing census (reconnect, close all, one sweep, 0/0 verified).
        timeToRecoverMs: recoveredAt - resetsEndedAt,
        workersLeft: end.workersLeft,
        slotsLeft: end.slotsLeft,
      });
    }),
  );
});
