import type { SpawngateConfig } from '../../config/index.js';
import { ConfigError } from '../../errors.js';
import type { Logger } from '../../log.js';
import { createMemoryStore } from './memory.js';
import { createRedisStore } from './redis.js';
import type { ReservationStore } from './types.js';

export { createMemoryStore, type MemoryStoreOptions } from './memory.js';
export { createRedisStore, type RedisClient, type RedisStoreOptions } from './redis.js';
export type * from './types.js';
export { slotKey } from './types.js';

/**
 * The store `spawngate.store` names: memory when absent. A Redis password comes only from the
 * environment variable named by `passwordEnv`; naming one that is unset is a config error rather
 * than a silent unauthenticated connection. ioredis is imported only for `type: redis`.
 */
export async function createStoreFromConfig(
  config: Pick<SpawngateConfig, 'spawngate'>,
  logger: Logger,
  env: Readonly<Record<string, string | undefined>> = process.env,
): Promise<ReservationStore> {
  const section = config.spawngate?.store;
  if (!section || section.type === 'memory') return createMemoryStore({ logger });
  let password: string | undefined;
  if (section.passwordEnv !== undefined) {
    password = env[section.passwordEnv];
    if (password === undefined || password === '') {
      throw new ConfigError(`environment variable ${section.passwordEnv} (spawngate.store.passwordEnv) is not set`, [
        { path: 'spawngate.store.passwordEnv', message: `names ${section.passwordEnv}, which is unset or empty in this environment` },
      ]);
    }
  }
  return createRedisStore({ url: section.url, ...(password === undefined ? {} : { password }), ...(section.keyPrefix ? { keyPrefix: section.keyPrefix } : {}), logger });
}
