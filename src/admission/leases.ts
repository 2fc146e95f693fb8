import { SpawngateError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ReservationStore } from './store/types.js';

export interface LeaseSettings {
  /** A reservation lives this long past its last renewal; default 30 s. */
  leaseMs: number;
  /** Heartbeat period, well inside the lease (at most half of it); default 10 s. */
  renewMs: number;
}

export const DEFAULT_LEASE: LeaseSettings = { leaseMs: 30_000, renewMs: 10_000 };

/** Retries of a failed renewal within one heartbeat (backoff 100 ms, doubling, at most a quarter of the heartbeat). */
const RENEW_RETRIES = 4;

export interface LeaseKeeperOptions extends LeaseSettings {
  store: ReservationStore;
  /** This gateway instance's id: the holder recorded on every reservation it takes. */
  holder: string;
  logger: Logger;
  /** Run the heartbeat on a timer (default true); tests drive `renew()` themselves. */
  heartbeat?: boolean;
}

/**
 * Keeps this instance's reservations alive. Every reservation the gate grants is a lease in the
 * store; the keeper renews all that are held on one heartbeat, so they lapse on their own once the
 * instance dies or hangs. A release the store could not take (connection reset) is retried on each
 * heartbeat and is no longer renewed, so its slots come back within one lease at the latest.
 */
export interface LeaseKeeper {
  readonly holder: string;
  readonly leaseMs: number;
  /** Renews this reservation from now on; `lost` is aborted if the store no longer holds it. */
  hold(reservationId: string): AbortSignal;
  /** Frees once. A store failure is rethrown after the release is queued for retry. */
  release(reservationId: string): Promise<boolean>;
  /** True while a release of this id failed and waits for its retry. */
  pendingRelease(reservationId: string): boolean;
  /** One heartbeat now: renews every held lease, aborts lost ones, retries pending releases. */
  renew(): Promise<void>;
  /** Ids this instance holds (not released, not lost). */
  held(): ReadonlySet<string>;
  /** Stops the heartbeat. Held leases are not released: they lapse unless another keeper renews them. */
  stop(): void;
}

export function createLeaseKeeper(options: LeaseKeeperOptions): LeaseKeeper {
  const { store, holder, leaseMs, renewMs, logger } = options;
  const held = new Map<string, AbortController>();
  const pending = new Set<string>();
  let renewing: Promise<void> | null = null;
  let stopped = false;
  let timer: NodeJS.Timeout | null = null;

  async function retryPending(): Promise<void> {
    for (const id of [...pending]) {
      try {
        await store.release(id);
        pending.delete(id);
      } catch {
        // Still unreachable; the lease lapses meanwhile, and the next heartbeat tries again.
        return;
      }
    }
  }

  async function renewOnce(): Promise<void> {
    await retryPending();
    if (held.size === 0) return;
    const ids = [...held.keys()];
    let kept: Set<string> | null = null;
    // A connection reset makes a renewal fail at once while the client reconnects; waiting for the
    // next heartbeat could let every lease lapse on a store that is up (two unlucky beats when the
    // heartbeat is half the lease). So retry with backoff inside the heartbeat period.
    for (let attempt = 0, pause = 100; kept === null; attempt++, pause *= 2) {
      try {
        kept = await store.renew(ids, leaseMs);
      } catch (err) {
        if (attempt >= RENEW_RETRIES || stopped) {
          logger.warn('lease renewal failed; held reservations lapse if the store stays unreachable', { holder, leases: ids.length, error: (err as Error).message });
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, Math.min(pause, renewMs / 4)).unref());
      }
    }
    for (const id of ids) {
      if (kept.has(id)) continue;
      const controller = held.get(id);
      // Released while the renewal was on its way: not a loss.
      if (!controller) continue;
      held.delete(id);
      logger.warn('reservation lease lost: the store no longer holds it', { holder, reservationId: id });
      // Retryable: the caps were not the problem, the store was; a new spawn takes new slots.
      controller.abort(new SpawngateError('LEASE_LOST', `reservation ${id} is no longer held by ${holder}: its lease lapsed or the store lost it`, { retryable: true }));
    }
  }

  function renew(): Promise<void> {
    // One heartbeat at a time: a slow store must not pile renewals up.
    renewing ??= renewOnce().finally(() => {
      renewing = null;
    });
    return renewing;
  }

  if (options.heartbeat ?? true) {
    timer = setInterval(() => void renew(), renewMs);
    timer.unref();
  }

  return {
    holder,
    leaseMs,
    hold(id) {
      const controller = new AbortController();
      held.set(id, controller);
      return controller.signal;
    },
    async release(id) {
      held.delete(id);
      try {
        const freed = await store.release(id);
        pending.delete(id);
        return freed;
      } catch (err) {
        pending.add(id);
        throw err;
      }
    },
    pendingRelease: (id) => pending.has(id),
    renew,
    held: () => new Set(held.keys()),
    stop() {
      stopped = true;
      if (timer) clearInterval(timer);
      timer = null;
    },
  };
}
