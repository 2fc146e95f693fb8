/**
 * One decision id joins everything about a spawn: the decision-log line (one, with the final
 * outcome), the spawn's span and the trace the line names, the worker's label, the handle and the
 * HTTP response, an allowed spawn's and a denied one's alike. The worker is the fake backend's
 * (a real reference worker in-process); the API is a real server on loopback.
 */
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryDecisionLog } from '../../src/admission/decision-log.js';
import { createServer, type RunningServer } from '../../src/server/index.js';
import { DECISION_ID_LABEL } from '../../src/sessions/spec.js';
import { createSpawngate, type Spawngate } from '../../src/spawngate.js';
import { createFakeBackend, createTestTracing, type FakeBackend, type TestTracing } from '../../src/testing.js';
import { SPAN } from '../../src/telemetry/tracing.js';
import { memoryLogger } from '../helpers/logger.js';
import { call, spawnRequest, type Target } from '../server/helpers.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const token = randomBytes(24).toString('base64url');

describe('the decision id of a spawn', () => {
  const log = memoryDecisionLog();
  let tracing: TestTracing;
  let fake: FakeBackend;
  let gate: Spawngate;
  let server: RunningServer;
  let target: Target;

  beforeAll(async () => {
    tracing = createTestTracing();
    fake = createFakeBackend();
    gate = await createSpawngate({
      config: {
        agents: {
          executionBackends: { fake: { type: 'process', defaultProfile: 'p', profiles: { p: { egress: 'open', ttlSeconds: 600, timeoutSeconds: 120, maxConcurrent: { profile: 1 } } } } },
          execution: { default: { backend: 'fake', profile: 'p' } },
          acp: { fixture: { command: [process.execPath, fixture] } },
        },
      },
      resolveBackend: () => Promise.resolve(fake),
      owner: 'decision-id-test',
      sweepIntervalMs: 0,
      decisionLog: log,
      watchBundle: false,
      logger: memoryLogger(),
    });
    server = await createServer({ gate, token, listen: { port: 0, host: '127.0.0.1' } });
    target = server.address;
  });

  afterAll(async () => {
    await server?.close();
    await gate?.shutdown();
    await tracing?.shutdown();
  });

  it('is in the spawn response, on the worker\'s label, on the spawn span, and the one line\'s decision_id in that trace', async () => {
    tracing.reset();
    const before = log.entries.length;
    const reply = await call(target, 'POST', '/v1/spawns', { token, body: spawnRequest('hello') });
    expect(reply.status, reply.text).toBe(201);
    const { spawnId, decisionId } = reply.json as { spawnId: string; decisionId: string };
    expect(decisionId).toMatch(/^[0-9a-f-]{36}$/);

    expect(gate.get(spawnId)?.decisionId).toBe(decisionId);
    expect(fake.workers.get(spawnId)?.spec.labels[DECISION_ID_LABEL]).toBe(decisionId);

    const lines = log.entries.slice(before);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ decision_id: decisionId, spawn_id: spawnId, stage: 'policy', result: { allow: true } });

    const [spawnSpan] = tracing.spans(SPAN.spawn);
    expect(spawnSpan?.attributes['spawngate.decision_id']).toBe(decisionId);
    const reservation = tracing.spans(SPAN.reservation).find((s) => s.attributes['spawngate.decision_id'] === decisionId);
    expect(lines[0]).toMatchObject({ trace_id: spawnSpan?.spanContext().traceId, span_id: reservation?.spanContext().spanId });
    await gate.close(spawnId);
  });

  it('is in a denied spawn\'s error, and its one line says deny', async () => {
    // The profile takes one worker: a second concurrent spawn is denied.
    const first = await gate.spawn(spawnRequest('one') as never);
    const before = log.entries.length;
    const reply = await call(target, 'POST', '/v1/spawns', { token, body: spawnRequest('two') });
    expect(reply.status, reply.text).toBe(403);
    const { error } = reply.json as { error: { code: string; decisionId: string } };
    expect(error.code).toBe('ADMISSION_DENIED');
    const lines = log.entries.slice(before);
    expect(lines.map((l) => [l.decision_id, (l.result as { allow: boolean }).allow])).toEqual([[error.decisionId, false]]);
    expect(fake.workers.size).toBe(1);
    await first.close();
  });
});
