import type { AllowDecision } from '../admission/types.js';
import type { BackendConfig, ProfileConfig } from '../config/index.js';
import type { Quantities, SecretEnvRef, WorkerSpec, WorkspaceSpec } from '../backends/types.js';
import { LABELS } from '../backends/types.js';

/** Kubernetes label values: ≤ 63 chars of [A-Za-z0-9._-], alphanumeric at both ends. Docker accepts the same. */
export function labelValue(value: string): string {
  const cleaned = value.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 63);
  return cleaned.replace(/^[^A-Za-z0-9]+/, '').replace(/[^A-Za-z0-9]+$/, '') || 'x';
}

function quantities(list: { cpu?: string; memory?: string; 'ephemeral-storage'?: string } | undefined): Quantities {
  return { cpu: list?.cpu ?? null, memory: list?.memory ?? null, ephemeralStorage: list?.['ephemeral-storage'] ?? null };
}

function workspace(config: ProfileConfig['workspace']): WorkspaceSpec {
  if (!config) return { strategy: 'none' };
  switch (config.strategy) {
    case 'none':
      return { strategy: 'none' };
    case 'ephemeral':
      return { strategy: 'ephemeral', sizeLimit: config.sizeLimit ?? null };
    case 'volume':
      return { strategy: 'volume', claimName: config.claimName ?? null, sizeLimit: config.sizeLimit ?? null };
    case 'hostPath':
      return { strategy: 'hostPath', path: config.path };
  }
}

export interface SpecInput {
  spawnId: string;
  owner: string;
  instanceId: string;
  decision: AllowDecision;
  backend: BackendConfig;
  profile: ProfileConfig;
  agentId: string;
  agentCommand: readonly string[] | null;
  token: string;
  now: Date;
  traceparent: string | null;
}

/** Config + decision → what the backend runs. The decision wins where both speak (egress, TTL). */
export function buildWorkerSpec(input: SpecInput): WorkerSpec {
  const { decision, profile } = input;
  const env: Record<string, string> = {};
  const secretEnv: SecretEnvRef[] = [];
  for (const [name, value] of Object.entries(profile.env ?? {})) {
    if (typeof value === 'string') env[name] = value;
    else secretEnv.push({ name, secretRef: { name: value.secretRef.name, key: value.secretRef.key } });
  }
  const expiresAt = new Date(input.now.getTime() + decision.ttlSeconds * 1000);
  const image = profile.image ?? (input.backend.type === 'process' ? null : (input.backend.image ?? null));
  return {
    spawnId: input.spawnId,
    owner: input.owner,
    backendName: decision.backend,
    profileName: decision.profile,
    agentId: input.agentId,
    agentCommand: input.agentCommand,
    image,
    command: profile.command ?? null,
    args: profile.args ?? null,
    env,
    secretEnv,
    resources: { requests: quantities(profile.resources?.requests), limits: quantities(profile.resources?.limits), gpu: profile.resources?.gpu ?? 0 },
    pidsLimit: profile.pidsLimit ?? null,
    runtimeClassName: profile.runtimeClassName ?? null,
    nodeSelector: profile.nodeSelector ?? {},
    tolerations: profile.tolerations ?? [],
    egress: decision.egress,
    workspace: workspace(profile.workspace),
    token: input.token,
    // Unset, the hard run limit is the lifetime the policy granted.
    timeoutSeconds: profile.timeoutSeconds ?? decision.ttlSeconds,
    expiresAt,
    labels: {
      [LABELS.spawnId]: input.spawnId,
      [LABELS.owner]: labelValue(input.owner),
      [LABELS.instance]: labelValue(input.instanceId),
      [LABELS.backend]: labelValue(decision.backend),
      [LABELS.profile]: labelValue(decision.profile),
      [LABELS.agent]: labelValue(input.agentId),
      [LABELS.expiresAt]: String(Math.floor(expiresAt.getTime() / 1000)),
    },
    traceparent: input.traceparent,
  };
}
