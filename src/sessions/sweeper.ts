/**
 * The sweeper: reconciles what the backends run with the store's leases, on a timer and on demand.
 */
import type { Admission } from '../admission/gate.js';
import type { ReservationRecord } from '../admission/store/types.js';
import type { Backend, ListedWorker } from '../backends/types.js';
import { LABELS } from '../backends/types.js';
import type { SpawngateConfig } from '../config/index.js';
import { pairLabels, safely } from '../telemetry/metrics.js';
import { inSpan, parentContext, setAttributes, SPAN } from '../telemetry/tracing.js';
import type { LiveSet } from './live-set.js';
import type { ReleasedLease, SweepEntry, SweepReport } from './types.js';

export interface SweeperOptions {
  admission: Admission;
  config: SpawngateConfig;
  /** The owner group whose workers this sweeper judges. */
  owner: string;
  liveSet: LiveSet;
  backendFor: (name: string) => Promise<Backend>;
  clock: () => Date;
}

export interface Sweeper {
  sweep: (options?: { dryRun?: boolean; orphans?: boolean }) => Promise<SweepReport>;
  /** Sweeps every `intervalMs` (unref'd) until stop(). */
  start(intervalMs: number): void;
  stop(): void;
}

export function createSweeper(options: SweeperOptions): Sweeper {
  const { admission, config, owner, liveSet, backendFor, clock } = options;
  const { metrics, logger } = admission;
  const { live, inflight, closeSpawn } = liveSet;
  let sweeping: Promise<void> | null = null;
  let sweepTimer: NodeJS.Timeout | null = null;
  // Workers this process already counted as deleted. A worker still listed after its deletion (a
  // Pod terminating through its grace period) is deleted again by the next sweep, but counted once.
  const counted = new Set<string>();
  function countOnce(spawnId: string, fn: () => void): void {
    if (counted.has(spawnId)) return;
    counted.add(spawnId);
    // Oldest first out: a bounded memory; a worker deleted this long ago is not listed any more.
    if (counted.size > 10_000) counted.delete(counted.values().next().value as string);
    safely(fn);
  }

  /**
   * Reconciles the backends with the store's leases, both ways. A worker's fate belongs to whoever
   * holds its lease: untracked workers whose lease a live instance holds (another replica's, or one
   * between create and ready anywhere) are left alone; without a live lease they are orphans. The
   * leases are read after each backend's listing, so a worker seen in a listing had its lease (taken
   * before create) in that read unless it was released or lapsed meanwhile.
   */
  async function sweep(sweepOptions: { dryRun?: boolean; orphans?: boolean } = {}): Promise<SweepReport> {
    const dryRun = sweepOptions.dryRun ?? false;
    const orphans = sweepOptions.orphans ?? true;
    const report: SweepReport = { dryRun, removed: [], releasedLeases: [], kept: 0, errors: [] };
    // Concurrent sweeps (timer and an API call) must not judge the same worker twice.
    if (sweeping) return sweeping.then(() => sweep(sweepOptions));
    let done!: () => void;
    sweeping = new Promise<void>((resolve) => (done = resolve));
    try {
      await inSpan(SPAN.sweep, parentContext(null), { 'spawngate.sweep.dry_run': dryRun }, async (span) => {
        let lastLeases: ReservationRecord[] | null = null;
        let listedEverywhere = true;
        for (const name of Object.keys(config.agents.executionBackends)) {
          let backend: Backend;
          let found: ListedWorker[];
          try {
            backend = await backendFor(name);
            found = await backend.list({ [LABELS.owner]: owner });
          } catch (err) {
            listedEverywhere = false;
            report.errors.push({ backend: name, error: (err as Error).message });
            continue;
          }
          let leased: Set<string> | null = null;
          try {
            lastLeases = await admission.store.active();
            leased = new Set(lastLeases.map((r) => r.spawnId));
          } catch (err) {
            // Without the leases nobody can tell an orphan from another replica's worker: delete none.
            report.errors.push({ backend: name, error: `reservation store: ${(err as Error).message}; orphans are left for the next sweep` });
          }
          const now = clock().getTime();
          for (const w of found) {
            const spawnId = w.ref.spawnId;
            // A spawn still on its way to ready is its own caller's to clean up, whatever its state.
            if (inflight.has(spawnId)) {
              report.kept++;
              continue;
            }
            const tracked = live.has(spawnId);
            const expired = w.expiresAt !== null && w.expiresAt.getTime() <= now;
            const exited = w.phase === 'failed' || w.phase === 'succeeded' || w.phase === 'gone';
            const heldElsewhere = !tracked && (leased === null || leased.has(spawnId));
            const reason: SweepEntry['reason'] | null = expired
              ? 'expired'
              : heldElsewhere
                ? null
                : exited
                  ? 'exited'
                  : !tracked && orphans
                    ? 'orphaned'
                    : null;
            if (!reason) {
              report.kept++;
              continue;
            }
            const item: SweepEntry = { spawnId, backend: name, nativeId: w.ref.nativeId, reason, deleted: false };
            if (!dryRun) {
              try {
                // closeSpawn counts a tracked worker's death; an untracked one is counted here, with the reason its backend gives.
                const died = !tracked && reason === 'exited' && w.phase !== 'gone' ? await backend.status(w.ref).catch(() => null) : null;
                if (tracked) await closeSpawn(spawnId, reason === 'exited' ? 'failed' : reason === 'expired' ? 'expired' : 'orphaned');
                else await backend.delete(w.ref);
                item.deleted = true;
                countOnce(spawnId, () => {
                  // The worker's own labels, bounded to this config's pairs (another config may have made it).
                  const pair = pairLabels(metrics, name, w.labels[LABELS.profile]);
                  metrics.sweeperDeletions.inc({ ...pair, reason });
                  if (!tracked && reason === 'exited') metrics.workerFailures.inc({ ...pair, reason: died?.reason ?? 'Unknown' });
                });
              } catch (err) {
                item.error = (err as Error).message;
              }
            }
            report.removed.push(item);
          }
          // A live worker its backend no longer has (removed by hand, node lost): close it so its slots come back.
          const listed = new Set(found.map((w) => w.ref.spawnId));
          for (const [spawnId, entry] of [...live]) {
            if (entry.handle.backend !== name || listed.has(spawnId)) continue;
            const item: SweepEntry = { spawnId, backend: name, nativeId: entry.ref.nativeId, reason: 'exited', deleted: false };
            if (!dryRun) {
              try {
                await closeSpawn(spawnId, 'failed');
                item.deleted = true;
                countOnce(spawnId, () => metrics.sweeperDeletions.inc({ backend: name, profile: entry.handle.profile, reason: 'exited' }));
              } catch (err) {
                item.error = (err as Error).message;
              }
            }
            report.removed.push(item);
          }
        }
        // The other way round: a lease recorded for this instance that nothing here holds any more
        // (no live or starting worker, no caller's reservation) only keeps slots from others.
        if (listedEverywhere && lastLeases) {
          const held = admission.leases.held();
          // Closing a worker above released its lease already; the leases were read before that.
          const closedNow = new Set(report.removed.filter((e) => e.deleted).map((e) => e.spawnId));
          for (const lease of lastLeases) {
            if (lease.holder !== admission.leases.holder || held.has(lease.id) || live.has(lease.spawnId) || inflight.has(lease.spawnId) || closedNow.has(lease.spawnId)) continue;
            const item: ReleasedLease = { reservationId: lease.id, spawnId: lease.spawnId, released: false };
            if (!dryRun) {
              try {
                item.released = await admission.store.release(lease.id);
              } catch (err) {
                item.error = (err as Error).message;
              }
            }
            report.releasedLeases.push(item);
          }
        }
        setAttributes(span, { 'spawngate.sweep.removed': report.removed.length, 'spawngate.sweep.kept': report.kept });
      });
    } finally {
      sweeping = null;
      done();
    }
    return report;
  }

  return {
    sweep,
    start(intervalMs) {
      sweepTimer = setInterval(() => {
        sweep({ orphans: true }).then(
          (r) => {
            if (r.removed.length) logger.info('sweeper removed workers', { removed: r.removed.map((e) => ({ spawnId: e.spawnId, reason: e.reason })) });
            for (const e of r.errors) logger.warn('sweeper could not list a backend', e);
          },
          (err: unknown) => logger.error('sweep failed', { error: (err as Error).message }),
        );
      }, intervalMs);
      sweepTimer.unref();
    },
    stop() {
      if (sweepTimer) clearInterval(sweepTimer);
      sweepTimer = null;
    },
  };
}
