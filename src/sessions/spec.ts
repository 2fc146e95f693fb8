import { posix } from 'node:path';
import type { SessionWishes } from '../admission/request.js';
import type { AllowDecision } from '../admission/types.js';
import type { AgentEnvValue, BackendConfig, ProfileConfig, ResolvedAgent } from '../config/index.js';
import type { Quantities, SecretEnvRef, WorkerSpec, WorkspaceSpec } from '../backends/types.js';
import { LABELS } from '../backends/types.js';
import { traceExportRequested } from '../telemetry/sdk.js';

/** Kubernetes label values: ≤ 63 chars of [A-Za-z0-9._-], alphanumeric at both ends. Docker accepts the same. */
/** The admission decision a worker runs on: its decision-log line has this decision_id. */
export const DECISION_ID_LABEL = 'spawngate.io/decision-id';

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
    case 'git':
      return { strategy: 'git', repo: config.repo, ref: config.ref ?? null, depth: config.depth ?? null, sizeLimit: config.sizeLimit ?? null };
  }
}

/** The env names through which the worker hands the accepted wishes to its ACP session. */
export const SESSION_ENV = { cwd: 'SPAWNGATE_WORKER_CWD', model: 'SPAWNGATE_SESSION_MODEL', resumeSessionId: 'SPAWNGATE_RESUME_SESSION_ID' } as const;

/** The env name through which the worker learns the MCP servers of its ACP session (ACP's McpServer shape, as JSON). */
export const MCP_ENV = 'SPAWNGATE_MCP_SERVERS';

type McpServerConfig = NonNullable<ProfileConfig['mcpServers']>[number];

function acpMcpServer(server: McpServerConfig): Record<string, unknown> {
  const pairs = (record: Record<string, string> | undefined) => Object.entries(record ?? {}).map(([name, value]) => ({ name, value }));
  if (server.type === 'http') return { type: 'http', name: server.name, url: server.url, headers: pairs(server.headers) };
  return { name: server.name, command: server.command, args: server.args ?? [], env: pairs(server.env) };
}

/** The env names through which the worker learns what to clone into a `git` workspace. */
export const GIT_ENV = { repo: 'SPAWNGATE_GIT_REPO', ref: 'SPAWNGATE_GIT_REF', depth: 'SPAWNGATE_GIT_DEPTH' } as const;

function gitEnv(config: ProfileConfig['workspace']): Record<string, string> {
  if (config?.strategy !== 'git') return {};
  return {
    [GIT_ENV.repo]: config.repo,
    ...(config.ref ? { [GIT_ENV.ref]: config.ref } : {}),
    ...(config.depth ? { [GIT_ENV.depth]: String(config.depth) } : {}),
  };
}

export interface AcceptedSession {
  /** Added to the worker's environment. */
  env: Record<string, string>;
  /** The request's MCP servers, when the profile accepts them. */
  mcpServers: McpServerConfig[];
  /** What the request asked for and the profile did not accept, e.g. "cwd", "env.OPENAI_API_KEY". */
  dropped: string[];
}

function under(path: string, roots: readonly string[]): boolean {
  const p = posix.resolve(path);
  return roots.some((root) => {
    const r = posix.resolve(root);
    return p === r || p.startsWith(r.endsWith('/') ? r : `${r}/`);
  });
}

function envAllowed(name: string, patterns: readonly string[]): boolean {
  return patterns.some((pattern) => (pattern.endsWith('*') ? name.startsWith(pattern.slice(0, -1)) : name === pattern));
}

/**
 * What of a request's session wishes the profile lets through. Dropped wishes are reported, not
 * fatal: the worker then runs as the profile alone says (its own workspace, the agent's default
 * model), which is never wider than what the operator configured.
 */
export function acceptSession(accept: ProfileConfig['accept'], wishes: SessionWishes): AcceptedSession {
  const env: Record<string, string> = {};
  const dropped: string[] = [];
  if (wishes.cwd !== null) {
    const rule = accept?.cwd ?? false;
    if (rule === true || (Array.isArray(rule) && under(wishes.cwd, rule))) env[SESSION_ENV.cwd] = posix.resolve(wishes.cwd);
    else dropped.push('cwd');
  }
  for (const [name, value] of Object.entries(wishes.env)) {
    if (envAllowed(name, accept?.env ?? [])) env[name] = value;
    else dropped.push(`env.${name}`);
  }
  if (wishes.model !== null) {
    if (accept?.model ?? true) env[SESSION_ENV.model] = wishes.model;
    else dropped.push('model');
  }
  if (wishes.resumeSessionId !== null) {
    if (accept?.resumeSessionId ?? true) env[SESSION_ENV.resumeSessionId] = wishes.resumeSessionId;
    else dropped.push('resumeSessionId');
  }
  const mcpServers = accept?.mcpServers === true ? wishes.mcpServers : [];
  if (wishes.mcpServers.length && accept?.mcpServers !== true) dropped.push(...wishes.mcpServers.map((m) => `mcpServers.${m.name}`));
  return { env, dropped, mcpServers };
}

function loopback(url: string): boolean {
  try {
    const host = new URL(url).hostname;
    return host === 'localhost' || host === '[::1]' || host.startsWith('127.');
  } catch {
    return false;
  }
}

/**
 * OTEL_* for the worker, so its spans join the gateway's trace in the same collector. By default
 * the gateway's own endpoint, for a worker with open egress that can reach it (a loopback endpoint
 * only means the gateway's host to a process worker); a profile names another endpoint as the
 * worker reaches it. OTLP headers are never passed: they are the gateway's credentials.
 */
export function workerTelemetryEnv(profile: ProfileConfig, backend: BackendConfig, egress: AllowDecision['egress'], gatewayEnv: Record<string, string | undefined>): Record<string, string> {
  const telemetry = profile.telemetry;
  if (telemetry?.traces === false || egress === 'none') return {};
  const env: Record<string, string> = { OTEL_TRACES_EXPORTER: 'otlp' };
  if (telemetry?.endpoint) {
    env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'] = telemetry.endpoint;
  } else {
    if (egress !== 'open' || !traceExportRequested(gatewayEnv)) return {};
    const traces = gatewayEnv['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'];
    const base = gatewayEnv['OTEL_EXPORTER_OTLP_ENDPOINT'];
    const endpoint = traces ?? base;
    if (!endpoint || (backend.type !== 'process' && loopback(endpoint))) return {};
    if (traces) env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'] = traces;
    else env['OTEL_EXPORTER_OTLP_ENDPOINT'] = endpoint;
  }
  const protocol = telemetry?.protocol ?? gatewayEnv['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL'] ?? gatewayEnv['OTEL_EXPORTER_OTLP_PROTOCOL'];
  if (protocol) env['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL'] = protocol;
  const resource = gatewayEnv['OTEL_RESOURCE_ATTRIBUTES'];
  if (resource) env['OTEL_RESOURCE_ATTRIBUTES'] = resource;
  return env;
}

export interface SpecInput {
  spawnId: string;
  owner: string;
  instanceId: string;
  decision: AllowDecision;
  /** The decision's id, for the worker's labels; absent only where no decision was taken (manifest tests). */
  decisionId?: string;
  backend: BackendConfig;
  profile: ProfileConfig;
  agentId: string;
  /** The agent's settings for this placement (src/config/agents.ts). */
  agent: ResolvedAgent;
  token: string;
  now: Date;
  traceparent: string | null;
  /** The request's session wishes that the profile accepted (acceptSession). */
  sessionEnv?: Record<string, string>;
  /** The request's MCP servers that the profile accepted (acceptSession). */
  sessionMcpServers?: readonly McpServerConfig[];
  /** The gateway's environment, for its OTEL_* trace export settings (workerTelemetryEnv). */
  gatewayEnv?: Record<string, string | undefined>;
}

/** Config + decision → what the backend runs. The decision wins where both speak (egress, TTL). */
export function buildWorkerSpec(input: SpecInput): WorkerSpec {
  const { decision, profile } = input;
  // Telemetry first: the profile's own env may pin other OTEL_* values.
  const env: Record<string, string> = workerTelemetryEnv(profile, input.backend, decision.egress, input.gatewayEnv ?? {});
  const secretEnv: SecretEnvRef[] = [];
  // The agent's own env is the more specific: it wins over the profile's on the same name.
  const merged: Record<string, AgentEnvValue> = { ...profile.env, ...input.agent.env };
  for (const [name, value] of Object.entries(merged)) {
    if (typeof value === 'string') env[name] = value;
    else {
      // A secret replaces a telemetry value of the same name.
      delete env[name];
      secretEnv.push({ name, secretRef: { name: value.secretRef.name, key: value.secretRef.key } });
    }
  }
  // The profile's own env wins: a request cannot override what the operator pinned.
  for (const [name, value] of Object.entries(input.sessionEnv ?? {})) {
    if (!(name in env) && !secretEnv.some((s) => s.name === name)) env[name] = value;
  }
  // The operator's model for this agent, unless the request's model wish was accepted.
  if (input.agent.model !== null && !(SESSION_ENV.model in env)) env[SESSION_ENV.model] = input.agent.model;
  // The checkout and the cancel grace are the worker's contract: neither the profile's env nor a request changes them.
  Object.assign(env, gitEnv(profile.workspace));
  // The gateway's permission policy answers every request the agent makes (sessions/turns.ts).
  env['SPAWNGATE_PERMISSIONS'] = 'ask';
  if (profile.cancelGraceSeconds !== undefined) env['SPAWNGATE_CANCEL_GRACE_MS'] = String(Math.round(profile.cancelGraceSeconds * 1000));
  // The profile's servers first; a request's server of the same name does not replace the operator's.
  const own = profile.mcpServers ?? [];
  const mcp = [...own, ...(input.sessionMcpServers ?? []).filter((m) => !own.some((o) => o.name === m.name))];
  if (mcp.length) env[MCP_ENV] = JSON.stringify(mcp.map(acpMcpServer));
  const expiresAt = new Date(input.now.getTime() + decision.ttlSeconds * 1000);
  const image = profile.image ?? (input.backend.type === 'process' ? null : (input.backend.image ?? null));
  return {
    spawnId: input.spawnId,
    owner: input.owner,
    backendName: decision.backend,
    profileName: decision.profile,
    agentId: input.agentId,
    agentCommand: input.agent.command,
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
    // The decision names the hosts; a policy from before egressAllow names none, and the profile's list applies.
    egressAllow: decision.egress === 'proxy' ? (decision.egressAllow ?? profile.egressAllow ?? []) : [],
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
      ...(input.decisionId ? { [DECISION_ID_LABEL]: labelValue(input.decisionId) } : {}),
    },
    traceparent: input.traceparent,
  };
}
