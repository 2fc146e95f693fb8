/**
 * The worker's deadline (StartWorkerOptions.deadlineAt, SPAWNGATE_DEADLINE) on a fake clock: the test
 * decides when the deadline comes — after the turn is open — so no machine is too slow for it.
 * main.test.ts checks the same deadline end to end, through the environment and the exit status.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { WorkerEvent, WorkerLogLine } from '../../src/protocol/events.js';
import { isAlive, startTestWorker } from './helpers.js';

const HOUR_MS = 3_600_000;

describe('worker deadline (fake clock)', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('stops at deadlineAt, not before, even beyond setTimeout range: the open turn is cancelled and the agent killed', async () => {
    // Only the clock and the timers the worker arms are fake. shouldAdvanceTime keeps them running
    // at wall-clock pace, so every short timer (grace periods, 0 ms hand-offs) behaves as usual;
    // the test only jumps over the long stretch up to the deadline.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], shouldAdvanceTime: true });
    // 30 days: past setTimeout's 2^31-1 ms, which Node would otherwise turn into "fire at once".
    const deadlineAt = new Date(Date.now() + 30 * 24 * HOUR_MS);
    const lines: WorkerLogLine[] = [];
    const w = await startTestWorker('unix', { deadlineAt, onLog: (line) => lines.push(line) });
    try {
      await w.worker.ready;
      const agentPid = (await w.client.status()).agentPid;
      if (typeof agentPid !== 'number') throw new Error(`no agent pid in /status: ${String(agentPid)}`);

      const events: WorkerEvent[] = [];
      const turn = w.client.turn('slow 100000')[Symbol.asyncIterator]();
      // The first chunk proves the turn is open at the agent before the clock moves.
      while (!events.some((e) => e.type === 'agent.message.delta')) {
        const next = await turn.next();
        if (next.done) throw new Error(`turn ended before its first chunk: ${JSON.stringify(events)}`);
        events.push(next.value);
      }

      // An hour short of the deadline (an hour of slack for the check itself): nothing happened yet.
      await vi.advanceTimersByTimeAsync(deadlineAt.getTime() - Date.now() - HOUR_MS);
      expect((await w.client.status()).state).toBe('busy');
      expect(lines.some((l) => l.message.startsWith('deadline reached'))).toBe(false);

      await vi.advanceTimersByTimeAsync(deadlineAt.getTime() - Date.now());
      for (let next = await turn.next(); !next.done; next = await turn.next()) events.push(next.value);
      expect(events.at(-1)).toMatchObject({ type: 'turn.cancelled', reason: 'shutdown' });
      // close() hands back the shutdown the deadline started, so this waits for it to finish.
      await w.worker.close();
      expect(isAlive(agentPid)).toBe(false);
      const own = lines.filter((l) => l.source === 'worker').map((l) => l.message);
      expect(own).toContainEqual(expect.stringMatching(/^deadline reached; the worker stops/));
      expect(own.find((m) => m.startsWith('deadline reached'))).toContain(deadlineAt.toISOString());
    } finally {
      await w.close();
    }
  });
});
