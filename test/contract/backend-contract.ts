/**
 * The backend contract suite. Every backend runs the same scenarios through the public gate, on
 * the real engine behind it: a backend is done when this passes. Call it from a backend's test
 * file with a factory describing how to configure that backend here.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import type { BackendConfig } from '../../src/config/index.js';
import { AdmissionDeniedError } from '../../src/errors.js';
import { createSpawngate, type Spawngate } from '../../src/spawngate.js';
import type { WorkerEvent } from '../../src/worker/events.js';

export interface ContractTarget {
  /** Test title and configured backend name. */
  name: string;
  /** The backend's config without profiles; the suite adds its own. */
  backend: BackendConfig;
  /** argv of test/fixtures/acp-agent.ts as the worker sees it inside this backend. */
  fixtureCommand: string[];
  /** Profile fields this backend needs on every profile (e.g. an image). */
  profileBase?: Record<string, unknown>;
  /** Readiness takes longer on slow engines; bounds every wait. */
  readyTimeoutSeconds?: number;
}

const caller = (user = 'contract-user') => ({
  sessionKey: `agent:main:contract:${randomUUID()}`,
  depth: 0,
  channel: { id: 'contract-channel', kind: 'cli', interactive: true },
  user: { id: user, roles: [] },
});

async function collect(events: AsyncIterable<WorkerEvent>): Promise<WorkerEvent[]> {
  const out: WorkerEvent[] = [];
  for await (const e of events) out.push(e);
  return out;
}

/** Polls `check` (bounded) until it returns true. */
async function eventually(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(100);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

export function describeBackendContract(target: ContractTarget): void {
  describe(`backend contract: ${target.name}`, () => {
    const owner = `contract-${randomUUID().slice(0, 8)}`;
    const timeout = target.readyTimeoutSeconds ?? 60;
    const base = { timeoutSeconds: Math.max(timeout, 60), ...target.profileBase };
    const config = {
      agents: {
        executionBackends: {
          [target.name]: {
            ...target.backend,
            defaultProfile: 'small',
            profiles: {
              small: { ...base, ttlSeconds: 600 },
              short: { ...base, ttlSeconds: 2 },
              restricted: { ...base, allowedAgents: ['nobody'] },
            },
          },
        },
        execution: { default: { backend: target.name, profile: 'small' } },
        acp: { fixture: { command: target.fixtureCommand } },
      },
    };
    const gates: Spawngate[] = [];
    const open = async (o = owner) => {
      const gate = await createSpawngate({ config, owner: o, sweepIntervalMs: 0, decisionLog: false });
      gates.push(gate);
      return gate;
    };
    const request = (task: string, extra: Record<string, unknown> = {}) => ({ agentId: 'fixture', task, caller: caller(), ...extra });
    const onBackend = async (gate: Spawngate, spawnId: string) => (await gate.list()).filter((w) => w.spawnId === spawnId);

    afterAll(async () => {
      for (const gate of gates) {
        await gate.sweep({ orphans: true }).catch(() => undefined);
        await gate.shutdown();
      }
    });

    it('create → ready → turn → status → logs → close, leaving nothing and freeing the slots', async () => {
      const gate = await open();
      const handle = await gate.spawn(request('echo contract says hi'));
      expect(handle.backend).toBe(target.name);
      expect(handle.nativeId).not.toBe('');
      const status = await gate.status(handle.spawnId);
      expect(status).toMatchObject({ tracking: 'live', backendStatus: { phase: 'running', ready: true } });
      expect(status.worker?.state).toBe('idle');
      expect((await gate.store.active()).map((r) => r.spawnId)).toContain(handle.spawnId);

      const events = await collect(handle.turn('echo contract says hi'));
      expect(events[0]?.type).toBe('turn.started');
      expect(events.at(-1)).toMatchObject({ type: 'turn.completed', stopReason: 'end_turn' });
      const text = events.flatMap((e) => (e.type === 'agent.message.delta' ? [e.text] : [])).join('');
      expect(text).toContain('contract says hi');
      expect((await gate.status(handle.spawnId)).worker?.turns).toBe(1);
      expect((await gate.logs(handle.spawnId)).length).toBeGreaterThan(0);
      expect(await onBackend(gate, handle.spawnId)).toHaveLength(1);

      await handle.close();
      expect(await onBackend(gate, handle.spawnId)).toHaveLength(0);
      expect(await gate.store.active()).toHaveLength(0);
      expect((await gate.status(handle.spawnId)).closeReason).toBe('closed');
      await handle.close(); // idempotent
    });

    it('cancel ends the open turn with turn.cancelled', async () => {
      const gate = await open();
      await using handle = await gate.spawn(request('cancel test'));
      const events: WorkerEvent[] = [];
      for await (const e of handle.turn('slow 400')) {
        events.push(e);
        if (e.type === 'agent.message.delta' && events.filter((x) => x.type === 'agent.message.delta').length === 2) await handle.cancel();
      }
      expect(events.at(-1)?.type).toBe('turn.cancelled');
      // the worker stays usable after a cancel
      const again = await collect(handle.turn('echo still here'));
      expect(again.at(-1)?.type).toBe('turn.completed');
    });

    it('a crash mid-turn gives turn.failed, a failure reason in status, and frees the slots', async () => {
      const gate = await open();
      const handle = await gate.spawn(request('crash test'));
      const events = await collect(handle.turn('crash'));
      expect(events.at(-1)).toMatchObject({ type: 'turn.failed', error: { code: 'agent_exited' } });
      await eventually(async () => (await gate.status(handle.spawnId)).tracking === 'closed', 30_000, 'the crashed worker to be reaped');
      const status = await gate.status(handle.spawnId);
      expect(status.closeReason).toBe('failed');
      expect(status.backendStatus.reason).toBeTruthy();
      expect(status.backendStatus.ready).toBe(false);
      expect(await onBackend(gate, handle.spawnId)).toHaveLength(0);
      expect(await gate.store.active()).toHaveLength(0);
    });

    it('TTL from the decision expires the worker', async () => {
      const gate = await open();
      const handle = await gate.spawn(request('ttl test', { execution: { profile: 'short' } }));
      expect(handle.decision.ttlSeconds).toBe(2);
      await eventually(async () => (await gate.status(handle.spawnId)).closeReason === 'expired', 30_000, 'TTL expiry');
      expect(await onBackend(gate, handle.spawnId)).toHaveLength(0);
      expect(await gate.store.active()).toHaveLength(0);
    });

    it('the sweeper removes leftovers after the gateway is dropped (simulated restart)', async () => {
      const restartOwner = `${owner}-restart`;
      const first = await open(restartOwner);
      const a = await first.spawn(request('echo left behind'));
      const b = await first.spawn(request('echo left behind too'));
      // The "crash": the lifecycle object goes away without closing anything.
      await first.shutdown({ keepWorkers: true });
      const second = await open(restartOwner);
      expect((await second.list()).map((w) => w.spawnId).sort()).toEqual([a.spawnId, b.spawnId].sort());
      const dry = await second.sweep({ dryRun: true });
      expect(dry.removed.map((e) => e.spawnId).sort()).toEqual([a.spawnId, b.spawnId].sort());
      expect(await second.list()).toHaveLength(2);
      const report = await second.sweep();
      expect(report.removed.every((e) => e.deleted && e.reason === 'orphaned')).toBe(true);
      expect(await second.list()).toHaveLength(0);
    });

    it('a deny never creates anything', async () => {
      const gate = await open();
      const before = (await gate.list({ allOwners: true })).length;
      const attempt = gate.spawn(request('echo nope', { execution: { profile: 'restricted' } }));
      await expect(attempt).rejects.toBeInstanceOf(AdmissionDeniedError);
      await expect(attempt).rejects.toMatchObject({ reasons: [expect.objectContaining({ code: 'agent_not_allowed' })] });
      expect((await gate.list({ allOwners: true })).length).toBe(before);
      expect(await gate.store.active()).toHaveLength(0);
    });
  });
}
