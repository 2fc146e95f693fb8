/**
 * Every metric of src/telemetry/metrics.ts moved by real spawns on the process backend, read back
 * through `gate.metrics.registry` as a /metrics handler would.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { AdmissionDeniedError, SpawngateError } from '../../src/errors.js';
import type { Spawngate } from '../../src/spawngate.js';
import { caller, collect, openGate, processBackend, sample } from './gate.js';

const backend = processBackend();
const gates: Spawngate[] = [];

async function open(owner?: string): Promise<Spawngate> {
  const gate = await openGate(backend, owner ? { owner } : {});
  gates.push(gate);
  return gate;
}

afterAll(async () => {
  for (const gate of gates) {
    await gate.sweep({ orphans: true }).catch(() => undefined);
    await gate.shutdown();
  }
  expect(backend.leftovers()).toEqual([]);
  backend.remove();
});

describe('metrics', () => {
  it('decisions by result and reason, evaluation latency, active workers up then down, spawn-to-ready, spawns and turns', async () => {
    const gate = await open();
    const registry = gate.metrics.registry;
    const labels = { backend: 'local', profile: 'default' };

    const handle = await gate.spawn({ agentId: 'echo', task: 'echo metrics', caller: caller() });
    expect(await sample(registry, 'spawngate_active_workers', labels)).toBe(1);
    expect(await sample(registry, 'spawngate_spawn_ready_seconds_count', labels)).toBe(1);
    expect(await sample(registry, 'spawngate_spawn_ready_seconds_sum', labels)).toBeGreaterThan(0);
    expect(await sample(registry, 'spawngate_spawns_total', { ...labels, outcome: 'ready' })).toBe(1);

    const events = await collect(handle.turn('hello'));
    expect(events.at(-1)?.type).toBe('turn.completed');
    expect(await sample(registry, 'spawngate_turns_total', { backend: 'local', outcome: 'completed' })).toBe(1);

    await expect(gate.spawn({ agentId: 'echo', task: 'echo no', caller: caller(), execution: { profile: 'restricted' } })).rejects.toBeInstanceOf(AdmissionDeniedError);
    await handle.close();
    expect(await sample(registry, 'spawngate_active_workers', labels)).toBe(0);

    expect(await sample(registry, 'spawngate_decisions_total', { result: 'allow', reason: '', stage: 'policy' })).toBe(1);
    expect(await sample(registry, 'spawngate_decisions_total', { result: 'deny', reason: 'agent_not_allowed', stage: 'policy' })).toBe(1);
    expect(await sample(registry, 'spawngate_decisions_total')).toBe(2);
    expect(await sample(registry, 'spawngate_policy_evaluation_seconds_count')).toBe(2);
    expect(await sample(registry, 'spawngate_spawns_total', { backend: 'local', profile: 'restricted', outcome: 'denied' })).toBe(1);
    // A policy deny is not a store rejection.
    expect(await sample(registry, 'spawngate_reservations_rejected_total')).toBe(0);
    // The exposition a scraper reads carries the same series.
    const text = await registry.metrics();
    expect(text).toContain('spawngate_decisions_total{result="deny",reason="agent_not_allowed",stage="policy"} 1');
    expect(text).toContain('spawngate_active_workers{backend="local",profile="default"} 0');
  });

  it('reservations rejected and rate limited: a second cron spawn within the burst is refused by the store', async () => {
    const gate = await open();
    const registry = gate.metrics.registry;
    // policies/data.json: cron channels get burst 1 (2/min) per user and per channel.
    const cron = { user: 'tel-cron-metrics', channel: { id: 'tel-cron-metrics', kind: 'cron' } };
    const first = await gate.spawn({ agentId: 'echo', task: 'nightly report', caller: caller(cron) });
    await first.close();
    const error = await gate.spawn({ agentId: 'echo', task: 'nightly report again', caller: caller(cron) }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(AdmissionDeniedError);
    const code = (error as AdmissionDeniedError).reasons[0]?.code ?? '';
    expect(code).toMatch(/^rate_limit_(user|channel)$/);

    expect(await sample(registry, 'spawngate_reservations_rejected_total', { code })).toBe(1);
    expect(await sample(registry, 'spawngate_rate_limited_total', { scope: code.slice('rate_limit_'.length) })).toBe(1);
    expect(await sample(registry, 'spawngate_rate_limited_total')).toBe(1);
    expect(await sample(registry, 'spawngate_decisions_total', { result: 'deny', reason: code, stage: 'reservation' })).toBe(1);
    expect(await sample(registry, 'spawngate_active_workers')).toBe(0);
  });

  it('a concurrency cap hit in the store counts as a rejected reservation, not as a rate limit', async () => {
    const gate = await open();
    const registry = gate.metrics.registry;
    // All four read usage 0 before any of them reserves (the memory store answers within the same
    // macrotask), so the policy allows all four against the cap of 3 and the store refuses one.
    const results = await Promise.allSettled([1, 2, 3, 4].map(() => gate.spawn({ agentId: 'echo', task: 'echo cap', caller: caller(), execution: { profile: 'capped' } })));
    const ok = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    try {
      expect(ok).toHaveLength(3);
      const denied = results.find((r) => r.status === 'rejected');
      expect((denied?.reason as AdmissionDeniedError).reasons[0]?.code).toBe('concurrency_limit_profile');
      expect(await sample(registry, 'spawngate_reservations_rejected_total', { code: 'concurrency_limit_profile' })).toBe(1);
      expect(await sample(registry, 'spawngate_rate_limited_total')).toBe(0);
    } finally {
      for (const h of ok) await h.close();
    }
  });

  it('sweeper deletions: workers past their expiry are deleted by the sweeper and counted', async () => {
    // The gateway's clock jumps past the TTL (as after a suspend), so the TTL timers have not
    // fired but the expires-at labels are in the past: only the sweeper can catch these.
    let skewMs = 0;
    const gate = await openGate(backend, { clock: () => new Date(Date.now() + skewMs) });
    gates.push(gate);
    const a = await gate.spawn({ agentId: 'echo', task: 'echo stale', caller: caller() });
    const b = await gate.spawn({ agentId: 'echo', task: 'echo stale too', caller: caller() });
    expect((await gate.sweep()).removed).toEqual([]);
    skewMs = (a.decision.ttlSeconds + 60) * 1000;
    const report = await gate.sweep();
    expect(report.removed.map((e) => [e.spawnId, e.reason, e.deleted, e.error]).sort()).toEqual(
      [
        [a.spawnId, 'expired', true, undefined],
        [b.spawnId, 'expired', true, undefined],
      ].sort(),
    );
    expect(await sample(gate.metrics.registry, 'spawngate_sweeper_deletions_total', { backend: 'local', reason: 'expired' })).toBe(2);
    expect(await sample(gate.metrics.registry, 'spawngate_active_workers')).toBe(0);
    expect((await gate.status(a.spawnId)).closeReason).toBe('expired');
    expect(await gate.list()).toEqual([]);
  });

  it('worker failures: an agent that crashes mid-turn is counted with its reason', async () => {
    const gate = await open();
    const registry = gate.metrics.registry;
    const handle = await gate.spawn({ agentId: 'fixture', task: 'crash test', caller: caller() });
    const events = await collect(handle.turn('crash'));
    expect(events.at(-1)).toMatchObject({ type: 'turn.failed', error: { code: 'agent_exited' } });
    // The lifecycle reaps the dead worker before the turn's stream ends.
    const status = await gate.status(handle.spawnId);
    expect(status.closeReason).toBe('failed');
    const reason = status.backendStatus.reason ?? '';
    expect(reason).not.toBe('');
    expect(await sample(registry, 'spawngate_worker_failures_total', { backend: 'local', reason })).toBe(1);
    expect(await sample(registry, 'spawngate_turns_total', { backend: 'local', outcome: 'failed' })).toBe(1);
    expect(await sample(registry, 'spawngate_active_workers')).toBe(0);
  });

  it('a worker that never becomes ready is counted as a failed spawn and a worker failure, and leaves nothing', async () => {
    const gate = await open();
    const registry = gate.metrics.registry;
    const attempt = gate.spawn({ agentId: 'fixture', task: 'never ready', caller: caller(), execution: { profile: 'broken' } });
    const error = await attempt.then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(SpawngateError);
    expect(error).not.toBeInstanceOf(AdmissionDeniedError);
    const labels = { backend: 'local', profile: 'broken' };
    expect(await sample(registry, 'spawngate_spawns_total', { ...labels, outcome: 'failed' })).toBe(1);
    expect(await sample(registry, 'spawngate_worker_failures_total', { backend: 'local' })).toBe(1);
    expect(await sample(registry, 'spawngate_spawn_ready_seconds_count', labels)).toBe(0);
    expect(await sample(registry, 'spawngate_active_workers')).toBe(0);
    expect(await gate.store.active()).toEqual([]);
    expect(await gate.list()).toEqual([]);
  });
});
