import { readFileSync } from 'node:fs';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/**
 * prom-client metrics on a registry of spawngate's own (not the process-global default one), so a
 * host application decides where they are exposed: `registry.metrics()` in its /metrics handler,
 * or spawngate's server. Names are the contract of dashboards/ and deploy/prometheus/.
 */
export interface Metrics {
  registry: Registry;
  decisions: Counter<'result' | 'reason' | 'stage' | 'backend' | 'profile' | 'mode'>;
  shadowDecisions: Counter<'difference'>;
  evaluationSeconds: Histogram;
  activeWorkers: Gauge<'backend' | 'profile'>;
  spawnsInFlight: Gauge<'backend' | 'profile'>;
  spawnsWaiting: Gauge<'backend' | 'profile'>;
  waitSeconds: Histogram<'backend' | 'profile' | 'outcome'>;
  warmWorkers: Gauge<'backend' | 'profile' | 'state'>;
  warmClaims: Counter<'backend' | 'profile' | 'outcome'>;
  spawnReadySeconds: Histogram<'backend' | 'profile'>;
  spawns: Counter<'backend' | 'profile' | 'outcome'>;
  reservationsRejected: Counter<'code' | 'backend' | 'profile'>;
  rateLimited: Counter<'scope' | 'backend' | 'profile'>;
  sweeperDeletions: Counter<'backend' | 'profile' | 'reason'>;
  workerFailures: Counter<'backend' | 'profile' | 'reason'>;
  turns: Counter<'backend' | 'profile' | 'outcome'>;
  turnSeconds: Histogram<'backend' | 'profile' | 'outcome'>;
  permissionDecisions: Counter<'backend' | 'profile' | 'outcome' | 'code'>;
  bundleReloads: Counter<'result'>;
  bundleInfo: Gauge<'revision'>;
  httpRequests: Counter<'method' | 'route' | 'code'>;
  httpRequestSeconds: Histogram<'method' | 'route'>;
  policyState: Gauge<'state'>;
  /** Read at every scrape for spawngate_policy_state (the gate sets it to its engine's health). */
  policyHealth: { read: (() => string) | null };
  /** backend/profile pairs of the config (filled by initMetrics): label values outside them are not trusted. */
  knownPairs: Set<string>;
}

export interface MetricsOptions {
  /**
   * Also collect prom-client's `process_*` and `nodejs_*` series on this registry. Off by default:
   * an embedder usually collects them on its own registry already, and two copies would clash when
   * the registries are merged. `spawngate serve` turns it on.
   */
  processMetrics?: boolean;
}

/**
 * Label values a spawngate process can produce that are known before the first event: with them
 * every series exists at zero from the first scrape, so `rate()`/`increase()` see the first event
 * of each label set instead of starting the series at 1 (which they cannot tell from its absence).
 */
export interface KnownLabels {
  backends: ReadonlyArray<{ name: string; profiles: readonly string[] }>;
}

/** The caps both the policy (from usage) and the store (atomically) deny with (docs/deny-codes.md). */
const CONCURRENCY_CODES = [
  'concurrency_limit_total',
  'concurrency_limit_backend',
  'concurrency_limit_profile',
  'concurrency_limit_user',
  'concurrency_limit_channel',
  'concurrency_limit_profile_user',
  'concurrency_limit_profile_channel',
  'concurrency_limit_parent',
] as const;

/** Deny codes the shipped policy, the engine and the gate (agent_unknown) produce at the policy stage. */
export const POLICY_DENY_CODES = [
  'agent_unknown',
  'policy_config_invalid',
  'backend_unresolved',
  'unknown_backend',
  'unknown_profile',
  'agent_not_allowed',
  'interactive_only_profile',
  'depth_exceeded',
  ...CONCURRENCY_CODES,
  'policy_unavailable',
  'policy_output_invalid',
  'policy_error',
  'policy_timeout',
] as const;

/** Codes the reservation store refuses with: the caps again, plus the rate buckets. */
export const STORE_DENY_CODES = [...CONCURRENCY_CODES, 'rate_limit_user', 'rate_limit_channel', 'tree_spawns_exhausted', 'tree_worker_seconds_exhausted'] as const;

/** How a wait for a concurrency slot ended: a slot, its time up, the caller gone, denied for another reason, or no room in the queue. */
export const WAIT_OUTCOMES = ['granted', 'timed_out', 'cancelled', 'denied', 'queue_full'] as const;

/** Warm workers of this process by state: ready and unclaimed, or on their way. */
export const WARM_STATES = ['idle', 'starting'] as const;
/**
 * What a spawn of a pooled profile and agent found: a warm worker it claimed, an empty pool, only
 * workers that did not fit it (its session wishes, egress or lifetime), or a claim the worker refused.
 */
export const WARM_CLAIM_OUTCOMES = ['claimed', 'empty', 'unfit', 'failed'] as const;

export const PERMISSION_OUTCOMES = ['allow_once', 'allow_always', 'reject'] as const;
/** Codes of the shipped permission rule and of the engine's fail-closed answers. */
export const PERMISSION_CODES = [
  'allowed',
  'path_outside_workspace',
  'path_unknown',
  'tool_kind_not_allowed',
  'permission_config_invalid',
  'permission_policy_error',
  'permission_policy_missing',
  'permission_policy_output_invalid',
  'policy_unavailable',
  'policy_error',
  'policy_timeout',
] as const;

/**
 * Failure reasons the built-in backends and the spawn path report most; a reason outside this set
 * (another backend's, a new Kubernetes one) still counts, from its first occurrence on.
 */
export const KNOWN_FAILURE_REASONS = [
  'Error',
  'OOMKilled',
  'DeadlineExceeded',
  'StartError',
  'StartTimeout',
  'ReadyTimeout',
  'WorkerExiting',
  'NotFound',
  'Unknown',
  'WorkspaceSizeExceeded',
  'Unschedulable',
  'ImagePullBackOff',
  'ErrImagePull',
  'CrashLoopBackOff',
  'ImageNotFound',
  'SecretNotFound',
  'LEASE_LOST',
  'BACKEND_FAILED',
  'BACKEND_NOT_FOUND',
  'BACKEND_UNAVAILABLE',
  'WORKSPACE_UNAVAILABLE',
] as const;

export const SPAWN_OUTCOMES = ['ready', 'denied', 'failed'] as const;
export const TURN_OUTCOMES = ['completed', 'failed', 'cancelled'] as const;
export const SWEEP_REASONS = ['expired', 'orphaned', 'exited'] as const;
export const DECISION_MODES = ['spawn', 'dry_run'] as const;
export const POLICY_STATES = ['ok', 'stale', 'erroring', 'failing', 'unavailable'] as const;

/** Seconds from 1 ms to 10 min, for things that take anything from a fast turn to a cold image pull. */
const LONG_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

export function createMetrics(registry: Registry = new Registry(), options: MetricsOptions = {}): Metrics {
  const metrics: Metrics = {
    registry,
    decisions: new Counter({
      name: 'spawngate_decisions_total',
      help: 'Admission decisions by result (allow|deny), first reason code, deciding stage (policy|reservation), backend and profile the policy chose (empty when none), and mode (spawn|dry_run for admit calls that take no slots)',
      labelNames: ['result', 'reason', 'stage', 'backend', 'profile', 'mode'],
      registers: [registry],
    }),
    evaluationSeconds: new Histogram({
      name: 'spawngate_policy_evaluation_seconds',
      help: 'In-process WASM policy evaluation latency (a first evaluation after a load, or a policy iterating a large catalog, takes tens of ms)',
      buckets: [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    shadowDecisions: new Counter({
      name: 'spawngate_shadow_decisions_total',
      help: 'Admission decisions of the shadow (candidate) bundle by how they differ from the live policy\'s: same, would_deny, would_allow, different_placement, different_terms, different_reason, failed (the candidate did not decide), dropped (too many waiting)',
      labelNames: ['difference'],
      registers: [registry],
    }),
    activeWorkers: new Gauge({ name: 'spawngate_active_workers', help: 'Workers ready and not yet closed in this process, by backend and profile', labelNames: ['backend', 'profile'], registers: [registry] }),
    spawnsInFlight: new Gauge({ name: 'spawngate_spawns_in_flight', help: 'Admitted spawns whose worker is being created or is not ready yet, by backend and profile', labelNames: ['backend', 'profile'], registers: [registry] }),
    spawnsWaiting: new Gauge({ name: 'spawngate_spawns_waiting', help: 'Spawns of this process waiting in the queue for a concurrency slot, by backend and profile', labelNames: ['backend', 'profile'], registers: [registry] }),
    waitSeconds: new Histogram({
      name: 'spawngate_spawn_wait_seconds',
      help: 'Time spawns waited in the queue for a concurrency slot, by outcome (granted|timed_out|cancelled|denied|queue_full)',
      labelNames: ['backend', 'profile', 'outcome'],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600],
      registers: [registry],
    }),
    warmWorkers: new Gauge({ name: 'spawngate_warm_workers', help: 'Warm workers of this process\'s pools, by backend, profile and state (idle|starting)', labelNames: ['backend', 'profile', 'state'], registers: [registry] }),
    warmClaims: new Counter({
      name: 'spawngate_warm_claims_total',
      help: 'Spawns of a pooled profile and agent, by what they found: claimed (a warm worker), empty, unfit (none fitted its wishes, egress or lifetime), failed (the worker refused the claim)',
      labelNames: ['backend', 'profile', 'outcome'],
      registers: [registry],
    }),
    spawnReadySeconds: new Histogram({
      name: 'spawngate_spawn_ready_seconds',
      help: 'From spawn request to a worker answering /healthz (admission included)',
      labelNames: ['backend', 'profile'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600],
      registers: [registry],
    }),
    spawns: new Counter({ name: 'spawngate_spawns_total', help: 'Spawn attempts by outcome (ready|denied|failed)', labelNames: ['backend', 'profile', 'outcome'], registers: [registry] }),
    reservationsRejected: new Counter({ name: 'spawngate_reservations_rejected_total', help: 'Reservations refused by the store, by reason code (spawns only: dry-run admits take no slots)', labelNames: ['code', 'backend', 'profile'], registers: [registry] }),
    rateLimited: new Counter({ name: 'spawngate_rate_limited_total', help: 'Spawns refused by a rate limit, by scope (user|channel)', labelNames: ['scope', 'backend', 'profile'], registers: [registry] }),
    sweeperDeletions: new Counter({ name: 'spawngate_sweeper_deletions_total', help: 'Workers deleted by the sweeper, by reason (expired|orphaned|exited); each worker once', labelNames: ['backend', 'profile', 'reason'], registers: [registry] }),
    workerFailures: new Counter({ name: 'spawngate_worker_failures_total', help: 'Workers that failed to create, to become ready, or died (found by a turn or by the sweeper), by failure reason; each worker once', labelNames: ['backend', 'profile', 'reason'], registers: [registry] }),
    turns: new Counter({ name: 'spawngate_turns_total', help: 'Turns by outcome (completed|failed|cancelled)', labelNames: ['backend', 'profile', 'outcome'], registers: [registry] }),
    turnSeconds: new Histogram({ name: 'spawngate_turn_duration_seconds', help: 'From sending a turn to its last event, by outcome', labelNames: ['backend', 'profile', 'outcome'], buckets: LONG_BUCKETS, registers: [registry] }),
    permissionDecisions: new Counter({ name: 'spawngate_permission_decisions_total', help: 'Agent permission requests decided by the permission policy, by backend, profile, outcome (allow_once|allow_always|reject) and code', labelNames: ['backend', 'profile', 'outcome', 'code'], registers: [registry] }),
    bundleReloads: new Counter({ name: 'spawngate_bundle_reloads_total', help: 'Policy bundle loads (start-up and hot reloads) by result (success|failure); after a failure the previous bundle keeps serving', labelNames: ['result'], registers: [registry] }),
    bundleInfo: new Gauge({ name: 'spawngate_policy_bundle_info', help: 'The policy bundle in force (value 1, its revision as a label); absent while no bundle is loaded', labelNames: ['revision'], registers: [registry] }),
    httpRequests: new Counter({ name: 'spawngate_http_requests_total', help: 'Requests to the spawngate serve API by method, route template and status code', labelNames: ['method', 'route', 'code'], registers: [registry] }),
    httpRequestSeconds: new Histogram({ name: 'spawngate_http_request_duration_seconds', help: 'Time to the end of the response (a turn stream included) by method and route template', labelNames: ['method', 'route'], buckets: LONG_BUCKETS, registers: [registry] }),
    knownPairs: new Set(),
    policyState: null as unknown as Gauge<'state'>,
    policyHealth: { read: null },
  };
  const health = metrics.policyHealth;
  metrics.policyState = new Gauge({
    name: 'spawngate_policy_state',
    help: 'The policy engine\'s state (1 for the current one): ok, stale (a newer bundle was rejected, the previous serves), erroring (the latest evaluation errored or returned no valid decision), failing (invalid config: every spawn denied), unavailable (no bundle)',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      if (!health.read) return;
      const current = health.read();
      for (const state of POLICY_STATES) this.set({ state }, state === current ? 1 : 0);
    },
  });
  const version = packageVersion();
  new Gauge({ name: 'spawngate_build_info', help: 'spawngate build (value 1): version and Node.js version as labels', labelNames: ['version', 'nodejs_version'], registers: [registry] }).set({ version, nodejs_version: process.versions.node }, 1);
  for (const result of ['success', 'failure']) metrics.bundleReloads.inc({ result }, 0);
  if (options.processMetrics) collectDefaultMetrics({ register: registry });
  return metrics;
}

let cachedVersion: string | null = null;
function packageVersion(): string {
  if (cachedVersion !== null) return cachedVersion;
  try {
    // Read once and synchronously: metrics are created before anything is served.
    cachedVersion = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    cachedVersion = 'unknown';
  }
  return cachedVersion;
}

/**
 * Creates every series the given backends and profiles can produce, at zero. Idempotent (a config
 * reload may call it again: existing series keep their values). Custom deny codes of a user's
 * policy and failure reasons outside the known set appear at their first occurrence.
 */
export function initMetrics(metrics: Metrics, known: KnownLabels): void {
  safely(() => {
    const pairs = known.backends.flatMap((b) => b.profiles.map((profile) => ({ backend: b.name, profile })));
    for (const p of pairs) metrics.knownPairs.add(pairKey(p.backend, p.profile));
    // A policy deny that resolved no backend or profile carries empty labels.
    const decisionPairs = [...pairs, { backend: '', profile: '' }];
    for (const mode of DECISION_MODES) {
      for (const p of decisionPairs) {
        // Labels in labelNames order: the first call fixes the order of the exposition.
        metrics.decisions.inc({ result: 'allow', reason: '', stage: 'policy', ...p, mode }, 0);
        for (const reason of POLICY_DENY_CODES) metrics.decisions.inc({ result: 'deny', reason, stage: 'policy', ...p, mode }, 0);
        for (const reason of STORE_DENY_CODES) metrics.decisions.inc({ result: 'deny', reason, stage: 'reservation', ...p, mode }, 0);
      }
    }
    for (const p of decisionPairs) metrics.spawns.inc({ ...p, outcome: 'denied' }, 0);
    for (const p of pairs) {
      for (const code of STORE_DENY_CODES) metrics.reservationsRejected.inc({ code, ...p }, 0);
      for (const scope of ['user', 'channel']) metrics.rateLimited.inc({ scope, ...p }, 0);
      for (const outcome of SPAWN_OUTCOMES) metrics.spawns.inc({ ...p, outcome }, 0);
      metrics.activeWorkers.inc(p, 0);
      metrics.spawnsInFlight.inc(p, 0);
      metrics.spawnsWaiting.inc(p, 0);
      for (const outcome of WAIT_OUTCOMES) metrics.waitSeconds.zero({ ...p, outcome });
      metrics.spawnReadySeconds.zero(p);
      for (const outcome of PERMISSION_OUTCOMES) for (const code of PERMISSION_CODES) metrics.permissionDecisions.inc({ ...p, outcome, code }, 0);
      for (const outcome of TURN_OUTCOMES) {
        metrics.turns.inc({ ...p, outcome }, 0);
        metrics.turnSeconds.zero({ ...p, outcome });
      }
      for (const reason of KNOWN_FAILURE_REASONS) metrics.workerFailures.inc({ ...p, reason }, 0);
    }
    // The sweeper may find workers of a profile this config no longer has (labels outside the known pairs).
    for (const p of decisionPairs) for (const reason of SWEEP_REASONS) metrics.sweeperDeletions.inc({ ...p, reason }, 0);
    for (const reason of KNOWN_FAILURE_REASONS) metrics.workerFailures.inc({ backend: '', profile: '', reason }, 0);
  });
}

function pairKey(backend: string, profile: string): string {
  return `${backend}\u0000${profile}`;
}

/**
 * The backend/profile labels of a decision: a deny names whatever the caller asked for (an unknown
 * backend included), and a label value a caller chooses would let anyone mint series without end.
 */
export function pairLabels(metrics: Metrics, backend: string | null | undefined, profile: string | null | undefined): { backend: string; profile: string } {
  return backend && profile && metrics.knownPairs.has(pairKey(backend, profile)) ? { backend, profile } : { backend: '', profile: '' };
}

/** Metric updates must never throw into a spawn (a label typo is a bug to log, not an outage). */
export function safely(fn: () => void): void {
  try {
    fn();
  } catch {
    // ignore
  }
}
