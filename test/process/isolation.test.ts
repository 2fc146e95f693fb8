import { mkdtempSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSpawngate, type Spawngate } from '../../src/spawngate.js';
import type { WorkerEvent } from '../../src/protocol/events.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));

async function say(events: AsyncIterable<WorkerEvent>): Promise<string> {
  let text = '';
  for await (const e of events) if (e.type === 'agent.message.delta') text += e.text;
  return text;
}

describe('process backend: egress and endpoints', () => {
  let gate: Spawngate;
  let listener: Server;
  let port = 0;

  beforeAll(async () => {
    listener = createServer((s) => s.end());
    await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
    port = (listener.address() as { port: number }).port;
    gate = await createSpawngate({
      config: {
        agents: {
          executionBackends: {
            local: {
              type: 'process',
              stateDir: mkdtempSync(join(tmpdir(), 'sg-iso-')),
              profiles: { sealed: { egress: 'none' }, open: { egress: 'open' } },
            },
          },
          execution: { default: { backend: 'local', profile: 'sealed' } },
          acp: { fixture: { command: [process.execPath, fixture] } },
        },
      },
      sweepIntervalMs: 0,
      decisionLog: false,
      owner: 'isolation-test',
    });
  });
  afterAll(async () => {
    await gate.shutdown();
    listener.close();
  });

  const caller = { sessionKey: 's', depth: 0, channel: { id: 'cli:iso', kind: 'cli' }, user: { id: 'iso', roles: [] } };

  it('egress none: the worker runs in an empty network namespace, reached over a unix socket, and cannot open TCP connections', async () => {
    await using worker = await gate.spawn({ agentId: 'fixture', task: 'x', caller });
    expect(worker.endpoint.socketPath).toMatch(/w\.sock$/);
    expect(await say(worker.turn(`connect 127.0.0.1 ${port}`))).toMatch(/^connect failed: E(NETUNREACH|CONNREFUSED|ACCES|PERM)/);
  });

  it('egress open: the worker listens on loopback TCP and can reach the host', async () => {
    await using worker = await gate.spawn({ agentId: 'fixture', task: 'x', execution: { profile: 'open' }, caller });
    expect(worker.endpoint.baseUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(await say(worker.turn(`connect 127.0.0.1 ${port}`))).toBe('connect ok');
  });
});

describe('network isolation probe (egress "none" on the process backend)', () => {
  it('succeeds on a host with unshare and user namespaces, and names the cause when it cannot', async () => {
    const { probeNetworkIsolation } = await import('../../src/backends/process/isolation.js');
    expect(await probeNetworkIsolation()).toEqual({ ok: true });
    expect(await probeNetworkIsolation('/nonexistent/unshare')).toEqual({ ok: false, reason: '/nonexistent/unshare not found' });
  });

  it('spawngate doctor checks it for a process backend whose profiles need it', async () => {
    const { runDoctor } = await import('../../src/cli/commands/doctor.js');
    const { defaultConfig } = await import('../../src/config/index.js');
    const report = await runDoctor(defaultConfig());
    expect(report.ok).toBe(true);
    expect(report.checks).toContainEqual(expect.objectContaining({ check: 'local: egress "none" isolation (unshare)', backend: 'local', result: 'ok' }));
    const open = await runDoctor({ agents: { executionBackends: { local: { type: 'process', profiles: { wide: { egress: 'open' } } } } } });
    expect(open.checks.map((c) => c.check)).not.toContain('local: egress "none" isolation (unshare)');
  });
});
