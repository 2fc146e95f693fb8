/**
 * The evaluator's fast path: the bundle's WASM with fuel (wasm-fuel.ts), instantiated on the
 * calling thread, which answers an ordinary evaluation without handing it to the evaluator's
 * thread. On one CPU that hand-over (two thread wake-ups) cost about as much as the evaluation.
 *
 * An evaluation gets FAST_FUEL units, about 30 times what an admission of the shipped policy uses
 * (24-34 thousand, 30-50 µs). A unit is not a fixed time: a policy spinning in a comprehension
 * ran out of them in 20-32 ms here, which is what such an evaluation holds the event loop for
 * before the thread takes it, on top of the deadline. One that runs out, or fails in any way, is not answered here:
 * the caller sends it to the thread, where it runs again under the deadline and is decided as
 * before, and the instance here is dropped (a trap may leave its stack pointer mid-call) and made
 * again from the compiled module on the next evaluation. So the deadline still bounds what any
 * evaluation costs its caller, give or take the fuel's worth, and a policy that is usually heavy
 * is sent straight to the thread after a miss, for twice as many calls after each further miss.
 *
 * Some bundles cannot take this path, and are evaluated on the thread only:
 * - a bundle that calls builtins implemented in JavaScript by the SDK (sprintf, regex.split and
 *   others): fuel does not reach into them, and some have no bound (a backtracking RegExp);
 * - a module this rewrite cannot meter (wasm-fuel.ts), or one older than OPA's WASM ABI 1.2.
 */
import * as sdk from '@open-policy-agent/opa-wasm';
import type { LoadedPolicy } from '@open-policy-agent/opa-wasm';
import { compilePolicy, type WasmModule } from './evaluator.js';
import { cString, evaluateRaw, opaEvalOf, type OpaEval, type RawPolicy } from './opa-raw.js';
import { FUEL_EXPORT, withFuel } from './wasm-fuel.js';

// The SDK's ES module names only loadPolicy; loadPolicySync is on its default export.
const { loadPolicySync } = (sdk as unknown as { default: typeof sdk }).default;

/** Fuel for one evaluation on the fast path (wasm-fuel.ts counts loop heads and calls). */
export const FAST_FUEL = 1_000_000;
/** Setting the data parses it in WASM: bounded by its size, which the gateway's own config sets. */
const DATA_FUEL = 0x7fffffff;
/** The instance's memory limit (256 MiB): past it an evaluation fails here and goes to the thread. */
const MAX_PAGES = 4096;
/** The longest run of calls sent straight to the thread after repeated misses. */
const MAX_SKIP = 1024;


interface Instance {
  policy: LoadedPolicy;
  raw: RawPolicy;
  opaEval: OpaEval;
  fuel: { value: number };
  /** The data it holds (the evaluator's JSON bytes, compared by identity). */
  data: ArrayBuffer | null;
}

export interface FastPathStatus {
  on: boolean;
  /** Why it is off. */
  reason: string | null;
  /** Evaluations answered here. */
  answered: number;
  /** Evaluations that ran out of fuel or failed here and went to the thread. */
  misses: number;
}

export interface FastPath {
  /** The result set as JSON, or null: the evaluation must go to the thread. */
  evaluate(entrypoint: number, json: string, data: ArrayBuffer): string | null;
  status(): FastPathStatus;
  close(): void;
}

const decoder = new TextDecoder();

/** The builtins the module calls out to JavaScript for, by name. */
function externalBuiltins(raw: RawPolicy): string[] {
  const exports = raw.wasmInstance.exports as Record<string, (...args: number[]) => number>;
  return Object.keys(JSON.parse(decoder.decode(cString(raw, exports.opa_json_dump!(exports.builtins!())))) as Record<string, unknown>);
}

function instantiate(module: WasmModule): Instance {
  const policy = loadPolicySync(module as Parameters<typeof loadPolicySync>[0], { initial: 5, maximum: MAX_PAGES });
  const raw = policy as unknown as RawPolicy;
  const opaEval = opaEvalOf(raw);
  const fuel = raw.wasmInstance.exports[FUEL_EXPORT] as { value: number } | undefined;
  if (!opaEval || !fuel) throw new Error('the module has no opa_eval of ABI 1.2 or no fuel');
  return { policy, raw, opaEval, fuel, data: null };
}

/** A fast path that is off, and why. */
function off(reason: string): FastPath {
  return {
    evaluate: () => null,
    status: () => ({ on: false, reason, answered: 0, misses: 0 }),
    close: () => undefined,
  };
}

/**
 * The fast path for a bundle's policy.wasm; one that is off (status().reason says why) when the
 * bundle cannot take it. Never throws: the thread alone is always a way to evaluate.
 */
export async function prepareFastPath(bytes: Uint8Array): Promise<FastPath> {
  let module: WasmModule;
  let first: Instance;
  try {
    module = await compilePolicy(withFuel(bytes));
    first = instantiate(module);
  } catch (cause) {
    return off(`its WASM cannot be metered: ${cause instanceof Error ? cause.message : String(cause)}`);
  }
  const external = externalBuiltins(first.raw);
  if (external.length > 0) return off(`it calls builtins that run as JavaScript (${external.sort().join(', ')})`);

  let instance: Instance | null = first;
  let closed = false;
  let answered = 0;
  let misses = 0;
  /** Calls still to send straight to the thread, and how many the next miss will skip. */
  let skip = 0;
  let backoff = 1;

  function miss(): null {
    misses++;
    instance = null;
    skip = backoff;
    backoff = Math.min(MAX_SKIP, backoff * 2);
    return null;
  }

  return {
    evaluate(entrypoint, json, data) {
      if (closed) return null;
      if (skip > 0) {
        skip--;
        return null;
      }
      try {
        instance ??= instantiate(module);
        if (instance.data !== data) {
          instance.fuel.value = DATA_FUEL;
          instance.policy.setData(data);
          instance.data = data;
        }
        instance.fuel.value = FAST_FUEL;
        const text = decoder.decode(evaluateRaw(instance.raw, instance.opaEval, entrypoint, json));
        answered++;
        backoff = 1;
        return text;
      } catch {
        return miss();
      }
    },
    status: () => ({ on: !closed, reason: closed ? 'closed' : null, answered, misses }),
    close() {
      closed = true;
      instance = null;
    },
  };
}
