/**
 * One trace per spawn, proven through a real OpenTelemetry Collector: `spawngate serve` (the
 * installed bin) exports over OTLP/gRPC, its process-backend worker over OTLP/HTTP protobuf (the
 * profile's telemetry endpoint), the collector batches both and re-exports them as OTLP JSON to a
 * sink. The gateway's caller span is the root; every span the gateway and the worker made must hang
 * below it with the right parent, kind and per-process resource, and the close spans of the
 * SIGTERM drain must arrive although serve holds its batches for ten minutes (only shutdown flushes).
 * Twice: a worker with open egress exports to the collector itself; one under egress "proxy" has no
 * network, and its spans go through the gateway's proxy socket.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checkTrace, COLLECTOR_BUILD_MS, runTraceScenario, startCollector } from './collector.js';
import type { Collector } from './collector.js';

const fixtureAgent = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));

// serve, two workers and their agents: several Node start-ups on a loaded 2-core machine.
const WAIT_MS = 60_000;

/** Resolves when the process is gone; the worker flushes its spans before it exits. */
async function gone(pid: number): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    if (Date.now() > deadline) throw new Error(`worker pid ${pid} still runs ${WAIT_MS} ms after serve stopped`);
    // A process that is not our child has no exit event to wait for: poll, bounded.
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('traces through a real OpenTelemetry Collector: serve (OTLP/gRPC) and a process worker (OTLP/HTTP)', { timeout: 5 * WAIT_MS }, () => {
  let collector: Collector;
  const stateDir = mkdtempSync(join(tmpdir(), 'sg-otc-'));

  // One collector per test: each test stops its collector to drain it before reading the spans.
  beforeEach(async () => {
    collector = await startCollector();
  }, COLLECTOR_BUILD_MS);

  afterEach(async () => {
    await collector?.close();
  });

  afterAll(() => rmSync(stateDir, { recursive: true, force: true }));

  /** The scenario on a process backend whose `small` profile is `profile`; the tree checked for both spawns. */
  async function traceOnProcessBackend(profile: Record<string, unknown>): Promise<void> {
    const pids: number[] = [];
    try {
      const result = await runTraceScenario({
        collector,
        dir: stateDir,
        waitMs: WAIT_MS,
        config: {
          spawngate: { owner: `otelcol-${randomUUID().slice(0, 8)}` },
          agents: {
            executionBackends: { local: { type: 'process', stateDir, defaultProfile: 'small', profiles: { small: { ttlSeconds: 600, timeoutSeconds: 60, ...profile } } } },
            execution: { default: { backend: 'local', profile: 'small' } },
            acp: { fixture: { command: [process.execPath, fixtureAgent] } },
          },
        },
        // The fixture agent makes a tool call when told "tool": the trace must reach into it.
        agentId: 'fixture',
        messages: ['tool', 'again'],
        whileRunning: (workers) => {
          pids.push(...workers.map((w) => Number(w.nativeId)));
          return Promise.resolve();
        },
        gone: (worker) => gone(Number(worker.nativeId)),
      });
      const { spans, closed, drained } = result;
      const tree = checkTrace(spans, result);
      expect(tree.spawns.map((s) => s.attributes['spawngate.spawn_id']).sort()).toEqual([closed.spawnId, drained.spawnId].sort());

      const closedTree = tree.bySpawn(closed.spawnId);
      expect(closedTree.turns).toHaveLength(2);
      for (const turn of closedTree.turns) {
        // gateway turn → CLIENT POST /turn → the worker's SERVER span, in the worker's own process.
        expect(turn.client.attributes).toMatchObject({ 'http.request.method': 'POST', 'url.path': '/turn', 'http.response.status_code': 200 });
        expect(turn.server.resource).toMatchObject({ 'service.name': 'spawngate-worker', 'spawngate.role': 'worker', 'process.pid': Number(closed.nativeId), 'spawngate.spawn_id': closed.spawnId, 'spawngate.agent_id': 'fixture' });
        expect(turn.server.attributes).toMatchObject({ 'spawngate.turn.outcome': 'completed' });
      }
      // One turn asked for a tool: its call is a span under that worker turn, the trace's last link.
      expect(closedTree.turns.map((t) => t.toolCalls.length).sort()).toEqual([0, 1]);
      const toolCall = closedTree.turns.flatMap((t) => t.toolCalls)[0]!;
      expect(toolCall.resource['process.pid']).toBe(Number(closed.nativeId));
      expect(closedTree.close.attributes['spawngate.close_reason']).toBe('closed');
      expect(closedTree.worker.start.resource['process.pid']).toBe(Number(closed.nativeId));

      const drainedTree = tree.bySpawn(drained.spawnId);
      expect(drainedTree.turns).toEqual([]);
      expect(drainedTree.close.attributes['spawngate.close_reason']).toBe('shutdown');
      expect(drainedTree.worker.start.resource['process.pid']).toBe(Number(drained.nativeId));

      // The API's own SERVER spans in the caller's trace: route templates, never raw ids.
      const serverSpans = spans.filter((s) => s.kind === 2 && s.resource['spawngate.role'] === 'server');
      expect(serverSpans.map((s) => s.name).sort()).toEqual(['DELETE /v1/spawns/{id}', 'POST /v1/spawns', 'POST /v1/spawns']);
      expect(serverSpans.find((s) => s.name.startsWith('DELETE'))?.attributes).toMatchObject({ 'http.route': '/v1/spawns/{id}', 'url.path': `/v1/spawns/${closed.spawnId}`, 'http.response.status_code': 204 });
    } finally {
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  }

  it('puts the caller, the HTTP API, the lifecycle and the worker into one trace, and flushes it on SIGTERM (egress open: the worker reaches the collector itself)', async () => {
    // The worker reaches the collector's HTTP receiver on loopback; the gateway uses its gRPC one.
    await traceOnProcessBackend({ egress: 'open', telemetry: { endpoint: `${collector.httpEndpoint}/v1/traces`, protocol: 'http/protobuf' } });
  });

  it('the same tree from a worker whose only way out is the gateway\'s egress proxy (its spans relayed through the proxy socket)', async () => {
    await traceOnProcessBackend({ egress: 'proxy', egressAllow: [new URL(collector.httpEndpoint).host], telemetry: { endpoint: `${collector.httpEndpoint}/v1/traces`, protocol: 'http/protobuf' } });
  });
});
