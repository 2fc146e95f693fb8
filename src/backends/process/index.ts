import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackendError } from '../../errors.js';
import { workerBinCommand } from '../../worker/main.js';
import type { Backend, ListedWorker, WorkerEndpoint, WorkerPhase, WorkerRef, WorkerSpec, WorkerStatus } from '../types.js';
import { BACKEND_SPEC_VERSION, LABELS, WORKER_EXIT_DEADLINE } from '../types.js';
import { createWorkerClient, waitForHealthy } from '../worker-client.js';
import { probeNetworkIsolation, UNSHARE_ARGS, type IsolationProbe } from './isolation.js';
import { isOurProcess, processStartTime, signalGroup } from './proc.js';

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
}

/** One file per worker: the backend's source of truth across gateway restarts. */
interface StateFile {
  spawnId: string;
  backendName: string;
  pid: number;
  startTime: string;
  labels: Record<string, string>;
  expiresAt: string;
  createdAt: string;
  deadlineAt: string;
  dir: string;
  logFile: string;
  socketPath: string | null;
  /** Kept (0600, in a 0700 folder of the gateway's user, who also owns the worker) so status() can probe /healthz after a restart. */
  token: string;
  exit: { code: number | null; signal: string | null; reason: string } | null;
}

export function defaultProcessStateDir(): string {
  return join(process.env.XDG_STATE_HOME ?? join(homedir(), '.local', 'state'), 'spawngate', 'process');
}

function parseMemoryBytes(quantity: string | null): number | null {
  if (!quantity) return null;
  const m = /^(\d+(?:\.\d+)?)([KMGTPE]i?|[kmM])?$/.exec(quantity);
  if (!m) return null;
  const units: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, K: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return Number(m[1]) * (m[2] ? (units[m[2]] ?? 1) : 1);
}

function exitReason(code: number | null, signal: string | null, timedOut: boolean): string {
  if (timedOut) return 'DeadlineExceeded';
  if (signal === 'SIGKILL') return 'Killed';
  if (signal) return 'Signaled';
  if (code === WORKER_EXIT_DEADLINE) return 'DeadlineExceeded';
  return code === 0 ? 'Completed' : 'Error';
}

export function createProcessBackend(options: ProcessBackendOptions): Backend {
  const stateDir = options.stateDir ?? defaultProcessStateDir();
  const killGraceMs = options.killGraceMs ?? 3000;
  // Deadline timers live only as long as this backend object; after a restart the sweeper takes over.
  const deadlines = new Map<string, NodeJS.Timeout>();
  const timedOut = new Set<string>();
  // The exit handler rewrites state.json; delete() must neither race it (a state file recreated
  // inside a folder being removed: ENOTEMPTY, and a "failed" worker listed forever) nor be undone by it.
  const exitWrites = new Map<string, Promise<void>>();
  const deleting = new Set<string>();

  const stateFile = (spawnId: string) => join(stateDir, spawnId, 'state.json');
  // The host does not change under us: probe once, on the first profile that needs it.
  let isolation: Promise<IsolationProbe> | null = null;

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

  function checkSpec(spec: WorkerSpec): void {
    if (spec.workspace.strategy === 'volume') {
      throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: workspace strategy "volume" is not supported by the process backend ${options.name}`, {
        details: { field: 'workspace.strategy' },
      });
    }
    if (spec.workspace.strategy === 'hostPath') {
      const wanted = spec.workspace.path;
      const allowed = (options.allowedHostPaths ?? []).some((root) => {
        const rel = relative(root, wanted);
        return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
      });
      if (!allowed) {
        throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: host path ${wanted} is not under an allowed host path of backend ${options.name}`, {
          details: { field: 'workspace.path' },
        });
      }
    }
    if (spec.egress === 'proxy' && !options.proxyUrl) {
      throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: egress "proxy" needs a proxyUrl on process backend ${options.name}`, {
        details: { field: 'egress' },
      });
    }
    if (spec.secretEnv.length > 0) {
      throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: secret references are not supported by the process backend (no secret store); use a kubernetes backend`, {
        details: { field: 'env' },
      });
    }
    if (spec.resources.gpu > 0) {
      throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: GPUs cannot be reserved by the process backend`, { details: { field: 'resources.gpu' } });
    }
  }

  function armDeadline(spawnId: string, pid: number, ms: number): void {
    const timer = setTimeout(() => {
      deadlines.delete(spawnId);
      timedOut.add(spawnId);
      void terminate(spawnId, pid);
    }, ms);
    timer.unref();
    deadlines.set(spawnId, timer);
  }

  async function terminate(spawnId: string, pid: number): Promise<void> {
    const state = await readState(spawnId);
    if (!state || state.pid !== pid || !(await isOurProcess(pid, state.startTime))) return;
    signalGroup(pid, 'SIGTERM');
    for (let waited = 0; waited < killGraceMs; waited += 50) {
      if (!(await isOurProcess(pid, state.startTime))) return;
      await sleep(50);
    }
    if (await isOurProcess(pid, state.startTime)) signalGroup(pid, 'SIGKILL');
  }

  async function phaseOf(state: StateFile): Promise<{ phase: WorkerPhase; alive: boolean }> {
    const alive = await isOurProcess(state.pid, state.startTime);
    if (alive) return { phase: 'running', alive };
    if (state.exit) return { phase: state.exit.code === 0 ? 'succeeded' : 'failed', alive };
    return { phase: 'gone', alive };
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

  return {
    specVersion: BACKEND_SPEC_VERSION,
    kind: 'process',
    name: options.name,

    async validate(spec) {
      checkSpec(spec);
      if (spec.egress === 'none') {
        isolation ??= probeNetworkIsolation();
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
      const dir = join(stateDir, spec.spawnId);
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const workspace = spec.workspace.strategy === 'hostPath' ? spec.workspace.path : join(dir, 'workspace');
      if (spec.workspace.strategy !== 'hostPath') await mkdir(workspace, { recursive: true, mode: 0o700 });
      const logFile = join(dir, 'worker.log');
      // egress none: a fresh network namespace has no route anywhere, so the worker is reached over a unix socket.
      const isolated = spec.egress === 'none';
      const socketPath = isolated ? join(dir, 'w.sock') : null;
      const [cmd, ...cmdArgs] = spec.command ? [...spec.command, ...(spec.args ?? [])] : [...(options.workerCommand ?? workerBinCommand()), ...(spec.args ?? [])];
      if (!cmd) throw new BackendError('BACKEND_FAILED', `profile ${spec.profileName}: empty worker command`, { details: { field: 'command' } });
      const argv = isolated ? ['unshare', ...UNSHARE_ARGS, cmd, ...cmdArgs] : [cmd, ...cmdArgs];
      const memory = parseMemoryBytes(spec.resources.limits.memory);
      const env: Record<string, string> = {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        HOME: workspace,
        ...spec.env,
        SPAWNGATE_WORKER_TOKEN: spec.token,
        SPAWNGATE_AGENT_ID: spec.agentId,
        ...(spec.agentCommand ? { SPAWNGATE_AGENT_COMMAND: JSON.stringify(spec.agentCommand) } : {}),
        SPAWNGATE_LISTEN: socketPath ? `unix:${socketPath}` : '127.0.0.1:0',
        SPAWNGATE_SPAWN_ID: spec.spawnId,
        // The worker stops itself at the deadline too, so a gateway restart (which loses the kill timer) cannot extend it.
        SPAWNGATE_DEADLINE: String(Math.floor(Date.now() / 1000) + spec.timeoutSeconds),
        ...(spec.traceparent ? { TRACEPARENT: spec.traceparent } : {}),
        ...(spec.egress === 'proxy' && options.proxyUrl ? { HTTPS_PROXY: options.proxyUrl, HTTP_PROXY: options.proxyUrl } : {}),
        // Best effort only: a V8 heap cap approximates the memory limit; there is no cgroup here.
        ...(memory ? { NODE_OPTIONS: `--max-old-space-size=${Math.max(32, Math.floor((memory / 2 ** 20) * 0.75))}` } : {}),
      };
      const logFd = openSync(logFile, 'a', 0o600);
      let child;
      try {
        child = spawn(argv[0]!, argv.slice(1), { cwd: workspace, env, detached: true, stdio: ['ignore', logFd, logFd] });
      } finally {
        closeSync(logFd);
      }
      const pid = await new Promise<number>((resolve, reject) => {
        child.once('spawn', () => resolve(child.pid ?? -1));
        child.once('error', (err) =>
          reject(new BackendError('BACKEND_FAILED', `cannot start worker ${argv[0]}: ${err.message}`, { cause: err, details: { reason: 'StartError' } })),
        );
      });
      const startTime = await processStartTime(pid);
      if (!startTime) {
        throw new BackendError('BACKEND_FAILED', `worker for ${spec.spawnId} exited immediately; see ${logFile}`, { details: { reason: 'Error' } });
      }
      const now = new Date();
      const state: StateFile = {
        spawnId: spec.spawnId,
        backendName: options.name,
        pid,
        startTime,
        labels: { ...spec.labels },
        expiresAt: spec.expiresAt.toISOString(),
        createdAt: now.toISOString(),
        deadlineAt: new Date(now.getTime() + spec.timeoutSeconds * 1000).toISOString(),
        dir,
        logFile,
        socketPath,
        token: spec.token,
        exit: null,
      };
      await writeState(state);
      child.once('exit', (code, signal) => {
        const timer = deadlines.get(spec.spawnId);
        if (timer) clearTimeout(timer);
        deadlines.delete(spec.spawnId);
        const reason = exitReason(code, signal, timedOut.delete(spec.spawnId));
        if (deleting.has(spec.spawnId)) return;
        // The state dir may already be gone when the exit follows a delete.
        const write = readState(spec.spawnId)
          .then((s) => (s ? writeState({ ...s, exit: { code, signal, reason } }) : undefined))
          .catch(() => undefined)
          .finally(() => exitWrites.delete(spec.spawnId));
        exitWrites.set(spec.spawnId, write);
      });
      child.unref();
      armDeadline(spec.spawnId, pid, spec.timeoutSeconds * 1000);
      return { spawnId: spec.spawnId, backendName: options.name, nativeId: String(pid) };
    },

    async waitReady(ref, token, { timeoutMs, signal }) {
      const deadline = Date.now() + timeoutMs;
      let endpoint: WorkerEndpoint | null = null;
      let backoff = 5;
      for (;;) {
        signal?.throwIfAborted();
        const state = await requireState(ref);
        const { alive } = await phaseOf(state);
        if (!alive) {
          const status = await this.status(ref);
          throw new BackendError('BACKEND_FAILED', `worker ${ref.spawnId} exited before it was ready (${status.reason ?? 'unknown'}${status.message ? `: ${status.message}` : ''})`, {
            details: { reason: status.reason, exitCode: status.exitCode },
          });
        }
        endpoint ??= await listeningEndpoint(state);
        if (endpoint) break;
        if (Date.now() >= deadline) throw new BackendError('TIMEOUT', `worker ${ref.spawnId} did not start listening within ${timeoutMs} ms`, { retryable: true });
        await sleep(backoff, undefined, signal ? { signal } : undefined);
        backoff = Math.min(50, backoff * 2);
      }
      const client = createWorkerClient({ ...endpoint, token });
      await waitForHealthy(client, { timeoutMs: Math.max(1, deadline - Date.now()), ...(signal ? { signal } : {}) });
      return endpoint;
    },

    async status(ref) {
      const state = await readState(ref.spawnId);
      if (!state) return { nativeId: ref.nativeId, phase: 'gone', ready: false, reason: 'NotFound', message: null, exitCode: null, attributes: { 'process.pid': Number(ref.nativeId) } };
      const { phase, alive } = await phaseOf(state);
      let ready = false;
      if (alive) {
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
      const status: WorkerStatus = {
        nativeId: String(state.pid),
        phase,
        ready,
        reason: alive ? null : (state.exit?.reason ?? 'Unknown'),
        message: state.exit ? `exit code ${state.exit.code ?? 'none'}${state.exit.signal ? `, signal ${state.exit.signal}` : ''}` : alive ? null : 'process is gone and its exit was not observed',
        exitCode: state.exit?.code ?? null,
        attributes: { 'process.pid': state.pid },
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
      deleting.add(ref.spawnId);
      try {
        const state = await readState(ref.spawnId);
        if (state) await terminate(ref.spawnId, state.pid);
        // terminate() returns once the worker is a zombie, which can be before its exit event.
        await exitWrites.get(ref.spawnId);
        // Retries cover a writer this object does not know (another backend object on the same stateDir).
        await rm(join(stateDir, ref.spawnId), { recursive: true, force: true, maxRetries: 5, retryDelay: 20 });
      } finally {
        deleting.delete(ref.spawnId);
      }
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
        const state = await readState(spawnId);
        if (!state || state.backendName !== options.name) continue;
        if (!Object.entries(selector).every(([k, v]) => state.labels[k] === v)) continue;
        const { phase } = await phaseOf(state);
        const expires = Number(state.labels[LABELS.expiresAt]);
        found.push({
          ref: { spawnId, backendName: options.name, nativeId: String(state.pid) },
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
      return Promise.resolve();
    },
  };
}
