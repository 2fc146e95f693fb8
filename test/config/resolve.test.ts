import { describe, expect, it } from 'vitest';
import type { CatalogProfile, SelectionSource } from '../../src/admission/types.js';
import {
  buildCatalog,
  defaultConfig,
  defaultProfileOf,
  findProfile,
  loadConfigFile,
  parseConfig,
  resolveSelection,
  type SelectionContext,
} from '../../src/config/index.js';

const config = parseConfig({
  agents: {
    executionBackends: {
      local: { type: 'process' },
      k8s: { type: 'kubernetes', namespace: 'agents', defaultProfile: 'small', profiles: { 'large-build': { class: 'build' }, small: {}, gpu: {} } },
      docker: { type: 'container', profiles: { a: {}, b: {} } },
    },
    execution: {
      default: { backend: 'k8s' },
      agents: { claude: { backend: 'docker' }, gemini: { profile: 'large-build' }, codex: { backend: 'k8s', profile: 'large-build' } },
      bindings: [
        { match: { channelKind: 'cron' }, backend: 'k8s', profile: 'small' },
        { match: { role: 'admin', channelKind: 'telegram' }, backend: 'docker', profile: 'b' },
        { match: { userId: 'u9' }, profile: 'gpu' },
        { match: { channelId: 'ops' }, backend: 'local' },
      ],
    },
  },
});

function ctx(agentId: string, options: Partial<{ execution: SelectionContext['execution']; kind: string; channel: string; user: string; roles: string[] }> = {}): SelectionContext {
  return {
    agentId,
    execution: options.execution ?? null,
    channel: { id: options.channel ?? 'c1', kind: options.kind ?? 'telegram' },
    user: { id: options.user ?? 'u1', roles: options.roles ?? [] },
  };
}

type Row = [string, SelectionContext, string | null, string | null, SelectionSource];

describe('resolveSelection', () => {
  const rows: Row[] = [
    ['global default with the backend default profile', ctx('opencode'), 'k8s', 'small', 'global'],
    ['explicit backend gets its default profile (first declared)', ctx('opencode', { execution: { backend: 'docker' } }), 'docker', 'a', 'explicit'],
    ['explicit backend does not inherit a lower layer profile', ctx('codex', { execution: { backend: 'k8s' } }), 'k8s', 'small', 'explicit'],
    ['explicit profile alone keeps the backend from below', ctx('opencode', { execution: { profile: 'gpu' } }), 'k8s', 'gpu', 'explicit'],
    ['explicit profile-less backend gets "default"', ctx('opencode', { execution: { backend: 'local' } }), 'local', 'default', 'explicit'],
    ['explicit both', ctx('opencode', { execution: { backend: 'docker', profile: 'b' } }), 'docker', 'b', 'explicit'],
    ['explicit nulls count as not asked', ctx('opencode', { execution: { backend: null, profile: null } }), 'k8s', 'small', 'global'],
    ['binding beats the agent default', ctx('codex', { kind: 'cron' }), 'k8s', 'small', 'binding'],
    ['explicit beats a binding', ctx('codex', { kind: 'cron', execution: { profile: 'gpu' } }), 'k8s', 'gpu', 'explicit'],
    ['agent default', ctx('codex'), 'k8s', 'large-build', 'agent'],
    ['agent default backend only', ctx('claude'), 'docker', 'a', 'agent'],
    ['agent default profile only, backend from global', ctx('gemini'), 'k8s', 'large-build', 'agent'],
    ['binding needs every match field', ctx('opencode', { roles: ['admin'], kind: 'discord' }), 'k8s', 'small', 'global'],
    ['binding on role and kind', ctx('codex', { roles: ['member', 'admin'] }), 'docker', 'b', 'binding'],
    ['bindings are tried in order', ctx('opencode', { kind: 'cron', user: 'u9' }), 'k8s', 'small', 'binding'],
    ['binding profile only, backend from global', ctx('opencode', { user: 'u9' }), 'k8s', 'gpu', 'binding'],
    ['binding profile over an agent backend (fields are independent)', ctx('claude', { user: 'u9' }), 'docker', 'gpu', 'binding'],
    ['binding on channel id', ctx('opencode', { channel: 'ops' }), 'local', 'default', 'binding'],
    ['unknown explicit backend passes through for the policy', ctx('opencode', { execution: { backend: 'nope' } }), 'nope', null, 'explicit'],
    ['unknown explicit profile passes through', ctx('opencode', { execution: { profile: 'huge' } }), 'k8s', 'huge', 'explicit'],
    ['agent ids never reach Object.prototype', ctx('constructor'), 'k8s', 'small', 'global'],
  ];

  it.each(rows)('%s', (_name, context, backend, profile, source) => {
    expect(resolveSelection(config, context)).toEqual({ backend, profile, source });
  });

  it('falls back to the only backend, then to nothing', () => {
    const single = parseConfig({ agents: { executionBackends: { k: { type: 'kubernetes', namespace: 'a', profiles: { p: {}, q: {} } } } } });
    expect(resolveSelection(single, ctx('codex'))).toEqual({ backend: 'k', profile: 'p', source: 'backend_default' });
    expect(resolveSelection(single, ctx('codex', { execution: { profile: 'q' } }))).toEqual({ backend: 'k', profile: 'q', source: 'explicit' });

    const two = parseConfig({ agents: { executionBackends: { a: { type: 'process' }, b: { type: 'container', profiles: { big: {} } } } } });
    expect(resolveSelection(two, ctx('codex'))).toEqual({ backend: null, profile: null, source: 'none' });
    // A profile only one backend declares identifies it.
    expect(resolveSelection(two, ctx('codex', { execution: { profile: 'big' } }))).toEqual({ backend: 'b', profile: 'big', source: 'explicit' });
    expect(resolveSelection(two, ctx('codex', { execution: { profile: 'nope' } }))).toEqual({ backend: null, profile: 'nope', source: 'explicit' });
  });

  it('resolves the default config to local/default', () => {
    expect(resolveSelection(defaultConfig(), ctx('echo'))).toEqual({ backend: 'local', profile: 'default', source: 'global' });
  });
});

describe('profiles', () => {
  it('picks the default profile: declared default, else first, else "default"', () => {
    expect(defaultProfileOf({ type: 'process' })).toBe('default');
    expect(defaultProfileOf({ type: 'process', profiles: {} })).toBe('default');
    expect(defaultProfileOf({ type: 'container', profiles: { x: {}, y: {} } })).toBe('x');
    expect(defaultProfileOf({ type: 'container', profiles: { x: {}, y: {} }, defaultProfile: 'y' })).toBe('y');
  });

  it('finds configured and implicit profiles without touching the prototype', () => {
    expect(findProfile(config, 'k8s', 'large-build')).toEqual({ class: 'build' });
    expect(findProfile(config, 'local', 'default')).toEqual({});
    expect(findProfile(config, 'local', 'other')).toBeUndefined();
    expect(findProfile(config, 'k8s', 'toString')).toBeUndefined();
    expect(findProfile(config, 'constructor', 'x')).toBeUndefined();
  });
});

describe('buildCatalog', () => {
  const defaults: CatalogProfile = {
    class: 'standard',
    resources: { requests: { cpu: null, memory: null }, limits: { cpu: null, memory: null }, gpu: 0 },
    egress: 'none',
    egressAllow: [],
    allowedAgents: null,
    interactiveOnly: false,
    timeoutSeconds: null,
    ttlSeconds: null,
    maxConcurrent: { profile: null, backend: null, channel: null, user: null },
  };

  it('turns the DESIGN.md example into the policy catalog', async () => {
    const catalog = buildCatalog(await loadConfigFile(new URL('../../examples/design-example.json', import.meta.url).pathname));
    expect(catalog).toEqual({
      backends: {
        local: { type: 'process', namespace: null, defaultProfile: 'default', maxConcurrent: null, profiles: { default: defaults } },
        docker: { type: 'container', namespace: null, defaultProfile: 'default', maxConcurrent: null, profiles: { default: defaults } },
        k8s: {
          type: 'kubernetes',
          namespace: 'openclaw-agents',
          defaultProfile: 'small',
          maxConcurrent: null,
          profiles: {
            small: { ...defaults, resources: { requests: { cpu: '500m', memory: '1Gi' }, limits: { cpu: null, memory: '2Gi' }, gpu: 0 } },
          },
        },
      },
    });
  });

  it('carries every policy-relevant field of a full profile', async () => {
    const catalog = buildCatalog(await loadConfigFile(new URL('../../examples/spawngate.example.yaml', import.meta.url).pathname));
    const k8s = catalog.backends.k8s;
    expect(k8s?.maxConcurrent).toBe(50);
    expect(k8s?.profiles['large-build']).toEqual({
      class: 'build',
      resources: { requests: { cpu: '2', memory: '4Gi' }, limits: { cpu: '4', memory: '8Gi' }, gpu: 0 },
      egress: 'proxy',
      egressAllow: [],
      allowedAgents: ['codex', 'claude'],
      interactiveOnly: false,
      timeoutSeconds: 7200,
      ttlSeconds: 7200,
      maxConcurrent: { profile: 2, backend: null, channel: null, user: 1 },
    });
    expect(k8s?.profiles.gpu?.resources.gpu).toBe(1);
    expect(k8s?.profiles.gpu?.interactiveOnly).toBe(true);
    expect(catalog.backends.docker?.defaultProfile).toBe('standard');
  });

  it('does not share arrays with the config', () => {
    const cfg = parseConfig({ agents: { executionBackends: { a: { type: 'process', profiles: { p: { allowedAgents: ['x'] } } } } } });
    const catalog = buildCatalog(cfg);
    catalog.backends.a?.profiles.p?.allowedAgents?.push('y');
    expect(cfg.agents.executionBackends.a?.profiles?.p?.allowedAgents).toEqual(['x']);
  });
});
