/**
 * Atomic reservations through the whole public road: 200 concurrent `gate.spawn` calls against a
 * profile capped at 3 on the real process backend. Exactly 3 workers start; the 197 others are
 * denied before any backend call, so they cost no process.
 */
import { afterAll, expect, it } from 'vitest';
import { AdmissionDeniedError } from '../../src/errors.js';
import type { WorkerHandle } from '../../src/sessions/lifecycle.js';
import type { Spawngate } from '../../src/spawngate.js';
import { caller, collect, openGate, processBackend, sample } from '../telemetry/gate.js';

const CAP = 3;
const CONCURRENT = 200;

const backend = processBackend({ cap: CAP });
let gate: Spawngate | null = null;

afterAll(async () => {
  await gate?.sweep({ orphans: true }).catch(() => undefined);
  await gate?.shutdown();
  expect(backend.leftovers()).toEqual([]);
  backend.remove();
});

function spawnCapped(gate: Spawngate, i: number): Promise<WorkerHandle> {
  // Spread over users and channels so that only the profile cap can bind (the policy's per-user cap is 4, per-channel 8).
  return gate.spawn({
    agentId: 'echo',
    task: `echo race ${i}`,
    execution: { profile: 'capped' },
    caller: caller({ user: `racer-${i}`, channel: { id: `race-${i}`, kind: 'cli' } }),
  });
}

it(`${CONCURRENT} concurrent spawns against a cap of ${CAP}: exactly ${CAP} start, the rest are denied with concurrency_limit_profile`, { timeout: 120_000 }, async () => {
  gate = await openGate(backend);
  const g = gate;
  const results = await Promise.allSettled(Array.from({ length: CONCURRENT }, (_, i) => spawnCapped(g, i)));
  const started = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const denied = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));

  expect(started).toHaveLength(CAP);
  expect(denied).toHaveLength(CONCURRENT - CAP);
  for (const error of denied) {
    expect(error).toBeInstanceOf(AdmissionDeniedError);
    expect(error).toMatchObject({ code: 'ADMISSION_DENIED', reasons: [expect.objectContaining({ code: 'concurrency_limit_profile' })] });
  }

  // Only the three ever reached the backend, and each holds exactly one slot.
  expect((await g.list()).map((w) => w.spawnId).sort()).toEqual(started.map((h) => h.spawnId).sort());
  expect((await g.store.active()).map((r) => r.spawnId).sort()).toEqual(started.map((h) => h.spawnId).sort());
  expect(await sample(g.metrics.registry, 'spawngate_decisions_total', { result: 'deny', reason: 'concurrency_limit_profile' })).toBe(CONCURRENT - CAP);
  expect(await sample(g.metrics.registry, 'spawngate_decisions_total', { result: 'allow' })).toBe(CAP);
  expect(await sample(g.metrics.registry, 'spawngate_active_workers', { backend: 'local', profile: 'capped' })).toBe(CAP);
  // The winners are real, working workers.
  const events = await collect(started[0]!.turn('still answering'));
  expect(events.at(-1)?.type).toBe('turn.completed');

  // While full, one more is denied at once.
  await expect(spawnCapped(g, CONCURRENT)).rejects.toMatchObject({ reasons: [expect.objectContaining({ code: 'concurrency_limit_profile' })] });

  await Promise.all(started.map((h) => h.close()));
  expect(await g.list()).toEqual([]);
  expect(await g.store.active()).toEqual([]);

  // The slots came back: a new round fills the cap again, and only the cap.
  const again = await Promise.allSettled(Array.from({ length: CAP + 2 }, (_, i) => spawnCapped(g, CONCURRENT + 1 + i)));
  const second = again.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  expect(second).toHaveLength(CAP);
  await Promise.all(second.map((h) => h.close()));

  expect(await g.list()).toEqual([]);
  expect(await g.store.active()).toEqual([]);
  expect(await sample(g.metrics.registry, 'spawngate_active_workers', { backend: 'local', profile: 'capped' })).toBe(0);
});
