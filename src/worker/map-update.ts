import type { ContentBlock, SessionUpdate, ToolCallContent } from '@agentclientprotocol/sdk';
import type { ToolCallStatus, WorkerEvent } from '../protocol/events.js';

/** Event fields without the per-line envelope (turnId, seq, time, trace), which the worker adds. */
export type EventBody = DistributiveOmit<WorkerEvent, 'turnId' | 'seq' | 'time' | 'traceparent' | 'traceId'>;
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** A tool result is a summary for a chat transcript, not the full output (which can be megabytes of file content). */
const MAX_TOOL_SUMMARY_CHARS = 4000;

/**
 * Maps one ACP session/update to the events it produces (zero, one, or — for a tool call that arrives
 * already finished — two). `toolTitles` remembers announced tool calls so results can name them.
 */
export function mapSessionUpdate(update: SessionUpdate, toolTitles: Map<string, string>): EventBody[] {
  switch (update.sessionUpdate) {
    case 'agent_message_chunk': {
      const text = blockText(update.content);
      return text === null ? [] : [{ type: 'agent.message.delta', text }];
    }
    case 'agent_thought_chunk': {
      const text = blockText(update.content);
      return text === null ? [] : [{ type: 'agent.thought.delta', text }];
    }
    case 'tool_call': {
      toolTitles.set(update.toolCallId, update.title);
      const status: ToolCallStatus = update.status ?? 'pending';
      const events: EventBody[] = [
        { type: 'tool.call', toolCallId: update.toolCallId, title: update.title, kind: update.kind ?? 'other', status },
      ];
      if (status === 'completed' || status === 'failed') {
        events.push({
          type: 'tool.result',
          toolCallId: update.toolCallId,
          title: update.title,
          status,
          content: summarizeToolOutput(update.content, update.rawOutput),
        });
      }
      return events;
    }
    case 'tool_call_update': {
      if (typeof update.title === 'string') toolTitles.set(update.toolCallId, update.title);
      if (update.status !== 'completed' && update.status !== 'failed') return [];
      return [
        {
          type: 'tool.result',
          toolCallId: update.toolCallId,
          title: toolTitles.get(update.toolCallId) ?? null,
          status: update.status,
          content: summarizeToolOutput(update.content ?? undefined, update.rawOutput),
        },
      ];
    }
    default:
      // Plans, usage, mode and command updates have no place in the worker contract (yet).
      return [];
  }
}

/** Text of a streamed content block; null for non-text blocks, which have no delta form in the contract. */
function blockText(block: ContentBlock): string | null {
  return block.type === 'text' ? block.text : null;
}

function describeBlock(block: ContentBlock): string {
  switch (block.type) {
    case 'text':
      return block.text;
    case 'resource_link':
      return `[link ${block.uri}]`;
    case 'resource':
      return 'text' in block.resource ? block.resource.text : `[resource ${block.resource.uri}]`;
    default:
      return `[${block.type}]`;
  }
}

function describeToolContent(item: ToolCallContent): string {
  switch (item.type) {
    case 'content':
      return describeBlock(item.content);
    case 'diff':
      return `[diff ${item.path}]`;
    case 'terminal':
      return `[terminal ${item.terminalId}]`;
  }
}

export function summarizeToolOutput(content: ToolCallContent[] | undefined, rawOutput: unknown): string {
  let summary = (content ?? []).map(describeToolContent).join('\n');
  if (!summary && rawOutput !== undefined && rawOutput !== null) {
    summary = typeof rawOutput === 'string' ? rawOutput : (JSON.stringify(rawOutput) ?? '');
  }
  return summary.length > MAX_TOOL_SUMMARY_CHARS ? `${summary.slice(0, MAX_TOOL_SUMMARY_CHARS)}…[truncated]` : summary;
}
