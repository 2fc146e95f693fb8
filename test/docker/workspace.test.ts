/**
 * A `git` workspace in a container: the worker image's own git clones a repository (a bare one baked
 * into the contract image, so no network is needed) before the agent starts, HOME is a tmpfs apart
 * from the workspace, and the diff and the archive of the agent's work come out before the container
 * goes. Nothing is left: no container, no volume.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Spawngate } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';
import { CONTRACT_IMAGE, engine, ensureEngine, ensureImages, FIXTURE_REPO_IN_IMAGE, fixtureInImage } from './engine.js';
import { say } from '../helpers/turns.js';

const owner = `dws-${randomUUID().slice(0, 8)}`;
let gate: Spawngate;
const caller = { sessionKey: 'agent:main:dws', depth: 0, channel: { id: 'dws', kind: 'cli', interactive: true }, user: { id: 'dws', roles: [] } };

beforeAll(async () => {
  await ensureEngine();
  await ensureImages();
  gate = await createSpawngate({
    owner,
    sweepIntervalMs: 0,
    decisionLog: false,
    config: {
      agents: {
        executionBackends: {
          docker: {
            type: 'container',
            image: CONTRACT_IMAGE,
            defaultProfile: 'git',
            profiles: {
              git: { egress: 'none', ttlSeconds: 600, timeoutSeconds: 120, workspace: { strategy: 'git', repo: FIXTURE_REPO_IN_IMAGE, ref: 'feature' } },
              badref: { egress: 'none', ttlSeconds: 600, timeoutSeconds: 120, workspace: { strategy: 'git', repo: FIXTURE_REPO_IN_IMAGE, ref: 'nope' } },
            },
          },
        },
        execution: { default: { backend: 'docker', profile: 'git' } },
        acp: { fixture: { command: ['/usr/local/bin/node', fixtureInImage] } },
      },
    },
  });
}, 600_000);

afterAll(async () => {
  await gate?.shutdown();
});

async function leftovers(): Promise<number> {
  const docker = engine();
  const containers = await docker.listContainers({ all: true, filters: { label: [`spawngate.io/owner=${owner}`] } });
  const volumes = (await docker.listVolumes({ filters: { label: [`spawngate.io/owner=${owner}`] } })).Volumes ?? [];
  return containers.length + volumes.length;
}

describe('git workspace on the Docker backend', () => {
  it('clones and checks out in the container, keeps HOME apart, and gives the diff and the archive', async () => {
    const handle = await gate.spawn({ agentId: 'fixture', caller });
    try {
      const where = await say(handle, 'where');
      expect(where).toBe('cwd=/workspace home=/home/spawngate');
      await say(handle, 'write README.md changed in a container');
      await say(handle, 'write notes/new.txt from the agent');
      const status = await gate.status(handle.spawnId);
      expect(status.worker?.workspace?.git).toMatchObject({ repo: FIXTURE_REPO_IN_IMAGE, ref: 'feature', base: expect.stringMatching(/^[0-9a-f]{40}$/) as unknown });
      const { diff, base } = await gate.collect(handle.spawnId, { format: 'diff' });
      expect(base).toBe(status.worker?.workspace?.git?.base);
      expect(diff).toContain('-hello');
      expect(diff).toContain('+changed in a container');
      expect(diff).toContain('+++ b/notes/new.txt');
      const { stream } = await gate.collect(handle.spawnId, { format: 'archive' });
      const chunks: Buffer[] = [];
      for await (const c of stream as AsyncIterable<Buffer>) chunks.push(c);
      const listing = execFileSync('tar', ['-tzf', '-'], { input: Buffer.concat(chunks), encoding: 'utf8' });
      expect(listing).toContain('./feature.txt');
      expect(listing).toContain('./notes/new.txt');
      expect(listing).not.toContain('./.git/');
    } finally {
      await handle.close();
    }
    expect(await leftovers()).toBe(0);
  });

  it('a ref the repository lacks fails the spawn with git\'s reason and leaves nothing', async () => {
    const err = await gate.spawn({ agentId: 'fixture', caller, execution: { profile: 'badref' } }).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/ref nope is not a branch, tag or commit/);
    expect(await leftovers()).toBe(0);
    expect(await gate.store.active()).toEqual([]);
  });
});
