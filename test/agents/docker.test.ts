/**
 * The five real coding agents from npm (pinned), each in a Docker worker: the image carries them
 * under /opt/agents the way `spawngate image build --agent <id>` puts them there (plus, for this
 * test, a bare repository to check out). The container has no network but loopback; the agent reaches the
 * mock model on the host's loopback only through spawngate's egress proxy and the profile's allow-list.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkerEvent } from '../../src/protocol/events.js';
import type { Spawngate } from '../../src/spawngate.js';
import { ensureEngine, engine, FIXTURE_REPO_IN_IMAGE } from '../docker/engine.js';
import { sha256 } from '../fixtures/mock-model.js';
import type { MockModel } from '../fixtures/mock-model.js';
import { AGENTS_IMAGE, agentRecipe, ALL_AGENTS, buildAgentsImage, startModel, writeModelKey } from './agents.js';
import { testGate } from '../helpers/gate.js';
import { callerFor, textOf } from '../helpers/turns.js';

const IMAGE = AGENTS_IMAGE;
const root = mkdtempSync(join(tmpdir(), 'sg-agents-docker-'));
const secretsDir = join(root, 'secrets');
const key = `model-key-${randomUUID()}`;
const caller = callerFor('agents-docker');
let mock: MockModel;
let gate: Spawngate;

beforeAll(async () => {
  await ensureEngine();
  const inImage = await buildAgentsImage(IMAGE);
  mock = await startModel();
  writeModelKey(secretsDir, key);
  const coder = { egress: 'proxy', egressAllow: [`127.0.0.2:${mock.port}`], workspace: { strategy: 'git', repo: FIXTURE_REPO_IN_IMAGE }, resources: { limits: { memory: '1Gi' } }, ttlSeconds: 900, timeoutSeconds: 600 };
  gate = await testGate('agents-docker', {
    agents: {
      executionBackends: { docker: { type: 'container', image: IMAGE, stateDir: join(root, 's'), secretsDir, profiles: { coder } } },
      execution: { default: { backend: 'docker', profile: 'coder' } },
      acp: Object.fromEntries(ALL_AGENTS.map((id) => [id, agentRecipe(id, inImage[id], mock.url.replace(/\/$/, ''))])),
    },
  });
}, 20 * 60_000);

afterAll(async () => {
  await gate?.shutdown();
  await mock?.close();
  rmSync(root, { recursive: true, force: true });
});

describe.each(ALL_AGENTS)('%s in a Docker worker', (agentId) => {
  it('answers, edits its git workspace once the policy allows it (collect gives the diff), and leaves nothing', async () => {
    const before = mock.requests.length;
    const handle = await gate.spawn({ agentId, caller });
    const seen: string[] = [];
    const turn = async (message: string): Promise<WorkerEvent[]> => {
      const events: WorkerEvent[] = [];
      for await (const e of handle.turn(message)) {
        events.push(e);
        seen.push(JSON.stringify(e));
      }
      return events;
    };
    try {
      const hello = await turn(`SAY hello from ${agentId} in a container`);
      expect(hello.at(-1), JSON.stringify(hello)).toMatchObject({ type: 'turn.completed' });
      expect(textOf(hello)).toContain(`hello from ${agentId} in a container`);

      const edit = await turn(`WRITE notes.txt written by ${agentId} in a container`);
      expect(edit.at(-1), JSON.stringify(edit)).toMatchObject({ type: 'turn.completed' });
      expect(edit.find((e) => e.type === 'permission.decided'), JSON.stringify(edit)).toMatchObject({ outcome: 'allow_once', by: 'gateway', code: 'allowed' });
      const collected = await gate.collect(handle.spawnId, { format: 'diff' });
      expect(collected.diff).toContain('+++ b/notes.txt');
      expect(collected.diff).toContain(`+written by ${agentId} in a container`);

      const calls = mock.requests.slice(before).filter((r) => r.reply !== null);
      expect(calls.length).toBeGreaterThan(0);
      for (const r of calls) expect(r.authSha256, `${r.dialect} ${r.path}`).toBe(sha256(key));
      seen.push(JSON.stringify(await handle.status()), ...(await handle.logs(1000)));
      expect(seen.join('\n').includes(key)).toBe(false);
    } finally {
      await handle.close();
    }
    const left = await engine().listContainers({ all: true, filters: { label: [`spawngate.io/spawn-id=${handle.spawnId}`] } });
    expect(left).toEqual([]);
    expect(existsSync(join(root, 's', handle.spawnId))).toBe(false);
  });
});
