/**
 * Which process a worker starts as its agent, and the early start of it.
 *
 * A cold worker is two Node processes, the worker and its agent, and each takes most of its time to
 * ready booting (about 80-100 ms on a small VM) and loading code. Started by the worker only once
 * the worker's own code was loaded, the agent booted after the worker: two boots in a row. The
 * worker's entry (bin.ts) therefore starts the agent first, from this light module,
 * and loads the rest while the agent boots on the other CPU; startWorker adopts that process
 * instead of starting its own. Both sides build the argv, working directory and environment with
 * agentLaunch(), and startWorker adopts only a process started for exactly what it would start.
 *
 * Not early: a worker whose agent needs something set up first (a `git` workspace cloned into,
 * the egress proxy's loopback forwarder in the agent's environment) or whose environment is
 * invalid (main.ts reports that, and no agent is ever started).
 */
import { resolve as resolvePath } from 'node:path';
import { spawnAgentProcess } from './agent-process.js';
import type { AgentProcess } from './agent-process.js';
import { workerOptionsFromEnv, type Env } from './options.js';
import { safeDirectoryEnv } from './workspace.js';

export interface AgentLaunch {
  command: string;
  args: readonly string[];
  cwd: string;
  env: Record<string, string>;
}

/** What the agent inherits: the worker's environment without its credential, then `extra`. */
function agentEnvironment(extra: Record<string, string> | undefined): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    // The agent runs model-written code; it has no business holding the credential of its own worker.
    if (value !== undefined && key !== 'SPAWNGATE_WORKER_TOKEN') env[key] = value;
  }
  return { ...env, ...extra };
}

/** The agent process a worker with these options starts in `cwd`; `proxyEnv` points it at the egress forwarder. */
export function agentLaunch(
  opts: { agentCommand: string; agentArgs: readonly string[]; agentEnv?: Record<string, string> | undefined },
  cwd: string,
  proxyEnv: Record<string, string>,
): AgentLaunch {
  const agentEnv = opts.agentEnv ?? {};
  return {
    command: opts.agentCommand,
    args: [...opts.agentArgs],
    cwd,
    env: agentEnvironment({ ...agentEnv, ...proxyEnv, ...safeDirectoryEnv(cwd, { ...process.env, ...agentEnv }) }),
  };
}

function sameLaunch(a: AgentLaunch, b: AgentLaunch): boolean {
  if (a.command !== b.command || a.cwd !== b.cwd || a.args.length !== b.args.length || a.args.some((arg, i) => arg !== b.args[i])) return false;
  const keys = Object.keys(a.env);
  return keys.length === Object.keys(b.env).length && keys.every((k) => Object.hasOwn(b.env, k) && a.env[k] === b.env[k]);
}

/** Agent stderr lines kept until the worker adopts the process: a few, the adoption follows within ms. */
const MAX_HELD_LINES = 200;

/** An agent process started before the worker's server; owned by whoever holds this until adopted. */
export interface LaunchedAgent {
  /** The agent's pid; null when it could not be started (the adopting worker reports why). */
  readonly pid: number | null;
  /** Epoch ms of the spawn, for the worker's start span. */
  readonly startedAt: number;
  /**
   * The process, handed to the worker that would start exactly `launch`: its stderr lines from now
   * on (and those held so far) go to `onStderrLine`. Null when `launch` differs or it was already
   * taken or discarded; the caller then starts its own agent.
   */
  adopt(launch: AgentLaunch, onStderrLine: (line: string) => void): AgentProcess | null;
  /** Stops the process unless a worker adopted it (which then owns its end). */
  discard(graceMs: number): Promise<void>;
}

/** Starts the agent of the worker `env` describes, when nothing must precede it (see the file comment); else null. */
export function launchAgentEarly(env: Env): LaunchedAgent | null {
  let opts: ReturnType<typeof workerOptionsFromEnv>;
  try {
    opts = workerOptionsFromEnv(env);
  } catch {
    // The entry reports the invalid environment; no agent for a worker that will not start.
    return null;
  }
  if (opts.git || opts.egressProxySocket) return null;
  // As startWorker resolves it: the worker runs in its workspace unless told otherwise.
  const launch = agentLaunch(opts, opts.cwd ? resolvePath(opts.cwd) : process.cwd(), {});
  const held: string[] = [];
  let forward: ((line: string) => void) | null = null;
  let proc: AgentProcess;
  try {
    proc = spawnAgentProcess({
      ...launch,
      onStderrLine: (line) => {
        if (forward) forward(line);
        else if (held.length < MAX_HELD_LINES) held.push(line);
      },
    });
  } catch {
    // Refused before any process existed: the worker starts its agent itself and reports why.
    return null;
  }
  let owner: 'launcher' | 'worker' | 'discarded' = 'launcher';
  return {
    get pid() {
      return proc.pid;
    },
    startedAt: Date.now(),
    adopt(wanted, onStderrLine) {
      if (owner !== 'launcher' || !sameLaunch(launch, wanted)) return null;
      owner = 'worker';
      forward = onStderrLine;
      for (const line of held.splice(0)) onStderrLine(line);
      return proc;
    },
    async discard(graceMs) {
      if (owner !== 'launcher') return;
      owner = 'discarded';
      await proc.terminate(graceMs);
    },
  };
}
