/**
 * The trace of a spawn on the Docker backend, through a real OpenTelemetry Collector on loopback.
 * The worker container has egress "proxy": no network of its own (Docker's "none"), only the
 * gateway's egress proxy socket. Its spans reach the collector the way a user configures it: the
 * profile's telemetry endpoint (OTLP/HTTP) and that endpoint's host:port on egressAllow; the worker
 * exports to a relay on its own loopback, which goes through the proxy socket. The same tree as on
 * the process backend must come out: caller → API → spawn → lifecycle, and the worker's own spans
 * (start, handshake, the SERVER span of each turn) from the container's process.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildWorkerImage } from '../../src/backends/docker/image.js';
import { LABELS } from '../../src/backends/types.js';
import { checkTrace, COLLECTOR_BUILD_MS, runTraceScenario, startCollector } from '../telemetry/collector.js';
import type { Collector } from '../telemetry/collector.js';
import { engine, ensureEngine } from './engine.js';

const WAIT_MS = 120_000;

describe('traces through a real OpenTelemetry Collector from a Docker worker without network (egress proxy)', { timeout: 4 * WAIT_MS }, () => {
  let collector: Collector;
  // Short: unix socket paths max out at 107 bytes and the worker's sockets live under stateDir/<spawn key>/.
  const stateDir = mkdtempSync(join(tmpdir(), 'sgt-'));

  beforeAll(async () => {
    await ensureEngine();
    // The image carries dist/: rebuilt when this checkout's worker changed, a no-op otherwise.
    await buildWorkerImage({ log: (line) => void process.stdout.write(`image: ${line}\n`) });
    collector = await startCollector();
  }, COLLECTOR_BUILD_MS);

  afterAll(async () => {
    await collector?.close();
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('one trace from the caller to the container\'s turn spans, flushed through the egress proxy', async () => {
    const docker = engine();
    const collectorHost = new URL(collector.httpEndpoint).host;
    const result = await runTraceScenario({
      collector,
      dir: stateDir,
      waitMs: WAIT_MS,
      config: {
        spawngate: { owner: `otelcol-docker-${randomUUID().slice(0, 8)}` },
        agents: {
          executionBackends: {
            docker: {
              type: 'container',
              stateDir,
              defaultProfile: 'traced',
              profiles: {
                traced: {
                  ttlSeconds: 600,
                  timeoutSeconds: 120,
                  egress: 'proxy',
                  // The collector as the gateway's proxy reaches it: the host's loopback.
                  egressAllow: [collectorHost],
                  telemetry: { endpoint: `${collector.httpEndpoint}/v1/traces`, protocol: 'http/protobuf' },
                },
              },
            },
          },
          execution: { default: { backend: 'docker', profile: 'traced' } },
        },
      },
      whileRunning: async (workers) => {
        for (const worker of workers) {
          const info = await docker.getContainer(worker.nativeId).inspect();
          // No route but the proxy socket: spans that arrive came through it.
          expect(info.HostConfig.NetworkMode).toBe('none');
          expect(info.Config.Env).toEqual(expect.arrayContaining([`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=${collector.httpEndpoint}/v1/traces`, 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf']));
        }
      },
      // serve's drain deletes every container before it exits; what is left is a leak.
      gone: async (worker) => {
        const left = await docker.listContainers({ all: true, filters: { label: [`${LABELS.spawnId}=${worker.spawnId}`] } });
        expect(left).toEqual([]);
      },
    });
    const { spans, closed, drained } = result;
    const tree = checkTrace(spans, result);
    expect(tree.spawns.map((s) => s.attributes['spawngate.spawn_id']).sort()).toEqual([closed.spawnId, drained.spawnId].sort());

    const closedTree = tree.bySpawn(closed.spawnId);
    expect(closedTree.spawn.attributes['container.id']).toBe(closed.nativeId);
    expect(closedTree.create.attributes).toMatchObject({ 'spawngate.backend_type': 'container', 'container.id': closed.nativeId });
    expect(closedTree.turns).toHaveLength(2);
    for (const turn of closedTree.turns) {
      // Over the worker's unix socket: no host or port, the transport says so.
      expect(turn.client.attributes).toMatchObject({ 'http.request.method': 'POST', 'url.path': '/turn', 'http.response.status_code': 200, 'network.transport': 'unix' });
      expect(turn.server.resource).toMatchObject({ 'service.name': 'spawngate-worker', 'spawngate.role': 'worker', 'spawngate.spawn_id': closed.spawnId, 'spawngate.agent_id': 'echo' });
      expect(turn.server.attributes).toMatchObject({ 'spawngate.turn.outcome': 'completed' });
      expect(turn.toolCalls).toEqual([]);
    }
    expect(closedTree.close.attributes['spawngate.close_reason']).toBe('closed');

    const drainedTree = tree.bySpawn(drained.spawnId);
    expect(drainedTree.close.attributes['spawngate.close_reason']).toBe('shutdown');
    // Two containers, two worker processes: each reports its own resource.
    expect(drainedTree.worker.start.resource['spawngate.spawn_id']).toBe(drained.spawnId);
    expect(closedTree.worker.start.resource['host.name']).not.toBe(drainedTree.worker.start.resource['host.name']);
  });
});
