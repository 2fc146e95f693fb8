/**
 * The one readiness wait of a spawn, the same for every backend (contract v2):
 *
 *   backend.running(ref)  the resource runs and the backend knows how to reach the worker
 *   then, raced:
 *     GET /healthz?wait   the worker answers with its token (its agent finished the ACP handshake)
 *     backend.status(ref) polled, so a worker that exits, crashes or is OOM-killed while starting
 *                         ends the wait at once, instead of the health wait retrying a dead socket
 *                         until timeoutSeconds
 *
 * With `onStatus`, the backend's own state (a Pod Pending, ImagePullBackOff, a container created)
 * is reported whenever it changes, from the start of the wait, so a person watching a slow start
 * sees what it waits for.
 *
 * A failure is a BackendError BACKEND_FAILED whose message names the backend's reason and quotes
 * the last lines of the worker's log (its own stderr and its agent's); details carry { reason,
 * exitCode, logTail }. Running out of time is a retryable BackendError TIMEOUT naming what it waited for.
 */
import type { Backend, WorkerEndpoint, WorkerRef, WorkerStatus } from '../backends/types.js';
import { createWorkerClient, waitForHealthy } from '../protocol/client.js';
import { BackendError, WorkerProtocolError } from '../errors.js';

export interface WaitForWorkerOptions {
  backend: Backend;
  ref: WorkerRef;
  /** The worker's bearer token, for /healthz. */
  token: string;
  /** Bounds the whole wait: running, then healthy. */
  timeoutMs: number;
  signal?: AbortSignal;
  /** Log lines quoted in a failure; default 20. */
  logTailLines?: number;
  /**
   * How long to wait for the backend to see the exit of a worker that already answers "exiting"
   * (the reference worker exits about a second after its agent died); default 10 s.
   */
  exitGraceMs?: number;
  /** Called with the backend's status each time its phase, reason or message changes during the wait. */
  onStatus?: (status: WorkerStatus) => void;
}

const DEFAULT_LOG_TAIL_LINES = 20;
const DEFAULT_EXIT_GRACE_MS = 10_000;
/** The exit watcher starts fast (most start-up crashes are immediate) and backs off so a slow start is not polled hard. */
const WATCH_FIRST_MS = 50;
const WATCH_MAX_MS = 250;
/** While `running` waits (a Pod being scheduled, an image pulled) the status is only shown, not acted on: asked less often. */
const REPORT_MAX_MS = 1000;
/** A log line quoted in an error message is cut here; details.logTail keeps the lines whole. */
const MAX_QUOTED_LINE = 500;

const TERMINAL: ReadonlySet<WorkerStatus['phase']> = new Set(['failed', 'succeeded', 'gone']);

interface FailureFacts {
  reason: string;
  exitCode: number | null;
  /** What the backend said, e.g. "exit code 1" or the engine's message. */
  detail: string | null;
  cause?: unknown;
  details?: Record<string, unknown>;
}

/** Resolves after `ms`, or at once when `signal` aborts (never rejects: the caller checks the signal). */
export function delay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

type Report = (status: WorkerStatus) => void;

/** Passes a status on only when it differs from the last one passed on; a failing callback is not the spawn's failure. */
function changesOnly(onStatus: ((status: WorkerStatus) => void) | undefined): Report {
  let last: string | null = null;
  return (status) => {
    if (!onStatus) return;
    const key = JSON.stringify([status.phase, status.reason, status.message]);
    if (key === last) return;
    last = key;
    try {
      onStatus(status);
    } catch {
      // Progress display only.
    }
  };
}

/**
 * Resolves with the first status whose phase can never turn into a ready worker; null when `signal`
 * stops the watch first. A status call that fails (an engine hiccup) is retried, not fatal.
 */
async function watchForExit(backend: Backend, ref: WorkerRef, signal: AbortSignal, report: Report = () => undefined, maxPauseMs = WATCH_MAX_MS): Promise<WorkerStatus | null> {
  let pause = WATCH_FIRST_MS;
  // Bounded by `signal`, which the caller aborts when the wait ends either way.
  while (!signal.aborted) {
    await delay(pause, signal);
    if (signal.aborted) break;
    const status = await backend.status(ref).catch(() => null);
    // A status that arrives after the wait ended would be reported after "ready".
    if (signal.aborted) break;
    if (status) report(status);
    if (status && TERMINAL.has(status.phase)) return status;
    pause = Math.min(maxPauseMs, Math.ceil(pause * 1.5));
  }
  return null;
}

function factsOfStatus(status: WorkerStatus): FailureFacts {
  return { reason: status.reason ?? (status.phase === 'gone' ? 'NotFound' : 'Exited'), exitCode: status.exitCode, detail: status.message };
}

async function failure(backend: Backend, ref: WorkerRef, facts: FailureFacts, lines: number): Promise<BackendError> {
  const logTail = await backend.logs(ref, { tail: lines }).catch(() => [] as string[]);
  const quoted = logTail.length
    ? `; last ${logTail.length} log lines:\n${logTail.map((line) => `  ${line.length > MAX_QUOTED_LINE ? `${line.slice(0, MAX_QUOTED_LINE)}…` : line}`).join('\n')}`
    : '; the worker left no log lines';
  return new BackendError(
    'BACKEND_FAILED',
    `worker ${ref.spawnId} on backend ${backend.name} failed before it was ready: ${facts.reason}${facts.detail ? ` (${facts.detail})` : ''}${quoted}`,
    {
      ...(facts.cause === undefined ? {} : { cause: facts.cause }),
      details: { ...facts.details, reason: facts.reason, exitCode: facts.exitCode, logTail, nativeId: ref.nativeId },
    },
  );
}

/**
 * A rejection of `running` that means the worker will never run (as opposed to an engine/API
 * refusal, which carries `statusCode`, or a time-out): it gets the log tail like any other failure.
 */
function isWorkerFailure(err: unknown): err is BackendError {
  return (
    err instanceof BackendError &&
    (err.code === 'BACKEND_FAILED' || err.code === 'BACKEND_NOT_FOUND') &&
    typeof err.details['reason'] === 'string' &&
    err.details['statusCode'] === undefined
  );
}

function endpointLabel(endpoint: WorkerEndpoint): string {
  return endpoint.socketPath !== undefined ? `unix:${endpoint.socketPath}` : endpoint.baseUrl;
}

/** Waits until the worker of `ref` answers /healthz, or fails fast with the backend's reason and the worker's last log lines. */
export async function waitForWorker(options: WaitForWorkerOptions): Promise<WorkerEndpoint> {
  const { backend, ref, token, timeoutMs, signal } = options;
  const lines = options.logTailLines ?? DEFAULT_LOG_TAIL_LINES;
  const deadline = Date.now() + timeoutMs;
  const report = changesOnly(options.onStatus);

  let endpoint: WorkerEndpoint;
  // Only shown: a terminal status here is running()'s to turn into the failure, with its own details.
  const reporting = new AbortController();
  if (options.onStatus) void watchForExit(backend, ref, signal ? AbortSignal.any([signal, reporting.signal]) : reporting.signal, report, REPORT_MAX_MS);
  try {
    endpoint = await backend.running(ref, { timeoutMs, ...(signal ? { signal } : {}) });
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    if (!isWorkerFailure(err)) throw err;
    const exitCode = err.details['exitCode'];
    throw await failure(
      backend,
      ref,
      { reason: err.details['reason'] as string, exitCode: typeof exitCode === 'number' ? exitCode : null, detail: err.message, cause: err, details: err.details },
      lines,
    );
  } finally {
    reporting.abort();
  }

  const stop = new AbortController();
  const both = signal ? AbortSignal.any([signal, stop.signal]) : stop.signal;
  // A backend that sees the exit itself is not asked every few ms while two processes boot on the
  // same CPUs; shown statuses (onStatus) still come from polling.
  const ended = options.onStatus || !backend.ended ? null : backend.ended(ref, both);
  const exited = ended ?? watchForExit(backend, ref, both, report);
  const client = createWorkerClient({ ...endpoint, token });
  const healthy = waitForHealthy(client, { timeoutMs: Math.max(1, deadline - Date.now()), signal: both });
  try {
    const first = await Promise.race([
      healthy.then(
        () => ({ kind: 'healthy' as const }),
        (err: unknown) => ({ kind: 'unhealthy' as const, err }),
      ),
      exited.then((status) => ({ kind: 'exited' as const, status })),
    ]);
    if (signal?.aborted) throw signal.reason;
    if (first.kind === 'healthy') return endpoint;
    if (first.kind === 'exited') {
      // null only when the watch was stopped, i.e. by the caller's signal, handled above.
      if (!first.status) throw new BackendError('BACKEND_FAILED', `stopped waiting for worker ${ref.spawnId}`, { details: { reason: 'Stopped' } });
      throw await failure(backend, ref, factsOfStatus(first.status), lines);
    }
    const err = first.err;
    if (err instanceof WorkerProtocolError && err.code === 'TIMEOUT') {
      const status = await backend.status(ref).catch(() => null);
      throw new BackendError(
        'TIMEOUT',
        `worker ${ref.spawnId} on backend ${backend.name} did not answer /healthz at ${endpointLabel(endpoint)} within ${timeoutMs} ms (backend phase ${status?.phase ?? 'unknown'}; its agent may not have finished the ACP handshake)`,
        { retryable: true, cause: err, details: { reason: 'ReadyTimeout', phase: status?.phase ?? null, lastError: err.details['lastError'] ?? null } },
      );
    }
    if (err instanceof WorkerProtocolError && err.details['exiting'] === true) {
      // The worker says it will never be ready (its agent died): wait, bounded, for the backend to
      // see the exit, so the error carries the backend's reason and exit code, not just the worker's word.
      const grace = AbortSignal.any([both, AbortSignal.timeout(options.exitGraceMs ?? DEFAULT_EXIT_GRACE_MS)]);
      const status = await watchForExit(backend, ref, grace);
      if (signal?.aborted) throw signal.reason;
      const facts: FailureFacts = status
        ? factsOfStatus(status)
        : { reason: 'WorkerExiting', exitCode: null, detail: typeof err.details['reason'] === 'string' ? err.details['reason'] : err.message };
      throw await failure(backend, ref, { ...facts, cause: err }, lines);
    }
    // A wrong token, a protocol violation: the worker runs but will not serve this gateway. Said as is,
    // unless the worker died meanwhile, which is the better explanation.
    const status = await backend.status(ref).catch(() => null);
    if (status && TERMINAL.has(status.phase)) throw await failure(backend, ref, { ...factsOfStatus(status), cause: err }, lines);
    throw err;
  } finally {
    stop.abort();
  }
}
