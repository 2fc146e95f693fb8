import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll } from 'vitest';
import { createRedisStore } from '../../src/admission/store/redis.js';
import { describeStoreContract } from '../admission/store-contract.js';
import { deleteKeys, ensureRedis, rawClient, uniquePrefix } from './server.js';

const runPrefix = uniquePrefix('contract');
let url = '';

beforeAll(async () => {
  url = await ensureRedis();
});

afterAll(async () => {
  const client = await rawClient();
  try {
    await deleteKeys(client, runPrefix);
  } finally {
    await client.quit();
  }
});

// Every store gets its own prefix: an empty store per scenario, as the memory factory gives.
describeStoreContract('redis', (options) => createRedisStore({ url, keyPrefix: `${runPrefix}${randomUUID()}:`, ...options }));
