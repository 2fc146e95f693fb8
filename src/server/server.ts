import { chmod } from 'node:fs/promises';
import { context, ROOT_CONTEXT, SpanKind, trace } from '@opentelemetry/api';
import type { Context } from '@opentelemetry/api';
import { createServer as createHttpServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { MAX_WAIT_SECONDS, type SpawnRequestInput } from '../admission/request.js';
import { errorMap, toIssues } from '../config/issues.js';
import { listen, removeStaleSocket, type ListenAddress } from '../net.js';
import { ConfigError, formatPath, RequestError, SpawngateError } from '../errors.js';
import type { Issue } from '../errors.js';
import type { Logger } from '../log.js';
import type { Spawngate } from '../spawngate.js';
import {
  announcesBody,
  answerContinueLate,
  BodyTooLargeError,
  closeWithoutReading,
  decodeJsonBody,
  DEFAULT_HTTP_LIMITS,
  httpLimitIssues,
  httpServerOptions,
  isJsonContentType,
  onClientError,
  parseTraceparent,
  readBody,
  sendJson,
  tokenVerifier,
  type HttpLimits,
} from '../protocol/http.js';
import type { WorkerEvent } from '../protocol/events.js';
import { endHttpSpan, httpMethod, parentContext, setAttributes, startSpan } from '../telemetry/tracing.js';
import { errorReply, httpErrorBody } from './errors.js';
import type { HttpErrorCode } from './errors.js';
import { HTTP_ERROR_STATUS, HTTP_STATUS } from './errors.js';
import { safely, type Metrics } from '../telemetry/metrics.js';

const METRIC_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']);

export type ServerListen = ListenAddress;

/** Statuses an API route can answer besides its errors: created, accepted, no content, a client gone (499). */
const SUCCESS_STATUSES = [200, 201, 202, 204, 499];

/**
 * Every method/route/status series at zero before the first request, so that a rate over the first
 * minutes counts the first request of each kind too (a series born at 1 looks unchanged).
 */
function preinitRequestMetrics(metrics: Metrics, routes: readonly Route[]): void {
  const statuses = [...new Set([...SUCCESS_STATUSES, ...Object.values(HTTP_STATUS), ...Object.values(HTTP_ERROR_STATUS)])].sort((a, b) => a - b);
  safely(() => {
    for (const route of routes) {
      for (const method of Object.keys(route.methods)) {
        metrics.httpRequestSeconds.zero({ method, route: route.template });
        // The public routes answer few statuses; the API ones any error a handler can throw.
        const codes = route.public ? [200, 405, 499, 503] : statuses;
        for (const code of codes) metrics.httpRequests.inc({ method, route: route.template, code: String(code) }, 0);
      }
    }
  });
}

/** The parts of a gate the API calls; a full `Spawngate` is one. */
export type ServedGate = Pick<
  Spawngate,
  'admit' | 'spawn' | 'get' | 'turn' | 'cancel' | 'status' | 'logs' | 'collect' | 'close' | 'list' | 'sweep' | 'metrics' | 'policy' | 'logger' | 'store'
> &
  Partial<Pick<Spawngate, 'warmPools'>>;

export interface ServerOptions {
  gate: ServedGate;
  /**
   * Bearer token every /v1 request must carry. Required on TCP; on a unix socket it may be left out,
   * and then the socket's file mode (0600) is the access control.
   */
  token?: string;
  /** TCP (host defaults to 127.0.0.1) or a unix socket path. */
  listen: ServerListen;
  /** Default: the gate's logger. */
  logger?: Logger;
  /** Largest request body; default 1 MiB. */
  maxBodyBytes?: number;
  /** How long close() lets open requests and turn streams finish before cutting them off; default 10 s. */
  drainTimeoutMs?: number;
  /** Time to receive a request's headers; default 10 s. */
  headersTimeoutMs?: number;
  /** Time to receive a whole request, body included (not a streamed response); default 30 s. */
  requestTimeoutMs?: number;
  /** How long an idle keep-alive connection stays open; default 5 s. */
  keepAliveTimeoutMs?: number;
  /**
   * After refusing a request whose body is still coming, the body is swallowed (never parsed) so the
   * client can read the answer; the connection is cut when the client has sent nothing for this
   * long; default 2 s.
   */
  lingerMs?: number;
  /** ...or this long after the answer in all; default 10 s. */
  lingerMaxMs?: number;
  /** ...or after this many bytes; default 64 MiB. */
  lingerBytes?: number;
}

export interface RunningServer {
  readonly address: { url: string } | { socketPath: string };
  /** Stops accepting, cancels open turns so their streams end with turn.cancelled, then closes every connection. Idempotent. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;
const MAX_LOG_TAIL = 100_000;
const SPAWN_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const TURN_ID = /^[A-Za-z0-9._:-]{1,128}$/;

type Method = 'GET' | 'POST' | 'DELETE';

interface Reply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

interface RequestContext {
  req: IncomingMessage;
  res: ServerResponse;
  url: URL;
  spawnId: string;
  /** The parsed JSON body; undefined when the request has none. */
  body: unknown;
  /** Aborts when the client goes away before its response is complete. */
  signal: AbortSignal;
}

/** null: the handler wrote the response itself (a stream). */
type Handler = (ctx: RequestContext) => Promise<Reply | null>;

interface Route {
  pattern: RegExp;
  /** The path with `{id}` for the spawn id: a bounded label for request metrics and span names. */
  template: string;
  /** Served without a token: load balancers and Prometheus scrape these. */
  public?: boolean;
  methods: Partial<Record<Method, Handler>>;
}

interface OpenTurn {
  spawnId: string;
}

const turnBodySchema = z.strictObject({
  message: z.string().refine((v) => v.trim() !== '', { message: 'must not be empty' }),
  turnId: z.string().regex(TURN_ID, { message: 'must be 1-128 characters of A-Z a-z 0-9 . _ : -' }).optional(),
});

const sweepBodySchema = z.strictObject({
  dryRun: z.boolean().optional(),
  orphans: z.boolean().optional(),
});

/** A body as strict JSON (src/json.ts), or a 400 that says where it went wrong. */
function parseBody(raw: Buffer): unknown {
  const decoded = decodeJsonBody(raw);
  if (decoded.ok) return decoded.value;
  const { fault } = decoded;
  const message = `not valid JSON: ${fault.message}`;
  const path = formatPath(fault.path ?? []);
  const where = { offset: fault.offset, ...(fault.line === undefined ? {} : { line: fault.line, column: fault.column }) };
  throw new RequestError(`request body is ${message}`, [{ path, message }], { details: { body: where } });
}

/** The body of a route that takes a JSON object: anything else (null, an array, no body) is a 400, never a TypeError deep inside. */
function requireObject(body: unknown, what: string, emptyAsObject = false): Record<string, unknown> {
  if (body === undefined && emptyAsObject) return {};
  if (isRecord(body)) return body;
  const found = body === undefined ? 'no body' : body === null ? 'null' : Array.isArray(body) ? 'an array' : `a ${typeof body}`;
  const message = `must be a JSON object, found ${found}`;
  throw new RequestError(`${what} ${message}`, [{ path: '(root)', message }]);
}

function parseWith<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const result = schema.safeParse(value, { error: errorMap });
  if (result.success) return result.data;
  const issues = toIssues(result.error);
  throw new RequestError(`invalid ${what}: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The gateway's trace continues through the header when the body does not name one itself. */
/**
 * The `Idempotency-Key` header (draft-ietf-httpapi-idempotency-key-header) as the request's
 * idempotencyKey. A key in the body too must be the same key: two keys for one request is a 400.
 * The draft's key is a structured-field string ("…"); a bare token is taken as it is.
 */
function withIdempotencyKey(body: Record<string, unknown>, header: string | string[] | undefined): Record<string, unknown> {
  if (header === undefined) return body;
  const values = Array.isArray(header) ? header : [header];
  const issue = (message: string) => new RequestError(`invalid Idempotency-Key header: ${message}`, [{ path: 'headers.idempotency-key', message }]);
  if (values.length !== 1 || (values[0] ?? '').includes(',')) throw issue('must be sent once, with one key');
  const raw = (values[0] ?? '').trim();
  const quoted = /^"((?:[^"\\]|\\["\\])*)"$/.exec(raw);
  const key = quoted ? (quoted[1] ?? '').replace(/\\(["\\])/g, '$1') : raw;
  if (key === '') throw issue('must not be empty');
  if (body['idempotencyKey'] !== undefined && body['idempotencyKey'] !== key) throw issue('differs from the body\'s idempotencyKey; send the key once');
  return { ...body, idempotencyKey: key };
}

/**
 * RFC 7240 `Prefer: wait=N`: how long the caller would wait for a concurrency slot, when the body
 * does not say (`waitSeconds`). A preference, so a longer one is cut to the longest a request may ask.
 */
function withPreferredWait(body: Record<string, unknown>, header: string | string[] | undefined): Record<string, unknown> {
  if (header === undefined || body['waitSeconds'] !== undefined) return body;
  const preferences = (Array.isArray(header) ? header.join(',') : header).split(',');
  for (const preference of preferences) {
    const m = /^\s*wait\s*=\s*"?(\d{1,9})"?\s*(;.*)?$/i.exec(preference);
    if (m) return { ...body, waitSeconds: Math.min(Number(m[1]), MAX_WAIT_SECONDS) };
  }
  return body;
}

function withTraceparent(body: unknown, header: string | string[] | undefined): unknown {
  const trace = parseTraceparent(header);
  if (!trace || !isRecord(body) || body['traceparent'] !== undefined) return body;
  return { ...body, traceparent: trace.traceparent };
}

/** Probes and scrapes come every few seconds: a SERVER span each would be a trace of its own each time. */
const UNTRACED_PATHS = new Set(['/healthz', '/metrics']);

/**
 * The SERVER span of one API request, a child of the request's W3C `traceparent` header (a new
 * trace without one), ended when the response closes. Its name is `{method} {route template}`
 * once the route is known (`matched`), never the raw path, so span names stay a bounded set.
 * Returns the context the handler runs in; null for a path that is not traced.
 */
function traceRequest(req: IncomingMessage, res: ServerResponse, matched: { route: string }): Context | null {
  const path = (req.url ?? '/').replace(/\?.*$/, '');
  if (UNTRACED_PATHS.has(path)) return null;
  const header = parseTraceparent(req.headers.traceparent);
  const parent = header ? parentContext(header.traceparent) : ROOT_CONTEXT;
  const method = httpMethod(req.method);
  const span = startSpan(method, parent, SpanKind.SERVER);
  const socket = req.socket;
  setAttributes(span, {
    'http.request.method': method,
    'url.path': path,
    'url.scheme': 'http',
    'server.address': socket.localAddress,
    'server.port': socket.localPort,
    'network.transport': socket.localPort === undefined ? 'unix' : 'tcp',
    'client.address': socket.remoteAddress,
    'user_agent.original': req.headers['user-agent'],
  });
  res.once('close', () => {
    if (matched.route !== 'unmatched') {
      setAttributes(span, { 'http.route': matched.route });
      try {
        span.updateName(`${method} ${matched.route}`);
      } catch {
        // telemetry must never break a request
      }
    }
    endHttpSpan(span, SpanKind.SERVER, res.headersSent ? res.statusCode : null);
  });
  return trace.setSpan(parent, span);
}

/**
 * Admission and the spawn run under the request's SERVER span, unless the body names a trace of its
 * own (the body wins, as docs/server.md says). Passed explicitly rather than through the active
 * context, so that without an SDK (no context manager) the caller's trace still reaches the worker.
 */
function parentOption(request: unknown, traced: Context | undefined): { parent?: Context } {
  if (!traced || (isRecord(request) && request['traceparent'] !== undefined)) return {};
  return { parent: traced };
}

function queryFlag(url: URL, name: string): boolean {
  const value = url.searchParams.get(name);
  if (value === null || value === 'false' || value === '0') return false;
  if (value === 'true' || value === '1' || value === '') return true;
  throw new RequestError(`query parameter ${name} must be true or false`, [{ path: `query.${name}`, message: 'must be true or false' }]);
}

function notFound(spawnId: string): SpawngateError {
  return new SpawngateError('SPAWN_NOT_FOUND', `no worker ${spawnId}`);
}

/** Waits until the line is handed to the socket, so a slow reader slows the stream instead of growing memory. */
function writeLine(res: ServerResponse, value: unknown): Promise<void> {
  if (res.destroyed || res.writableEnded) return Promise.resolve();
  if (res.write(`${JSON.stringify(value)}\n`)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

function within(promise: Promise<unknown>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    const done = (): void => {
      clearTimeout(timer);
      resolve();
    };
    promise.then(done, done);
  });
}

function validateOptions(options: ServerOptions): void {
  const issues: Issue[] = [];
  const { token, listen } = options;
  if (token !== undefined && (typeof token !== 'string' || !/^\S+$/.test(token))) issues.push({ path: 'token', message: 'must be a non-empty string without whitespace' });
  if ('socketPath' in listen) {
    if (typeof listen.socketPath !== 'string' || listen.socketPath === '') issues.push({ path: 'listen.socketPath', message: 'must be a non-empty path' });
  } else {
    if (!Number.isInteger(listen.port) || listen.port < 0 || listen.port > 65535) issues.push({ path: 'listen.port', message: 'must be an integer between 0 and 65535' });
    // Anyone who can reach the port could spawn workers: TCP without a token is refused outright.
    if (token === undefined) issues.push({ path: 'token', message: 'required when listening on TCP (set SPAWNGATE_API_TOKEN); only a unix socket may go without one' });
  }
  if (options.maxBodyBytes !== undefined && (!Number.isInteger(options.maxBodyBytes) || options.maxBodyBytes < 1)) issues.push({ path: 'maxBodyBytes', message: 'must be a positive integer' });
  if (options.drainTimeoutMs !== undefined && (!Number.isFinite(options.drainTimeoutMs) || options.drainTimeoutMs < 0)) issues.push({ path: 'drainTimeoutMs', message: 'must be a non-negative number of milliseconds' });
  issues.push(...httpLimitIssues(options));
  if (issues.length > 0) throw new ConfigError(`invalid server options: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
}

/**
 * Starts spawngate's HTTP API (docs/server.md) in front of a gate: admission, spawns, streamed
 * turns, status, logs, close, list and sweep under /v1, plus /healthz and /metrics. The gate stays
 * the caller's: close() stops the server, not the gate.
 */
export async function createServer(options: ServerOptions): Promise<RunningServer> {
  validateOptions(options);
  const { gate } = options;
  const logger = options.logger ?? gate.logger;
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const drainTimeoutMs = options.drainTimeoutMs ?? 10_000;
  const limits: HttpLimits = {
    headersTimeoutMs: options.headersTimeoutMs ?? DEFAULT_HTTP_LIMITS.headersTimeoutMs,
    requestTimeoutMs: options.requestTimeoutMs ?? DEFAULT_HTTP_LIMITS.requestTimeoutMs,
    keepAliveTimeoutMs: options.keepAliveTimeoutMs ?? DEFAULT_HTTP_LIMITS.keepAliveTimeoutMs,
    lingerMs: options.lingerMs ?? DEFAULT_HTTP_LIMITS.lingerMs,
    lingerMaxMs: options.lingerMaxMs ?? DEFAULT_HTTP_LIMITS.lingerMaxMs,
    lingerBytes: options.lingerBytes ?? DEFAULT_HTTP_LIMITS.lingerBytes,
  };
  const isAuthorized = options.token === undefined ? null : tokenVerifier(options.token);
  const openTurns = new Set<OpenTurn>();
  const requestTraces = new WeakMap<IncomingMessage, Context>();
  const inflight = new Set<Promise<void>>();
  const requestAborts = new Set<AbortController>();
  let closing = false;
  let closePromise: Promise<void> | null = null;

  // ---- handlers ----------------------------------------------------------------------------------

  const healthz: Handler = () => {
    const bundleRevision = gate.policy.revision;
    if (closing) return Promise.resolve({ status: 503, body: { status: 'shutting_down', bundleRevision } });
    const health = gate.policy.health;
    // No bundle means every spawn is denied (fail closed); load balancers should see that.
    if (health.state === 'unavailable') {
      return Promise.resolve({ status: 503, body: { status: 'no_policy', bundleRevision, reason: health.problems[0] ?? 'no policy bundle is loaded' } });
    }
    // A bundle whose config is invalid denies every spawn: out of rotation, like no bundle.
    if (health.state === 'failing') return Promise.resolve({ status: 503, body: { status: 'degraded', policy: 'failing', bundleRevision, problems: health.problems } });
    // A rejected reload leaves the previous bundle deciding; an evaluation that errored may be one
    // caller's input (taking the instance out of rotation for it would hand callers a switch): in
    // rotation, but not "ok".
    if (health.state === 'stale' || health.state === 'erroring') return Promise.resolve({ status: 200, body: { status: 'degraded', policy: health.state, bundleRevision, problems: health.problems } });
    return Promise.resolve({ status: 200, body: { status: 'ok', bundleRevision } });
  };

  const metrics: Handler = async ({ res }) => {
    const { registry } = gate.metrics;
    const text = await registry.metrics();
    res.writeHead(200, { 'content-type': registry.contentType, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(text);
    return null;
  };

  const admit: Handler = async ({ req, body }) => {
    const parsed = requireObject(body, 'admission request');
    const request = withTraceparent(parsed, req.headers.traceparent);
    const result = await gate.admit(request as SpawnRequestInput, parentOption(parsed, requestTraces.get(req)));
    return { status: 200, body: { decisionId: result.decisionId, stage: result.stage, bundleRevision: result.bundleRevision, decision: result.decision } };
  };

  const spawn: Handler = async ({ req, body, signal }) => {
    const parsed = withPreferredWait(withIdempotencyKey(requireObject(body, 'spawn request'), req.headers['idempotency-key']), req.headers.prefer);
    const request = withTraceparent(parsed, req.headers.traceparent);
    // The client going away aborts the wait for readiness; the lifecycle then removes what it created.
    // Not with an idempotency key: the key makes the worker's id learnable, and a client that lost
    // its connection is exactly the one that retries with it, so the spawn goes on for that retry.
    const keyed = parsed['idempotencyKey'] !== undefined;
    const handle = await gate.spawn(request as SpawnRequestInput, { ...(keyed ? {} : { signal }), ...parentOption(parsed, requestTraces.get(req)) });
    if (signal.aborted && keyed) {
      logger.info('the caller left before the answer; the worker stays for a retry with its idempotency key', { spawnId: handle.spawnId });
      return null;
    }
    if (signal.aborted) {
      // Ready just as the caller left: nobody will ever learn this id, so nobody else would close it.
      await gate.close(handle.spawnId).catch((err: unknown) => logger.error('closing a worker whose caller left failed', { spawnId: handle.spawnId, error: (err as Error).message }));
      return null;
    }
    logger.info(handle.replayed ? 'answered a retried spawn with the worker its idempotency key made' : 'spawned worker', { spawnId: handle.spawnId, backend: handle.backend, profile: handle.profile, nativeId: handle.nativeId });
    return {
      // A replay answers as the first request was answered, and says it is one.
      status: 201,
      headers: { location: `/v1/spawns/${encodeURIComponent(handle.spawnId)}`, ...(handle.replayed ? { 'idempotent-replayed': 'true' } : {}) },
      body: {
        spawnId: handle.spawnId,
        decisionId: handle.decisionId,
        agentId: handle.agentId,
        backend: handle.backend,
        profile: handle.profile,
        nativeId: handle.nativeId,
        expiresAt: handle.expiresAt.toISOString(),
        decision: handle.decision,
        ...(handle.tree ? { tree: handle.tree } : {}),
        ...(handle.warm ? { warm: true } : {}),
      },
    };
  };

  const warmPools: Handler = () => Promise.resolve({ status: 200, body: { pools: gate.warmPools?.() ?? [] } });

  const queue: Handler = async () => {
    const waiting = (await gate.store.queue?.list()) ?? [];
    return { status: 200, body: { waiting: waiting.map((w) => ({ position: w.position, priority: w.priority, user: w.user, since: new Date(w.since).toISOString(), ...w.meta })) } };
  };

  const list: Handler = async ({ url }) => ({ status: 200, body: { spawns: await gate.list({ allOwners: queryFlag(url, 'all') }) } });

  const status: Handler = async ({ spawnId }) => ({ status: 200, body: await gate.status(spawnId) });

  const logs: Handler = async ({ spawnId, url }) => {
    const raw = url.searchParams.get('tail');
    const tail = raw === null ? 200 : Number(raw);
    if (!Number.isInteger(tail) || tail < 1 || tail > MAX_LOG_TAIL) {
      throw new RequestError(`tail must be an integer from 1 to ${MAX_LOG_TAIL}`, [{ path: 'query.tail', message: `must be an integer from 1 to ${MAX_LOG_TAIL}` }]);
    }
    return { status: 200, body: { lines: await gate.logs(spawnId, tail) } };
  };

  /** GET /v1/spawns/{id}/workspace?format=diff|archive[&git=1]: the worker's results before it goes. */
  const workspace: Handler = async ({ spawnId, url, res, signal }) => {
    const format = url.searchParams.get('format') ?? 'diff';
    if (format === 'diff') {
      const collected = await gate.collect(spawnId, { format: 'diff' });
      if (res.destroyed) return null;
      res.writeHead(200, { 'content-type': 'text/x-diff; charset=utf-8', 'x-spawngate-base': collected.base, 'cache-control': 'no-store', ...(closing ? { connection: 'close' } : {}) });
      res.end(collected.diff);
      return null;
    }
    if (format !== 'archive') throw new RequestError('format must be "diff" or "archive"', [{ path: 'query.format', message: 'must be "diff" or "archive"' }]);
    const { stream } = await gate.collect(spawnId, { format: 'archive', git: queryFlag(url, 'git') });
    signal.addEventListener('abort', () => stream.destroy(), { once: true });
    res.writeHead(200, { 'content-type': 'application/gzip', 'content-disposition': `attachment; filename="${spawnId}.tar.gz"`, 'cache-control': 'no-store', ...(closing ? { connection: 'close' } : {}) });
    await new Promise<void>((resolve) => {
      stream.once('error', () => {
        res.destroy();
        resolve();
      });
      stream.once('end', resolve);
      stream.pipe(res);
    });
    return null;
  };

  const close: Handler = async ({ spawnId }) => {
    await gate.close(spawnId);
    logger.info('closed worker', { spawnId });
    return { status: 204 };
  };

  const cancel: Handler = async ({ spawnId }) => {
    await gate.cancel(spawnId);
    return { status: 202, body: { spawnId } };
  };

  const sweep: Handler = async ({ body }) => {
    const options = parseWith(sweepBodySchema, requireObject(body, 'sweep request', true), 'sweep request');
    return { status: 200, body: await gate.sweep(options) };
  };

  const turn: Handler = async ({ res, spawnId, body, signal }) => {
    const { message, turnId } = parseWith(turnBodySchema, requireObject(body, 'turn request'), 'turn request');
    if (!gate.get(spawnId)) throw new SpawngateError('SPAWN_NOT_FOUND', `no live worker ${spawnId}`);
    // The request's signal is the turn's: a client that goes away drops the worker connection, and the worker cancels.
    const iterator = gate.turn(spawnId, message, { ...(turnId === undefined ? {} : { turnId }), signal })[Symbol.asyncIterator]();
    const open: OpenTurn = { spawnId };
    openTurns.add(open);
    let finished = false;
    try {
      // The status is decided by the first event: a busy worker or a vanished one is still a proper 409/404/502.
      const first = await iterator.next();
      if (first.done) {
        finished = true;
        throw new SpawngateError('WORKER_PROTOCOL', 'the worker ended the turn stream without any event');
      }
      let last: WorkerEvent = first.value;
      res.writeHead(200, {
        'content-type': 'application/x-ndjson; charset=utf-8',
        'cache-control': 'no-store',
        'x-turn-id': first.value.turnId,
        // Reverse proxies must pass lines through as they come, not buffer the stream.
        'x-accel-buffering': 'no',
        ...(closing ? { connection: 'close' } : {}),
      });
      await writeLine(res, first.value);
      try {
        for (;;) {
          const next = await iterator.next();
          if (next.done) break;
          last = next.value;
          await writeLine(res, next.value);
        }
        finished = true;
      } catch (err) {
        finished = true;
        if (signal.aborted) return null;
        // Headers are gone: the failure can only be told in the stream, as the terminal line it lacks.
        const failure = errorReply(err).body.error;
        logger.warn('turn stream from the worker broke', { spawnId, error: failure.message });
        await writeLine(res, {
          type: 'turn.failed',
          turnId: last.turnId,
          seq: last.seq + 1,
          time: new Date().toISOString(),
          error: { code: 'stream_broken', message: failure.message, spawngateCode: failure.code },
        });
      }
      res.end();
      return null;
    } finally {
      openTurns.delete(open);
      // Leaving early drops the worker connection, which is how the worker learns to cancel the turn.
      if (!finished) await iterator.return?.(undefined).catch(() => undefined);
    }
  };

  const routes: Route[] = [
    { pattern: /^\/healthz$/, template: '/healthz', public: true, methods: { GET: healthz } },
    { pattern: /^\/metrics$/, template: '/metrics', public: true, methods: { GET: metrics } },
    { pattern: /^\/v1\/admit$/, template: '/v1/admit', methods: { POST: admit } },
    { pattern: /^\/v1\/sweep$/, template: '/v1/sweep', methods: { POST: sweep } },
    { pattern: /^\/v1\/spawns$/, template: '/v1/spawns', methods: { GET: list, POST: spawn } },
    { pattern: /^\/v1\/queue$/, template: '/v1/queue', methods: { GET: queue } },
    { pattern: /^\/v1\/warm-pools$/, template: '/v1/warm-pools', methods: { GET: warmPools } },
    { pattern: /^\/v1\/spawns\/([^/]+)$/, template: '/v1/spawns/{id}', methods: { GET: status, DELETE: close } },
    { pattern: /^\/v1\/spawns\/([^/]+)\/turns$/, template: '/v1/spawns/{id}/turns', methods: { POST: turn } },
    { pattern: /^\/v1\/spawns\/([^/]+)\/cancel$/, template: '/v1/spawns/{id}/cancel', methods: { POST: cancel } },
    { pattern: /^\/v1\/spawns\/([^/]+)\/logs$/, template: '/v1/spawns/{id}/logs', methods: { GET: logs } },
    { pattern: /^\/v1\/spawns\/([^/]+)\/workspace$/, template: '/v1/spawns/{id}/workspace', methods: { GET: workspace } },
  ];
  preinitRequestMetrics(gate.metrics, routes);

  // ---- dispatch ----------------------------------------------------------------------------------

  const sendReply = (res: ServerResponse, reply: Reply): void => {
    if (res.headersSent || res.destroyed) return;
    const headers = { ...reply.headers, ...(closing ? { connection: 'close' } : {}) };
    if (reply.body === undefined) {
      res.writeHead(reply.status, { 'cache-control': 'no-store', ...headers });
      res.end();
    } else {
      sendJson(res, reply.status, reply.body, headers);
    }
  };

  const httpError = (res: ServerResponse, code: HttpErrorCode, message: string, headers: Record<string, string> = {}, details: Record<string, unknown> = {}): void =>
    sendReply(res, { status: HTTP_ERROR_STATUS[code], body: httpErrorBody(code, message, details), headers });

  /**
   * An answer given without reading the request's body: a body still on its way is not drained
   * (a refused caller must not be able to hold the connection by uploading), the connection closes
   * after the response instead, gently enough that a client busy uploading still reads it.
   */
  const refuse = (req: IncomingMessage, res: ServerResponse, code: HttpErrorCode, message: string, headers: Record<string, string> = {}, details: Record<string, unknown> = {}): void => {
    if (announcesBody(req) && !req.complete) closeWithoutReading(req, res, limits);
    httpError(res, code, message, headers, details);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse, signal: AbortSignal, matched: { route: string }): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://spawngate');
    let route: Route | undefined;
    let match: RegExpExecArray | null = null;
    for (const candidate of routes) {
      match = candidate.pattern.exec(url.pathname);
      if (match) {
        route = candidate;
        matched.route = candidate.template;
        break;
      }
    }
    // Unknown routes need the token too, so an anonymous caller learns nothing about what exists.
    if (!route?.public && isAuthorized && !isAuthorized(req)) {
      refuse(req, res, 'UNAUTHORIZED', 'missing or wrong bearer token', { 'www-authenticate': 'Bearer' });
      return;
    }
    if (!route) {
      refuse(req, res, 'ROUTE_NOT_FOUND', `no route ${url.pathname}`);
      return;
    }
    const method = req.method === 'HEAD' ? 'GET' : (req.method as Method);
    const handler = route.methods[method];
    if (!handler) {
      const allow = Object.keys(route.methods).join(', ');
      refuse(req, res, 'METHOD_NOT_ALLOWED', `${url.pathname} accepts ${allow}`, { allow }, { allow: Object.keys(route.methods) });
      return;
    }
    if (closing && !route.public) {
      refuse(req, res, 'SHUTTING_DOWN', 'the server is shutting down');
      return;
    }
    let body: unknown;
    if (route.public) {
      // Anyone may call these, and they take no body: one that comes anyway is never read.
      if (announcesBody(req) && !req.complete) closeWithoutReading(req, res, limits);
    } else if (announcesBody(req)) {
      const contentType = req.headers['content-type'];
      if (!isJsonContentType(contentType)) {
        refuse(req, res, 'UNSUPPORTED_MEDIA_TYPE', `a request body must be sent as content-type application/json (charset utf-8 at most), not ${contentType === undefined ? '(none)' : JSON.stringify(contentType)}`, { accept: 'application/json' }, { accept: 'application/json' });
        return;
      }
      let raw: Buffer;
      try {
        raw = await readBody(req, res, maxBodyBytes);
      } catch (err) {
        if (err instanceof BodyTooLargeError) refuse(req, res, 'PAYLOAD_TOO_LARGE', `request body exceeds ${maxBodyBytes} bytes`, {}, { limit: maxBodyBytes });
        else res.destroy();
        return;
      }
      body = parseBody(raw);
    }
    let spawnId = '';
    if (match?.[1] !== undefined) {
      try {
        spawnId = decodeURIComponent(match[1]);
      } catch {
        throw notFound(match[1]);
      }
      if (!SPAWN_ID.test(spawnId)) throw notFound(spawnId);
    }
    const reply = await handler({ req, res, url, spawnId, body, signal });
    if (reply) sendReply(res, reply);
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const abort = new AbortController();
    requestAborts.add(abort);
    const started = performance.now();
    // Unmatched paths share one label: a caller must not be able to mint series by inventing URLs.
    const matched = { route: 'unmatched' };
    let counted = false;
    // At 'finish' (before the client can read the end and ask again), or at 'close' for a cut one.
    const count = () => {
      if (counted) return;
      counted = true;
      const method = METRIC_METHODS.has(req.method ?? '') ? (req.method as string) : 'other';
      safely(() => {
        // A response cut before its head was sent (client gone) has no status: 499, as nginx says.
        gate.metrics.httpRequests.inc({ method, route: matched.route, code: res.headersSent ? String(res.statusCode) : '499' });
        gate.metrics.httpRequestSeconds.observe({ method, route: matched.route }, (performance.now() - started) / 1000);
      });
    };
    res.once('finish', count);
    res.once('close', () => {
      if (!res.writableFinished) abort.abort();
      requestAborts.delete(abort);
      count();
      logger.debug('request', { method: req.method, url: req.url, status: res.statusCode, complete: res.writableFinished });
    });
    const traced = traceRequest(req, res, matched);
    if (traced) requestTraces.set(req, traced);
    const done = (traced ? context.with(traced, () => handle(req, res, abort.signal, matched)) : handle(req, res, abort.signal, matched))
      .catch((err: unknown) => {
        if (abort.signal.aborted || res.destroyed) {
          logger.debug('request ended after its client left', { method: req.method, url: req.url, error: (err as Error).message });
          return;
        }
        const { status, body, internal } = errorReply(err);
        if (internal) logger.error('request handler failed', { method: req.method, url: req.url, error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
        if (res.headersSent) res.destroy();
        else sendReply(res, { status, body });
      })
      .finally(() => inflight.delete(done));
    inflight.add(done);
  };
  const server = createHttpServer(httpServerOptions(limits), onRequest);
  answerContinueLate(server, onRequest);
  server.on('clientError', onClientError);

  if ('socketPath' in options.listen) await removeStaleSocket(options.listen.socketPath);
  try {
    await listen(server, options.listen);
  } catch (err) {
    const where = 'socketPath' in options.listen ? 'listen.socketPath' : 'listen.port';
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new ConfigError(`cannot listen on ${JSON.stringify(options.listen)}: ${code}`, [{ path: where, message: `cannot listen: ${code}` }], { cause: err });
  }
  if ('socketPath' in options.listen && options.token === undefined) {
    // Without a token, only the socket's owner may connect.
    await chmod(options.listen.socketPath, 0o600);
  }
  const address: RunningServer['address'] = (() => {
    if ('socketPath' in options.listen) return { socketPath: options.listen.socketPath };
    const info = server.address() as AddressInfo;
    const host = info.family === 'IPv6' ? `[${info.address}]` : info.address;
    return { url: `http://${host}:${info.port}` };
  })();

  const stop = (): Promise<void> => {
    closePromise ??= (async () => {
      closing = true;
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      // A cancel makes each open stream end the proper way, with turn.cancelled from the worker.
      for (const open of openTurns) {
        gate.cancel(open.spawnId).catch((err: unknown) => logger.warn('could not cancel an open turn at shutdown', { spawnId: open.spawnId, error: (err as Error).message }));
      }
      await within(Promise.allSettled([...inflight]), drainTimeoutMs);
      if (inflight.size > 0) {
        logger.warn('cutting off requests still open at shutdown', { open: inflight.size });
        for (const abort of requestAborts) abort.abort();
        server.closeAllConnections();
        // Aborted spawns remove what they created; give them a bounded moment to do it.
        await within(Promise.allSettled([...inflight]), drainTimeoutMs);
      }
      server.closeAllConnections();
      await stopped;
    })();
    return closePromise;
  };

  return { address, close: stop, [Symbol.asyncDispose]: stop };
}
