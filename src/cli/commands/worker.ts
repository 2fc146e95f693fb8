import { runWorkerFromEnv } from '../../worker/main.js';
import type { Command } from '../framework.js';
import { EXIT } from '../framework.js';

export const workerCommand: Command = {
  name: 'worker',
  summary: 'Run the reference worker (HTTP contract over an ACP agent); configured by SPAWNGATE_* environment variables.',
  usage: 'SPAWNGATE_WORKER_TOKEN=… SPAWNGATE_AGENT_ID=echo SPAWNGATE_LISTEN=127.0.0.1:0 spawngate worker',
  options: {},
  environment: [
    { name: 'SPAWNGATE_WORKER_TOKEN', description: 'Required: the bearer token every request must carry (never passed to the agent).' },
    { name: 'SPAWNGATE_AGENT_ID', description: 'The agent id reported in /healthz and events (default: echo).' },
    { name: 'SPAWNGATE_AGENT_COMMAND', description: 'JSON array argv of the ACP agent (default: the built-in agent of that id).' },
    { name: 'SPAWNGATE_LISTEN', description: '"8080", "host:port", "[::1]:port" or "unix:/path.sock" (default: 127.0.0.1:0, reported in the listening line).' },
    { name: 'SPAWNGATE_WORKER_CWD', description: 'The agent\'s working directory (default: the worker\'s).' },
    { name: 'SPAWNGATE_PERMISSIONS', description: 'Who answers the agent\'s permission requests: ask (the gateway), allow_once (default) or reject.' },
    { name: 'SPAWNGATE_DEADLINE', description: 'Unix time (s) at which the worker stops itself and exits 124.' },
    { name: 'SPAWNGATE_GIT_REPO, _REF, _DEPTH', description: 'Clone this repository into the workspace before the agent starts.' },
    { name: 'OTEL_*', description: 'Standard OpenTelemetry variables; spans are exported when they ask for it.' },
  ],
  notes: [
    'Every variable, with its default, is listed in docs/worker-protocol.md and src/worker/main.ts. stdout carries {"event":"listening",…} once the worker listens; its log lines (JSON) go to stderr. SIGTERM stops it gracefully (exit 0).',
  ],
  examples: [{ description: 'A worker with the echo agent on a socket, to try the HTTP contract with curl', command: 'SPAWNGATE_WORKER_TOKEN=t SPAWNGATE_LISTEN=unix:/tmp/w.sock spawngate worker' }],
  async run({ io }) {
    const worker = await runWorkerFromEnv(io.env);
    // The worker exits the process itself on SIGTERM or when its agent dies; keep the command alive until then.
    await new Promise<void>((resolve) => process.once('beforeExit', () => resolve()));
    await worker.close();
    return EXIT.ok;
  },
};
