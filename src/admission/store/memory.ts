import { randomUUID } from 'node:crypto';
import type { Logger } from '../../log.js';
import { silentLogger } from '../../log.js';
import type { RateLimit } from '../types.js';
import { slotKey } from './types.js';
import type { ReservationRecord, ReservationRequest, ReservationStore, ReserveOutcome, ReserveRejection, SlotKey } from './types.js';

interface Bucket {
  tokens: number;
  updatedAt: number;
}

export interface MemoryStoreOptions {
  now?: () => number;
  logger?: Logger;
  /** How long spawn timestamps are kept for `recent()`; queries for longer windows see at most this much. */
  recentRetentionMs?: number;
}

/**
 * In-process reservation store. Atomicity comes from JavaScript's run-to-completion: the whole
 * check-then-take in `take` is synchronous, so no other reserve can interleave with it. Only a
 * single gateway process may share it; several gateways need the Redis store.
 */
/** Index of the first stamp > `t` in ascending `stamps` (they are appended in time order). */
function firstAfter(stamps: readonly number[], t: number): number {
  let lo = 0;
  let hi = stamps.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((stamps[mid] ?? 0) > t) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

export function createMemoryStore(options: MemoryStoreOptions = {}): ReservationStore {
  const now = options.now ?? Date.now;
  const logger = options.logger ?? silentLogger;
  const retention = options.recentRetentionMs ?? 10 * 60_000;
  const active = new Map<string, ReservationRecord>();
  const counts = new Map<SlotKey, number>();
  const buckets = new Map<SlotKey, Bucket>();
  const history = new Map<SlotKey, number[]>();

  function refill(limit: RateLimit, at: number): { key: SlotKey; bucket: Bucket } {
    const key = slotKey(limit.scope, limit.key);
    const prev = buckets.get(key);
    const perMs = limit.perMinute / 60_000;
    const tokens = prev ? Math.min(limit.burst, prev.tokens + (at - prev.updatedAt) * perMs) : limit.burst;
    return { key, bucket: { tokens, updatedAt: at } };
  }

  function firstRejection(request: Omit<ReservationRequest, 'spawnId'>, at: number): ReserveRejection | null {
    for (const limit of request.concurrency) {
      const current = counts.get(slotKey(limit.scope, limit.key)) ?? 0;
      if (current >= limit.max) {
        return { ok: false, kind: 'concurrency', code: `concurrency_limit_${limit.scope}`, scope: limit.scope, key: limit.key, max: limit.max, active: current };
      }
    }
    for (const limit of request.rate) {
      const { bucket } = refill(limit, at);
      if (bucket.tokens < 1) {
        const retryAfterMs = Math.ceil((1 - bucket.tokens) / (limit.perMinute / 60_000));
        return { ok: false, kind: 'rate', code: `rate_limit_${limit.scope}`, scope: limit.scope, key: limit.key, perMinute: limit.perMinute, burst: limit.burst, retryAfterMs };
      }
    }
    return null;
  }

  function prune(key: SlotKey, at: number): number[] | undefined {
    const stamps = history.get(key);
    if (!stamps) return undefined;
    const drop = firstAfter(stamps, at - retention);
    if (drop > 0) stamps.splice(0, drop);
    if (stamps.length === 0) {
      history.delete(key);
      return undefined;
    }
    return stamps;
  }

  function take(request: ReservationRequest): ReserveOutcome {
    const at = now();
    const rejection = firstRejection(request, at);
    if (rejection) return rejection;
    // Duplicate limits on one key (the same user named by two rules) must take one slot, not two.
    const slots = [...new Set(request.concurrency.map((l) => slotKey(l.scope, l.key)))];
    for (const key of slots) counts.set(key, (counts.get(key) ?? 0) + 1);
    const stamped = new Set<SlotKey>(slots);
    for (const limit of request.rate) {
      const { key, bucket } = refill(limit, at);
      bucket.tokens -= 1;
      buckets.set(key, bucket);
      stamped.add(key);
    }
    for (const key of stamped) {
      const stamps = prune(key, at) ?? [];
      stamps.push(at);
      history.set(key, stamps);
    }
    const record: ReservationRecord = { id: randomUUID(), spawnId: request.spawnId, slots, createdAt: at, meta: { ...request.meta } };
    active.set(record.id, record);
    return { ok: true, record };
  }

  return {
    kind: 'memory',
    reserve: (request) => Promise.resolve(take(request)),
    check: (request) => Promise.resolve(firstRejection(request, now()) ?? { ok: true as const }),
    release(id) {
      const record = active.get(id);
      if (!record) {
        logger.warn('release of unknown or already released reservation ignored', { reservationId: id, store: 'memory' });
        return Promise.resolve(false);
      }
      active.delete(id);
      for (const key of record.slots) {
        const left = (counts.get(key) ?? 0) - 1;
        if (left > 0) counts.set(key, left);
        else counts.delete(key);
      }
      return Promise.resolve(true);
    },
    counts(keys) {
      return Promise.resolve(new Map(keys.map((k) => [k, counts.get(k) ?? 0])));
    },
    recent(keys, windowMs) {
      const at = now();
      return Promise.resolve(
        new Map(
          keys.map((k) => {
            const stamps = prune(k, at) ?? [];
            return [k, stamps.length - firstAfter(stamps, at - windowMs)];
          }),
        ),
      );
    },
    active: () => Promise.resolve([...active.values()]),
    close() {
      active.clear();
      counts.clear();
      buckets.clear();
      history.clear();
      return Promise.resolve();
    },
  };
}
