/**
 * Fault injection on the Docker backend (issue 7, item 8): kill -9 of `spawngate serve` (container
 * backend, Redis store) at chosen and random instants while 2-3 spawns are on their way, then a
 * survivor of the same owner group. After the dead instance's leases lapsed and one sweep, nothing
 * of that owner may be left: no container (`docker ps -a --filter label=spawngate.io/owner=…`), no
 * workspace volume, no socket folder under the backend's state dir, and no slot in Redis.
 *
 * Workers run with egress none and an ephemeral workspace, so each one is three things on the
 * engine's host — socket folder, labelled volume, labelled container — made in that order by
 * create(). The kill instants (see faults-helpers.ts): the first lease (nothing made yet), the
 * first socket folder (create under way), the first container created, the first container
 * started (both between create and ready), a random instant, and a moment after the first 201.
 */
import { readdir } from 'node:fs/promises';
import { mkdtempSync, rmSync, watch } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { buildWorkerImage } from '../../src/backends/docker/image.js';
import { createDockerBackend } from '../../src/backends/docker/index.js';
import { LABELS } from '../../src/backends/types.js';
import { ensureRedis, rawClient } from '../redis/server.js';
import { engine, ensureEngine, WORKER_IMAGE } from './engine.js';
import type { EngineObject, FaultTarget, KillMode, SuiteContext, TrialEnv } from './faults-helpers.js';
import { expectSuite, runSuite } from './faults-helpers.js';

const BACKEND = 'docker';
const docker = engine();

function statusCodeOf(err: unknown): number | null {
  const code = (err as { statusCode?: unknown } | null)?.statusCode;
  return typeof code === 'number' ? code : null;
}

const ownerFilter = (env: TrialEnv) => ({ label: [`${LABELS.owner}=${env.owner}`] });

const target: FaultTarget = {
  suite: 'docker-kill-serve',
  backendName: BACKEND,
  agentId: 'echo',
  backendConfig: (env) => ({
    type: 'container',
    stateDir: env.stateDir,
    image: WORKER_IMAGE,
    defaultProfile: 'small',
    profiles: {
      small: {
        egress: 'none',
        workspace: { strategy: 'ephemeral' },
        ttlSeconds: 600,
        timeoutSeconds: 180,
        resources: { limits: { cpu: '500m', memory: '256Mi' } },
      },
    },
  }),

  async census(env) {
    const containers = await docker.listContainers({ all: true, filters: ownerFilter(env) });
    const { Volumes } = await docker.listVolumes({ filters: ownerFilter(env) });
    const dirs = await readdir(env.stateDir).catch(() => [] as string[]);
    const objects: EngineObject[] = [
      ...containers.map((c) => ({ kind: 'container', name: c.Names[0]?.replace(/^\//, '') ?? c.Id, spawnId: c.Labels[LABELS.spawnId] ?? null, primary: true, state: c.State })),
      ...(Volumes ?? []).map((v) => ({ kind: 'volume', name: v.Name, spawnId: v.Labels?.[LABELS.spawnId] ?? null, primary: false, state: null })),
      // A socket folder is named by the spawn's key, which is the spawn id itself for a UUID.
      ...dirs.map((d) => ({ kind: 'socket-dir', name: join(env.stateDir, d), spawnId: d, primary: false, state: null })),
    ];
    return objects;
  },

  async listed(env) {
    const backend = createDockerBackend({ name: BACKEND, stateDir: env.stateDir });
    try {
      return (await backend.list({ [LABELS.owner]: env.owner })).map((w) => w.ref.spawnId);
    } finally {
      await backend.close?.();
    }
  },

  async watch(env, event, onFirst) {
    let done = false;
    const once = (what: string) => {
      if (done) return;
      done = true;
      onFirst(what);
    };
    if (event === 'socket-dir') {
      // The first thing create() makes (egress none): the folder bound at /run/spawngate.
      const watcher = watch(env.stateDir, (_type, name) => {
        if (name) once(`socket-dir ${name}`);
      });
      return () => watcher.close();
    }
    const action = { 'container-create': 'create', 'container-start': 'start' }[event];
    if (!action) throw new Error(`unknown docker event ${event}`);
    const stream = (await docker.getEvents({ filters: { type: ['container'], event: [action], ...ownerFilter(env) } })) as NodeJS.ReadableStream & { destroy(): void };
    stream.on('data', () => once(event));
    stream.on('error', () => undefined);
    return () => stream.destroy();
  },

  async forceRemove(env) {
    const containers = await docker.listContainers({ all: true, filters: ownerFilter(env) });
    const { Volumes } = await docker.listVolumes({ filters: ownerFilter(env) });
    for (const c of containers) {
      await docker
        .getContainer(c.Id)
        .remove({ force: true, v: true })
        .catch((err: unknown) => {
          if (statusCodeOf(err) !== 404 && statusCodeOf(err) !== 409) throw err;
        });
    }
    for (const v of Volumes ?? []) {
      await docker
        .getVolume(v.Name)
        .remove()
        .catch((err: unknown) => {
          if (statusCodeOf(err) !== 404) throw err;
        });
    }
    // Socket folders go with the state dir, which the trial removes itself (after this).
    const dirs = await readdir(env.stateDir).catch(() => [] as string[]);
    return containers.length + (Volumes ?? []).length + dirs.length;
  },
};

const TRIALS: readonly KillMode[] = [
  { kind: 'lease' },
  { kind: 'event', event: 'container-create' },
  { kind: 'ready', jitterMs: 300 },
  { kind: 'event', event: 'socket-dir' },
  { kind: 'random', maxMs: 6_000 },
  { kind: 'event', event: 'container-start' },
  { kind: 'random', maxMs: 6_000 },
  { kind: 'random', maxMs: 6_000 },
];

let ctx: SuiteContext;
let raw: Redis | undefined;
let cache = '';

beforeAll(async () => {
  await ensureEngine();
  await buildWorkerImage({ log: (line) => void process.stdout.write(`image: ${line}\n`) });
  const redisUrl = await ensureRedis();
  raw = await rawClient();
  cache = mkdtempSync(join(tmpdir(), 'sgf-cc-'));
  ctx = { redisUrl, raw, compileCache: cache };
}, 600_000);

afterAll(async () => {
  await raw?.quit();
  if (cache) rmSync(cache, { recursive: true, force: true });
});

describe('fault injection: kill -9 of serve during spawns (Docker backend, Redis)', () => {
  it(`${TRIALS.length} trials: after one lease period and one sweep, 0 containers, volumes, socket folders and slots`, { timeout: 480_000 }, async () => {
    const outcome = await runSuite(target, ctx, {
      modes: TRIALS,
      // Each trial mostly waits (container starts copy the image on vfs, the lease); two at once keep the engine busy without starving it.
      parallel: 2,
      serveSurvivors: [4],
      maxExtraTrials: 2,
      aim: { beforeCreate: { kind: 'lease' }, createdNotReady: { kind: 'event', event: 'container-create' }, ready: { kind: 'ready', jitterMs: 300 } },
    });
    expectSuite(outcome, TRIALS.length);
  });
});
