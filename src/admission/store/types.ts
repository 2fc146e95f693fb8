import type { ConcurrencyLimit, ConcurrencyScope, RateLimit, RateScope } from '../types.js';

/** `${scope}/${key}` — the unit a concurrency slot or a rate bucket is counted under. */
export type SlotKey = string;

export function slotKey(scope: ConcurrencyScope | RateScope, key: string): SlotKey {
  return `${scope}/${key}`;
}

export interface ReservationRequest {
  spawnId: string;
  concurrency: readonly ConcurrencyLimit[];
  rate: readonly RateLimit[];
  /** Free-form labels kept with the reservation (user, channel, backend/profile) for listings and logs. */
  meta?: Readonly<Record<string, string>>;
}

export interface ReservationRecord {
  id: string;
  spawnId: string;
  slots: readonly SlotKey[];
  createdAt: number;
  meta: Readonly<Record<string, string>>;
}

export type ReserveRejection =
  | { ok: false; kind: 'concurrency'; code: `concurrency_limit_${ConcurrencyScope}`; scope: ConcurrencyScope; key: string; max: number; active: number }
  | { ok: false; kind: 'rate'; code: `rate_limit_${RateScope}`; scope: RateScope; key: string; perMinute: number; burst: number; retryAfterMs: number };

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
  /** true when this call freed the reservation; false for an unknown or already-released id (a logged no-op). */
  release(reservationId: string): Promise<boolean>;
  /** Active slot counts, for the admission input's `usage`. Missing keys count 0. */
  counts(keys: readonly SlotKey[]): Promise<Map<SlotKey, number>>;
  /** Reservations taken in the last `windowMs` per key (e.g. user/alice), for `usage.recent`. */
  recent(keys: readonly SlotKey[], windowMs: number): Promise<Map<SlotKey, number>>;
  active(): Promise<ReservationRecord[]>;
  close(): Promise<void>;
}
