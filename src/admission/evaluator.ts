/**
 * One bundle's policy evaluator: its WASM instance on a worker thread (evaluator-thread.ts), every
 * evaluation under a deadline. A WASM evaluation cannot be interrupted on the thread that runs it,
 * so it runs elsewhere, and past its deadline the thread is terminated and a fresh one is started
 * with the same module and data; the evaluation's answer is a timeout.
 *
 * Two ways to wait, one queue:
 * - `callSync` keeps the engine's synchronous API (permission decisions during a turn, the
 *   decision-log mask, library callers): the caller blocks in Atomics.wait, at most until its deadline.
 * - `call` is the gate's: it waits synchronously only for SPIN_MS (an ordinary evaluation is done
 *   by then, without the cost of an event-loop turn), then with Atomics.waitAsync, so a slow
 *   evaluation holds the event loop for at most SPIN_MS, not for its deadline (after the fast
 *   path below, which holds it for at most its own budget, about as long).
 * For the gate's calls the deadline counts from the moment the evaluation starts on the thread;
 * the wait in the queue before it has a bound of its own (queueBoundMs: 20 deadlines, at least 5 s).
 * Counting the queue against the evaluation's deadline turned a burst of ordinary admissions on a
 * loaded machine (500 racing spawns, 3 replicas, 2 cores) into policy_timeout denies: the queue,
 * not any one evaluation, was slow. Whatever is ahead is itself stopped at its own deadline, so the
 * wait stays bounded. Sync calls (rare: permission requests, the mask) count from the call.
 *
 * Before any of that, an evaluation is tried on the calling thread (fast-path.ts): the same
 * module with fuel, which stops it after a bounded time. What it answers never reaches
 * the thread; what runs out of time or fails there goes to the thread as above, so the deadline
 * keeps its meaning. Data changes reach the fast path only once the thread has taken them.
 *
 * A second thread with the same module is kept started and idle: a thread takes longer to come up
 * (a few hundred ms on a busy machine) than a deadline lasts, so without the spare the calls right
 * after a timeout would time out too, waiting for the replacement. The spare is given the data in
 * force when it takes over (a few ms), not at every change of it.
 */
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { MessageChannel, receiveMessageOnPort, Worker } from 'node:worker_threads';
import type { MessagePort } from 'node:worker_threads';
import type { ThreadData, ThreadReady, ThreadReply, ThreadRequest } from './evaluator-thread.js';
import { offStatus, type FastPath, type FastPathStatus } from './fast-path.js';
import type { WasmModule } from './opa-raw.js';

/**
 * Indices into the control words, and the two ways a request or an answer travels. The thread gets
 * this object with its workerData, so both sides read one definition (the thread imports no code).
 */
export const LAYOUT = { REQ: 0, RES: 1, READY: 2, REQ_KIND: 3, REQ_LEN: 4, REQ_ENTRY: 5, RES_KIND: 6, RES_LEN: 7, THREAD_AWAKE: 8, CALLER_POLLING: 9, MESSAGE: 0, INLINE: 1 } as const;
export type Layout = typeof LAYOUT;
const { REQ, RES, READY, REQ_KIND, REQ_LEN, REQ_ENTRY, RES_KIND, RES_LEN, THREAD_AWAKE, CALLER_POLLING, MESSAGE, INLINE } = LAYOUT;
const CONTROL_WORDS = 10;

/** Inputs and answers up to this size pass through shared memory; larger ones as messages. */
const INLINE_BYTES = 256 * 1024;
const encoder = new TextEncoder();

// ES2024's Atomics.waitAsync, beyond the project's lib.
type WaitAsyncResult = { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
const atomicsWaitAsync = (Atomics as unknown as { waitAsync(this: void, typed: Int32Array, index: number, value: number, timeoutMs: number): WaitAsyncResult }).waitAsync;

/** How long an async call waits on the event loop before it lets go of it (see the file comment). */
const SPIN_MS = 2;
/**
 * Within that, how long the caller polls the answer word before it sleeps on it: an ordinary
 * evaluation answers within tens of µs, and a futex sleep and wake-up alone cost about as much on
 * a virtual machine (the bench's p50 tripled with them). The thread polls likewise for its next
 * request (evaluator-thread.ts), so a burst of admissions passes without either side sleeping.
 * With one CPU the poll would only keep the thread from running: none.
 *
 * Polling pays only while the two threads run on different CPUs, and two threads running at the
 * same moment do. A poll against a thread that sleeps may share its CPU once the thread wakes (the
 * scheduler likes to wake it there after a pause) and keeps it off until the poll ends: a lone
 * spawn's evaluation took about 1 ms instead of 0.3 with both sides always polling. So the caller
 * polls only when the thread is awake, or in a burst (BURST_GAP_MS), which is how a burst starts;
 * and the thread polls for the next request only when the caller was polling for its answer.
 */
const SPIN_POLL_MS = availableParallelism() > 1 ? 0.25 : 0;
/** A call within this long of the caller's last answer is part of a burst. */
const BURST_GAP_MS = 1;
/** ES2025 Atomics.pause (a spin-wait hint to the CPU), where the runtime has it. */
const cpuPause: () => void = (Atomics as unknown as { pause?: () => void }).pause?.bind(Atomics) ?? (() => undefined);

// Under src/ (tests) the thread runs from its TypeScript source, which Node strips of types.
const THREAD_URL = new URL(import.meta.url.endsWith('.ts') ? './evaluator-thread.ts' : './evaluator-thread.js', import.meta.url);

export type Outcome =
  | { ok: true; text: string }
  | { ok: false; kind: 'error'; error: string }
  /** `queued`: the deadline passed before the evaluation started (a slower one was ahead of it). */
  | { ok: false; kind: 'timeout'; error: string; queued: boolean };

export interface EvaluatorEvents {
  /** An evaluation overran its deadline and its thread was replaced. */
  onTimeout?: (event: { elapsedMs: number; timeoutMs: number }) => void;
  /** A replacement thread could not load the bundle (the next call tries again). */
  onThreadFailure?: (error: string) => void;
}

interface Job {
  request: ThreadRequest;
  started: number;
  deadline: number;
  timeoutMs: number;
  settle: (outcome: Outcome) => void;
}

interface InFlight {
  job: Job;
  seq: number;
}

const now = () => performance.now();

class Thread {
  readonly worker: Worker;
  readonly control: Int32Array;
  readonly port: MessagePort;
  private readonly buffer: SharedArrayBuffer;
  private readonly inline: Uint8Array;
  private seq = 0;
  state: 'starting' | 'ready' | 'failed' = 'starting';
  error = '';
  entrypoints: Record<string, number> = {};
  inflight: InFlight | null = null;
  /** When the caller last saw an answer (-Infinity: never). */
  private lastAnswerAt = -Infinity;
  /** The data the thread holds (the evaluator's `current` when up to date). */
  data: ArrayBuffer;
  private terminated = false;

  constructor(module: WasmModule, data: ArrayBuffer) {
    this.data = data;
    const control = new SharedArrayBuffer(CONTROL_WORDS * Int32Array.BYTES_PER_ELEMENT);
    this.control = new Int32Array(control);
    this.buffer = new SharedArrayBuffer(INLINE_BYTES);
    this.inline = new Uint8Array(this.buffer);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const workerData: ThreadData = { control, buffer: this.buffer, port: port2, module, data, layout: LAYOUT };
    this.worker = new Worker(THREAD_URL, { workerData, transferList: [port2] });
    // Never the reason a process stays up; the engine's close() ends it.
    this.worker.unref();
    // An error event without a listener would be thrown on the main thread.
    this.worker.on('error', (err: Error) => {
      if (this.state === 'starting') {
        this.state = 'failed';
        this.error = err.message;
      }
    });
  }

  /** Reads the ready message once the thread has said it is up; true when it can take requests. */
  checkReady(): boolean {
    if (this.state === 'starting' && Atomics.load(this.control, READY) !== 0) {
      const ready = receiveMessageOnPort(this.port)?.message as ThreadReady | undefined;
      if (ready?.ok) {
        this.state = 'ready';
        this.entrypoints = ready.entrypoints;
      } else {
        this.state = 'failed';
        this.error = ready ? ready.error : 'the evaluator thread reported no state';
      }
    }
    return this.state === 'ready';
  }

  waitReadySync(until: number): void {
    while (!this.checkReady() && this.state === 'starting') {
      const left = until - now();
      if (left <= 0) return;
      Atomics.wait(this.control, READY, 0, left);
    }
  }

  async waitReady(until: number): Promise<void> {
    while (!this.checkReady() && this.state === 'starting') {
      const left = until - now();
      if (left <= 0) return;
      await waitAsync(this.control, READY, 0, left);
    }
  }

  send(job: Job): InFlight {
    const { request } = job;
    // Worst case 3 bytes per UTF-16 unit: what cannot fit for sure goes as a message without trying.
    const fits = request.op === 'eval' && request.json.length * 3 <= INLINE_BYTES;
    if (fits) {
      this.control[REQ_LEN] = encoder.encodeInto(request.json, this.inline).written;
      this.control[REQ_ENTRY] = request.entrypoint;
    } else {
      this.port.postMessage(request);
    }
    this.control[REQ_KIND] = fits ? INLINE : MESSAGE;
    const seq = ++this.seq;
    Atomics.store(this.control, REQ, seq);
    Atomics.notify(this.control, REQ);
    this.inflight = { job, seq };
    return this.inflight;
  }

  /** A method, not a look at `state`: a call may have changed it since the caller last narrowed it. */
  failed(): boolean {
    return this.state === 'failed';
  }

  answered(flight: InFlight): boolean {
    return Atomics.load(this.control, RES) === flight.seq;
  }

  /** Blocks until the answer is in or `until`; true when it is in. */
  waitSync(flight: InFlight, until: number): boolean {
    const start = now();
    if (SPIN_POLL_MS > 0 && (Atomics.load(this.control, THREAD_AWAKE) === 1 || start - this.lastAnswerAt <= BURST_GAP_MS)) {
      // Left set when the answer comes in the poll: the thread reads it to know this side runs elsewhere.
      Atomics.store(this.control, CALLER_POLLING, flight.seq);
      const spinUntil = Math.min(until, start + SPIN_POLL_MS);
      while (!this.answered(flight) && now() < spinUntil) cpuPause();
      if (!this.answered(flight)) Atomics.store(this.control, CALLER_POLLING, 0);
    }
    while (!this.answered(flight)) {
      const left = until - now();
      if (left <= 0) return this.noteAnswer(flight);
      Atomics.wait(this.control, RES, flight.seq - 1, left);
    }
    return this.noteAnswer(flight);
  }

  async wait(flight: InFlight, until: number): Promise<boolean> {
    while (!this.answered(flight) && this.inflight === flight) {
      const left = until - now();
      if (left <= 0) break;
      await waitAsync(this.control, RES, flight.seq - 1, left);
    }
    return this.noteAnswer(flight);
  }

  /** Whether the answer is in; when it is, notes the time (the next call within BURST_GAP_MS is a burst). */
  private noteAnswer(flight: InFlight): boolean {
    const answered = this.answered(flight);
    if (answered) this.lastAnswerAt = now();
    return answered;
  }

  /** Takes the answer of the request in flight (which `answered`). */
  receive(): Outcome {
    this.inflight = null;
    if (Atomics.load(this.control, RES_KIND) === INLINE) return { ok: true, text: Buffer.from(this.buffer, 0, this.control[RES_LEN]).toString('utf8') };
    const reply = receiveMessageOnPort(this.port)?.message as ThreadReply | undefined;
    if (!reply) return { ok: false, kind: 'error', error: 'the evaluator thread sent no answer' };
    return reply.ok ? { ok: true, text: reply.text } : { ok: false, kind: 'error', error: reply.error };
  }

  terminate(): void {
    if (this.terminated) return;
    this.terminated = true;
    this.inflight = null;
    this.worker.terminate().catch(() => undefined);
  }
}

/**
 * Atomics.waitAsync with a timer beside it: the timer keeps the process alive while a caller waits
 * (a pending waitAsync does not), and ends the wait even if the waitAsync's own timeout is late.
 */
function waitAsync(control: Int32Array, index: number, value: number, timeoutMs: number): Promise<void> {
  const waiting = atomicsWaitAsync(control, index, value, timeoutMs);
  if (!waiting.async) return Promise.resolve();
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, Math.ceil(timeoutMs) + 1);
  });
  return Promise.race([waiting.value.then(() => undefined), timedOut]).finally(() => clearTimeout(timer));
}

/** How long a gate's call may wait in the queue before its evaluation starts. */
function queueBoundMs(timeoutMs: number): number {
  return Math.max(5_000, 20 * timeoutMs);
}

function timeout(job: Job, queued: boolean): Outcome {
  const elapsed = Math.round(now() - job.started);
  const error = queued
    ? `the policy evaluation did not start within ${Math.round(job.deadline - job.started)} ms (the evaluator was busy with slower ones, or restarting after one; waited ${elapsed} ms)`
    : `the policy evaluation did not finish within its ${job.timeoutMs} ms deadline (stopped after ${elapsed} ms)`;
  return { ok: false, kind: 'timeout', error, queued };
}

export interface Evaluator {
  readonly entrypoints: Readonly<Record<string, number>>;
  /** Whether evaluations are answered on the calling thread first (fast-path.ts), and how often. */
  fastPath(): FastPathStatus;
  /** Evaluates, blocking the calling thread until the answer or the deadline. */
  callSync(request: ThreadRequest, timeoutMs: number): Outcome;
  /** Evaluates; waits on the event loop for at most SPIN_MS (see the file comment). */
  call(request: ThreadRequest, timeoutMs: number): Promise<Outcome>;
  /** Replaces the policy's data; the data also goes to every replacement thread. */
  setDataSync(data: ArrayBuffer, timeoutMs: number): Outcome;
  setData(data: ArrayBuffer, timeoutMs: number): Promise<Outcome>;
  /** Stops once the calls already made are answered (a bundle reload swapped in another evaluator). */
  retire(): void;
  close(): void;
}

/**
 * Starts an evaluator for a compiled bundle with its data (JSON bytes); rejects with the thread's
 * error, or when it is not up within `startTimeoutMs`.
 */
export async function startEvaluator(module: WasmModule, data: ArrayBuffer, startTimeoutMs: number, events: EvaluatorEvents = {}, fast: FastPath | null = null): Promise<Evaluator> {
  let current = data;
  /**
   * Data changes asked for and not yet taken by the thread. The fast path waits them out: an
   * evaluation asked for after a change must see it, as one queued behind it on the thread does.
   */
  let dataPending = 0;
  let thread = new Thread(module, current);
  // Both come up side by side; the spare is ready from the start, so the first timeout is recovered from at once.
  let spare: Thread | null = new Thread(module, current);
  const startedBy = now() + startTimeoutMs;
  await Promise.all([thread.waitReady(startedBy), spare.waitReady(startedBy)]);
  if (thread.state !== 'ready' || spare.state !== 'ready') {
    const failed = thread.state === 'failed' ? thread : spare;
    thread.terminate();
    spare.terminate();
    throw new Error(failed.state === 'failed' ? failed.error : `the evaluator thread did not start within ${startTimeoutMs} ms`);
  }
  const entrypoints = thread.entrypoints;
  const queue: Job[] = [];
  let pumping = false;
  let retired = false;
  let closed = false;

  /** The thread is past saving (a deadline passed, or it failed to start): a fresh one takes over. */
  function replace(): void {
    thread.terminate();
    if (closed) return;
    thread = spare ?? new Thread(module, current);
    spare = retired ? null : new Thread(module, current);
  }

  /**
   * Brings a thread that took over (the spare) up to the data in force before it evaluates; false
   * when it could not within `until` (the thread is then replaced or failed).
   */
  function syncData(owner: Thread, until: number): boolean {
    if (owner.data === current) return true;
    const data = current;
    const flight = owner.send({ request: { op: 'data', data }, started: now(), deadline: until, timeoutMs: until - now(), settle: () => undefined });
    if (!owner.waitSync(flight, until)) {
      replace();
      return false;
    }
    const outcome = owner.receive();
    if (!outcome.ok) {
      owner.state = 'failed';
      owner.error = `it could not take the data in force: ${outcome.error}`;
      return false;
    }
    owner.data = data;
    return true;
  }

  function overran(flight: InFlight): Outcome {
    replace();
    const outcome = timeout(flight.job, false);
    try {
      events.onTimeout?.({ elapsedMs: now() - flight.job.started, timeoutMs: flight.job.timeoutMs });
    } catch {
      // a listener's bug must not change the answer
    }
    return outcome;
  }

  function failedThread(): Outcome {
    const error = `the policy evaluator could not be restarted: ${thread.error}`;
    try {
      events.onThreadFailure?.(thread.error);
    } catch {
      // as above
    }
    replace();
    return { ok: false, kind: 'error', error };
  }

  /** Settles the call in flight on the current thread, if there is one, within `until`. */
  function settleInFlightSync(until: number): void {
    const flight = thread.inflight;
    if (!flight) return;
    const owner = thread;
    if (owner.waitSync(flight, Math.min(until, flight.job.deadline))) flight.job.settle(owner.receive());
    else if (now() >= flight.job.deadline) flight.job.settle(overran(flight));
  }

  function callSync(request: ThreadRequest, timeoutMs: number): Outcome {
    const started = now();
    // Never settled through this: a sync call is answered or replaced before it returns.
    const job: Job = { request, started, deadline: started + timeoutMs, timeoutMs, settle: () => undefined };
    if (closed) return { ok: false, kind: 'error', error: 'the policy evaluator is closed' };
    const answered = fastAnswer(request);
    if (answered) return answered;
    // Ahead of it there can only be a call of the async kind (a sync call returns answered).
    settleInFlightSync(job.deadline);
    if (thread.inflight) return timeout(job, true);
    thread.waitReadySync(job.deadline);
    if (thread.state === 'failed') return failedThread();
    if (thread.state !== 'ready') return timeout(job, true);
    const owner = thread;
    if (!syncData(owner, job.deadline)) return owner.failed() ? failedThread() : timeout(job, true);
    const flight = owner.send(job);
    if (owner.waitSync(flight, job.deadline)) return owner.receive();
    return overran(flight);
  }

  async function pump(): Promise<void> {
    if (pumping) return;
    pumping = true;
    try {
      while (queue.length > 0) {
        const job = queue[0]!;
        if (now() >= job.deadline) {
          queue.shift();
          job.settle(timeout(job, true));
          continue;
        }
        const owner = thread;
        const ahead = owner.inflight;
        if (ahead) {
          // Only when a sync call gave up waiting on one of ours; it is settled below like ours.
          if (!(await owner.wait(ahead, ahead.job.deadline)) && owner.inflight === ahead) ahead.job.settle(overran(ahead));
          else if (owner.inflight === ahead) ahead.job.settle(owner.receive());
          continue;
        }
        if (owner.state === 'starting') {
          await owner.waitReady(job.deadline);
          continue;
        }
        queue.shift();
        if (owner.state === 'failed') {
          job.settle(failedThread());
          continue;
        }
        if (!syncData(owner, job.deadline)) {
          job.settle(owner.failed() ? failedThread() : timeout(job, true));
          continue;
        }
        // From here on the evaluation's own deadline: the queue's bound is spent.
        job.deadline = now() + job.timeoutMs;
        const flight = owner.send(job);
        let answered = owner.waitSync(flight, Math.min(job.deadline, now() + SPIN_MS));
        if (!answered) answered = await owner.wait(flight, job.deadline);
        // A sync call may have settled it meanwhile (it waits out what is ahead of it).
        if (owner.inflight !== flight) continue;
        job.settle(answered ? owner.receive() : overran(flight));
      }
    } finally {
      pumping = false;
      if (retired && queue.length === 0 && !thread.inflight) thread.terminate();
    }
  }

  /** The fast path's answer to an evaluation, or null: the thread's turn. */
  function fastAnswer(request: ThreadRequest): Outcome | null {
    if (!fast || request.op !== 'eval' || dataPending > 0) return null;
    const text = fast.evaluate(request.entrypoint, request.json, current);
    return text === null ? null : { ok: true, text };
  }

  function call(request: ThreadRequest, timeoutMs: number): Promise<Outcome> {
    if (closed) return Promise.resolve({ ok: false, kind: 'error', error: 'the policy evaluator is closed' });
    const answered = fastAnswer(request);
    if (answered) return Promise.resolve(answered);
    return new Promise<Outcome>((settle) => {
      const started = now();
      queue.push({ request, started, deadline: started + queueBoundMs(timeoutMs), timeoutMs, settle });
      void pump();
    });
  }

  function accept(data: ArrayBuffer, outcome: Outcome): Outcome {
    // Only data the thread took: a thread that takes over must get what the current one has.
    if (outcome.ok) {
      current = data;
      thread.data = data;
    }
    return outcome;
  }

  return {
    entrypoints,
    fastPath: () => fast?.status() ?? offStatus('not prepared for this evaluator'),
    callSync,
    call,
    setDataSync(data, timeoutMs) {
      dataPending++;
      try {
        return accept(data, callSync({ op: 'data', data }, timeoutMs));
      } finally {
        dataPending--;
      }
    },
    async setData(data, timeoutMs) {
      dataPending++;
      try {
        return accept(data, await call({ op: 'data', data }, timeoutMs));
      } finally {
        dataPending--;
      }
    },
    retire() {
      retired = true;
      spare?.terminate();
      spare = null;
      if (!pumping && queue.length === 0 && !thread.inflight) thread.terminate();
    },
    close() {
      closed = true;
      fast?.close();
      // The call in flight has left the queue: settle it here, or its caller would wait forever.
      const flight = thread.inflight;
      thread.terminate();
      flight?.job.settle({ ok: false, kind: 'error', error: 'the policy evaluator is closed' });
      spare?.terminate();
      spare = null;
      for (const job of queue.splice(0)) job.settle({ ok: false, kind: 'error', error: 'the policy evaluator is closed' });
    },
  };
}
