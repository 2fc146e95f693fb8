/**
 * POST /claim on a warm worker: the spawn that takes it swaps in its own token (the pool's opens
 * nothing afterwards) and may bring its deadline forward, never back; once only, only a worker
 * that is ready and never ran a turn, and only a worker started claimable.
 */
import { request } from 'node:http';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { WorkerLogLine } from '../../src/protocol/events.js';
import { collect, messageText, newToken, startTestWorker } from './helpers.js';
import type { TestWorker } from './helpers.js';

const workers: TestWorker[] = [];
afterEach(async () => {
  vi.useRealTimers();
  for (const w of workers.splice(0)) await w.close();
});

async function warm(overrides: Parameters<typeof startTestWorker>[1] = {}): Promise<TestWorker> {
  const w = await startTestWorker('unix', { claimable: true, ...overrides });
  workers.push(w);
  await w.worker.ready;
  return w;
}

const token32 = (): string => `${newToken()}${newToken()}`.slice(0, 40);

describe('worker POST /claim', () => {
  it('swaps the token once: the pool token is refused from then on, the new one serves turns', async () => {
    const w = await warm();
    const mine = token32();
    await expect(w.client.claim({ token: mine })).resolves.toEqual({ claimed: true, deadlineAt: null });
    await expect(w.client.status()).rejects.toMatchObject({ code: 'WORKER_UNAUTHORIZED' });
    const claimed = w.clientWith(mine);
    expect(messageText(await collect(claimed.turn('hello')))).toContain('hello');
    // A second claim, even with the right token, is refused and changes nothing.
    await expect(claimed.claim({ token: token32() })).rejects.toMatchObject({ code: 'WORKER_PROTOCOL', details: { httpStatus: 409, workerError: 'already_claimed' } });
    await expect(claimed.status()).resolves.toMatchObject({ state: 'idle' });
  });

  it('refuses a worker that already ran a turn, a bad token, unknown fields and a later deadline', async () => {
    const w = await warm({ deadlineAt: new Date(Date.now() + 3_600_000) });
    await expect(w.client.claim({ token: 'short' })).rejects.toMatchObject({ details: { httpStatus: 400, reason: expect.stringContaining('32 to 512 characters') as unknown } });
    await expect(w.client.claim({ token: token32(), deadline: Math.floor(Date.now() / 1000) + 7200 })).rejects.toMatchObject({
      details: { httpStatus: 400, reason: expect.stringContaining('may only shorten') as unknown },
    });
    await expect(w.client.claim({ token: token32(), extra: 1 } as unknown as { token: string })).rejects.toMatchObject({ details: { httpStatus: 400, reason: 'unknown field extra' } });
    // Nothing above took effect: the pool's token still works.
    await collect(w.client.turn('first'));
    await expect(w.client.claim({ token: token32() })).rejects.toMatchObject({ details: { httpStatus: 409, workerError: 'not_claimable' } });
  });

  it('a probe runs every check of a claim and takes nothing', async () => {
    const w = await warm({ deadlineAt: new Date(Date.now() + 3_600_000) });
    const answer = await w.client.claim({ token: token32(), probe: true });
    expect(answer).toEqual({ claimed: false, deadlineAt: expect.any(String) as unknown });
    await expect(w.client.claim({ token: token32(), probe: 'yes' } as unknown as { token: string })).rejects.toMatchObject({ details: { httpStatus: 400, reason: 'probe must be a boolean' } });
    await expect(w.client.claim({ token: 'short', probe: true })).rejects.toMatchObject({ details: { httpStatus: 400 } });
    await expect(w.client.claim({ token: token32(), probe: true, deadline: Math.floor(Date.now() / 1000) + 7200 })).rejects.toMatchObject({ details: { httpStatus: 400 } });
    // Still the pool's: its token works, and a real claim after the probe goes through.
    await expect(w.client.status()).resolves.toMatchObject({ state: 'idle' });
    const mine = token32();
    await expect(w.client.claim({ token: mine })).resolves.toMatchObject({ claimed: true });
    // A claimed worker (or one that ran a turn) fails the probe as it would a claim.
    await expect(w.clientWith(mine).claim({ token: mine, probe: true })).rejects.toMatchObject({ details: { httpStatus: 409, workerError: 'already_claimed' } });
    const used = await warm();
    await collect(used.client.turn('first'));
    await expect(used.client.claim({ token: token32(), probe: true })).rejects.toMatchObject({ details: { httpStatus: 409, workerError: 'not_claimable' } });
  });

  it('rehearses its turn path once before it is ready, unseen: the agent gets no prompt, nothing is counted, the first real turn is its first', async () => {
    const lines: WorkerLogLine[] = [];
    const w = await warm({ onLog: (l) => lines.push(l) });
    const messages = () => lines.map((l) => l.message);
    expect(messages().filter((m) => m.startsWith('rehearsed the turn path'))).toEqual([expect.stringContaining('"completed":true') as unknown]);
    // Ready after the rehearsal, never before it.
    expect(messages().findIndex((m) => m.startsWith('ACP session ready'))).toBeGreaterThan(messages().findIndex((m) => m.startsWith('rehearsed')));
    expect(messages().filter((m) => /fixture: prompt|turn started|turn ended/.test(m))).toEqual([]);
    await expect(w.client.status()).resolves.toMatchObject({ state: 'idle', turns: 0, outcomes: { completed: 0, failed: 0, cancelled: 0 }, lastEventAt: null });
    const mine = token32();
    await w.client.claim({ token: mine });
    const events = await collect(w.clientWith(mine).turn('hello'));
    expect(events[0]).toMatchObject({ type: 'turn.started', seq: 0 });
    expect(messageText(events)).toContain('hello');
    expect(messages().filter((m) => m.includes('fixture: prompt'))).toEqual([expect.stringContaining('"hello"') as unknown]);
    await expect(w.clientWith(mine).status()).resolves.toMatchObject({ turns: 1, outcomes: { completed: 1 } });
    // A worker that is not claimable does not rehearse.
    const cold: WorkerLogLine[] = [];
    const plain = await startTestWorker('tcp', { onLog: (l) => cold.push(l) });
    workers.push(plain);
    await plain.worker.ready;
    expect(cold.some((l) => l.message.startsWith('rehearsed'))).toBe(false);
  });

  it('never runs a request that claims to be a rehearsal as a turn once none is waiting', async () => {
    const lines: WorkerLogLine[] = [];
    const w = await warm({ onLog: (l) => lines.push(l) });
    const address = w.worker.address as { socketPath: string };
    const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(
        { socketPath: address.socketPath, method: 'POST', path: '/turn', headers: { authorization: `Bearer ${w.token}`, 'content-type': 'application/json', 'x-spawngate-rehearsal': 'guess' } },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c)).on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('error', reject);
      req.end(JSON.stringify({ message: 'hello' }));
    });
    expect(answer.status).toBe(409);
    expect(answer.body).toContain('no rehearsal is waiting');
    expect(lines.some((l) => l.message.includes('fixture: prompt'))).toBe(false);
    await expect(w.client.status()).resolves.toMatchObject({ state: 'idle', turns: 0 });
  });

  it('rehearses over TCP too', async () => {
    const lines: WorkerLogLine[] = [];
    const w = await startTestWorker('tcp', { claimable: true, onLog: (l) => lines.push(l) });
    workers.push(w);
    await w.worker.ready;
    expect(lines.filter((l) => l.message.startsWith('rehearsed the turn path'))).toEqual([expect.objectContaining({ message: expect.stringContaining('"completed":true') as unknown })]);
  });

  it('is not a route of a worker started without claimable', async () => {
    const w = await startTestWorker('unix');
    workers.push(w);
    await w.worker.ready;
    await expect(w.client.claim({ token: token32() })).rejects.toMatchObject({ details: { httpStatus: 404 } });
  });

  it('an earlier deadline replaces the warm one: the worker stops then', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], shouldAdvanceTime: true });
    const lines: WorkerLogLine[] = [];
    const w = await warm({ deadlineAt: new Date(Date.now() + 10 * 3_600_000), onLog: (l) => lines.push(l) });
    const deadline = Math.floor(Date.now() / 1000) + 3600;
    const answer = await w.client.claim({ token: token32(), deadline });
    expect(answer.deadlineAt).toBe(new Date(deadline * 1000).toISOString());
    await vi.advanceTimersByTimeAsync(3600 * 1000 + 1000);
    await vi.waitFor(() => expect(lines.some((l) => l.message.startsWith('deadline reached'))).toBe(true));
  });
});
