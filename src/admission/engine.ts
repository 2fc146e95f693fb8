import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { PolicyError } from '../errors.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { checkDecision, denyWith } from './decision.js';
import type { AdmissionInput, Decision } from './types.js';
import { checkPermissionDecision, PERMISSION_ENTRYPOINT } from './permissions.js';
import type { PermissionDecision, PermissionInput } from './permissions.js';
import { MASK_ENTRYPOINT } from './decision-mask.js';
import type { MaskEvaluation } from './decision-mask.js';
import { startEvaluator } from './evaluator.js';
import { compilePolicy } from './opa-raw.js';
import { offStatus, prepareFastPath, type FastPathOptions, type FastPathStatus } from './fast-path.js';
import type { Evaluator, Outcome } from './evaluator.js';

export const ENTRYPOINT = 'spawngate/admission/decision';

/**
 * How long one policy evaluation may take (admission, a permission request, a decision-log mask)
 * before its answer is a deny with `policy_timeout`. The shipped policy decides in tens of
 * microseconds; 250 ms is thousands of times that (room for a loaded machine and a much larger
 * policy), yet short enough that a caller, or a turn waiting on a permission, is not held up
 * noticeably, and a hostile bundle or input costs each caller at most this.
 */
export const DEFAULT_EVALUATION_TIMEOUT_MS = 250;

/**
 * The bound on each step of loading a bundle: its thread coming up (instantiating the module and
 * its data) and each self-check evaluation. Generous: a load is off the event loop, and a bundle
 * rejected for being slow to load on a busy machine would leave none (or an old one) serving.
 */
const LOAD_STEP_TIMEOUT_MS = 30_000;

export interface PolicyBundle {
  wasm: Uint8Array;
  data: unknown;
  revision: string;
}

export type BundleSource = { path: string } | { bundle: PolicyBundle };

/**
 * Per-gateway facts that are the same for every evaluation, loaded into the policy's data at
 * `data.spawngate.runtime` once (and again after every bundle reload) instead of being sent and
 * parsed with every input.
 */
export interface RuntimeData {
  catalog: AdmissionInput['catalog'];
}

export interface PolicyEngineOptions {
  source: BundleSource;
  /** Reads and unpacks a bundle file; injected so the engine does not care about tar. */
  readBundle: (path: string) => Promise<PolicyBundle>;
  /** Reload when the bundle file changes (only for `{ path }`). */
  watch?: boolean;
  logger?: Logger;
  /** What `evaluateJsonWithoutCatalog` evaluates against; can be replaced later with `setRuntimeData`. */
  runtimeData?: RuntimeData;
  /**
   * Overrides of the bundle's `data.spawngate.admission.config` (what `spawngate.policyData` in
   * the config holds), deep-merged onto it whenever a bundle is loaded, hot reloads included, and
   * before the bundle's self-check, which therefore checks the merged config. See `withPolicyData`.
   */
  policyData?: Readonly<Record<string, unknown>>;
  onReload?: (event: { ok: true; revision: string } | { ok: false; error: PolicyError }) => void;
  /**
   * The deadline of one evaluation in milliseconds (default DEFAULT_EVALUATION_TIMEOUT_MS), from
   * the call, waiting behind other evaluations included. Past it the answer is a deny (a reject,
   * for a permission request) with code `policy_timeout`, and the evaluator's thread is replaced.
   */
  evaluationTimeoutMs?: number;
  /** The fast path's time budget (fast-path.ts); tests that count its answers widen it. */
  fastPath?: FastPathOptions;
}

export interface PolicyHealth {
  state: 'ok' | 'stale' | 'erroring' | 'failing' | 'unavailable';
  /** Why it is not ok, one line each. */
  problems: string[];
}

/** Engine answers that mean the policy did not decide (not a deny of the policy's own). */
const FAILED_EVALUATION = new Set(['policy_error', 'policy_output_invalid', 'policy_timeout']);

export interface EvaluationResult {
  decision: Decision;
  revision: string | null;
  evalMicros: number;
}

export interface PermissionEvaluation {
  decision: PermissionDecision;
  revision: string | null;
  evalMicros: number;
}

export interface PolicyEngine {
  /** Never throws: no bundle, an evaluation error, or malformed output are all denies. */
  evaluate(input: AdmissionInput): EvaluationResult;
  /** Same as evaluate, with the input already serialised. */
  evaluateJson(inputJson: string): EvaluationResult;
  /**
   * evaluateJsonWithoutCatalog without holding the event loop while the policy runs (beyond a
   * moment, see evaluator.ts): what the gate uses, so a slow evaluation does not stall the server.
   */
  evaluateJsonWithoutCatalogAsync(inputJson: string): Promise<EvaluationResult>;
  /**
   * The gate's path: an AdmissionInput without its `catalog` member, as JSON; the catalog is the
   * runtime data's. A bundle whose policy reads `data.spawngate.runtime.catalog` gets the input as
   * is; for one that does not (built from older policies) the catalog is spliced into the input.
   */
  evaluateJsonWithoutCatalog(inputJson: string): EvaluationResult;
  /** The bundle's permission rule (spawngate.permissions) on one agent request; never throws, rejects when in doubt. */
  evaluatePermission(input: PermissionInput): PermissionEvaluation;
  /**
   * The bundle's decision-log mask rule (system.log.mask) on one log event, as JSON: its output as
   * it is, `null` when the bundle has no such rule (or no bundle is loaded); never throws.
   */
  evaluateMask(eventJson: string): MaskEvaluation;
  /** Replaces the runtime data (e.g. after a config change); throws a PolicyError if the policy cannot take it, and the previous data keeps serving. */
  setRuntimeData(data: RuntimeData): void;
  /** Whether the serving bundle reads the catalog from runtime data (false: it is sent with every input). */
  readonly readsRuntimeCatalog: boolean;
  /**
   * Why the serving bundle's config (its data with `policyData` merged in) is invalid, one message
   * per problem, as the policy's policy_config_invalid reasons name them; empty when it is valid
   * or no bundle is loaded. While it is not empty every spawn is denied.
   */
  readonly configProblems: readonly string[];
  readonly revision: string | null;
  /** Whether the bundle in force is evaluated on the calling thread first (fast-path.ts), why not, and how often it was. */
  readonly fastPath: FastPathStatus;
  readonly lastError: PolicyError | null;
  /**
   * Whether the bundle in force decides: `failing` while its config is invalid (every spawn is then
   * denied); `erroring` while its latest admission evaluation errored, overran its deadline or
   * returned no valid decision (cleared by the next one that decides: one caller's input may be
   * what trips it); `stale` after
   * a rejected reload (the previous bundle serves); `unavailable` with no bundle.
   */
  readonly health: PolicyHealth;
  reload(): Promise<{ ok: true; revision: string } | { ok: false; error: PolicyError }>;
  close(): void;
}

interface Active {
  /** The bundle's WASM instance, on a thread of its own (evaluator.ts). */
  evaluator: Evaluator;
  entrypoint: number;
  /** The permission rule's entry; null for a bundle built without it (every request is then rejected). */
  permissionEntrypoint: number | null;
  /** The decision-log mask rule's entry; null for a bundle without one (the log then only redacts). */
  maskEntrypoint: number | null;
  revision: string;
  bundleData: unknown;
  /** Probed at load: the policy decides the same with the catalog in data as with it in the input. */
  readsRuntimeCatalog: boolean;
  configChecked: boolean;
  /** The canary's policy_config_invalid messages (empty when configChecked). */
  configProblems: string[];
}

const encoder = new TextEncoder();

// A request shape every sane policy answers; a bundle that cannot is not swapped in.
const CANARY: AdmissionInput = {
  request: { runtime: 'acp', agentId: 'canary', execution: null, task: 'canary', label: null, cwd: null, model: null, resumeSessionId: null, envNames: [], waitSeconds: 0 },
  caller: {
    sessionKey: 'spawngate:canary',
    parentSessionKey: null,
    rootSessionKey: 'spawngate:canary',
    depth: 0,
    channel: { id: 'canary', kind: 'cli', interactive: true },
    user: { id: 'canary', roles: [] },
  },
  resolved: { backend: 'canary', profile: 'default', source: 'global' },
  catalog: {
    backends: {
      canary: {
        type: 'process',
        namespace: null,
        defaultProfile: 'default',
        maxConcurrent: null,
        profiles: {
          default: {
            class: 'standard',
            resources: { requests: { cpu: null, memory: null }, limits: { cpu: null, memory: null }, gpu: 0 },
            egress: 'none',
            egressAllow: [],
            allowedAgents: null,
            interactiveOnly: false,
            timeoutSeconds: null,
            ttlSeconds: null,
            maxConcurrent: { profile: null, backend: null, channel: null, user: null },
          },
        },
      },
    },
  },
  usage: { total: 0, user: 0, channel: 0, backends: {}, profiles: {}, userProfiles: {}, channelProfiles: {}, children: 0, recent: { windowSeconds: 60, user: 0, channel: 0 } },
  now: new Date(0).toISOString(),
};

/** The wasm SDK throws strings and plain objects as well as Errors. */
function describe(thrown: unknown): string {
  if (thrown instanceof Error) return thrown.message;
  if (typeof thrown === 'string') return thrown;
  try {
    return JSON.stringify(thrown);
  } catch {
    return String(thrown);
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** What the engine writes at data.spawngate.runtime: the caller's runtime data and what the engine found at load. */
interface RuntimeLayer {
  catalog?: AdmissionInput['catalog'];
  /** The bundle's canary decision had no policy_config_invalid: the policy need not check its config again. */
  configChecked?: true;
}

/** The bundle's data with `layer` at spawngate.runtime. The engine owns that path: a bundle's own data there is replaced. */
function dataWithRuntime(bundleData: unknown, layer: RuntimeLayer): object {
  const root = isRecord(bundleData) ? bundleData : {};
  const spawngate = isRecord(root.spawngate) ? root.spawngate : {};
  return { ...root, spawngate: { ...spawngate, runtime: layer } };
}

/** An own, enumerable property even for a key such as "__proto__" (plain assignment would set the prototype). */
function put(target: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

/** `override` deep-merged onto `base`: objects merge key by key; arrays, scalars and null replace; undefined leaves the base. */
function deepMerge(base: unknown, override: unknown): unknown {
  if (override === undefined) return base;
  if (!isRecord(override) || !isRecord(base)) return override;
  const merged: Record<string, unknown> = {};
  for (const key of Object.keys(base)) put(merged, key, base[key]);
  for (const key of Object.keys(override)) {
    if (override[key] !== undefined) put(merged, key, deepMerge(base[key], override[key]));
  }
  return merged;
}

/**
 * A bundle's data with `policyData` deep-merged onto `spawngate.admission.config`: objects merge
 * key by key, arrays, scalars and null replace (a list is given whole; a key cannot be removed,
 * only set, to null where the policy reads null as "none"). Neither argument is modified; without
 * an override (undefined or `{}`) the bundle's data is returned as it is.
 */
export function withPolicyData(bundleData: unknown, policyData: Readonly<Record<string, unknown>> | undefined): unknown {
  if (policyData === undefined || Object.keys(policyData).length === 0) return bundleData;
  return deepMerge(bundleData, { spawngate: { admission: { config: policyData } } });
}

const sameDecision = (a: Decision, b: Decision) => JSON.stringify(a) === JSON.stringify(b);

/** Data for the policy as the JSON bytes its setData takes. */
function dataBytes(data: object): ArrayBuffer {
  const bytes = encoder.encode(JSON.stringify(data));
  return bytes.buffer.byteLength === bytes.byteLength ? bytes.buffer : bytes.slice().buffer;
}

/** A load step's data change; a failure is the step's POLICY_LOAD_FAILED. */
function dataTaken(outcome: Outcome): void {
  if (!outcome.ok) throw new Error(outcome.error);
}

async function instantiate(bundle: PolicyBundle, policyData: Readonly<Record<string, unknown>> | undefined, onTimeout: (event: { elapsedMs: number; timeoutMs: number }) => void, fastPath: FastPathOptions | undefined): Promise<Active> {
  let evaluator: Evaluator;
  // The override goes in before the self-check, so the canary checks the config that will serve.
  const bundleData = withPolicyData(bundle.data, policyData);
  try {
    const [module, fast] = await Promise.all([compilePolicy(bundle.wasm), prepareFastPath(bundle.wasm, fastPath)]);
    evaluator = await startEvaluator(module, dataBytes(dataWithRuntime(bundleData, {})), LOAD_STEP_TIMEOUT_MS, { onTimeout }, fast);
  } catch (cause) {
    throw new PolicyError('POLICY_LOAD_FAILED', `policy.wasm could not be instantiated: ${describe(cause)}`, { cause });
  }
  try {
    return await check(bundle, bundleData, evaluator);
  } catch (err) {
    evaluator.close();
    throw err;
  }
}

/** The bundle's self-check, on its evaluator: every step bounded by LOAD_STEP_TIMEOUT_MS. */
async function check(bundle: PolicyBundle, bundleData: unknown, evaluator: Evaluator): Promise<Active> {
  const entrypoints = evaluator.entrypoints;
  const entrypoint = entrypoints[ENTRYPOINT];
  if (entrypoint === undefined) {
    const found = Object.keys(entrypoints).join(', ') || 'none';
    throw new PolicyError('POLICY_LOAD_FAILED', `bundle has no entrypoint ${ENTRYPOINT} (found: ${found}); build it with -e ${ENTRYPOINT}`);
  }
  const permissionEntrypoint = entrypoints[PERMISSION_ENTRYPOINT] ?? null;
  const maskEntrypoint = entrypoints[MASK_ENTRYPOINT] ?? null;
  const active: Active = { evaluator, entrypoint, permissionEntrypoint, maskEntrypoint, revision: bundle.revision, bundleData, readsRuntimeCatalog: false, configChecked: false, configProblems: [] };
  const canary = await runAsync(active, JSON.stringify(CANARY), LOAD_STEP_TIMEOUT_MS);
  if (canary.reasons.some((r) => FAILED_EVALUATION.has(r.code))) {
    throw new PolicyError('POLICY_LOAD_FAILED', `bundle ${bundle.revision} failed its self-check: ${canary.reasons.map((r) => r.message).join('; ')}`);
  }
  // The config is part of the bundle, so one check per load is enough (policies/config.rego).
  // A bundle with a broken config is still loaded, and keeps checking and denying on every evaluation.
  active.configProblems = canary.reasons.filter((r) => r.code === 'policy_config_invalid').map((r) => r.message);
  active.configChecked = active.configProblems.length === 0;
  // Whether the catalog may be left out of the input: the canary without it must decide as with it
  // when the catalog is in data, and differently when it is nowhere (proof the data is read at all).
  // Anything else keeps sending the catalog with every input, as bundles before runtime data need.
  try {
    const withoutCatalog = JSON.stringify({ ...CANARY, catalog: undefined });
    const bare = await runAsync(active, withoutCatalog, LOAD_STEP_TIMEOUT_MS);
    dataTaken(await evaluator.setData(dataBytes(dataWithRuntime(bundleData, { catalog: CANARY.catalog })), LOAD_STEP_TIMEOUT_MS));
    const fromData = await runAsync(active, withoutCatalog, LOAD_STEP_TIMEOUT_MS);
    active.readsRuntimeCatalog = sameDecision(fromData, canary) && !sameDecision(bare, canary);
  } catch (cause) {
    throw new PolicyError('POLICY_LOAD_FAILED', `bundle ${bundle.revision} failed its self-check with runtime data: ${describe(cause)}`, { cause });
  }
  return active;
}

/** An evaluation's result set, or why there is none: a thrown error, or the deadline. */
type ResultSet = { ok: true; value: unknown } | { ok: false; timeout: boolean; error: string };

function resultSet(outcome: Outcome): ResultSet {
  if (!outcome.ok) return { ok: false, timeout: outcome.kind === 'timeout', error: outcome.error };
  try {
    return { ok: true, value: JSON.parse(outcome.text) };
  } catch (cause) {
    return { ok: false, timeout: false, error: `its result is not JSON: ${describe(cause)}` };
  }
}

function run(active: Active, json: string, timeoutMs: number): Decision {
  return decisionOf(resultSet(active.evaluator.callSync({ op: 'eval', entrypoint: active.entrypoint, json }, timeoutMs)));
}

async function runAsync(active: Active, json: string, timeoutMs: number): Promise<Decision> {
  return decisionOf(resultSet(await active.evaluator.call({ op: 'eval', entrypoint: active.entrypoint, json }, timeoutMs)));
}

function decisionOf(evaluated: ResultSet): Decision {
  if (!evaluated.ok) {
    return denyWith([evaluated.timeout ? { code: 'policy_timeout', message: `admission fails closed: ${evaluated.error}` } : { code: 'policy_error', message: `policy evaluation failed: ${evaluated.error}` }]);
  }
  const resultSet = evaluated.value;
  if (!Array.isArray(resultSet) || resultSet.length !== 1) {
    return denyWith([{ code: 'policy_output_invalid', message: `the policy returned ${Array.isArray(resultSet) ? resultSet.length : 'no'} results for ${ENTRYPOINT}; expected exactly one decision` }]);
  }
  return checkDecision((resultSet[0] as { result?: unknown }).result);
}

/** `{"catalog":…,` + the members of `json` (an object's JSON, as the gate builds it). */
function spliceCatalog(json: string, catalogJson: string): string {
  const body = json.trim();
  return body === '{}' ? `{"catalog":${catalogJson}}` : `{"catalog":${catalogJson},${body.slice(1)}`;
}

export async function createPolicyEngine(options: PolicyEngineOptions): Promise<PolicyEngine> {
  const logger = options.logger ?? silentLogger;
  const timeoutMs = options.evaluationTimeoutMs ?? DEFAULT_EVALUATION_TIMEOUT_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new PolicyError('CONFIG_INVALID', `evaluationTimeoutMs must be a positive number of milliseconds, got ${String(timeoutMs)}`);
  }
  // Loading data is no policy code, but may wait for a thread restarted after a timeout.
  const dataTimeoutMs = Math.max(timeoutMs, 1000);
  let closed = false;
  let active: Active | null = null;
  let lastError: PolicyError | null = null;
  // The latest admission evaluation's failure, cleared by the next one that decides.
  let lastEvaluationFailure: string | null = null;
  let watcher: FSWatcher | null = null;
  let debounce: NodeJS.Timeout | null = null;
  let reloading: Promise<unknown> = Promise.resolve();
  let runtime: RuntimeData | null = options.runtimeData ?? null;
  // Spliced into inputs for a bundle that does not read the catalog from data.
  let runtimeCatalogJson: string | null = runtime ? JSON.stringify(runtime.catalog) : null;

  function runtimeBytes(target: Active, data: RuntimeData | null): ArrayBuffer {
    const layer: RuntimeLayer = data ? { catalog: data.catalog } : {};
    if (target.configChecked) layer.configChecked = true;
    return dataBytes(dataWithRuntime(target.bundleData, layer));
  }

  /** Loads the runtime data into a policy; synchronous, so no evaluation sees it half done. */
  function applyRuntime(target: Active, data: RuntimeData | null): void {
    dataTaken(target.evaluator.setDataSync(runtimeBytes(target, data), dataTimeoutMs));
  }

  const onTimeout = (event: { elapsedMs: number; timeoutMs: number }) =>
    logger.warn('policy evaluation overran its deadline; denied (policy_timeout), evaluator thread restarted', { revision: active?.revision ?? null, timeoutMs: event.timeoutMs, elapsedMs: Math.round(event.elapsedMs) });

  async function load(): Promise<{ ok: true; revision: string } | { ok: false; error: PolicyError }> {
    try {
      const bundle = 'bundle' in options.source ? options.source.bundle : await options.readBundle(options.source.path);
      const next = await instantiate(bundle, options.policyData, onTimeout, options.fastPath);
      try {
        // The runtime data as it is now: a setRuntimeData during the load went to the bundle serving then.
        let taken: RuntimeData | null;
        do {
          taken = runtime;
          dataTaken(await next.evaluator.setData(runtimeBytes(next, taken), LOAD_STEP_TIMEOUT_MS));
        } while (taken !== runtime);
      } catch (cause) {
        next.evaluator.close();
        throw new PolicyError('POLICY_LOAD_FAILED', `bundle ${next.revision} could not take the runtime data: ${describe(cause)}`, { cause });
      }
      if (closed) {
        next.evaluator.close();
        return { ok: false, error: new PolicyError('POLICY_UNAVAILABLE', 'the policy engine was closed while the bundle loaded') };
      }
      const previous = active?.revision ?? null;
      // The swap: one assignment, so no evaluation sees half a bundle; calls already made on the
      // previous bundle are answered by it, and its thread stops after them.
      active?.evaluator.retire();
      active = next;
      lastError = null;
      lastEvaluationFailure = null;
      if (previous !== next.revision) logger.info('policy bundle loaded', { revision: next.revision, previous, readsRuntimeCatalog: next.readsRuntimeCatalog, policyData: options.policyData !== undefined, fastPath: next.evaluator.fastPath().reason ?? 'on' });
      if (next.configProblems.length > 0) {
        logger.error('policy config is invalid; every spawn is denied (policy_config_invalid)', { revision: next.revision, problems: next.configProblems, policyData: options.policyData !== undefined });
      }
      return { ok: true, revision: next.revision };
    } catch (cause) {
      const error =
        cause instanceof PolicyError ? cause : new PolicyError('POLICY_LOAD_FAILED', `policy bundle could not be loaded: ${describe(cause)}`, { cause });
      lastError = error;
      logger.error(active ? 'new policy bundle rejected; previous bundle keeps serving' : 'no policy bundle loaded; denying every spawn', {
        error: error.message,
        serving: active?.revision ?? null,
      });
      return { ok: false, error };
    }
  }

  function unavailable(): EvaluationResult {
    const why = lastError ? lastError.message : 'no policy bundle is loaded';
    return { decision: denyWith([{ code: 'policy_unavailable', message: `admission fails closed: ${why}` }]), revision: null, evalMicros: 0 };
  }

  function evaluated(current: Active, decision: Decision, started: bigint): EvaluationResult {
    const failed = decision.allow ? undefined : decision.reasons.find((r) => FAILED_EVALUATION.has(r.code));
    lastEvaluationFailure = failed ? `${failed.code}: ${failed.message}` : null;
    return { decision, revision: current.revision, evalMicros: Number(process.hrtime.bigint() - started) / 1000 };
  }

  function evaluateText(json: string): EvaluationResult {
    const current = active;
    if (!current) return unavailable();
    const started = process.hrtime.bigint();
    return evaluated(current, run(current, json, timeoutMs), started);
  }

  async function evaluateTextAsync(json: string): Promise<EvaluationResult> {
    const current = active;
    if (!current) return unavailable();
    const started = process.hrtime.bigint();
    return evaluated(current, await runAsync(current, json, timeoutMs), started);
  }

  /** The input to send for a gate input without its catalog, or the answer when there is none to send. */
  function withoutCatalog(json: string): string | EvaluationResult {
    const current = active;
    if (current && runtimeCatalogJson === null) {
      return { decision: denyWith([{ code: 'policy_unavailable', message: 'admission fails closed: the engine was given no runtime catalog' }]), revision: current.revision, evalMicros: 0 };
    }
    if (!current || current.readsRuntimeCatalog) return json;
    return spliceCatalog(json, runtimeCatalogJson ?? 'null');
  }

  function evaluateWithoutCatalog(json: string): EvaluationResult {
    const input = withoutCatalog(json);
    return typeof input === 'string' ? evaluateText(input) : input;
  }

  async function evaluateWithoutCatalogAsync(json: string): Promise<EvaluationResult> {
    const input = withoutCatalog(json);
    return typeof input === 'string' ? evaluateTextAsync(input) : input;
  }

  function evaluatePermission(input: PermissionInput): PermissionEvaluation {
    const current = active;
    if (!current) {
      const why = lastError ? lastError.message : 'no policy bundle is loaded';
      return { decision: { outcome: 'reject', code: 'policy_unavailable', reason: `permission requests fail closed: ${why}` }, revision: null, evalMicros: 0 };
    }
    if (current.permissionEntrypoint === null) return { decision: checkPermissionDecision(undefined), revision: current.revision, evalMicros: 0 };
    const started = process.hrtime.bigint();
    let decision: PermissionDecision;
    const evaluated = resultSet(current.evaluator.callSync({ op: 'eval', entrypoint: current.permissionEntrypoint, json: JSON.stringify(input) }, timeoutMs));
    if (evaluated.ok) {
      const set = evaluated.value;
      decision = checkPermissionDecision(Array.isArray(set) && set.length === 1 ? (set[0] as { result?: unknown }).result : undefined);
    } else if (evaluated.timeout) {
      decision = { outcome: 'reject', code: 'policy_timeout', reason: `permission requests fail closed: ${evaluated.error}` };
    } else {
      decision = { outcome: 'reject', code: 'policy_error', reason: `permission policy evaluation failed: ${evaluated.error}` };
    }
    return { decision, revision: current.revision, evalMicros: Number(process.hrtime.bigint() - started) / 1000 };
  }

  function evaluateMask(eventJson: string): MaskEvaluation {
    const current = active;
    if (!current || current.maskEntrypoint === null) return { ok: true, output: null };
    const evaluated = resultSet(current.evaluator.callSync({ op: 'eval', entrypoint: current.maskEntrypoint, json: eventJson }, timeoutMs));
    if (!evaluated.ok) return { ok: false, error: `mask rule evaluation ${evaluated.timeout ? 'timed out' : 'failed'}: ${evaluated.error}` };
    const set = evaluated.value;
    if (!Array.isArray(set)) return { ok: false, error: 'the mask rule returned no result set' };
    // A partial set with no member may come back as no result at all.
    return { ok: true, output: set.length === 0 ? [] : (set[0] as { result?: unknown }).result };
  }

  function setRuntimeData(data: RuntimeData): void {
    const current = active;
    const catalogJson = JSON.stringify(data.catalog);
    if (current) {
      try {
        applyRuntime(current, data);
      } catch (cause) {
        try {
          applyRuntime(current, runtime);
        } catch {
          // The policy's data is in an unknown state: stop serving rather than decide on it.
          current.evaluator.close();
          active = null;
        }
        const error = new PolicyError('POLICY_LOAD_FAILED', `runtime data could not be loaded into bundle ${current.revision}: ${describe(cause)}`, { cause });
        if (!active) lastError = error;
        logger.error(active ? 'runtime data rejected; previous runtime data keeps serving' : 'runtime data could not be loaded; denying every spawn', { error: error.message });
        throw error;
      }
    }
    runtime = data;
    runtimeCatalogJson = catalogJson;
  }

  // Every load reports, whoever asked for it (start, the file watch, a SIGHUP, an API call).
  const reload = () => {
    const next = reloading.then(load).then((result) => {
      try {
        options.onReload?.(result);
      } catch {
        // A listener's bug must not turn a loaded bundle into a failed reload.
      }
      return result;
    });
    reloading = next;
    return next;
  };

  await reload();

  if (options.watch && 'path' in options.source) {
    const file = resolve(options.source.path);
    const name = basename(file);
    // Watch the folder, not the file: bundles are replaced by rename, which orphans a file watch.
    watcher = watch(dirname(file), (_event, changed) => {
      if (changed !== null && changed !== name) return;
      if (debounce) clearTimeout(debounce);
      debounce = setTimeout(() => {
        reload().catch(() => undefined);
      }, 150);
    });
    watcher.on('error', (err) => logger.warn('bundle watch failed; hot reload stopped', { error: err.message }));
  }

  return {
    evaluate: (input) => evaluateText(JSON.stringify(input)),
    evaluateJson: evaluateText,
    evaluateJsonWithoutCatalog: evaluateWithoutCatalog,
    evaluateJsonWithoutCatalogAsync: evaluateWithoutCatalogAsync,
    evaluatePermission,
    evaluateMask,
    setRuntimeData,
    get readsRuntimeCatalog() {
      return active?.readsRuntimeCatalog ?? false;
    },
    get configProblems() {
      return active?.configProblems ?? [];
    },
    get revision() {
      return active?.revision ?? null;
    },
    get fastPath(): FastPathStatus {
      return active?.evaluator.fastPath() ?? offStatus('no policy bundle is loaded');
    },
    get lastError() {
      return lastError;
    },
    get health(): PolicyHealth {
      if (!active) return { state: 'unavailable', problems: [lastError?.message ?? 'no policy bundle is loaded'] };
      if (active.configProblems.length) return { state: 'failing', problems: active.configProblems.map((p) => `policy_config_invalid: ${p}`) };
      if (lastEvaluationFailure) return { state: 'erroring', problems: [lastEvaluationFailure] };
      if (lastError) return { state: 'stale', problems: [`revision ${active.revision} serves; the newer bundle was rejected: ${lastError.message}`] };
      return { state: 'ok', problems: [] };
    },
    reload,
    close() {
      closed = true;
      if (debounce) clearTimeout(debounce);
      watcher?.close();
      watcher = null;
      active?.evaluator.close();
    },
  };
}
