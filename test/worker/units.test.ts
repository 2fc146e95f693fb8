import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { checkPermissionDecision, pickPermissionOption } from '../../src/admission/permissions.js';
import type { PermissionDecision } from '../../src/admission/permissions.js';
import { boundedRawInput, permissionPaths, workspaceRoot } from '../../src/worker/permissions.js';
import { parseTraceparent, tokenVerifier } from '../../src/protocol/http.js';
import { LogBuffer, lineSplitter } from '../../src/worker/log-buffer.js';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
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
  const decision = (outcome: PermissionDecision['outcome']): PermissionDecision => ({ outcome, code: 'c', reason: 'r' });
  const all = [
    { optionId: 'no', kind: 'reject_once' },
    { optionId: 'never', kind: 'reject_always' },
    { optionId: 'once', kind: 'allow_once' },
    { optionId: 'always', kind: 'allow_always' },
  ];
  it('gives the grant the policy named, and never more', () => {
    expect(pickPermissionOption(decision('allow_once'), all)).toEqual({ optionId: 'once', outcome: 'allow_once' });
    expect(pickPermissionOption(decision('allow_always'), all)).toEqual({ optionId: 'always', outcome: 'allow_always' });
    // allow_always narrows to allow_once when that is all the agent offers …
    expect(pickPermissionOption(decision('allow_always'), all.filter((o) => o.kind !== 'allow_always'))).toEqual({ optionId: 'once', outcome: 'allow_once' });
    // … but allow_once never widens to allow_always: without it, nothing is granted.
    expect(pickPermissionOption(decision('allow_once'), all.filter((o) => o.kind !== 'allow_once'))).toEqual({ optionId: 'no', outcome: 'reject_once' });
  });
  it('rejects once (never always), or grants nothing when no reject option is offered', () => {
    expect(pickPermissionOption(decision('reject'), all)).toEqual({ optionId: 'no', outcome: 'reject_once' });
    expect(pickPermissionOption(decision('reject'), all.filter((o) => o.kind === 'allow_once' || o.kind === 'reject_always'))).toEqual({ optionId: null, outcome: 'cancelled' });
  });
  it('turns a missing or malformed policy answer into a reject that says why', () => {
    expect(checkPermissionDecision(undefined)).toMatchObject({ outcome: 'reject', code: 'permission_policy_missing' });
    expect(checkPermissionDecision({ outcome: 'allow', code: 'x', reason: 'y' })).toMatchObject({ outcome: 'reject', code: 'permission_policy_output_invalid' });
    expect(checkPermissionDecision({ outcome: 'allow_once', code: 'Bad Code', reason: 'y' }).outcome).toBe('reject');
    expect(checkPermissionDecision({ outcome: 'allow_once', code: 'allowed', reason: 'y' })).toEqual({ outcome: 'allow_once', code: 'allowed', reason: 'y' });
  });
});

describe('paths of a permission request', () => {
  const dir = mkdtempSync(join(tmpdir(), 'perm-paths-'));
  const ws = join(dir, 'ws');
  execFileSync('mkdir', ['-p', join(ws, 'src'), join(dir, 'outside')]);
  symlinkSync(join(dir, 'outside'), join(ws, 'escape'));
  const root = workspaceRoot(ws);
  const paths = (toolCall: Record<string, unknown>) =>
    permissionPaths({ sessionId: 's', toolCall: { toolCallId: 't', ...toolCall }, options: [] }, ws, root).map((p) => [p.path, p.inWorkspace]);
  it('resolves locations and path-like rawInput keys against the workspace', () => {
    expect(paths({ locations: [{ path: 'src/a.ts' }], rawInput: { file_path: join(ws, 'b.txt'), content: '/etc/passwd' } })).toEqual([
      [join(root, 'src/a.ts'), true],
      [join(root, 'b.txt'), true],
    ]);
  });
  it('sees through .. and symlinks, and takes ~ for outside', () => {
    expect(paths({ locations: [{ path: '../outside/x' }] })).toEqual([[join(workspaceRoot(dir), 'outside/x'), false]]);
    expect(paths({ rawInput: { path: 'escape/new-file' } })).toEqual([[join(workspaceRoot(dir), 'outside/new-file'), false]]);
    expect(paths({ rawInput: { cwd: '/' } })).toEqual([['/', false]]);
    expect(paths({ rawInput: { path: '~/.ssh/id_rsa' } })).toEqual([['~/.ssh/id_rsa', false]]);
    expect(paths({ locations: [{ path: '.' }] })).toEqual([[root, true]]);
  });
  it('cuts credentials and size out of the raw input it repeats', () => {
    expect(boundedRawInput({ command: 'curl -H "Authorization: Bearer abcdefghijklmnop1234"', api_key: 'x' })).toEqual({ command: 'curl -H "Authorization: [REDACTED]"', api_key: '[REDACTED]' });
    expect(String(boundedRawInput({ content: 'z'.repeat(10_000) })).endsWith('…[truncated]')).toBe(true);
    expect(boundedRawInput(undefined)).toBeNull();
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
