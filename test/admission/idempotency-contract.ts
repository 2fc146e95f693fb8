/**
 * What every IdempotencyStore must do, on a clock the test drives: run against the memory store
 * (test/sessions/idempotency.test.ts) and Redis (test/redis/idempotency.test.ts).
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { IdempotencyStore } from '../../src/admission/store/types.js';

export interface ContractSubject {
  store: IdempotencyStore;
  /** Moves the store's clock forward. */
  advance(ms: number): void;
  close(): Promise<void>;
}

export function idempotencyStoreContract(name: string, open: () => Promise<ContractSubject>): void {
  describe(`idempotency store contract: ${name}`, () => {
    const opened: ContractSubject[] = [];
    afterEach(async () => {
      for (const s of opened.splice(0)) await s.close();
    });
    const subject = async () => {
      const s = await open();
      opened.push(s);
      return s;
    };
    let n = 0;
    const fresh = () => `key-${process.pid}-${Date.now()}-${n++}`;

    it('claims a free key once; a second claim sees it pending, a different request sees a mismatch', async () => {
      const { store } = await subject();
      const key = fresh();
      expect(await store.claim(key, 'fp', 's1', 10_000)).toEqual({ state: 'claimed' });
      expect(await store.claim(key, 'fp', 's2', 10_000)).toEqual({ state: 'pending', spawnId: 's1' });
      expect(await store.claim(key, 'other', 's3', 10_000)).toEqual({ state: 'mismatch', spawnId: 's1' });
    });

    it('a completed key answers with its result until its window ends; then it is free', async () => {
      const s = await subject();
      const { store } = s;
      const advance = (ms: number) => s.advance(ms);
      const key = fresh();
      await store.claim(key, 'fp', 's1', 10_000);
      expect(await store.complete(key, 's1', '{"spawnId":"s1"}', 60_000)).toBe(true);
      advance(59_000);
      expect(await store.claim(key, 'fp', 's2', 10_000)).toEqual({ state: 'done', spawnId: 's1', result: '{"spawnId":"s1"}' });
      expect(await store.claim(key, 'other', 's2', 10_000)).toEqual({ state: 'mismatch', spawnId: 's1' });
      advance(2_000);
      expect(await store.claim(key, 'other', 's3', 10_000)).toEqual({ state: 'claimed' });
    });

    it('a pending claim lapses unless renewed (a gateway that died mid-spawn does not keep the key)', async () => {
      const s = await subject();
      const { store } = s;
      const advance = (ms: number) => s.advance(ms);
      const key = fresh();
      await store.claim(key, 'fp', 's1', 10_000);
      advance(8_000);
      expect(await store.renew(key, 's1', 10_000)).toBe(true);
      advance(8_000);
      expect(await store.claim(key, 'fp', 's2', 10_000)).toEqual({ state: 'pending', spawnId: 's1' });
      advance(3_000);
      expect(await store.claim(key, 'fp', 's2', 10_000)).toEqual({ state: 'claimed' });
      // The lapsed holder can neither renew nor complete what is now someone else's.
      expect(await store.renew(key, 's1', 10_000)).toBe(false);
      expect(await store.complete(key, 's1', '{}', 60_000)).toBe(false);
      expect(await store.claim(key, 'fp', 's3', 10_000)).toEqual({ state: 'pending', spawnId: 's2' });
    });

    it('abandon frees only the abandoning spawn\'s pending claim', async () => {
      const { store } = await subject();
      const key = fresh();
      await store.claim(key, 'fp', 's1', 10_000);
      await store.abandon(key, 'not-the-holder');
      expect(await store.claim(key, 'fp', 's2', 10_000)).toEqual({ state: 'pending', spawnId: 's1' });
      await store.abandon(key, 's1');
      expect(await store.claim(key, 'fp', 's2', 10_000)).toEqual({ state: 'claimed' });
      await store.complete(key, 's2', '{}', 60_000);
      await store.abandon(key, 's2');
      expect(await store.claim(key, 'fp', 's3', 10_000)).toMatchObject({ state: 'done', spawnId: 's2' });
    });

    it('of many concurrent claims of one key exactly one wins', async () => {
      const { store } = await subject();
      const key = fresh();
      const claims = await Promise.all(Array.from({ length: 50 }, (_, i) => store.claim(key, 'fp', `s${i}`, 10_000)));
      expect(claims.filter((c) => c.state === 'claimed')).toHaveLength(1);
      const winner = claims.findIndex((c) => c.state === 'claimed');
      for (const c of claims) if (c.state !== 'claimed') expect(c).toEqual({ state: 'pending', spawnId: `s${winner}` });
    });
  });
}
