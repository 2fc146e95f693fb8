/**
 * A typed client of the `spawngate serve` API (docs/server.md), for the CLI's `--server` mode and
 * for programs that would rather not speak HTTP themselves. Plain node:http(s), so a unix socket
 * works like TCP.
 *
 * Failures are SpawngateErrors with the code the server sent, so callers branch the same way on a
 * remote gate as on an in-process one: a 403 is an AdmissionDeniedError with its reasons, a 400 a
 * RequestError with its issues, anything else a ServerApiError carrying the server's code. The
 * HTTP layer's own codes, which no library call produces, are mapped onto the nearest ErrorCode
 * (table in `fromHttpCode`); `details.serverCode` keeps what the server said.
 */
import { request as httpRequest } from 'node:http';
import type { IncomingMessage, OutgoingHttpHeaders, RequestOptions } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { SpawnRequestInput } from '../admission/request.js';
import type { DenyReason, ErrorCode, Issue } from '../errors.js';
import { AdmissionDeniedError, RequestError, SpawngateError, UsageError } from '../errors.js';
import type { SpawnSummary } from '../sessions/types.js';
import type { Spawngate } from '../spawngate.js';
import type { WorkerEvent, WorkerEventType } from '../protocol/events.js';
import { ndjsonLines } from '../protocol/ndjson.js';
import { HTTP_STATUS } from './errors.js';

// The bodies are the library's own return values as JSON; deriving them from the Spawngate type
// keeps the two from drifting apart without naming the modules that define them.
export type RemoteSpawnStatus = Awaited<ReturnType<Spawngate['status']>>;
export type RemoteListedSpawn = Awaited<ReturnType<Spawngate['list']>>[number];
export type RemoteSweepReport = Awaited<ReturnType<Spawngate['sweep']>>;
type AdmitResult = Awaited<ReturnType<Spawngate['admit']>>;

export interface RemoteAdmitResult {
  decisionId: string;
  stage: AdmitResult['stage'];
  bundleRevision: string | null;
  decision: AdmitResult['decision'];
}

export type RemoteSpawn = SpawnSummary;

export interface RemoteHealth {
  status: string;
  bundleRevision: string | null;
  reason?: string;
}

/** Where the server listens, parsed from `http://host:port[/prefix]`, `https://…` or `unix:/path/to/socket`. */
export type ServerAddress = { kind: 'tcp'; url: URL } | { kind: 'unix'; socketPath: string };

export interface ServerClientOptions {
  /** `http://host:port[/prefix]`, `https://host[:port][/prefix]` (a TLS proxy in front) or `unix:/path/to/socket`. */
  server: string | ServerAddress;
  /** The server's SPAWNGATE_API_TOKEN; required on TCP, optional on a socket the server runs without one. */
  token?: string;
  /** Bound on each call that does not wait for a worker (all but spawn, turn and sweep); default 60 s. */
  requestTimeoutMs?: number;
  /** Longest NDJSON line accepted from a turn stream; default 1 MiB. */
  maxLineBytes?: number;
}

export interface CallOptions {
  signal?: AbortSignal;
  traceparent?: string;
}

export interface ServerClient {
  /** Human-readable address, for messages. */
  readonly label: string;
  healthz(options?: CallOptions): Promise<RemoteHealth>;
  admit(request: SpawnRequestInput, options?: CallOptions): Promise<RemoteAdmitResult>;
  /** Resolves when the worker is ready. Aborting `signal` drops the request, and the server then removes what it created. */
  spawn(request: SpawnRequestInput, options?: CallOptions): Promise<RemoteSpawn>;
  list(options?: CallOptions & { all?: boolean }): Promise<RemoteListedSpawn[]>;
  status(spawnId: string, options?: CallOptions): Promise<RemoteSpawnStatus>;
  logs(spawnId: string, tail?: number, options?: CallOptions): Promise<string[]>;
  /** The unified diff of a `git` workspace since its checked-out commit. */
  workspaceDiff(spawnId: string, options?: CallOptions): Promise<{ base: string; diff: string }>;
  /** The workspace as a .tar.gz stream (without .git unless `git`). */
  workspaceArchive(spawnId: string, options?: CallOptions & { git?: boolean }): Promise<IncomingMessage>;
  close(spawnId: string, options?: CallOptions): Promise<void>;
  cancel(spawnId: string, options?: CallOptions): Promise<void>;
  sweep(options?: CallOptions & { dryRun?: boolean; orphans?: boolean }): Promise<RemoteSweepReport>;
  /**
   * The turn's events as they arrive; the last is turn.completed, turn.failed or turn.cancelled.
   * Leaving the loop early or aborting `signal` drops the connection, which cancels the turn.
   */
  turn(spawnId: string, message: string, options?: CallOptions & { turnId?: string }): AsyncIterable<WorkerEvent>;
}

/** A failure the server reported (or the exchange with it), with the HTTP status when there was one. */
export class ServerApiError extends SpawngateError {
  /** 0 when no HTTP answer came (unreachable, timed out). */
  readonly status: number;
  constructor(code: ErrorCode, message: string, status: number, options: { retryable?: boolean; cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(code, message, { ...options, details: { ...options.details, httpStatus: status } });
    this.status = status;
  }
}

const DEFAULT_MAX_LINE_BYTES = 1024 * 1024;
const MAX_JSON_BODY_BYTES = 16 * 1024 * 1024;
const TERMINAL: ReadonlySet<string> = new Set<WorkerEventType>(['turn.completed', 'turn.failed', 'turn.cancelled']);
const KNOWN_EVENTS: ReadonlySet<string> = new Set<WorkerEventType>([
  'turn.started',
  'agent.message.delta',
  'agent.thought.delta',
  'tool.call',
  'tool.result',
  'agent.plan',
  'agent.usage',
  'turn.completed',
  'turn.failed',
  'turn.cancelled',
]);
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOENT', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'EAI_AGAIN', 'ENOTFOUND']);

/**
 * Parses a --server value. Credentials, queries and fragments are refused: the token travels in a
 * header (never in a URL, which ends up on command lines and in logs), and the API has no use for
 * the others.
 */
export function parseServerAddress(text: string): ServerAddress {
  const bad = (why: string): never => {
    throw new UsageError(`invalid server address ${JSON.stringify(text)}: ${why} (expected http://host:port, https://host[:port] or unix:/path/to/socket)`);
  };
  if (text.startsWith('unix:')) {
    // Both unix:/path and unix:///path are in use for socket URLs; either names the same file.
    const socketPath = text.slice('unix:'.length).replace(/^\/\/(?=\/)/, '');
    if (socketPath === '') bad('no socket path after unix:');
    if (socketPath.includes('\0')) bad('the socket path contains a NUL byte');
    return { kind: 'unix', socketPath };
  }
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return bad('not a URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') bad(`scheme ${url.protocol} is not supported`);
  if (url.hostname === '') bad('no host');
  if (url.username !== '' || url.password !== '') bad('credentials do not belong in the URL; pass the API token through SPAWNGATE_API_TOKEN or a token file');
  if (url.search !== '' || url.hash !== '') bad('a query or fragment has no meaning here');
  return { kind: 'tcp', url };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(HTTP_STATUS, code);
}

/**
 * The HTTP layer's codes (src/server/errors.ts) have no ErrorCode of their own. A wrong token and
 * a path that is not spawngate's are mistakes in how the client was pointed (USAGE); a server
 * shutting down will be back (retryable); an internal error is the server's failure.
 */
function fromHttpCode(serverCode: string, status: number, label: string, message: string): { code: ErrorCode; message: string; retryable: boolean } {
  switch (serverCode) {
    case 'UNAUTHORIZED':
      return { code: 'USAGE', message: `spawngate serve at ${label} rejected the API token (missing or wrong)`, retryable: false };
    case 'ROUTE_NOT_FOUND':
    case 'METHOD_NOT_ALLOWED':
      return { code: 'USAGE', message: `${label} does not serve this request (${message}); is it the address of spawngate serve, and of a version with this route?`, retryable: false };
    case 'PAYLOAD_TOO_LARGE':
      return { code: 'REQUEST_INVALID', message: `spawngate serve at ${label}: ${message}`, retryable: false };
    case 'SHUTTING_DOWN':
      return { code: 'BACKEND_UNAVAILABLE', message: `spawngate serve at ${label} is shutting down`, retryable: true };
    case 'INTERNAL':
      return { code: 'BACKEND_FAILED', message: `spawngate serve at ${label} failed with an internal error (its log has the details)`, retryable: false };
  }
  // A code this client does not know (a newer server, or a proxy's own page): judge by the status.
  if (status === 401 || status === 403 || status === 404 || status === 405) return { code: 'USAGE', message: `${label} answered HTTP ${status}: ${message}`, retryable: false };
  if (status === 409) return { code: 'WORKER_BUSY', message, retryable: true };
  if (status >= 400 && status < 500) return { code: 'REQUEST_INVALID', message: `${label} answered HTTP ${status}: ${message}`, retryable: false };
  if (status === 502 || status === 503 || status === 504) return { code: 'BACKEND_UNAVAILABLE', message: `${label} answered HTTP ${status}: ${message}`, retryable: true };
  return { code: 'BACKEND_FAILED', message: `${label} answered HTTP ${status}: ${message}`, retryable: false };
}

/** Turns an error body (`{error: SpawngateError.toJSON()}`) back into the error the server threw. */
export function errorFromBody(status: number, body: unknown, label: string): SpawngateError {
  const error = isRecord(body) && isRecord(body['error']) ? body['error'] : null;
  if (!error) return new ServerApiError(fromHttpCode('', status, label, 'no error body').code, `${label} answered HTTP ${status} without a spawngate error body`, status, { retryable: status >= 502 });
  const { name: _name, code, message: rawMessage, retryable, ...rest } = error;
  const message = typeof rawMessage === 'string' ? rawMessage : `HTTP ${status}`;
  const details = { ...rest, httpStatus: status, serverCode: code };
  if (code === 'ADMISSION_DENIED') {
    const reasons = Array.isArray(rest['reasons']) ? (rest['reasons'] as DenyReason[]) : [];
    return new AdmissionDeniedError(reasons, { details });
  }
  if (code === 'REQUEST_INVALID') {
    const issues = Array.isArray(rest['issues']) ? (rest['issues'] as Issue[]) : [];
    return new RequestError(message, issues, { details });
  }
  if (isErrorCode(code)) return new ServerApiError(code, message, status, { retryable: retryable === true, details });
  const mapped = fromHttpCode(typeof code === 'string' ? code : '', status, label, message);
  return new ServerApiError(mapped.code, mapped.message, status, { retryable: mapped.retryable, details });
}

async function readBounded(res: IncomingMessage, limit: number, label: string): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) {
      res.destroy();
      throw new ServerApiError('WORKER_PROTOCOL', `answer from ${label} exceeds ${limit} bytes`, res.statusCode ?? 0);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function errorFromResponse(res: IncomingMessage, label: string): Promise<SpawngateError> {
  const status = res.statusCode ?? 0;
  let body: unknown = null;
  try {
    body = JSON.parse(await readBounded(res, 256 * 1024, label));
  } catch {
    body = null;
  }
  return errorFromBody(status, body, label);
}

/** Aborts with the caller's reason, or with a TIMEOUT error when only the time bound ran out. */
function bounded(signal: AbortSignal | undefined, timeoutMs: number | null, label: string): { signal: AbortSignal | undefined; dispose: () => void } {
  if (timeoutMs === null) return { signal, dispose: () => undefined };
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(new ServerApiError('TIMEOUT', `spawngate serve at ${label} did not answer within ${timeoutMs} ms`, 0, { retryable: true })), timeoutMs);
  return { signal: signal ? AbortSignal.any([signal, timeout.signal]) : timeout.signal, dispose: () => clearTimeout(timer) };
}

function parseEvent(line: string, label: string): WorkerEvent | null {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (cause) {
    throw new ServerApiError('WORKER_PROTOCOL', `malformed NDJSON line in the turn stream from ${label}`, 200, { cause, details: { line: line.slice(0, 200) } });
  }
  if (!isRecord(value) || typeof value['type'] !== 'string' || typeof value['turnId'] !== 'string' || !Number.isInteger(value['seq'])) {
    throw new ServerApiError('WORKER_PROTOCOL', `turn stream line from ${label} lacks type/turnId/seq`, 200, { details: { line: line.slice(0, 200) } });
  }
  // Event types this client does not know come from a newer worker; skipping them keeps the stream usable.
  return KNOWN_EVENTS.has(value['type']) ? (value as unknown as WorkerEvent) : null;
}

export function createServerClient(options: ServerClientOptions): ServerClient {
  const address = typeof options.server === 'string' ? parseServerAddress(options.server) : options.server;
  const token = options.token;
  if (token !== undefined && !/^\S+$/.test(token)) throw new UsageError('the API token must be a non-empty string without whitespace');
  const requestTimeoutMs = options.requestTimeoutMs ?? 60_000;
  const maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  const label = address.kind === 'unix' ? `unix:${address.socketPath}` : address.url.origin + address.url.pathname.replace(/\/+$/, '');
  const prefix = address.kind === 'unix' ? '' : address.url.pathname.replace(/\/+$/, '');
  const tls = address.kind === 'tcp' && address.url.protocol === 'https:';
  const base: RequestOptions =
    address.kind === 'unix'
      ? { socketPath: address.socketPath }
      : // URL keeps IPv6 hosts bracketed; node:http wants them bare.
        { hostname: address.url.hostname.replace(/^\[(.*)\]$/, '$1'), port: address.url.port || (tls ? 443 : 80) };

  const open = (method: string, path: string, body: unknown, signal: AbortSignal | undefined, traceparent: string | undefined): Promise<IncomingMessage> =>
    new Promise((resolve, reject) => {
      const payload = body === undefined ? null : JSON.stringify(body);
      const headers: OutgoingHttpHeaders = { accept: 'application/json, application/x-ndjson' };
      if (token !== undefined) headers['authorization'] = `Bearer ${token}`;
      if (traceparent) headers['traceparent'] = traceparent;
      if (payload !== null) {
        headers['content-type'] = 'application/json';
        headers['content-length'] = Buffer.byteLength(payload);
      }
      const request = tls ? httpsRequest : httpRequest;
      // agent: false — one connection per call, so a CLI that is done exits without idle sockets to wait for.
      const req = request({ ...base, method, path: `${prefix}${path}`, headers, agent: false, ...(signal ? { signal } : {}) }, resolve);
      req.once('error', (err: NodeJS.ErrnoException) => {
        if (signal?.aborted) return reject(signal.reason as Error);
        const code = err.code ?? '';
        reject(
          new ServerApiError('BACKEND_UNAVAILABLE', `cannot reach spawngate serve at ${label} (${code || err.message})`, 0, {
            retryable: UNREACHABLE.has(code),
            cause: err,
            details: { errno: code || null },
          }),
        );
      });
      req.end(payload ?? undefined);
    });

  /** One bounded JSON exchange: the expected status and its body, or the error the server sent. */
  const call = async <T>(method: string, path: string, expected: number, body: unknown, callOptions: CallOptions | undefined, timeoutMs: number | null): Promise<T> => {
    const bound = bounded(callOptions?.signal, timeoutMs, label);
    try {
      const res = await open(method, path, body, bound.signal, callOptions?.traceparent);
      if (res.statusCode !== expected) {
        // A 2xx other than the expected one still means the server did something; say so rather than guess.
        if ((res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 300) {
          res.resume();
          throw new ServerApiError('WORKER_PROTOCOL', `${label} answered ${method} ${path} with HTTP ${res.statusCode}, expected ${expected}`, res.statusCode ?? 0);
        }
        throw await errorFromResponse(res, label);
      }
      const text = await readBounded(res, MAX_JSON_BODY_BYTES, label);
      if (expected === 204) return undefined as T;
      try {
        return JSON.parse(text) as T;
      } catch (cause) {
        throw new ServerApiError('WORKER_PROTOCOL', `${label} answered ${method} ${path} with something other than JSON; is it spawngate serve?`, expected, { cause });
      }
    } catch (err) {
      // The timer's reason is a TIMEOUT error; the caller's own abort keeps its reason, as fetch does.
      if (bound.signal?.aborted) throw bound.signal.reason;
      throw err;
    } finally {
      bound.dispose();
    }
  };

  const spawnPath = (spawnId: string) => `/v1/spawns/${encodeURIComponent(spawnId)}`;

  async function* turn(spawnId: string, message: string, turnOptions: CallOptions & { turnId?: string } = {}): AsyncGenerator<WorkerEvent> {
    const { signal } = turnOptions;
    const res = await open('POST', `${spawnPath(spawnId)}/turns`, { message, ...(turnOptions.turnId === undefined ? {} : { turnId: turnOptions.turnId }) }, signal, turnOptions.traceparent);
    if (res.statusCode !== 200) throw await errorFromResponse(res, label);
    let terminal = false;
    try {
      for await (const line of ndjsonLines(res as AsyncIterable<Buffer>, maxLineBytes, () => new ServerApiError('WORKER_PROTOCOL', `turn stream line from ${label} exceeds ${maxLineBytes} bytes`, 200))) {
        if (line.trim() === '') continue;
        const event = parseEvent(line, label);
        if (!event) continue;
        if (TERMINAL.has(event.type)) terminal = true;
        yield event;
      }
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (err instanceof SpawngateError) throw err;
      throw new ServerApiError('WORKER_PROTOCOL', `turn stream from ${label} broke: ${(err as Error).message}`, 200, { cause: err });
    } finally {
      // Leaving early drops the connection; the server takes that as a cancel of the turn.
      if (!res.complete) res.destroy();
    }
    // The server ends every stream it can with a terminal line; none means it went away mid-turn.
    if (!terminal) throw new ServerApiError('WORKER_PROTOCOL', `turn stream from ${label} ended without turn.completed, turn.failed or turn.cancelled (did the server stop?)`, 200);
  }

  return {
    label,
    healthz: async (o) => {
      // /healthz answers 503 with a JSON body when no policy is loaded; that is an answer, not a failure.
      const bound = bounded(o?.signal, requestTimeoutMs, label);
      try {
        const res = await open('GET', '/healthz', undefined, bound.signal, o?.traceparent);
        const text = await readBounded(res, 64 * 1024, label);
        try {
          return JSON.parse(text) as RemoteHealth;
        } catch (cause) {
          throw new ServerApiError('WORKER_PROTOCOL', `${label} answered /healthz with something other than JSON; is it spawngate serve?`, res.statusCode ?? 0, { cause });
        }
      } catch (err) {
        if (bound.signal?.aborted) throw bound.signal.reason;
        throw err;
      } finally {
        bound.dispose();
      }
    },
    admit: (request, o) => call<RemoteAdmitResult>('POST', '/v1/admit', 200, request, o, requestTimeoutMs),
    spawn: (request, o) => call<RemoteSpawn>('POST', '/v1/spawns', 201, request, o, null),
    list: async (o) => (await call<{ spawns: RemoteListedSpawn[] }>('GET', o?.all ? '/v1/spawns?all=true' : '/v1/spawns', 200, undefined, o, requestTimeoutMs)).spawns,
    status: (spawnId, o) => call<RemoteSpawnStatus>('GET', spawnPath(spawnId), 200, undefined, o, requestTimeoutMs),
    logs: async (spawnId, tail = 200, o) => (await call<{ lines: string[] }>('GET', `${spawnPath(spawnId)}/logs?tail=${tail}`, 200, undefined, o, requestTimeoutMs)).lines,
    async workspaceDiff(spawnId, o) {
      const bound = bounded(o?.signal, Math.max(requestTimeoutMs, 5 * 60_000), label);
      try {
        const res = await open('GET', `${spawnPath(spawnId)}/workspace?format=diff`, undefined, bound.signal, o?.traceparent);
        if (res.statusCode !== 200) throw await errorFromResponse(res, label);
        return { base: String(res.headers['x-spawngate-base'] ?? ''), diff: await readBounded(res, 256 * 1024 * 1024, label) };
      } catch (err) {
        if (bound.signal?.aborted) throw bound.signal.reason;
        throw err;
      } finally {
        bound.dispose();
      }
    },
    async workspaceArchive(spawnId, o) {
      const res = await open('GET', `${spawnPath(spawnId)}/workspace?format=archive${o?.git ? '&git=1' : ''}`, undefined, o?.signal, o?.traceparent);
      if (res.statusCode !== 200) throw await errorFromResponse(res, label);
      return res;
    },
    close: (spawnId, o) => call<undefined>('DELETE', spawnPath(spawnId), 204, undefined, o, requestTimeoutMs),
    cancel: async (spawnId, o) => {
      await call<unknown>('POST', `${spawnPath(spawnId)}/cancel`, 202, {}, o, requestTimeoutMs);
    },
    // A sweep deletes one worker after another; how long that takes grows with their number, so only the caller bounds it.
    sweep: (o = {}) =>
      call<RemoteSweepReport>('POST', '/v1/sweep', 200, { ...(o.dryRun === undefined ? {} : { dryRun: o.dryRun }), ...(o.orphans === undefined ? {} : { orphans: o.orphans }) }, o, null),
    turn,
  };
}
