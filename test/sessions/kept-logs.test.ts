/** The log of a worker that ended badly stays readable after the backend removed it (real process workers). */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Spawngate } from '../../src/spawngate.js';
import { testGate } from '../helpers/gate.js';

const fixture = fileURLToPath(new URL('../fixtures/acp-agent.ts', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'sg-logs-'));
// Workers run under uids of their own (the process backend's default, as root): they pass through here to their folders.
chmodSync(root, 0o711);
let gate: Spawngate;
const caller = { sessionKey: 'agent:main:logs', depth: 0, channel: { id: 'logs', kind: 'cli', interactive: true }, user: { id: 'logs', roles: [] } };

beforeAll(async () => {
  const base = { egress: 'none', ttlSeconds: 600, timeoutSeconds: 120 };
  gate = await testGate('logs', {
    agents: {
      executionBackends: {
        local: { type: 'process', stateDir: join(root, 's'), defaultProfile: 'ok', profiles: { ok: base, dies: { ...base, env: { ACP_FIXTURE_EXIT_AT_START: '7' } } } },
      },
      execution: { default: { backend: 'local', profile: 'ok' } },
      acp: { fixture: { command: [process.execPath, fixture] } },
    },
  });
});

afterAll(async () => {
  await gate?.shutdown();
  rmSync(root, { recursive: true, force: true });
});

describe('logs of gone workers', () => {
  it('a worker whose agent died at start-up: the spawn fails, the worker is removed, its log is still readable', async () => {
    const err = await gate.spawn({ agentId: 'fixture', caller, execution: { profile: 'dies' } }).then(
      () => null,
      (e: unknown) => e as Error,
    );
    const spawnId = /worker ([0-9a-f-]{36})/.exec(err?.message ?? '')?.[1];
    expect(spawnId, err?.message).toBeDefined();
    expect(await gate.list()).toEqual([]);
    const lines = await gate.logs(spawnId!);
    expect(lines.join('\n')).toContain('fixture: exiting at start-up with code 7');
  });

  it('a worker that died mid-session: closed as failed, its last lines readable; a cleanly closed one is just gone', async () => {
    const handle = await gate.spawn({ agentId: 'fixture', caller });
    for await (const e of handle.turn('stderr last words before the crash')) void e;
    for await (const e of handle.turn('crash')) void e;
    await expect.poll(async () => (await gate.status(handle.spawnId)).closeReason, { timeout: 30_000 }).toBe('failed');
    expect((await gate.logs(handle.spawnId)).join('\n')).toContain('last words before the crash');
    expect(await gate.logs(handle.spawnId, 1)).toHaveLength(1);

    const clean = await gate.spawn({ agentId: 'fixture', caller });
    await clean.close();
    await expect(gate.logs(clean.spawnId)).rejects.toMatchObject({ code: 'SPAWN_NOT_FOUND' });
  });
});
