import type { AdmissionInput, CatalogBackend, CatalogProfile } from '../admission/types.js';
import { defaultProfileOf } from './resolve.js';
import { IMPLICIT_PROFILE, type ProfileConfig, type SpawngateConfig } from './schema.js';

export type Catalog = AdmissionInput['catalog'];

/** Defaults a profile gets for every field it leaves out. */
export const PROFILE_DEFAULTS = {
  class: 'standard',
  egress: 'none',
  gpu: 0,
  interactiveOnly: false,
} as const;

/**
 * The policy's view of the config: every backend with its profiles, defaults applied, absent
 * values as null (the policy input has no optional fields). A backend without profiles shows
 * its implicit "default" profile. Pure and linear in the config size; callers build it once per
 * loaded config and reuse it.
 */
export function buildCatalog(config: SpawngateConfig): Catalog {
  const backends: Record<string, CatalogBackend> = {};
  for (const [name, backend] of Object.entries(config.agents.executionBackends)) {
    const declared = backend.profiles && Object.keys(backend.profiles).length > 0 ? backend.profiles : { [IMPLICIT_PROFILE]: {} };
    const profiles: Record<string, CatalogProfile> = {};
    for (const [profileName, profile] of Object.entries(declared)) profiles[profileName] = catalogProfile(profile);
    backends[name] = {
      type: backend.type,
      namespace: backend.type === 'kubernetes' ? backend.namespace : null,
      defaultProfile: defaultProfileOf(backend),
      maxConcurrent: backend.maxConcurrent ?? null,
      profiles,
    };
  }
  return { backends };
}

function catalogProfile(profile: ProfileConfig): CatalogProfile {
  const r = profile.resources;
  const caps = profile.maxConcurrent;
  return {
    class: profile.class ?? PROFILE_DEFAULTS.class,
    resources: {
      requests: { cpu: r?.requests?.cpu ?? null, memory: r?.requests?.memory ?? null },
      limits: { cpu: r?.limits?.cpu ?? null, memory: r?.limits?.memory ?? null },
      gpu: r?.gpu ?? PROFILE_DEFAULTS.gpu,
    },
    egress: profile.egress ?? PROFILE_DEFAULTS.egress,
    egressAllow: [...(profile.egressAllow ?? [])],
    allowedAgents: profile.allowedAgents ? [...profile.allowedAgents] : null,
    interactiveOnly: profile.interactiveOnly ?? PROFILE_DEFAULTS.interactiveOnly,
    timeoutSeconds: profile.timeoutSeconds ?? null,
    ttlSeconds: profile.ttlSeconds ?? null,
    maxConcurrent: {
      profile: caps?.profile ?? null,
      backend: caps?.backend ?? null,
      channel: caps?.channel ?? null,
      user: caps?.user ?? null,
    },
  };
}
