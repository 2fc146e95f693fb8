import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { ConfigError, type Issue } from '../../src/errors.js';
import {
  compareQuantities,
  defaultConfig,
  loadConfigFile,
  looksLikeSecretName,
  parseConfig,
  validateConfig,
  type SpawngateConfig,
} from '../../src/config/index.js';

const example = (name: string) => new URL(`../../examples/${name}`, import.meta.url).pathname;

function issues(value: unknown): Issue[] {
  const result = validateConfig(value);
  if (result.ok) throw new Error('expected the config to be rejected');
  return result.issues;
}

function expectIssue(value: unknown, path: string, message?: string | RegExp): void {
  const found = issues(value);
  const atPath = found.filter((i) => i.path === path);
  expect(atPath, `issues were: ${JSON.stringify(found)}`).not.toHaveLength(0);
  if (message !== undefined) expect(atPath.map((i) => i.message).join('\n')).toMatch(message);
}

/** A valid config with one kubernetes profile; tests patch the profile or backend. */
function k8s(profile: Record<string, unknown> = {}, backend: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    agents: {
      executionBackends: {
        k8s: { type: 'kubernetes', namespace: 'agents', profiles: { small: profile }, ...backend },
      },
    },
  };
}

const P = 'agents.executionBackends.k8s.profiles.small';

describe('examples', () => {
  it('loads the DESIGN.md example unchanged', async () => {
    const text = await readFile(example('design-example.json'), 'utf8');
    expect(text).toContain('"image": "…"');
    const config = await loadConfigFile(example('design-example.json'));
    expect(Object.keys(config.agents.executionBackends)).toEqual(['local', 'docker', 'k8s']);
    expect(config).toEqual(JSON.parse(text));
  });

  it('loads the full YAML and JSON examples, which say the same thing', async () => {
    const yaml = await loadConfigFile(example('spawngate.example.yaml'));
    const json = await loadConfigFile(example('spawngate.example.json'));
    expect(json).toEqual(yaml);
    const k8sBackend = yaml.agents.executionBackends.k8s;
    expect(k8sBackend?.type).toBe('kubernetes');
    expect(k8sBackend?.profiles?.['large-build']?.class).toBe('build');
    expect(yaml).toEqual(parseYaml(await readFile(example('spawngate.example.yaml'), 'utf8')));
  });

  it('accepts its own default config', () => {
    const config: SpawngateConfig = defaultConfig();
    expect(parseConfig(config)).toEqual(config);
    expect(defaultConfig()).not.toBe(defaultConfig());
  });
});

describe('types and unknown keys', () => {
  it('rejects wrong types with the path', () => {
    expectIssue({ agents: { executionBackends: { a: { type: 'process', maxConcurrent: '3' } } } }, 'agents.executionBackends.a.maxConcurrent', /expected number, received string/);
    expectIssue(k8s({ timeoutSeconds: 1.5 }), `${P}.timeoutSeconds`);
    expectIssue(k8s({ interactiveOnly: 'yes' }), `${P}.interactiveOnly`, /expected boolean/);
    expectIssue(k8s({ command: 'npx codex' }), `${P}.command`, /expected array, received string/);
    expectIssue(k8s({ tolerations: [{ key: 'a', operator: 'Exists' }, 'x'] }), `${P}.tolerations[1]`);
    expectIssue([], '(root)', /expected object, received array/);
    expectIssue({}, 'agents', /required/);
  });

  it('rejects an unknown backend type, naming the choices', () => {
    expectIssue({ agents: { executionBackends: { a: { type: 'lambda' } } } }, 'agents.executionBackends.a.type', /"process", "container", "kubernetes"/);
    expectIssue({ agents: { executionBackends: { a: {} } } }, 'agents.executionBackends.a.type', /required/);
  });

  it('rejects unknown keys at every depth, pointing at the key', () => {
    expectIssue({ agents: { executionBackends: {} }, extra: 1 }, 'extra', /unknown key/);
    expectIssue({ agents: { executionBackends: {}, executionBackend: {} } }, 'agents.executionBackend', /unknown key/);
    expectIssue(k8s({ resources: { requests: { cpu: '1', gpu: 1 } } }), `${P}.resources.requests.gpu`, /unknown key/);
    expectIssue(k8s({ egres: 'none' }), `${P}.egres`, /unknown key/);
    expectIssue(k8s({ env: { A: { secretRef: { name: 'a', key: 'b', namespace: 'x' } } } }), `${P}.env.A.secretRef.namespace`, /unknown key/);
    expectIssue({ agents: { executionBackends: {} }, spawngate: { store: { type: 'memory', url: 'x' } } }, 'spawngate.store.url', /unknown key/);
  });

  it('names the backend type a misplaced key belongs to', () => {
    expectIssue({ agents: { executionBackends: { local: { type: 'process', namespace: 'x' } } } }, 'agents.executionBackends.local.namespace', /only valid on kubernetes backends/);
    expectIssue({ agents: { executionBackends: { d: { type: 'kubernetes', namespace: 'x', allowedHostPaths: ['/x'] } } } }, 'agents.executionBackends.d.allowedHostPaths', /only valid on process or container backends/);
  });

  it('requires a namespace on kubernetes backends and checks its syntax', () => {
    expectIssue({ agents: { executionBackends: { k: { type: 'kubernetes' } } } }, 'agents.executionBackends.k.namespace', /required/);
    expectIssue({ agents: { executionBackends: { k: { type: 'kubernetes', namespace: 'Agents_1' } } } }, 'agents.executionBackends.k.namespace', /DNS-1123/);
  });

  it('rejects bad backend and profile names as keys', () => {
    expectIssue({ agents: { executionBackends: { 'bad/name': { type: 'process' } } } }, 'agents.executionBackends["bad/name"]', /invalid key/);
    expectIssue(k8s({}, { profiles: { '-x': {} } }), 'agents.executionBackends.k8s.profiles["-x"]', /invalid key/);
  });

  it('lists every fault, not just the first', () => {
    const found = issues(k8s({ egress: 'all', timeoutSeconds: 0, resources: { requests: { cpu: 'lots' } } }, { maxConcurrent: 0 }));
    expect(found.map((i) => i.path).sort()).toEqual(
      [`${P}.egress`, `${P}.timeoutSeconds`, `${P}.resources.requests.cpu`, 'agents.executionBackends.k8s.maxConcurrent'].sort(),
    );
  });

  it('throws a ConfigError whose message lists the faults one per line', () => {
    let caught: unknown;
    try {
      parseConfig(k8s({ egress: 'all', ttlSeconds: -1 }), 'my.yaml');
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    const err = caught as ConfigError;
    expect(err.code).toBe('CONFIG_INVALID');
    expect(err.issues.map((i) => i.path)).toEqual([`${P}.egress`, `${P}.ttlSeconds`]);
    expect(err.message).toContain('my.yaml');
    expect(err.message.split('\n').slice(1)).toEqual([`  ${P}.egress: must be one of: "none", "proxy", "open"`, `  ${P}.ttlSeconds: must be at least 1`]);
  });
});

describe('quantities', () => {
  it.each(['500m', '2', '0.5', '1Gi', '512Mi', '1G', '1e9', '.5', '1.', '100k', '1E', '3Ti'])('accepts %s', (q) => {
    expect(validateConfig(k8s({ resources: { requests: { cpu: q } } })).ok).toBe(true);
    expect(validateConfig(k8s({ resources: { limits: { 'ephemeral-storage': q === '500m' ? '500M' : q } } })).ok).toBe(true);
  });

  it.each(['1 GB', '-1', 'abc', '1.5.3', '', '1GB', '1e', '1ki', 'Gi', '1e999'])('rejects %j', (q) => {
    expectIssue(k8s({ resources: { requests: { cpu: q } } }), `${P}.resources.requests.cpu`, /Kubernetes quantity/);
    expectIssue(k8s({ resources: { limits: { memory: q } } }), `${P}.resources.limits.memory`);
  });

  it('rejects milli-bytes for memory, which are never meant', () => {
    expectIssue(k8s({ resources: { requests: { memory: '512m' } } }), `${P}.resources.requests.memory`, /did you mean "Mi"/);
  });

  it('rejects limits below requests, naming the limit', () => {
    expectIssue(k8s({ resources: { requests: { memory: '2Gi' }, limits: { memory: '1Gi' } } }), `${P}.resources.limits.memory`, 'limit 1Gi is less than request 2Gi');
    expectIssue(k8s({ resources: { requests: { cpu: '1' }, limits: { cpu: '999m' } } }), `${P}.resources.limits.cpu`);
    expectIssue(
      k8s({ resources: { requests: { 'ephemeral-storage': '1G' }, limits: { 'ephemeral-storage': '999999999' } } }),
      `${P}.resources.limits.ephemeral-storage`,
    );
    expect(validateConfig(k8s({ resources: { requests: { cpu: '0.5', memory: '1Gi' }, limits: { cpu: '500m', memory: '1073741824' } } })).ok).toBe(true);
  });

  it('still checks limits against requests when another quantity is broken', () => {
    const found = issues(k8s({ resources: { requests: { cpu: 'x', memory: '2Gi' }, limits: { memory: '1Gi' } } }));
    expect(found.map((i) => i.path).sort()).toEqual([`${P}.resources.limits.memory`, `${P}.resources.requests.cpu`]);
  });

  it('compares quantities exactly across suffixes', () => {
    expect(compareQuantities('1Gi', '1073741824')).toBe(0);
    expect(compareQuantities('1G', '1Gi')).toBe(-1);
    expect(compareQuantities('0.1', '100m')).toBe(0);
    expect(compareQuantities('1e3', '1k')).toBe(0);
    expect(compareQuantities('1.5Gi', '1536Mi')).toBe(0);
    expect(compareQuantities('250u', '1m')).toBe(-1);
    expect(compareQuantities('nope', '1')).toBeNull();
  });
});

describe('profile fields', () => {
  it('refuses inline values on secret-looking env names, whatever the case', () => {
    for (const name of ['GITHUB_TOKEN', 'db_password', 'OPENAI_API_KEY', 'Client_Secret', 'AWS_SECRET_ACCESS_KEY', 'SSH_PRIVATE_KEY', 'GOOGLE_CREDENTIALS']) {
      expectIssue(k8s({ env: { [name]: 'hunter2' } }), `${P}.env.${name}`, 'inline secret values are not allowed; use { secretRef: { name, key } }');
    }
    expect(validateConfig(k8s({ env: { GITHUB_TOKEN: { secretRef: { name: 'gh', key: 'token' } }, LOG_LEVEL: 'debug' } })).ok).toBe(true);
  });

  it('tells secret-looking names from innocent ones by words, not substrings', () => {
    for (const name of ['githubToken', 'MYTOKEN', 'BASIC_AUTH', 'session_cookie', 'AWS_ACCESS_KEY_ID', 'SIGNING_KEY', 'dbPassword', 'GH_PAT_TOKEN']) {
      expect(looksLikeSecretName(name), name).toBe(true);
    }
    for (const name of ['TOKENIZERS_PARALLELISM', 'MAX_TOKENS', 'PWD', 'GIT_AUTHOR_NAME', 'KEYCLOAK_URL', 'SORT_KEY', 'AUTHOR', 'LOG_LEVEL', 'SECRETS_DIR_MODE', 'GEMINI_DEFAULT_AUTH_TYPE', 'OPENAI_API_KEY_FILE', 'AUTH_TOKEN_URL']) {
      expect(looksLikeSecretName(name), name).toBe(false);
    }
    expect(validateConfig(k8s({ env: { TOKENIZERS_PARALLELISM: 'false', MAX_TOKENS: '4096' } })).ok).toBe(true);
  });

  it('refuses credential-shaped values under innocent names', () => {
    expectIssue(k8s({ env: { NOTES: 'ghp_abcdefghijklmnopqrstuvwxyz0123456789' } }), `${P}.env.NOTES`, /looks like a credential/);
  });

  it('checks env names and value shapes', () => {
    expectIssue(k8s({ env: { '1BAD': 'x' } }), `${P}.env["1BAD"]`, /invalid key/);
    expectIssue(k8s({ env: { A: 3 } }), `${P}.env.A`, /must be a string or \{ secretRef/);
    expectIssue(k8s({ env: { A: { secretRef: { name: 'Bad_Name', key: 'k' } } } }), `${P}.env.A.secretRef.name`);
  });

  it('checks node selectors and tolerations by Kubernetes rules', () => {
    expectIssue(k8s({ nodeSelector: { 'bad key!': 'x' } }), `${P}.nodeSelector["bad key!"]`, /label key/);
    expectIssue(k8s({ nodeSelector: { zone: 'not valid' } }), `${P}.nodeSelector.zone`, /label value/);
    expectIssue(k8s({ tolerations: [{ key: 'gpu', operator: 'Exists', value: 'x' }] }), `${P}.tolerations[0].value`, /empty when operator is "Exists"/);
    expectIssue(k8s({ tolerations: [{ operator: 'Equal', value: 'x' }] }), `${P}.tolerations[0].operator`, /"Exists" when key is empty/);
    expectIssue(k8s({ tolerations: [{ key: 'a', effect: 'NoSchedule', tolerationSeconds: 5 }] }), `${P}.tolerations[0].tolerationSeconds`);
    expectIssue(k8s({ tolerations: [{ key: 'a', effect: 'Sometimes' }] }), `${P}.tolerations[0].effect`);
    expect(validateConfig(k8s({ nodeSelector: { 'kubernetes.io/arch': 'amd64' }, tolerations: [{ operator: 'Exists' }, { key: '', operator: 'Exists' }] })).ok).toBe(true);
    expectIssue(k8s({ tolerations: [{ key: 'bad key', operator: 'Exists' }] }), `${P}.tolerations[0].key`, /label key/);
  });

  it('checks runtimeClassName, workspace, bounds', () => {
    expectIssue(k8s({ runtimeClassName: 'GVisor' }), `${P}.runtimeClassName`, /DNS-1123/);
    expectIssue(k8s({ workspace: { strategy: 'tmpfs' } }), `${P}.workspace.strategy`);
    expectIssue(k8s({ workspace: { strategy: 'ephemeral', sizeLimit: '20 Gi' } }), `${P}.workspace.sizeLimit`);
    expectIssue(k8s({ workspace: { strategy: 'none', path: '/x' } }), `${P}.workspace.path`, /unknown key/);
    expectIssue(k8s({ ttlSeconds: 604_801 }), `${P}.ttlSeconds`, /at most 604800/);
    expectIssue(k8s({ timeoutSeconds: 86_401 }), `${P}.timeoutSeconds`);
    expectIssue(k8s({ maxConcurrent: { user: 0 } }), `${P}.maxConcurrent.user`);
    expectIssue(k8s({ resources: { gpu: -1 } }), `${P}.resources.gpu`);
    expectIssue(k8s({ allowedAgents: ['codex', 'bad agent'] }), `${P}.allowedAgents[1]`);
    expectIssue(k8s({ class: 'huge' }), `${P}.class`);
  });

  it('allows hostPath workspaces only on container backends, under an allowed prefix', () => {
    const container = (path: string, allowedHostPaths?: string[]) => ({
      agents: { executionBackends: { d: { type: 'container', allowedHostPaths, profiles: { p: { workspace: { strategy: 'hostPath', path } } } } } },
    });
    expect(validateConfig(container('/srv/ws/a', ['/srv/ws'])).ok).toBe(true);
    expect(validateConfig(container('/srv/ws', ['/srv/ws/'])).ok).toBe(true);
    expectIssue(container('/srv/wsx', ['/srv/ws']), 'agents.executionBackends.d.profiles.p.workspace.path', /not under any of the backend's allowedHostPaths/);
    expectIssue(container('/srv/ws/a'), 'agents.executionBackends.d.profiles.p.workspace.path');
    expectIssue(container('relative/x', ['/srv']), 'agents.executionBackends.d.profiles.p.workspace.path', /absolute/);
    expectIssue(container('/srv/ws/../../etc', ['/srv/ws']), 'agents.executionBackends.d.profiles.p.workspace.path', /\.\./);
    expectIssue(k8s({ workspace: { strategy: 'hostPath', path: '/data' } }), `${P}.workspace.strategy`, /only allowed on process and container backends/);
  });
});

describe('references', () => {
  const two = (execution: unknown, extra: Record<string, unknown> = {}) => ({
    agents: {
      executionBackends: {
        local: { type: 'process' },
        k8s: { type: 'kubernetes', namespace: 'a', profiles: { small: {}, big: { allowedAgents: ['claude'] } }, ...extra },
      },
      execution,
    },
  });

  it('accepts references that exist', () => {
    const ok = validateConfig(
      two({
        default: { backend: 'k8s', profile: 'small' },
        agents: { codex: { backend: 'local' }, claude: { profile: 'big' } },
        bindings: [{ match: { channelKind: 'cron' }, backend: 'local', profile: 'default' }],
      }),
    );
    expect(ok).toEqual(expect.objectContaining({ ok: true }));
  });

  it('names the path of every dangling reference', () => {
    const found = issues(
      two(
        {
          default: { backend: 'nope' },
          agents: { codex: { backend: 'k8s', profile: 'huge' }, gemini: { profile: 'ghost' } },
          bindings: [{ match: { userId: 'u' }, backend: 'k8s' }, { match: { role: 'x' }, backend: 'local', profile: 'small' }],
        },
        { defaultProfile: 'medium' },
      ),
    );
    expect(found).toEqual(
      expect.arrayContaining([
        { path: 'agents.executionBackends.k8s.defaultProfile', message: 'profile "medium" is not declared in backend "k8s" (declared: small, big)' },
        { path: 'agents.execution.default.backend', message: 'unknown backend "nope" (declared: local, k8s)' },
        { path: 'agents.execution.agents.codex.profile', message: expect.stringContaining('profile "huge" is not declared in backend "k8s"') as string },
        { path: 'agents.execution.agents.gemini.profile', message: 'profile "ghost" is not declared by any backend' },
        { path: 'agents.execution.bindings[1].profile', message: expect.stringContaining('not declared in backend "local"') as string },
      ]),
    );
    expect(found).toHaveLength(5);
  });

  it('rejects an agent default pointing at a profile that refuses the agent', () => {
    expectIssue(two({ agents: { codex: { backend: 'k8s', profile: 'big' } } }), 'agents.execution.agents.codex.profile', /does not allow agent "codex"/);
  });

  it('checks references even when other parts of the file are broken', () => {
    const found = issues(two({ default: { backend: 'nope' } }, { maxConcurrent: 'x' }));
    expect(found.map((i) => i.path).sort()).toEqual(['agents.execution.default.backend', 'agents.executionBackends.k8s.maxConcurrent']);
  });

  it('requires bindings to match on something and to select something', () => {
    expectIssue(two({ bindings: [{ match: {}, backend: 'local' }] }), 'agents.execution.bindings[0].match', /at least one/);
    expectIssue(two({ bindings: [{ match: { channelKind: 'cron' } }] }), 'agents.execution.bindings[0]', /backend or profile/);
    expectIssue(two({ agents: { codex: {} } }), 'agents.execution.agents.codex', /backend or profile/);
  });
});

describe('abuse limits', () => {
  it('rejects huge strings with the path', () => {
    expectIssue(k8s({ image: 'x'.repeat(513) }), `${P}.image`, /at most 512 characters/);
    expectIssue(k8s({ args: ['a', 'y'.repeat(5000)] }), `${P}.args[1]`, /at most 4096 characters/);
    expectIssue({ agents: { executionBackends: { ['b'.repeat(64)]: { type: 'process' } } } }, `agents.executionBackends.${'b'.repeat(64)}`, /invalid key/);
  });

  it('rejects oversized maps and lists', () => {
    const env = Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`V${i}`, 'x']));
    expectIssue(k8s({ env }), `${P}.env`, /at most 256 environment variables/);
    const backends = Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`b${i}`, { type: 'process' }]));
    expectIssue({ agents: { executionBackends: backends } }, 'agents.executionBackends', /at most 256 backends/);
    expectIssue(k8s({ command: Array.from({ length: 257 }, () => 'x') }), `${P}.command`, /at most 256 items/);
  });

  it('does not let a "__proto__" key through', () => {
    const raw = JSON.parse('{"agents":{"executionBackends":{"k":{"type":"kubernetes","namespace":"a","profiles":{"p":{"env":{"__proto__":"x"}}}}}}}') as unknown;
    expect(issues(raw)).toEqual([{ path: 'agents.executionBackends.k.profiles.p.env.__proto__', message: 'reserved key' }]);
  });
});

describe('spawngate section', () => {
  const withSection = (spawngate: unknown) => ({ agents: { executionBackends: {} }, spawngate });
  it('accepts the documented shapes', () => {
    expect(validateConfig(withSection({ bundle: 'bundles/x.tar.gz', decisionLog: 'stdout', sweepIntervalSeconds: 30, store: { type: 'memory' } })).ok).toBe(true);
    expect(validateConfig(withSection({ decisionLog: 'off', store: { type: 'redis', url: 'redis://127.0.0.1:6379/0' } })).ok).toBe(true);
  });
  it('rejects bad store settings', () => {
    expectIssue(withSection({ store: { type: 'redis' } }), 'spawngate.store.url', /required/);
    expectIssue(withSection({ store: { type: 'redis', url: 'http://x' } }), 'spawngate.store.url', /redis:\/\//);
    expectIssue(withSection({ store: { type: 'redis', url: 'redis://:pw@127.0.0.1:6379' } }), 'spawngate.store.url', /passwordEnv/);
    expectIssue(withSection({ sweepIntervalSeconds: 0 }), 'spawngate.sweepIntervalSeconds');
  });
});

describe('spawngate.policyData', () => {
  const withData = (policyData: unknown) => ({ agents: { executionBackends: {} }, spawngate: { policyData } });
  const D = 'spawngate.policyData';

  it('accepts partial overrides, null where the policy reads null as "none", and every documented key', () => {
    expect(validateConfig(withData({})).ok).toBe(true);
    expect(validateConfig(withData({ concurrency: { user: 1 } })).ok).toBe(true);
    expect(validateConfig(withData({ rate: { kinds: { cron: { user: { perMinute: 0.5, burst: 2 } } } } })).ok).toBe(true);
    const everything = {
      maxDepth: 0,
      agents: { allow: null, deny: ['gemini'] },
      channels: { nonInteractiveKinds: ['cron', 'api', 'openclaw:cron'], untrustedKinds: [] },
      concurrency: { total: null, user: 0, channel: 8, roles: { admin: { user: null }, 'ops team': { channel: 2 }, empty: {} } },
      rate: {
        interactive: { user: null },
        nonInteractive: { user: { perMinute: 6, burst: 3 }, channel: null },
        kinds: { cron: { user: { perMinute: 2, burst: 1 }, channel: null }, heartbeat: {} },
      },
      ttl: { defaultSeconds: 60, maxSeconds: null, maxNonInteractiveSeconds: 600, maxByKind: { cron: null, heartbeat: 900 } },
      buildPlacement: { keywords: ['pytest'], phrases: ['run tests'], ignoredWords: [], commands: { make: ['test'], just: [] } },
    };
    const result = validateConfig(withData(everything));
    expect(result.ok, JSON.stringify(result)).toBe(true);
    expect(validateConfig(withData({ agents: { allow: ['codex', 'echo'] } })).ok).toBe(true);
  });

  it('names the JSON path of an unknown key, at every level', () => {
    expectIssue(withData({ maxdepth: 2 }), `${D}.maxdepth`, /unknown key/);
    expectIssue(withData({ concurrency: { users: 1 } }), `${D}.concurrency.users`, /unknown key/);
    expectIssue(withData({ concurrency: { roles: { admin: { session: 1 } } } }), `${D}.concurrency.roles.admin.session`, /unknown key/);
    expectIssue(withData({ rate: { kinds: { cron: { usr: { perMinute: 1, burst: 1 } } } } }), `${D}.rate.kinds.cron.usr`, /unknown key/);
    expectIssue(withData({ rate: { nonInteractive: { user: { perMinute: 1, burst: 1, refill: 2 } } } }), `${D}.rate.nonInteractive.user.refill`, /unknown key/);
    expectIssue(withData({ ttl: { maxByKind: {}, max: 1 } }), `${D}.ttl.max`, /unknown key/);
    expectIssue(withData({ buildPlacement: { words: [] } }), `${D}.buildPlacement.words`, /unknown key/);
  });

  it('rejects the types and ranges policies/config.rego rejects, at their paths', () => {
    expectIssue(withData({ maxDepth: -1 }), `${D}.maxDepth`, /at least 0/);
    expectIssue(withData({ maxDepth: 2.5 }), `${D}.maxDepth`);
    expectIssue(withData({ maxDepth: null }), `${D}.maxDepth`);
    expectIssue(withData({ agents: { deny: null } }), `${D}.agents.deny`);
    expectIssue(withData({ agents: { allow: 'codex' } }), `${D}.agents.allow`);
    expectIssue(withData({ concurrency: { user: '4' } }), `${D}.concurrency.user`, /expected number, received string/);
    expectIssue(withData({ concurrency: { total: -1 } }), `${D}.concurrency.total`, /at least 0/);
    expectIssue(withData({ concurrency: { roles: { admin: 16 } } }), `${D}.concurrency.roles.admin`);
    expectIssue(withData({ concurrency: { roles: { admin: { user: 1.5 } } } }), `${D}.concurrency.roles.admin.user`);
    expectIssue(withData({ rate: { interactive: null } }), `${D}.rate.interactive`);
    expectIssue(withData({ rate: { kinds: { cron: null } } }), `${D}.rate.kinds.cron`);
    expectIssue(withData({ rate: { nonInteractive: { user: { perMinute: 0, burst: 1 } } } }), `${D}.rate.nonInteractive.user.perMinute`, /greater than 0/);
    expectIssue(withData({ rate: { nonInteractive: { user: { perMinute: 1, burst: 0 } } } }), `${D}.rate.nonInteractive.user.burst`, /at least 1/);
    expectIssue(withData({ rate: { nonInteractive: { user: { perMinute: 1, burst: 1.5 } } } }), `${D}.rate.nonInteractive.user.burst`);
    expectIssue(withData({ rate: { kinds: { cron: { user: { perMinute: 3 } } } } }), `${D}.rate.kinds.cron.user.burst`, /required/);
    expectIssue(withData({ ttl: { defaultSeconds: null } }), `${D}.ttl.defaultSeconds`);
    expectIssue(withData({ ttl: { defaultSeconds: 0 } }), `${D}.ttl.defaultSeconds`, /at least 1/);
    expectIssue(withData({ ttl: { maxSeconds: 0 } }), `${D}.ttl.maxSeconds`, /at least 1/);
    expectIssue(withData({ ttl: { maxByKind: { cron: 0 } } }), `${D}.ttl.maxByKind.cron`, /at least 1/);
    expectIssue(withData({ buildPlacement: { keywords: ['pytest', 7] } }), `${D}.buildPlacement.keywords[1]`);
    expectIssue(withData({ buildPlacement: { commands: { make: 'test' } } }), `${D}.buildPlacement.commands.make`);
    expectIssue(withData({ channels: { nonInteractiveKinds: 'cron' } }), `${D}.channels.nonInteractiveKinds`);
  });

  it('refuses channel kinds that no request can carry (a "/" would make rate keys ambiguous)', () => {
    expectIssue(withData({ channels: { untrustedKinds: ['web/hook'] } }), `${D}.channels.untrustedKinds[0]`, /channel kind/);
    expectIssue(withData({ rate: { kinds: { 'a/b': {} } } }), `${D}.rate.kinds["a/b"]`, /invalid key "a\/b": must be a channel kind/);
    expectIssue(withData({ ttl: { maxByKind: { '': 60 } } }), `${D}.ttl.maxByKind[""]`, /invalid key "": must not be empty/);
  });

  it('lists every fault at once and reports "__proto__" keys', () => {
    const found = issues(withData({ maxDepth: -1, concurrency: { user: 'x' }, rate: { kinds: { cron: { user: { perMinute: 1 } } } } }));
    expect(found.map((i) => i.path)).toEqual(expect.arrayContaining([`${D}.maxDepth`, `${D}.concurrency.user`, `${D}.rate.kinds.cron.user.burst`]));
    const raw = JSON.parse('{"agents":{"executionBackends":{}},"spawngate":{"policyData":{"rate":{"kinds":{"__proto__":{}}}}}}') as unknown;
    expect(issues(raw)).toContainEqual({ path: `${D}.rate.kinds.__proto__`, message: 'reserved key' });
  });
});
