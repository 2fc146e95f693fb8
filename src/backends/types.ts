/**
 * The backend contract. No runtime imports: a backend package (in-tree or third-party) depends on
 * this file only. `specVersion` lets the contract evolve without silently mismatching old drivers.
 *
 * Road of a worker (contract v2):
 *   validate(spec) → create(spec) → running(ref) → [sessions: GET /healthz] → [status/logs]* → delete(ref)
 * and, for the sweeper, list(selector) finds what exists even after the gateway restarted.
 *
 * A backend knows resources, not the worker protocol: `running` says the resource runs and how the
 * worker can be reached, or why it never will. Waiting for the worker to answer /healthz is one
 * strategy in the sessions layer (src/sessions/readiness.ts), the same for every backend, which also
 * watches `status` so a worker that dies while starting fails the spawn at once with its reason.
 *
 * v1 → v2: `waitReady(ref, token, options)`, which made each backend poll the worker's /healthz, is
 * replaced by `running(ref, options)`.
 */
import type { Egress } from '../admission/types.js';

export const BACKEND_SPEC_VERSION = 2 as const;

export const LABELS = {
  spawnId: 'spawngate.io/spawn-id',
  owner: 'spawngate.io/owner',
  /** The gateway process that created the worker; who keeps it alive is told by its lease, not by this label. */
  instance: 'spawngate.io/instance',
  profile: 'spawngate.io/profile',
  backend: 'spawngate.io/backend',
  agent: 'spawngate.io/agent',
  /** Unix seconds; a string because label values are strings everywhere (Docker, Kubernetes). */
  expiresAt: 'spawngate.io/expires-at',
} as const;

export type BackendKind = 'process' | 'container' | 'kubernetes';

export interface Quantities {
  cpu: string | null;
  memory: string | null;
  ephemeralStorage: string | null;
}

export type WorkspaceSpec =
  | { strategy: 'none' }
  | { strategy: 'ephemeral'; sizeLimit: string | null }
  | { strategy: 'volume'; claimName: string | null; sizeLimit: string | null }
  | { strategy: 'hostPath'; path: string }
  /** A fresh workspace (like ephemeral) into which the worker clones `repo` at `ref` before the agent starts. */
  | { strategy: 'git'; repo: string; ref: string | null; depth: number | null; sizeLimit: string | null };

export interface SecretEnvRef {
  name: string;
  secretRef: { name: string; key: string };
}

export interface Toleration {
  key?: string;
  operator?: 'Exists' | 'Equal';
  value?: string;
  effect?: 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute';
  tolerationSeconds?: number;
}

/** Everything a backend needs to start one worker; built by the lifecycle from config + decision. */
export interface WorkerSpec {
  spawnId: string;
  /** Identifies the spawngate instance; the sweeper only deletes its own owner's orphans unless told otherwise. */
  owner: string;
  backendName: string;
  profileName: string;
  agentId: string;
  /**
   * The ACP agent command the worker starts over stdio; null = the worker's own built-in agent of
   * that id (e.g. `echo`), resolved inside the worker because its install path differs per backend
   * (host checkout, /app in the image). Backends pass null on by leaving SPAWNGATE_AGENT_COMMAND unset.
   */
  agentCommand: readonly string[] | null;
  /** Worker image (container, kubernetes); the process backend runs the worker in-place. */
  image: string | null;
  /** Overrides of the worker entry (profile `command`/`args`); null = the reference worker. */
  command: readonly string[] | null;
  args: readonly string[] | null;
  env: Readonly<Record<string, string>>;
  secretEnv: readonly SecretEnvRef[];
  resources: { requests: Quantities; limits: Quantities; gpu: number };
  pidsLimit: number | null;
  runtimeClassName: string | null;
  nodeSelector: Readonly<Record<string, string>>;
  tolerations: readonly Toleration[];
  egress: Egress;
  /** Egress "proxy" through spawngate's own proxy: the hosts it lets through (`host[:port]`, `*.domain[:port]`). */
  egressAllow: readonly string[];
  workspace: WorkspaceSpec;
  /** Bearer token the worker demands on every request; never logged. */
  token: string;
  /**
   * Bounds create + ready, and is the hard limit on the worker's whole run: Kubernetes enforces it
   * as activeDeadlineSeconds; the process and Docker backends pass SPAWNGATE_DEADLINE and the
   * worker stops itself then (exit WORKER_EXIT_DEADLINE), which survives a gateway restart.
   */
  timeoutSeconds: number;
  expiresAt: Date;
  labels: Readonly<Record<string, string>>;
  traceparent: string | null;
}

/** How to reach a worker's HTTP contract. */
export type WorkerEndpoint = { baseUrl: string; socketPath?: undefined } | { socketPath: string; baseUrl?: undefined };

/** A created worker as the backend knows it; serialisable so a restarted gateway can rebuild it from list(). */
export interface WorkerRef {
  spawnId: string;
  backendName: string;
  /** pid | container id | namespace/podName */
  nativeId: string;
}

export type WorkerPhase = 'pending' | 'starting' | 'running' | 'succeeded' | 'failed' | 'gone' | 'unknown';

export interface WorkerStatus {
  nativeId: string;
  phase: WorkerPhase;
  ready: boolean;
  /** Machine-readable cause when not healthy: OOMKilled, Error, ImagePullBackOff, Unschedulable, DeadlineExceeded, Exited, Signaled… */
  reason: string | null;
  message: string | null;
  exitCode: number | null;
  /** Backend-native attributes for telemetry (process.pid, container.id, k8s.namespace.name, k8s.pod.name). */
  attributes: Readonly<Record<string, string | number>>;
}

export interface ListedWorker {
  ref: WorkerRef;
  labels: Readonly<Record<string, string>>;
  expiresAt: Date | null;
  phase: WorkerPhase;
}

export interface RunningOptions {
  /** Bound on the wait; running out of it rejects with a retryable BackendError TIMEOUT naming what was awaited. */
  timeoutMs: number;
  /** Aborting rejects with the signal's reason. */
  signal?: AbortSignal;
}

export interface ClaimChange {
  /** Labels to set on the worker (never spawn-id, owner, backend, profile or agent: those were the pool's and the spawn's alike). */
  labels: Readonly<Record<string, string>>;
  /** The claiming spawn's hard end, before the warm worker's own. */
  deadline: Date;
  /** The worker's token from now on. */
  token: string;
}

export interface LogsOptions {
  tail?: number;
}

export interface Backend {
  readonly specVersion: typeof BACKEND_SPEC_VERSION;
  readonly kind: BackendKind;
  /** The configured name (`agents.executionBackends.<name>`). */
  readonly name: string;
  /** Dry run: throws a BackendError naming the offending field when the spec cannot run here. Creates nothing. */
  validate(spec: WorkerSpec): Promise<void>;
  /**
   * Creates the resource and returns at once. Whatever list() needs to find it again (labels, a
   * state file) exists before the worker does; a create that fails leaves nothing behind.
   */
  create(spec: WorkerSpec): Promise<WorkerRef>;
  /**
   * Resolves once the backend sees the resource running and knows how to reach the worker. Never
   * talks to the worker itself. Rejects with a BackendError whose `details.reason` says why
   * (Exited, Error, OOMKilled, ImagePullBackOff, Unschedulable, DeadlineExceeded, NotFound…) as
   * soon as the resource can never get there; engine/API refusals carry `details.statusCode`.
   */
  running(ref: WorkerRef, options: RunningOptions): Promise<WorkerEndpoint>;
  /** `ready` may probe the worker's /healthz; `phase` and `reason` come from the backend alone. */
  status(ref: WorkerRef): Promise<WorkerStatus>;
  /**
   * Optional: the end of a worker this backend object watches without asking anyone (a child process
   * it spawned), so the readiness wait need not poll status() while the worker boots. Resolves with
   * the terminal status once the worker ended, null when `signal` aborts first. Returns null (not a
   * promise) when this object cannot watch `ref` (created by another gateway): the caller polls.
   */
  ended?(ref: WorkerRef, signal: AbortSignal): Promise<WorkerStatus | null> | null;
  logs(ref: WorkerRef, options?: LogsOptions): Promise<string[]>;
  /** Idempotent: deleting what is already gone resolves. */
  delete(ref: WorkerRef): Promise<void>;
  /** Every worker whose labels include all of `selector`. */
  list(selector: Readonly<Record<string, string>>): Promise<ListedWorker[]>;
  /**
   * Optional: a warm worker (started with SPAWNGATE_CLAIMABLE) was claimed by a spawn, which gave it
   * its own token and an earlier deadline. The backend records what it keeps of these: the spawn's
   * labels (decision id, expiry) where labels can change, its own run limit, the token it probes
   * /healthz with. A backend without it (Docker: labels are fixed at create) keeps the pool's
   * labels, whose expiry is later than the spawn's, and the worker enforces the deadline itself.
   */
  claimed?(ref: WorkerRef, change: ClaimChange): Promise<void>;
  /** Releases clients/watches; does not delete workers. */
  close?(): Promise<void>;
}

export type BackendFactory<Options> = (options: Options) => Backend;
