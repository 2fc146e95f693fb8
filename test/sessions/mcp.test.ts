/** MCP servers from the profile reach the agent's ACP session (session/new), in ACP's shape; literal credentials are refused by path. */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/index.js';
import type { Spawngate } from '../../src/spawngate.js';
import { testGate } from '../helpers/gate.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'sg-mcp-'));
// Workers run under uids of their own (the process backend's default, as root): they pass through here to their folders.
chmodSync(root, 0o711);
let gate: Spawngate;
const caller = { sessionKey: 'agent:main:mcp', depth: 0, channel: { id: 'mcp', kind: 'cli', interactive: true }, user: { id: 'mcp', roles: [] } };
const servers = [
  { name: 'files', command: '/usr/local/bin/mcp-files', args: ['--root', '/workspace'], env: { LOG_LEVEL: 'debug' } },
  { type: 'http', name: 'docs', url: 'https://mcp.example.com/docs', headers: { 'X-Team': 'platform' } },
];

beforeAll(async () => {
  gate = await testGate('mcp', {
    agents: {
      executionBackends: {
        local: {
          type: 'process',
          stateDir: join(root, 's'),
          profiles: { p: { egress: 'none', mcpServers: servers }, open: { egress: 'none', mcpServers: servers, accept: { mcpServers: true } } },
        },
      },
      execution: { default: { backend: 'local', profile: 'p' } },
      acp: { fixture: { command: [process.execPath, fixture] } },
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

  it('a request\'s servers are added where the profile accepts them (the profile\'s own win on a name), and dropped elsewhere', async () => {
    const mcpServers = [
      { name: 'files', command: '/tmp/not-the-operators-files' },
      { type: 'http' as const, name: 'tickets', url: 'https://mcp.example.com/tickets' },
    ];
    const asked = (profile: string) => gate.spawn({ agentId: 'fixture', caller, execution: { profile }, mcpServers });
    for (const [profile, names] of [['open', ['files', 'docs', 'tickets']], ['p', ['files', 'docs']]] as const) {
      const handle = await asked(profile);
      try {
        let text = '';
        for await (const e of handle.turn('mcp')) if (e.type === 'agent.message.delta') text += e.text;
        const got = JSON.parse(text) as { name: string; command?: string }[];
        expect(got.map((m) => m.name), profile).toEqual(names);
        expect(got.find((m) => m.name === 'files')?.command).toBe('/usr/local/bin/mcp-files');
        expect(handle.dropped).toEqual(profile === 'p' ? ['mcpServers.files', 'mcpServers.tickets'] : []);
      } finally {
        await handle.close();
      }
    }
    await expect(gate.spawn({ agentId: 'fixture', caller, mcpServers: [{ type: 'http', name: 'x', url: 'https://x', headers: { Authorization: 'Bearer abc' } }] })).rejects.toThrow(/mcpServers\[0\]\.headers\.Authorization/);
  });

  it('refuses literal credentials in an MCP server\'s env or headers, by path', () => {
    const withServer = (server: unknown) => ({ agents: { executionBackends: { l: { type: 'process', profiles: { p: { mcpServers: [server] } } } } } });
    expect(() => parseConfig(withServer({ name: 'gh', command: 'gh-mcp', env: { GITHUB_TOKEN: 'x' } }))).toThrow(/profiles\.p\.mcpServers\[0\]\.env\.GITHUB_TOKEN/);
    expect(() => parseConfig(withServer({ type: 'http', name: 'd', url: 'https://x', headers: { Authorization: 'Bearer abc' } }))).toThrow(/mcpServers\[0\]\.headers\.Authorization/);
    expect(() => parseConfig(withServer({ type: 'sse', name: 'd', url: 'https://x' }))).toThrow(/mcpServers\[0\]/);
  });
});
