import { createHash, randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { fileURLToPath } from 'node:url';
import type { DecisionLog, DecisionLogSetting, DecisionRecord } from './decision-log.js';
import { createDecisionRecorder, loggedInput, openDecisionLog, spawngateVersion } from './decision-log.js';
import type { PermissionDecision, PermissionInput } from './permissions.js';
import { PERMISSION_ENTRYPOINT } from './permissions.js';
import type { PolicyBundle, PolicyEngine, PolicyEngineOptions } from './engine.js';
import { createPolicyEngine, DEFAULT_EVALUATION_TIMEOUT_MS, ENTRYPOINT } from './engine.js';
import type { LeaseKeeper, LeaseSettings } from './leases.js';
import { createLeaseKeeper, DEFAULT_LEASE } from './leases.js';
import type { PreparedCatalog } from './input.js';
import { prepareCatalog, readUsage, serializeInput } from './input.js';
import { readBundle } from './bundle.js';
import type { SpawnRequest, SpawnRequestInput } from './request.js';
import { parseSpawnRequest } from './request.js';
import type { ShadowPolicy } from './shadow.js';
import { createShadowPolicy, SHADOW_DIFFERENCES } from './shadow.js';
import { createStoreFromConfig } from './store/index.js';
import { slotKey } from './store/types.js';
import type { ReservationRecord, ReservationRequest, ReservationStore, ReserveRejection } from './store/types.js';
import type { AdmissionInput, AllowDecision, Decision, DenyDecision, WaitTerms } from './types.js';
import type { SpawngateConfig } from '../config/index.js';
import { buildCatalog, defaultConfig, loadConfigFile, parseConfig, resolveSelection } from '../config/index.js';
import type { Context, Span } from '@opentelemetry/api';
import { context, isSpanContextValid, trace } from '@opentelemetry/api';
import type { Logger } from '../log.js';
import { jsonLogger } from '../log.js';
import type { Metrics } from '../telemetry/metrics.js';
import { createMetrics, initMetrics, pairLabels, safely, type WAIT_OUTCOMES } from '../telemetry/metrics.js';
import { inSpan, parentContext, setAttributes, SPAN } from '../telemetry/tracing.js';
import { builtinAgents, isKnownAgent } from '../agents/index.js';

/** The bundle compiled from policies/ and shipped in the package. */
export const SHIPPED_BUNDLE = fileURLToPath(new URL('../../bundles/spawngate.tar.gz', import.meta.url));

export interface AdmissionOptions {
  /** A config object (validated here) or a JSON/YAML file path. Default: the embedded process-backend config. */
  config?: unknown;
  /** A bundle file path or an unpacked bundle. Default: `spawngate.bundle` from the config, else the shipped bundle. */
  bundle?: string | PolicyBundle;
  /** Reload the bundle file when it changes. Default true for a file path. */
  watchBundle?: boolean;
  store?: ReservationStore;
  /** A sink, a file path, "stdout", the HTTP sink's settings, or false. Default: `spawngate.decisionLog` from the config, else off. */
  decisionLog?: DecisionLog | DecisionLogSetting | false;
  logger?: Logger;
  /** Defaults to a fresh registry; pass one to share it with the lifecycle and your /metrics. */
  metrics?: Metrics;
  clock?: () => Date;
  /** This gateway instance's id, recorded as the holder of every lease; default: a fresh random id. */
  instanceId?: string;
  /** Lease and heartbeat; default `spawngate.leaseSeconds`/`renewSeconds` from the config, else 30 s / 10 s. */
  lease?: Partial<LeaseSettings> & { heartbeat?: boolean };
  /**
   * The deadline of one policy evaluation (admission, permission request, decision-log mask) in
   * milliseconds; past it the answer is a deny with `policy_timeout`. Default
   * `spawngate.policyEvaluationTimeoutMs` from the config, else 250 (DEFAULT_EVALUATION_TIMEOUT_MS).
   */
  policyEvaluationTimeoutMs?: number;
  /**
   * A candidate bundle evaluated beside the live one on every admission decision, never deciding
   * (src/admission/shadow.ts): a path (watched, like the live bundle's) or a bundle. Default
   * `spawngate.shadow.bundle` from the config, else none; false: none whatever the config says.
   */
  shadowBundle?: string | PolicyBundle | false;
}

export interface AdmitCallOptions {
  /** Parent span context; default: the request's traceparent, else the active context. */
  parent?: Context;
  spawnId?: string;
  /**
   * The spawn id to reserve under, chosen once the decision is known (a warm worker of the decided
   * profile comes with its own id); asked again at each try of a wait. Default `spawnId`.
   */
  spawnIdFor?: (decision: AllowDecision) => string;
  /**
   * The store refused the try reserved under this id (from spawnIdFor): whatever was set aside for
   * it may go back while the spawn waits for its next try, or is denied.
   */
  spawnIdRefused?: (spawnId: string) => void;
  /** Ends a wait for a slot (reserve with request.waitSeconds): the ticket leaves the queue and reserve rejects with the signal's reason. */
  signal?: AbortSignal;
  /** While the spawn waits for a slot: its place in the queue (1 = next), each time it changes. */
  onQueued?: (position: number) => void;
}

export interface AdmitResult {
  decisionId: string;
  decision: Decision;
  /** Which step decided: the policy, or the reservation store enforcing the policy's limits. */
  stage: 'policy' | 'reservation';
  request: SpawnRequest;
  input: AdmissionInput;
  bundleRevision: string | null;
}

export interface Reservation {
  readonly id: string;
  readonly spawnId: string;
  readonly record: ReservationRecord;
  /** Aborted when the store no longer holds this reservation (its lease lapsed): its slots may be someone else's. */
  readonly lost: AbortSignal;
  /** Frees the slots; true the first time, false (logged no-op) on any later call or after the lease was lost. */
  release(): Promise<boolean>;
  [Symbol.asyncDispose](): Promise<void>;
}

export type ReserveResult =
  | (AdmitResult & { allowed: true; decision: AllowDecision; reservation: Reservation })
  | (AdmitResult & { allowed: false; decision: DenyDecision; reservation: null });

export interface Admission {
  readonly config: SpawngateConfig;
  readonly policy: PolicyEngine;
  readonly store: ReservationStore;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** Renews the leases of every reservation this instance holds. */
  readonly leases: LeaseKeeper;
  /** The candidate bundle evaluated beside the live one, when one is configured. */
  readonly shadow: ShadowPolicy | null;
  /** Decision only; takes no slot or token (a dry run of reserve). */
  admit(request: SpawnRequestInput, options?: AdmitCallOptions): Promise<AdmitResult>;
  /** Decision, then every slot and token the decision names, atomically. */
  reserve(request: SpawnRequestInput, options?: AdmitCallOptions): Promise<ReserveResult>;
  /** An agent's permission request, decided by the bundle's permission rule and written to the decision log; never throws. */
  decidePermission(input: PermissionInput): PermissionDecision;
  /** Reopens a file decision log at its path (after logrotate moved it); a no-op for other sinks. */
  reopenDecisionLog(): void;
  close(): Promise<void>;
}

function rejectionMessage(rejection: ReserveRejection): string {
  switch (rejection.kind) {
    case 'concurrency':
      return rejection.waitingAhead
        ? `${rejection.scope} ${rejection.key} has ${rejection.active} of ${rejection.max} workers; its next free slot goes to the ${rejection.waitingAhead} ${rejection.waitingAhead === 1 ? 'spawn' : 'spawns'} waiting ahead`
        : `${rejection.scope} ${rejection.key} already has ${rejection.active} of ${rejection.max} workers`;
    case 'rate':
      return `${rejection.scope} ${rejection.key} exceeded ${rejection.perMinute}/min (burst ${rejection.burst}); retry in ${Math.ceil(rejection.retryAfterMs / 1000)}s`;
    case 'tree':
      return rejection.code === 'tree_spawns_exhausted'
        ? `the spawn tree of session ${rejection.root} has made ${rejection.used} of its ${rejection.max} spawns`
        : `the spawn tree of session ${rejection.root} has used or holds ${rejection.used} of its ${rejection.max} worker-seconds; this spawn's TTL needs ${rejection.needed} more`;
  }
}

function rejectionToDeny(decision: AllowDecision, rejection: ReserveRejection): DenyDecision {
  return { ...decision, allow: false, reasons: [{ code: rejection.code, message: rejectionMessage(rejection) }] };
}

/** What the store must take for an allowed decision: its caps, buckets and (when it names one) tree budget. */
function reservationLimits(decision: AllowDecision): Pick<ReservationRequest, 'concurrency' | 'rate' | 'tree'> {
  const { concurrency, rate, tree } = decision.limits;
  return { concurrency, rate, ...(tree ? { tree: { budget: tree, chargeMs: decision.ttlSeconds * 1000 } } : {}) };
}

/**
 * An ACP agent that no config entry names and that is not built in can never start: denied here, by
 * the gate, whatever the policy said, so `admit` answers what `spawn` would meet (not an allow and
 * then a failed spawn). First among the reasons: it is the one to fix first. Subagents are the
 * gateway's own, run by it, and not checked.
 */
function agentUnknown(decision: Decision, agentId: string): DenyDecision {
  const builtins = Object.keys(builtinAgents).join(', ');
  const reason = { code: 'agent_unknown', message: `agent ${JSON.stringify(agentId)} is not configured (agents.acp.${agentId}.command) and is not a built-in agent (${builtins})` };
  return { ...decision, allow: false, reasons: [reason, ...(decision.allow ? [] : decision.reasons)] };
}

/** The gate's own rules on a policy's decision, for any bundle (live, shadow, a replayed candidate). */
export function applyGateRules(config: SpawngateConfig, request: { runtime: string; agentId: string }, decision: Decision): Decision {
  return request.runtime === 'acp' && !isKnownAgent(config, request.agentId) ? agentUnknown(decision, request.agentId) : decision;
}

/** The catalog the policy sees for this config, and its revision (sha256), as decision-log lines carry it. */
export function catalogOf(config: SpawngateConfig): { prepared: PreparedCatalog; revision: string } {
  const prepared = prepareCatalog(buildCatalog(config));
  return { prepared, revision: createHash('sha256').update(JSON.stringify(prepared.catalog)).digest('hex') };
}

export { resolveConfig };

type SpanIds = { traceId: string; spanId: string };

/** A decision not logged yet: its one line is written with the final outcome, which the store may still turn into a deny. */
interface Attempt {
  decided: Decided;
  result: ReserveResult;
  /** The span that settled it: the reservation's, else the admission's. */
  span: SpanIds | null;
}

/** The deny with a note on its first reason (why the wait for a slot ended). */
function withNote(result: ReserveResult, note: string): ReserveResult {
  if (result.allowed) return result;
  const [first, ...rest] = result.decision.reasons;
  if (!first) return result;
  return { ...result, decision: { ...result.decision, reasons: [{ code: first.code, message: `${first.message}; ${note}`.slice(0, 2048) }, ...rest] } };
}

export const DEFAULT_QUEUE = { maxWaiting: 1000, maxWaitingPerUser: 20, pollMs: 200 } as const;

interface Decided {
  result: AdmitResult;
  evalMicros: number;
  /** The admission span's ids. */
  span: SpanIds | null;
}

/** The ids a decision-log line joins its trace by: the span's, else the active one's. */
function spanIds(span?: Span): SpanIds | null {
  try {
    const ids = span ? span.spanContext() : trace.getSpanContext(context.active());
    return ids && isSpanContextValid(ids) ? { traceId: ids.traceId, spanId: ids.spanId } : null;
  } catch {
    return null; // telemetry must never break a spawn
  }
}

/** Builds a span's attributes only when it records them: without a tracer SDK, every span is a no-op. */
function annotate(span: Span, attributes: () => Record<string, string | number | boolean | null | undefined>): void {
  let recording: boolean;
  try {
    recording = span.isRecording();
  } catch {
    return; // telemetry must never break a spawn
  }
  if (recording) setAttributes(span, attributes());
}

async function resolveConfig(config: AdmissionOptions['config']): Promise<SpawngateConfig> {
  if (config === undefined) return defaultConfig();
  if (typeof config === 'string') return loadConfigFile(config);
  return parseConfig(config);
}

export async function createAdmission(options: AdmissionOptions = {}): Promise<Admission> {
  const logger = options.logger ?? jsonLogger('warn');
  const metrics = options.metrics ?? createMetrics();
  const clock = options.clock ?? (() => new Date());
  const config = await resolveConfig(options.config);
  const { prepared, revision: catalogRevision } = catalogOf(config);
  initMetrics(metrics, { backends: Object.entries(prepared.catalog.backends).map(([name, b]) => ({ name, profiles: Object.keys(b.profiles) })) });
  const bundleOption = options.bundle ?? config.spawngate?.bundle ?? SHIPPED_BUNDLE;
  // Live and shadow bundles load alike: the operator's overrides (spawngate.policyData) apply to
  // whatever bundle runs, hot reloads included, so a candidate is judged on the same config.
  const engineFor = (bundle: string | PolicyBundle, onReload: NonNullable<PolicyEngineOptions['onReload']>): Promise<PolicyEngine> =>
    createPolicyEngine({
      source: typeof bundle === 'string' ? { path: bundle } : { bundle },
      readBundle,
      watch: typeof bundle === 'string' && (options.watchBundle ?? true),
      logger,
      runtimeData: { catalog: prepared.catalog },
      ...(config.spawngate?.policyData ? { policyData: config.spawngate.policyData } : {}),
      evaluationTimeoutMs: options.policyEvaluationTimeoutMs ?? config.spawngate?.policyEvaluationTimeoutMs ?? DEFAULT_EVALUATION_TIMEOUT_MS,
      onReload,
    });
  // The engine never throws (it fails closed), so it goes first; what follows may throw and must not leak it.
  const policy = await engineFor(bundleOption, (event) =>
    safely(() => {
      metrics.bundleReloads.inc({ result: event.ok ? 'success' : 'failure' });
      if (!event.ok) return;
      // One series, for the revision in force: the old one goes, or dashboards would show two bundles.
      metrics.bundleInfo.reset();
      metrics.bundleInfo.set({ revision: event.revision }, 1);
    }),
  );
  metrics.policyHealth.read = () => policy.health.state;
  const shadowOption = options.shadowBundle === undefined ? config.spawngate?.shadow?.bundle : options.shadowBundle;
  let shadowEngine: PolicyEngine | null = null;
  if (shadowOption) {
    shadowEngine = await engineFor(shadowOption, (event) =>
      event.ok ? logger.info('shadow policy bundle loaded', { revision: event.revision }) : logger.warn('shadow policy bundle failed to load', { error: event.error.message }),
    );
    for (const difference of SHADOW_DIFFERENCES) metrics.shadowDecisions.inc({ difference }, 0);
  }
  let store: ReservationStore;
  let decisionLog: DecisionLog | null;
  try {
    store = options.store ?? (await createStoreFromConfig(config, logger));
    try {
      decisionLog = openDecisionLog(options.decisionLog ?? config.spawngate?.decisionLog, { logger, registry: metrics.registry });
    } catch (err) {
      if (!options.store) await store.close();
      throw err;
    }
  } catch (err) {
    policy.close();
    shadowEngine?.close();
    throw err;
  }
  const leaseSettings: LeaseSettings = {
    leaseMs: options.lease?.leaseMs ?? (config.spawngate?.leaseSeconds ?? DEFAULT_LEASE.leaseMs / 1000) * 1000,
    renewMs: options.lease?.renewMs ?? (config.spawngate?.renewSeconds ?? DEFAULT_LEASE.renewMs / 1000) * 1000,
  };
  const queueSettings = {
    maxWaiting: config.spawngate?.queue?.maxWaiting ?? DEFAULT_QUEUE.maxWaiting,
    maxWaitingPerUser: config.spawngate?.queue?.maxWaitingPerUser ?? DEFAULT_QUEUE.maxWaitingPerUser,
    pollMs: config.spawngate?.queue?.pollMs ?? DEFAULT_QUEUE.pollMs,
  };
  const slotFreed = new EventTarget();
  // Every waiter of this process listens while it waits: as many as may wait, without a leak warning.
  setMaxListeners(queueSettings.maxWaiting + 16, slotFreed);
  const leases = createLeaseKeeper({
    store,
    holder: options.instanceId ?? randomUUID(),
    ...leaseSettings,
    logger,
    ...(options.lease?.heartbeat === undefined ? {} : { heartbeat: options.lease.heartbeat }),
  });
  const recordDecision = decisionLog
    ? createDecisionRecorder({
        sink: decisionLog,
        mask: (eventJson) => policy.evaluateMask(eventJson),
        labels: { id: leases.holder, version: spawngateVersion() },
        catalogRevision,
        clock,
        logger,
      })
    : null;
  const shadow: ShadowPolicy | null = shadowEngine
    ? createShadowPolicy({
        engine: shadowEngine,
        metrics,
        logger,
        write: (line) =>
          writeLogLine({ decisionId: line.decisionId, path: ENTRYPOINT, stage: 'shadow', bundleRevision: line.bundleRevision, result: line.result, evalMicros: line.evalMicros, difference: line.difference, span: null }),
      })
    : null;

  /** `retry`: another look at a request that waits for a slot; the shadow policy saw its first. */
  async function decide(raw: unknown, parent: Context | undefined, retry = false): Promise<Decided> {
    const request = parseSpawnRequest(raw);
    return inSpan(SPAN.admission, parent ?? parentContext(request.traceparent), { 'spawngate.agent_id': request.agentId }, async (span) => {
      const { result, evalMicros } = await evaluate(request, retry);
      annotate(span, () => ({
        'spawngate.decision': result.decision.allow ? 'allow' : 'deny',
        'spawngate.reason': result.decision.reasons[0]?.code,
        'spawngate.backend': result.decision.backend,
        'spawngate.profile': result.decision.profile,
        'spawngate.bundle_revision': result.bundleRevision,
        'spawngate.decision_id': result.decisionId,
      }));
      return { result, evalMicros, span: spanIds(span) };
    });
  }

  async function evaluate(request: SpawnRequest, retry = false): Promise<{ result: AdmitResult; evalMicros: number }> {
    const { caller } = request;
    const resolved = resolveSelection(config, {
      agentId: request.agentId,
      execution: request.execution,
      channel: caller.channel,
      user: caller.user,
    });
    const usage = await readUsage(store, prepared, resolved.backend, caller.user.id, caller.channel.id, caller.sessionKey);
    const partial = {
      request: {
        runtime: request.runtime,
        agentId: request.agentId,
        execution: request.execution,
        task: request.task,
        label: request.label,
        cwd: request.session.cwd,
        model: request.session.model,
        resumeSessionId: request.session.resumeSessionId,
        envNames: Object.keys(request.session.env).sort(),
        waitSeconds: request.waitSeconds,
      },
      caller: {
        sessionKey: caller.sessionKey,
        parentSessionKey: caller.parentSessionKey,
        rootSessionKey: caller.rootSessionKey,
        depth: caller.depth,
        channel: caller.channel,
        user: caller.user,
      },
      resolved,
      usage,
      now: clock().toISOString(),
    };
    const input: AdmissionInput = { ...partial, catalog: prepared.catalog };
    // Off the event loop: a slow policy must not stall every other request this process serves.
    const inputJson = serializeInput(partial);
    const evaluation = await policy.evaluateJsonWithoutCatalogAsync(inputJson);
    const finish = (decision: Decision): Decision => applyGateRules(config, request, decision);
    const result: AdmitResult = {
      decisionId: randomUUID(),
      decision: finish(evaluation.decision),
      stage: 'policy',
      request,
      input,
      bundleRevision: evaluation.revision,
    };
    if (!retry) shadow?.observe({ decisionId: result.decisionId, inputJson, live: result.decision, finish });
    safely(() => metrics.evaluationSeconds.observe(evaluation.evalMicros / 1e6));
    return { result, evalMicros: evaluation.evalMicros };
  }

  /**
   * The decision's one line, written once its outcome is final (a policy allow the store refuses is
   * one deny line), joined to the span that settled it: admission, or the reservation.
   */
  function logDecision(decided: Decided, final: AdmitResult, spawnId?: string, span: SpanIds | null = decided.span): void {
    writeLogLine({
      decisionId: final.decisionId,
      path: ENTRYPOINT,
      stage: final.stage,
      ...(spawnId ? { spawnId } : {}),
      bundleRevision: final.bundleRevision,
      input: loggedInput(final.input),
      result: final.decision,
      evalMicros: decided.evalMicros,
      span,
    });
  }

  function writeLogLine(line: DecisionRecord): void {
    if (!recordDecision) return;
    try {
      recordDecision(line);
    } catch (err) {
      // The log is an audit aid; losing a line must not turn into a failed spawn.
      logger.warn('decision log write failed', { error: (err as Error).message });
    }
  }

  function makeReservation(record: ReservationRecord): Reservation {
    const lost = leases.hold(record.id);
    const release = async (): Promise<boolean> => {
      const freed = await leases.release(record.id);
      // Spawns of this process waiting for a slot look at once; other gateways' find it on their next poll.
      if (freed) slotFreed.dispatchEvent(new Event('freed'));
      return freed;
    };
    return {
      id: record.id,
      spawnId: record.spawnId,
      record,
      lost,
      release,
      async [Symbol.asyncDispose]() {
        await release();
      },
    };
  }

  /**
   * Counts the final outcome once: a policy allow that the store then refuses is one deny. A dry
   * run (admit) is a decision of its own mode and took no slots, so it is no reservation rejection.
   */
  function count(result: AdmitResult, mode: 'spawn' | 'dry_run'): void {
    const decision = result.decision;
    safely(() => {
      const reason = decision.allow ? '' : (decision.reasons[0]?.code ?? '');
      metrics.decisions.inc({ result: decision.allow ? 'allow' : 'deny', reason, stage: result.stage, ...pairLabels(metrics, decision.backend, decision.profile), mode });
      if (mode === 'spawn' && result.stage === 'reservation' && !decision.allow) {
        const pair = pairLabels(metrics, decision.backend, decision.profile);
        metrics.reservationsRejected.inc({ code: reason, ...pair });
        if (reason.startsWith('rate_limit_')) metrics.rateLimited.inc({ scope: reason.slice('rate_limit_'.length), ...pair });
      }
    });
  }

  async function admit(raw: unknown, call: AdmitCallOptions = {}): Promise<AdmitResult> {
    const decided = await decide(raw, call.parent);
    const { result } = decided;
    let final = result;
    if (result.decision.allow) {
      const check = await store.check(reservationLimits(result.decision));
      if (!check.ok) final = { ...result, stage: 'reservation', decision: rejectionToDeny(result.decision, check) };
    }
    logDecision(decided, final);
    return final;
  }

  /** One decision and, when it allows, one try at the store. Logs nothing: the caller logs the outcome it keeps. */
  async function attempt(raw: unknown, call: AdmitCallOptions, ticket?: string): Promise<Attempt> {
    const decided = await decide(raw, call.parent, ticket !== undefined);
    const { result } = decided;
    const decision = result.decision;
    if (!decision.allow) return { decided, result: { ...result, allowed: false, decision, reservation: null }, span: decided.span };
    const parent = call.parent ?? parentContext(result.request.traceparent);
    return inSpan(SPAN.reservation, parent, { 'spawngate.store': store.kind }, async (span): Promise<Attempt> => {
      const spawnId = call.spawnIdFor?.(decision) ?? call.spawnId ?? randomUUID();
      const outcome = await store.reserve({
        spawnId,
        holder: leases.holder,
        leaseMs: leases.leaseMs,
        ...(ticket === undefined ? {} : { ticket }),
        ...reservationLimits(decision),
        meta: {
          user: result.request.caller.user.id,
          channel: result.request.caller.channel.id,
          backend: decision.backend,
          profile: decision.profile,
          agent: result.request.agentId,
          decisionId: result.decisionId,
        },
      });
      if (!outcome.ok) {
        safely(() => call.spawnIdRefused?.(spawnId));
        annotate(span, () => ({ 'spawngate.decision': 'deny', 'spawngate.reason': outcome.code, 'spawngate.decision_id': result.decisionId }));
        return { decided, result: { ...result, stage: 'reservation' as const, decision: rejectionToDeny(decision, outcome), allowed: false, reservation: null }, span: spanIds(span) };
      }
      annotate(span, () => ({ 'spawngate.decision': 'allow', 'spawngate.reservation_id': outcome.record.id, 'spawngate.decision_id': result.decisionId }));
      return { decided, result: { ...result, allowed: true, decision, reservation: makeReservation(outcome.record) }, span: spanIds(span) };
    });
  }

  function logAttempt(a: Attempt, call: AdmitCallOptions): ReserveResult {
    logDecision(a.decided, a.result, a.result.reservation?.spawnId ?? call.spawnId, a.span);
    return a.result;
  }

  async function reserve(raw: unknown, call: AdmitCallOptions = {}): Promise<ReserveResult> {
    const first = await attempt(raw, call);
    const terms = waitTermsOf(first.result);
    return terms ? waitForSlot(raw, call, first, terms) : logAttempt(first, call);
  }

  /** The terms of a wait, when full concurrency caps are all that deny this spawn and its decision lets it wait. */
  function waitTermsOf(result: ReserveResult): WaitTerms | null {
    if (result.allowed || !store.queue) return null;
    const { decision } = result;
    if (!decision.wait || decision.wait.maxSeconds <= 0 || decision.backend === null || decision.profile === null) return null;
    return decision.reasons.every((r) => r.code.startsWith('concurrency_limit_')) ? decision.wait : null;
  }

  /**
   * Waits in the store's queue for a slot, at most the decision's wait: each time a slot frees here
   * (or every pollMs, for one freed on another gateway) it decides and tries the store again, holding
   * its ticket so that no later request takes the slot first. Logs one decision line for the outcome.
   */
  async function waitForSlot(raw: unknown, call: AdmitCallOptions, first: Attempt, terms: WaitTerms): Promise<ReserveResult> {
    const queue = store.queue as NonNullable<ReservationStore['queue']>;
    const request = first.result.request;
    const decision = first.result.decision;
    const labels = pairLabels(metrics, decision.backend, decision.profile);
    const startedAt = clock().getTime();
    const deadline = startedAt + terms.maxSeconds * 1000;
    const join = () =>
      queue.join({
        priority: terms.priority,
        user: request.caller.user.id,
        concurrency: decision.limits.concurrency,
        leaseMs: leases.leaseMs,
        maxWaiting: queueSettings.maxWaiting,
        maxWaitingPerUser: queueSettings.maxWaitingPerUser,
        meta: { spawnId: call.spawnId ?? '', sessionKey: request.caller.sessionKey, agent: request.agentId, ...(request.label ? { label: request.label } : {}) },
      });
    const waitedSlots = decision.limits.concurrency.map((l) => slotKey(l.scope, l.key));
    let outcome: (typeof WAIT_OUTCOMES)[number] = 'queue_full';
    const noted = (a: Attempt, note: string): ReserveResult => logAttempt({ ...a, result: withNote(a.result, note) }, call);
    const joined = await join();
    if ('full' in joined) {
      safely(() => metrics.waitSeconds.observe({ ...labels, outcome }, 0));
      return noted(first, joined.full === 'user' ? `${request.caller.user.id} already has ${queueSettings.maxWaitingPerUser} spawns waiting for a slot` : `the queue for a free slot is full (${queueSettings.maxWaiting} spawns wait)`);
    }
    let ticket = joined;
    safely(() => metrics.spawnsWaiting.inc(labels));
    let position = ticket.position;
    const tell = () => safely(() => call.onQueued?.(position));
    tell();
    let last = first;
    try {
      for (;;) {
        const remaining = deadline - clock().getTime();
        if (remaining <= 0) break;
        await nextLook(Math.min(remaining, queueSettings.pollMs), call.signal);
        if (call.signal?.aborted) {
          outcome = 'cancelled';
          // An aborted signal always has a reason (an AbortError unless the caller gave one).
          throw call.signal.reason as Error;
        }
        const seen = (await queue.touch([ticket.id], leases.leaseMs)).get(ticket.id) ?? null;
        if (seen === null) {
          // Lapsed (this process stalled past a lease): back in line, at a later turn.
          const again = await join();
          if ('full' in again) return noted(last, 'it lost its place in the queue (this gateway stalled past a lease) and the queue is full now');
          ticket = again;
        }
        const now = seen ?? ticket.position;
        if (now !== position) {
          position = now;
          tell();
        }
        // While every slot it waits for is still taken, another decision would only say so again.
        const counts = await store.counts(waitedSlots);
        if (decision.limits.concurrency.some((l) => (counts.get(slotKey(l.scope, l.key)) ?? 0) >= l.max)) continue;
        last = await attempt(raw, call, ticket.id);
        if (last.result.allowed) {
          outcome = 'granted';
          return logAttempt(last, call);
        }
        if (!waitTermsOf(last.result)) {
          outcome = 'denied';
          return logAttempt(last, call);
        }
      }
      outcome = 'timed_out';
      return noted(last, `no slot freed within the ${terms.maxSeconds}s this spawn could wait`);
    } finally {
      // Whatever ended the wait, the ticket goes with it: a cancelled or timed-out wait leaves nothing queued.
      if (outcome !== 'granted') await queue.leave(ticket.id).catch((err: unknown) => logger.warn('leaving the wait queue failed; the ticket lapses with its lease', { error: (err as Error).message }));
      safely(() => {
        metrics.spawnsWaiting.dec(labels);
        metrics.waitSeconds.observe({ ...labels, outcome }, Math.max(0, clock().getTime() - startedAt) / 1000);
      });
    }
  }

  /** Resolves when a slot frees in this process, after `ms`, or when the signal aborts, whichever comes first. */
  function nextLook(ms: number, signal: AbortSignal | undefined): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        slotFreed.removeEventListener('freed', done);
        signal?.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      slotFreed.addEventListener('freed', done);
      signal?.addEventListener('abort', done);
      if (signal?.aborted) done();
    });
  }

  return {
    config,
    policy,
    store,
    metrics,
    logger,
    leases,
    shadow,
    async admit(raw, call) {
      const result = await admit(raw, call);
      count(result, 'dry_run');
      return result;
    },
    async reserve(raw, call) {
      const result = await reserve(raw, call);
      count(result, 'spawn');
      return result;
    },
    decidePermission(input) {
      const evaluation = policy.evaluatePermission(input);
      const { decision } = evaluation;
      writeLogLine({ decisionId: randomUUID(), path: PERMISSION_ENTRYPOINT, stage: 'permission', spawnId: input.spawnId, bundleRevision: evaluation.revision, input, result: decision, evalMicros: evaluation.evalMicros, span: spanIds() });
      safely(() => metrics.permissionDecisions.inc({ ...pairLabels(metrics, input.backend, input.profile), outcome: decision.outcome, code: decision.code }));
      return decision;
    },
    reopenDecisionLog() {
      decisionLog?.reopen?.();
    },
    async close() {
      leases.stop();
      // Its last observations reach the decision log before the log closes.
      await shadow?.close();
      policy.close();
      await decisionLog?.close();
      if (!options.store) await store.close();
    },
  };
}
