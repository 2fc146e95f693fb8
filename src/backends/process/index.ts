import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { closeSync, constants as fsConstants, openSync, renameSync, writeFileSync } from 'node:fs';
import { access, appendFile, chmod, chown, lstat, mkdir, readdir, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackendError, SpawngateError } from '../../errors.js';
import type { ProcessBackendConfig } from '../../config/schema.js';
import { workerBinCommand } from '../../worker/main.js';
import { PRELAUNCH_ENV, prelaunchPlan, type PrelaunchPlan } from '../../worker/launch.js';
import type { Backend, ListedWorker, WorkerEndpoint, WorkerPhase, WorkerRef, WorkerSpec, WorkerStatus } from '../types.js';
import { WORKER_EXIT_DEADLINE } from '../../protocol/events.js';
import { BACKEND_SPEC_VERSION, LABELS } from '../types.js';
import { createWorkerClient } from '../../protocol/client.js';
import { AGENT_PRELAUNCH, CGROUP_GATE, LOOPBACK_UP, UNSHARE_ARGS, UNSHARE_NET_ARGS, type IsolationProbe } from './isolation.js';
import { egressLogLine, startEgressProxy } from '../egress-proxy.js';
import type { EgressDecision, EgressProxy } from '../egress-proxy.js';
import { resolveSecret, secretPlaces } from '../secrets.js';
import { resolveHostPath } from '../host-path.js';
import { isWithin } from '../../paths.js';
import { findProcessByEnv, isOurProcess, processStartTime, signalGroup, type ProcessIdentity } from './proc.js';
import { collectCgroups, createCgroup, killCgroup, oomKills, planCgroup, procsFiles, removeCgroup, type CgroupPlan } from './cgroups.js';
import { createUidPool, DEFAULT_UID_LEASE_DIR, DEFAULT_UID_RANGE, dropArgs, topmostOfUid, UID_MODE_CAPABILITIES, type Privileges } from './identity.js';
import { describeCgroups, inspectProcessHost, neededControllers, parseCpu, probeWorkerNetwork, type ProcessHostReport, type ProcessIsolationOptions } from './host.js';

export type { ProcessIsolationOptions } from './host.js';

export interface ProcessBackendOptions {
  name: string;
  /** Where state files, logs, sockets and per-spawn workspaces live. Keep it short: unix socket paths max out at 107 bytes. */
  stateDir?: string;
  /** The worker command; default: this Node binary on the compiled reference worker. */
  workerCommand?: readonly string[];
  /** Host folders a profile may use as `workspace: { strategy: hostPath }`. */
  allowedHostPaths?: readonly string[];
  /** Given to workers as HTTP(S)_PROXY when a profile's egress is `proxy`. */
  proxyUrl?: string;
  /** Grace between SIGTERM and SIGKILL of the worker's process group. */
  killGraceMs?: number;
  /** How often a workspace with a sizeLimit is measured (there is no quota on a plain folder); default 10000. */
  workspaceCheckIntervalMs?: number;
  /** Folder of `<name>/<key>` files where secret references are looked up first (then SPAWNGATE_SECRET_* variables). */
  secretsDir?: string;
  /** Where SPAWNGATE_SECRET_* variables are read; default the gateway's environment. */
  secretEnv?: Readonly<Record<string, string | undefined>>;
  /** Who workers run as and what limits them (docs/process-backend.md). */
  isolation?: ProcessIsolationOptions;
  /** Where cgroup hierarchies are mounted; default /sys/fs/cgroup. */
  cgroupMount?: string;
  /** What the gateway may do; default read from /proc/self/status (tests pretend to lack a capability). */
  privileges?: Privileges;
  /** Where uid leases are kept; default /run/spawngate/uids, shared by every gateway of the host (so they never lease one uid twice). */
  uidLeaseDir?: string;
}

/**
 * One file per worker: the backend's source of truth across gateway restarts. It is written twice:
 * as an intent (`creating`, no pid) before the child is spawned, so a gateway killed at any instant
 * leaves nothing list() cannot see, and with the pid once the child runs.
 */
interface StateFile {
  spawnId: string;
  backendName: string;
  /** null while `creating`: the child may not exist yet, or its pid was never recorded (status() then finds it by its environment). */
  pid: number | null;
  /** /proc start time of `pid`; null when the child was gone before it could be read. */
  startTime: string | null;
  /** The intent was written and the child's pid not (yet). Absent in files of older versions. */
  creating?: boolean;
  labels: Record<string, string>;
  expiresAt: string;
  createdAt: string;
  deadlineAt: string;
  dir: string;
  logFile: string;
  socketPath: string | null;
  /** Kept (0600, the gateway's; a worker under a uid of its own cannot read it) so status() can probe /healthz after a restart. */
  token: string;
  exit: { code: number | null; signal: string | null; reason: string } | null;
  /** The uid (and gid, the same number) leased to the worker; null: the gateway's own (isolation.user "none"), or not leased yet. Absent in files of older versions. */
  uid?: number | null;
  /** The worker's cgroups, planned before they are made (so a restarted gateway removes them); null: none. */
  cgroup?: CgroupPlan | null;
}

/**
 * ~/.local/state/spawngate/process, or $XDG_STATE_HOME/spawngate/process. For root,
 * /var/lib/spawngate/process: workers under uids of their own must be able to pass through every
 * folder above their own, and root's home is usually closed to others.
 */
export function defaultProcessStateDir(): string {
  if (process.env.XDG_STATE_HOME) return join(process.env.XDG_STATE_HOME, 'spawngate', 'process');
  if (process.getuid?.() === 0) return join('/var/lib', 'spawngate', 'process');
  return join(homedir(), '.local', 'state', 'spawngate', 'process');
}

function parseMemoryBytes(quantity: string | null): number | null {
  if (!quantity) return null;
  const m = /^(\d+(?:\.\d+)?)([KMGTPE]i?|[kmM])?$/.exec(quantity);
  if (!m) return null;
  const units: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, K: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return Number(m[1]) * (m[2] ? (units[m[2]] ?? 1) : 1);
}

const STOPPED_FOR_A_LIMIT = new Set(['WorkspaceSizeExceeded', 'DeadlineExceeded', 'OOMKilled']);

function exitReason(code: number | null, signal: string | null, timedOut: boolean, oversized = false, oomKilled = false): string {
  if (oversized) return 'WorkspaceSizeExceeded';
  if (timedOut) return 'DeadlineExceeded';
  // As the kubelet reports it: the kernel killed a process of the worker at its memory limit.
  if (oomKilled && (signal !== null || code !== 0)) return 'OOMKilled';
  if (signal === 'SIGKILL') return 'Killed';
  if (signal) return 'Signaled';
  if (code === WORKER_EXIT_DEADLINE) return 'DeadlineExceeded';
  return code === 0 ? 'Completed' : 'Error';
}

/** Whether the files under `dir` (symlinks not followed) add up to more than `limit` bytes; stops counting once they do. */
async function folderSizeOver(dir: string, limit: number): Promise<boolean> {
  let total = 0;
  const pending = [dir];
  for (let visited = 0; pending.length > 0 && visited < 1_000_000; visited++) {
    const current = pending.pop() as string;
    const entries = await readdir(current, { withFileTypes: true }).catch(() => []);
    for (const entry of entries) {
      const path = join(current, entry.name);
      if (entry.isDirectory()) pending.push(path);
      else if (entry.isFile()) total += (await lstat(path).catch(() => null))?.size ?? 0;
      if (total > limit) return true;
    }
  }
  return false;
}

/** The executable files `cmd` may name, in execvp(3)'s order: a path (relative to `cwd`), or each match on PATH. */
async function commandCandidates(cmd: string, cwd: string): Promise<string[]> {
  const candidates = cmd.includes('/') ? [resolve(cwd, cmd)] : (process.env.PATH ?? '/usr/bin:/bin').split(':').filter(Boolean).map((dir) => join(dir, cmd));
  const found: string[] = [];
  for (const candidate of candidates) {
    const st = await stat(candidate).catch(() => null);
    if (st?.isFile() && (await access(candidate, fsConstants.X_OK).then(() => true, () => false))) found.push(candidate);
  }
  return found;
}

/** The executable file `cmd` names as execvp(3) would find it; null when there is none. */
async function resolveCommand(cmd: string, cwd: string): Promise<string | null> {
  return (await commandCandidates(cmd, cwd))[0] ?? null;
}

/**
 * Why a user who is neither owner nor in the group (a worker's uid) cannot use `file` (`bits`: 0o001
 * to run it, 0o004 to read it): the first folder above it, symlinks resolved, that does not let
 * others through, or the file itself; null when it can.
 */
async function closedToOthers(file: string, bits: number): Promise<string | null> {
  const real = await realpath(file).catch(() => null);
  if (!real) return null;
  for (let dir = dirname(real); ; dir = dirname(dir)) {
    const st = await stat(dir).catch(() => null);
    if (st && (st.mode & 0o001) === 0) return `${dir} (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}) lets only its owner in`;
    if (dirname(dir) === dir) break;
  }
  const st = await stat(real).catch(() => null);
  return st && (st.mode & bits) !== bits ? `${real} (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}) is not ${bits === 0o001 ? 'executable' : 'readable'} by others` : null;
}

/** The promise's value, or null when it has not settled within `ms`. */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | null> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** A prefix list() skips: a spawn's folder appears under its own name only with its intent inside. */
const STAGING_PREFIX = '.creating-';
/**
 * Between a staging folder's mkdir and its intent's write there is one syscall; a folder this old
 * without its intent was abandoned by a killed gateway (no process can exist for it: the child is
 * spawned after the rename). A live writer that loses the race fails its create cleanly.
 */
const STAGING_ABANDONED_MS = 1_000;
/** The folder of the worker's own in its spawn's folder where it binds its socket. */
const SOCKET_DIR = 's';
/** The FIFOs of an agent started beside its worker. */
const PRELAUNCH_DIR = 'a';

/** The options of a configured process backend (`agents.executionBackends.<name>`, type process). */
export function processBackendOptions(name: string, config: ProcessBackendConfig): ProcessBackendOptions {
  const isolation = config.isolation;
  return {
    name,
    ...(config.stateDir ? { stateDir: config.stateDir } : {}),
    ...(config.allowedHostPaths ? { allowedHostPaths: config.allowedHostPaths } : {}),
    ...(config.secretsDir ? { secretsDir: config.secretsDir } : {}),
    ...(isolation
      ? {
          isolation: {
            ...(isolation.user ? { user: isolation.user } : {}),
            ...(isolation.uidRange ? { uidRange: isolation.uidRange } : {}),
            ...(isolation.cgroups ? { cgroups: isolation.cgroups } : {}),
            ...(isolation.cgroupParent ? { cgroupParent: isolation.cgroupParent } : {}),
            ...(isolation.pidsMax ? { pidsMax: isolation.pidsMax } : {}),
          },
        }
      : {}),
  };
}

export function createProcessBackend(options: ProcessBackendOptions): Backend {
  const stateDir = options.stateDir ?? defaultProcessStateDir();
  const killGraceMs = options.killGraceMs ?? 3000;
  // Deadline timers live only as long as this backend object; after a restart the sweeper takes over.
  const deadlines = new Map<string, NodeJS.Timeout>();
  /** Whom each deadline kills: a claimed warm worker's deadline is armed again, earlier. */
  const deadlineTargets = new Map<string, { worker: ProcessIdentity; cgroup: CgroupPlan | null }>();
  const timedOut = new Set<string>();
  /** Workers stopped because their workspace outgrew its sizeLimit, and the timers that measure the others. */
  const oversized = new Set<string>();
  const sizeWatches = new Map<string, NodeJS.Timeout>();
  // Settles once the exit of a child of this object is written to its state file. status() awaits it
  // so that an exit is reported with its code, not as "gone"; delete() so that the write cannot
  // recreate a state file inside a folder being removed (ENOTEMPTY, a "failed" worker listed forever).
  const exitRecords = new Map<string, Promise<void>>();
  const deleting = new Set<string>();
  // Spawns this object is creating right now: their intent has no pid yet, and that is not "gone".
  const creatingHere = new Set<string>();

  const stateFile = (spawnId: string) => join(stateDir, spawnId, 'state.json');
  // The host does not change under us: probe once, on the first profile that needs it.
  let isolation: Promise<IsolationProbe> | null = null;
  let loopback: Promise<IsolationProbe> | null = null;
  const isolationOptions = options.isolation ?? {};
  const uidMode = (isolationOptions.user ?? 'uid') === 'uid';
  const uidPool = createUidPool(options.uidLeaseDir ?? DEFAULT_UID_LEASE_DIR, isolationOptions.uidRange ?? DEFAULT_UID_RANGE);
  let hostReport: Promise<ProcessHostReport> | null = null;
  /** Who workers can run as and what can limit them here: found out once, on the first spawn. */
  const host = (): Promise<ProcessHostReport> =>
    (hostReport ??= inspectProcessHost(isolationOptions, {
      ...(options.privileges ? { privileges: options.privileges } : {}),
      ...(options.cgroupMount ? { cgroupMount: options.cgroupMount } : {}),
    }));
  /** spawngate's own egress proxies of this gateway process's workers, by spawn id (see usesOwnProxy). */
  const proxies = new Map<string, EgressProxy>();

  async function readState(spawnId: string): Promise<StateFile | null> {
    try {
      return JSON.parse(await readFile(stateFile(spawnId), 'utf8')) as StateFile;
    } catch {
      return null;
    }
  }

  async function writeState(state: StateFile): Promise<void> {
    // Write-then-rename so a crash mid-write never leaves a truncated state file the sweeper cannot read.
    const tmp = `${stateFile(state.spawnId)}.tmp`;
    await writeFile(tmp, JSON.stringify(state), { mode: 0o600 });
    await rename(tmp, stateFile(state.spawnId));
  }

  /**
   * The same, blocking: for the pid of a child that was just started, which must be on disk before
   * create() returns (another gateway on this stateDir reads it) — two thread-pool round trips
   * there cost a cold start more (1-4 ms on a busy 2-CPU host) than this write blocks (~0.1 ms).
   */
  function writeStateSync(state: StateFile): void {
    const tmp = `${stateFile(state.spawnId)}.tmp`;
    writeFileSync(tmp, JSON.stringify(state), { mode: 0o600 });
    renameSync(tmp, stateFile(state.spawnId));
  }

  /** The spawn's folder, made under a staging name and renamed: it never exists without its intent. */
  async function writeIntent(state: StateFile): Promise<void> {
    await mkdir(stateDir, { recursive: true, mode: uidMode ? 0o711 : 0o700 });
    if (uidMode) {
      // Workers pass through stateDir and their spawn's folder to reach their own folders; only
      // the gateway may list them or read what is in them (state.json, the log: 0600).
      const st = await stat(stateDir);
      if ((st.mode & 0o001) === 0) await chmod(stateDir, (st.mode & 0o7777) | 0o001);
    }
    const staging = join(stateDir, `${STAGING_PREFIX}${state.spawnId}`);
    await rm(staging, { recursive: true, force: true });
    await mkdir(staging, { mode: 0o700 });
    if (uidMode) await chmod(staging, 0o711);
    try {
      await writeFile(join(staging, 'state.json'), JSON.stringify(state), { mode: 0o600 });
      await rename(staging, state.dir);
    } catch (err) {
      await rm(staging, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
  }

  /**
   * A staging folder that was never renamed: the gateway died between writing the intent and
   * spawning the child, so no process exists for it. It is listed (phase gone, or pending while this
   * object is still creating it) so the sweeper can delete it by its labels; one without even its
   * intent has no labels to be found by and is removed here once no writer can still be at work.
   */
  async function listStaged(spawnId: string, selector: Readonly<Record<string, string>>): Promise<ListedWorker | null> {
    const dir = join(stateDir, `${STAGING_PREFIX}${spawnId}`);
    let state: StateFile | null = null;
    try {
      state = JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')) as StateFile;
    } catch {
      const age = await stat(dir).then((st) => Date.now() - st.mtimeMs, () => 0);
      if (age > STAGING_ABANDONED_MS && !creatingHere.has(spawnId)) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
      return null;
    }
    if (state.backendName !== options.name || !Object.entries(selector).every(([k, v]) => state.labels[k] === v)) return null;
    const expires = Number(state.labels[LABELS.expiresAt]);
    return {
      ref: { spawnId, backendName: options.name, nativeId: '' },
      labels: state.labels,
      expiresAt: Number.isFinite(expires) && expires > 0 ? new Date(expires * 1000) : new Date(state.expiresAt),
      phase: creatingHere.has(spawnId) ? 'pending' : 'gone',
    };
  }

  /** The uid leased to this worker, if it still is (a lease released and given to another worker is not its any more). */
  async function leasedUid(state: StateFile): Promise<number | null> {
    if (state.uid === undefined || state.uid === null) return null;
    return (await uidPool.holds(state.uid, state.spawnId)) ? state.uid : null;
  }

  /**
   * The worker's process if it runs: by its recorded pid and start time, or, for an intent without
   * a pid, by its environment, else as the topmost process of the uid leased to it alone.
   */
  async function locate(state: StateFile): Promise<ProcessIdentity | null> {
    if (state.pid !== null) {
      if (state.startTime === null) return null;
      return isOurProcess(state.pid, state.startTime) ? { pid: state.pid, startTime: state.startTime } : null;
    }
    const uid = await leasedUid(state);
    const found = await findProcessByEnv('SPAWNGATE_SPAWN_ID', state.spawnId, uid);
    if (found || uid === null) return found;
    const pid = await topmostOfUid(uid);
    const startTime = pid === null ? null : processStartTime(pid);
    return pid !== null && startTime !== null ? { pid, startTime } : null;
  }

  /** The state once a just-observed exit of our own child is on disk (bounded: the exit event is at most seconds away). */
  async function settledState(state: StateFile): Promise<StateFile> {
    if (state.exit) return state;
    const record = exitRecords.get(state.spawnId);
    // No record left: it finished, and wrote the exit, after `state` was read; the file has it now.
    if (!record) return (await readState(state.spawnId)) ?? state;
    // Generous: it is only waited when the child is known to be gone, and a starved event loop can take seconds to deliver its exit.
    await within(record, 10_000);
    return (await readState(state.spawnId)) ?? state;
  }

  const secretSource = { dir: options.secretsDir ?? null, env: options.secretEnv ?? process.env };

  /** A secret reference's value; a missing one refuses the spawn, naming where it was looked for (never a value). */
  function secretValue(spec: WorkerSpec, ref: WorkerSpec['secretEnv'][number]): string {
    const value = resolveSecret(ref.secretRef, secretSource);
    if (value !== undefined) return value;
    const places = secretPlaces(ref.secretRef, secretSource);
    throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: env ${ref.name} references secret ${ref.secretRef.name}/${ref.secretRef.key}, which process backend ${options.name} looks for in ${places.join(' and ')}; neither has it`, {
      details: { field: `env.${ref.name}`, reason: 'SecretNotFound', places },
    });
  }

  /** Egress "proxy" without a proxyUrl of the operator's: spawngate's own proxy, with the profile's allow-list. */
  function usesOwnProxy(spec: WorkerSpec): boolean {
    return spec.egress === 'proxy' && !options.proxyUrl;
  }

  function checkSpec(spec: WorkerSpec): void {
    if (spec.workspace.strategy === 'volume') {
      throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: workspace strategy "volume" is not supported by the process backend ${options.name}`, {
        details: { field: 'workspace.strategy' },
      });
    }
    if (spec.workspace.strategy === 'hostPath') {
      const wanted = spec.workspace.path;
      const allowed = (options.allowedHostPaths ?? []).some((root) => isWithin(root, wanted));
      if (!allowed) {
        throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: host path ${wanted} is not under an allowed host path of backend ${options.name}`, {
          details: { field: 'workspace.path' },
        });
      }
    }
    if (spec.egress === 'proxy' && !options.proxyUrl && spec.egressAllow.length === 0) {
      throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: egress "proxy" on process backend ${options.name} needs the hosts it may reach (the profile's egressAllow, e.g. ["api.openai.com"])`, {
        details: { field: 'egress' },
      });
    }
    for (const ref of spec.secretEnv) secretValue(spec, ref);
    if (spec.resources.gpu > 0) {
      throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: GPUs cannot be reserved by the process backend`, { details: { field: 'resources.gpu' } });
    }
  }

  function armDeadline(spawnId: string, worker: ProcessIdentity, ms: number, cgroup: CgroupPlan | null): void {
    clearTimeout(deadlines.get(spawnId));
    deadlineTargets.set(spawnId, { worker, cgroup });
    const timer = setTimeout(() => {
      deadlines.delete(spawnId);
      deadlineTargets.delete(spawnId);
      timedOut.add(spawnId);
      void terminate(worker, cgroup);
    }, ms);
    timer.unref();
    deadlines.set(spawnId, timer);
  }

  /**
   * A plain folder has no quota: the workspace is measured every workspaceCheckIntervalMs, and a
   * worker whose workspace outgrew its sizeLimit is stopped (reason WorkspaceSizeExceeded), as the
   * kubelet evicts a pod whose emptyDir does. The bound is therefore checked, not instant.
   */
  function armSizeWatch(spawnId: string, worker: ProcessIdentity, workspace: string, limit: number): void {
    let measuring = false;
    const timer = setInterval(() => {
      if (measuring) return;
      measuring = true;
      void folderSizeOver(workspace, limit)
        .then((over) => {
          if (!over || !sizeWatches.has(spawnId)) return;
          clearInterval(timer);
          sizeWatches.delete(spawnId);
          oversized.add(spawnId);
          return terminate(worker);
        })
        .catch(() => undefined)
        .finally(() => (measuring = false));
    }, options.workspaceCheckIntervalMs ?? 10_000);
    timer.unref();
    sizeWatches.set(spawnId, timer);
  }

  async function terminate(worker: ProcessIdentity, cgroup: CgroupPlan | null = null): Promise<void> {
    const { pid, startTime } = worker;
    if (!isOurProcess(pid, startTime)) return;
    signalGroup(pid, 'SIGTERM');
    for (let waited = 0; waited < killGraceMs; waited += 50) {
      if (!isOurProcess(pid, startTime)) return;
      await sleep(50);
    }
    if (isOurProcess(pid, startTime)) {
      signalGroup(pid, 'SIGKILL');
      // Also what left the process group (setsid) but not the worker's cgroup.
      if (cgroup) await killCgroup(cgroup);
    }
  }

  /** The worker's command: the profile's, else this backend's worker (this Node on this package's worker). */
  function workerArgv(spec: WorkerSpec): string[] {
    return spec.command ? [...spec.command, ...(spec.args ?? [])] : [...(options.workerCommand ?? workerBinCommand()), ...(spec.args ?? [])];
  }

  /**
   * The first program or script of the worker's or the agent's command a worker's uid could not run
   * or read (a copy of spawngate in a private folder, an agent installed in root's home).
   */
  async function commandsClosedToWorkers(spec: WorkerSpec): Promise<{ what: string; file: string; why: string; field: string } | null> {
    const commands: { argv: readonly string[]; field: string; what: string }[] = [
      { argv: workerArgv(spec), field: 'command', what: 'the worker\'s' },
      ...(spec.agentCommand ? [{ argv: spec.agentCommand, field: `agents.acp.${spec.agentId}.command`, what: `agent ${spec.agentId}'s` }] : []),
    ];
    for (const { argv, field, what } of commands) {
      const [cmd, ...args] = argv;
      // As the worker's execvp sees PATH: a match it cannot reach is passed over for the next one.
      const programs = cmd ? await commandCandidates(cmd, join(stateDir, spec.spawnId, 'workspace')) : [];
      let closed: { file: string; why: string } | null = null;
      for (const program of programs) {
        const why = await closedToOthers(program, 0o001);
        if (!why) {
          closed = null;
          break;
        }
        closed ??= { file: program, why };
      }
      if (closed) return { what: `${what} program`, file: closed.file, why: closed.why, field };
      // Scripts and modules named by an absolute path (node /path/to/bin.js): the worker reads them.
      for (const arg of args) {
        if (!arg.startsWith('/') || !(await stat(arg).then((st) => st.isFile(), () => false))) continue;
        const why = await closedToOthers(arg, 0o004);
        if (why) return { what: `${what} file`, file: arg, why, field };
      }
    }
    return null;
  }

  /** The folder above `stateDir` (or stateDir's nearest existing ancestor and above) that others may not pass through, if any. */
  async function stateDirBlocked(): Promise<{ path: string; mode: string } | null> {
    let existing = resolve(stateDir);
    while (!(await stat(existing).then(() => true, () => false))) {
      if (dirname(existing) === existing) return null;
      existing = dirname(existing);
    }
    const real = await realpath(existing).catch(() => existing);
    // stateDir itself is given o+x by writeIntent; every folder above it must have it already.
    const start = real === (await realpath(stateDir).catch(() => null)) ? dirname(real) : real;
    for (let dir = start; ; dir = dirname(dir)) {
      const st = await stat(dir).catch(() => null);
      if (st && (st.mode & 0o001) === 0) return { path: dir, mode: (st.mode & 0o777).toString(8).padStart(4, '0') };
      if (dirname(dir) === dir) return null;
    }
  }

  /** A spec's host check, once: validate() and the create() that follows it ask the same question. */
  const hostChecks = new WeakMap<WorkerSpec, Promise<ProcessHostReport>>();
  function checkHostOnce(spec: WorkerSpec): Promise<ProcessHostReport> {
    let check = hostChecks.get(spec);
    if (!check) {
      check = checkHost(spec);
      hostChecks.set(spec, check);
    }
    return check;
  }

  /**
   * Refuses a spec this host cannot run as configured: workers under uids of their own without the
   * privilege to switch, limits without the cgroup controllers to enforce them.
   */
  async function checkHost(spec: WorkerSpec): Promise<ProcessHostReport> {
    const report = await host();
    const { identity, cgroups } = report;
    if (identity.mode === 'uid') {
      if (!identity.ok) {
        throw new BackendError(
          'BACKEND_UNAVAILABLE',
          `profile ${spec.profileName}: process backend ${options.name} runs each worker under a uid of its own (isolation.user "uid", the default), which it cannot here: ${identity.reason}. Run the gateway as root, or with ${UID_MODE_CAPABILITIES.join(', ')} (e.g. systemd AmbientCapabilities=); or set isolation.user: none on backend ${options.name}, and workers share the gateway's identity (an agent can then read the gateway's environment and files and other workers' state)`,
          { details: { field: 'isolation.user', reason: 'IdentityUnavailable', missing: identity.missing } },
        );
      }
      if (spec.workspace.strategy === 'hostPath') {
        throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: a hostPath workspace is a host folder shared by every worker of the profile, which process backend ${options.name} cannot hand to workers that each run under a uid of their own; use a git or ephemeral workspace, or set isolation.user: none on the backend`, {
          details: { field: 'workspace.strategy', reason: 'HostPathUnsupported' },
        });
      }
      // Both walk the file system one stat at a time: side by side, reported in this order.
      const [unusable, blocked] = await Promise.all([commandsClosedToWorkers(spec), stateDirBlocked()]);
      if (unusable) {
        throw new BackendError('BACKEND_UNAVAILABLE', `profile ${spec.profileName}: workers of process backend ${options.name} run under uids of their own and cannot use ${unusable.what} ${unusable.file}: ${unusable.why}; install it where every user can read it (e.g. npm install -g), point ${unusable.field === 'command' ? 'the profile\'s command' : unusable.field} at such a copy, or set isolation.user: none on the backend`, {
          details: { field: unusable.field, reason: 'CommandUnreadable' },
        });
      }
      if (blocked) {
        throw new BackendError('BACKEND_UNAVAILABLE', `process backend ${options.name}: workers run under uids of their own and pass through every folder above stateDir ${stateDir} to reach their own, but ${blocked.path} (mode ${blocked.mode}) lets only its owner through; allow it (chmod o+x ${blocked.path}) or put stateDir under folders everyone may pass through (e.g. /var/lib/spawngate/process)`, {
          details: { field: 'stateDir', reason: 'StateDirNotTraversable' },
        });
      }
    }
    const { unenforced } = describeCgroups(cgroups);
    const cannot = neededControllers(spec).filter((need) => unenforced.some((u) => u.controller === need.controller));
    if (cannot.length > 0) {
      const why = [...new Set(cannot.map((need) => unenforced.find((u) => u.controller === need.controller)?.why))].join('; ');
      throw new BackendError('BACKEND_UNAVAILABLE', `profile ${spec.profileName}: ${cannot.map((need) => `${need.field} ${need.value}`).join(', ')} cannot be enforced by process backend ${options.name} (${why}); run the gateway where it can manage cgroups (as root, with /sys/fs/cgroup writable), or remove the limit from the profile: a limit is never silently left unenforced`, {
        details: { field: cannot[0]!.field, reason: 'LimitsUnenforceable' },
      });
    }
    if (cgroups.mode === 'required' && unenforced.length > 0) {
      throw new BackendError('BACKEND_UNAVAILABLE', `profile ${spec.profileName}: process backend ${options.name} requires cgroups (isolation.cgroups "required"), and cannot use ${unenforced.map((u) => `${u.controller} (${u.why})`).join(', ')}`, {
        details: { field: 'isolation.cgroups', reason: 'CgroupsUnavailable' },
      });
    }
    return report;
  }

  async function phaseOf(state: StateFile): Promise<{ phase: WorkerPhase; worker: ProcessIdentity | null }> {
    const worker = await locate(state);
    if (worker) return { phase: 'running', worker };
    // A worker stopped for a limit exits 0 (it shuts down gracefully on SIGTERM), yet it failed.
    if (state.exit) return { phase: state.exit.code === 0 && !STOPPED_FOR_A_LIMIT.has(state.exit.reason) ? 'succeeded' : 'failed', worker };
    if (state.creating && creatingHere.has(state.spawnId)) return { phase: 'pending', worker };
    return { phase: 'gone', worker };
  }

  async function listeningEndpoint(state: StateFile): Promise<WorkerEndpoint | null> {
    if (state.socketPath) return { socketPath: state.socketPath };
    let log: string;
    try {
      log = await readFile(state.logFile, 'utf8');
    } catch {
      return null;
    }
    for (const line of log.split('\n')) {
      if (!line.startsWith('{') || !line.includes('"listening"')) continue;
      try {
        const event = JSON.parse(line) as { event?: string; port?: number; url?: string; address?: { url?: string } };
        if (event.event !== 'listening') continue;
        const url = event.url ?? event.address?.url ?? (event.port ? `http://127.0.0.1:${event.port}` : undefined);
        if (url) return { baseUrl: url };
      } catch {
        // a log line that merely mentions "listening"
      }
    }
    return null;
  }

  async function requireState(ref: WorkerRef): Promise<StateFile> {
    const state = await readState(ref.spawnId);
    if (!state) throw new BackendError('BACKEND_NOT_FOUND', `process worker ${ref.spawnId} (pid ${ref.nativeId}) is not known to backend ${options.name}`);
    return state;
  }

  /**
   * A hostPath must exist (a typo is not silently made into a new empty folder) and stay under an
   * allowed root once symlinks are resolved (checkSpec's test is on the path as written).
   */
  async function checkHostPath(profile: string, wanted: string): Promise<string> {
    const checked = await resolveHostPath(wanted, options.allowedHostPaths ?? []);
    if (!checked.ok && checked.reason === 'HostPathNotFound') {
      throw new BackendError('BACKEND_FAILED', `profile ${profile}: host path ${wanted} cannot be used as the workspace: ${checked.error.code === 'ENOENT' ? 'it does not exist (create it first)' : checked.error.message}`, { details: { field: 'workspace.path' } });
    }
    if (!checked.ok) throw new BackendError('BACKEND_FAILED', `profile ${profile}: host path ${wanted} leads to ${checked.real} (symlinks resolved), which is not under an allowed host path of backend ${options.name}`, { details: { field: 'workspace.path' } });
    if (!(await stat(checked.real)).isDirectory()) throw new BackendError('BACKEND_FAILED', `profile ${profile}: host path ${wanted} is not a folder`, { details: { field: 'workspace.path' } });
    return checked.real;
  }

  /** Whether setsid and mkfifo are on a PATH: a fact of the host, looked up once per PATH. */
  const prelaunchTools = new Map<string, Promise<boolean>>();

  /**
   * The agent to start beside the worker (isolation.ts AGENT_PRELAUNCH), when the worker is this
   * package's own (it knows to adopt it), nothing must precede the agent, and every program the
   * prelaunch runs is there: else null, and the worker starts its agent itself, after its own boot.
   */
  async function prelaunchOf(env: Record<string, string>, workspace: string): Promise<PrelaunchPlan | null> {
    // As the worker sees its working directory: resolved, so that both sides compute the same plan.
    const plan = prelaunchPlan(env, await realpath(workspace).catch(() => workspace));
    if (!plan?.argv[0]) return null;
    const path = env['PATH'] ?? '';
    let tools = prelaunchTools.get(path);
    if (!tools) {
      tools = Promise.all(['setsid', 'mkfifo'].map((cmd) => resolveCommand(cmd, workspace))).then((found) => found.every(Boolean));
      prelaunchTools.set(path, tools);
    }
    const [agent, usable] = await Promise.all([resolveCommand(plan.argv[0], workspace), tools]);
    return agent && usable ? plan : null;
  }

  /** Starts the child of an intent and records its pid; throws with nothing of it left running. */
  async function startChild(spec: WorkerSpec, intent: StateFile, report: ProcessHostReport): Promise<{ state: StateFile; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> }> {
    const uid = intent.uid ?? null;
    /** A folder of the worker's own: under uid isolation, its uid's (0700), in the gateway's folder it cannot list. */
    const ownFolder = async (path: string) => {
      await mkdir(path, { recursive: true, mode: 0o700 });
      if (uid !== null) await chown(path, uid, uid);
    };
    const workspace = spec.workspace.strategy === 'hostPath' ? await checkHostPath(spec.profileName, spec.workspace.path) : join(intent.dir, 'workspace');
    if (spec.workspace.strategy !== 'hostPath') await ownFolder(workspace);
    const home = join(intent.dir, 'home');
    await ownFolder(home);
    // Agents leave sockets, extracted libraries and crash reports in $TMPDIR: this worker's own, removed with it.
    const tmp = join(intent.dir, 'tmp');
    await ownFolder(tmp);
    // The worker binds its socket in a folder of its own: no other worker can reach it.
    if (intent.socketPath) await ownFolder(dirname(intent.socketPath));
    // egress none: a fresh network namespace has no route anywhere, so the worker is reached over a unix socket.
    // Egress through spawngate's proxy: the same, plus loopback (where the worker offers the proxy to its agent).
    const ownProxy = usesOwnProxy(spec);
    const isolated = spec.egress === 'none' || ownProxy;
    const [cmd, ...cmdArgs] = workerArgv(spec);
    if (!cmd) throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: empty worker command`, { details: { field: 'command' } });
    // The command is exec'd behind the wrappers (cgroup gate, unshare, setpriv), where "not found"
    // would be the exit of a started worker: looked up first, as spawn() itself would fail.
    if (!(await resolveCommand(cmd, workspace))) {
      throw new BackendError('BACKEND_FAILED', `cannot start worker ${cmd}: spawn ${cmd} ENOENT`, { details: { reason: 'StartError' } });
    }
    const egressSocket = join(intent.dir, 'egress.sock');
    if (ownProxy) {
      // Into the worker's own log, so `spawngate logs` shows what the agent tried to reach.
      const logProxy = (d: EgressDecision) => void appendFile(intent.logFile, `${egressLogLine(d)}\n`).catch(() => undefined);
      proxies.set(spec.spawnId, await startEgressProxy({ socketPath: egressSocket, allow: spec.egressAllow, onDecision: logProxy }));
      if (uid !== null) {
        // This worker's way out, and no other worker's.
        await chown(egressSocket, uid, uid);
        await chmod(egressSocket, 0o600);
      }
    }
    const memory = parseMemoryBytes(spec.resources.limits.memory);
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      // Apart from the workspace: an agent's dotfiles and caches are not the work (removed with the worker).
      HOME: home,
      TMPDIR: tmp,
      ...spec.env,
      // Resolved only here, into the worker's environment (which its agent inherits): never argv, the state file or a log.
      ...Object.fromEntries(spec.secretEnv.map((ref) => [ref.name, secretValue(spec, ref)])),
      SPAWNGATE_WORKER_TOKEN: spec.token,
      SPAWNGATE_AGENT_ID: spec.agentId,
      ...(spec.agentCommand ? { SPAWNGATE_AGENT_COMMAND: JSON.stringify(spec.agentCommand) } : {}),
      SPAWNGATE_LISTEN: intent.socketPath ? `unix:${intent.socketPath}` : '127.0.0.1:0',
      // How status() finds a worker whose pid was never recorded; a profile cannot override it.
      SPAWNGATE_SPAWN_ID: spec.spawnId,
      // The worker stops itself at the deadline too, so a gateway restart (which loses the kill timer) cannot extend it.
      SPAWNGATE_DEADLINE: String(Math.floor(Date.now() / 1000) + spec.timeoutSeconds),
      ...(spec.traceparent ? { TRACEPARENT: spec.traceparent } : {}),
      ...(spec.egress === 'proxy' && options.proxyUrl ? { HTTPS_PROXY: options.proxyUrl, HTTP_PROXY: options.proxyUrl } : {}),
      ...(ownProxy ? { SPAWNGATE_EGRESS_PROXY_SOCKET: egressSocket } : {}),
      // On top of the cgroup's limit: a V8 heap cap makes a Node worker fail with a heap error before the OOM killer comes.
      ...(memory ? { NODE_OPTIONS: `--max-old-space-size=${Math.max(32, Math.floor((memory / 2 ** 20) * 0.75))}` } : {}),
    };
    let argv = [cmd, ...cmdArgs];
    // Only this backend says an agent was started beside the worker (a profile's env cannot).
    for (const name of Object.values(PRELAUNCH_ENV)) delete env[name];
    const prelaunch = spec.command || options.workerCommand ? null : await prelaunchOf(env, workspace);
    if (prelaunch) {
      const fifos = join(intent.dir, PRELAUNCH_DIR);
      await ownFolder(fifos);
      env[PRELAUNCH_ENV.dir] = fifos;
      env[PRELAUNCH_ENV.sum] = prelaunch.sum;
      const pairs = Object.entries(prelaunch.extraEnv).map(([k, v]) => `${k}=${v}`);
      argv = [...AGENT_PRELAUNCH, fifos, String(prelaunch.argv.length), String(pairs.length), ...pairs, ...prelaunch.argv, ...argv];
    }
    const loopbackUp = ownProxy ? [...LOOPBACK_UP] : [];
    if (uid !== null) {
      // setpriv drops to the worker's uid last: the namespace and the cgroup are made by the gateway's user.
      const drop = dropArgs(uid, uid);
      if (!isolated) argv = [...drop, ...argv];
      else if (report.identity.netnsBeforeDrop) argv = ['unshare', ...UNSHARE_NET_ARGS, ...loopbackUp, ...drop, ...argv];
      else argv = [...drop, 'unshare', ...UNSHARE_ARGS, ...loopbackUp, ...argv];
    } else if (isolated) argv = ['unshare', ...UNSHARE_ARGS, ...loopbackUp, ...argv];
    // First of all, the worker's first process joins its cgroups: nothing of it runs unlimited.
    if (intent.cgroup) argv = [...CGROUP_GATE, ...procsFiles(intent.cgroup), '--', ...argv];
    const logFd = openSync(intent.logFile, 'a', 0o600);
    let child: ChildProcess;
    try {
      child = spawn(argv[0]!, argv.slice(1), { cwd: workspace, env, detached: true, stdio: ['ignore', logFd, logFd] });
    } finally {
      closeSync(logFd);
    }
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    try {
      const pid = await new Promise<number>((resolve, reject) => {
        child.once('spawn', () => resolve(child.pid ?? -1));
        child.once('error', (err) =>
          reject(new BackendError('BACKEND_FAILED', `cannot start worker ${argv[0]}: ${err.message}`, { cause: err, details: { reason: 'StartError' } })),
        );
      });
      const startTime = processStartTime(pid);
      let exit: StateFile['exit'] = null;
      if (!startTime) {
        // Dead before its start time could be read. Not a failed create: the worker ran and left its
        // log, which running() reports with the exit, so wait the milliseconds until the exit is known.
        const early = await within(exited, 15_000);
        exit = early ? { ...early, reason: exitReason(early.code, early.signal, false) } : { code: null, signal: null, reason: 'Unknown' };
      }
      const state: StateFile = { ...intent, pid, startTime, creating: false, exit };
      writeStateSync(state);
      child.unref();
      return { state, exited };
    } catch (err) {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) signalGroup(child.pid, 'SIGKILL');
      throw err;
    }
  }

  let leasesCollectedAt = 0;
  /** Now and then (at most every 10 minutes, in the background): leases whose spawn's folder was removed by hand go back to the range. */
  function collectLeases(): void {
    if (Date.now() - leasesCollectedAt < 10 * 60_000) return;
    leasesCollectedAt = Date.now();
    void uidPool.collect().catch(() => undefined);
    // And the cgroups of such workers: every live worker here holds a lease (taken before its groups are made).
    void host()
      .then(async (report) => {
        if (!report.cgroups.host) return;
        const leased = new Set([...(await uidPool.leases()).values()].map((lease) => lease.spawnId));
        await collectCgroups(report.cgroups.host, (spawnId) => Promise.resolve(leased.has(spawnId)));
      })
      .catch(() => undefined);
  }

  /** Where a worker's cgroups would be, for a delete that has no state file to read them from. */
  async function plannedCgroup(spawnId: string): Promise<CgroupPlan | null> {
    if ((isolationOptions.cgroups ?? 'auto') === 'off') return null;
    const found = (await host()).cgroups.host;
    return found ? planCgroup(found, spawnId) : null;
  }

  const backend: Backend = {
    specVersion: BACKEND_SPEC_VERSION,
    kind: 'process',
    name: options.name,

    async validate(spec) {
      checkSpec(spec);
      const report = await checkHostOnce(spec);
      if (usesOwnProxy(spec)) {
        loopback ??= probeWorkerNetwork(report.identity, true);
        const probe = await loopback;
        if (!probe.ok) {
          throw new BackendError('BACKEND_UNAVAILABLE', `profile ${spec.profileName}: egress "proxy" through spawngate's proxy needs a network namespace with loopback, which this host cannot make (${probe.reason}); install util-linux and iproute2 (ip) and allow user namespaces, or set proxyUrl`, {
            details: { field: 'egress', reason: 'IsolationUnavailable' },
          });
        }
      }
      if (spec.egress === 'none') {
        isolation ??= probeWorkerNetwork(report.identity, false);
        const probe = await isolation;
        if (!probe.ok) {
          throw new BackendError('BACKEND_UNAVAILABLE', `profile ${spec.profileName}: egress "none" needs an empty network namespace, which this host cannot make (${probe.reason}); install util-linux and allow user namespaces, or use a container backend`, {
            details: { field: 'egress', reason: 'IsolationUnavailable' },
          });
        }
      }
    },

    async create(spec) {
      checkSpec(spec);
      const report = await checkHostOnce(spec);
      const cgroup = report.cgroups.host ? planCgroup(report.cgroups.host, spec.spawnId) : null;
      const dir = join(stateDir, spec.spawnId);
      const now = new Date();
      const intent: StateFile = {
        spawnId: spec.spawnId,
        backendName: options.name,
        pid: null,
        startTime: null,
        creating: true,
        labels: { ...spec.labels },
        expiresAt: spec.expiresAt.toISOString(),
        createdAt: now.toISOString(),
        deadlineAt: new Date(now.getTime() + spec.timeoutSeconds * 1000).toISOString(),
        dir,
        logFile: join(dir, 'worker.log'),
        socketPath: spec.egress === 'none' || usesOwnProxy(spec) ? join(dir, SOCKET_DIR, 'w.sock') : null,
        token: spec.token,
        exit: null,
        uid: null,
        cgroup,
      };
      creatingHere.add(spec.spawnId);
      try {
        try {
          await writeIntent(intent);
        } catch (err) {
          throw new BackendError('BACKEND_FAILED', `cannot write the state of worker ${spec.spawnId} under ${stateDir}: ${(err as Error).message}`, {
            cause: err,
            details: { field: 'stateDir', reason: 'StateDirUnwritable' },
          });
        }
        let started;
        try {
          const leasing = async (): Promise<StateFile> => {
            if (report.identity.mode !== 'uid') return intent;
            // Leased after the intent exists (a delete finds the lease by the spawn id), recorded before anything runs as it.
            collectLeases();
            const leased = { ...intent, uid: await uidPool.acquire(spec.spawnId, resolve(stateDir)) };
            await writeState(leased);
            return leased;
          };
          const grouping = async (): Promise<void> => {
            if (cgroup) await createCgroup(cgroup, { memoryBytes: parseMemoryBytes(spec.resources.limits.memory), cpu: parseCpu(spec.resources.limits.cpu), pids: spec.pidsLimit ?? report.cgroups.pidsMax });
          };
          // Side by side (neither needs the other), and both settled before any cleanup below runs:
          // a lease or cgroup still being made while it is removed would outlive the failed create.
          const [leased, grouped] = await Promise.allSettled([leasing(), grouping()]);
          if (leased.status === 'rejected') throw leased.reason;
          if (grouped.status === 'rejected') throw grouped.reason;
          started = await startChild(spec, leased.value, report);
        } catch (err) {
          // Nothing half-made may outlive a failed create: the caller gets no ref to delete it by.
          await proxies.get(spec.spawnId)?.close().catch(() => undefined);
          proxies.delete(spec.spawnId);
          if (cgroup) await removeCgroup(cgroup).catch(() => undefined);
          await uidPool.kill(spec.spawnId).catch(() => undefined);
          await chmod(dir, 0o700).catch(() => undefined);
          await uidPool.release(spec.spawnId).catch(() => undefined);
          await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 20 }).catch(() => undefined);
          if (err instanceof SpawngateError) throw err;
          throw new BackendError('BACKEND_FAILED', `cannot start worker ${spec.spawnId}: ${(err as Error).message}`, { cause: err, details: { reason: 'StartError' } });
        }
        const { state, exited } = started;
        const pid = state.pid ?? -1;
        // Recorded even for a child that was gone before its start time could be read: its exit code is the reason.
        const record = exited
          .then(async ({ code, signal }) => {
            const timer = deadlines.get(spec.spawnId);
            if (timer) clearTimeout(timer);
            deadlines.delete(spec.spawnId);
            deadlineTargets.delete(spec.spawnId);
            clearInterval(sizeWatches.get(spec.spawnId));
            sizeWatches.delete(spec.spawnId);
            const wasTimedOut = timedOut.delete(spec.spawnId);
            const wasOversized = oversized.delete(spec.spawnId);
            const oom = cgroup !== null && (signal !== null || code !== 0) && (await oomKills(cgroup)) > 0;
            const reason = exitReason(code, signal, wasTimedOut, wasOversized, oom);
            if (deleting.has(spec.spawnId)) return;
            // The state dir may already be gone when the exit follows a delete.
            const current = await readState(spec.spawnId);
            if (current) await writeState({ ...current, exit: { code, signal, reason } });
          })
          .catch(() => undefined)
          .finally(() => exitRecords.delete(spec.spawnId));
        exitRecords.set(spec.spawnId, record);
        if (state.startTime) armDeadline(spec.spawnId, { pid, startTime: state.startTime }, spec.timeoutSeconds * 1000, cgroup);
        const limit = 'sizeLimit' in spec.workspace ? parseMemoryBytes(spec.workspace.sizeLimit ?? null) : null;
        if (state.startTime && limit !== null && spec.workspace.strategy !== 'hostPath') armSizeWatch(spec.spawnId, { pid, startTime: state.startTime }, join(dir, 'workspace'), limit);
        return { spawnId: spec.spawnId, backendName: options.name, nativeId: String(pid) };
      } finally {
        creatingHere.delete(spec.spawnId);
      }
    },

    async running(ref, { timeoutMs, signal }) {
      const deadline = Date.now() + timeoutMs;
      let backoff = 5;
      for (;;) {
        signal?.throwIfAborted();
        const state = await readState(ref.spawnId);
        if (!state) throw new BackendError('BACKEND_NOT_FOUND', `process worker ${ref.spawnId} is not known to backend ${options.name} (deleted?)`, { details: { reason: 'NotFound' } });
        const { phase, worker } = await phaseOf(state);
        if (phase !== 'running' && phase !== 'pending') {
          const status = await backend.status(ref);
          throw new BackendError('BACKEND_FAILED', `process worker ${ref.spawnId} (pid ${state.pid ?? 'unknown'}) is not running: ${status.reason ?? 'Unknown'}${status.message ? ` (${status.message})` : ''}`, {
            details: { reason: status.reason ?? 'Unknown', exitCode: status.exitCode, pid: state.pid },
          });
        }
        // With a unix socket the address is known up front; on TCP the worker prints the port it got.
        const endpoint = worker ? await listeningEndpoint(state) : null;
        if (endpoint) return endpoint;
        if (Date.now() >= deadline) {
          throw new BackendError('TIMEOUT', `process worker ${ref.spawnId} (pid ${worker?.pid ?? 'unknown'}) did not ${worker ? 'print its {"event":"listening"} line' : 'start'} within ${timeoutMs} ms`, {
            retryable: true,
            details: { reason: worker ? 'ListenTimeout' : 'StartTimeout' },
          });
        }
        await sleep(backoff, undefined, signal ? { signal } : undefined).catch((err: unknown) => {
          throw signal?.aborted ? signal.reason : err;
        });
        backoff = Math.min(50, backoff * 2);
      }
    },

    ended(ref, signal) {
      const record = exitRecords.get(ref.spawnId);
      if (!record) return null;
      return new Promise<WorkerStatus | null>((resolve) => {
        const stop = () => resolve(null);
        if (signal.aborted) return stop();
        signal.addEventListener('abort', stop, { once: true });
        // The record settles once the exit is on disk, where status() reads its reason.
        void record
          .then(() => (signal.aborted ? null : backend.status(ref)))
          .then(resolve, () => resolve(null))
          .finally(() => signal.removeEventListener('abort', stop));
      });
    },

    async status(ref) {
      const found = await readState(ref.spawnId);
      if (!found) return { nativeId: ref.nativeId, phase: 'gone', ready: false, reason: 'NotFound', message: null, exitCode: null, attributes: { 'process.pid': Number(ref.nativeId) } };
      let state = found;
      let { phase, worker } = await phaseOf(state);
      if (!worker && !state.exit) {
        state = await settledState(state);
        ({ phase, worker } = await phaseOf(state));
      }
      let ready = false;
      if (worker) {
        const endpoint = await listeningEndpoint(state);
        if (endpoint) {
          ready = await createWorkerClient({ ...endpoint, token: state.token })
            .healthz()
            .then(
              () => true,
              () => false,
            );
        }
      }
      const pid = worker?.pid ?? state.pid;
      let message: string | null = null;
      if (state.exit) message = `exit code ${state.exit.code ?? 'none'}${state.exit.signal ? `, signal ${state.exit.signal}` : ''}`;
      else if (phase === 'gone') message = state.creating ? 'the worker was being created, and no process carries its spawn id' : 'process is gone and its exit was not observed';
      let reason: string | null = null;
      if (!worker && phase !== 'pending') {
        // An exit this gateway did not see (it restarted) may still show in the worker's memory group.
        const oom = !state.exit && state.cgroup ? (await oomKills(state.cgroup)) > 0 : false;
        reason = state.exit?.reason ?? (oom ? 'OOMKilled' : 'Unknown');
      }
      const status: WorkerStatus = {
        nativeId: pid === null ? '' : String(pid),
        phase,
        ready,
        reason,
        message,
        exitCode: state.exit?.code ?? null,
        attributes: pid === null ? {} : { 'process.pid': pid },
      };
      return status;
    },

    async logs(ref, { tail = 200 } = {}) {
      const state = await requireState(ref);
      const text = await readFile(state.logFile, 'utf8').catch(() => '');
      const lines = text.split('\n');
      if (lines.at(-1) === '') lines.pop();
      return lines.slice(-tail);
    },

    async delete(ref) {
      const timer = deadlines.get(ref.spawnId);
      if (timer) clearTimeout(timer);
      deadlines.delete(ref.spawnId);
      deadlineTargets.delete(ref.spawnId);
      clearInterval(sizeWatches.get(ref.spawnId));
      sizeWatches.delete(ref.spawnId);
      deleting.add(ref.spawnId);
      const proxy = proxies.get(ref.spawnId);
      proxies.delete(ref.spawnId);
      try {
        const state = await readState(ref.spawnId);
        try {
          // An intent without a pid is found by its environment: a worker whose pid was never recorded is still stopped.
          const worker = state ? await locate(state) : null;
          if (worker) await terminate(worker, state?.cgroup ?? null);
          // terminate() returns once the worker is a zombie, which can be before its exit event.
          const record = exitRecords.get(ref.spawnId);
          if (record) await within(record, killGraceMs + 2000);
        } finally {
          // Only once the worker is gone: under egress "proxy" it flushes its spans through the proxy as it stops.
          await proxy?.close();
        }
        // What is left of it: processes that left its process group (in its cgroup, or of its uid), its cgroups, its uid's lease.
        const cgroup = state ? (state.cgroup ?? null) : await plannedCgroup(ref.spawnId);
        if (cgroup) await removeCgroup(cgroup);
        await uidPool.kill(ref.spawnId);
        // Closed to its uid before the uid goes back: a later holder of it cannot reach what this worker left.
        await chmod(join(stateDir, ref.spawnId), 0o700).catch(() => undefined);
        await uidPool.release(ref.spawnId);
        // Retries cover a writer this object does not know (another backend object on the same stateDir).
        await rm(join(stateDir, ref.spawnId), { recursive: true, force: true, maxRetries: 5, retryDelay: 20 });
        // A gateway killed between staging and rename left only the staging folder (no process: the child comes after the rename).
        await rm(join(stateDir, `${STAGING_PREFIX}${ref.spawnId}`), { recursive: true, force: true });
      } finally {
        deleting.delete(ref.spawnId);
      }
    },

    async claimed(ref, change) {
      const state = await requireState(ref);
      await writeState({ ...state, labels: { ...state.labels, ...change.labels }, token: change.token, deadlineAt: change.deadline.toISOString() });
      const target = deadlineTargets.get(ref.spawnId);
      if (target && deadlines.has(ref.spawnId)) armDeadline(ref.spawnId, target.worker, Math.max(0, change.deadline.getTime() - Date.now()), target.cgroup);
    },

    async list(selector) {
      let entries: string[];
      try {
        entries = await readdir(stateDir);
      } catch {
        return [];
      }
      const found: ListedWorker[] = [];
      for (const spawnId of entries) {
        if (spawnId.startsWith(STAGING_PREFIX)) {
          const staged = await listStaged(spawnId.slice(STAGING_PREFIX.length), selector);
          if (staged) found.push(staged);
          continue;
        }
        const state = await readState(spawnId);
        if (!state || state.backendName !== options.name) continue;
        if (!Object.entries(selector).every(([k, v]) => state.labels[k] === v)) continue;
        const { phase, worker } = await phaseOf(state);
        const pid = worker?.pid ?? state.pid;
        const expires = Number(state.labels[LABELS.expiresAt]);
        found.push({
          ref: { spawnId, backendName: options.name, nativeId: pid === null ? '' : String(pid) },
          labels: state.labels,
          expiresAt: Number.isFinite(expires) && expires > 0 ? new Date(expires * 1000) : new Date(state.expiresAt),
          phase,
        });
      }
      return found;
    },

    close() {
      for (const timer of deadlines.values()) clearTimeout(timer);
      deadlines.clear();
      deadlineTargets.clear();
      return Promise.resolve();
    },
  };
  return backend;
}
