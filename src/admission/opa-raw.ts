/**
 * One evaluation on OPA's WASM ABI 1.2, shared by the evaluator's thread (evaluator-thread.ts) and
 * its fast path on the calling thread (fast-path.ts). The thread loads this file by URL, from its
 * TypeScript source under src/: like the thread, it imports nothing of spawngate's and uses only
 * erasable syntax.
 */

/**
 * The members of the SDK's LoadedPolicy (declared public in its typings) that its own evaluate()
 * uses on the ABI 1.2 path.
 */
export interface RawPolicy {
  minorVersion: unknown;
  mem: { buffer: ArrayBuffer; grow(pages: number): number };
  wasmInstance: { exports: Record<string, unknown> };
  dataAddr: number;
  dataHeapPtr: number;
}

export type OpaEval = (reserved: number, entrypoint: number, dataAddr: number, inputAddr: number, inputLength: number, heapAddr: number, format: number) => number;

/** A compiled WebAssembly.Module (the project's lib has no WebAssembly types); threads share it, so a restart does not compile again. */
export type WasmModule = object;

const wasm = (globalThis as unknown as { WebAssembly: { compile(bytes: Uint8Array): Promise<WasmModule> } }).WebAssembly;

/** Compiles a bundle's policy.wasm once for every thread that will run it (and the fast path's rewrite of it). */
export function compilePolicy(bytes: Uint8Array): Promise<WasmModule> {
  return wasm.compile(bytes);
}

const encoder = new TextEncoder();
const WASM_PAGE = 64 * 1024;

/** The instance's opa_eval when it has the ABI 1.2 one-call path, else null. */
export function opaEvalOf(policy: RawPolicy): OpaEval | null {
  const fn = policy.wasmInstance.exports.opa_eval;
  return typeof policy.minorVersion === 'number' && policy.minorVersion >= 2 && typeof fn === 'function' ? (fn as OpaEval) : null;
}

/**
 * What the SDK's evaluate() does on ABI 1.2 (one opa_eval call: parse the input JSON placed just
 * above the data, evaluate, dump the result set as JSON), minus two copies and a byte-by-byte scan:
 * the input is encoded straight into WASM memory and the result's end is found natively. The
 * answer is a view of WASM memory, valid until the next call into the instance.
 */
export function evaluateRaw(policy: RawPolicy, opaEval: OpaEval, entrypoint: number, input: string | Uint8Array): Uint8Array {
  const inputAddr = policy.dataHeapPtr;
  // UTF-8 needs at most 3 bytes per UTF-16 unit.
  const shortfall = inputAddr + (typeof input === 'string' ? input.length * 3 : input.length) - policy.mem.buffer.byteLength;
  if (shortfall > 0) policy.mem.grow(Math.ceil(shortfall / WASM_PAGE));
  let written: number;
  if (typeof input === 'string') {
    written = encoder.encodeInto(input, new Uint8Array(policy.mem.buffer, inputAddr)).written;
  } else {
    new Uint8Array(policy.mem.buffer, inputAddr, input.length).set(input);
    written = input.length;
  }
  const resultAddr = opaEval(0, entrypoint, policy.dataAddr, inputAddr, written, inputAddr + written, 0);
  return cString(policy, resultAddr);
}

/**
 * The NUL-terminated bytes at `addr` in the instance's memory (how OPA's WASM hands out JSON), as a
 * view valid until the next call into the instance. Read from the memory as it is now: a call may
 * have grown it, which detaches any earlier view.
 */
export function cString(policy: Pick<RawPolicy, 'mem'>, addr: number): Uint8Array {
  const heap = new Uint8Array(policy.mem.buffer);
  const end = heap.indexOf(0, addr);
  return heap.subarray(addr, end < 0 ? heap.length : end);
}
