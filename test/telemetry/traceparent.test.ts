/**
 * spawngate reads and writes the W3C `traceparent` itself (src/telemetry/tracing.ts) to keep
 * @opentelemetry/core out of the worker's start. This holds it to the propagator it replaced, on
 * hand-picked edge cases and on generated headers, valid and broken.
 */
import { ROOT_CONTEXT, trace, TraceFlags, type Context } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parentContext, traceparentOf } from '../../src/telemetry/tracing.js';

const w3c = new W3CTraceContextPropagator();

function reference(header: string): Context {
  return w3c.extract(ROOT_CONTEXT, { traceparent: header }, { get: (c, k) => (c as Record<string, string>)[k], keys: (c) => Object.keys(c as object) });
}

function same(header: string): void {
  expect(trace.getSpanContext(parentContext(header)) ?? null, JSON.stringify(header)).toEqual(trace.getSpanContext(reference(header)) ?? null);
}

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN = '00f067aa0ba902b7';

describe('traceparent', () => {
  it('reads what the OpenTelemetry W3C propagator reads, and refuses what it refuses', () => {
    const cases = [
      `00-${TRACE}-${SPAN}-01`,
      `00-${TRACE}-${SPAN}-00`,
      `00-${TRACE}-${SPAN}-ff`,
      ` 00-${TRACE}-${SPAN}-01 `,
      `01-${TRACE}-${SPAN}-01-extra-fields`,
      `01-${TRACE}-${SPAN}-01-a\nb`,
      `00-${TRACE}-${SPAN}-01-extra`,
      `ff-${TRACE}-${SPAN}-01`,
      `00-${'0'.repeat(32)}-${SPAN}-01`,
      `00-${TRACE}-${'0'.repeat(16)}-01`,
      `00-${TRACE.toUpperCase()}-${SPAN}-01`,
      `00-${TRACE}-${SPAN}-1`,
      `00-${TRACE}0-${SPAN}-01`,
      `00-${TRACE}-${SPAN}`,
      `00_${TRACE}_${SPAN}_01`,
      `\n00-${TRACE}-${SPAN}-01`,
      'garbage',
    ];
    for (const header of cases) same(header);
    expect(trace.getSpanContext(parentContext(`00-${TRACE}-${SPAN}-01`))).toEqual({ traceId: TRACE, spanId: SPAN, traceFlags: TraceFlags.SAMPLED, isRemote: true });
  });

  it('agrees with the propagator on generated headers', () => {
    const hex = (n: number) => fc.stringMatching(new RegExp(`^[0-9a-fA-F]{${n}}$`));
    const header = fc.oneof(
      fc.tuple(hex(2), hex(32), hex(16), hex(2), fc.option(fc.string({ maxLength: 12 }), { nil: undefined })).map(([v, t, s, f, rest]) => `${v}-${t}-${s}-${f}${rest === undefined ? '' : `-${rest}`}`),
      fc.string({ maxLength: 80 }),
    );
    fc.assert(fc.property(header, (h) => same(h)), { numRuns: 2000 });
  });

  it('writes a header the propagator reads back to the same span', () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[0-9a-f]{32}$/), fc.stringMatching(/^[0-9a-f]{16}$/), fc.constantFrom(TraceFlags.NONE, TraceFlags.SAMPLED), (traceId, spanId, traceFlags) => {
        const span = trace.wrapSpanContext({ traceId, spanId, traceFlags });
        const header = traceparentOf(span);
        if (/^0+$/.test(traceId) || /^0+$/.test(spanId)) return expect(header).toBeNull();
        expect(header).toBe(`00-${traceId}-${spanId}-0${traceFlags}`);
        expect(trace.getSpanContext(reference(header!))).toEqual({ traceId, spanId, traceFlags, isRemote: true });
      }),
      { numRuns: 500 },
    );
  });

  it('without a header the active context is the parent', () => {
    expect(parentContext(null)).toBe(parentContext(undefined));
    expect(trace.getSpanContext(parentContext(''))).toBeUndefined();
  });
});
