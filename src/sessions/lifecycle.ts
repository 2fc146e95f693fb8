/**
 * The road of a spawn after admission, as one object: spawn (reserve → create → ready), the live
 * set, turns, close and TTL, status/logs/list of what the backends have, and the sweeper. Each part
 * lives in its own file (live-set, readiness, turns, sweeper); this file wires them and owns spawn
 * and close, the two steps that take and give back a reservation.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { Context } from '@opentelemetry/api';
import type { Reservation } from '../admission/gate.js';
import type { SpawnRequestInput } from '../admission/request.js';
import { parseSpawnRequest } from '../admission/request.js';
import type { SpawnRequest } from '../admission/request.js';
import type { AllowDecision } from '../admission/types.js';
import type { Backend, WorkerEndpoint, WorkerRef, WorkerSpec, WorkerStatus } from '../backends/types.js';
import { LABELS } from '../backends/types.js';
import { createWorkerClient } from '../protocol/client.js';
import { findBackend, findProfile } from '../config/index.js';
import { AdmissionDeniedError, BackendError, isSpawngateError, RequestError, SpawngateError } from '../errors.js';
import { pairLabels, safely } from '../telemetry/metrics.js';
import { inSpan, parentContext, setAttributes, SPAN, traceparentOf } from '../telemetry/tracing.js';
import type { Live, LiveSet } from './live-set.js';
import { createLiveSet, KEPT_LOG_LINES, nativeAttributes } from './live-set.js';
import { DEFAULT_IDEMPOTENCY_WAIT_MS, DEFAULT_IDEMPOTENCY_WINDOW_MS, idempotentSpawn } from './idempotency.js';
import type { SpawnRecord } from './idempotency.js';
import { waitForWorker } from './readiness.js';
import { acceptSession, buildWorkerSpec, DECISION_ID_LABEL, labelValue } from './spec.js';
import type { AcceptedSession } from './spec.js';
import { createWarmPools, hasWarmPools, REFILL_DELAY_MS } from './warm-pool.js';
import type { WarmPools, WarmWorker } from './warm-pool.js';
import { createSweeper } from './sweeper.js';
import { createTurns } from './turns.js';
import type { AllowedReservation, CloseReason, CollectedArchive, CollectedDiff, Lifecycle, LifecycleOptions, ListedSpawn, SpawnOptions, SpawnProgress, SpawnStatus, WorkerHandle } from './types.js';

export type * from './types.js';

export function createLifecycle(options: LifecycleOptions): Lifecycle {
  const { admission, resolveBackend } = options;
  const { config, metrics, logger } = admission;
  const clock = options.clock ?? (() => new Date());
  const owner = labelValue(options.owner);
  const liveSet: LiveSet = createLiveSet((spawnId, reason, knownStatus) => closeSpawn(spawnId, reason, knownStatus));
  const { live, closed, inflight, remember, keepLogs, keptLogs } = liveSet;
  const pools: WarmPools | null =
    options.warmPools && hasWarmPools(config)
      ? createWarmPools({ admission, config, backendFor: (name) => backendFor(name), agent: options.agent, owner, instanceId: options.instanceId, gatewayEnv: options.gatewayEnv ?? process.env, inflight, clock })
      : null;

  function backendFor(name: string): Promise<Backend> {
    const cfg = findBackend(config, name);
    if (!cfg) return Promise.reject(new SpawngateError('BACKEND_NOT_FOUND', `backend ${name} is not configured`));
    return resolveBackend(name, cfg);
  }

  async function spawn(request: SpawnRequestInput, spawnOptions: SpawnOptions = {}): Promise<WorkerHandle> {
    // Only a request that names a key is parsed here; every other one is parsed once, by admission.
    const named = !spawnOptions.reserved && (request as { idempotencyKey?: unknown } | null)?.idempotencyKey !== undefined;
    const parsed = named ? parseSpawnRequest(request) : null;
    if (!parsed?.idempotencyKey) return spawnOnce(request, spawnOptions, randomUUID());
    const store = admission.store.idempotency;
    if (!store) {
      throw new RequestError(`idempotencyKey: the ${admission.store.kind} reservation store keeps no idempotency keys`, [{ path: 'idempotencyKey', message: `not supported by the ${admission.store.kind} reservation store` }]);
    }
    const settings = config.spawngate?.idempotency;
    const spawnId = randomUUID();
    return idempotentSpawn({
      store,
      request: parsed,
      key: parsed.idempotencyKey,
      spawnId,
      pendingMs: admission.leases.leaseMs,
      windowMs: settings?.windowSeconds !== undefined ? settings.windowSeconds * 1000 : DEFAULT_IDEMPOTENCY_WINDOW_MS,
      waitMs: settings?.waitSeconds !== undefined ? settings.waitSeconds * 1000 : DEFAULT_IDEMPOTENCY_WAIT_MS,
      ...(spawnOptions.signal ? { signal: spawnOptions.signal } : {}),
      logger,
      attempt: () => spawnOnce(request, spawnOptions, spawnId),
      record: recordOf,
      replay: replayed,
      onWait: (holder) => logger.info('waiting for the spawn with the same idempotency key', { spawnId: holder }),
    });
  }

  /**
   * Whether a warm worker can be this spawn's: the spawn's own wishes would have changed how the
   * worker started (env, cwd, model, MCP servers), its egress must be the one the worker runs
   * under, and its whole run must end before the worker's own deadline.
   */
  function fitsWarm(worker: WarmWorker, decision: AllowDecision, accepted: AcceptedSession, runSeconds: number): boolean {
    if (Object.keys(accepted.env).length > 0 || accepted.mcpServers.length > 0) return false;
    if (worker.egress !== decision.egress) return false;
    const allow = decision.egress === 'proxy' ? (decision.egressAllow ?? findProfile(config, decision.backend, decision.profile)?.egressAllow ?? []) : [];
    if (allow.length !== worker.egressAllow.length || allow.some((h, i) => h !== worker.egressAllow[i])) return false;
    return clock().getTime() + runSeconds * 1000 <= worker.lifeEndsAt.getTime();
  }

  async function spawnOnce(request: SpawnRequestInput, spawnOptions: SpawnOptions, newId: string): Promise<WorkerHandle> {
    const progress = (p: SpawnProgress) => safely(() => spawnOptions.onProgress?.(p));
    const started = performance.now();
    const handed = spawnOptions.reserved;
    let spawnId = handed ? handed.reservation.spawnId : newId;
    // A warm worker taken for this spawn once its decision was known (its id becomes the spawn's).
    let warm: WarmWorker | null = null;
    let parsedRequest: SpawnRequest | null = null;
    const spawnIdFor = pools
      ? (decision: AllowDecision): string => {
          const pool = pools;
          parsedRequest ??= parseSpawnRequest(request);
          const { agentId, session } = parsedRequest;
          const profileConfig = findProfile(config, decision.backend, decision.profile);
          // What the spawn brings is the same for every candidate worker: worked out once.
          const accepted = profileConfig ? acceptSession(profileConfig.accept, session) : null;
          const runSeconds = profileConfig?.timeoutSeconds ?? decision.ttlSeconds;
          const fits = (w: WarmWorker): boolean => accepted !== null && fitsWarm(w, decision, accepted, runSeconds);
          // A wait asks again at each try (a refused try gave its worker back meanwhile, see spawnIdRefused).
          if (warm && warm.backendName === decision.backend && warm.profile === decision.profile && fits(warm)) return warm.spawnId;
          if (warm) pool.putBack(warm);
          warm = pool.has(decision.backend, decision.profile, agentId) ? pool.take(decision.backend, decision.profile, agentId, fits) : null;
          return warm?.spawnId ?? newId;
        }
      : undefined;
    const giveBack = (): void => {
      if (warm) pools?.putBack(warm);
      warm = null;
    };
    // A spawn waiting for a slot holds no warm worker: another spawn that may run now claims it.
    const spawnIdRefused = pools ? giveBack : undefined;
    const traceparent = (request as { traceparent?: unknown } | null)?.traceparent; // not yet validated
    const parent = spawnOptions.parent ?? parentContext(typeof traceparent === 'string' ? traceparent : handed ? handed.request.traceparent : null);
    return inSpan(SPAN.spawn, parent, { 'spawngate.spawn_id': spawnId }, async (span, ctx) => {
      progress({ stage: 'admission' });
      let admitted: AllowedReservation | Awaited<ReturnType<typeof admission.reserve>>;
      try {
        admitted = handed
          ? takeOver(handed, request)
          : await admission.reserve(request, {
              parent: ctx,
              spawnId,
              ...(spawnIdFor ? { spawnIdFor } : {}),
              ...(spawnIdRefused ? { spawnIdRefused } : {}),
              ...(spawnOptions.signal ? { signal: spawnOptions.signal } : {}),
              onQueued: (position) => progress({ stage: 'queued', position }),
            });
      } catch (err) {
        giveBack();
        throw err;
      }
      if (!admitted.allowed || admitted.reservation.spawnId !== warm?.spawnId) giveBack();
      if (admitted.allowed && admitted.reservation.spawnId !== spawnId) {
        spawnId = admitted.reservation.spawnId;
        setAttributes(span, { 'spawngate.spawn_id': spawnId });
      }
      const claiming: WarmWorker | null = warm;
      let claimTried = false;
      setAttributes(span, {
        'spawngate.agent_id': admitted.request.agentId,
        'spawngate.decision': admitted.allowed ? 'allow' : 'deny',
        'spawngate.reason': admitted.decision.reasons[0]?.code,
        'spawngate.decision_id': admitted.decisionId,
      });
      if (!admitted.allowed) {
        safely(() => metrics.spawns.inc({ ...pairLabels(metrics, admitted.decision.backend, admitted.decision.profile), outcome: 'denied' }));
        throw new AdmissionDeniedError(admitted.decision.reasons, { details: { decisionId: admitted.decisionId } });
      }
      const { decision, reservation } = admitted;
      setAttributes(span, { 'spawngate.backend': decision.backend, 'spawngate.profile': decision.profile });
      progress({ stage: 'admitted', backend: decision.backend, profile: decision.profile, egress: decision.egress, ttlSeconds: decision.ttlSeconds });
      let ref: WorkerRef | null = null;
      let backend: Backend | null = null;
      inflight.add(spawnId);
      const pair = { backend: decision.backend, profile: decision.profile };
      safely(() => metrics.spawnsInFlight.inc(pair));
      try {
        backend = await backendFor(decision.backend);
        const backendConfig = findBackend(config, decision.backend);
        const profileConfig = findProfile(config, decision.backend, decision.profile);
        if (!backendConfig || !profileConfig) {
          throw new SpawngateError('BACKEND_NOT_FOUND', `policy chose ${decision.backend}/${decision.profile}, which the config does not define`);
        }
        const token = randomBytes(32).toString('base64url');
        const accepted = acceptSession(profileConfig.accept, admitted.request.session);
        if (accepted.dropped.length) logger.warn('session wishes the profile does not accept were dropped', { spawnId, profile: `${decision.backend}/${decision.profile}`, dropped: accepted.dropped });
        const spec = buildWorkerSpec({
          sessionEnv: accepted.env,
          sessionMcpServers: accepted.mcpServers,
          gatewayEnv: options.gatewayEnv ?? process.env,
          spawnId,
          owner,
          instanceId: options.instanceId,
          decision,
          decisionId: admitted.decisionId,
          backend: backendConfig,
          profile: profileConfig,
          agentId: admitted.request.agentId,
          agent: options.agent(admitted.request.agentId, decision.backend, decision.profile),
          token,
          now: clock(),
          traceparent: traceparentOf(span),
        });
        if (claiming) {
          claimTried = true;
          const endpoint = await claimWarm(claiming, spec, ctx);
          if (endpoint) {
            const readyMs = performance.now() - started;
            safely(() => {
              metrics.spawnReadySeconds.observe(pair, readyMs / 1000);
              metrics.spawns.inc({ ...pair, outcome: 'ready' });
              metrics.activeWorkers.inc(pair);
            });
            setAttributes(span, { ...nativeAttributes(claiming.backend.kind, claiming.ref.nativeId), 'spawngate.warm': true });
            progress({ stage: 'created', nativeId: claiming.ref.nativeId });
            progress({ stage: 'ready', nativeId: claiming.ref.nativeId, readyMs, warm: true });
            const entry = track({ spawnId, ref: claiming.ref, backend: claiming.backend, reservation, token, decision, decisionId: admitted.decisionId, endpoint, agentId: admitted.request.agentId, caller: admitted.input.caller, expiresAt: spec.expiresAt, spawnSpan: ctx, dropped: accepted.dropped, warm: true });
            return entry.handle;
          }
          // The warm worker is gone (deleted by discard): this spawn starts its own, under the same id.
          inflight.add(spawnId);
        }
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
          waitForWorker({
            backend: chosen,
            ref: createdRef,
            token,
            timeoutMs: spec.timeoutSeconds * 1000,
            signal: spawnOptions.signal ? AbortSignal.any([spawnOptions.signal, reservation.lost]) : reservation.lost,
            // Status calls only for someone watching: a gateway's spawns cost the backend nothing more.
            ...(spawnOptions.onProgress ? { onStatus: (s: WorkerStatus) => progress({ stage: 'waiting', nativeId: createdRef.nativeId, phase: s.phase, reason: s.reason, message: s.message }) } : {}),
          }),
        );
        const readyMs = performance.now() - started;
        safely(() => {
          metrics.spawnReadySeconds.observe({ backend: decision.backend, profile: decision.profile }, readyMs / 1000);
          metrics.spawns.inc({ backend: decision.backend, profile: decision.profile, outcome: 'ready' });
          metrics.activeWorkers.inc({ backend: decision.backend, profile: decision.profile });
        });
        progress({ stage: 'ready', nativeId: createdRef.nativeId, readyMs });
        const entry = track({ spawnId, ref: createdRef, backend: chosen, reservation, token, decision, decisionId: admitted.decisionId, endpoint, agentId: admitted.request.agentId, caller: admitted.input.caller, expiresAt: spec.expiresAt, spawnSpan: ctx, dropped: accepted.dropped });
        return entry.handle;
      } catch (err) {
        // Whatever was created is removed and the slots go back, exactly once, before the error surfaces.
        if (claiming && !claimTried) await pools?.discard(claiming);
        let reason = isSpawngateError(err) ? ((err.details.reason as string | undefined) ?? err.code) : 'Error';
        if (ref && backend) {
          const failedRef = ref;
          const status = await backend.status(failedRef).catch(() => null);
          if (status?.reason) reason = status.reason;
          const lines = await backend.logs(failedRef, { tail: KEPT_LOG_LINES }).catch(() => null);
          if (lines?.length) keepLogs(spawnId, lines);
          await backend.delete(failedRef).catch((e: unknown) => logger.error('cleanup after failed spawn did not delete the worker; the sweeper will retry', { spawnId, error: (e as Error).message }));
          if (status) remember({ ...baseStatus(spawnId, decision.backend, decision.profile, admitted.request.agentId, failedRef.nativeId, null), closeReason: 'failed', backendStatus: status });
        }
        await releaseQuietly(reservation, spawnId);
        safely(() => {
          metrics.spawns.inc({ backend: decision.backend, profile: decision.profile, outcome: 'failed' });
          metrics.workerFailures.inc({ backend: decision.backend, profile: decision.profile, reason });
        });
        if (isSpawngateError(err)) throw err;
        throw new BackendError('BACKEND_FAILED', `spawn on ${decision.backend} failed: ${(err as Error).message}`, { cause: err, details: { reason } });
      } finally {
        inflight.delete(spawnId);
        safely(() => metrics.spawnsInFlight.dec(pair));
      }
    });
  }

  /**
   * Makes a warm worker this spawn's: the spawn's token and deadline (POST /claim), then, without
   * holding the spawn up, the spawn's labels on the backend and the pool's reservation released.
   * Null when the worker refused or did not answer: it is deleted, and the spawn starts cold.
   */
  async function claimWarm(worker: WarmWorker, spec: WorkerSpec, ctx: Context): Promise<WorkerEndpoint | null> {
    const pool = pools as WarmPools;
    const deadline = new Date(Math.min(worker.lifeEndsAt.getTime(), Date.now() + spec.timeoutSeconds * 1000));
    try {
      await inSpan(SPAN.warmClaim, ctx, nativeAttributes(worker.backend.kind, worker.ref.nativeId), (span) => {
        const traceparent = traceparentOf(span);
        return createWorkerClient({ ...worker.endpoint, token: worker.token, ...(traceparent ? { traceparent } : {}) })
          .claim({ token: spec.token, deadline: Math.floor(deadline.getTime() / 1000) })
          .then((answer) => {
            if (answer.claimed !== true) throw new Error(`the worker answered the claim with claimed: ${JSON.stringify(answer.claimed)}`);
          });
      });
    } catch (err) {
      logger.warn('a warm worker refused its claim; the spawn starts its own worker', { spawnId: worker.spawnId, error: (err as Error).message });
      await pool.discard(worker);
      return null;
    }
    const labels = { [LABELS.expiresAt]: spec.labels[LABELS.expiresAt] ?? '', ...(spec.labels[DECISION_ID_LABEL] ? { [DECISION_ID_LABEL]: spec.labels[DECISION_ID_LABEL] } : {}) };
    // After the spawn's first turn had its start: an API call or a file write costs this event loop (and, for a
    // cluster on this host, its API server) time that turn would wait for. The worker holds its deadline meanwhile.
    const record = setTimeout(() => {
      if (!live.has(worker.spawnId)) return;
      void worker.backend.claimed?.(worker.ref, { labels, deadline, token: spec.token }).catch((err: unknown) =>
        logger.warn('the backend did not take a claimed warm worker\'s labels; its pool labels stay (a later expiry, which the worker\'s own deadline precedes)', { spawnId: worker.spawnId, error: (err as Error).message }),
      );
    }, REFILL_DELAY_MS);
    record.unref();
    void pool.claimed(worker);
    return worker.endpoint;
  }

  function recordOf(handle: WorkerHandle): SpawnRecord {
    const { spawnId, decisionId, agentId, backend, profile, nativeId, decision, endpoint, dropped, tree } = handle;
    return { spawnId, decisionId, agentId, backend, profile, nativeId, decision, endpoint, dropped, expiresAt: handle.expiresAt.toISOString(), ...(tree ? { tree } : {}) };
  }

  /**
   * The spawn a key made, for a retry: its live handle when this gate runs it; else a handle on
   * what was recorded, whose status, logs and close reach the worker through its backend wherever
   * it runs, and whose turns only the gate that runs it can take (it alone holds the token).
   */
  function replayed(record: SpawnRecord): WorkerHandle {
    const entry = live.get(record.spawnId);
    if (entry) return { ...entry.handle, replayed: true };
    const { spawnId } = record;
    return {
      ...record,
      expiresAt: new Date(record.expiresAt),
      replayed: true,
      turn: (message, turnOptions) => runTurn(spawnId, message, turnOptions),
      cancel: () => cancelSpawn(spawnId),
      status: () => statusOf(spawnId),
      logs: (tail) => logsOf(spawnId, tail),
      close: () => closeSpawn(spawnId, 'closed'),
      [Symbol.asyncDispose]: () => closeSpawn(spawnId, 'closed'),
    };
  }

  async function cancelSpawn(spawnId: string): Promise<void> {
    const entry = live.get(spawnId);
    if (!entry) throw new SpawngateError('SPAWN_NOT_FOUND', `no live worker ${spawnId}`);
    await entry.handle.cancel();
  }

  /**
   * A reservation handed over from `reserve()`: the spawn runs on its decision, never on a second
   * one. Its session wishes may be given now (they come after admission in ACP's ensureSession).
   */
  function takeOver(handed: AllowedReservation, request: SpawnRequestInput): AllowedReservation {
    if (!handed.allowed || !handed.reservation) throw new SpawngateError('REQUEST_INVALID', 'reserved: only an allowed reservation can be handed to spawn()');
    const parsed = parseSpawnRequest(request);
    if (parsed.agentId !== handed.request.agentId) {
      throw new SpawngateError('REQUEST_INVALID', `reserved: the reservation was admitted for agent ${handed.request.agentId}, not ${parsed.agentId}`);
    }
    if (handed.reservation.lost.aborted) throw new SpawngateError('LEASE_LOST', `reservation ${handed.reservation.id} lapsed before the spawn: its slots may be someone else's; reserve again`);
    if (!admission.leases.held().has(handed.reservation.id)) throw new SpawngateError('REQUEST_INVALID', `reservation ${handed.reservation.id} was already released or used by another spawn`);
    if (live.has(handed.reservation.spawnId) || inflight.has(handed.reservation.spawnId)) {
      throw new SpawngateError('REQUEST_INVALID', `reservation ${handed.reservation.id} is already in use by spawn ${handed.reservation.spawnId}`);
    }
    const own = handed.request.session;
    const wishes = parsed.session;
    return {
      ...handed,
      request: {
        ...handed.request,
        session: {
          cwd: wishes.cwd ?? own.cwd,
          env: { ...own.env, ...wishes.env },
          model: wishes.model ?? own.model,
          resumeSessionId: wishes.resumeSessionId ?? own.resumeSessionId,
          mcpServers: wishes.mcpServers.length ? wishes.mcpServers : own.mcpServers,
        },
      },
    };
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
    decisionId: string;
    endpoint: WorkerEndpoint;
    agentId: string;
    caller: Live['caller'];
    expiresAt: Date;
    spawnSpan: Context;
    dropped: string[];
    warm?: boolean;
  }): Live {
    const { spawnId, ref, backend, decision, endpoint, token } = args;
    const client = (traceparent?: string | null) => createWorkerClient({ ...endpoint, token, ...(traceparent ? { traceparent } : {}) });
    const ttlMs = Math.max(0, args.expiresAt.getTime() - clock().getTime());
    // setTimeout caps at 2^31-1 ms (~24.8 days); the sweeper handles anything longer.
    const ttlTimer = setTimeout(() => void closeSpawn(spawnId, 'expired'), Math.min(ttlMs, 2 ** 31 - 1));
    ttlTimer.unref();
    const handle: WorkerHandle = {
      spawnId,
      decisionId: args.decisionId,
      backend: decision.backend,
      profile: decision.profile,
      agentId: args.agentId,
      nativeId: ref.nativeId,
      decision,
      endpoint,
      expiresAt: args.expiresAt,
      dropped: args.dropped,
      ...(args.warm ? { warm: true } : {}),
      ...(args.reservation.record.tree ? { tree: args.reservation.record.tree } : {}),
      turn: (message, turnOptions) => runTurn(spawnId, message, turnOptions),
      cancel: () => client().cancel().then(() => undefined),
      status: () => statusOf(spawnId),
      logs: (tail) => logsOf(spawnId, tail),
      close: () => closeSpawn(spawnId, 'closed'),
      [Symbol.asyncDispose]: () => closeSpawn(spawnId, 'closed'),
    };
    const entry: Live = { handle, ref, backend, reservation: args.reservation, token, caller: args.caller, spawnSpan: args.spawnSpan, ttlTimer, closing: null };
    live.set(spawnId, entry);
    // Its slots were freed under it (the store lost the lease): keeping it would run past the caps.
    const onLost = () => void closeSpawn(spawnId, 'lease_lost');
    if (args.reservation.lost.aborted) onLost();
    else args.reservation.lost.addEventListener('abort', onLost, { once: true });
    return entry;
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
        // Counted here, where each worker closes once, whoever found the death (a turn, the sweeper).
        if (reason === 'failed') safely(() => metrics.workerFailures.inc({ backend: handle.backend, profile: handle.profile, reason: last?.reason ?? 'Unknown' }));
        // A worker that ended badly is debugged after the fact: its last lines outlive it.
        if (reason !== 'closed' && reason !== 'shutdown') {
          const lines = await entry.backend.logs(entry.ref, { tail: KEPT_LOG_LINES }).catch(() => null);
          if (lines?.length) keepLogs(spawnId, lines);
        }
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
    if (found) return found.backend.logs(found.ref, { tail });
    const kept = keptLogs(spawnId);
    if (kept) return kept.slice(-tail);
    throw new SpawngateError('SPAWN_NOT_FOUND', `no worker ${spawnId} on any configured backend`);
  }

  function collect(spawnId: string, options: { format: 'diff' }): Promise<CollectedDiff>;
  function collect(spawnId: string, options: { format: 'archive'; git?: boolean }): Promise<CollectedArchive>;
  async function collect(spawnId: string, options: { format: 'diff' } | { format: 'archive'; git?: boolean }): Promise<CollectedDiff | CollectedArchive> {
    const entry = live.get(spawnId);
    // Only the gate that runs a worker holds its token: another replica cannot read its workspace.
    if (!entry) throw new SpawngateError('SPAWN_NOT_FOUND', `worker ${spawnId} is not run by this gate (it is closed, or another gateway runs it)`);
    const client = createWorkerClient({ ...entry.handle.endpoint, token: entry.token });
    if (options.format === 'diff') return { format: 'diff', ...(await client.workspaceDiff()) };
    return { format: 'archive', stream: await client.workspaceArchive({ git: options.git === true }) };
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
          ...(pools?.holds(w.ref.spawnId) ? { warm: true } : {}),
        });
      }
    }
    return out;
  }


  const { runTurn } = createTurns(liveSet, metrics, (input) => admission.decidePermission(input));
  const sweeper = createSweeper({ admission, config, owner, liveSet, backendFor, clock });
  if (options.sweepIntervalMs) sweeper.start(options.sweepIntervalMs);

  return {
    spawn,
    get: (spawnId) => live.get(spawnId)?.handle,
    turn: (spawnId, message, turnOptions) => runTurn(spawnId, message, turnOptions),
    cancel: cancelSpawn,
    status: statusOf,
    logs: logsOf,
    collect,
    close: (spawnId) => closeSpawn(spawnId, 'closed'),
    list,
    sweep: sweeper.sweep,
    startWarmPools: () => pools?.start(),
    warmPools: () => pools?.status() ?? [],
    warmPoolsSettled: (timeoutMs) => pools?.settled(timeoutMs) ?? Promise.resolve(true),
    async shutdown(shutdownOptions = {}) {
      sweeper.stop();
      // Warm workers belong to nobody: they never outlive the gateway that keeps them.
      await pools?.close();
      if (shutdownOptions.closeWorkers) await Promise.all([...live.keys()].map((id) => closeSpawn(id, 'shutdown')));
      // Kept workers outlive this object: their labels (expires-at) and the next sweeper bound them.
      for (const entry of live.values()) clearTimeout(entry.ttlTimer);
      live.clear();
    },
  };
}
