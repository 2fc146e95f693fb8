import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { loadPolicy, type LoadedPolicy } from '@open-policy-agent/opa-wasm';
import { PolicyError } from '../errors.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { checkDecision, denyWith } from './decision.js';
import type { AdmissionInput, Decision } from './types.js';
import { checkPermissionDecision, PERMISSION_ENTRYPOINT } from './permissions.js';
import type { PermissionDecision, PermissionInput } from './permissions.js';
import { MASK_ENTRYPOINT } from './decision-mask.js';
import type { MaskEvaluation } from './decision-mask.js';

export const ENTRYPOINT = 'spawngate/admission/decision';

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
}

export interface PolicyHealth {
  state: 'ok' | 'stale' | 'erroring' | 'failing' | 'unavailable';
  /** Why it is not ok, one line each. */
  problems: string[];
}

/** Engine answers that mean the policy did not decide (not a deny of the policy's own). */
const FAILED_EVALUATION = new Set(['policy_error', 'policy_output_invalid']);

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
  readonly lastError: PolicyError | null;
  /**
   * Whether the bundle in force decides: `failing` while its config is invalid (every spawn is then
   * denied); `erroring` while its latest admission evaluation errored or returned no valid decision
   * (cleared by the next one that decides: one caller's input may be what trips it); `stale` after
   * a rejected reload (the previous bundle serves); `unavailable` with no bundle.
   */
  readonly health: PolicyHealth;
  reload(): Promise<{ ok: true; revision: string } | { ok: false; error: PolicyError }>;
  close(): void;
}

/**
 * The members of the SDK's LoadedPolicy (declared public in its typings) that its own evaluate()
 * uses on the OPA WASM ABI 1.2 path, and the one export it calls there.
 */
interface RawPolicy {
  minorVersion: unknown;
  mem: { buffer: ArrayBuffer; grow(pages: number): number };
  wasmInstance: { exports: Record<string, unknown> };
  dataAddr: number;
  dataHeapPtr: number;
}

type OpaEval = (reserved: number, entrypoint: number, dataAddr: number, inputAddr: number, inputLength: number, heapAddr: number, format: number) => number;

interface Active {
  policy: LoadedPolicy;
  /** The ABI 1.2 entry, when the module has it; otherwise evaluation goes through the SDK. */
  opaEval: OpaEval | null;
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
const decoder = new TextDecoder();
const WASM_PAGE = 64 * 1024;

// A request shape every sane policy answers; a bundle that cannot is not swapped in.
const CANARY: AdmissionInput = {
  request: { runtime: 'acp', agentId: 'canary', execution: null, task: 'canary', label: null, cwd: null, model: null, resumeSessionId: null, envNames: [] },
  caller: {
    sessionKey: 'spawngate:canary',
    parentSessionKey: null,
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
  usage: { total: 0, user: 0, channel: 0, backends: {}, profiles: {}, userProfiles: {}, channelProfiles: {}, recent: { windowSeconds: 60, user: 0, channel: 0 } },
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

async function instantiate(bundle: PolicyBundle, policyData: Readonly<Record<string, unknown>> | undefined): Promise<Active> {
  let policy: LoadedPolicy;
  // The override goes in before the self-check, so the canary checks the config that will serve.
  const bundleData = withPolicyData(bundle.data, policyData);
  try {
    policy = await loadPolicy(bundle.wasm);
    policy.setData(dataWithRuntime(bundleData, {}));
  } catch (cause) {
    throw new PolicyError('POLICY_LOAD_FAILED', `policy.wasm could not be instantiated: ${describe(cause)}`, { cause });
  }
  const entrypoints = policy.entrypoints as Record<string, number> | undefined;
  const entrypoint = entrypoints?.[ENTRYPOINT];
  if (entrypoint === undefined) {
    const found = Object.keys(entrypoints ?? {}).join(', ') || 'none';
    throw new PolicyError('POLICY_LOAD_FAILED', `bundle has no entrypoint ${ENTRYPOINT} (found: ${found}); build it with -e ${ENTRYPOINT}`);
  }
  const raw = policy as unknown as RawPolicy;
  const opaEval = typeof raw.minorVersion === 'number' && raw.minorVersion >= 2 && typeof raw.wasmInstance.exports.opa_eval === 'function' ? (raw.wasmInstance.exports.opa_eval as OpaEval) : null;
  const permissionEntrypoint = entrypoints?.[PERMISSION_ENTRYPOINT] ?? null;
  const maskEntrypoint = entrypoints?.[MASK_ENTRYPOINT] ?? null;
  const active: Active = { policy, opaEval, entrypoint, permissionEntrypoint, maskEntrypoint, revision: bundle.revision, bundleData, readsRuntimeCatalog: false, configChecked: false, configProblems: [] };
  const canary = run(active, JSON.stringify(CANARY));
  if (canary.reasons.some((r) => r.code === 'policy_output_invalid' || r.code === 'policy_error')) {
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
    const bare = run(active, withoutCatalog);
    policy.setData(dataWithRuntime(bundleData, { catalog: CANARY.catalog }));
    const fromData = run(active, withoutCatalog);
    active.readsRuntimeCatalog = sameDecision(fromData, canary) && !sameDecision(bare, canary);
  } catch (cause) {
    throw new PolicyError('POLICY_LOAD_FAILED', `bundle ${bundle.revision} failed its self-check with runtime data: ${describe(cause)}`, { cause });
  }
  return active;
}

/**
 * What the SDK's evaluate() does on ABI 1.2 (one opa_eval call: parse the input JSON placed just
 * above the data, evaluate, dump the result set as JSON), minus two copies and a byte-by-byte scan:
 * the input is encoded straight into WASM memory and the result's end is found natively.
 */
function evaluateRaw(policy: RawPolicy, opaEval: OpaEval, entrypoint: number, json: string): unknown {
  const inputAddr = policy.dataHeapPtr;
  // UTF-8 needs at most 3 bytes per UTF-16 unit.
  const shortfall = inputAddr + json.length * 3 - policy.mem.buffer.byteLength;
  if (shortfall > 0) policy.mem.grow(Math.ceil(shortfall / WASM_PAGE));
  const { written } = encoder.encodeInto(json, new Uint8Array(policy.mem.buffer, inputAddr));
  const resultAddr = opaEval(0, entrypoint, policy.dataAddr, inputAddr, written, inputAddr + written, 0);
  // Evaluation may have grown the memory, which detaches any earlier view of it.
  const heap = new Uint8Array(policy.mem.buffer);
  const end = heap.indexOf(0, resultAddr);
  return JSON.parse(decoder.decode(heap.subarray(resultAddr, end < 0 ? heap.length : end)));
}

// The SDK takes an ArrayBuffer as already-serialised JSON, all of it: it must be exactly the bytes.
function exactBuffer(bytes: Uint8Array<ArrayBuffer>): ArrayBuffer {
  return bytes.buffer.byteLength === bytes.byteLength ? bytes.buffer : bytes.slice().buffer;
}

function evaluateAt(active: Active, entrypoint: number, json: string): unknown {
  return active.opaEval ? evaluateRaw(active.policy, active.opaEval, entrypoint, json) : active.policy.evaluate(exactBuffer(encoder.encode(json)), entrypoint);
}

function run(active: Active, json: string): Decision {
  let resultSet: unknown;
  try {
    resultSet = evaluateAt(active, active.entrypoint, json);
  } catch (cause) {
    return denyWith([{ code: 'policy_error', message: `policy evaluation failed: ${describe(cause)}` }]);
  }
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

  /** Loads the runtime data into a policy; synchronous, so no evaluation sees it half done. */
  function applyRuntime(target: Active, data: RuntimeData | null): void {
    const layer: RuntimeLayer = data ? { catalog: data.catalog } : {};
    if (target.configChecked) layer.configChecked = true;
    target.policy.setData(dataWithRuntime(target.bundleData, layer));
  }

  async function load(): Promise<{ ok: true; revision: string } | { ok: false; error: PolicyError }> {
    try {
      const bundle = 'bundle' in options.source ? options.source.bundle : await options.readBundle(options.source.path);
      const next = await instantiate(bundle, options.policyData);
      try {
        applyRuntime(next, runtime);
      } catch (cause) {
        throw new PolicyError('POLICY_LOAD_FAILED', `bundle ${next.revision} could not take the runtime data: ${describe(cause)}`, { cause });
      }
      const previous = active?.revision ?? null;
      active = next; // the swap: evaluate() is synchronous, so no evaluation ever sees half a bundle
      lastError = null;
      lastEvaluationFailure = null;
      if (previous !== next.revision) logger.info('policy bundle loaded', { revision: next.revision, previous, readsRuntimeCatalog: next.readsRuntimeCatalog, policyData: options.policyData !== undefined });
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

  function evaluateText(json: string): EvaluationResult {
    const current = active;
    if (!current) {
      const why = lastError ? lastError.message : 'no policy bundle is loaded';
      return { decision: denyWith([{ code: 'policy_unavailable', message: `admission fails closed: ${why}` }]), revision: null, evalMicros: 0 };
    }
    const started = process.hrtime.bigint();
    const decision = run(current, json);
    const failed = decision.allow ? undefined : decision.reasons.find((r) => FAILED_EVALUATION.has(r.code));
    lastEvaluationFailure = failed ? `${failed.code}: ${failed.message}` : null;
    return { decision, revision: current.revision, evalMicros: Number(process.hrtime.bigint() - started) / 1000 };
  }

  function evaluateWithoutCatalog(json: string): EvaluationResult {
    const current = active;
    if (current && runtimeCatalogJson === null) {
      return { decision: denyWith([{ code: 'policy_unavailable', message: 'admission fails closed: the engine was given no runtime catalog' }]), revision: current.revision, evalMicros: 0 };
    }
    if (!current || current.readsRuntimeCatalog) return evaluateText(json);
    return evaluateText(spliceCatalog(json, runtimeCatalogJson ?? 'null'));
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
    try {
      const resultSet = evaluateAt(current, current.permissionEntrypoint, JSON.stringify(input));
      const result = Array.isArray(resultSet) && resultSet.length === 1 ? (resultSet[0] as { result?: unknown }).result : undefined;
      decision = checkPermissionDecision(result);
    } catch (cause) {
      decision = { outcome: 'reject', code: 'policy_error', reason: `permission policy evaluation failed: ${describe(cause)}` };
    }
    return { decision, revision: current.revision, evalMicros: Number(process.hrtime.bigint() - started) / 1000 };
  }

  function evaluateMask(eventJson: string): MaskEvaluation {
    const current = active;
    if (!current || current.maskEntrypoint === null) return { ok: true, output: null };
    try {
      const resultSet = evaluateAt(current, current.maskEntrypoint, eventJson);
      if (!Array.isArray(resultSet)) return { ok: false, error: 'the mask rule returned no result set' };
      // A partial set with no member may come back as no result at all.
      return { ok: true, output: resultSet.length === 0 ? [] : (resultSet[0] as { result?: unknown }).result };
    } catch (cause) {
      return { ok: false, error: `mask rule evaluation failed: ${describe(cause)}` };
    }
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
      if (debounce) clearTimeout(debounce);
      watcher?.close();
      watcher = null;
    },
  };
}
