import * as acp from '@agentclientprotocol/sdk';
import type { ClientConnection, PromptResponse, RequestPermissionRequest, RequestPermissionResponse, SessionUpdate } from '@agentclientprotocol/sdk';

export interface AcpSessionOptions {
  stdin: WritableStream<Uint8Array>;
  stdout: ReadableStream<Uint8Array>;
  cwd: string;
  /** Called in arrival order for every session/update of this session. */
  onUpdate: (update: SessionUpdate) => void;
  onPermission: (request: RequestPermissionRequest, response: RequestPermissionResponse) => void;
}

export interface AgentInfo {
  name: string;
  version: string;
}

export interface AcpSession {
  readonly sessionId: string;
  readonly agentInfo: AgentInfo | null;
  /** Aborts when the ACP connection closes (the agent's stdout ended or the stream broke). */
  readonly closedSignal: AbortSignal;
  prompt(text: string, options: { traceparent: string | null; signal: AbortSignal }): Promise<PromptResponse>;
  cancel(): Promise<void>;
  close(): void;
}

/**
 * The worker answers permission requests itself: the admission layer already decided what this worker
 * may do (profile, egress, allowed agents), and nobody is watching the worker to click "allow". The
 * narrowest grant that lets the agent proceed is `allow_once`; never `allow_always`, which would widen
 * what later turns may do without being asked. Without an allow_once option the request is cancelled,
 * which ACP agents treat as "not granted".
 */
export function answerPermission(request: RequestPermissionRequest): RequestPermissionResponse {
  const option = request.options.find((o) => o.kind === 'allow_once');
  return option ? { outcome: { outcome: 'selected', optionId: option.optionId } } : { outcome: { outcome: 'cancelled' } };
}

/** Opens the ACP client connection over the agent's stdio, then runs initialize and session/new once. */
export async function openAcpSession(options: AcpSessionOptions): Promise<AcpSession> {
  let sessionId: string | null = null;
  const connection: ClientConnection = acp
    .client({ name: 'spawngate-worker' })
    .onNotification('session/update', ({ params }) => {
      // Synchronous on purpose: the SDK does not wait for async handlers, so any await here could reorder deltas.
      if (sessionId !== null && params.sessionId === sessionId) options.onUpdate(params.update);
    })
    .onRequest('session/request_permission', ({ params }) => {
      const response = answerPermission(params);
      options.onPermission(params, response);
      return response;
    })
    .connect(acp.ndJsonStream(options.stdin, options.stdout));

  try {
    const init = await connection.agent.request('initialize', {
      protocolVersion: acp.PROTOCOL_VERSION,
      // No fs/terminal: the agent works on its own workspace; the worker is not an editor that could serve them.
      clientCapabilities: { fs: { readTextFile: false, writeTextFile: false }, terminal: false },
      clientInfo: { name: 'spawngate-worker', version: '1' },
    });
    const session = await connection.agent.request('session/new', { cwd: options.cwd, mcpServers: [] });
    sessionId = session.sessionId;
    const agentInfo = init.agentInfo ? { name: init.agentInfo.name, version: init.agentInfo.version } : null;
    const id = session.sessionId;
    return {
      sessionId: id,
      agentInfo,
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
          { cancellationSignal: signal, stopWaitingOnCancel: true },
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

/** Whether an error from a request is the peer's JSON-RPC error (as opposed to a transport failure). */
export function acpErrorCode(err: unknown): number | null {
  return err instanceof acp.RequestError ? err.code : null;
}
