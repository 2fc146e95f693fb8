import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isAbsolute, resolve as resolvePath } from 'node:path';
import type { McpServer, PromptResponse, RequestPermissionRequest, RequestPermissionResponse, SessionUpdate } from '@agentclientprotocol/sdk';
import { INVALID_SPAN_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import type { Span } from '@opentelemetry/api';
import { REASON_CODE, WORKER_EXIT_DEADLINE } from '../protocol/events.js';
import { BackendError, ConfigError, WorkerProtocolError } from '../errors.js';
import type { Issue } from '../errors.js';
import { listen, removeStaleSocket, type ListenAddress } from '../net.js';
import { acpErrorCode, acpErrorData, openAcpSession } from './acp-session.js';
import type { AcpSession, AgentInfo } from './acp-session.js';
import { spawnAgentProcess, within } from './agent-process.js';
import type { AgentExit, AgentProcess } from './agent-process.js';
import type {
  CancelReason,
  CancelResponse,
  Healthz,
  PermissionAnswerResponse,
  PermissionDecidedEvent,
  WorkerLogLine,
  WorkerLogsResponse,
  WorkerState,
  WorkerStatusReport,
} from '../protocol/events.js';
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
  sendError,
  sendJson,
  tokenVerifier,
  type HttpLimits,
} from '../protocol/http.js';
import { LogBuffer, MAX_LOG_TAIL } from './log-buffer.js';
import { mapSessionUpdate } from './map-update.js';
import { boundedRawInput, permissionPaths, workspaceRoot } from './permissions.js';
import { proxyEnvironment, startEgressForwarder } from './egress.js';
import type { EgressForwarder } from './egress.js';
import { redactString } from '../redact.js';
import { archive, DiffTooLargeError, gitDiff } from './workspace.js';
import { agentLaunch, type LaunchedAgent } from './launch.js';
import type { CheckedOut } from './workspace.js';
import { endHttpSpan, endSpan, httpMethod, parentContext, recordError, setAttributes, SPAN, startSpan, traceparentOf } from '../telemetry/tracing.js';
import type { EventBody } from './map-update.js';

// Not `import { createServer } from 'node:http'`: that builds the module's ESM facade, which reads
// every export and so loads Node's bundled undici, about 20 ms of each worker's start for nothing.
const { createServer, request: httpRequest } = process.getBuiltinModule('node:http');

export type WorkerListen = ListenAddress;

export interface StartWorkerOptions {
  /** Timeouts and the lingering close of the worker's HTTP server; defaults as `spawngate serve` (docs/worker-protocol.md). */
  http?: Partial<HttpLimits>;
  agentCommand: string;
  agentArgs: string[];
  /** Added to the worker's own environment (minus SPAWNGATE_WORKER_TOKEN, which the agent never sees). */
  agentEnv?: Record<string, string>;
  agentId: string;
  token: string;
  /** TCP (host defaults to 127.0.0.1) or a unix socket path. */
  listen: WorkerListen;
  /** The agent's working directory and ACP session cwd; defaults to process.cwd(). */
  cwd?: string;
  /**
   * An agent process already started for these options (launch.ts, by the worker's entry): adopted
   * when it was started for exactly the argv, cwd and environment this worker would use, else
   * stopped and replaced by the worker's own. Either way the worker owns it from here on.
   */
  launched?: LaunchedAgent | null;
  /** A model for the ACP session (applied when the agent offers it; /status says whether). */
  model?: string;
  /** Reopen this agent session instead of starting a new one. */
  resumeSessionId?: string;
  /** MCP servers for the ACP session (ACP's McpServer shape). */
  mcpServers?: readonly McpServer[];
  /** Capacity of the /logs ring buffer; defaults to 1000 lines. */
  logLimit?: number;
  /**
   * When the agent process dies (or never gets an ACP session), close the worker and exit the process
   * non-zero after `agentExitLingerMs`, so the backend sees the failure. Default true; in-process
   * embedders (tests) turn it off and watch /healthz instead.
   */
  exitOnAgentExit?: boolean;
  agentExitLingerMs?: number;
  /** How long an agent may take to honour session/cancel before the worker ends the turn itself. Default 5000. */
  cancelGraceMs?: number;
  /**
   * After a turn ended by force, how long a new /turn waits for the agent to answer the cancelled
   * prompt before it is refused (409). Default the larger of cancelGraceMs and 10 s.
   */
  letGoWaitMs?: number;
  /** Bound on initialize + session/new. Default 120000. */
  initTimeoutMs?: number;
  /** Time between SIGTERM and SIGKILL of the agent's process group. Default 3000. */
  killGraceMs?: number;
  /** Also receives every log line (the CLI mirrors them to stderr). */
  onLog?: (line: WorkerLogLine) => void;
  /**
   * Hard end of this worker's life (the profile's timeoutSeconds). The worker shuts itself down
   * then — open turn cancelled, agent stopped — and, with `exitOnAgentExit`, exits with
   * {@link WORKER_EXIT_DEADLINE}: a backend without deadlines of its own (Docker), or a gateway that
   * restarted and lost its timers, cannot leave it running past this.
   */
  deadlineAt?: Date;
  /**
   * A warm worker, started ahead by a pool before anyone asked for it: it accepts one POST /claim,
   * by which the spawn that takes it swaps in its own token and, optionally, an earlier deadline.
   */
  claimable?: boolean;
  /** W3C traceparent of the gateway span that created this worker: the parent of its start-up span. */
  traceparent?: string;
  /** Awaited at the end of close(), before the process may exit (the CLI flushes its trace export here). */
  onClosed?: () => Promise<void>;
  /** The workspace folder (default cwd) and, for a `git` one, what was checked out into it: /workspace/* serve it. */
  workspace?: { dir: string; git: CheckedOut | null };
  /** Bound of GET /workspace/diff; default 64 MiB. */
  maxDiffBytes?: number;
  /**
   * Who answers the agent's permission requests. `ask` (what a gateway sets): announced as
   * permission.requested, answered through POST /permission by the gateway's permission policy, rejected
   * when nobody answers within `permissionTimeoutMs`. `allow_once` (default, for a worker run by hand)
   * and `reject`: the worker answers at once. Every request and answer is an event of the turn either way.
   */
  permissions?: PermissionMode;
  /** How long an `ask` request waits for its answer; default 60000. */
  permissionTimeoutMs?: number;
  /**
   * Egress "proxy": the gateway's proxy socket. The worker offers it to the agent as HTTP(S)_PROXY on
   * its own loopback (the worker has no other network).
   */
  egressProxySocket?: string;
}

export type PermissionMode = 'ask' | 'allow_once' | 'reject';

interface PendingPermission {
  readonly turn: OpenTurn;
  readonly options: RequestPermissionRequest['options'];
  settle(answer: { optionId: string | null; by: PermissionDecidedEvent['by']; code: string; reason: string }): void;
}


export interface RunningWorker {
  readonly address: { url: string } | { socketPath: string };
  readonly agentId: string;
  /** Resolves when the ACP session exists; rejects (WORKER_PROTOCOL) when the agent never got there. */
  readonly ready: Promise<void>;
  /** Graceful stop: cancels the open turn, kills the agent's process group, closes the server. Idempotent. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

interface OpenTurn {
  readonly id: string;
  readonly res: ServerResponse;
  readonly trace: { traceparent: string; traceId: string } | null;
  /** `spawngate.worker.turn`, a server span under the caller's /turn span; tool calls are its children. */
  readonly span: Span;
  readonly toolSpans: Map<string, Span>;
  readonly toolTitles: Map<string, string>;
  /** Kinds of announced tool calls: a permission request may leave its kind out. */
  readonly toolKinds: Map<string, string>;
  /** Ids of this turn's permission requests still waiting for an answer. */
  readonly permissionIds: Set<string>;
  /** Aborting sends $/cancel_request for the prompt; used once the cancel grace is over. */
  readonly promptAbort: AbortController;
  /** Settles when the agent answered session/prompt (whatever the answer): only then has it let go of this turn. */
  promptSettled: Promise<void>;
  readonly done: Promise<void>;
  resolveDone: () => void;
  seq: number;
  ended: boolean;
  cancelReason: CancelReason | null;
  graceTimer: NodeJS.Timeout | null;
  /** A warm worker's rehearsal (see rehearse): counted nowhere, traced nowhere. */
  readonly rehearsal: boolean;
}

type TerminalBody = Extract<EventBody, { type: 'turn.completed' | 'turn.failed' | 'turn.cancelled' }>;

const MAX_TURN_BODY_BYTES = 1024 * 1024;
const TURN_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const DEFAULT_LOG_TAIL = 200;

const workerVersion = readPackageVersion();

function readPackageVersion(): string {
  try {
    // src/worker/ and dist/worker/ both sit two levels below the package root.
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

function validateOptions(opts: StartWorkerOptions): void {
  const issues: Issue[] = [];
  if (typeof opts.agentCommand !== 'string' || opts.agentCommand === '') issues.push({ path: 'agentCommand', message: 'must be a non-empty string' });
  if (!Array.isArray(opts.agentArgs) || opts.agentArgs.some((a) => typeof a !== 'string')) issues.push({ path: 'agentArgs', message: 'must be an array of strings' });
  if (typeof opts.agentId !== 'string' || opts.agentId === '') issues.push({ path: 'agentId', message: 'must be a non-empty string' });
  if (typeof opts.token !== 'string' || !/^\S+$/.test(opts.token)) issues.push({ path: 'token', message: 'must be a non-empty string without whitespace' });
  if ('socketPath' in opts.listen) {
    if (!opts.listen.socketPath) issues.push({ path: 'listen.socketPath', message: 'must be a non-empty path' });
  } else if (!Number.isInteger(opts.listen.port) || opts.listen.port < 0 || opts.listen.port > 65535) {
    issues.push({ path: 'listen.port', message: 'must be an integer between 0 and 65535' });
  }
  if (opts.logLimit !== undefined && (!Number.isInteger(opts.logLimit) || opts.logLimit < 1)) issues.push({ path: 'logLimit', message: 'must be a positive integer' });
  for (const key of ['agentExitLingerMs', 'cancelGraceMs', 'letGoWaitMs', 'initTimeoutMs', 'killGraceMs'] as const) {
    const value = opts[key];
    if (value !== undefined && (!Number.isFinite(value) || value < 0)) issues.push({ path: key, message: 'must be a non-negative number of milliseconds' });
  }
  if (opts.http !== undefined) issues.push(...httpLimitIssues(opts.http, 'http.'));
  if (issues.length > 0) throw new ConfigError('invalid worker options', issues);
}

/** Largest body of a route that takes none it reads (POST /cancel gets `{}` from the gateway's client). */
const MAX_SMALL_BODY_BYTES = 64 * 1024;

/**
 * Answers without reading the request's body: a body still on its way is not drained, the
 * connection closes after the response instead (closeWithoutReading).
 */
function refuse(req: IncomingMessage, res: ServerResponse, limits: HttpLimits, answer: () => void): void {
  if (announcesBody(req) && !req.complete) closeWithoutReading(req, res, limits);
  answer();
}

/**
 * A request body as strict JSON (application/json, UTF-8, no duplicate keys): `{ value }`, with
 * value undefined when there is no body, or undefined when the request was already answered (415
 * for another content type, 413 past `limit`, 400 for a body that is not strict JSON).
 */
async function readJson(req: IncomingMessage, res: ServerResponse, limit: number, limits: HttpLimits, shape: string): Promise<{ value: unknown } | undefined> {
  if (!announcesBody(req)) return { value: undefined };
  const contentType = req.headers['content-type'];
  if (!isJsonContentType(contentType)) {
    refuse(req, res, limits, () =>
      sendError(res, 415, 'unsupported_media_type', `a request body must be sent as content-type application/json (charset utf-8 at most), not ${contentType === undefined ? '(none)' : JSON.stringify(contentType)}`, {
        headers: { accept: 'application/json' },
      }),
    );
    return undefined;
  }
  let raw: Buffer;
  try {
    raw = await readBody(req, res, limit);
  } catch (err) {
    if (err instanceof BodyTooLargeError) refuse(req, res, limits, () => sendError(res, 413, 'payload_too_large', err.message));
    else res.destroy();
    return undefined;
  }
  const decoded = decodeJsonBody(raw);
  if (!decoded.ok) {
    sendError(res, 400, 'invalid_request', `body must be JSON (${shape}): ${decoded.fault.message}`);
    return undefined;
  }
  return { value: decoded.value };
}

/** A body that must be a JSON object: the object, or undefined when the request was already answered. */
async function readJsonObject(req: IncomingMessage, res: ServerResponse, limit: number, limits: HttpLimits, shape: string): Promise<Record<string, unknown> | undefined> {
  const body = await readJson(req, res, limit, limits, shape);
  if (body === undefined) return undefined;
  const { value } = body;
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as Record<string, unknown>;
  const found = value === undefined ? 'no body' : value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`;
  sendError(res, 400, 'invalid_request', `body must be a JSON object ${shape}, found ${found}`);
  return undefined;
}

/** reject_once when offered (never reject_always: a later request may be decided differently), else no option. */
function rejectOption(request: RequestPermissionRequest): string | null {
  return request.options.find((o) => o.kind === 'reject_once')?.optionId ?? null;
}

function describeExit(exit: AgentExit | null): string {
  if (!exit) return 'agent process did not exit in time';
  if (exit.spawnError) return `agent process could not start: ${exit.spawnError}`;
  if (exit.signal) return `agent process was killed by ${exit.signal}`;
  return `agent process exited with code ${exit.code}`;
}

function nextMacrotask(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function signalClosed(signal: AbortSignal): Promise<void> {
  return signal.aborted ? Promise.resolve() : new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}

/** Upper bound of GET /healthz?wait=ms, so a parked request never outlives a client's own time-out. */
export const MAX_HEALTHZ_WAIT_MS = 30_000;

/**
 * Starts the reference worker: an HTTP server speaking the worker contract (docs/worker-protocol.md)
 * in front of one ACP agent process driven over stdio. Resolves once the server listens; the ACP
 * handshake continues in the background (`ready`, and /healthz turns 200 when it is done).
 */
export async function startWorker(opts: StartWorkerOptions): Promise<RunningWorker> {
  validateOptions(opts);
  const cwd = opts.cwd ? resolvePath(opts.cwd) : process.cwd();
  if (!isAbsolute(cwd)) throw new ConfigError('invalid worker options', [{ path: 'cwd', message: 'must resolve to an absolute path' }]);
  const exitOnAgentExit = opts.exitOnAgentExit ?? true;
  const agentExitLingerMs = opts.agentExitLingerMs ?? 1000;
  const cancelGraceMs = opts.cancelGraceMs ?? 5000;
  const initTimeoutMs = opts.initTimeoutMs ?? 120_000;
  const killGraceMs = opts.killGraceMs ?? 3000;
  const maxDiffBytes = opts.maxDiffBytes ?? 64 * 1024 * 1024;
  const letGoWaitMs = opts.letGoWaitMs ?? Math.max(cancelGraceMs, 10_000);
  const permissionMode: PermissionMode = opts.permissions ?? 'allow_once';
  const permissionTimeoutMs = opts.permissionTimeoutMs ?? 60_000;
  const root = workspaceRoot(cwd);
  const pendingPermissions = new Map<string, PendingPermission>();
  let permissionSeq = 0;
  let forwarder: EgressForwarder | null = null;
  const logs = new LogBuffer(opts.logLimit ?? MAX_LOG_TAIL);
  // A claim (POST /claim) swaps the token: from then on the pool's token opens nothing.
  let isAuthorized = tokenVerifier(opts.token);
  let deadlineAt = opts.deadlineAt ?? null;
  let deadlineTimer: NodeJS.Timeout | null = null;
  let claimed = false;
  const limits: HttpLimits = { ...DEFAULT_HTTP_LIMITS, ...opts.http };
  const startedAt = new Date().toISOString();

  let state: WorkerState = 'starting';
  // GET /healthz?wait=ms parks here until the worker leaves "starting": readiness is then seen the
  // moment it happens, without the caller polling (and stealing CPU from the start-up it waits for).
  const startWaiters = new Set<() => void>();
  const leaveStarting = (): void => {
    for (const wake of startWaiters) wake();
    startWaiters.clear();
  };
  let unavailableReason = 'waiting for the ACP session';
  let session: AcpSession | null = null;
  let agentInfo: AgentInfo | null = null;
  let agent: AgentProcess | null = null;
  let turn: OpenTurn | null = null;
  /**
   * A turn ended by force (the agent ignored the cancel for the whole grace) whose prompt the agent
   * has not answered yet. Until it does, its late updates have no turn to go to (they are dropped)
   * and no new turn starts: the next turn must never show the old turn's output.
   */
  let winding: { turnId: string; settled: Promise<void> } | null = null;
  let lastEventAt: string | null = null;
  let closing = false;
  let closePromise: Promise<void> | null = null;
  let exitTimer: NodeJS.Timeout | null = null;
  const stats = { turns: 0, completed: 0, failed: 0, cancelled: 0 };
  let droppedUpdates = 0;
  /** While a warm worker rehearses its turn path (rehearse below): the secret its one /turn carries. */
  let rehearsal: string | null = null;

  const log = (level: WorkerLogLine['level'], message: string, fields?: Record<string, unknown>): void => {
    // A rehearsal's turn did not happen, as far as anyone reading the log is concerned.
    if (rehearsal !== null) return;
    const line: WorkerLogLine = {
      time: new Date().toISOString(),
      source: 'worker',
      level,
      message: fields ? `${message} ${JSON.stringify(fields)}` : message,
    };
    logs.push(line);
    opts.onLog?.(line);
  };

  // ---- turns -------------------------------------------------------------------------------------

  const emit = (t: OpenTurn, body: EventBody): void => {
    if (t.ended) return;
    const time = new Date().toISOString();
    lastEventAt = time;
    // Envelope first so a line reads {type, turnId, seq, time, …} as documented.
    const { type, ...fields } = body;
    const line = { type, turnId: t.id, seq: t.seq++, time, ...fields, ...(t.trace ?? {}) };
    if (!t.res.destroyed && !t.res.writableEnded) t.res.write(`${JSON.stringify(line)}\n`);
  };

  const endTurn = (t: OpenTurn, body: TerminalBody): void => {
    if (t.ended) return;
    // ACP: a request still open when its prompt ends is answered "cancelled"; its event comes before the terminal one.
    settlePermissions(t, 'the turn ended before the request was answered');
    emit(t, body);
    t.ended = true;
    if (t.graceTimer) clearTimeout(t.graceTimer);
    if (t.rehearsal) {
      // counted nowhere
    } else if (body.type === 'turn.completed') stats.completed++;
    else if (body.type === 'turn.failed') stats.failed++;
    else stats.cancelled++;
    if (turn === t) {
      turn = null;
      if (state === 'busy' && !winding) state = 'idle';
    }
    if (!t.res.destroyed && !t.res.writableEnded) t.res.end();
    endTurnSpans(t, body);
    log(body.type === 'turn.failed' ? 'warn' : 'info', 'turn ended', {
      turnId: t.id,
      outcome: body.type,
      ...(t.trace ? { traceId: t.trace.traceId } : {}),
      ...(body.type === 'turn.failed' ? { error: body.error } : {}),
      ...(body.type === 'turn.cancelled' ? { reason: body.reason, forced: body.forced } : {}),
    });
    t.resolveDone();
  };

  const endTurnSpans = (t: OpenTurn, body: TerminalBody): void => {
    for (const [id, span] of t.toolSpans) {
      setAttributes(span, { 'spawngate.tool.status': 'unfinished' });
      endSpan(span);
      t.toolSpans.delete(id);
    }
    setAttributes(t.span, {
      'spawngate.turn.outcome': body.type.slice('turn.'.length),
      ...(body.type === 'turn.completed' ? { 'spawngate.turn.stop_reason': body.stopReason } : {}),
      ...(body.type === 'turn.cancelled' ? { 'spawngate.turn.cancel_reason': body.reason, 'spawngate.turn.cancel_forced': body.forced } : {}),
      ...(body.type === 'turn.failed' ? { 'spawngate.error_code': body.error.code } : {}),
    });
    if (body.type === 'turn.failed') t.span.setStatus({ code: SpanStatusCode.ERROR, message: body.error.message });
    endSpan(t.span);
  };

  /** A span per tool call, from its announcement to its result (or the end of the turn). */
  const traceToolCalls = (t: OpenTurn, update: SessionUpdate): void => {
    if (update.sessionUpdate !== 'tool_call' && update.sessionUpdate !== 'tool_call_update') return;
    let span = t.toolSpans.get(update.toolCallId);
    if (!span && update.sessionUpdate === 'tool_call') {
      span = startSpan(SPAN.workerToolCall, trace.setSpan(parentContext(null), t.span));
      setAttributes(span, { 'spawngate.tool.call_id': update.toolCallId, 'spawngate.tool.title': update.title, 'spawngate.tool.kind': update.kind ?? 'other' });
      t.toolSpans.set(update.toolCallId, span);
    }
    if (!span || (update.status !== 'completed' && update.status !== 'failed')) return;
    setAttributes(span, { 'spawngate.tool.status': update.status, ...(typeof update.title === 'string' ? { 'spawngate.tool.title': update.title } : {}) });
    if (update.status === 'failed') span.setStatus({ code: SpanStatusCode.ERROR });
    endSpan(span);
    t.toolSpans.delete(update.toolCallId);
  };

  const agentExitedFailure = (exit: AgentExit): TerminalBody => ({
    type: 'turn.failed',
    error: { code: 'agent_exited', message: describeExit(exit), exitCode: exit.code, signal: exit.signal },
  });

  const settlePermissions = (t: OpenTurn, why: string): void => {
    for (const id of [...t.permissionIds]) pendingPermissions.get(id)?.settle({ optionId: null, by: 'cancel', code: 'turn_cancelled', reason: why });
  };

  const cancelTurn = (t: OpenTurn, reason: CancelReason): void => {
    if (t.ended || t.cancelReason) return;
    t.cancelReason = reason;
    log('info', 'cancelling turn', { turnId: t.id, reason });
    settlePermissions(t, `the turn was cancelled (${reason})`);
    if (!t.rehearsal && session && !session.closedSignal.aborted) {
      session.cancel().catch((err: unknown) => log('warn', 'session/cancel could not be sent', { error: String(err) }));
    }
    t.graceTimer = setTimeout(() => {
      if (t.ended) return;
      log('warn', 'agent did not honour session/cancel in time; ending the turn without it', { turnId: t.id, graceMs: cancelGraceMs });
      t.promptAbort.abort();
      const w = { turnId: t.id, settled: t.promptSettled };
      winding = w;
      void w.settled.then(() => {
        if (winding !== w) return;
        winding = null;
        if (state === 'busy' && !turn) state = 'idle';
        log('info', 'the agent let go of the force-cancelled turn', { turnId: w.turnId });
      });
      endTurn(t, { type: 'turn.cancelled', reason, forced: true });
    }, cancelGraceMs);
  };

  const onPromptAnswered = async (t: OpenTurn, response: PromptResponse): Promise<void> => {
    // Updates sent before the response were handed over before it (acp-client.ts dispatches in line
    // order); a macrotask more keeps the terminal event after anything they scheduled.
    await nextMacrotask();
    if (t.ended) return;
    if (t.cancelReason || response.stopReason === 'cancelled') {
      endTurn(t, { type: 'turn.cancelled', reason: t.cancelReason ?? 'agent', forced: false });
    } else {
      endTurn(t, { type: 'turn.completed', stopReason: response.stopReason });
    }
  };

  const onPromptFailed = async (t: OpenTurn, err: unknown, s: AcpSession): Promise<void> => {
    await nextMacrotask();
    if (t.ended) return;
    if (s.closedSignal.aborted || agent?.exit) {
      // The connection died with the agent; its exit status usually follows within milliseconds.
      const exit = agent ? await within(agent.exited, 1000) : null;
      endTurn(
        t,
        exit ? agentExitedFailure(exit) : { type: 'turn.failed', error: { code: 'agent_unavailable', message: 'the ACP connection to the agent closed' } },
      );
      return;
    }
    const acpCode = acpErrorCode(err);
    if (t.cancelReason && acpCode === -32800) {
      endTurn(t, { type: 'turn.cancelled', reason: t.cancelReason, forced: false });
      return;
    }
    const message = err instanceof Error ? err.message : String(err);
    const acpData = acpErrorData(err);
    endTurn(t, { type: 'turn.failed', error: { code: 'agent_error', message, ...(acpCode === null ? {} : { acpCode }), ...(acpData === undefined ? {} : { acpData }) } });
  };

  const onUpdate = (update: SessionUpdate): void => {
    const t = turn;
    if (!t || t.ended) {
      // Counted, not logged one by one: an agent still busy with a force-cancelled prompt could flood the log ring.
      droppedUpdates++;
      return;
    }
    traceToolCalls(t, update);
    if ((update.sessionUpdate === 'tool_call' || update.sessionUpdate === 'tool_call_update') && typeof update.kind === 'string') t.toolKinds.set(update.toolCallId, update.kind);
    for (const body of mapSessionUpdate(update, t.toolTitles)) emit(t, body);
  };

  /**
   * An agent's session/request_permission. Outside an open, uncancelled turn nothing is granted.
   * Otherwise the request is an event of the turn; in `ask` mode it then waits for POST /permission
   * (bounded), in the other modes the worker answers at once. The answer is an event too.
   */
  const decidePermission = async (request: RequestPermissionRequest): Promise<RequestPermissionResponse> => {
    const t = turn;
    const toolCallId = request.toolCall.toolCallId;
    if (!t || t.ended || t.cancelReason) {
      log('info', 'refused a permission request outside an open turn', { toolCallId, title: request.toolCall.title ?? null });
      return { outcome: { outcome: 'cancelled' } };
    }
    const requestId = `perm-${++permissionSeq}`;
    const kind = request.toolCall.kind ?? t.toolKinds.get(toolCallId) ?? 'other';
    const title = request.toolCall.title ?? t.toolTitles.get(toolCallId) ?? null;
    const paths = permissionPaths(request, cwd, root);
    emit(t, {
      type: 'permission.requested',
      requestId,
      toolCallId,
      title,
      kind,
      paths,
      workspace: root,
      options: request.options.map((o) => ({ optionId: o.optionId, name: o.name, kind: o.kind })),
      rawInput: boundedRawInput(request.toolCall.rawInput),
    });
    return new Promise<RequestPermissionResponse>((resolve) => {
      let timer: NodeJS.Timeout | null = null;
      // Synchronous, event included: a turn ending settles its open requests, and their answers must
      // be on the stream before its last line.
      const settle: PendingPermission['settle'] = (answer) => {
        if (!pendingPermissions.delete(requestId)) return;
        t.permissionIds.delete(requestId);
        if (timer) clearTimeout(timer);
        const chosen = answer.optionId === null ? undefined : request.options.find((o) => o.optionId === answer.optionId);
        const outcome = chosen ? chosen.kind : 'cancelled';
        emit(t, { type: 'permission.decided', requestId, toolCallId, outcome, optionId: chosen?.optionId ?? null, by: answer.by, code: answer.code, reason: answer.reason });
        log('info', 'answered permission request', { requestId, toolCallId, title, kind, outcome, by: answer.by, code: answer.code });
        resolve(chosen ? { outcome: { outcome: 'selected', optionId: chosen.optionId } } : { outcome: { outcome: 'cancelled' } });
      };
      pendingPermissions.set(requestId, { turn: t, options: request.options, settle });
      t.permissionIds.add(requestId);
      if (permissionMode === 'ask') {
        timer = setTimeout(() => settle({ optionId: rejectOption(request), by: 'timeout', code: 'permission_timeout', reason: `nobody answered within ${permissionTimeoutMs} ms` }), permissionTimeoutMs);
      } else if (permissionMode === 'allow_once') {
        const allow = request.options.find((o) => o.kind === 'allow_once');
        settle(allow ? { optionId: allow.optionId, by: 'worker', code: 'worker_allow_once', reason: 'this worker allows each request once (SPAWNGATE_PERMISSIONS=allow_once)' } : { optionId: rejectOption(request), by: 'worker', code: 'worker_allow_once', reason: 'the agent offered no allow-once option' });
      } else {
        settle({ optionId: rejectOption(request), by: 'worker', code: 'worker_reject', reason: 'this worker rejects every request (SPAWNGATE_PERMISSIONS=reject)' });
      }
    });
  };

  const handlePermission = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const fields = await readJsonObject(req, res, MAX_SMALL_BODY_BYTES, limits, '{"requestId": string, "optionId": string | null, "code": string, "reason": string}');
    if (fields === undefined) return;
    const { requestId, optionId, code, reason } = fields;
    if (typeof requestId !== 'string') return sendError(res, 400, 'invalid_request', 'requestId must be a string');
    if (optionId !== null && typeof optionId !== 'string') return sendError(res, 400, 'invalid_request', 'optionId must be a string or null');
    if (typeof code !== 'string' || !REASON_CODE.test(code)) return sendError(res, 400, 'invalid_request', 'code must be a lowercase reason code (a-z 0-9 _ ., at most 64)');
    if (typeof reason !== 'string' || reason.length > 2048) return sendError(res, 400, 'invalid_request', 'reason must be a string of at most 2048 characters');
    const pending = pendingPermissions.get(requestId);
    if (!pending) return sendError(res, 404, 'not_found', `no permission request ${requestId} is waiting (answered, timed out, or its turn ended)`);
    const chosen = optionId === null ? null : pending.options.find((o) => o.optionId === optionId);
    if (chosen === undefined) return sendError(res, 400, 'invalid_request', `optionId ${JSON.stringify(optionId)} is not one the agent offered (${pending.options.map((o) => o.optionId).join(', ')})`);
    pending.settle({ optionId: chosen?.optionId ?? null, by: 'gateway', code, reason });
    const answered: PermissionAnswerResponse = { requestId, outcome: chosen ? chosen.kind : 'cancelled' };
    sendJson(res, 200, answered);
  };

  /**
   * POST /claim {token, deadline?}: the spawn that takes this warm worker makes it its own. Once,
   * only while idle (ready, no turn ever run), and a deadline (Unix seconds) may only come earlier.
   */
  const handleClaim = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const fields = await readJsonObject(req, res, MAX_SMALL_BODY_BYTES, limits, '{"token": string, "deadline"?: number, "probe"?: boolean}');
    if (fields === undefined) return;
    const { token, deadline, probe } = fields;
    const unknown = Object.keys(fields).filter((k) => k !== 'token' && k !== 'deadline' && k !== 'probe');
    if (unknown.length) return sendError(res, 400, 'invalid_request', `unknown field ${unknown.join(', ')}`);
    if (probe !== undefined && typeof probe !== 'boolean') return sendError(res, 400, 'invalid_request', 'probe must be a boolean');
    if (typeof token !== 'string' || !/^\S{32,512}$/.test(token)) return sendError(res, 400, 'invalid_request', 'token must be 32 to 512 characters without whitespace');
    if (deadline !== undefined && (typeof deadline !== 'number' || !Number.isInteger(deadline) || deadline <= 0)) return sendError(res, 400, 'invalid_request', 'deadline must be a Unix time in whole seconds');
    const at = deadline === undefined ? null : new Date(deadline * 1000);
    if (at && deadlineAt && at.getTime() > deadlineAt.getTime()) {
      return sendError(res, 400, 'invalid_request', `deadline ${at.toISOString()} is later than this worker's own ${deadlineAt.toISOString()}: a claim may only shorten a worker's life`);
    }
    if (claimed) return sendError(res, 409, 'already_claimed', 'this worker was already claimed');
    if (state !== 'idle' || stats.turns > 0) return sendError(res, 409, 'not_claimable', `only a ready worker that never ran a turn can be claimed (state ${state})`);
    // The pool's health check of an idle warm worker: every check a claim would pass, nothing taken.
    // It also runs this path once before the real claim, which then finds it compiled.
    if (probe) return sendJson(res, 200, { claimed: false, deadlineAt: deadlineAt?.toISOString() ?? null });
    claimed = true;
    isAuthorized = tokenVerifier(token);
    if (at) armDeadline(at);
    log('info', 'claimed', at ? { deadlineAt: at.toISOString() } : undefined);
    sendJson(res, 200, { claimed: true, deadlineAt: deadlineAt?.toISOString() ?? null });
  };

  const startTurn = (res: ServerResponse, req: IncomingMessage, message: string, turnId: string, s: AcpSession, rehearsing = false): void => {
    let resolveDone!: () => void;
    const done = new Promise<void>((resolve) => {
      resolveDone = resolve;
    });
    const traceHeader = parseTraceparent(req.headers.traceparent);
    const span = rehearsing ? trace.wrapSpanContext(INVALID_SPAN_CONTEXT) : startSpan(SPAN.workerTurn, parentContext(traceHeader?.traceparent ?? null), SpanKind.SERVER);
    setAttributes(span, {
      'spawngate.turn_id': turnId,
      'spawngate.agent_id': opts.agentId,
      'spawngate.turn.message_chars': message.length,
      'http.request.method': 'POST',
      'url.path': '/turn',
      'http.response.status_code': 200,
    });
    const t: OpenTurn = {
      id: turnId,
      res,
      trace: traceHeader,
      span,
      toolSpans: new Map(),
      toolTitles: new Map(),
      toolKinds: new Map(),
      permissionIds: new Set(),
      promptAbort: new AbortController(),
      promptSettled: Promise.resolve(),
      done,
      resolveDone,
      seq: 0,
      ended: false,
      cancelReason: null,
      graceTimer: null,
      rehearsal: rehearsing,
    };
    turn = t;
    // A rehearsal runs while the worker is still "starting": nobody sees it busy, or claims it mid-way.
    if (!rehearsing) {
      state = 'busy';
      stats.turns++;
    }
    res.writeHead(200, {
      'content-type': 'application/x-ndjson; charset=utf-8',
      'cache-control': 'no-store',
      'x-turn-id': turnId,
      // Reverse proxies must pass lines through as they come, not buffer the stream.
      'x-accel-buffering': 'no',
    });
    res.on('close', () => {
      if (!t.ended) cancelTurn(t, 'client_disconnect');
    });
    log('info', 'turn started', {
      turnId,
      messageChars: message.length,
      ...(t.trace ? { traceId: t.trace.traceId } : {}),
      ...(droppedUpdates > 0 ? { updatesDroppedBetweenTurns: droppedUpdates } : {}),
    });
    droppedUpdates = 0;
    emit(t, { type: 'turn.started', agentId: opts.agentId });
    // Sent now, not at the end of this tick: the prompt below writes its request synchronously, and
    // the caller sees its turn start first.
    if (res.socket?.writableCorked) res.socket.uncork();
    // The agent continues under this worker's turn span.
    const prompt = s.prompt(message, { traceparent: traceparentOf(span) ?? t.trace?.traceparent ?? null, signal: t.promptAbort.signal });
    t.promptSettled = prompt.then(
      () => undefined,
      () => undefined,
    );
    prompt.then(
      (response) => onPromptAnswered(t, response),
      (err: unknown) => onPromptFailed(t, err, s),
    );
  };

  // ---- HTTP routes -------------------------------------------------------------------------------

  const healthz = (): { status: number; body: Healthz } => {
    const base = { agentId: opts.agentId, version: workerVersion, protocolVersion: 1 as const, agentInfo };
    if (state === 'idle' || state === 'busy') return { status: 200, body: { status: 'ok', ...base } };
    return { status: 503, body: { status: state === 'starting' ? 'starting' : 'exiting', ...base, reason: unavailableReason } };
  };

  const statusReport = (): WorkerStatusReport => ({
    state,
    agentId: opts.agentId,
    turns: stats.turns,
    outcomes: { completed: stats.completed, failed: stats.failed, cancelled: stats.cancelled },
    currentTurnId: turn?.id ?? null,
    startedAt,
    lastEventAt,
    agentPid: agent?.exit ? null : (agent?.pid ?? null),
    session: session ? { id: session.sessionId, resumed: session.resumed, model: session.model } : null,
    workspace: opts.workspace ? { git: opts.workspace.git } : null,
  });

  const refuseUnavailable = (res: ServerResponse): void => {
    if (state === 'starting') sendError(res, 503, 'not_ready', `the agent session is not ready: ${unavailableReason}`);
    else sendError(res, 503, 'exiting', `the worker is exiting: ${unavailableReason}`);
  };

  // Functions rather than inline reads: TypeScript would keep narrowings of these across awaits.
  const serving = (): boolean => state === 'idle' || state === 'busy';
  const openTurn = (): OpenTurn | null => turn;

  const handleTurn = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const rehearsing = rehearsal !== null && state === 'starting' && req.headers['x-spawngate-rehearsal'] === rehearsal;
    if (rehearsing) rehearsal = `${rehearsal}:taken`;
    else if (req.headers['x-spawngate-rehearsal'] !== undefined) {
      // A rehearsal's request that arrives after it was given up (or anyone else's) never becomes a
      // real turn: the agent would get its prompt, and the worker would no longer be claimable.
      refuse(req, res, limits, () => sendError(res, 409, 'not_ready', 'no rehearsal is waiting for this request'));
      return;
    }
    if (!rehearsing && (state === 'starting' || state === 'exiting')) {
      refuse(req, res, limits, () => refuseUnavailable(res));
      return;
    }
    const current = turn;
    if (current && !current.cancelReason) {
      refuse(req, res, limits, () => sendError(res, 409, 'busy', 'a turn is already running; one turn at a time', { currentTurnId: current.id }));
      return;
    }
    const fields = await readJsonObject(req, res, MAX_TURN_BODY_BYTES, limits, '{"message": string, "turnId"?: string}');
    if (fields === undefined) return;
    const message = fields['message'];
    const turnId = fields['turnId'];
    if (typeof message !== 'string' || message.trim() === '') {
      sendError(res, 400, 'invalid_request', 'message must be a non-empty string');
      return;
    }
    if (turnId !== undefined && (typeof turnId !== 'string' || !TURN_ID.test(turnId))) {
      sendError(res, 400, 'invalid_request', 'turnId must be 1-128 characters of A-Z a-z 0-9 . _ : -');
      return;
    }
    // A turn being cancelled (a client that broke off and asks again at once), or one ended by force
    // whose prompt the agent still holds: waited for, bounded, instead of refused.
    const cancelling = openTurn();
    if (cancelling?.cancelReason) await within(cancelling.done, cancelGraceMs + 1000);
    const wound = winding;
    if (wound) await within(wound.settled, letGoWaitMs);
    // Re-checked after the body arrived: the state may have changed and another request may have taken the slot.
    const s = rehearsing ? rehearsalSession(session) : session;
    if (!s || (!rehearsing && !serving())) {
      refuseUnavailable(res);
      return;
    }
    const running = openTurn();
    if (running) {
      sendError(res, 409, 'busy', 'a turn is already running; one turn at a time', { currentTurnId: running.id });
      return;
    }
    const stillWinding = winding;
    if (stillWinding) {
      sendError(res, 409, 'busy', `the agent has not let go of the force-cancelled turn ${stillWinding.turnId} yet; its output must not reach a new turn`, { currentTurnId: stillWinding.turnId });
      return;
    }
    startTurn(res, req, message, turnId ?? randomUUID(), s, rehearsing);
  };

  /** The session a rehearsal's turn talks to: the agent's, but for a prompt that never reaches it. */
  const rehearsalSession = (s: AcpSession | null): AcpSession | null =>
    s && {
      sessionId: s.sessionId,
      agentInfo: s.agentInfo,
      resumed: s.resumed,
      model: s.model,
      closedSignal: s.closedSignal,
      prompt: () => Promise.resolve({ stopReason: 'end_turn' }),
      cancel: () => Promise.resolve(),
      close: () => undefined,
    };

  /**
   * A warm worker runs one turn through its own HTTP server before it says it is ready, against a
   * session whose prompt answers at once: the agent sees nothing, nothing is logged, traced or
   * counted, and the worker stays "starting" throughout. What it buys is the claiming spawn's first
   * turn: V8 compiles a function the first time it runs, and the turn path (the request, the
   * stream's head and first line) cost about 1 ms more on a worker's first turn than on its second.
   * A cold worker has no such wait to hide it in, so it does not rehearse. Bounded; a rehearsal
   * that fails only loses its speed-up.
   */
  const rehearse = async (): Promise<void> => {
    const secret = randomUUID();
    const eventAt = lastEventAt;
    const started = performance.now();
    rehearsal = secret;
    let completed = false;
    let sent = null as { destroy(): void } | null;
    try {
      const body = JSON.stringify({ message: 'rehearsal', turnId: `rehearsal-${secret}` });
      const target =
        'socketPath' in address
          ? { socketPath: address.socketPath }
          : (() => {
              const url = new URL(address.url);
              return { host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port) };
            })();
      const answered = new Promise<string>((resolve) => {
        const req = httpRequest(
          { ...target, agent: false, method: 'POST', path: '/turn', headers: { authorization: `Bearer ${opts.token}`, 'content-type': 'application/json', 'x-spawngate-rehearsal': secret } },
          (res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (chunk: string) => (text = (text + chunk).slice(-4096)));
            res.on('end', () => resolve(text)).on('error', () => resolve(text)).on('close', () => resolve(text));
          },
        );
        req.on('error', () => resolve(''));
        req.end(body);
        sent = req;
      });
      completed = ((await within(answered, 2000)) ?? '').includes('"type":"turn.completed"');
    } finally {
      sent?.destroy();
      rehearsal = null;
      lastEventAt = eventAt;
    }
    log('info', 'rehearsed the turn path before taking claims', { completed, ms: Math.round(performance.now() - started) });
  };

  /**
   * A SERVER span for a request that comes with a trace (the gateway's CLIENT span is its parent),
   * ended when the response closes; a request outside any trace makes none, as on the gateway side.
   */
  const traceRequest = (req: IncomingMessage, res: ServerResponse, path: string): void => {
    const header = parseTraceparent(req.headers.traceparent);
    if (!header) return;
    const method = httpMethod(req.method);
    const span = startSpan(`${method} ${path}`, parentContext(header.traceparent), SpanKind.SERVER);
    setAttributes(span, { 'http.request.method': method, 'url.path': path, 'spawngate.agent_id': opts.agentId });
    res.once('close', () => endHttpSpan(span, SpanKind.SERVER, res.headersSent ? res.statusCode : null));
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (!isAuthorized(req)) {
      refuse(req, res, limits, () => sendError(res, 401, 'unauthorized', 'missing or wrong bearer token', { headers: { 'www-authenticate': 'Bearer' } }));
      return;
    }
    const url = new URL(req.url ?? '/', 'http://worker');
    const allowed: Record<string, string> = {
      '/healthz': 'GET',
      '/turn': 'POST',
      '/cancel': 'POST',
      '/permission': 'POST',
      '/status': 'GET',
      '/logs': 'GET',
      '/workspace/diff': 'GET',
      '/workspace/archive': 'GET',
      ...(opts.claimable ? { '/claim': 'POST' } : {}),
    };
    const allow = allowed[url.pathname];
    if (!allow) {
      refuse(req, res, limits, () => sendError(res, 404, 'not_found', `no route ${url.pathname}`));
      return;
    }
    if (req.method !== allow && !(allow === 'GET' && req.method === 'HEAD')) {
      refuse(req, res, limits, () => sendError(res, 405, 'method_not_allowed', `${url.pathname} accepts ${allow}`, { headers: { allow } }));
      return;
    }
    // The turn is a span of its own (below); /healthz is probed every few ms while a worker starts.
    if (url.pathname !== '/turn' && url.pathname !== '/healthz') traceRequest(req, res, url.pathname);
    if (url.pathname === '/turn') {
      await handleTurn(req, res);
      return;
    }
    if (url.pathname === '/permission') {
      await handlePermission(req, res);
      return;
    }
    if (url.pathname === '/claim') {
      await handleClaim(req, res);
      return;
    }
    // The other routes take no body; one that comes anyway is held to the same rules, then ignored.
    if ((await readJson(req, res, MAX_SMALL_BODY_BYTES, limits, 'none is needed')) === undefined) return;
    switch (url.pathname) {
      case '/healthz': {
        const waitMs = Math.min(Math.max(Number(url.searchParams.get('wait')) || 0, 0), MAX_HEALTHZ_WAIT_MS);
        if (state === 'starting' && waitMs > 0) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(done, waitMs);
            function done(): void {
              clearTimeout(timer);
              startWaiters.delete(done);
              resolve();
            }
            startWaiters.add(done);
            res.once('close', done);
          });
        }
        const { status, body } = healthz();
        sendJson(res, status, body);
        return;
      }
      case '/cancel': {
        const t = turn;
        if (t) cancelTurn(t, 'client_cancel');
        const body: CancelResponse = { turnId: t?.id ?? null };
        sendJson(res, 202, body);
        return;
      }
      case '/status':
        sendJson(res, 200, statusReport());
        return;
      case '/workspace/diff': {
        const git = opts.workspace?.git;
        if (!git || !opts.workspace) {
          sendError(res, 409, 'not_a_git_workspace', 'this worker\'s workspace was not checked out from git: there is no base to diff against; GET /workspace/archive takes the files');
          return;
        }
        try {
          const diff = await gitDiff(opts.workspace.dir, git.base, maxDiffBytes);
          res.writeHead(200, { 'content-type': 'text/x-diff; charset=utf-8', 'x-spawngate-base': git.base, 'cache-control': 'no-store' });
          res.end(diff);
        } catch (err) {
          if (err instanceof DiffTooLargeError) sendError(res, 413, 'payload_too_large', `the diff exceeds ${maxDiffBytes} bytes; GET /workspace/archive takes the files`);
          else sendError(res, 500, 'git_failed', (err as Error).message);
        }
        return;
      }
      case '/workspace/archive': {
        const dir = opts.workspace?.dir ?? cwd;
        const tar = archive(dir, url.searchParams.get('git') === '1');
        let stderr = '';
        tar.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-2000)));
        const spawned = await new Promise<Error | null>((resolve) => {
          tar.once('spawn', () => resolve(null));
          tar.once('error', resolve);
        });
        if (spawned) {
          sendError(res, 501, 'no_tar', `tar is not available where the worker runs: ${spawned.message}`);
          return;
        }
        res.writeHead(200, { 'content-type': 'application/gzip', 'content-disposition': 'attachment; filename="workspace.tar.gz"', 'cache-control': 'no-store' });
        res.once('close', () => tar.kill('SIGKILL'));
        tar.stdout.pipe(res);
        tar.once('close', (code) => {
          // Headers are gone: a failed tar can only cut the stream, which the client sees as an error.
          if (code !== 0) {
            log('warn', 'workspace archive failed', { exitCode: code, stderr: stderr.trim() });
            res.destroy(new Error('tar failed'));
          }
        });
        return;
      }
      case '/logs': {
        const tailParam = url.searchParams.get('tail');
        const tail = tailParam === null ? DEFAULT_LOG_TAIL : Number(tailParam);
        if (!Number.isInteger(tail) || tail < 0 || tail > MAX_LOG_TAIL) {
          sendError(res, 400, 'invalid_request', `tail must be an integer between 0 and ${MAX_LOG_TAIL}`);
          return;
        }
        const body: WorkerLogsResponse = { lines: logs.tail(tail) };
        sendJson(res, 200, body);
        return;
      }
    }
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    handle(req, res).catch((err: unknown) => {
      log('error', 'request handler failed', { error: err instanceof Error ? err.message : String(err) });
      if (!res.headersSent) sendJson(res, 500, { error: { code: 'internal', message: 'internal worker error' } });
      else res.destroy();
    });
  };
  const server = createServer(httpServerOptions(limits), onRequest);
  answerContinueLate(server, onRequest);
  server.on('clientError', onClientError);

  if ('socketPath' in opts.listen) await removeStaleSocket(opts.listen.socketPath);
  try {
    // The socket lives in a folder only the gateway can enter (0700), while the worker may run as
    // another uid (10001 in the image): the socket itself must be writable by the gateway's uid.
    await listen(server, opts.listen, { socketWritableByAll: true });
  } catch (err) {
    throw new BackendError('BACKEND_FAILED', `worker could not listen on ${JSON.stringify(opts.listen)}: ${(err as Error).message}`, { cause: err });
  }
  const address: RunningWorker['address'] = (() => {
    if ('socketPath' in opts.listen) return { socketPath: opts.listen.socketPath };
    const info = server.address() as AddressInfo;
    const host = info.family === 'IPv6' ? `[${info.address}]` : info.address;
    return { url: `http://${host}:${info.port}` };
  })();

  // ---- lifecycle ---------------------------------------------------------------------------------

  const closeServer = (): Promise<void> =>
    new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });

  const close = (): Promise<void> => {
    if (closePromise) return closePromise;
    closing = true;
    state = 'exiting';
    unavailableReason = 'the worker is shutting down';
    leaveStarting();
    if (exitTimer) clearTimeout(exitTimer);
    closePromise = (async () => {
      log('info', 'worker shutting down');
      const open = turn;
      if (open) {
        cancelTurn(open, 'shutdown');
        // Bounded: cancelTurn's grace timer ends the turn at the latest after cancelGraceMs.
        await open.done;
      }
      session?.close();
      if (agent && !agent.exit) {
        const exit = await agent.terminate(killGraceMs);
        log('info', 'agent stopped', { exit: describeExit(exit) });
      }
      await closeServer();
      await forwarder?.close();
      endStartSpan(new Error(unavailableReason));
      // Bounded: an unreachable collector must not keep a stopping worker alive.
      if (opts.onClosed) await within(opts.onClosed(), 5000);
    })();
    return closePromise;
  };

  const becomeUnusable = (reason: string): void => {
    if (closing || state === 'exiting') return;
    state = 'exiting';
    unavailableReason = reason;
    leaveStarting();
    log('error', 'worker unusable', { reason });
    if (exitOnAgentExit) {
      exitTimer = setTimeout(() => {
        void close().finally(() => process.exit(1));
      }, agentExitLingerMs);
    }
  };

  // Agent start and ACP handshake, under the gateway span that created this worker.
  // From the agent's early start (launch.ts), when the entry started it before this worker.
  const startSpanOf = startSpan(SPAN.workerStart, parentContext(opts.traceparent ?? null), SpanKind.INTERNAL, opts.launched?.startedAt);
  setAttributes(startSpanOf, { 'spawngate.agent_id': opts.agentId, 'spawngate.agent.command': opts.agentCommand });
  let startSpanEnded = false;
  const endStartSpan = (err: Error | null): void => {
    if (startSpanEnded) return;
    startSpanEnded = true;
    if (err) recordError(startSpanOf, err);
    endSpan(startSpanOf);
  };

  // argv is logged for whoever debugs a start-up, with credential-shaped values cut out (a key put in
  // agents.acp.<id>.command would otherwise reach /logs; secretRef env is the way to pass one).
  log('info', 'starting agent', { agentId: opts.agentId, command: redactString(opts.agentCommand), args: opts.agentArgs.map(redactString), cwd });
  let proxyEnv: Record<string, string> = {};
  if (opts.egressProxySocket) {
    try {
      forwarder = await startEgressForwarder(opts.egressProxySocket);
    } catch (err) {
      await closeServer();
      throw new BackendError('BACKEND_FAILED', `worker could not offer the egress proxy on its loopback: ${(err as Error).message}`, { cause: err });
    }
    proxyEnv = proxyEnvironment(forwarder.url);
    log('info', 'egress through the gateway proxy', { proxy: forwarder.url });
  }
  const onStderrLine = (message: string): void => {
    const line: WorkerLogLine = { time: new Date().toISOString(), source: 'agent', level: 'info', message };
    logs.push(line);
    opts.onLog?.(line);
  };
  const launch = agentLaunch(opts, cwd, proxyEnv);
  const adopted = opts.launched?.adopt(launch, onStderrLine) ?? null;
  // Not started for this very launch: it must not outlive the worker that will not use it.
  if (!adopted) await opts.launched?.discard(killGraceMs);
  const proc = adopted ?? spawnAgentProcess({ ...launch, onStderrLine });
  agent = proc;

  void proc.exited.then(async (exit) => {
    if (closing) return;
    log('error', 'agent process ended', { exitCode: exit.code, signal: exit.signal, spawnError: exit.spawnError });
    const reason = describeExit(exit);
    becomeUnusable(reason);
    // Let the last lines the agent wrote before dying reach the open turn before it is failed.
    if (session) await within(signalClosed(session.closedSignal), 1000);
    await nextMacrotask();
    const open = turn;
    if (open) endTurn(open, agentExitedFailure(exit));
  });

  let initTimer: NodeJS.Timeout | undefined;
  const ready = (async () => {
    const handshake = startSpan(SPAN.workerHandshake, trace.setSpan(parentContext(null), startSpanOf));
    setAttributes(handshake, { 'spawngate.session.resume': Boolean(opts.resumeSessionId), 'spawngate.session.model': opts.model ?? null });
    const opened = openAcpSession({
      stdin: proc.stdin,
      stdout: proc.stdout,
      cwd,
      model: opts.model ?? null,
      resumeSessionId: opts.resumeSessionId ?? null,
      ...(opts.mcpServers ? { mcpServers: opts.mcpServers } : {}),
      onUpdate,
      onPermission: decidePermission,
      onProtocolFault: (message) => log('warn', message),
    });
    const timeout = new Promise<never>((_, reject) => {
      initTimer = setTimeout(() => reject(new Error(`no ACP session after ${initTimeoutMs} ms`)), initTimeoutMs);
    });
    try {
      const s = await Promise.race([opened, timeout]);
      if (closing) {
        endSpan(handshake);
        s.close();
        return;
      }
      session = s;
      agentInfo = s.agentInfo;
      setAttributes(handshake, { 'spawngate.session.id': s.sessionId, 'spawngate.agent.name': s.agentInfo?.name ?? null, 'spawngate.agent.version': s.agentInfo?.version ?? null });
      endSpan(handshake);
      endStartSpan(null);
      if (opts.claimable) await rehearse();
      if (closing) return;
      state = 'idle';
      leaveStarting();
      log('info', 'ACP session ready', { sessionId: s.sessionId, agentInfo, resumed: s.resumed, model: s.model });
      if (s.model && !s.model.applied) log('warn', 'the agent does not offer the requested model; the session runs on its default', { requested: s.model.requested, available: s.model.available });
      void signalClosed(s.closedSignal).then(async () => {
        // Usually the agent died and the exit path reports it; an agent that merely closed its stdout
        // is alive but unreachable, which is just as fatal for this worker.
        if (closing || (await within(proc.exited, 1000))) return;
        becomeUnusable('the ACP connection to the agent closed');
        const open = turn;
        if (open) endTurn(open, { type: 'turn.failed', error: { code: 'agent_unavailable', message: 'the ACP connection to the agent closed' } });
        void proc.terminate(killGraceMs);
      });
    } catch (err) {
      opened.then((s) => s.close(), () => undefined);
      recordError(handshake, err);
      endSpan(handshake);
      endStartSpan(err as Error);
      throw new WorkerProtocolError('WORKER_PROTOCOL', `agent ${opts.agentId} did not complete the ACP handshake: ${(err as Error).message}`, {
        cause: err,
      });
    } finally {
      clearTimeout(initTimer);
    }
  })();
  function onDeadline(): void {
    if (closing) return;
    log('warn', 'deadline reached; the worker stops', { deadlineAt: deadlineAt?.toISOString() });
    unavailableReason = 'the worker reached its deadline';
    void close().finally(() => {
      if (exitOnAgentExit) process.exit(WORKER_EXIT_DEADLINE);
    });
  }
  function armDeadline(at: Date): void {
    deadlineAt = at;
    if (deadlineTimer) clearTimeout(deadlineTimer);
    // setTimeout caps at 2^31-1 ms; a longer life is re-armed when that much has passed.
    const arm = (): void => {
      const left = at.getTime() - Date.now();
      deadlineTimer = setTimeout(left > 2 ** 31 - 1 ? arm : onDeadline, Math.max(0, Math.min(left, 2 ** 31 - 1)));
      deadlineTimer.unref();
    };
    arm();
  }
  if (deadlineAt) armDeadline(deadlineAt);

  ready.catch((err: unknown) => {
    if (closing) return;
    const reason = proc.exit ? describeExit(proc.exit) : (err as Error).message;
    becomeUnusable(reason);
    // An agent that is alive but cannot hold a session is useless; do not leave it running.
    if (!proc.exit) void proc.terminate(killGraceMs);
  });

  return {
    address,
    agentId: opts.agentId,
    ready,
    close,
    [Symbol.asyncDispose]: close,
  };
}
