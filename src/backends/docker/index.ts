/**
 * The container backend on a Docker Engine (dockerode, loaded on first use).
 *
 * One worker = one container named `spawngate-<spawn key>`, labelled with LABELS, plus:
 *   - egress none/proxy: a host folder `<stateDir>/<spawn key>` bound at /run/spawngate where the
 *     worker listens on a unix socket (a container without network has nothing else to be reached by);
 *   - egress open: the worker port published on 127.0.0.1 only, on a random host port;
 *   - workspace ephemeral: a named volume `spawngate-<spawn key>-workspace`, labelled like the container.
 * The engine is the source of truth: every ref can be rebuilt from list(), and status/running read
 * endpoints and tokens back from `inspect`, so nothing lives only in this object's memory. Labels are
 * set at create, so list() sees a container from the moment it exists.
 * See docs/docker.md for the mapping of each profile field.
 */
import { chmod, chown, lstat, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ContainerInfo, ContainerInspectInfo } from 'dockerode';
import { BackendError } from '../../errors.js';
import type { Backend, ListedWorker, WorkerEndpoint, WorkerPhase, WorkerRef, WorkerSpec, WorkerStatus } from '../types.js';
import { WORKER_EXIT_DEADLINE } from '../../protocol/events.js';
import { BACKEND_SPEC_VERSION, LABELS } from '../types.js';
import { createWorkerClient } from '../../protocol/client.js';
import type { DockerClient } from './client.js';
import { connectDocker, engineCall, engineCallOr404, engineStatus, toBackendError } from './client.js';
import { defaultWorkerImage, WORKER_IMAGE_REPOSITORY } from './image.js';
import { logLines } from './logs.js';
import { resolveHostPath } from '../host-path.js';
import { egressLogLine, startEgressProxy } from '../egress-proxy.js';
import type { EgressDecision, EgressProxy } from '../egress-proxy.js';
import type { ProxyOptions, WorkerPlan } from './plan.js';
import { EGRESS_SOCKET_NAME, planError, planWorker, SOCKET_MOUNT, SOCKET_NAME, socketDirOf, volumeNameOf, WORKER_PORT, WORKER_UID, WORKSPACE_MOUNT } from './plan.js';

export type { ProxyOptions } from './plan.js';
export { buildWorkerImage, defaultWorkerImage, WORKER_IMAGE_REPOSITORY } from './image.js';
export type { BuildWorkerImageOptions, BuiltWorkerImage } from './image.js';

export interface DockerBackendOptions {
  /** The configured name (`agents.executionBackends.<name>`). */
  name: string;
  /** Engine socket; default DOCKER_HOST or /var/run/docker.sock. */
  socketPath?: string;
  /** Image when a profile names none; default `spawngate-worker:<package version>`. */
  image?: string;
  /** Host folders a profile may bind as its workspace (`workspace: { strategy: hostPath }`). */
  allowedHostPaths?: readonly string[];
  /**
   * Where per-worker socket folders are made. Must be on the engine's host (they are bind-mounted)
   * and short: unix socket paths max out at 107 bytes. Default $XDG_STATE_HOME/spawngate/docker.
   */
  stateDir?: string;
  /** Enables egress "proxy": workers join this internal network and get HTTP(S)_PROXY. */
  proxy?: ProxyOptions;
  /** Bound on each Engine API call; default 120 s (container create copies the image on vfs). */
  requestTimeoutMs?: number;
  /** Where secret references are looked up (SPAWNGATE_SECRET_<NAME>_<KEY>); default process.env. */
  secretSource?: Readonly<Record<string, string | undefined>>;
  /** Folder of `<name>/<key>` files where secret references are looked up first (then SPAWNGATE_SECRET_* variables). */
  secretsDir?: string;
}

export function defaultDockerStateDir(): string {
  return join(process.env['XDG_STATE_HOME'] ?? join(homedir(), '.local', 'state'), 'spawngate', 'docker');
}

const HEALTH_PROBE_TIMEOUT_MS = 2_000;
const STOP_GRACE_SECONDS = 2;

function envOf(info: ContainerInspectInfo, name: string): string | null {
  const prefix = `${name}=`;
  const entry = info.Config.Env?.find((e) => e.startsWith(prefix));
  return entry === undefined ? null : entry.slice(prefix.length);
}

function phaseOfState(state: string, exitCode: number | null, oomKilled: boolean): WorkerPhase {
  switch (state) {
    case 'created':
      return 'pending';
    case 'restarting':
      return 'starting';
    case 'running':
      return 'running';
    case 'removing':
      return 'gone';
    case 'exited':
      return exitCode === 0 && !oomKilled ? 'succeeded' : 'failed';
    case 'dead':
      return 'failed';
    default:
      // paused, or a state a newer engine invented
      return 'unknown';
  }
}

/** `docker ps` reports exited containers as "Exited (137) 5 seconds ago"; the summary carries no exit code field. */
function exitCodeFromSummary(summary: string): number | null {
  const m = /^Exited \((-?\d+)\)/.exec(summary);
  return m ? Number(m[1]) : null;
}

function expiresAtOf(labels: Readonly<Record<string, string>>): Date | null {
  const raw = labels[LABELS.expiresAt];
  if (raw === undefined || !/^\d+$/.test(raw)) return null;
  return new Date(Number(raw) * 1000);
}

function endpointOf(info: ContainerInspectInfo): WorkerEndpoint | null {
  const socketMount = info.Mounts.find((m) => m.Destination === SOCKET_MOUNT);
  if (socketMount) return { socketPath: join(socketMount.Source, SOCKET_NAME) };
  const bindings = info.NetworkSettings.Ports?.[`${WORKER_PORT}/tcp`];
  const hostPort = bindings?.find((b) => b.HostIp === '127.0.0.1')?.HostPort;
  return hostPort ? { baseUrl: `http://127.0.0.1:${hostPort}` } : null;
}

interface StatusFacts {
  phase: WorkerPhase;
  reason: string | null;
  message: string | null;
  exitCode: number | null;
}

function factsOf(info: ContainerInspectInfo): StatusFacts {
  const state = info.State;
  const exited = state.Status === 'exited' || state.Status === 'dead';
  const exitCode = exited ? state.ExitCode : null;
  const phase = phaseOfState(state.Status, exitCode, state.OOMKilled);
  if (state.OOMKilled) {
    const limit = info.HostConfig.Memory;
    return { phase, reason: 'OOMKilled', message: `killed for exceeding its memory limit${limit ? ` of ${limit} bytes` : ''}`, exitCode };
  }
  if (exited) {
    const detail = state.Error ? `: ${state.Error}` : '';
    if (exitCode === 0) return { phase, reason: 'Completed', message: `exited with code 0${detail}`, exitCode };
    if (exitCode === WORKER_EXIT_DEADLINE) return { phase, reason: 'DeadlineExceeded', message: `the worker stopped at its deadline (timeoutSeconds)${detail}`, exitCode };
    return { phase, reason: 'Error', message: `exited with code ${exitCode ?? 'unknown'}${detail}`, exitCode };
  }
  if (state.Status === 'created' && state.Error) return { phase, reason: 'StartError', message: state.Error, exitCode: null };
  return { phase, reason: null, message: null, exitCode: null };
}

/** Next to a spawn's socket folder: its labels, written before the folder exists. */
const INTENT_SUFFIX = '.intent.json';
/** An intent's temporary file is renamed within milliseconds; one this old was abandoned by a killed gateway. */
const ABANDONED_TMP_MS = 1_000;

export function createDockerBackend(options: DockerBackendOptions): Backend {
  const name = options.name;
  // Spawns this object is creating right now: their intent without a container is not "gone".
  const creatingHere = new Set<string>();
  /** spawngate's own egress proxies of this gateway process's workers, and what each let through or refused (last 200). */
  const proxies = new Map<string, EgressProxy>();
  const egressLines = new Map<string, string[]>();
  const egressLog = (spawnId: string, d: EgressDecision): void => {
    const lines = egressLines.get(spawnId) ?? [];
    lines.push(egressLogLine(d));
    if (lines.length > 200) lines.shift();
    egressLines.set(spawnId, lines);
  };
  const stateDir = options.stateDir ?? defaultDockerStateDir();
  const defaultImage = options.image ?? defaultWorkerImage();
  const secretSource = options.secretSource ?? process.env;
  let docker: Promise<DockerClient> | null = null;

  function client(): Promise<DockerClient> {
    docker ??= connectDocker({ ...(options.socketPath ? { socketPath: options.socketPath } : {}), timeoutMs: options.requestTimeoutMs ?? 120_000 });
    docker.catch(() => {
      docker = null;
    });
    return docker;
  }

  async function inspect(d: DockerClient, ref: WorkerRef): Promise<ContainerInspectInfo | null> {
    if (ref.nativeId === '') return null;
    return engineCallOr404('inspect container', () => d.getContainer(ref.nativeId).inspect(), null, { containerId: ref.nativeId });
  }

  /** Checks everything validate() promises without creating anything; returns the plan with the workspace bind resolved. */
  async function checkedPlan(spec: WorkerSpec, d: DockerClient): Promise<WorkerPlan> {
    const plan = planWorker(spec, { backendName: name, defaultImage, stateDir, proxy: options.proxy ?? null, env: secretSource, secretsDir: options.secretsDir ?? null });

    if (plan.hostPath !== null) {
      const wanted = plan.hostPath;
      const checked = await resolveHostPath(wanted, options.allowedHostPaths ?? []);
      if (!checked.ok && checked.reason === 'HostPathNotFound') {
        throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: host path ${wanted} does not exist on this host`, {
          cause: checked.error,
          details: { field: 'workspace.path', reason: 'HostPathNotFound' },
        });
      }
      if (!checked.ok) throw planError(spec, 'workspace.path', `host path ${wanted} is not under an allowedHostPaths entry of container backend ${name}`, 'HostPathNotAllowed');
      const real = checked.real;
      plan.create.HostConfig?.Mounts?.push({ Type: 'bind', Source: real, Target: WORKSPACE_MOUNT });
    }

    const image = await engineCallOr404('inspect image', () => d.getImage(plan.image).inspect(), null, { image: plan.image });
    if (!image) {
      const hint = plan.image.startsWith(`${WORKER_IMAGE_REPOSITORY}:`) ? 'run `spawngate image build` (or scripts/build-image.sh)' : 'pull or build it on this engine first';
      throw new BackendError('BACKEND_FAILED', `image ${plan.image} not found locally; ${hint}`, {
        details: { field: 'image', reason: 'ImageNotFound', image: plan.image },
      });
    }
    if (plan.claimedVolume) {
      const claimed = plan.claimedVolume;
      const volume = await engineCallOr404('inspect volume', () => d.getVolume(claimed).inspect(), null, { volume: claimed });
      if (!volume) throw planError(spec, 'workspace.claimName', `Docker volume ${claimed} does not exist`, 'VolumeNotFound');
    }
    if (spec.egress === 'proxy' && options.proxy) {
      const networkName = options.proxy.network;
      const network = await engineCallOr404('inspect network', () => d.getNetwork(networkName).inspect() as Promise<{ Internal?: boolean }>, null);
      if (!network) throw planError(spec, 'egress', `proxy network ${networkName} does not exist`, 'EgressUnsupported');
      // A non-internal network has a route out, so the proxy would be a suggestion rather than the only exit.
      if (network.Internal !== true) throw planError(spec, 'egress', `proxy network ${networkName} is not --internal, so it does not confine egress`, 'EgressUnsupported');
    }
    if (plan.runtime) {
      const runtime = plan.runtime;
      const info = (await engineCall('info', () => d.info())) as { Runtimes?: Record<string, unknown> };
      if (!info.Runtimes || !Object.hasOwn(info.Runtimes, runtime)) {
        throw planError(spec, 'runtimeClassName', `runtime ${runtime} is not configured on this Docker engine (known: ${Object.keys(info.Runtimes ?? {}).join(', ')})`, 'RuntimeNotFound');
      }
    }
    return plan;
  }

  async function ensureStateDir(): Promise<void> {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    const st = await lstat(stateDir);
    // Socket folders inside are world-writable when the gateway is not root, so the parent must be private and ours.
    if (!st.isDirectory() || (typeof process.getuid === 'function' && st.uid !== process.getuid())) {
      throw new BackendError('BACKEND_FAILED', `container backend ${name}: state dir ${stateDir} is not a directory owned by this user`, {
        details: { field: 'stateDir', reason: 'StateDirUnsafe' },
      });
    }
    if ((st.mode & 0o077) !== 0) await chmod(stateDir, 0o700);
  }

  /**
   * The socket folder is made before any labelled engine object exists, so a gateway killed right
   * after it would leave a folder no listing shows. Its intent (the spawn's labels) is written first,
   * next to it, atomically; list() reports an intent without a container or volume as a gone worker,
   * and delete() removes both.
   */
  async function writeIntent(dir: string, spawnId: string, labels: Record<string, string>): Promise<void> {
    const file = `${dir}${INTENT_SUFFIX}`;
    await writeFile(`${file}.tmp`, JSON.stringify({ spawnId, labels }), { mode: 0o600 });
    await rename(`${file}.tmp`, file);
  }

  async function listIntents(selector: Readonly<Record<string, string>>, seen: Set<string>): Promise<ListedWorker[]> {
    const names = await readdir(stateDir).catch(() => [] as string[]);
    const found: ListedWorker[] = [];
    for (const entry of names) {
      if (entry.endsWith(`${INTENT_SUFFIX}.tmp`)) {
        // Killed between the write and its rename: no labels to be found by, no folder, no container.
        const path = join(stateDir, entry);
        const age = await stat(path).then((st) => Date.now() - st.mtimeMs, () => 0);
        if (age > ABANDONED_TMP_MS) await rm(path, { force: true }).catch(() => undefined);
        continue;
      }
      if (!entry.endsWith(INTENT_SUFFIX)) continue;
      let intent: { spawnId?: unknown; labels?: Record<string, string> };
      try {
        intent = JSON.parse(await readFile(join(stateDir, entry), 'utf8')) as typeof intent;
      } catch {
        continue;
      }
      const labels = intent.labels ?? {};
      const spawnId = typeof intent.spawnId === 'string' ? intent.spawnId : null;
      if (!spawnId || seen.has(spawnId) || labels[LABELS.backend] !== name) continue;
      if (!Object.entries(selector).every(([k, v]) => labels[k] === v)) continue;
      seen.add(spawnId);
      found.push({ ref: { spawnId, backendName: name, nativeId: '' }, labels, expiresAt: expiresAtOf(labels), phase: creatingHere.has(spawnId) ? 'pending' : 'gone' });
    }
    return found;
  }

  async function makeSocketDir(dir: string): Promise<void> {
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { mode: 0o700 });
    try {
      await chown(dir, WORKER_UID, WORKER_UID);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
      // Not root: the worker's uid can only write here if everyone can; the 0700 state dir keeps other host users out.
      await chmod(dir, 0o777);
    }
  }

  async function removeWorkerVolumes(d: DockerClient, spawnId: string): Promise<void> {
    const found = await engineCall('list volumes', () => d.listVolumes({ filters: { label: [`${LABELS.spawnId}=${spawnId}`, `${LABELS.backend}=${name}`] } }));
    const names = new Set((found.Volumes ?? []).map((v) => v.Name));
    // Also by its name: an engine that finished a dead gateway's container create may have made it
    // again, and an engine older than mount labels made it without any. Only if no one else's labels say otherwise.
    const byName = await engineCallOr404('inspect volume', () => d.getVolume(volumeNameOf(spawnId)).inspect(), null).catch(() => null);
    const owner = byName?.Labels?.[LABELS.spawnId];
    if (byName && (owner === undefined || owner === spawnId)) names.add(byName.Name);
    for (const volume of names) {
      await engineCallOr404('remove volume', () => d.getVolume(volume).remove(), null, { volume });
    }
  }

  async function removeContainer(d: DockerClient, id: string): Promise<void> {
    const container = d.getContainer(id);
    try {
      await container.stop({ t: STOP_GRACE_SECONDS });
    } catch (err) {
      // 304: already stopped; 404: already gone. Anything else: removal with force still kills it.
      const status = engineStatus(err);
      if (status !== 304 && status !== 404 && status !== 409) throw toBackendError(err, 'stop container', { containerId: id });
    }
    try {
      await container.remove({ force: true, v: true });
    } catch (err) {
      const status = engineStatus(err);
      // 409 "removal already in progress" ends with the container gone, which is what delete wants.
      if (status !== 404 && status !== 409) throw toBackendError(err, 'remove container', { containerId: id });
    }
  }

  /** The container's own verdict; the worker's log tail is added by the sessions layer, which reads it for every backend. */
  function failureOf(info: ContainerInspectInfo, action: string): BackendError {
    const facts = factsOf(info);
    return new BackendError('BACKEND_FAILED', `worker container ${info.Name.replace(/^\//, '')} ${action}: ${facts.reason ?? info.State.Status}${facts.message ? ` (${facts.message})` : ''}`, {
      details: { reason: facts.reason ?? 'Exited', exitCode: facts.exitCode, containerId: info.Id },
    });
  }

  async function probe(endpoint: WorkerEndpoint, token: string): Promise<void> {
    await createWorkerClient({ ...endpoint, token, requestTimeoutMs: HEALTH_PROBE_TIMEOUT_MS }).healthz();
  }

  const backend: Backend = {
    specVersion: BACKEND_SPEC_VERSION,
    kind: 'container',
    name,

    async validate(spec) {
      await checkedPlan(spec, await client());
    },

    async create(spec) {
      const d = await client();
      const plan = await checkedPlan(spec, d);
      let containerId: string | null = null;
      try {
        if (plan.socketDir) {
          await ensureStateDir();
          creatingHere.add(spec.spawnId);
          await writeIntent(plan.socketDir, spec.spawnId, plan.labels);
          await makeSocketDir(plan.socketDir);
          if (plan.egressAllow) proxies.set(spec.spawnId, await startEgressProxy({ socketPath: join(plan.socketDir, EGRESS_SOCKET_NAME), allow: plan.egressAllow, onDecision: (d) => egressLog(spec.spawnId, d) }));
        }
        if (plan.volume) {
          const { name: volumeName, driverOpts } = plan.volume;
          await engineCall('create volume', () =>
            d.createVolume({ Name: volumeName, Driver: 'local', Labels: plan.labels, ...(driverOpts ? { DriverOpts: driverOpts } : {}) }),
          );
        }
        const container = await engineCall('create container', () => d.createContainer(plan.create), { image: plan.image, name: plan.containerName });
        containerId = container.id;
        const id = containerId;
        await engineCall('start container', () => container.start(), { containerId: id });
        return { spawnId: spec.spawnId, backendName: name, nativeId: container.id };
      } catch (err) {
        // Nothing half-made may outlive a failed create: the caller gets no ref to delete it by.
        // A create call that failed on its way back (a time-out) may still have made the container:
        // look it up by its name, and remove it only if its label says it is this spawn's.
        if (!containerId) {
          const leftover = await engineCallOr404('inspect container', () => d.getContainer(plan.containerName).inspect(), null).catch(() => null);
          if (leftover?.Config.Labels?.[LABELS.spawnId] === spec.spawnId) containerId = leftover.Id;
        }
        if (containerId) await removeContainer(d, containerId).catch(() => undefined);
        // By label, for the same reason: a volume create that timed out may have made it.
        if (plan.volume) await removeWorkerVolumes(d, spec.spawnId).catch(() => undefined);
        await proxies.get(spec.spawnId)?.close().catch(() => undefined);
        proxies.delete(spec.spawnId);
        if (plan.socketDir) {
          await rm(plan.socketDir, { recursive: true, force: true }).catch(() => undefined);
          await rm(`${plan.socketDir}${INTENT_SUFFIX}`, { force: true }).catch(() => undefined);
        }
        throw toBackendError(err, 'create worker', { spawnId: spec.spawnId });
      } finally {
        creatingHere.delete(spec.spawnId);
      }
    },

    async running(ref, { timeoutMs, signal }) {
      const d = await client();
      const deadline = Date.now() + timeoutMs;
      let pauseMs = 50;
      for (;;) {
        signal?.throwIfAborted();
        const info = await inspect(d, ref);
        if (!info) throw new BackendError('BACKEND_NOT_FOUND', `worker container ${ref.nativeId} of spawn ${ref.spawnId} no longer exists`, { details: { reason: 'NotFound' } });
        const facts = factsOf(info);
        if (facts.phase === 'failed' || facts.phase === 'succeeded' || facts.phase === 'gone' || facts.reason === 'StartError') {
          throw failureOf(info, 'stopped before it was running');
        }
        if (info.State.Running) {
          // The socket folder is bound, or the port published, as soon as the container runs; whether
          // the worker answers there is the sessions layer's /healthz wait.
          const endpoint = endpointOf(info);
          if (!endpoint) throw new BackendError('BACKEND_FAILED', `worker container ${ref.nativeId} has neither a socket folder nor a published port`, { details: { reason: 'NoEndpoint' } });
          return endpoint;
        }
        const remaining = deadline - Date.now();
        if (remaining <= 0) {
          throw new BackendError('TIMEOUT', `worker container ${ref.nativeId} of spawn ${ref.spawnId} was not running within ${timeoutMs} ms (state ${info.State.Status})`, {
            retryable: true,
            details: { reason: 'StartTimeout', state: info.State.Status },
          });
        }
        await sleep(Math.min(pauseMs, remaining), undefined, signal ? { signal } : undefined).catch((err: unknown) => {
          throw signal?.aborted ? signal.reason : err;
        });
        pauseMs = Math.min(pauseMs * 2, 500);
      }
    },

    async status(ref) {
      const d = await client();
      const info = await inspect(d, ref);
      if (!info) {
        return { nativeId: ref.nativeId, phase: 'gone', ready: false, reason: 'NotFound', message: 'the container does not exist', exitCode: null, attributes: { 'container.id': ref.nativeId } };
      }
      const facts = factsOf(info);
      let ready = false;
      if (info.State.Running) {
        // The token is in the container's own environment, so readiness survives a gateway restart.
        const endpoint = endpointOf(info);
        const token = envOf(info, 'SPAWNGATE_WORKER_TOKEN');
        // A claimed warm worker answers its spawn's token only, which the engine never held: its
        // refusal of the pool's token is an answer of a running worker all the same.
        const claimable = envOf(info, 'SPAWNGATE_CLAIMABLE') === '1';
        if (endpoint && token) ready = await probe(endpoint, token).then(() => true, (err: unknown) => claimable && (err as { code?: unknown }).code === 'WORKER_UNAUTHORIZED');
      }
      const status: WorkerStatus = {
        nativeId: info.Id,
        phase: facts.phase,
        ready,
        reason: facts.reason,
        message: facts.message,
        exitCode: facts.exitCode,
        attributes: { 'container.id': info.Id, 'container.name': info.Name.replace(/^\//, ''), 'container.image.name': info.Config.Image },
      };
      return status;
    },

    async logs(ref, { tail = 200 } = {}) {
      const d = await client();
      if (ref.nativeId === '') throw new BackendError('BACKEND_NOT_FOUND', `spawn ${ref.spawnId} has no container`);
      const raw = await engineCallOr404(
        'read container logs',
        () => d.getContainer(ref.nativeId).logs({ stdout: true, stderr: true, tail, follow: false }),
        null,
        { containerId: ref.nativeId },
      );
      if (raw === null) throw new BackendError('BACKEND_NOT_FOUND', `worker container ${ref.nativeId} of spawn ${ref.spawnId} does not exist`);
      // The proxy's lines come after the container's: they are kept by this process, not in the container.
      return [...logLines(Buffer.isBuffer(raw) ? raw : Buffer.from(String(raw)), tail), ...(egressLines.get(ref.spawnId) ?? [])].slice(-tail);
    },

    async delete(ref) {
      const d = await client();
      const info = await inspect(d, ref);
      const labels = info?.Config.Labels ?? {};
      // The ref may come from outside (a sweeper, an API call): never stop, or rm -rf the mounts of, someone else's container.
      if (info && (labels[LABELS.spawnId] !== ref.spawnId || labels[LABELS.backend] !== name)) {
        throw new BackendError('BACKEND_FAILED', `container ${ref.nativeId} is not the worker of spawn ${ref.spawnId} on backend ${name}; not deleting it`, {
          details: { reason: 'LabelMismatch', containerId: info.Id },
        });
      }
      // A worker whose only way out is the proxy (egress "proxy") flushes its spans through it as it
      // stops: stop it while the proxy and its socket still exist. Best effort: the removal below
      // kills it whatever happens here.
      if (info && proxies.has(ref.spawnId)) await d.getContainer(info.Id).stop({ t: STOP_GRACE_SECONDS }).catch(() => undefined);
      await proxies.get(ref.spawnId)?.close().catch(() => undefined);
      proxies.delete(ref.spawnId);
      egressLines.delete(ref.spawnId);
      const socketDir = info?.Mounts.find((m) => m.Destination === SOCKET_MOUNT)?.Source ?? socketDirOf(stateDir, ref.spawnId);
      // The socket folder first: if the engine call below fails, the container is still listed and swept later.
      await rm(socketDir, { recursive: true, force: true });
      if (info) await removeContainer(d, info.Id);
      await removeWorkerVolumes(d, ref.spawnId);
      // Last: while anything above fails, the intent keeps the spawn listed for the next sweep.
      await rm(`${socketDirOf(stateDir, ref.spawnId)}${INTENT_SUFFIX}`, { force: true });
    },

    async list(selector) {
      const d = await client();
      const filters = { label: [...Object.entries(selector).map(([k, v]) => `${k}=${v}`), `${LABELS.backend}=${name}`] };
      const containers: ContainerInfo[] = await engineCall('list containers', () => d.listContainers({ all: true, filters }));
      const found: ListedWorker[] = [];
      const seen = new Set<string>();
      for (const c of containers) {
        const labels = c.Labels;
        const spawnId = labels[LABELS.spawnId];
        if (!spawnId) continue;
        seen.add(spawnId);
        found.push({
          ref: { spawnId, backendName: name, nativeId: c.Id },
          labels,
          expiresAt: expiresAtOf(labels),
          phase: phaseOfState(c.State, exitCodeFromSummary(c.Status), false),
        });
      }
      // A volume whose container is gone (a crash between the two removals) is still ours to sweep.
      const volumes = await engineCall('list volumes', () => d.listVolumes({ filters }));
      for (const v of volumes.Volumes ?? []) {
        const labels = v.Labels ?? {};
        const spawnId = labels[LABELS.spawnId];
        if (!spawnId || seen.has(spawnId)) continue;
        seen.add(spawnId);
        found.push({ ref: { spawnId, backendName: name, nativeId: '' }, labels, expiresAt: expiresAtOf(labels), phase: 'gone' });
      }
      found.push(...(await listIntents(selector, seen)));
      return found;
    },

    close() {
      docker = null;
      return Promise.resolve();
    },
  };
  return backend;
}

