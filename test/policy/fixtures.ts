import type { AdmissionInput, CatalogProfile } from '../../src/admission/types.js';

/** Same catalog as policies/fixtures_test.rego, so Rego and Node tests read alike. */
export const smallProfile: CatalogProfile = {
  class: 'standard',
  resources: { requests: { cpu: '500m', memory: '1Gi' }, limits: { cpu: null, memory: '2Gi' }, gpu: 0 },
  egress: 'proxy',
  egressAllow: ['api.openai.com'],
  allowedAgents: null,
  interactiveOnly: false,
  timeoutSeconds: null,
  ttlSeconds: null,
  maxConcurrent: { profile: 10, backend: null, channel: 3, user: 2 },
};

export const buildProfile: CatalogProfile = {
  class: 'build',
  resources: { requests: { cpu: '4', memory: '8Gi' }, limits: { cpu: '8', memory: '16Gi' }, gpu: 0 },
  egress: 'open',
  egressAllow: [],
  allowedAgents: ['codex', 'claude'],
  interactiveOnly: false,
  timeoutSeconds: 3600,
  ttlSeconds: 7200,
  maxConcurrent: { profile: 2, backend: null, channel: null, user: 1 },
};

export const baseInput: AdmissionInput = {
  request: { runtime: 'acp', agentId: 'codex', execution: null, task: 'fix the typo in README.md', label: null, cwd: null, model: null, resumeSessionId: null, envNames: [], waitSeconds: 0 },
  caller: {
    sessionKey: 'agent:main:main',
    parentSessionKey: null,
    rootSessionKey: 'agent:main:main',
    depth: 0,
    channel: { id: 'tg-1', kind: 'telegram', interactive: true },
    user: { id: 'alice', roles: [] },
  },
  resolved: { backend: 'k8s', profile: null, source: 'global' },
  catalog: {
    backends: {
      k8s: {
        type: 'kubernetes',
        namespace: 'openclaw-agents',
        defaultProfile: 'small',
        maxConcurrent: 20,
        profiles: { small: smallProfile, build: buildProfile },
      },
      local: {
        type: 'process',
        namespace: null,
        defaultProfile: null,
        maxConcurrent: null,
        profiles: { default: { ...smallProfile, egress: 'open', maxConcurrent: { profile: null, backend: null, channel: null, user: null } } },
      },
    },
  },
  usage: {
    total: 0,
    user: 0,
    channel: 0,
    backends: {},
    profiles: {},
    userProfiles: {},
    channelProfiles: {},
    children: 0,
    recent: { windowSeconds: 60, user: 0, channel: 0 },
  },
  now: '2026-01-01T00:00:00Z',
};

type DeepPartial<T> = T extends (infer U)[] ? U[] : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> | null } : T;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Deep merge like Rego's object.union: objects merge, everything else (arrays, null) replaces. */
export function merge<T>(base: T, patch: unknown): T {
  if (!isPlainObject(base) || !isPlainObject(patch)) return structuredClone(patch) as T;
  const out: Record<string, unknown> = { ...structuredClone(base) };
  for (const [key, value] of Object.entries(patch)) out[key] = key in out ? merge(out[key], value) : structuredClone(value);
  return out as T;
}

export function input(patch: DeepPartial<AdmissionInput> = {}): AdmissionInput {
  return merge(baseInput, patch);
}

export const cronChannel = { id: 'cron-nightly', kind: 'cron', interactive: false };
export const webhookChannel = { id: 'hook-1', kind: 'webhook', interactive: false };

/** Inputs that together reach every rule; used to compare evaluators against each other. */
export const coverageInputs: Record<string, AdmissionInput> = {
  plain: input(),
  build: input({ request: { task: 'please run the full test suite' } }),
  explicitSmall: input({ request: { task: 'npm test', execution: { backend: 'k8s', profile: 'small', egress: null } }, resolved: { profile: 'small', source: 'explicit' } }),
  webhook: input({ caller: { channel: webhookChannel } }),
  cronBuild: input({ caller: { channel: cronChannel }, request: { task: 'cargo build' } }),
  requestEgress: input({ request: { execution: { backend: null, profile: null, egress: 'none' } } }),
  admin: input({ caller: { user: { id: 'root', roles: ['admin'] } } }),
  noBackend: input({ resolved: { backend: null } }),
  unknownBackend: input({ resolved: { backend: 'gpu-farm' } }),
  unknownProfile: input({ resolved: { profile: 'huge' } }),
  noDefaultProfile: input({ resolved: { backend: 'local' } }),
  agentNotAllowed: input({ request: { agentId: 'gemini' }, resolved: { profile: 'build' } }),
  interactiveOnly: input({ caller: { channel: cronChannel }, catalog: { backends: { k8s: { profiles: { small: { interactiveOnly: true } } } } } }),
  deep: input({ caller: { depth: 3 } }),
  everythingFull: input({
    caller: { depth: 9 },
    usage: {
      total: 64,
      user: 4,
      channel: 8,
      backends: { k8s: 20 },
      profiles: { 'k8s/small': 10 },
      userProfiles: { 'k8s/small': 2 },
      channelProfiles: { 'k8s/small': 3 },
    },
  }),
  ttlCapped: input({ catalog: { backends: { k8s: { profiles: { small: { ttlSeconds: 99999 } } } } } }),
};
