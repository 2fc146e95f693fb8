import type * as AcpSdk from '@agentclientprotocol/sdk';
import type { ClientConnection, InitializeResponse, McpServer, PromptResponse, RequestPermissionRequest, RequestPermissionResponse, SessionUpdate } from '@agentclientprotocol/sdk';

export interface AcpSessionOptions {
  stdin: WritableStream<Uint8Array>;
  stdout: ReadableStream<Uint8Array>;
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

let sdk: typeof AcpSdk | null = null;

/**
 * The ACP SDK, loaded on first use. It and the zod it builds its schemas with take about as long to
 * load as the agent process takes to start, so the worker starts the agent first and loads the SDK
 * while the agent boots (openAcpSession), instead of before.
 */
async function loadAcp(): Promise<typeof AcpSdk> {
  sdk ??= await import('@agentclientprotocol/sdk');
  return sdk;
}

/** Opens the ACP client connection over the agent's stdio, then runs initialize and session/new once. */
export async function openAcpSession(options: AcpSessionOptions): Promise<AcpSession> {
  const acp = await loadAcp();
  let sessionId: string | null = null;
  const connection: ClientConnection = acp
    .client({ name: 'spawngate-worker' })
    .onNotification('session/update', ({ params }) => {
      // Synchronous on purpose: the SDK does not wait for async handlers, so any await here could reorder deltas.
      if (sessionId !== null && params.sessionId === sessionId) options.onUpdate(params.update);
    })
    .onRequest('session/request_permission', ({ params }) => options.onPermission(params))
    .connect(acp.ndJsonStream(options.stdin, options.stdout));

  try {
    const init = await connection.agent.request('initialize', {
      protocolVersion: acp.PROTOCOL_VERSION,
      // No fs/terminal: the agent works on its own workspace; the worker is not an editor that could serve them.
      clientCapabilities: { fs: { readTextFile: false, writeTextFile: false }, terminal: false },
      clientInfo: { name: 'spawngate-worker', version: '1' },
    });
    const agentInfo = init.agentInfo ? { name: init.agentInfo.name, version: init.agentInfo.version } : null;
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
        return connection.agent.request(
          'session/prompt',
          {
            sessionId: id,
            prompt: [{ type: 'text', text }],
            // ACP reserves these root _meta keys for W3C trace context, so agents can continue the trace.
            ...(traceparent ? { _meta: { traceparent } } : {}),
          },
          // Keep waiting after $/cancel_request: the answer is how the worker knows the agent let go of
          // the prompt (its late updates would otherwise leak into the next turn).
          { cancellationSignal: signal, stopWaitingOnCancel: false },
        );
      },
      cancel() {
        return connection.agent.notify('session/cancel', { sessionId: id });
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

async function openOrResume(connection: ClientConnection, init: InitializeResponse, options: AcpSessionOptions): Promise<OpenedSession> {
  const resumeId = options.resumeSessionId;
  const mcpServers = [...(options.mcpServers ?? [])];
  if (!resumeId) return connection.agent.request('session/new', { cwd: options.cwd, mcpServers });
  const caps = init.agentCapabilities ?? null;
  if (caps?.sessionCapabilities?.resume) {
    const resumed = (await connection.agent.request('session/resume', { sessionId: resumeId, cwd: options.cwd, mcpServers })) as Omit<OpenedSession, 'sessionId'>;
    return { ...resumed, sessionId: resumeId };
  }
  if (caps?.loadSession) {
    const loaded = (await connection.agent.request('session/load', { sessionId: resumeId, cwd: options.cwd, mcpServers })) as Omit<OpenedSession, 'sessionId'>;
    return { ...loaded, sessionId: resumeId };
  }
  throw new Error(`the agent cannot resume session ${resumeId}: it offers neither session/resume nor session/load`);
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
async function applyModel(connection: ClientConnection, sessionId: string, model: string, opened: OpenedSession): Promise<ModelOutcome> {
  const options = Array.isArray(opened.configOptions) ? opened.configOptions.map(record).filter((o) => o !== null) : [];
  const modelOption = options.find((o) => o.category === 'model' && o.type === 'select');
  if (modelOption && typeof modelOption.id === 'string') {
    const available = selectValues(modelOption);
    if (!available.includes(model)) return { requested: model, applied: false, available };
    if (modelOption.currentValue !== model) await connection.agent.request('session/set_config_option', { sessionId, configId: modelOption.id, value: model });
    return { requested: model, applied: true, available };
  }
  const models = record(opened.models);
  const list = Array.isArray(models?.availableModels) ? models.availableModels.map((m) => record(m)?.modelId).filter((m): m is string => typeof m === 'string') : [];
  if (list.includes(model)) {
    if (models?.currentModelId !== model) await (connection.agent.request)('session/set_model', { sessionId, modelId: model });
    return { requested: model, applied: true, available: list };
  }
  return { requested: model, applied: false, available: list };
}

/** Whether an error from a request is the peer's JSON-RPC error (as opposed to a transport failure). */
export function acpErrorCode(err: unknown): number | null {
  // Without the SDK loaded no request was ever made, so nothing can be a peer's error.
  return sdk !== null && err instanceof sdk.RequestError ? err.code : null;
}

const MAX_ERROR_DATA_CHARS = 16 * 1024;

/** The `data` of an ACP error, kept for the turn.failed event: as sent when small, else its first 16 KiB as text. */
export function acpErrorData(err: unknown): unknown {
  if (sdk === null || !(err instanceof sdk.RequestError) || err.data === undefined) return undefined;
  let text: string | undefined;
  try {
    text = JSON.stringify(err.data);
  } catch {
    return undefined;
  }
  if (text === undefined) return undefined;
  return text.length <= MAX_ERROR_DATA_CHARS ? err.data : `${text.slice(0, MAX_ERROR_DATA_CHARS)}…[truncated]`;
}
