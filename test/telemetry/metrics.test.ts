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
    expect(text).toContain('spawngate_decisions_total{result="deny",reason="agent_not_allowed",stage="policy",backend="local",profile="restricted",mode="spawn"} 1');
    // The turn's duration is observed under its outcome; nothing is in flight any more.
    expect(await sample(registry, 'spawngate_turn_duration_seconds_count', { backend: 'local', outcome: 'completed' })).toBe(1);
    expect(await sample(registry, 'spawngate_spawns_in_flight')).toBe(0);
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

  it('every series the config can produce exists at zero before the first event, so rate() and increase() see the first one', async () => {
    const gate = await open();
    const text = await gate.metrics.registry.metrics();
    for (const profile of ['default', 'traced', 'capped', 'restricted', 'broken']) {
      for (const mode of ['spawn', 'dry_run']) {
        expect(text).toContain(`spawngate_decisions_total{result="allow",reason="",stage="policy",backend="local",profile="${profile}",mode="${mode}"} 0`);
        expect(text).toContain(`spawngate_decisions_total{result="deny",reason="agent_not_allowed",stage="policy",backend="local",profile="${profile}",mode="${mode}"} 0`);
        expect(text).toContain(`spawngate_decisions_total{result="deny",reason="rate_limit_user",stage="reservation",backend="local",profile="${profile}",mode="${mode}"} 0`);
      }
      for (const outcome of ['ready', 'denied', 'failed']) expect(text).toContain(`spawngate_spawns_total{backend="local",profile="${profile}",outcome="${outcome}"} 0`);
      expect(text).toContain(`spawngate_active_workers{backend="local",profile="${profile}"} 0`);
      expect(text).toContain(`spawngate_spawns_in_flight{backend="local",profile="${profile}"} 0`);
      expect(text).toContain(`spawngate_spawn_ready_seconds_count{backend="local",profile="${profile}"} 0`);
      expect(text).toContain(`spawngate_permission_decisions_total{backend="local",profile="${profile}",outcome="reject",code="path_outside_workspace"} 0`);
      for (const outcome of ['completed', 'failed', 'cancelled']) expect(text).toContain(`spawngate_turns_total{backend="local",profile="${profile}",outcome="${outcome}"} 0`);
      for (const reason of ['expired', 'orphaned', 'exited']) expect(text).toContain(`spawngate_sweeper_deletions_total{backend="local",profile="${profile}",reason="${reason}"} 0`);
      for (const reason of ['Error', 'OOMKilled', 'DeadlineExceeded', 'ReadyTimeout']) expect(text).toContain(`spawngate_worker_failures_total{backend="local",profile="${profile}",reason="${reason}"} 0`);
      for (const code of ['concurrency_limit_profile', 'rate_limit_user', 'rate_limit_channel']) expect(text).toContain(`spawngate_reservations_rejected_total{code="${code}",backend="local",profile="${profile}"} 0`);
      for (const scope of ['user', 'channel']) expect(text).toContain(`spawngate_rate_limited_total{scope="${scope}",backend="local",profile="${profile}"} 0`);
    }
    // A deny that resolved no known backend carries empty labels.
    expect(text).toContain('spawngate_decisions_total{result="deny",reason="unknown_backend",stage="policy",backend="",profile="",mode="spawn"} 0');
    expect(text).toContain('spawngate_bundle_reloads_total{result="failure"} 0');
    expect(text).toContain('spawngate_bundle_reloads_total{result="success"} 1');
    expect(text).toMatch(/^spawngate_policy_bundle_info\{revision="[0-9a-f]+"\} 1$/m);
    expect(text).toContain('spawngate_policy_state{state="ok"} 1');
    expect(text).toContain('spawngate_policy_state{state="failing"} 0');
    expect(text).toMatch(/^spawngate_build_info\{version="\d+\.\d+\.\d+[^"]*",nodejs_version="\d+\.\d+\.\d+"\} 1$/m);
    // A library gate leaves process_* and nodejs_* to its host's registry.
    expect(text).not.toContain('process_cpu_user_seconds_total');
  });

  it('a caller-chosen backend or profile never becomes a label value', async () => {
    const gate = await open();
    const registry = gate.metrics.registry;
    const before = (await registry.getMetricsAsJSON()).reduce((n, m) => n + m.values.length, 0);
    for (let i = 0; i < 5; i++) {
      await expect(gate.spawn({ agentId: 'echo', task: 'echo', caller: caller(), execution: { backend: `made-up-${i}`, profile: `p-${i}` } })).rejects.toBeInstanceOf(AdmissionDeniedError);
    }
    const after = (await registry.getMetricsAsJSON()).reduce((n, m) => n + m.values.length, 0);
    expect(after).toBe(before);
    expect(await sample(registry, 'spawngate_decisions_total', { result: 'deny', reason: 'unknown_backend', backend: '', profile: '', mode: 'spawn' })).toBe(5);
    expect(await sample(registry, 'spawngate_spawns_total', { backend: '', profile: '', outcome: 'denied' })).toBe(5);
  });

  it('dry-run admits are decisions of their own mode and never reservation rejections', async () => {
    const gate = await open();
    const registry = gate.metrics.registry;
    const cron = { user: 'tel-cron-dry', channel: { id: 'tel-cron-dry', kind: 'cron' } };
    const first = await gate.spawn({ agentId: 'echo', task: 'nightly', caller: caller(cron) });
    await first.close();
    // The bucket is empty now: the dry run says so, and takes nothing.
    const dry = await gate.admit({ agentId: 'echo', task: 'nightly', caller: caller(cron) });
    expect(dry.decision.allow).toBe(false);
    const code = dry.decision.allow ? '' : (dry.decision.reasons[0]?.code ?? '');
    expect(code).toMatch(/^rate_limit_/);
    expect(await sample(registry, 'spawngate_decisions_total', { mode: 'dry_run', result: 'deny', reason: code, stage: 'reservation', backend: 'local', profile: 'default' })).toBe(1);
    expect(await sample(registry, 'spawngate_decisions_total', { mode: 'spawn' })).toBe(1);
    expect(await sample(registry, 'spawngate_reservations_rejected_total')).toBe(0);
    expect(await sample(registry, 'spawngate_rate_limited_total')).toBe(0);
  });

  it('a worker that dies between turns is a worker failure when the sweeper finds it, counted once over repeated sweeps', async () => {
    const gate = await open();
    const registry = gate.metrics.registry;
    const handle = await gate.spawn({ agentId: 'echo', task: 'echo then die', caller: caller() });
    process.kill(Number(handle.nativeId), 'SIGKILL');
    // Bounded: the backend reports the exit once it has reaped the child.
    for (let i = 0; i < 200 && (await gate.list()).find((w) => w.spawnId === handle.spawnId)?.phase !== 'failed'; i++) await new Promise((r) => setTimeout(r, 50));
    // Two sweeps at once and one after: the death is one failure and one deletion.
    const reports = await Promise.all([gate.sweep(), gate.sweep()]);
    await gate.sweep();
    expect(reports.flatMap((r) => r.removed).filter((e) => e.spawnId === handle.spawnId && e.deleted)).toHaveLength(1);
    expect(await sample(registry, 'spawngate_worker_failures_total', { backend: 'local' })).toBe(1);
    expect(await sample(registry, 'spawngate_sweeper_deletions_total', { backend: 'local', reason: 'exited' })).toBe(1);
    expect((await gate.status(handle.spawnId)).closeReason).toBe('failed');
    expect(await sample(registry, 'spawngate_active_workers')).toBe(0);
  });
});
