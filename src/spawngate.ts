import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Admission, AdmissionOptions } from './admission/gate.js';
import { createAdmission } from './admission/gate.js';
import { resolveBuiltinAgent } from './agents/index.js';
import type { BackendResolver } from './backends/registry.js';
import { defaultBackendResolver } from './backends/registry.js';
import type { ResolvedAgent, SpawngateConfig } from './config/index.js';
import { resolveAgent } from './config/index.js';
import { SpawngateError } from './errors.js';
import type { Lifecycle } from './sessions/lifecycle.js';
import { createLifecycle } from './sessions/lifecycle.js';

export interface SpawngateOptions extends AdmissionOptions {
  /** Backends by configured name; default: the built-in process/docker/kubernetes drivers, loaded on first use. */
  resolveBackend?: BackendResolver;
  /**
   * The owner group on every worker's label: the gateways that may sweep each other's orphans.
   * Default `spawngate.owner` from the config, else the host name. Replicas may share it; what
   * tells them apart is the instance id, and what keeps a worker alive is its lease.
   */
  owner?: string;
  /** Sweep interval; default `spawngate.sweepIntervalSeconds` from the config, else 60 s; 0 disables. */
  sweepIntervalMs?: number;
  /**
   * Sweep once before the gate is handed out, so a restarted gateway admits nothing until its
   * predecessor's orphans are gone (no over-admission window). Default: on when the sweeper is.
   */
  reconcileOnStart?: boolean;
  /** Keep the profiles' warm pools filled (LifecycleOptions.warmPools); a long-lived gateway turns it on. Default false. */
  warmPools?: boolean;
  /** The gateway's environment, read for its OTEL_* trace export settings that workers continue; default process.env. */
  gatewayEnv?: Readonly<Record<string, string | undefined>>;
}

export interface ShutdownOptions {
  /** Leave workers running (their TTL and the next sweeper still bound them). */
  keepWorkers?: boolean;
}

/** `close(spawnId)` closes one worker; `shutdown()` closes the gate itself. */
export type Spawngate = Omit<Admission, 'close'> &
  Omit<Lifecycle, 'shutdown'> & {
    readonly owner: string;
    /** This process's id: the holder of its leases, unique per gateway process. */
    readonly instanceId: string;
    /** Stops hot reload, timers and the sweeper; closes every live worker unless `keepWorkers`. */
    shutdown(options?: ShutdownOptions): Promise<void>;
    [Symbol.asyncDispose](): Promise<void>;
  };

/** ACP agent argv from the config, else the worker's built-in agent of that id (null), else an error. */
export function agentCommandFor(config: SpawngateConfig, agentId: string): readonly string[] | null {
  const configured = config.agents.acp && Object.hasOwn(config.agents.acp, agentId) ? config.agents.acp[agentId]?.command : undefined;
  if (configured) return configured;
  if (resolveBuiltinAgent(agentId)) return null;
  throw new SpawngateError('CONFIG_INVALID', `agent ${agentId} has no ACP command: add agents.acp.${agentId}.command to the config (built-in agents: echo)`);
}

/** The agent's settings where it is placed (backend and profile overrides applied); an error for an agent nobody can start. */
export function agentFor(config: SpawngateConfig, agentId: string, backend: string, profile: string): ResolvedAgent {
  const agent = resolveAgent(config, agentId, backend, profile);
  // No command configured: the worker's built-in agent of that id, or an error saying what to add.
  if (agent.command === null) agentCommandFor(config, agentId);
  return agent;
}

/** Unique per process and readable in a listing: host, pid, and randomness against pid reuse. */
export function newInstanceId(): string {
  return `${hostname().slice(0, 40)}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

export async function createSpawngate(options: SpawngateOptions = {}): Promise<Spawngate> {
  const instanceId = options.instanceId ?? newInstanceId();
  const admission = await createAdmission({ ...options, instanceId });
  const { config } = admission;
  const owner = options.owner ?? config.spawngate?.owner ?? hostname();
  const sweepIntervalMs = options.sweepIntervalMs ?? (config.spawngate?.sweepIntervalSeconds ?? 60) * 1000;
  const lifecycle = createLifecycle({
    admission,
    resolveBackend: options.resolveBackend ?? defaultBackendResolver(),
    owner,
    instanceId,
    agent: (agentId, backend, profile) => agentFor(config, agentId, backend, profile),
    gatewayEnv: options.gatewayEnv ?? process.env,
    sweepIntervalMs,
    ...(options.warmPools ? { warmPools: true } : {}),
    ...(options.clock ? { clock: options.clock } : {}),
  });
  if (options.reconcileOnStart ?? sweepIntervalMs > 0) {
    try {
      const report = await lifecycle.sweep({ orphans: true });
      if (report.removed.length || report.releasedLeases.length) {
        admission.logger.info('reconciled before the first spawn', { removed: report.removed.map((e) => ({ spawnId: e.spawnId, reason: e.reason })), releasedLeases: report.releasedLeases.length });
      }
      for (const e of report.errors) admission.logger.warn('start-up reconciliation could not check a backend', e);
    } catch (err) {
      await lifecycle.shutdown();
      await admission.close();
      throw err;
    }
  }
  lifecycle.startWarmPools();
  // Both are plain factory objects of closures (no `this`), so their methods can be spread.
  // eslint-disable-next-line @typescript-eslint/unbound-method
  const { shutdown: _shutdown, ...sessions } = lifecycle;
  // eslint-disable-next-line @typescript-eslint/unbound-method
  const { close: _close, ...admissionParts } = admission;
  const shutdown = async (shutdownOptions: ShutdownOptions = {}) => {
    await lifecycle.shutdown({ closeWorkers: !shutdownOptions.keepWorkers });
    await admission.close();
  };
  return {
    ...admissionParts,
    ...sessions,
    owner,
    instanceId,
    shutdown,
    [Symbol.asyncDispose]: () => shutdown(),
  };
}
