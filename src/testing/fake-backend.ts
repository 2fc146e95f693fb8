/**
 * An in-memory Backend for tests of code that embeds spawngate (shipped in `spawngate/testing`).
 * Each "resource" is the reference worker running inside the test process on a loopback port, with
 * a real ACP agent behind it (the built-in echo agent, or the command the spec names), so turns,
 * cancel, status and logs behave as on a real backend. No Docker, no cluster, no state on disk;
 * `kill`, `failNextCreate` and `exitBeforeReady` inject the failures a test wants to see handled.
 */
import { resolveBuiltinAgent } from '../agents/index.js';
import type { Backend, ListedWorker, WorkerEndpoint, WorkerPhase, WorkerSpec, WorkerStatus } from '../backends/types.js';
import { BACKEND_SPEC_VERSION, LABELS } from '../backends/types.js';
import { BackendError } from '../errors.js';
import type { RunningWorker } from '../worker/worker.js';
import { startWorker } from '../worker/worker.js';

export interface FakeBackendOptions {
  /** The configured backend name the lifecycle resolves to this backend. Default `fake`. */
  name?: string;
}

export interface FakeWorker {
  readonly spec: WorkerSpec;
  readonly nativeId: string;
  phase: WorkerPhase;
  reason: string | null;
  exitCode: number | null;
  readonly logs: string[];
}

export interface FakeBackend extends Backend {
  /** Every resource this backend has now, by spawn id (deleted ones are gone). */
  readonly workers: ReadonlyMap<string, FakeWorker>;
  /** The worker of `spawnId` dies as a crash or an OOM kill would: its server closes and status says why. */
  kill(spawnId: string, reason?: string, exitCode?: number): Promise<void>;
  /** The next create() fails with this error (default: a BACKEND_FAILED "injected") and creates nothing. */
  failNextCreate(error?: Error): void;
  /** The next worker created exits before it is ready, with this reason and exit code. */
  exitBeforeReady(reason?: string, exitCode?: number): void;
}

interface Entry extends FakeWorker {
  worker: RunningWorker | null;
  endpoint: WorkerEndpoint | null;
  /** Settles when the worker listens or dies first. */
  started: Promise<void>;
}

export function createFakeBackend(options: FakeBackendOptions = {}): FakeBackend {
  const name = options.name ?? 'fake';
  const entries = new Map<string, Entry>();
  let createFailure: Error | null = null;
  let earlyExit: { reason: string; exitCode: number } | null = null;
  let counter = 0;

  const matches = (labels: Readonly<Record<string, string>>, selector: Readonly<Record<string, string>>) =>
    Object.entries(selector).every(([k, v]) => labels[k] === v);

  async function stop(entry: Entry, phase: WorkerPhase, reason: string | null, exitCode: number | null): Promise<void> {
    entry.phase = phase;
    entry.reason = reason;
    entry.exitCode = exitCode;
    entry.logs.push(`worker stopped: ${reason ?? 'deleted'}`);
    const worker = entry.worker;
    entry.worker = null;
    await worker?.close();
  }

  function agentOf(spec: WorkerSpec): string[] {
    const argv = spec.agentCommand ? [...spec.agentCommand] : resolveBuiltinAgent(spec.agentId)?.command;
    if (!argv?.length) throw new BackendError('BACKEND_FAILED', `fake backend ${name}: agent ${spec.agentId} has no command and is not built in`, { details: { reason: 'StartError' } });
    return argv;
  }

  const backend: FakeBackend = {
    specVersion: BACKEND_SPEC_VERSION,
    kind: 'process',
    name,
    workers: entries,

    validate(spec) {
      agentOf(spec);
      return Promise.resolve();
    },

    create(spec) {
      if (createFailure) {
        const err = createFailure;
        createFailure = null;
        return Promise.reject(err);
      }
      const [command, ...args] = agentOf(spec);
      // A pid-like id keeps telemetry attributes (process.pid) meaningful.
      const nativeId = String(900_000 + ++counter);
      const entry: Entry = { spec, nativeId, phase: 'starting', reason: null, exitCode: null, logs: [], worker: null, endpoint: null, started: Promise.resolve() };
      entries.set(spec.spawnId, entry);
      const exit = earlyExit;
      earlyExit = null;
      entry.started = (async () => {
        if (exit) {
          entry.logs.push(`agent ${spec.agentId} exited during start-up (injected): ${exit.reason}`);
          await stop(entry, 'failed', exit.reason, exit.exitCode);
          return;
        }
        try {
          const worker = await startWorker({
            agentCommand: command!,
            agentArgs: args,
            agentEnv: { ...spec.env },
            agentId: spec.agentId,
            token: spec.token,
            listen: { port: 0 },
            exitOnAgentExit: false,
            onLog: (line) => entry.logs.push(JSON.stringify(line)),
          });
          if (entry.phase !== 'starting') {
            // Deleted or killed while it was starting.
            await worker.close();
            return;
          }
          entry.worker = worker;
          entry.endpoint = 'url' in worker.address ? { baseUrl: worker.address.url } : { socketPath: worker.address.socketPath };
          entry.phase = 'running';
        } catch (err) {
          entry.logs.push(`worker failed to start: ${(err as Error).message}`);
          entry.phase = 'failed';
          entry.reason = 'StartError';
        }
      })();
      return Promise.resolve({ spawnId: spec.spawnId, backendName: name, nativeId });
    },

    async running(ref) {
      const entry = entries.get(ref.spawnId);
      if (!entry) throw new BackendError('BACKEND_NOT_FOUND', `fake worker ${ref.spawnId} does not exist`, { details: { reason: 'NotFound' } });
      await entry.started;
      if (!entry.endpoint || entry.phase !== 'running') {
        throw new BackendError('BACKEND_FAILED', `fake worker ${ref.spawnId} exited before it was ready (${entry.reason ?? 'Exited'})`, {
          details: { reason: entry.reason ?? 'Exited', exitCode: entry.exitCode },
        });
      }
      return entry.endpoint;
    },

    status(ref) {
      const entry = entries.get(ref.spawnId);
      const attributes = { 'process.pid': Number(ref.nativeId) };
      if (!entry) return Promise.resolve({ nativeId: ref.nativeId, phase: 'gone', ready: false, reason: 'NotFound', message: 'the fake worker does not exist', exitCode: null, attributes });
      const status: WorkerStatus = {
        nativeId: entry.nativeId,
        phase: entry.phase,
        ready: entry.phase === 'running',
        reason: entry.reason,
        message: entry.exitCode === null ? null : `exit code ${entry.exitCode}`,
        exitCode: entry.exitCode,
        attributes,
      };
      return Promise.resolve(status);
    },

    logs(ref, { tail = 200 } = {}) {
      const entry = entries.get(ref.spawnId);
      if (!entry) return Promise.reject(new BackendError('BACKEND_NOT_FOUND', `fake worker ${ref.spawnId} does not exist`));
      return Promise.resolve(entry.logs.slice(-tail));
    },

    async delete(ref) {
      const entry = entries.get(ref.spawnId);
      if (!entry) return;
      entries.delete(ref.spawnId);
      await stop(entry, 'gone', entry.reason, entry.exitCode);
    },

    list(selector) {
      const found: ListedWorker[] = [];
      for (const [spawnId, entry] of entries) {
        if (!matches(entry.spec.labels, selector)) continue;
        const expires = Number(entry.spec.labels[LABELS.expiresAt]);
        found.push({
          ref: { spawnId, backendName: name, nativeId: entry.nativeId },
          labels: entry.spec.labels,
          expiresAt: Number.isFinite(expires) && expires > 0 ? new Date(expires * 1000) : entry.spec.expiresAt,
          phase: entry.phase,
        });
      }
      return Promise.resolve(found);
    },

    async kill(spawnId, reason = 'Error', exitCode = 1) {
      const entry = entries.get(spawnId);
      if (!entry) throw new BackendError('BACKEND_NOT_FOUND', `fake worker ${spawnId} does not exist`);
      await entry.started;
      await stop(entry, 'failed', reason, exitCode);
    },

    failNextCreate(error) {
      createFailure = error ?? new BackendError('BACKEND_FAILED', `fake backend ${name}: create failed (injected)`, { details: { reason: 'Injected' } });
    },

    exitBeforeReady(reason = 'Error', exitCode = 1) {
      earlyExit = { reason, exitCode };
    },

    async close() {
      await Promise.all([...entries.values()].flatMap((e) => (e.worker ? [e.worker.close()] : [])));
    },
  };
  return backend;
}
