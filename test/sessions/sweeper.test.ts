import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createSpawngate } from '../../src/spawngate.js';

describe('sweeper', () => {
  const stateDir = mkdtempSync(join(tmpdir(), 'sg-sweep-'));
  const gatePromise = createSpawngate({
    config: { agents: { executionBackends: { local: { type: 'process', stateDir } } } },
    owner: 'sweeper-test',
    sweepIntervalMs: 0,
    decisionLog: false,
  });
  afterAll(async () => {
    await (await gatePromise).shutdown();
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('closes a live worker its backend no longer has, and frees its slots', async () => {
    const gate = await gatePromise;
    const handle = await gate.spawn({ agentId: 'echo', task: 'x', caller: { sessionKey: 's', channel: { id: 'c', kind: 'cli' }, user: { id: 'u' } } });
    expect(await gate.store.active()).toHaveLength(1);
    // Someone removes the worker behind the gateway's back: kill its process group, drop its state.
    process.kill(-Number(handle.nativeId), 'SIGKILL');
    rmSync(join(stateDir, handle.spawnId), { recursive: true, force: true });

    const dry = await gate.sweep({ dryRun: true });
    expect(dry.removed).toEqual([expect.objectContaining({ spawnId: handle.spawnId, reason: 'exited', deleted: false })]);
    expect(await gate.store.active()).toHaveLength(1);

    const report = await gate.sweep();
    expect(report.removed).toEqual([expect.objectContaining({ spawnId: handle.spawnId, reason: 'exited', deleted: true })]);
    expect(await gate.store.active()).toHaveLength(0);
    expect((await gate.status(handle.spawnId)).closeReason).toBe('failed');
  });
});
