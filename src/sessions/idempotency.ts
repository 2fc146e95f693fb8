/**
 * Idempotent spawns: a request with an `idempotencyKey` makes at most one worker per key within the
 * key's window, on every gateway that shares the store. A retry after a lost reply gets the spawn
 * the first attempt made (same id, same decision); a retry while the first attempt still runs waits
 * for it; the same key on a different request is refused. Only a spawn that became ready binds a
 * key: a denied or failed attempt created nothing, so its retry is decided afresh (a cap may have
 * freed up meanwhile).
 *
 * Keys are scoped by the caller's user: one user's key never finds another user's spawn.
 */
import { createHash } from 'node:crypto';
import type { SpawnRequest } from '../admission/request.js';
import type { IdempotencyStore } from '../admission/store/types.js';
import type { WorkerEndpoint } from '../backends/types.js';
import type { SpawnSummary } from './types.js';
import { SpawngateError } from '../errors.js';
import type { Logger } from '../log.js';

export const DEFAULT_IDEMPOTENCY_WINDOW_MS = 24 * 3600_000;
export const DEFAULT_IDEMPOTENCY_WAIT_MS = 120_000;

/** What a completed key keeps: enough to answer a retry anywhere, never the worker's token. */
export interface SpawnRecord extends SpawnSummary {
  endpoint: WorkerEndpoint;
  dropped: readonly string[];
}

/** JSON with object keys sorted at every depth: equal values, equal text. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

/** The stored key: the caller's user and the key, hashed (no caller text in store keys, bounded length). */
export function scopedKey(request: SpawnRequest, key: string): string {
  return sha256(`${request.caller.user.id}\u0000${key}`);
}

/** The request as the key binds it: everything but the trace context (a retry has a new one) and the key itself. */
export function requestFingerprint(request: SpawnRequest): string {
  // How long a caller will wait for a slot is how it asks, not what it asks for: a retry may change it.
  const { traceparent: _trace, idempotencyKey: _key, waitSeconds: _wait, ...bound } = request;
  return sha256(canonical(bound));
}

export interface IdempotentSpawnOptions<T> {
  store: IdempotencyStore;
  request: SpawnRequest;
  key: string;
  spawnId: string;
  /** A pending claim lapses after this unless renewed (renewed every third of it while the attempt runs). */
  pendingMs: number;
  windowMs: number;
  waitMs: number;
  signal?: AbortSignal;
  logger: Logger;
  /** Runs the spawn under the claim; its result is recorded with `record`. */
  attempt: () => Promise<T>;
  record: (result: T) => SpawnRecord;
  /** Answers a retry from what the key recorded. */
  replay: (record: SpawnRecord) => T;
  /** Called each time this call starts waiting behind a pending attempt. */
  onWait?: (holder: string) => void;
}

function parseRecord(text: string, spawnId: string): SpawnRecord {
  try {
    const record = JSON.parse(text) as SpawnRecord;
    // A spawn that claimed a warm worker took that worker's id: the record names it, not the attempt's.
    if (typeof record === 'object' && record !== null && typeof record.spawnId === 'string' && record.spawnId !== '') return record;
  } catch {
    // reported below
  }
  throw new SpawngateError('RESERVATION_FAILED', `the idempotency record of spawn ${spawnId} is unreadable`, { retryable: false, details: { spawnId } });
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason as Error);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export async function idempotentSpawn<T>(o: IdempotentSpawnOptions<T>): Promise<T> {
  const key = scopedKey(o.request, o.key);
  const fingerprint = requestFingerprint(o.request);
  const deadline = performance.now() + o.waitMs;
  for (let round = 0; ; round++) {
    const claim = await o.store.claim(key, fingerprint, o.spawnId, o.pendingMs);
    if (claim.state === 'claimed') return attemptUnder(o, key);
    if (claim.state === 'done') return o.replay(parseRecord(claim.result, claim.spawnId));
    if (claim.state === 'mismatch') {
      throw new SpawngateError('IDEMPOTENCY_KEY_REUSED', `idempotency key ${JSON.stringify(o.key)} was used for a different spawn request (spawn ${claim.spawnId}); send a new key for a new request`, {
        details: { idempotencyKey: o.key, spawnId: claim.spawnId },
      });
    }
    // Another attempt with this request runs now: its outcome is this call's, unless it fails (then
    // the key is free and this call tries itself) or it outlasts the wait.
    const left = deadline - performance.now();
    if (left <= 0) {
      throw new SpawngateError('IDEMPOTENCY_KEY_IN_PROGRESS', `a spawn with idempotency key ${JSON.stringify(o.key)} is still starting (spawn ${claim.spawnId}); retry with the same key`, {
        retryable: true,
        details: { idempotencyKey: o.key, spawnId: claim.spawnId, retryAfterMs: 1000 },
      });
    }
    if (round === 0) o.onWait?.(claim.spawnId);
    await sleep(Math.min(left, Math.min(50 * 2 ** round, 1000)), o.signal);
  }
}

async function attemptUnder<T>(o: IdempotentSpawnOptions<T>, key: string): Promise<T> {
  // The claim is renewed while the spawn runs, so a gateway that dies mid-spawn frees the key
  // within pendingMs; a renewal that finds the claim gone only logs: the spawn goes on, unbound.
  const renewal = setInterval(() => {
    o.store.renew(key, o.spawnId, o.pendingMs).then(
      (held) => {
        if (!held) o.logger.warn('idempotency claim lapsed while the spawn was starting; a retry may start a second worker', { spawnId: o.spawnId });
      },
      (err: unknown) => o.logger.warn('renewing an idempotency claim failed', { spawnId: o.spawnId, error: (err as Error).message }),
    );
  }, Math.max(1, Math.floor(o.pendingMs / 3)));
  renewal.unref();
  let result: T;
  try {
    result = await o.attempt();
  } catch (err) {
    clearInterval(renewal);
    await o.store.abandon(key, o.spawnId).catch((e: unknown) => o.logger.warn('freeing an idempotency key after a failed spawn failed; it lapses on its own', { spawnId: o.spawnId, error: (e as Error).message }));
    throw err;
  }
  clearInterval(renewal);
  try {
    const bound = await o.store.complete(key, o.spawnId, JSON.stringify(o.record(result)), o.windowMs);
    if (!bound) o.logger.warn('idempotency claim lapsed before the spawn was ready; the key is not bound to it', { spawnId: o.spawnId });
  } catch (err) {
    // The worker runs: failing the call now would orphan it for a caller who would retry anyway.
    o.logger.warn('recording the spawn under its idempotency key failed; a retry may start a second worker', { spawnId: o.spawnId, error: (err as Error).message });
  }
  return result;
}
