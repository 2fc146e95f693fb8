/**
 * Warm pools: per profile and agent (profile `warmPool`), workers started before anyone asks, so a
 * spawn that fits one skips create and readiness and only claims it.
 *
 * A warm worker is a spawn of the pool's own: admitted by the policy (caller: channel kind "pool",
 * user "spawngate-pool"), holding its own reservation (counted against the caps the policy gives
 * that caller), created and waited for like any spawn, with a token and a hard deadline of its own
 * (maxIdleSeconds plus the longest run its profile allows). It is kept out of the sweeper's way as
 * a spawn in flight; a gateway that dies leaves its lease to lapse and the sweeper removes it.
 *
 * A spawn takes a warm worker once its own decision is known (the gate asks for the spawn id then,
 * and the worker's id becomes the spawn's): only one of the decided backend, profile and agent,
 * with the same egress, no session wishes of its own (those shape how a worker starts), and life
 * left for the spawn's whole run. The lifecycle then claims it (POST /claim: the spawn's token and
 * deadline), and the pool releases the warm worker's reservation and starts a replacement.
 *
 * Size: each pool keeps `min` ready; a spawn that finds it empty raises its target by one, up to
 * `max`; a worker idle for maxIdleSeconds is closed, and replaced only while the pool is below
 * its target, which then falls back by one toward `min`.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { Admission, Reservation } from '../admission/gate.js';
import type { SpawnRequestInput } from '../admission/request.js';
import type { AllowDecision } from '../admission/types.js';
import type { Backend, WorkerEndpoint, WorkerRef } from '../backends/types.js';
import type { ResolvedAgent, SpawngateConfig } from '../config/index.js';
import { findBackend, findProfile } from '../config/index.js';
import { WARM_STATES, safely } from '../telemetry/metrics.js';
import { inSpan, parentContext, SPAN, traceparentOf } from '../telemetry/tracing.js';
import { createWorkerClient } from '../protocol/client.js';
import { waitForWorker } from './readiness.js';
import { buildWorkerSpec } from './spec.js';

export const DEFAULT_MAX_IDLE_SECONDS = 600;
/** The pool's caller, as the policy sees it. */
export const POOL_CHANNEL_KIND = 'pool';
export const POOL_USER = 'spawngate-pool';
/** Pauses after a warm worker could not be admitted or started: doubled per failure in a row, bounded. */
const FIRST_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 60_000;
/**
 * A replacement starts this long after a claim: starting a worker (a fork, an engine or API call)
 * costs the gateway's event loop milliseconds that the claiming spawn's first turn is waiting on.
 */
export const REFILL_DELAY_MS = 100;
/**
 * How often an idle warm worker is asked whether it is still claimable (POST /claim with `probe`):
 * one that died or went bad behind the pool's back is replaced before a spawn would take it. The
 * first probe comes as soon as the worker is ready, which also runs the claim path on both sides
 * once, so the real claim finds it compiled.
 */
export const DEFAULT_PROBE_INTERVAL_MS = 10_000;
const PROBE_TIMEOUT_MS = 5000;

export interface WarmWorker {
  readonly spawnId: string;
  readonly backendName: string;
  readonly profile: string;
  readonly agentId: string;
  readonly ref: WorkerRef;
  readonly backend: Backend;
  readonly endpoint: WorkerEndpoint;
  /** The pool's token: good for one POST /claim. */
  readonly token: string;
  readonly egress: AllowDecision['egress'];
  readonly egressAllow: readonly string[];
  /** The worker's own hard end: a spawn that would outlive it does not fit. */
  readonly lifeEndsAt: Date;
  readonly reservation: Reservation;
}

export interface WarmPoolsOptions {
  admission: Admission;
  config: SpawngateConfig;
  backendFor: (name: string) => Promise<Backend>;
  agent: (agentId: string, backend: string, profile: string) => ResolvedAgent;
  owner: string;
  instanceId: string;
  gatewayEnv: Readonly<Record<string, string | undefined>>;
  /** Spawns between create and ready: the sweeper leaves these alone, as it must warm workers. */
  inflight: Set<string>;
  clock: () => Date;
  /** Default DEFAULT_PROBE_INTERVAL_MS. */
  probeIntervalMs?: number;
}

export interface WarmPoolStatus {
  backend: string;
  profile: string;
  agentId: string;
  idle: number;
  starting: number;
  target: number;
  min: number;
  max: number;
  /** Why the pool could not fill (a policy deny, a backend failure); null once it is full again. */
  lastError: string | null;
}

export interface WarmPools {
  /** True when the decided placement has a pool for this agent (the only case where take() can help). */
  has(backend: string, profile: string, agentId: string): boolean;
  /**
   * A ready worker of this placement that `fits`, taken out of the pool; null when there is none
   * (the pool then grows toward its max). Give it back with putBack, or settle it with claimed/discard.
   */
  take(backend: string, profile: string, agentId: string, fits: (w: WarmWorker) => boolean): WarmWorker | null;
  /** A taken worker whose spawn did not go ahead (denied, cancelled): ready again for the next one. */
  putBack(worker: WarmWorker): void;
  /** A taken worker now belongs to its spawn: the pool's reservation goes, and a replacement starts. */
  claimed(worker: WarmWorker): Promise<void>;
  /** A taken worker that refused its claim or died: deleted, its reservation released, replaced. */
  discard(worker: WarmWorker): Promise<void>;
  /** Whether this id is a warm worker of these pools that no spawn claimed (idle, or taken and not yet settled). */
  holds(spawnId: string): boolean;
  /** Starts filling every pool (after the gateway's start-up reconciliation). */
  start(): void;
  status(): WarmPoolStatus[];
  /** Resolves once every pool has reached its target or last failed (tests, the bench); bounded by `timeoutMs`. */
  settled(timeoutMs: number): Promise<boolean>;
  /** Stops filling and deletes every warm worker not taken. */
  close(): Promise<void>;
}

interface Pool {
  readonly backend: string;
  readonly profile: string;
  readonly agentId: string;
  readonly min: number;
  readonly max: number;
  readonly maxIdleMs: number;
  target: number;
  readonly idle: IdleEntry[];
  starting: number;
  failures: number;
  retryTimer: NodeJS.Timeout | null;
  refillTimer: NodeJS.Timeout | null;
  lastError: string | null;
}

interface IdleEntry {
  worker: WarmWorker;
  /** Closes the worker once it has been idle for maxIdleSeconds. */
  timer: NodeJS.Timeout;
  /** The next health probe; null while one is on its way. */
  probeTimer: NodeJS.Timeout | null;
  idleSince: number;
}

function idleTimersOff(entry: IdleEntry): void {
  clearTimeout(entry.timer);
  if (entry.probeTimer) clearTimeout(entry.probeTimer);
  entry.probeTimer = null;
}

function keyOf(backend: string, profile: string, agentId: string): string {
  return JSON.stringify([backend, profile, agentId]);
}

export function createWarmPools(options: WarmPoolsOptions): WarmPools {
  const { admission, config, clock, inflight } = options;
  const probeIntervalMs = options.probeIntervalMs ?? DEFAULT_PROBE_INTERVAL_MS;
  const { logger, metrics } = admission;
  const pools = new Map<string, Pool>();
  const taken = new Set<WarmWorker>();
  const settleWaiters = new Set<() => void>();
  let closed = false;
  const closing = new AbortController();
  const startingNow = new Set<Promise<void>>();

  for (const [backend, cfg] of Object.entries(config.agents.executionBackends)) {
    for (const [profile, p] of Object.entries(cfg.profiles ?? {})) {
      const spec = p.warmPool;
      if (!spec) continue;
      for (const agentId of spec.agents) {
        const max = spec.max ?? spec.min;
        pools.set(keyOf(backend, profile, agentId), {
          backend,
          profile,
          agentId,
          min: spec.min,
          max,
          maxIdleMs: (spec.maxIdleSeconds ?? DEFAULT_MAX_IDLE_SECONDS) * 1000,
          target: spec.min,
          idle: [],
          starting: 0,
          failures: 0,
          retryTimer: null,
          refillTimer: null,
          lastError: null,
        });
        safely(() => {
          for (const state of WARM_STATES) metrics.warmWorkers.set({ backend, profile, state }, 0);
        });
      }
    }
  }

  function gauge(pool: Pool): void {
    safely(() => {
      const counts = { idle: 0, starting: 0 };
      for (const p of pools.values()) {
        if (p.backend !== pool.backend || p.profile !== pool.profile) continue;
        counts.idle += p.idle.length;
        counts.starting += p.starting;
      }
      for (const state of WARM_STATES) metrics.warmWorkers.set({ backend: pool.backend, profile: pool.profile, state }, counts[state]);
    });
  }

  function isSettled(): boolean {
    return [...pools.values()].every((p) => p.starting === 0 && p.refillTimer === null && (p.idle.length >= p.target || p.retryTimer !== null));
  }

  function wakeSettled(): void {
    if (!isSettled()) return;
    for (const wake of settleWaiters) wake();
    settleWaiters.clear();
  }

  function fill(pool: Pool): void {
    while (!closed && pool.retryTimer === null && pool.idle.length + pool.starting < pool.target) {
      pool.starting++;
      gauge(pool);
      const started = startOne(pool);
      startingNow.add(started);
      void started.finally(() => startingNow.delete(started));
    }
    wakeSettled();
  }

  /** Fills the pool after `ms`, once: a timer already armed in that slot stands. */
  function fillLater(pool: Pool, slot: 'refillTimer' | 'retryTimer', ms: number): void {
    if (pool[slot] !== null || closed) return;
    const timer = setTimeout(() => {
      pool[slot] = null;
      fill(pool);
    }, ms);
    timer.unref();
    pool[slot] = timer;
  }

  function fillSoon(pool: Pool): void {
    fillLater(pool, 'refillTimer', REFILL_DELAY_MS);
  }

  function backOff(pool: Pool, why: string): void {
    pool.failures++;
    pool.lastError = why;
    fillLater(pool, 'retryTimer', Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** (pool.failures - 1)));
  }

  /** The request a warm worker is admitted with: placed explicitly, on behalf of the pool. */
  function poolRequest(pool: Pool, spawnId: string): SpawnRequestInput {
    return {
      agentId: pool.agentId,
      execution: { backend: pool.backend, profile: pool.profile },
      label: `warm pool ${pool.backend}/${pool.profile}`,
      caller: {
        // One session (and spawn tree) per warm worker: a pool is no session's fan-out.
        sessionKey: `${POOL_USER}:${pool.backend}/${pool.profile}/${pool.agentId}/${spawnId}`,
        channel: { id: `${POOL_USER}:${pool.backend}/${pool.profile}`, kind: POOL_CHANNEL_KIND, interactive: false },
        user: { id: POOL_USER, roles: [POOL_USER] },
      },
    };
  }

  async function startOne(pool: Pool): Promise<void> {
    const spawnId = randomUUID();
    let reservation: Reservation | null = null;
    let backend: Backend | null = null;
    let ref: WorkerRef | null = null;
    inflight.add(spawnId);
    try {
      await inSpan(SPAN.warmStart, parentContext(null), { 'spawngate.spawn_id': spawnId, 'spawngate.backend': pool.backend, 'spawngate.profile': pool.profile, 'spawngate.agent_id': pool.agentId }, async (span, ctx) => {
        const admitted = await admission.reserve(poolRequest(pool, spawnId), { spawnId, parent: ctx });
        if (!admitted.allowed) {
          const reasons = admitted.decision.reasons.map((r) => r.code).join(', ');
          throw new Error(`the policy denied the pool's spawn (${reasons})`);
        }
        reservation = admitted.reservation;
        const { decision } = admitted;
        if (decision.backend !== pool.backend || decision.profile !== pool.profile) {
          throw new Error(`the policy placed the pool's spawn on ${decision.backend}/${decision.profile}, not on ${pool.backend}/${pool.profile}`);
        }
        const backendConfig = findBackend(config, pool.backend);
        const profileConfig = findProfile(config, pool.backend, pool.profile);
        if (!backendConfig || !profileConfig) throw new Error(`${pool.backend}/${pool.profile} is not configured`);
        backend = await options.backendFor(pool.backend);
        const token = randomBytes(32).toString('base64url');
        // Long enough to wait idle and then serve the longest run the profile grants a spawn.
        const longestRun = profileConfig.timeoutSeconds ?? profileConfig.ttlSeconds ?? decision.ttlSeconds;
        const lifeSeconds = Math.ceil(pool.maxIdleMs / 1000) + longestRun;
        const spec = buildWorkerSpec({
          spawnId,
          owner: options.owner,
          instanceId: options.instanceId,
          decision: { ...decision, ttlSeconds: lifeSeconds },
          decisionId: admitted.decisionId,
          backend: backendConfig,
          profile: profileConfig,
          agentId: pool.agentId,
          agent: options.agent(pool.agentId, pool.backend, pool.profile),
          token,
          now: clock(),
          traceparent: traceparentOf(span),
          gatewayEnv: options.gatewayEnv,
        });
        const claimable = { ...spec, env: { ...spec.env, SPAWNGATE_CLAIMABLE: '1' }, timeoutSeconds: lifeSeconds };
        const chosen: Backend = backend;
        await chosen.validate(claimable);
        const created = await chosen.create(claimable);
        ref = created;
        const lost = admitted.reservation.lost;
        const endpoint = await waitForWorker({ backend: chosen, ref: created, token, timeoutMs: Math.min(spec.timeoutSeconds, longestRun) * 1000, signal: AbortSignal.any([lost, closing.signal]) });
        const worker: WarmWorker = {
          spawnId,
          backendName: pool.backend,
          profile: pool.profile,
          agentId: pool.agentId,
          ref: created,
          backend: chosen,
          endpoint,
          token,
          egress: decision.egress,
          egressAllow: claimable.egressAllow,
          lifeEndsAt: claimable.expiresAt,
          reservation: admitted.reservation,
        };
        if (closed) throw new Error('the pools closed while the worker started');
        pool.failures = 0;
        enqueue(pool, worker);
        // The reason the pool is short stays readable until it is short no more.
        if (pool.idle.length >= pool.target) pool.lastError = null;
        // A warm worker whose slots are gone (the store lost its lease) must not be handed out.
        lost.addEventListener('abort', () => void retire(pool, worker, 'its reservation lapsed'), { once: true });
      });
    } catch (err) {
      const message = (err as Error).message;
      if (!closed) logger.warn('warm pool could not start a worker; retrying later', { backend: pool.backend, profile: pool.profile, agent: pool.agentId, error: message });
      const made = ref as WorkerRef | null;
      const on = backend as Backend | null;
      if (made && on) await on.delete(made).catch((e: unknown) => logger.error('deleting a warm worker that failed to start failed; the sweeper will retry', { spawnId, error: (e as Error).message }));
      const held = reservation as Reservation | null;
      await held?.release().catch(() => false);
      inflight.delete(spawnId);
      backOff(pool, message);
    } finally {
      pool.starting--;
      gauge(pool);
      fill(pool);
    }
  }

  function enqueue(pool: Pool, worker: WarmWorker, firstProbeMs = 0, idleSince = clock().getTime()): void {
    const left = Math.max(0, idleSince + pool.maxIdleMs - clock().getTime());
    const timer = setTimeout(() => void retire(pool, worker, 'idle too long'), left);
    timer.unref();
    const entry: IdleEntry = { worker, timer, probeTimer: null, idleSince };
    pool.idle.push(entry);
    probeLater(pool, entry, firstProbeMs);
    gauge(pool);
  }

  function probeLater(pool: Pool, entry: IdleEntry, ms: number): void {
    entry.probeTimer = setTimeout(() => {
      entry.probeTimer = null;
      void probe(pool, entry);
    }, ms);
    entry.probeTimer.unref();
  }

  /** Asks an idle worker whether it could still be claimed; one that cannot (or does not answer) is closed and replaced. */
  async function probe(pool: Pool, entry: IdleEntry): Promise<void> {
    const { worker } = entry;
    const client = createWorkerClient({ ...worker.endpoint, token: worker.token });
    const failure = await client
      .claim({ token: worker.token, probe: true }, { signal: AbortSignal.any([AbortSignal.timeout(PROBE_TIMEOUT_MS), closing.signal]) })
      .then((answer) => (answer.claimed === false ? null : 'it answered the probe as a claim'), (err: unknown) => (err as Error).message);
    // Taken by a spawn (or closed) meanwhile: no longer the pool's to judge.
    if (closed || !pool.idle.includes(entry)) return;
    if (failure === null) return probeLater(pool, entry, probeIntervalMs);
    await retire(pool, worker, `failed its health probe: ${failure}`);
  }

  /** Closes an idle worker (too long unclaimed, lost lease); replaced while the pool is under its target. */
  async function retire(pool: Pool, worker: WarmWorker, why: string): Promise<void> {
    const at = pool.idle.findIndex((e) => e.worker === worker);
    if (at < 0) return;
    const [entry] = pool.idle.splice(at, 1);
    if (entry) idleTimersOff(entry);
    if (why === 'idle too long' && pool.target > pool.min) pool.target--;
    gauge(pool);
    logger.info('warm worker closed', { spawnId: worker.spawnId, backend: pool.backend, profile: pool.profile, agent: pool.agentId, why });
    await remove(worker);
    fill(pool);
  }

  async function remove(worker: WarmWorker): Promise<void> {
    try {
      await worker.backend.delete(worker.ref);
    } catch (err) {
      logger.error('deleting a warm worker failed; the sweeper will retry once its lease lapses', { spawnId: worker.spawnId, error: (err as Error).message });
    } finally {
      inflight.delete(worker.spawnId);
      await worker.reservation.release().catch(() => false);
    }
  }

  function poolOf(worker: WarmWorker): Pool | undefined {
    return pools.get(keyOf(worker.backendName, worker.profile, worker.agentId));
  }

  return {
    has: (backend, profile, agentId) => pools.has(keyOf(backend, profile, agentId)),

    take(backend, profile, agentId, fits) {
      const pool = pools.get(keyOf(backend, profile, agentId));
      if (!pool || closed) return null;
      const at = pool.idle.findIndex((e) => fits(e.worker));
      const entry = at < 0 ? undefined : pool.idle.splice(at, 1)[0];
      if (!entry) {
        safely(() => metrics.warmClaims.inc({ backend, profile, outcome: pool.idle.length ? 'unfit' : 'empty' }));
        // Demand met an empty pool: keep one more ready from now on, up to max.
        if (!pool.idle.length && pool.target < pool.max) pool.target++;
        fillSoon(pool);
        return null;
      }
      idleTimersOff(entry);
      taken.add(entry.worker);
      gauge(pool);
      return entry.worker;
    },

    putBack(worker) {
      const pool = poolOf(worker);
      if (!taken.delete(worker)) return;
      if (!pool || closed) {
        void remove(worker);
        return;
      }
      enqueue(pool, worker, probeIntervalMs);
    },

    async claimed(worker) {
      const pool = poolOf(worker);
      if (!taken.delete(worker)) return;
      safely(() => metrics.warmClaims.inc({ backend: worker.backendName, profile: worker.profile, outcome: 'claimed' }));
      // The spawn's own reservation counts this worker now; the pool's goes.
      await worker.reservation.release().catch((err: unknown) => logger.warn('releasing a claimed warm worker\'s pool reservation failed; its lease lapses', { spawnId: worker.spawnId, error: (err as Error).message }));
      if (pool) fillSoon(pool);
    },

    async discard(worker) {
      const pool = poolOf(worker);
      if (!taken.delete(worker)) return;
      safely(() => metrics.warmClaims.inc({ backend: worker.backendName, profile: worker.profile, outcome: 'failed' }));
      await remove(worker);
      if (pool) fill(pool);
    },

    start() {
      for (const pool of pools.values()) fill(pool);
    },

    holds(spawnId) {
      for (const worker of taken) if (worker.spawnId === spawnId) return true;
      return [...pools.values()].some((p) => p.idle.some((e) => e.worker.spawnId === spawnId));
    },

    status: () =>
      [...pools.values()].map((p) => ({ backend: p.backend, profile: p.profile, agentId: p.agentId, idle: p.idle.length, starting: p.starting, target: p.target, min: p.min, max: p.max, lastError: p.lastError })),

    settled(timeoutMs) {
      if (isSettled()) return Promise.resolve(true);
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          settleWaiters.delete(wake);
          resolve(false);
        }, timeoutMs);
        const wake = (): void => {
          clearTimeout(timer);
          resolve(true);
        };
        settleWaiters.add(wake);
      });
    },

    async close() {
      closed = true;
      closing.abort(new Error('the warm pools closed'));
      // A worker on its way is deleted by its own start once it sees the pools closed.
      await Promise.all([...startingNow]);
      const gone: Promise<void>[] = [];
      for (const pool of pools.values()) {
        if (pool.retryTimer) clearTimeout(pool.retryTimer);
        pool.retryTimer = null;
        if (pool.refillTimer) clearTimeout(pool.refillTimer);
        pool.refillTimer = null;
        for (const entry of pool.idle.splice(0)) {
          idleTimersOff(entry);
          gone.push(remove(entry.worker));
        }
        gauge(pool);
      }
      await Promise.all(gone);
      for (const wake of settleWaiters) wake();
      settleWaiters.clear();
    },
  };
}

/** Whether a pool exists anywhere in the config (no pool module work otherwise). */
export function hasWarmPools(config: SpawngateConfig): boolean {
  return Object.values(config.agents.executionBackends).some((b) => Object.values(b.profiles ?? {}).some((p) => p.warmPool !== undefined && p.warmPool.min + (p.warmPool.max ?? 0) > 0));
}
