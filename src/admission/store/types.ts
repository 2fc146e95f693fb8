import type { ConcurrencyLimit, ConcurrencyScope, RateLimit, RateScope, TreeBudget } from '../types.js';

/** `${scope}/${key}` — the unit a concurrency slot or a rate bucket is counted under. */
export type SlotKey = string;

export function slotKey(scope: ConcurrencyScope | RateScope, key: string): SlotKey {
  return `${scope}/${key}`;
}

export interface ReservationRequest {
  spawnId: string;
  /** The gateway instance that holds (and renews) the lease; listed with the record. */
  holder?: string;
  /**
   * Lease length. The reservation lives only while its holder renews it within this period; once
   * it lapses the store frees its slots itself, so a holder that dies cannot keep them. Absent:
   * held until released (for direct users of a store; the gate always takes a lease).
   */
  leaseMs?: number;
  concurrency: readonly ConcurrencyLimit[];
  rate: readonly RateLimit[];
  /**
   * The spawn tree this reservation counts in: one spawn more, and `chargeMs` worker-milliseconds
   * (its TTL, the most it can run) held until it is released, when what it did not use is refunded.
   */
  tree?: { budget: TreeBudget; chargeMs: number };
  /**
   * The wait-queue ticket this reservation is for (WaitQueue.join). Without one, any live waiter
   * that shares a concurrency slot with this request and could take it now goes first; with one,
   * only the waiters ahead of the ticket do, and a reservation that succeeds ends the ticket's wait.
   */
  ticket?: string;
  /** Free-form labels kept with the reservation (user, channel, backend/profile) for listings and logs. */
  meta?: Readonly<Record<string, string>>;
}

export interface ReservationRecord {
  id: string;
  spawnId: string;
  /** Instance id of the holder; '' when the request named none. */
  holder: string;
  slots: readonly SlotKey[];
  createdAt: number;
  /** When the lease lapses unless renewed (store clock, ms); null = no lease. */
  leaseExpiresAt: number | null;
  meta: Readonly<Record<string, string>>;
  /** The tree's counts just after this reservation took its share (reserve only; absent without a tree). */
  tree?: TreeUsage;
}

export interface TreeUsage {
  root: string;
  /** Spawns the tree has made while its counts were kept, this one included. */
  spawns: number;
  /** Worker-seconds used by ended spawns plus the TTLs held by live ones. */
  workerSeconds: number;
}

export type ReserveRejection =
  /** `waitingAhead`: the slot may be free, but is held for that many waiters queued ahead of this request. */
  | { ok: false; kind: 'concurrency'; code: `concurrency_limit_${ConcurrencyScope}`; scope: ConcurrencyScope; key: string; max: number; active: number; waitingAhead?: number }
  | { ok: false; kind: 'rate'; code: `rate_limit_${RateScope}`; scope: RateScope; key: string; perMinute: number; burst: number; retryAfterMs: number }
  /** `used` and `max` in spawns, or in worker-seconds (`needed`: the TTL this spawn would hold). */
  | { ok: false; kind: 'tree'; code: 'tree_spawns_exhausted' | 'tree_worker_seconds_exhausted'; root: string; max: number; used: number; needed: number };

export type ReserveOutcome = { ok: true; record: ReservationRecord } | ReserveRejection;

/**
 * Enforces what the policy decided. `reserve` checks every cap and bucket and takes every slot and
 * token in one atomic step, or takes nothing. `release` frees a reservation exactly once.
 */
export interface ReservationStore {
  readonly kind: string;
  reserve(request: ReservationRequest): Promise<ReserveOutcome>;
  /** The same checks as reserve, taking nothing (dry run for `admit`). */
  check(request: Omit<ReservationRequest, 'spawnId'>): Promise<{ ok: true } | ReserveRejection>;
  /** true when this call freed the reservation; false for an unknown, already-released or lapsed id (a logged no-op). */
  release(reservationId: string): Promise<boolean>;
  /**
   * Extends the leases of these reservations to now + leaseMs on the store's clock. Answers the ids
   * still held: an id missing from the answer was released or its lease lapsed, and its slots may
   * already belong to someone else.
   */
  renew(reservationIds: readonly string[], leaseMs: number): Promise<Set<string>>;
  /** Active slot counts, for the admission input's `usage`. Missing keys count 0. */
  counts(keys: readonly SlotKey[]): Promise<Map<SlotKey, number>>;
  /** Reservations taken in the last `windowMs` per key (e.g. user/alice), for `usage.recent`. */
  recent(keys: readonly SlotKey[], windowMs: number): Promise<Map<SlotKey, number>>;
  /** Reservations whose lease has not lapsed (lapsed ones are freed first). */
  active(): Promise<ReservationRecord[]>;
  /** Spawns waiting for a concurrency slot, shared as widely as the caps (a store without it never lets a spawn wait). */
  readonly queue?: WaitQueue;
  /** Idempotency keys of spawn requests, shared as widely as the caps (a store without it refuses keyed spawns). */
  readonly idempotency?: IdempotencyStore;
  close(): Promise<void>;
}

/** What a key holds when a spawn request claims it. */
export type IdempotencyClaim =
  /** The key is now this attempt's: run the spawn, then `complete` or `abandon`. */
  | { state: 'claimed' }
  /** Another attempt with the same request runs now (on this gateway or another). */
  | { state: 'pending'; spawnId: string }
  /** The spawn this key made: `result` as `complete` stored it. */
  | { state: 'done'; spawnId: string; result: string }
  /** The key was used for a different request. */
  | { state: 'mismatch'; spawnId: string };

/**
 * Idempotency keys of spawn requests, each check-and-set atomic. A claim is pending while its
 * spawn runs and lapses unless renewed (a gateway that dies mid-spawn does not hold the key);
 * a completed key holds its result for its window; an abandoned one is free again.
 */
export interface IdempotencyStore {
  /** Claims `key` for `spawnId` with `fingerprint` (the request's hash), pending for `pendingMs`; or says what holds it. */
  claim(key: string, fingerprint: string, spawnId: string, pendingMs: number): Promise<IdempotencyClaim>;
  /** Extends a pending claim of `spawnId`; false when it is not (any more) that pending claim. */
  renew(key: string, spawnId: string, pendingMs: number): Promise<boolean>;
  /** Stores the result of `spawnId`'s claim, kept for `windowMs`; false when the claim is not (any more) that spawn's. */
  complete(key: string, spawnId: string, result: string, windowMs: number): Promise<boolean>;
  /** Frees `spawnId`'s pending claim (the attempt made no spawn); a no-op for anything else. */
  abandon(key: string, spawnId: string): Promise<void>;
}

/** A spawn waiting for concurrency slots (WaitQueue.join). */
export interface WaitTicketRequest {
  /** 0..255, higher first. */
  priority: number;
  /** Whose spawn it is: waiters of one priority take turns by user, so one user's burst cannot starve the others. */
  user: string;
  /** The caps it waits for; it goes first only on the slots it shares with a later request, and only while it fits all of them. */
  concurrency: readonly ConcurrencyLimit[];
  /** The ticket lapses unless touched within this period (a gateway that dies leaves no waiter behind). */
  leaseMs: number;
  /** At most this many tickets wait at once; a join past it is refused. */
  maxWaiting: number;
  /** At most this many of them are one user's: one user's flood cannot fill the queue for everyone. */
  maxWaitingPerUser: number;
  /** Free-form labels listed with the waiter (spawnId, sessionKey, label). */
  meta?: Readonly<Record<string, string>>;
}

export interface WaitingTicket {
  id: string;
  /** 1 = the head of the queue. */
  position: number;
  priority: number;
  user: string;
  /** Store clock, ms. */
  since: number;
  meta: Readonly<Record<string, string>>;
}

/**
 * Spawns waiting for a concurrency slot, in one order: priority, then turns by user, then arrival.
 * A slot that frees goes to the first waiter that can use it: reserve() refuses everyone else
 * while that waiter is queued (see ReservationRequest.ticket), atomically with the caps, so a
 * waiter never loses its slot to a later request, on any gateway sharing the store.
 */
export interface WaitQueue {
  /** Queues a waiter: its ticket id and position, or why it may not wait (the queue, or the user's share of it, is full). */
  join(request: WaitTicketRequest): Promise<{ id: string; position: number } | { full: 'queue' | 'user' }>;
  /** Extends these tickets' leases to now + leaseMs and answers their positions (null: no longer waiting). */
  touch(ids: readonly string[], leaseMs: number): Promise<Map<string, number | null>>;
  /** Ends a wait without a reservation; true when the ticket was still waiting. */
  leave(id: string): Promise<boolean>;
  /** Every live waiter, head first. */
  list(): Promise<WaitingTicket[]>;
}
