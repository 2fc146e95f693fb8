/** MCP servers from the profile reach the agent's ACP session (session/new), in ACP's shape; literal credentials are refused by path. */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import type { Spawngate } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'sg-mcp-'));
let gate: Spawngate;
const caller = { sessionKey: 'agent:main:mcp', depth: 0, channel: { id: 'mcp', kind: 'cli', interactive: true }, user: { id: 'mcp', roles: [] } };
const servers = [
  { name: 'files', command: '/usr/local/bin/mcp-files', args: ['--root', '/workspace'], env: { LOG_LEVEL: 'debug' } },
  { type: 'http', name: 'docs', url: 'https://mcp.example.com/docs', headers: { 'X-Team': 'platform' } },
];

beforeAll(async () => {
  gate = await createSpawngate({
    owner: `mcp-${randomUUID().slice(0, 8)}`,
    sweepIntervalMs: 0,
    decisionLog: false,
    config: {
      agents: {
        executionBackends: { local: { type: 'process', stateDir: join(root, 's'), profiles: { p: { egress: 'none', mcpServers: servers } } } },
        execution: { default: { backend: 'local', profile: 'p' } },
        acp: { fixture: { command: [process.execPath, fixture] } },
      },
    },
  });
});

afterAll(async () => {
  await gate?.shutdown();
  rmSync(root, { recursive: true, force: true });
});

describe('MCP servers', () => {
  it('the profile\'s servers arrive in session/new as ACP McpServer objects', async () => {
    const handle = await gate.spawn({ agentId: 'fixture', caller });
    try {
      let text = '';
      for await (const e of handle.turn('mcp')) if (e.type === 'agent.message.delta') text += e.text;
      expect(JSON.parse(text)).toEqual([
        { name: 'files', command: '/usr/local/bin/mcp-files', args: ['--root', '/workspace'], env: [{ name: 'LOG_LEVEL', value: 'debug' }] },
        { type: 'http', name: 'docs', url: 'https://mcp.example.com/docs', headers: [{ name: 'X-Team', value: 'platform' }] },
      ]);
    } finally {
      await handle.close();
    }
  });

  it('refuses literal credentials in an MCP server\'s env or headers, by path', () => {
    const withServer = (server: unknown) => ({ agents: { executionBackends: { l: { type: 'process', profiles: { p: { mcpServers: [server] } } } } } });
    expect(() => parseConfig(withServer({ name: 'gh', command: 'gh-mcp', env: { GITHUB_TOKEN: 'x' } }))).toThrow(/profiles\.p\.mcpServers\[0\]\.env\.GITHUB_TOKEN/);
    expect(() => parseConfig(withServer({ type: 'http', name: 'd', url: 'https://x', headers: { Authorization: 'Bearer abc' } }))).toThrow(/mcpServers\[0\]\.headers\.Authorization/);
    expect(() => parseConfig(withServer({ type: 'sse', name: 'd', url: 'https://x' }))).toThrow(/mcpServers\[0\]/);
  });
});
