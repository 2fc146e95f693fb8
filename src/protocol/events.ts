/**
 * The worker HTTP contract: the NDJSON events of POST /turn and the JSON bodies of the other routes.
 * Types (and the deadline exit status) — the reference worker (src/worker/) produces these, the worker client
 * (src/protocol/client.ts) consumes them, and neither side needs the other's code.
 * docs/worker-protocol.md describes the same contract for implementers in other languages.
 */

/** Bumped only for breaking changes of routes or event shapes; additive fields and event types keep it. */
export type WorkerProtocolVersion = 1;

/** Fields every event line carries. `seq` starts at 0 (turn.started) and grows by one per line of a turn. */
export interface WorkerEventBase {
  turnId: string;
  seq: number;
  /** RFC 3339 time the worker emitted the line. */
  time: string;
  /** The W3C `traceparent` the /turn request carried, so consumers can keep the trace going. */
  traceparent?: string;
  /** The trace id part of `traceparent`. */
  traceId?: string;
}

export interface TurnStartedEvent extends WorkerEventBase {
  type: 'turn.started';
  agentId: string;
}

export interface AgentMessageDeltaEvent extends WorkerEventBase {
  type: 'agent.message.delta';
  text: string;
}

export interface AgentThoughtDeltaEvent extends WorkerEventBase {
  type: 'agent.thought.delta';
  text: string;
}

/** ACP tool kinds (`read`, `edit`, `execute`, …); kept open because agents may send newer ones. */
export type ToolKind = string;
export type ToolCallStatus = 'pending' | 'in_progress' | 'completed' | 'failed';

export interface ToolCallEvent extends WorkerEventBase {
  type: 'tool.call';
  toolCallId: string;
  title: string;
  kind: ToolKind;
  status: ToolCallStatus;
}

export interface ToolResultEvent extends WorkerEventBase {
  type: 'tool.result';
  toolCallId: string;
  /** The title from the matching tool.call, or null when the agent never announced the call. */
  title: string | null;
  status: 'completed' | 'failed';
  /** Text summary of the tool's output (text blocks, file edits as unified diffs, terminal ids), truncated. */
  content: string;
}

/** The agent's plan for the turn, whole each time (ACP `plan`: every update replaces the previous one). */
export interface AgentPlanEvent extends WorkerEventBase {
  type: 'agent.plan';
  entries: { content: string; priority: 'high' | 'medium' | 'low'; status: 'pending' | 'in_progress' | 'completed' }[];
}

/** Context window use of the session (ACP `usage_update`): tokens used of `size`, and the cumulative cost when the agent knows it. */
export interface AgentUsageEvent extends WorkerEventBase {
  type: 'agent.usage';
  used: number;
  size: number;
  cost: { amount: number; currency: string } | null;
}

/** An ACP permission option as the agent offered it. */
export interface PermissionOptionInfo {
  optionId: string;
  name: string;
  kind: 'allow_once' | 'allow_always' | 'reject_once' | 'reject_always' | (string & {});
}

/**
 * The agent asked before a tool call (ACP session/request_permission). The turn waits until the
 * request is answered (POST /permission), cancelled with the turn, or times out (rejected).
 */
export interface PermissionRequestedEvent extends WorkerEventBase {
  type: 'permission.requested';
  requestId: string;
  toolCallId: string;
  title: string | null;
  kind: ToolKind;
  /** Every path the request names, absolute with symlinks resolved, and whether it is under the workspace. */
  paths: { path: string; inWorkspace: boolean }[];
  /** The agent's working directory (symlinks resolved). */
  workspace: string;
  options: PermissionOptionInfo[];
  /** The tool's input as the agent sent it (credential shapes cut; beyond 4 KiB, its start as text), or null. */
  rawInput: unknown;
}

/**
 * How the request was answered: `gateway` (its permission policy, with the policy's code and reason),
 * `worker` (its own fixed mode, SPAWNGATE_PERMISSIONS), `timeout` (nobody answered in time: rejected)
 * or `cancel` (the turn was cancelled first). `outcome` is the kind of the chosen option, or
 * `cancelled` when none was chosen (ACP's answer that grants nothing).
 */
export interface PermissionDecidedEvent extends WorkerEventBase {
  type: 'permission.decided';
  requestId: string;
  toolCallId: string;
  outcome: PermissionOptionInfo['kind'] | 'cancelled';
  optionId: string | null;
  by: 'gateway' | 'worker' | 'timeout' | 'cancel';
  code: string;
  reason: string;
}

/** ACP stop reasons; `cancelled` never appears here (that is turn.cancelled). */
export type StopReason = 'end_turn' | 'max_tokens' | 'max_turn_requests' | 'refusal' | (string & {});

export interface TurnCompletedEvent extends WorkerEventBase {
  type: 'turn.completed';
  stopReason: StopReason;
}

/**
 * `agent_exited`: the agent process ended during the turn (exitCode/signal say how).
 * `agent_error`: the agent answered session/prompt with a JSON-RPC error (acpCode is its code).
 * `agent_unavailable`: the ACP connection was gone before the prompt could be sent.
 */
export type TurnFailureCode = 'agent_exited' | 'agent_error' | 'agent_unavailable';

export interface TurnFailedEvent extends WorkerEventBase {
  type: 'turn.failed';
  error: {
    code: TurnFailureCode;
    message: string;
    exitCode?: number | null;
    signal?: string | null;
    acpCode?: number;
    /** The ACP error's `data` as the agent sent it (JSON, at most 16 KiB serialized; larger is cut to a string). */
    acpData?: unknown;
  };
}

/** Why a turn was cancelled: POST /cancel, the HTTP client went away, the worker shut down, or the agent chose to stop. */
export type CancelReason = 'client_cancel' | 'client_disconnect' | 'shutdown' | 'agent';

export interface TurnCancelledEvent extends WorkerEventBase {
  type: 'turn.cancelled';
  reason: CancelReason;
  /** true when the agent did not finish within the cancel grace period and the worker ended the turn itself. */
  forced: boolean;
}

export type WorkerEvent =
  | TurnStartedEvent
  | AgentMessageDeltaEvent
  | AgentThoughtDeltaEvent
  | ToolCallEvent
  | ToolResultEvent
  | AgentPlanEvent
  | AgentUsageEvent
  | PermissionRequestedEvent
  | PermissionDecidedEvent
  | TurnCompletedEvent
  | TurnFailedEvent
  | TurnCancelledEvent;

export type WorkerEventType = WorkerEvent['type'];
/** Exactly one of these ends every turn stream, and it is always the last line. */
export type TerminalWorkerEvent = TurnCompletedEvent | TurnFailedEvent | TurnCancelledEvent;

/** POST /turn body. */
export interface TurnRequest {
  message: string;
  /** 1–128 chars of [A-Za-z0-9._:-]; the worker mints a UUID when absent. */
  turnId?: string;
}

/** POST /permission body: the answer to a pending permission.requested (optionId null: grant nothing). */
export interface PermissionAnswer {
  requestId: string;
  optionId: string | null;
  /** The deciding rule's code and reason, repeated in permission.decided. */
  code: string;
  reason: string;
}

/** POST /permission → 200. */
export interface PermissionAnswerResponse {
  requestId: string;
  outcome: PermissionDecidedEvent['outcome'];
}

/** GET /healthz: 200 with status "ok" once the ACP session exists, 503 with status "starting"/"exiting" and a reason otherwise. */
export interface Healthz {
  status: 'ok' | 'starting' | 'exiting';
  agentId: string;
  /** spawngate version of the worker. */
  version: string;
  protocolVersion: WorkerProtocolVersion;
  /** The agent's self-description from ACP initialize, when it gave one. */
  agentInfo?: { name: string; version: string } | null;
  reason?: string;
}

/** `starting` is reported until the ACP session exists (healthz is 503 meanwhile). */
export type WorkerState = 'starting' | 'idle' | 'busy' | 'exiting';

/** GET /status. Named apart from the backend-level WorkerStatus (src/backends/types.ts). */
export interface WorkerStatusReport {
  state: WorkerState;
  agentId: string;
  /** Turns accepted since the worker started. */
  turns: number;
  outcomes: { completed: number; failed: number; cancelled: number };
  currentTurnId: string | null;
  startedAt: string;
  lastEventAt: string | null;
  agentPid: number | null;
  /** The ACP session once it exists: its id (what a gateway resumes later), whether it was resumed, and the model outcome. */
  session?: { id: string; resumed: boolean; model: { requested: string; applied: boolean; available: string[] } | null } | null;
  /** The workspace: for a `git` one, what was checked out (GET /workspace/diff is against `base`). */
  workspace?: { git: { repo: string; ref: string | null; base: string } | null } | null;
}

/** POST /cancel → 202. `turnId` is the turn being cancelled, or null when no turn was open. */
export interface CancelResponse {
  turnId: string | null;
}

export interface WorkerLogLine {
  time: string;
  /** `worker`: the worker's own lines; `agent`: the agent process's stderr. */
  source: 'worker' | 'agent';
  level: 'debug' | 'info' | 'warn' | 'error';
  message: string;
}

/** GET /logs?tail=N (N ≤ 1000). */
export interface WorkerLogsResponse {
  lines: WorkerLogLine[];
}

/** Error body of every non-2xx answer. */
export interface WorkerErrorBody {
  error: {
    code: 'unauthorized' | 'busy' | 'not_ready' | 'exiting' | 'invalid_request' | 'payload_too_large' | 'unsupported_media_type' | 'not_found' | 'method_not_allowed' | 'not_a_git_workspace' | 'git_failed' | 'no_tar' | 'already_claimed' | 'not_claimable';
    message: string;
    currentTurnId?: string;
  };
}

/** A stable reason code (admission reasons, permission answers): lowercase, digits, "_" and "."; at most 64 characters. */
export const REASON_CODE = /^[a-z][a-z0-9_.]{0,63}$/;

/**
 * Exit status of a reference worker that stopped itself at its deadline (SPAWNGATE_DEADLINE, as GNU
 * `timeout` does); backends report it as reason DeadlineExceeded.
 */
export const WORKER_EXIT_DEADLINE = 124;
