/**
 * The Docker backend against a real engine, then the backend contract suite on it. Container starts
 * are kept few (vfs copies the whole image for each): one full worker with egress none, one with
 * egress open, two short probes and one memory hog; every other case is refused before anything is
 * created. One file, so the images are built once and containers never compete with each other.
 */
import { testWorkerSpec } from '../helpers/worker-spec.js';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, request } from 'node:http';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createDockerBackend } from '../../src/backends/docker/index.js';
import { LABELS } from '../../src/backends/types.js';
import { WORKER_EXIT_DEADLINE } from '../../src/protocol/events.js';
import type { Backend, WorkerEndpoint, WorkerRef, WorkerSpec, WorkerStatus } from '../../src/backends/types.js';
import { createWorkerClient } from '../../src/protocol/client.js';
import { waitForWorker } from '../../src/sessions/readiness.js';
import type { WorkerEvent } from '../../src/protocol/events.js';
import { describeBackendContract } from '../contract/backend-contract.js';
import { CONTRACT_IMAGE, engine, ensureEngine, ensureImages, fixtureInImage } from './engine.js';

// Every container start copies the image on vfs; on a loaded 2-core machine one scenario of the
// contract suite (two workers) can pass 30 s. The waits inside stay bounded by their own timeouts.
vi.setConfig({ testTimeout: 120_000 });

const owner = `docker-test-${randomUUID().slice(0, 8)}`;
const stateDir = mkdtempSync(join(tmpdir(), 'sgd-'));
const allowedRoot = mkdtempSync(join(tmpdir(), 'sgd-allowed-'));
const secretSource = { SPAWNGATE_SECRET_DEMO_API_TOKEN: 'value-from-gateway-env' };
let backend: Backend;
const created: WorkerRef[] = [];

function spec(overrides: Partial<WorkerSpec> = {}): WorkerSpec {
  return testWorkerSpec(
    {
      spawnId: `t-${randomUUID()}`,
      owner,
      backendName: 'docker-test',
      resources: { requests: { cpu: null, memory: null, ephemeralStorage: null }, limits: { cpu: '500m', memory: '256Mi', ephemeralStorage: null }, gpu: 0 },
    },
    overrides,
  );
}

async function createTracked(s: WorkerSpec): Promise<WorkerRef> {
  const ref = await backend.create(s);
  created.push(ref);
  return ref;
}

/** Polls status (bounded) until the container has stopped. */
async function stopped(ref: WorkerRef, timeoutMs = 60_000): Promise<WorkerStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await backend.status(ref);
    if (status.phase === 'failed' || status.phase === 'succeeded' || status.phase === 'gone') return status;
    if (Date.now() > deadline) throw new Error(`container ${ref.nativeId} still ${status.phase} after ${timeoutMs} ms`);
    await sleep(200);
  }
}

async function workerVolumes(spawnId: string): Promise<string[]> {
  const { Volumes } = await engine().listVolumes({ filters: { label: [`${LABELS.spawnId}=${spawnId}`] } });
  return (Volumes ?? []).map((v) => v.Name);
}

function rawStatus(endpoint: WorkerEndpoint, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const target = endpoint.socketPath !== undefined ? { socketPath: endpoint.socketPath } : { host: '127.0.0.1', port: Number(new URL(endpoint.baseUrl).port) };
    const req = request({ ...target, path: '/healthz', method: 'GET', headers }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.once('error', reject);
    req.end();
  });
}

async function collect(events: AsyncIterable<WorkerEvent>): Promise<WorkerEvent[]> {
  const out: WorkerEvent[] = [];
  for await (const e of events) out.push(e);
  return out;
}

/** A node -e program run as the container's command; prints one JSON line of findings. */
const NETWORK_PROBE = `
const fs = require('node:fs'), net = require('node:net'), os = require('node:os');
const routes = fs.readFileSync('/proc/net/route', 'utf8').trim().split('\\n').slice(1);
const write = (path) => { try { fs.writeFileSync(path, 'x'); return 'ok'; } catch (e) { return e.code; } };
const out = { interfaces: Object.keys(os.networkInterfaces()).sort(), routes: routes.length, workspace: write('/workspace/probe'), tmp: write('/tmp/probe'), root: write('/probe'), uid: process.getuid() };
const s = net.connect({ host: '127.0.0.1', port: Number(process.env.PROBE_PORT) });
const done = (connect) => { out.connect = connect; console.log(JSON.stringify(out)); process.exit(0); };
s.once('connect', () => done('connected'));
s.once('error', (e) => done(e.code));
setTimeout(() => done('timeout'), 5000);
`;

beforeAll(async () => {
  await ensureEngine();
  await ensureImages();
  backend = createDockerBackend({ name: 'docker-test', stateDir, allowedHostPaths: [allowedRoot], secretSource });
}, 600_000);

afterAll(async () => {
  for (const ref of created) await backend.delete(ref).catch(() => undefined);
  await backend.close?.();
  rmSync(stateDir, { recursive: true, force: true });
  rmSync(allowedRoot, { recursive: true, force: true });
}, 120_000);

describe('docker backend', () => {
  it('create → ready → healthz → turn with the echo agent → delete leaves nothing (egress none, ephemeral workspace)', async () => {
    const s = spec({
      workspace: { strategy: 'ephemeral', sizeLimit: null },
      secretEnv: [{ name: 'API_TOKEN', secretRef: { name: 'demo', key: 'api-token' } }],
      pidsLimit: 128,
    });
    await backend.validate(s);
    const ref = await createTracked(s);
    expect(ref).toMatchObject({ spawnId: s.spawnId, backendName: 'docker-test' });

    // Hardening and limits, as the engine reports them.
    const info = await engine().getContainer(ref.nativeId).inspect();
    expect(info.HostConfig).toMatchObject({
      ReadonlyRootfs: true,
      CapDrop: ['ALL'],
      NetworkMode: 'none',
      Memory: 256 * 2 ** 20,
      MemorySwap: 256 * 2 ** 20,
      NanoCpus: 500_000_000,
      PidsLimit: 128,
      AutoRemove: false,
      Privileged: false,
    });
    expect(info.HostConfig.SecurityOpt).toContain('no-new-privileges');
    // /tmp, and HOME apart from the workspace (owned by the worker's uid).
    expect(Object.keys(info.HostConfig.Tmpfs ?? {}).sort()).toEqual(['/home/spawngate', '/tmp']);
    expect(info.HostConfig.Tmpfs?.['/home/spawngate']).toMatch(/uid=10001,gid=10001,mode=0700/);
    expect(info.Config.User).toBe('10001:10001');
    expect(info.Config.Labels).toMatchObject({ [LABELS.spawnId]: s.spawnId, [LABELS.owner]: owner, [LABELS.backend]: 'docker-test', [LABELS.profile]: 'test' });
    expect(info.Config.Env).toEqual(expect.arrayContaining(['GREETING=hello', 'API_TOKEN=value-from-gateway-env', 'SPAWNGATE_LISTEN=unix:/run/spawngate/w.sock', 'HOME=/home/spawngate']));
    expect(await workerVolumes(s.spawnId)).toEqual([`spawngate-${s.spawnId}-workspace`]);

    // list by label finds it, with the expiry parsed back from the label.
    const listed = await backend.list({ [LABELS.spawnId]: s.spawnId });
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({ ref: { spawnId: s.spawnId, nativeId: ref.nativeId } });
    expect(listed[0]?.expiresAt?.getTime()).toBe(Math.floor(s.expiresAt.getTime() / 1000) * 1000);
    expect((await backend.list({ [LABELS.owner]: owner })).map((w) => w.ref.spawnId)).toContain(s.spawnId);
    expect(await backend.list({ [LABELS.owner]: `${owner}-someone-else` })).toEqual([]);

    const endpoint = await waitForWorker({ backend, ref, token: s.token, timeoutMs: 60_000 });
    expect(endpoint.socketPath).toBe(join(stateDir, s.spawnId, 'w.sock'));

    const client = createWorkerClient({ ...endpoint, token: s.token });
    expect(await client.healthz()).toMatchObject({ status: 'ok', agentId: 'echo' });
    // No token, or a wrong one: 401.
    expect(await rawStatus(endpoint, {})).toBe(401);
    await expect(createWorkerClient({ ...endpoint, token: 'wrong' }).healthz()).rejects.toMatchObject({ code: 'WORKER_UNAUTHORIZED' });

    const events = await collect(client.turn('hello from docker'));
    expect(events[0]?.type).toBe('turn.started');
    expect(events.at(-1)).toMatchObject({ type: 'turn.completed', stopReason: 'end_turn' });
    expect(events.flatMap((e) => (e.type === 'agent.message.delta' ? [e.text] : [])).join('')).toBe('echo: hello from docker');

    const status = await backend.status(ref);
    expect(status).toMatchObject({ nativeId: info.Id, phase: 'running', ready: true, reason: null, attributes: { 'container.id': info.Id } });
    expect((await backend.logs(ref, { tail: 50 })).some((line) => line.includes('"listening"'))).toBe(true);

    // A ref whose spawn id does not match the container's label deletes nothing.
    await expect(backend.delete({ ...ref, spawnId: 'another-spawn' })).rejects.toMatchObject({ details: { reason: 'LabelMismatch' } });
    expect((await backend.status(ref)).phase).toBe('running');

    await backend.delete(ref);
    await expect(engine().getContainer(ref.nativeId).inspect()).rejects.toMatchObject({ statusCode: 404 });
    expect(await workerVolumes(s.spawnId)).toEqual([]);
    expect(existsSync(join(stateDir, s.spawnId))).toBe(false);
    expect(await backend.list({ [LABELS.spawnId]: s.spawnId })).toEqual([]);
    expect(await backend.status(ref)).toMatchObject({ phase: 'gone', ready: false, reason: 'NotFound' });
    await backend.delete(ref); // idempotent
  });

  it('egress open publishes the worker on 127.0.0.1 only', async () => {
    const s = spec({ egress: 'open' });
    const ref = await createTracked(s);
    const endpoint = await waitForWorker({ backend, ref, token: s.token, timeoutMs: 60_000 });
    expect(endpoint.baseUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const info = await engine().getContainer(ref.nativeId).inspect();
    expect(info.NetworkSettings.Ports['8080/tcp']).toEqual([{ HostIp: '127.0.0.1', HostPort: new URL(endpoint.baseUrl ?? '').port }]);
    expect(await createWorkerClient({ ...endpoint, token: s.token }).healthz()).toMatchObject({ status: 'ok' });
    expect(await rawStatus(endpoint, { authorization: 'Bearer nope' })).toBe(401);
    await backend.delete(ref);
    await expect(engine().getContainer(ref.nativeId).inspect()).rejects.toMatchObject({ statusCode: 404 });
  });

  it('egress none leaves only loopback: no route, and a host-side listener is never reached', async () => {
    let connections = 0;
    const listener = createServer((socket) => {
      connections++;
      socket.destroy();
    });
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    const port = (listener.address() as AddressInfo).port;
    try {
      const probe = (egress: 'none' | 'open', workspace: WorkerSpec['workspace']) =>
        spec({ egress, workspace, command: ['/usr/local/bin/node', '-e', NETWORK_PROBE], env: { PROBE_PORT: String(port) } });
      const isolated = probe('none', { strategy: 'ephemeral', sizeLimit: null });
      // The same probe on a network, so the assertions below are shown able to tell the difference.
      const networked = probe('open', { strategy: 'ephemeral', sizeLimit: '16Mi' });
      const refs = [await createTracked(isolated), await createTracked(networked)];
      const results = [];
      for (const ref of refs) {
        const status = await stopped(ref);
        expect(status).toMatchObject({ phase: 'succeeded', reason: 'Completed', exitCode: 0 });
        const line = (await backend.logs(ref)).find((l) => l.startsWith('{'));
        results.push(JSON.parse(line ?? 'null') as Record<string, unknown>);
      }
      const [none, open] = results;
      expect(none).toMatchObject({ interfaces: ['lo'], routes: 0, connect: 'ECONNREFUSED', workspace: 'ok', tmp: 'ok', root: 'EROFS', uid: 10001 });
      expect(open?.['interfaces']).toContain('eth0');
      expect(open?.['routes']).toBeGreaterThan(0);
      expect(open).toMatchObject({ workspace: 'ok', root: 'EROFS' });
      expect(connections).toBe(0);
      for (const ref of refs) await backend.delete(ref);
      expect(await workerVolumes(isolated.spawnId)).toEqual([]);
      expect(await workerVolumes(networked.spawnId)).toEqual([]);
    } finally {
      listener.close();
    }
  });

  it('egress proxy without a proxy network goes through spawngate\'s proxy: the agent reaches the allowed host and nothing else', async () => {
    const hits: string[] = [];
    const serveOn = async (body: string) => {
      const server = createHttpServer((req, res) => {
        hits.push(`${body} ${req.url ?? ''}`);
        res.end(`${body}\n`);
      });
      // Not 127.0.0.1, which in the container is its own loopback (NO_PROXY): the host's loopback at another 127.x address.
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.2', resolve));
      return { server, port: (server.address() as AddressInfo).port };
    };
    const allowed = await serveOn('model');
    const other = await serveOn('other');
    try {
      const s = spec({ image: CONTRACT_IMAGE, agentCommand: ['/usr/local/bin/node', fixtureInImage], agentId: 'fixture', egress: 'proxy', egressAllow: [`127.0.0.2:${allowed.port}`] });
      await backend.validate(s);
      const ref = await createTracked(s);
      const info = await engine().getContainer(ref.nativeId).inspect();
      expect(info.HostConfig.NetworkMode).toBe('none');
      const endpoint = await waitForWorker({ backend, ref, token: s.token, timeoutMs: 60_000 });
      const client = createWorkerClient({ ...endpoint, token: s.token });
      const say = async (message: string) =>
        (await collect(client.turn(message))).map((e) => (e.type === 'agent.message.delta' ? e.text : '')).join('');
      expect(await say(`fetch http://127.0.0.2:${allowed.port}/v1/models`)).toBe('fetch 200 model');
      const refused = await say(`fetch http://127.0.0.2:${other.port}/`);
      expect(refused).toMatch(/^fetch (failed: |403 )/);
      expect(await say(`connect 127.0.0.2 ${other.port}`)).toMatch(/^connect failed: /);
      expect(hits).toEqual(['model /v1/models']);
      const logs = (await backend.logs(ref, { tail: 500 })).join('\n');
      expect(logs).toMatch(new RegExp(`refused (GET|CONNECT) 127\\.0\\.0\\.2:${other.port}`));
      await backend.delete(ref);
      expect(existsSync(join(stateDir, s.spawnId))).toBe(false);
    } finally {
      allowed.server.close();
      other.server.close();
    }
  });

  it('egress proxy needs an --internal network: the worker joins it, gets the proxy env and is reached over its socket', async () => {
    const suffix = randomUUID().slice(0, 8);
    const internal = await engine().createNetwork({ Name: `sg-test-internal-${suffix}`, Internal: true });
    const routed = await engine().createNetwork({ Name: `sg-test-routed-${suffix}` });
    try {
      const proxied = (network: string) => createDockerBackend({ name: 'docker-test', stateDir, proxy: { network, url: 'http://egress-proxy:3128' } });
      await expect(proxied(`sg-test-routed-${suffix}`).validate(spec({ egress: 'proxy' }))).rejects.toMatchObject({
        details: { field: 'egress', reason: 'EgressUnsupported' },
      });
      await expect(proxied(`sg-test-absent-${suffix}`).validate(spec({ egress: 'proxy' }))).rejects.toMatchObject({ details: { reason: 'EgressUnsupported' } });

      const viaProxy = proxied(`sg-test-internal-${suffix}`);
      const s = spec({ egress: 'proxy' });
      const ref = await viaProxy.create(s);
      created.push(ref);
      const endpoint = await waitForWorker({ backend: viaProxy, ref, token: s.token, timeoutMs: 60_000 });
      expect(endpoint.socketPath).toBe(join(stateDir, s.spawnId, 'w.sock'));
      const info = await engine().getContainer(ref.nativeId).inspect();
      expect(Object.keys(info.NetworkSettings.Networks)).toEqual([`sg-test-internal-${suffix}`]);
      expect(info.Config.Env).toEqual(expect.arrayContaining(['HTTPS_PROXY=http://egress-proxy:3128', 'HTTP_PROXY=http://egress-proxy:3128']));
      expect(info.NetworkSettings.Ports).toEqual({});
      await viaProxy.delete(ref);
      await expect(engine().getContainer(ref.nativeId).inspect()).rejects.toMatchObject({ statusCode: 404 });
    } finally {
      await internal.remove().catch(() => undefined);
      await routed.remove().catch(() => undefined);
    }
  });

  it('a worker past its memory limit is OOM-killed, and the readiness wait and status say so', async () => {
    const s = spec({
      resources: { requests: { cpu: null, memory: null, ephemeralStorage: null }, limits: { cpu: null, memory: '64Mi', ephemeralStorage: null }, gpu: 0 },
      command: ['/usr/local/bin/node', '-e', 'const keep = []; for (;;) keep.push(Buffer.alloc(8 << 20, 1));'],
    });
    const ref = await createTracked(s);
    await expect(waitForWorker({ backend, ref, token: s.token, timeoutMs: 60_000 })).rejects.toMatchObject({ code: 'BACKEND_FAILED', details: { reason: 'OOMKilled', exitCode: 137 } });
    const status = await stopped(ref);
    expect(status).toMatchObject({ phase: 'failed', ready: false, reason: 'OOMKilled', exitCode: 137 });
    await backend.delete(ref);
  });

  it('Docker has no run deadline of its own: the worker stops itself at timeoutSeconds and status says DeadlineExceeded', async () => {
    // No readiness wait: on a loaded engine the container may only start after its deadline, and must stop all the same.
    const s = spec({ timeoutSeconds: 4 });
    const ref = await createTracked(s);
    const status = await stopped(ref);
    expect(status).toMatchObject({ phase: 'failed', ready: false, reason: 'DeadlineExceeded', exitCode: WORKER_EXIT_DEADLINE });
    await backend.delete(ref);
  });

  it('a missing image is refused with a clear reason and nothing is created', async () => {
    const s = spec({ image: 'spawngate-worker:does-not-exist', workspace: { strategy: 'ephemeral', sizeLimit: null } });
    const expected = { code: 'BACKEND_FAILED', details: { reason: 'ImageNotFound', image: 'spawngate-worker:does-not-exist' } };
    await expect(backend.validate(s)).rejects.toMatchObject(expected);
    await expect(backend.validate(s)).rejects.toThrow(/image spawngate-worker:does-not-exist not found locally; run `spawngate image build`/);
    await expect(backend.create(s)).rejects.toMatchObject(expected);
    expect(await backend.list({ [LABELS.spawnId]: s.spawnId })).toEqual([]);
    expect(await engine().listContainers({ all: true, filters: { label: [`${LABELS.spawnId}=${s.spawnId}`] } })).toEqual([]);
    expect(await workerVolumes(s.spawnId)).toEqual([]);
    expect(existsSync(join(stateDir, s.spawnId))).toBe(false);
  });

  it('validate refuses what Docker cannot honour, naming the field, and creates nothing', async () => {
    const before = (await engine().listContainers({ all: true })).length;
    const cases: [Partial<WorkerSpec>, string, string][] = [
      [{ workspace: { strategy: 'hostPath', path: tmpdir() } }, 'workspace.path', 'HostPathNotAllowed'],
      [{ workspace: { strategy: 'hostPath', path: join(allowedRoot, 'missing') } }, 'workspace.path', 'HostPathNotFound'],
      [{ workspace: { strategy: 'volume', claimName: null, sizeLimit: null } }, 'workspace.claimName', 'Unsupported'],
      [{ workspace: { strategy: 'volume', claimName: `no-such-volume-${randomUUID()}`, sizeLimit: null } }, 'workspace.claimName', 'VolumeNotFound'],
      [{ egress: 'proxy' }, 'egress', 'EgressUnsupported'],
      [{ secretEnv: [{ name: 'KEY', secretRef: { name: 'absent', key: 'k' } }] }, 'env.KEY', 'SecretNotFound'],
      [{ resources: { requests: { cpu: null, memory: null, ephemeralStorage: null }, limits: { cpu: null, memory: '2GB', ephemeralStorage: null }, gpu: 0 } }, 'resources.limits.memory', 'InvalidSpec'],
      [{ resources: { requests: { cpu: '1', memory: null, ephemeralStorage: null }, limits: { cpu: '1m', memory: null, ephemeralStorage: null }, gpu: 0 } }, 'resources.limits.cpu', 'InvalidSpec'],
      [{ nodeSelector: { disk: 'ssd' } }, 'nodeSelector', 'Unsupported'],
      [{ runtimeClassName: 'no-such-runtime' }, 'runtimeClassName', 'RuntimeNotFound'],
    ];
    for (const [overrides, field, reason] of cases) {
      await expect(backend.validate(spec(overrides)), `${field} ${reason}`).rejects.toMatchObject({ code: 'BACKEND_FAILED', details: { field, reason } });
    }
    // The allowed cases pass.
    await backend.validate(spec({ workspace: { strategy: 'hostPath', path: allowedRoot } }));
    await backend.validate(spec({ resources: { requests: { cpu: '250m', memory: '64Mi', ephemeralStorage: null }, limits: { cpu: '2', memory: '2Gi', ephemeralStorage: '1Gi' }, gpu: 0 } }));
    expect((await engine().listContainers({ all: true })).length).toBe(before);
  });

  it('maps an unreachable engine to BACKEND_UNAVAILABLE, retryable', async () => {
    const nowhere = createDockerBackend({ name: 'nowhere', socketPath: join(stateDir, 'no-engine.sock'), stateDir });
    await expect(nowhere.list({})).rejects.toMatchObject({ code: 'BACKEND_UNAVAILABLE', retryable: true, details: { statusCode: null } });
  });
});

describeBackendContract({
  name: 'docker',
  backend: { type: 'container', image: CONTRACT_IMAGE },
  fixtureCommand: ['/usr/local/bin/node', fixtureInImage],
  readyTimeoutSeconds: 60,
  workerSpec: { image: CONTRACT_IMAGE },
  egressModes: ['none', 'open'],
});
