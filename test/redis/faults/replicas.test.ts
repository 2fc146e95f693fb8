/**
 * Fault injection: three `spawngate serve` replicas of one owner group on one Redis (same key
 * prefix, same state dir) race 500 spawns against a profile cap of 3. Exactly 3 run; no replica's
 * sweep — during the race or after it — removes another's worker; kill -9 of a replica holding
 * slots gives them back within about one lease, the others' sweep removes its workers, and the
 * cap admits again.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureRedis, rawClient } from '../server.js';
import type { ServeProcess } from './harness.js';
import { Cleanup, cleanupSandbox, createSandbox, echoRequest, expectNoWorkers, LEASE_MS, openInspector, report, slotCensus, startServe, waitFor, workerCensus } from './harness.js';

const RACERS = 500;
const CAP = 3;

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

interface SpawnAnswer {
  replica: number;
  at: number;
  status: number;
  spawnId: string | null;
  code: string | null;
  reason: string | null;
}

interface SweepBody {
  removed: { spawnId: string; reason: string; deleted: boolean }[];
  errors: unknown[];
}

async function spawnOn(replicas: readonly ServeProcess[], replica: number, tag: string): Promise<SpawnAnswer> {
  const r = await replicas[replica]!.post('/v1/spawns', echoRequest(tag));
  const body = r.json as { spawnId?: string; error?: { code?: string; reasons?: { code: string }[] } } | undefined;
  return { replica, at: Date.now(), status: r.status, spawnId: body?.spawnId ?? null, code: body?.error?.code ?? null, reason: body?.error?.reasons?.[0]?.code ?? null };
}

async function sweepOn(replica: ServeProcess): Promise<SweepBody> {
  const r = await replica.post('/v1/sweep', {});
  expect(r.status, r.text).toBe(200);
  return r.json as SweepBody;
}

describe('fault injection: 3 serve replicas on one Redis', () => {
  it(`${RACERS} racing spawns against a cap of ${CAP}; kill -9 of a replica gives its slots back within a lease`, { timeout: 300_000 }, async () => {
    const cleanup = new Cleanup();
    let failure: unknown = null;
    try {
      const box = createSandbox({ label: 'replicas', owner: 'faults-replicas', redisUrl: url, profileCap: CAP, compileCache: cache }, cleanup);
      cleanupSandbox(box, cleanup, raw);
      const inspector = await openInspector(box);
      cleanup.add('close inspector', () => inspector.close());
      const replicas = await Promise.all([0, 1, 2].map((i) => startServe(box, cleanup, { label: `replica-${i}`, compileCache: cache })));

      // The race, with every replica sweeping in a loop meanwhile: the winners are between create
      // and ready on one replica while the others list them, untracked, as workers of their owner group.
      let racing = true;
      const sweepsDuringRace: (SweepBody & { at: number })[] = [];
      const sweepers = replicas.map(async (replica) => {
        // Paced load, bounded: a sweep every ~50 ms per replica for as long as the race runs.
        for (let i = 0; racing && i < 1000; i++) {
          sweepsDuringRace.push({ ...(await sweepOn(replica)), at: Date.now() });
          await sleep(50);
        }
      });
      const raceStarted = Date.now();
      const answers = await Promise.all(Array.from({ length: RACERS }, (_, i) => spawnOn(replicas, i % replicas.length, 'replicas'))).finally(() => {
        racing = false;
      });
      const raceMs = Date.now() - raceStarted;
      await Promise.all(sweepers);
      const won = answers.filter((a) => a.status === 201);
      const denied = answers.filter((a) => a.status === 403 && a.code === 'ADMISSION_DENIED' && a.reason === 'concurrency_limit_profile');
      const other = answers.filter((a) => !won.includes(a) && !denied.includes(a));
      expect(other, 'answers other than 201 or 403 concurrency_limit_profile').toEqual([]);
      expect(won).toHaveLength(CAP);
      expect(denied).toHaveLength(RACERS - CAP);
      expect(sweepsDuringRace.flatMap((s) => s.removed), 'sweeps during the race removed nothing').toEqual([]);

      const wonIds = won.map((a) => a.spawnId!).sort();
      const running = await workerCensus(box.stateDir);
      expect([...running.spawnIds].sort(), 'exactly the 3 admitted workers run').toEqual(wonIds);
      expect([...running.dirs].sort()).toEqual(wonIds);
      expect(await slotCensus(inspector, raw, box.prefix)).toMatchObject({ active: CAP, profile: CAP });

      const winnersByReplica = [0, 1, 2].map((i) => won.filter((a) => a.replica === i).length);

      // The race tends to hand every slot to one replica. Move slots (close one, spawn on the
      // replica without any) until each replica runs a worker, so that below every replica's
      // sweep meets the others' live workers, and the kill leaves survivors with workers to keep.
      const holders: SpawnAnswer[] = [...won];
      for (let empty = [0, 1, 2].find((i) => !holders.some((h) => h.replica === i)), moves = 0; empty !== undefined && moves < CAP; moves++) {
        const donor = [0, 1, 2].find((i) => holders.filter((h) => h.replica === i).length > 1);
        if (donor === undefined) break;
        const moved = holders.find((h) => h.replica === donor)!;
        const closed = await replicas[donor]!.request('DELETE', `/v1/spawns/${moved.spawnId}`);
        expect(closed.status, closed.text).toBe(204);
        holders.splice(holders.indexOf(moved), 1);
        const placed = await spawnOn(replicas, empty, 'replicas-rebalance');
        expect(placed.status, JSON.stringify(placed)).toBe(201);
        holders.push(placed);
        empty = [0, 1, 2].find((i) => !holders.some((h) => h.replica === i));
      }
      const heldIds = holders.map((a) => a.spawnId!).sort();
      expect(holders).toHaveLength(CAP);
      expect((await slotCensus(inspector, raw, box.prefix)).profile).toBe(CAP);

      // Every replica sweeps while they run: another replica's live workers are not orphans.
      const sweepsWhileRunning = await Promise.all(replicas.map((r) => sweepOn(r)));
      expect(sweepsWhileRunning.flatMap((s) => s.removed)).toEqual([]);
      for (const a of holders) {
        const status = await replicas[a.replica]!.request('GET', `/v1/spawns/${a.spawnId}`);
        expect((status.json as { tracking?: string }).tracking, status.text).toBe('live');
      }
      await waitFor(async () => JSON.stringify([...(await workerCensus(box.stateDir)).spawnIds].sort()) === JSON.stringify(heldIds), 'the census to show the held workers only', 15_000);

      // Kill -9 a replica that holds a slot (the one with the most).
      const held = [0, 1, 2].map((i) => holders.filter((a) => a.replica === i).length);
      const victim = held.indexOf(Math.max(...held));
      const victimIds = holders.filter((a) => a.replica === victim).map((a) => a.spawnId!).sort();
      const survivors = replicas.filter((_, i) => i !== victim);
      const survivorIndexes = [0, 1, 2].filter((i) => i !== victim);
      expect(victimIds.length).toBeGreaterThan(0);
      const killedAt = Date.now();
      await replicas[victim]!.kill9();
      // Its leases lapse on Redis' clock; a bounded poll of the store sees the slots come back.
      const { ms: slotsBackMs } = await waitFor(
        async () => (await slotCensus(inspector, raw, box.prefix)).profile === CAP - victimIds.length,
        "the killed replica's slots to come back",
        20 * LEASE_MS,
        25,
      );
      const slotsBackAfterKillMs = Date.now() - killedAt;
      // Its workers still run (nobody deleted them), and now belong to nobody: the others sweep them.
      expect([...(await workerCensus(box.stateDir)).spawnIds].sort()).toEqual(heldIds);
      const removed = [];
      for (const r of survivors) removed.push(...(await sweepOn(r)).removed);
      expect(removed.map((e) => e.spawnId).sort(), "the survivors' sweeps removed exactly the killed replica's workers").toEqual(victimIds);
      expect(removed.every((e) => e.reason === 'orphaned' && e.deleted)).toBe(true);
      const keptIds = holders.filter((a) => a.replica !== victim).map((a) => a.spawnId!).sort();
      const same = (a: readonly string[], b: readonly string[]) => JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());
      // delete() returns once the worker is gone; bounded poll only for the census to settle.
      await waitFor(async () => {
        const c = await workerCensus(box.stateDir);
        return same(c.spawnIds, keptIds) && same(c.dirs, keptIds);
      }, "only the other replicas' workers left", 15_000);

      // The cap admits again, up to 3, on the replicas that are left.
      const again = await Promise.all(Array.from({ length: 4 * CAP }, (_, i) => spawnOn(replicas, survivorIndexes[i % survivorIndexes.length]!, 'replicas-again')));
      const wonAgain = again.filter((a) => a.status === 201);
      expect(again.filter((a) => a.status !== 201 && !(a.status === 403 && a.reason === 'concurrency_limit_profile'))).toEqual([]);
      expect(wonAgain).toHaveLength(victimIds.length);
      expect((await slotCensus(inspector, raw, box.prefix)).profile).toBe(CAP);

      // Close everything through the API of the replica that runs it, then stop the replicas.
      for (const a of [...holders.filter((w) => w.replica !== victim), ...wonAgain]) {
        const closed = await replicas[a.replica]!.request('DELETE', `/v1/spawns/${a.spawnId}`);
        expect(closed.status, closed.text).toBe(204);
      }
      await Promise.all(survivors.map((r) => r.stop()));
      const left = await expectNoWorkers(box.stateDir);
      const slots = await slotCensus(inspector, raw, box.prefix);
      expect(slots).toEqual({ active: 0, slots: 0, profile: 0 });
      report('replicas', {
        trials: 1,
        replicas: 3,
        racers: RACERS,
        cap: CAP,
        admitted: won.length,
        denied: denied.length,
        deniedCode: 'concurrency_limit_profile',
        winnersByReplica,
        slotsByReplicaAtKill: held,
        survivorsWorkersKept: keptIds.length,
        raceMs,
        sweepsDuringRace: sweepsDuringRace.length,
        // Sweeps that finished while at least one winner was still between admission and ready.
        sweepsBeforeLastWinnerReady: sweepsDuringRace.filter((x) => x.at < Math.max(...won.map((a) => a.at))).length,
        removedBySweepsDuringRace: 0,
        removedBySweepsWhileRunning: 0,
        killedReplicaSlots: victimIds.length,
        slotsBackAfterKillMs,
        timeToRecoverMs: slotsBackAfterKillMs,
        slotsBackPollMs: slotsBackMs,
        leaseMs: LEASE_MS,
        orphansRemovedBySurvivors: removed.length,
        admittedAfterKill: wonAgain.length,
        deniedAfterKill: again.length - wonAgain.length,
        spawns: RACERS + again.length + (holders.filter((h) => !won.includes(h)).length),
        workersLeft: left.dirs.length + left.pids.length,
        slotsLeft: slots.active + slots.slots,
      });
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
  });
});
