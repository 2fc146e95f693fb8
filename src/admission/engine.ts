import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { loadPolicy, type LoadedPolicy } from '@open-policy-agent/opa-wasm';
import { PolicyError } from '../errors.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { checkDecision, denyWith } from './decision.js';
import type { AdmissionInput, Decision } from './types.js';

export const ENTRYPOINT = 'spawngate/admission/decision';

export interface PolicyBundle {
  wasm: Uint8Array;
  data: unknown;
  revision: string;
}

export type BundleSource = { path: string } | { bundle: PolicyBundle };

export interface PolicyEngineOptions {
  source: BundleSource;
  /** Reads and unpacks a bundle file; injected so the engine does not care about tar. */
  readBundle: (path: string) => Promise<PolicyBundle>;
  /** Reload when the bundle file changes (only for `{ path }`). */
  watch?: boolean;
  logger?: Logger;
  onReload?: (event: { ok: true; revision: string } | { ok: false; error: PolicyError }) => void;
}

export interface EvaluationResult {
  decision: Decision;
  revision: string | null;
  evalMicros: number;
}

export interface PolicyEngine {
  /** Never throws: no bundle, an evaluation error, or malformed output are all denies. */
  evaluate(input: AdmissionInput): EvaluationResult;
  /** Same as evaluate, with the input already serialised (the gate caches the catalog's JSON). */
  evaluateJson(inputJson: string): EvaluationResult;
  readonly revision: string | null;
  readonly lastError: PolicyError | null;
  reload(): Promise<{ ok: true; revision: string } | { ok: false; error: PolicyError }>;
  close(): void;
}

interface Active {
  policy: LoadedPolicy;
  entrypoint: number;
  revision: string;
}

const encoder = new TextEncoder();

// A request shape every sane policy answers; a bundle that cannot is not swapped in.
const CANARY: AdmissionInput = {
  request: { runtime: 'acp', agentId: 'canary', execution: null, task: 'canary', label: null },
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

async function instantiate(bundle: PolicyBundle): Promise<Active> {
  let policy: LoadedPolicy;
  try {
    policy = await loadPolicy(bundle.wasm);
    policy.setData(bundle.data ?? {});
  } catch (cause) {
    throw new PolicyError('POLICY_LOAD_FAILED', `policy.wasm could not be instantiated: ${describe(cause)}`, { cause });
  }
  const entrypoints = policy.entrypoints as Record<string, number> | undefined;
  const entrypoint = entrypoints?.[ENTRYPOINT];
  if (entrypoint === undefined) {
    const found = Object.keys(entrypoints ?? {}).join(', ') || 'none';
    throw new PolicyError('POLICY_LOAD_FAILED', `bundle has no entrypoint ${ENTRYPOINT} (found: ${found}); build it with -e ${ENTRYPOINT}`);
  }
  const active: Active = { policy, entrypoint, revision: bundle.revision };
  const canary = run(active, encoder.encode(JSON.stringify(CANARY)));
  if (canary.reasons.some((r) => r.code === 'policy_output_invalid' || r.code === 'policy_error')) {
    throw new PolicyError('POLICY_LOAD_FAILED', `bundle ${bundle.revision} failed its self-check: ${canary.reasons.map((r) => r.message).join('; ')}`);
  }
  return active;
}

function run(active: Active, input: Uint8Array): Decision {
  let resultSet: unknown;
  try {
    // Copy into an exact-size ArrayBuffer: the SDK takes ArrayBuffer input as already-serialised JSON.
    resultSet = active.policy.evaluate(input.buffer.byteLength === input.byteLength ? input.buffer : input.slice().buffer, active.entrypoint);
  } catch (cause) {
    return denyWith([{ code: 'policy_error', message: `policy evaluation failed: ${describe(cause)}` }]);
  }
  if (!Array.isArray(resultSet) || resultSet.length !== 1) {
    return denyWith([{ code: 'policy_output_invalid', message: `the policy returned ${Array.isArray(resultSet) ? resultSet.length : 'no'} results for ${ENTRYPOINT}; expected exactly one decision` }]);
  }
  return checkDecision((resultSet[0] as { result?: unknown }).result);
}

export async function createPolicyEngine(options: PolicyEngineOptions): Promise<PolicyEngine> {
  const logger = options.logger ?? silentLogger;
  let active: Active | null = null;
  let lastError: PolicyError | null = null;
  let watcher: FSWatcher | null = null;
  let debounce: NodeJS.Timeout | null = null;
  let reloading: Promise<unknown> = Promise.resolve();

  async function load(): Promise<{ ok: true; revision: string } | { ok: false; error: PolicyError }> {
    try {
      const bundle = 'bundle' in options.source ? options.source.bundle : await options.readBundle(options.source.path);
      const next = await instantiate(bundle);
      const previous = active?.revision ?? null;
      active = next; // the swap: evaluate() is synchronous, so no evaluation ever sees half a bundle
      lastError = null;
      if (previous !== next.revision) logger.info('policy bundle loaded', { revision: next.revision, previous });
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

  function evaluateBytes(bytes: Uint8Array): EvaluationResult {
    const current = active;
    if (!current) {
      const why = lastError ? lastError.message : 'no policy bundle is loaded';
      return { decision: denyWith([{ code: 'policy_unavailable', message: `admission fails closed: ${why}` }]), revision: null, evalMicros: 0 };
    }
    const started = process.hrtime.bigint();
    const decision = run(current, bytes);
    return { decision, revision: current.revision, evalMicros: Number(process.hrtime.bigint() - started) / 1000 };
  }

  const reload = () => {
    const next = reloading.then(load);
    reloading = next;
    return next;
  };

  const first = await load();
  options.onReload?.(first);

  if (options.watch && 'path' in options.source) {
    const file = resolve(options.source.path);
    const name = basename(file);
    // Watch the folder, not the file: bundles are replaced by rename, which orphans a file watch.
    watcher = watch(dirname(file), (_event, changed) => {
      if (changed !== null && changed !== name) return;
      if (debounce) clearTimeout(debounce);
      debounce = setTimeout(() => {
        reload().then(
          (result) => options.onReload?.(result),
          () => undefined,
        );
      }, 150);
    });
    watcher.on('error', (err) => logger.warn('bundle watch failed; hot reload stopped', { error: err.message }));
  }

  return {
    evaluate: (input) => evaluateBytes(encoder.encode(JSON.stringify(input))),
    evaluateJson: (json) => evaluateBytes(encoder.encode(json)),
    get revision() {
      return active?.revision ?? null;
    },
    get lastError() {
      return lastError;
    },
    reload,
    close() {
      if (debounce) clearTimeout(debounce);
      watcher?.close();
      watcher = null;
    },
  };
}
