/**
 * Agents as configuration: `agents.acp.<id>` carries the command, env (literal or secretRef) and model,
 * overridden per backend and per profile, and a real worker gets exactly the layered result.
 */
import { createHash, randomUUID } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, resolveAgent } from '../../src/config/index.js';
import type { Spawngate } from '../../src/spawngate.js';
import { callerFor, say as sayTo } from '../helpers/turns.js';
import { testGate } from '../helpers/gate.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'sg-agents-'));
// Workers run under uids of their own (the process backend's default, as root): they pass through here to their folders.
chmodSync(root, 0o711);
const secretsDir = join(root, 'secrets');
const key = `k3y-${randomUUID()}`;
const sha = (v: string) => createHash('sha256').update(v).digest('hex');
const caller = callerFor('agents');
let gate: Spawngate;

const config = {
  agents: {
    executionBackends: {
      local: { type: 'process', stateDir: join(root, 's'), secretsDir, profiles: { plain: { egress: 'none' }, tuned: { egress: 'none', env: { MODEL_BASE_URL: 'http://profile.invalid' } } } },
    },
    execution: { default: { backend: 'local', profile: 'plain' } },
    acp: {
      fixture: {
        command: [process.execPath, fixture],
        env: { MODEL_BASE_URL: 'http://127.0.0.1:9/v1', FIXTURE_API_KEY: { secretRef: { name: 'model', key: 'api-key' } } },
        model: 'fast-model',
        profiles: { tuned: { env: { FIXTURE_MODE: 'tuned' }, model: 'big-model' } },
      },
    },
  },
};

beforeAll(async () => {
  mkdirSync(join(secretsDir, 'model'), { recursive: true });
  writeFileSync(join(secretsDir, 'model', 'api-key'), key, { mode: 0o600 });
  gate = await testGate('agents', config);
});

afterAll(async () => {
  await gate?.shutdown();
  rmSync(root, { recursive: true, force: true });
});

async function say(profile: string, message: string): Promise<string> {
  const handle = await gate.spawn({ agentId: 'fixture', caller, execution: { profile } });
  try {
    return await sayTo(handle, message);
  } finally {
    await handle.close();
  }
}

describe('agents as configuration', () => {
  it('layers the agent, its backend override and its profile override', () => {
    const parsed = parseConfig({
      ...config,
      agents: { ...config.agents, acp: { fixture: { ...config.agents.acp.fixture, backends: { local: { command: ['/opt/agent/bin/fixture'], env: { MODEL_BASE_URL: 'http://backend.invalid' } } } } } },
    });
    expect(resolveAgent(parsed, 'fixture', 'local', 'plain')).toEqual({
      command: ['/opt/agent/bin/fixture'],
      env: { MODEL_BASE_URL: 'http://backend.invalid', FIXTURE_API_KEY: { secretRef: { name: 'model', key: 'api-key' } } },
      model: 'fast-model',
    });
    expect(resolveAgent(parsed, 'fixture', 'local', 'tuned')).toMatchObject({ env: { FIXTURE_MODE: 'tuned', MODEL_BASE_URL: 'http://backend.invalid' }, model: 'big-model' });
    expect(resolveAgent(parsed, 'nobody', 'local', 'plain')).toEqual({ command: null, env: {}, model: null });
  });

  it('gives a real worker the agent\'s env over the profile\'s, its secret, and its model', async () => {
    expect(await say('tuned', 'hasenv MODEL_BASE_URL')).toBe(`MODEL_BASE_URL sha256=${sha('http://127.0.0.1:9/v1')}`);
    expect(await say('tuned', 'hasenv FIXTURE_MODE')).toBe(`FIXTURE_MODE sha256=${sha('tuned')}`);
    expect(await say('plain', 'hasenv FIXTURE_MODE')).toBe('FIXTURE_MODE unset');
    expect(await say('plain', 'hasenv FIXTURE_API_KEY')).toBe(`FIXTURE_API_KEY sha256=${sha(key)}`);
    expect(await say('tuned', 'hasenv SPAWNGATE_SESSION_MODEL')).toBe(`SPAWNGATE_SESSION_MODEL sha256=${sha('big-model')}`);
  });

  it('refuses literal keys, unknown backends and profiles, by path', () => {
    const withAgent = (agent: Record<string, unknown>) => ({ agents: { ...config.agents, acp: { fixture: { command: ['x'], ...agent } } } });
    expect(() => parseConfig(withAgent({ env: { OPENAI_API_KEY: 'sk-live-0123456789abcdefghij' } }))).toThrow(/agents\.acp\.fixture\.env\.OPENAI_API_KEY/);
    expect(() => parseConfig(withAgent({ backends: { elsewhere: { model: 'm' } } }))).toThrow(/agents\.acp\.fixture\.backends\.elsewhere: unknown backend "elsewhere" \(declared: local\)/);
    expect(() => parseConfig(withAgent({ profiles: { tunde: { model: 'm' } } }))).toThrow(/agents\.acp\.fixture\.profiles\.tunde: no backend declares a profile "tunde"/);
    expect(() => parseConfig(withAgent({ profiles: { tuned: { command: [] } } }))).toThrow(/agents\.acp\.fixture\.profiles\.tuned\.command/);
  });
});
