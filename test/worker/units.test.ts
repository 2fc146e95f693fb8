import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { answerPermission } from '../../src/worker/acp-session.js';
import { parseTraceparent, tokenVerifier } from '../../src/protocol/http.js';
import { LogBuffer, lineSplitter } from '../../src/worker/log-buffer.js';
import { mapSessionUpdate, summarizeToolOutput } from '../../src/worker/map-update.js';

const request = (authorization?: string): IncomingMessage => ({ headers: authorization === undefined ? {} : { authorization } }) as IncomingMessage;

describe('bearer token check', () => {
  const verify = tokenVerifier('s3cret-token');
  it('accepts exactly the token', () => {
    expect(verify(request('Bearer s3cret-token'))).toBe(true);
    expect(verify(request('bearer s3cret-token'))).toBe(true);
  });
  it('refuses anything else', () => {
    for (const header of [undefined, '', 'Bearer', 'Bearer s3cret-toke', 'Bearer s3cret-token2', 'Basic s3cret-token', 's3cret-token', 'Bearer s3cret-token extra']) {
      expect(verify(request(header))).toBe(false);
    }
  });
});

describe('traceparent', () => {
  it('keeps a valid header and extracts the trace id', () => {
    expect(parseTraceparent('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')).toEqual({
      traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
    });
  });
  it('ignores malformed or invalid ones', () => {
    for (const value of [
      undefined,
      'garbage',
      'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01',
    ]) {
      expect(parseTraceparent(value)).toBeNull();
    }
  });
});

describe('log ring buffer', () => {
  it('keeps the newest lines, oldest first', () => {
    const buffer = new LogBuffer(3);
    for (let i = 0; i < 5; i++) buffer.push({ time: 't', source: 'worker', level: 'info', message: `m${i}` });
    expect(buffer.tail(10).map((l) => l.message)).toEqual(['m2', 'm3', 'm4']);
    expect(buffer.tail(2).map((l) => l.message)).toEqual(['m3', 'm4']);
    expect(buffer.tail(0)).toEqual([]);
  });
  it('splits stderr into lines and bounds an unterminated one', () => {
    const lines: string[] = [];
    const split = lineSplitter((l) => lines.push(l), 8);
    split.push('ab\r\ncd');
    split.push('e\n0123456789abc');
    split.end();
    expect(lines).toEqual(['ab', 'cde', '01234567', '89abc']);
  });
});

describe('session/update mapping', () => {
  it('emits tool.call and tool.result for a tool call that arrives finished', () => {
    const titles = new Map<string, string>();
    const events = mapSessionUpdate(
      { sessionUpdate: 'tool_call', toolCallId: 'c1', title: 'ls', kind: 'execute', status: 'completed', rawOutput: { files: 2 } },
      titles,
    );
    expect(events).toEqual([
      { type: 'tool.call', toolCallId: 'c1', title: 'ls', kind: 'execute', status: 'completed' },
      { type: 'tool.result', toolCallId: 'c1', title: 'ls', status: 'completed', content: '{"files":2}' },
    ]);
  });

  it('reports only finished tool_call_updates, naming the announced call', () => {
    const titles = new Map<string, string>();
    mapSessionUpdate({ sessionUpdate: 'tool_call', toolCallId: 'c2', title: 'Edit a.ts' }, titles);
    expect(mapSessionUpdate({ sessionUpdate: 'tool_call_update', toolCallId: 'c2', status: 'in_progress' }, titles)).toEqual([]);
    expect(
      mapSessionUpdate(
        { sessionUpdate: 'tool_call_update', toolCallId: 'c2', status: 'completed', content: [{ type: 'diff', path: '/w/a.ts', newText: 'x' }] },
        titles,
      ),
    ).toEqual([{ type: 'tool.result', toolCallId: 'c2', title: 'Edit a.ts', status: 'completed', content: '[diff /w/a.ts]' }]);
    expect(mapSessionUpdate({ sessionUpdate: 'tool_call_update', toolCallId: 'unknown', status: 'failed' }, titles)).toEqual([
      { type: 'tool.result', toolCallId: 'unknown', title: null, status: 'failed', content: '' },
    ]);
  });

  it('drops non-text chunks and updates outside the contract', () => {
    expect(mapSessionUpdate({ sessionUpdate: 'agent_message_chunk', content: { type: 'image', data: 'AAAA', mimeType: 'image/png' } }, new Map())).toEqual([]);
    expect(mapSessionUpdate({ sessionUpdate: 'plan', entries: [] }, new Map())).toEqual([]);
  });

  it('truncates long tool output summaries', () => {
    const summary = summarizeToolOutput([{ type: 'content', content: { type: 'text', text: 'y'.repeat(10_000) } }], undefined);
    expect(summary.length).toBeLessThan(4100);
    expect(summary.endsWith('…[truncated]')).toBe(true);
  });
});

describe('permission answers', () => {
  const toolCall = { toolCallId: 't', title: 'Write' };
  it('picks allow_once, never allow_always', () => {
    expect(
      answerPermission({
        sessionId: 's',
        toolCall,
        options: [
          { optionId: 'always', name: 'Always', kind: 'allow_always' },
          { optionId: 'once', name: 'Once', kind: 'allow_once' },
        ],
      }),
    ).toEqual({ outcome: { outcome: 'selected', optionId: 'once' } });
  });
  it('cancels when only allow_always or reject options exist', () => {
    expect(
      answerPermission({ sessionId: 's', toolCall, options: [{ optionId: 'always', name: 'Always', kind: 'allow_always' }] }),
    ).toEqual({ outcome: { outcome: 'cancelled' } });
  });
});
