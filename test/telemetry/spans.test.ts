/**
 * The span tree of a real spawn on the process backend (the reference worker running the built-in
 * echo agent), continued from the caller's traceparent and into the worker.
 */
import { readFileSync } from 'node:fs';
import type { Context } from '@opentelemetry/api';
import { SpanStatusCode } from '@opentelemetry/api';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AdmissionDeniedError } from '../../src/errors.js';
import type { Spawngate } from '../../src/spawngate.js';
import { createTestTracing, spanTree, traceparentOf, type TestTracing } from '../../src/testing.js';
import { caller, collect, openGate, processBackend } from './gate.js';

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
        '    spawngate.turn',
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
      'process.pid': pid,
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
    expect(one(spans, 'spawngate.backend.create').attributes).toMatchObject({ 'spawngate.backend': 'local', 'spawngate.backend_type': 'process', 'process.pid': pid });
    expect(one(spans, 'spawngate.backend.ready').attributes).toMatchObject({ 'process.pid': pid });
    expect(one(spans, 'spawngate.close').attributes).toMatchObject({ 'spawngate.spawn_id': handle.spawnId, 'spawngate.close_reason': 'closed' });

    // The worker was started with the spawn span as its parent ...
    expect(env['TRACEPARENT']).toBe(traceparentOf(spawn));
    // ... and each turn's events carry the traceparent of that turn's span, echoed by the worker.
    const turns = spans.filter((s) => s.name === 'spawngate.turn');
    for (const [i, events] of [first, second].entries()) {
      const turn = turns[i]!;
      expect(turn.attributes).toMatchObject({
        'spawngate.spawn_id': handle.spawnId,
        'spawngate.backend': 'local',
        'spawngate.profile': 'default',
        'spawngate.agent_id': 'echo',
        'spawngate.turn_outcome': 'completed',
        'process.pid': pid,
      });
      expect(events.at(-1)?.type).toBe('turn.completed');
      expect(new Set(events.map((e) => e.traceId))).toEqual(new Set([turn.spanContext().traceId]));
      expect(new Set(events.map((e) => e.traceparent))).toEqual(new Set([traceparentOf(turn)]));
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
    expect(spawn.attributes['process.pid']).toBeUndefined();
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
      ['spawngate.spawn', '  spawngate.admission.evaluate', '  spawngate.reservation', '  spawngate.backend.create', '  spawngate.backend.ready', '  spawngate.turn', '  spawngate.close'].join('\n'),
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
