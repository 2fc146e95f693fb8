/**
 * The sessions layer's public types: what a spawn reports while it travels, the handle of a live
 * worker, status and listings, the sweeper's report, and the Lifecycle itself.
 */
import type { Context } from '@opentelemetry/api';
import type { Admission, ReserveResult } from '../admission/gate.js';
import type { SpawnRequestInput } from '../admission/request.js';
import type { AllowDecision } from '../admission/types.js';
import type { TreeUsage } from '../admission/store/types.js';
import type { BackendResolver } from '../backends/registry.js';
import type { WorkerEndpoint, WorkerStatus } from '../backends/types.js';
import type { WorkerEvent, WorkerStatusReport } from '../protocol/events.js';
import type { ResolvedAgent } from '../config/index.js';
import type { WarmPoolStatus } from './warm-pool.js';

export type SpawnProgress =
  | { stage: 'admission' }
  /** Waiting for a concurrency slot (request waitSeconds): its place in the queue, 1 = next, each time it changes. */
  | { stage: 'queued'; position: number }
  | { stage: 'admitted'; backend: string; profile: string; egress: string; ttlSeconds: number }
  | { stage: 'creating'; backend: string; profile: string }
  | { stage: 'created'; nativeId: string }
  /** The backend's own state while the worker starts, each time it changes (e.g. a Pod pending with reason Unschedulable). */
  | { stage: 'waiting'; nativeId: string; phase: WorkerStatus['phase']; reason: string | null; message: string | null }
  /** `warm`: the spawn claimed a worker its profile's pool had started ahead. */
  | { stage: 'ready'; nativeId: string; readyMs: number; warm?: boolean };

/** An allowed result of `reserve()`: a decision with its slots already taken. */
export type AllowedReservation = Extract<ReserveResult, { allowed: true }>;

export interface SpawnOptions {
  signal?: AbortSignal;
  onProgress?: (progress: SpawnProgress) => void;
  parent?: Context;
  /**
   * Start the worker on a reservation taken earlier with `reserve()` (e.g. in a gateway's
   * pre-tool hook) instead of deciding and reserving again: its decision places the worker, its
   * slots become the worker's, and a failed spawn releases them. The request must name the same
   * agent; its session wishes (cwd, env, model, resumeSessionId) may add to the reserved
   * request's, bounded by the profile's `accept` as always.
   */
  reserved?: AllowedReservation;
}

export type CloseReason = 'closed' | 'expired' | 'failed' | 'orphaned' | 'shutdown' | 'lease_lost';

export interface SpawnStatus {
  spawnId: string;
  /** live: tracked by this gateway; closed: closed by it; untracked: found on a backend only (another gateway, or before a restart). */
  tracking: 'live' | 'closed' | 'untracked';
  backend: string;
  profile: string | null;
  agentId: string | null;
  nativeId: string;
  expiresAt: string | null;
  closeReason: CloseReason | null;
  backendStatus: WorkerStatus;
  /** The worker's own /status, when it answers. */
  worker: WorkerStatusReport | null;
}

/** What a caller learns of a ready spawn: the HTTP API's answer to a spawn, an idempotency key's record. */
export interface SpawnSummary {
  spawnId: string;
  /** The admission decision's id (decision_id in the decision log). */
  decisionId: string;
  agentId: string;
  backend: string;
  profile: string;
  nativeId: string;
  /** RFC 3339; when the TTL closes the worker. */
  expiresAt: string;
  decision: AllowDecision;
  /** The spawn tree's counts just after this spawn took its share; absent when its decision named no tree budget. */
  tree?: TreeUsage;
}

export interface WorkerHandle {
  readonly spawnId: string;
  /** The admission decision it runs on: decision_id of its decision-log line, its label spawngate.io/decision-id. */
  readonly decisionId: string;
  readonly backend: string;
  readonly profile: string;
  readonly agentId: string;
  readonly nativeId: string;
  readonly decision: AllowDecision;
  readonly endpoint: WorkerEndpoint;
  readonly expiresAt: Date;
  /** Session wishes of the request that the profile did not accept (e.g. "cwd", "env.FOO"). */
  readonly dropped: readonly string[];
  /** true when this spawn claimed a warm worker of its profile's pool instead of starting one. */
  readonly warm?: boolean;
  /** true when this spawn was made by an earlier request with the same idempotency key. */
  readonly replayed?: boolean;
  /** The spawn tree's counts just after this spawn took its share (decision.limits.tree); absent without one. */
  readonly tree?: TreeUsage;
  turn(message: string, options?: { turnId?: string; signal?: AbortSignal }): AsyncIterable<WorkerEvent>;
  cancel(): Promise<void>;
  status(): Promise<SpawnStatus>;
  logs(tail?: number): Promise<string[]>;
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export interface SweepEntry {
  spawnId: string;
  backend: string;
  nativeId: string;
  reason: 'expired' | 'orphaned' | 'exited';
  deleted: boolean;
  error?: string;
}

/** A lease this instance held with no worker behind it, released by the reconciler. */
export interface ReleasedLease {
  reservationId: string;
  spawnId: string;
  released: boolean;
  error?: string;
}

export interface SweepReport {
  dryRun: boolean;
  removed: SweepEntry[];
  /** Leases released because no worker and no caller stood behind them. */
  releasedLeases: ReleasedLease[];
  kept: number;
  errors: { backend: string; error: string }[];
}

export interface ListedSpawn {
  spawnId: string;
  backend: string;
  profile: string | null;
  agentId: string | null;
  nativeId: string;
  phase: string;
  expiresAt: string | null;
  owner: string | null;
  tracked: boolean;
  /** A warm worker of this gateway's pools, not claimed by any spawn yet. */
  warm?: boolean;
}

export interface LifecycleOptions {
  admission: Admission;
  resolveBackend: BackendResolver;
  /** The owner group on worker labels: the sweeper looks for orphans among this group's workers only. */
  owner: string;
  /** This gateway process; recorded on the workers it creates (a worker's liveness is its lease, not this label). */
  instanceId: string;
  /** ACP agent argv for an agent id; null = the worker's built-in agent of that id. */
  /** The agent's command, env and model where the decision placed it; throws CONFIG_INVALID for an agent nobody can start. */
  agent: (agentId: string, backend: string, profile: string) => ResolvedAgent;
  /** The gateway's environment (its OTEL_* settings reach the workers); default process.env. */
  gatewayEnv?: Readonly<Record<string, string | undefined>>;
  /**
   * Keep the warm pools of the config's profiles (`warmPool`) filled, from startWarmPools() on. For a long-lived gateway
   * (`spawngate serve`, the OpenClaw plugin); a one-shot CLI command leaves it off. Default false.
   */
  warmPools?: boolean;
  /** Periodic sweep; 0 or null disables it. */
  sweepIntervalMs?: number | null;
  clock?: () => Date;
}

export interface CollectedDiff {
  format: 'diff';
  /** The commit the workspace was checked out at. */
  base: string;
  diff: string;
}

export interface CollectedArchive {
  format: 'archive';
  /** gzipped tar; read it to the end or destroy it. */
  stream: NodeJS.ReadableStream & { destroy(error?: Error): void };
}

export interface Lifecycle {
  spawn(request: SpawnRequestInput, options?: SpawnOptions): Promise<WorkerHandle>;
  get(spawnId: string): WorkerHandle | undefined;
  turn(spawnId: string, message: string, options?: { turnId?: string; signal?: AbortSignal }): AsyncIterable<WorkerEvent>;
  cancel(spawnId: string): Promise<void>;
  status(spawnId: string): Promise<SpawnStatus>;
  logs(spawnId: string, tail?: number): Promise<string[]>;
  /**
   * The results of a live worker before it goes: `diff` (a `git` workspace: everything changed since
   * the checked-out commit, as a unified diff) or `archive` (the workspace as a .tar.gz stream).
   */
  collect(spawnId: string, options: { format: 'diff' }): Promise<CollectedDiff>;
  collect(spawnId: string, options: { format: 'archive'; git?: boolean }): Promise<CollectedArchive>;
  close(spawnId: string): Promise<void>;
  list(options?: { allOwners?: boolean }): Promise<ListedSpawn[]>;
  sweep(options?: { dryRun?: boolean; orphans?: boolean }): Promise<SweepReport>;
  /** Starts filling the warm pools (with `warmPools`; createSpawngate calls it after its start-up sweep). */
  startWarmPools(): void;
  /** Each warm pool's counts (none without `warmPools`). */
  warmPools(): WarmPoolStatus[];
  /** Resolves true once every warm pool is full or backing off after a failure; false when `timeoutMs` passed first. */
  warmPoolsSettled(timeoutMs: number): Promise<boolean>;
  /** Stops timers and deletes warm workers; with `closeWorkers`, closes every live worker first. */
  shutdown(options?: { closeWorkers?: boolean }): Promise<void>;
}
