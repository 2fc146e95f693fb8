/**
 * The admission contract: what the Rego policy (entrypoint `spawngate/admission/decision`) receives
 * and must return. Types only — the runtime shapes live in zod schemas next to the code that
 * validates them (src/admission/decision.ts, src/config/schema.ts).
 *
 * Concurrency/rate keys: the store counts a slot under `${scope}/${key}`.
 *   scope        key                         counts
 *   total        "*"                         every active worker
 *   backend      "<backend>"                 workers on that backend
 *   profile      "<backend>/<profile>"       workers on that profile
 *   user         "<userId>"                  a user's workers (all backends)
 *   channel      "<channelId>"               a channel's workers
 *   profile_user "<backend>/<profile>/<userId>"     a user's workers on one profile
 *   profile_channel "<backend>/<profile>/<channelId>" a channel's workers on one profile
 *   parent       "<sessionKey>"              the live children one session has spawned (fan-out)
 *
 * A spawn tree (everything spawned from one root session, however deep) is counted apart: see
 * TreeBudget.
 */
export type Egress = 'none' | 'proxy' | 'open';
export type Runtime = 'acp' | 'subagent';
export type BackendType = 'process' | 'container' | 'kubernetes';
export type ConcurrencyScope = 'total' | 'backend' | 'profile' | 'user' | 'channel' | 'profile_user' | 'profile_channel' | 'parent';
export type RateScope = 'user' | 'channel';
export type SelectionSource = 'explicit' | 'binding' | 'agent' | 'global' | 'backend_default' | 'none';

export interface AdmissionInput {
  request: {
    runtime: Runtime;
    agentId: string;
    /** What the caller asked for explicitly; null when it asked for nothing. */
    execution: { backend: string | null; profile: string | null; egress: Egress | null } | null;
    /** '' when the session's first turn comes later (an ACP session opened before its prompt). */
    task: string;
    label: string | null;
    /** The session wishes (null/[] when absent); env appears as names only, never values. */
    cwd: string | null;
    model: string | null;
    resumeSessionId: string | null;
    envNames: string[];
    /** Seconds the caller will wait for a concurrency slot (0: it would rather be denied). */
    waitSeconds: number;
  };
  caller: {
    sessionKey: string;
    parentSessionKey: string | null;
    /**
     * The session at the top of the caller's spawn tree: the request's `caller.rootSessionKey`,
     * else its parent session, else the caller's own session (a session spawned by nobody).
     */
    rootSessionKey: string;
    depth: number;
    channel: { id: string; kind: string; interactive: boolean };
    user: { id: string; roles: string[] };
  };
  /** The selection before policy: explicit > binding > agent default > global default > backend default. */
  resolved: { backend: string | null; profile: string | null; source: SelectionSource };
  /**
   * The engine's gate path sends the input without it and keeps it in the policy's data at
   * `data.spawngate.runtime.catalog`; a policy reads `input.catalog` when present, else that
   * (docs/policy.md, "Runtime data").
   */
  catalog: { backends: Record<string, CatalogBackend> };
  usage: Usage;
  now: string;
}

export interface CatalogBackend {
  type: BackendType;
  namespace: string | null;
  defaultProfile: string | null;
  /** Cap on all workers of this backend; null = no backend-level cap from config. */
  maxConcurrent: number | null;
  profiles: Record<string, CatalogProfile>;
}

export interface CatalogProfile {
  /** "build" marks the larger profile that build/test tasks are moved to. */
  class: 'standard' | 'build';
  resources: {
    requests: { cpu: string | null; memory: string | null };
    limits: { cpu: string | null; memory: string | null };
    gpu: number;
  };
  egress: Egress;
  /** The profile's egressAllow: what spawngate's egress proxy lets through when the decision's egress is "proxy". */
  egressAllow: string[];
  /** null = every agent may use it. */
  allowedAgents: string[] | null;
  interactiveOnly: boolean;
  timeoutSeconds: number | null;
  ttlSeconds: number | null;
  maxConcurrent: { profile: number | null; backend: number | null; channel: number | null; user: number | null };
}

/**
 * `backends`, `profiles`, `userProfiles` and `channelProfiles` hold the resolved backend's entries
 * only (none when it is unset or unknown): a policy places a spawn on a profile of that backend or
 * nowhere, and a missing entry counts 0.
 */
export interface Usage {
  total: number;
  user: number;
  channel: number;
  backends: Record<string, number>;
  /** keyed "<backend>/<profile>" */
  profiles: Record<string, number>;
  /** the caller's user on each profile, keyed "<backend>/<profile>" */
  userProfiles: Record<string, number>;
  /** the caller's channel on each profile, keyed "<backend>/<profile>" */
  channelProfiles: Record<string, number>;
  /** live workers the caller's own session has spawned (its fan-out; concurrency scope "parent") */
  children: number;
  /** spawns admitted in the last `windowSeconds` */
  recent: { windowSeconds: number; user: number; channel: number };
}

export interface ConcurrencyLimit {
  scope: ConcurrencyScope;
  key: string;
  max: number;
}

export interface RateLimit {
  scope: RateScope;
  key: string;
  perMinute: number;
  burst: number;
}

/**
 * Limits over a whole spawn tree (every spawn whose caller descends from `root`), kept by the
 * reservation store beside the caps and taken in the same atomic step. Fan-out per parent is a
 * concurrency limit of scope "parent"; depth is the caller's (the policy denies at its maximum).
 */
export interface TreeBudget {
  root: string;
  /** Spawns the tree may make while its counts are kept; null = no cap. */
  maxSpawns: number | null;
  /**
   * Worker-seconds the tree may use; null = no cap. A spawn is charged its whole TTL when admitted
   * (the most it can run) and refunded what it did not use when it ends, so no admitted spawn can
   * take the tree past its budget.
   */
  maxWorkerSeconds: number | null;
  /** How long the tree's counts outlive its last live worker; a tree idle longer starts afresh. */
  windowSeconds: number;
}

export interface DecisionLimits {
  concurrency: ConcurrencyLimit[];
  rate: RateLimit[];
  /** Absent: the spawn counts against no tree budget (and policies written before them stay valid). */
  tree?: TreeBudget;
}

/** How long a spawn denied by a full concurrency cap may wait for a slot, and its place in the queue. */
export interface WaitTerms {
  /** 0: no wait. */
  maxSeconds: number;
  /** 0..255, higher first. */
  priority: number;
}

export interface Reason {
  code: string;
  message: string;
}

export interface AllowDecision {
  allow: true;
  backend: string;
  profile: string;
  egress: Egress;
  /** With egress "proxy": the hosts spawngate's proxy lets through (host[:port], *.domain); absent from older policies (the profile's egressAllow then applies). */
  egressAllow?: string[];
  ttlSeconds: number;
  limits: DecisionLimits;
  /** Absent: the spawn may not wait (the caller asked for no wait, or the policy predates waiting). */
  wait?: WaitTerms;
  reasons: Reason[];
}

export interface DenyDecision {
  allow: false;
  backend: string | null;
  profile: string | null;
  egress: Egress | null;
  ttlSeconds: number | null;
  limits: DecisionLimits;
  /** When every reason is a full concurrency cap: how long the spawn may wait for a slot instead. */
  wait?: WaitTerms;
  /** At least one; codes are stable (see docs/deny-codes.md). */
  reasons: Reason[];
}

export type Decision = AllowDecision | DenyDecision;
