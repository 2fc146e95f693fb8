import type { AdmissionInput, SelectionSource } from '../admission/types.js';
import { IMPLICIT_PROFILE, type BackendConfig, type ProfileConfig, type SpawngateConfig } from './schema.js';

export interface SelectionContext {
  agentId: string;
  /** What the spawn asked for; null/undefined fields mean "not asked". */
  execution?: { backend?: string | null; profile?: string | null } | null;
  channel: { id: string; kind: string };
  user: { id: string; roles: readonly string[] };
}

export type Selection = AdmissionInput['resolved'];

interface Layer {
  source: SelectionSource;
  backend: string | undefined;
  profile: string | undefined;
}

/**
 * Picks the backend and profile a spawn gets before policy sees it. Sources, highest first:
 * the request's `execution`, the first matching binding, the agent's default, the global
 * default; then, when the config has exactly one backend, that backend.
 *
 * The backend comes from the highest layer that names one. The profile comes from the highest
 * layer at or above that one — a profile named further down belongs to a backend that was
 * overridden — and otherwise is the backend's default profile. `source` is the highest layer
 * that contributed either. Unknown names pass through untouched: denying them is the policy's
 * job, with a reason the user sees.
 */
export function resolveSelection(config: SpawngateConfig, ctx: SelectionContext): Selection {
  const layers = selectionLayers(config, ctx);
  const backends = config.agents.executionBackends;

  const backendAt = layers.findIndex((l) => l.backend !== undefined);
  const profileCandidates = backendAt >= 0 ? layers.slice(0, backendAt + 1) : layers;
  const profileAt = profileCandidates.findIndex((l) => l.profile !== undefined);

  let backend = backendAt >= 0 ? (layers[backendAt]?.backend ?? null) : null;
  let profile = profileAt >= 0 ? (layers[profileAt]?.profile ?? null) : null;
  let fallback: SelectionSource | null = null;

  if (backend === null) {
    const names = Object.keys(backends);
    // A profile name that only one backend declares identifies that backend.
    const declaring = profile === null ? [] : names.filter((n) => profileNames(ownValue(backends, n)).includes(profile as string));
    if (declaring.length === 1) backend = declaring[0] ?? null;
    else if (names.length === 1) {
      backend = names[0] ?? null;
      fallback = 'backend_default';
    }
  }
  if (backend !== null && profile === null) {
    const cfg = ownValue(backends, backend);
    if (cfg) profile = defaultProfileOf(cfg);
  }

  const contributed = [backendAt, profileAt].filter((i) => i >= 0);
  const first = contributed.length ? layers[Math.min(...contributed)] : undefined;
  const source: SelectionSource = first?.source ?? fallback ?? 'none';
  return { backend, profile, source };
}

function selectionLayers(config: SpawngateConfig, ctx: SelectionContext): Layer[] {
  const execution = config.agents.execution;
  const layers: Layer[] = [];
  const explicit = ctx.execution;
  if (explicit) layers.push({ source: 'explicit', backend: explicit.backend ?? undefined, profile: explicit.profile ?? undefined });

  const binding = execution?.bindings?.find(({ match }) => {
    if (match.channelKind !== undefined && match.channelKind !== ctx.channel.kind) return false;
    if (match.channelId !== undefined && match.channelId !== ctx.channel.id) return false;
    if (match.userId !== undefined && match.userId !== ctx.user.id) return false;
    if (match.role !== undefined && !ctx.user.roles.includes(match.role)) return false;
    return true;
  });
  if (binding) layers.push({ source: 'binding', backend: binding.backend, profile: binding.profile });

  const agent = execution?.agents ? ownValue(execution.agents, ctx.agentId) : undefined;
  if (agent) layers.push({ source: 'agent', backend: agent.backend, profile: agent.profile });

  if (execution?.default) layers.push({ source: 'global', backend: execution.default.backend, profile: execution.default.profile });
  return layers;
}

/** The profile a backend uses when only the backend is known. */
export function defaultProfileOf(backend: BackendConfig): string {
  if (backend.defaultProfile !== undefined) return backend.defaultProfile;
  return profileNames(backend)[0] ?? IMPLICIT_PROFILE;
}

/** Declared profile names in order; a backend that declares none has the implicit "default". */
export function profileNames(backend: BackendConfig | undefined): string[] {
  if (!backend) return [];
  const names = backend.profiles ? Object.keys(backend.profiles) : [];
  return names.length ? names : [IMPLICIT_PROFILE];
}

export function findBackend(config: SpawngateConfig, name: string): BackendConfig | undefined {
  return ownValue(config.agents.executionBackends, name);
}

/**
 * A profile as configured (defaults not applied — see buildCatalog for those), or undefined when
 * the backend or profile does not exist. The implicit profile of a profile-less backend is `{}`.
 */
export function findProfile(config: SpawngateConfig, backend: string, profile: string): ProfileConfig | undefined {
  const cfg = findBackend(config, backend);
  if (!cfg) return undefined;
  const profiles = cfg.profiles && Object.keys(cfg.profiles).length > 0 ? cfg.profiles : undefined;
  if (!profiles) return profile === IMPLICIT_PROFILE ? {} : undefined;
  return ownValue(profiles, profile);
}

/** Lookup by a caller-supplied name without reaching Object.prototype ("constructor", "__proto__"). */
function ownValue<T>(record: Record<string, T>, key: string): T | undefined {
  return Object.hasOwn(record, key) ? record[key] : undefined;
}
