/**
 * A warm pool on the Docker backend: containers started ahead, one claimed by a spawn (its id, its
 * token: the pool's, still in the container's environment, opens nothing), the engine's status
 * still ready, a replacement started, and nothing left once the gate shuts down. Docker labels are
 * fixed at create: a claimed container keeps the pool's expiry label, later than its spawn's, and
 * the worker stops itself at the spawn's deadline.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWorkerClient } from '../../src/protocol/client.js';
import type { Spawngate } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';
import { CONTRACT_IMAGE, engine, ensureEngine, ensureImages, fixtureInImage } from './engine.js';
import { say } from '../helpers/turns.js';

const owner = `dwarm-${randomUUID().slice(0, 8)}`;
let gate: Spawngate | null = null;
const caller = { sessionKey: 'agent:main:dwarm', depth: 0, channel: { id: 'dwarm', kind: 'cli', interactive: true }, user: { id: 'dwarm', roles: [] } };

beforeAll(async () => {
  await ensureEngine();
  await ensureImages();
  gate = await createSpawngate({
    owner,
    sweepIntervalMs: 0,
    decisionLog: false,
    warmPools: true,
    config: {
      agents: {
        executionBackends: {
          docker: {
            type: 'container',
            image: CONTRACT_IMAGE,
            defaultProfile: 'warm',
            profiles: { warm: { egress: 'none', ttlSeconds: 600, timeoutSeconds: 300, warmPool: { agents: ['fixture'], min: 1, maxIdleSeconds: 600 } } },
          },
        },
        execution: { default: { backend: 'docker', profile: 'warm' } },
        acp: { fixture: { command: ['/usr/local/bin/node', fixtureInImage] } },
      },
    },
  });
}, 600_000);

afterAll(async () => {
  await gate?.shutdown();
});

async function containersOf(): Promise<{ Id: string; Labels: Record<string, string> }[]> {
  return engine().listContainers({ all: true, filters: { label: [`spawngate.io/owner=${owner}`] } });
}

describe('warm pool on the Docker backend', () => {
  it('a spawn claims a warm container under its own token; the pool refills; shutdown leaves nothing', async () => {
    const g = gate as Spawngate;
    expect(await g.warmPoolsSettled(120_000)).toBe(true);
    expect(g.warmPools()[0]).toMatchObject({ idle: 1, lastError: null });
    const [warm] = await containersOf();
    const poolToken = (await engine().getContainer(warm!.Id).inspect()).Config.Env.find((e) => e.startsWith('SPAWNGATE_WORKER_TOKEN='))?.slice('SPAWNGATE_WORKER_TOKEN='.length);
    expect(poolToken).toBeTruthy();

    const handle = await g.spawn({ agentId: 'fixture', task: 'hi', caller });
    expect(handle.warm).toBe(true);
    expect(handle.nativeId).toBe(warm!.Id);
    expect(await say(handle, 'echo from a warm container')).toContain('warm container');
    await expect(createWorkerClient({ ...handle.endpoint, token: poolToken! }).status()).rejects.toMatchObject({ code: 'WORKER_UNAUTHORIZED' });
    // The engine only holds the pool's token, which the worker now refuses: that refusal is its answer.
    expect((await g.status(handle.spawnId)).backendStatus).toMatchObject({ phase: 'running', ready: true });

    expect(await g.warmPoolsSettled(120_000)).toBe(true);
    expect(await containersOf()).toHaveLength(2);
    await handle.close();
    await g.shutdown();
    gate = null;
    expect(await containersOf()).toEqual([]);
  }, 300_000);
});
