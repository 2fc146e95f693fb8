import { runWorkerFromEnv } from '../../worker/main.js';
import type { Command } from '../framework.js';
import { EXIT } from '../framework.js';

export const workerCommand: Command = {
  name: 'worker',
  summary: 'Run the reference worker (HTTP contract over an ACP agent); configured by SPAWNGATE_* environment variables.',
  usage: 'SPAWNGATE_WORKER_TOKEN=… SPAWNGATE_AGENT_ID=echo SPAWNGATE_LISTEN=127.0.0.1:0 spawngate worker',
  options: {},
  async run({ io }) {
    const worker = await runWorkerFromEnv(io.env);
    // The worker exits the process itself on SIGTERM or when its agent dies; keep the command alive until then.
    await new Promise<void>((resolve) => process.once('beforeExit', () => resolve()));
    await worker.close();
    return EXIT.ok;
  },
};
