import { createWriteStream, readFileSync } from 'node:fs';
import type { WriteStream } from 'node:fs';
import type { Writable } from 'node:stream';
import type { Registry } from 'prom-client';
import type { AdmissionInput } from './types.js';
import type { MaskEvaluation, Maskable } from './decision-mask.js';
import { applyMask } from './decision-mask.js';
import { httpDecisionLog } from './decision-log-http.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { ConfigError } from '../errors.js';
import { redact, redactString } from '../redact.js';
import { resolveSecret, secretPlaces } from '../backends/secrets.js';

export { redact, redactString };

/** The bundle's name under `bundles`: spawngate serves one bundle. */
export const DECISION_LOG_BUNDLE = 'spawngate';

/**
 * Which step produced `result`: the admission policy, the reservation store enforcing its limits,
 * or the permission policy answering an agent's request during a turn.
 */
/** `shadow`: a candidate bundle's would-be decision (src/admission/shadow.ts), never in force. */
export type DecisionStage = 'policy' | 'reservation' | 'permission' | 'shadow';

/**
 * One line of the decision log: an event of OPA's decision-log format (what OPA's console logger
 * and its decision log service plugin emit), so OPA's tooling reads it, plus spawngate's own
 * top-level keys (`stage`, `spawn_id`, `catalog_revision`), which OPA's readers ignore.
 */
export interface DecisionLogEntry {
  /** Which gateway decided: `id` is this instance (the lease holder id), `version` spawngate's. */
  labels: DecisionLogLabels;
  decision_id: string;
  /** W3C ids of the span that settled the outcome, when it was traced. */
  trace_id?: string;
  span_id?: string;
  /** `{ spawngate: { revision } }`; absent when no bundle was loaded (the decision failed closed). */
  bundles?: Record<string, { revision: string }>;
  /** The rule that decided: `spawngate/admission/decision` or `spawngate/permissions/decision`. */
  path: string;
  /** The rule's input, without the catalog (config, identical on every line), masked and redacted; absent when erased. */
  input?: unknown;
  /** The rule's decision (a Decision or a PermissionDecision), masked and redacted. */
  result?: unknown;
  /** JSON pointers the mask rule removed. */
  erased?: string[];
  /** JSON pointers the mask rule replaced. */
  masked?: string[];
  /** RFC 3339 with the fraction's trailing zeros cut, as Go's RFC3339Nano prints it. */
  timestamp: string;
  metrics: { timer_rego_query_eval_ns: number };
  stage: DecisionStage;
  /** The worker the decision is about: a permission request's, or a spawn's when it was reserved. */
  spawn_id?: string;
  /** On a `shadow` line: how the candidate's decision differs from the live policy's (src/admission/shadow.ts). */
  difference?: string;
  /** sha256 of the catalog (the config the decision saw), which the input leaves out; with the bundle revision it makes a line replayable. */
  catalog_revision: string;
}

export interface DecisionLogLabels {
  id: string;
  version: string;
  [label: string]: string;
}

export interface DecisionLog {
  write(entry: DecisionLogEntry): void;
  /**
   * For a sink writing to a named file: start over at that path, because something (logrotate)
   * moved the file away. Lines written before the call still end up in the old file. The built-in
   * stream and memory sinks do nothing; optional, so a custom sink need not have it.
   */
  reopen?(): void;
  close(): Promise<void>;
}

/** What admission logs of its input: everything but the catalog. */
export function loggedInput(input: AdmissionInput): unknown {
  const { catalog: _catalog, ...rest } = input;
  return rest;
}

function line(entry: DecisionLogEntry): string {
  return `${JSON.stringify(entry)}\n`;
}

/** `2026-01-02T03:04:05.12Z`: Go's RFC3339Nano as OPA writes `timestamp` (no trailing zeros; a whole second has no fraction). */
export function rfc3339Nano(date: Date): string {
  return date.toISOString().replace(/\.?0+Z$/, 'Z');
}

let version: string | undefined;
/** spawngate's version, for the `version` label. */
export function spawngateVersion(): string {
  if (version === undefined) {
    try {
      version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string }).version ?? 'unknown';
    } catch {
      version = 'unknown';
    }
  }
  return version;
}

/** One decision as the gate hands it over; the recorder turns it into a masked, redacted line. */
export interface DecisionRecord {
  decisionId: string;
  path: string;
  stage: DecisionStage;
  spawnId?: string;
  bundleRevision: string | null;
  /** What the rule saw, minus what is never logged; masked and redacted by the recorder. Absent on shadow lines: the live line of the same decision id has it. */
  input?: unknown;
  result: unknown;
  evalMicros: number;
  difference?: string;
  span?: { traceId: string; spanId: string } | null;
}

export interface DecisionRecorderOptions {
  sink: DecisionLog;
  /** The bundle's mask rule (PolicyEngine.evaluateMask); without it lines are only redacted. */
  mask?: (eventJson: string) => MaskEvaluation;
  labels: DecisionLogLabels;
  catalogRevision: string;
  clock?: () => Date;
  logger?: Logger;
}

/**
 * Builds each line: the OPA event, the bundle's mask rule applied to it (the rule sees the event as
 * OPA would give it, before redaction), then credential shapes redacted in what is left of input
 * and result. A mask rule that fails erases the line's input: the decision stays in the log, and
 * whatever the rule was meant to hide does not get in.
 */
export function createDecisionRecorder(options: DecisionRecorderOptions): (record: DecisionRecord) => void {
  const clock = options.clock ?? (() => new Date());
  const logger = options.logger ?? silentLogger;
  let lastProblem = '';
  const warn = (problem: string) => {
    // Once per distinct problem: a broken rule fails on every line.
    if (problem === lastProblem) return;
    lastProblem = problem;
    logger.warn('decision log mask rule failed; the line\'s input was erased', { problem });
  };
  return (record) => {
    const event = {
      labels: options.labels,
      decision_id: record.decisionId,
      ...(record.span ? { trace_id: record.span.traceId, span_id: record.span.spanId } : {}),
      ...(record.bundleRevision ? { bundles: { [DECISION_LOG_BUNDLE]: { revision: record.bundleRevision } } } : {}),
      path: record.path,
      ...(record.input === undefined ? {} : { input: record.input }),
      result: record.result,
      timestamp: rfc3339Nano(clock()),
      stage: record.stage,
      ...(record.spawnId ? { spawn_id: record.spawnId } : {}),
      catalog_revision: options.catalogRevision,
    };
    let masked: Maskable = event;
    let erased: string[] = [];
    let upserted: string[] = [];
    if (options.mask) {
      const json = JSON.stringify(event);
      const evaluation = options.mask(json);
      const output = evaluation.ok ? evaluation.output : ['/input'];
      if (!evaluation.ok) warn(evaluation.error);
      if (output !== null && !(Array.isArray(output) && output.length === 0)) {
        // The rule's changes go to a copy: the event's input is the caller's object (AdmitResult.input).
        masked = JSON.parse(json) as Maskable;
        const outcome = applyMask(masked, output);
        if (outcome.problems.length > 0) warn(outcome.problems.join('; '));
        erased = outcome.erased;
        upserted = outcome.masked;
      }
    }
    const entry: DecisionLogEntry = {
      labels: event.labels,
      decision_id: event.decision_id,
      ...(record.span ? { trace_id: record.span.traceId, span_id: record.span.spanId } : {}),
      ...(event.bundles ? { bundles: event.bundles } : {}),
      path: event.path,
      ...(masked.input === undefined ? {} : { input: redact(masked.input) }),
      ...(masked.result === undefined ? {} : { result: redact(masked.result) }),
      ...(erased.length > 0 ? { erased } : {}),
      ...(upserted.length > 0 ? { masked: upserted } : {}),
      timestamp: event.timestamp,
      metrics: { timer_rego_query_eval_ns: Math.round(record.evalMicros * 1000) },
      stage: event.stage,
      ...(record.spawnId ? { spawn_id: record.spawnId } : {}),
      ...(record.difference ? { difference: record.difference } : {}),
      catalog_revision: event.catalog_revision,
    };
    options.sink.write(entry);
  };
}

/**
 * Appends JSON lines to a file (created if missing). A write error (unwritable path, full disk) is
 * reported through `onError` and never crashes the gateway: the audit trail is not worth an outage.
 * `reopen()` (what `spawngate serve` does on SIGHUP) starts a fresh file at `path`; after an error
 * it is also the way to try the path again.
 */
export function fileDecisionLog(path: string, onError: (err: Error) => void = () => undefined): DecisionLog {
  const open = (): WriteStream => {
    const opened = createWriteStream(path, { flags: 'a', mode: 0o600 });
    opened.on('error', onError);
    return opened;
  };
  // end()'s callback also runs (with the error) for a stream that failed, so this always settles.
  const end = (ending: WriteStream): Promise<void> => new Promise((resolve) => ending.end(() => resolve()));
  let stream = open();
  let closed = false;
  let retired: Promise<unknown> = Promise.resolve();
  return {
    write(entry) {
      stream.write(line(entry));
    },
    reopen() {
      if (closed) return;
      const previous = stream;
      stream = open();
      // Its queued lines still reach the old (renamed) file: the descriptor follows the file, not the name.
      retired = Promise.all([retired, end(previous)]);
    },
    async close() {
      closed = true;
      await Promise.all([retired, end(stream)]);
    },
  };
}

/** Writes to a stream it does not own: `close()` leaves it open, and there is no file to reopen. */
export function streamDecisionLog(stream: Writable): DecisionLog {
  return {
    write(entry) {
      stream.write(line(entry));
    },
    reopen() {},
    close: () => Promise.resolve(),
  };
}

/** Keeps entries in memory — for tests and for gateways that ship entries themselves. */
export function memoryDecisionLog(limit = 10_000): DecisionLog & { entries: DecisionLogEntry[] } {
  const entries: DecisionLogEntry[] = [];
  return {
    entries,
    write(entry) {
      entries.push(entry);
      if (entries.length > limit) entries.shift();
    },
    reopen() {},
    close: () => Promise.resolve(),
  };
}

/** A header value of the HTTP sink: a secret or an environment variable of the gateway, never a literal. */
export type HeaderSource = { secretRef: { name: string; key: string } } | { env: string };

/** `spawngate.decisionLog` as an object: the HTTP sink (docs/decision-log.md). */
export interface HttpDecisionLogConfig {
  url: string;
  headers?: Record<string, HeaderSource>;
  maxBufferedEntries?: number;
  maxBatchEntries?: number;
  flushIntervalMs?: number;
  timeoutMs?: number;
  maxAttempts?: number;
  gzip?: boolean;
}

/** What `spawngate.decisionLog` (or the decisionLog option) names: a file path, "stdout", "off", or the HTTP sink. */
export type DecisionLogSetting = string | HttpDecisionLogConfig;

/** Header values from their sources, read once at start: a missing one is a config error naming where it was looked for. */
export function resolveHeaders(headers: Readonly<Record<string, HeaderSource>>, env: Readonly<Record<string, string | undefined>> = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, source] of Object.entries(headers)) {
    const value = 'env' in source ? env[source.env] : resolveSecret(source.secretRef, { env });
    if (value === undefined || value === '') {
      const places = 'env' in source ? [`$${source.env}`] : secretPlaces(source.secretRef, { env });
      throw new ConfigError(`decision log header ${name} has no value: set ${places.join(' or ')}`, [{ path: `spawngate.decisionLog.headers.${name}`, message: `no value in ${places.join(' or ')}` }]);
    }
    out[name] = value;
  }
  return out;
}

function isSink(value: unknown): value is DecisionLog {
  return typeof value === 'object' && value !== null && typeof (value as { write?: unknown }).write === 'function';
}

/**
 * The sink a setting names: null for false/"off", stdout, a file (reopened on SIGHUP), the HTTP
 * sink (its counters on `registry`), or a sink object as it is.
 */
export function openDecisionLog(
  setting: DecisionLog | DecisionLogSetting | false | undefined,
  deps: { logger?: Logger; registry?: Registry; env?: Readonly<Record<string, string | undefined>> } = {},
): DecisionLog | null {
  const logger = deps.logger ?? silentLogger;
  if (setting === undefined || setting === false || setting === 'off') return null;
  if (setting === 'stdout') return streamDecisionLog(process.stdout);
  if (typeof setting === 'string') return fileDecisionLog(setting, (err) => logger.error('decision log write failed', { path: setting, error: err.message }));
  if (isSink(setting)) return setting;
  const origin = new URL(setting.url).origin;
  return httpDecisionLog({
    url: setting.url,
    headers: resolveHeaders(setting.headers ?? {}, deps.env),
    maxBufferedEntries: setting.maxBufferedEntries,
    maxBatchEntries: setting.maxBatchEntries,
    flushIntervalMs: setting.flushIntervalMs,
    timeoutMs: setting.timeoutMs,
    maxAttempts: setting.maxAttempts,
    gzip: setting.gzip,
    ...(deps.registry ? { registry: deps.registry } : {}),
    // The error names the origin only: a path or query may carry a tenant's token.
    onError: (err) => logger.warn('decision log upload failed', { sink: 'http', url: origin, error: redactString(err.message) }),
  });
}
