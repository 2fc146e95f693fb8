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
 * Earlier still, on the process backend: the backend's last wrapper starts the agent beside the
 * worker (backends/process/isolation.ts AGENT_PRELAUNCH), so the two boots overlap from the first
 * millisecond; the entry then takes that agent (attachAgentProcess) instead of starting one, when
 * the backend's plan (prelaunchPlan, computed from the worker's environment) is the one it would
 * make, and stops it otherwise.
 *
 * Not early: a worker whose agent needs something set up first (a `git` workspace cloned into,
 * the egress proxy's loopback forwarder in the agent's environment) or whose environment is
 * invalid (main.ts reports that, and no agent is ever started).
 */
import { createHash } from 'node:crypto';
import { resolve as resolvePath } from 'node:path';
import { attachAgentProcess, closePrelaunchFds, isChild, spawnAgentProcess } from './agent-process.js';
import type { AgentProcess } from './agent-process.js';
import { workerOptionsFromEnv, type Env } from './options.js';
import { safeDirectoryEnv } from './workspace.js';

export interface AgentLaunch {
  command: string;
  args: readonly string[];
  cwd: string;
  env: Record<string, string>;
}

/**
 * Set by the process backend on a worker whose agent it starts beside the worker (see prelaunchPlan):
 * the FIFOs' folder and the fingerprint of the launch; the prelaunch script adds the agent's pid.
 */
export const PRELAUNCH_ENV = { dir: 'SPAWNGATE_PRELAUNCH_DIR', sum: 'SPAWNGATE_PRELAUNCH_SUM', pid: 'SPAWNGATE_PRELAUNCH_PID' } as const;
const PRELAUNCH_PREFIX = 'SPAWNGATE_PRELAUNCH_';

/** What the agent inherits: the worker's environment without its credential (and the prelaunch's bookkeeping), then `extra`. */
function agentEnvironment(extra: Record<string, string> | undefined): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    // The agent runs model-written code; it has no business holding the credential of its own worker.
    if (value !== undefined && key !== 'SPAWNGATE_WORKER_TOKEN' && !key.startsWith(PRELAUNCH_PREFIX)) env[key] = value;
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

/** What a prelaunch needs to start the agent a worker with environment `env`, started in `cwd`, would start. */
export interface PrelaunchPlan {
  argv: string[];
  /** Set on top of the worker's environment (minus its credential): the workspace as git's safe.directory. */
  extraEnv: Record<string, string>;
  /** Fingerprint of argv, cwd and extraEnv: the worker adopts the agent only when its own plan has the same. */
  sum: string;
}

function fingerprint(argv: readonly string[], cwd: string, extraEnv: Record<string, string>): string {
  const extra = Object.entries(extraEnv).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return createHash('sha256').update(JSON.stringify([argv, cwd, extra])).digest('hex');
}

/**
 * The agent launch of a worker with environment `env` started in `cwd`, when nothing must precede
 * the agent (no `git` workspace to clone into, no egress forwarder in its environment, the agent
 * runs where the worker starts); else null. The process backend starts that agent beside the
 * worker; the worker, computing the same plan from its own environment, adopts it.
 */
export function prelaunchPlan(env: Env, cwd: string): PrelaunchPlan | null {
  let opts: ReturnType<typeof workerOptionsFromEnv>;
  try {
    opts = workerOptionsFromEnv(env);
  } catch {
    return null;
  }
  if (opts.git || opts.egressProxySocket || (opts.cwd !== undefined && resolvePath(cwd, opts.cwd) !== cwd)) return null;
  const argv = [opts.agentCommand, ...opts.agentArgs];
  const extraEnv = safeDirectoryEnv(cwd, env);
  return { argv, extraEnv, sum: fingerprint(argv, cwd, extraEnv) };
}

/** Stops an agent the process backend started for this worker, which this worker will not use, and lets go of its FIFOs. */
function discardPrelaunched(env: Env): void {
  const pid = Number(env[PRELAUNCH_ENV.pid]);
  if (!Number.isInteger(pid) || pid <= 1) return;
  // Only this worker's own child: a pid named by hand is nothing of the worker's to stop.
  if (isChild(pid)) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
  const dir = env[PRELAUNCH_ENV.dir];
  if (dir) closePrelaunchFds(dir);
}

/** The agent started beside this worker, when there is one and it is the agent `launch` describes; else null (it is then stopped). */
function prelaunched(env: Env, launch: AgentLaunch, onStderrLine: (line: string) => void): AgentProcess | null {
  const pid = Number(env[PRELAUNCH_ENV.pid]);
  const dir = env[PRELAUNCH_ENV.dir];
  if (!env[PRELAUNCH_ENV.pid]) return null;
  const plan = prelaunchPlan(env, launch.cwd);
  const same = plan !== null && plan.sum === env[PRELAUNCH_ENV.sum] && plan.sum === fingerprint([launch.command, ...launch.args], launch.cwd, plan.extraEnv);
  if (!same || !dir || !Number.isInteger(pid) || pid <= 1) {
    discardPrelaunched(env);
    return null;
  }
  try {
    return attachAgentProcess({ pid, dir, onStderrLine });
  } catch {
    discardPrelaunched(env);
    return null;
  }
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
    discardPrelaunched(env);
    return null;
  }
  if (opts.git || opts.egressProxySocket) {
    discardPrelaunched(env);
    return null;
  }
  // As startWorker resolves it: the worker runs in its workspace unless told otherwise.
  const launch = agentLaunch(opts, opts.cwd ? resolvePath(opts.cwd) : process.cwd(), {});
  const held: string[] = [];
  let forward: ((line: string) => void) | null = null;
  const onStderrLine = (line: string): void => {
    if (forward) forward(line);
    else if (held.length < MAX_HELD_LINES) held.push(line);
  };
  let proc: AgentProcess;
  try {
    proc = prelaunched(env, launch, onStderrLine) ?? spawnAgentProcess({ ...launch, onStderrLine });
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
