import { randomBytes, randomUUID } from 'node:crypto';
import type { Context, Span } from '@opentelemetry/api';
import type { Admission, Reservation } from '../admission/gate.js';
import type { SpawnRequestInput } from '../admission/request.js';
import type { AllowDecision } from '../admission/types.js';
import type { BackendResolver } from '../backends/registry.js';
import type { ReservationRecord } from '../admission/store/types.js';
import type { Backend, ListedWorker, WorkerEndpoint, WorkerRef, WorkerStatus } from '../backends/types.js';
import { LABELS } from '../backends/types.js';
import { createWorkerClient } from '../protocol/client.js';
import { findBackend, findProfile } from '../config/index.js';
import { AdmissionDeniedError, BackendError, isSpawngateError, SpawngateError } from '../errors.js';
import { safely } from '../telemetry/metrics.js';
import { endSpan, inSpan, parentContext, recordError, setAttributes, SPAN, startSpan, traceparentOf } from '../telemetry/tracing.js';
import type { WorkerEvent, WorkerStatusReport } from '../protocol/events.js';
import { buildWorkerSpec, labelValue } from './spec.js';
import { waitForWorker } from './readiness.js';

export type SpawnProgress =
  | { stage: 'admission' }
  | { stage: 'admitted'; backend: string; profile: string; egress: string; ttlSeconds: number }
  | { stage: 'creating'; backend: string; profile: string }
  | { stage: 'created'; nativeId: string }
  | { stage: 'ready'; nativeId: string; readyMs: number };

export interface SpawnOptions {
  signal?: AbortSignal;
  onProgress?: (progress: SpawnProgress) => void;
  parent?: Context;
}

export type CloseReason = 'closed' | 'expired' | 'failed' | 'orphaned' | 'shutdown' | 'lease_lost';

export interface SpawnStatus {
  spawnId: string;
  /** live: tracked by this gateway; closed: closed by it; untracked: found on a backend only (another gateway, or before a restart). */
  tracking: 'live' | 'closed' | 'untracked';
  backend: string;
  profile: string | null;
  agentId: string | null;
  nativeId: string;
  expiresAt: string | null;
  closeReason: CloseReason | null;
  backendStatus: WorkerStatus;
  /** The worker's own /status, when it answers. */
  worker: WorkerStatusReport | null;
}

export interface WorkerHandle {
  readonly spawnId: string;
  readonly backend: string;
  readonly profile: string;
  readonly agentId: string;
  readonly nativeId: string;
  readonly decision: AllowDecision;
  readonly endpoint: WorkerEndpoint;
  readonly expiresAt: Date;
  turn(message: string, options?: { turnId?: string; signal?: AbortSignal }): AsyncIterable<WorkerEvent>;
  cancel(): Promise<void>;
  status(): Promise<SpawnStatus>;
  logs(tail?: number): Promise<string[]>;
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export interface SweepEntry {
  spawnId: string;
  backend: string;
  nativeId: string;
  reason: 'expired' | 'orphaned' | 'exited' | 'lease_lost';
  deleted: boolean;
  error?: string;
}

/** A lease this instance held with no worker behind it, released by the reconciler. */
export interface ReleasedLease {
  reservationId: string;
  spawnId: string;
  released: boolean;
  error?: string;
}

export interface SweepReport {
  dryRun: boolean;
  removed: SweepEntry[];
  /** Leases released because no worker and no caller stood behind them. */
  releasedLeases: ReleasedLease[];
  kept: number;
  errors: { backend: string; error: string }[];
}

export interface ListedSpawn {
  spawnId: string;
  backend: string;
  profile: string | null;
  agentId: string | null;
  nativeId: string;
  phase: string;
  expiresAt: string | null;
  owner: string | null;
  tracked: boolean;
}

export interface LifecycleOptions {
  admission: Admission;
  resolveBackend: BackendResolver;
  /** The owner group on worker labels: the sweeper looks for orphans among this group's workers only. */
  owner: string;
  /** This gateway process; recorded on the workers it creates (a worker's liveness is its lease, not this label). */
  instanceId: string;
  /** ACP agent argv for an agent id; null = the worker's built-in agent of that id. */
  agentCommand: (agentId: string) => readonly string[] | null;
  /** Periodic sweep; 0 or null disables it. */
  sweepIntervalMs?: number | null;
  clock?: () => Date;
}

export interface Lifecycle {
  spawn(request: SpawnRequestInput, options?: SpawnOptions): Promise<WorkerHandle>;
  get(spawnId: string): WorkerHandle | undefined;
  turn(spawnId: string, message: string, options?: { turnId?: string; signal?: AbortSignal }): AsyncIterable<WorkerEvent>;
  cancel(spawnId: string): Promise<void>;
  status(spawnId: string): Promise<SpawnStatus>;
  logs(spawnId: string, tail?: number): Promise<string[]>;
  close(spawnId: string): Promise<void>;
  list(options?: { allOwners?: boolean }): Promise<ListedSpawn[]>;
  sweep(options?: { dryRun?: boolean; orphans?: boolean }): Promise<SweepReport>;
  /** Stops timers; with `closeWorkers`, closes every live worker first. */
  shutdown(options?: { closeWorkers?: boolean }): Promise<void>;
}

interface Live {
  handle: WorkerHandle;
  ref: WorkerRef;
  backend: Backend;
  reservation: Reservation;
  token: string;
  spawnSpan: Context;
  ttlTimer: NodeJS.Timeout;
  closing: Promise<void> | null;
}

interface Closed {
  status: SpawnStatus;
  at: number;
  reservationId: string | null;
}

const CLOSED_KEPT = 1000;

export function createLifecycle(options: LifecycleOptions): Lifecycle {
  const { admission, resolveBackend } = options;
  const { config, metrics, logger } = admission;
  const clock = options.clock ?? (() => new Date());
  const owner = labelValue(options.owner);
  const live = new Map<string, Live>();
  // Closed spawns stay answerable (status after a crash says why) for a while, bounded.
  const closed = new Map<string, Closed>();
  // Spawns between create and ready exist on the backend but are not live yet; the sweeper must not take them for orphans.
  const inflight = new Set<string>();
  let sweepTimer: NodeJS.Timeout | null = null;
  let sweeping: Promise<void> | null = null;

  function backendFor(name: string): Promise<Backend> {
    const cfg = findBackend(config, name);
    if (!cfg) return Promise.reject(new SpawngateError('BACKEND_NOT_FOUND', `backend ${name} is not configured`));
    return resolveBackend(name, cfg);
  }

  function remember(status: SpawnStatus, reservationId: string | null = null): void {
    closed.set(status.spawnId, { status, at: Date.now(), reservationId });
    if (closed.size > CLOSED_KEPT) {
      const oldest = closed.keys().next().value;
      if (oldest !== undefined) closed.delete(oldest);
    }
  }

  async function spawn(request: SpawnRequestInput, spawnOptions: SpawnOptions = {}): Promise<WorkerHandle> {
    const progress = (p: SpawnProgress) => safely(() => spawnOptions.onProgress?.(p));
    const started = performance.now();
    const spawnId = randomUUID();
    const traceparent = (request as { traceparent?: unknown } | null)?.traceparent; // not yet validated
    const parent = spawnOptions.parent ?? parentContext(typeof traceparent === 'string' ? traceparent : null);
    return inSpan(SPAN.spawn, parent, { 'spawngate.spawn_id': spawnId }, async (span, ctx) => {
      progress({ stage: 'admission' });
      const admitted = await admission.reserve(request, { parent: ctx, spawnId });
      setAttributes(span, {
        'spawngate.agent_id': admitted.request.agentId,
        'spawngate.decision': admitted.allowed ? 'allow' : 'deny',
        'spawngate.reason': admitted.decision.reasons[0]?.code,
      });
      if (!admitted.allowed) {
        safely(() => metrics.spawns.inc({ backend: admitted.decision.backend ?? '', profile: admitted.decision.profile ?? '', outcome: 'denied' }));
        throw new AdmissionDeniedError(admitted.decision.reasons, { details: { decisionId: admitted.decisionId } });
      }
      const { decision, reservation } = admitted;
      setAttributes(span, { 'spawngate.backend': decision.backend, 'spawngate.profile': decision.profile });
      progress({ stage: 'admitted', backend: decision.backend, profile: decision.profile, egress: decision.egress, ttlSeconds: decision.ttlSeconds });
      let ref: WorkerRef | null = null;
      let backend: Backend | null = null;
      inflight.add(spawnId);
      try {
        backend = await backendFor(decision.backend);
        const backendConfig = findBackend(config, decision.backend);
        const profileConfig = findProfile(config, decision.backend, decision.profile);
        if (!backendConfig || !profileConfig) {
          throw new SpawngateError('BACKEND_NOT_FOUND', `policy chose ${decision.backend}/${decision.profile}, which the config does not define`);
        }
        const token = randomBytes(32).toString('base64url');
        const spec = buildWorkerSpec({
          spawnId,
          owner,
          instanceId: options.instanceId,
          decision,
          backend: backendConfig,
          profile: profileConfig,
          agentId: admitted.request.agentId,
          agentCommand: options.agentCommand(admitted.request.agentId),
          token,
          now: clock(),
          traceparent: traceparentOf(span),
        });
        progress({ stage: 'creating', backend: decision.backend, profile: decision.profile });
        const chosen = backend;
        ref = await inSpan(SPAN.backendCreate, ctx, { 'spawngate.backend': decision.backend, 'spawngate.backend_type': chosen.kind }, async (createSpan) => {
          await chosen.validate(spec);
          const created = await chosen.create(spec);
          setAttributes(createSpan, nativeAttributes(chosen.kind, created.nativeId));
          return created;
        });
        setAttributes(span, nativeAttributes(chosen.kind, ref.nativeId));
        progress({ stage: 'created', nativeId: ref.nativeId });
        const createdRef = ref;
        const endpoint = await inSpan(SPAN.backendReady, ctx, nativeAttributes(chosen.kind, createdRef.nativeId), () =>
          // A lease lost while the worker starts (store outage past the lease) ends the wait: its slots are gone.
          waitForWorker({ backend: chosen, ref: createdRef, token, timeoutMs: spec.timeoutSeconds * 1000, signal: spawnOptions.signal ? AbortSignal.any([spawnOptions.signal, reservation.lost]) : reservation.lost }),
        );
        const readyMs = performance.now() - started;
        safely(() => {
          metrics.spawnReadySeconds.observe({ backend: decision.backend, profile: decision.profile }, readyMs / 1000);
          metrics.spawns.inc({ backend: decision.backend, profile: decision.profile, outcome: 'ready' });
          metrics.activeWorkers.inc({ backend: decision.backend, profile: decision.profile });
        });
        progress({ stage: 'ready', nativeId: createdRef.nativeId, readyMs });
        const entry = track({ spawnId, ref: createdRef, backend: chosen, reservation, token, decision, endpoint, agentId: admitted.request.agentId, expiresAt: spec.expiresAt, spawnSpan: ctx });
        return entry.handle;
      } catch (err) {
        // Whatever was created is removed and the slots go back, exactly once, before the error surfaces.
        let reason = isSpawngateError(err) ? ((err.details.reason as string | undefined) ?? err.code) : 'Error';
        if (ref && backend) {
          const failedRef = ref;
          const status = await backend.status(failedRef).catch(() => null);
          if (status?.reason) reason = status.reason;
          await backend.delete(failedRef).catch((e: unknown) => logger.error('cleanup after failed spawn did not delete the worker; the sweeper will retry', { spawnId, error: (e as Error).message }));
          if (status) remember({ ...baseStatus(spawnId, decision.backend, decision.profile, admitted.request.agentId, failedRef.nativeId, null), closeReason: 'failed', backendStatus: status });
        }
        await releaseQuietly(reservation, spawnId);
        safely(() => {
          metrics.spawns.inc({ backend: decision.backend, profile: decision.profile, outcome: 'failed' });
          metrics.workerFailures.inc({ backend: decision.backend, reason });
        });
        if (isSpawngateError(err)) throw err;
        throw new BackendError('BACKEND_FAILED', `spawn on ${decision.backend} failed: ${(err as Error).message}`, { cause: err, details: { reason } });
      } finally {
        inflight.delete(spawnId);
      }
    });
  }

  /**
   * The worker is gone either way; a store that cannot take the release right now (connection
   * reset) gets it again on each lease heartbeat, and the lease is no longer renewed, so the slots
   * come back within one lease at the latest. A retried close() retries it at once.
   */
  async function releaseQuietly(reservation: Reservation, spawnId: string): Promise<void> {
    try {
      await reservation.release();
    } catch (err) {
      logger.warn('releasing the reservation failed; retried on the next lease heartbeat, and its lease lapses meanwhile', {
        spawnId,
        reservationId: reservation.id,
        error: (err as Error).message,
      });
    }
  }

  function baseStatus(spawnId: string, backend: string, profile: string | null, agentId: string | null, nativeId: string, expiresAt: Date | null): Omit<SpawnStatus, 'backendStatus' | 'closeReason'> {
    return { spawnId, tracking: 'closed', backend, profile, agentId, nativeId, expiresAt: expiresAt?.toISOString() ?? null, worker: null };
  }

  function track(args: {
    spawnId: string;
    ref: WorkerRef;
    backend: Backend;
    reservation: Reservation;
    token: string;
    decision: AllowDecision;
    endpoint: WorkerEndpoint;
    agentId: string;
    expiresAt: Date;
    spawnSpan: Context;
  }): Live {
    const { spawnId, ref, backend, decision, endpoint, token } = args;
    const client = (traceparent?: string | null) => createWorkerClient({ ...endpoint, token, ...(traceparent ? { traceparent } : {}) });
    const ttlMs = Math.max(0, args.expiresAt.getTime() - clock().getTime());
    // setTimeout caps at 2^31-1 ms (~24.8 days); the sweeper handles anything longer.
    const ttlTimer = setTimeout(() => void closeSpawn(spawnId, 'expired'), Math.min(ttlMs, 2 ** 31 - 1));
    ttlTimer.unref();
    const handle: WorkerHandle = {
      spawnId,
      backend: decision.backend,
      profile: decision.profile,
      agentId: args.agentId,
      nativeId: ref.nativeId,
      decision,
      endpoint,
      expiresAt: args.expiresAt,
      turn: (message, turnOptions) => runTurn(spawnId, message, turnOptions),
      cancel: () => client().cancel().then(() => undefined),
      status: () => statusOf(spawnId),
      logs: (tail) => logsOf(spawnId, tail),
      close: () => closeSpawn(spawnId, 'closed'),
      [Symbol.asyncDispose]: () => closeSpawn(spawnId, 'closed'),
    };
    const entry: Live = { handle, ref, backend, reservation: args.reservation, token, spawnSpan: args.spawnSpan, ttlTimer, closing: null };
    live.set(spawnId, entry);
    // Its slots were freed under it (the store lost the lease): keeping it would run past the caps.
    const onLost = () => void closeSpawn(spawnId, 'lease_lost');
    if (args.reservation.lost.aborted) onLost();
    else args.reservation.lost.addEventListener('abort', onLost, { once: true });
    return entry;
  }

  async function* runTurn(spawnId: string, message: string, turnOptions: { turnId?: string; signal?: AbortSignal } = {}): AsyncGenerator<WorkerEvent> {
    const entry = live.get(spawnId);
    if (!entry) throw new SpawngateError('SPAWN_NOT_FOUND', `no live worker ${spawnId}`);
    const span: Span = startSpan(SPAN.turn, entry.spawnSpan);
    setAttributes(span, {
      'spawngate.spawn_id': spawnId,
      'spawngate.backend': entry.handle.backend,
      'spawngate.profile': entry.handle.profile,
      'spawngate.agent_id': entry.handle.agentId,
      ...nativeAttributes(entry.backend.kind, entry.ref.nativeId),
    });
    let outcome = 'failed';
    let crashed = false;
    try {
      const client = createWorkerClient({ ...entry.handle.endpoint, token: entry.token, traceparent: traceparentOf(span) ?? undefined });
      for await (const event of client.turn(message, { ...(turnOptions.turnId ? { turnId: turnOptions.turnId } : {}), ...(turnOptions.signal ? { signal: turnOptions.signal } : {}) })) {
        if (event.type === 'turn.completed') outcome = 'completed';
        else if (event.type === 'turn.cancelled') outcome = 'cancelled';
        else if (event.type === 'turn.failed') {
          outcome = 'failed';
          crashed = event.error.code === 'agent_exited' || event.error.code === 'agent_unavailable';
          setAttributes(span, { 'spawngate.reason': event.error.code });
        }
        yield event;
      }
    } catch (err) {
      recordError(span, err);
      // A stream that breaks off usually means the worker died under us; the status check below decides.
      // A busy worker (409) or the caller's own abort says nothing about the worker's health.
      const code = (err as { code?: unknown }).code;
      crashed = !turnOptions.signal?.aborted && code !== 'WORKER_BUSY' && code !== 'WORKER_UNAUTHORIZED';
      throw err;
    } finally {
      setAttributes(span, { 'spawngate.turn_outcome': outcome });
      endSpan(span);
      safely(() => metrics.turns.inc({ backend: entry.handle.backend, outcome }));
      if (crashed) await reapIfDead(spawnId);
    }
  }

  /** A worker whose agent died exits on its own; close it so its slots are freed and status keeps the reason. */
  async function reapIfDead(spawnId: string): Promise<void> {
    const entry = live.get(spawnId);
    if (!entry) return;
    // The worker exits shortly after its agent does; give it a bounded moment before judging.
    for (let i = 0; i < 40; i++) {
      const status = await entry.backend.status(entry.ref).catch(() => null);
      if (status && (status.phase === 'failed' || status.phase === 'gone' || status.phase === 'succeeded')) {
        safely(() => metrics.workerFailures.inc({ backend: entry.handle.backend, reason: status.reason ?? 'Unknown' }));
        await closeSpawn(spawnId, 'failed', status);
        return;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  function closeSpawn(spawnId: string, reason: CloseReason, knownStatus?: WorkerStatus): Promise<void> {
    const entry = live.get(spawnId);
    if (!entry) {
      const done = closed.get(spawnId);
      if (done) {
        // A retried close after a store outage: try the release that could not be taken then.
        const id = done.reservationId;
        if (id !== null && admission.leases.pendingRelease(id)) return admission.leases.release(id).then(() => undefined);
        return Promise.resolve();
      }
      return closeUntracked(spawnId);
    }
    entry.closing ??= (async () => {
      clearTimeout(entry.ttlTimer);
      const { handle } = entry;
      await inSpan(SPAN.close, entry.spawnSpan, { 'spawngate.spawn_id': spawnId, 'spawngate.close_reason': reason }, async () => {
        const last = knownStatus ?? (await entry.backend.status(entry.ref).catch(() => null));
        try {
          await entry.backend.delete(entry.ref);
        } catch (err) {
          logger.error('worker delete failed; the sweeper will retry', { spawnId, error: (err as Error).message });
        } finally {
          live.delete(spawnId);
          remember({
            ...baseStatus(spawnId, handle.backend, handle.profile, handle.agentId, handle.nativeId, handle.expiresAt),
            closeReason: reason,
            backendStatus: last ?? { nativeId: handle.nativeId, phase: 'gone', ready: false, reason: null, message: null, exitCode: null, attributes: {} },
          }, entry.reservation.id);
          await releaseQuietly(entry.reservation, spawnId);
          safely(() => metrics.activeWorkers.dec({ backend: handle.backend, profile: handle.profile }));
        }
      });
    })();
    return entry.closing;
  }

  async function findAnywhere(spawnId: string): Promise<{ backend: Backend; ref: WorkerRef; labels: Readonly<Record<string, string>>; expiresAt: Date | null } | null> {
    for (const name of Object.keys(config.agents.executionBackends)) {
      const backend = await backendFor(name).catch(() => null);
      if (!backend) continue;
      const found = await backend.list({ [LABELS.spawnId]: spawnId }).catch(() => []);
      const first = found[0];
      if (first) return { backend, ref: first.ref, labels: first.labels, expiresAt: first.expiresAt };
    }
    return null;
  }

  async function closeUntracked(spawnId: string): Promise<void> {
    const found = await findAnywhere(spawnId);
    if (!found) throw new SpawngateError('SPAWN_NOT_FOUND', `no worker ${spawnId} on any configured backend`);
    await found.backend.delete(found.ref);
  }

  async function statusOf(spawnId: string): Promise<SpawnStatus> {
    const entry = live.get(spawnId);
    if (entry) {
      const [backendStatus, worker] = await Promise.all([
        entry.backend.status(entry.ref),
        createWorkerClient({ ...entry.handle.endpoint, token: entry.token })
          .status()
          .catch(() => null),
      ]);
      const h = entry.handle;
      return { ...baseStatus(spawnId, h.backend, h.profile, h.agentId, h.nativeId, h.expiresAt), tracking: 'live', closeReason: null, backendStatus, worker };
    }
    const gone = closed.get(spawnId);
    if (gone) return gone.status;
    const found = await findAnywhere(spawnId);
    if (!found) throw new SpawngateError('SPAWN_NOT_FOUND', `no worker ${spawnId} on any configured backend`);
    return {
      ...baseStatus(spawnId, found.ref.backendName, found.labels[LABELS.profile] ?? null, found.labels[LABELS.agent] ?? null, found.ref.nativeId, found.expiresAt),
      tracking: 'untracked',
      closeReason: null,
      backendStatus: await found.backend.status(found.ref),
    };
  }

  async function logsOf(spawnId: string, tail = 200): Promise<string[]> {
    const entry = live.get(spawnId);
    if (entry) return entry.backend.logs(entry.ref, { tail });
    const found = await findAnywhere(spawnId);
    if (!found) throw new SpawngateError('SPAWN_NOT_FOUND', `no worker ${spawnId} on any configured backend`);
    return found.backend.logs(found.ref, { tail });
  }

  async function list(listOptions: { allOwners?: boolean } = {}): Promise<ListedSpawn[]> {
    const out: ListedSpawn[] = [];
    for (const name of Object.keys(config.agents.executionBackends)) {
      const backend = await backendFor(name).catch(() => null);
      if (!backend) continue;
      const selector: Record<string, string> = listOptions.allOwners ? {} : { [LABELS.owner]: owner };
      const found = await backend.list(selector).catch(() => []);
      for (const w of found) {
        if (!w.labels[LABELS.spawnId]) continue;
        out.push({
          spawnId: w.ref.spawnId,
          backend: name,
          profile: w.labels[LABELS.profile] ?? null,
          agentId: w.labels[LABELS.agent] ?? null,
          nativeId: w.ref.nativeId,
          phase: w.phase,
          expiresAt: w.expiresAt?.toISOString() ?? null,
          owner: w.labels[LABELS.owner] ?? null,
          tracked: live.has(w.ref.spawnId),
        });
      }
    }
    return out;
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
                if (tracked) await closeSpawn(spawnId, reason === 'exited' ? 'failed' : reason === 'expired' ? 'expired' : 'orphaned');
                else await backend.delete(w.ref);
                item.deleted = true;
                safely(() => metrics.sweeperDeletions.inc({ backend: name, reason }));
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
                safely(() => metrics.sweeperDeletions.inc({ backend: name, reason: 'exited' }));
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
          for (const lease of lastLeases) {
            if (lease.holder !== admission.leases.holder || held.has(lease.id) || live.has(lease.spawnId) || inflight.has(lease.spawnId)) continue;
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

  if (options.sweepIntervalMs) {
    sweepTimer = setInterval(() => {
      sweep({ orphans: true }).then(
        (r) => {
          if (r.removed.length) logger.info('sweeper removed workers', { removed: r.removed.map((e) => ({ spawnId: e.spawnId, reason: e.reason })) });
          for (const e of r.errors) logger.warn('sweeper could not list a backend', e);
        },
        (err: unknown) => logger.error('sweep failed', { error: (err as Error).message }),
      );
    }, options.sweepIntervalMs);
    sweepTimer.unref();
  }

  return {
    spawn,
    get: (spawnId) => live.get(spawnId)?.handle,
    turn: (spawnId, message, turnOptions) => runTurn(spawnId, message, turnOptions),
    async cancel(spawnId) {
      const entry = live.get(spawnId);
      if (!entry) throw new SpawngateError('SPAWN_NOT_FOUND', `no live worker ${spawnId}`);
      await entry.handle.cancel();
    },
    status: statusOf,
    logs: logsOf,
    close: (spawnId) => closeSpawn(spawnId, 'closed'),
    list,
    sweep,
    async shutdown(shutdownOptions = {}) {
      if (sweepTimer) clearInterval(sweepTimer);
      sweepTimer = null;
      if (shutdownOptions.closeWorkers) await Promise.all([...live.keys()].map((id) => closeSpawn(id, 'shutdown')));
      // Kept workers outlive this object: their labels (expires-at) and the next sweeper bound them.
      for (const entry of live.values()) clearTimeout(entry.ttlTimer);
      live.clear();
    },
  };
}

function nativeAttributes(kind: Backend['kind'], nativeId: string): Record<string, string | number> {
  switch (kind) {
    case 'process':
      return { 'process.pid': Number(nativeId) };
    case 'container':
      return { 'container.id': nativeId };
    case 'kubernetes': {
      const [namespace, pod] = nativeId.split('/');
      return { 'k8s.namespace.name': namespace ?? '', 'k8s.pod.name': pod ?? '' };
    }
  }
}

