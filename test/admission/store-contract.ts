/**
 * The reservation-store contract: every store (memory, Redis) must pass these scenarios. Called
 * from each store's test file with a factory that builds a fresh, empty store.
 */
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import type { ReservationRequest, ReservationStore, WaitQueue, WaitTicketRequest } from '../../src/admission/store/types.js';
import type { ConcurrencyLimit, RateLimit, TreeBudget } from '../../src/admission/types.js';
import type { Logger } from '../../src/log.js';
import { memoryLogger } from '../helpers/logger.js';

export interface StoreFactoryOptions {
  /** A fake clock in ms; a store must use it for buckets and history instead of its own. */
  now?: () => number;
  logger?: Logger;
}

export type StoreFactory = (options: StoreFactoryOptions) => ReservationStore | Promise<ReservationStore>;

export interface StoreContractOptions {
  /** fast-check runs of the model test; a networked store pays a round trip per step. */
  propertyRuns?: number;
}

const userCap = (user: string, max: number): ConcurrencyLimit => ({ scope: 'user', key: user, max });

export function describeStoreContract(name: string, factory: StoreFactory, contract: StoreContractOptions = {}): void {
  describe(`${name} reservation store (contract)`, () => {
    const opened: ReservationStore[] = [];
    async function open(options: StoreFactoryOptions = {}): Promise<ReservationStore> {
      const store = await factory(options);
      opened.push(store);
      return store;
    }
    afterEach(async () => {
      for (const store of opened.splice(0)) await store.close();
    });

    it('takes every slot or none: a full second cap leaves the first untouched', async () => {
      const store = await open();
      const first = await store.reserve({ spawnId: 's1', concurrency: [userCap('alice', 5), { scope: 'channel', key: 'c1', max: 1 }], rate: [] });
      expect(first.ok).toBe(true);
      const second = await store.reserve({ spawnId: 's2', concurrency: [userCap('alice', 5), { scope: 'channel', key: 'c1', max: 1 }], rate: [] });
      expect(second).toMatchObject({ ok: false, code: 'concurrency_limit_channel', scope: 'channel', key: 'c1', max: 1, active: 1 });
      const counts = await store.counts(['user/alice', 'channel/c1']);
      expect(counts.get('user/alice')).toBe(1);
      expect(counts.get('channel/c1')).toBe(1);
    });

    it('1,000 concurrent reserves against a cap of 5 admit exactly 5; released slots are reusable', async () => {
      const store = await open();
      const attempts = await Promise.all(
        Array.from({ length: 1000 }, (_, i) => store.reserve({ spawnId: `s${i}`, concurrency: [{ scope: 'profile', key: 'k8s/small', max: 5 }], rate: [] })),
      );
      const won = attempts.filter((a) => a.ok);
      expect(won).toHaveLength(5);
      expect(attempts.filter((a) => !a.ok && a.code === 'concurrency_limit_profile')).toHaveLength(995);
      for (const a of won) if (a.ok) expect(await store.release(a.record.id)).toBe(true);
      expect((await store.counts(['profile/k8s/small'])).get('profile/k8s/small')).toBe(0);
      const again = await Promise.all(
        Array.from({ length: 50 }, (_, i) => store.reserve({ spawnId: `t${i}`, concurrency: [{ scope: 'profile', key: 'k8s/small', max: 5 }], rate: [] })),
      );
      expect(again.filter((a) => a.ok)).toHaveLength(5);
    });

    it('releases exactly once; an unknown or repeated release is a logged no-op', async () => {
      const log = memoryLogger();
      const store = await open({ logger: log });
      const r = await store.reserve({ spawnId: 's', concurrency: [userCap('bob', 1)], rate: [] });
      if (!r.ok) throw new Error('expected a reservation');
      expect(await store.release(r.record.id)).toBe(true);
      expect(await store.release(r.record.id)).toBe(false);
      expect(await store.release('no-such-id')).toBe(false);
      expect(log.lines.filter((l) => l.level === 'warn' && l.msg.includes('unknown or already released'))).toHaveLength(2);
      expect((await store.counts(['user/bob'])).get('user/bob')).toBe(0);
    });

    it('a duplicated limit on one key takes one slot, not two', async () => {
      const store = await open();
      const r = await store.reserve({ spawnId: 's', concurrency: [userCap('carol', 2), userCap('carol', 3)], rate: [] });
      expect(r.ok).toBe(true);
      expect((await store.counts(['user/carol'])).get('user/carol')).toBe(1);
    });

    it('a reservation record carries its spawn id, distinct slots and meta; active() lists exactly the unreleased ones', async () => {
      const store = await open();
      const a = await store.reserve({ spawnId: 'spawn-a', concurrency: [userCap('erin', 3), userCap('erin', 2), { scope: 'total', key: '*', max: 9 }], rate: [], meta: { user: 'erin' } });
      const b = await store.reserve({ spawnId: 'spawn-b', concurrency: [userCap('erin', 3)], rate: [] });
      if (!a.ok || !b.ok) throw new Error('expected two reservations');
      expect(a.record).toMatchObject({ spawnId: 'spawn-a', slots: ['user/erin', 'total/*'], meta: { user: 'erin' } });
      expect(b.record.meta).toEqual({});
      expect(await store.release(b.record.id)).toBe(true);
      const active = await store.active();
      expect(active).toHaveLength(1);
      expect(active[0]).toEqual(a.record);
    });

    it('a lease lapses on the store clock unless renewed; its slots come back without a release', async () => {
      let t = 2_000_000;
      const store = await open({ now: () => t });
      const cap = [userCap('lease', 1)];
      const r = await store.reserve({ spawnId: 'held', holder: 'gw-1', leaseMs: 1_000, concurrency: cap, rate: [] });
      if (!r.ok) throw new Error('expected a reservation');
      expect(r.record).toMatchObject({ spawnId: 'held', holder: 'gw-1', createdAt: t, leaseExpiresAt: t + 1_000 });
      t += 999;
      expect(await store.reserve({ spawnId: 'other', holder: 'gw-2', leaseMs: 1_000, concurrency: cap, rate: [] })).toMatchObject({ ok: false, active: 1 });
      t += 1;
      // Nobody released it: the holder stopped renewing (crashed, hung, cut off).
      expect((await store.counts(['user/lease'])).get('user/lease')).toBe(0);
      expect(await store.active()).toEqual([]);
      expect(await store.renew([r.record.id], 1_000)).toEqual(new Set());
      expect(await store.release(r.record.id)).toBe(false);
      expect((await store.reserve({ spawnId: 'other', holder: 'gw-2', leaseMs: 1_000, concurrency: cap, rate: [] })).ok).toBe(true);
    });

    it('renew extends held leases from now and answers only the ids still held', async () => {
      let t = 3_000_000;
      const store = await open({ now: () => t });
      const a = await store.reserve({ spawnId: 'a', holder: 'gw', leaseMs: 1_000, concurrency: [userCap('renew', 5)], rate: [] });
      const b = await store.reserve({ spawnId: 'b', holder: 'gw', leaseMs: 1_000, concurrency: [userCap('renew', 5)], rate: [] });
      if (!a.ok || !b.ok) throw new Error('expected two reservations');
      expect(await store.release(b.record.id)).toBe(true);
      t += 800;
      expect(await store.renew([a.record.id, b.record.id, 'never-existed'], 1_000)).toEqual(new Set([a.record.id]));
      t += 900; // 1,700 ms after the reserve, 900 ms after the renewal
      expect((await store.counts(['user/renew'])).get('user/renew')).toBe(1);
      expect((await store.active()).map((x) => [x.id, x.leaseExpiresAt])).toEqual([[a.record.id, t - 900 + 1_000]]);
      t += 100;
      expect((await store.counts(['user/renew'])).get('user/renew')).toBe(0);
      expect(await store.renew([a.record.id], 1_000)).toEqual(new Set());
    });

    it('a reservation without a lease is held until released, whatever the clock says', async () => {
      let t = 4_000_000;
      const store = await open({ now: () => t });
      const r = await store.reserve({ spawnId: 'forever', concurrency: [userCap('nolease', 1)], rate: [] });
      if (!r.ok) throw new Error('expected a reservation');
      expect(r.record.leaseExpiresAt).toBeNull();
      t += 86_400_000;
      expect((await store.counts(['user/nolease'])).get('user/nolease')).toBe(1);
      expect(await store.release(r.record.id)).toBe(true);
    });

    it('token bucket: burst, then one token per 60/perMinute seconds, with retryAfter', async () => {
      let t = 1_000_000;
      const store = await open({ now: () => t });
      const rate: RateLimit[] = [{ scope: 'channel', key: 'cron:nightly', perMinute: 6, burst: 2 }];
      expect((await store.reserve({ spawnId: 'a', concurrency: [], rate })).ok).toBe(true);
      expect((await store.reserve({ spawnId: 'b', concurrency: [], rate })).ok).toBe(true);
      const third = await store.reserve({ spawnId: 'c', concurrency: [], rate });
      expect(third).toMatchObject({ ok: false, code: 'rate_limit_channel', retryAfterMs: 10_000 });
      expect(await store.check({ concurrency: [], rate })).toMatchObject({ ok: false });
      t += 10_000;
      expect(await store.check({ concurrency: [], rate })).toEqual({ ok: true });
      expect((await store.reserve({ spawnId: 'd', concurrency: [], rate })).ok).toBe(true);
      expect((await store.reserve({ spawnId: 'e', concurrency: [], rate })).ok).toBe(false);
      // Releasing a reservation returns its slots, never its rate tokens.
      const list = await store.active();
      for (const rec of list) await store.release(rec.id);
      expect((await store.reserve({ spawnId: 'f', concurrency: [], rate })).ok).toBe(false);
    });

    it('check() is a dry run: it reports the same rejection and takes nothing', async () => {
      const store = await open({ now: () => 5_000 });
      const rate: RateLimit[] = [{ scope: 'user', key: 'dry', perMinute: 60, burst: 1 }];
      for (let i = 0; i < 3; i++) expect(await store.check({ concurrency: [userCap('dry', 1)], rate })).toEqual({ ok: true });
      expect((await store.counts(['user/dry'])).get('user/dry')).toBe(0);
      expect(await store.active()).toHaveLength(0);
      expect((await store.reserve({ spawnId: 'a', concurrency: [userCap('dry', 1)], rate })).ok).toBe(true);
      expect(await store.check({ concurrency: [userCap('dry', 1)], rate })).toMatchObject({ ok: false, code: 'concurrency_limit_user', active: 1 });
      expect(await store.check({ concurrency: [], rate })).toMatchObject({ ok: false, code: 'rate_limit_user', retryAfterMs: 1000 });
      expect((await store.recent(['user/dry'], 60_000)).get('user/dry')).toBe(1);
    });

    it('a rejected rate check takes no concurrency slot', async () => {
      const store = await open();
      const rate: RateLimit[] = [{ scope: 'user', key: 'u', perMinute: 1, burst: 1 }];
      expect((await store.reserve({ spawnId: 'a', concurrency: [userCap('u', 10)], rate })).ok).toBe(true);
      expect((await store.reserve({ spawnId: 'b', concurrency: [userCap('u', 10)], rate })).ok).toBe(false);
      expect((await store.counts(['user/u'])).get('user/u')).toBe(1);
    });

    it('recent() counts reservations inside the window', async () => {
      let t = 0;
      const store = await open({ now: () => t });
      await store.reserve({ spawnId: 'a', concurrency: [userCap('d', 9)], rate: [] });
      t = 30_000;
      await store.reserve({ spawnId: 'b', concurrency: [userCap('d', 9)], rate: [] });
      t = 70_000;
      expect((await store.recent(['user/d'], 60_000)).get('user/d')).toBe(1);
    });

    // Model-based: an arbitrary interleaving of reserves and releases (incl. repeats) never exceeds a cap,
    // counts always equal the live reservations holding each key, and each reservation frees exactly once.
    describe('spawn-tree budgets', () => {
      const budget = (over: Partial<TreeBudget> = {}): TreeBudget => ({ root: 'agent:main:main', maxSpawns: null, maxWorkerSeconds: null, windowSeconds: 3600, ...over });
      const inTree = (spawnId: string, tree: TreeBudget, chargeSeconds = 60, extra: Partial<ReservationRequest> = {}): ReservationRequest => ({
        spawnId,
        concurrency: [],
        rate: [],
        tree: { budget: tree, chargeMs: chargeSeconds * 1000 },
        ...extra,
      });

      it('counts every spawn of a tree over its life: releases give no spawn back; other trees are apart', async () => {
        const store = await open({ now: () => 5_000_000 });
        const tree = budget({ maxSpawns: 3 });
        for (let i = 1; i <= 3; i++) {
          const r = await store.reserve(inTree(`s${i}`, tree));
          expect(r).toMatchObject({ ok: true, record: { tree: { root: 'agent:main:main', spawns: i, workerSeconds: 60 } } });
          if (r.ok) await store.release(r.record.id);
        }
        const spent = { ok: false, kind: 'tree', code: 'tree_spawns_exhausted', root: 'agent:main:main', max: 3, used: 3, needed: 1 };
        expect(await store.check({ concurrency: [], rate: [], tree: { budget: tree, chargeMs: 1000 } })).toEqual(spent);
        expect(await store.reserve(inTree('s4', tree))).toEqual(spent);
        expect((await store.reserve(inTree('other', budget({ root: 'agent:main:cron:x', maxSpawns: 3 })))).ok).toBe(true);
      });

      it('charges each spawn its TTL up front and refunds what it did not run when released', async () => {
        let t = 6_000_000;
        const store = await open({ now: () => t });
        const tree = budget({ maxWorkerSeconds: 100 });
        const first = await store.reserve(inTree('a', tree, 60));
        if (!first.ok) throw new Error('expected a reservation');
        expect(first.record.tree).toEqual({ root: 'agent:main:main', spawns: 1, workerSeconds: 60 });
        expect(await store.reserve(inTree('b', tree, 60))).toEqual({
          ok: false, kind: 'tree', code: 'tree_worker_seconds_exhausted', root: 'agent:main:main', max: 100, used: 60, needed: 60,
        });
        t += 10_000;
        expect(await store.release(first.record.id)).toBe(true);
        // 'a' ran 10 s: the tree has 90 s left, enough for b's 60 and then exactly 30 more.
        expect(await store.reserve(inTree('b', tree, 60))).toMatchObject({ ok: true, record: { tree: { spawns: 2, workerSeconds: 70 } } });
        expect(await store.reserve(inTree('c', tree, 30))).toMatchObject({ ok: true, record: { tree: { spawns: 3, workerSeconds: 100 } } });
        expect(await store.reserve(inTree('d', tree, 1))).toMatchObject({ ok: false, code: 'tree_worker_seconds_exhausted', used: 100, needed: 1 });
      });

      it('a lapsed lease refunds like a release: the tree keeps only what ran until the lease lapsed', async () => {
        let t = 7_000_000;
        const store = await open({ now: () => t });
        const tree = budget({ maxWorkerSeconds: 60 });
        expect((await store.reserve(inTree('held', tree, 60, { holder: 'gw-1', leaseMs: 1_000 }))).ok).toBe(true);
        expect((await store.check({ concurrency: [], rate: [], tree: { budget: tree, chargeMs: 59_000 } })).ok).toBe(false);
        t += 1_000;
        expect(await store.reserve(inTree('next', tree, 59))).toMatchObject({ ok: true, record: { tree: { spawns: 2, workerSeconds: 60 } } });
      });

      it('forgets a tree once it has been idle for its window past the end of its last TTL', async () => {
        let t = 8_000_000;
        const store = await open({ now: () => t });
        const tree = budget({ maxSpawns: 1, windowSeconds: 10 });
        const r = await store.reserve(inTree('once', tree, 5));
        if (!r.ok) throw new Error('expected a reservation');
        t += 1_000;
        await store.release(r.record.id);
        t += 13_999; // 5 s TTL + 10 s window after it was admitted, less 1 ms
        expect(await store.reserve(inTree('again', tree, 5))).toMatchObject({ ok: false, code: 'tree_spawns_exhausted' });
        t += 1;
        expect(await store.reserve(inTree('again', tree, 5))).toMatchObject({ ok: true, record: { tree: { spawns: 1 } } });
      });

      it('takes the tree and the caps together or not at all, atomically under 300 concurrent reserves', async () => {
        const store = await open();
        const tree = budget({ maxSpawns: 7 });
        const attempts = await Promise.all(
          Array.from({ length: 300 }, (_, i) => store.reserve(inTree(`r${i}`, tree, 60, { concurrency: [{ scope: 'parent', key: 'agent:main:main', max: 1_000 }] }))),
        );
        expect(attempts.filter((a) => a.ok)).toHaveLength(7);
        expect(attempts.filter((a) => !a.ok && a.code === 'tree_spawns_exhausted')).toHaveLength(293);
        // The 293 refusals took no fan-out slot.
        expect((await store.counts(['parent/agent:main:main'])).get('parent/agent:main:main')).toBe(7);
        // A full cap refuses before the tree is charged: its spawn count does not move.
        const capped = await store.reserve(inTree('x', budget({ root: 'agent:b:main', maxSpawns: 1 }), 60, { concurrency: [userCap('full', 0)] }));
        expect(capped).toMatchObject({ ok: false, code: 'concurrency_limit_user' });
        expect((await store.reserve(inTree('y', budget({ root: 'agent:b:main', maxSpawns: 1 })))).ok).toBe(true);
      });
    });

    describe('wait queue', () => {
      const profileCap: ConcurrencyLimit = { scope: 'profile', key: 'q/p', max: 1 };
      const ticket = (user: string, extra: Partial<WaitTicketRequest> = {}): WaitTicketRequest => ({ priority: 0, user, concurrency: [profileCap], leaseMs: 10_000, maxWaiting: 100, maxWaitingPerUser: 100, ...extra });
      const joined = async (queue: WaitQueue, request: WaitTicketRequest): Promise<{ id: string; position: number }> => {
        const outcome = await queue.join(request);
        if ('full' in outcome) throw new Error(`the ${outcome.full} is full`);
        return outcome;
      };
      const queueOf = (store: ReservationStore): WaitQueue => {
        if (!store.queue) throw new Error(`the ${store.kind} store has no wait queue`);
        return store.queue;
      };

      it('a freed slot goes to the waiter queued for it: a later request cannot take it, the waiter can, once', async () => {
        const store = await open({ now: () => 9_000_000 });
        const queue = queueOf(store);
        const holder = await store.reserve({ spawnId: 'holder', concurrency: [profileCap], rate: [] });
        if (!holder.ok) throw new Error('expected a reservation');
        const waiter = await joined(queue, ticket('u1', { meta: { spawnId: 'w1' } }));
        expect(waiter.position).toBe(1);
        expect(typeof waiter.id).toBe('string');
        await store.release(holder.record.id);
        // The slot is free, and held for the waiter: a newcomer (or a dry run) is refused, naming the queue.
        const barging = { spawnId: 'late', concurrency: [profileCap], rate: [] };
        expect(await store.check(barging)).toMatchObject({ ok: false, code: 'concurrency_limit_profile', active: 0, waitingAhead: 1 });
        expect(await store.reserve(barging)).toMatchObject({ ok: false, code: 'concurrency_limit_profile', waitingAhead: 1 });
        const served = await store.reserve({ spawnId: 'w1', concurrency: [profileCap], rate: [], ticket: waiter.id });
        expect(served.ok).toBe(true);
        // Served, the ticket is gone: no waiter is left behind.
        expect(await queue.list()).toEqual([]);
        expect(await queue.touch([waiter.id], 10_000)).toEqual(new Map([[waiter.id, null]]));
      });

      it('orders waiters by priority, then by turns across users, then by arrival', async () => {
        const store = await open({ now: () => 9_100_000 });
        const queue = queueOf(store);
        for (const user of ['a', 'a', 'a', 'b', 'c']) await joined(queue, ticket(user, { meta: { who: user } }));
        const urgent = await joined(queue, ticket('d', { priority: 10, meta: { who: 'd' } }));
        expect(urgent.position).toBe(1);
        const listed = await queue.list();
        expect(listed.map((w) => w.meta['who'])).toEqual(['d', 'a', 'b', 'c', 'a', 'a']);
        expect(listed.map((w) => w.position)).toEqual([1, 2, 3, 4, 5, 6]);
        expect(listed[0]).toMatchObject({ priority: 10, user: 'd', since: 9_100_000 });
      });

      it('a waiter that cannot use the slot (another of its caps is full) does not hold it for others', async () => {
        const store = await open({ now: () => 9_200_000 });
        const queue = queueOf(store);
        const busyUser = userCap('busy', 1);
        const own = await store.reserve({ spawnId: 'busy-1', concurrency: [busyUser], rate: [] });
        expect(own.ok).toBe(true);
        const blocked = await joined(queue, ticket('busy', { concurrency: [profileCap, busyUser] }));
        const next = await joined(queue, ticket('free'));
        expect(blocked.position).toBe(1);
        // The head waits on its own user cap as well: the profile slot goes to the next waiter.
        expect((await store.reserve({ spawnId: 'free-1', concurrency: [profileCap], rate: [], ticket: next.id })).ok).toBe(true);
      });

      it('a ticket lapses unless touched; touch answers positions; leave ends a wait without a trace', async () => {
        let t = 9_300_000;
        const store = await open({ now: () => t });
        const queue = queueOf(store);
        const first = await joined(queue, ticket('x', { leaseMs: 1_000 }));
        const second = await joined(queue, ticket('y', { leaseMs: 1_000 }));
        t += 900;
        expect(await queue.touch([second.id], 1_000)).toEqual(new Map([[second.id, 2]]));
        t += 100; // the first lapses; the second was touched
        expect(await queue.touch([first.id, second.id], 1_000)).toEqual(new Map([[first.id, null], [second.id, 1]]));
        expect(await queue.leave(second.id)).toBe(true);
        expect(await queue.leave(second.id)).toBe(false);
        expect(await queue.list()).toEqual([]);
        expect((await store.reserve({ spawnId: 'after', concurrency: [profileCap], rate: [] })).ok).toBe(true);
      });

      it("refuses a join past maxWaiting, and past a user's share of it", async () => {
        const store = await open({ now: () => 9_400_000 });
        const queue = queueOf(store);
        const limits = { maxWaiting: 3, maxWaitingPerUser: 2 };
        expect(await queue.join(ticket('a', limits))).toMatchObject({ position: 1 });
        expect(await queue.join(ticket('a', limits))).toMatchObject({ position: 2 });
        expect(await queue.join(ticket('a', limits))).toEqual({ full: 'user' });
        expect(await queue.join(ticket('b', limits))).toMatchObject({ position: 2 }); // its turn comes before alice's second
        expect(await queue.join(ticket('c', limits))).toEqual({ full: 'queue' });
      });
    });

    it('property: never over a cap, never a double release', async () => {
      const keys = ['user/a', 'user/b', 'channel/x', 'profile/p/q'] as const;
      const op = fc.oneof(
        fc.record({
          kind: fc.constant('reserve' as const),
          limits: fc.uniqueArray(fc.record({ idx: fc.integer({ min: 0, max: 3 }), max: fc.integer({ min: 0, max: 3 }) }), { selector: (l) => l.idx, maxLength: 4 }),
        }),
        fc.record({ kind: fc.constant('release' as const), pick: fc.nat() }),
      );
      await fc.assert(
        fc.asyncProperty(fc.array(op, { maxLength: 60 }), async (ops) => {
          const store = await factory({});
          try {
            const live = new Map<string, string[]>();
            const released = new Set<string>();
            const ids: string[] = [];
            for (const o of ops) {
              if (o.kind === 'reserve') {
                const concurrency = o.limits.map((l) => {
                  const [scope, ...rest] = keys[l.idx]!.split('/');
                  return { scope: scope as ConcurrencyLimit['scope'], key: rest.join('/'), max: l.max };
                });
                const before = await store.counts([...keys]);
                const res = await store.reserve({ spawnId: 'p', concurrency, rate: [] });
                const shouldFit = concurrency.every((c) => (before.get(`${c.scope}/${c.key}`) ?? 0) < c.max);
                expect(res.ok).toBe(shouldFit);
                if (res.ok) {
                  live.set(res.record.id, [...res.record.slots]);
                  ids.push(res.record.id);
                }
              } else if (ids.length) {
                const id = ids[o.pick % ids.length]!;
                const freed = await store.release(id);
                expect(freed).toBe(!released.has(id));
                released.add(id);
                live.delete(id);
              }
              const counts = await store.counts([...keys]);
              for (const k of keys) {
                const expected = [...live.values()].filter((slots) => slots.includes(k)).length;
                expect(counts.get(k)).toBe(expected);
              }
            }
            for (const c of await store.active()) expect(live.has(c.id)).toBe(true);
          } finally {
            await store.close();
          }
        }),
        { numRuns: contract.propertyRuns ?? 300 },
      );
    });
  });
}
