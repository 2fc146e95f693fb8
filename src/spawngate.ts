import { hostname } from 'node:os';
import type { Admission, AdmissionOptions } from './admission/gate.js';
import { createAdmission } from './admission/gate.js';
import { resolveBuiltinAgent } from './agents/index.js';
import type { BackendResolver } from './backends/registry.js';
import { defaultBackendResolver } from './backends/registry.js';
import type { SpawngateConfig } from './config/index.js';
import { SpawngateError } from './errors.js';
import type { Lifecycle } from './sessions/lifecycle.js';
import { createLifecycle } from './sessions/lifecycle.js';

export interface SpawngateOptions extends AdmissionOptions {
  /** Backends by configured name; default: the built-in process/docker/kubernetes drivers, loaded on first use. */
  resolveBackend?: BackendResolver;
  /** Identifies this gateway on every worker's labels; default `spawngate.owner` from the config, else the host name. */
  owner?: string;
  /** Sweep interval; default `spawngate.sweepIntervalSeconds` from the config, else 60 s; 0 disables. */
  sweepIntervalMs?: number;
}

export interface ShutdownOptions {
  /** Leave workers running (their TTL and the next sweeper still bound them). */
  keepWorkers?: boolean;
}

/** `close(spawnId)` closes one worker; `shutdown()` closes the gate itself. */
export type Spawngate = Omit<Admission, 'close'> &
  Omit<Lifecycle, 'shutdown'> & {
    readonly owner: string;
    /** Stops hot reload, timers and the sweeper; closes every live worker unless `keepWorkers`. */
    shutdown(options?: ShutdownOptions): Promise<void>;
    [Symbol.asyncDispose](): Promise<void>;
  };

/** ACP agent argv from the config, else the worker's built-in agent of that id (null), else an error. */
export function agentCommandFor(config: SpawngateConfig, agentId: string): readonly string[] | null {
  const configured = config.agents.acp?.[agentId]?.command;
  if (configured) return configured;
  if (resolveBuiltinAgent(agentId)) return null;
  throw new SpawngateError('CONFIG_INVALID', `agent ${agentId} has no ACP command: add agents.acp.${agentId}.command to the config (built-in agents: echo)`);
}

export async function createSpawngate(options: SpawngateOptions = {}): Promise<Spawngate> {
  const admission = await createAdmission(options);
  const { config } = admission;
  const owner = options.owner ?? config.spawngate?.owner ?? hostname();
  const lifecycle = createLifecycle({
    admission,
    resolveBackend: options.resolveBackend ?? defaultBackendResolver(),
    owner,
    agentCommand: (agentId) => agentCommandFor(config, agentId),
    sweepIntervalMs: options.sweepIntervalMs ?? (config.spawngate?.sweepIntervalSeconds ?? 60) * 1000,
    ...(options.clock ? { clock: options.clock } : {}),
  });
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
    shutdown,
    [Symbol.asyncDispose]: () => shutdown(),
  };
}
