// vitest globalSetup: starts the test Redis once before any test file runs, so parallel test
// workers do not race to apt-get install it. The tests call ensureRedis() themselves as well
// (cheap once Redis answers), so they also work when this file is not configured.
import { ensureRedis } from './server.js';

export async function setup(): Promise<void> {
  const url = await ensureRedis();
  process.stdout.write(`test redis: ${url}\n`);
}
