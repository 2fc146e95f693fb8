/**
 * Client of the worker HTTP contract (docs/worker-protocol.md), used by every backend and by the
 * session lifecycle. Plain node:http so that unix sockets (egress "none" workers) work like TCP.
 *
 * Errors are WorkerProtocolError with a stable code:
 *   WORKER_UNAUTHORIZED  401 — wrong or missing token
 *   WORKER_BUSY          409 — a turn is already running (retryable)
 *   BACKEND_UNAVAILABLE  connection refused/reset, or 503; retryable unless the worker says it is exiting
 *   TIMEOUT              a bounded call or waitForHealthy ran out of time (retryable)
 *   WORKER_PROTOCOL      anything the contract does not allow: bad status, malformed or oversized
 *                        line, a stream that ends without turn.completed/failed/cancelled
 * An aborted `signal` rejects with the signal's reason, as fetch does.
 */
import { request as httpRequest } from 'node:http';
import type { IncomingMessage, OutgoingHttpHeaders, RequestOptions } from 'node:http';
import { context, SpanKind, trace } from '@opentelemetry/api';
import { WorkerProtocolError } from '../errors.js';
import { endHttpSpan, parentContext, setAttributes, startSpan, traceparentOf } from '../telemetry/tracing.js';
import { ndjsonLines } from './ndjson.js';
import type {
  CancelResponse,
  PermissionAnswer,
  PermissionAnswerResponse,
  Healthz,
  WorkerErrorBody,
  WorkerEvent,
  WorkerEventType,
  WorkerLogLine,
  WorkerLogsResponse,
  WorkerStatusReport,
} from './events.js';

export type { WorkerEvent } from './events.js';

export interface WorkerClientOptions {
  /** http://host:port[/prefix] — TCP endpoint. Exactly one of baseUrl / socketPath. */
  baseUrl?: string;
  /** Unix socket the worker listens on. */
  socketPath?: string;
  token: string;
  /** W3C traceparent sent on every request unless a call passes its own. */
  traceparent?: string;
  /** Longest NDJSON line accepted from /turn; default 1 MiB. */
  maxLineBytes?: number;
  /** Bound on each non-streaming call (healthz, cancel, status, logs); default 10 s. */
  requestTimeoutMs?: number;
}

export interface CallOptions {
  signal?: AbortSignal;
  traceparent?: string;
}

export interface TurnOptions extends CallOptions {
  turnId?: string;
}

export interface WorkerClient {
  /** With `waitMs`, the worker holds the answer until it is ready or the wait is over (no polling). */
  healthz(options?: CallOptions & { waitMs?: number }): Promise<Healthz>;
  /**
   * Streams the turn's events as they arrive; the last one is turn.completed, turn.failed or
   * turn.cancelled. Leaving the loop early or aborting `signal` drops the connection, which the
   * worker treats as a cancel of the turn.
   */
  turn(message: string, options?: TurnOptions): AsyncIterable<WorkerEvent>;
  cancel(options?: CallOptions): Promise<CancelResponse>;
  /** Answers a pending permission.requested of the open turn (404 not_found when it was already settled). */
  answerPermission(answer: PermissionAnswer, options?: CallOptions): Promise<PermissionAnswerResponse>;
  status(options?: CallOptions): Promise<WorkerStatusReport>;
  /**
   * POST /claim, on a warm worker (SPAWNGATE_CLAIMABLE): from its answer on, the worker takes
   * `token` only, and stops itself at `deadline` (Unix seconds) if that comes before its own.
   * With `probe: true` the worker runs every check of a claim and answers `claimed: false`, taking
   * nothing: the pool's health check of an idle warm worker.
   */
  claim(claim: { token: string; deadline?: number; probe?: boolean }, options?: CallOptions): Promise<{ claimed: boolean; deadlineAt: string | null }>;
  logs(tail?: number, options?: CallOptions): Promise<WorkerLogLine[]>;
  /** GET /workspace/diff: what changed since the checked-out commit of a `git` workspace, as a unified diff. */
  workspaceDiff(options?: CallOptions & { maxBytes?: number; timeoutMs?: number }): Promise<{ base: string; diff: string }>;
  /** GET /workspace/archive: the workspace as a .tar.gz stream (without .git unless `git`). */
  workspaceArchive(options?: { signal?: AbortSignal; git?: boolean }): Promise<IncomingMessage>;
}

export interface WaitForHealthyOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  /** Pause between attempts; default 100 ms. */
  intervalMs?: number;
}

const DEFAULT_MAX_LINE_BYTES = 1024 * 1024;
const MAX_JSON_BODY_BYTES = 4 * 1024 * 1024;
const TERMINAL_TYPES: ReadonlySet<string> = new Set<WorkerEventType>(['turn.completed', 'turn.failed', 'turn.cancelled']);
const TRANSPORT_UNAVAILABLE = new Set(['ECONNREFUSED', 'ENOENT', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'EAI_AGAIN']);

function protocolError(message: string, details: Record<string, unknown> = {}, cause?: unknown): WorkerProtocolError {
  return new WorkerProtocolError('WORKER_PROTOCOL', message, { details, ...(cause === undefined ? {} : { cause }) });
}

interface Target {
  base: RequestOptions;
  prefix: string;
  label: string;
  /** The HTTP semantic-convention attributes every request's CLIENT span starts with. */
  peer: Record<string, string | number>;
  origin: string | null;
}

function resolveTarget(options: WorkerClientOptions): Target {
  if ((options.baseUrl === undefined) === (options.socketPath === undefined)) {
    throw new WorkerProtocolError('WORKER_PROTOCOL', 'worker client needs exactly one of baseUrl or socketPath');
  }
  if (options.socketPath !== undefined) {
    return { base: { socketPath: options.socketPath }, prefix: '', label: `unix:${options.socketPath}`, peer: { 'server.address': options.socketPath, 'network.transport': 'unix' }, origin: null };
  }
  const url = new URL(options.baseUrl as string);
  if (url.protocol !== 'http:') throw new WorkerProtocolError('WORKER_PROTOCOL', `worker baseUrl must be http://, got ${url.protocol}`);
  // URL keeps IPv6 hosts bracketed; node:http wants them bare.
  const hostname = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = Number(url.port || 80);
  return {
    base: { hostname, port },
    prefix: url.pathname.replace(/\/+$/, ''),
    label: url.origin,
    peer: { 'server.address': hostname, 'server.port': port, 'network.transport': 'tcp' },
    origin: url.origin,
  };
}

interface Exchange {
  /** The traceparent header to send: the CLIENT span's, else the caller's own unchanged. */
  traceparent: string | undefined;
  responded(res: IncomingMessage): void;
  failed(err: unknown): void;
}

const UNTRACED: Omit<Exchange, 'traceparent'> = { responded: () => undefined, failed: () => undefined };

/**
 * A CLIENT span for one request to the worker, child of the given traceparent or else of the active
 * span; the worker's SERVER span continues from the header it produces. A streamed response (a turn,
 * an archive) keeps the span open until its body has ended. No span: without a trace to join (a
 * status poll outside any trace would be a trace of one span each), and for /healthz, which
 * backends and the readiness wait probe every few tens of milliseconds while a worker starts (a
 * "starting" 503 each, which as CLIENT spans would mark every healthy spawn with errors;
 * spawngate.backend.ready already times the wait).
 */
function startExchange(target: Target, method: string, path: string, traceparent: string | undefined): Exchange {
  const template = path.replace(/\?.*$/, '');
  if (template === '/healthz') return { traceparent, ...UNTRACED };
  const parent = traceparent ? parentContext(traceparent) : context.active();
  if (!trace.getSpanContext(parent)) return { traceparent, ...UNTRACED };
  const span = startSpan(`${method} ${template}`, parent, SpanKind.CLIENT);
  setAttributes(span, {
    'http.request.method': method,
    'url.full': target.origin === null ? undefined : `${target.origin}${target.prefix}${path}`,
    'url.path': `${target.prefix}${template}`,
    ...target.peer,
  });
  let ended = false;
  const end = (status: number | null, errorType?: string): void => {
    if (ended) return;
    ended = true;
    endHttpSpan(span, SpanKind.CLIENT, status, errorType);
  };
  return {
    traceparent: traceparentOf(span) ?? traceparent,
    responded(res) {
      const status = res.statusCode ?? null;
      res.once('end', () => end(status));
      res.once('close', () => end(status));
    },
    failed(err) {
      const code = (err as { code?: unknown } | null)?.code;
      end(null, typeof code === 'string' ? code : ((err as Error | null)?.name ?? 'Error'));
    },
  };
}

/** Aborts with the caller's reason, or with a TIMEOUT error when only the time bound ran out. */
function boundedSignal(signal: AbortSignal | undefined, timeoutMs: number): { signal: AbortSignal; timedOut: () => boolean; dispose: () => void } {
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(new WorkerProtocolError('TIMEOUT', `worker did not answer within ${timeoutMs} ms`, { retryable: true })), timeoutMs);
  return {
    signal: signal ? AbortSignal.any([signal, timeout.signal]) : timeout.signal,
    timedOut: () => timeout.signal.aborted && !signal?.aborted,
    dispose: () => clearTimeout(timer),
  };
}

async function readBounded(res: IncomingMessage, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) {
      res.destroy();
      throw protocolError(`worker response exceeds ${limit} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function errorFromResponse(res: IncomingMessage, route: string): Promise<WorkerProtocolError> {
  const status = res.statusCode ?? 0;
  let body: Partial<WorkerErrorBody & Healthz> | null = null;
  try {
    body = JSON.parse(await readBounded(res, 64 * 1024)) as Partial<WorkerErrorBody & Healthz>;
  } catch {
    body = null;
  }
  const details = { httpStatus: status, route, workerError: body?.error?.code ?? null, reason: body?.reason ?? body?.error?.message ?? null };
  if (status === 401) return new WorkerProtocolError('WORKER_UNAUTHORIZED', `worker rejected the token on ${route}`, { details });
  const workerCode = body?.error?.code;
  if (workerCode === 'not_a_git_workspace' || workerCode === 'no_tar' || workerCode === 'git_failed' || (status === 413 && route.includes('/workspace/'))) {
    return new WorkerProtocolError('WORKSPACE_UNAVAILABLE', `worker cannot give ${route}: ${details.reason ?? `HTTP ${status}`}`, { details });
  }
  if (workerCode === 'already_claimed' || workerCode === 'not_claimable') {
    return new WorkerProtocolError('WORKER_PROTOCOL', `worker refused the claim: ${details.reason ?? workerCode}`, { details });
  }
  if (status === 409) {
    return new WorkerProtocolError('WORKER_BUSY', 'worker is already running a turn', {
      retryable: true,
      details: { ...details, currentTurnId: body?.error?.currentTurnId ?? null },
    });
  }
  if (status === 503) {
    // "starting" will turn into "ok"; "exiting" never will.
    const exiting = body?.status === 'exiting' || body?.error?.code === 'exiting';
    return new WorkerProtocolError('BACKEND_UNAVAILABLE', `worker unavailable on ${route}: ${details.reason ?? 'no reason given'}`, {
      retryable: !exiting,
      details: { ...details, exiting },
    });
  }
  return protocolError(`worker answered ${route} with HTTP ${status}${details.reason ? `: ${details.reason}` : ''}`, details);
}

function transportError(err: unknown, label: string, route: string): unknown {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (code && TRANSPORT_UNAVAILABLE.has(code)) {
    return new WorkerProtocolError('BACKEND_UNAVAILABLE', `worker at ${label} unreachable (${code}) on ${route}`, {
      retryable: true,
      cause: err,
      details: { errno: code, route },
    });
  }
  return protocolError(`request to worker at ${label} failed on ${route}: ${(err as Error).message}`, { route }, err);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const str = (v: unknown): boolean => typeof v === 'string';

/** Per-type required fields; unknown types are skipped so newer workers can add events. */
const eventShape: Record<WorkerEventType, (e: Record<string, unknown>) => boolean> = {
  'turn.started': (e) => str(e['agentId']),
  'agent.message.delta': (e) => str(e['text']),
  'agent.thought.delta': (e) => str(e['text']),
  'tool.call': (e) => str(e['toolCallId']) && str(e['title']) && str(e['kind']) && str(e['status']),
  'tool.result': (e) => str(e['toolCallId']) && (e['status'] === 'completed' || e['status'] === 'failed') && str(e['content']),
  'agent.plan': (e) => Array.isArray(e['entries']),
  'agent.usage': (e) => typeof e['used'] === 'number' && typeof e['size'] === 'number',
  'permission.requested': (e) => str(e['requestId']) && str(e['toolCallId']) && str(e['kind']) && Array.isArray(e['paths']) && Array.isArray(e['options']) && str(e['workspace']),
  'permission.decided': (e) => str(e['requestId']) && str(e['outcome']) && str(e['by']) && str(e['code']) && str(e['reason']),
  'turn.completed': (e) => str(e['stopReason']),
  'turn.failed': (e) => isRecord(e['error']) && str(e['error']['code']) && str(e['error']['message']),
  'turn.cancelled': (e) => str(e['reason']) && typeof e['forced'] === 'boolean',
};

function parseLine(line: string): { seq: number; event: WorkerEvent | null } {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (err) {
    throw protocolError('malformed NDJSON line from worker', { line: line.slice(0, 200) }, err);
  }
  if (!isRecord(value) || !str(value['type']) || !str(value['turnId']) || !Number.isInteger(value['seq']) || !str(value['time'])) {
    throw protocolError('worker event lacks type/turnId/seq/time', { line: line.slice(0, 200) });
  }
  const seq = value['seq'] as number;
  const check = eventShape[value['type'] as WorkerEventType] as ((e: Record<string, unknown>) => boolean) | undefined;
  if (!check) return { seq, event: null };
  if (!check(value)) throw protocolError(`worker event ${String(value['type'])} is missing required fields`, { line: line.slice(0, 200) });
  return { seq, event: value as unknown as WorkerEvent };
}

/** Parses one NDJSON line of /turn; null for an event type this client does not know (newer worker). */
export function parseWorkerEvent(line: string): WorkerEvent | null {
  return parseLine(line).event;
}

export function createWorkerClient(options: WorkerClientOptions): WorkerClient {
  const target = resolveTarget(options);
  const { base, prefix, label } = target;
  const maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  const requestTimeoutMs = options.requestTimeoutMs ?? 10_000;

  const open = (method: string, path: string, body: string | null, signal: AbortSignal | undefined, traceparent: string | undefined): Promise<IncomingMessage> =>
    new Promise((resolve, reject) => {
      const headers: OutgoingHttpHeaders = { authorization: `Bearer ${options.token}` };
      const exchange = startExchange(target, method, path, traceparent ?? options.traceparent);
      if (exchange.traceparent) headers['traceparent'] = exchange.traceparent;
      if (body !== null) {
        headers['content-type'] = 'application/json';
        headers['content-length'] = Buffer.byteLength(body);
      }
      const route = `${method} ${path}`;
      const req = httpRequest({ ...base, method, path: `${prefix}${path}`, headers, ...(signal ? { signal } : {}) }, (res) => {
        exchange.responded(res);
        resolve(res);
      });
      // `on`, the first error counted: a later one (the socket reset once the response began) must not go uncaught.
      let failed = false;
      req.on('error', (err) => {
        if (failed) return;
        failed = true;
        const failure = signal?.aborted ? (signal.reason as Error) : (transportError(err, label, route) as Error);
        exchange.failed((err as NodeJS.ErrnoException).code ? err : failure);
        reject(failure);
      });
      req.end(body ?? undefined);
    });

  /** A non-streaming call: bounded in time, 2xx JSON body or a mapped error. */
  const call = async <T>(method: string, path: string, expected: number, callOptions: CallOptions | undefined, heldMs = 0, body = '{}'): Promise<T> => {
    // A parked /healthz?wait answers only at the end of its wait: the bound is on top of that.
    const bounded = boundedSignal(callOptions?.signal, requestTimeoutMs + heldMs);
    const route = `${method} ${path}`;
    try {
      const res = await open(method, path, method === 'POST' ? body : null, bounded.signal, callOptions?.traceparent);
      if (res.statusCode !== expected) throw await errorFromResponse(res, route);
      const text = await readBounded(res, MAX_JSON_BODY_BYTES);
      try {
        return JSON.parse(text) as T;
      } catch (err) {
        throw protocolError(`worker sent malformed JSON on ${route}`, { route }, err);
      }
    } catch (err) {
      if (bounded.timedOut()) throw bounded.signal.reason;
      if (callOptions?.signal?.aborted) throw callOptions.signal.reason;
      throw err;
    } finally {
      bounded.dispose();
    }
  };

  async function* turn(message: string, turnOptions: TurnOptions = {}): AsyncGenerator<WorkerEvent> {
    const route = 'POST /turn';
    const body = JSON.stringify({ message, ...(turnOptions.turnId === undefined ? {} : { turnId: turnOptions.turnId }) });
    const signal = turnOptions.signal;
    const res = await open('POST', '/turn', body, signal, turnOptions.traceparent);
    if (res.statusCode !== 200) throw await errorFromResponse(res, route);
    const contentType = res.headers['content-type'] ?? '';
    if (!contentType.startsWith('application/x-ndjson')) {
      res.destroy();
      throw protocolError(`worker answered /turn with content-type ${contentType || '(none)'}`, { route });
    }
    let expectedSeq = 0;
    let terminal: WorkerEvent | null = null;
    try {
      for await (const line of ndjsonLines(res as AsyncIterable<Buffer>, maxLineBytes, () => protocolError(`worker event line exceeds ${maxLineBytes} bytes`))) {
        if (line.trim() === '') continue;
        const { seq, event } = parseLine(line);
        if (seq !== expectedSeq) throw protocolError(`worker event out of sequence: expected seq ${expectedSeq}, got ${seq}`, { route });
        expectedSeq++;
        if (terminal) throw protocolError('worker sent events after the terminal event', { route });
        if (!event) continue;
        if (TERMINAL_TYPES.has(event.type)) terminal = event;
        yield event;
      }
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (err instanceof WorkerProtocolError) throw err;
      throw protocolError(`turn stream from worker at ${label} broke: ${(err as Error).message}`, { route, lastSeq: expectedSeq - 1 }, err);
    } finally {
      // Early exit by the consumer: dropping the connection is how the worker learns to cancel.
      if (!res.complete) res.destroy();
    }
    if (!terminal) throw protocolError('turn stream ended without turn.completed, turn.failed or turn.cancelled', { route, lastSeq: expectedSeq - 1 });
  }

  return {
    healthz: (o) => call<Healthz>('GET', o?.waitMs ? `/healthz?wait=${Math.ceil(o.waitMs)}` : '/healthz', 200, o, o?.waitMs ?? 0),
    turn,
    cancel: (o) => call<CancelResponse>('POST', '/cancel', 202, o),
    answerPermission: (answer, o) => call<PermissionAnswerResponse>('POST', '/permission', 200, o, 0, JSON.stringify(answer)),
    status: (o) => call<WorkerStatusReport>('GET', '/status', 200, o),
    claim: (claim, o) => call<{ claimed: boolean; deadlineAt: string | null }>('POST', '/claim', 200, o, 0, JSON.stringify(claim)),
    logs: async (tail = 200, o) => (await call<WorkerLogsResponse>('GET', `/logs?tail=${tail}`, 200, o)).lines,
    async workspaceDiff(o) {
      const route = 'GET /workspace/diff';
      // git add + diff of a big tree takes a while: the worker's own bound is 60 s a step.
      const bounded = boundedSignal(o?.signal, o?.timeoutMs ?? 5 * 60_000);
      try {
        const res = await open('GET', '/workspace/diff', null, bounded.signal, o?.traceparent);
        if (res.statusCode !== 200) throw await errorFromResponse(res, route);
        const base = String(res.headers['x-spawngate-base'] ?? '');
        return { base, diff: await readBounded(res, o?.maxBytes ?? 64 * 1024 * 1024) };
      } catch (err) {
        if (bounded.timedOut()) throw bounded.signal.reason;
        throw err;
      } finally {
        bounded.dispose();
      }
    },
    async workspaceArchive(o) {
      const res = await open('GET', `/workspace/archive${o?.git ? '?git=1' : ''}`, null, o?.signal, undefined);
      if (res.statusCode !== 200) throw await errorFromResponse(res, 'GET /workspace/archive');
      return res;
    },
  };
}

function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

const FAST_POLL_PHASE_MS = 2000;
const FAST_POLL_MAX_MS = 25;

/**
 * Polls /healthz until it answers 200, retrying refused connections and 503 "starting" for at most
 * `timeoutMs`. A worker that reports "exiting", or a wrong token, fails at once.
 */
export async function waitForHealthy(client: WorkerClient, options: WaitForHealthyOptions): Promise<Healthz> {
  const started = Date.now();
  const deadline = started + options.timeoutMs;
  const intervalMs = options.intervalMs ?? 100;
  // Start fast and back off: most workers listen within 100–300 ms, and a refused loopback connect
  // costs the gateway a fraction of a millisecond, so the first seconds are polled every 25 ms at
  // most (a ready worker is seen that much later at worst); polling hard for long would steal CPU
  // from a worker that is slow to start. Once it listens, /healthz?wait answers at the very moment
  // it is ready.
  let backoff = Math.min(10, intervalMs);
  let lastError: unknown = null;
  for (;;) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) break;
    const attempt = boundedSignal(options.signal, remaining);
    try {
      // Leave headroom under the per-call time-out for the answer itself.
      return await client.healthz({ signal: attempt.signal, waitMs: Math.min(remaining, 5000) });
    } catch (err) {
      if (options.signal?.aborted) throw options.signal.reason;
      if (!(err instanceof WorkerProtocolError) || !err.retryable) throw err;
      // An attempt cut by this wait's own deadline says nothing about the worker: the cause stays
      // the last answer it gave (on a starved machine the last attempt is often the one cut).
      if (!(attempt.timedOut() && lastError !== null)) lastError = err;
    } finally {
      attempt.dispose();
    }
    const wait = Math.min(backoff, deadline - Date.now());
    backoff = Math.min(Date.now() - started < FAST_POLL_PHASE_MS ? Math.min(FAST_POLL_MAX_MS, intervalMs) : intervalMs, Math.ceil(backoff * 1.5));
    if (wait > 0) await pause(wait, options.signal);
  }
  throw new WorkerProtocolError('TIMEOUT', `worker not healthy within ${options.timeoutMs} ms`, {
    retryable: true,
    ...(lastError === null ? {} : { cause: lastError }),
    details: { lastError: lastError instanceof Error ? lastError.message : null },
  });
}
