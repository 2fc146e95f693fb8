import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPolicyEngine, withPolicyData, type PolicyBundle, type PolicyEngine } from '../../src/admission/engine.js';
import { createAdmission, SHIPPED_BUNDLE, type Admission } from '../../src/admission/gate.js';
import { readBundle } from '../../src/admission/bundle.js';
import { runDoctor } from '../../src/cli/commands/doctor.js';
import { buildBundle } from '../../src/cli/policy-tool.js';
import { parseConfig } from '../../src/config/index.js';
import { cronChannel, input } from '../policy/fixtures.js';

/** `spawngate.policyData`: overrides of the bundle's data.spawngate.admission.config, merged by the engine at every load. */

type Config = Record<string, unknown>;

let shipped: PolicyBundle;
beforeAll(async () => {
  shipped = await readBundle(SHIPPED_BUNDLE);
});

/** The shipped bundle with its config document edited (a deep copy; the shipped one stays as it is). */
function shippedWith(revision: string, edit: (config: Config) => void): PolicyBundle {
  const data = structuredClone(shipped.data) as { spawngate: { admission: { config: Config } } };
  edit(data.spawngate.admission.config);
  return { ...shipped, data, revision };
}

const engines: PolicyEngine[] = [];
const gates: Admission[] = [];
afterAll(async () => {
  for (const e of engines) e.close();
  for (const g of gates) await g.close();
});

async function engine(options: Omit<Parameters<typeof createPolicyEngine>[0], 'readBundle'> & { readBundle?: (path: string) => Promise<PolicyBundle> }): Promise<PolicyEngine> {
  const e = await createPolicyEngine({ readBundle, ...options });
  engines.push(e);
  return e;
}

const backends = { agents: { executionBackends: { l: { type: 'process' } } } };

async function gate(policyData?: unknown): Promise<Admission> {
  const config = policyData === undefined ? backends : { ...backends, spawngate: { policyData } };
  const g = await createAdmission({ config, bundle: SHIPPED_BUNDLE, watchBundle: false, decisionLog: false });
  gates.push(g);
  return g;
}

const caller = (user: string, channel: { id: string; kind: string }) => ({ sessionKey: `s:${user}`, depth: 0, channel, user: { id: user, roles: [] } });
const codes = (reasons: readonly { code: string }[]) => reasons.map((r) => r.code);

describe('withPolicyData', () => {
  const bundleData = {
    other: { kept: true },
    spawngate: {
      admission: {
        config: {
          maxDepth: 3,
          channels: { nonInteractiveKinds: ['cron', 'api'], untrustedKinds: ['webhook'] },
          concurrency: { total: 64, user: 4, roles: { admin: { user: 16 } } },
          rate: { kinds: { cron: { user: { perMinute: 2, burst: 1 }, channel: { perMinute: 2, burst: 1 } } } },
        },
      },
    },
  };

  it('merges objects key by key; lists, scalars and null replace; nothing else changes', () => {
    const before = structuredClone(bundleData);
    const merged = withPolicyData(bundleData, {
      channels: { nonInteractiveKinds: ['heartbeat'] },
      concurrency: { user: null, roles: { intern: { user: 1 } } },
      rate: { kinds: { cron: { user: { perMinute: 6, burst: 3 } }, api: { channel: null } } },
      ttl: { defaultSeconds: 60 },
    });
    expect(merged).toEqual({
      other: { kept: true },
      spawngate: {
        admission: {
          config: {
            maxDepth: 3,
            channels: { nonInteractiveKinds: ['heartbeat'], untrustedKinds: ['webhook'] },
            concurrency: { total: 64, user: null, roles: { admin: { user: 16 }, intern: { user: 1 } } },
            rate: { kinds: { cron: { user: { perMinute: 6, burst: 3 }, channel: { perMinute: 2, burst: 1 } }, api: { channel: null } } },
            ttl: { defaultSeconds: 60 },
          },
        },
      },
    });
    expect(bundleData).toEqual(before);
  });

  it('returns the bundle data itself without an override, and builds the config when the bundle has none', () => {
    expect(withPolicyData(bundleData, undefined)).toBe(bundleData);
    expect(withPolicyData(bundleData, {})).toBe(bundleData);
    expect(withPolicyData({}, { maxDepth: 1 })).toEqual({ spawngate: { admission: { config: { maxDepth: 1 } } } });
    expect(withPolicyData(null, { maxDepth: 1 })).toEqual({ spawngate: { admission: { config: { maxDepth: 1 } } } });
  });

  it('keeps a "__proto__" key an ordinary key instead of setting a prototype', () => {
    const override = JSON.parse('{"concurrency":{"roles":{"__proto__":{"user":1}}}}') as Config;
    const merged = withPolicyData(bundleData, override) as { spawngate: { admission: { config: { concurrency: { roles: object } } } } };
    const roles = merged.spawngate.admission.config.concurrency.roles;
    expect(Object.getPrototypeOf(roles)).toBe(Object.prototype);
    expect(Object.keys(roles)).toEqual(['admin', '__proto__']);
    expect(({} as Record<string, unknown>).user).toBeUndefined();
  });
});

describe('policy engine with policyData', () => {
  it('decides with the merged config: the shipped bundle with maxDepth 1 and no cap per user', async () => {
    const e = await engine({ source: { path: SHIPPED_BUNDLE }, policyData: { maxDepth: 1, concurrency: { user: null } } });
    expect(e.configProblems).toEqual([]);
    expect(codes(e.evaluate(input({ caller: { depth: 1 } })).decision.reasons)).toEqual(['depth_exceeded']);
    const plain = e.evaluate(input()).decision;
    expect(plain.allow).toBe(true);
    expect(plain.limits.concurrency.map((l) => l.scope)).not.toContain('user');
    expect(plain.limits.concurrency).toContainEqual({ scope: 'total', key: '*', max: 64 }); // from the bundle
  });

  it('checks the merged config at load: one the policy rejects denies every spawn with policy_config_invalid', async () => {
    // zod refuses these in a config file; a library caller can still hand them to the engine.
    const e = await engine({ source: { path: SHIPPED_BUNDLE }, policyData: { concurrency: { roles: { admin: { session: 1 } } }, rate: { kinds: { cron: null } } } });
    expect(e.revision).toBe(shipped.revision); // loaded, and failing closed
    expect(e.configProblems).toEqual([
      'policy configuration is invalid: concurrency.roles.admin may only set user and channel',
      'policy configuration is invalid: rate.kinds.cron must be an object',
    ]);
    const { decision } = e.evaluate(input());
    expect(decision.allow).toBe(false);
    expect(codes(decision.reasons)).toEqual(['policy_config_invalid', 'policy_config_invalid']);
    // the gate's path (catalog in runtime data) denies alike: the check was not skipped
    const { catalog: _catalog, ...rest } = input();
    const e2 = await engine({ source: { path: SHIPPED_BUNDLE }, policyData: { rate: { kinds: { cron: null } } }, runtimeData: { catalog: input().catalog } });
    expect(codes(e2.evaluateJsonWithoutCatalog(JSON.stringify(rest)).decision.reasons)).toEqual(['policy_config_invalid']);
  });

  it('can complete a bundle whose own config is incomplete, and cannot hide a gap it does not fill', async () => {
    const gap = shippedWith('no-default-ttl', (config) => {
      delete (config.ttl as Config).defaultSeconds;
    });
    const broken = await engine({ source: { bundle: gap } });
    expect(broken.configProblems).toEqual(['policy configuration is invalid: ttl.defaultSeconds is missing']);
    const unrelated = await engine({ source: { bundle: gap }, policyData: { ttl: { maxSeconds: 600 } } });
    expect(codes(unrelated.evaluate(input()).decision.reasons)).toEqual(['policy_config_invalid']);
    const filled = await engine({ source: { bundle: gap }, policyData: { ttl: { defaultSeconds: 120 } } });
    expect(filled.configProblems).toEqual([]);
    expect(filled.evaluate(input()).decision).toMatchObject({ allow: true, ttlSeconds: 120 });
  });

  it('merges onto every reloaded bundle: the new bundle\'s data serves, with the override on top', async () => {
    const bundles = [shipped, shippedWith('reloaded', (config) => {
      config.maxDepth = 1;
      (config.concurrency as Config).user = 9;
    }), shippedWith('reloaded-broken', (config) => {
      delete config.agents;
    })];
    let served = 0;
    const e = await engine({ source: { path: 'bundle.tar.gz' }, readBundle: () => Promise.resolve(bundles[served++]!), policyData: { concurrency: { user: 1 } } });
    const userCap = () => e.evaluate(input()).decision.limits.concurrency.find((l) => l.scope === 'user')?.max;
    expect(userCap()).toBe(1);
    expect(e.evaluate(input({ caller: { depth: 1 } })).decision.allow).toBe(true);

    expect(await e.reload()).toEqual({ ok: true, revision: 'reloaded' });
    expect(userCap()).toBe(1); // the override still beats the new bundle's 9
    expect(codes(e.evaluate(input({ caller: { depth: 1 } })).decision.reasons)).toEqual(['depth_exceeded']); // the new bundle's maxDepth

    expect(await e.reload()).toEqual({ ok: true, revision: 'reloaded-broken' });
    expect(e.configProblems).toEqual([
      'policy configuration is invalid: agents.allow is missing',
      'policy configuration is invalid: agents.deny is missing',
    ]);
    expect(codes(e.evaluate(input()).decision.reasons)).toEqual(['policy_config_invalid', 'policy_config_invalid']);
  });
});

describe('admission gate with spawngate.policyData (shipped bundle)', () => {
  it('concurrency.user: 1 denies a user\'s second spawn with concurrency_limit_user', async () => {
    const g = await gate({ concurrency: { user: 1 } });
    const first = await g.reserve({ agentId: 'echo', task: 't', caller: caller('alice', { id: 'telegram:1', kind: 'telegram' }) });
    expect(first.allowed).toBe(true);
    expect(first.decision.limits.concurrency).toContainEqual({ scope: 'user', key: 'alice', max: 1 });
    const second = await g.reserve({ agentId: 'echo', task: 't', caller: caller('alice', { id: 'telegram:2', kind: 'telegram' }) });
    expect(second.decision.allow).toBe(false);
    expect(codes(second.decision.reasons)).toEqual(['concurrency_limit_user']);
    expect(second.decision.reasons[0]?.message).toBe('user "alice" already has 1 active workers; the limit is 1');
    // another user is not affected, and the bundle's own cap (4) is what applies without the override
    expect((await g.reserve({ agentId: 'echo', task: 't', caller: caller('bob', { id: 'telegram:3', kind: 'telegram' }) })).allowed).toBe(true);
    const plain = await gate();
    expect((await plain.admit({ agentId: 'echo', task: 't', caller: caller('alice', { id: 'telegram:1', kind: 'telegram' }) })).decision.limits.concurrency).toContainEqual({
      scope: 'user',
      key: 'alice',
      max: 4,
    });
    if (first.allowed) await first.reservation.release();
  });

  it('rate.kinds.cron replaces the cron buckets; other kinds keep the bundle\'s', async () => {
    const g = await gate({ rate: { kinds: { cron: { user: { perMinute: 60, burst: 3 }, channel: null } } } });
    const cron = (channel: string) => g.reserve({ agentId: 'echo', task: 't', caller: caller('job', { id: channel, kind: 'cron' }) });
    for (let i = 0; i < 3; i++) {
      const r = await cron('cron:nightly');
      expect(r.allowed, JSON.stringify(r.decision.reasons)).toBe(true);
      expect(r.decision.limits.rate).toEqual([{ scope: 'user', key: 'cron/job', perMinute: 60, burst: 3 }]);
      if (r.allowed) await r.reservation.release();
    }
    const fourth = await cron('cron:nightly');
    expect(codes(fourth.decision.reasons)).toEqual(['rate_limit_user']);
    expect(fourth.decision.reasons[0]?.message).toMatch(/^user cron\/job exceeded 60\/min \(burst 3\)/);
    // heartbeat is not in the override: the bundle's bucket (1/min, burst 1) still applies
    const heartbeat = await g.admit({ agentId: 'echo', task: 't', caller: caller('job', { id: 'hb', kind: 'heartbeat' }) });
    expect(heartbeat.decision.limits.rate).toContainEqual({ scope: 'user', key: 'heartbeat/job', perMinute: 1, burst: 1 });
    // and the TTL cap for cron still comes from the bundle
    expect((await g.admit({ agentId: 'echo', task: 't', caller: caller('job', { ...cronChannel }) })).decision.ttlSeconds).toBe(1800);
  });

  it('a config that sets policyData validates and reaches the engine; without it nothing is merged', async () => {
    const config = parseConfig({ ...backends, spawngate: { policyData: { agents: { deny: ['echo'] } } } });
    const g = await createAdmission({ config, bundle: SHIPPED_BUNDLE, watchBundle: false, decisionLog: false });
    gates.push(g);
    expect(g.policy.configProblems).toEqual([]);
    const denied = await g.admit({ agentId: 'echo', task: 't', caller: caller('alice', { id: 'telegram:1', kind: 'telegram' }) });
    expect(codes(denied.decision.reasons)).toEqual(['agent_not_allowed']);
    expect((await (await gate()).admit({ agentId: 'echo', task: 't', caller: caller('alice', { id: 'telegram:1', kind: 'telegram' }) })).decision.allow).toBe(true);
  });
});

describe('spawngate doctor with spawngate.policyData', () => {
  // egress "open": no network-namespace probe; the process backend's identity and cgroup checks are not this test's.
  const config = (bundle: string, policyData?: unknown) =>
    parseConfig({ agents: { executionBackends: { l: { type: 'process', profiles: { p: { egress: 'open' } } } } }, spawngate: { bundle, ...(policyData ? { policyData } : {}) } });

  it('passes with a valid override, and fails naming the problems when the merged config is invalid', async () => {
    const ok = await runDoctor(config(SHIPPED_BUNDLE, { concurrency: { user: 1 } }));
    expect(ok.checks.filter((c) => c.check === 'policy bundle')).toEqual([expect.objectContaining({ result: 'ok', detail: expect.stringContaining('with spawngate.policyData') as unknown })]);

    // A bundle whose data.json lacks ttl.defaultSeconds: an override that does not supply it leaves the config invalid.
    const dir = await mkdtemp(join(tmpdir(), 'sg-policy-data-'));
    try {
      const src = join(dir, 'policies');
      await cp(fileURLToPath(new URL('../../policies', import.meta.url)), src, { recursive: true, filter: (from) => !from.endsWith('_test.rego') });
      const data = JSON.parse(await readFile(join(src, 'data.json'), 'utf8')) as { spawngate: { admission: { config: { ttl: Config } } } };
      delete data.spawngate.admission.config.ttl.defaultSeconds;
      await writeFile(join(src, 'data.json'), JSON.stringify(data));
      const bundle = join(dir, 'gap.tar.gz');
      await buildBundle({ policiesDir: src, outFile: bundle });
      const bad = await runDoctor(config(bundle, { ttl: { maxSeconds: 600 } }));
      expect(bad.ok).toBe(false);
      expect(bad.checks[0]).toMatchObject({ check: 'policy bundle', result: 'fail' });
      expect(bad.checks[0]?.detail).toContain('ttl.defaultSeconds is missing');
      expect(bad.checks[0]?.fix).toMatch(/spawngate\.policyData/);
      const fixed = await runDoctor(config(bundle, { ttl: { defaultSeconds: 300 } }));
      expect(fixed.checks[0]).toMatchObject({ result: 'ok' });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
