/**
 * The evaluator's fast path: the bundle's WASM with fuel (wasm-fuel.ts), instantiated on the
 * calling thread, which answers an ordinary evaluation without handing it to the evaluator's
 * thread. On one CPU that hand-over (two thread wake-ups) cost about as much as the evaluation.
 *
 * An evaluation here has a time budget on the event loop, FAST_BUDGET_MS. WASM has no clock, so
 * the fuel is handed out in slices of FAST_SLICE units (an admission of the shipped policy uses
 * about 80 thousand, 30 µs): when a slice has run out, the next counted function entry, or head of
 * a loop that makes calls, calls back (through the builtin import, with an id no builtin has) and
 * gets another slice, or, past the budget, an exception that unwinds it; a loop that makes no
 * call traps once it is FAST_LOOP_GRACE past its slice. A unit is not a fixed time (0.4-0.6 ns
 * here, measured on ordinary evaluations, an 8 KB task and a policy spinning in a comprehension),
 * so what one evaluation may hold the event loop for is the budget plus at most one slice and the
 * grace: 2.1-2.3 ms for that spin at the median, measured; docs/policy.md has the figures.
 *
 * One that runs out, or fails in any way, is not answered here: the caller sends it to the
 * thread, where it runs again under the deadline and is decided as before. The instance here is
 * then put back as it was when its data was set (memory below the data's end and the module's
 * mutable globals: a stopped call leaves the stack pointer and the allocator mid-call), which
 * costs a copy of a few hundred KB, not a new instance (1-3 ms, and its first evaluations are
 * slow). A policy that is usually heavy is sent straight to the thread after a miss, for twice as
 * many calls after each further miss.
 *
 * The instance is made here with imports of our own rather than by the SDK's loader: the refuel
 * call goes through the builtin import, which on this path has nothing else to do.
 * Some bundles cannot take this path, and are evaluated on the thread only:
 * - a bundle that calls builtins implemented in JavaScript by the SDK (sprintf, regex.split and
 *   others): fuel does not reach into them, and some have no bound (a backtracking RegExp);
 * - a module this rewrite cannot meter (wasm-fuel.ts), or one older than OPA's WASM ABI 1.2.
 */
import { performance } from 'node:perf_hooks';
import { compilePolicy, cString, evaluateRaw, opaEvalOf, type OpaEval, type RawPolicy, type WasmModule } from './opa-raw.js';
import { FUEL_EXPORT, withFuel } from './wasm-fuel.js';

/** Fuel units between two looks at the clock (wasm-fuel.ts counts loop iterations and function entries): 20-30 µs. */
export const FAST_SLICE = 50_000;
/**
 * How far past its slice a loop that makes no call may go before it traps: such a loop does not
 * look at the clock (wasm-fuel.ts says why), so a long one (a scan in a runtime helper) is bounded
 * by this instead. Its evaluation then goes to the thread like any other miss.
 */
export const FAST_LOOP_GRACE = 40_000;
/** Event-loop time one evaluation may take here before it goes to the thread instead. */
export const FAST_BUDGET_MS = 2;
/**
 * Inputs longer than this (JSON characters) go straight to the thread. What an evaluation costs
 * grows with the task's length (for the shipped policy, 0.15 ms for a 1 KiB task, 0.6 ms for 7 KiB and
 * 10 ms for 64 KiB), so a long one would spend the budget here and then run on the thread
 * all the same, and its miss would send the short ones after it to the thread too.
 */
export const FAST_MAX_INPUT = 8 * 1024;
/** Setting the data parses it in WASM: bounded by its size, which the gateway's own config sets. */
const DATA_FUEL = 0x7fffffff;
/** The instance's memory limit (256 MiB): past it an evaluation fails here and goes to the thread. */
const MAX_PAGES = 4096;
/** The longest run of calls sent straight to the thread after repeated misses. */
const MAX_SKIP = 1024;
/** The builtin id the fuel check passes to ask for more fuel: OPA numbers its builtins from 0. */
const REFUEL_ID = -1;

interface Global {
  value: number;
}
interface WasmApi {
  Memory: new (descriptor: { initial: number; maximum: number }) => RawPolicy['mem'];
  Instance: new (module: WasmModule, imports: object) => { exports: Record<string, unknown> };
}
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

interface OpaExports {
  opa_malloc(size: number): number;
  opa_json_parse(addr: number, length: number): number;
  opa_json_dump(addr: number): number;
  opa_heap_ptr_get(): number;
  opa_heap_ptr_set(addr: number): void;
  builtins(): number;
}

interface Instance {
  raw: RawPolicy;
  exports: OpaExports;
  opaEval: OpaEval;
  fuel: Global;
  /** The module's own mutable globals (the stack pointer, for OPA). */
  globals: Global[];
  baseHeapPtr: number;
  /** The data it holds (the evaluator's JSON bytes, compared by identity). */
  data: ArrayBuffer | null;
  /** Memory below the data's end and the globals, as they were when the data was set. */
  rest: { memory: Uint8Array; globals: number[] } | null;
}

export interface FastPathStatus {
  on: boolean;
  /** Why it is off. */
  reason: string | null;
  /** Evaluations answered here. */
  answered: number;
  /** Evaluations that ran out of time or failed here and went to the thread. */
  misses: number;
  /** Instances made: one, unless a stopped one could not be put back. */
  instances: number;
  /** Evaluations sent to the thread without a try here, their input being longer than FAST_MAX_INPUT. */
  long: number;
}

export interface FastPath {
  /** The result set as JSON, or null: the evaluation must go to the thread. */
  evaluate(entrypoint: number, json: string, data: ArrayBuffer): string | null;
  status(): FastPathStatus;
  close(): void;
}

export interface FastPathOptions {
  budgetMs?: number;
  /** The clock the budget is read on (milliseconds); tests drive their own. */
  now?: () => number;
}

const decoder = new TextDecoder();

class OutOfTime extends Error {}

/** The status of a fast path that is off (or not there), and why. */
export function offStatus(reason: string): FastPathStatus {
  return { on: false, reason, answered: 0, misses: 0, instances: 0, long: 0 };
}

/** A fast path that is off, and why. */
function off(reason: string): FastPath {
  return {
    evaluate: () => null,
    status: () => offStatus(reason),
    close: () => undefined,
  };
}

const message = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause));

/**
 * The fast path for a bundle's policy.wasm; one that is off (status().reason says why) when the
 * bundle cannot take it. Never throws: the thread alone is always a way to evaluate.
 */
export async function prepareFastPath(bytes: Uint8Array, options: FastPathOptions = {}): Promise<FastPath> {
  const budgetMs = options.budgetMs ?? FAST_BUDGET_MS;
  const now = options.now ?? (() => performance.now());
  /** When the evaluation under way must stop: past it, the next refuel throws. */
  let deadline = Infinity;
  let instances = 0;

  function refuel(): number {
    if (now() > deadline) throw new OutOfTime('the evaluation ran past its time on the fast path');
    return FAST_SLICE;
  }

  let module: WasmModule;
  let globalNames: string[];
  let first: Instance;
  try {
    const fueled = withFuel(bytes, { refuel: { module: 'env', name: 'opa_builtin0', arg: REFUEL_ID }, loopGrace: FAST_LOOP_GRACE });
    if (!fueled.refuel) throw new Error('it has no builtin import of the expected type to refuel through');
    globalNames = fueled.globals;
    module = await compilePolicy(fueled.bytes);
    first = instantiate();
  } catch (cause) {
    return off(`its WASM cannot be metered: ${message(cause)}`);
  }
  const external = Object.keys(JSON.parse(decoder.decode(cString(first.raw, first.exports.opa_json_dump(first.exports.builtins())))) as Record<string, unknown>);
  if (external.length > 0) return off(`it calls builtins that run as JavaScript (${external.sort().join(', ')})`);

  function instantiate(): Instance {
    instances++;
    const memory = new wasm.Memory({ initial: 5, maximum: MAX_PAGES });
    const builtin = () => {
      throw new Error('a builtin that runs as JavaScript was called on the fast path');
    };
    const env = {
      memory,
      opa_abort(addr: number) {
        throw new Error(`opa_abort: ${decoder.decode(cString({ mem: memory }, addr))}`);
      },
      opa_println: () => undefined,
      opa_builtin0: (id: number) => (id === REFUEL_ID ? refuel() : builtin()),
      opa_builtin1: builtin,
      opa_builtin2: builtin,
      opa_builtin3: builtin,
      opa_builtin4: builtin,
    };
    const wasmInstance = new wasm.Instance(module, { env });
    const exports = wasmInstance.exports as unknown as OpaExports & Record<string, unknown>;
    const version = (name: string) => (exports[name] as Global | undefined)?.value;
    if (version('opa_wasm_abi_version') !== 1) throw new Error(`OPA WASM ABI ${version('opa_wasm_abi_version')}, not 1`);
    const fuel = exports[FUEL_EXPORT] as Global | undefined;
    if (!fuel) throw new Error('the module has no fuel');
    const raw: RawPolicy = { minorVersion: version('opa_wasm_abi_minor_version'), mem: memory, wasmInstance, dataAddr: 0, dataHeapPtr: 0 };
    const opaEval = opaEvalOf(raw);
    if (!opaEval) throw new Error('the module has no opa_eval of ABI 1.2');
    const instance: Instance = { raw, exports, opaEval, fuel, globals: globalNames.map((n) => exports[n] as Global), baseHeapPtr: 0, data: null, rest: null };
    raw.dataAddr = parse(instance, new TextEncoder().encode('{}'));
    instance.baseHeapPtr = raw.dataHeapPtr = exports.opa_heap_ptr_get();
    return instance;
  }

  /** What the SDK's _loadJSON does: the JSON parsed into a value on the instance's heap. */
  function parse(instance: Instance, json: Uint8Array): number {
    const addr = instance.exports.opa_malloc(json.length);
    new Uint8Array(instance.raw.mem.buffer).set(json, addr);
    const value = instance.exports.opa_json_parse(addr, json.length);
    if (value === 0) throw new Error('the policy data is not JSON OPA can parse');
    return value;
  }

  function setData(instance: Instance, data: ArrayBuffer): void {
    instance.rest = null;
    instance.data = null;
    instance.exports.opa_heap_ptr_set(instance.baseHeapPtr);
    instance.raw.dataAddr = parse(instance, new Uint8Array(data));
    instance.raw.dataHeapPtr = instance.exports.opa_heap_ptr_get();
    instance.rest = { memory: new Uint8Array(instance.raw.mem.buffer, 0, instance.raw.dataHeapPtr).slice(), globals: instance.globals.map((g) => g.value) };
    instance.data = data;
  }

  /** Puts a stopped instance back as it was when its data was set; false when it cannot be. */
  function restore(instance: Instance): boolean {
    if (!instance.rest) return false;
    new Uint8Array(instance.raw.mem.buffer).set(instance.rest.memory, 0);
    instance.rest.globals.forEach((value, i) => (instance.globals[i]!.value = value));
    return true;
  }

  let instance: Instance | null = first;
  let closed = false;
  let answered = 0;
  let misses = 0;
  let long = 0;
  /** Calls still to send straight to the thread, and how many the next miss will skip. */
  let skip = 0;
  let backoff = 1;

  function miss(): null {
    misses++;
    if (instance && !restore(instance)) instance = null;
    skip = backoff;
    backoff = Math.min(MAX_SKIP, backoff * 2);
    return null;
  }

  return {
    evaluate(entrypoint, json, data) {
      if (closed) return null;
      if (json.length > FAST_MAX_INPUT) {
        long++;
        return null;
      }
      if (skip > 0) {
        skip--;
        return null;
      }
      try {
        instance ??= instantiate();
        if (instance.data !== data) {
          deadline = Infinity;
          instance.fuel.value = DATA_FUEL;
          setData(instance, data);
        }
        deadline = now() + budgetMs;
        instance.fuel.value = FAST_SLICE;
        const text = decoder.decode(evaluateRaw(instance.raw, instance.opaEval, entrypoint, json));
        answered++;
        backoff = 1;
        return text;
      } catch {
        return miss();
      } finally {
        deadline = Infinity;
      }
    },
    status: () => ({ on: !closed, reason: closed ? 'closed' : null, answered, misses, instances, long }),
    close() {
      closed = true;
      instance = null;
    },
  };
}
