/**
 * The worker's side of permission requests: each one is announced on the turn's stream, waits for the
 * gateway's answer (POST /permission), and the answer reaches the agent and the stream. The agent is
 * the fixture's `edit`, which writes its file only when granted.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PermissionDecidedEvent, PermissionRequestedEvent, WorkerEvent } from '../../src/protocol/events.js';
import { collect, errorOf, startTestWorker, tempDir, types } from './helpers.js';
import type { TestWorker } from './helpers.js';
import type { StartWorkerOptions } from '../../src/worker/worker.js';

describe('permission requests in ask mode', () => {
  let w: TestWorker;
  const ws = tempDir();

  beforeAll(async () => {
    mkdirSync(join(ws.path, 'repo'));
    w = await startTestWorker('tcp', { permissions: 'ask', permissionTimeoutMs: 60_000, cwd: join(ws.path, 'repo') });
    await w.worker.ready;
  });
  afterAll(async () => {
    await w.close();
    ws.remove();
  });

  /** Runs a turn, answering each permission.requested with what `answer` picks. */
  async function turnAnswering(message: string, answer: (e: PermissionRequestedEvent) => Promise<void> | void): Promise<WorkerEvent[]> {
    const events: WorkerEvent[] = [];
    for await (const event of w.client.turn(message)) {
      events.push(event);
      if (event.type === 'permission.requested') await answer(event);
    }
    return events;
  }

  it('announces the request with its resolved paths and applies a rejection: the file stays unwritten', async () => {
    const events = await turnAnswering('edit notes.txt hello', (e) =>
      w.client.answerPermission({ requestId: e.requestId, optionId: 'deny', code: 'path_outside_workspace', reason: 'test says no' }).then(() => undefined),
    );
    expect(types(events)).toEqual(['turn.started', 'tool.call', 'permission.requested', 'permission.decided', 'tool.result', 'agent.message.delta', 'turn.completed']);
    const requested = events[2] as PermissionRequestedEvent;
    expect(requested).toMatchObject({ toolCallId: 'edit-' + requested.toolCallId.slice(5), title: 'Write notes.txt', kind: 'edit', rawInput: { file_path: 'notes.txt', content: 'hello' } });
    expect(requested.paths).toEqual([{ path: join(requested.workspace, 'notes.txt'), inWorkspace: true }]);
    expect(requested.options.map((o) => o.kind)).toEqual(['allow_once', 'allow_always', 'reject_once']);
    expect(events[3]).toMatchObject({ type: 'permission.decided', requestId: requested.requestId, outcome: 'reject_once', optionId: 'deny', by: 'gateway', code: 'path_outside_workspace', reason: 'test says no' });
    expect(existsSync(join(ws.path, 'repo', 'notes.txt'))).toBe(false);
  });

  it('applies a grant: the agent writes the file', async () => {
    const events = await turnAnswering('edit notes.txt granted', (e) =>
      w.client.answerPermission({ requestId: e.requestId, optionId: 'allow', code: 'allowed', reason: 'fine' }).then(() => undefined),
    );
    expect(events.find((e): e is PermissionDecidedEvent => e.type === 'permission.decided')).toMatchObject({ outcome: 'allow_once', by: 'gateway' });
    expect(readFileSync(join(ws.path, 'repo', 'notes.txt'), 'utf8')).toBe('granted\n');
  });

  it('refuses answers that do not fit: unknown request, an option the agent did not offer, a malformed code', async () => {
    const refusals: string[] = [];
    await turnAnswering('edit other.txt x', async (e) => {
      refusals.push((await errorOf(w.client.answerPermission({ requestId: 'perm-nope', optionId: 'allow', code: 'allowed', reason: '' }))).message);
      refusals.push((await errorOf(w.client.answerPermission({ requestId: e.requestId, optionId: 'allow-everything', code: 'allowed', reason: '' }))).message);
      refusals.push((await errorOf(w.client.answerPermission({ requestId: e.requestId, optionId: 'allow', code: 'Allowed!', reason: '' }))).message);
      // null grants nothing (ACP's "cancelled").
      await w.client.answerPermission({ requestId: e.requestId, optionId: null, code: 'nothing', reason: 'no option fits' });
    });
    expect(refusals[0]).toMatch(/no permission request perm-nope is waiting/);
    expect(refusals[1]).toMatch(/not one the agent offered \(allow, allow-all, deny\)/);
    expect(refusals[2]).toMatch(/code must be a lowercase reason code/);
    expect(existsSync(join(ws.path, 'repo', 'other.txt'))).toBe(false);
  });

  it('answers "cancelled" for a request still open when the turn is cancelled, before the turn ends', async () => {
    const events = await turnAnswering('edit late.txt x', async () => {
      await w.client.cancel();
    });
    expect(events.find((e) => e.type === 'permission.decided')).toMatchObject({ outcome: 'cancelled', optionId: null, by: 'cancel', code: 'turn_cancelled' });
    expect(events.at(-1)).toMatchObject({ type: 'turn.cancelled', reason: 'client_cancel' });
    expect(existsSync(join(ws.path, 'repo', 'late.txt'))).toBe(false);
  });
});

/** One turn on a worker of its own, started with `options` and closed after. */
async function turnOnFreshWorker(options: Partial<StartWorkerOptions>, message: string): Promise<WorkerEvent[]> {
  const w = await startTestWorker('tcp', options);
  try {
    await w.worker.ready;
    return await collect(w.client.turn(message));
  } finally {
    await w.close();
  }
}

describe('a permission request open when the turn ends', () => {
  it('is answered "cancelled" on the stream before the turn\'s last line', async () => {
    const events = await turnOnFreshWorker({ permissions: 'ask' }, 'ask-then-crash');
    expect(types(events).slice(-3)).toEqual(['permission.requested', 'permission.decided', 'turn.failed']);
    expect(events.at(-2)).toMatchObject({ outcome: 'cancelled', by: 'cancel', code: 'turn_cancelled' });
  });
});

describe('permission requests nobody answers', () => {
  it('are rejected after the timeout, by the worker', async () => {
    const events = await turnOnFreshWorker({ permissions: 'ask', permissionTimeoutMs: 100 }, 'edit never.txt x');
    expect(events.find((e) => e.type === 'permission.decided')).toMatchObject({ outcome: 'reject_once', optionId: 'deny', by: 'timeout', code: 'permission_timeout' });
    expect(events.at(-1)).toMatchObject({ type: 'turn.completed' });
  });

  it('in reject mode are rejected at once, and still appear on the stream', async () => {
    const events = await turnOnFreshWorker({ permissions: 'reject' }, 'edit never.txt x');
    expect(types(events)).toContain('permission.requested');
    expect(events.find((e) => e.type === 'permission.decided')).toMatchObject({ outcome: 'reject_once', by: 'worker', code: 'worker_reject' });
  });
});
