import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitForHealthy } from '../../src/protocol/client.js';
import type { WorkerEvent, WorkerLogLine } from '../../src/protocol/events.js';
import { collect, errorOf, eventually, isAlive, messageText, startTestWorker, tempDir, types } from './helpers.js';
import type { TestWorker, Transport } from './helpers.js';

const TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';


describe.each<Transport>(['tcp', 'unix'])('reference worker over %s', (transport) => {
  let w: TestWorker;

  beforeAll(async () => {
    w = await startTestWorker(transport);
    await w.worker.ready;
  });
  afterAll(async () => {
    await w.close();
  });

  it('answers /healthz with the token and 401 without or with a wrong one', async () => {
    const health = await w.client.healthz();
    expect(health).toMatchObject({ status: 'ok', agentId: 'fixture', protocolVersion: 1, agentInfo: { name: 'spawngate-fixture-agent' } });
    expect(typeof health.version).toBe('string');

    expect((await errorOf(w.clientWith('wrong-token').healthz())).code).toBe('WORKER_UNAUTHORIZED');
    expect((await errorOf(w.clientWith(`${w.token}x`).status())).code).toBe('WORKER_UNAUTHORIZED');
    // A token that differs only in length must fail too (hash compare, not a prefix check).
    expect((await errorOf(w.clientWith(w.token.slice(0, -1)).healthz())).code).toBe('WORKER_UNAUTHORIZED');
    expect((await errorOf(collect(w.clientWith('nope').turn('echo hi')))).code).toBe('WORKER_UNAUTHORIZED');
  });

  it('streams an echo turn as turn.started, message deltas, turn.completed with increasing seq', async () => {
    const events = await collect(w.client.turn('echo hello world', { turnId: 'turn-echo-1' }));
    expect(types(events)).toEqual(['turn.started', 'agent.message.delta', 'agent.message.delta', 'agent.message.delta', 'turn.completed']);
    expect(messageText(events)).toBe('hello world');
    expect(events.map((e) => e.seq)).toEqual([0, 1, 2, 3, 4]);
    for (const e of events) {
      expect(e.turnId).toBe('turn-echo-1');
      expect(Number.isNaN(Date.parse(e.time))).toBe(false);
    }
    expect(events[0]).toMatchObject({ type: 'turn.started', agentId: 'fixture' });
    expect(events.at(-1)).toMatchObject({ type: 'turn.completed', stopReason: 'end_turn' });
  });

  it('mints a turn id when none is given', async () => {
    const events = await collect(w.client.turn('echo x'));
    const ids = new Set(events.map((e) => e.turnId));
    expect(ids.size).toBe(1);
    expect([...ids][0]).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('maps tool_call and tool_call_update to tool.call and tool.result', async () => {
    const events = await collect(w.client.turn('tool'));
    expect(types(events)).toEqual(['turn.started', 'tool.call', 'tool.result', 'agent.message.delta', 'turn.completed']);
    expect(events[1]).toMatchObject({ type: 'tool.call', toolCallId: 'tool-1', title: 'Read README.md', kind: 'read', status: 'pending' });
    expect(events[2]).toMatchObject({ type: 'tool.result', toolCallId: 'tool-1', title: 'Read README.md', status: 'completed', content: '# README\nhello' });

    const failed = await collect(w.client.turn('tool fail'));
    expect(failed.find((e) => e.type === 'tool.result')).toMatchObject({ status: 'failed', content: 'ENOENT: README.md' });
    expect(failed.at(-1)?.type).toBe('turn.completed');
  });

  it('maps agent_thought_chunk to agent.thought.delta', async () => {
    const events = await collect(w.client.turn('think'));
    expect(types(events)).toEqual(['turn.started', 'agent.thought.delta', 'agent.message.delta', 'turn.completed']);
    expect(events[1]).toMatchObject({ text: 'pondering' });
  });

  it('by default grants permission requests with the allow_once option, and rejects once when there is none', async () => {
    const granted = await collect(w.client.turn('permission'));
    expect(messageText(granted)).toBe('permission: selected yes-once');
    expect(granted.find((e) => e.type === 'permission.decided')).toMatchObject({ outcome: 'allow_once', optionId: 'yes-once', by: 'worker', code: 'worker_allow_once' });
    expect(messageText(await collect(w.client.turn('permission reject')))).toBe('permission: selected no');
  });

  it('reports an ACP error answer as turn.failed agent_error, with the error\'s data as the agent sent it', async () => {
    const events = await collect(w.client.turn('error'));
    expect(types(events)).toEqual(['turn.started', 'turn.failed']);
    expect(events[1]).toMatchObject({ type: 'turn.failed', error: { code: 'agent_error', acpCode: -32603, acpData: { reason: 'quota exceeded', retryAfterSeconds: 30 } } });
    expect((events[1] as { error: { message: string } }).error.message).toMatch(/fixture refused the prompt/);
  });

  it('echoes traceparent into every event and passes it to the agent in _meta', async () => {
    const events = await collect(w.client.turn('echo traced', { traceparent: TRACEPARENT }));
    for (const e of events) expect(e).toMatchObject({ traceparent: TRACEPARENT, traceId: '4bf92f3577b34da6a3ce929d0e0e4736' });
    const logs = await w.client.logs(1000);
    expect(logs.some((l) => l.source === 'agent' && l.message.includes(`traceparent=${TRACEPARENT}`))).toBe(true);

    const untraced = await collect(w.client.turn('echo plain', { traceparent: 'not-a-traceparent' }));
    for (const e of untraced) expect(e.traceparent).toBeUndefined();
  });

  it('cancels a slow turn on POST /cancel and the stream ends with turn.cancelled', async () => {
    const events: WorkerEvent[] = [];
    let cancelAnswer: unknown = null;
    for await (const e of w.client.turn('slow 400')) {
      events.push(e);
      if (e.type === 'agent.message.delta' && cancelAnswer === null) cancelAnswer = await w.client.cancel();
    }
    expect(cancelAnswer).toEqual({ turnId: events[0]?.turnId });
    expect(events.at(-1)).toMatchObject({ type: 'turn.cancelled', reason: 'client_cancel', forced: false });
    // Far fewer than the 400 chunks: the agent stopped.
    expect(events.filter((e) => e.type === 'agent.message.delta').length).toBeLessThan(400);
    expect((await w.client.logs(1000)).some((l) => l.source === 'agent' && l.message === 'fixture: cancel received')).toBe(true);
    expect((await w.client.status()).state).toBe('idle');
  });

  it('answers /cancel with 202 and turnId null when no turn is open', async () => {
    expect(await w.client.cancel()).toEqual({ turnId: null });
  });

  it('refuses a second concurrent turn with 409 (WORKER_BUSY)', async () => {
    const first = w.client.turn('slow 400')[Symbol.asyncIterator]();
    const started = await first.next();
    expect(started.value).toMatchObject({ type: 'turn.started' });

    const busy = await errorOf(collect(w.client.turn('echo second')));
    expect(busy.code).toBe('WORKER_BUSY');
    expect(busy.retryable).toBe(true);
    expect(busy.details['currentTurnId']).toBe((started.value as WorkerEvent).turnId);

    await w.client.cancel();
    const rest: WorkerEvent[] = [];
    for (let r = await first.next(); !r.done; r = await first.next()) rest.push(r.value);
    expect(rest.at(-1)?.type).toBe('turn.cancelled');
  });

  it('cancels the turn when the HTTP client goes away mid-turn', async () => {
    const before = await w.client.status();
    for await (const e of w.client.turn('slow 400')) {
      if (e.type === 'agent.message.delta') break;
    }
    const after = await eventually(async () => {
      const s = await w.client.status();
      return s.state === 'idle' && s.outcomes.cancelled === before.outcomes.cancelled + 1 ? s : undefined;
    });
    expect(after.currentTurnId).toBeNull();
    const logs = await w.client.logs(1000);
    expect(logs.some((l) => l.source === 'worker' && l.message.includes('"reason":"client_disconnect"'))).toBe(true);
  });

  it('counts turns and outcomes in /status', async () => {
    const before = await w.client.status();
    await collect(w.client.turn('echo a'));
    await collect(w.client.turn('error'));
    const after = await w.client.status();
    expect(after.state).toBe('idle');
    expect(after.agentId).toBe('fixture');
    expect(after.turns).toBe(before.turns + 2);
    expect(after.outcomes.completed).toBe(before.outcomes.completed + 1);
    expect(after.outcomes.failed).toBe(before.outcomes.failed + 1);
    expect(after.currentTurnId).toBeNull();
    expect(typeof after.agentPid).toBe('number');
    expect(Date.parse(after.lastEventAt ?? '')).toBeGreaterThanOrEqual(Date.parse(after.startedAt));
  });

  it('keeps the agent stderr in /logs and honours tail', async () => {
    const marker = `marker-${transport}-${Date.now()}`;
    await collect(w.client.turn(`stderr ${marker}`));
    const lines = await w.client.logs(1000);
    expect(lines.some((l) => l.source === 'agent' && l.message === marker)).toBe(true);
    expect(lines.some((l) => l.source === 'worker' && l.message.startsWith('turn started'))).toBe(true);
    expect(await w.client.logs(2)).toHaveLength(2);
    expect((await errorOf(w.client.logs(1001))).code).toBe('WORKER_PROTOCOL');
  });

  it('rejects malformed turn requests with 400', async () => {
    const empty = await errorOf(collect(w.client.turn('   ')));
    expect(empty.code).toBe('WORKER_PROTOCOL');
    expect(empty.details).toMatchObject({ httpStatus: 400, workerError: 'invalid_request' });
    const badId = await errorOf(collect(w.client.turn('echo x', { turnId: 'has spaces' })));
    expect(badId.details).toMatchObject({ httpStatus: 400 });
  });
});

describe('reference worker failure paths', () => {
  it('ends an ignored cancel as turn.cancelled (forced) after the grace period', async () => {
    const w = await startTestWorker('tcp', { cancelGraceMs: 300, letGoWaitMs: 300 });
    try {
      await w.worker.ready;
      const events: WorkerEvent[] = [];
      for await (const e of w.client.turn('hang')) {
        events.push(e);
        if (e.type === 'turn.started') await w.client.cancel();
      }
      expect(types(events)).toEqual(['turn.started', 'turn.cancelled']);
      expect(events[1]).toMatchObject({ reason: 'client_cancel', forced: true });
      // The agent still holds the prompt: no new turn may start (its output would be this turn's).
      expect((await w.client.status()).state).toBe('busy');
      const refused = await errorOf(collect(w.client.turn('echo next')));
      expect(refused.code).toBe('WORKER_BUSY');
      expect(refused.details['reason']).toMatch(/has not let go of the force-cancelled turn/);
    } finally {
      await w.close();
    }
  });

  it('after a forced cancel, the next turn waits for the agent to let go and never shows the old turn\'s output', async () => {
    const w = await startTestWorker('tcp', { cancelGraceMs: 200 });
    try {
      await w.worker.ready;
      const first: WorkerEvent[] = [];
      for await (const e of w.client.turn('lingering 800')) {
        first.push(e);
        if (e.type === 'agent.message.delta' && first.filter((x) => x.type === 'agent.message.delta').length === 1) await w.client.cancel();
      }
      expect(first.at(-1)).toMatchObject({ type: 'turn.cancelled', forced: true });
      // Asked at once: it waits (bounded by the grace) for the agent's late chunks to end, then runs.
      const second = await collect(w.client.turn('echo fresh'));
      expect(second.at(-1)?.type).toBe('turn.completed');
      expect(messageText(second)).toBe('fresh');
      expect((await w.client.status()).state).toBe('idle');
    } finally {
      await w.close();
    }
  });

  it('a client that breaks out of a turn can start the next at once (no WORKER_BUSY while the first winds down)', async () => {
    const w = await startTestWorker('unix');
    try {
      await w.worker.ready;
      for await (const e of w.client.turn('slow 400')) if (e.type === 'agent.message.delta') break;
      const next = await collect(w.client.turn('echo next'));
      expect(next.at(-1)?.type).toBe('turn.completed');
      expect(messageText(next)).toBe('next');
    } finally {
      await w.close();
    }
  });

  it('fails a turn with agent_exited when the agent dies mid-turn, then reports exiting', async () => {
    const w = await startTestWorker('unix');
    try {
      await w.worker.ready;
      const events = await collect(w.client.turn('crash'));
      expect(types(events)).toEqual(['turn.started', 'agent.message.delta', 'turn.failed']);
      expect(events[2]).toMatchObject({ type: 'turn.failed', error: { code: 'agent_exited', exitCode: 3, signal: null } });

      const health = await errorOf(w.client.healthz());
      expect(health.code).toBe('BACKEND_UNAVAILABLE');
      expect(health.retryable).toBe(false);
      expect(health.details).toMatchObject({ httpStatus: 503, exiting: true });
      const status = await w.client.status();
      expect(status).toMatchObject({ state: 'exiting', agentPid: null, outcomes: { failed: 1 } });
      const refused = await errorOf(collect(w.client.turn('echo again')));
      expect(refused.details).toMatchObject({ httpStatus: 503, workerError: 'exiting' });
      expect((await errorOf(waitForHealthy(w.client, { timeoutMs: 5000 }))).code).toBe('BACKEND_UNAVAILABLE');
    } finally {
      await w.close();
    }
  });

  it('turns /healthz to 503 exiting when the agent dies between turns', async () => {
    const w = await startTestWorker('tcp');
    try {
      await w.worker.ready;
      const events = await collect(w.client.turn('exit-after 50'));
      expect(events.at(-1)).toMatchObject({ type: 'turn.completed' });
      const status = await eventually(async () => {
        const s = await w.client.status();
        return s.state === 'exiting' ? s : undefined;
      });
      expect(status.agentPid).toBeNull();
      const health = await errorOf(w.client.healthz());
      expect(health.details).toMatchObject({ httpStatus: 503, exiting: true });
    } finally {
      await w.close();
    }
  });

  it('fails the turn with agent_unavailable and stops an agent that closed its stdout but lives on', async () => {
    const w = await startTestWorker('tcp');
    try {
      await w.worker.ready;
      const pid = (await w.client.status()).agentPid as number;
      const events = await collect(w.client.turn('detach'));
      expect(events.at(-1)).toMatchObject({ type: 'turn.failed', error: { code: 'agent_unavailable' } });
      await eventually(() => (isAlive(pid) ? undefined : true));
      expect((await w.client.status()).state).toBe('exiting');
    } finally {
      await w.close();
    }
  });

  it('answers /healthz 503 until the ACP session exists', async () => {
    const dir = tempDir();
    const gate = join(dir.path, 'gate');
    const w = await startTestWorker('tcp', { agentEnv: { ACP_FIXTURE_SESSION_GATE: gate } });
    try {
      const starting = await errorOf(w.client.healthz());
      expect(starting.code).toBe('BACKEND_UNAVAILABLE');
      expect(starting.retryable).toBe(true);
      expect(starting.details).toMatchObject({ httpStatus: 503, exiting: false });
      expect((await w.client.status()).state).toBe('starting');
      const early = await errorOf(collect(w.client.turn('echo too early')));
      expect(early.details).toMatchObject({ httpStatus: 503, workerError: 'not_ready' });

      writeFileSync(gate, '');
      const health = await waitForHealthy(w.client, { timeoutMs: 20_000, intervalMs: 50 });
      expect(health.status).toBe('ok');
      expect(messageText(await collect(w.client.turn('echo now')))).toBe('now');
    } finally {
      await w.close();
      dir.remove();
    }
  });

  it('GET /healthz?wait=ms holds the answer until the session exists, and gives up at the wait', async () => {
    const dir = tempDir();
    const gate = join(dir.path, 'gate');
    const w = await startTestWorker('tcp', { agentEnv: { ACP_FIXTURE_SESSION_GATE: gate } });
    try {
      const shortWait = await errorOf(w.client.healthz({ waitMs: 200 }));
      expect(shortWait.details).toMatchObject({ httpStatus: 503 });
      let answered = false;
      const parked = w.client.healthz({ waitMs: 30_000 }).then((h) => {
        answered = true;
        return h;
      });
      await new Promise((r) => setTimeout(r, 300));
      expect(answered).toBe(false);
      writeFileSync(gate, '');
      expect((await parked).status).toBe('ok');
    } finally {
      await w.close();
      dir.remove();
    }
  });

  it('rejects ready and stops the agent when the ACP handshake fails', async () => {
    const w = await startTestWorker('tcp', { agentEnv: { ACP_FIXTURE_FAIL_INIT: '1' } });
    try {
      const err = await errorOf(w.worker.ready);
      expect(err.code).toBe('WORKER_PROTOCOL');
      const health = await errorOf(w.client.healthz());
      expect(health.details).toMatchObject({ httpStatus: 503, exiting: true });
      await eventually(async () => ((await w.client.status()).agentPid === null ? true : undefined));
    } finally {
      await w.close();
    }
  });

  it('reports an agent command that cannot start', async () => {
    const w = await startTestWorker('tcp', { agentCommand: '/nonexistent/agent-binary', agentArgs: [] });
    try {
      expect((await errorOf(w.worker.ready)).code).toBe('WORKER_PROTOCOL');
      expect((await w.client.status()).state).toBe('exiting');
    } finally {
      await w.close();
    }
  });

  it('kills the whole agent process group on close, escalating to SIGKILL', async () => {
    const logged: WorkerLogLine[] = [];
    const w = await startTestWorker('tcp', {
      agentEnv: { ACP_FIXTURE_IGNORE_SIGTERM: '1', ACP_FIXTURE_GRANDCHILD: '1' },
      killGraceMs: 300,
      onLog: (line) => logged.push(line),
    });
    await w.worker.ready;
    const pid = (await w.client.status()).agentPid;
    expect(typeof pid).toBe('number');
    const grandchildLine = await eventually(() => logged.find((l) => l.message.startsWith('fixture: grandchild pid=')));
    const grandchild = Number(grandchildLine.message.split('=')[1]);
    expect(isAlive(grandchild)).toBe(true);

    await w.close();
    expect(isAlive(pid as number)).toBe(false);
    expect(logged.some((l) => l.source === 'agent' && l.message === 'fixture: ignoring SIGTERM')).toBe(true);
    expect(logged.some((l) => l.source === 'worker' && l.message.includes('killed by SIGKILL'))).toBe(true);
    // The grandchild is not the worker's child: whoever adopts it reaps it, so allow a moment.
    await eventually(() => (isAlive(grandchild) ? undefined : true), 20_000);
  });

  it('ends an open turn as cancelled (shutdown) when the worker closes', async () => {
    const w = await startTestWorker('tcp');
    await w.worker.ready;
    const events: WorkerEvent[] = [];
    let closing: Promise<void> | null = null;
    for await (const e of w.client.turn('slow 400')) {
      events.push(e);
      if (e.type === 'agent.message.delta' && !closing) closing = w.close();
    }
    await closing;
    expect(events.at(-1)).toMatchObject({ type: 'turn.cancelled', reason: 'shutdown' });
  });
});
