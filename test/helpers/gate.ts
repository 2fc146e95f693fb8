/** A gate as the session tests open it: an owner of its own, no background sweeper. */
import { randomUUID } from 'node:crypto';
import type { Spawngate, SpawngateOptions } from '../../src/spawngate.js';
import { createSpawngate } from '../../src/spawngate.js';

export function testGate(name: string, config: unknown, options: Omit<SpawngateOptions, 'config'> = {}): Promise<Spawngate> {
  return createSpawngate({ owner: `${name}-${randomUUID().slice(0, 8)}`, sweepIntervalMs: 0, decisionLog: false, ...options, config });
}
