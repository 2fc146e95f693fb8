/**
 * Test support for the Redis store: a real, private redis-server started by
 * scripts/ensure-redis.sh (idempotent; installs redis-server when missing). Nothing is skipped
 * when Redis cannot be had: the setup fails, and with it every test that needs it — in CI too.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

let pending: Promise<string> | undefined;

/** The URL of the test Redis (redis://127.0.0.1:$REDIS_PORT), started on first call. */
export function ensureRedis(): Promise<string> {
  pending ??= (async () => {
    try {
      // apt-get may have to install redis-server on a fresh machine.
      const { stdout } = await run('bash', [`${repoRoot}scripts/ensure-redis.sh`], { timeout: 600_000 });
      const url = stdout.trim().split('\n').at(-1) ?? '';
      if (!url.startsWith('redis://')) throw new Error(`ensure-redis.sh printed no URL: ${stdout}`);
      return url;
    } catch (err) {
      const e = err as Error & { stdout?: string; stderr?: string };
      throw new Error(`no Redis for the redis store tests (CI=${process.env['CI'] ?? 'unset'}): ${e.stderr || e.stdout || e.message}`, { cause: err });
    }
  })();
  return pending;
}

/** A key prefix no other test (or concurrent run) shares. */
export function uniquePrefix(label: string): string {
  return `spawngate-test:${label}:${randomUUID()}:`;
}

/** A plain connection for looking at keys behind the store's back. */
export async function rawClient(): Promise<Redis> {
  return new Redis(await ensureRedis(), { maxRetriesPerRequest: 1 });
}

/** Deletes every key under `prefix` (the test server is private, but runs should not pile up keys). */
export async function deleteKeys(client: Redis, prefix: string): Promise<number> {
  let cursor = '0';
  let deleted = 0;
  // Bounded: SCAN returns to cursor 0 after one pass over the keyspace.
  do {
    const [next, found] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    if (found.length) deleted += await client.del(...found);
  } while (cursor !== '0');
  return deleted;
}
