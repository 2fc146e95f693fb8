import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { answerPermission } from '../../src/worker/acp-session.js';
import { parseTraceparent, tokenVerifier } from '../../src/protocol/http.js';
import { LogBuffer, lineSplitter } from '../../src/worker/log-buffer.js';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mapSessionUpdate, summarizeToolOutput, unifiedDiff } from '../../src/worker/map-update.js';

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
    ).toEqual([{ type: 'tool.result', toolCallId: 'c2', title: 'Edit a.ts', status: 'completed', content: '--- /dev/null\n+++ b/w/a.ts\n@@ -0,0 +1,1 @@\n+x\n' }]);
    expect(mapSessionUpdate({ sessionUpdate: 'tool_call_update', toolCallId: 'unknown', status: 'failed' }, titles)).toEqual([
      { type: 'tool.result', toolCallId: 'unknown', title: null, status: 'failed', content: '' },
    ]);
  });

  it('drops non-text chunks and updates outside the contract', () => {
    expect(mapSessionUpdate({ sessionUpdate: 'agent_message_chunk', content: { type: 'image', data: 'AAAA', mimeType: 'image/png' } }, new Map())).toEqual([]);
    expect(mapSessionUpdate({ sessionUpdate: 'current_mode_update', currentModeId: 'code' }, new Map())).toEqual([]);
  });

  it('turns plans and usage updates into agent.plan and agent.usage', () => {
    const entries = [
      { content: 'read the test', priority: 'high' as const, status: 'completed' as const },
      { content: 'fix the bug', priority: 'medium' as const, status: 'in_progress' as const },
    ];
    expect(mapSessionUpdate({ sessionUpdate: 'plan', entries }, new Map())).toEqual([{ type: 'agent.plan', entries }]);
    expect(mapSessionUpdate({ sessionUpdate: 'usage_update', used: 1200, size: 200_000, cost: { amount: 0.04, currency: 'USD' } }, new Map())).toEqual([
      { type: 'agent.usage', used: 1200, size: 200_000, cost: { amount: 0.04, currency: 'USD' } },
    ]);
    expect(mapSessionUpdate({ sessionUpdate: 'usage_update', used: 5, size: 10 }, new Map())).toEqual([{ type: 'agent.usage', used: 5, size: 10, cost: null }]);
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

describe('file edits as unified diffs', () => {
  /** The diff must be what `git apply` takes: applied to the old text it gives the new one. */
  function applies(oldText: string | null, newText: string): void {
    const dir = mkdtempSync(join(tmpdir(), 'sg-diff-'));
    try {
      execFileSync('git', ['init', '-q'], { cwd: dir });
      if (oldText !== null) writeFileSync(join(dir, 'f.txt'), oldText);
      writeFileSync(join(dir, 'p.diff'), unifiedDiff('f.txt', oldText, newText));
      execFileSync('git', ['apply', 'p.diff'], { cwd: dir });
      expect(readFileSync(join(dir, 'f.txt'), 'utf8')).toBe(newText);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('shows an edit with context, as git diff does', () => {
    const oldText = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'].join('\n') + '\n';
    const newText = ['a', 'b', 'c', 'd', 'E', 'f', 'g', 'h', 'i', 'j', 'k'].join('\n') + '\n';
    expect(unifiedDiff('src/x.txt', oldText, newText)).toBe(
      ['--- a/src/x.txt', '+++ b/src/x.txt', '@@ -2,9 +2,10 @@', ' b', ' c', ' d', '-e', '+E', ' f', ' g', ' h', ' i', ' j', '+k', ''].join('\n'),
    );
  });

  it('gives diffs git apply takes: edits far apart, a new file, deletions, nothing', () => {
    const lines = Array.from({ length: 60 }, (_, i) => `line ${i}`);
    const old = `${lines.join('\n')}\n`;
    const edited = [...lines];
    edited[3] = 'changed 3';
    edited.splice(30, 2);
    edited[50] = 'changed 52';
    edited.push('appended');
    applies(old, `${edited.join('\n')}\n`);
    applies(null, 'brand new\nfile\n');
    applies(old, `${lines.slice(10).join('\n')}\n`);
    applies('x\ny\n', 'y\nx\n');
    expect(unifiedDiff('f', 'same\n', 'same\n')).toContain('(no change)');
  });

  it('a tool result with a file edit carries the diff, not just the path', () => {
    const [, result] = mapSessionUpdate(
      { sessionUpdate: 'tool_call', toolCallId: 't', title: 'Edit README.md', kind: 'edit', status: 'completed', content: [{ type: 'diff', path: 'README.md', oldText: 'hello\n', newText: 'hello world\n' }] },
      new Map(),
    );
    expect(result).toMatchObject({ type: 'tool.result', content: '--- a/README.md\n+++ b/README.md\n@@ -1,1 +1,1 @@\n-hello\n+hello world\n' });
  });
});
