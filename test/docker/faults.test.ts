/**
 * Fault injection on the Docker backend (issue 7, item 8): kill -9 of `spawngate serve` (container
 * backend, Redis store) at chosen and random instants while 2-3 spawns are on their way, then a
 * survivor of the same owner group. After the dead instance's leases lapsed and one sweep, nothing
 * of that owner may be left: no container (`docker ps -a --filter label=spawngate.io/owner=…`), no
 * workspace volume (labelled, or named after one of its spawns), no socket folder under the
 * backend's state dir, and no slot in Redis.
 *
 * Workers run with egress none and an ephemeral workspace, so each one is three things on the
 * engine's host — socket folder, labelled volume, labelled container — made in that order by
 * create(). The kill instants (see faults-helpers.ts): the first lease (nothing made yet), the
 * first socket folder (create under way), the first container created, the first container
 * started (both between create and ready), random instants, and a moment after the first 201.
 *
 * Each trial's serve reaches the engine through a pass-through socket (engine-proxy.ts) that tells
 * which engine calls the dead serve still had running: the engine carries out a container create
 * whose client died (on vfs it copies the image for seconds, longer than the test lease), so
 * the trial waits for those answers before it takes stock and lets the survivor sweep. With a real
 * lease (30 s) such calls end long before it lapses. With the short one and no wait, a sweep can race
 * one: it removes the workspace volume, then the engine finishes the create and makes the container
 * and the volume again. Both carry the spawn's labels (the mount names them), so a later sweep finds
 * them; the wait keeps that race out of these trials so that they measure the kill itself.
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
import { within } from '../redis/faults/harness.js';
import { ensureRedis, rawClient } from '../redis/server.js';
import type { EngineProxy } from './engine-proxy.js';
import { startEngineProxy } from './engine-proxy.js';
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

/**
 * Everything of a trial on the engine's host: containers and volumes with its owner label, and —
 * because the engine makes a volume that a container names but that does not exist, without any
 * label — containers and volumes named after one of its spawn ids; plus its socket folders.
 */
async function dockerObjects(env: TrialEnv): Promise<{ object: EngineObject; remove: () => Promise<unknown> }[]> {
  const labelled = await docker.listContainers({ all: true, filters: ownerFilter(env) });
  const named = env.spawnIds.size ? await docker.listContainers({ all: true, filters: { name: [...env.spawnIds].map((id) => `spawngate-${id}`) } }) : [];
  const containers = new Map([...labelled, ...named].map((c) => [c.Id, c]));
  const { Volumes: labelledVolumes } = await docker.listVolumes({ filters: ownerFilter(env) });
  const { Volumes: allVolumes } = env.spawnIds.size ? await docker.listVolumes() : { Volumes: [] };
  const names = new Set([...env.spawnIds].map((id) => `spawngate-${id}-workspace`));
  const volumes = new Map([...(labelledVolumes ?? []), ...(allVolumes ?? []).filter((v) => names.has(v.Name))].map((v) => [v.Name, v]));
  const dirs = await readdir(env.stateDir).catch(() => [] as string[]);
  return [
    ...[...containers.values()].map((c) => ({
      object: { kind: 'container', name: c.Names[0]?.replace(/^\//, '') ?? c.Id, spawnId: c.Labels[LABELS.spawnId] ?? null, primary: true, state: c.State },
      remove: () => docker.getContainer(c.Id).remove({ force: true, v: true }),
    })),
    ...[...volumes.values()].map((v) => {
      const spawnId = v.Labels?.[LABELS.spawnId] ?? null;
      return {
        object: { kind: spawnId ? 'volume' : 'volume(unlabelled)', name: v.Name, spawnId: spawnId ?? v.Name.replace(/^spawngate-/, '').replace(/-workspace$/, ''), primary: false, state: null },
        remove: () => docker.getVolume(v.Name).remove(),
      };
    }),
    // A socket folder is named by the spawn's key, which is the spawn id itself for a UUID; the
    // trial removes the state dir itself (after the force removal).
    ...dirs.map((d) => ({ object: { kind: 'socket-dir', name: join(env.stateDir, d), spawnId: d, primary: false, state: null }, remove: () => Promise.resolve() })),
  ];
}

/** Each trial's serve talks to the engine through a proxy of its own (engine-proxy.ts). */
const proxies = new Map<number, EngineProxy>();

function proxyOf(env: TrialEnv): EngineProxy {
  const proxy = proxies.get(env.n);
  if (!proxy) throw new Error(`trial ${env.n} has no engine proxy`);
  return proxy;
}

const target: FaultTarget = {
  suite: 'docker-kill-serve',
  backendName: BACKEND,
  agentId: 'echo',

  async prepare(env, cleanup) {
    const proxy = await startEngineProxy(join(env.workDir, 'engine.sock'));
    proxies.set(env.n, proxy);
    cleanup.add('close the engine proxy', async () => {
      proxies.delete(env.n);
      await proxy.close();
    });
  },

  async settle(env, killedAt) {
    const proxy = proxyOf(env);
    const inflightAtKill = proxy.inflight();
    await within(proxy.idle(), `the engine to answer the ${inflightAtKill} call(s) the killed serve had in flight`, 180_000);
    return { inflightAtKill, settleMs: Date.now() - killedAt };
  },

  backendConfig: (env) => ({
    type: 'container',
    socketPath: proxyOf(env).socketPath,
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
    return (await dockerObjects(env)).map((o) => o.object);
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
    const found = await dockerObjects(env);
    for (const { object, remove } of found) {
      await remove().catch((err: unknown) => {
        const code = statusCodeOf(err);
        if (code !== 404 && code !== 409) throw new Error(`removing ${object.kind} ${object.name}: ${(err as Error).message}`, { cause: err });
      });
    }
    return found.map(({ object }) => `${object.kind}/${object.name}${object.state ? ` (${object.state})` : ''}`);
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
