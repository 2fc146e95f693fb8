/**
 * WorkerSpec → Docker Engine create request. Pure apart from reading the gateway's environment for
 * secret references, so validate() and create() check exactly the same things.
 *
 * Inside every container:
 *   /run/spawngate   the per-spawn host folder holding the worker's unix socket (egress none/proxy)
 *   /workspace       the workspace mount (or the image's empty, read-only folder for strategy none)
 *   /tmp             tmpfs, the only other writable place (the root filesystem is read-only)
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { ContainerCreateOptions, MountSettings } from 'dockerode';
import { BackendError } from '../../errors.js';
import { parseQuantity } from '../../config/schema.js';
import type { WorkerSpec } from '../types.js';
import { LABELS } from '../types.js';
import { resolveSecret, secretPlaces, secretVariableName } from '../secrets.js';

export const WORKER_UID = 10001;
/** The worker's (and agent's) HOME: a tmpfs of its own, never the workspace. */
export const HOME_MOUNT = '/home/spawngate';
export const SOCKET_MOUNT = '/run/spawngate';
export const SOCKET_NAME = 'w.sock';
/** spawngate's egress proxy for this worker, beside its own socket (egress "proxy" without the backend's proxy). */
export const EGRESS_SOCKET_NAME = 'egress.sock';
export const WORKSPACE_MOUNT = '/workspace';
export const WORKER_PORT = 8080;
export const DEFAULT_PIDS_LIMIT = 256;
export const DEFAULT_TMP_BYTES = 256 * 2 ** 20;
/** Docker refuses memory limits below 6 MiB. */
const MIN_MEMORY_BYTES = 6 * 2 ** 20;
/** sun_path is 108 bytes on Linux, including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

export interface ProxyOptions {
  /** A Docker network created with `--internal` whose only way out is the proxy container attached to it. */
  network: string;
  /** Given to workers as HTTP(S)_PROXY, e.g. http://egress-proxy:3128 (a name on that network). */
  url: string;
  noProxy?: string;
}

export interface PlanContext {
  backendName: string;
  defaultImage: string;
  stateDir: string;
  proxy: ProxyOptions | null;
  /** The gateway's environment, where secret references are resolved (SPAWNGATE_SECRET_*). */
  env: Readonly<Record<string, string | undefined>>;
  /** A folder of `<name>/<key>` secret files, looked in first. */
  secretsDir?: string | null;
}

export interface WorkerPlan {
  /** Filesystem- and name-safe form of the spawn id; names the container, volume and socket folder. */
  key: string;
  containerName: string;
  image: string;
  /** Host folder bound at /run/spawngate, made by create(); null when the worker listens on TCP. */
  socketDir: string | null;
  /** Hosts spawngate's own egress proxy lets through (egress "proxy" without the backend's proxy); null: no such proxy. */
  egressAllow: readonly string[] | null;
  /** Volume create() makes and delete() removes; null when the workspace is none/hostPath/claim. */
  volume: { name: string; driverOpts: Record<string, string> | null } | null;
  /** Existing named volume the profile claims; must exist, is never removed. */
  claimedVolume: string | null;
  /** Host path to bind at /workspace; checked against allowedHostPaths by the backend (realpath). */
  hostPath: string | null;
  runtime: string | null;
  labels: Record<string, string>;
  create: ContainerCreateOptions;
}

export function planError(spec: WorkerSpec, field: string, message: string, reason = 'InvalidSpec'): BackendError {
  return new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: ${message}`, { details: { field, reason } });
}

/** Container and volume names allow [a-zA-Z0-9][a-zA-Z0-9_.-]*; anything else gets a hash suffix so two ids never collide. */
export function spawnKey(spawnId: string): string {
  if (/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(spawnId)) return spawnId;
  const cleaned = spawnId.replace(/[^A-Za-z0-9_.-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 40);
  const hash = createHash('sha256').update(spawnId).digest('hex').slice(0, 12);
  return cleaned ? `${cleaned}-${hash}` : hash;
}

export function containerNameOf(spawnId: string): string {
  return `spawngate-${spawnKey(spawnId)}`;
}

export function volumeNameOf(spawnId: string): string {
  return `spawngate-${spawnKey(spawnId)}-workspace`;
}

export function socketDirOf(stateDir: string, spawnId: string): string {
  return join(stateDir, spawnKey(spawnId));
}

/** Kubernetes quantity → integer count of 1/`unit` (1e9 for NanoCpus, 1 for bytes), rounded up to a whole one. */
function scaled(spec: WorkerSpec, field: string, quantity: string, unit: bigint): number {
  const q = parseQuantity(quantity);
  if (!q) throw planError(spec, field, `${JSON.stringify(quantity)} is not a Kubernetes quantity (e.g. "500m", "2", "512Mi", "2Gi")`);
  const value = (q.num * unit + q.den - 1n) / q.den;
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw planError(spec, field, `${quantity} is too large`);
  return Number(value);
}

export function nanoCpus(spec: WorkerSpec, field: string, quantity: string): number {
  const value = scaled(spec, field, quantity, 1_000_000_000n);
  // The engine's floor is 0.01 CPU.
  if (value < 10_000_000) throw planError(spec, field, `${quantity} CPU is below Docker's minimum of 10m`);
  return value;
}

export function bytes(spec: WorkerSpec, field: string, quantity: string): number {
  const value = scaled(spec, field, quantity, 1n);
  if (value <= 0) throw planError(spec, field, `${quantity} must be more than zero bytes`);
  return value;
}

/** SPAWNGATE_SECRET_<NAME>_<KEY>, upper-cased, every other character an underscore. */
export { secretVariableName };

function portKey(): string {
  return `${WORKER_PORT}/tcp`;
}

export function planWorker(spec: WorkerSpec, ctx: PlanContext): WorkerPlan {
  if (!spec.spawnId) throw planError(spec, 'spawnId', 'spawn id is empty');
  const key = spawnKey(spec.spawnId);
  const image = spec.image ?? ctx.defaultImage;

  if (Object.keys(spec.nodeSelector).length > 0) {
    throw planError(spec, 'nodeSelector', `nodeSelector is a Kubernetes scheduling constraint; container backend ${ctx.backendName} runs on one engine and cannot honour it`, 'Unsupported');
  }
  if (spec.tolerations.length > 0) {
    throw planError(spec, 'tolerations', `tolerations are a Kubernetes scheduling field; container backend ${ctx.backendName} cannot honour them`, 'Unsupported');
  }

  // ── environment: profile env, then resolved secrets, then the worker contract (which a profile cannot override)
  const env: Record<string, string> = { HOME: HOME_MOUNT, ...spec.env };
  for (const ref of spec.secretEnv) {
    const source = { dir: ctx.secretsDir ?? null, env: ctx.env };
    const value = resolveSecret(ref.secretRef, source);
    if (value === undefined) {
      const places = secretPlaces(ref.secretRef, source);
      throw new BackendError(
        'BACKEND_FAILED',
        `profile ${spec.profileName}: env ${ref.name} references secret ${ref.secretRef.name}/${ref.secretRef.key}, which container backend ${ctx.backendName} looks for in ${places.join(' and ')}; neither has it`,
        { details: { field: `env.${ref.name}`, reason: 'SecretNotFound', variable: secretVariableName(ref.secretRef), places } },
      );
    }
    env[ref.name] = value;
  }

  const isolated = spec.egress === 'none' || spec.egress === 'proxy';
  // Without a proxy network of the operator's, egress "proxy" goes through spawngate's own proxy: no
  // network but loopback, and the proxy's socket in the mounted folder (src/backends/egress-proxy.ts).
  const ownProxy = spec.egress === 'proxy' && !ctx.proxy;
  if (ownProxy && spec.egressAllow.length === 0) {
    throw planError(
      spec,
      'egress',
      `egress "proxy" on container backend ${ctx.backendName} needs either the hosts it may reach (the profile's egressAllow, for spawngate's own proxy) or a proxy network of yours (the backend's proxy)`,
      'EgressUnsupported',
    );
  }
  const socketDir = isolated ? socketDirOf(ctx.stateDir, spec.spawnId) : null;
  if (socketDir && Buffer.byteLength(join(socketDir, SOCKET_NAME)) > MAX_SOCKET_PATH_BYTES) {
    throw planError(spec, 'stateDir', `socket path ${join(socketDir, SOCKET_NAME)} exceeds ${MAX_SOCKET_PATH_BYTES} bytes; configure a shorter stateDir`);
  }

  if (spec.agentCommand && spec.agentCommand.length > 0) env['SPAWNGATE_AGENT_COMMAND'] = JSON.stringify(spec.agentCommand);
  if (spec.egress === 'proxy' && ctx.proxy) {
    const noProxy = ctx.proxy.noProxy ?? 'localhost,127.0.0.1,::1';
    Object.assign(env, { HTTP_PROXY: ctx.proxy.url, HTTPS_PROXY: ctx.proxy.url, http_proxy: ctx.proxy.url, https_proxy: ctx.proxy.url, NO_PROXY: noProxy, no_proxy: noProxy });
  }
  if (ownProxy) env['SPAWNGATE_EGRESS_PROXY_SOCKET'] = `${SOCKET_MOUNT}/${EGRESS_SOCKET_NAME}`;
  if (spec.traceparent) env['TRACEPARENT'] = spec.traceparent;
  Object.assign(env, {
    SPAWNGATE_WORKER_TOKEN: spec.token,
    SPAWNGATE_AGENT_ID: spec.agentId,
    SPAWNGATE_SPAWN_ID: spec.spawnId,
    SPAWNGATE_LISTEN: isolated ? `unix:${SOCKET_MOUNT}/${SOCKET_NAME}` : `0.0.0.0:${WORKER_PORT}`,
    // Docker has no run deadline of its own: the worker enforces the profile timeout on itself.
    SPAWNGATE_DEADLINE: String(Math.floor(Date.now() / 1000) + spec.timeoutSeconds),
  });

  // ── resources
  const { limits, requests } = spec.resources;
  const memory = limits.memory ? bytes(spec, 'resources.limits.memory', limits.memory) : null;
  if (memory !== null && memory < MIN_MEMORY_BYTES) throw planError(spec, 'resources.limits.memory', `${limits.memory} is below Docker's minimum of 6Mi`);
  const memoryReservation = requests.memory ? bytes(spec, 'resources.requests.memory', requests.memory) : null;
  if (memory !== null && memoryReservation !== null && memoryReservation > memory) {
    throw planError(spec, 'resources.requests.memory', `request ${requests.memory} exceeds limit ${limits.memory}`);
  }
  const cpuLimit = limits.cpu ? nanoCpus(spec, 'resources.limits.cpu', limits.cpu) : null;
  const cpuRequest = requests.cpu ? nanoCpus(spec, 'resources.requests.cpu', requests.cpu) : null;
  const tmpBytes = limits.ephemeralStorage ? bytes(spec, 'resources.limits.ephemeral-storage', limits.ephemeralStorage) : DEFAULT_TMP_BYTES;
  if (requests.ephemeralStorage) bytes(spec, 'resources.requests.ephemeral-storage', requests.ephemeralStorage);
  if (spec.pidsLimit !== null && (!Number.isInteger(spec.pidsLimit) || spec.pidsLimit < 1)) {
    throw planError(spec, 'pidsLimit', `pidsLimit must be a positive integer, got ${spec.pidsLimit}`);
  }
  if (!Number.isInteger(spec.resources.gpu) || spec.resources.gpu < 0) throw planError(spec, 'resources.gpu', 'gpu must be a non-negative integer');

  // ── workspace
  let volume: WorkerPlan['volume'] = null;
  let claimedVolume: string | null = null;
  let hostPath: string | null = null;
  const mounts: MountSettings[] = [];
  const workspace = spec.workspace;
  switch (workspace.strategy) {
    case 'none':
      break;
    case 'ephemeral':
    case 'git': {
      // git: the worker clones into this fresh volume before the agent starts.
      const name = volumeNameOf(spec.spawnId);
      // A size limit needs a filesystem that enforces one; the local driver's tmpfs does (and its pages
      // count against the container's memory limit), a plain local volume cannot.
      const driverOpts = workspace.sizeLimit
        ? { type: 'tmpfs', device: 'tmpfs', o: `size=${bytes(spec, 'workspace.sizeLimit', workspace.sizeLimit)},uid=${WORKER_UID},gid=${WORKER_UID},mode=0700` }
        : null;
      volume = { name, driverOpts };
      mounts.push({ Type: 'volume', Source: name, Target: WORKSPACE_MOUNT });
      break;
    }
    case 'volume':
      if (!workspace.claimName) {
        throw planError(
          spec,
          'workspace.claimName',
          `workspace strategy "volume" on container backend ${ctx.backendName} needs claimName: the name of an existing Docker volume (use "ephemeral" for a fresh one per worker)`,
          'Unsupported',
        );
      }
      claimedVolume = workspace.claimName;
      mounts.push({ Type: 'volume', Source: workspace.claimName, Target: WORKSPACE_MOUNT });
      break;
    case 'hostPath':
      hostPath = workspace.path;
      break;
  }
  if (socketDir) mounts.push({ Type: 'bind', Source: socketDir, Target: SOCKET_MOUNT });

  const labels: Record<string, string> = {
    [LABELS.spawnId]: spec.spawnId,
    [LABELS.owner]: spec.owner,
    [LABELS.profile]: spec.profileName,
    [LABELS.agent]: spec.agentId,
    [LABELS.expiresAt]: String(Math.floor(spec.expiresAt.getTime() / 1000)),
    ...spec.labels,
    // list() filters on it, so it must be this backend's name whatever the spec carried.
    [LABELS.backend]: ctx.backendName,
  };
  // The engine finishes a container create after its client died, and re-creates a missing named
  // volume then: with the labels on the mount, even such a volume is one list() finds and delete() removes.
  for (const mount of mounts) {
    if (mount.Type !== 'volume' || !volume || mount.Source !== volume.name) continue;
    // NoCopy false is the engine's default (seed the volume from the image), spelled out because the type wants it.
    mount.VolumeOptions = { NoCopy: false, Labels: labels, DriverConfig: { Name: 'local', Options: volume.driverOpts ?? {} } };
  }

  const create: ContainerCreateOptions = {
    name: containerNameOf(spec.spawnId),
    Image: image,
    Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    Labels: labels,
    // Enforced here too, not only by the image: a profile's own image must not run the worker as root.
    User: `${WORKER_UID}:${WORKER_UID}`,
    WorkingDir: WORKSPACE_MOUNT,
    StopTimeout: 5,
    ...(spec.command ? { Entrypoint: [...spec.command], Cmd: [...(spec.args ?? [])] } : spec.args ? { Cmd: [...spec.args] } : {}),
    ...(isolated ? {} : { ExposedPorts: { [portKey()]: {} } }),
    HostConfig: {
      NetworkMode: spec.egress === 'none' || ownProxy ? 'none' : spec.egress === 'proxy' && ctx.proxy ? ctx.proxy.network : 'bridge',
      ...(isolated ? {} : { PortBindings: { [portKey()]: [{ HostIp: '127.0.0.1', HostPort: '' }] } }),
      ...(memory !== null ? { Memory: memory, MemorySwap: memory } : {}),
      ...(memoryReservation !== null ? { MemoryReservation: memoryReservation } : {}),
      ...(cpuLimit !== null ? { NanoCpus: cpuLimit } : {}),
      // Relative weight under contention; 1024 is one CPU's worth, as for `docker run --cpu-shares`.
      ...(cpuRequest !== null ? { CpuShares: Math.max(2, Math.round((cpuRequest / 1e9) * 1024)) } : {}),
      PidsLimit: spec.pidsLimit ?? DEFAULT_PIDS_LIMIT,
      ReadonlyRootfs: true,
      // HOME apart from the workspace: an agent's dotfiles and caches are not the work, and go with the container.
      Tmpfs: { '/tmp': `rw,nosuid,nodev,size=${tmpBytes}`, [HOME_MOUNT]: `rw,nosuid,nodev,size=${tmpBytes},uid=${WORKER_UID},gid=${WORKER_UID},mode=0700` },
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges'],
      Privileged: false,
      // The failure reason (OOMKilled, exit code) is read from the stopped container, so it must stay.
      AutoRemove: false,
      RestartPolicy: { Name: 'no' },
      LogConfig: { Type: 'json-file', Config: { 'max-size': '10m', 'max-file': '2' } },
      // The hostPath bind is added by the backend once it has resolved and checked the real path.
      Mounts: mounts,
      ...(spec.runtimeClassName ? { Runtime: spec.runtimeClassName } : {}),
      ...(spec.resources.gpu > 0 ? { DeviceRequests: [{ Driver: 'nvidia', Count: spec.resources.gpu, Capabilities: [['gpu']] }] } : {}),
    },
  };

  return {
    key,
    containerName: containerNameOf(spec.spawnId),
    image,
    socketDir,
    egressAllow: ownProxy ? spec.egressAllow : null,
    volume,
    claimedVolume,
    hostPath,
    runtime: spec.runtimeClassName,
    labels,
    create,
  };
}
