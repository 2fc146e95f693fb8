import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { parseSpawnRequest, type SpawnRequest, type SpawnRequestInput } from '../../src/admission/request.js';
import { RequestError, type Issue } from '../../src/errors.js';

function base(overrides: Record<string, unknown> = {}, caller: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    agentId: 'codex',
    task: 'Fix the failing unit test in src/util.ts',
    caller: { sessionKey: 's1', channel: { id: 'c1', kind: 'telegram' }, user: { id: 'u1' }, ...caller },
    ...overrides,
  };
}

function requestIssues(value: unknown): Issue[] {
  try {
    parseSpawnRequest(value);
  } catch (err) {
    if (err instanceof RequestError) return [...err.issues];
    throw err;
  }
  throw new Error('expected the request to be rejected');
}

function expectIssue(value: unknown, path: string, message?: RegExp): void {
  const found = requestIssues(value);
  const at = found.filter((i) => i.path === path);
  expect(at, JSON.stringify(found)).not.toHaveLength(0);
  if (message) expect(at.map((i) => i.message).join('\n')).toMatch(message);
}

describe('parseSpawnRequest', () => {
  it('normalizes the seed example', async () => {
    const raw = JSON.parse(await readFile(new URL('../../examples/spawn-request.json', import.meta.url), 'utf8')) as SpawnRequestInput;
    const expected: SpawnRequest = {
      runtime: 'acp',
      agentId: 'codex',
      execution: null,
      task: 'Fix the failing unit test in src/util.ts',
      label: 'fix-util-test',
      session: { cwd: null, env: {}, model: null, resumeSessionId: null, mcpServers: [] },
      caller: {
        sessionKey: 'agent:main:telegram:direct:123456789',
        parentSessionKey: null,
        rootSessionKey: 'agent:main:telegram:direct:123456789',
        depth: 0,
        channel: { id: 'telegram:123456789', kind: 'telegram', interactive: true },
        user: { id: 'telegram:123456789', roles: ['member'] },
      },
      traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      idempotencyKey: null,
      waitSeconds: 0,
    };
    expect(parseSpawnRequest(raw)).toEqual(expected);
  });

  it('fills defaults', () => {
    const r = parseSpawnRequest(base());
    expect(r.runtime).toBe('acp');
    expect(r.label).toBeNull();
    expect(r.traceparent).toBeNull();
    expect(r.caller).toEqual({
      sessionKey: 's1',
      parentSessionKey: null,
      rootSessionKey: 's1',
      depth: 0,
      channel: { id: 'c1', kind: 'telegram', interactive: true },
      user: { id: 'u1', roles: [] },
    });
  });

  it('places the caller in its spawn tree: the named root, else its parent, else itself', () => {
    const withCaller = (extra: Record<string, unknown>) => parseSpawnRequest(base({}, extra)).caller.rootSessionKey;
    expect(withCaller({})).toBe('s1');
    expect(withCaller({ parentSessionKey: 'p', depth: 1 })).toBe('p');
    expect(withCaller({ parentSessionKey: 'p', rootSessionKey: 'r', depth: 2 })).toBe('r');
    expect(() => parseSpawnRequest(base({}, { rootSessionKey: '' }))).toThrow(/caller\.rootSessionKey/);
  });

  it('derives interactivity from the channel kind unless given', () => {
    for (const kind of ['cron', 'webhook', 'api', 'heartbeat', 'unknown', 'CRON']) {
      expect(parseSpawnRequest(base({}, { channel: { id: 'c', kind } })).caller.channel.interactive).toBe(false);
    }
    expect(parseSpawnRequest(base({}, { channel: { id: 'c', kind: 'discord' } })).caller.channel.interactive).toBe(true);
    expect(parseSpawnRequest(base({}, { channel: { id: 'c', kind: 'cron', interactive: true } })).caller.channel.interactive).toBe(true);
    expect(parseSpawnRequest(base({}, { channel: { id: 'c', kind: 'slack', interactive: false } })).caller.channel.interactive).toBe(false);
  });

  it('accepts message as an alias of task', () => {
    const { task: _task, ...rest } = base();
    expect(parseSpawnRequest({ ...rest, message: 'hello' }).task).toBe('hello');
    expect(parseSpawnRequest({ ...rest, message: 'same', task: 'same' })).not.toHaveProperty('message');
    expectIssue({ ...rest, message: 'a', task: 'b' }, 'message', /differs from "task"/);
    // No task: a session whose first turn comes later; the policy sees ''.
    expect(parseSpawnRequest(rest).task).toBe('');
    expectIssue(base({ task: '   ' }), 'task', /must not be empty/);
  });

  it('turns empty execution into null and keeps explicit fields', () => {
    expect(parseSpawnRequest(base({ execution: {} })).execution).toBeNull();
    expect(parseSpawnRequest(base({ execution: null })).execution).toBeNull();
    expect(parseSpawnRequest(base({ execution: { backend: null, profile: null } })).execution).toBeNull();
    expect(parseSpawnRequest(base({ execution: { profile: 'large-build' } })).execution).toEqual({ backend: null, profile: 'large-build', egress: null });
    expect(parseSpawnRequest(base({ execution: { backend: 'k8s', egress: 'open' } })).execution).toEqual({ backend: 'k8s', profile: null, egress: 'open' });
  });

  it('takes the session wishes (cwd, env, model, resumeSessionId) and refuses bad ones by path', () => {
    const parsed = parseSpawnRequest(base({ cwd: '/srv/repo', env: { OPENAI_API_KEY: 'k', FOO: '' }, model: 'gpt-5', resumeSessionId: 'sess-1' }));
    expect(parsed.session).toEqual({ cwd: '/srv/repo', env: { OPENAI_API_KEY: 'k', FOO: '' }, model: 'gpt-5', resumeSessionId: 'sess-1', mcpServers: [] });
    expect(parseSpawnRequest(base({ cwd: null, env: null, model: null })).session).toEqual({ cwd: null, env: {}, model: null, resumeSessionId: null, mcpServers: [] });
    expectIssue(base({ cwd: 'relative/dir' }), 'cwd', /absolute path/);
    expectIssue(base({ env: { '1BAD': 'x' } }), 'env["1BAD"]', /environment variable name/);
    expectIssue(base({ env: { SPAWNGATE_WORKER_TOKEN: 'x' } }), 'env.SPAWNGATE_WORKER_TOKEN', /reserved/);
    expectIssue(base({ env: { LD_PRELOAD: '/tmp/x.so' } }), 'env.LD_PRELOAD', /reserved/);
    expectIssue(base({ env: { NODE_OPTIONS: '--require /tmp/x' } }), 'env.NODE_OPTIONS', /reserved/);
    expectIssue(base({ env: { A: 3 } }), 'env.A', /expected string/);
    expectIssue(base({ env: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`V${i}`, 'x'])) }), 'env', /at most 64/);
    expectIssue(base({ model: '' }), 'model');
    expectIssue(base({ resumeSessionId: 'a\nb' }), 'resumeSessionId', /control characters/);
  });

  it('rejects unknown keys and wrong types with their paths', () => {
    expectIssue(base({ modelId: 'gpt' }), 'modelId', /unknown key/);
    expectIssue(base({ execution: { backend: 'k8s', cpu: '4' } }), 'execution.cpu', /unknown key/);
    expectIssue(base({}, { channel: { id: 'c', kind: 'telegram', thread: 't' } }), 'caller.channel.thread', /unknown key/);
    expectIssue(base({ runtime: 'docker' }), 'runtime', /"acp", "subagent"/);
    expectIssue(base({ agentId: 'my agent' }), 'agentId');
    expectIssue(base({ agentId: 42 }), 'agentId', /expected string, received number/);
    expectIssue(base({}, { depth: -1 }), 'caller.depth', /at least 0/);
    expectIssue(base({}, { depth: 1.5 }), 'caller.depth');
    expectIssue(base({}, { user: { id: 'u', roles: ['a', 3] } }), 'caller.user.roles[1]');
    expectIssue(base({ execution: { egress: 'all' } }), 'execution.egress');
    expectIssue(base({ execution: { backend: 'a/b' } }), 'execution.backend');
    expectIssue({ agentId: 'codex', task: 'x' }, 'caller', /required/);
    expectIssue('hello', '(root)', /expected object/);
  });

  it('bounds sizes', () => {
    expect(parseSpawnRequest(base({ task: 'x'.repeat(64 * 1024) })).task).toHaveLength(65536);
    expectIssue(base({ task: 'x'.repeat(64 * 1024 + 1) }), 'task', /at most 65536/);
    // 64 KiB is measured in UTF-8 bytes, not characters.
    expectIssue(base({ task: 'é'.repeat(40_000) }), 'task', /64 KiB/);
    expectIssue(base({}, { sessionKey: 's'.repeat(257) }), 'caller.sessionKey', /at most 256/);
    expectIssue(base({}, { user: { id: 'u'.repeat(257) } }), 'caller.user.id');
    expectIssue(base({}, { sessionKey: 'a\nb' }), 'caller.sessionKey', /control characters/);
  });

  it('checks the W3C traceparent', () => {
    expect(parseSpawnRequest(base({ traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00' })).traceparent).toMatch(/^00-/);
    expect(parseSpawnRequest(base({ traceparent: '01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra' })).traceparent).toMatch(/^01-/);
    for (const bad of [
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7',
      '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01',
      'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra',
    ]) {
      expectIssue(base({ traceparent: bad }), 'traceparent', /W3C traceparent/);
    }
  });

  it('throws REQUEST_INVALID with every issue in the message', () => {
    let caught: unknown;
    try {
      parseSpawnRequest(base({ runtime: 'x', extra: 1 }));
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(RequestError);
    const err = caught as RequestError;
    expect(err.code).toBe('REQUEST_INVALID');
    expect(err.issues.map((i) => i.path).sort()).toEqual(['extra', 'runtime']);
    expect(err.message.split('\n')).toHaveLength(3);
  });

  it('does not let a "__proto__" key through', () => {
    const raw = JSON.parse('{"agentId":"codex","task":"t","caller":{"sessionKey":"s","channel":{"id":"c","kind":"x"},"user":{"id":"u"}},"__proto__":{"x":1}}') as unknown;
    expect(requestIssues(raw)).toEqual(expect.arrayContaining([{ path: '__proto__', message: expect.any(String) as string }]));
  });
});
