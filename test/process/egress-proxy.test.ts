/**
 * Egress "proxy" on the process backend through spawngate's own proxy: the worker runs in an empty
 * network namespace with loopback, its only way out is the gateway's proxy socket, and the proxy
 * lets through the profile's egressAllow and nothing else. Targets are servers this test starts on
 * 127.0.0.2 (outside the worker's namespace: reachable only through the proxy).
 */
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { parseConfig } from '../../src/config/index.js';
import { startEgressProxy } from '../../src/backends/egress-proxy.js';
import { buildWorkerSpec } from '../../src/sessions/spec.js';
import { egressAllowed, parseEgressRule } from '../../src/egress-rules.js';
import type { EgressRule } from '../../src/egress-rules.js';
import type { Spawngate } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';
import { callerFor, textOf, turnEvents } from '../helpers/turns.js';
import { testGate } from '../helpers/gate.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'sg-egress-'));
// Workers run under uids of their own: they pass through here to their folders under stateDir.
chmodSync(root, 0o711);
// Not 127.0.0.1: that is the worker's own loopback (NO_PROXY); the gateway host's is reached at another 127.x address.
const HOST = '127.0.0.2';
const caller = callerFor('egress');
let gate: Spawngate;
const servers: Server[] = [];
let allowedPort = 0;
let otherPort = 0;

async function serve(body: string): Promise<number> {
  const server = createServer((_req, res) => res.end(`${body}\n`));
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  return (server.address() as { port: number }).port;
}

beforeAll(async () => {
  allowedPort = await serve('model api says hi');
  otherPort = await serve('you should not see this');
  gate = await testGate('egress', {
    agents: {
      executionBackends: { local: { type: 'process', stateDir: join(root, 's'), profiles: { proxied: { egress: 'proxy', egressAllow: [`${HOST}:${allowedPort}`] } } } },
      execution: { default: { backend: 'local', profile: 'proxied' } },
      acp: { fixture: { command: [process.execPath, fixture] } },
    },
  });
});

afterAll(async () => {
  await gate?.shutdown();
  for (const s of servers) s.close();
  rmSync(root, { recursive: true, force: true });
});

describe('egress proxy allow-lists', () => {
  const rules = (...patterns: string[]) => patterns.map((p) => parseEgressRule(p)).filter((r): r is EgressRule => r !== null);
  it('match hosts, ports and subdomains exactly', () => {
    const r = rules('api.openai.com', '*.anthropic.com:443', '127.0.0.1:8080', '[::1]:9000');
    expect(egressAllowed(r, 'api.openai.com', 443)).toBe(true);
    expect(egressAllowed(r, 'API.OpenAI.com.', 80)).toBe(true);
    expect(egressAllowed(r, 'api.openai.com', 8443)).toBe(false);
    expect(egressAllowed(r, 'evil-api.openai.com', 443)).toBe(false);
    expect(egressAllowed(r, 'api.anthropic.com', 443)).toBe(true);
    expect(egressAllowed(r, 'anthropic.com', 443)).toBe(false);
    expect(egressAllowed(r, 'xanthropic.com', 443)).toBe(false);
    expect(egressAllowed(r, '127.0.0.1', 8080)).toBe(true);
    expect(egressAllowed(r, '127.0.0.1', 8081)).toBe(false);
    expect(egressAllowed(r, '::1', 9000)).toBe(true);
  });
  it('are refused malformed, by path', () => {
    for (const bad of ['http://api.openai.com', 'api.openai.com:99999', 'a b', '*', '*.', '[zz]:1']) {
      expect(parseEgressRule(bad), bad).toBeNull();
      const config = { agents: { executionBackends: { l: { type: 'process', profiles: { p: { egress: 'proxy', egressAllow: [bad] } } } } } };
      expect(() => parseConfig(config), bad).toThrow(/agents\.executionBackends\.l\.profiles\.p\.egressAllow\[0\]/);
    }
    const k8s = { agents: { executionBackends: { k: { type: 'kubernetes', namespace: 'ns', image: 'i', profiles: { p: { egress: 'proxy', egressAllow: ['api.openai.com'] } } } } } };
    expect(() => parseConfig(k8s)).toThrow(/agents\.executionBackends\.k\.profiles\.p\.egressAllow: spawngate's own egress proxy serves process and container backends/);
  });
});

describe('the proxy itself', () => {
  /** Raw bytes over the proxy's socket: what an HTTP client sends to a proxy, and what comes back first. */
  function exchange(socketPath: string, text: string, until: RegExp): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = connect({ path: socketPath });
      let got = '';
      socket.on('data', (chunk: Buffer) => {
        got += chunk.toString();
        if (until.test(got)) {
          socket.destroy();
          resolve(got);
        }
      });
      socket.once('error', reject);
      socket.once('close', () => resolve(got));
      socket.write(text);
    });
  }

  it('tunnels CONNECT to an allowed host, refuses others with 403 naming the allow-list, and forwards plain HTTP', async () => {
    const socketPath = join(root, 'p.sock');
    const seen: string[] = [];
    const proxy = await startEgressProxy({ socketPath, allow: [`${HOST}:${allowedPort}`], onDecision: (d) => seen.push(`${d.allowed ? 'allowed' : 'refused'} ${d.method} ${d.port}`) });
    try {
      const tunnel = await exchange(socketPath, `CONNECT ${HOST}:${allowedPort} HTTP/1.1\r\nhost: ${HOST}:${allowedPort}\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`, /model api says hi/);
      expect(tunnel).toMatch(/^HTTP\/1\.1 200 Connection Established\r\n\r\nHTTP\/1\.1 200 OK/);
      const refused = await exchange(socketPath, `CONNECT ${HOST}:${otherPort} HTTP/1.1\r\n\r\n`, /allow-list/);
      expect(refused).toMatch(/^HTTP\/1\.1 403 Forbidden/);
      expect(refused).toContain(`${HOST}:${otherPort} is not on this worker's allow-list (${HOST}:${allowedPort})`);
      const plain = await exchange(socketPath, `GET http://${HOST}:${allowedPort}/x HTTP/1.1\r\nhost: ${HOST}\r\nconnection: close\r\n\r\n`, /model api says hi/);
      expect(plain).toMatch(/^HTTP\/1\.1 200 OK/);
      expect(await exchange(socketPath, 'CONNECT nonsense HTTP/1.1\r\n\r\n', /\n\n/)).toMatch(/^HTTP\/1\.1 400/);
      expect(seen).toEqual([`allowed CONNECT ${allowedPort}`, `refused CONNECT ${otherPort}`, `allowed GET ${allowedPort}`]);
    } finally {
      await proxy.close();
    }
  });

  it('survives agents that exit with its answer unread (their socket resets): no uncaught ECONNRESET', async () => {
    const socketPath = join(root, 'reset.sock');
    const proxy = await startEgressProxy({ socketPath, allow: [`${HOST}:${allowedPort}`] });
    const uncaught: unknown[] = [];
    const onUncaught = (err: unknown) => uncaught.push(err);
    process.on('uncaughtException', onUncaught);
    try {
      // A refused CONNECT, a malformed one and an open tunnel. Each client stops reading, then closes
      // with the proxy's answer still unread, which resets a unix socket as an agent's exit does.
      for (const request of [`CONNECT ${HOST}:${otherPort} HTTP/1.1\r\n\r\n`, 'CONNECT nonsense HTTP/1.1\r\n\r\n', `CONNECT ${HOST}:${allowedPort} HTTP/1.1\r\n\r\n`]) {
        await new Promise<void>((resolve) => {
          const socket = connect(socketPath, () => {
            socket.pause();
            socket.write(`${request}${'x'.repeat(100_000)}`, () => {
              socket.destroy();
              resolve();
            });
          });
          socket.on('error', () => undefined);
        });
      }
      // The proxy still serves, and nothing escaped as an uncaught exception.
      const again = await exchange(socketPath, `GET http://${HOST}:${allowedPort}/x HTTP/1.1\r\nhost: ${HOST}\r\nconnection: close\r\n\r\n`, /model api says hi/);
      expect(again).toMatch(/^HTTP\/1\.1 200 OK/);
      expect(uncaught).toEqual([]);
    } finally {
      process.off('uncaughtException', onUncaught);
      await proxy.close();
    }
  });
});

describe('egress "proxy" on the process backend', () => {
  it('lets the agent reach the allowed host through the proxy, and nothing else', async () => {
    const handle = await gate.spawn({ agentId: 'fixture', caller });
    try {
      const say = async (message: string) => textOf(await turnEvents(handle, message));
      expect(await say(`fetch http://${HOST}:${allowedPort}/v1/models`)).toBe('fetch 200 model api says hi');
      // The proxy answers 403; Node's fetch reports a refused proxy request as a failure (the log below names it).
      const refused = await say(`fetch http://${HOST}:${otherPort}/`);
      expect(refused).toMatch(/^fetch (failed: |403 )/);
      expect(refused).not.toContain('you should not see this');
      // No route around the proxy: the worker's namespace has loopback only.
      expect(await say(`connect ${HOST} ${allowedPort}`)).toMatch(/^connect failed: /);
      expect(await say('connect 1.1.1.1 443')).toMatch(/^connect failed: /);
      const logs = (await handle.logs(500)).join('\n');
      expect(logs).toMatch(new RegExp(`allowed (GET|CONNECT) 127\\.0\\.0\\.2:${allowedPort}`));
      expect(logs).toMatch(new RegExp(`refused (GET|CONNECT) 127\\.0\\.0\\.2:${otherPort}`));
    } finally {
      await handle.close();
    }
  });

  it('refuses a proxy profile without an allow-list, saying what to add', async () => {
    const g = await createSpawngate({
      sweepIntervalMs: 0,
      decisionLog: false,
      config: { agents: { executionBackends: { local: { type: 'process', stateDir: join(root, 's2'), profiles: { p: { egress: 'proxy' } } } }, acp: { fixture: { command: [process.execPath, fixture] } } } },
    });
    try {
      await expect(g.spawn({ agentId: 'fixture', caller })).rejects.toThrow(/egress "proxy" on process backend local needs the hosts it may reach \(the profile's egressAllow/);
    } finally {
      await g.shutdown();
    }
  });
});

describe('the allow-list the proxy applies', () => {
  it('is what the decision names; a decision from an older policy that names none falls back to the profile\'s', () => {
    const base = {
      spawnId: 's',
      owner: 'o',
      instanceId: 'i',
      backend: { type: 'process' as const },
      profile: { egress: 'proxy' as const, egressAllow: ['profile.example.com'] },
      agentId: 'fixture',
      agent: { command: null, env: {}, model: null },
      token: 't',
      now: new Date(0),
      traceparent: null,
    };
    const decision = { allow: true as const, backend: 'local', profile: 'p', egress: 'proxy' as const, ttlSeconds: 60, limits: { concurrency: [], rate: [] }, reasons: [] };
    expect(buildWorkerSpec({ ...base, decision: { ...decision, egressAllow: ['api.openai.com'] } }).egressAllow).toEqual(['api.openai.com']);
    expect(buildWorkerSpec({ ...base, decision }).egressAllow).toEqual(['profile.example.com']);
    expect(buildWorkerSpec({ ...base, decision: { ...decision, egress: 'none', egressAllow: ['api.openai.com'] } }).egressAllow).toEqual([]);
  });
});
