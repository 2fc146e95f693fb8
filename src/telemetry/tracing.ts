import { context, INVALID_SPAN_CONTEXT, isSpanContextValid, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Span, type Tracer } from '@opentelemetry/api';

export const TRACER_NAME = 'spawngate';
export const SPAN = {
  spawn: 'spawngate.spawn',
  admission: 'spawngate.admission.evaluate',
  reservation: 'spawngate.reservation',
  backendCreate: 'spawngate.backend.create',
  backendReady: 'spawngate.backend.ready',
  turn: 'spawngate.turn',
  close: 'spawngate.close',
  sweep: 'spawngate.sweep',
  /** A warm pool starting a worker ahead: admission, create and readiness of the pool's own spawn. */
  warmStart: 'spawngate.warm.start',
  /** A spawn claiming a warm worker (under spawngate.spawn, in place of create and ready). */
  warmClaim: 'spawngate.warm.claim',
  // In the worker, continuing the trace the gateway handed it (TRACEPARENT, the /turn header):
  workerStart: 'spawngate.worker.start',
  workerHandshake: 'spawngate.worker.acp.handshake',
  workerTurn: 'spawngate.worker.turn',
  workerToolCall: 'spawngate.worker.tool_call',
} as const;

export function tracer(): Tracer {
  return trace.getTracer(TRACER_NAME);
}

/**
 * W3C Trace Context `traceparent`: version-traceid-parentid-flags in lowercase hex. Version ff is
 * invalid, and so are all-zero ids; a later version may append fields, version 00 may not. The
 * header is read and written here rather than through @opentelemetry/core's propagator: that
 * package is a few hundred kB the reference worker would load on every start for these two lines.
 */
const TRACEPARENT = /^\s?(?!ff)([0-9a-f]{2})-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\s?$/;

/**
 * The caller's context from a W3C `traceparent` (the gateway's parent session span), falling back
 * to the active context when there is none, and to the root context when it is malformed. Works
 * whatever global propagator (or none) the host application registered.
 */
export function parentContext(traceparent: string | null | undefined): Context {
  if (!traceparent) return context.active();
  const match = TRACEPARENT.exec(traceparent);
  if (!match || (match[1] === '00' && match[5] !== undefined)) return ROOT_CONTEXT;
  return trace.setSpanContext(ROOT_CONTEXT, { traceId: match[2]!, spanId: match[3]!, traceFlags: Number.parseInt(match[4]!, 16), isRemote: true });
}

/** The `traceparent` header value for a span, to hand to the worker so it continues the trace. */
export function traceparentOf(span: Span): string | null {
  const sc = span.spanContext();
  if (!isSpanContextValid(sc)) return null;
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, '0')}`;
}

/** Sets attributes, dropping null/undefined, and never throwing into the caller. */
export function setAttributes(span: Span, attributes: Record<string, string | number | boolean | null | undefined>): void {
  try {
    const clean: Attributes = {};
    for (const [k, v] of Object.entries(attributes)) if (v !== null && v !== undefined) clean[k] = v;
    span.setAttributes(clean);
  } catch {
    // telemetry must never break a spawn
  }
}

/**
 * Starts a child span of `parent`. The SDK calls span processors' onStart synchronously and lets
 * their exceptions through, so a faulty processor would otherwise fail the spawn: on any error the
 * result is a non-recording span carrying the parent's span context, which keeps the trace (and the
 * traceparent handed to the worker) continuous even though this one span is lost. `startTime`
 * (epoch ms): when the work began, if before this call.
 */
export function startSpan(name: string, parent: Context, kind: SpanKind = SpanKind.INTERNAL, startTime?: number): Span {
  try {
    return tracer().startSpan(name, startTime === undefined ? { kind } : { kind, startTime }, parent);
  } catch {
    return trace.wrapSpanContext(trace.getSpanContext(parent) ?? INVALID_SPAN_CONTEXT);
  }
}

/** Ends a span; a processor's onEnd throwing must not replace the caller's result or error. */
export function endSpan(span: Span): void {
  try {
    span.end();
  } catch {
    // telemetry must never break a spawn
  }
}

/** Records an error on a span without ever throwing. */
export function recordError(span: Span, err: unknown): void {
  try {
    span.recordException(err as Error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string') span.setAttribute('spawngate.error_code', code);
  } catch {
    // ignore
  }
}

const HTTP_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'CONNECT', 'TRACE']);

/** `http.request.method` as the HTTP semantic conventions want it: a known method, else `_OTHER` (a caller-chosen string must not become a span name). */
export function httpMethod(method: string | undefined): string {
  const upper = (method ?? '').toUpperCase();
  return HTTP_METHODS.has(upper) ? upper : '_OTHER';
}

/**
 * Records how an HTTP exchange ended on its SERVER or CLIENT span and ends it. Following the HTTP
 * semantic conventions, a 4xx is an error only on the client side (on the server it is the caller's
 * mistake, not the server's); `errorType` names a failure without a status (a refused connection).
 */
export function endHttpSpan(span: Span, kind: SpanKind.SERVER | SpanKind.CLIENT, status: number | null, errorType?: string): void {
  const failed = errorType !== undefined || (status !== null && status >= (kind === SpanKind.SERVER ? 500 : 400));
  setAttributes(span, {
    'http.response.status_code': status ?? undefined,
    'error.type': errorType ?? (failed && status !== null ? String(status) : undefined),
  });
  try {
    if (failed) span.setStatus({ code: SpanStatusCode.ERROR, ...(errorType ? { message: errorType } : {}) });
  } catch {
    // telemetry must never break a request
  }
  endSpan(span);
}

/**
 * Runs `fn` inside a child span of `parent`. The span ends when fn settles; an exception is
 * recorded and rethrown unchanged (the span never swallows or wraps the caller's error).
 */
export async function inSpan<T>(name: string, parent: Context, attributes: Record<string, string | number | boolean | null | undefined>, fn: (span: Span, ctx: Context) => Promise<T>): Promise<T> {
  const span = startSpan(name, parent);
  setAttributes(span, attributes);
  const ctx = trace.setSpan(parent, span);
  try {
    const result = await context.with(ctx, () => fn(span, ctx));
    return result;
  } catch (err) {
    recordError(span, err);
    throw err;
  } finally {
    endSpan(span);
  }
}

