/**
 * Test doubles for code that embeds spawngate, shipped as `spawngate/testing`: an in-memory span
 * exporter wired into a globally registered tracer provider, a span-tree renderer for assertions,
 * and the in-memory reservation store and decision log.
 *
 *   const tracing = createTestTracing();
 *   await gate.spawn({ ..., traceparent: traceparentOf(callerSpan) });
 *   expect(spanTree(tracing.spans())).toContain('spawngate.spawn\n  spawngate.admission.evaluate');
 *   await tracing.shutdown();
 */
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { context, propagation, trace, type Span, type Tracer } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan, type SpanProcessor } from '@opentelemetry/sdk-trace-base';

export { createMemoryStore, type MemoryStoreOptions } from './admission/store/memory.js';
export { memoryDecisionLog, type DecisionLog, type DecisionLogEntry } from './admission/decision-log.js';
export { createMetrics, type Metrics } from './telemetry/metrics.js';
export { SPAN } from './telemetry/tracing.js';

export interface TestTracingOptions {
  /** More processors, called after the in-memory one (so it has recorded a span before any of these sees it). */
  spanProcessors?: SpanProcessor[];
}

export interface TestTracing {
  readonly provider: BasicTracerProvider;
  readonly exporter: InMemorySpanExporter;
  /** A tracer of the test provider, e.g. to start the caller's span whose traceparent a spawn carries. */
  readonly tracer: Tracer;
  /** Finished spans in the order they ended; with a name, only those. */
  spans(name?: string): ReadableSpan[];
  /** Forgets the finished spans. */
  reset(): void;
  /** Flushes and shuts the provider down and unregisters the globals this registered. */
  shutdown(): Promise<void>;
}

/**
 * A BasicTracerProvider with a SimpleSpanProcessor over an InMemorySpanExporter, registered as the
 * global tracer provider together with an AsyncLocalStorage context manager and the W3C
 * propagator. The OpenTelemetry API accepts a global only once, so whatever was registered before
 * is replaced: call this in a test's setup and `shutdown()` in its teardown.
 */
export function createTestTracing(options: TestTracingOptions = {}): TestTracing {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter), ...(options.spanProcessors ?? [])] });
  const contextManager = new AsyncLocalStorageContextManager().enable();
  trace.disable();
  context.disable();
  propagation.disable();
  trace.setGlobalTracerProvider(provider);
  context.setGlobalContextManager(contextManager);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  let shut: Promise<void> | null = null;
  return {
    provider,
    exporter,
    tracer: provider.getTracer('spawngate-test'),
    spans: (name) => {
      const all = exporter.getFinishedSpans();
      return name === undefined ? all : all.filter((s) => s.name === name);
    },
    reset: () => exporter.reset(),
    shutdown() {
      shut ??= (async () => {
        try {
          await provider.shutdown();
        } finally {
          contextManager.disable();
          trace.disable();
          context.disable();
          propagation.disable();
        }
      })();
      return shut;
    },
  };
}

/** The W3C `traceparent` of a span (or a finished ReadableSpan), as a gateway would send it with a spawn request. */
export function traceparentOf(span: Pick<Span, 'spanContext'>): string {
  const { traceId, spanId, traceFlags } = span.spanContext();
  return `00-${traceId}-${spanId}-${traceFlags.toString(16).padStart(2, '0')}`;
}

export interface SpanTreeOptions {
  /** Attribute keys shown after each name as `[key=value ...]` when the span has them. */
  attributes?: readonly string[];
}

function startOf(span: ReadableSpan): number {
  return span.startTime[0] * 1e9 + span.startTime[1];
}

/**
 * Renders spans as an indented tree of names (two spaces per level), children in start order
 * (ties in the order given, e.g. the exporter's end order).
 * A span whose parent is not among `spans` (the caller's own span, say) is a root.
 *
 *   spawngate.spawn
 *     spawngate.admission.evaluate
 *     spawngate.reservation
 */
export function spanTree(spans: readonly ReadableSpan[], options: SpanTreeOptions = {}): string {
  const ids = new Set(spans.map((s) => s.spanContext().spanId));
  const children = new Map<string | null, ReadableSpan[]>();
  for (const span of spans) {
    const parentId = span.parentSpanContext?.spanId;
    const key = parentId && ids.has(parentId) ? parentId : null;
    const list = children.get(key) ?? [];
    list.push(span);
    children.set(key, list);
  }
  // Start times have millisecond resolution (the SDK anchors them on Date.now()), so siblings that
  // start in the same millisecond keep the order they ended in, which is `spans` order.
  const order = new Map(spans.map((s, i) => [s, i]));
  for (const list of children.values()) list.sort((a, b) => startOf(a) - startOf(b) || order.get(a)! - order.get(b)!);
  const label = (span: ReadableSpan): string => {
    const shown = (options.attributes ?? []).flatMap((k) => (span.attributes[k] === undefined ? [] : [`${k}=${String(span.attributes[k])}`]));
    return shown.length ? `${span.name} [${shown.join(' ')}]` : span.name;
  };
  const lines: string[] = [];
  // Iterative walk: a span list is finite and every span has one parent, so this ends.
  const stack: { span: ReadableSpan; depth: number }[] = [...(children.get(null) ?? [])].reverse().map((span) => ({ span, depth: 0 }));
  while (stack.length > 0) {
    const { span, depth } = stack.pop()!;
    lines.push(`${'  '.repeat(depth)}${label(span)}`);
    const kids = children.get(span.spanContext().spanId) ?? [];
    for (let i = kids.length - 1; i >= 0; i--) stack.push({ span: kids[i]!, depth: depth + 1 });
  }
  return lines.join('\n');
}
export { createFakeBackend, type FakeBackend, type FakeBackendOptions, type FakeWorker } from './testing/fake-backend.js';
