import type { ChildProcess } from 'node:child_process';
import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createStoreFromConfig } from '../../src/admission/store/index.js';
import type { RedisClient, RedisStoreOptions } from '../../src/admission/store/redis.js';
import { createRedisStore, loadIoredis, redisKeys } from '../../src/admission/store/redis.js';
import type { ReservationStore } from '../../src/admission/store/types.js';
import type { RateLimit } from '../../src/admission/types.js';
import { ConfigError, SpawngateError } from '../../src/errors.js';
import { memoryLogger } from '../helpers/logger.js';
import { deleteKeys, ensureRedis, rawClient, uniquePrefix } from './server.js';

const runPrefix = uniquePrefix('redis-store');
let url = '';
let raw: Redis;
const opened: ReservationStore[] = [];

beforeAll(async () => {
  url = await ensureRedis();
  raw = await rawClient();
});

afterEach(async () => {
  for (const store of opened.splice(0)) await store.close();
});

afterAll(async () => {
  try {
    await deleteKeys(raw, runPrefix);
  } finally {
    await raw.quit();
  }
});

/** A store over its own prefix; `gateway` stores sharing a prefix stand for gateways sharing Redis. */
async function store(prefix: string, extra: Partial<RedisStoreOptions> = {}): Promise<ReservationStore> {
  const s = await createRedisStore({ url, keyPrefix: prefix, ...extra });
  opened.push(s);
  return s;
}
const freshPrefix = () => `${runPrefix}${randomUUID()}:`;

/** A loopback port nothing listens on: bound once by the OS, then released. */
async function deadPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (!address || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** A throwaway redis-server of this test's own, so it can be killed and restarted. */
function startServer(port: number): ChildProcess {
  return spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no', '--dir', tmpdir()], { stdio: 'ignore' });
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

/** Retries `probe` until it resolves: at most 200 tries, 100 ms apart. */
async function eventually<T>(probe: () => Promise<T>): Promise<T> {
  let last: unknown;
  for (let attempt = 0; attempt < 200; attempt++) {
    try {
      return await probe();
    } catch (err) {
      last = err;
      await sleep(100);
    }
  }
  throw new Error('gave up waiting', { cause: last });
}

describe('redis reservation store: several gateways, one Redis', () => {
  it('1,000 concurrent reserves from two gateways (two connections) against a cap of 5 admit exactly 5', async () => {
    const prefix = freshPrefix();
    const [a, b] = [await store(prefix), await store(prefix)];
    const cap = [{ scope: 'profile' as const, key: 'k8s/small', max: 5 }];
    const attempts = await Promise.all(Array.from({ length: 1000 }, (_, i) => (i % 2 ? a : b).reserve({ spawnId: `s${i}`, concurrency: cap, rate: [] })));
    const won = attempts.flatMap((r) => (r.ok ? [r.record] : []));
    expect(won).toHaveLength(5);
    expect(attempts.filter((r) => !r.ok && r.code === 'concurrency_limit_profile' && r.active === 5)).toHaveLength(995);
    expect((await a.counts(['profile/k8s/small'])).get('profile/k8s/small')).toBe(5);
    expect((await b.counts(['profile/k8s/small'])).get('profile/k8s/small')).toBe(5);
    expect((await b.active()).map((r) => r.id).sort()).toEqual(won.map((r) => r.id).sort());

    // A reservation taken through one gateway is released through the other, and only once.
    const [first, ...rest] = won;
    expect(await b.release(first!.id)).toBe(true);
    expect(await a.release(first!.id)).toBe(false);
    for (const r of rest) expect(await a.release(r.id)).toBe(true);
    expect((await b.counts(['profile/k8s/small'])).get('profile/k8s/small')).toBe(0);
    // A counter back at zero is deleted, not left behind as "0".
    expect(await raw.exists(redisKeys(prefix).counter('profile/k8s/small'))).toBe(0);
  });

  it('on the Redis clock (no `now`): buckets refill on server time, bucket keys expire, reservation records do not', async () => {
    const prefix = freshPrefix();
    const s = await store(prefix);
    const rate: RateLimit[] = [{ scope: 'user', key: 'clock', perMinute: 2, burst: 2 }];
    const first = await s.reserve({ spawnId: 'a', concurrency: [{ scope: 'user', key: 'clock', max: 9 }], rate });
    expect((await s.reserve({ spawnId: 'b', concurrency: [], rate })).ok).toBe(true);
    const third = await s.reserve({ spawnId: 'c', concurrency: [], rate });
    expect(third).toMatchObject({ ok: false, code: 'rate_limit_user', key: 'clock', perMinute: 2, burst: 2 });
    if (third.ok || third.kind !== 'rate') throw new Error('expected a rate rejection');
    // Empty bucket at 2/min: the next token is at most 30 s away on the server's clock.
    expect(third.retryAfterMs).toBeGreaterThan(0);
    expect(third.retryAfterMs).toBeLessThanOrEqual(30_000);
    if (!first.ok) throw new Error('expected a reservation');
    const serverNow = Number((await raw.time())[0]) * 1000;
    expect(Math.abs(first.record.createdAt - serverNow)).toBeLessThan(60_000);

    const keys = redisKeys(prefix);
    const bucketTtl = await raw.pttl(keys.bucket('user/clock'));
    expect(bucketTtl).toBeGreaterThan(0);
    // Refilling two tokens at 2/min takes 60 s; the key lives about that long, then "missing" means "full".
    expect(bucketTtl).toBeLessThanOrEqual(61_000);
    expect(await raw.pttl(keys.record(first.record.id))).toBe(-1);
    expect(await raw.pttl(keys.counter('user/clock'))).toBe(-1);
    expect(await raw.pttl(keys.history('user/clock'))).toBeGreaterThan(0);
    expect((await s.recent(['user/clock', 'user/nobody'], 60_000))).toEqual(new Map([['user/clock', 2], ['user/nobody', 0]]));
  });

  it('check() writes nothing to Redis', async () => {
    const prefix = freshPrefix();
    const s = await store(prefix);
    const request = { concurrency: [{ scope: 'user' as const, key: 'dry', max: 1 }], rate: [{ scope: 'user' as const, key: 'dry', perMinute: 1, burst: 1 }] };
    expect(await s.check(request)).toEqual({ ok: true });
    expect(await raw.keys(`${prefix}*`)).toEqual([]);
  });

  it('a crashed gateway\'s reservations stay until released: another gateway finds them with active() and frees them', async () => {
    const prefix = freshPrefix();
    const crashed = await createRedisStore({ url, keyPrefix: prefix });
    const taken = await crashed.reserve({ spawnId: 'orphan-1', concurrency: [{ scope: 'user', key: 'zed', max: 1 }], rate: [], meta: { user: 'zed', backend: 'k8s' } });
    if (!taken.ok) throw new Error('expected a reservation');
    await crashed.close();

    const survivor = await store(prefix);
    const found = await survivor.active();
    expect(found).toEqual([taken.record]);
    expect(await survivor.reserve({ spawnId: 'x', concurrency: [{ scope: 'user', key: 'zed', max: 1 }], rate: [] })).toMatchObject({ ok: false, active: 1 });
    expect(await survivor.release(found[0]!.id)).toBe(true);
    expect(await survivor.active()).toEqual([]);
    expect((await survivor.reserve({ spawnId: 'y', concurrency: [{ scope: 'user', key: 'zed', max: 1 }], rate: [] })).ok).toBe(true);
  });

  it('leases: every key a leased reservation touches has a TTL, and a lapsed lease is freed on Redis\' own clock', async () => {
    const prefix = freshPrefix();
    // No `now` option: the scripts read Redis TIME, as in production.
    const s = await store(prefix);
    const cap = [{ scope: 'user' as const, key: 'ttl', max: 1 }];
    const rate: RateLimit[] = [{ scope: 'user', key: 'ttl', perMinute: 60, burst: 5 }];
    const r = await s.reserve({ spawnId: 'leased', holder: 'gw-a', leaseMs: 400, concurrency: cap, rate, meta: { user: 'ttl' } });
    if (!r.ok) throw new Error('expected a reservation');
    const keys = await raw.keys(`${prefix}*`);
    expect(keys.length).toBeGreaterThanOrEqual(5); // index, record, counter, bucket, history
    const withoutTtl: string[] = [];
    for (const key of keys) if ((await raw.pttl(key)) <= 0) withoutTtl.push(key);
    expect(withoutTtl).toEqual([]);
    expect(await s.renew([r.record.id], 400)).toEqual(new Set([r.record.id]));
    // Bounded wait for the server's clock to pass the lease: nothing renews it any more.
    let freed = false;
    for (let i = 0; i < 100 && !freed; i++) {
      freed = (await s.counts(['user/ttl'])).get('user/ttl') === 0;
      if (!freed) await sleep(50);
    }
    expect(freed).toBe(true);
    expect(await s.active()).toEqual([]);
    expect(await raw.exists(redisKeys(prefix).record(r.record.id))).toBe(0);
    expect((await s.reserve({ spawnId: 'next', holder: 'gw-b', leaseMs: 400, concurrency: cap, rate: [] })).ok).toBe(true);
  });

  it('a renewal from another store object (another replica) keeps a lease alive; release stays exactly once across them', async () => {
    let t = 9_000_000;
    const prefix = freshPrefix();
    const a = await store(prefix, { now: () => t });
    const b = await store(prefix, { now: () => t });
    const r = await a.reserve({ spawnId: 's', holder: 'gw-a', leaseMs: 1_000, concurrency: [{ scope: 'total', key: '*', max: 1 }], rate: [] });
    if (!r.ok) throw new Error('expected a reservation');
    t += 900;
    expect(await b.renew([r.record.id], 1_000)).toEqual(new Set([r.record.id]));
    t += 900;
    expect((await a.active()).map((x) => x.holder)).toEqual(['gw-a']);
    expect(await b.release(r.record.id)).toBe(true);
    expect(await a.release(r.record.id)).toBe(false);
    expect((await a.counts(['total/*'])).get('total/*')).toBe(0);
  });

  it('survives an emptied script cache (Redis restart, SCRIPT FLUSH): EVALSHA falls back to EVAL', async () => {
    const s = await store(freshPrefix());
    const cap = [{ scope: 'channel' as const, key: 'c', max: 2 }];
    const a = await s.reserve({ spawnId: 'a', concurrency: cap, rate: [] });
    await raw.script('FLUSH');
    const b = await s.reserve({ spawnId: 'b', concurrency: cap, rate: [] });
    expect(b.ok).toBe(true);
    await raw.script('FLUSH');
    if (!a.ok) throw new Error('expected a reservation');
    expect(await s.release(a.record.id)).toBe(true);
    await raw.script('FLUSH');
    expect((await s.recent(['channel/c'], 60_000)).get('channel/c')).toBe(2);
  });

  it('a client passed in is used and left open by close()', async () => {
    const client = await rawClient();
    try {
      const viaClient: RedisClient = client;
      const prefix = freshPrefix();
      const s = await createRedisStore({ client: viaClient, keyPrefix: prefix });
      expect((await s.reserve({ spawnId: 'a', concurrency: [{ scope: 'total', key: '*', max: 1 }], rate: [] })).ok).toBe(true);
      await s.close();
      expect(await client.get(redisKeys(prefix).counter('total/*'))).toBe('1');
    } finally {
      await client.quit();
    }
  });
});

describe('redis reservation store: failures are retryable errors, never an allow', () => {
  it('Redis down: reserve, check, release, counts, recent and active reject with a retryable RESERVATION_FAILED', async () => {
    const log = memoryLogger();
    const s = await store(freshPrefix(), { url: `redis://127.0.0.1:${await deadPort()}`, logger: log });
    const request = { spawnId: 's', concurrency: [{ scope: 'user' as const, key: 'u', max: 5 }], rate: [] };
    const calls: Array<[string, () => Promise<unknown>]> = [
      ['reserve', () => s.reserve(request)],
      ['check', () => s.check(request)],
      ['release', () => s.release('r')],
      ['counts', () => s.counts(['user/u'])],
      ['recent', () => s.recent(['user/u'], 60_000)],
      ['active', () => s.active()],
    ];
    for (const [operation, call] of calls) {
      const err = await call().then(
        (value) => ({ unexpectedValue: value }),
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(SpawngateError);
      expect(err).toMatchObject({ code: 'RESERVATION_FAILED', retryable: true, details: { store: 'redis', operation } });
      expect((err as Error).cause).toBeInstanceOf(Error);
    }
    // One outage, one warning — not one per reconnect attempt.
    expect(log.lines.filter((l) => l.level === 'warn' && l.msg.includes('connection failed'))).toHaveLength(1);
  });

  it('an event-loop stall past the command timeout does not fail a call whose answer arrived in time (the reserve holds its slot, once)', async () => {
    const prefix = freshPrefix();
    const s = await store(prefix, { commandTimeoutMs: 200 });
    // Connected, and the reserve script cached: the reserve below is one command, sent at once.
    const warm = await s.reserve({ spawnId: 'warm', concurrency: [{ scope: 'user', key: 'u', max: 1 }], rate: [] });
    if (!warm.ok) throw new Error('warm-up reserve refused');
    await s.release(warm.record.id);
    const pending = s.reserve({ spawnId: 'stalled', concurrency: [{ scope: 'user', key: 'u', max: 1 }], rate: [] });
    // Block this thread (as a gateway does while loading plugins) until Redis has run the reserve —
    // its reply is then in this process' socket — and past the timeout. Bounded: 200 polls.
    const keys = redisKeys(prefix);
    const blockedAt = Date.now();
    let landed = false;
    for (let i = 0; i < 200 && !landed; i += 1) {
      landed = execFileSync('redis-cli', ['-u', url, 'ZCARD', keys.index], { encoding: 'utf8' }).trim() === '1';
    }
    expect(landed).toBe(true);
    while (Date.now() - blockedAt < 600) {
      execFileSync('redis-cli', ['-u', url, 'PING']);
    }
    const outcome = await pending;
    expect(outcome.ok).toBe(true);
    expect(await s.counts(['user/u'])).toEqual(new Map([['user/u', 1]]));
    expect(await s.active()).toHaveLength(1);
  });

  it('recovers when Redis comes back: retryable failures while it is down, reservations again after', async () => {
    const port = await deadPort();
    let server = startServer(port);
    try {
      const s = await store(freshPrefix(), { url: `redis://127.0.0.1:${port}` });
      const request = { spawnId: 's', concurrency: [{ scope: 'user' as const, key: 'phoenix', max: 1 }], rate: [] };
      await eventually(() => s.counts(['user/phoenix']));
      expect((await s.reserve(request)).ok).toBe(true);

      await stopServer(server);
      expect(await s.reserve(request).catch((e: unknown) => e)).toMatchObject({ code: 'RESERVATION_FAILED', retryable: true });

      server = startServer(port);
      const counts = await eventually(() => s.counts(['user/phoenix']));
      // This server keeps nothing across restarts, so the earlier slot is gone with it (docs/stores.md).
      expect(counts.get('user/phoenix')).toBe(0);
      expect((await s.reserve(request)).ok).toBe(true);
      expect(await s.reserve(request)).toMatchObject({ ok: false, code: 'concurrency_limit_user' });
    } finally {
      await stopServer(server);
    }
  });

  it('a missing ioredis fails with DEPENDENCY_MISSING, "install ioredis", and the import error as cause', async () => {
    const err = await loadIoredis(() => import(`spawngate-no-such-module-${randomUUID()}`)).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'DEPENDENCY_MISSING' });
    expect((err as Error).message).toContain('install ioredis');
    expect((err as Error).cause).toBeInstanceOf(Error);
  });

  it('loads the installed ioredis', async () => {
    const mod = await loadIoredis();
    expect(typeof mod.Redis).toBe('function');
  });
});

describe('createStoreFromConfig', () => {
  it('gives the memory store when spawngate.store is absent or memory', async () => {
    for (const config of [{}, { spawngate: {} }, { spawngate: { store: { type: 'memory' as const } } }]) {
      const s = await createStoreFromConfig(config, memoryLogger());
      opened.push(s);
      expect(s.kind).toBe('memory');
    }
  });

  it('a passwordEnv naming an unset variable is a config error at that path', async () => {
    const err = await createStoreFromConfig({ spawngate: { store: { type: 'redis', url, passwordEnv: 'SPAWNGATE_TEST_UNSET' } } }, memoryLogger(), {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    const issues = (err as ConfigError).issues;
    expect(issues.map((i) => i.path)).toEqual(['spawngate.store.passwordEnv']);
    expect(issues[0]?.message).toContain('SPAWNGATE_TEST_UNSET');
  });

  it('authenticates with the password from the environment variable named by passwordEnv (ACL user in the URL)', async () => {
    const user = `spawngate-test-${randomUUID()}`;
    const password = randomUUID();
    const prefix = freshPrefix();
    await raw.call('ACL', 'SETUSER', user, 'on', `>${password}`, `~${prefix}*`, '+@all');
    try {
      const withUser = url.replace('redis://', `redis://${user}@`);
      const good = await createStoreFromConfig({ spawngate: { store: { type: 'redis', url: withUser, passwordEnv: 'SG_REDIS_PW' } } }, memoryLogger(), { SG_REDIS_PW: password });
      opened.push(good);
      expect(good.kind).toBe('redis');
      // The ACL only allows keys under this prefix, so success also proves these were the credentials used;
      // the default prefix is outside it and must be refused.
      const denied = await good.reserve({ spawnId: 's', concurrency: [{ scope: 'user', key: 'acl', max: 1 }], rate: [] }).catch((e: unknown) => e);
      expect(denied).toMatchObject({ code: 'RESERVATION_FAILED' });
      expect(String((denied as Error).cause)).toContain('NOPERM');
      const scoped = await createStoreFromConfig(
        { spawngate: { store: { type: 'redis', url: withUser, passwordEnv: 'SG_REDIS_PW', keyPrefix: prefix } } },
        memoryLogger(),
        { SG_REDIS_PW: password },
      );
      opened.push(scoped);
      expect((await scoped.reserve({ spawnId: 's', concurrency: [{ scope: 'user', key: 'acl', max: 1 }], rate: [] })).ok).toBe(true);

      const wrong = await createStoreFromConfig({ spawngate: { store: { type: 'redis', url: withUser, passwordEnv: 'SG_REDIS_PW' } } }, memoryLogger(), { SG_REDIS_PW: 'not-the-password' });
      opened.push(wrong);
      expect(await wrong.counts(['user/acl']).catch((e: unknown) => e)).toMatchObject({ code: 'RESERVATION_FAILED', retryable: true });
    } finally {
      await raw.call('ACL', 'DELUSER', user);
    }
  });
});
