/**
 * The span tree of a real spawn on the process backend (the reference worker running the built-in
 * echo agent), continued from the caller's traceparent and into the worker.
 */
import { readFileSync } from 'node:fs';
import type { Context } from '@opentelemetry/api';
import { context, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AdmissionDeniedError } from '../../src/errors.js';
import type { Spawngate } from '../../src/spawngate.js';
import { createTestTracing, spanTree, traceparentOf, type TestTracing } from '../../src/testing.js';
import { endHttpSpan, startSpan } from '../../src/telemetry/tracing.js';
import { caller, collect, openGate, processBackend } from './gate.js';
import { startOtlpSink } from './otlp-sink.js';

const backend = processBackend();
let gate: Spawngate;
let tracing: TestTracing | null = null;

beforeAll(async () => {
  gate = await openGate(backend);
});

afterEach(async () => {
  await tracing?.shutdown();
  tracing = null;
});

afterAll(async () => {
  await gate.shutdown();
  expect(backend.leftovers()).toEqual([]);
  backend.remove();
});

const one = (spans: ReadableSpan[], name: string): ReadableSpan => {
  const found = spans.filter((s) => s.name === name);
  expect(found, `exactly one ${name} span`).toHaveLength(1);
  return found[0]!;
};

/** The environment a worker process started with (the process backend execs it, so the pid is the worker's). */
function workerEnvironment(pid: string): Record<string, string> {
  const raw = readFileSync(`/proc/${pid}/environ`, 'utf8');
  return Object.fromEntries(raw.split('\0').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

describe('spans along the road of a spawn', () => {
  it('spawn is a child of the caller span; admission, reservation, create, ready, turns and close are its children', async () => {
    tracing = createTestTracing();
    const callerSpan = tracing.tracer.startSpan('gateway.sessions_spawn');
    const callerContext = callerSpan.spanContext();

    const handle = await gate.spawn({ agentId: 'echo', task: 'echo telemetry', caller: caller(), traceparent: traceparentOf(callerSpan) });
    const env = workerEnvironment(handle.nativeId);
    const first = await collect(handle.turn('first turn'));
    const second = await collect(handle.turn('second turn'));
    await handle.close();
    callerSpan.end();

    const spans = tracing.spans();
    const spawn = one(spans, 'spawngate.spawn');
    expect(spawn.spanContext().traceId).toBe(callerContext.traceId);
    expect(spawn.parentSpanContext?.spanId).toBe(callerContext.spanId);
    expect(spawn.parentSpanContext?.isRemote).toBe(true);
    expect(spans.filter((s) => s.name.startsWith('spawngate.')).every((s) => s.spanContext().traceId === callerContext.traceId)).toBe(true);

    expect(spanTree(spans)).toBe(
      [
        'gateway.sessions_spawn',
        '  spawngate.spawn',
        '    spawngate.admission.evaluate',
        '    spawngate.reservation',
        '    spawngate.backend.create',
        '    spawngate.backend.ready',
        '    spawngate.turn',
        '      POST /turn',
        '    spawngate.turn',
        '      POST /turn',
        '    spawngate.close',
      ].join('\n'),
    );

    const pid = Number(handle.nativeId);
    expect(spawn.attributes).toMatchObject({
      'spawngate.spawn_id': handle.spawnId,
      'spawngate.backend': 'local',
      'spawngate.profile': 'default',
      'spawngate.agent_id': 'echo',
      'spawngate.decision': 'allow',
      'spawngate.worker.pid': pid,
    });
    expect(spawn.attributes['spawngate.reason']).toBeUndefined();
    expect(spawn.status.code).not.toBe(SpanStatusCode.ERROR);
    expect(one(spans, 'spawngate.admission.evaluate').attributes).toMatchObject({
      'spawngate.agent_id': 'echo',
      'spawngate.decision': 'allow',
      'spawngate.backend': 'local',
      'spawngate.profile': 'default',
    });
    expect(one(spans, 'spawngate.reservation').attributes).toMatchObject({ 'spawngate.decision': 'allow', 'spawngate.store': 'memory' });
    expect(one(spans, 'spawngate.backend.create').attributes).toMatchObject({ 'spawngate.backend': 'local', 'spawngate.backend_type': 'process', 'spawngate.worker.pid': pid });
    expect(one(spans, 'spawngate.backend.ready').attributes).toMatchObject({ 'spawngate.worker.pid': pid });
    expect(one(spans, 'spawngate.close').attributes).toMatchObject({ 'spawngate.spawn_id': handle.spawnId, 'spawngate.close_reason': 'closed' });

    // The worker was started with the spawn span as its parent ...
    expect(env['TRACEPARENT']).toBe(traceparentOf(spawn));
    // ... and each turn's events carry the traceparent of that turn's request (a CLIENT span under
    // the turn, with the HTTP attributes of the exchange), echoed by the worker.
    const turns = spans.filter((s) => s.name === 'spawngate.turn');
    for (const [i, events] of [first, second].entries()) {
      const turn = turns[i]!;
      const requests = spans.filter((s) => s.name === 'POST /turn' && s.parentSpanContext?.spanId === turn.spanContext().spanId);
      expect(requests).toHaveLength(1);
      const request = requests[0]!;
      expect(request.kind).toBe(SpanKind.CLIENT);
      expect(request.attributes).toMatchObject({ 'http.request.method': 'POST', 'url.path': '/turn', 'http.response.status_code': 200 });
      expect(request.status.code).not.toBe(SpanStatusCode.ERROR);
      expect(turn.attributes).toMatchObject({
        'spawngate.spawn_id': handle.spawnId,
        'spawngate.backend': 'local',
        'spawngate.profile': 'default',
        'spawngate.agent_id': 'echo',
        'spawngate.turn_outcome': 'completed',
        'spawngate.worker.pid': pid,
      });
      expect(events.at(-1)?.type).toBe('turn.completed');
      expect(new Set(events.map((e) => e.traceId))).toEqual(new Set([turn.spanContext().traceId]));
      expect(new Set(events.map((e) => e.traceparent))).toEqual(new Set([traceparentOf(request)]));
    }
    expect(turns[0]!.spanContext().spanId).not.toBe(turns[1]!.spanContext().spanId);
  });

  it('a policy deny records the decision and reason and has no reservation or backend spans', async () => {
    tracing = createTestTracing();
    const callerSpan = tracing.tracer.startSpan('gateway.sessions_spawn');
    const attempt = gate.spawn({
      agentId: 'echo',
      task: 'echo denied',
      caller: caller(),
      execution: { profile: 'restricted' },
      traceparent: traceparentOf(callerSpan),
    });
    await expect(attempt).rejects.toBeInstanceOf(AdmissionDeniedError);
    callerSpan.end();

    const spans = tracing.spans();
    expect(spanTree(spans, { attributes: ['spawngate.decision', 'spawngate.reason'] })).toBe(
      [
        'gateway.sessions_spawn',
        '  spawngate.spawn [spawngate.decision=deny spawngate.reason=agent_not_allowed]',
        '    spawngate.admission.evaluate [spawngate.decision=deny spawngate.reason=agent_not_allowed]',
      ].join('\n'),
    );
    const spawn = one(spans, 'spawngate.spawn');
    expect(spawn.spanContext().traceId).toBe(callerSpan.spanContext().traceId);
    expect(spawn.attributes).toMatchObject({ 'spawngate.agent_id': 'echo', 'spawngate.error_code': 'ADMISSION_DENIED' });
    expect(spawn.attributes['spawngate.worker.pid']).toBeUndefined();
    expect(spawn.status.code).toBe(SpanStatusCode.ERROR);
  });

  it('a reservation deny (rate limit) ends at the reservation span, with its reason', async () => {
    tracing = createTestTracing();
    // cron: burst 1 per user and channel in policies/data.json, so the second spawn in a minute is refused by the store.
    const cron = { user: 'tel-cron-spans', channel: { id: 'tel-cron-spans', kind: 'cron' } };
    const allowed = await gate.spawn({ agentId: 'echo', task: 'nightly', caller: caller(cron) });
    await allowed.close();
    tracing.reset();
    const attempt = gate.spawn({ agentId: 'echo', task: 'nightly again', caller: caller(cron) });
    const error = await attempt.then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(AdmissionDeniedError);
    const code = (error as AdmissionDeniedError).reasons[0]?.code;
    expect(code).toMatch(/^rate_limit_(user|channel)$/);

    const spans = tracing.spans();
    expect(spanTree(spans, { attributes: ['spawngate.decision', 'spawngate.reason'] })).toBe(
      [
        `spawngate.spawn [spawngate.decision=deny spawngate.reason=${code}]`,
        '  spawngate.admission.evaluate [spawngate.decision=allow]',
        `  spawngate.reservation [spawngate.decision=deny spawngate.reason=${code}]`,
      ].join('\n'),
    );
  });
});

describe('the worker continues the trace with spans of its own', () => {
  const OTEL = ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_HEADERS'] as const;

  it('start-up, ACP handshake, turn and tool call spans reach the gateway\'s collector under the gateway\'s spans; its credentials do not reach the worker', async () => {
    const sink = await startOtlpSink();
    const saved = Object.fromEntries(OTEL.map((k) => [k, process.env[k]]));
    // What an operator sets on the gateway; the worker gets the endpoint and protocol, never the headers.
    process.env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'] = `${sink.url}/v1/traces`;
    process.env['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL'] = 'http/json';
    process.env['OTEL_EXPORTER_OTLP_HEADERS'] = 'authorization=Bearer collector-secret';
    try {
      tracing = createTestTracing();
      const handle = await gate.spawn({ agentId: 'fixture', task: 'tool', caller: caller(), execution: { profile: 'traced' } });
      const env = workerEnvironment(handle.nativeId);
      expect(env).toMatchObject({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${sink.url}/v1/traces`, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json' });
      expect(env['OTEL_EXPORTER_OTLP_HEADERS']).toBeUndefined();
      const events = await collect(handle.turn('tool'));
      expect(events.at(-1)?.type).toBe('turn.completed');
      // A cancel sent inside the spawn's trace: the gateway's CLIENT span, answered by a SERVER span in the worker.
      const inSpawn = trace.setSpan(context.active(), trace.wrapSpanContext(one(tracing.spans(), 'spawngate.spawn').spanContext()));
      await context.with(inSpawn, () => gate.cancel(handle.spawnId));
      // The worker flushes its spans when it stops (SIGTERM from close); the process backend waits for that exit.
      await handle.close();
      const gatewaySpans = tracing.spans();
      const spawn = one(gatewaySpans, 'spawngate.spawn');
      const turnRequest = one(gatewaySpans, 'POST /turn');
      for (let i = 0; i < 300 && !sink.spans.some((s) => s.name === 'spawngate.worker.turn'); i++) await new Promise((r) => setTimeout(r, 100));
      const byName = (name: string) => {
        const found = sink.spans.filter((s) => s.name === name);
        expect(found, `exactly one ${name} span from the worker`).toHaveLength(1);
        return found[0]!;
      };
      const start = byName('spawngate.worker.start');
      const handshake = byName('spawngate.worker.acp.handshake');
      const workerTurn = byName('spawngate.worker.turn');
      const tool = byName('spawngate.worker.tool_call');
      const traceId = spawn.spanContext().traceId;
      expect(sink.spans.every((s) => s.traceId === traceId)).toBe(true);
      expect(start.parentSpanId).toBe(spawn.spanContext().spanId);
      expect(handshake.parentSpanId).toBe(start.spanId);
      expect(turnRequest.parentSpanContext?.spanId).toBe(one(gatewaySpans, 'spawngate.turn').spanContext().spanId);
      expect(workerTurn.parentSpanId).toBe(turnRequest.spanContext().spanId);
      expect(workerTurn.kind).toBe(2); // server: it answers the gateway's /turn request (a CLIENT span)
      expect(workerTurn.attributes).toMatchObject({ 'spawngate.turn.outcome': 'completed', 'http.request.method': 'POST', 'url.path': '/turn', 'spawngate.agent_id': 'fixture' });
      expect(tool.parentSpanId).toBe(workerTurn.spanId);
      expect(tool.attributes).toMatchObject({ 'spawngate.tool.call_id': 'tool-1', 'spawngate.tool.title': 'Read README.md', 'spawngate.tool.kind': 'read', 'spawngate.tool.status': 'completed' });
      // The resource is the worker's own process, not the gateway's.
      expect(workerTurn.resource).toMatchObject({ 'service.name': 'spawngate-worker', 'spawngate.role': 'worker', 'spawngate.spawn_id': handle.spawnId, 'process.pid': Number(handle.nativeId) });
      const cancelRequest = one(gatewaySpans, 'POST /cancel');
      expect(cancelRequest.kind).toBe(SpanKind.CLIENT);
      const cancelServed = byName('POST /cancel');
      expect(cancelServed.kind).toBe(2);
      expect(cancelServed.parentSpanId).toBe(cancelRequest.spanContext().spanId);
      expect(cancelServed.attributes).toMatchObject({ 'http.request.method': 'POST', 'url.path': '/cancel', 'http.response.status_code': cancelRequest.attributes['http.response.status_code'] });
      expect(sink.rejected).toBe(0);
    } finally {
      for (const k of OTEL) {
        if (saved[k] === undefined) delete process.env[k];
        else process.env[k] = saved[k];
      }
      await sink.close();
    }
  });

  it('a worker without a route to the collector (egress none) is given no telemetry settings', async () => {
    const saved = process.env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'];
    process.env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'] = 'http://127.0.0.1:9/v1/traces';
    try {
      const handle = await gate.spawn({ agentId: 'echo', task: 'x', caller: caller() });
      expect(Object.keys(workerEnvironment(handle.nativeId)).filter((k) => k.startsWith('OTEL_'))).toEqual([]);
      await handle.close();
    } finally {
      if (saved === undefined) delete process.env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'];
      else process.env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'] = saved;
    }
  });
});

describe('HTTP spans', () => {
  it('a 5xx is an error on either side, a 4xx only on the client\'s; a transport failure names itself', () => {
    tracing = createTestTracing();
    const root = tracing.tracer.startSpan('root');
    const parent = trace.setSpan(context.active(), root);
    const ended = (kind: SpanKind.SERVER | SpanKind.CLIENT, status: number | null, errorType?: string) => {
      const span = startSpan(`${kind}-${status}-${errorType}`, parent, kind);
      endHttpSpan(span, kind, status, errorType);
      const found = tracing!.spans(`${kind}-${status}-${errorType}`);
      expect(found).toHaveLength(1);
      return { kind: found[0]!.kind, status: found[0]!.status.code, code: found[0]!.attributes['http.response.status_code'], error: found[0]!.attributes['error.type'] };
    };
    expect(ended(SpanKind.SERVER, 201)).toEqual({ kind: SpanKind.SERVER, status: SpanStatusCode.UNSET, code: 201, error: undefined });
    expect(ended(SpanKind.SERVER, 403)).toEqual({ kind: SpanKind.SERVER, status: SpanStatusCode.UNSET, code: 403, error: undefined });
    expect(ended(SpanKind.SERVER, 503)).toEqual({ kind: SpanKind.SERVER, status: SpanStatusCode.ERROR, code: 503, error: '503' });
    expect(ended(SpanKind.CLIENT, 409)).toEqual({ kind: SpanKind.CLIENT, status: SpanStatusCode.ERROR, code: 409, error: '409' });
    expect(ended(SpanKind.CLIENT, null, 'ECONNREFUSED')).toEqual({ kind: SpanKind.CLIENT, status: SpanStatusCode.ERROR, code: undefined, error: 'ECONNREFUSED' });
    root.end();
  });
});

describe('telemetry never throws into the caller', () => {
  const throwing = (where: 'start' | 'end' | 'both'): SpanProcessor => ({
    onStart(_span: Span, _ctx: Context) {
      if (where !== 'end') throw new Error('span processor onStart exploded');
    },
    onEnd(_span: ReadableSpan) {
      if (where !== 'start') throw new Error('span processor onEnd exploded');
    },
    forceFlush: () => Promise.resolve(),
    shutdown: () => Promise.resolve(),
  });

  async function spawnTurnClose(traceparent?: string) {
    const handle = await gate.spawn({ agentId: 'echo', task: 'echo robust', caller: caller(), ...(traceparent ? { traceparent } : {}) });
    const events = await collect(handle.turn('still works'));
    await handle.close();
    return { handle, events };
  }

  it('a span processor that throws on start and end: the spawn, its turn and close succeed, and the trace stays continuous', async () => {
    tracing = createTestTracing({ spanProcessors: [throwing('both')] });
    // The caller's span comes from another provider: the gateway's own SDK is not the faulty one.
    const callerTraceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    const { events } = await spawnTurnClose(callerTraceparent);
    expect(events.at(-1)?.type).toBe('turn.completed');
    // No span could be started, so none was recorded ...
    expect(tracing.spans()).toEqual([]);
    // ... but the worker still saw the caller's trace.
    expect(new Set(events.map((e) => e.traceId))).toEqual(new Set(['0af7651916cd43dd8448eb211c80319c']));
    expect(await gate.list()).toEqual([]);
  });

  it('a span processor that throws on end: the spawn succeeds and the well-behaved processor still records every span', async () => {
    tracing = createTestTracing({ spanProcessors: [throwing('end')] });
    const { events } = await spawnTurnClose();
    expect(events.at(-1)?.type).toBe('turn.completed');
    expect(spanTree(tracing.spans())).toBe(
      ['spawngate.spawn', '  spawngate.admission.evaluate', '  spawngate.reservation', '  spawngate.backend.create', '  spawngate.backend.ready', '  spawngate.turn', '    POST /turn', '  spawngate.close'].join('\n'),
    );
  });

  it('an exporter that throws: the spawn succeeds', async () => {
    let calls = 0;
    const exploding = new InMemorySpanExporter();
    exploding.export = () => {
      calls++;
      throw new Error('exporter exploded');
    };
    tracing = createTestTracing({ spanProcessors: [new SimpleSpanProcessor(exploding)] });
    const { events } = await spawnTurnClose();
    expect(events.at(-1)?.type).toBe('turn.completed');
    expect(calls).toBeGreaterThanOrEqual(7);
    expect(tracing.spans('spawngate.spawn')).toHaveLength(1);
  });
});
