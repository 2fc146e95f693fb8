/**
 * Environment-driven entry of the reference worker, shared by `spawngate worker` and the container
 * image (src/worker/bin.ts). Importing this module has no side effects; runWorkerFromEnv does. The
 * variables it reads are listed in options.ts.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../errors.js';
import { startTelemetry } from '../telemetry/sdk.js';
import { relayTracesThroughProxy } from './otlp-relay.js';
import { startWorker } from './worker.js';
import { checkoutGit, displayRepo } from './workspace.js';
import type { CheckedOut } from './workspace.js';
import type { RunningWorker } from './worker.js';
import { workerOptionsFromEnv, type Env } from './options.js';
import type { LaunchedAgent } from './launch.js';

export { parseListen, workerOptionsFromEnv } from './options.js';

/** Bound on the clone of a `git` workspace; the spawn's own timeout bounds it too. */
const GIT_CHECKOUT_TIMEOUT_MS = 10 * 60_000;
/** How long an early-started agent that no worker adopted gets to exit on SIGTERM. */
const KILL_GRACE_MS = 3000;

export interface WorkerIo {
  stdout: (line: string) => void;
  stderr: (line: string) => void;
}

const processIo: WorkerIo = {
  stdout: (line) => process.stdout.write(line),
  stderr: (line) => process.stderr.write(line),
};

/**
 * Starts the worker from the environment, prints `{"event":"listening",...}` on stdout once the server
 * listens, mirrors log lines to stderr as JSON, and stops gracefully (exit 0) on SIGTERM/SIGINT.
 * When the agent dies the worker exits 1 on its own (see StartWorkerOptions.exitOnAgentExit).
 * `launched`: the agent the entry started early (launch.ts); the worker adopts it or stops it.
 */
export async function runWorkerFromEnv(env: Env = process.env, io: WorkerIo = processIo, launched: LaunchedAgent | null = null): Promise<RunningWorker> {
  try {
    return await runWorker(env, io, launched);
  } finally {
    // Adopted by the worker it belongs to, or of no use: a worker that did not start stops it (a no-op once adopted).
    await launched?.discard(KILL_GRACE_MS);
  }
}

async function runWorker(env: Env, io: WorkerIo, launched: LaunchedAgent | null): Promise<RunningWorker> {
  const options = workerOptionsFromEnv(env);
  // Spans go where OTEL_* says (the gateway passes its collector to workers that may reach it);
  // under egress "proxy", through the gateway's proxy socket, the worker's only way out.
  const relay = await relayTracesThroughProxy(env, options.egressProxySocket, (message) =>
    io.stderr(`${JSON.stringify({ time: new Date().toISOString(), source: 'worker', level: 'warn', message })}\n`),
  );
  const sdk = await startTelemetry({
    service: 'spawngate-worker',
    attributes: { 'spawngate.role': 'worker', 'spawngate.agent_id': options.agentId, ...(env['SPAWNGATE_SPAWN_ID'] ? { 'spawngate.spawn_id': env['SPAWNGATE_SPAWN_ID'] } : {}) },
    env,
  });
  // The relay outlives the SDK's last flush, which goes through it.
  const telemetry = sdk || relay ? { shutdown: () => (sdk?.shutdown() ?? Promise.resolve()).finally(() => relay?.close()) } : null;
  let worker: RunningWorker;
  try {
    // The workspace is the folder the backend started the worker in; a `git` one is cloned into
    // before the agent exists. A failure exits the worker with git's own words on stderr.
    const { git, ...rest } = options;
    const dir = process.cwd();
    let checkedOut: CheckedOut | null = null;
    if (git) {
      io.stderr(`${JSON.stringify({ time: new Date().toISOString(), source: 'worker', level: 'info', message: `cloning ${displayRepo(git.repo)}${git.ref ? ` at ${git.ref}` : ''} into the workspace` })}\n`);
      checkedOut = await checkoutGit(dir, git, GIT_CHECKOUT_TIMEOUT_MS).catch((err: unknown) => {
        throw new ConfigError(`the workspace checkout failed: ${(err as Error).message}`, [{ path: 'workspace.repo', message: (err as Error).message }]);
      });
    }
    worker = await startWorker({
      ...rest,
      workspace: { dir, git: checkedOut },
      launched,
      ...(env['TRACEPARENT'] ? { traceparent: env['TRACEPARENT'] } : {}),
      ...(telemetry ? { onClosed: () => telemetry.shutdown() } : {}),
      onLog: (line) => io.stderr(`${JSON.stringify(line)}\n`),
    });
  } catch (err) {
    await telemetry?.shutdown();
    throw err;
  }
  const onSignal = (signal: NodeJS.Signals): void => {
    io.stderr(`${JSON.stringify({ time: new Date().toISOString(), source: 'worker', level: 'info', message: `received ${signal}` })}\n`);
    worker.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  io.stdout(`${JSON.stringify({ event: 'listening', ...worker.address, agentId: worker.agentId, pid: process.pid })}\n`);
  return worker;
}

let workerScript: string | undefined;

/**
 * argv that starts the reference worker as its own process with the running node binary, for the
 * process backend: once built, the bundle of scripts/bundle-worker.mjs (the same code, a third
 * faster to start) or bin.js where only tsc ran; bin.ts when spawngate runs from its sources.
 */
export function workerBinCommand(): string[] {
  if (workerScript === undefined) {
    const fromSources = import.meta.url.endsWith('.ts');
    const bundle = fileURLToPath(new URL('./bundle/worker.js', import.meta.url));
    workerScript = fromSources ? fileURLToPath(new URL('./bin.ts', import.meta.url)) : existsSync(bundle) ? bundle : fileURLToPath(new URL('./bin.js', import.meta.url));
  }
  return [process.execPath, workerScript];
}
