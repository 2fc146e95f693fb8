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
    case 'plan':
      return [{ type: 'agent.plan', entries: update.entries.map((e) => ({ content: e.content, priority: e.priority, status: e.status })) }];
    case 'usage_update':
      return [{ type: 'agent.usage', used: update.used, size: update.size, cost: update.cost ? { amount: update.cost.amount, currency: update.cost.currency } : null }];
    default:
      // Mode, command and config-option updates have no place in the worker contract (yet).
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
      return unifiedDiff(item.path, item.oldText ?? null, item.newText);
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

/** Lines above which a file edit is shown as a whole replacement (a line-by-line diff would cost too much). */
const MAX_DIFF_LINES = 4000;

/**
 * A file edit (ACP `diff` content: old and new text of one file) as a unified diff, as `git diff`
 * shows it: `--- a/path` / `+++ b/path`, hunks with three lines of context. A new file has no old text.
 */
export function unifiedDiff(path: string, oldText: string | null, newText: string): string {
  const split = (t: string) => (t === '' ? [] : t.replace(/\n$/, '').split('\n'));
  const a = oldText === null ? [] : split(oldText);
  const b = split(newText);
  // ACP paths are absolute: a/ and b/ prefixes as git writes them, without doubling the slash.
  const name = path.replace(/^\/+/, '');
  const header = `--- ${oldText === null ? '/dev/null' : `a/${name}`}\n+++ b/${name}\n`;
  // Edit script from the longest common subsequence (rows of the DP table; bounded above).
  const ops: { op: ' ' | '-' | '+'; line: string }[] = [];
  if (a.length * b.length > MAX_DIFF_LINES * MAX_DIFF_LINES || a.length + b.length > 2 * MAX_DIFF_LINES) {
    for (const line of a) ops.push({ op: '-', line });
    for (const line of b) ops.push({ op: '+', line });
  } else {
    const lcs: Uint32Array[] = Array.from({ length: a.length + 1 }, () => new Uint32Array(b.length + 1));
    for (let i = a.length - 1; i >= 0; i--) {
      const row = lcs[i]!;
      const below = lcs[i + 1]!;
      for (let j = b.length - 1; j >= 0; j--) row[j] = a[i] === b[j] ? below[j + 1]! + 1 : Math.max(below[j]!, row[j + 1]!);
    }
    let i = 0;
    let j = 0;
    while (i < a.length || j < b.length) {
      if (i < a.length && j < b.length && a[i] === b[j]) {
        ops.push({ op: ' ', line: a[i]! });
        i++;
        j++;
      } else if (i < a.length && (j === b.length || lcs[i + 1]![j]! >= lcs[i]![j + 1]!)) {
        // Removals before additions, as git shows a changed line.
        ops.push({ op: '-', line: a[i]! });
        i++;
      } else {
        ops.push({ op: '+', line: b[j]! });
        j++;
      }
    }
  }
  // Hunks: changed lines with up to three lines of context around them.
  const CONTEXT = 3;
  const changed = ops.map((o) => o.op !== ' ');
  let out = '';
  let k = 0;
  while (k < ops.length) {
    if (!changed[k]) {
      k++;
      continue;
    }
    let start = Math.max(0, k - CONTEXT);
    let end = k;
    // Extend while another change follows within twice the context.
    for (let n = k; n < ops.length; n++) {
      if (changed[n]) end = n;
      else if (n - end > 2 * CONTEXT) break;
    }
    const stop = Math.min(ops.length, end + CONTEXT + 1);
    let oldStart = 1;
    let newStart = 1;
    for (let n = 0; n < start; n++) {
      if (ops[n]!.op !== '+') oldStart++;
      if (ops[n]!.op !== '-') newStart++;
    }
    const slice = ops.slice(start, stop);
    const oldCount = slice.filter((o) => o.op !== '+').length;
    const newCount = slice.filter((o) => o.op !== '-').length;
    out += `@@ -${oldCount ? oldStart : oldStart - 1},${oldCount} +${newCount ? newStart : newStart - 1},${newCount} @@\n`;
    for (const o of slice) out += `${o.op}${o.line}\n`;
    start = stop;
    k = stop;
  }
  return out ? header + out : `${header}(no change)\n`;
}
