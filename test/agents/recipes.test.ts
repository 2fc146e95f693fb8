/**
 * The recipes of docs/agents.md for the other three agents (qwen-code, gemini-cli, opencode), each
 * set up by config alone: a text turn and an edit the policy allows, on the process backend, through
 * egress "proxy" to the mock model, the key a secretRef.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Spawngate } from '../../src/spawngate.js';
import { sha256 } from '../fixtures/mock-model.js';
import type { MockModel } from '../fixtures/mock-model.js';
import { agentRecipe, ensureAgents, RECIPE_AGENTS, startModel, writeModelKey } from './agents.js';
import { testGate } from '../helpers/gate.js';
import { callerFor, textOf, turnEvents } from '../helpers/turns.js';

const root = mkdtempSync(join(tmpdir(), 'sg-recipes-'));
// Workers run under uids of their own (the process backend's default, as root): they pass through here to their folders.
chmodSync(root, 0o711);
const secretsDir = join(root, 'secrets');
const key = `model-key-${randomUUID()}`;
const caller = callerFor('recipes');
let mock: MockModel;
let gate: Spawngate;

beforeAll(async () => {
  const argv = ensureAgents(RECIPE_AGENTS);
  mock = await startModel();
  writeModelKey(secretsDir, key);
  const coder = { egress: 'proxy', egressAllow: [`127.0.0.2:${mock.port}`], workspace: { strategy: 'ephemeral' }, ttlSeconds: 900, timeoutSeconds: 600 };
  gate = await testGate('recipes', {
    agents: {
      executionBackends: { local: { type: 'process', stateDir: join(root, 's'), secretsDir, profiles: { coder } } },
      execution: { default: { backend: 'local', profile: 'coder' } },
      acp: Object.fromEntries(RECIPE_AGENTS.map((id) => [id, agentRecipe(id, argv[id] ?? [], mock.url.replace(/\/$/, ''))])),
    },
  });
}, 20 * 60_000);

afterAll(async () => {
  await gate?.shutdown();
  await mock?.close();
  rmSync(root, { recursive: true, force: true });
});

describe.each(RECIPE_AGENTS)('the %s recipe', (agentId) => {
  it('answers a text turn and makes an edit the policy allows, with the key from a secretRef', async () => {
    const handle = await gate.spawn({ agentId, caller });
    try {
      const turn = (message: string) => turnEvents(handle, message);
      const hello = await turn(`SAY hello from ${agentId}`);
      expect(hello.at(-1), JSON.stringify(hello)).toMatchObject({ type: 'turn.completed' });
      expect(textOf(hello)).toContain(`hello from ${agentId}`);
      const edit = await turn(`WRITE notes.txt written by ${agentId}`);
      expect(edit.at(-1), JSON.stringify(edit)).toMatchObject({ type: 'turn.completed' });
      expect(edit.find((e) => e.type === 'permission.decided'), JSON.stringify(edit)).toMatchObject({ outcome: 'allow_once', by: 'gateway', code: 'allowed' });
      const files = await gate.collect(handle.spawnId, { format: 'archive' });
      const chunks: Buffer[] = [];
      for await (const c of files.stream) chunks.push(c as Buffer);
      // The edit is in the workspace: the file, with what the agent was told to write.
      const written = execFileSync('tar', ['-xzOf', '-', './notes.txt'], { input: Buffer.concat(chunks), encoding: 'utf8' });
      expect(written).toContain(`written by ${agentId}`);
      const calls = mock.requests.filter((r) => r.reply !== null && r.authSha256 !== null);
      expect(calls.length).toBeGreaterThan(0);
      for (const r of calls) expect(r.authSha256).toBe(sha256(key));
    } finally {
      await handle.close();
    }
  });
});
