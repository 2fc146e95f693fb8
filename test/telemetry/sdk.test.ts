/** startTelemetry: trace export from OTEL_* only when asked for, never over someone else's provider, flushed on shutdown. */
import { trace } from '@opentelemetry/api';
import { describe, expect, it } from 'vitest';
import { createTestTracing } from '../../src/testing.js';
import { startTelemetry, traceExportRequested } from '../../src/telemetry/sdk.js';
import { startOtlpSink } from './otlp-sink.js';

describe('startTelemetry', () => {
  it('reads the standard variables to decide whether export is asked for', () => {
    expect(traceExportRequested({})).toBe(false);
    expect(traceExportRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' })).toBe(true);
    expect(traceExportRequested({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://127.0.0.1:4318/v1/traces' })).toBe(true);
    expect(traceExportRequested({ OTEL_TRACES_EXPORTER: 'console' })).toBe(true);
    expect(traceExportRequested({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' })).toBe(false);
    expect(traceExportRequested({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' })).toBe(false);
  });

  it('leaves a provider someone registered first alone, and puts no span of its own into it', async () => {
    const tracing = createTestTracing();
    try {
      expect(await startTelemetry({ service: 'spawngate', env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9' } })).toBeNull();
      expect(tracing.spans()).toEqual([]);
    } finally {
      await tracing.shutdown();
    }
  });

  it('exports spans over OTLP with the process\'s own resource, and flushes them on shutdown', async () => {
    const sink = await startOtlpSink();
    const saved = { ...process.env };
    process.env['OTEL_EXPORTER_OTLP_ENDPOINT'] = sink.url;
    process.env['OTEL_EXPORTER_OTLP_PROTOCOL'] = 'http/json';
    // Long batches: only the shutdown's flush can deliver the span in time.
    process.env['OTEL_BSP_SCHEDULE_DELAY'] = '600000';
    try {
      const telemetry = await startTelemetry({ service: 'spawngate-test', attributes: { 'spawngate.role': 'test' } });
      expect(telemetry).not.toBeNull();
      trace.getTracer('spawngate').startSpan('unit.span').end();
      expect(sink.spans).toEqual([]);
      await telemetry?.shutdown();
      expect(sink.spans.map((s) => s.name)).toEqual(['unit.span']);
      expect(sink.spans[0]?.resource).toMatchObject({ 'service.name': 'spawngate-test', 'spawngate.role': 'test', 'process.pid': process.pid });
    } finally {
      process.env = saved;
      await sink.close();
    }
  });
});
