import { randomUUID } from 'node:crypto';
import type { Logger } from '../../log.js';
import { silentLogger } from '../../log.js';
import type { ConcurrencyLimit, RateLimit } from '../types.js';
import { slotKey } from './types.js';
import type { IdempotencyClaim, IdempotencyStore, ReservationRecord, ReservationRequest, ReservationStore, ReserveOutcome, ReserveRejection, SlotKey, TreeUsage, WaitQueue, WaitingTicket } from './types.js';

interface Bucket {
  tokens: number;
  updatedAt: number;
}

export interface MemoryStoreOptions {
  now?: () => number;
  logger?: Logger;
  /** How long spawn timestamps are kept for `recent()`; queries for longer windows see at most this much. */
  recentRetentionMs?: number;
  /** Idempotency keys kept at most (default 100000); past it the oldest completed ones are forgotten. */
  maxIdempotencyKeys?: number;
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

/**
 * A map whose entries lapse at their `expiresAt` (store clock): a lapsed entry goes when it is next
 * touched, and all of them in one pass whenever the map has doubled, so a stream of one-off keys
 * cannot grow it past twice what is live.
 */
function expiringMap<V extends { expiresAt: number }>() {
  const entries = new Map<string, V>();
  let pruneAt = 1024;
  return {
    entries,
    live: (key: string, at: number): V | undefined => {
      const entry = entries.get(key);
      if (entry && entry.expiresAt <= at) {
        entries.delete(key);
        return undefined;
      }
      return entry;
    },
    prune: (at: number): void => {
      if (entries.size < pruneAt) return;
      for (const [k, e] of entries) if (e.expiresAt <= at) entries.delete(k);
      pruneAt = Math.max(1024, entries.size * 2);
    },
  };
}

interface TreeEntry {
  spawns: number;
  /** Worker-milliseconds: what ended spawns used plus the TTLs live ones hold. */
  chargedMs: number;
  expiresAt: number;
}

/**
 * Spawn-tree counts by root (TreeBudget). A tree is kept for its window past the end of the last
 * TTL charged to it, then forgotten; expired trees go when touched, and in one pass whenever the
 * map has doubled, as idempotency keys do.
 */
function createTrees() {
  const { entries: trees, live, prune } = expiringMap<TreeEntry>();
  /** What each live reservation charged, to refund the unused part when it ends. */
  const charges = new Map<string, { root: string; chargeMs: number; createdAt: number }>();
  return {
    rejection(tree: NonNullable<ReservationRequest['tree']>, at: number): ReserveRejection | null {
      const { budget, chargeMs } = tree;
      const entry = live(budget.root, at);
      const spawns = entry?.spawns ?? 0;
      const chargedMs = entry?.chargedMs ?? 0;
      if (budget.maxSpawns !== null && spawns + 1 > budget.maxSpawns) {
        return { ok: false, kind: 'tree', code: 'tree_spawns_exhausted', root: budget.root, max: budget.maxSpawns, used: spawns, needed: 1 };
      }
      if (budget.maxWorkerSeconds !== null && chargedMs + chargeMs > budget.maxWorkerSeconds * 1000) {
        return { ok: false, kind: 'tree', code: 'tree_worker_seconds_exhausted', root: budget.root, max: budget.maxWorkerSeconds, used: Math.ceil(chargedMs / 1000), needed: Math.ceil(chargeMs / 1000) };
      }
      return null;
    },
    take(id: string, tree: NonNullable<ReservationRequest['tree']>, at: number): TreeUsage {
      const { budget, chargeMs } = tree;
      prune(at);
      const entry = live(budget.root, at) ?? { spawns: 0, chargedMs: 0, expiresAt: 0 };
      entry.spawns += 1;
      entry.chargedMs += chargeMs;
      entry.expiresAt = Math.max(entry.expiresAt, at + chargeMs + budget.windowSeconds * 1000);
      trees.set(budget.root, entry);
      charges.set(id, { root: budget.root, chargeMs, createdAt: at });
      return { root: budget.root, spawns: entry.spawns, workerSeconds: Math.ceil(entry.chargedMs / 1000) };
    },
    /** The reservation ended at `at`: its tree keeps what it ran, not the TTL it held. */
    refund(id: string, at: number): void {
      const charge = charges.get(id);
      if (!charge) return;
      charges.delete(id);
      const entry = live(charge.root, at);
      if (!entry) return;
      const used = Math.min(charge.chargeMs, Math.max(0, at - charge.createdAt));
      entry.chargedMs = Math.max(0, entry.chargedMs - (charge.chargeMs - used));
    },
    clear(): void {
      trees.clear();
      charges.clear();
    },
  };
}

interface Waiter {
  id: string;
  seq: number;
  priority: number;
  user: string;
  /** Turn of this waiter among its user's: one more than the user's previous waiter, and never behind the queue's progress. */
  tag: number;
  limits: { slot: SlotKey; max: number }[];
  expiresAt: number;
  since: number;
  meta: Readonly<Record<string, string>>;
}

/** Queue order: higher priority, then the earlier turn (users take turns), then arrival. */
const ahead = (a: Waiter, b: Waiter): boolean => a.priority !== b.priority ? a.priority > b.priority : a.tag !== b.tag ? a.tag < b.tag : a.seq < b.seq;

/**
 * The wait queue (WaitQueue) over the store's counters. Fair by turns: each waiter's tag is one
 * more than its user's previous one, and at least one more than the tag of the last waiter served,
 * so a user who queues ten spawns gets every other turn with a user who queues one.
 */
function createQueue(counts: ReadonlyMap<SlotKey, number>) {
  let waiters: Waiter[] = [];
  const lastTag = new Map<string, number>();
  let served = 0;
  let seq = 0;
  const reclaim = (at: number): void => {
    if (waiters.some((w) => w.expiresAt <= at)) waiters = waiters.filter((w) => w.expiresAt > at);
    if (waiters.length === 0) lastTag.clear();
  };
  const fits = (w: Waiter): boolean => w.limits.every((l) => (counts.get(l.slot) ?? 0) < l.max);
  const remove = (id: string): Waiter | undefined => {
    const i = waiters.findIndex((w) => w.id === id);
    if (i < 0) return undefined;
    const [w] = waiters.splice(i, 1);
    if (waiters.length === 0) lastTag.clear();
    return w;
  };
  const position = (id: string): number | null => {
    const i = waiters.findIndex((w) => w.id === id);
    return i < 0 ? null : i + 1;
  };
  return {
    reclaim,
    /** The waiters that go before this request on one of its slots: queued ahead of its ticket (or anywhere, without one), sharing a slot, able to take it now. */
    blocking(request: Pick<ReservationRequest, 'concurrency' | 'ticket'>, at: number): { index: number; count: number } | null {
      reclaim(at);
      if (waiters.length === 0 || request.concurrency.length === 0) return null;
      const slots = request.concurrency.map((l) => slotKey(l.scope, l.key));
      let first = -1;
      let count = 0;
      for (const w of waiters) {
        if (w.id === request.ticket) break;
        const shared = slots.findIndex((slot) => w.limits.some((l) => l.slot === slot));
        if (shared < 0 || !fits(w)) continue;
        if (first < 0) first = shared;
        count++;
      }
      return first < 0 ? null : { index: first, count };
    },
    /** The ticket's reservation went through: its wait is over, and its turn is the queue's progress. */
    served(id: string | undefined): void {
      const w = id === undefined ? undefined : remove(id);
      if (!w) return;
      served = Math.max(served, w.tag);
      if ((lastTag.get(w.user) ?? 0) <= served) lastTag.delete(w.user);
    },
    clear(): void {
      waiters = [];
      lastTag.clear();
    },
    api(now: () => number): WaitQueue {
      return {
        join(request) {
          const at = now();
          reclaim(at);
          if (waiters.length >= request.maxWaiting) return Promise.resolve({ full: 'queue' as const });
          if (waiters.filter((w) => w.user === request.user).length >= request.maxWaitingPerUser) return Promise.resolve({ full: 'user' as const });
          const tag = Math.max(lastTag.get(request.user) ?? 0, served) + 1;
          lastTag.set(request.user, tag);
          const w: Waiter = {
            id: randomUUID(),
            seq: ++seq,
            priority: request.priority,
            user: request.user,
            tag,
            limits: request.concurrency.map((l) => ({ slot: slotKey(l.scope, l.key), max: l.max })),
            expiresAt: at + request.leaseMs,
            since: at,
            meta: { ...request.meta },
          };
          let i = waiters.length;
          while (i > 0 && ahead(w, waiters[i - 1] as Waiter)) i--;
          waiters.splice(i, 0, w);
          return Promise.resolve({ id: w.id, position: i + 1 });
        },
        touch(ids, leaseMs) {
          const at = now();
          reclaim(at);
          const out = new Map<string, number | null>();
          for (const id of ids) {
            const w = waiters.find((x) => x.id === id);
            if (w) w.expiresAt = at + leaseMs;
            out.set(id, position(id));
          }
          return Promise.resolve(out);
        },
        leave(id) {
          reclaim(now());
          return Promise.resolve(remove(id) !== undefined);
        },
        list() {
          reclaim(now());
          return Promise.resolve(waiters.map((w, i): WaitingTicket => ({ id: w.id, position: i + 1, priority: w.priority, user: w.user, since: w.since, meta: w.meta })));
        },
      };
    },
  };
}

interface KeyEntry {
  state: 'pending' | 'done';
  fingerprint: string;
  spawnId: string;
  result: string;
  expiresAt: number;
}

/**
 * Idempotency keys in this process; synchronous bodies make each check-and-set atomic, as in `take`.
 * At most `maxKeys` are kept: past it the oldest completed key is forgotten first (its retries
 * would spawn again), so a flood of one-off keys cannot exhaust the gateway's memory.
 */
export function createMemoryIdempotency(now: () => number = Date.now, maxKeys = 100_000, logger: Logger = silentLogger): IdempotencyStore {
  const { entries, live, prune } = expiringMap<KeyEntry>();
  let warned = false;
  const makeRoom = (): void => {
    // Map order is insertion order: the first done entry found is the oldest.
    for (const [k, e] of entries) {
      if (entries.size < maxKeys) return;
      if (e.state !== 'done') continue;
      entries.delete(k);
      if (!warned) logger.warn('idempotency keys: the memory store is full; the oldest completed keys are forgotten', { maxKeys });
      warned = true;
    }
  };

  return {
    claim(key, fingerprint, spawnId, pendingMs) {
      const at = now();
      prune(at);
      const entry = live(key, at);
      let claim: IdempotencyClaim;
      if (!entry) {
        if (entries.size >= maxKeys) makeRoom();
        entries.set(key, { state: 'pending', fingerprint, spawnId, result: '', expiresAt: at + pendingMs });
        claim = { state: 'claimed' };
      } else if (entry.fingerprint !== fingerprint) claim = { state: 'mismatch', spawnId: entry.spawnId };
      else if (entry.state === 'done') claim = { state: 'done', spawnId: entry.spawnId, result: entry.result };
      else claim = { state: 'pending', spawnId: entry.spawnId };
      return Promise.resolve(claim);
    },
    renew(key, spawnId, pendingMs) {
      const at = now();
      const entry = live(key, at);
      if (!entry || entry.state !== 'pending' || entry.spawnId !== spawnId) return Promise.resolve(false);
      entry.expiresAt = at + pendingMs;
      return Promise.resolve(true);
    },
    complete(key, spawnId, result, windowMs) {
      const at = now();
      const entry = live(key, at);
      if (!entry || entry.state !== 'pending' || entry.spawnId !== spawnId) return Promise.resolve(false);
      Object.assign(entry, { state: 'done', result, expiresAt: at + windowMs });
      return Promise.resolve(true);
    },
    abandon(key, spawnId) {
      const entry = live(key, now());
      if (entry?.state === 'pending' && entry.spawnId === spawnId) entries.delete(key);
      return Promise.resolve();
    },
  };
}

export function createMemoryStore(options: MemoryStoreOptions = {}): ReservationStore {
  const now = options.now ?? Date.now;
  const logger = options.logger ?? silentLogger;
  const retention = options.recentRetentionMs ?? 10 * 60_000;
  const active = new Map<string, ReservationRecord>();
  const counts = new Map<SlotKey, number>();
  const buckets = new Map<SlotKey, Bucket>();
  const history = new Map<SlotKey, number[]>();
  const trees = createTrees();
  const queue = createQueue(counts);
  // Earliest lease expiry among active records: lapsed leases are looked for only once it passes,
  // so the hot path pays nothing while every lease is fresh.
  let nextExpiry = Infinity;

  function free(record: ReservationRecord, at: number): void {
    active.delete(record.id);
    trees.refund(record.id, at);
    for (const key of record.slots) {
      const left = (counts.get(key) ?? 0) - 1;
      if (left > 0) counts.set(key, left);
      else counts.delete(key);
    }
  }

  /** Frees every reservation whose lease lapsed: its holder stopped renewing it (crashed, hung, cut off). */
  function reclaim(at: number): void {
    if (at < nextExpiry) return;
    nextExpiry = Infinity;
    for (const record of [...active.values()]) {
      if (record.leaseExpiresAt === null) continue;
      if (record.leaseExpiresAt <= at) {
        free(record, at);
        logger.warn('reservation lease lapsed; its slots are free again', { reservationId: record.id, spawnId: record.spawnId, holder: record.holder, store: 'memory' });
      } else nextExpiry = Math.min(nextExpiry, record.leaseExpiresAt);
    }
  }

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
    const blocked = queue.blocking(request, at);
    if (blocked) {
      const limit = request.concurrency[blocked.index] as ConcurrencyLimit;
      const active = counts.get(slotKey(limit.scope, limit.key)) ?? 0;
      return { ok: false, kind: 'concurrency', code: `concurrency_limit_${limit.scope}`, scope: limit.scope, key: limit.key, max: limit.max, active, waitingAhead: blocked.count };
    }
    for (const limit of request.rate) {
      const { bucket } = refill(limit, at);
      if (bucket.tokens < 1) {
        const retryAfterMs = Math.ceil((1 - bucket.tokens) / (limit.perMinute / 60_000));
        return { ok: false, kind: 'rate', code: `rate_limit_${limit.scope}`, scope: limit.scope, key: limit.key, perMinute: limit.perMinute, burst: limit.burst, retryAfterMs };
      }
    }
    return request.tree ? trees.rejection(request.tree, at) : null;
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
    reclaim(at);
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
    const leaseExpiresAt = request.leaseMs === undefined ? null : at + request.leaseMs;
    const id = randomUUID();
    const record: ReservationRecord = { id, spawnId: request.spawnId, holder: request.holder ?? '', slots, createdAt: at, leaseExpiresAt, meta: { ...request.meta } };
    if (request.tree) record.tree = trees.take(id, request.tree, at);
    queue.served(request.ticket);
    active.set(record.id, record);
    if (leaseExpiresAt !== null) nextExpiry = Math.min(nextExpiry, leaseExpiresAt);
    return { ok: true, record };
  }

  return {
    kind: 'memory',
    idempotency: createMemoryIdempotency(now, options.maxIdempotencyKeys, logger),
    queue: queue.api(now),
    reserve: (request) => Promise.resolve(take(request)),
    check(request) {
      const at = now();
      reclaim(at);
      return Promise.resolve(firstRejection(request, at) ?? { ok: true as const });
    },
    release(id) {
      const at = now();
      reclaim(at);
      const record = active.get(id);
      if (!record) {
        logger.warn('release of unknown or already released reservation ignored', { reservationId: id, store: 'memory' });
        return Promise.resolve(false);
      }
      free(record, at);
      return Promise.resolve(true);
    },
    renew(ids, leaseMs) {
      const at = now();
      reclaim(at);
      const held = new Set<string>();
      for (const id of ids) {
        const record = active.get(id);
        if (!record) continue;
        const leaseExpiresAt = at + leaseMs;
        active.set(id, { ...record, leaseExpiresAt });
        nextExpiry = Math.min(nextExpiry, leaseExpiresAt);
        held.add(id);
      }
      return Promise.resolve(held);
    },
    counts(keys) {
      reclaim(now());
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
    active() {
      reclaim(now());
      return Promise.resolve([...active.values()]);
    },
    close() {
      active.clear();
      counts.clear();
      buckets.clear();
      history.clear();
      trees.clear();
      queue.clear();
      return Promise.resolve();
    },
  };
}
