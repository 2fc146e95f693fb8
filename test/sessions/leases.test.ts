/**
 * Reservations are leases, through the whole public road on the real process backend: a gateway
 * that stops renewing loses its slots after one lease period, the sweeper joins backend listings
 * with the store's leases both ways, and a restarted gateway reconciles before its first spawn.
 * The store's clock is injected, so a lease lapses when the test says so, never by waiting.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createMemoryStore } from '../../src/admission/store/memory.js';
import type { ReservationStore } from '../../src/admission/store/types.js';
import { SpawngateError } from '../../src/errors.js';
import type { Spawngate } from '../../src/spawngate.js';
import { caller, openGate, processBackend } from '../telemetry/gate.js';

const LEASE_MS = 30_000;
const backend = processBackend({ cap: 1 });
const gates: Spawngate[] = [];

afterEach(async () => {
  for (const g of gates.splice(0)) {
    await g.sweep({ orphans: true }).catch(() => undefined);
    await g.shutdown().catch(() => undefined);
  }
});

afterAll(() => {
  expect(backend.leftovers()).toEqual([]);
  backend.remove();
});

/** A memory store whose clock the test moves. */
function clockedStore() {
  let t = 1_700_000_000_000;
  const store = createMemoryStore({ now: () => t });
  return { store, advance: (ms: number) => void (t += ms) };
}

async function gateOn(store: ReservationStore, owner: string, extra: Parameters<typeof openGate>[1] = {}): Promise<Spawngate> {
  // No heartbeat timer: the test renews (or does not) by calling leases.renew().
  const g = await openGate(backend, { store, owner, lease: { leaseMs: LEASE_MS, renewMs: 10_000, heartbeat: false }, ...extra });
  gates.push(g);
  return g;
}

const capped = (user = 'lease-user') => ({ agentId: 'echo', task: 'x', execution: { profile: 'capped' }, caller: caller({ user }) });

describe('leases through the gate and the sweeper', () => {
  it('a gateway that stops renewing loses its slots after one lease; another gateway then removes its worker as an orphan', async () => {
    const { store, advance } = clockedStore();
    const a = await gateOn(store, 'group-1');
    const b = await gateOn(store, 'group-1');
    const held = await a.spawn(capped());
    expect((await store.active()).map((r) => [r.spawnId, r.holder])).toEqual([[held.spawnId, a.instanceId]]);
    await a.shutdown({ keepWorkers: true });

    // Inside the lease the worker is A's, though B does not track it: not an orphan.
    const early = await b.sweep();
    expect(early.removed).toEqual([]);
    expect(early.kept).toBe(1);
    await expect(b.spawn(capped())).rejects.toMatchObject({ reasons: [expect.objectContaining({ code: 'concurrency_limit_profile' })] });

    advance(LEASE_MS);
    const late = await b.sweep();
    expect(late.removed).toEqual([expect.objectContaining({ spawnId: held.spawnId, reason: 'orphaned', deleted: true })]);
    expect(await store.active()).toEqual([]);
    expect(await b.list()).toEqual([]);
    const next = await b.spawn(capped());
    await next.close();
  });

  it('renewals keep a slow spawn\'s lease alive across many lease periods', async () => {
    const { store, advance } = clockedStore();
    const g = await gateOn(store, 'group-2');
    const other = await gateOn(store, 'group-2');
    const h = await g.spawn(capped());
    for (let i = 0; i < 5; i++) {
      advance(LEASE_MS / 2);
      await g.leases.renew();
    }
    expect((await other.sweep()).removed).toEqual([]);
    expect((await h.status()).tracking).toBe('live');
    await h.close();
    expect(await store.active()).toEqual([]);
  });

  it('a worker whose lease the store no longer holds is closed with lease_lost, and its slot is not released twice', async () => {
    const { store } = clockedStore();
    const g = await gateOn(store, 'group-3');
    const h = await g.spawn(capped());
    const [record] = await store.active();
    // The store lost it (Redis restarted empty, or the lease lapsed during an outage).
    expect(await store.release(record!.id)).toBe(true);
    await g.leases.renew();
    await expect.poll(async () => (await g.status(h.spawnId)).closeReason, { timeout: 20_000 }).toBe('lease_lost');
    expect(await g.list()).toEqual([]);
    expect(await store.active()).toEqual([]);
  });

  it('a restarted gateway reconciles before its first spawn: the old workers are gone, so a cap of 1 admits 1', async () => {
    const { store } = clockedStore();
    const before = await gateOn(store, 'group-4');
    const old = await before.spawn(capped());
    await before.shutdown({ keepWorkers: true });
    // The restart: a new process, a new (empty) memory store, the same owner group.
    const restarted = await gateOn(createMemoryStore(), 'group-4', { sweepIntervalMs: 3_600_000 });
    expect((await restarted.list()).map((w) => w.spawnId)).not.toContain(old.spawnId);
    const fresh = await restarted.spawn(capped());
    await expect(restarted.spawn(capped('someone-else'))).rejects.toMatchObject({ reasons: [expect.objectContaining({ code: 'concurrency_limit_profile' })] });
    await fresh.close();
  });

  it('a lease recorded for this instance with nothing behind it is released by the sweeper', async () => {
    const { store } = clockedStore();
    const g = await gateOn(store, 'group-5');
    const leaked = await store.reserve({ spawnId: 'no-worker', holder: g.instanceId, leaseMs: LEASE_MS, concurrency: [{ scope: 'user', key: 'leak', max: 1 }], rate: [] });
    const foreign = await store.reserve({ spawnId: 'elsewhere', holder: 'another-instance', leaseMs: LEASE_MS, concurrency: [{ scope: 'user', key: 'foreign', max: 1 }], rate: [] });
    if (!leaked.ok || !foreign.ok) throw new Error('expected reservations');
    const dry = await g.sweep({ dryRun: true });
    expect(dry.releasedLeases).toEqual([{ reservationId: leaked.record.id, spawnId: 'no-worker', released: false }]);
    const report = await g.sweep();
    expect(report.releasedLeases).toEqual([{ reservationId: leaked.record.id, spawnId: 'no-worker', released: true }]);
    // Another live instance's lease (a reservation on its way to a worker) is its own business.
    expect((await store.active()).map((r) => r.spawnId)).toEqual(['elsewhere']);
    // And a caller's own reservation from gate.reserve() is held by this instance, so it stays.
    const mine = await g.reserve(capped('holder'));
    expect(mine.allowed).toBe(true);
    expect((await g.sweep()).releasedLeases).toEqual([]);
    if (mine.allowed) await mine.reservation.release();
  });

  it('a close while the store cannot take the release still closes; the retried close releases the slot', async () => {
    const { store } = clockedStore();
    let down = false;
    const flaky: ReservationStore = {
      ...store,
      release: (id) => (down ? Promise.reject(new SpawngateError('RESERVATION_FAILED', 'connection reset', { retryable: true })) : store.release(id)),
    };
    const g = await gateOn(flaky, 'group-6');
    const h = await g.spawn(capped());
    down = true;
    await h.close();
    expect(await g.list()).toEqual([]);
    expect(await store.active()).toHaveLength(1);
    // Not renewed any more: the heartbeat skips it, so it lapses at the latest one lease from now.
    await g.leases.renew();
    expect(g.leases.held().size).toBe(0);
    down = false;
    await g.close(h.spawnId);
    expect(await store.active()).toEqual([]);
  });
});
