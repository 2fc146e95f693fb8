/**
 * The backend contract suite. Every backend runs the same scenarios on the real engine behind it,
 * through the Backend interface itself (validate, create, list by selector, running, idempotent
 * delete, and a worker that dies while starting) and through the public gate: a backend is done
 * when this passes. Call it from a backend's test file with a target describing that backend here.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Egress } from '../../src/admission/types.js';
import { defaultBackendResolver } from '../../src/backends/registry.js';
import type { Backend, WorkerRef, WorkerSpec } from '../../src/backends/types.js';
import { LABELS } from '../../src/backends/types.js';
import { createWorkerClient } from '../../src/protocol/client.js';
import type { BackendConfig } from '../../src/config/index.js';
import { AdmissionDeniedError, BackendError } from '../../src/errors.js';
import { waitForWorker } from '../../src/sessions/readiness.js';
import { createSpawngate, type Spawngate } from '../../src/spawngate.js';
import type { WorkerEvent } from '../../src/protocol/events.js';
import { testWorkerSpec } from '../helpers/worker-spec.js';

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
  /** WorkerSpec fields this backend needs when driven directly (image, placement), like profileBase for the gate. */
  workerSpec?: Partial<WorkerSpec>;
  /** Egress modes the start-up failure cases run in; default ["none"]. */
  egressModes?: readonly Egress[];
}

/** What the fixture agent writes to stderr before it exits at start-up (ACP_FIXTURE_EXIT_AT_START). */
const AGENT_EXIT_LINE = 'fixture: exiting at start-up with code 3';
/** Long enough that a failure seen "well under" it cannot be the time-out; short enough to fail a hang in one test run. */
const FAIL_FAST_TIMEOUT_SECONDS = 120;
/** A generous bound on how long a worker that dies while starting may keep a spawn waiting, start included. */
const FAIL_FAST_BOUND_MS = 30_000;

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
              crashing: { ...base, timeoutSeconds: FAIL_FAST_TIMEOUT_SECONDS, env: { ACP_FIXTURE_EXIT_AT_START: '3' } },
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

    it('a worker whose agent dies at start-up fails the spawn fast, with its reason and stderr, and frees the slots', async () => {
      const gate = await open();
      const before = (await gate.list()).map((w) => w.spawnId);
      const started = Date.now();
      const err = await gate.spawn(request('echo never answered', { execution: { profile: 'crashing' } })).then(
        () => null,
        (e: unknown) => e,
      );
      const elapsed = Date.now() - started;
      console.log(`${target.name}: spawn of a worker whose agent exits at start-up failed after ${elapsed} ms (timeoutSeconds ${FAIL_FAST_TIMEOUT_SECONDS})`);
      expect(err).toBeInstanceOf(BackendError);
      expect(err).toMatchObject({ code: 'BACKEND_FAILED', details: { reason: 'Error', exitCode: 1 } });
      expect((err as BackendError).message).toContain(AGENT_EXIT_LINE);
      expect(elapsed).toBeLessThan(FAIL_FAST_BOUND_MS);
      expect((await gate.list()).map((w) => w.spawnId)).toEqual(before);
      expect(await gate.store.active()).toHaveLength(0);
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

    describe('the Backend interface itself', () => {
      const directOwner = `${owner}-direct`;
      const readyMs = timeout * 1000;
      let backend: Backend;
      const refs: WorkerRef[] = [];

      beforeAll(async () => {
        backend = await defaultBackendResolver()(target.name, target.backend);
      });

      afterAll(async () => {
        for (const ref of refs) await backend?.delete(ref).catch(() => undefined);
        await backend?.close?.();
      });

      const directSpec = (overrides: Partial<WorkerSpec> = {}): WorkerSpec => {
        const s = testWorkerSpec(
          { owner: directOwner, backendName: target.name, profileName: 'direct', agentId: 'fixture', agentCommand: target.fixtureCommand, ...target.workerSpec },
          overrides,
        );
        return { ...s, labels: { ...s.labels, [LABELS.backend]: target.name, [LABELS.profile]: 'direct' } };
      };
      const created = async (s: WorkerSpec): Promise<WorkerRef> => {
        const ref = await backend.create(s);
        refs.push(ref);
        return ref;
      };

      it('validate → create → list by selector → running → /healthz → delete, and delete is idempotent', async () => {
        const s = directSpec();
        await backend.validate(s);
        const ref = await created(s);
        expect(ref).toMatchObject({ spawnId: s.spawnId, backendName: target.name });
        // Seen from create on, and only by selectors whose every label matches.
        expect((await backend.list({ [LABELS.spawnId]: s.spawnId })).map((w) => w.ref.spawnId)).toEqual([s.spawnId]);
        expect((await backend.list({ [LABELS.owner]: directOwner, [LABELS.profile]: 'direct' })).map((w) => w.ref.spawnId)).toContain(s.spawnId);
        expect(await backend.list({ [LABELS.spawnId]: s.spawnId, [LABELS.owner]: `${directOwner}-other` })).toEqual([]);
        expect(await backend.list({ [LABELS.spawnId]: randomUUID() })).toEqual([]);

        const endpoint = await backend.running(ref, { timeoutMs: readyMs });
        expect(endpoint.socketPath ?? endpoint.baseUrl).toBeTruthy();
        expect(await waitForWorker({ backend, ref, token: s.token, timeoutMs: readyMs })).toEqual(endpoint);
        expect(await createWorkerClient({ ...endpoint, token: s.token }).healthz()).toMatchObject({ status: 'ok', agentId: 'fixture' });
        expect(await backend.status(ref)).toMatchObject({ phase: 'running', reason: null });

        await backend.delete(ref);
        expect(await backend.list({ [LABELS.spawnId]: s.spawnId })).toEqual([]);
        expect((await backend.status(ref)).phase).toBe('gone');
        await backend.delete(ref);
        // Something that never existed here is already deleted.
        await backend.delete({ spawnId: randomUUID(), backendName: target.name, nativeId: '' });
      });

      it('a wrong token is refused by the worker, not waited out', async () => {
        const s = directSpec();
        const ref = await created(s);
        await expect(waitForWorker({ backend, ref, token: 'not-the-token', timeoutMs: readyMs })).rejects.toMatchObject({ code: 'WORKER_UNAUTHORIZED' });
        await backend.delete(ref);
      });

      for (const egress of target.egressModes ?? ['none']) {
        /** Creates a worker that dies while starting and returns how waitForWorker failed, and how fast. */
        const failedStart = async (what: string, env: Record<string, string>): Promise<BackendError> => {
          const s = directSpec({ egress, env, timeoutSeconds: FAIL_FAST_TIMEOUT_SECONDS });
          const ref = await created(s);
          const started = Date.now();
          const err = await waitForWorker({ backend, ref, token: s.token, timeoutMs: s.timeoutSeconds * 1000 }).then(
            () => null,
            (e: unknown) => e,
          );
          const elapsed = Date.now() - started;
          console.log(`${target.name} egress ${egress}: ${what}: waitForWorker failed after ${elapsed} ms (timeoutSeconds ${s.timeoutSeconds})`);
          expect(err).toBeInstanceOf(BackendError);
          expect(elapsed).toBeLessThan(FAIL_FAST_BOUND_MS);
          await backend.delete(ref);
          expect(await backend.list({ [LABELS.spawnId]: s.spawnId })).toEqual([]);
          return err as BackendError;
        };

        it(`egress ${egress}: a worker whose agent exits at start-up fails the wait fast, with the reason and the agent's stderr`, async () => {
          const err = await failedStart('agent exits at start-up', { ACP_FIXTURE_EXIT_AT_START: '3' });
          // The reference worker exits 1 when its agent died.
          expect(err).toMatchObject({ code: 'BACKEND_FAILED', details: { reason: 'Error', exitCode: 1 } });
          expect(err.details['logTail']).toEqual(expect.arrayContaining([expect.stringContaining(AGENT_EXIT_LINE)]));
          expect(err.message).toMatch(/failed before it was ready: Error/);
          expect(err.message).toContain(AGENT_EXIT_LINE);
        });

        it(`egress ${egress}: a worker that exits before it listens fails the wait fast, with the reason and its stderr`, async () => {
          // A bad environment: the worker refuses to start (exit 2) before it listens anywhere.
          const err = await failedStart('worker exits before listening', { SPAWNGATE_CANCEL_GRACE_MS: 'never' });
          expect(err).toMatchObject({ code: 'BACKEND_FAILED', details: { reason: 'Error', exitCode: 2 } });
          expect(err.details['logTail']).toEqual(expect.arrayContaining([expect.stringContaining('SPAWNGATE_CANCEL_GRACE_MS')]));
          expect(err.message).toContain('SPAWNGATE_CANCEL_GRACE_MS');
        });
      }
    });
  });
}
