/** The worker's NDJSON turn events as OpenClaw ACP runtime events (plugin SDK `AcpRuntimeEvent`). */
import type { WorkerEvent } from '../../protocol/events.js';

const TOOL_KINDS = new Set(['read', 'edit', 'delete', 'move', 'search', 'execute', 'fetch', 'switch_mode', 'think', 'other']);

export type AcpRuntimeEvent =
  | { type: 'text_delta'; text: string; stream?: 'output' | 'thought'; tag?: string }
  | { type: 'status'; text: string; tag?: string }
  | { type: 'tool_call'; text: string; tag?: string; toolCallId?: string; status?: string; title?: string; kind?: string }
  | { type: 'done'; status?: 'completed' | 'cancelled'; stopReason?: string }
  | { type: 'error'; message: string; code?: string; detailCode?: string; retryable?: boolean };

export type AcpTurnResult =
  | { status: 'completed'; stopReason?: string }
  | { status: 'cancelled'; stopReason?: string }
  | { status: 'failed'; error: { message: string; code?: string; detailCode?: string; retryable?: boolean } };

/** null for events OpenClaw has no use for (turn.started, permission.requested); plan, usage and permission answers become status lines. */
export function toAcpEvent(event: WorkerEvent): AcpRuntimeEvent | null {
  switch (event.type) {
    case 'turn.started':
      return null;
    case 'agent.message.delta':
      return { type: 'text_delta', text: event.text, stream: 'output', tag: 'agent_message_chunk' };
    case 'agent.thought.delta':
      return { type: 'text_delta', text: event.text, stream: 'thought', tag: 'agent_thought_chunk' };
    case 'tool.call':
      return {
        type: 'tool_call',
        text: event.title,
        tag: 'tool_call',
        toolCallId: event.toolCallId,
        status: event.status,
        title: event.title,
        ...(TOOL_KINDS.has(event.kind) ? { kind: event.kind } : {}),
      };
    case 'tool.result':
      return { type: 'tool_call', text: event.content || event.title || event.status, tag: 'tool_call_update', toolCallId: event.toolCallId, status: event.status, ...(event.title ? { title: event.title } : {}) };
    case 'agent.plan':
      // OpenClaw shows status lines; the plan becomes one, as ACP clients render a plan: one entry per line.
      return { type: 'status', tag: 'plan', text: event.entries.map((e) => `[${e.status === 'completed' ? 'x' : e.status === 'in_progress' ? '~' : ' '}] ${e.content}`).join('\n') };
    case 'agent.usage':
      return { type: 'status', tag: 'usage_update', text: `context ${event.used}/${event.size} tokens${event.cost ? `, cost ${event.cost.amount} ${event.cost.currency}` : ''}` };
    case 'permission.requested':
      // The gateway's permission policy answers it; the chat only hears the answer.
      return null;
    case 'permission.decided':
      return { type: 'status', tag: 'permission', text: `${event.outcome.startsWith('allow') ? 'allowed' : 'refused'}: ${event.reason}` };
    case 'turn.completed':
      return { type: 'done', status: 'completed', stopReason: event.stopReason };
    case 'turn.cancelled':
      return { type: 'done', status: 'cancelled', stopReason: 'cancelled' };
    case 'turn.failed':
      return {
        type: 'error',
        message: event.error.message,
        code: 'ACP_TURN_FAILED',
        detailCode: event.error.code,
        // An agent that exited takes the session with it; an agent's own error may pass on retry.
        retryable: event.error.code === 'agent_error',
      };
  }
}

export function resultOf(event: AcpRuntimeEvent | null): AcpTurnResult | null {
  if (!event) return null;
  if (event.type === 'done') return event.status === 'cancelled' ? { status: 'cancelled', stopReason: 'cancelled' } : { status: 'completed', ...(event.stopReason ? { stopReason: event.stopReason } : {}) };
  if (event.type === 'error') return { status: 'failed', error: { message: event.message, ...(event.code ? { code: event.code } : {}), ...(event.detailCode ? { detailCode: event.detailCode } : {}), ...(event.retryable === undefined ? {} : { retryable: event.retryable }) } };
  return null;
}
