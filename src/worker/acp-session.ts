import type { InitializeResponse, McpServer, PromptResponse, RequestPermissionRequest, RequestPermissionResponse, SessionNotification, SessionUpdate } from '@agentclientprotocol/sdk';
import { AcpRequestError, connectAcpClient, INVALID_PARAMS, type AcpClient, type ByteSink, type ByteSource } from './acp-client.js';
import { initializeProblem, objectResultProblem, permissionRequestProblem, promptResultProblem, sessionNotificationProblem, sessionResultProblem } from './acp-messages.js';

/** The protocol version the worker speaks (ACP's stable v1). */
const PROTOCOL_VERSION = 1;

export interface AcpSessionOptions {
  stdin: ByteSink;
  stdout: ByteSource;
  cwd: string;
  /** A model the session should use: applied through the agent's "model" config option (or the older session/set_model) when it offers it. */
  model?: string | null;
  /** Reopen this agent session (session/resume, else session/load) instead of starting a new one. */
  resumeSessionId?: string | null;
  /** MCP servers for the session, in ACP's shape (stdio `{name, command, args, env}`, `{type: "http", …}`). */
  mcpServers?: readonly McpServer[];
  /** Called in arrival order for every session/update of this session. */
  onUpdate: (update: SessionUpdate) => void;
  /** Answers the agent's session/request_permission (the worker's permission mode decides how). */
  onPermission: (request: RequestPermissionRequest) => Promise<RequestPermissionResponse>;
  /** A message of the agent that was not ACP and was refused (a notification dropped, a request answered with an error). */
  onProtocolFault?: (message: string) => void;
}

export interface AgentInfo {
  name: string;
  version: string;
}

/** What became of a requested model: applied, or dropped because the agent does not offer it. */
export interface ModelOutcome {
  requested: string;
  applied: boolean;
  /** The models the agent offers, when it says. */
  available: string[];
}

export interface AcpSession {
  readonly sessionId: string;
  readonly agentInfo: AgentInfo | null;
  readonly resumed: boolean;
  readonly model: ModelOutcome | null;
  /** Aborts when the ACP connection closes (the agent's stdout ended or the stream broke). */
  readonly closedSignal: AbortSignal;
  prompt(text: string, options: { traceparent: string | null; signal: AbortSignal }): Promise<PromptResponse>;
  cancel(): Promise<void>;
  close(): void;
}

/** Opens the ACP client connection over the agent's stdio, then runs initialize and session/new once. */
export async function openAcpSession(options: AcpSessionOptions): Promise<AcpSession> {
  let sessionId: string | null = null;
  const fault = (message: string): void => options.onProtocolFault?.(message);
  const connection = connectAcpClient(options.stdout, options.stdin, {
    onNotification(method, params) {
      if (method !== 'session/update') return;
      const problem = sessionNotificationProblem(params);
      if (problem) return fault(`dropped a session/update that is not ACP: ${problem}`);
      const notification = params as SessionNotification;
      // Synchronous on purpose: an await here could reorder deltas.
      if (sessionId !== null && notification.sessionId === sessionId) options.onUpdate(notification.update);
    },
    onRequest(method, params) {
      if (method !== 'session/request_permission') return null;
      const problem = permissionRequestProblem(params);
      if (problem) {
        fault(`refused a session/request_permission that is not ACP: ${problem}`);
        return Promise.reject(new AcpRequestError(INVALID_PARAMS, `Invalid params: ${problem}`));
      }
      return options.onPermission(params as RequestPermissionRequest);
    },
  });

  try {
    const init = await connection.request<InitializeResponse>('initialize', {
      protocolVersion: PROTOCOL_VERSION,
      // No fs/terminal: the agent works on its own workspace; the worker is not an editor that could serve them.
      clientCapabilities: { fs: { readTextFile: false, writeTextFile: false }, terminal: false },
      clientInfo: { name: 'spawngate-worker', version: '1' },
    }, initializeProblem);
    const agentInfo = agentInfoOf(init.agentInfo);
    const opened = await openOrResume(connection, init, options);
    // Updates that session/load replays arrive before this line and are dropped: they belong to earlier turns.
    sessionId = opened.sessionId;
    const id = opened.sessionId;
    const model = options.model ? await applyModel(connection, id, options.model, opened) : null;
    return {
      sessionId: id,
      agentInfo,
      resumed: Boolean(options.resumeSessionId),
      model,
      closedSignal: connection.signal,
      prompt(text, { traceparent, signal }) {
        return connection.request<PromptResponse>(
          'session/prompt',
          {
            sessionId: id,
            prompt: [{ type: 'text', text }],
            // ACP reserves these root _meta keys for W3C trace context, so agents can continue the trace.
            ...(traceparent ? { _meta: { traceparent } } : {}),
          },
          promptResultProblem,
          // Keeps waiting after $/cancel_request: the answer is how the worker knows the agent let go of
          // the prompt (its late updates would otherwise leak into the next turn).
          { signal },
        );
      },
      cancel() {
        return connection.notify('session/cancel', { sessionId: id });
      },
      close() {
        connection.close();
      },
    };
  } catch (err) {
    connection.close();
    throw err;
  }
}

interface OpenedSession {
  sessionId: string;
  configOptions?: unknown;
  models?: unknown;
}

async function openOrResume(connection: AcpClient, init: InitializeResponse, options: AcpSessionOptions): Promise<OpenedSession> {
  const resumeId = options.resumeSessionId;
  const mcpServers = [...(options.mcpServers ?? [])];
  if (!resumeId) return connection.request<OpenedSession>('session/new', { cwd: options.cwd, mcpServers }, (r) => sessionResultProblem(r, true));
  const caps = init.agentCapabilities ?? null;
  if (caps?.sessionCapabilities?.resume) {
    const resumed = await connection.request<Omit<OpenedSession, 'sessionId'>>('session/resume', { sessionId: resumeId, cwd: options.cwd, mcpServers }, (r) => sessionResultProblem(r, false));
    return { ...resumed, sessionId: resumeId };
  }
  if (caps?.loadSession) {
    const loaded = await connection.request<Omit<OpenedSession, 'sessionId'>>('session/load', { sessionId: resumeId, cwd: options.cwd, mcpServers }, (r) => sessionResultProblem(r, false));
    return { ...loaded, sessionId: resumeId };
  }
  throw new Error(`the agent cannot resume session ${resumeId}: it offers neither session/resume nor session/load`);
}

/** The agent's name and version as it gives them; an odd agentInfo costs the name, not the session. */
function agentInfoOf(value: unknown): AgentInfo | null {
  const info = record(value);
  if (typeof info?.name !== 'string') return null;
  return { name: info.name, version: typeof info.version === 'string' ? info.version : '' };
}

function record(value: unknown): Record<string, unknown> | null {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
}

/** Values of a select config option, flat or grouped. */
function selectValues(option: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const entry of Array.isArray(option.options) ? option.options : []) {
    const e = record(entry);
    if (typeof e?.value === 'string') out.push(e.value);
    for (const inner of Array.isArray(e?.options) ? e.options : []) {
      const v = record(inner)?.value;
      if (typeof v === 'string') out.push(v);
    }
  }
  return out;
}

/**
 * ACP offers a model choice as a session config option of category "model" (older agents: the
 * `models` field and session/set_model). A model the agent does not offer is not forced on it:
 * the session keeps the agent's default and the outcome says so (a gateway that must not run on
 * another model checks `applied`).
 */
async function applyModel(connection: AcpClient, sessionId: string, model: string, opened: OpenedSession): Promise<ModelOutcome> {
  const options = Array.isArray(opened.configOptions) ? opened.configOptions.map(record).filter((o) => o !== null) : [];
  const modelOption = options.find((o) => o.category === 'model' && o.type === 'select');
  if (modelOption && typeof modelOption.id === 'string') {
    const available = selectValues(modelOption);
    if (!available.includes(model)) return { requested: model, applied: false, available };
    if (modelOption.currentValue !== model) await connection.request('session/set_config_option', { sessionId, configId: modelOption.id, value: model }, objectResultProblem);
    return { requested: model, applied: true, available };
  }
  const models = record(opened.models);
  const list = Array.isArray(models?.availableModels) ? models.availableModels.map((m) => record(m)?.modelId).filter((m): m is string => typeof m === 'string') : [];
  if (list.includes(model)) {
    if (models?.currentModelId !== model) await connection.request('session/set_model', { sessionId, modelId: model }, objectResultProblem);
    return { requested: model, applied: true, available: list };
  }
  return { requested: model, applied: false, available: list };
}

/** Whether an error from a request is the peer's JSON-RPC error (as opposed to a transport failure). */
export function acpErrorCode(err: unknown): number | null {
  return err instanceof AcpRequestError ? err.code : null;
}

const MAX_ERROR_DATA_CHARS = 16 * 1024;

/** The `data` of an ACP error, kept for the turn.failed event: as sent when small, else its first 16 KiB as text. */
export function acpErrorData(err: unknown): unknown {
  if (!(err instanceof AcpRequestError) || err.data === undefined) return undefined;
  let text: string | undefined;
  try {
    text = JSON.stringify(err.data);
  } catch {
    return undefined;
  }
  if (text === undefined) return undefined;
  return text.length <= MAX_ERROR_DATA_CHARS ? err.data : `${text.slice(0, MAX_ERROR_DATA_CHARS)}…[truncated]`;
}
