/**
 * The `traceparent` header continues the gateway's trace when the request body names none: each
 * request is a SERVER span under it, and admission and the spawn run below that span.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type RunningServer } from '../../src/server/index.js';
import { createSpawngate, type Spawngate } from '../../src/spawngate.js';
import { createTestTracing, SPAN, type TestTracing } from '../../src/testing.js';
import { memoryLogger } from '../helpers/logger.js';
import { call, processBackend, spawnRequest } from './helpers.js';

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

describe('HTTP API tracing', () => {
  const backend = processBackend();
  const token = randomBytes(24).toString('base64url');
  let tracing: TestTracing;
  let gate: Spawngate;
  let server: RunningServer;

  beforeAll(async () => {
    tracing = createTestTracing();
    gate = await createSpawngate({ config: backend.config, owner: `srv-trace-${randomUUID().slice(0, 8)}`, sweepIntervalMs: 0, decisionLog: false, watchBundle: false, logger: memoryLogger() });
    server = await createServer({ gate, token, listen: { port: 0 } });
  });

  afterAll(async () => {
    await server?.close();
    await gate?.shutdown();
    await tracing?.shutdown();
    backend.remove();
  });

  function admissionSpan() {
    const spans = tracing.spans(SPAN.admission);
    expect(spans).toHaveLength(1);
    return spans[0]!;
  }

  /** The SERVER span `name` that `child` runs under, with the HTTP attributes of its exchange. */
  function requestSpanOf(child: ReadableSpan, name: string, status: number): ReadableSpan {
    const found = tracing.spans(name).filter((s) => s.spanContext().spanId === child.parentSpanContext?.spanId);
    expect(found, `${child.name} runs under ${name}`).toHaveLength(1);
    const request = found[0]!;
    expect(request.kind).toBe(SpanKind.SERVER);
    const [method, route] = name.split(' ');
    expect(request.attributes).toMatchObject({ 'http.request.method': method, 'http.route': route, 'url.path': route, 'http.response.status_code': status, 'server.address': '127.0.0.1', 'server.port': Number(new URL((server.address as { url: string }).url).port) });
    expect(request.spanContext().traceId).toBe(child.spanContext().traceId);
    return request;
  }

  it('admit and spawn run under the header traceparent; a body traceparent wins; a malformed header is ignored', async () => {
    const traceId = hex(16);
    const parentId = hex(8);
    const header = `00-${traceId}-${parentId}-01`;
    tracing.reset();

    const admitted = await call(server.address, 'POST', '/v1/admit', { token, body: spawnRequest('echo traced'), headers: { traceparent: header } });
    expect(admitted.status).toBe(200);
    const admission = admissionSpan();
    expect(admission.spanContext().traceId).toBe(traceId);
    expect(requestSpanOf(admission, 'POST /v1/admit', 200).parentSpanContext?.spanId).toBe(parentId);
    tracing.reset();

    // Denied, so no worker starts; the spawn span exists all the same.
    const denied = await call(server.address, 'POST', '/v1/spawns', { token, body: spawnRequest('echo traced', { execution: { profile: 'restricted' } }), headers: { traceparent: header } });
    expect(denied.status).toBe(403);
    const spawn = tracing.spans(SPAN.spawn);
    expect(spawn).toHaveLength(1);
    expect(spawn[0]?.spanContext().traceId).toBe(traceId);
    // A 403 is the caller's affair: not an error on the server's span.
    const denial = requestSpanOf(spawn[0]!, 'POST /v1/spawns', 403);
    expect(denial.parentSpanContext?.spanId).toBe(parentId);
    expect(denial.status.code).not.toBe(SpanStatusCode.ERROR);
    tracing.reset();

    const ownTrace = hex(16);
    await call(server.address, 'POST', '/v1/admit', { token, body: spawnRequest('echo traced', { traceparent: `00-${ownTrace}-${hex(8)}-01` }), headers: { traceparent: header } });
    expect(admissionSpan().spanContext().traceId).toBe(ownTrace);
    tracing.reset();

    const malformed = await call(server.address, 'POST', '/v1/admit', { token, body: spawnRequest('echo traced'), headers: { traceparent: 'not-a-traceparent' } });
    expect(malformed.status).toBe(200);
    const fresh = admissionSpan();
    expect(fresh.spanContext().traceId).not.toBe(traceId);
    expect(requestSpanOf(fresh, 'POST /v1/admit', 200).parentSpanContext).toBeUndefined();
    tracing.reset();
  });
});
