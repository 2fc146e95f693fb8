/**
 * The policy evaluator's thread (started by evaluator.ts): one bundle's WASM instance, evaluating
 * whatever the main thread sends it, one request at a time. It lives on its own thread because a
 * WASM evaluation cannot be interrupted from the thread that runs it: the main thread waits with a
 * deadline and terminates this one when it passes.
 *
 * Protocol (all synchronous on both sides): the main thread puts a request in place, then bumps
 * ctl[REQ] and notifies; this thread puts the answer in place, then sets ctl[RES] to the request's
 * number and notifies. "In place" is the shared `buffer` for an evaluation whose input (or answer)
 * fits, as UTF-8 with its length in ctl (REQ_KIND/RES_KIND = INLINE), else a message on `port`:
 * messages cost a copy and a wake-up of the receiving thread's event loop per call, which on a
 * loaded machine is a good part of an evaluation. Readiness: the first message on `port` says
 * whether the bundle loaded, and ctl[READY] becomes 1 (loaded) or 2 (failed).
 *
 * Node runs this file as it is (type stripping under src/, tsc's output under dist/): it uses only
 * erasable syntax, and of spawngate's code it loads only opa-raw, by URL.
 */
import { availableParallelism } from 'node:os';
import { receiveMessageOnPort, workerData } from 'node:worker_threads';
import type { MessagePort } from 'node:worker_threads';
import * as sdk from '@open-policy-agent/opa-wasm';
import type { LoadedPolicy } from '@open-policy-agent/opa-wasm';
import type { Layout } from './evaluator.js';
import type * as OpaRaw from './opa-raw.js';

// By URL, so that under src/ (tests) it is the TypeScript source, as this file is (see above).
const { evaluateRaw, opaEvalOf } = (await import(new URL(import.meta.url.endsWith('.ts') ? './opa-raw.ts' : './opa-raw.js', import.meta.url).href)) as typeof OpaRaw;

// The SDK's ES module names only loadPolicy; loadPolicySync (a thread has no use for a promise) is on its default export.
const { loadPolicySync } = (sdk as unknown as { default: typeof sdk }).default;

export interface ThreadData {
  control: SharedArrayBuffer;
  /** Inline requests and answers (see the protocol). */
  buffer: SharedArrayBuffer;
  port: MessagePort;
  /** A compiled WebAssembly.Module (typed loosely: the project's lib has no WebAssembly types). */
  module: object;
  /** The policy's data as JSON bytes. */
  data: ArrayBuffer;
  layout: Layout;
}

export type ThreadRequest = { op: 'eval'; entrypoint: number; json: string } | { op: 'data'; data: ArrayBuffer };
/** `text`: the result set as JSON (eval), or empty (data). */
export type ThreadReply = { ok: true; text: string } | { ok: false; error: string };
export type ThreadReady = { ok: true; entrypoints: Record<string, number> } | { ok: false; error: string };

/** Indices into the control words, from evaluator.ts (LAYOUT) by way of workerData. */
const { REQ, RES, READY, REQ_KIND, REQ_LEN, REQ_ENTRY, RES_KIND, RES_LEN, THREAD_AWAKE, CALLER_POLLING, MESSAGE, INLINE } = (workerData as ThreadData).layout;

const encoder = new TextEncoder();
const decoder = new TextDecoder();
/**
 * How long the thread polls for the next request after an answer before it sleeps, when the caller
 * was polling for that answer: it then runs on another CPU, and in a burst its next request comes
 * sooner than a futex wake-up. Otherwise a poll could keep the caller, woken on this CPU, from
 * running (evaluator.ts, SPIN_POLL_MS). None with one CPU, where it would only hold up the caller.
 */
const REQUEST_SPIN_MS = availableParallelism() > 1 ? 0.5 : 0;
const cpuPause: () => void = (Atomics as unknown as { pause?: () => void }).pause?.bind(Atomics) ?? (() => undefined);

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

// The SDK takes an ArrayBuffer as already-serialised JSON, all of it: it must be exactly the bytes.
function exactBuffer(bytes: Uint8Array<ArrayBuffer>): ArrayBuffer {
  return bytes.buffer.byteLength === bytes.byteLength ? bytes.buffer : bytes.slice().buffer;
}

function serve(data: ThreadData): void {
  const { port } = data;
  const control = new Int32Array(data.control);
  let policy: LoadedPolicy;
  try {
    policy = loadPolicySync(data.module as Parameters<typeof loadPolicySync>[0]);
    policy.setData(data.data);
  } catch (cause) {
    port.postMessage({ ok: false, error: describe(cause) } satisfies ThreadReady);
    Atomics.store(control, READY, 2);
    Atomics.notify(control, READY);
    return;
  }
  const raw = policy as unknown as OpaRaw.RawPolicy;
  const opaEval = opaEvalOf(raw);
  /** The result set as UTF-8 JSON. */
  const evaluate = (entrypoint: number, input: string | Uint8Array): Uint8Array => {
    if (opaEval) return evaluateRaw(raw, opaEval, entrypoint, input);
    const bytes = typeof input === 'string' ? encoder.encode(input) : input.slice();
    return encoder.encode(JSON.stringify(policy.evaluate(exactBuffer(bytes), entrypoint)));
  };
  const inline = new Uint8Array(data.buffer);
  port.postMessage({ ok: true, entrypoints: (policy.entrypoints ?? {}) as Record<string, number> } satisfies ThreadReady);
  Atomics.store(control, READY, 1);
  Atomics.notify(control, READY);

  let seen = 0;
  let poll = false;
  for (;;) {
    if (poll) {
      const spinUntil = performance.now() + REQUEST_SPIN_MS;
      while (Atomics.load(control, REQ) === seen && performance.now() < spinUntil) cpuPause();
    }
    // Cleared before the sleep and set after it, so a caller that finds it set knows this thread runs now.
    Atomics.store(control, THREAD_AWAKE, 0);
    Atomics.wait(control, REQ, seen);
    Atomics.store(control, THREAD_AWAKE, 1);
    const seq = Atomics.load(control, REQ);
    if (seq === seen) continue;
    let reply: ThreadReply | null = null;
    try {
      let result: Uint8Array | null = null;
      if (Atomics.load(control, REQ_KIND) === INLINE) {
        result = evaluate(control[REQ_ENTRY]!, inline.subarray(0, control[REQ_LEN]));
      } else {
        // The main thread posts before it bumps REQ, so the request is already queued.
        const request = receiveMessageOnPort(port)?.message as ThreadRequest | undefined;
        if (request?.op === 'eval') {
          result = evaluate(request.entrypoint, request.json);
        } else if (request?.op === 'data') {
          policy.setData(request.data);
          reply = { ok: true, text: '' };
        } else {
          reply = { ok: false, error: 'the evaluator thread got no request' };
        }
      }
      if (result && result.length <= inline.length) {
        inline.set(result);
        control[RES_LEN] = result.length;
      } else if (result) {
        reply = { ok: true, text: decoder.decode(result) };
      }
    } catch (cause) {
      reply = { ok: false, error: describe(cause) };
    }
    control[RES_KIND] = reply ? MESSAGE : INLINE;
    if (reply) port.postMessage(reply);
    seen = seq;
    Atomics.store(control, RES, seq);
    Atomics.notify(control, RES);
    poll = REQUEST_SPIN_MS > 0 && Atomics.load(control, CALLER_POLLING) === seq;
  }
}

serve(workerData as ThreadData);
